//! Whether a Deployment finished its rollout, by the rules `kubectl rollout status` applies.

use k8s_openapi::api::apps::v1::Deployment;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutState {
    /// Every replica runs the current template and is available.
    Complete,
    /// Still going; the text says what it waits for, in kubectl's words.
    Progressing(String),
    /// The Deployment controller gave up (`ProgressDeadlineExceeded`); its own message.
    Failed(String),
}

pub fn rollout_state(d: &Deployment) -> RolloutState {
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
