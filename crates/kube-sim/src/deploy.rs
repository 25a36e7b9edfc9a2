//! A Deployment controller and kubelet in one: rolls pods to a new template one surge pod at a
//! time (maxSurge 1, maxUnavailable 0), reports status exactly in the fields `kubectl rollout
//! status` reads, and records which Secret values each pod started with.

mod argo;
mod sets;

use crate::store::{Store, Write, now_rfc3339, resource_key};
use crate::types::ResourceType;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RolloutBehavior {
    /// New pods become ready after the configured delay.
    #[default]
    Normal,
    /// New pods never become ready: the rollout stalls and, after the Deployment's
    /// `progressDeadlineSeconds`, reports `ProgressDeadlineExceeded`.
    Stall,
    /// Only pods that read this value from a Secret become ready (a release that works only with
    /// a given key, as the engine exits on a refused key): a rollback to it succeeds.
    StallUnlessSecret(String),
}

impl RolloutBehavior {
    fn lets_ready(&self, secrets: &BTreeMap<String, Option<String>>) -> bool {
        match self {
            RolloutBehavior::Normal => true,
            RolloutBehavior::Stall => false,
            RolloutBehavior::StallUnlessSecret(value) => secrets
                .values()
                .any(|v| v.as_deref() == Some(value.as_str())),
        }
    }
}

/// One simulated pod, as the zero-downtime checks see it.
#[derive(Clone, Debug)]
pub struct PodView {
    pub namespace: String,
    /// The workload (Deployment, StatefulSet or DaemonSet) the pod belongs to (empty for a pod
    /// created through the API).
    pub deployment: String,
    pub name: String,
    /// The Deployment revision (ReplicaSet) the pod runs; 0 for a pod not a Deployment's.
    pub revision: u64,
    pub ready: bool,
    pub terminating: bool,
    /// `secretName/key` -> the value the pod read at start (None when absent).
    pub secrets: BTreeMap<String, Option<String>>,
    /// (kind, name) of the pod's controller, its `ownerReferences` entry with `controller: true`:
    /// `("ReplicaSet", "<deployment>-<pod-template-hash>")` for a Deployment's pods.
    pub owner: Option<(String, String)>,
}

/// When each revision of a Deployment was requested and when its rollout completed, in
/// milliseconds since the Unix epoch.
#[derive(Clone, Debug)]
pub struct RolloutRecord {
    pub namespace: String,
    pub deployment: String,
    pub revision: u64,
    pub template_changed_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

/// What the Pod object's status shows, to write it only when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shown {
    phase: &'static str,
    ready: bool,
}

#[derive(Clone, Debug)]
struct Pod {
    name: String,
    revision: u64,
    ready_at: Option<Instant>,
    terminating_since: Option<Instant>,
    /// When the grace period ends and the kubelet removes the Pod object.
    gone_at: Option<Instant>,
    secrets: BTreeMap<String, Option<String>>,
    /// When the kubelet took the pod (its `startTime`), RFC 3339.
    accepted_at: String,
    /// When its containers started (None while Pending: a required Secret or key is missing).
    started_at: Option<String>,
    /// When the Ready condition turned True.
    ready_since: Option<String>,
    /// `Succeeded` or `Failed` and when (set by a test for a Job's pod): no longer running.
    finished: Option<(&'static str, String)>,
    shown: Option<Shown>,
}

impl Pod {
    fn new(name: String, revision: u64) -> Self {
        Self {
            name,
            revision,
            ready_at: None,
            terminating_since: None,
            gone_at: None,
            secrets: BTreeMap::new(),
            accepted_at: now_rfc3339(),
            started_at: None,
            ready_since: None,
            finished: None,
            shown: None,
        }
    }

    fn is_ready(&self, now: Instant) -> bool {
        self.ready_at.is_some_and(|t| t <= now)
    }

    /// Reads the Secrets as the containers start; they start only if every required one is
    /// there, and become ready `ready_after` later if `lets_ready`.
    fn start(
        &mut self,
        read: (BTreeMap<String, Option<String>>, bool),
        lets_ready: impl FnOnce(&BTreeMap<String, Option<String>>) -> bool,
        ready_after: Duration,
        now: Instant,
    ) {
        let (secrets, startable) = read;
        if startable && self.started_at.is_none() {
            self.started_at = Some(now_rfc3339());
        }
        if startable && lets_ready(&secrets) {
            self.ready_at = Some(now + ready_after);
        }
        self.secrets = secrets;
    }

    fn view(&self, ns: &str, deployment: &str, owner: &Option<(String, String)>) -> PodView {
        PodView {
            namespace: ns.to_string(),
            deployment: deployment.to_string(),
            name: self.name.clone(),
            revision: self.revision,
            ready: self.is_ready(Instant::now()),
            terminating: self.terminating_since.is_some(),
            secrets: self.secrets.clone(),
            owner: owner.clone(),
        }
    }
}

#[derive(Default)]
struct DeploymentState {
    templates: Vec<Value>,
    /// The pod-template-hash of each revision's template (its ReplicaSet is
    /// `<deployment>-<hash>`).
    hashes: Vec<String>,
    uid: String,
    pods: Vec<Pod>,
    last_progress: Option<Instant>,
    last_ready_count: usize,
    pod_counter: u64,
    /// Index in `DeploySim::rollouts` of this Deployment's latest record (avoids scanning them
    /// all on every tick when thousands of Deployments are simulated).
    latest_rollout: Option<usize>,
    /// The resourceVersion this state last reconciled, and whether nothing was left to do then
    /// (complete, every pod ready, none terminating): such a Deployment is skipped until it
    /// or one of its pods changes, so thousands of quiet ones cost nothing per tick.
    settled_at_rv: Option<String>,
    /// A canary Rollout's steps, pause and abort (see [`argo`]).
    canary: argo::CanaryProgress,
}

impl DeploymentState {
    fn rs_name(&self, deployment: &str, revision: u64) -> String {
        format!("{deployment}-{}", self.hashes[(revision - 1) as usize])
    }
}

/// A pod that is not (or no longer) a live Deployment's: created through the API (bare, or owned
/// by a Job or anything else), or left terminating by a deleted Deployment.
struct OtherPod {
    pod: Pod,
    deployment: String,
    owner: Option<(String, String)>,
    spec: Value,
}

pub struct DeploySim {
    pub pod_ready_after: Duration,
    behaviors: HashMap<(String, String), RolloutBehavior>,
    ready_after_overrides: HashMap<(String, String), Duration>,
    states: HashMap<(String, String), DeploymentState>,
    /// (namespace, pod) -> the Deployment whose pod it is.
    deployment_of: HashMap<(String, String), String>,
    others: BTreeMap<(String, String), OtherPod>,
    pub rollouts: Vec<RolloutRecord>,
    /// The StatefulSets and DaemonSets (see [`sets`]).
    sets: HashMap<sets::SetKey, sets::SetState>,
    /// (namespace, pod) -> the StatefulSet or DaemonSet whose pod it is.
    set_of: HashMap<(String, String), sets::SetKey>,
    /// The nodes a DaemonSet runs a pod on.
    nodes: Vec<String>,
    /// The Argo Rollouts whose `analysis` steps fail.
    failing_analysis: std::collections::HashSet<(String, String)>,
}

fn epoch_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The node every simulated pod runs on.
pub const NODE_NAME: &str = "sim-node";

impl DeploySim {
    /// How long a retired pod terminates is the store's (`Store::default_pod_grace`, or the
    /// pod's `terminationGracePeriodSeconds`).
    pub fn new(pod_ready_after: Duration) -> Self {
        Self {
            pod_ready_after,
            behaviors: HashMap::new(),
            ready_after_overrides: HashMap::new(),
            states: HashMap::new(),
            deployment_of: HashMap::new(),
            others: BTreeMap::new(),
            rollouts: Vec::new(),
            sets: HashMap::new(),
            set_of: HashMap::new(),
            nodes: vec![NODE_NAME.to_string()],
            failing_analysis: Default::default(),
        }
    }

    /// Whether the `analysis` steps of Rollout `ns/name` pass (they do unless told otherwise).
    pub fn set_analysis_passes(&mut self, ns: &str, name: &str, passes: bool) {
        let key = (ns.to_string(), name.to_string());
        if passes {
            self.failing_analysis.remove(&key);
        } else {
            self.failing_analysis.insert(key);
        }
    }

    pub fn set_behavior(&mut self, ns: &str, name: &str, behavior: RolloutBehavior) {
        self.behaviors.insert((ns.into(), name.into()), behavior);
    }

    pub fn set_pod_ready_after(&mut self, ns: &str, name: &str, delay: Duration) {
        self.ready_after_overrides
            .insert((ns.into(), name.into()), delay);
    }

    /// Every running pod of the Deployment restarts its containers by itself (a crash, an OOM
    /// kill): it reads its Secrets again, as kubelet resolves env and files at container start.
    pub fn restart_pods(&mut self, store: &Store, ns: &str, name: &str) {
        for (key, state) in self.sets.iter_mut() {
            if key.0 != ns || key.2 != name {
                continue;
            }
            for i in 0..state.pods.len() {
                if state.pods[i].terminating_since.is_none() {
                    let read = read_pod_secrets(store, ns, state.template(state.pods[i].revision));
                    state.pods[i].secrets = read.0;
                }
            }
        }
        let Some(DeploymentState {
            pods, templates, ..
        }) = self.states.get_mut(&(ns.to_string(), name.to_string()))
        else {
            return;
        };
        for pod in pods.iter_mut().filter(|p| p.terminating_since.is_none()) {
            let template = &templates[(pod.revision - 1) as usize];
            pod.secrets = read_pod_secrets(store, ns, template).0;
        }
    }

    /// Every pod that runs (or still terminates); finished ones (`Succeeded`, `Failed`) are not.
    pub fn pods(&self) -> Vec<PodView> {
        let mut out = Vec::new();
        for ((ns, name), state) in &self.states {
            for pod in &state.pods {
                let owner = Some(("ReplicaSet".to_string(), state.rs_name(name, pod.revision)));
                out.push(pod.view(ns, name, &owner));
            }
        }
        for ((ns, kind, name), state) in &self.sets {
            for pod in &state.pods {
                let owner = Some((kind.kind().to_string(), name.clone()));
                out.push(pod.view(ns, name, &owner));
            }
        }
        for ((ns, _), other) in &self.others {
            if other.pod.finished.is_none() {
                out.push(other.pod.view(ns, &other.deployment, &other.owner));
            }
        }
        out
    }

    /// A test finishes a pod's containers (a Job's pod): `Succeeded` or `Failed`.
    pub fn set_pod_phase(
        &mut self,
        store: &mut Store,
        ns: &str,
        name: &str,
        phase: &str,
    ) -> Result<(), String> {
        let phase = match phase {
            "Succeeded" => "Succeeded",
            "Failed" => "Failed",
            other => {
                return Err(format!(
                    "phase {other}: only Succeeded or Failed can be set"
                ));
            }
        };
        let key = (ns.to_string(), name.to_string());
        if let Some(deployment) = self.deployment_of.get(&key) {
            return Err(format!(
                "pod {name} is Deployment {deployment}'s: its containers restart (restartPolicy Always)"
            ));
        }
        if let Some((_, kind, set)) = self.set_of.get(&key) {
            return Err(format!(
                "pod {name} is {} {set}'s: its containers restart (restartPolicy Always)",
                kind.kind()
            ));
        }
        let other = self
            .others
            .get_mut(&key)
            .ok_or_else(|| format!("no pod {ns}/{name} runs on {NODE_NAME}"))?;
        if other.pod.finished.is_none() {
            other.pod.finished = Some((phase, now_rfc3339()));
        }
        sync_pod_status(store, ns, &mut other.pod, &other.spec, Instant::now());
        store.take_touched_pods();
        Ok(())
    }

    /// Takes in what others did to pods since the simulator last looked: pods created through
    /// the API start on the simulated node, deleted ones terminate, removed ones are gone. Runs
    /// under the store's lock, right after each API write and at each tick.
    pub fn sync_pods(&mut self, store: &mut Store) {
        let touched = store.take_touched_pods();
        if touched.is_empty() {
            return;
        }
        let Some(pods_rt) = store.resource_type("", "pods") else {
            return;
        };
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for key in touched {
            if !seen.insert(key.clone()) {
                continue;
            }
            let object = store.get(&pods_rt, &key.0, &key.1).ok();
            let deleting = object
                .as_ref()
                .is_some_and(|o| o["metadata"].get("deletionTimestamp").is_some());
            let deadline = store.pod_deadline(&key.0, &key.1).unwrap_or(now);
            if let Some(deployment) = self.deployment_of.get(&key).cloned() {
                let Some(state) = self.states.get_mut(&(key.0.clone(), deployment)) else {
                    continue;
                };
                let Some(i) = state.pods.iter().position(|p| p.name == key.1) else {
                    continue;
                };
                if object.is_none() {
                    state.pods.remove(i);
                    self.deployment_of.remove(&key);
                    state.settled_at_rv = None;
                } else if deleting {
                    let pod = &mut state.pods[i];
                    pod.terminating_since.get_or_insert(now);
                    pod.gone_at = Some(deadline);
                    state.settled_at_rv = None;
                }
            } else if let Some(set) = self.set_of.get(&key).cloned() {
                let Some(state) = self.sets.get_mut(&set) else {
                    continue;
                };
                let Some(i) = state.pods.iter().position(|p| p.name == key.1) else {
                    continue;
                };
                if object.is_none() {
                    state.pods.remove(i);
                    self.set_of.remove(&key);
                } else if deleting {
                    let pod = &mut state.pods[i];
                    pod.terminating_since.get_or_insert(now);
                    pod.gone_at = Some(deadline);
                }
            } else if let Some(other) = self.others.get_mut(&key) {
                if object.is_none() {
                    self.others.remove(&key);
                } else if deleting {
                    other.pod.terminating_since.get_or_insert(now);
                    other.pod.gone_at = Some(deadline);
                }
            } else if let Some(object) = object.filter(|_| !deleting) {
                self.start_api_pod(store, &pods_rt, &key.0, object, now);
            }
        }
        // What the simulator wrote itself needs no second look.
        store.take_touched_pods();
    }

    /// The kubelet of the simulated node takes a pod created through the API: binds it to the
    /// node, reads its Secrets as its containers start, and reports its status.
    fn start_api_pod(
        &mut self,
        store: &mut Store,
        pods_rt: &ResourceType,
        ns: &str,
        object: Value,
        now: Instant,
    ) {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let owner = object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"] == json!(true))
            .map(|r| {
                (
                    r["kind"].as_str().unwrap_or("").to_string(),
                    r["name"].as_str().unwrap_or("").to_string(),
                )
            });
        let mut spec = object["spec"].clone();
        if spec["nodeName"].as_str().is_none_or(str::is_empty) {
            spec["nodeName"] = json!(NODE_NAME);
            let w = Write {
                rt: pods_rt,
                namespace: ns,
                name: &name,
                subresource: "",
                manager: "kube-scheduler",
            };
            let _ = store.update(&w, None, |current, _| {
                let mut next = current.clone();
                next["spec"]["nodeName"] = json!(NODE_NAME);
                Ok(next)
            });
        }
        let mut pod = Pod::new(name.clone(), 0);
        pod.start(
            read_pod_secrets(store, ns, &object),
            |_| true,
            self.pod_ready_after,
            now,
        );
        sync_pod_status(store, ns, &mut pod, &spec, now);
        self.others.insert(
            (ns.to_string(), name),
            OtherPod {
                pod,
                deployment: String::new(),
                owner,
                spec,
            },
        );
    }

    /// The kubelet's work on pods that are not a live Deployment's: Pending ones retry, started
    /// ones become ready, terminating ones are removed when their grace period ends.
    fn tick_others(&mut self, store: &mut Store, pods_rt: &ResourceType) {
        let now = Instant::now();
        let ready_after = self.pod_ready_after;
        let mut gone = Vec::new();
        for ((ns, name), other) in self.others.iter_mut() {
            let pod = &mut other.pod;
            if pod.gone_at.is_some_and(|t| t <= now) {
                let _ = store.delete(pods_rt, ns, name, None, None, Some(0));
                gone.push((ns.clone(), name.clone()));
                continue;
            }
            if pod.finished.is_some() || pod.terminating_since.is_some() {
                continue;
            }
            if pod.started_at.is_none() {
                let pod_object = json!({"spec": other.spec});
                pod.start(
                    read_pod_secrets(store, ns, &pod_object),
                    |_| true,
                    ready_after,
                    now,
                );
            }
            sync_pod_status(store, ns, pod, &other.spec, now);
        }
        for key in gone {
            self.others.remove(&key);
        }
    }

    /// One reconcile pass over every StatefulSet, DaemonSet and Deployment in the store, and the
    /// kubelet's over the other pods.
    pub fn tick(&mut self, store: &mut Store) {
        let Some(rt) = store
            .types
            .get(&resource_key("apps", "deployments"))
            .cloned()
        else {
            return;
        };
        let Some(pods_rt) = store.resource_type("", "pods") else {
            return;
        };
        self.sync_pods(store);
        self.tick_sets(store, &pods_rt);
        // Argo Rollouts, once a test installed their CRD, roll as Deployments do (a Rollout and
        // a Deployment of the same name in one namespace are not simulated).
        let rollouts = store.resource_type("argoproj.io", "rollouts");
        let mut versions: Vec<_> = (store.versions(&rt).into_iter())
            .map(|(ns, name, rv)| (rt.clone(), ns, name, rv))
            .collect();
        if let Some(rollouts) = &rollouts {
            versions.extend(
                (store.versions(rollouts).into_iter())
                    .map(|(ns, name, rv)| (rollouts.clone(), ns, name, rv)),
            );
        }
        let live: std::collections::HashSet<(String, String)> = versions
            .iter()
            .map(|(_, ns, name, _)| (ns.clone(), name.clone()))
            .collect();
        let removed: Vec<(String, String)> = self
            .states
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for key in removed {
            self.remove_deployment(store, &pods_rt, key);
        }
        for (rt, ns, name, rv) in versions {
            let key = (ns, name);
            if self
                .states
                .get(&key)
                .is_some_and(|s| s.settled_at_rv.as_ref() == Some(&rv))
            {
                continue;
            }
            let Ok(d) = store.get(&rt, &key.0, &key.1) else {
                continue;
            };
            let settled = self.reconcile(store, &rt, &pods_rt, &d);
            let rv_now = store.version_of(&rt, &key.0, &key.1);
            if let Some(state) = self.states.get_mut(&key) {
                state.settled_at_rv = if settled { rv_now } else { None };
            }
        }
        self.tick_others(store, &pods_rt);
        // What the simulator wrote itself needs no second look.
        store.take_touched_pods();
    }

    /// A deleted Deployment's pods are deleted too (the garbage collector's background cascade
    /// through its ReplicaSets): they terminate, then vanish.
    fn remove_deployment(
        &mut self,
        store: &mut Store,
        pods_rt: &ResourceType,
        key: (String, String),
    ) {
        let Some(state) = self.states.remove(&key) else {
            return;
        };
        let (ns, deployment) = key;
        let now = Instant::now();
        for mut pod in state.pods.iter().cloned() {
            let pod_key = (ns.clone(), pod.name.clone());
            self.deployment_of.remove(&pod_key);
            if pod.terminating_since.is_none() {
                let _ = store.delete(pods_rt, &ns, &pod.name, None, None, None);
                pod.terminating_since = Some(now);
                pod.gone_at = Some(store.pod_deadline(&ns, &pod.name).unwrap_or(now));
            }
            let owner = Some((
                "ReplicaSet".to_string(),
                state.rs_name(&deployment, pod.revision),
            ));
            let spec = pod_spec(&state.templates[(pod.revision - 1) as usize]);
            self.others.insert(
                pod_key,
                OtherPod {
                    pod,
                    deployment: deployment.clone(),
                    owner,
                    spec,
                },
            );
        }
    }

    /// Returns whether the Deployment is settled: nothing will change until it does.
    fn reconcile(
        &mut self,
        store: &mut Store,
        rt: &ResourceType,
        pods_rt: &ResourceType,
        d: &Value,
    ) -> bool {
        let now = Instant::now();
        let argo = rt.kind == "Rollout";
        if argo && d["spec"]["template"].is_null() {
            // A Rollout with a `workloadRef` runs the referenced Deployment's template.
            return true;
        }
        let ns = ns_of(d);
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = (ns.clone(), name.clone());
        let behavior = self.behaviors.get(&key).cloned().unwrap_or_default();
        let ready_after = self
            .ready_after_overrides
            .get(&key)
            .copied()
            .unwrap_or(self.pod_ready_after);
        let state = self.states.entry(key.clone()).or_default();
        if state.uid.is_empty() {
            state.uid = d["metadata"]["uid"].as_str().unwrap_or("").to_string();
        }
        let spec = &d["spec"];
        let mut pass = Pass {
            store,
            pods_rt,
            state,
            rollouts: &mut self.rollouts,
            deployment_of: &mut self.deployment_of,
            failing_analysis: &self.failing_analysis,
            d,
            ns,
            name,
            key,
            argo,
            behavior,
            ready_after,
            now,
            desired: spec["replicas"].as_u64().unwrap_or(1) as usize,
            paused: spec["paused"].as_bool().unwrap_or(false),
            deadline: Duration::from_secs(spec["progressDeadlineSeconds"].as_u64().unwrap_or(600)),
        };
        let revisions = pass.revisions();
        pass.kubelet_pass();
        let progressed = pass.scale_pods(&revisions);
        let counts = pass.count(&revisions);
        let progressing = pass.progressing(&revisions, &counts, progressed);
        pass.record_completion(&revisions, &counts);
        let status = pass.status(&revisions, &counts, progressing);
        pass.finish(rt, &revisions, &counts, status)
    }
}

/// What the phases of one Deployment's (or Rollout's) reconcile share: the store, the
/// simulator's state of this Deployment and the registries it updates, and what was read from
/// the Deployment at the start of the pass.
struct Pass<'a> {
    store: &'a mut Store,
    pods_rt: &'a ResourceType,
    state: &'a mut DeploymentState,
    rollouts: &'a mut Vec<RolloutRecord>,
    deployment_of: &'a mut HashMap<(String, String), String>,
    failing_analysis: &'a std::collections::HashSet<(String, String)>,
    d: &'a Value,
    ns: String,
    name: String,
    key: (String, String),
    argo: bool,
    behavior: RolloutBehavior,
    ready_after: Duration,
    now: Instant,
    desired: usize,
    paused: bool,
    deadline: Duration,
}

/// The revisions a reconcile pass works with, and what it read from the previous status.
struct Revisions {
    /// The new ReplicaSet's revision (None while paused after a template change).
    new_revision: Option<u64>,
    /// `new_revision`, or 0 (no pod's) when there is none.
    current: u64,
    /// The revision pods are scaled to: the current one, or the stable one once aborted.
    serving: u64,
    old_status: Value,
    /// The previous Progressing condition, with Deployment reasons for a Rollout's.
    old_progressing: Value,
    /// A canary Rollout's steps (empty for a Deployment).
    steps: Vec<Value>,
    /// Whether the Deployment was resumed in this pass.
    resumed: bool,
}

/// The pod counts a pass reports, and where the rollout stands.
struct Counts {
    replicas: usize,
    updated_replicas: usize,
    ready: usize,
    /// Whether a canary pause step holds the rollout.
    step_paused: bool,
    complete: bool,
    stalled: bool,
}

/// Whether a pod counts as ready at `now`: ready and not terminating.
fn ready_active(p: &Pod, now: Instant) -> bool {
    p.ready_at.is_some_and(|t| t <= now) && p.terminating_since.is_none()
}

impl Pass<'_> {
    /// The new ReplicaSet is the one whose template is the Deployment's (`FindNewReplicaSet`).
    /// A new template is a new revision (a new ReplicaSet), unless the Deployment is paused:
    /// then the controller only syncs (`getAllReplicaSetsAndSyncRevision` with
    /// createIfNotExisted false), so after a template change there is no new ReplicaSet and no
    /// pod is updated; a Deployment created paused has no ReplicaSet at all. Returns whether the
    /// template was a known revision's, and the new revision.
    fn new_revision(&mut self) -> (bool, Option<u64>) {
        let state = &mut *self.state;
        let template = self.d["spec"]["template"].clone();
        let template_known = state.templates.iter().position(|t| *t == template);
        let new_revision = match template_known {
            Some(i) => Some(i as u64 + 1),
            None if !self.paused => {
                let hash = template_hash(&template, &state.hashes);
                state.hashes.push(hash);
                state.templates.push(template.clone());
                state.last_progress = Some(self.now);
                let revision = state.templates.len() as u64;
                state.latest_rollout = Some(self.rollouts.len());
                self.rollouts.push(RolloutRecord {
                    namespace: self.ns.clone(),
                    deployment: self.name.clone(),
                    revision,
                    template_changed_at_ms: epoch_ms(),
                    completed_at_ms: None,
                });
                Some(revision)
            }
            None => None,
        };
        (template_known.is_some(), new_revision)
    }

    /// Finds the revisions of this pass: the new one, and for a canary Rollout its steps and the
    /// revision its pods serve; restarts the progress deadline on a resume, and records a
    /// rollback to an earlier template as a new rollout.
    fn revisions(&mut self) -> Revisions {
        let (template_known, new_revision) = self.new_revision();
        let state = &mut *self.state;
        // Revision 0 is no pod's: while there is no new ReplicaSet every pod is old.
        let current_revision = new_revision.unwrap_or(0);
        let old_status = self.d.get("status").cloned().unwrap_or(json!({}));
        let mut old_progressing = old_status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
            .cloned()
            .unwrap_or(Value::Null);
        if self.argo {
            argo::deployment_reason(&mut old_progressing);
        }
        // A canary Rollout's steps: how many pods may run the new template, and, once aborted,
        // the stable revision its pods return to.
        let steps = if self.argo {
            argo::steps(self.d).to_vec()
        } else {
            Vec::new()
        };
        state.canary.follow(current_revision);
        let stable_revision = (old_status["stableRS"].as_str())
            .and_then(|h| state.hashes.iter().position(|x| x == h))
            .map(|i| i as u64 + 1);
        if stable_revision.is_none() || stable_revision == Some(current_revision) {
            // Argo promotes a Rollout without a stable ReplicaSet (its first update) fully, and
            // skips the steps of a return to the stable template (`SkipSteps`).
            state.canary.skip(&steps);
        }
        let step_paused_before = state.canary.is_paused();
        let serving_revision = match (&state.canary.aborted, stable_revision) {
            (Some(_), Some(stable)) => stable,
            _ => current_revision,
        };
        // `checkPausedConditions`: resuming starts the progress deadline anew.
        let resumed =
            !self.paused && !step_paused_before && old_progressing["reason"] == "DeploymentPaused";
        if resumed {
            state.last_progress = Some(self.now);
        }
        // A rollback to an earlier template makes that revision current again.
        if template_known
            && !self.paused
            && state
                .latest_rollout
                .is_some_and(|i| self.rollouts[i].revision != current_revision)
        {
            state.last_progress = Some(self.now);
            state.latest_rollout = Some(self.rollouts.len());
            self.rollouts.push(RolloutRecord {
                namespace: self.ns.clone(),
                deployment: self.name.clone(),
                revision: current_revision,
                template_changed_at_ms: epoch_ms(),
                completed_at_ms: None,
            });
        }
        Revisions {
            new_revision,
            current: current_revision,
            serving: serving_revision,
            old_status,
            old_progressing,
            steps,
            resumed,
        }
    }

    /// The kubelet's work on the Deployment's pods before the controller scales them: those
    /// whose grace period ended are removed, those not ready restart.
    fn kubelet_pass(&mut self) {
        let now = self.now;
        let ns = &self.ns;
        let store = &mut *self.store;
        let pods_rt = self.pods_rt;
        let state = &mut *self.state;
        // Pods finish terminating after their grace period: the kubelet removes them.
        let deployment_of = &mut *self.deployment_of;
        state.pods.retain(|p| {
            let gone = p.gone_at.is_some_and(|t| t <= now);
            if gone {
                let _ = store.delete(pods_rt, ns, &p.name, None, None, Some(0));
                deployment_of.remove(&(ns.clone(), p.name.clone()));
            }
            !gone
        });
        // Pods that are not ready keep restarting, as kubelet does, and read their Secrets again
        // each time; they become ready once the Secrets exist and the behavior lets them.
        {
            let templates = &state.templates;
            let behavior = &self.behavior;
            for pod in state
                .pods
                .iter_mut()
                .filter(|p| p.ready_at.is_none() && p.terminating_since.is_none())
            {
                let read = read_pod_secrets(store, ns, &templates[(pod.revision - 1) as usize]);
                pod.start(read, |s| behavior.lets_ready(s), self.ready_after, now);
            }
        }
    }

    /// The rolling update (maxSurge 1, maxUnavailable 0, a canary step's limit): surges one
    /// new pod, or retires one old or excess pod. Returns whether the rollout progressed,
    /// readiness transitions included, and restarts the progress deadline if it did.
    fn scale_pods(&mut self, rev: &Revisions) -> bool {
        let now = self.now;
        let desired = self.desired;
        let serving_revision = rev.serving;
        let is_ready = |p: &Pod| ready_active(p, now);
        let active = |p: &Pod| p.terminating_since.is_none();

        let mut progressed = false;
        let state = &*self.state;
        let updated: Vec<usize> = (0..state.pods.len())
            .filter(|&i| active(&state.pods[i]) && state.pods[i].revision == serving_revision)
            .collect();
        let old: Vec<usize> = (0..state.pods.len())
            .filter(|&i| active(&state.pods[i]) && state.pods[i].revision != serving_revision)
            .collect();
        let allowed = if rev.steps.is_empty() || state.canary.aborted.is_some() {
            desired
        } else {
            state.canary.allowed(&rev.steps, desired)
        };
        let ready_total = state.pods.iter().filter(|p| is_ready(p)).count();
        let active_total = updated.len() + old.len();

        if !self.paused {
            let mut victim = None;
            if updated.len() < allowed && active_total < desired + 1 {
                progressed = self.surge_pod(serving_revision);
            } else if !old.is_empty() {
                // Retire an old pod only while availability stays at `desired` (maxUnavailable 0).
                let unready_old = old.iter().copied().find(|&i| !is_ready(&state.pods[i]));
                victim = unready_old.or((ready_total > desired).then_some(old[0]));
            } else if old.is_empty() && updated.len() > desired {
                victim = Some(updated[updated.len() - 1]);
            }
            if let Some(victim) = victim {
                // The ReplicaSet controller deletes the pod; it terminates for its grace period.
                let pod = &mut self.state.pods[victim];
                let _ = self
                    .store
                    .delete(self.pods_rt, &self.ns, &pod.name, None, None, None);
                pod.terminating_since = Some(now);
                pod.gone_at = Some(self.store.pod_deadline(&self.ns, &pod.name).unwrap_or(now));
                progressed = true;
            }
        }
        let state = &mut *self.state;
        // Readiness transitions count as progress.
        let ready_now = state.pods.iter().filter(|p| is_ready(p)).count();
        if ready_now != state.last_ready_count {
            state.last_ready_count = ready_now;
            progressed = true;
        }
        if progressed {
            state.last_progress = Some(now);
        }
        progressed
    }

    /// Surge one new pod of `serving_revision` (the ReplicaSet controller creates it from the
    /// template); it reads the Secrets as they are now. Returns whether it was created.
    fn surge_pod(&mut self, serving_revision: u64) -> bool {
        let ns = &self.ns;
        let state = &mut *self.state;
        let template = state.templates[(serving_revision - 1) as usize].clone();
        let rs_name = state.rs_name(&self.name, serving_revision);
        let rs_uid = replica_set_uid(&state.uid, &rs_name);
        let object = loop {
            state.pod_counter += 1;
            let pod_name = format!("{rs_name}-{}", pod_suffix(state.pod_counter));
            let object = pod_from_template(
                ns,
                &pod_name,
                &rs_name,
                &rs_uid,
                &template,
                &state.hashes[(serving_revision - 1) as usize],
                if self.argo {
                    "rollouts-pod-template-hash"
                } else {
                    "pod-template-hash"
                },
            );
            let w = Write {
                rt: self.pods_rt,
                namespace: ns,
                name: "",
                subresource: "",
                manager: "kube-controller-manager",
            };
            match self.store.create(&w, object) {
                Err(e) if e.reason == "AlreadyExists" => continue,
                other => break other,
            }
        };
        let Ok(object) = object else {
            return false;
        };
        let pod_name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut pod = Pod::new(pod_name.clone(), serving_revision);
        pod.start(
            read_pod_secrets(self.store, ns, &template),
            |s| self.behavior.lets_ready(s),
            self.ready_after,
            self.now,
        );
        self.deployment_of
            .insert((ns.clone(), pod_name), self.name.clone());
        state.pods.push(pod);
        true
    }

    /// Counts the pods as the status reports them, runs a canary Rollout's steps as far as the
    /// pods allow, and tells whether the rollout is complete or stalled.
    fn count(&mut self, rev: &Revisions) -> Counts {
        let now = self.now;
        let desired = self.desired;
        let is_ready = |p: &Pod| ready_active(p, now);
        let state = &mut *self.state;
        let active_pods: Vec<&Pod> = state
            .pods
            .iter()
            .filter(|p| p.terminating_since.is_none())
            .collect();
        let replicas = active_pods.len();
        let updated_replicas = active_pods
            .iter()
            .filter(|p| p.revision == rev.serving)
            .count();
        let ready = active_pods.iter().filter(|p| is_ready(p)).count();
        if !rev.steps.is_empty() {
            let updated_ready = (active_pods.iter())
                .filter(|p| p.revision == rev.current && is_ready(p))
                .count();
            let pods = argo::Pods {
                desired,
                updated_ready,
                old_active: replicas - updated_replicas,
                analysis_passes: !self.failing_analysis.contains(&self.key),
            };
            state
                .canary
                .advance(&rev.steps, &rev.old_status, self.paused, pods, now);
        }
        // A pause step holds the progress deadline, as `spec.paused` does (Argo's
        // `checkPausedConditions`).
        let step_paused = state.canary.is_paused();
        if step_paused {
            state.last_progress = Some(now);
        }
        let complete = updated_replicas >= desired
            && replicas <= updated_replicas
            && ready >= updated_replicas
            && state.canary.done(&rev.steps);
        let stalled = !complete
            && state
                .last_progress
                .is_some_and(|t| now.duration_since(t) > self.deadline);
        Counts {
            replicas,
            updated_replicas,
            ready,
            step_paused,
            complete,
            stalled,
        }
    }

    /// The Progressing condition's status, reason and message: paused, resumed, stalled,
    /// complete or progressing, a reported lack of progress staying while paused.
    fn progressing(
        &self,
        rev: &Revisions,
        counts: &Counts,
        progressed: bool,
    ) -> (&'static str, &'static str, String) {
        let old_progressing = &rev.old_progressing;
        let Counts {
            complete, stalled, ..
        } = *counts;
        let rs_name = rev
            .new_revision
            .map(|r| self.state.rs_name(&self.name, r))
            .unwrap_or_default();
        let timed_out = old_progressing["reason"] == "ProgressDeadlineExceeded";
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let held = self.paused || counts.step_paused;
        if held && timed_out {
            // A reported lack of progress is not overwritten by the paused condition.
            (
                "False",
                "ProgressDeadlineExceeded",
                text(&old_progressing["message"]),
            )
        } else if held {
            (
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".to_string(),
            )
        } else if (rev.resumed || old_progressing["reason"] == "DeploymentResumed")
            && !progressed
            && !complete
            && !stalled
        {
            (
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".to_string(),
            )
        } else if stalled {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else if complete {
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        }
    }

    /// A complete rollout of the current revision records when it completed (once).
    fn record_completion(&mut self, rev: &Revisions, counts: &Counts) {
        if counts.complete
            && let Some(r) = self.state.latest_rollout.map(|i| &mut self.rollouts[i])
            && r.revision == rev.current
            && r.completed_at_ms.is_none()
        {
            r.completed_at_ms = Some(epoch_ms());
        }
    }

    /// The status the controller reports: the counts, the Available and Progressing conditions
    /// (their transition times kept while they do not change), and a Rollout's own fields.
    fn status(
        &mut self,
        rev: &Revisions,
        counts: &Counts,
        progressing: (&str, &str, String),
    ) -> Value {
        let old_status = &rev.old_status;
        let (progressing_status, progressing_reason, progressing_message) = progressing;
        let Counts {
            replicas,
            updated_replicas,
            ready,
            complete,
            ..
        } = *counts;
        let condition = |type_: &str, status: &str, reason: &str, message: &str| {
            // Keep transition times stable while the condition does not change.
            let previous = old_status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
                .cloned();
            let unchanged = previous.as_ref().is_some_and(|p| {
                p["status"] == status && p["reason"] == reason && p["message"] == message
            });
            if unchanged {
                return previous.unwrap();
            }
            let time = now_rfc3339();
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "lastUpdateTime": time, "lastTransitionTime": time})
        };
        let available = ready >= self.desired;
        let mut status = json!({
            "observedGeneration": self.d["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": updated_replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                condition("Available", if available { "True" } else { "False" },
                          if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                          if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." }),
                condition("Progressing", progressing_status, progressing_reason, &progressing_message),
            ],
        });
        if replicas > ready {
            status["unavailableReplicas"] = json!(replicas - ready);
        }
        for zero in [
            "readyReplicas",
            "availableReplicas",
            "updatedReplicas",
            "replicas",
        ] {
            if status[zero] == json!(0) {
                status.as_object_mut().unwrap().remove(zero);
            }
        }
        if self.argo {
            let state = &mut *self.state;
            let hash = rev
                .new_revision
                .map(|r| state.hashes[(r - 1) as usize].clone());
            status = argo::status(&status, self.d, old_status, hash, complete && !self.paused);
            if !rev.steps.is_empty() {
                let on_new = (state.pods.iter())
                    .filter(|p| p.terminating_since.is_none() && p.revision == rev.current)
                    .count();
                state
                    .canary
                    .decorate(&mut status, old_status, self.paused, on_new);
            }
        }
        status
    }

    /// Writes the status if it changed, then the kubelet reports each pod's status as it
    /// changes. Returns whether the Deployment is settled.
    fn finish(self, rt: &ResourceType, rev: &Revisions, counts: &Counts, status: Value) -> bool {
        let now = self.now;
        if status != rev.old_status {
            self.store
                .controller_write_status(rt, &self.ns, &self.name, status);
        }
        // The kubelet reports each pod's status as it changes.
        let state = self.state;
        for pod in &mut state.pods {
            let spec = &state.templates[(pod.revision - 1) as usize]["spec"];
            sync_pod_status(self.store, &self.ns, pod, spec, now);
        }
        counts.complete
            && !self.paused
            && state.pods.iter().all(|p| ready_active(p, now))
            && state.pods.len() == self.desired
    }
}

/// A pod template's spec as it runs on the simulated node.
fn pod_spec(template: &Value) -> Value {
    let mut spec = template["spec"].clone();
    spec["nodeName"] = json!(NODE_NAME);
    spec
}

/// The Pod the ReplicaSet controller creates from a template (`controller.GetPodFromTemplate`):
/// the template's labels plus `pod-template-hash`, its annotations and finalizers, the
/// ReplicaSet as controller; the scheduler's binding is folded in (`spec.nodeName`).
fn pod_from_template(
    ns: &str,
    name: &str,
    rs_name: &str,
    rs_uid: &str,
    template: &Value,
    hash: &str,
    hash_label: &str,
) -> Value {
    let meta = &template["metadata"];
    let mut labels = meta["labels"].as_object().cloned().unwrap_or_default();
    labels.insert(hash_label.into(), json!(hash));
    let mut metadata = json!({
        "name": name,
        "generateName": format!("{rs_name}-"),
        "namespace": ns,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": rs_name,
            "uid": rs_uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    for field in ["annotations", "finalizers"] {
        if let Some(v) = meta.get(field).filter(|v| !v.is_null()) {
            metadata[field] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": pod_spec(template),
    })
}

/// FNV-1a, 32 bits, as `controller.ComputeHash` hashes a pod template.
fn fnv32a(bytes: impl IntoIterator<Item = u8>) -> u32 {
    bytes.into_iter().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The alphabet of `rand.SafeEncodeString` and generated names: no vowels, no look-alikes.
const SAFE_ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A template's pod-template-hash, as the Deployment controller writes it: the template's FNV-32a
/// in decimal, each digit mapped by `rand.SafeEncodeString` (e.g. `7d4b9c8f6`); a hash an earlier
/// revision already has is hashed again with a collision count, as `status.collisionCount` does.
fn template_hash(template: &Value, taken: &[String]) -> String {
    let text = template.to_string();
    (0u32..)
        .map(|collisions| {
            let salt = if collisions > 0 {
                collisions.to_string()
            } else {
                String::new()
            };
            let sum = fnv32a(text.bytes().chain(salt.bytes()));
            sum.to_string()
                .bytes()
                .map(|c| SAFE_ALPHANUMS[usize::from(c) % SAFE_ALPHANUMS.len()] as char)
                .collect::<String>()
        })
        .find(|h| !taken.contains(h))
        .unwrap()
}

/// The five random characters a generated pod name ends with, here drawn from the pod counter by
/// a bijection, so a Deployment's pods never repeat a name.
fn pod_suffix(counter: u64) -> String {
    const SPACE: u64 = 27 * 27 * 27 * 27 * 27;
    let mut x = (counter.wrapping_mul(7_368_787).wrapping_add(1_234_567)) % SPACE;
    let mut out = String::new();
    for _ in 0..5 {
        out.push(SAFE_ALPHANUMS[(x % 27) as usize] as char);
        x /= 27;
    }
    out
}

/// A stable uid for the ReplicaSet of a Deployment revision (the stand-in keeps no ReplicaSet
/// objects; the pods' owner references name them as the real ones would).
fn replica_set_uid(deployment_uid: &str, rs_name: &str) -> String {
    let a = fnv32a(deployment_uid.bytes().chain(*b"/").chain(rs_name.bytes()));
    let b = fnv32a(rs_name.bytes().chain(*b"/").chain(deployment_uid.bytes()));
    format!(
        "{a:08x}-{:04x}-4{:03x}-a{:03x}-{b:08x}{:04x}",
        b >> 16,
        a & 0xfff,
        b & 0xfff,
        a >> 16
    )
}

/// Writes the pod's status through the status subresource, as the kubelet does, when what it
/// shows changed (phase, readiness).
fn sync_pod_status(store: &mut Store, ns: &str, pod: &mut Pod, spec: &Value, now: Instant) {
    let ready = pod.is_ready(now) && pod.finished.is_none();
    let phase = match (&pod.finished, &pod.started_at) {
        (Some((phase, _)), _) => *phase,
        (None, Some(_)) => "Running",
        (None, None) => "Pending",
    };
    let shown = Shown { phase, ready };
    if pod.shown.as_ref() == Some(&shown) {
        return;
    }
    if ready && pod.ready_since.is_none() {
        pod.ready_since = Some(now_rfc3339());
    }
    let Some(pods_rt) = store.resource_type("", "pods") else {
        return;
    };
    let status = pod_status(pod, spec, &shown);
    let w = Write {
        rt: &pods_rt,
        namespace: ns,
        name: &pod.name,
        subresource: "status",
        manager: "kubelet",
    };
    // A status write takes only the proposed object's status.
    let _ = store.update(&w, None, |_, _| Ok(json!({ "status": status })));
    pod.shown = Some(shown);
}

/// The status the kubelet reports: phase, startTime, the pod's conditions and one status per
/// container.
fn pod_status(pod: &Pod, spec: &Value, shown: &Shown) -> Value {
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let unready = json!(format!(
        "containers with unready status: [{}]",
        names.join(" ")
    ));
    let (ready_reason, ready_message) = match (&pod.finished, shown.ready) {
        (_, true) => (Value::Null, Value::Null),
        (Some(_), false) => (json!("PodCompleted"), Value::Null),
        (None, false) => (json!("ContainersNotReady"), unready),
    };
    let ready_since = match (&pod.finished, &pod.ready_since) {
        (Some((_, at)), _) => at.clone(),
        (None, Some(at)) if shown.ready => at.clone(),
        _ => pod.accepted_at.clone(),
    };
    let condition = |type_: &str, ok: bool, since: &str, reason: &Value, message: &Value| {
        let mut c = json!({
            "type": type_,
            "status": if ok { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": since,
        });
        if !reason.is_null() {
            c["reason"] = reason.clone();
        }
        if !message.is_null() {
            c["message"] = message.clone();
        }
        c
    };
    let none = Value::Null;
    let conditions = json!([
        condition("Initialized", true, &pod.accepted_at, &none, &none),
        condition(
            "Ready",
            shown.ready,
            &ready_since,
            &ready_reason,
            &ready_message
        ),
        condition(
            "ContainersReady",
            shown.ready,
            &ready_since,
            &ready_reason,
            &ready_message
        ),
        condition("PodScheduled", true, &pod.accepted_at, &none, &none),
    ]);
    let container_statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let state = match (&pod.finished, &pod.started_at) {
                (Some((phase, at)), started) => {
                    let ok = *phase == "Succeeded";
                    json!({"terminated": {
                        "exitCode": if ok { 0 } else { 1 },
                        "reason": if ok { "Completed" } else { "Error" },
                        "startedAt": started.clone().unwrap_or_else(|| pod.accepted_at.clone()),
                        "finishedAt": at,
                    }})
                }
                (None, Some(at)) => json!({"running": {"startedAt": at}}),
                (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            json!({
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": shown.ready,
                "started": pod.started_at.is_some() && pod.finished.is_none(),
                "restartCount": 0,
                "state": state,
            })
        })
        .collect();
    json!({
        "phase": shown.phase,
        "startTime": pod.accepted_at,
        "conditions": conditions,
        "containerStatuses": container_statuses,
    })
}

fn ns_of(d: &Value) -> String {
    d["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string()
}

/// What the pod's containers read from Secrets at start: env `secretKeyRef`, `envFrom`, secret
/// volumes and the secret sources of projected volumes; and whether the pod can start at all (a required Secret or key that is missing
/// keeps it in CreateContainerConfigError or ContainerCreating, as kubelet does).
fn read_pod_secrets(
    store: &Store,
    ns: &str,
    template: &Value,
) -> (BTreeMap<String, Option<String>>, bool) {
    let mut out = BTreeMap::new();
    let mut startable = true;
    let Some(rt) = store.types.get(&resource_key("", "secrets")) else {
        return (out, startable);
    };
    let secret_data = |name: &str| -> Option<BTreeMap<String, String>> {
        let secret = store.get(rt, ns, name).ok()?;
        let data = secret["data"].as_object()?;
        Some(
            data.iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.clone(),
                        String::from_utf8(crate::b64_decode(v.as_str()?)?).ok()?,
                    ))
                })
                .collect(),
        )
    };
    let spec = &template["spec"];
    for c in spec["containers"].as_array().into_iter().flatten() {
        for e in c["env"].as_array().into_iter().flatten() {
            let r = &e["valueFrom"]["secretKeyRef"];
            if let (Some(name), Some(key)) = (r["name"].as_str(), r["key"].as_str()) {
                let value = secret_data(name).and_then(|d| d.get(key).cloned());
                startable &= value.is_some() || r["optional"] == json!(true);
                out.insert(format!("{name}/{key}"), value);
            }
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            if let Some(name) = e["secretRef"]["name"].as_str() {
                let data = secret_data(name);
                startable &= data.is_some() || e["secretRef"]["optional"] == json!(true);
                for (k, v) in data.unwrap_or_default() {
                    out.insert(format!("{name}/{k}"), Some(v));
                }
            }
        }
    }
    // A secret volume, or a secret source of a projected volume: every key, or the listed items.
    let mut mount = |name: &str, source: &Value| {
        let optional = source["optional"] == json!(true);
        let data = secret_data(name);
        startable &= data.is_some() || optional;
        let data = data.unwrap_or_default();
        match source["items"].as_array() {
            Some(items) => {
                for item in items {
                    if let Some(key) = item["key"].as_str() {
                        startable &= data.contains_key(key) || optional;
                        out.insert(format!("{name}/{key}"), data.get(key).cloned());
                    }
                }
            }
            None => {
                for (k, val) in data {
                    out.insert(format!("{name}/{k}"), Some(val));
                }
            }
        }
    };
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(name) = v["secret"]["secretName"].as_str() {
            mount(name, &v["secret"]);
        }
        for source in v["projected"]["sources"].as_array().into_iter().flatten() {
            if let Some(name) = source["secret"]["name"].as_str() {
                mount(name, &source["secret"]);
            }
        }
    }
    (out, startable)
}
