//! DaemonSets: restarted through their pod template, complete by `kubectl rollout status`'s
//! `DaemonSetStatusViewer`; their pods are owned by the DaemonSet itself. One with the `OnDelete`
//! update strategy cannot roll.

use super::{RolloutState, Workload};
use crate::crd::TargetKind;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;

impl Workload for DaemonSet {
    const KIND: TargetKind = TargetKind::DaemonSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn cannot_roll(&self) -> Option<String> {
        let strategy = self.spec.as_ref()?.update_strategy.as_ref()?;
        (strategy.type_.as_deref() == Some("OnDelete")).then(|| {
            "its spec.updateStrategy.type is OnDelete, so the DaemonSet controller replaces a pod only when it is deleted and its pods would keep the old key; set the type to RollingUpdate".into()
        })
    }

    /// kubectl's rules: only a RollingUpdate has a rollout; the generation observed, then every
    /// scheduled pod updated, then every one available.
    fn rollout_state(&self) -> RolloutState {
        let name = self.metadata.name.as_deref().unwrap_or("");
        let strategy = self.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
        if strategy
            .and_then(|s| s.type_.as_deref())
            .is_some_and(|t| t != "RollingUpdate")
        {
            return RolloutState::Progressing(
                "rollout status is only available for RollingUpdate strategy type".into(),
            );
        }
        let status = self.status.clone().unwrap_or_default();
        if self.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
            return RolloutState::Progressing(
                "Waiting for daemon set spec update to be observed...".into(),
            );
        }
        let desired = status.desired_number_scheduled;
        let updated = status.updated_number_scheduled.unwrap_or(0);
        if updated < desired {
            return RolloutState::Progressing(format!(
                "Waiting for daemon set \"{name}\" rollout to finish: {updated} out of {desired} new pods have been updated..."
            ));
        }
        let available = status.number_available.unwrap_or(0);
        if available < desired {
            return RolloutState::Progressing(format!(
                "Waiting for daemon set \"{name}\" rollout to finish: {available} of {desired} updated pods are available..."
            ));
        }
        RolloutState::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(strategy: serde_json::Value, status: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({"metadata": {"name": "agent", "generation": 2},
            "spec": {"selector": {}, "template": {}, "updateStrategy": strategy},
            "status": status}))
        .unwrap()
    }

    fn counts(observed: i64, updated: i32, available: i32) -> serde_json::Value {
        json!({"observedGeneration": observed, "desiredNumberScheduled": 3,
               "currentNumberScheduled": 3, "numberMisscheduled": 0, "numberReady": available,
               "updatedNumberScheduled": updated, "numberAvailable": available})
    }

    #[test]
    fn each_rule_in_kubectls_order() {
        let state = |status| ds(json!({"type": "RollingUpdate"}), status).rollout_state();
        assert!(
            matches!(state(counts(1, 3, 3)), RolloutState::Progressing(m) if m.contains("observed"))
        );
        assert!(matches!(state(counts(2, 1, 3)),
            RolloutState::Progressing(m) if m.contains("1 out of 3 new pods have been updated")));
        assert!(matches!(state(counts(2, 3, 2)),
            RolloutState::Progressing(m) if m.contains("2 of 3 updated pods are available")));
        assert_eq!(state(counts(2, 3, 3)), RolloutState::Complete);
    }

    #[test]
    fn on_delete_cannot_roll() {
        assert!(
            ds(json!({"type": "OnDelete"}), counts(2, 3, 3))
                .cannot_roll()
                .unwrap()
                .contains("OnDelete")
        );
        assert_eq!(
            ds(json!({"type": "RollingUpdate"}), counts(2, 3, 3)).cannot_roll(),
            None
        );
        assert!(DaemonSet::owns("agent", "DaemonSet", "agent"));
        assert!(!DaemonSet::owns("agent", "StatefulSet", "agent"));
    }
}
