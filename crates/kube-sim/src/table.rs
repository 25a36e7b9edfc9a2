//! Server-side printing: a `meta.k8s.io/v1` Table for a client that asks for one (`Accept:
//! application/json;as=Table;v=v1;g=meta.k8s.io`, as `kubectl get` does), with the columns
//! kube-apiserver prints for each built-in kind the stand-in serves (`pkg/printers/internalversion`),
//! a custom resource's `additionalPrinterColumns` after its name, and `Name`/`Created At` for
//! any other kind. Every column is sent, its `priority` telling kubectl which only `-o wide` shows.

use crate::types::ResourceType;
use serde_json::{Value, json};

/// What each row carries besides its cells (`includeObject`): by default the object's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&String>) -> Include {
        match value.map(String::as_str) {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Whether an `Accept` header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// The Table of `objects` of kind `rt`, with the list's `metadata` (resourceVersion, continue).
pub fn table(rt: &ResourceType, objects: &[&Value], include: Include, metadata: Value) -> Value {
    let columns = columns(rt);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(rt, o)});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]});
                }
                Include::Object => row["object"] = (*o).clone(),
            }
            row
        })
        .collect();
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

struct Column {
    name: String,
    kind: String,
    format: String,
    description: String,
    priority: i64,
}

fn column(name: &str, kind: &str, priority: i64) -> Column {
    Column {
        name: name.into(),
        kind: kind.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: String::new(),
        priority,
    }
}

fn columns(rt: &ResourceType) -> Vec<Column> {
    if rt.custom {
        return custom_columns(rt);
    }
    builtin_columns(rt)
}

/// A custom resource's columns: its name, then its printer columns (or its age).
fn custom_columns(rt: &ResourceType) -> Vec<Column> {
    let mut columns = vec![column("Name", "string", 0)];
    if rt.printer_columns.is_empty() {
        columns.push(column("Age", "date", 0));
    }
    for p in &rt.printer_columns {
        columns.push(Column {
            name: p["name"].as_str().unwrap_or("").into(),
            kind: p["type"].as_str().unwrap_or("string").into(),
            format: p["format"].as_str().unwrap_or("").into(),
            description: p["description"].as_str().unwrap_or("").into(),
            priority: p["priority"].as_i64().unwrap_or(0),
        });
    }
    columns
}

/// The columns kube-apiserver prints for a built-in kind (`Name`/`Created At` for one it has
/// no printer for).
fn builtin_columns(rt: &ResourceType) -> Vec<Column> {
    let c = |names: &[(&str, &str, i64)]| -> Vec<Column> {
        names.iter().map(|(n, k, p)| column(n, k, *p)).collect()
    };
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => c(&[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ]),
        ("apps", "deployments") => c(&[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ]),
        ("apps", "statefulsets") => c(&[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ]),
        ("apps", "daemonsets") => c(&[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ]),
        ("", "secrets") => c(&[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ]),
        ("", "configmaps") => c(&[
            ("Name", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ]),
        ("", "namespaces") => c(&[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ]),
        ("", "serviceaccounts") => c(&[
            ("Name", "string", 0),
            ("Secrets", "string", 0),
            ("Age", "string", 0),
        ]),
        ("coordination.k8s.io", "leases") => c(&[
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ]),
        ("", "events") => c(&[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ]),
        _ => c(&[("Name", "string", 0), ("Created At", "date", 0)]),
    }
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"].as_str().unwrap_or(""));
    let age = json!(age(&o["metadata"]["creationTimestamp"]));
    let (spec, status) = (&o["spec"], &o["status"]);
    if rt.custom {
        return custom_cells(rt, o, name, age);
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => pod_cells(o, name, age),
        ("apps", "deployments") => {
            let desired = spec["replicas"].as_i64().unwrap_or(1);
            let ready = status["readyReplicas"].as_i64().unwrap_or(0);
            let mut cells = vec![
                name,
                json!(format!("{ready}/{desired}")),
                int(&status["updatedReplicas"]),
                int(&status["availableReplicas"]),
                age,
            ];
            cells.extend(containers_and_images(spec));
            cells.push(json!(selector(&spec["selector"])));
            cells
        }
        ("apps", "statefulsets") => {
            let desired = spec["replicas"].as_i64().unwrap_or(1);
            let ready = status["readyReplicas"].as_i64().unwrap_or(0);
            let mut cells = vec![name, json!(format!("{ready}/{desired}")), age];
            cells.extend(containers_and_images(spec));
            cells
        }
        ("apps", "daemonsets") => daemonset_cells(o, name, age),
        ("", "secrets") => {
            let data = o["data"].as_object().map_or(0, |d| d.len());
            vec![
                name,
                json!(o["type"].as_str().unwrap_or("Opaque")),
                json!(data.to_string()),
                age,
            ]
        }
        ("", "configmaps") => {
            let data = o["data"].as_object().map_or(0, |d| d.len())
                + o["binaryData"].as_object().map_or(0, |d| d.len());
            vec![name, json!(data.to_string()), age]
        }
        ("", "namespaces") => vec![
            name,
            json!(status["phase"].as_str().unwrap_or("Active")),
            age,
        ],
        ("", "serviceaccounts") => {
            let secrets = o["secrets"].as_array().map_or(0, Vec::len);
            vec![name, json!(secrets.to_string()), age]
        }
        ("coordination.k8s.io", "leases") => vec![name, or_none(&spec["holderIdentity"]), age],
        ("", "events") => event_cells(o),
        _ => vec![name, o["metadata"]["creationTimestamp"].clone()],
    }
}

/// An integer cell (0 when absent).
fn int(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

/// A string cell, `<none>` when absent or empty.
fn or_none(v: &Value) -> Value {
    json!(v.as_str().filter(|s| !s.is_empty()).unwrap_or("<none>"))
}

/// A custom resource's cells: its name, then its printer columns' values (or its age).
fn custom_cells(rt: &ResourceType, o: &Value, name: Value, age: Value) -> Vec<Value> {
    let mut cells = vec![name];
    if rt.printer_columns.is_empty() {
        cells.push(age);
    }
    for p in &rt.printer_columns {
        let path = p["jsonPath"].as_str().unwrap_or("");
        cells.push(custom_cell(
            p["type"].as_str().unwrap_or("string"),
            lookup(o, path),
        ));
    }
    cells
}

/// `printPod`: ready containers of all, status, restarts, age, then (wide) IP, node,
/// nominated node and readiness gates.
fn pod_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let (spec, status) = (&o["spec"], &o["status"]);
    let statuses = status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = spec["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = (statuses.iter())
        .map(|s| s["restartCount"].as_i64().unwrap_or(0))
        .sum();
    vec![
        name,
        json!(format!("{ready}/{total}")),
        json!(pod_status(o)),
        json!(restarts.to_string()),
        age,
        or_none(&status["podIP"]),
        or_none(&spec["nodeName"]),
        or_none(&status["nominatedNodeName"]),
        json!("<none>"),
    ]
}

/// `printDaemonSet`: the scheduling counts, the template's node selector, age, then (wide)
/// containers, images and selector.
fn daemonset_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let (spec, status) = (&o["spec"], &o["status"]);
    let node_selector = &spec["template"]["spec"]["nodeSelector"];
    let node_selector = (node_selector.as_object())
        .filter(|m| !m.is_empty())
        .map(|m| {
            (m.iter())
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "<none>".into());
    let mut cells = vec![
        name,
        int(&status["desiredNumberScheduled"]),
        int(&status["currentNumberScheduled"]),
        int(&status["numberReady"]),
        int(&status["updatedNumberScheduled"]),
        int(&status["numberAvailable"]),
        json!(node_selector),
        age,
    ];
    cells.extend(containers_and_images(spec));
    cells.push(json!(selector(&spec["selector"])));
    cells
}

/// `printEvent`: the last and first time seen, the count (a series' when there is one), the
/// object as `kind/name` in lower case.
fn event_cells(e: &Value) -> Vec<Value> {
    let first = (e["firstTimestamp"].as_str())
        .map(|t| age(&json!(t)))
        .unwrap_or_else(|| age(&e["eventTime"]));
    let mut last = (e["lastTimestamp"].as_str())
        .map(|t| age(&json!(t)))
        .unwrap_or_else(|| first.clone());
    let mut count = e["count"].as_i64().filter(|c| *c > 0).unwrap_or(1);
    if e["series"].is_object() {
        last = age(&e["series"]["lastObservedTime"]);
        count = e["series"]["count"].as_i64().unwrap_or(count);
    }
    let involved = &e["involvedObject"];
    let kind = involved["kind"].as_str().unwrap_or("").to_lowercase();
    let object = match involved["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => format!("{kind}/{name}"),
        None => kind,
    };
    let component = (e["source"]["component"].as_str())
        .filter(|s| !s.is_empty())
        .or(e["reportingComponent"].as_str())
        .unwrap_or("");
    let source = match e["source"]["host"].as_str().filter(|h| !h.is_empty()) {
        Some(host) => format!("{component}, {host}"),
        None => match e["reportingInstance"].as_str().filter(|i| !i.is_empty()) {
            Some(instance) => format!("{component}, {instance}"),
            None => component.to_string(),
        },
    };
    vec![
        json!(last),
        json!(e["type"].as_str().unwrap_or("")),
        json!(e["reason"].as_str().unwrap_or("")),
        json!(object),
        json!(involved["fieldPath"].as_str().unwrap_or("")),
        json!(source),
        json!(e["message"].as_str().unwrap_or("").trim()),
        json!(first),
        json!(count.to_string()),
        json!(e["metadata"]["name"].as_str().unwrap_or("")),
    ]
}

/// `printPod`'s status: Terminating once deleted, else a container's waiting or terminated
/// reason, else the phase.
fn pod_status(pod: &Value) -> String {
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating".into();
    }
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for s in &statuses {
        for state in ["waiting", "terminated"] {
            if let Some(reason) = s["state"][state]["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
            {
                return reason.into();
            }
        }
    }
    (pod["status"]["reason"].as_str())
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .into()
}

fn containers_and_images(spec: &Value) -> [Value; 2] {
    let containers = spec["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let join = |field: &str| {
        (containers.iter())
            .map(|c| c[field].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    [json!(join("name")), json!(join("image"))]
}

/// A label selector as `metav1.LabelSelectorAsSelector` prints it (match labels only).
fn selector(selector: &Value) -> String {
    let labels = selector["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut pairs: Vec<String> = (labels.iter())
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// A simple JSON path (`.status.phase`, `.spec.items[0].name`), as printer columns allow.
fn lookup<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = o;
    for segment in path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        let (field, index) = match segment.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    (!cur.is_null()).then_some(cur)
}

/// A printer column's cell (`cellForJSONValue`): absent is null (kubectl prints `<none>`),
/// dates are ages, strings print as they are, numbers and booleans keep their JSON type.
fn custom_cell(kind: &str, value: Option<&Value>) -> Value {
    let Some(value) = value else {
        return Value::Null;
    };
    match kind {
        "date" => json!(age(value)),
        "string" => match value {
            Value::String(s) => json!(s),
            other => json!(other.to_string()),
        },
        "integer" => value.as_i64().map_or(Value::Null, |n| json!(n)),
        "number" => value.as_f64().map_or(Value::Null, |n| json!(n)),
        "boolean" => value.as_bool().map_or(Value::Null, |b| json!(b)),
        _ => value.clone(),
    }
}

/// The time since an RFC 3339 timestamp as kubectl shows ages (`duration.HumanDuration`), or
/// `<unknown>` without one.
pub fn age(timestamp: &Value) -> String {
    let Some(then) = (timestamp.as_str()).and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    human_duration(jiff::Timestamp::now().duration_since(then).as_secs())
}

fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (185, "3m5s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, shown) in cases {
            assert_eq!(human_duration(seconds), shown, "{seconds}s");
        }
    }

    #[test]
    fn simple_json_paths_and_cells_by_type() {
        let o = json!({"status": {"phase": "Ready", "n": 3, "items": [{"name": "a"}]}});
        assert_eq!(lookup(&o, ".status.phase"), Some(&json!("Ready")));
        assert_eq!(lookup(&o, ".status.items[0].name"), Some(&json!("a")));
        assert_eq!(lookup(&o, ".status.missing"), None);
        assert_eq!(custom_cell("string", lookup(&o, ".status.n")), json!("3"));
        assert_eq!(custom_cell("integer", lookup(&o, ".status.n")), json!(3));
        assert_eq!(custom_cell("string", None), Value::Null);
    }

    #[test]
    fn only_the_first_accepted_type_decides() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
        assert!(!wanted(
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
        ));
    }
}
