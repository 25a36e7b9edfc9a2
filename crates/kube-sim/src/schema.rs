//! Validation of custom resources against their CRD's `openAPIV3Schema`, as the apiserver does
//! (types, bounds, patterns, enums, required, list-map keys) and its CEL rules
//! (`x-kubernetes-validations`, evaluated by kube-rs's `kube-cel`; transition rules are not).

use serde_json::Value;

pub struct Validator {
    inner: jsonschema::Validator,
    /// The original schema, for the Kubernetes extensions JSON Schema does not know.
    openapi: Value,
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
        Ok(Self {
            inner,
            openapi: openapi_schema.clone(),
        })
    }

    /// The CRD's `openAPIV3Schema` as written.
    pub fn schema(&self) -> &Value {
        &self.openapi
    }

    /// One `(field path, message)` per violation, in kube-apiserver's wording where it matters.
    pub fn validate(&self, object: &Value) -> Vec<(String, String)> {
        let mut causes = self.schema_errors(object);
        // A structural schema may bound metadata.name (and nothing else of metadata).
        let bound =
            self.openapi["properties"]["metadata"]["properties"]["name"]["maxLength"].as_u64();
        if let (Some(max), Some(name)) = (bound, object["metadata"]["name"].as_str())
            && name.len() as u64 > max
        {
            causes.push((
                "metadata.name".into(),
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        list_map_duplicates(&self.openapi, object, "", &mut causes);
        // CEL sees the object only once it is structurally valid, as in kube-apiserver.
        if causes.is_empty()
            && let Err(errors) = kube_cel::Validator::new().validate(&self.openapi, object, None)
        {
            for e in errors.into_vec() {
                causes.push((
                    e.field_path,
                    format!("Invalid value: \"object\": {}", e.message),
                ));
            }
        }
        causes
    }

    fn schema_errors(&self, object: &Value) -> Vec<(String, String)> {
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

/// `x-kubernetes-list-type: map` lists must not hold two items with the same key fields, and
/// `set` lists no two equal items, as the apiserver enforces.
fn list_map_duplicates(schema: &Value, value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match (schema.get("type").and_then(Value::as_str), value) {
        (Some("object"), Value::Object(map)) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in map {
                    if let Some(sub) = props.get(k) {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        list_map_duplicates(sub, v, &p, out);
                    }
                }
            }
        }
        (Some("array"), Value::Array(items)) => {
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let item_schema = schema.get("items").cloned().unwrap_or(Value::Null);
            let mut seen: Vec<Value> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let identity = match list_type {
                    Some("map") => {
                        // Missing key fields take their schema default, as after defaulting.
                        let id: serde_json::Map<String, Value> = keys
                            .iter()
                            .map(|k| {
                                let v = item
                                    .get(*k)
                                    .cloned()
                                    .or_else(|| {
                                        item_schema["properties"][*k].get("default").cloned()
                                    })
                                    .unwrap_or(Value::Null);
                                (k.to_string(), v)
                            })
                            .collect();
                        Some(Value::Object(id))
                    }
                    Some("set") => Some(item.clone()),
                    _ => None,
                };
                if let Some(id) = identity {
                    if seen.contains(&id) {
                        out.push((format!("{path}[{i}]"), format!("Duplicate value: {id}")));
                    } else {
                        seen.push(id);
                    }
                }
                list_map_duplicates(&item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}
