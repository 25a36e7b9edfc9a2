//! The StatefulSet and DaemonSet controllers, sharing the kubelet and the pod bookkeeping of
//! [`DeploySim`]. Each follows its kube-controller-manager counterpart where the operator (or
//! `kubectl rollout status`) can tell:
//!
//! - StatefulSet (`OrderedReady`): pods `<name>-<ordinal>` are created in ordinal order, each only
//!   once every lower one is Ready; a `RollingUpdate` replaces one pod at a time from the highest
//!   ordinal down to the partition, deleting it and creating it anew from the update revision
//!   only after every pod is Ready; `OnDelete` replaces only pods someone deleted. Status carries
//!   `currentRevision`/`updateRevision` (`<name>-<hash>`), which meet once every pod is updated
//!   and Ready; pods carry `controller-revision-hash`.
//! - DaemonSet: one pod per simulated node; a `RollingUpdate` deletes old pods while no more than
//!   `maxUnavailable` nodes lack an available pod (`maxSurge` 0) and creates the new one on the
//!   freed node; `OnDelete` replaces only deleted pods.

use super::{
    DeploySim, NODE_NAME, OtherPod, Pod, RolloutRecord, epoch_ms, pod_spec, read_pod_secrets,
    sync_pod_status, template_hash,
};
use crate::store::{Store, Write, resource_key};
use crate::types::ResourceType;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum SetKind {
    StatefulSet,
    DaemonSet,
}

impl SetKind {
    const ALL: [SetKind; 2] = [SetKind::StatefulSet, SetKind::DaemonSet];

    fn plural(self) -> &'static str {
        match self {
            SetKind::StatefulSet => "statefulsets",
            SetKind::DaemonSet => "daemonsets",
        }
    }

    pub(super) fn kind(self) -> &'static str {
        match self {
            SetKind::StatefulSet => "StatefulSet",
            SetKind::DaemonSet => "DaemonSet",
        }
    }
}

/// (namespace, kind, name) of a StatefulSet or DaemonSet.
pub(super) type SetKey = (String, SetKind, String);

/// A pod the controller creates: its name (None: generated from the set's), the revision whose
/// template it runs, its node.
struct NewPod {
    name: Option<String>,
    revision: u64,
    node: String,
}

#[derive(Default)]
pub(super) struct SetState {
    templates: Vec<Value>,
    /// Each revision's hash; its ControllerRevision is `<name>-<hash>`.
    hashes: Vec<String>,
    uid: String,
    pub(super) pods: Vec<Pod>,
    /// The node each DaemonSet pod runs on.
    node_of: std::collections::HashMap<String, String>,
    /// A StatefulSet's `status.currentRevision` (0 before its first rollout completed).
    current_revision: u64,
    latest_rollout: Option<usize>,
}

impl SetState {
    fn revision_name(&self, name: &str, revision: u64) -> String {
        format!("{name}-{}", self.hashes[(revision - 1) as usize])
    }

    pub(super) fn template(&self, revision: u64) -> &Value {
        &self.templates[(revision - 1) as usize]
    }
}

fn ordinal(set: &str, pod: &str) -> Option<u64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// An int-or-percent of `total`, rounded up (as `GetScaledValueFromIntOrPercent` with roundUp).
fn scaled(value: &Value, total: usize) -> usize {
    match value {
        Value::Number(n) => n.as_u64().unwrap_or(0) as usize,
        Value::String(s) => {
            let percent: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            (percent * total).div_ceil(100)
        }
        _ => 0,
    }
}

impl DeploySim {
    /// The nodes DaemonSets run a pod on.
    pub fn set_nodes(&mut self, nodes: Vec<String>) {
        self.nodes = if nodes.is_empty() {
            vec![NODE_NAME.to_string()]
        } else {
            nodes
        };
    }

    /// One reconcile pass over every StatefulSet and DaemonSet in the store.
    pub(super) fn tick_sets(&mut self, store: &mut Store, pods_rt: &ResourceType) {
        for kind in SetKind::ALL {
            let Some(rt) = store
                .types
                .get(&resource_key("apps", kind.plural()))
                .cloned()
            else {
                continue;
            };
            let versions = store.versions(&rt);
            let live: HashSet<SetKey> = versions
                .iter()
                .map(|(ns, name, _)| (ns.clone(), kind, name.clone()))
                .collect();
            let removed: Vec<SetKey> = (self.sets.keys())
                .filter(|k| k.1 == kind && !live.contains(*k))
                .cloned()
                .collect();
            for key in removed {
                self.remove_set(store, pods_rt, key);
            }
            for (ns, name, _) in versions {
                if let Ok(object) = store.get(&rt, &ns, &name) {
                    self.reconcile_set(store, &rt, pods_rt, (ns, kind, name), &object);
                }
            }
        }
    }

    /// A deleted set's pods are deleted too (the garbage collector's cascade): they terminate.
    fn remove_set(&mut self, store: &mut Store, pods_rt: &ResourceType, key: SetKey) {
        let Some(state) = self.sets.remove(&key) else {
            return;
        };
        let (ns, kind, name) = key;
        let now = Instant::now();
        for mut pod in state.pods.iter().cloned() {
            let pod_key = (ns.clone(), pod.name.clone());
            self.set_of.remove(&pod_key);
            if pod.terminating_since.is_none() {
                let _ = store.delete(pods_rt, &ns, &pod.name, None, None, None);
                pod.terminating_since = Some(now);
                pod.gone_at = Some(store.pod_deadline(&ns, &pod.name).unwrap_or(now));
            }
            let spec = pod_spec(state.template(pod.revision));
            let owner = Some((kind.kind().to_string(), name.clone()));
            let deployment = name.clone();
            self.others.insert(
                pod_key,
                OtherPod {
                    pod,
                    deployment,
                    owner,
                    spec,
                },
            );
        }
    }

    fn reconcile_set(
        &mut self,
        store: &mut Store,
        rt: &ResourceType,
        pods_rt: &ResourceType,
        key: SetKey,
        object: &Value,
    ) {
        let now = Instant::now();
        let (ns, kind, name) = key.clone();
        let by_name = (ns.clone(), name.clone());
        let behavior = self.behaviors.get(&by_name).cloned().unwrap_or_default();
        let ready_after =
            (self.ready_after_overrides.get(&by_name).copied()).unwrap_or(self.pod_ready_after);
        let update = self.update_revision(&key, object);
        let state = self
            .sets
            .get_mut(&key)
            .expect("update_revision adds the state");
        // Pods finish terminating after their grace period: the kubelet removes them.
        let set_of = &mut self.set_of;
        state.pods.retain(|p| {
            let gone = p.gone_at.is_some_and(|t| t <= now);
            if gone {
                let _ = store.delete(pods_rt, &ns, &p.name, None, None, Some(0));
                set_of.remove(&(ns.clone(), p.name.clone()));
            }
            !gone
        });
        // Pods not ready keep restarting and read their Secrets again, as with Deployments.
        for i in 0..state.pods.len() {
            let pod = &state.pods[i];
            if pod.ready_at.is_none() && pod.terminating_since.is_none() {
                let read = read_pod_secrets(store, &ns, state.template(pod.revision));
                state.pods[i].start(read, |s| behavior.lets_ready(s), ready_after, now);
            }
        }
        let spec = &object["spec"];
        let strategy = &spec["updateStrategy"];
        let rolling = strategy["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
        let created = match kind {
            SetKind::StatefulSet => {
                let current_replicas = object["status"]["currentReplicas"].as_u64().unwrap_or(0);
                stateful_set_step(state, &name, spec, current_replicas, rolling, update, now)
            }
            SetKind::DaemonSet => {
                daemon_set_step(state, &self.nodes, strategy, rolling, update, now)
            }
        };
        let mut new_pods = Vec::new();
        for new in created {
            if let Some(mut pod) = create_set_pod(store, pods_rt, state, &key, object, &new) {
                pod.start(
                    read_pod_secrets(store, &ns, state.template(new.revision)),
                    |s| behavior.lets_ready(s),
                    ready_after,
                    now,
                );
                new_pods.push(pod.name.clone());
                state.node_of.insert(pod.name.clone(), new.node);
                state.pods.push(pod);
            }
        }
        for pod_name in new_pods {
            self.set_of.insert((ns.clone(), pod_name), key.clone());
        }
        // The pods the step chose to replace: the controller deletes them; they terminate.
        for pod in state
            .pods
            .iter_mut()
            .filter(|p| p.gone_at.is_none() && p.terminating_since.is_some())
        {
            let _ = store.delete(pods_rt, &ns, &pod.name, None, None, None);
            pod.gone_at = Some(store.pod_deadline(&ns, &pod.name).unwrap_or(now));
        }
        let (status, complete) = match kind {
            SetKind::StatefulSet => stateful_set_status(state, &name, object, rolling, update, now),
            SetKind::DaemonSet => daemon_set_status(state, &self.nodes, object, update, now),
        };
        if complete
            && let Some(r) = state.latest_rollout.map(|i| &mut self.rollouts[i])
            && r.revision == update
            && r.completed_at_ms.is_none()
        {
            r.completed_at_ms = Some(epoch_ms());
        }
        if object.get("status") != Some(&status) {
            store.controller_write_status(rt, &ns, &name, status);
        }
        for pod in &mut state.pods {
            let spec = &state.templates[(pod.revision - 1) as usize]["spec"];
            sync_pod_status(store, &ns, pod, spec, now);
        }
    }

    /// The revision of the set's current template, a new one (and a rollout record) when the
    /// template is new; a template of an earlier revision makes that one current again.
    fn update_revision(&mut self, key: &SetKey, object: &Value) -> u64 {
        let state = self.sets.entry(key.clone()).or_default();
        if state.uid.is_empty() {
            state.uid = object["metadata"]["uid"].as_str().unwrap_or("").to_string();
        }
        let template = &object["spec"]["template"];
        let revision = match state.templates.iter().position(|t| t == template) {
            Some(i) => i as u64 + 1,
            None => {
                let hash = template_hash(template, &state.hashes);
                state.hashes.push(hash);
                state.templates.push(template.clone());
                state.templates.len() as u64
            }
        };
        let recorded = state.latest_rollout.map(|i| self.rollouts[i].revision);
        if recorded != Some(revision) {
            state.latest_rollout = Some(self.rollouts.len());
            self.rollouts.push(RolloutRecord {
                namespace: key.0.clone(),
                deployment: key.2.clone(),
                revision,
                template_changed_at_ms: epoch_ms(),
                completed_at_ms: None,
            });
        }
        revision
    }
}

fn is_ready(p: &Pod, now: Instant) -> bool {
    p.is_ready(now) && p.terminating_since.is_none()
}

/// The StatefulSet controller's one move this tick (`OrderedReady`): the pods to create (name,
/// revision, node) and, by marking it terminating, the pod to delete.
fn stateful_set_step(
    state: &mut SetState,
    name: &str,
    spec: &Value,
    current_replicas: u64,
    rolling: bool,
    update: u64,
    now: Instant,
) -> Vec<NewPod> {
    let replicas = spec["replicas"].as_u64().unwrap_or(1);
    // `updateStatefulSet`'s updateMin: the partition, 0 without `rollingUpdate`.
    let rolling_update = &spec["updateStrategy"]["rollingUpdate"];
    let partition = rolling_update["partition"].as_u64().unwrap_or(0);
    // `newVersionedStatefulSetPod`: a pod created below this ordinal runs the current revision:
    // the partition, or without `rollingUpdate` the last status's `currentReplicas`.
    let keeps_current_below = if rolling_update.is_null() {
        current_replicas
    } else {
        partition
    };
    let current = if state.current_revision == 0 {
        update
    } else {
        state.current_revision
    };
    let at = |state: &SetState, ord: u64| {
        (state.pods.iter()).position(|p| ordinal(name, &p.name) == Some(ord))
    };
    // Create the lowest missing ordinal once every lower pod is Ready; wait on any that is not.
    for ord in 0..replicas {
        match at(state, ord) {
            Some(i) if is_ready(&state.pods[i], now) => continue,
            Some(_) => return Vec::new(),
            None => {
                let revision = if rolling && ord < keeps_current_below {
                    current
                } else {
                    update
                };
                return vec![NewPod {
                    name: Some(format!("{name}-{ord}")),
                    revision,
                    node: NODE_NAME.to_string(),
                }];
            }
        }
    }
    // Every wanted pod is Ready: scale down from the highest ordinal, then update from it.
    let mut condemned: Vec<usize> = (0..state.pods.len())
        .filter(|&i| ordinal(name, &state.pods[i].name).is_none_or(|o| o >= replicas))
        .filter(|&i| state.pods[i].terminating_since.is_none())
        .collect();
    condemned.sort_by_key(|&i| std::cmp::Reverse(ordinal(name, &state.pods[i].name)));
    let victim = condemned.first().copied().or_else(|| {
        let waiting = state.pods.iter().any(|p| p.terminating_since.is_some());
        (rolling && !waiting).then_some(())?;
        (partition..replicas)
            .rev()
            .find_map(|ord| at(state, ord).filter(|&i| state.pods[i].revision != update))
    });
    if let Some(i) = victim {
        state.pods[i].terminating_since = Some(now);
    }
    Vec::new()
}

/// The StatefulSet's status and whether its rollout is complete (every pod updated and Ready).
fn stateful_set_status(
    state: &mut SetState,
    name: &str,
    object: &Value,
    rolling: bool,
    update: u64,
    now: Instant,
) -> (Value, bool) {
    let replicas = object["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let active: Vec<&Pod> = state
        .pods
        .iter()
        .filter(|p| p.terminating_since.is_none())
        .collect();
    let ready = state.pods.iter().filter(|p| is_ready(p, now)).count();
    let updated = active.iter().filter(|p| p.revision == update).count();
    // `computeReplicaStatus` counts terminating pods in `replicas` (not in current or updated);
    // `completeRollingUpdate` makes the update revision current once updated, ready and all
    // replicas equal `spec.replicas`.
    if state.current_revision == 0
        || (rolling && updated == replicas && ready == replicas && state.pods.len() == replicas)
    {
        state.current_revision = update;
    }
    let current = state.current_revision;
    let current_replicas = active.iter().filter(|p| p.revision == current).count();
    let mut status = json!({
        "observedGeneration": object["metadata"]["generation"],
        "replicas": state.pods.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": current_replicas,
        "updatedReplicas": updated,
        "currentRevision": state.revision_name(name, current),
        "updateRevision": state.revision_name(name, update),
        "collisionCount": 0,
    });
    for zero in [
        "readyReplicas",
        "availableReplicas",
        "currentReplicas",
        "updatedReplicas",
    ] {
        if status[zero] == json!(0) {
            status.as_object_mut().unwrap().remove(zero);
        }
    }
    let complete = current == update
        && updated == replicas
        && ready == replicas
        && state.pods.len() == replicas;
    (status, complete)
}

/// The DaemonSet controller's move this tick: a pod for each node without one, and (by marking
/// them terminating) old pods to delete while `maxUnavailable` allows.
fn daemon_set_step(
    state: &mut SetState,
    nodes: &[String],
    strategy: &Value,
    rolling: bool,
    update: u64,
    now: Instant,
) -> Vec<NewPod> {
    let on = |state: &SetState, node: &str| -> Option<usize> {
        (0..state.pods.len()).find(|&i| {
            state.pods[i].terminating_since.is_none()
                && state.node_of.get(&state.pods[i].name).map(String::as_str) == Some(node)
        })
    };
    let mut create = Vec::new();
    for node in nodes {
        let busy = state
            .pods
            .iter()
            .any(|p| state.node_of.get(&p.name) == Some(node) && p.terminating_since.is_some());
        if on(state, node).is_none() && !busy {
            create.push(NewPod {
                name: None,
                revision: update,
                node: node.clone(),
            });
        }
    }
    if !rolling {
        return create;
    }
    let max_unavailable = scaled(&strategy["rollingUpdate"]["maxUnavailable"], nodes.len()).max(1);
    let mut unavailable = nodes
        .iter()
        .filter(|n| on(state, n).is_none_or(|i| !is_ready(&state.pods[i], now)))
        .count();
    // Old pods that are not available go first: deleting them costs no availability.
    let mut old: Vec<usize> = nodes
        .iter()
        .filter_map(|n| on(state, n))
        .filter(|&i| state.pods[i].revision != update)
        .collect();
    old.sort_by_key(|&i| is_ready(&state.pods[i], now));
    for i in old {
        let available = is_ready(&state.pods[i], now);
        if available && unavailable >= max_unavailable {
            break;
        }
        state.pods[i].terminating_since = Some(now);
        unavailable += usize::from(available);
    }
    create
}

/// The DaemonSet's status and whether its rollout is complete.
fn daemon_set_status(
    state: &SetState,
    nodes: &[String],
    object: &Value,
    update: u64,
    now: Instant,
) -> (Value, bool) {
    let on = |node: &str| {
        state.pods.iter().find(|p| {
            p.terminating_since.is_none()
                && state.node_of.get(&p.name).map(String::as_str) == Some(node)
        })
    };
    let desired = nodes.len();
    let scheduled = nodes.iter().filter(|n| on(n).is_some()).count();
    let ready = nodes
        .iter()
        .filter(|n| on(n).is_some_and(|p| is_ready(p, now)))
        .count();
    let updated = nodes
        .iter()
        .filter(|n| on(n).is_some_and(|p| p.revision == update))
        .count();
    let mut status = json!({
        "observedGeneration": object["metadata"]["generation"],
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": 0,
        "numberReady": ready,
        "numberAvailable": ready,
        "updatedNumberScheduled": updated,
    });
    if desired > ready {
        status["numberUnavailable"] = json!(desired - ready);
    }
    for zero in ["numberAvailable", "updatedNumberScheduled"] {
        if status[zero] == json!(0) {
            status.as_object_mut().unwrap().remove(zero);
        }
    }
    let complete = updated == desired && ready == desired;
    (status, complete)
}

/// Creates one of the set's pods from revision `revision`'s template (`newStatefulSetPod`, the
/// DaemonSet's `CreatePods`): the template's labels plus `controller-revision-hash` (and the
/// StatefulSet's pod name and index labels, or the DaemonSet's template generation), the set as
/// controlling owner, bound to `node`. None when the name is still taken (its predecessor still
/// terminates) or the API refused it.
fn create_set_pod(
    store: &mut Store,
    pods_rt: &ResourceType,
    state: &mut SetState,
    key: &SetKey,
    object: &Value,
    new: &NewPod,
) -> Option<Pod> {
    let (ns, kind, set) = key;
    let (revision, node) = (new.revision, new.node.as_str());
    let template = state.template(revision).clone();
    let meta = &template["metadata"];
    let mut labels = meta["labels"].as_object().cloned().unwrap_or_default();
    // A StatefulSet labels its pods with the revision's name (`setPodRevision`), a DaemonSet
    // with the bare hash (`util.CreatePodTemplate`).
    let revision_label = match kind {
        SetKind::StatefulSet => state.revision_name(set, revision),
        SetKind::DaemonSet => state.hashes[(revision - 1) as usize].clone(),
    };
    labels.insert("controller-revision-hash".into(), json!(revision_label));
    match (kind, &new.name) {
        (SetKind::StatefulSet, Some(pod_name)) => {
            labels.insert("statefulset.kubernetes.io/pod-name".into(), json!(pod_name));
            if let Some(ord) = ordinal(set, pod_name) {
                labels.insert(
                    "apps.kubernetes.io/pod-index".into(),
                    json!(ord.to_string()),
                );
            }
        }
        _ => {
            let generation = object["metadata"]["generation"].to_string();
            labels.insert("pod-template-generation".into(), json!(generation));
        }
    }
    let mut metadata = json!({
        "namespace": ns,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": kind.kind(),
            "name": set,
            "uid": state.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    match &new.name {
        Some(name) => metadata["name"] = json!(name),
        None => metadata["generateName"] = json!(format!("{set}-")),
    }
    for field in ["annotations", "finalizers"] {
        if let Some(v) = meta.get(field).filter(|v| !v.is_null()) {
            metadata[field] = v.clone();
        }
    }
    let mut spec = pod_spec(&template);
    spec["nodeName"] = json!(node);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
    let w = Write {
        rt: pods_rt,
        namespace: ns,
        name: "",
        subresource: "",
        manager: "kube-controller-manager",
    };
    let created = store.create(&w, pod).ok()?;
    let name = created["metadata"]["name"].as_str()?.to_string();
    Some(Pod::new(name, revision))
}
