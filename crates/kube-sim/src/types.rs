//! The kinds of object the stand-in serves, shared by the store, RBAC and schema validation.

use crate::schema::Validator;
use serde_json::Value;
use std::sync::Arc;

#[derive(Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained (built-in workloads and all custom resources).
    pub tracks_generation: bool,
    pub validator: Option<Arc<Validator>>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub(crate) fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            tracks_generation: false,
            validator: None,
        }
    }

    /// A served resource type from a CustomResourceDefinition object (its storage version).
    pub fn from_crd(crd: &Value) -> Option<ResourceType> {
        let spec = &crd["spec"];
        let version = spec["versions"]
            .as_array()?
            .iter()
            .find(|v| v["storage"].as_bool() == Some(true))
            .or_else(|| spec["versions"].as_array()?.first())?;
        let validator = version["schema"]["openAPIV3Schema"]
            .as_object()
            .map(|s| Validator::new(&Value::Object(s.clone())))
            .transpose()
            .ok()?
            .map(Arc::new);
        Some(ResourceType {
            group: spec["group"].as_str()?.to_string(),
            version: version["name"].as_str()?.to_string(),
            plural: spec["names"]["plural"].as_str()?.to_string(),
            kind: spec["names"]["kind"].as_str()?.to_string(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            status_subresource: version["subresources"].get("status").is_some(),
            tracks_generation: true,
            validator,
        })
    }
}

/// A workload the simulated controllers roll: a Deployment, StatefulSet or DaemonSet.
pub(crate) fn is_workload(rt: &ResourceType) -> bool {
    rt.group == "apps" && matches!(rt.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
}

pub fn is_pod(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "pods"
}

pub(crate) fn is_secret(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "secrets"
}

pub fn is_namespace(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "namespaces"
}

/// The RBAC kinds, served as kube-apiserver serves them.
pub fn rbac_types() -> Vec<ResourceType> {
    const G: &str = "rbac.authorization.k8s.io";
    vec![
        ResourceType::builtin(G, "v1", "roles", "Role", true),
        ResourceType::builtin(G, "v1", "rolebindings", "RoleBinding", true),
        ResourceType::builtin(G, "v1", "clusterroles", "ClusterRole", false),
        ResourceType::builtin(G, "v1", "clusterrolebindings", "ClusterRoleBinding", false),
    ]
}
