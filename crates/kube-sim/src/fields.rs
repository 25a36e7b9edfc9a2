//! Field ownership for server-side apply: which manager owns which leaf path of an object.
//!
//! Simplification against the real structured-merge-diff: lists are atomic (owned whole), which is
//! what the operator relies on (it applies its condition list and annotations whole).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub type FieldPath = Vec<String>;

/// Metadata the server owns; never tracked as a manager's field.
const SERVER_METADATA: &[&str] = &[
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Leaf paths present in an object (objects are walked, everything else is a leaf).
pub fn leaf_paths(value: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out.retain(|p| !is_server_owned(p) && !is_identity(p));
    out
}

fn walk(value: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(k.clone());
                walk(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

fn is_server_owned(path: &FieldPath) -> bool {
    path.len() >= 2 && path[0] == "metadata" && SERVER_METADATA.contains(&path[1].as_str())
}

/// apiVersion, kind, name and namespace identify the object; the apiserver does not record them
/// as owned fields.
fn is_identity(path: &FieldPath) -> bool {
    (path.len() == 1 && (path[0] == "apiVersion" || path[0] == "kind"))
        || (path.len() == 2
            && path[0] == "metadata"
            && (path[1] == "name" || path[1] == "namespace"))
}

pub fn get<'a>(value: &'a Value, path: &FieldPath) -> Option<&'a Value> {
    let mut cur = value;
    for seg in path {
        cur = cur.as_object()?.get(seg)?;
    }
    Some(cur)
}

/// Removes a leaf and any maps it leaves empty.
pub fn remove(value: &mut Value, path: &[String]) {
    if path.is_empty() {
        return;
    }
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if path.len() == 1 {
        map.remove(&path[0]);
        return;
    }
    if let Some(child) = map.get_mut(&path[0]) {
        remove(child, &path[1..]);
        if child.as_object().is_some_and(Map::is_empty) {
            map.remove(&path[0]);
        }
    }
}

/// Deep merge of an applied configuration: maps merge, everything else replaces.
pub fn merge_applied(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_applied(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// Ownership of one object's fields, by manager; `subresource` separates status writers.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    pub managers: BTreeMap<ManagerKey, BTreeSet<FieldPath>>,
    /// Each manager's `time`: when its last operation changed the object (kube-apiserver's
    /// managed-fields updater stamps only the manager that wrote).
    pub times: BTreeMap<ManagerKey, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManagerKey {
    pub manager: String,
    pub apply: bool,
    pub subresource: String,
}

impl Ownership {
    /// Paths in `applied` owned by another manager with a different current value.
    pub fn conflicts(
        &self,
        me: &str,
        current: &Value,
        applied: &Value,
    ) -> Vec<(String, FieldPath)> {
        let mut out = Vec::new();
        for path in leaf_paths(applied) {
            for (key, owned) in &self.managers {
                if key.manager == me || !owned.contains(&path) {
                    continue;
                }
                if get(current, &path) != get(applied, &path) {
                    out.push((key.manager.clone(), path.clone()));
                }
            }
        }
        out
    }

    /// Gives `paths` to `key`, taking them from every other manager.
    pub fn take(&mut self, key: ManagerKey, paths: BTreeSet<FieldPath>) {
        for (other, owned) in self.managers.iter_mut() {
            if other.manager != key.manager {
                owned.retain(|p| !paths.contains(p));
            }
        }
        self.managers.entry(key).or_default().extend(paths);
        self.managers.retain(|_, owned| !owned.is_empty());
    }

    /// Fields an update removed from the object are no longer anyone's (so a later apply of
    /// them does not conflict), as in kube-apiserver.
    pub fn forget(&mut self, removed: &BTreeSet<FieldPath>) {
        for owned in self.managers.values_mut() {
            owned.retain(|p| !removed.contains(p));
        }
        self.managers.retain(|_, owned| !owned.is_empty());
    }

    /// The applier `key` now owns exactly `paths`; of those, the ones in `shared` (applied with
    /// the value they already had) stay owned by their other managers too, as structured-merge-diff
    /// shares a field two managers set to the same value. Gives the paths `key` owned before.
    pub fn replace_applied(
        &mut self,
        key: ManagerKey,
        paths: BTreeSet<FieldPath>,
        shared: &BTreeSet<FieldPath>,
    ) -> BTreeSet<FieldPath> {
        let previous = self.managers.remove(&key).unwrap_or_default();
        for (other, owned) in self.managers.iter_mut() {
            if other.manager != key.manager {
                owned.retain(|p| !paths.contains(p) || shared.contains(p));
            }
        }
        self.managers.entry(key).or_default().extend(paths);
        self.managers.retain(|_, owned| !owned.is_empty());
        previous
    }

    pub fn owned_by_anyone(&self, path: &FieldPath) -> bool {
        self.managers.values().any(|owned| owned.contains(path))
    }

    /// The write of `manager` (through `subresource`) changed the object at `now`.
    pub fn touch(&mut self, manager: &str, subresource: &str, now: &str) {
        let keys: Vec<ManagerKey> = self
            .managers
            .keys()
            .filter(|k| k.manager == manager && k.subresource == subresource)
            .cloned()
            .collect();
        for key in keys {
            self.times.insert(key, now.to_string());
        }
    }

    /// Every manager wrote at `now` (the object was created).
    pub fn touch_all(&mut self, now: &str) {
        self.times = self
            .managers
            .keys()
            .map(|k| (k.clone(), now.to_string()))
            .collect();
    }

    /// `metadata.managedFields` in the FieldsV1 encoding (`f:` prefixed keys); a manager never
    /// touched reads `time`.
    pub fn to_managed_fields(&self, api_version: &str, time: &str) -> Value {
        let entries: Vec<Value> = self
            .managers
            .iter()
            .map(|(key, owned)| {
                let mut tree = Value::Object(Map::new());
                for path in owned {
                    let mut cur = &mut tree;
                    for seg in path {
                        cur = cur
                            .as_object_mut()
                            .expect("fieldsV1 nodes are maps")
                            .entry(format!("f:{seg}"))
                            .or_insert_with(|| Value::Object(Map::new()));
                    }
                }
                let mut entry = serde_json::json!({
                    "manager": key.manager,
                    "operation": if key.apply { "Apply" } else { "Update" },
                    "apiVersion": api_version,
                    "time": self.times.get(key).map_or(time, String::as_str),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": tree,
                });
                if !key.subresource.is_empty() {
                    entry["subresource"] = Value::String(key.subresource.clone());
                }
                entry
            })
            .collect();
        Value::Array(entries)
    }
}

/// Leaf paths present in `old` and gone from `new`.
pub fn removed_paths(old: &Value, new: &Value) -> BTreeSet<FieldPath> {
    leaf_paths(old)
        .into_iter()
        .filter(|p| get(new, p).is_none())
        .collect()
}

/// Leaf paths whose value differs between two versions of an object (added, changed or removed).
pub fn changed_paths(old: &Value, new: &Value) -> BTreeSet<FieldPath> {
    let old_paths = leaf_paths(old);
    let new_paths = leaf_paths(new);
    new_paths
        .iter()
        .filter(|p| get(old, p) != get(new, p))
        .cloned()
        .chain(old_paths.difference(&new_paths).cloned())
        .filter(|p| get(new, p).is_some())
        .collect()
}

/// An Update (create, replace or patch) by `manager` takes the fields it changed and drops
/// those it removed, as kube-apiserver's field manager does.
pub fn track_update(
    ownership: &mut Ownership,
    manager: &str,
    subresource: &str,
    current: &Value,
    next: &Value,
) {
    let mut changed = changed_paths(current, next);
    if subresource == "status" {
        changed.retain(|p| p.first().map(String::as_str) == Some("status"));
    }
    ownership.take(
        ManagerKey {
            manager: manager.to_string(),
            apply: false,
            subresource: subresource.to_string(),
        },
        changed,
    );
    ownership.forget(&removed_paths(current, next));
}
