//! The kinds of workload a rotation restarts. Each kind is one file here implementing
//! [`Workload`]: where its pod template is, whether it can roll at all, when its rollout is
//! complete (by the rules `kubectl rollout status` applies to it) and which pods are its. The
//! rest of the operator sees a [`TargetView`] and a [`RolloutState`], whatever the kind; adding a
//! kind is a variant of [`TargetKind`], a file here and an arm in each `match` below (plus the
//! chart's RBAC and the stand-in's controller for it).

pub mod argo_rollout;
mod daemon_set;
mod deployment;
mod stateful_set;

use crate::crd::{
    ApiKeyRotation, ROLLBACK_ANNOTATION, ROLLOUT_ANNOTATION, RolloutTarget,
    SECRET_RESTORES_ANNOTATION, TargetKind,
};
use crate::reconciler::KeepLabels;
use crate::rotation::TargetView;
use argo_rollout::Rollout;
use futures::StreamExt as _;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutState {
    /// Every replica runs the current template and is available.
    Complete,
    /// Still going; the text says what it waits for, in kubectl's words.
    Progressing(String),
    /// The workload's controller gave up (a Deployment's `ProgressDeadlineExceeded`); its own
    /// message.
    Failed(String),
}

/// What the operator needs to know of one kind of workload.
pub trait Workload:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: TargetKind;

    fn template(&self) -> Option<&PodTemplateSpec>;

    /// Paused by its own spec (a Deployment's `spec.paused`): a new template waits.
    fn paused(&self) -> bool {
        false
    }

    /// Why a new pod template would not replace its pods, if it would not.
    fn cannot_roll(&self) -> Option<String> {
        None
    }

    /// Whether its rollout is complete, by `kubectl rollout status`'s rules for the kind.
    fn rollout_state(&self) -> RolloutState;

    /// Whether a pod whose controlling owner is `(owner_kind, owner_name)` is workload `name`'s.
    fn owns(name: &str, owner_kind: &str, owner_name: &str) -> bool {
        owner_kind == Self::KIND.to_string() && owner_name == name
    }
}

/// The rollout state of `w`, by its kind's rules.
pub fn rollout_state<W: Workload>(w: &W) -> RolloutState {
    w.rollout_state()
}

/// What the machine sees of a workload (or its absence).
pub fn view<W: Workload>(w: Option<&W>) -> TargetView {
    let Some(w) = w else {
        return TargetView::Missing;
    };
    let annotations = w
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let annotation = |key: &str| annotations.and_then(|a| a.get(key).cloned());
    TargetView::Found {
        paused: w.paused(),
        annotation: annotation(ROLLOUT_ANNOTATION),
        rolled_back_in: annotation(ROLLBACK_ANNOTATION),
        secret_restores: annotation(SECRET_RESTORES_ANNOTATION),
        cannot_roll: w.cannot_roll(),
        rollout: w.rollout_state(),
    }
}

/// Reads `target` in namespace `ns`: its view, and the resourceVersion it was read at (None:
/// it does not exist).
pub async fn read(
    client: &Client,
    ns: &str,
    target: &RolloutTarget,
) -> Result<(TargetView, Option<String>), kube::Error> {
    async fn get<W: Workload>(
        client: &Client,
        ns: &str,
        name: &str,
    ) -> Result<(TargetView, Option<String>), kube::Error> {
        let api: Api<W> = Api::namespaced(client.clone(), ns);
        let found = api.get_opt(name).await?;
        let rv = found.as_ref().and_then(|w| w.resource_version());
        Ok((view(found.as_ref()), rv))
    }
    match target.kind {
        TargetKind::Deployment => get::<Deployment>(client, ns, &target.name).await,
        TargetKind::StatefulSet => get::<StatefulSet>(client, ns, &target.name).await,
        TargetKind::DaemonSet => get::<DaemonSet>(client, ns, &target.name).await,
        TargetKind::Rollout => get::<Rollout>(client, ns, &target.name).await,
    }
}

/// The names of the workloads of `kind` in `ns` that `selector` matches, sorted, listed from the
/// API (metadata only). At most `limit` + 1 are read: one more than a plan may hold says there
/// are too many.
pub async fn list_selected(
    client: &Client,
    ns: &str,
    kind: TargetKind,
    selector: &kube::core::Selector,
    limit: usize,
) -> Result<Vec<String>, kube::Error> {
    async fn list<W: Workload>(
        client: &Client,
        ns: &str,
        selector: &kube::core::Selector,
        limit: usize,
    ) -> Result<Vec<String>, kube::Error> {
        let api: Api<PartialObjectMeta<W>> = Api::namespaced(client.clone(), ns);
        let params = kube::api::ListParams::default()
            .labels_from(selector)
            .limit(limit as u32 + 1);
        let mut names: Vec<String> = (api.list_metadata(&params).await?.items.iter())
            .map(|w| w.name_any())
            .collect();
        names.sort();
        Ok(names)
    }
    match kind {
        TargetKind::Deployment => list::<Deployment>(client, ns, selector, limit).await,
        TargetKind::StatefulSet => list::<StatefulSet>(client, ns, selector, limit).await,
        TargetKind::DaemonSet => list::<DaemonSet>(client, ns, selector, limit).await,
        TargetKind::Rollout => list::<Rollout>(client, ns, selector, limit).await,
    }
}

/// Sets `annotations` on `target`'s pod template by a forced server-side apply of this
/// operator's field manager (a marker it leaves out is dropped), so its pods restart. Returns
/// the view of what the API answered, and its resourceVersion.
pub async fn stamp(
    client: &Client,
    ns: &str,
    target: &RolloutTarget,
    annotations: Value,
    field_manager: &str,
) -> Result<(TargetView, Option<String>), kube::Error> {
    async fn apply<W: Workload>(
        client: &Client,
        ns: &str,
        name: &str,
        annotations: Value,
        field_manager: &str,
    ) -> Result<(TargetView, Option<String>), kube::Error> {
        let patch = json!({
            "apiVersion": W::api_version(&()),
            "kind": W::kind(&()),
            "metadata": {"name": name},
            "spec": {"template": {"metadata": {"annotations": annotations}}},
        });
        let api: Api<W> = Api::namespaced(client.clone(), ns);
        let params = PatchParams::apply(field_manager).force();
        let written = api.patch(name, &params, &Patch::Apply(&patch)).await?;
        Ok((view(Some(&written)), written.resource_version()))
    }
    let (name, fm) = (target.name.as_str(), field_manager);
    match target.kind {
        TargetKind::Deployment => apply::<Deployment>(client, ns, name, annotations, fm).await,
        TargetKind::StatefulSet => apply::<StatefulSet>(client, ns, name, annotations, fm).await,
        TargetKind::DaemonSet => apply::<DaemonSet>(client, ns, name, annotations, fm).await,
        TargetKind::Rollout => apply::<Rollout>(client, ns, name, annotations, fm).await,
    }
}

/// Whether a pod whose controlling owner is `(owner_kind, owner_name)` belongs to `target`.
pub fn owns_pod(target: &RolloutTarget, owner_kind: &str, owner_name: &str) -> bool {
    let name = target.name.as_str();
    match target.kind {
        TargetKind::Deployment => Deployment::owns(name, owner_kind, owner_name),
        TargetKind::StatefulSet => StatefulSet::owns(name, owner_kind, owner_name),
        TargetKind::DaemonSet => DaemonSet::owns(name, owner_kind, owner_name),
        TargetKind::Rollout => Rollout::owns(name, owner_kind, owner_name),
    }
}

/// Adds a metadata-only watch of every target kind to the controller (of Argo Rollouts only with
/// `argo_rollouts`: without their CRD the watch would fail): a change to a workload reconciles
/// the rotations whose spec or plan in flight names it. Each watch also keeps a store of what it
/// saw (without managedFields), whose resourceVersions tell a reconcile whether what it read of a
/// target is still current (see [`crate::reconciler::Watched`]).
pub fn watch_targets(
    controller: Controller<ApiKeyRotation>,
    client: &Client,
    namespace: Option<&str>,
    rotations: Store<ApiKeyRotation>,
    argo_rollouts: bool,
    watched: &mut crate::reconciler::Watched,
) -> Controller<ApiKeyRotation> {
    fn watch<W: Workload>(
        controller: Controller<ApiKeyRotation>,
        client: &Client,
        namespace: Option<&str>,
        rotations: Store<ApiKeyRotation>,
        health: Arc<crate::reconciler::WatchHealth>,
    ) -> (Controller<ApiKeyRotation>, Store<PartialObjectMeta<W>>) {
        let api: Api<PartialObjectMeta<W>> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (store, writer) = kube::runtime::reflector::store();
        let kind = crate::reconciler::WatchKind::Target(W::KIND);
        let stream =
            crate::relist::relisting_watcher(api, watcher::Config::default().any_semantic())
                .modify(|w| crate::reconciler::slim_metadata(&mut w.metadata, KeepLabels::All))
                .reflect(writer)
                .inspect(move |event| health.follow(kind, event))
                .filter(|event| std::future::ready(event.is_ok()))
                .touched_objects();
        let controller =
            controller.watches_stream(stream, move |w| targeting(&rotations, W::KIND, &w));
        (controller, store)
    }
    let controller = if argo_rollouts {
        let (c, store) = watch::<Rollout>(
            controller,
            client,
            namespace,
            rotations.clone(),
            watched.health.clone(),
        );
        watched.rollouts = Some(store);
        c
    } else {
        controller
    };
    let health = watched.health.clone();
    let (controller, store) = watch::<Deployment>(
        controller,
        client,
        namespace,
        rotations.clone(),
        health.clone(),
    );
    watched.deployments = Some(store);
    let (controller, store) = watch::<StatefulSet>(
        controller,
        client,
        namespace,
        rotations.clone(),
        health.clone(),
    );
    watched.stateful_sets = Some(store);
    let (controller, store) = watch::<DaemonSet>(controller, client, namespace, rotations, health);
    watched.daemon_sets = Some(store);
    controller
}

/// The rotations in `w`'s namespace whose spec targets (by name or selector), or whose rotation
/// in flight planned (its plan keeps a target the spec no longer names), the workload `w` of
/// `kind`.
fn targeting<W: Workload>(
    rotations: &Store<ApiKeyRotation>,
    kind: TargetKind,
    w: &PartialObjectMeta<W>,
) -> Vec<ObjectRef<ApiKeyRotation>> {
    use kube::core::SelectorExt as _;
    let (ns, name) = (w.namespace(), w.name_any());
    let labels = w.metadata.labels.clone().unwrap_or_default();
    let selects = |t: &RolloutTarget| match &t.selector {
        Some(selector) => {
            kube::core::Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(&labels))
        }
        None => t.name == name,
    };
    rotations
        .state()
        .into_iter()
        .filter(|akr| {
            let mut planned = (akr.status.iter())
                .flat_map(|s| s.current_rotation.iter())
                .flat_map(|r| r.targets.iter().map(|t| (t.kind, t.name.as_str())));
            let mut named = akr.spec.targets.iter().filter(|t| t.kind == kind);
            akr.namespace() == ns
                && (named.any(selects) || planned.any(|t| t == (kind, name.as_str())))
        })
        .map(|akr| ObjectRef::from_obj(&*akr))
        .collect()
}
