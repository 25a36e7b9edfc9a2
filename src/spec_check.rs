//! Checks of a spec beyond what reached the operator through the schema: rules the schema
//! cannot express, and the schema's own bounds again (an older CRD, or a stand-in that skips
//! validation, must not let a bad spec act).

use crate::crd::ApiKeyRotationSpec;
use std::collections::BTreeSet;

/// Every problem found, each naming its field; empty when the spec is usable.
pub fn problems(spec: &ApiKeyRotationSpec) -> Vec<String> {
    let mut out = Vec::new();
    targets(spec, &mut out);
    secret_and_key(spec, &mut out);
    valkey(spec, &mut out);
    timing_and_checks(spec, &mut out);
    out
}

fn targets(spec: &ApiKeyRotationSpec, out: &mut Vec<String>) {
    if spec.targets.is_empty() {
        out.push("spec.targets: at least one target is required".to_string());
    }
    if spec.targets.len() > 16 {
        out.push(format!(
            "spec.targets: at most 16 targets, got {}",
            spec.targets.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, t) in spec.targets.iter().enumerate() {
        match &t.selector {
            Some(_) if !t.name.is_empty() => out.push(format!(
                "spec.targets[{i}]: both name and selector are set; set exactly one"
            )),
            Some(selector) => out.extend(selector_problems(i, selector)),
            None if !is_dns_subdomain(&t.name) => out.push(format!(
                "spec.targets[{i}].name: {:?} is not a valid Kubernetes name",
                t.name
            )),
            None => {}
        }
        if !seen.insert((t.kind, t.selector.is_some(), t.describe())) {
            out.push(format!(
                "spec.targets[{i}]: duplicate target {}",
                t.describe()
            ));
        }
        if let Some(d) = t.progress_deadline_seconds
            && !(10..=86400).contains(&d)
        {
            out.push(format!(
                "spec.targets[{i}].progressDeadlineSeconds: {d} is outside 10..=86400"
            ));
        }
    }
}

/// What kube-apiserver refuses in a label selector (apimachinery's `ValidateLabelSelector`), and
/// an empty one, which would select every workload of its kind in the namespace.
fn selector_problems(i: usize, selector: &crate::crd::LabelSelector) -> Vec<String> {
    let at = format!("spec.targets[{i}].selector");
    let mut out = Vec::new();
    let labels = selector.match_labels.iter().flatten();
    for (key, value) in labels {
        out.extend(label_key_problem(key).map(|why| format!("{at}.matchLabels: {why}")));
        out.extend(
            label_value_problem(value).map(|why| format!("{at}.matchLabels[{key:?}]: {why}")),
        );
    }
    let expressions = selector.match_expressions.iter().flatten();
    for (j, e) in expressions.enumerate() {
        let here = format!("{at}.matchExpressions[{j}]");
        out.extend(label_key_problem(&e.key).map(|why| format!("{here}.key: {why}")));
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push(format!(
                "{here}.values: must be specified when operator is {}",
                e.operator
            )),
            "In" | "NotIn" => {
                for v in values {
                    out.extend(label_value_problem(v).map(|why| format!("{here}.values: {why}")));
                }
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push(format!(
                "{here}.values: may not be specified when operator is {}",
                e.operator
            )),
            "Exists" | "DoesNotExist" => {}
            other => out.push(format!(
                "{here}.operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
            )),
        }
    }
    let requirements = selector.match_labels.as_ref().map_or(0, |l| l.len())
        + selector.match_expressions.as_ref().map_or(0, |e| e.len());
    if requirements == 0 {
        out.push(format!(
            "{at}: an empty selector would select every workload of its kind in the namespace; name the workload or give labels"
        ));
    }
    out
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63 characters.
fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) || !is_label_name(name) || name.is_empty() {
        return Some(format!(
            "{key:?} is not a valid label key (an optional DNS subdomain and '/', then at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)"
        ));
    }
    None
}

/// A label value: empty, or as a label key's name.
fn label_value_problem(value: &str) -> Option<String> {
    (!is_label_name(value)).then(|| {
        format!(
            "{value:?} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)"
        )
    })
}

/// Empty, or at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

fn secret_and_key(spec: &ApiKeyRotationSpec, out: &mut Vec<String>) {
    if !is_dns_subdomain(&spec.secret.name) {
        out.push(format!(
            "spec.secret.name: {:?} is not a valid Secret name",
            spec.secret.name
        ));
    }
    if spec.secret.key.is_empty()
        || !spec
            .secret
            .key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        out.push(format!(
            "spec.secret.key: {:?} is not a valid Secret data key",
            spec.secret.key
        ));
    }
    if !(16..=64).contains(&spec.key.random_bytes) {
        out.push(format!(
            "spec.key.randomBytes: {} is outside 16..=64 (fewer than 16 bytes is too weak)",
            spec.key.random_bytes
        ));
    }
    let label_len = spec.key.label.chars().count();
    if !(1..=64).contains(&label_len) {
        out.push(format!(
            "spec.key.label: Sirius labels are 1 to 64 characters, got {label_len}"
        ));
    }
    if spec.key.prefix.len() > 16
        || !spec
            .key
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        out.push(format!(
            "spec.key.prefix: {:?} must be at most 16 of [A-Za-z0-9_-]",
            spec.key.prefix
        ));
    }
}

fn valkey(spec: &ApiKeyRotationSpec, out: &mut Vec<String>) {
    if let Err(e) = crate::keystore::check_url(&spec.valkey.url) {
        out.push(format!("spec.valkey.url: {e}"));
    } else if !["redis://", "rediss://", "valkey://", "valkeys://"]
        .iter()
        .any(|s| spec.valkey.url.starts_with(s))
    {
        out.push(
            "spec.valkey.url: must start with redis://, rediss://, valkey:// or valkeys://"
                .to_string(),
        );
    }
    if spec.valkey.tls.is_some()
        && !["rediss://", "valkeys://"]
            .iter()
            .any(|s| spec.valkey.url.starts_with(s))
    {
        out.push("spec.valkey.tls: needs a rediss:// or valkeys:// URL".to_string());
    }
    if let Some(name) = spec
        .valkey
        .tls
        .as_ref()
        .and_then(|t| t.server_name.as_ref())
        && !is_dns_subdomain(name)
        && name.parse::<std::net::IpAddr>().is_err()
    {
        out.push(format!(
            "spec.valkey.tls.serverName: {name:?} is neither a DNS name nor an IP address"
        ));
    }
    let (records, own) = (&spec.valkey.record_prefix, &spec.valkey.operator_prefix);
    if records.is_empty() || own.is_empty() {
        out.push("spec.valkey: recordPrefix and operatorPrefix must not be empty".to_string());
    } else if own.starts_with(records.as_str()) || records.starts_with(own.as_str()) {
        out.push(format!(
            "spec.valkey.operatorPrefix: {own:?} overlaps recordPrefix {records:?}; Sirius would list the operator's state as keys"
        ));
    }
}

fn timing_and_checks(spec: &ApiKeyRotationSpec, out: &mut Vec<String>) {
    if !(10..=86400).contains(&spec.progress_deadline_seconds) {
        out.push(format!(
            "spec.progressDeadlineSeconds: {} is outside 10..=86400",
            spec.progress_deadline_seconds
        ));
    }
    if spec.validation_window_seconds > 604_800 {
        out.push(format!(
            "spec.validationWindowSeconds: {} is over 7 days",
            spec.validation_window_seconds
        ));
    }
    if !(1..=300).contains(&spec.revoke_recheck_seconds) {
        out.push(format!(
            "spec.revokeRecheckSeconds: {} is outside 1..=300",
            spec.revoke_recheck_seconds
        ));
    }
    if let Some(i) = spec.rotation_interval_seconds
        && !(3600..=31_536_000).contains(&i)
    {
        out.push(format!(
            "spec.rotationIntervalSeconds: {i} is outside 3600..=31536000"
        ));
    }
    if let Some(v) = &spec.verification {
        out.extend(crate::trust::http_target_problem(
            "spec.verification.url",
            &v.url,
        ));
    }
    if let Some(g) = &spec.metrics_gate {
        out.extend(crate::trust::http_target_problem(
            "spec.metricsGate.prometheusUrl",
            &g.prometheus_url,
        ));
    }
    if let Some(v) = &spec.verification
        && !(1..=100).contains(&v.max_revocations)
    {
        out.push(format!(
            "spec.verification.maxRevocations: {} is outside 1..=100",
            v.max_revocations
        ));
    }
    if let Err(problems) = crate::schedule::Calendar::from_spec(spec) {
        out.extend(problems);
    }
    if !(1..=100).contains(&spec.history_limit) {
        out.push(format!(
            "spec.historyLimit: {} is outside 1..=100",
            spec.history_limit
        ));
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RolloutTarget, TargetKind};
    use serde_json::json;

    fn spec() -> ApiKeyRotationSpec {
        serde_json::from_value(
            serde_json::json!({"valkey": {"url": "redis://sirius-valkey:6379/0"}}),
        )
        .unwrap()
    }

    fn selector(labels: serde_json::Value) -> crate::crd::LabelSelector {
        serde_json::from_value(json!({ "matchLabels": labels })).unwrap()
    }

    fn selected(selector: serde_json::Value) -> RolloutTarget {
        RolloutTarget {
            selector: Some(serde_json::from_value(selector).unwrap()),
            ..RolloutTarget::named(TargetKind::Deployment, "")
        }
    }

    #[test]
    fn a_selector_of_labels_and_expressions_is_valid() {
        let mut s = spec();
        s.targets[1] = selected(json!({
            "matchLabels": {"app.kubernetes.io/part-of": "sirius", "tier": ""},
            "matchExpressions": [
                {"key": "example.com/role", "operator": "In", "values": ["ui", "engine"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }));
        assert_eq!(problems(&s), Vec::<String>::new());
    }

    #[test]
    fn defaults_are_valid() {
        let s = spec();
        assert_eq!(problems(&s), Vec::<String>::new());
        assert_eq!(
            s.targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["sirius-api", "sirius-ui", "sirius-engine"]
        );
        assert_eq!(s.secret.name, "sirius-api-key");
        assert_eq!(s.secret.key, "SIRIUS_API_KEY");
    }

    type Mutation = Box<dyn Fn(&mut ApiKeyRotationSpec)>;

    /// Each mutation of a good spec is refused with a problem that names `expected`.
    fn each_is_named(cases: Vec<(Mutation, &str)>) {
        for (mutate, expected) in cases {
            let mut s = spec();
            mutate(&mut s);
            let p = problems(&s);
            assert!(p.iter().any(|m| m.contains(expected)), "{expected}: {p:?}");
        }
    }

    /// The targets: names, selectors (as `ValidateLabelSelector` refuses them), duplicates.
    #[test]
    fn each_bad_target_is_named() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.targets.clear()), "spec.targets"),
            (
                Box::new(|s| s.targets.push(s.targets[0].clone())),
                "duplicate target",
            ),
            (
                Box::new(|s| s.targets[0].name = "Bad_Name".into()),
                "spec.targets[0].name",
            ),
            (
                Box::new(|s| s.targets[0].selector = Some(selector(json!({"app": "api"})))),
                "spec.targets[0]: both name and selector are set",
            ),
            (
                Box::new(|s| s.targets[1] = selected(json!({"matchLabels": {}}))),
                "spec.targets[1].selector: an empty selector",
            ),
            (
                Box::new(|s| s.targets[1] = selected(json!({"matchLabels": {"-bad": "x"}}))),
                "spec.targets[1].selector.matchLabels: \"-bad\" is not a valid label key",
            ),
            (
                Box::new(|s| s.targets[1] = selected(json!({"matchLabels": {"app": "ü"}}))),
                "spec.targets[1].selector.matchLabels[\"app\"]: \"ü\" is not a valid label value",
            ),
            (
                Box::new(|s| {
                    s.targets[1] =
                        selected(json!({"matchExpressions": [{"key": "app", "operator": "In"}]}))
                }),
                "spec.targets[1].selector.matchExpressions[0].values: must be specified",
            ),
            (
                Box::new(|s| {
                    s.targets[1] = selected(
                        json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]}),
                    )
                }),
                "spec.targets[1].selector.matchExpressions[0].values: may not be specified",
            ),
            (
                Box::new(|s| {
                    s.targets[1] = selected(
                        json!({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}),
                    )
                }),
                "spec.targets[1].selector.matchExpressions[0].operator: \"Gt\"",
            ),
            (
                Box::new(|s| {
                    s.targets[1] = selected(json!({"matchLabels": {"tier": "web", "app": "x"}}));
                    s.targets[2] = selected(json!({"matchLabels": {"app": "x", "tier": "web"}}));
                }),
                "spec.targets[2]: duplicate target Deployment app=x,tier=web",
            ),
        ];
        each_is_named(cases);
        let mut s = spec();
        s.targets.push(RolloutTarget {
            progress_deadline_seconds: Some(1),
            ..RolloutTarget::named(TargetKind::Deployment, "x")
        });
        assert!(
            problems(&s)
                .iter()
                .any(|m| m.contains("spec.targets[3].progressDeadlineSeconds"))
        );
    }

    /// The key's shape and where Valkey is.
    #[test]
    fn each_bad_key_or_valkey_field_is_named() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.key.random_bytes = 8), "spec.key.randomBytes"),
            (Box::new(|s| s.key.label = String::new()), "spec.key.label"),
            (
                Box::new(|s| s.valkey.url = "http://valkey:6379".into()),
                "spec.valkey.url",
            ),
            (
                Box::new(|s| s.valkey.url = "redis://".into()),
                "spec.valkey.url",
            ),
            (
                Box::new(|s| s.valkey.tls = Some(Default::default())),
                "spec.valkey.tls: needs a rediss://",
            ),
            (
                Box::new(|s| s.valkey.operator_prefix = "apikey:rotator:".into()),
                "overlaps",
            ),
        ];
        each_is_named(cases);
    }

    /// Windows, intervals and schedules; the checks' URLs; the consumers' Secret.
    #[test]
    fn each_bad_timing_check_or_secret_is_named() {
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|s| s.validation_window_seconds = 700_000),
                "spec.validationWindowSeconds",
            ),
            (
                Box::new(|s| s.rotation_interval_seconds = Some(60)),
                "spec.rotationIntervalSeconds",
            ),
            (Box::new(|s| s.history_limit = 0), "spec.historyLimit"),
            (
                Box::new(|s| {
                    s.schedule = Some(crate::crd::Schedule {
                        cron: "0 0 30 2 *".into(),
                        time_zone: "UTC".into(),
                        jitter_seconds: 0,
                    })
                }),
                "does not occur in every year",
            ),
            (
                Box::new(|s| {
                    s.verification = Some(
                        serde_json::from_value(serde_json::json!({"url": "http://8.8.8.8/"}))
                            .unwrap(),
                    )
                }),
                "spec.verification.url: http://8.8.8.8/ would go in clear text",
            ),
            (
                Box::new(|s| {
                    s.metrics_gate = Some(
                        serde_json::from_value(serde_json::json!({
                            "prometheusUrl": "http://prometheus.example.com", "query": "up", "threshold": 1.0
                        }))
                        .unwrap(),
                    )
                }),
                "spec.metricsGate.prometheusUrl",
            ),
            (
                Box::new(|s| {
                    s.verification = Some(
                        serde_json::from_value(
                            serde_json::json!({"url": "https://api", "maxRevocations": 0}),
                        )
                        .unwrap(),
                    )
                }),
                "spec.verification.maxRevocations",
            ),
            (
                Box::new(|s| s.secret.name = "UPPER".into()),
                "spec.secret.name",
            ),
        ];
        each_is_named(cases);
    }
}
