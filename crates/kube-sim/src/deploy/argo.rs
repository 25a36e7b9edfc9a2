//! Argo Rollouts, simulated by the Deployment controller (one surge pod at a time, which is what
//! a canary without steps does) with the status Argo's controller writes: `observedGeneration`
//! as a string, `currentPodHash`, `stableRS` (the current hash once the update completed),
//! `phase` and `message`, and a `Progressing` condition with Argo's reasons. Pods carry
//! `rollouts-pod-template-hash` and are owned by the ReplicaSet `<rollout>-<hash>`. Pause
//! (`spec.paused`) and the progress deadline (`Degraded`, `ProgressDeadlineExceeded`) behave as
//! Argo's.
//!
//! A canary's `steps` run as Argo's controller runs them (`status.currentStepIndex`): `setWeight`
//! lets that share of the replicas (rounded up) run the new template, and is done once they are
//! available and the old ones scaled down; `pause` sets a `CanaryPauseStep` pause condition (phase
//! `Paused`) until its `duration` passed or a promote (`kubectl argo rollouts promote`: the pause
//! conditions cleared from status, or `status.promoteFull`) ends it; an `analysis` step passes
//! unless the test made the Rollout's analysis fail. An abort (`kubectl argo rollouts abort`:
//! `status.abort: true`) or a failed analysis scales the new pods away and the stable ones back up,
//! with phase `Degraded` and Argo's `RolloutAborted` message, until a new template starts a new
//! update. Traffic routing, experiments and analysis templates' own metrics are not simulated.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Where an update of a Rollout with canary steps stands.
#[derive(Clone, Debug, Default)]
pub(crate) struct CanaryProgress {
    /// The revision these steps are of: a new template starts them over.
    revision: u64,
    /// Argo's `currentStepIndex`: the step being run (`steps.len()` once all are done).
    pub step: usize,
    /// When the pause step at `step` began (the pause condition's `startTime`), and whether a
    /// status showing that pause was written (a promote is its pause conditions cleared).
    paused: Option<(Instant, String, bool)>,
    /// Why the update was aborted (`status.abort`, a failed analysis).
    pub aborted: Option<String>,
    /// A status of this update was written (the `abort` of an earlier one is no longer in it).
    written: bool,
}

/// What a step waits on: the replicas wanted, the new pods available, the old ones still
/// running, and whether the Rollout's analysis passes.
pub(crate) struct Pods {
    pub desired: usize,
    pub updated_ready: usize,
    pub old_active: usize,
    pub analysis_passes: bool,
}

/// A canary Rollout's steps (none for a blue-green one or a canary without steps).
pub(super) fn steps(rollout: &Value) -> &[Value] {
    rollout["spec"]["strategy"]["canary"]["steps"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// Argo's duration: a number of seconds, or a string such as `30s`, `5m`, `1h`.
fn duration(v: &Value) -> Option<Duration> {
    if let Some(n) = v.as_u64() {
        return Some(Duration::from_secs(n));
    }
    let s = v.as_str()?;
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    Some(Duration::from_secs(n * scale))
}

impl CanaryProgress {
    /// Starts over for a new revision.
    pub fn follow(&mut self, revision: u64) {
        if self.revision != revision {
            *self = CanaryProgress {
                revision,
                ..Default::default()
            };
        }
    }

    /// Paused at a `pause` step.
    pub fn is_paused(&self) -> bool {
        self.paused.is_some() && self.aborted.is_none()
    }

    /// Every step done at once.
    pub fn skip(&mut self, steps: &[Value]) {
        self.step = steps.len();
        self.paused = None;
    }

    /// How many replicas may run the new template at the current step: the weight of the last
    /// `setWeight` at or before it, of `desired` rounded up; all once the steps are done.
    pub fn allowed(&self, steps: &[Value], desired: usize) -> usize {
        if self.step >= steps.len() {
            return desired;
        }
        let weight = (steps[..=self.step].iter().rev())
            .find_map(|s| s["setWeight"].as_u64())
            .unwrap_or(0) as usize;
        // Argo's nearest count (`approximateWeightedCanaryStableReplicaCounts`), keeping one
        // pod of each side for a weight strictly between 0 and 100.
        let nearest = (weight * desired + 50) / 100;
        match weight {
            0 => 0,
            100.. => desired,
            _ if desired > 1 => nearest.clamp(1, desired - 1),
            _ => nearest.min(desired),
        }
    }

    /// Takes a user's abort or promote from the status, then runs the steps as far as the pods
    /// allow.
    /// `spec.paused` (`manually_paused`) holds the steps where they are.
    pub fn advance(
        &mut self,
        steps: &[Value],
        old_status: &Value,
        manually_paused: bool,
        pods: Pods,
        now: Instant,
    ) {
        let Pods {
            desired,
            updated_ready,
            old_active,
            analysis_passes,
        } = pods;
        if self.written && self.aborted.is_none() && old_status["abort"] == json!(true) {
            let why = format!("Rollout aborted update to revision {}", self.revision);
            self.aborted = Some(why);
        }
        // `kubectl argo rollouts retry` (abort: false) and a full promote end an abort.
        let promote_full = self.written && old_status["promoteFull"] == json!(true);
        if self.aborted.is_some() && (old_status["abort"] == json!(false) || promote_full) {
            self.aborted = None;
            self.step = 0;
            self.paused = None;
        }
        if self.aborted.is_some() || manually_paused {
            return;
        }
        if promote_full {
            self.step = steps.len();
            self.paused = None;
        }
        while let Some(step) = steps.get(self.step) {
            if step.get("setWeight").is_some() {
                let allowed = self.allowed(steps, desired);
                if updated_ready < allowed || old_active + allowed > desired {
                    return;
                }
            } else if let Some(pause) = step.get("pause") {
                match &self.paused {
                    None => {
                        self.paused = Some((now, crate::store::now_rfc3339(), false));
                        return;
                    }
                    Some((since, _, shown)) => {
                        let promoted = *shown
                            && (old_status["pauseConditions"].as_array())
                                .is_none_or(|c| c.is_empty());
                        let over =
                            duration(&pause["duration"]).is_some_and(|d| since.elapsed() >= d);
                        if !promoted && !over {
                            return;
                        }
                        self.paused = None;
                    }
                }
            } else if step.get("analysis").is_some() && !analysis_passes {
                self.aborted = Some(format!(
                    "Rollout aborted update to revision {}: Metric \"success-rate\" assessed Failed due to failed (1) > failureLimit (0)",
                    self.revision
                ));
                return;
            }
            self.step += 1;
        }
    }

    /// Whether every step is done and nothing aborted the update.
    pub fn done(&self, steps: &[Value]) -> bool {
        self.aborted.is_none() && self.step >= steps.len()
    }

    /// Argo's canary fields on the status `out` (written from here on), `old` being the status
    /// before; `manually_paused` (`spec.paused`) keeps Argo's "manually paused" phase message,
    /// and `on_new` is how many pods run the new template (Argo's `updatedReplicas`).
    pub fn decorate(&mut self, out: &mut Value, old: &Value, manually_paused: bool, on_new: usize) {
        self.written = true;
        let object = out.as_object_mut().expect("an object");
        if let Some(why) = &self.aborted {
            // An abort goes back to the first step, with the new ReplicaSet scaled away.
            object.insert("currentStepIndex".into(), json!(0));
            object.insert("updatedReplicas".into(), json!(on_new));
            object.insert("abort".into(), json!(true));
            object.insert("phase".into(), json!("Degraded"));
            object.insert("message".into(), json!(format!("RolloutAborted: {why}")));
            let was = (old["conditions"].as_array().into_iter().flatten())
                .find(|c| c["type"] == "Progressing" && c["reason"] == "RolloutAborted")
                .filter(|c| c["message"] == json!(why))
                .cloned();
            for c in object["conditions"].as_array_mut().into_iter().flatten() {
                if c["type"] == "Progressing" {
                    // Unchanged, it keeps its times (Argo's `SetRolloutCondition`).
                    *c = was.clone().unwrap_or_else(|| {
                        let time = crate::store::now_rfc3339();
                        json!({"type": "Progressing", "status": "False", "reason": "RolloutAborted",
                               "message": why, "lastUpdateTime": time, "lastTransitionTime": time})
                    });
                }
            }
            return;
        }
        object.insert("currentStepIndex".into(), json!(self.step));
        if let Some((_, start, shown)) = &mut self.paused {
            *shown = true;
            object.insert(
                "pauseConditions".into(),
                json!([{"reason": "CanaryPauseStep", "startTime": start}]),
            );
            object.insert("controllerPause".into(), json!(true));
            if !manually_paused {
                object.insert("phase".into(), json!("Paused"));
                object.insert("message".into(), json!("CanaryPauseStep"));
            }
        }
    }
}

/// Argo's names of the Deployment controller's pause reasons.
const REASONS: [(&str, &str); 2] = [
    ("DeploymentPaused", "RolloutPaused"),
    ("DeploymentResumed", "RolloutResumed"),
];

/// Reads an Argo `Progressing` condition with the Deployment controller's reason names.
pub(super) fn deployment_reason(condition: &mut Value) {
    for (deployment, argo) in REASONS {
        if condition["reason"] == argo {
            condition["reason"] = json!(deployment);
        }
    }
}

/// The Rollout's status from the Deployment-style `status` computed for it.
pub(super) fn status(
    status: &Value,
    rollout: &Value,
    old: &Value,
    hash: Option<String>,
    complete: bool,
) -> Value {
    let mut conditions = status["conditions"].clone();
    for c in conditions.as_array_mut().into_iter().flatten() {
        for (deployment, argo) in REASONS {
            if c["reason"] == deployment {
                c["reason"] = json!(argo);
            }
        }
        if c["reason"] == "RolloutPaused" {
            c["message"] = json!("Rollout is paused");
        }
    }
    let progressing = (conditions.as_array().into_iter().flatten())
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or(Value::Null);
    let stable = match (&hash, complete) {
        (Some(h), true) => json!(h),
        _ => old.get("stableRS").cloned().unwrap_or(Value::Null),
    };
    let count = |field: &str| status[field].as_u64().unwrap_or(0);
    let (phase, message) = if progressing["reason"] == "ProgressDeadlineExceeded" {
        let message = progressing["message"].as_str().unwrap_or("");
        ("Degraded", format!("ProgressDeadlineExceeded: {message}"))
    } else if rollout["spec"]["paused"] == json!(true) {
        ("Paused", "manually paused".to_string())
    } else if complete && stable.as_str() == hash.as_deref() {
        ("Healthy", String::new())
    } else if count("updatedReplicas") < rollout["spec"]["replicas"].as_u64().unwrap_or(1) {
        ("Progressing", "more replicas need to be updated".into())
    } else {
        (
            "Progressing",
            "updated replicas are still becoming available".into(),
        )
    };
    let generation = rollout["metadata"]["generation"].as_i64().unwrap_or(0);
    let mut out = json!({
        "observedGeneration": generation.to_string(),
        "replicas": count("replicas"),
        "updatedReplicas": count("updatedReplicas"),
        "readyReplicas": count("readyReplicas"),
        "availableReplicas": count("availableReplicas"),
        "currentPodHash": hash,
        "stableRS": stable,
        "phase": phase,
        "message": message,
        "conditions": conditions,
    });
    let object = out.as_object_mut().expect("an object");
    object.retain(|_, v| !v.is_null());
    out
}
