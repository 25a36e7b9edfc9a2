//! Label and field selectors for list and watch, as kube-apiserver parses them.

use crate::status::ApiError;
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
}

impl Selectors {
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        Ok(Self {
            labels: parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields: parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
        let field = |k: &str| -> Option<String> {
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
