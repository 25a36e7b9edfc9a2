//! The pod gate's view of the pods: which pods read the consumers' Secret, whose they are, and
//! whether each started on the new key. Pure: the reconciler lists the namespace's pods and the
//! machine decides on these summaries, so no pod object outlives one evaluation.

use crate::crd::{
    ConsumerSecret, ROLLBACK_ANNOTATION, ROLLOUT_ANNOTATION, RolloutTarget,
    SECRET_RESTORES_ANNOTATION,
};
use crate::key::KeyId;
use crate::pod_view::{ContainerView, KeyView, PodSpecView, PodView, VolumeView};
use jiff::{SignedDuration, Timestamp};

/// How long after the consumers' Secret changed a pod of no target must have been created to
/// count as started on what it holds: the kubelet resolves a Secret from its own cache (a watch
/// by default), which may lag the API by a moment (2 s), and the API server writes both times
/// in whole seconds, each up to 1 s early (1 s more).
pub const AFTER_SWITCH_MARGIN: SignedDuration = SignedDuration::from_secs(3);

/// A pod that reads the consumers' Secret and may be running (or terminating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSummary {
    pub name: String,
    /// Kind and name of its controlling owner (a ReplicaSet, a Job, ...), if any.
    pub owner: Option<(String, String)>,
    /// Index of the rotation's target it belongs to (by [`crate::workload::owns_pod`]).
    pub target: Option<usize>,
    /// The pod's `keys.siriusscan.io/key-id` and `secret-restores` annotations (from the
    /// template it was created from).
    pub key_id: Option<String>,
    pub secret_restores: Option<String>,
    /// The `rolled-back-in` annotation: the revision whose rollback stamped it.
    pub rolled_back_in: Option<String>,
    pub created_at: Option<Timestamp>,
    pub terminating: bool,
}

impl PodSummary {
    /// Started on the new key: created from a template the rotation stamped with it (and the
    /// same Secret restores), or created after the Secret held it (plus the cache margin).
    pub fn runs_key(
        &self,
        new_key: &KeyId,
        restores: Option<&str>,
        switched_at: Option<Timestamp>,
    ) -> bool {
        let stamped = self.target.is_some()
            && self.key_id.as_deref() == Some(new_key.as_str())
            && self.secret_restores.as_deref() == restores;
        stamped || self.created_after(switched_at)
    }

    /// Created late enough after the consumers' Secret changed (at `switched_at`, by the API
    /// server's clock) to have read what it then held.
    pub fn created_after(&self, switched_at: Option<Timestamp>) -> bool {
        match (self.created_at, switched_at) {
            (Some(created), Some(switched)) => created >= switched + AFTER_SWITCH_MARGIN,
            _ => false,
        }
    }

    /// `name (Kind/owner)`, for messages.
    pub fn describe(&self) -> String {
        match &self.owner {
            Some((kind, name)) => format!("{} ({kind}/{name})", self.name),
            None => format!("{} (no owner)", self.name),
        }
    }
}

/// The summary of `pod` if it reads `secret` and is not finished (Succeeded or Failed).
pub fn summarize(
    pod: &PodView,
    secret: &ConsumerSecret,
    targets: &[RolloutTarget],
) -> Option<PodSummary> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    if !pod.spec.as_ref().is_some_and(|s| reads_secret(s, secret)) {
        return None;
    }
    let meta = pod.metadata.as_ref();
    let owners = meta.and_then(|m| m.owner_references.as_deref());
    let controller = owners
        .into_iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let owner = controller.map(|o| {
        let field = |f: &Option<String>| f.clone().unwrap_or_default();
        (field(&o.kind), field(&o.name))
    });
    // Every target kind's pods are controlled by an apps/v1 object (a Rollout's by its
    // ReplicaSets); a same-named kind of another group (OpenKruise's StatefulSet) is not ours.
    let target = owner
        .as_ref()
        .filter(|_| controller.and_then(|o| o.api_version.as_deref()) == Some("apps/v1"))
        .and_then(|(kind, name)| {
            (targets.iter()).position(|t| crate::workload::owns_pod(t, kind, name))
        });
    let annotation = |key: &str| {
        meta.and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(key))
            .cloned()
    };
    Some(PodSummary {
        name: meta.and_then(|m| m.name.clone()).unwrap_or_default(),
        owner,
        target,
        key_id: annotation(ROLLOUT_ANNOTATION),
        secret_restores: annotation(SECRET_RESTORES_ANNOTATION),
        rolled_back_in: annotation(ROLLBACK_ANNOTATION),
        created_at: meta
            .and_then(|m| m.creation_timestamp.as_ref())
            .map(|t| t.0),
        terminating: meta.is_some_and(|m| m.deletion_timestamp.is_some()),
    })
}

/// Whether a container of the pod can read the API key from `secret` (env `secretKeyRef` of the
/// key, `envFrom` of the Secret, or a `secret` or `projected` volume that includes the key).
pub fn reads_secret(spec: &PodSpecView, secret: &ConsumerSecret) -> bool {
    let mut containers = [
        &spec.containers,
        &spec.init_containers,
        &spec.ephemeral_containers,
    ]
    .into_iter()
    .flat_map(|c| c.iter().flatten());
    containers.any(|c| container_reads(c, secret))
        || (spec.volumes.iter().flatten()).any(|v| volume_reads(v, secret))
}

/// An env `secretKeyRef` to the key, or an `envFrom` of the whole Secret.
fn container_reads(c: &ContainerView, secret: &ConsumerSecret) -> bool {
    let is = |name: &Option<String>, want: &str| name.as_deref() == Some(want);
    let by_key = (c.env.iter().flatten()).any(|e| {
        (e.value_from.as_ref())
            .and_then(|f| f.secret_key_ref.as_ref())
            .is_some_and(|r| is(&r.name, &secret.name) && is(&r.key, &secret.key))
    });
    let whole = (c.env_from.iter().flatten()).any(|e| {
        e.secret_ref
            .as_ref()
            .is_some_and(|r| is(&r.name, &secret.name))
    });
    by_key || whole
}

/// A volume of the Secret with no `items` holds every key; with `items`, only those listed.
fn volume_reads(v: &VolumeView, secret: &ConsumerSecret) -> bool {
    let holds = |name: Option<&str>, items: Option<&Vec<KeyView>>| {
        name == Some(secret.name.as_str())
            && items.is_none_or(|items| {
                (items.iter()).any(|i| i.key.as_deref() == Some(secret.key.as_str()))
            })
    };
    let direct =
        (v.secret.as_ref()).is_some_and(|s| holds(s.secret_name.as_deref(), s.items.as_ref()));
    let projected = v.projected.as_ref().is_some_and(|p| {
        (p.sources.iter().flatten()).any(|source| {
            (source.secret.as_ref()).is_some_and(|s| holds(s.name.as_deref(), s.items.as_ref()))
        })
    });
    direct || projected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TargetKind;
    use serde_json::json;

    fn secret() -> ConsumerSecret {
        ConsumerSecret {
            name: "sirius-api-key".into(),
            key: "SIRIUS_API_KEY".into(),
        }
    }

    fn targets() -> Vec<RolloutTarget> {
        ["sirius-api", "sirius-engine"]
            .iter()
            .map(|n| RolloutTarget::named(TargetKind::Deployment, n))
            .collect()
    }

    fn pod(spec: serde_json::Value, owner: Option<(&str, &str)>) -> PodView {
        let mut meta = json!({"name": "p", "creationTimestamp": "2026-12-01T10:00:00Z",
                              "annotations": {ROLLOUT_ANNOTATION: "ab"}});
        if let Some((kind, name)) = owner {
            meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": name,
                                              "uid": "u", "controller": true}]);
        }
        serde_json::from_value(json!({"metadata": meta, "spec": spec,
                                      "status": {"phase": "Running"}}))
        .unwrap()
    }

    fn env_ref(name: &str, key: &str) -> serde_json::Value {
        json!({"containers": [{"name": "c", "env": [{"name": "K", "valueFrom":
            {"secretKeyRef": {"name": name, "key": key}}}]}]})
    }

    #[test]
    fn every_way_of_reading_the_secret_counts_and_other_keys_do_not() {
        let reads = |spec| summarize(&pod(spec, None), &secret(), &targets()).is_some();
        assert!(reads(env_ref("sirius-api-key", "SIRIUS_API_KEY")));
        assert!(!reads(env_ref("sirius-api-key", "OTHER")));
        assert!(!reads(env_ref("another", "SIRIUS_API_KEY")));
        assert!(reads(
            json!({"containers": [{"name": "c"}], "initContainers": [{"name": "i",
            "envFrom": [{"secretRef": {"name": "sirius-api-key"}}]}]})
        ));
        assert!(reads(
            json!({"containers": [{"name": "c"}], "volumes": [{"name": "v",
            "secret": {"secretName": "sirius-api-key"}}]})
        ));
        assert!(!reads(
            json!({"containers": [{"name": "c"}], "volumes": [{"name": "v",
            "secret": {"secretName": "sirius-api-key", "items": [{"key": "OTHER", "path": "o"}]}}]})
        ));
        assert!(reads(
            json!({"containers": [{"name": "c"}], "volumes": [{"name": "v",
            "projected": {"sources": [{"configMap": {"name": "x"}},
                                      {"secret": {"name": "sirius-api-key"}}]}}]})
        ));
        assert!(reads(
            json!({"containers": [{"name": "c"}], "ephemeralContainers": [{"name": "e",
            "env": [{"name": "K", "valueFrom": {"secretKeyRef":
                {"name": "sirius-api-key", "key": "SIRIUS_API_KEY"}}}]}]})
        ));
        assert!(!reads(json!({"containers": [{"name": "c"}]})));
    }

    #[test]
    fn finished_pods_are_left_out_and_owners_map_to_targets() {
        let spec = env_ref("sirius-api-key", "SIRIUS_API_KEY");
        let mut done = pod(spec.clone(), None);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(summarize(&done, &secret(), &targets()), None);
        let of = |owner| summarize(&pod(spec.clone(), owner), &secret(), &targets()).unwrap();
        assert_eq!(
            of(Some(("ReplicaSet", "sirius-engine-7d4b9c"))).target,
            Some(1)
        );
        assert_eq!(of(Some(("ReplicaSet", "worker-7d4b9c"))).target, None);
        assert_eq!(of(Some(("Job", "sirius-api-x"))).target, None);
        // A same-named kind of another API group is not the target's.
        let mut kruise = pod(spec.clone(), Some(("ReplicaSet", "sirius-engine-7d4b9c")));
        (kruise
            .metadata
            .as_mut()
            .unwrap()
            .owner_references
            .as_mut()
            .unwrap())[0]
            .api_version = Some("apps.kruise.io/v1beta1".into());
        assert_eq!(
            summarize(&kruise, &secret(), &targets()).unwrap().target,
            None
        );
        assert_eq!(of(None).describe(), "p (no owner)");
        assert_eq!(of(Some(("Job", "backfill"))).describe(), "p (Job/backfill)");
    }

    #[test]
    fn a_pod_runs_the_new_key_by_its_stamp_or_by_starting_after_the_switch() {
        let new = KeyId("ab".into());
        let spec = env_ref("sirius-api-key", "SIRIUS_API_KEY");
        let target_pod = summarize(
            &pod(spec.clone(), Some(("ReplicaSet", "sirius-api-1"))),
            &secret(),
            &targets(),
        )
        .unwrap();
        assert!(target_pod.runs_key(&new, None, None));
        // Rolled before a Secret restore: the stamp of the restore is missing.
        assert!(!target_pod.runs_key(&new, Some("1"), None));
        assert!(!target_pod.runs_key(&KeyId("cd".into()), None, None));
        // A bare pod carrying the annotation proves nothing: only its start time counts.
        let bare = summarize(&pod(spec, None), &secret(), &targets()).unwrap();
        assert!(!bare.runs_key(&new, None, None));
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        assert!(bare.runs_key(&new, None, at("2026-12-01T09:59:57Z")));
        assert!(!bare.runs_key(&new, None, at("2026-12-01T09:59:58Z")));
    }
}
