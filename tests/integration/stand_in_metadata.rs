//! The stand-in's metadata rules and real-cluster semantics checked against kube-apiserver's
//! sources: object names per kind, generateName, label keys and values, annotations, finalizer
//! names (422 `Invalid` with kube-apiserver's messages and causes); immutable Secrets and
//! ConfigMaps and a Secret's write-only stringData; a Namespace being deleted (403 for new
//! content, emptied by the namespace controller, finalizers honoured); paused Deployments as the
//! Deployment controller reports them.

use crate::common::*;
use http_body_util::BodyExt;
use kube_sim::{NamespaceDeletion, Sim};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const NAME_PART: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const IMMUTABLE: &str = "field is immutable when `immutable` is set";

/// What kube-apiserver answered: status code, JSON body and `Warning` headers.
struct Reply {
    code: u16,
    body: Value,
    warnings: Vec<String>,
}

async fn call(
    sim: &Sim,
    method: &str,
    path: &str,
    body: Option<Value>,
    content_type: &str,
) -> Reply {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(
            body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        ))
        .unwrap();
    let response = client_for(sim).send(request).await.unwrap();
    let code = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        code,
        body,
        warnings,
    }
}

async fn post(sim: &Sim, path: &str, body: Value) -> Reply {
    call(sim, "POST", path, Some(body), "application/json").await
}

async fn merge(sim: &Sim, path: &str, patch: Value) -> Reply {
    call(
        sim,
        "PATCH",
        path,
        Some(patch),
        "application/merge-patch+json",
    )
    .await
}

fn ns_path(resource: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{resource}")
}

/// A 422 `Invalid` Status with this message and these causes (reason, field), as `NewInvalid`.
#[track_caller]
fn assert_invalid(reply: &Reply, message: &str, causes: &[(&str, &str)]) {
    let b = &reply.body;
    assert_eq!(reply.code, 422, "{b}");
    assert_eq!(b["kind"], "Status", "{b}");
    assert_eq!(b["status"], "Failure", "{b}");
    assert_eq!(b["reason"], "Invalid", "{b}");
    assert_eq!(b["code"], 422, "{b}");
    assert_eq!(b["message"], message, "{b}");
    let got: Vec<(String, String)> = b["details"]["causes"]
        .as_array()
        .unwrap_or_else(|| panic!("no causes in {b}"))
        .iter()
        .map(|c| {
            (
                c["reason"].as_str().unwrap().to_string(),
                c["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = causes
        .iter()
        .map(|(r, f)| (r.to_string(), f.to_string()))
        .collect();
    assert_eq!(got, want, "{b}");
}

fn configmap(name: &str, meta: Value) -> Value {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}});
    json_patch::merge(&mut cm["metadata"], &meta);
    cm
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn stand_in_names_are_validated_per_kind_as_kube_apiserver_does() {
    let sim = start_sim().await;
    // Most kinds: a DNS-1123 subdomain.
    let r = post(
        &sim,
        &ns_path("secrets"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "Sirius_Key"}}),
    )
    .await;
    assert_invalid(
        &r,
        &format!(
            "Secret \"Sirius_Key\" is invalid: metadata.name: Invalid value: \"Sirius_Key\": {SUBDOMAIN}"
        ),
        &[("FieldValueInvalid", "metadata.name")],
    );
    assert_eq!(r.body["details"]["name"], "Sirius_Key");
    assert_eq!(r.body["details"]["kind"], "Secret");
    assert_eq!(
        r.body["details"]["causes"][0]["message"],
        format!("Invalid value: \"Sirius_Key\": {SUBDOMAIN}")
    );
    let long = "a".repeat(254);
    assert_invalid(
        &post(&sim, &ns_path("configmaps"), configmap(&long, json!({}))).await,
        &format!(
            "ConfigMap \"{long}\" is invalid: metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
        ),
        &[("FieldValueInvalid", "metadata.name")],
    );
    let longest = format!("{}.b", "a".repeat(251));
    assert_eq!(
        post(&sim, &ns_path("configmaps"), configmap(&longest, json!({})))
            .await
            .code,
        201
    );

    // Namespaces: a DNS-1123 label.
    let r = post(
        &sim,
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sirius.prod"}}),
    )
    .await;
    assert_invalid(
        &r,
        "Namespace \"sirius.prod\" is invalid: metadata.name: Invalid value: \"sirius.prod\": must not contain dots",
        &[("FieldValueInvalid", "metadata.name")],
    );
    let long = "n".repeat(64);
    assert_invalid(
        &post(
            &sim,
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": long}}),
        )
        .await,
        &format!(
            "Namespace \"{long}\" is invalid: metadata.name: Invalid value: \"{long}\": must be no more than 63 characters"
        ),
        &[("FieldValueInvalid", "metadata.name")],
    );

    // Services: a DNS-1035 label (it starts with a letter).
    assert_invalid(
        &post(&sim, &ns_path("services"), json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1-api"}, "spec": {}})).await,
        "Service \"1-api\" is invalid: metadata.name: Invalid value: \"1-api\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        &[("FieldValueInvalid", "metadata.name")],
    );

    // Custom resources: a DNS-1123 subdomain, the kind qualified by its group.
    let mut akr = rotation("redis://127.0.0.1:1", json!({}));
    akr["metadata"]["name"] = json!("Sirius");
    let r = post(
        &sim,
        &format!("/apis/keys.siriusscan.io/v1alpha1/namespaces/{NS}/apikeyrotations"),
        akr,
    )
    .await;
    assert_invalid(
        &r,
        &format!(
            "ApiKeyRotation.keys.siriusscan.io \"Sirius\" is invalid: metadata.name: Invalid value: \"Sirius\": {SUBDOMAIN}"
        ),
        &[("FieldValueInvalid", "metadata.name")],
    );
    assert_eq!(r.body["details"]["group"], "keys.siriusscan.io");
}

#[tokio::test]
async fn stand_in_generate_name_appends_five_random_characters_and_validates_the_result() {
    let sim = start_sim().await;
    let alphabet = "bcdfghjklmnpqrstvwxz2456789";
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = post(
            &sim,
            &ns_path("configmaps"),
            configmap("", json!({"generateName": "sirius-cfg-"})),
        )
        .await;
        assert_eq!(r.code, 201, "{}", r.body);
        let name = r.body["metadata"]["name"].as_str().unwrap().to_string();
        let suffix = name.strip_prefix("sirius-cfg-").unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
        assert!(suffix.chars().all(|c| alphabet.contains(c)), "{name}");
        assert_eq!(r.body["metadata"]["generateName"], "sirius-cfg-");
        names.insert(name);
    }
    assert_eq!(names.len(), 20, "generated names never repeat");

    // A prefix longer than 58 characters is cut: the name stays within 63.
    let prefix = format!("{}-", "p".repeat(69));
    let r = post(
        &sim,
        &ns_path("configmaps"),
        configmap("", json!({"generateName": prefix})),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let name = r.body["metadata"]["name"].as_str().unwrap();
    assert_eq!(name.len(), 63);
    assert!(name.starts_with(&"p".repeat(58)), "{name}");

    // An invalid prefix: both generateName and the generated name are refused.
    let r = post(
        &sim,
        &ns_path("configmaps"),
        configmap("", json!({"generateName": "Sirius-"})),
    )
    .await;
    let generated = r.body["details"]["name"].as_str().unwrap().to_string();
    assert!(
        generated.starts_with("Sirius-") && generated.len() == 12,
        "{}",
        r.body
    );
    assert_invalid(
        &r,
        &format!(
            "ConfigMap \"{generated}\" is invalid: [metadata.generateName: Invalid value: \"Sirius-\": {SUBDOMAIN}, metadata.name: Invalid value: \"{generated}\": {SUBDOMAIN}]"
        ),
        &[
            ("FieldValueInvalid", "metadata.generateName"),
            ("FieldValueInvalid", "metadata.name"),
        ],
    );

    // Neither name nor generateName.
    assert_invalid(
        &post(&sim, &ns_path("configmaps"), configmap("", json!({}))).await,
        "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required",
        &[("FieldValueRequired", "metadata.name")],
    );
}

#[tokio::test]
async fn stand_in_label_keys_and_values_follow_kube_apiserver_on_create_patch_and_apply() {
    let sim = start_sim().await;
    // The operator labels its Secrets keys.siriusscan.io/rotation=<ApiKeyRotation name>: a
    // rotation name longer than 63 characters cannot be a label value.
    let value = "r".repeat(64);
    let r = post(
        &sim,
        &ns_path("secrets"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vault", "labels": {"keys.siriusscan.io/rotation": value}}}),
    )
    .await;
    assert_invalid(
        &r,
        &format!(
            "Secret \"vault\" is invalid: metadata.labels: Invalid value: \"{value}\": must be no more than 63 characters"
        ),
        &[("FieldValueInvalid", "metadata.labels")],
    );
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("c", json!({"labels": {"-team": "a"}})),
        )
        .await,
        &format!(
            "ConfigMap \"c\" is invalid: metadata.labels: Invalid value: \"-team\": {NAME_PART}"
        ),
        &[("FieldValueInvalid", "metadata.labels")],
    );
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("c", json!({"labels": {"Keys.SiriusScan.io/rotation": "a"}})),
        )
        .await,
        &format!(
            "ConfigMap \"c\" is invalid: metadata.labels: Invalid value: \"Keys.SiriusScan.io/rotation\": prefix part {SUBDOMAIN}"
        ),
        &[("FieldValueInvalid", "metadata.labels")],
    );
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("c", json!({"labels": {"team": "blue team"}})),
        )
        .await,
        &format!(
            "ConfigMap \"c\" is invalid: metadata.labels: Invalid value: \"blue team\": {LABEL_VALUE}"
        ),
        &[("FieldValueInvalid", "metadata.labels")],
    );
    // 63 characters, and the empty value, are fine.
    let ok = post(
        &sim,
        &ns_path("configmaps"),
        configmap(
            "c",
            json!({"labels": {"keys.siriusscan.io/rotation": "r".repeat(63), "empty": ""}}),
        ),
    )
    .await;
    assert_eq!(ok.code, 201, "{}", ok.body);

    // A merge patch's result is validated, and nothing is written.
    let path = format!("{}/c", ns_path("configmaps"));
    let r = merge(
        &sim,
        &path,
        json!({"metadata": {"labels": {"team": value}}}),
    )
    .await;
    assert_invalid(
        &r,
        &format!(
            "ConfigMap \"c\" is invalid: metadata.labels: Invalid value: \"{value}\": must be no more than 63 characters"
        ),
        &[("FieldValueInvalid", "metadata.labels")],
    );
    let stored = sim.get_object("", "configmaps", NS, "c").unwrap();
    assert!(
        stored["metadata"]["labels"].get("team").is_none(),
        "{stored}"
    );
    // So is a server-side apply's.
    let r = call(
        &sim,
        "PATCH",
        &format!("{path}?fieldManager=test"),
        Some(configmap("c", json!({"labels": {"team": value}}))),
        "application/apply-patch+yaml",
    )
    .await;
    assert_invalid(
        &r,
        &format!(
            "ConfigMap \"c\" is invalid: metadata.labels: Invalid value: \"{value}\": must be no more than 63 characters"
        ),
        &[("FieldValueInvalid", "metadata.labels")],
    );
}

#[tokio::test]
async fn stand_in_annotations_keys_are_qualified_names_and_all_together_at_most_256_kib() {
    let sim = start_sim().await;
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("c", json!({"annotations": {"bad key": "x"}})),
        )
        .await,
        &format!(
            "ConfigMap \"c\" is invalid: metadata.annotations: Invalid value: \"bad key\": {NAME_PART}"
        ),
        &[("FieldValueInvalid", "metadata.annotations")],
    );
    // Case does not matter in an annotation key's prefix.
    let r = post(
        &sim,
        &ns_path("configmaps"),
        configmap("upper", json!({"annotations": {"Example.COM/Team": "x"}})),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    // Keys and values together: 262144 bytes are fine, one more is not.
    let at_limit = "v".repeat(262_144 - 1);
    let r = post(
        &sim,
        &ns_path("configmaps"),
        configmap("full", json!({"annotations": {"a": at_limit}})),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let over = "v".repeat(262_144);
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("big", json!({"annotations": {"a": over}})),
        )
        .await,
        "ConfigMap \"big\" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes",
        &[("FieldValueTooLong", "metadata.annotations")],
    );
    // A Deployment's pod template annotations too (the operator stamps its rollouts there).
    let mut d = sirius_deployment("sirius-api", 1);
    d["spec"]["template"]["metadata"]["annotations"] = json!({"keys.siriusscan.io/key id": "k1"});
    let r = post(
        &sim,
        &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        d,
    )
    .await;
    assert_invalid(
        &r,
        &format!(
            "Deployment.apps \"sirius-api\" is invalid: spec.template.metadata.annotations: Invalid value: \"keys.siriusscan.io/key id\": {NAME_PART}"
        ),
        &[("FieldValueInvalid", "spec.template.metadata.annotations")],
    );
}

#[tokio::test]
async fn stand_in_finalizer_names_are_qualified_and_standard_for_built_in_kinds() {
    let sim = start_sim().await;
    // A built-in kind: a finalizer without a domain must be a standard one.
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("c", json!({"finalizers": ["cleanup"]})),
        )
        .await,
        "ConfigMap \"c\" is invalid: metadata.finalizers[0]: Invalid value: \"cleanup\": name is neither a standard finalizer name nor is it fully qualified",
        &[("FieldValueInvalid", "metadata.finalizers[0]")],
    );
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("c", json!({"finalizers": ["example.com/a/b"]})),
        )
        .await,
        "ConfigMap \"c\" is invalid: metadata.finalizers: Invalid value: \"example.com/a/b\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
        &[("FieldValueInvalid", "metadata.finalizers")],
    );
    assert_invalid(
        &post(
            &sim,
            &ns_path("configmaps"),
            configmap("c", json!({"finalizers": ["orphan", "foregroundDeletion"]})),
        )
        .await,
        "ConfigMap \"c\" is invalid: metadata.finalizers: Invalid value: []string{\"orphan\", \"foregroundDeletion\"}: finalizer orphan and foregroundDeletion cannot be both set",
        &[("FieldValueInvalid", "metadata.finalizers")],
    );
    // Standard names, and (kube-apiserver has no rule against them) duplicates, are accepted.
    let r = post(
        &sim,
        &ns_path("configmaps"),
        configmap(
            "c",
            json!({"finalizers": ["kubernetes", "example.com/hold", "example.com/hold"]}),
        ),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    // A finalizer added once the object is being deleted.
    sim.delete_object("", "configmaps", NS, "c").unwrap();
    let r = merge(
        &sim,
        &format!("{}/c", ns_path("configmaps")),
        json!({"metadata": {"finalizers": ["kubernetes", "example.com/hold", "example.com/more", "a.io/x"]}}),
    )
    .await;
    assert_invalid(
        &r,
        "ConfigMap \"c\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"a.io/x\", \"example.com/more\"}",
        &[("FieldValueForbidden", "metadata.finalizers")],
    );

    // A custom resource: a finalizer without a path is accepted, with a warning.
    let mut akr = rotation("redis://127.0.0.1:1", json!({}));
    akr["metadata"]["finalizers"] = json!([
        "cleanup",
        "cleanup.siriusscan.io",
        "keys.siriusscan.io/cleanup"
    ]);
    let r = post(
        &sim,
        &format!("/apis/keys.siriusscan.io/v1alpha1/namespaces/{NS}/apikeyrotations"),
        akr,
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(
        r.warnings,
        vec![
            "299 - \"metadata.finalizers: \\\"cleanup\\\": prefer a domain-qualified finalizer name to avoid accidental conflicts with other finalizer writers\"".to_string(),
            "299 - \"metadata.finalizers: \\\"cleanup.siriusscan.io\\\": prefer a domain-qualified finalizer name including a path (/) to avoid accidental conflicts with other finalizer writers\"".to_string(),
        ]
    );
}

#[tokio::test]
async fn stand_in_immutable_secrets_and_configmaps_refuse_data_changes() {
    let sim = start_sim().await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "frozen"},
                        "immutable": true, "data": {"SIRIUS_API_KEY": b64("k1")}});
    let r = post(&sim, &ns_path("secrets"), secret).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let path = format!("{}/frozen", ns_path("secrets"));
    assert_invalid(
        &merge(&sim, &path, json!({"data": {"SIRIUS_API_KEY": b64("k2")}})).await,
        &format!("Secret \"frozen\" is invalid: data: Forbidden: {IMMUTABLE}"),
        &[("FieldValueForbidden", "data")],
    );
    assert_eq!(r.body["type"], "Opaque", "the type defaults to Opaque");
    // stringData is merged into data first: the same refusal.
    assert_invalid(
        &merge(&sim, &path, json!({"stringData": {"OTHER": "x"}})).await,
        &format!("Secret \"frozen\" is invalid: data: Forbidden: {IMMUTABLE}"),
        &[("FieldValueForbidden", "data")],
    );
    assert_invalid(
        &merge(&sim, &path, json!({"immutable": false})).await,
        &format!("Secret \"frozen\" is invalid: immutable: Forbidden: {IMMUTABLE}"),
        &[("FieldValueForbidden", "immutable")],
    );
    assert_invalid(
        &merge(&sim, &path, json!({"immutable": null, "data": null})).await,
        &format!(
            "Secret \"frozen\" is invalid: [immutable: Forbidden: {IMMUTABLE}, data: Forbidden: {IMMUTABLE}]"
        ),
        &[
            ("FieldValueForbidden", "immutable"),
            ("FieldValueForbidden", "data"),
        ],
    );
    assert_eq!(
        secret_value(&sim, "frozen", "SIRIUS_API_KEY").as_deref(),
        Some("k1")
    );
    // Metadata still changes, and the Secret can be deleted.
    let r = merge(&sim, &path, json!({"metadata": {"labels": {"team": "a"}}})).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = call(&sim, "DELETE", &path, None, "application/json").await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(sim.get_object("", "secrets", NS, "frozen").is_none());

    // A Secret's type never changes, immutable or not.
    let mutable = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "plain"}, "data": {"a": b64("1")}});
    assert_eq!(post(&sim, &ns_path("secrets"), mutable).await.code, 201);
    assert_invalid(
        &merge(
            &sim,
            &format!("{}/plain", ns_path("secrets")),
            json!({"type": "kubernetes.io/tls"}),
        )
        .await,
        "Secret \"plain\" is invalid: type: Invalid value: \"kubernetes.io/tls\": field is immutable",
        &[("FieldValueInvalid", "type")],
    );

    // ConfigMaps: data and binaryData.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "frozen"}, "immutable": true,
                    "data": {"a": "1"}, "binaryData": {"b": b64("2")}});
    assert_eq!(post(&sim, &ns_path("configmaps"), cm).await.code, 201);
    let path = format!("{}/frozen", ns_path("configmaps"));
    assert_invalid(
        &merge(&sim, &path, json!({"binaryData": {"b": b64("3")}})).await,
        &format!("ConfigMap \"frozen\" is invalid: binaryData: Forbidden: {IMMUTABLE}"),
        &[("FieldValueForbidden", "binaryData")],
    );
    assert_invalid(
        &merge(&sim, &path, json!({"data": {"a": "2"}})).await,
        &format!("ConfigMap \"frozen\" is invalid: data: Forbidden: {IMMUTABLE}"),
        &[("FieldValueForbidden", "data")],
    );
    assert_eq!(
        call(&sim, "DELETE", &path, None, "application/json")
            .await
            .code,
        200
    );
}

#[tokio::test]
async fn stand_in_secret_string_data_is_merged_into_data_and_never_stored() {
    let sim = start_sim().await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sirius-api-key"},
                        "data": {"SIRIUS_API_KEY": b64("from-data"), "OTHER": b64("kept")},
                        "stringData": {"SIRIUS_API_KEY": "from-string-data", "NEW": "n"}});
    let r = post(&sim, &ns_path("secrets"), secret).await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert!(r.body.get("stringData").is_none(), "{}", r.body);
    assert_eq!(
        r.body["data"],
        json!({"SIRIUS_API_KEY": b64("from-string-data"), "OTHER": b64("kept"), "NEW": b64("n")})
    );
    let stored = sim.get_object("", "secrets", NS, "sirius-api-key").unwrap();
    assert!(stored.get("stringData").is_none(), "{stored}");
    // An update's stringData too.
    let r = merge(
        &sim,
        &format!("{}/sirius-api-key", ns_path("secrets")),
        json!({"stringData": {"OTHER": "changed"}}),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(r.body.get("stringData").is_none(), "{}", r.body);
    assert_eq!(
        secret_value(&sim, "sirius-api-key", "OTHER").as_deref(),
        Some("changed")
    );
    assert_eq!(
        secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref(),
        Some("from-string-data")
    );
}

fn namespace_condition(ns: &Value, type_: &str) -> Value {
    ns["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn stand_in_a_namespace_being_deleted_refuses_new_content_and_is_emptied_honouring_finalizers()
 {
    let sim = start_sim().await;
    let r = post(
        &sim,
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}}),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Active");
    assert_eq!(r.body["spec"]["finalizers"], json!(["kubernetes"]));
    // Content: a ConfigMap, a Deployment's pod, a Secret and an ApiKeyRotation held by finalizers.
    let at = |resource: &str| format!("/api/v1/namespaces/doomed/{resource}");
    assert_eq!(
        post(&sim, &at("configmaps"), configmap("c", json!({})))
            .await
            .code,
        201
    );
    let held = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
    assert_eq!(post(&sim, &at("secrets"), held).await.code, 201);
    let mut d = sirius_deployment("sirius-api", 1);
    d["metadata"]["namespace"] = json!("doomed");
    assert_eq!(
        post(&sim, "/apis/apps/v1/namespaces/doomed/deployments", d)
            .await
            .code,
        201
    );
    let mut akr = rotation("redis://127.0.0.1:1", json!({}));
    akr["metadata"]["namespace"] = json!("doomed");
    akr["metadata"]["finalizers"] = json!(["keys.siriusscan.io/cleanup"]);
    let r = post(
        &sim,
        "/apis/keys.siriusscan.io/v1alpha1/namespaces/doomed/apikeyrotations",
        akr,
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    wait_for(Duration::from_secs(5), "the Deployment's pod", || {
        sim.pods().iter().any(|p| p.namespace == "doomed")
    })
    .await;
    // A namespace without a Namespace object takes content as before.
    assert_eq!(
        post(
            &sim,
            "/api/v1/namespaces/elsewhere/configmaps",
            configmap("c", json!({}))
        )
        .await
        .code,
        201
    );

    let r = call(
        &sim,
        "DELETE",
        "/api/v1/namespaces/doomed",
        None,
        "application/json",
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
    assert_eq!(r.body["status"]["phase"], "Terminating");

    // Nothing new in it (NamespaceLifecycle admission).
    let r = post(&sim, &at("configmaps"), configmap("late", json!({}))).await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(r.body["reason"], "Forbidden");
    assert_eq!(
        r.body["message"],
        "configmaps \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"
    );
    assert_eq!(r.body["details"]["kind"], "configmaps");
    assert_eq!(r.body["details"]["name"], "late");
    assert_eq!(
        r.body["details"]["causes"],
        json!([{"reason": "NamespaceTerminating", "message": "namespace doomed is being terminated", "field": "metadata.namespace"}])
    );
    let r = post(
        &sim,
        &at("events"),
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "e-"}}),
    )
    .await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(
        r.body["message"],
        "events is forbidden: unable to create new content in namespace doomed because it is being terminated"
    );

    // The namespace controller deletes everything; objects with finalizers stay, marked.
    wait_for(
        Duration::from_secs(5),
        "the content without finalizers to go",
        || {
            sim.list_objects("", "configmaps", Some("doomed"))
                .is_empty()
                && sim
                    .list_objects("apps", "deployments", Some("doomed"))
                    .is_empty()
                && sim.list_objects("", "pods", Some("doomed")).is_empty()
                && !sim.pods().iter().any(|p| p.namespace == "doomed")
        },
    )
    .await;
    let held = sim.get_object("", "secrets", "doomed", "held").unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    let akr = sim
        .get_object("keys.siriusscan.io", "apikeyrotations", "doomed", "sirius")
        .unwrap();
    assert!(akr["metadata"]["deletionTimestamp"].is_string(), "{akr}");
    wait_for(Duration::from_secs(5), "the Namespace's deletion conditions", || {
        let ns = sim.get_object("", "namespaces", "", "doomed").unwrap();
        namespace_condition(&ns, "NamespaceFinalizersRemaining")["status"] == "True"
            && namespace_condition(&ns, "NamespaceContentRemaining")["message"]
                == "Some resources are remaining: apikeyrotations.keys.siriusscan.io has 1 resource instances, secrets. has 1 resource instances"
    })
    .await;
    let ns = sim.get_object("", "namespaces", "", "doomed").unwrap();
    let c = namespace_condition(&ns, "NamespaceFinalizersRemaining");
    assert_eq!(c["reason"], "SomeFinalizersRemain");
    assert_eq!(
        c["message"],
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances, keys.siriusscan.io/cleanup in 1 resource instances"
    );
    assert_eq!(
        namespace_condition(&ns, "NamespaceContentRemaining")["reason"],
        "SomeResourcesRemain"
    );
    let c = namespace_condition(&ns, "NamespaceDeletionContentFailure");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("False"), &json!("ContentDeleted"))
    );
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));

    // Their controllers finish: then the Namespace goes.
    sim.merge_patch_object(
        "",
        "secrets",
        "doomed",
        "held",
        json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
    sim.merge_patch_object(
        "keys.siriusscan.io",
        "apikeyrotations",
        "doomed",
        "sirius",
        json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(5), "the Namespace to go", || {
        sim.get_object("", "namespaces", "", "doomed").is_none()
    })
    .await;
    assert_eq!(
        sim.list_objects("", "configmaps", Some("elsewhere")).len(),
        1
    );
    // Once gone, the namespace takes content again (there is no Namespace object).
    assert_eq!(
        post(&sim, &at("configmaps"), configmap("after", json!({})))
            .await
            .code,
        201
    );

    // Namespaces kube-apiserver never lets go.
    let r = call(
        &sim,
        "DELETE",
        "/api/v1/namespaces/default",
        None,
        "application/json",
    )
    .await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(r.body["reason"], "Forbidden");
    assert_eq!(
        r.body["message"],
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
}

fn bare_pod(name: &str, grace_seconds: i64) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": grace_seconds,
                    "containers": [{"name": "tool", "image": "ghcr.io/siriusscan/tool:1"}]}})
}

#[tokio::test]
async fn stand_in_namespace_deletion_can_follow_kube_controller_managers_order_and_pod_grace() {
    let sim = start_sim().await;
    for ns in ["quick", "slow"] {
        let r = post(
            &sim,
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
        assert_eq!(r.code, 201, "{}", r.body);
        let r = post(
            &sim,
            &format!("/api/v1/namespaces/{ns}/pods"),
            bare_pod("tool", 2),
        )
        .await;
        assert_eq!(r.code, 201, "{}", r.body);
        for i in 0..3 {
            let r = post(
                &sim,
                &format!("/api/v1/namespaces/{ns}/configmaps"),
                configmap(&format!("c{i}"), json!({})),
            )
            .await;
            assert_eq!(r.code, 201, "{}", r.body);
        }
    }
    wait_for(Duration::from_secs(5), "both pods running", || {
        sim.pods().iter().filter(|p| p.ready).count() == 2
    })
    .await;

    // By default the pods go at once, with everything else.
    let start = Instant::now();
    assert_eq!(
        call(
            &sim,
            "DELETE",
            "/api/v1/namespaces/quick",
            None,
            "application/json"
        )
        .await
        .code,
        200
    );
    wait_for(Duration::from_secs(1), "namespace quick to go", || {
        sim.get_object("", "namespaces", "", "quick").is_none()
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(1));

    // kube-controller-manager's way: the pod terminates for its 2 s of grace, and the namespace
    // waits for it.
    sim.set_namespace_deletion(NamespaceDeletion::Concurrent { seed: 7 });
    let start = Instant::now();
    assert_eq!(
        call(
            &sim,
            "DELETE",
            "/api/v1/namespaces/slow",
            None,
            "application/json"
        )
        .await
        .code,
        200
    );
    wait_for(Duration::from_secs(2), "the pod to terminate", || {
        sim.get_object("", "pods", "slow", "tool")
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
            && sim.list_objects("", "configmaps", Some("slow")).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the namespace stays meanwhile
    let ns = sim
        .get_object("", "namespaces", "", "slow")
        .expect("the namespace waits for its pod");
    assert_eq!(
        namespace_condition(&ns, "NamespaceContentRemaining")["message"],
        "Some resources are remaining: pods. has 1 resource instances"
    );
    assert!(
        sim.pods()
            .iter()
            .any(|p| p.namespace == "slow" && p.terminating)
    );
    wait_for(Duration::from_secs(5), "namespace slow to go", || {
        sim.get_object("", "namespaces", "", "slow").is_none()
    })
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn stand_in_a_paused_deployment_gets_no_new_replica_set_and_reports_no_updated_replicas() {
    use k8s_openapi::api::apps::v1::Deployment;
    let sim = start_sim().await;
    sim.create_object(consumer_secret(&apikey_rotator::key::RawKey::new("k")))
        .unwrap();
    sim.create_object(sirius_deployment("sirius-ui", 2))
        .unwrap();
    wait_for(Duration::from_secs(10), "the first rollout", || {
        sim.rollouts().iter().any(|r| r.completed_at_ms.is_some())
    })
    .await;
    let before: Vec<String> = sim.pods().iter().map(|p| p.name.clone()).collect();
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-ui",
        json!({"spec": {"paused": true, "template": {"metadata": {"annotations": {"keys.siriusscan.io/key-id": "k2"}}}}}),
    )
    .unwrap();
    let get = || {
        sim.get_object("apps", "deployments", NS, "sirius-ui")
            .unwrap()
    };
    wait_for(
        Duration::from_secs(5),
        "the new generation observed",
        || {
            let d = get();
            d["status"]["observedGeneration"] == d["metadata"]["generation"]
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing rolls while paused
    let d = get();
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    // The old ReplicaSet's pods keep serving; none counts as updated.
    assert_eq!(d["status"]["replicas"], 2, "{d}");
    assert_eq!(d["status"]["availableReplicas"], 2, "{d}");
    assert!(
        d["status"]["updatedReplicas"].as_i64().unwrap_or(0) == 0,
        "{d}"
    );
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(progressing["status"], "Unknown");
    assert_eq!(progressing["reason"], "DeploymentPaused");
    assert_eq!(progressing["message"], "Deployment is paused");
    let now: Vec<String> = sim.pods().iter().map(|p| p.name.clone()).collect();
    assert_eq!(now, before, "no new pods while paused");
    let typed: Deployment = serde_json::from_value(d).unwrap();
    assert_eq!(
        apikey_rotator::workload::rollout_state(&typed),
        apikey_rotator::workload::RolloutState::Progressing(
            "Waiting for rollout to finish: 0 out of 2 new replicas have been updated...".into()
        )
    );
    assert_eq!(sim.rollouts().len(), 1, "no new revision while paused");

    // Resumed, it rolls out.
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-ui",
        json!({"spec": {"paused": false}}),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the paused change to roll out",
        || {
            sim.rollouts()
                .iter()
                .any(|r| r.revision == 2 && r.completed_at_ms.is_some())
        },
    )
    .await;
    wait_for(Duration::from_secs(5), "updatedReplicas 2", || {
        get()["status"]["updatedReplicas"] == 2
    })
    .await;

    // A Deployment created paused has no ReplicaSet, so no pods.
    let mut d = sirius_deployment("sirius-engine", 1);
    d["spec"]["paused"] = json!(true);
    sim.create_object(d).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // no pod is created while paused
    assert!(!sim.pods().iter().any(|p| p.deployment == "sirius-engine"));
    assert!(sim.list_objects("", "pods", Some(NS)).iter().all(|p| {
        !p["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("sirius-engine-")
    }));
    let d = sim
        .get_object("apps", "deployments", NS, "sirius-engine")
        .unwrap();
    assert_eq!(d["status"]["observedGeneration"], 1, "{d}");
    assert!(d["status"].get("replicas").is_none(), "{d}");
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-engine",
        json!({"spec": {"paused": false}}),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the resumed Deployment's pod",
        || {
            sim.pods()
                .iter()
                .any(|p| p.deployment == "sirius-engine" && p.ready)
        },
    )
    .await;
}

/// Each manager's `time` in managedFields, by manager name.
fn manager_times(object: &Value) -> std::collections::BTreeMap<String, String> {
    object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_string(),
                e["time"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_fields_stamp_only_the_manager_whose_write_changed_the_object() {
    let sim = start_sim().await;
    let path = format!("/api/v1/namespaces/{NS}/secrets");
    let created = call(
        &sim,
        "POST",
        &format!("{path}?fieldManager=creator"),
        Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "eA=="}})),
        "application/json",
    )
    .await;
    assert_eq!(created.code, 201, "{}", created.body);
    let at_creation = manager_times(&created.body);
    // Timestamps are whole seconds: let one pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let apply = |value: &'static str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"b": value}});
    let applied = call(
        &sim,
        "PATCH",
        &format!("{path}/s?fieldManager=other"),
        Some(apply("eQ==")),
        "application/apply-patch+yaml",
    )
    .await;
    assert_eq!(applied.code, 200, "{}", applied.body);
    let times = manager_times(&applied.body);
    assert_eq!(
        times["creator"], at_creation["creator"],
        "the creator's time is kept"
    );
    assert!(times["other"] > times["creator"], "{times:?}");
    // A write that changes nothing stamps nobody (a second passes, so a stamp would show).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = call(
        &sim,
        "PATCH",
        &format!("{path}/s?fieldManager=other"),
        Some(apply("eQ==")),
        "application/apply-patch+yaml",
    )
    .await;
    assert_eq!(manager_times(&again.body), times);
}
