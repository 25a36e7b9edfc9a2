//! Which lists server-side apply merges item by item: a custom resource's schema says so with
//! `x-kubernetes-list-type` (`map` with `x-kubernetes-list-map-keys`, or `set`); the built-in kinds
//! carry the same markers in kube-apiserver's OpenAPI (`+listType=map`, `+listMapKey=name` in
//! k8s.io/api). Every other list is atomic: applied whole, owned whole.

use crate::types::ResourceType;
use serde_json::{Value, json};
use std::sync::LazyLock;

/// How server-side apply treats one list.
#[derive(Debug, PartialEq)]
pub enum ListType<'a> {
    Atomic,
    /// Scalars, each owned apart (`metadata.finalizers`).
    Set,
    /// Objects told apart by these fields (`containers` by `name`, `conditions` by `type`).
    Map(Vec<&'a str>),
}

/// A position in an object's schema, as far as list types go.
#[derive(Clone, Copy)]
pub struct Schema<'a> {
    node: Option<&'a Value>,
    /// At the object's root, where `metadata` is ObjectMeta whatever the kind.
    root: bool,
}

impl<'a> Schema<'a> {
    /// The root of `rt`'s objects: its CRD's `openAPIV3Schema`, or the built-in kind's lists.
    pub fn of(rt: &'a ResourceType) -> Self {
        let node = match &rt.validator {
            Some(v) => Some(v.schema()),
            None => BUILTIN.get(&rt.kind).filter(|_| builtin_group(rt)),
        };
        Schema { node, root: true }
    }

    pub fn field(self, name: &str) -> Self {
        if self.root && name == "metadata" {
            return Schema {
                node: Some(&OBJECT_META),
                root: false,
            };
        }
        let node = self.node.and_then(|n| {
            (n.get("properties").and_then(|p| p.get(name)))
                .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
        });
        Schema { node, root: false }
    }

    pub fn items(self) -> Self {
        Schema {
            node: self.node.and_then(|n| n.get("items")),
            root: false,
        }
    }

    /// The schema's `default`, if it has one.
    pub fn default_value(self) -> Option<&'a Value> {
        self.node?.get("default")
    }

    pub fn list_type(self) -> ListType<'a> {
        let Some(node) = self.node else {
            return ListType::Atomic;
        };
        match node["x-kubernetes-list-type"].as_str() {
            Some("set") => ListType::Set,
            Some("map") => {
                let keys: Vec<&str> = (node["x-kubernetes-list-map-keys"].as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if keys.is_empty() {
                    ListType::Atomic
                } else {
                    ListType::Map(keys)
                }
            }
            _ => ListType::Atomic,
        }
    }
}

fn builtin_group(rt: &ResourceType) -> bool {
    rt.group.is_empty() || rt.group == "apps"
}

fn map_list(keys: &[&str], items: Value) -> Value {
    json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": keys, "items": items})
}

fn set_list() -> Value {
    json!({"type": "array", "x-kubernetes-list-type": "set"})
}

/// k8s.io/apimachinery's ObjectMeta: `finalizers` is a set, `ownerReferences` a map by `uid`.
static OBJECT_META: LazyLock<Value> = LazyLock::new(|| {
    json!({"properties": {
        "finalizers": set_list(),
        "ownerReferences": map_list(&["uid"], json!({})),
    }})
});

/// k8s.io/api/core/v1's PodSpec lists the stand-in's workloads carry.
fn pod_spec() -> Value {
    let container = json!({"properties": {
        "env": map_list(&["name"], json!({})),
        "volumeMounts": map_list(&["mountPath"], json!({})),
        // `protocol` defaults to TCP (kube-apiserver's defaulting runs before the merge).
        "ports": map_list(&["containerPort", "protocol"],
            json!({"properties": {"protocol": {"default": "TCP"}}})),
    }});
    json!({"properties": {
        "containers": map_list(&["name"], container.clone()),
        "initContainers": map_list(&["name"], container),
        "volumes": map_list(&["name"], json!({})),
        "imagePullSecrets": map_list(&["name"], json!({})),
    }})
}

fn conditions() -> Value {
    map_list(&["type"], json!({}))
}

static BUILTIN: LazyLock<std::collections::HashMap<String, Value>> = LazyLock::new(|| {
    let workload = json!({"properties": {
        "spec": {"properties": {"template": {"properties": {"spec": pod_spec()}}}},
        "status": {"properties": {"conditions": conditions()}},
    }});
    let pod = json!({"properties": {
        "spec": pod_spec(),
        "status": {"properties": {"conditions": conditions()}},
    }});
    [
        ("Deployment", workload.clone()),
        ("StatefulSet", workload.clone()),
        ("DaemonSet", workload),
        ("Pod", pod),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_lists_are_typed_as_in_kube_apiserver() {
        let deploy = ResourceType::builtin("apps", "v1", "deployments", "Deployment", true);
        let root = Schema::of(&deploy);
        let pod_spec = root.field("spec").field("template").field("spec");
        assert_eq!(
            pod_spec.field("containers").list_type(),
            ListType::Map(vec!["name"])
        );
        let env = pod_spec.field("containers").items().field("env");
        assert_eq!(env.list_type(), ListType::Map(vec!["name"]));
        assert_eq!(
            root.field("metadata").field("finalizers").list_type(),
            ListType::Set
        );
        assert_eq!(
            pod_spec.field("tolerations").list_type(),
            ListType::Atomic,
            "lists not marked are atomic"
        );
        let secret = ResourceType::builtin("", "v1", "secrets", "Secret", true);
        assert_eq!(
            Schema::of(&secret)
                .field("metadata")
                .field("ownerReferences")
                .list_type(),
            ListType::Map(vec!["uid"])
        );
    }
}
