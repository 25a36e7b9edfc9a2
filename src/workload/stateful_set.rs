//! StatefulSets: restarted through their pod template, complete by `kubectl rollout status`'s
//! `StatefulSetStatusViewer`; their pods are owned by the StatefulSet itself. One whose pods a new
//! template would not replace (`OnDelete`, a partition above 0) cannot roll.

use super::{RolloutState, Workload};
use crate::crd::TargetKind;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;

impl Workload for StatefulSet {
    const KIND: TargetKind = TargetKind::StatefulSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn cannot_roll(&self) -> Option<String> {
        let strategy = self.spec.as_ref()?.update_strategy.as_ref()?;
        if strategy.type_.as_deref() == Some("OnDelete") {
            return Some(
                "its spec.updateStrategy.type is OnDelete, so the StatefulSet controller replaces a pod only when it is deleted and its pods would keep the old key; set the type to RollingUpdate".into(),
            );
        }
        let partition = strategy.rolling_update.as_ref()?.partition.unwrap_or(0);
        (partition > 0).then(|| {
            format!(
                "its spec.updateStrategy.rollingUpdate.partition is {partition}, so its pods with an ordinal below {partition} would keep the old template and key; set the partition to 0"
            )
        })
    }

    /// kubectl's rules, in its order: the generation observed, every replica ready, then (with
    /// `rollingUpdate`, which kube-apiserver defaults only when the strategy type is unset) the
    /// partition's pods updated; without it (an explicit `type: RollingUpdate` alone) the update
    /// revision became the current one.
    fn rollout_state(&self) -> RolloutState {
        let waiting = |m: String| RolloutState::Progressing(m);
        let spec = self.spec.as_ref();
        let strategy = spec.and_then(|s| s.update_strategy.as_ref());
        if strategy
            .and_then(|s| s.type_.as_deref())
            .is_some_and(|t| t != "RollingUpdate")
        {
            return waiting(
                "rollout status is only available for RollingUpdate strategy type".into(),
            );
        }
        let status = self.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0);
        if observed == 0 || self.metadata.generation.unwrap_or(0) > observed {
            return waiting("Waiting for statefulset spec update to be observed...".into());
        }
        let replicas = spec.and_then(|s| s.replicas);
        let ready = status.ready_replicas.unwrap_or(0);
        if let Some(replicas) = replicas
            && ready < replicas
        {
            return waiting(format!(
                "Waiting for {} pods to be ready...",
                replicas - ready
            ));
        }
        let updated = status.updated_replicas.unwrap_or(0);
        if let Some(rolling) = strategy.and_then(|s| s.rolling_update.as_ref()) {
            if let (Some(replicas), Some(partition)) = (replicas, rolling.partition)
                && updated < replicas - partition
            {
                return waiting(format!(
                    "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                    replicas - partition
                ));
            }
            return RolloutState::Complete;
        }
        let update = status.update_revision.unwrap_or_default();
        if Some(&update) != status.current_revision.as_ref() {
            return waiting(format!(
                "waiting for statefulset rolling update to complete {updated} pods at revision {update}..."
            ));
        }
        RolloutState::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sts(spec: serde_json::Value, status: serde_json::Value) -> StatefulSet {
        let mut full = json!({"selector": {}, "template": {}, "serviceName": ""});
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({"metadata": {"name": "db", "generation": 2},
                                      "spec": full, "status": status}))
        .unwrap()
    }

    fn rolling(partition: i32) -> serde_json::Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": partition}})
    }

    #[test]
    fn each_rule_in_kubectls_order() {
        let state = |status| {
            sts(json!({"replicas": 3, "updateStrategy": rolling(0)}), status).rollout_state()
        };
        assert!(
            matches!(state(json!({"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3})),
            RolloutState::Progressing(m) if m.contains("spec update to be observed"))
        );
        assert!(matches!(state(json!({})), RolloutState::Progressing(m) if m.contains("observed")));
        assert!(
            matches!(state(json!({"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 3})),
            RolloutState::Progressing(m) if m == "Waiting for 1 pods to be ready...")
        );
        assert!(
            matches!(state(json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 2})),
            RolloutState::Progressing(m) if m.contains("2 out of 3 new pods have been updated"))
        );
        assert_eq!(
            state(json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3})),
            RolloutState::Complete
        );
    }

    #[test]
    fn without_rolling_update_the_revisions_must_meet() {
        let s = |status| {
            sts(
                json!({"replicas": 1, "updateStrategy": {"type": "RollingUpdate"}}),
                status,
            )
            .rollout_state()
        };
        assert!(matches!(
            s(json!({"observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 1,
                     "currentRevision": "db-1", "updateRevision": "db-2"})),
            RolloutState::Progressing(m) if m.contains("at revision db-2")
        ));
        assert_eq!(
            s(
                json!({"observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 1,
                     "currentRevision": "db-2", "updateRevision": "db-2"})
            ),
            RolloutState::Complete
        );
    }

    #[test]
    fn on_delete_and_partitions_cannot_roll() {
        let on_delete = sts(json!({"updateStrategy": {"type": "OnDelete"}}), json!({}));
        assert!(on_delete.cannot_roll().unwrap().contains("OnDelete"));
        let partitioned = sts(
            json!({"replicas": 3, "updateStrategy": rolling(2)}),
            json!({}),
        );
        assert!(
            partitioned
                .cannot_roll()
                .unwrap()
                .contains("partition is 2")
        );
        assert_eq!(
            sts(json!({"updateStrategy": rolling(0)}), json!({})).cannot_roll(),
            None
        );
        assert_eq!(sts(json!({}), json!({})).cannot_roll(), None);
    }

    #[test]
    fn its_pods_are_owned_by_the_statefulset_itself() {
        assert!(StatefulSet::owns("db", "StatefulSet", "db"));
        assert!(!StatefulSet::owns("db", "StatefulSet", "db-2"));
        assert!(!StatefulSet::owns("db", "ReplicaSet", "db-5d8f"));
    }
}
