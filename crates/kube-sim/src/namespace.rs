//! The namespace controller of kube-controller-manager (`pkg/controller/namespace/deletion`):
//! a Namespace being deleted is emptied, every namespaced resource's objects deleted (an object
//! with finalizers gets `deletionTimestamp` and stays until they are removed; a pod terminates),
//! its deletion conditions kept in its status, and once nothing is left its `kubernetes`
//! finalizer is removed and the Namespace itself deleted.

use crate::store::{Store, Write, now_rfc3339};
use crate::types::{ResourceType, is_pod};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// How the namespace controller empties a namespace being deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NamespaceDeletion {
    /// Its first pass deletes every object in the namespace at once, resource by resource in a
    /// fixed order, and its pods without grace (gone at once): the namespace goes as soon as
    /// nothing with a finalizer holds it.
    #[default]
    Immediate,
    /// As kube-controller-manager does it: every resource is deleted in its own turn, in an order
    /// drawn from `seed` (the controller walks its discovered resources as a Go map, in no set
    /// order, so an object may outlive another it depends on, or go first), one resource a tick;
    /// pods are deleted gracefully and terminate by their grace, and the namespace waits for them.
    Concurrent { seed: u64 },
}

/// One terminating namespace's progress.
#[derive(Default)]
struct Progress {
    /// Resource keys in the order this namespace's resources are deleted.
    order: Vec<String>,
    /// How many of `order` have been deleted at least once.
    done: usize,
}

#[derive(Default)]
pub struct NamespaceController {
    pub mode: NamespaceDeletion,
    progress: HashMap<String, Progress>,
}

/// The condition types the namespace deleter maintains, with their reason and message when all
/// is well (`okReasons`, `okMessages`).
const CONDITIONS: [(&str, &str, &str); 5] = [
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

/// A permutation of `items` from `seed` (xorshift), standing in for Go's map order.
fn shuffled(mut items: Vec<String>, seed: u64) -> Vec<String> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
    items
}

impl NamespaceController {
    /// One pass over every namespace being deleted. Runs under the store's lock at each tick.
    pub fn tick(&mut self, store: &mut Store) {
        let terminating = store.terminating_namespaces();
        self.progress.retain(|ns, _| terminating.contains(ns));
        for ns in terminating {
            self.sync(store, &ns);
        }
    }

    fn sync(&mut self, store: &mut Store, ns: &str) {
        let Some(ns_rt) = store.resource_type("", "namespaces") else {
            return;
        };
        let Ok(namespace) = store.get(&ns_rt, "", ns) else {
            return;
        };
        let finalized = namespace["spec"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if finalized {
            let _ = store.delete(&ns_rt, "", ns, None, None, None);
            return;
        }
        let types: BTreeMap<String, ResourceType> = store
            .types
            .iter()
            .filter(|(_, rt)| rt.namespaced)
            .map(|(k, rt)| (k.clone(), rt.clone()))
            .collect();
        let progress = self.progress.entry(ns.to_string()).or_insert_with(|| {
            let keys: Vec<String> = types.keys().cloned().collect();
            let order = match &self.mode {
                NamespaceDeletion::Immediate => keys,
                NamespaceDeletion::Concurrent { seed } => shuffled(keys, *seed),
            };
            Progress { order, done: 0 }
        });
        let concurrent = matches!(self.mode, NamespaceDeletion::Concurrent { .. });
        // This pass deletes every resource (Immediate, or Concurrent once each had its turn) or
        // the next one in turn.
        let turn: Vec<String> = if concurrent && progress.done < progress.order.len() {
            progress.done += 1;
            vec![progress.order[progress.done - 1].clone()]
        } else {
            progress.done = progress.order.len();
            progress.order.clone()
        };
        delete_turn(store, ns, &types, &turn, concurrent);
        let (failing, total) = remaining_content(store, ns, &types);
        let status = conditions_status(&namespace, &failing);
        if status != namespace["status"] {
            store.controller_write_status(&ns_rt, "", ns, status);
        }
        let untouched = concurrent && progress.done < progress.order.len();
        if total > 0 || untouched {
            return;
        }
        finalize_empty(store, &ns_rt, ns);
    }
}

/// Deletes the objects in `ns` of each resource of `turn`: pods without grace unless the
/// deletion is `concurrent`; an object already being deleted is left alone, except a
/// terminating pod deleted again to shorten its grace.
fn delete_turn(
    store: &mut Store,
    ns: &str,
    types: &BTreeMap<String, ResourceType>,
    turn: &[String],
    concurrent: bool,
) {
    for key in turn {
        let Some(rt) = types.get(key) else { continue };
        let grace = (!concurrent && is_pod(rt)).then_some(0);
        for object in store.list(rt, Some(ns)) {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let deleting = object["metadata"].get("deletionTimestamp").is_some();
            // A pod already terminating is deleted again only to shorten its grace.
            if !deleting || (is_pod(rt) && grace.is_some()) {
                let _ = store.delete(rt, ns, name, None, None, grace);
            }
        }
    }
}

/// What is left in `ns` (`allGVRDeletionMetadata`): the failing conditions it makes (content
/// remaining per resource, finalizers remaining) with their reason and message, and how many
/// objects are left.
fn remaining_content(
    store: &Store,
    ns: &str,
    types: &BTreeMap<String, ResourceType>,
) -> (HashMap<&'static str, (&'static str, String)>, usize) {
    let mut remaining: Vec<String> = Vec::new();
    let mut by_finalizer: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for rt in types.values() {
        let left = store.list(rt, Some(ns));
        if left.is_empty() {
            continue;
        }
        total += left.len();
        remaining.push(format!(
            "{}.{} has {} resource instances",
            rt.plural,
            rt.group,
            left.len()
        ));
        for object in &left {
            for f in crate::meta::finalizer_names(object) {
                *by_finalizer.entry(f).or_default() += 1;
            }
        }
    }
    remaining.sort();
    let mut failing: HashMap<&str, (&str, String)> = HashMap::new();
    if !remaining.is_empty() {
        failing.insert(
            "NamespaceContentRemaining",
            (
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", remaining.join(", ")),
            ),
        );
    }
    if !by_finalizer.is_empty() {
        let mut listed: Vec<String> = by_finalizer
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        listed.sort();
        failing.insert(
            "NamespaceFinalizersRemaining",
            (
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    listed.join(", ")
                ),
            ),
        );
    }
    (failing, total)
}

/// An emptied namespace: the controller's `kubernetes` finalizer goes (through
/// `namespaces/finalize`), then the Namespace itself, unless metadata finalizers still hold it.
fn finalize_empty(store: &mut Store, ns_rt: &ResourceType, ns: &str) {
    let w = Write {
        rt: ns_rt,
        namespace: "",
        name: ns,
        subresource: "finalize",
        manager: "kube-controller-manager",
    };
    let _ = store.update(&w, None, |current, _| {
        let mut next = current.clone();
        let kept: Vec<Value> = current["spec"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f.as_str() != Some("kubernetes"))
            .cloned()
            .collect();
        next["spec"]["finalizers"] = json!(kept);
        Ok(next)
    });
    if let Ok(n) = store.get(ns_rt, "", ns)
        && n["spec"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
    {
        let _ = store.delete(ns_rt, "", ns, None, None, None);
    }
}

/// The Namespace's status with `updateConditions` applied: each condition type failing or in
/// its "ok" variant, a transition time only when its status changes.
fn conditions_status(namespace: &Value, failing: &HashMap<&str, (&str, String)>) -> Value {
    let mut status = namespace["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    for (type_, ok_reason, ok_message) in CONDITIONS {
        let (state, reason, message) = match failing.get(type_) {
            Some((reason, message)) => ("True", reason.to_string(), message.clone()),
            None => ("False", ok_reason.to_string(), ok_message.to_string()),
        };
        match conditions.iter_mut().find(|c| c["type"] == type_) {
            Some(c) => {
                if c["status"] != state {
                    c["lastTransitionTime"] = json!(now_rfc3339());
                }
                c["status"] = json!(state);
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            None => conditions.push(json!({
                "type": type_, "status": state, "lastTransitionTime": now_rfc3339(),
                "reason": reason, "message": message,
            })),
        }
    }
    status["conditions"] = json!(conditions);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_order_and_every_item_once() {
        let items: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
        let a = shuffled(items.clone(), 7);
        assert_eq!(a, shuffled(items.clone(), 7));
        assert_ne!(a, shuffled(items.clone(), 8));
        let mut sorted = a.clone();
        sorted.sort();
        let mut expected = items;
        expected.sort();
        assert_eq!(sorted, expected);
    }
}
