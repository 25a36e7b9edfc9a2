//! Field ownership for server-side apply: which manager owns which field of an object, as
//! kube-apiserver's structured-merge-diff tracks it. Maps are walked; a list is walked item by item
//! when its schema says it is a `map` (items told apart by their key fields, each item and each of
//! its fields owned apart) or a `set` (each value owned apart); any other list is atomic: one
//! field, applied and owned whole ([`crate::list_types`]).
//!
//! Known differences from structured-merge-diff: an applied item new to a list is appended, where
//! SMD places it in the applied order; and a strategic merge patch is applied as a JSON merge
//! patch (lists replaced, not merged by `patchMergeKey`). The operator depends on neither.

use crate::list_types::{ListType, Schema};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One step of a field path, as fieldsV1 names them: `f:<field>`, `k:<key fields>` (an item of a
/// map list) or `v:<value>` (an item of a set).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Field(String),
    /// The item's key fields as JSON, in field-name order: `{"name":"api"}`.
    Key(String),
    /// The item as JSON: `"keys.siriusscan.io/finalizer"`.
    Value(String),
}

/// A path to an owned field. A path ending in [`Seg::Key`] is the item itself (fieldsV1's `.`):
/// whoever owns it keeps the item in the list.
pub type FieldPath = Vec<Seg>;

fn field(path: &FieldPath, i: usize) -> Option<&str> {
    match path.get(i) {
        Some(Seg::Field(f)) => Some(f),
        _ => None,
    }
}

/// Whether `path` starts with the field `name` (`status`, for the status subresource).
pub fn under(path: &FieldPath, name: &str) -> bool {
    field(path, 0) == Some(name)
}

/// The path names an item of a map list, not a field of it.
pub fn is_item(path: &FieldPath) -> bool {
    matches!(path.last(), Some(Seg::Key(_)))
}

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

/// Owned paths present in an object of the schema `schema`: its leaves, and the items of its
/// map and set lists (an empty map or set list owns nothing).
pub fn leaf_paths(value: &Value, schema: Schema) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    walk(value, schema, &mut Vec::new(), &mut out);
    out.retain(|p| !is_server_owned(p) && !is_identity(p));
    out
}

fn walk(value: &Value, schema: Schema, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(Seg::Field(k.clone()));
                walk(v, schema.field(k), prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => match item_segs(items, schema) {
            Some(segs) => {
                let keys = match schema.list_type() {
                    ListType::Map(keys) => keys,
                    _ => Vec::new(),
                };
                for (item, seg) in items.iter().zip(segs) {
                    prefix.push(seg);
                    out.insert(prefix.clone());
                    let fields = item.as_object().into_iter().flatten();
                    for (k, v) in fields.filter(|(k, _)| !keys.contains(&k.as_str())) {
                        prefix.push(Seg::Field(k.clone()));
                        walk(v, schema.items().field(k), prefix, out);
                        prefix.pop();
                    }
                    prefix.pop();
                }
            }
            None if !prefix.is_empty() => {
                out.insert(prefix.clone());
            }
            None => {}
        },
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// Each item's segment, when `schema` makes the list a map or a set whose items can be told
/// apart; `None` (the list is owned whole) otherwise.
fn item_segs(items: &[Value], schema: Schema) -> Option<Vec<Seg>> {
    if schema.list_type() == ListType::Atomic {
        return None;
    }
    let segs: Vec<Seg> = (items.iter())
        .map(|item| item_seg(item, schema))
        .collect::<Option<_>>()?;
    let distinct: BTreeSet<&Seg> = segs.iter().collect();
    (distinct.len() == segs.len()).then_some(segs)
}

/// The segment naming `item` in the list of schema `schema`: a set's scalar value, or a map
/// item's key fields (a missing one takes its schema default, as kube-apiserver's defaulting
/// gives it).
fn item_seg(item: &Value, schema: Schema) -> Option<Seg> {
    match schema.list_type() {
        ListType::Atomic => None,
        ListType::Set => {
            (!item.is_object() && !item.is_array()).then(|| Seg::Value(item.to_string()))
        }
        ListType::Map(keys) => {
            let fields = item.as_object()?;
            let key: BTreeMap<&str, &Value> = (keys.iter())
                .map(|k| {
                    let given = fields.get(*k).filter(|v| !v.is_null());
                    given
                        .or_else(|| schema.items().field(k).default_value())
                        .map(|v| (*k, v))
                })
                .collect::<Option<_>>()?;
            serde_json::to_string(&key).ok().map(Seg::Key)
        }
    }
}

/// Why an applied configuration cannot be merged: an item of a map list without one of its key
/// fields (and no default for it), in structured-merge-diff's words.
pub fn unkeyed_item(value: &Value, schema: Schema, path: &str) -> Option<String> {
    match value {
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| unkeyed_item(v, schema.field(k), &format!("{path}.{k}"))),
        Value::Array(items) => {
            let keys = match schema.list_type() {
                ListType::Map(keys) => keys,
                _ => return None,
            };
            items.iter().enumerate().find_map(|(i, item)| {
                let missing = keys.iter().find(|k| {
                    item.get(**k).is_none_or(Value::is_null)
                        && schema.items().field(k).default_value().is_none()
                });
                match missing {
                    Some(k) => Some(format!(
                        "{path}: element {i}: associative list with keys has an element that omits key field \"{k}\" (and doesn't have default value)"
                    )),
                    None => {
                        let fields = item.as_object().into_iter().flatten();
                        fields.into_iter().find_map(|(k, v)| {
                            unkeyed_item(v, schema.items().field(k), &format!("{path}[{i}].{k}"))
                        })
                    }
                }
            })
        }
        _ => None,
    }
}

fn is_server_owned(path: &FieldPath) -> bool {
    field(path, 0) == Some("metadata")
        && field(path, 1).is_some_and(|f| SERVER_METADATA.contains(&f))
}

/// apiVersion, kind, name and namespace identify the object; the apiserver does not record them
/// as owned fields.
fn is_identity(path: &FieldPath) -> bool {
    (path.len() == 1 && matches!(field(path, 0), Some("apiVersion" | "kind")))
        || (path.len() == 2
            && field(path, 0) == Some("metadata")
            && matches!(field(path, 1), Some("name" | "namespace")))
}

/// The position of the item `seg` names in `items` (a list of schema `schema`).
fn find_item(items: &[Value], seg: &Seg, schema: Schema) -> Option<usize> {
    items
        .iter()
        .position(|item| item_seg(item, schema).as_ref() == Some(seg))
}

/// The schema below `seg` (an item's fields are its list's `items`).
fn below<'a>(schema: Schema<'a>, seg: &Seg) -> Schema<'a> {
    match seg {
        Seg::Field(f) => schema.field(f),
        Seg::Key(_) | Seg::Value(_) => schema.items(),
    }
}

fn child<'a>(value: &'a Value, seg: &Seg, schema: Schema) -> Option<&'a Value> {
    match seg {
        Seg::Field(f) => value.as_object()?.get(f),
        Seg::Key(_) | Seg::Value(_) => {
            let items = value.as_array()?;
            items.get(find_item(items, seg, schema)?)
        }
    }
}

/// The field, item or value at `path` in an object of schema `schema`.
pub fn get<'a>(value: &'a Value, path: &FieldPath, schema: Schema) -> Option<&'a Value> {
    let mut cur = value;
    let mut schema = schema;
    for seg in path {
        // A field's schema is its parent's `field`; a list item is found with the list's.
        let (next, next_schema) = match seg {
            Seg::Field(f) => (child(cur, seg, schema)?, schema.field(f)),
            _ => (child(cur, seg, schema)?, schema.items()),
        };
        cur = next;
        schema = next_schema;
    }
    Some(cur)
}

/// Removes the field, item or value at `path`, and any maps and lists it leaves empty.
pub fn remove(value: &mut Value, path: &[Seg], schema: Schema) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let child_schema = match first {
        Seg::Field(f) => schema.field(f),
        _ => schema,
    };
    if rest.is_empty() {
        match (value, first) {
            (Value::Object(map), Seg::Field(f)) => {
                map.remove(f);
            }
            (Value::Array(items), seg) => {
                if let Some(i) = find_item(items, seg, schema) {
                    items.remove(i);
                }
            }
            _ => {}
        }
        return;
    }
    let emptied = match (&mut *value, first) {
        (Value::Object(map), Seg::Field(f)) => map.get_mut(f).is_some_and(|child| {
            remove(child, rest, child_schema);
            is_empty_container(child)
        }),
        // An item keeps its key fields: it goes only when its own path is removed.
        (Value::Array(items), seg) => {
            if let Some(i) = find_item(items, seg, schema) {
                remove(&mut items[i], rest, below(schema, seg));
            }
            false
        }
        _ => false,
    };
    if emptied {
        remove(value, std::slice::from_ref(first), schema);
    }
}

fn is_empty_container(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
}

/// Merges an applied configuration into `target`: maps merge, items of map and set lists merge
/// by key (new ones are appended), everything else replaces.
pub fn merge_applied(target: &mut Value, applied: &Value, schema: Schema) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(existing) if merges(existing, v, schema.field(k)) => {
                        merge_applied(existing, v, schema.field(k))
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(a)) if merges_items(t, a, schema) => {
            let is_map = matches!(schema.list_type(), ListType::Map(_));
            for item in a {
                let Some(seg) = item_seg(item, schema) else {
                    continue;
                };
                match find_item(t, &seg, schema) {
                    Some(i) if is_map => merge_applied(&mut t[i], item, schema.items()),
                    Some(_) => {}
                    None => t.push(item.clone()),
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

fn merges(existing: &Value, applied: &Value, schema: Schema) -> bool {
    match (existing, applied) {
        (Value::Object(_), Value::Object(_)) => true,
        (Value::Array(t), Value::Array(a)) => merges_items(t, a, schema),
        _ => false,
    }
}

/// Both lists' items can be told apart by the list's type (else the applied list replaces).
fn merges_items(target: &[Value], applied: &[Value], schema: Schema) -> bool {
    item_segs(target, schema).is_some() && item_segs(applied, schema).is_some()
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
    /// Of the fields `paths` in `applied`, those owned by another manager with a different
    /// current value (an item itself never conflicts: only its fields have values).
    pub fn conflicts(
        &self,
        me: &str,
        paths: &BTreeSet<FieldPath>,
        current: &Value,
        applied: &Value,
        schema: Schema,
    ) -> Vec<(String, FieldPath)> {
        let mut out = Vec::new();
        for path in paths.iter().filter(|p| !is_item(p)) {
            for (key, owned) in &self.managers {
                if key.manager == me || !owned.contains(path) {
                    continue;
                }
                if get(current, path, schema) != get(applied, path, schema) {
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

    /// Whether a manager owns a field inside the map at `path`.
    pub fn owns_within(&self, path: &FieldPath) -> bool {
        (self.managers.values().flatten()).any(|p| p.len() > path.len() && p.starts_with(path))
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
                        cur = node(cur, fields_v1_name(seg));
                    }
                    // An item: `.` for the item itself, and its key fields.
                    if let Some(Seg::Key(k)) = path.last() {
                        node(cur, ".".into());
                        if let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(k) {
                            for name in keys.keys() {
                                node(cur, format!("f:{name}"));
                            }
                        }
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

/// `.spec.containers[name="api"].image`, for messages.
pub fn dotted(path: &FieldPath) -> String {
    path.iter()
        .map(|seg| match seg {
            Seg::Field(f) => format!(".{f}"),
            Seg::Key(k) => {
                let keys = serde_json::from_str::<Map<String, Value>>(k).unwrap_or_default();
                let keys: Vec<String> = keys.iter().map(|(n, v)| format!("{n}={v}")).collect();
                format!("[{}]", keys.join(","))
            }
            Seg::Value(v) => format!("[{v}]"),
        })
        .collect()
}

fn fields_v1_name(seg: &Seg) -> String {
    match seg {
        Seg::Field(f) => format!("f:{f}"),
        Seg::Key(k) => format!("k:{k}"),
        Seg::Value(v) => format!("v:{v}"),
    }
}

/// The child `name` of a fieldsV1 node, made if missing.
fn node(tree: &mut Value, name: String) -> &mut Value {
    tree.as_object_mut()
        .expect("fieldsV1 nodes are maps")
        .entry(name)
        .or_insert_with(|| Value::Object(Map::new()))
}

/// Owned paths present in `old` and gone from `new`.
pub fn removed_paths(old: &Value, new: &Value, schema: Schema) -> BTreeSet<FieldPath> {
    leaf_paths(old, schema)
        .into_iter()
        .filter(|p| get(new, p, schema).is_none())
        .collect()
}

/// Owned paths an update changed: fields whose value differs (added or changed) and items it
/// added (an item whose fields changed is not itself changed).
pub fn changed_paths(old: &Value, new: &Value, schema: Schema) -> BTreeSet<FieldPath> {
    let old_paths = leaf_paths(old, schema);
    let new_paths = leaf_paths(new, schema);
    let changed = new_paths.iter().filter(|p| match get(old, p, schema) {
        None => true,
        Some(_) if is_item(p) => false,
        before => before != get(new, p, schema),
    });
    // A field that became a map or a list is changed too.
    let reshaped = (old_paths.difference(&new_paths)).filter(|p| get(new, p, schema).is_some());
    changed.chain(reshaped).cloned().collect()
}

/// An Update (create, replace or patch) by `manager` takes the fields it changed and drops
/// those it removed, as kube-apiserver's field manager does.
pub fn track_update(
    ownership: &mut Ownership,
    schema: Schema,
    manager: &str,
    subresource: &str,
    current: &Value,
    next: &Value,
) {
    let mut changed = changed_paths(current, next, schema);
    if subresource == "status" {
        changed.retain(|p| under(p, "status"));
    }
    ownership.take(
        ManagerKey {
            manager: manager.to_string(),
            apply: false,
            subresource: subresource.to_string(),
        },
        changed,
    );
    ownership.forget(&removed_paths(current, next, schema));
}
