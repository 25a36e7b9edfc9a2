//! One owner per Secret and per target: a later ApiKeyRotation that claims what an earlier one
//! already rotates is refused, so two rotations never fight over a key.

use crate::crd::ApiKeyRotation;
use kube::ResourceExt;

/// Why `me` may not act, if an older ApiKeyRotation in its namespace claims its Secret or one of
/// its targets. One that has already acted (it has an active key) is older than one that has not;
/// then creation time decides (second precision), then the name.
pub fn conflicting_claim<'a>(
    me: &ApiKeyRotation,
    others: impl IntoIterator<Item = &'a ApiKeyRotation>,
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
        me.spec.targets.iter().find(|t| {
            (o.spec.targets.iter()).any(|other| other.kind == t.kind && other.name == t.name)
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
    let mine = age(me);
    let oldest = (claimants.into_iter())
        .map(|o| (age(o), o))
        .filter(|(age, _)| *age < mine)
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
        assert_eq!(
            conflicting_claim(&first, &all),
            None,
            "the first claim wins"
        );
        assert!(
            conflicting_claim(&same_secret, &all)
                .unwrap()
                .contains("Secret s is already rotated by ApiKeyRotation first")
        );
        assert!(
            conflicting_claim(&same_target, &all)
                .unwrap()
                .contains("Deployment ui is already a target of ApiKeyRotation first")
        );
        assert_eq!(conflicting_claim(&unrelated, &all), None);
    }

    #[test]
    fn ties_in_creation_time_go_to_the_name_and_other_namespaces_do_not_count() {
        let a = rotation("a", "2026-11-25T10:00:00Z", "s", &["api"]);
        let b = rotation("b", "2026-11-25T10:00:00Z", "s", &["api"]);
        assert_eq!(conflicting_claim(&a, [&a, &b]), None);
        assert!(conflicting_claim(&b, [&a, &b]).is_some());
        // One that already acts keeps its claim against an older-looking newcomer.
        let mut acting = b.clone();
        acting.status = Some(crate::crd::ApiKeyRotationStatus {
            active_key_id: Some("x".into()),
            ..Default::default()
        });
        assert_eq!(conflicting_claim(&acting, [&a, &acting]), None);
        assert!(conflicting_claim(&a, [&a, &acting]).is_some());
        let mut elsewhere = a.clone();
        elsewhere.metadata.namespace = Some("other".into());
        elsewhere.metadata.uid = Some("elsewhere".into());
        assert_eq!(conflicting_claim(&b, [&elsewhere]), None);
    }
}
