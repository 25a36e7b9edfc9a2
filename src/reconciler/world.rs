//! Reads of the objects a rotation observes, from what the watches already know, so that a
//! resync of an unchanged rotation sends the API server nothing.
//!
//! The controller's metadata watches (Secrets with this operator's label, every target kind)
//! feed stores of each object's resourceVersion. A full object read from the API (or the view a
//! decision needs of it) is kept with the resourceVersion it had, and reused only while the watch
//! is in step and shows that same resourceVersion: an object the watch shows at another version,
//! or not at all (not yet listed, deleted, unlabelled), or a watch that failed or is re-listing,
//! means a fresh read. resourceVersions are only compared for equality, never ordered. The
//! operator's own writes drop what they change, so it never decides on an object older than its
//! own last write; what others change reaches it as with any informer, by the watch event that
//! also reconciles the rotation.
//!
//! The ApiKeyRotation itself comes from the controller's cache only when that is the latest
//! version this operator knows of (its own status write, or its own read); the first reconcile
//! of a rotation in this process reads it.

use crate::crd::{ApiKeyRotation, RolloutTarget, TargetKind};
use crate::rotation::TargetView;
use crate::workload::argo_rollout::Rollout;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The resourceVersions the metadata watches have seen, per kind, and whether each watch is in
/// step with the API server.
#[derive(Clone, Default)]
pub struct Watched {
    pub secrets: Option<Store<PartialObjectMeta<Secret>>>,
    pub deployments: Option<Store<PartialObjectMeta<Deployment>>>,
    pub stateful_sets: Option<Store<PartialObjectMeta<StatefulSet>>>,
    pub daemon_sets: Option<Store<PartialObjectMeta<DaemonSet>>>,
    pub rollouts: Option<Store<PartialObjectMeta<Rollout>>>,
    pub health: Arc<WatchHealth>,
}

/// Which watches are in step: a store vouches for nothing from a watch error or the start of a
/// (re-)list until that list is done, since the reflector keeps its old contents meanwhile.
#[derive(Default)]
pub struct WatchHealth {
    in_step: Mutex<HashSet<Kind>>,
}

impl WatchHealth {
    /// Follows a watch's events, after its reflector applied them.
    pub fn follow<M>(&self, kind: Kind, event: &Result<watcher::Event<M>, watcher::Error>) {
        let mut in_step = self.in_step.lock().unwrap();
        match event {
            Err(_) | Ok(watcher::Event::Init) => {
                in_step.remove(&kind);
            }
            Ok(watcher::Event::InitDone) => {
                in_step.insert(kind);
            }
            Ok(_) => {}
        }
    }

    fn in_step(&self, kind: Kind) -> bool {
        self.in_step.lock().unwrap().contains(&kind)
    }
}

/// What a watch, and a kept read, is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
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
    /// Bumped by every forget: a read that began before one is not kept (it may predate the
    /// write the forget was for).
    forgets: AtomicU64,
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

    /// The resourceVersion the watch of `kind` shows for `ns/name`, if it is in step and shows
    /// the object.
    fn watched_rv(&self, kind: Kind, ns: &str, name: &str) -> Option<String> {
        let w = &self.watched;
        if !w.health.in_step(kind) {
            return None;
        }
        match kind {
            Kind::Secret => rv_of(&w.secrets, ns, name),
            Kind::Target(TargetKind::Deployment) => rv_of(&w.deployments, ns, name),
            Kind::Target(TargetKind::StatefulSet) => rv_of(&w.stateful_sets, ns, name),
            Kind::Target(TargetKind::DaemonSet) => rv_of(&w.daemon_sets, ns, name),
            Kind::Target(TargetKind::Rollout) => rv_of(&w.rollouts, ns, name),
        }
    }

    /// What was kept of `key`, if the watch still shows the version it was read at.
    fn kept(&self, key: &Key) -> Option<Cached> {
        let rv = self.watched_rv(key.0, &key.1, &key.2)?;
        let objects = self.objects.lock().unwrap();
        let (kept_rv, cached) = objects.get(key)?;
        (*kept_rv == rv).then(|| cached.clone())
    }

    /// Keeps what a read found, if the watch shows the object at that same version (else the
    /// store could never vouch for it: unlabelled, not yet seen, or changed again since) and no
    /// forget came since the read began (`forgets_before`).
    fn keep(&self, key: Key, rv: Option<String>, cached: Cached, forgets_before: u64) {
        let vouched = rv.is_some() && self.watched_rv(key.0, &key.1, &key.2) == rv;
        let mut objects = self.objects.lock().unwrap();
        match rv {
            Some(rv) if vouched && self.forgets.load(Ordering::SeqCst) == forgets_before => {
                objects.insert(key, (rv, cached));
            }
            _ => {
                objects.remove(&key);
            }
        }
    }

    fn forget(&self, key: &Key) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.objects.lock().unwrap().remove(key);
    }

    /// The Secret `name` (None: it does not exist); `fresh` reads it from the API regardless.
    pub async fn secret(
        &self,
        api: &Api<Secret>,
        ns: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (Kind::Secret, ns.to_string(), name.to_string());
        if !fresh && let Some(Cached::Secret(secret)) = self.kept(&key) {
            return Ok(secret);
        }
        let forgets_before = self.forgets.load(Ordering::SeqCst);
        let secret = api.get_opt(name).await?.map(Arc::new);
        let rv = secret.as_ref().and_then(|s| s.resource_version());
        self.keep(key, rv, Cached::Secret(secret.clone()), forgets_before);
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
        let key = (
            Kind::Target(target.kind),
            ns.to_string(),
            target.name.clone(),
        );
        if !fresh && let Some(Cached::Target(view)) = self.kept(&key) {
            return Ok(view);
        }
        let forgets_before = self.forgets.load(Ordering::SeqCst);
        let (view, rv) = crate::workload::read(client, ns, target).await?;
        self.keep(key, rv, Cached::Target(view.clone()), forgets_before);
        Ok(view)
    }

    /// This operator is about to write (or wrote) the Secret `name`: the next read is fresh.
    pub fn forget_secret(&self, ns: &str, name: &str) {
        self.forget(&(Kind::Secret, ns.to_string(), name.to_string()));
    }

    /// Same for a target.
    pub fn forget_target(&self, ns: &str, target: &RolloutTarget) {
        self.forget(&(
            Kind::Target(target.kind),
            ns.to_string(),
            target.name.clone(),
        ));
    }

    /// `akr` as the controller's cache has it, if that is the latest version this operator
    /// knows of; None (read it afresh) when a later one is known, or none yet: a cache filled
    /// by a list may be older than the last status a previous leader wrote.
    pub fn rotation_if_current(&self, akr: &ApiKeyRotation) -> Option<ApiKeyRotation> {
        self.is_latest(akr).then(|| akr.clone())
    }

    /// Whether `akr` is the latest version this operator knows of (false when it knows none).
    pub fn is_latest(&self, akr: &ApiKeyRotation) -> bool {
        let known = self.rotations.lock().unwrap();
        let latest = known.get(&super::key_of(akr));
        latest.is_some() && latest == akr.resource_version().as_ref()
    }

    /// The latest version of an ApiKeyRotation this operator knows of (read or written).
    pub fn note_rotation(&self, akr: &ApiKeyRotation) {
        if let Some(rv) = akr.resource_version() {
            (self.rotations.lock().unwrap()).insert(super::key_of(akr), rv);
        }
    }

    /// A write of the rotation `key` failed or may have happened unseen (the finalizer's):
    /// its next reconcile reads it afresh.
    pub fn distrust_rotation(&self, key: &str) {
        self.rotations.lock().unwrap().remove(key);
    }

    /// The rotation `key` is gone; so is what was kept of objects no watch shows any more.
    pub fn forget_rotation(&self, key: &str) {
        self.rotations.lock().unwrap().remove(key);
        let kept: Vec<Key> = self.objects.lock().unwrap().keys().cloned().collect();
        let gone: Vec<Key> = (kept.into_iter())
            .filter(|k| self.watched_rv(k.0, &k.1, &k.2).is_none())
            .collect();
        let mut objects = self.objects.lock().unwrap();
        for k in gone {
            objects.remove(&k);
        }
    }
}

/// What the watches keep of each object: its name, namespace, uid and resourceVersion, and of
/// `keep_label` (this operator's label on Secrets, which maps a Secret to its rotation) the
/// value. Annotations (a `last-applied-configuration` can hold a Secret's data), other labels,
/// owners and managed fields are dropped before the store holds them.
pub fn slim_metadata(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    keep_label: Option<&str>,
) {
    let labels = meta.labels.take().map(|mut labels| {
        labels.retain(|k, _| Some(k.as_str()) == keep_label);
        labels
    });
    *meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        labels: labels.filter(|l| !l.is_empty()),
        ..Default::default()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;

    fn akr(rv: &str) -> ApiKeyRotation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": rv},
            "spec": {"valkey": {"url": "redis://v:6379"}},
        }))
        .unwrap()
    }

    #[test]
    fn the_cached_rotation_is_used_only_when_it_is_the_latest_version_known() {
        let world = World::default();
        assert!(
            world.rotation_if_current(&akr("5")).is_none(),
            "first: read it"
        );
        world.note_rotation(&akr("5"));
        assert!(world.rotation_if_current(&akr("5")).is_some());
        // Its own status write made version 6: a cache still at 5 is stale.
        world.note_rotation(&akr("6"));
        assert!(world.rotation_if_current(&akr("5")).is_none());
        assert!(world.is_latest(&akr("6")) && !world.is_latest(&akr("7")));
        world.distrust_rotation("ns/a");
        assert!(world.rotation_if_current(&akr("6")).is_none());
    }

    fn secret_meta(rv: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "ns", "resourceVersion": rv},
        }))
        .unwrap()
    }

    #[test]
    fn a_kept_read_is_reused_only_while_an_in_step_watch_shows_its_version() {
        let (reader, mut writer) = store::<PartialObjectMeta<Secret>>();
        let watched = Watched {
            secrets: Some(reader),
            ..Default::default()
        };
        let health = watched.health.clone();
        let world = World::new(watched);
        let key = (Kind::Secret, "ns".to_string(), "s".to_string());
        let cached = || Cached::Secret(None);
        let listed = |writer: &mut kube::runtime::reflector::store::Writer<_>, rv: &str| {
            for event in [
                watcher::Event::Init,
                watcher::Event::InitApply(secret_meta(rv)),
                watcher::Event::InitDone,
            ] {
                writer.apply_watcher_event(&event);
                health.follow(Kind::Secret, &Ok(event));
            }
        };
        listed(&mut writer, "1");
        world.keep(key.clone(), Some("1".into()), cached(), 0);
        assert!(world.kept(&key).is_some());
        // The watch fails: nothing is vouched for until its re-list is done.
        health.follow::<PartialObjectMeta<Secret>>(
            Kind::Secret,
            &Err(watcher::Error::NoResourceVersion),
        );
        assert!(world.kept(&key).is_none());
        listed(&mut writer, "2");
        assert!(world.kept(&key).is_none(), "kept at 1, the watch shows 2");
        // A read that began before a forget is not kept.
        world.forget_secret("ns", "s");
        world.keep(key.clone(), Some("2".into()), cached(), 0);
        assert!(world.kept(&key).is_none());
        world.keep(key.clone(), Some("2".into()), cached(), 1);
        assert!(world.kept(&key).is_some());
        // Nor one the watch does not show at that version.
        world.keep(key.clone(), Some("3".into()), cached(), 1);
        assert!(world.kept(&key).is_none());
    }
}
