//! What the operator may be made to do on someone's behalf. Whoever may create an ApiKeyRotation
//! in a namespace, but not read its Secrets, must not learn a Secret's value through the
//! operator: not by naming it as the Valkey password (its value would go as AUTH to any host),
//! not by naming it as the consumers' Secret (it would be adopted, hashed into the status and
//! overwritten), and the keys the operator sends to a probe must not cross a network in clear
//! text. Pure rules; the reconciler and the spec check apply them.

use crate::crd::{ApiKeyRotation, MANAGED_BY_LABEL, vault_name};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use std::borrow::Borrow;
use std::net::IpAddr;

/// Annotation by which a Secret's owner lets ApiKeyRotations send its value to Valkey as the
/// password: a comma-separated list of ApiKeyRotation names, or `*` for any in its namespace.
pub const PASSWORD_OPT_IN_ANNOTATION: &str = "keys.siriusscan.io/valkey-password";

/// `None` is what the API server stores as `Opaque`.
fn secret_type(secret: &Secret) -> &str {
    secret.type_.as_deref().unwrap_or("Opaque")
}

fn same_namespace<'r>(secret: &Secret, r: &'r ApiKeyRotation) -> Option<&'r ApiKeyRotation> {
    (r.namespace() == secret.namespace() || secret.namespace().is_none()).then_some(r)
}

/// Whether `secret` is an ApiKeyRotation's vault: owned by one, or named after one (`<name>-
/// apikey-vault`, the name from a rotation or from the Secret's own rotation label).
fn is_vault(secret: &Secret, all: &[&ApiKeyRotation]) -> bool {
    let name = secret.name_any();
    let owned = secret
        .owner_references()
        .iter()
        .any(|o| o.kind == "ApiKeyRotation" && o.api_version.starts_with("keys.siriusscan.io/"));
    let labelled_vault = secret
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|r| name == vault_name(r));
    owned || labelled_vault || all.iter().any(|r| name == vault_name(&r.name_any()))
}

/// Why `rotation` may not send `secret`'s value to Valkey as the password, if it may not. The
/// Secret must be `Opaque` or `kubernetes.io/basic-auth`, hold no API key (no rotation's vault or
/// consumers' Secret, nothing this operator labelled), and name `rotation` (or `*`) in its
/// [`PASSWORD_OPT_IN_ANNOTATION`].
pub fn password_secret_problem<R: Borrow<ApiKeyRotation>>(
    secret: &Secret,
    rotation: &ApiKeyRotation,
    all: impl IntoIterator<Item = R>,
) -> Option<String> {
    let all: Vec<R> = all.into_iter().collect();
    let all: Vec<&ApiKeyRotation> = all
        .iter()
        .map(Borrow::borrow)
        .chain([rotation])
        .filter_map(|r| same_namespace(secret, r))
        .collect();
    let name = secret.name_any();
    let me = rotation.name_any();
    let kind = secret_type(secret);
    if kind != "Opaque" && kind != "kubernetes.io/basic-auth" {
        return Some(format!(
            "Secret {name} is of type {kind}; a Valkey password is only read from an Opaque or kubernetes.io/basic-auth Secret"
        ));
    }
    if is_vault(secret, &all) {
        return Some(format!(
            "Secret {name} is an ApiKeyRotation's vault; it is never sent to Valkey as a password"
        ));
    }
    if let Some(owner) = secret.labels().get(MANAGED_BY_LABEL) {
        return Some(format!(
            "Secret {name} holds an API key (written for ApiKeyRotation {owner}); it is never sent to Valkey as a password"
        ));
    }
    if let Some(r) = all.iter().find(|r| r.spec.secret.name == name) {
        return Some(format!(
            "Secret {name} is the consumers' Secret of ApiKeyRotation {}; it is never sent to Valkey as a password",
            r.name_any()
        ));
    }
    let granted = secret.annotations().get(PASSWORD_OPT_IN_ANNOTATION);
    let allowed =
        granted.is_some_and(|list| list.split(',').map(str::trim).any(|n| n == "*" || n == me));
    if allowed {
        return None;
    }
    let ns = secret
        .namespace()
        .or_else(|| rotation.namespace())
        .unwrap_or_else(|| "default".into());
    let value = match granted.map(|g| g.trim()).filter(|g| !g.is_empty()) {
        Some(others) => format!("{others},{me} --overwrite"),
        None => me.clone(),
    };
    Some(format!(
        "Secret {name} does not allow ApiKeyRotation {me} to send it to Valkey as the password; its owner opts in with: kubectl -n {ns} annotate secret {name} {PASSWORD_OPT_IN_ANNOTATION}={value}"
    ))
}

/// Why `rotation_name` may not adopt and write `secret` as its consumers' Secret, if it may not.
/// One this rotation already labelled is its own; any other must be `Opaque` (not a
/// service-account token, TLS, docker-config, basic-auth or bootstrap token Secret) and neither
/// an ApiKeyRotation's vault nor a Valkey password Secret.
pub fn consumer_secret_problem<R: Borrow<ApiKeyRotation>>(
    secret: &Secret,
    rotation_name: &str,
    all: impl IntoIterator<Item = R>,
) -> Option<String> {
    if secret
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|r| r == rotation_name)
    {
        return None;
    }
    let all: Vec<R> = all.into_iter().collect();
    let all: Vec<&ApiKeyRotation> = all
        .iter()
        .map(Borrow::borrow)
        .filter_map(|r| same_namespace(secret, r))
        .collect();
    let name = secret.name_any();
    let kind = secret_type(secret);
    if kind != "Opaque" {
        return Some(format!(
            "Secret {name} is of type {kind}, not Opaque; it is not adopted as the consumers' Secret and nothing was changed"
        ));
    }
    if is_vault(secret, &all) {
        return Some(format!(
            "Secret {name} is another ApiKeyRotation's vault; it is not adopted as the consumers' Secret and nothing was changed"
        ));
    }
    let password_of = all.iter().find(|r| {
        r.spec
            .valkey
            .password_secret_ref
            .as_ref()
            .is_some_and(|p| p.name == name)
    });
    if let Some(r) = password_of {
        return Some(format!(
            "Secret {name} is the Valkey password Secret of ApiKeyRotation {}; it is not adopted as the consumers' Secret and nothing was changed",
            r.name_any()
        ));
    }
    if secret
        .annotations()
        .contains_key(PASSWORD_OPT_IN_ANNOTATION)
    {
        return Some(format!(
            "Secret {name} is a Valkey password Secret ({PASSWORD_OPT_IN_ANNOTATION}); it is not adopted as the consumers' Secret and nothing was changed"
        ));
    }
    None
}

/// Why the value under `data_key` of an existing consumers' Secret this rotation does not own
/// yet is not adopted as its active key, if it is not. Only a Sirius key is: lowercase hex (32 to
/// 128 characters: the installer's root key has 64), optionally after `sk_` or the spec's key
/// prefix. Anything else (a database password, a token someone keeps there) would be sent to the
/// verification URL, and its first characters written into Valkey as the record's prefix.
pub fn adoptable_key_problem(
    secret: &Secret,
    rotation_name: &str,
    data_key: &str,
    key_prefix: &str,
) -> Option<String> {
    if secret
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|r| r == rotation_name)
    {
        return None;
    }
    let value = crate::observe::secret_value(secret, data_key)?;
    let raw = value.expose();
    let hex = [key_prefix, "sk_"]
        .iter()
        .filter(|p| !p.is_empty())
        .find_map(|p| raw.strip_prefix(p))
        .unwrap_or(raw);
    let sirius_shaped = (32..=128).contains(&hex.len())
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (!sirius_shaped).then(|| {
        format!(
            "Secret {} holds a value under {data_key} that is not a Sirius API key (lowercase hex, optionally after sk_); it is not adopted and nothing was changed. Remove that data key to have a key minted, or name another Secret in spec.secret",
            secret.name_any()
        )
    })
}

/// Why `url` (where `field` sends a key or a query) is not trusted, if it is not: https, or
/// http only to a name inside the cluster (no dots, or a `.svc` name such as
/// `sirius-api.sirius.svc.cluster.local`) or to loopback. Never http to another IP address or a
/// public-looking name: a key sent there crosses networks in clear text.
pub fn http_target_problem(field: &str, url: &str) -> Option<String> {
    let shown = crate::redact::url(url);
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Some(format!("{field}: {shown} is not a URL: {e}")),
    };
    let in_cluster_or_loopback = match parsed.host() {
        None => return Some(format!("{field}: {shown} has no host")),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(host)) => is_cluster_name(host),
    };
    match parsed.scheme() {
        "https" => None,
        "http" if in_cluster_or_loopback => None,
        "http" => Some(format!(
            "{field}: {shown} would go in clear text outside the cluster; use https, or http only to an in-cluster Service name (no dots, or ending in .svc or .svc.<cluster domain>) or to loopback"
        )),
        other => Some(format!("{field}: scheme {other} is not http or https")),
    }
}

/// `sirius-api`, `sirius-api.sirius.svc`, `sirius-api.sirius.svc.cluster.local`, `localhost`.
fn is_cluster_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || !host.contains('.') {
        return true;
    }
    // `.svc` after the first label, then anything (the cluster domain).
    host.split('.').skip(1).any(|label| label == "svc")
}

#[cfg(test)]
mod adoption {
    use super::*;

    fn holding(value: &str, labelled: Option<&str>) -> Secret {
        use k8s_openapi::ByteString;
        let mut s = Secret::default();
        s.metadata.name = Some("target".into());
        if let Some(r) = labelled {
            s.metadata.labels = Some([(MANAGED_BY_LABEL.to_string(), r.to_string())].into());
        }
        s.data = Some([("K".to_string(), ByteString(value.as_bytes().to_vec()))].into());
        s
    }

    #[test]
    fn only_sirius_shaped_keys_are_adopted() {
        let hex64 = "0123456789abcdef".repeat(4);
        for good in [
            hex64.clone(),
            format!("sk_{hex64}"),
            format!("my_{}", "ab".repeat(16)),
        ] {
            assert_eq!(
                adoptable_key_problem(&holding(&good, None), "r", "K", "my_"),
                None,
                "{good}"
            );
        }
        for bad in [
            "hunter2",
            "postgres://u:p@db/x",
            &hex64.to_uppercase(),
            "ab",
            &format!("sk_{}", "z".repeat(64)),
            "é",
        ] {
            let why = adoptable_key_problem(&holding(bad, None), "r", "K", "sk_").unwrap();
            assert!(!why.contains(bad), "the value is never quoted: {why}");
        }
        // One this rotation already owns (it wrote the key), or none at all, is not judged.
        assert_eq!(
            adoptable_key_problem(&holding("hunter2", Some("r")), "r", "K", "sk_"),
            None
        );
        assert_eq!(
            adoptable_key_problem(&holding("hunter2", None), "r", "other", "sk_"),
            None
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rotation(name: &str, consumer: &str, password: Option<&str>) -> ApiKeyRotation {
        let mut valkey = json!({"url": "redis://v:6379"});
        if let Some(p) = password {
            valkey["passwordSecretRef"] = json!({"name": p, "key": "password"});
        }
        serde_json::from_value(json!({
            "apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation",
            "metadata": {"name": name, "namespace": "ns", "uid": name},
            "spec": {"valkey": valkey, "secret": {"name": consumer}},
        }))
        .unwrap()
    }

    fn secret(name: &str, type_: Option<&str>, meta: serde_json::Value) -> Secret {
        let mut metadata = json!({"name": name, "namespace": "ns"});
        json_patch::merge(&mut metadata, &meta);
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata});
        if let Some(t) = type_ {
            s["type"] = json!(t);
        }
        serde_json::from_value(s).unwrap()
    }

    fn opted_in(name: &str, value: &str) -> Secret {
        secret(
            name,
            Some("Opaque"),
            json!({"annotations": {PASSWORD_OPT_IN_ANNOTATION: value}}),
        )
    }

    #[test]
    fn a_password_secret_needs_its_owners_opt_in() {
        let me = rotation("sirius", "sirius-api-key", Some("auth"));
        let all = [me.clone()];
        let bare = secret("auth", None, json!({}));
        let why = password_secret_problem(&bare, &me, &all).unwrap();
        assert!(
            why.contains(
                "kubectl -n ns annotate secret auth keys.siriusscan.io/valkey-password=sirius"
            ),
            "{why}"
        );
        for value in ["sirius", "*", "other, sirius", " sirius ,x"] {
            assert_eq!(
                password_secret_problem(&opted_in("auth", value), &me, &all),
                None,
                "{value}"
            );
        }
        let others =
            password_secret_problem(&opted_in("auth", "other,sirius2"), &me, &all).unwrap();
        assert!(
            others.contains("valkey-password=other,sirius2,sirius --overwrite"),
            "{others}"
        );
        let basic_auth = secret(
            "auth",
            Some("kubernetes.io/basic-auth"),
            json!({"annotations": {PASSWORD_OPT_IN_ANNOTATION: "*"}}),
        );
        assert_eq!(password_secret_problem(&basic_auth, &me, &all), None);
    }

    #[test]
    fn no_opt_in_makes_a_key_or_token_a_password() {
        let me = rotation("sirius", "sirius-api-key", Some("x"));
        let other = rotation("other", "other-key", None);
        let all = [me.clone(), other.clone()];
        let star = json!({"annotations": {PASSWORD_OPT_IN_ANNOTATION: "*"}});
        let cases = [
            (
                secret(
                    "x",
                    Some("kubernetes.io/service-account-token"),
                    star.clone(),
                ),
                "of type kubernetes.io/service-account-token",
            ),
            (
                secret("x", Some("kubernetes.io/tls"), star.clone()),
                "of type kubernetes.io/tls",
            ),
            (secret("other-apikey-vault", None, star.clone()), "vault"),
            (secret("sirius-apikey-vault", None, star.clone()), "vault"),
            (
                secret(
                    "x",
                    None,
                    json!({"annotations": {PASSWORD_OPT_IN_ANNOTATION: "*"},
                           "ownerReferences": [{"apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation", "name": "gone", "uid": "u"}]}),
                ),
                "vault",
            ),
            (
                secret(
                    "x",
                    None,
                    json!({"annotations": {PASSWORD_OPT_IN_ANNOTATION: "*"},
                           "labels": {MANAGED_BY_LABEL: "deleted-rotation"}}),
                ),
                "holds an API key",
            ),
            (
                secret("other-key", None, star.clone()),
                "consumers' Secret of ApiKeyRotation other",
            ),
            (
                secret("sirius-api-key", None, star.clone()),
                "consumers' Secret of ApiKeyRotation sirius",
            ),
        ];
        for (s, expected) in cases {
            let why = password_secret_problem(&s, &me, &all)
                .unwrap_or_else(|| panic!("{} was allowed", s.name_any()));
            assert!(why.contains(expected), "{why}");
            assert!(!why.contains("kubectl"), "no opt-in helps: {why}");
        }
        // A rotation in another namespace does not make a Secret here its consumers' Secret.
        let mut elsewhere = rotation("far", "auth", None);
        elsewhere.metadata.namespace = Some("elsewhere".into());
        assert_eq!(
            password_secret_problem(&opted_in("auth", "*"), &me, [&elsewhere]),
            None
        );
    }

    #[test]
    fn a_consumers_secret_must_be_an_opaque_secret_of_no_other_use() {
        let me = rotation("sirius", "target", None);
        let other = rotation("other", "other-key", Some("valkey-auth"));
        let all = [me.clone(), other.clone()];
        assert_eq!(
            consumer_secret_problem(&secret("target", None, json!({})), "sirius", &all),
            None
        );
        assert_eq!(
            consumer_secret_problem(&secret("target", Some("Opaque"), json!({})), "sirius", &all),
            None
        );
        // Already ours: kept whatever it looks like.
        let ours = secret(
            "target",
            Some("Opaque"),
            json!({"labels": {MANAGED_BY_LABEL: "sirius"}}),
        );
        assert_eq!(consumer_secret_problem(&ours, "sirius", &all), None);
        let cases = [
            (
                secret(
                    "target",
                    Some("kubernetes.io/service-account-token"),
                    json!({}),
                ),
                "of type kubernetes.io/service-account-token",
            ),
            (
                secret("target", Some("kubernetes.io/dockerconfigjson"), json!({})),
                "of type kubernetes.io/dockerconfigjson",
            ),
            (
                secret("target", Some("kubernetes.io/basic-auth"), json!({})),
                "of type kubernetes.io/basic-auth",
            ),
            (
                secret("target", Some("bootstrap.kubernetes.io/token"), json!({})),
                "of type bootstrap.kubernetes.io/token",
            ),
            (
                secret("target", Some("kubernetes.io/tls"), json!({})),
                "of type kubernetes.io/tls",
            ),
            (
                secret("other-apikey-vault", None, json!({})),
                "another ApiKeyRotation's vault",
            ),
            (
                secret(
                    "renamed-apikey-vault",
                    None,
                    json!({"labels": {MANAGED_BY_LABEL: "renamed"}}),
                ),
                "another ApiKeyRotation's vault",
            ),
            (
                secret("valkey-auth", None, json!({})),
                "Valkey password Secret of ApiKeyRotation other",
            ),
            (opted_in("spare-auth", "*"), "Valkey password Secret"),
        ];
        for (s, expected) in cases {
            let why = consumer_secret_problem(&s, "sirius", &all)
                .unwrap_or_else(|| panic!("{} was allowed", s.name_any()));
            assert!(why.contains(expected), "{why}");
        }
    }

    #[test]
    fn keys_go_only_over_https_or_to_in_cluster_and_loopback_http() {
        for ok in [
            "https://sirius.example.com/host/",
            "https://8.8.8.8/",
            "http://sirius-api:9001/host/",
            "http://sirius-api.sirius.svc:9001/host/",
            "http://sirius-api.sirius.svc.cluster.local:9001/host/",
            "http://sirius-api.sirius.svc.corp.internal/host/",
            "http://SIRIUS-API.Sirius.SVC.cluster.local./host/",
            "http://localhost:9001/",
            "http://127.0.0.1:9001/host/",
            "http://127.3.2.1/",
            "http://[::1]:9001/",
        ] {
            assert_eq!(http_target_problem("f", ok), None, "{ok}");
        }
        for bad in [
            "http://8.8.8.8/",
            "http://10.0.0.7:9001/host/",
            "http://[2001:db8::1]/",
            "http://[::ffff:8.8.8.8]/",
            "http://sirius.example.com/host/",
            "http://sirius-api.sirius/host/",
            "http://svc.example.com/",
            "http://0.0.0.0/",
        ] {
            let why = http_target_problem("spec.verification.url", bad)
                .unwrap_or_else(|| panic!("{bad} was allowed"));
            assert!(
                why.starts_with("spec.verification.url: ") && why.contains("clear text"),
                "{why}"
            );
        }
        assert!(http_target_problem("f", "ftp://sirius-api/").is_some());
        assert!(http_target_problem("f", "not a url").is_some());
        // Credentials in a refused URL are not repeated.
        let why = http_target_problem("f", "http://u:hunter2@8.8.8.8/").unwrap();
        assert!(!why.contains("hunter2"), "{why}");
    }
}
