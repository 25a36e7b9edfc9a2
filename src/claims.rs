//! One owner per Secret and per target: a later ApiKeyRotation that claims what an earlier one
//! already rotates is refused, so two rotations never fight over a key.

use crate::crd::{ApiKeyRotation, RolloutTarget, TargetKind};
use kube::ResourceExt;

/// Why `me` may not act, if an older ApiKeyRotation in its namespace claims its Secret or one of
/// the workloads it plans (`mine`: its targets, with each selector replaced by what it selects).
/// Another rotation claims the workloads its spec names or selects (`selected` gives the names
/// of the workloads one of its selector entries selects now) and those its rotation in flight
/// planned. One that has already acted (it has an active key) is older than one that has not;
/// then creation time decides (second precision), then the name.
pub fn conflicting_claim<'a>(
    me: &ApiKeyRotation,
    mine: &[RolloutTarget],
    others: impl IntoIterator<Item = &'a ApiKeyRotation>,
    selected: impl Fn(&ApiKeyRotation, &RolloutTarget) -> Vec<String>,
) -> Option<String> {
    // Most rotations share nothing with `me`: compare borrowed names first and work out ages (which
    // clone) only for the few that claim the same Secret or a target. This runs on every reconcile
    // over every rotation the operator watches.
    let same_namespace = |o: &ApiKeyRotation| {
        o.metadata.namespace == me.metadata.namespace
            && o.metadata.uid != me.metadata.uid
            && o.metadata.deletion_timestamp.is_none()
    };
    let shared_target = |o: &ApiKeyRotation| {
        let planned = (o.status.iter())
            .flat_map(|s| s.current_rotation.iter())
            .flat_map(|r| r.targets.iter().map(|t| (t.kind, t.name.as_str())));
        let named = (o.spec.targets.iter())
            .filter(|t| t.selector.is_none())
            .map(|t| (t.kind, t.name.as_str()));
        let claims = |kind: TargetKind, name: &str| {
            named
                .clone()
                .chain(planned.clone())
                .any(|c| c == (kind, name))
        };
        // Selections are worked out only for rotations that select, once each.
        let selections: Vec<(TargetKind, Vec<String>)> = (o.spec.targets.iter())
            .filter(|t| t.selector.is_some() && mine.iter().any(|m| m.kind == t.kind))
            .map(|t| (t.kind, selected(o, t)))
            .collect();
        mine.iter().find(|t| {
            claims(t.kind, &t.name)
                || (selections.iter())
                    .any(|(kind, names)| *kind == t.kind && names.contains(&t.name))
        })
    };
    let claimants: Vec<&ApiKeyRotation> = others
        .into_iter()
        .filter(|o| same_namespace(o))
        .filter(|o| o.spec.secret.name == me.spec.secret.name || shared_target(o).is_some())
        .collect();
    if claimants.is_empty() {
        return None;
    }
    let age = |r: &ApiKeyRotation| {
        let acted = r.status.as_ref().is_some_and(|s| s.active_key_id.is_some());
        (!acted, r.creation_timestamp().map(|t| t.0), r.name_any())
    };
    let mine_age = age(me);
    let oldest = (claimants.into_iter())
        .map(|o| (age(o), o))
        .filter(|(age, _)| *age < mine_age)
        .min_by(|a, b| a.0.cmp(&b.0))?
        .1;
    if oldest.spec.secret.name == me.spec.secret.name {
        return Some(format!(
            "Secret {} is already rotated by ApiKeyRotation {}; this one changes nothing until that claim is gone.",
            me.spec.secret.name,
            oldest.name_any()
        ));
    }
    let t = shared_target(oldest)?;
    Some(format!(
        "{:?} {} is already a target of ApiKeyRotation {}; this one changes nothing until that claim is gone.",
        t.kind,
        t.name,
        oldest.name_any()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `me`'s claim among `others`, where a selector entry selects the workloads named in its
    /// `matchLabels` value for `app`, split at commas.
    fn claim<'a>(
        me: &ApiKeyRotation,
        others: impl IntoIterator<Item = &'a ApiKeyRotation>,
    ) -> Option<String> {
        let selects = |t: &RolloutTarget| -> Vec<String> {
            let labels = t.selector.as_ref().and_then(|s| s.match_labels.as_ref());
            let app = labels
                .and_then(|l| l.get("app"))
                .cloned()
                .unwrap_or_default();
            app.split(',').map(str::to_string).collect()
        };
        let mine: Vec<RolloutTarget> = (me.spec.targets.iter())
            .flat_map(|t| match &t.selector {
                None => vec![t.clone()],
                Some(_) => (selects(t).iter())
                    .map(|n| RolloutTarget::named(t.kind, n))
                    .collect(),
            })
            .collect();
        conflicting_claim(me, &mine, others, |_, t| selects(t))
    }

    fn selecting(name: &str, created: &str, secret: &str, apps: &str) -> ApiKeyRotation {
        let mut r = rotation(name, created, secret, &[]);
        r.spec.targets = vec![RolloutTarget {
            selector: Some(
                serde_json::from_value(serde_json::json!({"matchLabels": {"app": apps}})).unwrap(),
            ),
            ..RolloutTarget::named(TargetKind::Deployment, "")
        }];
        r
    }

    #[test]
    fn a_workload_claimed_through_a_selector_is_refused_to_a_later_rotation_either_way() {
        let selects = selecting("first", "2026-11-25T10:00:00Z", "s", "api,ui");
        let names = rotation("second", "2026-11-25T11:00:00Z", "t", &["ui"]);
        let all = [selects.clone(), names.clone()];
        assert_eq!(claim(&selects, &all), None);
        assert!(
            claim(&names, &all)
                .unwrap()
                .contains("Deployment ui is already a target of ApiKeyRotation first")
        );
        // The other way round: the later one selects what the earlier one names.
        let names = rotation("first", "2026-11-25T10:00:00Z", "s", &["api"]);
        let selects = selecting("second", "2026-11-25T11:00:00Z", "t", "api,ui");
        let all = [names.clone(), selects.clone()];
        assert!(
            claim(&selects, &all)
                .unwrap()
                .contains("Deployment api is already a target of ApiKeyRotation first")
        );
        let elsewhere = selecting("third", "2026-11-25T11:00:00Z", "u", "engine");
        assert_eq!(claim(&elsewhere, [&names, &elsewhere]), None);
    }

    fn rotation(name: &str, created: &str, secret: &str, targets: &[&str]) -> ApiKeyRotation {
        let targets: Vec<_> = targets
            .iter()
            .map(|t| serde_json::json!({"name": t}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation",
            "metadata": {"name": name, "namespace": "ns", "uid": name, "creationTimestamp": created},
            "spec": {"valkey": {"url": "redis://v:6379"}, "secret": {"name": secret}, "targets": targets},
        }))
        .unwrap()
    }

    #[test]
    fn the_later_claim_on_a_secret_or_target_is_refused() {
        let first = rotation("first", "2026-11-25T10:00:00Z", "s", &["api", "ui"]);
        let same_secret = rotation("second", "2026-11-25T11:00:00Z", "s", &["other"]);
        let same_target = rotation("third", "2026-11-25T11:00:00Z", "t", &["x", "ui"]);
        let unrelated = rotation("fourth", "2026-11-25T11:00:00Z", "u", &["y"]);
        let all = [
            first.clone(),
            same_secret.clone(),
            same_target.clone(),
            unrelated.clone(),
        ];
        assert_eq!(claim(&first, &all), None, "the first claim wins");
        assert!(
            claim(&same_secret, &all)
                .unwrap()
                .contains("Secret s is already rotated by ApiKeyRotation first")
        );
        assert!(
            claim(&same_target, &all)
                .unwrap()
                .contains("Deployment ui is already a target of ApiKeyRotation first")
        );
        assert_eq!(claim(&unrelated, &all), None);
    }

    #[test]
    fn ties_in_creation_time_go_to_the_name_and_other_namespaces_do_not_count() {
        let a = rotation("a", "2026-11-25T10:00:00Z", "s", &["api"]);
        let b = rotation("b", "2026-11-25T10:00:00Z", "s", &["api"]);
        assert_eq!(claim(&a, [&a, &b]), None);
        assert!(claim(&b, [&a, &b]).is_some());
        // One that already acts keeps its claim against an older-looking newcomer.
        let mut acting = b.clone();
        acting.status = Some(crate::crd::ApiKeyRotationStatus {
            active_key_id: Some("x".into()),
            ..Default::default()
        });
        assert_eq!(claim(&acting, [&a, &acting]), None);
        assert!(claim(&a, [&a, &acting]).is_some());
        let mut elsewhere = a.clone();
        elsewhere.metadata.namespace = Some("other".into());
        elsewhere.metadata.uid = Some("elsewhere".into());
        assert_eq!(claim(&b, [&elsewhere]), None);
    }
}
