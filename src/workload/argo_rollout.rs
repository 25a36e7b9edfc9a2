//! Argo Rollouts (`argoproj.io/v1alpha1`, `rollouts`): restarted through their pod template (a
//! new revision that runs the Rollout's own canary or blue-green steps and analysis), complete
//! when Healthy by Argo's own phase rules (`GetRolloutPhase` and `CalculateRolloutPhase` in
//! argo-rollouts' `utils/rollout`), failed when Degraded. Their pods are owned through a
//! ReplicaSet `<rollout>-<pod-template-hash>`, as a Deployment's. A Rollout that references a
//! Deployment (`spec.workloadRef`) instead of holding a template cannot be rolled by its
//! template: it is refused, and the Deployment it references is no target either (Argo keeps it
//! at zero replicas).
//!
//! k8s-openapi has no type for a custom resource, so the fields read here are declared here;
//! everything else in the object is ignored.

use super::{RolloutState, Workload};
use crate::crd::TargetKind;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Rollout {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RolloutSpec,
    #[serde(default)]
    pub status: Option<RolloutStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub replicas: Option<i32>,
    pub template: Option<PodTemplateSpec>,
    pub workload_ref: Option<Value>,
    #[serde(default)]
    pub paused: bool,
    /// `canary` or `blueGreen`, with their steps; only which one it is, and whether a canary
    /// routes traffic, matter here.
    #[serde(default)]
    pub strategy: Value,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Argo writes it as a string (a number from older versions is read too).
    pub observed_generation: Option<Value>,
    pub phase: Option<String>,
    pub message: Option<String>,
    #[serde(default)]
    pub controller_pause: bool,
    #[serde(default)]
    pub pause_conditions: Vec<Value>,
    #[serde(default)]
    pub conditions: Vec<RolloutCondition>,
    pub replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    #[serde(rename = "stableRS")]
    pub stable_rs: Option<String>,
    pub current_pod_hash: Option<String>,
    #[serde(default)]
    pub blue_green: Value,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RolloutCondition {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

impl kube::Resource for Rollout {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Rollout".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "argoproj.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "rollouts".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    Progressing,
    Paused,
    Degraded,
}

impl Rollout {
    /// Argo's phase and message: `GetRolloutPhase` (generation observed, not unpausing, then the
    /// controller's own `status.phase`), else `CalculateRolloutPhase` from the status.
    pub fn phase(&self) -> (Phase, String) {
        let status = self.status.clone().unwrap_or_default();
        let observed = match &status.observed_generation {
            Some(Value::String(s)) => s.parse::<i64>().ok(),
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        };
        // An unparsable observedGeneration counts as observed, as Argo's `isGenerationObserved`.
        if observed.is_some_and(|g| g < self.metadata.generation.unwrap_or(0)) {
            let message = "waiting for rollout spec update to be observed";
            return (Phase::Progressing, message.into());
        }
        if status.controller_pause && !self.spec.paused && status.pause_conditions.is_empty() {
            return (Phase::Progressing, "waiting for rollout to unpause".into());
        }
        let message = status.message.clone().unwrap_or_default();
        match status.phase.as_deref() {
            Some("Healthy") => (Phase::Healthy, message),
            Some("Progressing") => (Phase::Progressing, message),
            Some("Paused") => (Phase::Paused, message),
            Some("Degraded") => (Phase::Degraded, message),
            _ => self.calculated_phase(&status),
        }
    }

    fn calculated_phase(&self, status: &RolloutStatus) -> (Phase, String) {
        for c in &status.conditions {
            if c.type_ == "InvalidSpec" {
                return (Phase::Degraded, format!("InvalidSpec: {}", c.message));
            }
            if matches!(
                c.reason.as_str(),
                "RolloutAborted" | "ProgressDeadlineExceeded"
            ) {
                return (Phase::Degraded, format!("{}: {}", c.reason, c.message));
            }
        }
        if self.spec.paused || !status.pause_conditions.is_empty() {
            return (Phase::Paused, "manually paused".into());
        }
        let progressing = |m: &str| (Phase::Progressing, m.to_string());
        let updated = status.updated_replicas.unwrap_or(0);
        if updated < self.spec.replicas.unwrap_or(1) {
            return progressing("more replicas need to be updated");
        }
        if status.available_replicas.unwrap_or(0) < updated {
            return progressing("updated replicas are still becoming available");
        }
        let hash = status.current_pod_hash.as_deref();
        let stable = status.stable_rs.as_deref().filter(|s| !s.is_empty());
        let strategy = &self.spec.strategy;
        if !strategy["blueGreen"].is_null() {
            let active = status.blue_green["activeSelector"].as_str();
            if active.is_none_or(str::is_empty) || active != hash {
                return progressing("active service cutover pending");
            }
            if stable != hash {
                return progressing("waiting for analysis to complete");
            }
        } else if !strategy["canary"].is_null() {
            if strategy["canary"]["trafficRouting"].is_null()
                && status.replicas.unwrap_or(0) > updated
            {
                return progressing("old replicas are pending termination");
            }
            if stable.is_none() || stable != hash {
                return progressing("waiting for all steps to complete");
            }
        }
        (Phase::Healthy, String::new())
    }
}

impl Workload for Rollout {
    const KIND: TargetKind = TargetKind::Rollout;

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.template.as_ref()
    }

    /// `spec.paused` (`kubectl argo rollouts pause`): a new template waits. A pause step of the
    /// Rollout's own strategy after the stamp is progress, judged by the target's deadline.
    fn paused(&self) -> bool {
        self.spec.paused
    }

    fn cannot_roll(&self) -> Option<String> {
        (self.spec.workload_ref.is_some() && self.spec.template.is_none()).then(|| {
            "it references a Deployment (spec.workloadRef) instead of holding a pod template, so there is no template to stamp; put the template in the Rollout (spec.template) to make it a target".into()
        })
    }

    fn rollout_state(&self) -> RolloutState {
        match self.phase() {
            (Phase::Healthy, _) => RolloutState::Complete,
            (Phase::Degraded, message) => RolloutState::Failed(format!(
                "rollout \"{}\" is Degraded: {message}",
                self.metadata.name.as_deref().unwrap_or("")
            )),
            (Phase::Paused, message) => RolloutState::Progressing(format!("Paused: {message}")),
            (Phase::Progressing, message) => RolloutState::Progressing(message),
        }
    }

    /// Through its ReplicaSet `<rollout>-<pod-template-hash>`, as a Deployment's.
    fn owns(name: &str, owner_kind: &str, owner_name: &str) -> bool {
        owner_kind == "ReplicaSet" && owner_name.rsplit_once('-').is_some_and(|(r, _)| r == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rollout(spec: Value, status: Value) -> Rollout {
        serde_json::from_value(json!({"metadata": {"name": "api", "generation": 3},
                                      "spec": spec, "status": status}))
        .unwrap()
    }

    fn canary() -> Value {
        json!({"replicas": 2, "template": {}, "strategy": {"canary": {"steps": [{"setWeight": 50}]}}})
    }

    #[test]
    fn the_controllers_phase_decides_once_the_generation_is_observed() {
        let healthy = json!({"observedGeneration": "3", "phase": "Healthy"});
        assert_eq!(
            rollout(canary(), healthy).rollout_state(),
            RolloutState::Complete
        );
        let stale = json!({"observedGeneration": "2", "phase": "Healthy"});
        assert!(matches!(rollout(canary(), stale).rollout_state(),
            RolloutState::Progressing(m) if m.contains("observed")));
        let degraded = json!({"observedGeneration": "3", "phase": "Degraded",
                              "message": "RolloutAborted: Rollout aborted update to revision 2"});
        assert!(matches!(rollout(canary(), degraded).rollout_state(),
            RolloutState::Failed(m) if m.contains("RolloutAborted")));
        let paused =
            json!({"observedGeneration": "3", "phase": "Paused", "message": "CanaryPauseStep"});
        assert!(matches!(rollout(canary(), paused).rollout_state(),
            RolloutState::Progressing(m) if m.contains("Paused")));
        let unpausing =
            json!({"observedGeneration": "3", "phase": "Healthy", "controllerPause": true});
        assert!(matches!(rollout(canary(), unpausing).rollout_state(),
            RolloutState::Progressing(m) if m.contains("unpause")));
        let numeric = json!({"observedGeneration": 3, "phase": "Healthy"});
        assert_eq!(
            rollout(canary(), numeric).rollout_state(),
            RolloutState::Complete
        );
    }

    #[test]
    fn without_a_phase_the_status_is_judged_by_argos_rules() {
        let base = json!({"observedGeneration": "3", "replicas": 2, "updatedReplicas": 2,
                          "availableReplicas": 2, "stableRS": "abc", "currentPodHash": "abc"});
        let with = |patch: Value| {
            let mut s = base.clone();
            json_patch::merge(&mut s, &patch);
            rollout(canary(), s).rollout_state()
        };
        assert_eq!(with(json!({})), RolloutState::Complete);
        assert!(
            matches!(with(json!({"updatedReplicas": 1})), RolloutState::Progressing(m) if m.contains("more replicas"))
        );
        assert!(
            matches!(with(json!({"availableReplicas": 1})), RolloutState::Progressing(m) if m.contains("becoming available"))
        );
        assert!(
            matches!(with(json!({"replicas": 3})), RolloutState::Progressing(m) if m.contains("pending termination"))
        );
        assert!(
            matches!(with(json!({"stableRS": "old"})), RolloutState::Progressing(m) if m.contains("steps"))
        );
        assert!(
            matches!(with(json!({"pauseConditions": [{"reason": "CanaryPauseStep"}]})), RolloutState::Progressing(m) if m.contains("paused"))
        );
        assert!(matches!(
            with(json!({"conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "timed out"}]})),
            RolloutState::Failed(m) if m.contains("ProgressDeadlineExceeded")
        ));
        assert!(matches!(
            with(json!({"conditions": [{"type": "InvalidSpec", "reason": "x", "message": "bad"}]})),
            RolloutState::Failed(m) if m.contains("InvalidSpec")
        ));
    }

    #[test]
    fn blue_green_waits_for_the_cutover_and_a_workload_ref_cannot_roll() {
        let spec = json!({"replicas": 1, "template": {}, "strategy": {"blueGreen": {"activeService": "a"}}});
        let status = |active: &str| {
            json!({"observedGeneration": "3", "replicas": 1, "updatedReplicas": 1,
            "availableReplicas": 1, "stableRS": "h", "currentPodHash": "h", "blueGreen": {"activeSelector": active}})
        };
        assert!(
            matches!(rollout(spec.clone(), status("old")).rollout_state(), RolloutState::Progressing(m) if m.contains("cutover"))
        );
        assert_eq!(
            rollout(spec, status("h")).rollout_state(),
            RolloutState::Complete
        );
        let referencing = rollout(
            json!({"workloadRef": {"kind": "Deployment", "name": "api"}}),
            json!({}),
        );
        assert!(referencing.cannot_roll().unwrap().contains("workloadRef"));
        assert_eq!(rollout(canary(), json!({})).cannot_roll(), None);
        assert!(Rollout::owns("api", "ReplicaSet", "api-6d4f"));
        assert!(!Rollout::owns("api", "Rollout", "api"));
    }
}
