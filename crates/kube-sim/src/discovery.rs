//! Legacy (unaggregated) API discovery, as kube-apiserver serves it: `/api`, `/apis`, `/apis/<g>`
//! and each group version's resource list, so kubectl resolves `akr`, `deploy` or `sts` and its
//! `all` category. A client that asks for aggregated discovery (`as=APIGroupDiscoveryList`) gets
//! these documents as `application/json`, and falls back to them as kubectl does.

use crate::store::Store;
use crate::types::ResourceType;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Whether `path` is a discovery path (`/api`, `/apis`, a group, a group version, or an
/// OpenAPI document): only those need the store, so other requests skip its lock here.
pub fn is_discovery_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["api"] | ["apis"] | ["apis", _] | ["api", "v1"] | ["apis", _, _] | ["openapi", "v3", ..]
    )
}

/// The discovery document at `path`, or None when `path` is no discovery path.
pub fn document(store: &Store, path: &str, server_address: &str) -> Option<Value> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        })),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups(store).iter().map(|(name, versions)| group(name, versions)).collect::<Vec<_>>(),
        })),
        ["apis", name] => {
            let groups = groups(store);
            groups.get(*name).map(|versions| {
                let mut g = group(name, versions);
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                g
            })
        }
        ["api", "v1"] => Some(resource_list(store, "", "v1")),
        ["apis", group, version] => {
            let served = store
                .types
                .values()
                .any(|rt| rt.group == *group && rt.version == *version);
            served.then(|| resource_list(store, group, version))
        }
        _ => None,
    }
}

/// Every named group with its versions (the core group has none: it is `/api`).
fn groups(store: &Store) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rt in store.types.values().filter(|rt| !rt.group.is_empty()) {
        let versions = groups.entry(rt.group.clone()).or_default();
        if !versions.contains(&rt.version) {
            versions.push(rt.version.clone());
        }
    }
    groups
}

fn group(name: &str, versions: &[String]) -> Value {
    let version = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "name": name,
        "versions": versions.iter().map(version).collect::<Vec<_>>(),
        "preferredVersion": version(&versions[0]),
    })
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for rt in store
        .types
        .values()
        .filter(|rt| rt.group == group && rt.version == version)
    {
        resources.push(resource(rt));
        if rt.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

fn resource(rt: &ResourceType) -> Value {
    let mut r = json!({
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": VERBS,
    });
    if !rt.short_names.is_empty() {
        r["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        r["categories"] = json!(rt.categories);
    }
    r
}
