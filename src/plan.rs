//! A rotation's plan is fixed when it starts: the targets (kind, name, order) and the consumers'
//! Secret it started with, kept in `status.currentRotation`. Edits of the spec made while it runs
//! apply to the next rotation, so a target removed mid-rotation is still finished (its pods still
//! hold the old key) and a target added mid-rotation waits for the next one.

use crate::crd::{ApiKeyRotationSpec, ApiKeyRotationStatus, RolloutTarget, selector_text};

/// The most workloads one rotation plans (its status lists each): a selector that matches more
/// does not start a rotation.
pub const MAX_PLANNED_TARGETS: usize = 64;

/// The spec a reconcile works with, and how it differs from the one the user wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The user's spec with the rotation's targets and Secret in place of the edited ones. Its
    /// targets each name one workload: an entry's selector is replaced by what it selected.
    pub spec: ApiKeyRotationSpec,
    /// The fields whose edit waits for the next rotation (`spec.targets`, `spec.secret`).
    pub deferred: Vec<&'static str>,
    /// Per planned target: it is no longer in `spec.targets` (removed by the user mid-rotation).
    pub removed: Vec<bool>,
    /// Per planned target: the selector of the entry that chose it (None: the entry named it).
    /// Consecutive targets with the same kind and selector are one entry's and roll at once.
    pub selected_by: Vec<Option<String>>,
    /// Why the spec's selectors cannot make a plan now (none when a rotation is in flight): an
    /// entry that selects nothing, or more than [`MAX_PLANNED_TARGETS`] in all.
    pub unselected: Vec<String>,
    /// A selector of the spec was not looked up (this reconcile found a rotation in flight): no
    /// rotation may start on this plan; the next reconcile looks them up.
    pub unresolved: bool,
}

impl Planned {
    /// Whether planned targets `a` and `b` belong to the same entry of `spec.targets` (and roll
    /// at once): the same selector's consecutive run of targets of one kind.
    pub fn same_entry(&self, a: usize, b: usize) -> bool {
        same_entry(&self.spec.targets, &self.selected_by, a, b)
    }
}

/// See [`Planned::same_entry`].
pub fn same_entry(
    targets: &[RolloutTarget],
    selected_by: &[Option<String>],
    a: usize,
    b: usize,
) -> bool {
    if a == b {
        return true;
    }
    let key = |i: usize| Some((targets.get(i)?.kind, selected_by.get(i)?.as_ref()?));
    let Some(k) = key(a) else {
        return false;
    };
    (a.min(b)..=a.max(b)).all(|i| key(i) == Some(k))
}

/// What each entry of `spec.targets` selects, by index: the names of the workloads its selector
/// matches (None for an entry that names its workload, or a selector not looked up).
pub type Selected = [Option<Vec<String>>];

/// The plan of the rotation in `status`, or the spec itself with its selectors resolved by
/// `selected` when no rotation runs (or one recorded before plans were kept: its targets are its
/// plan, its Secret the spec's).
pub fn planned(
    spec: &ApiKeyRotationSpec,
    status: &ApiKeyRotationStatus,
    selected: &Selected,
) -> Planned {
    let rotation = status.current_rotation.as_ref();
    let mut planned = match rotation.filter(|r| !r.targets.is_empty()) {
        Some(r) => in_flight(spec, r),
        None => resolved(spec, selected),
    };
    if let Some(r) = rotation
        && let Some(secret) = &r.secret
        && *secret != spec.secret
    {
        planned.spec.secret = secret.clone();
        planned.deferred.push("spec.secret");
    }
    planned
}

/// The spec with each selector replaced by the workloads it selects now.
fn resolved(spec: &ApiKeyRotationSpec, selected: &Selected) -> Planned {
    let mut targets = Vec::new();
    let mut selected_by = Vec::new();
    let mut unselected = Vec::new();
    let mut unresolved = false;
    for (i, entry) in spec.targets.iter().enumerate() {
        let Some(selector) = &entry.selector else {
            targets.push(entry.clone());
            selected_by.push(None);
            continue;
        };
        let text = selector_text(selector);
        let Some(names) = selected.get(i).and_then(|n| n.as_deref()) else {
            unresolved = true;
            continue;
        };
        if names.is_empty() {
            unselected.push(format!(
                "spec.targets[{i}]: the selector {text} matches no {} in this namespace",
                entry.kind
            ));
        }
        // A workload an earlier entry already planned rolls with that entry.
        let names: Vec<&String> = (names.iter())
            .filter(|n| {
                !(targets.iter()).any(|t: &RolloutTarget| t.kind == entry.kind && t.name == **n)
            })
            .collect();
        for name in names {
            targets.push(RolloutTarget {
                name: name.to_string(),
                selector: None,
                ..entry.clone()
            });
            selected_by.push(Some(text.clone()));
        }
    }
    if targets.len() > MAX_PLANNED_TARGETS {
        unselected.push(format!(
            "spec.targets selects {} workloads, at most {MAX_PLANNED_TARGETS} can be planned; narrow the selectors",
            targets.len()
        ));
    }
    Planned {
        removed: vec![false; targets.len()],
        spec: ApiKeyRotationSpec {
            targets,
            ..spec.clone()
        },
        deferred: Vec::new(),
        selected_by,
        unselected,
        unresolved,
    }
}

/// The targets the rotation in flight started with, and how the spec was edited since.
fn in_flight(spec: &ApiKeyRotationSpec, r: &crate::crd::RotationProgress) -> Planned {
    // The entry of the spec that names (or selects) a planned target now, if any.
    let entry_of = |t: &crate::crd::TargetProgress| {
        spec.targets.iter().find(|s| {
            s.kind == t.kind
                && match (&s.selector, &t.selector) {
                    (Some(now), Some(then)) => selector_text(now) == *then,
                    (None, None) => s.name == t.name,
                    _ => false,
                }
        })
    };
    let targets: Vec<RolloutTarget> = (r.targets.iter())
        .map(|t| RolloutTarget {
            // A deadline edit is harmless to take at once; a removed target keeps the
            // rotation's default.
            progress_deadline_seconds: entry_of(t).and_then(|s| s.progress_deadline_seconds),
            ..RolloutTarget::named(t.kind, &t.name)
        })
        .collect();
    let removed = r.targets.iter().map(|t| entry_of(t).is_none()).collect();
    // The rotation's entries, in order: a named target, or one selector's run of targets, as
    // (kind, selected, name or selector): a selector's text can read as a name (`app` exists).
    let mut entries: Vec<(crate::crd::TargetKind, bool, &str)> = Vec::new();
    for t in &r.targets {
        let entry = (
            t.kind,
            t.selector.is_some(),
            t.selector.as_deref().unwrap_or(&t.name),
        );
        if t.selector.is_none() || entries.last() != Some(&entry) {
            entries.push(entry);
        }
    }
    let now: Vec<(crate::crd::TargetKind, bool, String)> = (spec.targets.iter())
        .map(|s| match &s.selector {
            Some(selector) => (s.kind, true, selector_text(selector)),
            None => (s.kind, false, s.name.clone()),
        })
        .collect();
    let same_order = entries.len() == now.len()
        && (entries.iter().zip(&now)).all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2 == b.2);
    Planned {
        spec: ApiKeyRotationSpec {
            targets,
            ..spec.clone()
        },
        deferred: if same_order {
            Vec::new()
        } else {
            vec!["spec.targets"]
        },
        removed,
        selected_by: r.targets.iter().map(|t| t.selector.clone()).collect(),
        unselected: Vec::new(),
        unresolved: false,
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
            .map(|n| RolloutTarget::named(TargetKind::Deployment, n))
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
        let p = planned(&spec(&["a", "b"]), &ApiKeyRotationStatus::default(), &[]);
        assert_eq!(p.spec, spec(&["a", "b"]));
        assert!(p.deferred.is_empty());
        assert_eq!(p.removed, [false, false]);
    }

    #[test]
    fn a_rotation_keeps_the_targets_and_secret_it_started_with() {
        let mut edited = spec(&["b", "c"]);
        edited.secret.name = "elsewhere".into();
        let p = planned(&edited, &rotating(&["a", "b"], Some("sirius-api-key")), &[]);
        let names: Vec<_> = p.spec.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(p.removed, [true, false]);
        assert_eq!(p.spec.secret.name, "sirius-api-key");
        assert_eq!(p.deferred, ["spec.targets", "spec.secret"]);
    }

    #[test]
    fn a_reordering_is_an_edit_and_an_unchanged_spec_is_none() {
        let p = planned(&spec(&["b", "a"]), &rotating(&["a", "b"], None), &[]);
        assert_eq!(p.deferred, ["spec.targets"]);
        let p = planned(
            &spec(&["a", "b"]),
            &rotating(&["a", "b"], Some("sirius-api-key")),
            &[],
        );
        assert!(p.deferred.is_empty(), "{:?}", p.deferred);
    }

    fn selecting(kind: TargetKind, labels: serde_json::Value) -> RolloutTarget {
        RolloutTarget {
            selector: Some(
                serde_json::from_value(serde_json::json!({"matchLabels": labels})).unwrap(),
            ),
            ..RolloutTarget::named(kind, "")
        }
    }

    #[test]
    fn selectors_are_replaced_by_what_they_select_and_a_rotation_keeps_that() {
        let mut s = spec(&["api"]);
        s.targets.push(selecting(
            TargetKind::Deployment,
            serde_json::json!({"tier": "web"}),
        ));
        s.targets.push(selecting(
            TargetKind::Deployment,
            serde_json::json!({"tier": "x"}),
        ));
        let selected = [
            None,
            Some(vec!["ui".to_string(), "api".into(), "web2".into()]),
            Some(vec![]),
        ];
        let p = planned(&s, &ApiKeyRotationStatus::default(), &selected);
        let names: Vec<_> = p.spec.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["api", "ui", "web2"],
            "api is planned once, by its own entry"
        );
        assert_eq!(
            p.selected_by,
            [None, Some("tier=web".into()), Some("tier=web".into())]
        );
        assert!(p.same_entry(1, 2) && !p.same_entry(0, 1));
        assert_eq!(p.unselected.len(), 1);
        assert!(
            p.unselected[0].contains("spec.targets[2]: the selector tier=x matches no Deployment")
        );
        assert!(!p.unresolved);
        assert!(planned(&s, &ApiKeyRotationStatus::default(), &[]).unresolved);
        // A selector that matches only what an earlier entry names selects something.
        let only_api = [
            None,
            Some(vec!["api".to_string()]),
            Some(vec!["x1".to_string()]),
        ];
        let p2 = planned(&s, &ApiKeyRotationStatus::default(), &only_api);
        assert!(p2.unselected.is_empty(), "{:?}", p2.unselected);
        let names: Vec<_> = p2.spec.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["api", "x1"]);
        // Started: the plan comes back from the status, whatever the selectors select now.
        let mut r = RotationProgress::started(1, "t".into(), None, &p.spec.targets, "".into());
        for (t, by) in r.targets.iter_mut().zip(&p.selected_by) {
            t.selector = by.clone();
        }
        let status = ApiKeyRotationStatus {
            current_rotation: Some(r),
            ..Default::default()
        };
        s.targets.pop();
        let now = planned(&s, &status, &[]);
        assert_eq!(now.spec.targets, p.spec.targets);
        assert_eq!(now.selected_by, p.selected_by);
        assert!(now.deferred.is_empty(), "{:?}", now.deferred);
        assert_eq!(now.removed, [false, false, false]);
        // The selector edited: the edit waits, and its workloads are no longer in the spec.
        s.targets[1] = selecting(TargetKind::Deployment, serde_json::json!({"tier": "web2"}));
        let edited = planned(&s, &status, &[]);
        assert_eq!(edited.deferred, ["spec.targets"]);
        assert_eq!(edited.removed, [false, true, true]);
    }

    #[test]
    fn a_selector_whose_text_reads_as_a_name_is_not_that_name() {
        // `app` exists reads `app`, as a Deployment named app would.
        let exists: crate::crd::LabelSelector = serde_json::from_value(
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
        )
        .unwrap();
        let mut s = spec(&["app"]);
        s.targets.push(RolloutTarget {
            selector: Some(exists),
            ..RolloutTarget::named(TargetKind::Deployment, "")
        });
        let selected = [None, Some(vec!["other".to_string()])];
        let p = planned(&s, &ApiKeyRotationStatus::default(), &selected);
        assert!(!p.same_entry(0, 1));
        let mut r = RotationProgress::started(1, "t".into(), None, &p.spec.targets, "".into());
        r.targets[1].selector = Some("app".into());
        let status = ApiKeyRotationStatus {
            current_rotation: Some(r),
            ..Default::default()
        };
        let again = planned(&s, &status, &[]);
        assert!(
            again.deferred.is_empty(),
            "{:?} {:?}",
            again.deferred,
            s.targets
        );
    }
}
