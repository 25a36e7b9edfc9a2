//! Server-side apply of lists, as kube-apiserver's structured-merge-diff does it: a list marked
//! `x-kubernetes-list-type: map` (a CRD's schema, or kube-apiserver's own `+listType=map` on
//! `containers`, `env`, `volumes`, `conditions`...) merges item by item, each item and each of its
//! fields owned apart; a `set` (`metadata.finalizers`) owns each value apart; any other list is
//! one atomic field.

use crate::common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A Deployment `d` applied with one container, `api`, holding `container` (name added).
fn deployment_with(container: Value) -> Value {
    let mut container = container;
    container["name"] = json!("api");
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
            "metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [container]}}}
    })
}

/// Only the `api` container's part of a Deployment, as a second manager applies it.
fn container_part(container: Value) -> Value {
    let mut container = container;
    container["name"] = json!("api");
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"template": {"spec": {"containers": [container]}}}})
}

fn env_names(d: &Deployment) -> Vec<String> {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    (pod.containers[0].env.iter().flatten())
        .map(|e| e.name.clone())
        .collect()
}

/// The `managedFields` entry of `manager`, as JSON.
fn managed_fields_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    manager: &str,
) -> Value {
    let entries = serde_json::to_value(meta.managed_fields.as_ref().unwrap()).unwrap();
    (entries.as_array().unwrap().iter())
        .find(|m| m["manager"] == manager)
        .unwrap_or_else(|| panic!("no managedFields entry of {manager}: {entries}"))
        .clone()
}

fn apply(manager: &str) -> PatchParams {
    PatchParams::apply(manager)
}

#[tokio::test]
async fn two_appliers_own_different_items_of_a_map_list_and_each_prunes_only_its_own() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    let helm =
        deployment_with(json!({"image": "sirius:1", "env": [{"name": "FROM_HELM", "value": "1"}]}));
    deployments
        .patch("d", &apply("helm"), &Patch::Apply(&helm))
        .await
        .unwrap();
    // Another manager adds its own variable to the same container: no conflict (containers and
    // env are map lists, keyed by name), and helm's variable and image stay.
    let mine = container_part(json!({"env": [{"name": "FROM_OPERATOR", "value": "2"}]}));
    let d = deployments
        .patch("d", &apply("operator"), &Patch::Apply(&mine))
        .await
        .unwrap();
    assert_eq!(env_names(&d), ["FROM_HELM", "FROM_OPERATOR"]);
    let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("sirius:1"));
    // Helm re-applies what it always did: the operator's variable is not helm's to prune.
    let d = deployments
        .patch("d", &apply("helm"), &Patch::Apply(&helm))
        .await
        .unwrap();
    assert_eq!(env_names(&d), ["FROM_HELM", "FROM_OPERATOR"]);
    // The operator drops its variable: only that one goes.
    let d = deployments
        .patch(
            "d",
            &apply("operator"),
            &Patch::Apply(&container_part(json!({}))),
        )
        .await
        .unwrap();
    assert_eq!(env_names(&d), ["FROM_HELM"]);
    // The operator stops applying the container at all: helm still owns it, so it stays.
    let nothing = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"x": "y"}}});
    let d = deployments
        .patch("d", &apply("operator"), &Patch::Apply(&nothing))
        .await
        .unwrap();
    assert_eq!(env_names(&d), ["FROM_HELM"]);
}

#[tokio::test]
async fn an_item_nobody_applies_any_more_is_removed_with_its_fields() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    let helm = deployment_with(json!({"image": "sirius:1"}));
    deployments
        .patch("d", &apply("helm"), &Patch::Apply(&helm))
        .await
        .unwrap();
    // A sidecar injector applies a second container.
    let sidecar = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy:1"}]}}}});
    let d = deployments
        .patch("d", &apply("injector"), &Patch::Apply(&sidecar))
        .await
        .unwrap();
    let names = |d: &Deployment| -> Vec<String> {
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.containers.iter().map(|c| c.name.clone()).collect()
    };
    assert_eq!(names(&d), ["api", "proxy"]);
    // The injector withdraws it: the item and everything in it go; helm's container stays whole.
    let withdrawn = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": []}}}});
    let d = deployments
        .patch("d", &apply("injector"), &Patch::Apply(&withdrawn))
        .await
        .unwrap();
    assert_eq!(names(&d), ["api"]);
    let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("sirius:1"));
}

#[tokio::test]
async fn a_field_of_an_item_another_manager_owns_conflicts_and_names_the_item() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    deployments
        .patch(
            "d",
            &apply("helm"),
            &Patch::Apply(&deployment_with(json!({"image": "sirius:1"}))),
        )
        .await
        .unwrap();
    let grab = container_part(json!({"image": "sirius:2"}));
    let e = api_error(
        deployments
            .patch("d", &apply("operator"), &Patch::Apply(&grab))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert!(
        e.message
            .contains(r#".spec.template.spec.containers[name="api"].image"#)
            && e.message.contains("helm"),
        "{}",
        e.message
    );
    // The same value is no conflict: the image is then shared.
    let same = container_part(json!({"image": "sirius:1"}));
    deployments
        .patch("d", &apply("operator"), &Patch::Apply(&same))
        .await
        .unwrap();
}

#[tokio::test]
async fn finalizers_are_a_set_each_value_owned_by_its_applier() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let with = |finalizers: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "c", "finalizers": finalizers}})
    };
    cms.patch(
        "c",
        &apply("a"),
        &Patch::Apply(&with(json!(["a.example.com/hold"]))),
    )
    .await
    .unwrap();
    let c = cms
        .patch(
            "c",
            &apply("b"),
            &Patch::Apply(&with(json!(["b.example.com/hold"]))),
        )
        .await
        .unwrap();
    assert_eq!(
        c.metadata.finalizers.clone().unwrap(),
        ["a.example.com/hold", "b.example.com/hold"]
    );
    // fieldsV1 names each value: `f:finalizers` holds `v:"a.example.com/hold"`.
    let a = managed_fields_of(&c.metadata, "a");
    assert!(
        a["fieldsV1"]["f:metadata"]["f:finalizers"]
            .get(r#"v:"a.example.com/hold""#)
            .is_some(),
        "{a}"
    );
    let c = cms
        .patch("c", &apply("a"), &Patch::Apply(&with(json!([]))))
        .await
        .unwrap();
    assert_eq!(c.metadata.finalizers.unwrap(), ["b.example.com/hold"]);
}

/// The CRD's own schema decides: `status.conditions` is `x-kubernetes-list-type: map` keyed by
/// `type`, so a condition another manager applies survives the operator's status applies.
#[tokio::test]
async fn a_custom_resources_map_list_follows_its_schema() {
    let sim = start_sim().await;
    let akrs: Api<apikey_rotator::crd::ApiKeyRotation> = Api::namespaced(client_for(&sim), NS);
    akrs.create(
        &PostParams::default(),
        &serde_json::from_value(rotation("redis://127.0.0.1:6379", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let condition = |type_: &str| {
        json!({"type": type_, "status": "True", "reason": "R", "message": "m",
               "lastTransitionTime": "2026-12-04T00:00:00Z"})
    };
    let status = |conditions: Value| {
        json!({"apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation",
               "status": {"conditions": conditions}})
    };
    akrs.patch_status(
        "sirius",
        &apply("operator"),
        &Patch::Apply(&status(json!([condition("Ready"), condition("Degraded")]))),
    )
    .await
    .unwrap();
    akrs.patch_status(
        "sirius",
        &apply("auditor"),
        &Patch::Apply(&status(json!([condition("Audited")]))),
    )
    .await
    .unwrap();
    let after = akrs
        .patch_status(
            "sirius",
            &apply("operator"),
            &Patch::Apply(&status(json!([condition("Ready")]))),
        )
        .await
        .unwrap();
    let types: Vec<String> = (after.status.unwrap().conditions.iter())
        .map(|c| c.type_.clone())
        .collect();
    assert_eq!(types, ["Ready", "Audited"]);
    // fieldsV1 names the item by its key, with `.` for the item and its key field.
    let operator = managed_fields_of(&after.metadata, "operator");
    let item = &operator["fieldsV1"]["f:status"]["f:conditions"][r#"k:{"type":"Ready"}"#];
    assert!(
        item.get(".").is_some() && item.get("f:type").is_some() && item.get("f:reason").is_some(),
        "{operator}"
    );
}

/// A list no schema marks stays atomic: applied whole, so a second applier's different list
/// conflicts rather than merging.
#[tokio::test]
async fn an_unmarked_list_is_atomic() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    let with_args = |args: Value| deployment_with(json!({"image": "sirius:1", "args": args}));
    deployments
        .patch(
            "d",
            &apply("helm"),
            &Patch::Apply(&with_args(json!(["--a"]))),
        )
        .await
        .unwrap();
    let e = api_error(
        deployments
            .patch(
                "d",
                &apply("operator"),
                &Patch::Apply(&container_part(json!({"args": ["--b"]}))),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409, "{}", e.message);
    // The list is one field, inside the container item.
    assert!(
        e.message
            .contains(r#".spec.template.spec.containers[name="api"].args"#),
        "{}",
        e.message
    );
}

/// An applier that applies an empty set owns none of it: it neither conflicts with the values
/// others own nor takes them over.
#[tokio::test]
async fn an_empty_set_owns_nothing() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let with = |finalizers: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "c", "finalizers": finalizers}})
    };
    for (manager, finalizers) in [
        ("a", json!(["a.example.com/hold"])),
        ("b", json!(["b.example.com/hold"])),
        ("a", json!([])),
        ("b", json!([])),
    ] {
        cms.patch("c", &apply(manager), &Patch::Apply(&with(finalizers)))
            .await
            .unwrap_or_else(|e| panic!("{manager}: {e}"));
    }
    let c = cms.get("c").await.unwrap();
    assert_eq!(
        c.metadata.finalizers.unwrap_or_default(),
        Vec::<String>::new()
    );
}

/// An item goes once no manager owns the item itself, even when an update (`kubectl set image`)
/// changed a field in it since: the field goes with it, and is nobody's any more.
#[tokio::test]
async fn a_dropped_item_goes_with_fields_others_updated_in_it() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    let with_proxy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
            "metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "api", "image": "sirius:1"},
                                    {"name": "proxy", "image": "envoy:1"}]}}}
    });
    deployments
        .patch("d", &apply("helm"), &Patch::Apply(&with_proxy))
        .await
        .unwrap();
    // Someone else updates the proxy's image (an Update, not an apply).
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": "envoy:2"}
    ]))
    .unwrap();
    let d = deployments
        .patch(
            "d",
            &PatchParams {
                field_manager: Some("kubectl-set".into()),
                ..Default::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await
        .unwrap();
    let updater = managed_fields_of(&d.metadata, "kubectl-set");
    let proxy = &updater["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"proxy"}"#];
    assert!(
        proxy.get("f:image").is_some() && proxy.get(".").is_none(),
        "the update owns the image it changed, not the item: {updater}"
    );
    let d = deployments
        .patch(
            "d",
            &apply("helm"),
            &Patch::Apply(&deployment_with(json!({"image": "sirius:1"}))),
        )
        .await
        .unwrap();
    let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["api"]);
}

/// A key field left out takes its schema default before the merge (a container port's
/// `protocol`, TCP), as kube-apiserver defaults it; one with no default is refused, in
/// structured-merge-diff's words, rather than owning the list whole.
#[tokio::test]
async fn a_missing_key_field_takes_its_default_or_the_apply_is_refused() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    let port = |n: i64| json!({"ports": [{"containerPort": n}]});
    deployments
        .patch(
            "d",
            &apply("helm"),
            &Patch::Apply(&deployment_with(
                json!({"image": "sirius:1", "ports": [{"containerPort": 80}]}),
            )),
        )
        .await
        .unwrap();
    let d = deployments
        .patch(
            "d",
            &apply("mesh"),
            &Patch::Apply(&container_part(port(15090))),
        )
        .await
        .unwrap();
    let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let ports: Vec<i32> = (pod.containers[0].ports.iter().flatten())
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [80, 15090]);
    let unnamed = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"image": "x:1"}]}}}});
    let e = api_error(
        deployments
            .patch("d", &apply("mesh"), &Patch::Apply(&unnamed))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains(
            r#".spec.template.spec.containers: element 0: associative list with keys has an element that omits key field "name" (and doesn't have default value)"#
        ),
        "{}",
        e.message
    );
}
