//! The few fields of a Pod the pod gate reads, decoded straight from a `PodList` page. Decoding
//! whole `k8s_openapi` Pods (status, managedFields, every container field) was a fifth of the
//! operator's CPU at 300 rotations (perf) and about 11 of its 44 MB heap peak (heaptrack), the
//! namespace holding 3,000 pods; serde skips every field not named here
//! without allocating it. Every field is optional (serde reads a missing `Option` as `None`) and
//! `null` reads as absent, as in the API.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Time};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;

/// One page of `GET /api/v1/namespaces/{ns}/pods`.
#[derive(Deserialize, Debug, Default)]
pub struct PodPage {
    pub metadata: Option<ListMeta>,
    pub items: Option<Vec<PodView>>,
}

#[derive(Deserialize, Debug, Default)]
pub struct PodView {
    pub metadata: Option<PodMeta>,
    pub spec: Option<PodSpecView>,
    pub status: Option<PodStatusView>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta {
    pub name: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub owner_references: Option<Vec<OwnerView>>,
    pub creation_timestamp: Option<Time>,
    /// Only whether it is set matters.
    pub deletion_timestamp: Option<IgnoredAny>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct OwnerView {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub controller: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    pub containers: Option<Vec<ContainerView>>,
    pub init_containers: Option<Vec<ContainerView>>,
    pub ephemeral_containers: Option<Vec<ContainerView>>,
    pub volumes: Option<Vec<VolumeView>>,
}

/// A container, init container or ephemeral container: only how it takes environment.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub env: Option<Vec<EnvView>>,
    pub env_from: Option<Vec<EnvFromView>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvView {
    pub value_from: Option<EnvSourceView>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvSourceView {
    pub secret_key_ref: Option<SecretKeyView>,
}

#[derive(Deserialize, Debug, Default)]
pub struct SecretKeyView {
    pub name: Option<String>,
    pub key: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromView {
    pub secret_ref: Option<NameView>,
}

#[derive(Deserialize, Debug, Default)]
pub struct NameView {
    pub name: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    pub secret: Option<SecretVolumeView>,
    pub projected: Option<ProjectedView>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeView {
    pub secret_name: Option<String>,
    pub items: Option<Vec<KeyView>>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ProjectedView {
    pub sources: Option<Vec<ProjectionView>>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ProjectionView {
    pub secret: Option<ProjectedSecretView>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ProjectedSecretView {
    pub name: Option<String>,
    pub items: Option<Vec<KeyView>>,
}

#[derive(Deserialize, Debug, Default)]
pub struct KeyView {
    pub key: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
pub struct PodStatusView {
    pub phase: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_page_decodes_what_the_gate_reads_and_skips_the_rest() {
        let page: PodPage = serde_json::from_value(json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "7", "continue": "next"},
            "items": [{
                "metadata": {"name": "p", "deletionTimestamp": "2026-12-01T10:00:00Z",
                             "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": "rs", "uid": "u", "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}],
                                         "env": [{"name": "A", "value": "x"},
                                                 {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
                         "volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "s"}}]}}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }, {"metadata": null, "spec": {"containers": null, "volumes": null}, "status": null}],
        }))
        .unwrap();
        assert_eq!(page.metadata.unwrap().continue_.as_deref(), Some("next"));
        let items = page.items.unwrap();
        let meta = items[0].metadata.as_ref().unwrap();
        assert!(meta.deletion_timestamp.is_some());
        assert_eq!(
            meta.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
        let spec = items[0].spec.as_ref().unwrap();
        let env = spec.containers.as_ref().unwrap()[0].env.as_ref().unwrap();
        assert!(env[0].value_from.is_none());
        assert_eq!(
            (env[1].value_from.as_ref().unwrap().secret_key_ref.as_ref())
                .and_then(|r| r.key.as_deref()),
            Some("k")
        );
        assert!(items[1].metadata.is_none() && items[1].status.is_none());
    }
}
