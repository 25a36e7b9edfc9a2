//! A rotation's plan is fixed when it starts: the targets (kind, name, order) and the consumers'
//! Secret it started with, kept in `status.currentRotation`. Edits of the spec made while it runs
//! apply to the next rotation, so a target removed mid-rotation is still finished (its pods still
//! hold the old key) and a target added mid-rotation waits for the next one.

use crate::crd::{ApiKeyRotationSpec, ApiKeyRotationStatus, RolloutTarget};

/// The spec a reconcile works with, and how it differs from the one the user wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The user's spec with the rotation's targets and Secret in place of the edited ones.
    pub spec: ApiKeyRotationSpec,
    /// The fields whose edit waits for the next rotation (`spec.targets`, `spec.secret`).
    pub deferred: Vec<&'static str>,
    /// Per planned target: it is no longer in `spec.targets` (removed by the user mid-rotation).
    pub removed: Vec<bool>,
}

/// The plan of the rotation in `status`, or the spec itself when no rotation runs (or one
/// recorded before plans were kept: its targets are its plan, its Secret the spec's).
pub fn planned(spec: &ApiKeyRotationSpec, status: &ApiKeyRotationStatus) -> Planned {
    let mut planned = spec.clone();
    let mut deferred = Vec::new();
    let mut removed = vec![false; spec.targets.len()];
    let Some(r) = status.current_rotation.as_ref() else {
        return Planned {
            spec: planned,
            deferred,
            removed,
        };
    };
    if !r.targets.is_empty() {
        planned.targets = r
            .targets
            .iter()
            .map(|t| {
                let now = spec
                    .targets
                    .iter()
                    .find(|s| s.kind == t.kind && s.name == t.name);
                RolloutTarget {
                    kind: t.kind,
                    name: t.name.clone(),
                    // A deadline edit is harmless to take at once; a removed target keeps the
                    // rotation's default.
                    progress_deadline_seconds: now.and_then(|s| s.progress_deadline_seconds),
                }
            })
            .collect();
        removed = planned
            .targets
            .iter()
            .map(|p| {
                !spec
                    .targets
                    .iter()
                    .any(|s| s.kind == p.kind && s.name == p.name)
            })
            .collect();
        let same_order = planned.targets.len() == spec.targets.len()
            && planned
                .targets
                .iter()
                .zip(&spec.targets)
                .all(|(p, s)| p.kind == s.kind && p.name == s.name);
        if !same_order {
            deferred.push("spec.targets");
        }
    }
    if let Some(secret) = &r.secret
        && *secret != spec.secret
    {
        planned.secret = secret.clone();
        deferred.push("spec.secret");
    }
    Planned {
        spec: planned,
        deferred,
        removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConsumerSecret, RotationProgress, TargetKind};

    fn spec(targets: &[&str]) -> ApiKeyRotationSpec {
        let mut spec: ApiKeyRotationSpec =
            serde_json::from_value(serde_json::json!({"valkey": {"url": "redis://v:6379"}}))
                .unwrap();
        spec.targets = targets
            .iter()
            .map(|n| RolloutTarget {
                kind: TargetKind::Deployment,
                name: n.to_string(),
                progress_deadline_seconds: None,
            })
            .collect();
        spec
    }

    fn rotating(targets: &[&str], secret: Option<&str>) -> ApiKeyRotationStatus {
        let targets = spec(targets).targets;
        let mut r = RotationProgress::started(1, "t".into(), None, &targets, "".into());
        r.secret = secret.map(|name| ConsumerSecret {
            name: name.into(),
            key: "SIRIUS_API_KEY".into(),
        });
        ApiKeyRotationStatus {
            current_rotation: Some(r),
            ..Default::default()
        }
    }

    #[test]
    fn without_a_rotation_the_spec_is_the_plan() {
        let p = planned(&spec(&["a", "b"]), &ApiKeyRotationStatus::default());
        assert_eq!(p.spec, spec(&["a", "b"]));
        assert!(p.deferred.is_empty());
        assert_eq!(p.removed, [false, false]);
    }

    #[test]
    fn a_rotation_keeps_the_targets_and_secret_it_started_with() {
        let mut edited = spec(&["b", "c"]);
        edited.secret.name = "elsewhere".into();
        let p = planned(&edited, &rotating(&["a", "b"], Some("sirius-api-key")));
        let names: Vec<_> = p.spec.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(p.removed, [true, false]);
        assert_eq!(p.spec.secret.name, "sirius-api-key");
        assert_eq!(p.deferred, ["spec.targets", "spec.secret"]);
    }

    #[test]
    fn a_reordering_is_an_edit_and_an_unchanged_spec_is_none() {
        let p = planned(&spec(&["b", "a"]), &rotating(&["a", "b"], None));
        assert_eq!(p.deferred, ["spec.targets"]);
        let p = planned(
            &spec(&["a", "b"]),
            &rotating(&["a", "b"], Some("sirius-api-key")),
        );
        assert!(p.deferred.is_empty(), "{:?}", p.deferred);
    }
}
