//! A Deployment controller and kubelet in one: rolls pods to a new template one surge pod at a
//! time (maxSurge 1, maxUnavailable 0), reports status exactly in the fields `kubectl rollout
//! status` reads, and records which Secret values each pod started with.

use crate::store::{ResourceType, Store, resource_key};
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
    pub deployment: String,
    pub name: String,
    pub revision: u64,
    pub ready: bool,
    pub terminating: bool,
    /// `secretName/key` -> the value the pod read at start (None when absent).
    pub secrets: BTreeMap<String, Option<String>>,
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

#[derive(Clone, Debug)]
struct Pod {
    name: String,
    revision: u64,
    ready_at: Option<Instant>,
    terminating_since: Option<Instant>,
    secrets: BTreeMap<String, Option<String>>,
}

#[derive(Default)]
struct DeploymentState {
    templates: Vec<Value>,
    pods: Vec<Pod>,
    last_progress: Option<Instant>,
    last_ready_count: usize,
    pod_counter: u64,
    /// Index in `DeploySim::rollouts` of this Deployment's latest record (avoids scanning them
    /// all on every tick when thousands of Deployments are simulated).
    latest_rollout: Option<usize>,
    /// The resourceVersion this state last reconciled, and whether nothing was left to do then
    /// (complete, every pod ready, none terminating): such a Deployment is skipped until it
    /// changes, so thousands of quiet ones cost nothing per tick.
    settled_at_rv: Option<String>,
}

pub struct DeploySim {
    pub pod_ready_after: Duration,
    pub termination_grace: Duration,
    behaviors: HashMap<(String, String), RolloutBehavior>,
    ready_after_overrides: HashMap<(String, String), Duration>,
    states: HashMap<(String, String), DeploymentState>,
    pub rollouts: Vec<RolloutRecord>,
}

fn epoch_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl DeploySim {
    pub fn new(pod_ready_after: Duration, termination_grace: Duration) -> Self {
        Self {
            pod_ready_after,
            termination_grace,
            behaviors: HashMap::new(),
            ready_after_overrides: HashMap::new(),
            states: HashMap::new(),
            rollouts: Vec::new(),
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

    pub fn pods(&self) -> Vec<PodView> {
        let mut out = Vec::new();
        for ((ns, name), state) in &self.states {
            let now = Instant::now();
            for pod in &state.pods {
                out.push(PodView {
                    namespace: ns.clone(),
                    deployment: name.clone(),
                    name: pod.name.clone(),
                    revision: pod.revision,
                    ready: pod.ready_at.is_some_and(|t| t <= now),
                    terminating: pod.terminating_since.is_some(),
                    secrets: pod.secrets.clone(),
                });
            }
        }
        out
    }

    /// One reconcile pass over every Deployment in the store.
    pub fn tick(&mut self, store: &mut Store) {
        let Some(rt) = store
            .types
            .get(&resource_key("apps", "deployments"))
            .cloned()
        else {
            return;
        };
        let versions = store.versions(&rt);
        let live: std::collections::HashSet<(String, String)> = versions
            .iter()
            .map(|(ns, name, _)| (ns.clone(), name.clone()))
            .collect();
        self.states.retain(|k, _| live.contains(k));
        for (ns, name, rv) in versions {
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
            let settled = self.reconcile(store, &rt, &d);
            let rv_now = store.get(&rt, &key.0, &key.1).ok().and_then(|d| {
                d["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string)
            });
            if let Some(state) = self.states.get_mut(&key) {
                state.settled_at_rv = if settled { rv_now } else { None };
            }
        }
    }

    /// Returns whether the Deployment is settled: nothing will change until it does.
    fn reconcile(&mut self, store: &mut Store, rt: &ResourceType, d: &Value) -> bool {
        let now = Instant::now();
        let ns = ns_of(d);
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = (ns.clone(), name.clone());
        let behavior = self.behaviors.get(&key).cloned().unwrap_or_default();
        let ready_after = self
            .ready_after_overrides
            .get(&key)
            .copied()
            .unwrap_or(self.pod_ready_after);
        let grace = self.termination_grace;
        let state = self.states.entry(key.clone()).or_default();
        let spec = &d["spec"];
        let desired = spec["replicas"].as_u64().unwrap_or(1) as usize;
        let paused = spec["paused"].as_bool().unwrap_or(false);
        let deadline = Duration::from_secs(spec["progressDeadlineSeconds"].as_u64().unwrap_or(600));
        let template = spec["template"].clone();

        // A new template is a new revision (a new ReplicaSet), unless the rollout is paused.
        let template_known = state.templates.iter().position(|t| *t == template);
        let current_revision = match template_known {
            Some(i) if !paused => i as u64 + 1,
            None if !paused || state.templates.is_empty() => {
                state.templates.push(template.clone());
                state.last_progress = Some(now);
                let revision = state.templates.len() as u64;
                state.latest_rollout = Some(self.rollouts.len());
                self.rollouts.push(RolloutRecord {
                    namespace: ns.clone(),
                    deployment: name.clone(),
                    revision,
                    template_changed_at_ms: epoch_ms(),
                    completed_at_ms: None,
                });
                revision
            }
            _ => state
                .pods
                .iter()
                .filter(|p| p.terminating_since.is_none())
                .map(|p| p.revision)
                .max()
                .unwrap_or(1),
        };
        // A rollback to an earlier template makes that revision current again.
        if template_known.is_some()
            && !paused
            && state
                .latest_rollout
                .is_some_and(|i| self.rollouts[i].revision != current_revision)
        {
            state.last_progress = Some(now);
            state.latest_rollout = Some(self.rollouts.len());
            self.rollouts.push(RolloutRecord {
                namespace: ns.clone(),
                deployment: name.clone(),
                revision: current_revision,
                template_changed_at_ms: epoch_ms(),
                completed_at_ms: None,
            });
        }

        // Pods finish terminating after the grace period.
        state.pods.retain(|p| {
            p.terminating_since
                .is_none_or(|t| now.duration_since(t) < grace)
        });
        // Pods that are not ready keep restarting, as kubelet does, and read their Secrets again
        // each time; they become ready once the Secrets exist and the behavior lets them.
        {
            let templates = &state.templates;
            for pod in state
                .pods
                .iter_mut()
                .filter(|p| p.ready_at.is_none() && p.terminating_since.is_none())
            {
                let (secrets, startable) =
                    read_pod_secrets(store, &ns, &templates[(pod.revision - 1) as usize]);
                if startable && behavior.lets_ready(&secrets) {
                    pod.ready_at = Some(now + ready_after);
                }
                pod.secrets = secrets;
            }
        }
        let is_ready =
            |p: &Pod| p.ready_at.is_some_and(|t| t <= now) && p.terminating_since.is_none();
        let active = |p: &Pod| p.terminating_since.is_none();

        let mut progressed = false;
        let updated: Vec<usize> = (0..state.pods.len())
            .filter(|&i| active(&state.pods[i]) && state.pods[i].revision == current_revision)
            .collect();
        let old: Vec<usize> = (0..state.pods.len())
            .filter(|&i| active(&state.pods[i]) && state.pods[i].revision != current_revision)
            .collect();
        let ready_total = state.pods.iter().filter(|p| is_ready(p)).count();
        let active_total = updated.len() + old.len();

        if !paused {
            if updated.len() < desired && active_total < desired + 1 {
                // Surge one new pod; it reads the Secrets as they are now.
                state.pod_counter += 1;
                let (secrets, startable) = read_pod_secrets(store, &ns, &template);
                let ready_at =
                    (startable && behavior.lets_ready(&secrets)).then(|| now + ready_after);
                state.pods.push(Pod {
                    name: format!("{name}-{current_revision}-{}", state.pod_counter),
                    revision: current_revision,
                    ready_at,
                    terminating_since: None,
                    secrets,
                });
                progressed = true;
            } else if !old.is_empty() {
                // Retire an old pod only while availability stays at `desired` (maxUnavailable 0).
                let unready_old = old.iter().copied().find(|&i| !is_ready(&state.pods[i]));
                let victim = unready_old.or((ready_total > desired).then_some(old[0]));
                if let Some(victim) = victim {
                    state.pods[victim].terminating_since = Some(now);
                    progressed = true;
                }
            } else if old.is_empty() && updated.len() > desired {
                let victim = updated[updated.len() - 1];
                state.pods[victim].terminating_since = Some(now);
                progressed = true;
            }
        }
        // Readiness transitions count as progress.
        let ready_now = state.pods.iter().filter(|p| is_ready(p)).count();
        if ready_now != state.last_ready_count {
            state.last_ready_count = ready_now;
            progressed = true;
        }
        if progressed {
            state.last_progress = Some(now);
        }

        let active_pods: Vec<&Pod> = state.pods.iter().filter(|p| active(p)).collect();
        let replicas = active_pods.len();
        let updated_replicas = active_pods
            .iter()
            .filter(|p| p.revision == current_revision)
            .count();
        let ready = active_pods.iter().filter(|p| is_ready(p)).count();
        let complete = updated_replicas >= desired
            && replicas <= updated_replicas
            && ready >= updated_replicas;
        let stalled = !complete
            && state
                .last_progress
                .is_some_and(|t| now.duration_since(t) > deadline);
        let rs_name = format!("{name}-{current_revision}");
        let (progressing_status, progressing_reason, progressing_message) = if paused {
            (
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".to_string(),
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
        };
        if complete
            && let Some(r) = state.latest_rollout.map(|i| &mut self.rollouts[i])
            && r.revision == current_revision
            && r.completed_at_ms.is_none()
        {
            r.completed_at_ms = Some(epoch_ms());
        }
        let old_status = d.get("status").cloned().unwrap_or(json!({}));
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
            let time = crate::store::now_rfc3339();
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "lastUpdateTime": time, "lastTransitionTime": time})
        };
        let available = ready >= desired;
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"],
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
        if status != old_status {
            store.controller_write_status(rt, &ns, &name, status);
        }
        complete && !paused && state.pods.iter().all(is_ready) && state.pods.len() == desired
    }
}

fn ns_of(d: &Value) -> String {
    d["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string()
}

/// What the pod's containers read from Secrets at start: env `secretKeyRef`, `envFrom` and
/// secret volumes; and whether the pod can start at all (a required Secret or key that is missing
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
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(name) = v["secret"]["secretName"].as_str() {
            let data = secret_data(name);
            startable &= data.is_some() || v["secret"]["optional"] == json!(true);
            let data = data.unwrap_or_default();
            match v["secret"]["items"].as_array() {
                Some(items) => {
                    for item in items {
                        if let Some(key) = item["key"].as_str() {
                            startable &=
                                data.contains_key(key) || v["secret"]["optional"] == json!(true);
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
        }
    }
    (out, startable)
}
