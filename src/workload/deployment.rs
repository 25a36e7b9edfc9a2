//! Deployments: restarted through their pod template, paused by `spec.paused`, complete by
//! `kubectl rollout status`'s `DeploymentStatusViewer`; their pods are owned through a ReplicaSet
//! named `<deployment>-<pod-template-hash>`.

use super::{RolloutState, Workload};
use crate::crd::TargetKind;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;

impl Workload for Deployment {
    const KIND: TargetKind = TargetKind::Deployment;

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn paused(&self) -> bool {
        self.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }

    fn rollout_state(&self) -> RolloutState {
        deployment_rollout(self)
    }

    fn owns(name: &str, owner_kind: &str, owner_name: &str) -> bool {
        owner_kind == "ReplicaSet" && owner_name.rsplit_once('-').is_some_and(|(d, _)| d == name)
    }
}

fn deployment_rollout(d: &Deployment) -> RolloutState {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = d.status.as_ref() else {
        return RolloutState::Progressing(
            "Waiting for deployment spec update to be observed...".into(),
        );
    };
    if generation > status.observed_generation.unwrap_or(0) {
        return RolloutState::Progressing(
            "Waiting for deployment spec update to be observed...".into(),
        );
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        let name = d.metadata.name.as_deref().unwrap_or("");
        let message = c.message.clone().unwrap_or_default();
        return RolloutState::Failed(format!(
            "deployment \"{name}\" exceeded its progress deadline: {message}"
        ));
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return RolloutState::Progressing(format!(
            "Waiting for rollout to finish: {updated} out of {desired} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return RolloutState::Progressing(format!(
            "Waiting for rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return RolloutState::Progressing(format!(
            "Waiting for rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    RolloutState::Complete
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::rollout_state;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value, replicas: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "sirius-api", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn unobserved_generation_is_progressing() {
        let d = deployment(
            3,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            2,
        );
        assert!(
            matches!(rollout_state(&d), RolloutState::Progressing(m) if m.contains("observed"))
        );
    }

    #[test]
    fn deadline_exceeded_fails_before_counting_replicas() {
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"x\" has timed out progressing."}]}),
            2,
        );
        assert!(matches!(rollout_state(&d), RolloutState::Failed(m) if m.contains("timed out")));
    }

    #[test]
    fn each_count_rule_in_kubectls_order() {
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}),
            2,
        );
        assert!(
            matches!(rollout_state(&d), RolloutState::Progressing(m) if m.contains("1 out of 2 new"))
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
            2,
        );
        assert!(
            matches!(rollout_state(&d), RolloutState::Progressing(m) if m.contains("old replicas are pending termination"))
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
            2,
        );
        assert!(
            matches!(rollout_state(&d), RolloutState::Progressing(m) if m.contains("1 of 2 updated"))
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            2,
        );
        assert_eq!(rollout_state(&d), RolloutState::Complete);
    }

    #[test]
    fn missing_status_is_progressing_and_zero_replicas_complete() {
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "a", "generation": 1}, "spec": {"replicas": 0, "selector": {}, "template": {}}})).unwrap();
        assert!(matches!(rollout_state(&d), RolloutState::Progressing(_)));
        let d = deployment(1, json!({"observedGeneration": 1}), 0);
        assert_eq!(rollout_state(&d), RolloutState::Complete);
    }
}
