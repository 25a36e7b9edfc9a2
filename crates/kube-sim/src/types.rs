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
    /// Discovery's names: `singularName`, `shortNames` (`akr`, `deploy`) and `categories`.
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// A custom resource's `additionalPrinterColumns` (Table output); empty for built-ins.
    pub printer_columns: Vec<Value>,
    /// Served from a CustomResourceDefinition.
    pub custom: bool,
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
            singular: kind.to_lowercase(),
            short_names: builtin_short_names(plural)
                .iter()
                .map(|s| s.to_string())
                .collect(),
            categories: if matches!(
                plural,
                "pods" | "services" | "deployments" | "statefulsets" | "daemonsets"
            ) {
                vec!["all".into()]
            } else {
                Vec::new()
            },
            printer_columns: Vec::new(),
            custom: false,
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
            singular: (spec["names"]["singular"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| spec["names"]["kind"].as_str().unwrap_or("").to_lowercase()),
            short_names: strings(&spec["names"]["shortNames"]),
            categories: strings(&spec["names"]["categories"]),
            printer_columns: (version["additionalPrinterColumns"].as_array())
                .cloned()
                .unwrap_or_default(),
            custom: true,
        })
    }
}

fn strings(v: &Value) -> Vec<String> {
    (v.as_array().into_iter().flatten())
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// kube-apiserver's short names of the built-in kinds the stand-in serves.
fn builtin_short_names(plural: &str) -> &'static [&'static str] {
    match plural {
        "pods" => &["po"],
        "configmaps" => &["cm"],
        "events" => &["ev"],
        "namespaces" => &["ns"],
        "services" => &["svc"],
        "serviceaccounts" => &["sa"],
        "customresourcedefinitions" => &["crd", "crds"],
        "deployments" => &["deploy"],
        "statefulsets" => &["sts"],
        "daemonsets" => &["ds"],
        _ => &[],
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
