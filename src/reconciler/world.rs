//! Reads of the objects a rotation observes, from what the watches already know, so that a
//! resync of an unchanged rotation sends the API server nothing.
//!
//! The controller's metadata watches (Secrets with this operator's label, every target kind)
//! feed stores of each object's resourceVersion. A full object read from the API (or the view a
//! decision needs of it) is kept with the resourceVersion it had, and reused only while the watch
//! is in step and shows that same resourceVersion: an object the watch shows at another version,
//! or not at all (not yet listed, deleted, unlabelled), or a watch that failed or is re-listing,
//! means a fresh read. resourceVersions are only compared for equality, never ordered. The
//! operator's own write keeps what the API answered, reused while the watch shows that version
//! or still the one it showed before the write (no event came since, so nothing newer was seen):
//! it never decides on an object older than its own last write; what others change reaches it
//! as with any informer, by the watch event that also reconciles the rotation.
//!
//! A kept Secret holds only what decisions read of it (see [`slim_secret`]).
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
    /// The Secrets rotations read but do not label (Valkey password, TLS material).
    pub referenced: Option<Arc<super::referenced::Referenced>>,
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

    pub(super) fn in_step(&self, kind: Kind) -> bool {
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

/// What was last read or written of an object.
struct Kept {
    /// The resourceVersion it had.
    rv: String,
    cached: Cached,
    /// Kept from this operator's own write: the version the watch showed just before it. Until
    /// the watch shows another, it has delivered nothing newer than the write.
    written_over: Option<String>,
}

/// The versions of an ApiKeyRotation this process knows of.
#[derive(Default)]
struct KnownRotation {
    latest: String,
    /// Versions it knew before `latest`, most recent last: a cache showing one of these is
    /// behind, and the watch event that brings it up to date reconciles the rotation again.
    superseded: Vec<String>,
    /// The superseded version a reconcile already waited out once (then it reads).
    waited_out: Option<String>,
}

/// How many superseded versions of a rotation are remembered.
const SUPERSEDED_KEPT: usize = 4;

/// What the controller's cached ApiKeyRotation is worth.
pub enum CachedRotation {
    /// The latest version this process knows of.
    Current,
    /// An older version this process wrote or read: the watch has not delivered the later one
    /// yet, and will (it reconciles the rotation again).
    Behind,
    /// Nothing known to compare it with: read it.
    Unknown,
}

/// Taken before this operator writes an object (see [`World::before_write`]).
pub struct WriteMark {
    key: Key,
    watched: Option<String>,
    forgets: u64,
}

#[derive(Default)]
pub struct World {
    watched: Watched,
    objects: Mutex<HashMap<Key, Kept>>,
    /// Bumped by every forget of an object: a read of it that began before one is not kept (it
    /// may predate the write the forget was for).
    forgets: Mutex<HashMap<Key, u64>>,
    /// The latest resourceVersion of each ApiKeyRotation this operator wrote or read.
    rotations: Mutex<HashMap<String, KnownRotation>>,
    /// When this process last wrote each rotation's status.
    status_written: Mutex<HashMap<String, std::time::Instant>>,
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
        let in_step = w.health.in_step(kind);
        match kind {
            // This operator's Secrets, else one a rotation reads (each watch vouches for what
            // it shows).
            Kind::Secret => (in_step.then(|| rv_of(&w.secrets, ns, name)).flatten())
                .or_else(|| w.referenced.as_ref()?.rv(ns, name)),
            _ if !in_step => None,
            Kind::Target(TargetKind::Deployment) => rv_of(&w.deployments, ns, name),
            Kind::Target(TargetKind::StatefulSet) => rv_of(&w.stateful_sets, ns, name),
            Kind::Target(TargetKind::DaemonSet) => rv_of(&w.daemon_sets, ns, name),
            Kind::Target(TargetKind::Rollout) => rv_of(&w.rollouts, ns, name),
        }
    }

    /// Whether the watch of target `kind` is in step (its store shows every workload's labels),
    /// or there is none to wait for (Argo Rollouts without `--argo-rollouts`: such targets are
    /// refused as an invalid spec).
    pub fn target_watch_in_step(&self, kind: TargetKind) -> bool {
        let w = &self.watched;
        let running = match kind {
            TargetKind::Deployment => w.deployments.is_some(),
            TargetKind::StatefulSet => w.stateful_sets.is_some(),
            TargetKind::DaemonSet => w.daemon_sets.is_some(),
            TargetKind::Rollout => w.rollouts.is_some(),
        };
        !running || w.health.in_step(Kind::Target(kind))
    }

    /// The names of the workloads of `kind` in `ns` whose labels `selector` matches, sorted, by
    /// the watch of that kind; None while that watch is not in step (then they are listed).
    pub fn selected(
        &self,
        kind: TargetKind,
        ns: &str,
        selector: &kube::core::Selector,
    ) -> Option<Vec<String>> {
        fn matching<M: kube::Resource<DynamicType = ()> + Clone + 'static>(
            store: &Option<Store<M>>,
            ns: &str,
            selector: &kube::core::Selector,
        ) -> Option<Vec<String>> {
            use kube::core::SelectorExt as _;
            let state = store.as_ref()?.state();
            let mut names: Vec<String> = (state.iter())
                .filter(|w| w.meta().namespace.as_deref() == Some(ns))
                .filter(|w| {
                    selector.matches(w.meta().labels.as_ref().unwrap_or(&Default::default()))
                })
                .map(|w| w.name_any())
                .collect();
            names.sort();
            Some(names)
        }
        let w = &self.watched;
        if !w.health.in_step(Kind::Target(kind)) {
            return None;
        }
        match kind {
            TargetKind::Deployment => matching(&w.deployments, ns, selector),
            TargetKind::StatefulSet => matching(&w.stateful_sets, ns, selector),
            TargetKind::DaemonSet => matching(&w.daemon_sets, ns, selector),
            TargetKind::Rollout => matching(&w.rollouts, ns, selector),
        }
    }

    /// What was kept of `key`, if the watch still shows the version it was read at (or, for
    /// an own write, still the version it showed before that write).
    fn kept(&self, key: &Key) -> Option<Cached> {
        let rv = self.watched_rv(key.0, &key.1, &key.2)?;
        let mut objects = self.objects.lock().unwrap();
        let kept = objects.get_mut(key)?;
        if kept.rv == rv {
            // The watch reached the kept version: from now on only that one vouches.
            kept.written_over = None;
            return Some(kept.cached.clone());
        }
        if kept.written_over.as_ref() == Some(&rv) {
            return Some(kept.cached.clone());
        }
        // The watch moved to another version (someone else's change, or a re-list from a cache
        // that lags): what was kept never vouches again, even if the watch shows the old
        // version once more.
        objects.remove(key);
        None
    }

    fn forgets_of(&self, key: &Key) -> u64 {
        self.forgets.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    /// Keeps what a read found, if the watch shows the object at that same version (else the
    /// store could never vouch for it: unlabelled, not yet seen, or changed again since) and no
    /// forget came since the read began (`forgets_before`).
    fn keep(&self, key: Key, rv: Option<String>, cached: Cached, forgets_before: u64) {
        let vouched = rv.is_some() && self.watched_rv(key.0, &key.1, &key.2) == rv;
        let unforgotten = self.forgets_of(&key) == forgets_before;
        let mut objects = self.objects.lock().unwrap();
        match rv {
            Some(rv) if vouched && unforgotten => {
                let written_over = None;
                objects.insert(
                    key,
                    Kept {
                        rv,
                        cached,
                        written_over,
                    },
                );
            }
            _ => {
                objects.remove(&key);
            }
        }
    }

    fn forget(&self, key: &Key) {
        *self.forgets.lock().unwrap().entry(key.clone()).or_default() += 1;
        self.objects.lock().unwrap().remove(key);
    }

    /// This operator is about to write an object (already forgotten, see
    /// `forget_what_it_writes`): what the watch shows of it now.
    fn before_write(&self, key: Key) -> WriteMark {
        WriteMark {
            watched: self.watched_rv(key.0, &key.1, &key.2),
            forgets: self.forgets_of(&key),
            key,
        }
    }

    /// Keeps what the API answered to an own write: its version is the latest there is, unless
    /// the watch has moved since the mark (then a read decides) or the object was forgotten.
    fn written(&self, mark: WriteMark, rv: Option<String>, cached: Cached) {
        let (Some(rv), Some(before)) = (rv, mark.watched) else {
            return;
        };
        if self.forgets_of(&mark.key) != mark.forgets {
            return;
        }
        let kept = Kept {
            rv,
            cached,
            written_over: Some(before),
        };
        self.objects.lock().unwrap().insert(mark.key, kept);
    }

    /// Before this operator writes the Secret `name`.
    pub fn before_secret_write(&self, ns: &str, name: &str) -> WriteMark {
        self.before_write((Kind::Secret, ns.to_string(), name.to_string()))
    }

    /// The API's answer to that write.
    pub fn secret_written(&self, mark: WriteMark, secret: Secret) {
        let rv = secret.resource_version();
        let secret = Arc::new(slim_secret(secret));
        self.written(mark, rv, Cached::Secret(Some(secret)));
    }

    /// Before this operator writes `target`.
    pub fn before_target_write(&self, ns: &str, target: &RolloutTarget) -> WriteMark {
        self.before_write((
            Kind::Target(target.kind),
            ns.to_string(),
            target.name.clone(),
        ))
    }

    /// The API's answer to that write, as its view.
    pub fn target_written(&self, mark: WriteMark, view: TargetView, rv: Option<String>) {
        self.written(mark, rv, Cached::Target(view));
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
        let forgets_before = self.forgets_of(&key);
        let secret = api.get_opt(name).await?.map(|s| Arc::new(slim_secret(s)));
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
        let forgets_before = self.forgets_of(&key);
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

    /// `akr` as the controller's cache has it, judged against the versions this process
    /// wrote or read: current, behind (once per version: waited out a second time, it is read),
    /// or unknown (read it: a cache filled by a list may be older than the last status a
    /// previous leader wrote, and a version is never ordered, only compared).
    pub fn cached_rotation(&self, akr: &ApiKeyRotation) -> CachedRotation {
        let mut known = self.rotations.lock().unwrap();
        let (Some(known), Some(rv)) = (known.get_mut(&super::key_of(akr)), akr.resource_version())
        else {
            return CachedRotation::Unknown;
        };
        if known.latest == rv {
            return CachedRotation::Current;
        }
        if known.superseded.contains(&rv) && known.waited_out.as_ref() != Some(&rv) {
            known.waited_out = Some(rv);
            return CachedRotation::Behind;
        }
        CachedRotation::Unknown
    }

    /// Whether `akr` is the latest version this operator knows of (false when it knows none).
    pub fn is_latest(&self, akr: &ApiKeyRotation) -> bool {
        let known = self.rotations.lock().unwrap();
        let latest = known.get(&super::key_of(akr)).map(|k| &k.latest);
        latest.is_some() && latest == akr.resource_version().as_ref()
    }

    /// The latest version of an ApiKeyRotation this operator knows of (read or written): each
    /// comes from the API server after the one noted before, so that one is older.
    pub fn note_rotation(&self, akr: &ApiKeyRotation) {
        let Some(rv) = akr.resource_version() else {
            return;
        };
        let mut known = self.rotations.lock().unwrap();
        let known = known.entry(super::key_of(akr)).or_default();
        if known.latest == rv {
            return;
        }
        let before = std::mem::replace(&mut known.latest, rv);
        if !before.is_empty() {
            known.superseded.push(before);
            if known.superseded.len() > SUPERSEDED_KEPT {
                known.superseded.remove(0);
            }
        }
    }

    /// This process just wrote the status of the rotation `key`.
    pub fn note_status_written(&self, key: &str) {
        let now = std::time::Instant::now();
        self.status_written
            .lock()
            .unwrap()
            .insert(key.to_string(), now);
    }

    pub fn status_written_at(&self, key: &str) -> Option<std::time::Instant> {
        self.status_written.lock().unwrap().get(key).copied()
    }

    /// A write of the rotation `key` failed or may have happened unseen (the finalizer's):
    /// its next reconcile reads it afresh.
    pub fn distrust_rotation(&self, key: &str) {
        self.rotations.lock().unwrap().remove(key);
    }

    /// The rotation `key` reads the Secrets `names` in `ns`, which it does not label: they are
    /// watched (and those it read before and no rotation reads now are not).
    pub fn reads_secrets(&self, key: &str, ns: &str, names: impl IntoIterator<Item = String>) {
        if let Some(referenced) = &self.watched.referenced {
            for (ns, name) in referenced.uses(key, ns, names) {
                self.forget(&(Kind::Secret, ns, name));
            }
        }
    }

    /// The rotations that read Secrets they do not label.
    pub fn rotations_reading_secrets(&self) -> Vec<String> {
        (self.watched.referenced.as_ref()).map_or_else(Vec::new, |r| r.rotations())
    }

    /// The rotation `key` is gone; so is what was kept of objects no watch shows any more.
    pub fn forget_rotation(&self, key: &str) {
        if let Some(referenced) = &self.watched.referenced {
            for (ns, name) in referenced.release(key) {
                self.forget(&(Kind::Secret, ns, name));
            }
        }
        self.rotations.lock().unwrap().remove(key);
        self.status_written.lock().unwrap().remove(key);
        let mut kept: HashSet<Key> = self.objects.lock().unwrap().keys().cloned().collect();
        kept.extend(self.forgets.lock().unwrap().keys().cloned());
        let gone: Vec<Key> = (kept.into_iter())
            .filter(|k| self.watched_rv(k.0, &k.1, &k.2).is_none())
            .collect();
        let mut objects = self.objects.lock().unwrap();
        let mut forgets = self.forgets.lock().unwrap();
        for k in gone {
            objects.remove(&k);
            forgets.remove(&k);
        }
    }
}

/// What decisions read of a Secret, and nothing else: its data, labels, owners and annotations
/// (Helm's, Argo CD's, the vault's own), and of each managedFields entry the manager, time and
/// which data keys it owns. kubectl's `last-applied-configuration` (a copy of the data) and the
/// rest of each field set are dropped, so a thousand kept Secrets stay small.
pub fn slim_secret(mut secret: Secret) -> Secret {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
    if let Some(annotations) = secret.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    for entry in secret.metadata.managed_fields.iter_mut().flatten() {
        let Some(FieldsV1(fields)) = entry.fields_v1.take() else {
            continue;
        };
        let mut kept = serde_json::Map::new();
        for set in ["f:data", "f:stringData"] {
            if let Some(owned) = fields.get(set).and_then(|d| d.as_object()) {
                let names = owned.keys().map(|k| (k.clone(), serde_json::json!({})));
                kept.insert(set.to_string(), serde_json::Value::Object(names.collect()));
            }
        }
        entry.fields_v1 = Some(FieldsV1(serde_json::Value::Object(kept)));
    }
    secret
}

/// Which labels a watch keeps.
#[derive(Clone, Copy)]
pub enum KeepLabels<'a> {
    /// Only this one (this operator's label on Secrets, which maps a Secret to its rotation).
    Only(&'a str),
    /// All (a workload's, which target selectors match).
    All,
}

/// What the watches keep of each object: its name, namespace, uid, resourceVersion and the
/// labels `keep` says. Annotations (a `last-applied-configuration` can hold a Secret's data),
/// owners and managed fields are dropped before the store holds them.
pub fn slim_metadata(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    keep: KeepLabels,
) {
    let labels = meta.labels.take().map(|mut labels| {
        if let KeepLabels::Only(key) = keep {
            labels.retain(|k, _| k == key);
        }
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
        let current = |v: &str| matches!(world.cached_rotation(&akr(v)), CachedRotation::Current);
        let behind = |v: &str| matches!(world.cached_rotation(&akr(v)), CachedRotation::Behind);
        assert!(!current("5") && !behind("5"), "first: read it");
        world.note_rotation(&akr("5"));
        assert!(current("5"));
        // Its own status write made version 6: a cache still at 5 is behind, and waited out
        // once; a second time, it is read.
        world.note_rotation(&akr("6"));
        assert!(behind("5"));
        assert!(!current("5") && !behind("5"));
        assert!(world.is_latest(&akr("6")) && !world.is_latest(&akr("7")));
        // A version never seen (someone else's edit) is read.
        assert!(!current("7") && !behind("7"));
        world.distrust_rotation("ns/a");
        assert!(!current("6") && !behind("5"));
    }

    fn secret_meta(rv: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "ns", "resourceVersion": rv},
        }))
        .unwrap()
    }

    #[test]
    fn a_selector_is_matched_against_the_watch_only_once_it_listed_and_only_in_its_namespace() {
        use k8s_openapi::api::apps::v1::Deployment;
        let (reader, mut writer) = store::<PartialObjectMeta<Deployment>>();
        let watched = Watched {
            deployments: Some(reader),
            ..Default::default()
        };
        let health = watched.health.clone();
        let world = World::new(watched);
        let deployment = |ns: &str, name: &str, tier: &str| -> PartialObjectMeta<Deployment> {
            let mut meta: PartialObjectMeta<Deployment> = serde_json::from_value(serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
                             "labels": {"tier": tier, "app.kubernetes.io/name": name},
                             "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            }))
            .unwrap();
            slim_metadata(&mut meta.metadata, KeepLabels::All);
            meta
        };
        let web: kube::core::Selector = [("tier", "web")].into_iter().collect();
        let kind = TargetKind::Deployment;
        assert!(!world.target_watch_in_step(kind));
        assert_eq!(
            world.selected(kind, "ns", &web),
            None,
            "not listed yet: list instead"
        );
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(deployment("ns", "ui", "web")),
            watcher::Event::InitApply(deployment("ns", "engine", "backend")),
            watcher::Event::InitApply(deployment("ns", "api", "web")),
            watcher::Event::InitApply(deployment("other", "ui", "web")),
            watcher::Event::InitDone,
        ];
        for event in events {
            writer.apply_watcher_event(&event);
            health.follow(Kind::Target(kind), &Ok(event));
        }
        assert!(world.target_watch_in_step(kind));
        assert_eq!(
            world.selected(kind, "ns", &web),
            Some(vec!["api".to_string(), "ui".to_string()])
        );
        // No watch of Argo Rollouts runs without --argo-rollouts: nothing to wait for.
        assert!(world.target_watch_in_step(TargetKind::Rollout));
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

    #[test]
    fn an_own_write_is_reused_until_the_watch_moves_past_the_version_it_showed_before() {
        let (reader, mut writer) = store::<PartialObjectMeta<Secret>>();
        let watched = Watched {
            secrets: Some(reader),
            ..Default::default()
        };
        let health = watched.health.clone();
        let world = World::new(watched);
        let key = (Kind::Secret, "ns".to_string(), "s".to_string());
        let shows = |writer: &mut kube::runtime::reflector::store::Writer<_>, rv: &str| {
            let event = watcher::Event::Apply(secret_meta(rv));
            writer.apply_watcher_event(&event);
        };
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(secret_meta("1")),
            watcher::Event::InitDone,
        ] {
            writer.apply_watcher_event(&event);
            health.follow(Kind::Secret, &Ok(event));
        }
        let answer = |rv: &str| -> Secret {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "s", "namespace": "ns", "resourceVersion": rv},
            }))
            .unwrap()
        };
        let kept_rv = |world: &World| match world.kept(&key) {
            Some(Cached::Secret(Some(s))) => s.resource_version(),
            _ => None,
        };
        // Written at 2 while the watch still shows 1: the answer is the latest there is.
        let mark = world.before_secret_write("ns", "s");
        world.secret_written(mark, answer("2"));
        assert_eq!(kept_rv(&world).as_deref(), Some("2"));
        // The watch delivers the write, then someone else's change: that one needs a read.
        shows(&mut writer, "2");
        assert_eq!(kept_rv(&world).as_deref(), Some("2"));
        shows(&mut writer, "3");
        assert_eq!(kept_rv(&world), None);
        // Written at 5 while the watch shows 3, but the watch moves to 4 (another writer) before
        // delivering 5: neither vouches for the answer any more.
        let mark = world.before_secret_write("ns", "s");
        world.secret_written(mark, answer("5"));
        assert_eq!(kept_rv(&world).as_deref(), Some("5"));
        shows(&mut writer, "4");
        assert_eq!(kept_rv(&world), None);
        // Nor when a re-list from a lagging cache shows 3 again.
        shows(&mut writer, "3");
        assert_eq!(kept_rv(&world), None);
        // A forget while the write was in flight (another reconcile wrote it too): not kept.
        let mark = world.before_secret_write("ns", "s");
        world.forget_secret("ns", "s");
        world.secret_written(mark, answer("6"));
        assert_eq!(kept_rv(&world), None);
        // Nor while the watch is re-listing: it vouches for nothing then.
        health.follow::<PartialObjectMeta<Secret>>(Kind::Secret, &Ok(watcher::Event::Init));
        let mark = world.before_secret_write("ns", "s");
        world.secret_written(mark, answer("7"));
        assert_eq!(kept_rv(&world), None);
    }

    #[test]
    fn a_kept_secret_holds_what_decisions_read_and_not_a_copy_of_its_data() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "s", "namespace": "ns",
                "labels": {"app": "sirius"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"K\":\"c2s=\"}}",
                    "example.com/owner": "platform",
                },
                "managedFields": [{
                    "manager": "helm", "operation": "Update", "time": "2026-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {".": {}, "f:K": {}}, "f:metadata": {"f:labels": {"f:x": {}}}},
                }],
            },
            "data": {"K": "c2s="},
        }))
        .unwrap();
        let slim = slim_secret(secret.clone());
        assert_eq!(slim.data, secret.data);
        assert_eq!(slim.metadata.labels, secret.metadata.labels);
        let annotations = slim.metadata.annotations.clone().unwrap();
        assert!(annotations.contains_key("example.com/owner"));
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        let entry = &slim.metadata.managed_fields.as_ref().unwrap()[0];
        assert_eq!(entry.manager.as_deref(), Some("helm"));
        assert!(entry.time.is_some());
        assert_eq!(
            entry.fields_v1.as_ref().unwrap().0,
            serde_json::json!({"f:data": {".": {}, "f:K": {}}})
        );
        // What the decisions read of it is unchanged.
        assert_eq!(
            crate::observe::key_rewritten_by_other(Some(&slim), "K", "apikey-rotator"),
            crate::observe::key_rewritten_by_other(Some(&secret), "K", "apikey-rotator"),
        );
        let found = crate::handover::managed_elsewhere(&slim, "K");
        assert!(found.is_some(), "helm's manager owns data.K");
        assert_eq!(found, crate::handover::managed_elsewhere(&secret, "K"));
    }
}
