//! Label and field selectors for list and watch, as kube-apiserver parses them.

use crate::status::ApiError;
use crate::types::ResourceType;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Clone, Debug, Default)]
pub struct Selectors {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
    /// Fields are matched against a pod's selectable fields (`pod.ToSelectableFields`).
    pod_fields: bool,
}

/// The field labels kube-apiserver accepts for core/v1 pods (`pkg/apis/core/v1/conversion.go`),
/// and `spec.host`, which it converts to `spec.nodeName`.
const POD_FIELD_LABELS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

impl Selectors {
    /// No label or field selector was given.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// The selectors of a list or watch of `rt`; a field label the resource does not support is
    /// 400 Bad Request, as kube-apiserver's field label conversion answers it (checked for pods).
    pub fn parse(query: &HashMap<String, String>, rt: &ResourceType) -> Result<Self, ApiError> {
        let mut fields = parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
        let pod_fields = crate::types::is_pod(rt);
        if pod_fields {
            for r in &mut fields {
                let key = r.key_mut();
                if key == "spec.host" {
                    *key = "spec.nodeName".into();
                }
                if !POD_FIELD_LABELS.contains(&key.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {key}"
                    )));
                }
            }
        }
        Ok(Self {
            labels: parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields,
            pod_fields,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
        let field = |k: &str| -> Option<String> {
            if self.pod_fields {
                return Some(pod_field(object, k));
            }
            let mut cur = object;
            for seg in k.split('.') {
                cur = cur.get(seg)?;
            }
            match cur {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        };
        self.labels.iter().all(|r| holds(r, &label)) && self.fields.iter().all(|r| holds(r, &field))
    }
}

/// A pod's selectable field: every one has a value, empty when the field is unset, and
/// `spec.hostNetwork` is `true` or `false`; `status.podIP` is the first of `status.podIPs`.
fn pod_field(pod: &Value, label: &str) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match label {
        "spec.hostNetwork" => (pod["spec"]["hostNetwork"] == Value::Bool(true)).to_string(),
        "status.podIP" => text(&pod["status"]["podIPs"][0]["ip"]),
        other => {
            let (head, tail) = other.split_once('.').unwrap_or((other, ""));
            text(&pod[head][tail])
        }
    }
}

impl Requirement {
    fn key_mut(&mut self) -> &mut String {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _) => k,
        }
    }
}

fn holds(r: &Requirement, get: &dyn Fn(&str) -> Option<String>) -> bool {
    match r {
        Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
        Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
        Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(&v)),
        Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(&v)),
    }
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse(s: &str) -> Result<Vec<Requirement>, ApiError> {
    split_top_level(s)
        .into_iter()
        .map(|part| {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .collect()
            };
            if let Some((k, v)) = part.split_once("!=") {
                Ok(Requirement::NotEquals(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = part.split_once("==") {
                Ok(Requirement::Equals(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = part.split_once('=') {
                Ok(Requirement::Equals(k.trim().into(), v.trim().into()))
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Ok(Requirement::NotIn(k.trim().into(), set(rest)))
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Ok(Requirement::In(k.trim().into(), set(rest)))
            } else if let Some(k) = part.strip_prefix('!') {
                Ok(Requirement::NotExists(k.trim().into()))
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Ok(Requirement::Exists(part))
            } else {
                Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {part}"
                )))
            }
        })
        .collect()
}
