//! Reads of the objects a rotation observes, from what the watches already know, so that a
//! resync of an unchanged rotation sends the API server nothing.
//!
//! The controller's metadata watches (Secrets with this operator's label, every target kind)
//! feed stores of each object's resourceVersion. A full object read from the API (or the view a
//! decision needs of it) is kept with the resourceVersion it had, and reused only while the watch
//! shows that same resourceVersion: an object the watch shows at another version, or not at all
//! (not yet listed, deleted, unlabelled), is read afresh. resourceVersions are only compared for
//! equality, never ordered. The operator's own writes drop what they change, so it never decides
//! on an object older than its own last write; what others change reaches it as with any
//! informer, by the watch event that also reconciles the rotation.
//!
//! The ApiKeyRotation itself comes from the controller's cache unless this operator knows of a
//! later version than the one cached (its own status write, or a read), which it then reads.

use crate::crd::{ApiKeyRotation, RolloutTarget, TargetKind};
use crate::rotation::TargetView;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::workload::argo_rollout::Rollout;

/// The resourceVersions the metadata watches have seen, per kind.
#[derive(Clone, Default)]
pub struct Watched {
    pub secrets: Option<Store<PartialObjectMeta<Secret>>>,
    pub deployments: Option<Store<PartialObjectMeta<Deployment>>>,
    pub stateful_sets: Option<Store<PartialObjectMeta<StatefulSet>>>,
    pub daemon_sets: Option<Store<PartialObjectMeta<DaemonSet>>>,
    pub rollouts: Option<Store<PartialObjectMeta<Rollout>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Secret,
    Target(TargetKind),
}

type Key = (Kind, String, String);

#[derive(Clone)]
enum Cached {
    Secret(Option<Arc<Secret>>),
    Target(TargetView),
}

#[derive(Default)]
pub struct World {
    watched: Watched,
    /// What was last read of each object, with the resourceVersion it had.
    objects: Mutex<HashMap<Key, (String, Cached)>>,
    /// The latest resourceVersion of each ApiKeyRotation this operator wrote or read.
    rotations: Mutex<HashMap<String, String>>,
}

fn rv_of<M>(store: &Option<Store<M>>, ns: &str, name: &str) -> Option<String>
where
    M: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let found = store.as_ref()?.get(&ObjectRef::new(name).within(ns))?;
    found.resource_version()
}

impl World {
    pub fn new(watched: Watched) -> Self {
        Self {
            watched,
            ..Default::default()
        }
    }

    /// The resourceVersion the watch of `kind` shows for `ns/name`, if it shows the object.
    fn watched_rv(&self, kind: Kind, ns: &str, name: &str) -> Option<String> {
        let w = &self.watched;
        match kind {
            Kind::Secret => rv_of(&w.secrets, ns, name),
            Kind::Target(TargetKind::Deployment) => rv_of(&w.deployments, ns, name),
            Kind::Target(TargetKind::StatefulSet) => rv_of(&w.stateful_sets, ns, name),
            Kind::Target(TargetKind::DaemonSet) => rv_of(&w.daemon_sets, ns, name),
            Kind::Target(TargetKind::Rollout) => rv_of(&w.rollouts, ns, name),
        }
    }

    /// What was kept of `ns/name`, if the watch still shows the version it was read at.
    fn kept(&self, kind: Kind, ns: &str, name: &str) -> Option<Cached> {
        let rv = self.watched_rv(kind, ns, name)?;
        let objects = self.objects.lock().unwrap();
        let (kept_rv, cached) = objects.get(&(kind, ns.to_string(), name.to_string()))?;
        (*kept_rv == rv).then(|| cached.clone())
    }

    fn keep(&self, kind: Kind, ns: &str, name: &str, rv: Option<String>, cached: Cached) {
        let key = (kind, ns.to_string(), name.to_string());
        let mut objects = self.objects.lock().unwrap();
        match rv {
            Some(rv) => objects.insert(key, (rv, cached)),
            None => objects.remove(&key),
        };
    }

    /// The Secret `name` (None: it does not exist); `fresh` reads it from the API regardless.
    pub async fn secret(
        &self,
        api: &Api<Secret>,
        ns: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        if !fresh && let Some(Cached::Secret(secret)) = self.kept(Kind::Secret, ns, name) {
            return Ok(secret);
        }
        let secret = api.get_opt(name).await?.map(Arc::new);
        let rv = secret.as_ref().and_then(|s| s.resource_version());
        self.keep(Kind::Secret, ns, name, rv, Cached::Secret(secret.clone()));
        Ok(secret)
    }

    /// The view of `target`; `fresh` reads it from the API regardless.
    pub async fn target(
        &self,
        client: &Client,
        ns: &str,
        target: &RolloutTarget,
        fresh: bool,
    ) -> Result<TargetView, kube::Error> {
        let kind = Kind::Target(target.kind);
        if !fresh && let Some(Cached::Target(view)) = self.kept(kind, ns, &target.name) {
            return Ok(view);
        }
        let (view, rv) = crate::workload::read(client, ns, target).await?;
        self.keep(kind, ns, &target.name, rv, Cached::Target(view.clone()));
        Ok(view)
    }

    /// This operator is about to write (or wrote) the Secret `name`: the next read is fresh.
    pub fn forget_secret(&self, ns: &str, name: &str) {
        let key = (Kind::Secret, ns.to_string(), name.to_string());
        self.objects.lock().unwrap().remove(&key);
    }

    /// Same for a target.
    pub fn forget_target(&self, ns: &str, target: &RolloutTarget) {
        let key = (
            Kind::Target(target.kind),
            ns.to_string(),
            target.name.clone(),
        );
        self.objects.lock().unwrap().remove(&key);
    }

    /// `akr` as the controller's cache has it, unless a later version is known (then None: read
    /// it afresh).
    pub fn rotation_if_current(&self, akr: &ApiKeyRotation) -> Option<ApiKeyRotation> {
        let known = self.rotations.lock().unwrap();
        match known.get(&super::key_of(akr)) {
            Some(rv) if akr.resource_version().as_ref() != Some(rv) => None,
            _ => Some(akr.clone()),
        }
    }

    /// The latest version of an ApiKeyRotation this operator knows of (read or written).
    pub fn note_rotation(&self, akr: &ApiKeyRotation) {
        if let Some(rv) = akr.resource_version() {
            self.rotations
                .lock()
                .unwrap()
                .insert(super::key_of(akr), rv);
        }
    }

    /// The rotation `key` is gone.
    pub fn forget_rotation(&self, key: &str) {
        self.rotations.lock().unwrap().remove(key);
    }
}
