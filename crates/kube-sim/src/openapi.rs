//! The OpenAPI v3 documents kubectl reads before it writes: `/openapi/v3` lists a document per
//! group version, and each document's PATCH operations carry the `fieldValidation` parameter and
//! their `x-kubernetes-group-version-kind`, which is how kubectl (`QueryParamVerifierV3`) learns
//! that the server validates fields itself, so `kubectl apply` and `create` need no schema of
//! their own. A custom resource's document also holds its schema, for `kubectl explain`.

use crate::store::Store;
use crate::types::ResourceType;
use serde_json::{Map, Value, json};

/// The document at `path` (under `/openapi/v3`), or None when there is none.
pub fn document(store: &Store, path: &str) -> Option<Value> {
    let rest = path.strip_prefix("/openapi/v3")?;
    if rest.is_empty() || rest == "/" {
        let mut paths = Map::new();
        for gv in group_versions(store) {
            paths.insert(
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}")}),
            );
        }
        return Some(json!({"paths": paths}));
    }
    let gv = rest.trim_start_matches('/');
    group_versions(store)
        .contains(&gv.to_string())
        .then(|| group_version_document(store, gv))
}

/// `api/v1`, `apis/apps/v1`, ... for every served type.
fn group_versions(store: &Store) -> Vec<String> {
    let mut gvs: Vec<String> = store.types.values().map(group_version_path).collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

fn group_version_path(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        format!("api/{}", rt.version)
    } else {
        format!("apis/{}/{}", rt.group, rt.version)
    }
}

fn group_version_document(store: &Store, gv: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for rt in store
        .types
        .values()
        .filter(|rt| group_version_path(rt) == gv)
    {
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let collection = if rt.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("/{gv}/{}", rt.plural)
        };
        let field_validation = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", rt.kind),
                "parameters": [field_validation],
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        paths.insert(collection.clone(), json!({"post": operation("post")}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"patch": operation("patch"), "put": operation("put")}),
        );
        if let Some(schema) = rt.validator.as_ref().map(|v| v.schema().clone()) {
            let mut schema = schema;
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(definition_name(rt), schema);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-kube-sim"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// kube-apiserver's definition name of a custom resource: its group reversed, version, kind
/// (`io.siriusscan.keys.v1alpha1.ApiKeyRotation`).
fn definition_name(rt: &ResourceType) -> String {
    let mut parts: Vec<&str> = rt.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), rt.version, rt.kind)
}
