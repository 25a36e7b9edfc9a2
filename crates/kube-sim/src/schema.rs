//! Validation of custom resources against their CRD's `openAPIV3Schema`, as the apiserver does
//! (types, bounds, patterns, enums, required). CEL rules (`x-kubernetes-validations`) are not
//! evaluated here: only a real apiserver proves those.

use crate::store::ResourceType;
use serde_json::Value;
use std::sync::Arc;

pub struct Validator {
    inner: jsonschema::Validator,
}

impl Validator {
    pub fn new(openapi_schema: &Value) -> Result<Self, String> {
        let mut schema = openapi_schema.clone();
        to_json_schema(&mut schema);
        // Metadata is validated by the apiserver itself, not by the CRD's schema.
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.remove("metadata");
        }
        let inner = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
        Ok(Self { inner })
    }

    /// One `(field path, message)` per violation, in kube-apiserver's wording where it matters.
    pub fn validate(&self, object: &Value) -> Vec<(String, String)> {
        self.inner
            .iter_errors(object)
            .map(|e| {
                let path: Vec<String> = e
                    .instance_path
                    .into_iter()
                    .map(|seg| match seg {
                        jsonschema::paths::LocationSegment::Property(p) => p.to_string(),
                        jsonschema::paths::LocationSegment::Index(i) => format!("[{i}]"),
                    })
                    .collect();
                let field = path.join(".").replace(".[", "[");
                (field, format!("Invalid value: {}: {}", e.instance, e))
            })
            .collect()
    }
}

/// OpenAPI v3 → JSON Schema: `nullable` becomes a null type, int-or-string becomes either.
fn to_json_schema(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".into(), serde_json::json!([t, "null"]));
            }
            if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                map.remove("type");
                map.insert("type".into(), serde_json::json!(["integer", "string"]));
            }
            for v in map.values_mut() {
                to_json_schema(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_json_schema),
        _ => {}
    }
}

/// A served resource type from a CustomResourceDefinition object (its storage version).
pub fn type_from_crd(crd: &Value) -> Option<ResourceType> {
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
