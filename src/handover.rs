//! A consumers' Secret that another tool also writes (Helm, Argo CD, Flux, External Secrets, or
//! another controller that owns it) gets its old value written back by that tool: `helm upgrade`'s
//! three-way merge, a GitOps self-heal, ESO's refresh. The old key would return after it was
//! revoked, and every pod that starts then is refused. Such a Secret is found before the operator
//! writes anything, and stays refused until its owner hands it over.

use crate::crd::FIELD_MANAGER;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

/// Set to `"true"` on the Secret once the other tool no longer writes its key.
pub const HANDED_OVER_ANNOTATION: &str = "keys.siriusscan.io/handed-over";

/// Field managers of the tools that write Secrets back, and the tool's name.
const MANAGERS: [(&str, &str); 7] = [
    ("helm", "Helm"),
    ("argocd-controller", "Argo CD"),
    ("argocd-application-controller", "Argo CD"),
    ("kustomize-controller", "Flux"),
    ("helm-controller", "Flux"),
    ("external-secrets", "External Secrets"),
    ("externalsecrets", "External Secrets"),
];

/// Which tool writes `secret` besides this operator, and how to hand it over, if one does.
pub fn managed_elsewhere(secret: &Secret, data_key: &str) -> Option<String> {
    if secret
        .annotations()
        .get(HANDED_OVER_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return None;
    }
    let (tool, evidence) = writer(secret, data_key)?;
    let name = secret.name_any();
    let ns = secret.namespace().unwrap_or_else(|| "default".into());
    let how = match tool {
        "Helm" => {
            "take it out of the chart's templates (with the annotation helm.sh/resource-policy: keep, so the upgrade that drops it does not delete it), or template it with lookup so that upgrades keep the value in the cluster"
        }
        "Argo CD" => {
            "take it out of the Application's sources, or add ignoreDifferences for /data (with the sync option RespectIgnoreDifferences=true) so self-heal does not write it back"
        }
        "Flux" => {
            "take it out of the Kustomization or HelmRelease, or set the annotation kustomize.toolkit.fluxcd.io/reconcile: disabled on it"
        }
        "External Secrets" => {
            "its ExternalSecret refreshes it from the provider: point spec.secret.name at a Secret of the operator's own, or delete the ExternalSecret"
        }
        _ => {
            "make that controller stop writing the Secret, or point spec.secret.name at a Secret of the operator's own"
        }
    };
    Some(format!(
        "Secret {name} is also written by {tool} ({evidence}); that tool would write an old, revoked key back. Nothing was minted or written. To hand it over, {how}; then: kubectl -n {ns} annotate secret {name} {HANDED_OVER_ANNOTATION}=true"
    ))
}

/// The tool that writes the Secret, and what shows it.
fn writer(secret: &Secret, data_key: &str) -> Option<(&'static str, String)> {
    let labels = secret.labels();
    let annotations = secret.annotations();
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some("Helm")
        || annotations.contains_key("meta.helm.sh/release-name")
    {
        return Some(("Helm", "label app.kubernetes.io/managed-by: Helm".into()));
    }
    if labels.contains_key("argocd.argoproj.io/instance")
        || annotations.contains_key("argocd.argoproj.io/tracking-id")
    {
        return Some(("Argo CD", "Argo CD's tracking label or annotation".into()));
    }
    if labels.contains_key("kustomize.toolkit.fluxcd.io/name")
        || labels.contains_key("helm.toolkit.fluxcd.io/name")
    {
        return Some(("Flux", "Flux's labels".into()));
    }
    if let Some(owner) = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind != "ApiKeyRotation")
    {
        let tool = if owner.kind == "ExternalSecret" {
            "External Secrets"
        } else {
            "another controller"
        };
        return Some((tool, format!("controlled by {} {}", owner.kind, owner.name)));
    }
    let field = format!("f:{data_key}");
    for entry in secret.managed_fields() {
        let manager = entry.manager.as_deref().unwrap_or_default();
        if manager == FIELD_MANAGER {
            continue;
        }
        let Some((_, tool)) = MANAGERS
            .iter()
            .find(|(m, _)| manager == *m || manager.starts_with(&format!("{m}-")))
        else {
            continue;
        };
        let fields = entry.fields_v1.as_ref().map(|f| &f.0);
        let owns_key = fields.is_some_and(|f| {
            f.get("f:data").is_some_and(|d| d.get(&field).is_some())
                || f.get("f:stringData").is_some()
        });
        if owns_key {
            return Some((
                tool,
                format!("field manager {manager} owns data.{data_key}"),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(meta: serde_json::Value) -> Secret {
        let mut meta = meta;
        meta["name"] = json!("sirius-api-key");
        meta["namespace"] = json!("sirius");
        serde_json::from_value(json!({"metadata": meta})).unwrap()
    }

    #[test]
    fn each_tool_is_recognised_and_named_with_how_to_hand_over() {
        for (meta, tool) in [
            (
                json!({"labels": {"app.kubernetes.io/managed-by": "Helm"}}),
                "Helm",
            ),
            (
                json!({"annotations": {"argocd.argoproj.io/tracking-id": "app:/Secret:sirius/x"}}),
                "Argo CD",
            ),
            (
                json!({"labels": {"kustomize.toolkit.fluxcd.io/name": "apps"}}),
                "Flux",
            ),
            (
                json!({"ownerReferences": [{"apiVersion": "external-secrets.io/v1beta1", "kind": "ExternalSecret",
                                          "name": "sirius", "uid": "u", "controller": true}]}),
                "External Secrets",
            ),
            (
                json!({"managedFields": [{"manager": "helm", "operation": "Update", "apiVersion": "v1",
                                        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:SIRIUS_API_KEY": {}}}}]}),
                "Helm",
            ),
        ] {
            let message = managed_elsewhere(&secret(meta), "SIRIUS_API_KEY").unwrap();
            assert!(message.contains(&format!("written by {tool}")), "{message}");
            assert!(
                message.contains("keys.siriusscan.io/handed-over=true"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_handed_over_secret_and_ordinary_writers_pass() {
        let mut meta = json!({"labels": {"app.kubernetes.io/managed-by": "Helm"},
                              "annotations": {HANDED_OVER_ANNOTATION: "true"}});
        assert_eq!(
            managed_elsewhere(&secret(meta.clone()), "SIRIUS_API_KEY"),
            None
        );
        meta["annotations"][HANDED_OVER_ANNOTATION] = json!("no");
        assert!(managed_elsewhere(&secret(meta), "SIRIUS_API_KEY").is_some());
        // kubectl create, this operator's own apply, and Helm owning another key are no writers.
        let fields = |manager: &str, key: &str| {
            json!({"manager": manager, "operation": "Apply", "apiVersion": "v1",
                   "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {format!("f:{key}"): {}}}})
        };
        let meta = json!({"managedFields": [fields("kubectl-create", "SIRIUS_API_KEY"),
                                            fields(FIELD_MANAGER, "SIRIUS_API_KEY"),
                                            fields("helm", "OTHER")]});
        assert_eq!(managed_elsewhere(&secret(meta), "SIRIUS_API_KEY"), None);
    }
}
