//! The stateful heart of the stand-in: typed storage with resourceVersion, generation, the status
//! subresource, finalizers, field ownership and a watch log, mirroring kube-apiserver semantics.

use crate::fields::{self, ManagerKey, Ownership};
use crate::list_types::Schema;
use crate::status::ApiError;
use crate::types::{ResourceType, is_namespace, is_pod, is_secret};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How far each resource's watch log reaches back; older resourceVersions get 410 Gone, as after
/// compaction. Each resource has its own, as kube-apiserver keeps a watch cache per resource: a
/// busy resource (pods) does not shorten another's reach.
const WATCH_LOG_LEN: usize = 20_000;
/// The resourceVersion the store starts at; a watch from before it is 410 Gone.
const INITIAL_RV: u64 = 1000;
/// The resource key of core/v1 pods.
pub const PODS: &str = "/pods";
/// The resource key of core/v1 namespaces.
pub const NAMESPACES: &str = "/namespaces";
/// Namespaces the NamespaceLifecycle admission plugin never lets be deleted.
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

pub type ObjKey = (String, String, String); // (group/plural, namespace, name)

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub resource: String,
    pub kind: &'static str,
    pub object: Value,
    pub previous: Option<Value>,
}

struct Stored {
    object: Value,
    ownership: Ownership,
}

/// One resource's watch log and the channel its watchers follow.
struct ResourceLog {
    events: VecDeque<Arc<WatchEvent>>,
    /// The resourceVersion of the last event dropped from `events` (watches from before it are
    /// 410 Gone).
    compacted: u64,
    /// Shared, not copied, by every watch of the resource; a watch that falls this far behind is
    /// closed, as kube-apiserver closes a watcher that cannot keep up.
    sender: broadcast::Sender<Arc<WatchEvent>>,
}

impl ResourceLog {
    fn new() -> Self {
        Self {
            events: VecDeque::new(),
            compacted: INITIAL_RV,
            sender: broadcast::channel(8_192).0,
        }
    }
}

pub struct Store {
    pub types: BTreeMap<String, ResourceType>,
    objects: BTreeMap<ObjKey, Stored>,
    rv: u64,
    logs: HashMap<String, ResourceLog>,
    uid_counter: u64,
    /// How many stored objects name each uid in their ownerReferences (so a deletion looks for
    /// dependents only when there are some).
    owner_uids: HashMap<String, u32>,
    /// (namespace, name) of every pod written since the simulated kubelet last looked.
    touched_pods: Vec<(String, String)>,
    /// When each gracefully deleted pod's grace period ends (its `deletionTimestamp`, to the
    /// instant rather than the second).
    pod_deadlines: HashMap<(String, String), Instant>,
    /// The grace period of a pod deleted without one whose spec sets none (the simulator's
    /// termination grace; kube-apiserver's default is 30 s).
    pub default_pod_grace: Duration,
    /// Namespaces whose Namespace object is being deleted (creates in them are refused).
    terminating: HashSet<String>,
    /// Warnings of the last writes (`Warning: 299` headers), taken by the HTTP layer.
    warnings: Vec<String>,
    /// Counts generated names.
    name_counter: u64,
}

pub fn resource_key(group: &str, plural: &str) -> String {
    format!("{group}/{plural}")
}

pub struct Write<'a> {
    pub rt: &'a ResourceType,
    pub namespace: &'a str,
    pub name: &'a str,
    pub subresource: &'a str,
    pub manager: &'a str,
}

pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Store {
    pub fn new() -> Self {
        let mut store = Self {
            types: BTreeMap::new(),
            objects: BTreeMap::new(),
            rv: INITIAL_RV,
            logs: HashMap::new(),
            uid_counter: 0,
            owner_uids: HashMap::new(),
            touched_pods: Vec::new(),
            pod_deadlines: HashMap::new(),
            default_pod_grace: Duration::from_secs(30),
            terminating: HashSet::new(),
            warnings: Vec::new(),
            name_counter: 0,
        };
        for rt in [
            ResourceType::builtin("", "v1", "secrets", "Secret", true),
            ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true),
            ResourceType::builtin("", "v1", "events", "Event", true),
            ResourceType {
                status_subresource: true,
                ..ResourceType::builtin("", "v1", "namespaces", "Namespace", false)
            },
            ResourceType {
                status_subresource: true,
                ..ResourceType::builtin("", "v1", "pods", "Pod", true)
            },
            ResourceType::builtin("", "v1", "services", "Service", true),
            ResourceType::builtin("", "v1", "serviceaccounts", "ServiceAccount", true),
            ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true),
            ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
            ResourceType::builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            ),
            ResourceType {
                status_subresource: true,
                tracks_generation: true,
                ..ResourceType::builtin("apps", "v1", "deployments", "Deployment", true)
            },
            ResourceType {
                status_subresource: true,
                tracks_generation: true,
                ..ResourceType::builtin("apps", "v1", "statefulsets", "StatefulSet", true)
            },
            ResourceType {
                status_subresource: true,
                tracks_generation: true,
                ..ResourceType::builtin("apps", "v1", "daemonsets", "DaemonSet", true)
            },
        ]
        .into_iter()
        .chain(crate::types::rbac_types())
        {
            store.add_type(rt);
        }
        store
    }

    pub fn resource_type(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.types.get(&resource_key(group, plural)).cloned()
    }

    pub fn add_type(&mut self, rt: ResourceType) {
        self.types.insert(resource_key(&rt.group, &rt.plural), rt);
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch of `resource` can start from.
    pub fn oldest_watchable(&self, resource: &str) -> u64 {
        self.logs
            .get(resource)
            .map(|l| l.compacted)
            .unwrap_or(INITIAL_RV)
    }

    pub fn log_since(&self, rv: u64, resource: &str) -> Vec<Arc<WatchEvent>> {
        let Some(log) = self.logs.get(resource) else {
            return Vec::new();
        };
        // Events are in resourceVersion order: skip the older ones without looking at each.
        let start = log.events.partition_point(|e| e.rv <= rv);
        log.events.range(start..).cloned().collect()
    }

    /// The live events of `resource`, for a watch.
    pub fn subscribe(&mut self, resource: &str) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.logs
            .entry(resource.to_string())
            .or_insert_with(ResourceLog::new)
            .sender
            .subscribe()
    }

    /// The pods written since the last call, in order (a pod may appear more than once).
    pub fn take_touched_pods(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.touched_pods)
    }

    pub fn has_touched_pods(&self) -> bool {
        !self.touched_pods.is_empty()
    }

    /// The warnings of the writes since the last call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Namespaces whose Namespace object is being deleted, for the namespace controller.
    pub fn terminating_namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self.terminating.iter().cloned().collect();
        out.sort();
        out
    }

    /// When the grace period of a gracefully deleted pod ends.
    pub fn pod_deadline(&self, ns: &str, name: &str) -> Option<Instant> {
        self.pod_deadlines
            .get(&(ns.to_string(), name.to_string()))
            .copied()
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> ObjKey {
        let ns = if rt.namespaced { ns } else { "" };
        (
            resource_key(&rt.group, &rt.plural),
            ns.to_string(),
            name.to_string(),
        )
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rt, ns, name))
            .map(|s| s.object.clone())
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// The objects of a resource (in a namespace), without copying them.
    pub fn iter<'a>(
        &'a self,
        rt: &ResourceType,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let resource = resource_key(&rt.group, &rt.plural);
        // Keys sort by resource first: scan only this resource's range.
        let from = (resource.clone(), String::new(), String::new());
        self.objects
            .range(from..)
            .take_while(move |((r, _, _), _)| *r == resource)
            .filter(move |((_, n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, s)| &s.object)
    }

    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<Value> {
        self.iter(rt, ns).cloned().collect()
    }

    /// The resourceVersion of one object, without copying it.
    pub fn version_of(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<String> {
        let stored = self.objects.get(&Self::key(rt, ns, name))?;
        stored.object["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string)
    }

    /// (namespace, name, resourceVersion) of every object of a resource, without copying them.
    pub fn versions(&self, rt: &ResourceType) -> Vec<(String, String, String)> {
        let resource = resource_key(&rt.group, &rt.plural);
        let from = (resource.clone(), String::new(), String::new());
        self.objects
            .range(from..)
            .take_while(|((r, _, _), _)| *r == resource)
            .map(|((_, ns, name), s)| {
                let rv = s.object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                (ns.clone(), name.clone(), rv.to_string())
            })
            .collect()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(
        &mut self,
        resource: String,
        kind: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        if resource == NAMESPACES && kind == "DELETED" {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            self.terminating.remove(name);
        }
        if resource == PODS {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let key = (ns.to_string(), name.to_string());
            if kind == "DELETED" {
                self.pod_deadlines.remove(&key);
            }
            self.touched_pods.push(key);
        }
        // Keep the count of owner references in step with the stored objects.
        if let Some(previous) = &previous {
            self.count_owner_refs(previous, false);
        }
        if kind != "DELETED" {
            self.count_owner_refs(&object, true);
        }
        let log = self
            .logs
            .entry(resource.clone())
            .or_insert_with(ResourceLog::new);
        let event = Arc::new(WatchEvent {
            rv: self.rv,
            resource,
            kind,
            object,
            previous,
        });
        log.events.push_back(event.clone());
        while log.events.len() > WATCH_LOG_LEN {
            if let Some(dropped) = log.events.pop_front() {
                log.compacted = dropped.rv;
            }
        }
        let _ = log.sender.send(event);
    }

    fn count_owner_refs(&mut self, object: &Value, add: bool) {
        for r in object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(uid) = r["uid"].as_str() else {
                continue;
            };
            if add {
                *self.owner_uids.entry(uid.to_string()).or_default() += 1;
            } else if let Some(n) = self.owner_uids.get_mut(uid) {
                *n -= 1;
                if *n == 0 {
                    self.owner_uids.remove(uid);
                }
            }
        }
    }

    /// kube-apiserver's validation of a create (`old` None) or an update: object metadata, the
    /// kind's own rules (Secrets and ConfigMaps, a Deployment's pod template), then the CRD's
    /// schema.
    fn validate(
        &self,
        rt: &ResourceType,
        name: &str,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        crate::meta::validate_object_meta(rt, object, old.is_none(), &mut causes);
        if let Some(old) = old
            && rt.group.is_empty()
            && matches!(rt.kind.as_str(), "Secret" | "ConfigMap")
        {
            crate::meta::validate_immutable(&rt.kind, old, object, &mut causes);
        }
        if rt.group.is_empty()
            && rt.kind == "Secret"
            && let Some(data) = object.get("data").and_then(Value::as_object)
        {
            for (k, v) in data {
                let ok = v.as_str().is_some_and(|s| crate::b64_decode(s).is_some());
                if !ok {
                    causes.push((
                        format!("data[{k}]"),
                        "Invalid value: illegal base64 data".into(),
                    ));
                }
            }
        }
        if rt.group.is_empty() && matches!(rt.kind.as_str(), "Secret" | "ConfigMap") {
            crate::meta::validate_data_keys(object, &rt.kind, &mut causes);
        }
        if crate::types::is_workload(rt) {
            crate::meta::validate_template_meta(
                &object["spec"]["template"],
                "spec.template.metadata",
                &mut causes,
            );
            validate_update_strategy(&rt.kind, &object["spec"], &mut causes);
        }
        if let Some(validator) = &rt.validator {
            causes.extend(validator.validate(object));
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&rt.group, &rt.kind, name, causes))
        }
    }

    /// The NamespaceLifecycle admission plugin: nothing new in a namespace being deleted.
    fn admit_create(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<(), ApiError> {
        if !rt.namespaced || !self.terminating.contains(ns) {
            return Ok(());
        }
        let mut e = ApiError::forbidden(
            &rt.group,
            &rt.plural,
            name,
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        );
        e.details["causes"] = json!([{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {ns} is being terminated"),
            "field": "metadata.namespace",
        }]);
        Err(e)
    }

    pub fn create(&mut self, w: &Write, mut object: Value) -> Result<Value, ApiError> {
        let rt = w.rt;
        if !object.is_object() {
            return Err(ApiError::bad_request("the body must be an object"));
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        // Admission sees the name the client sent (none for a generated one).
        self.admit_create(rt, w.namespace, &name)?;
        // `rest.BeforeCreate`: a generated name is the prefix (cut to 58 characters) and 5
        // random ones; it is validated as any name.
        let name = match object["metadata"]["generateName"].as_str() {
            Some(prefix) if name.is_empty() && !prefix.is_empty() => {
                let key_of = |n: &str| Self::key(rt, w.namespace, n);
                loop {
                    self.name_counter += 1;
                    let candidate = crate::meta::generated_name(prefix, self.name_counter);
                    if !self.objects.contains_key(&key_of(&candidate)) {
                        break candidate;
                    }
                }
            }
            _ => name,
        };
        let key = Self::key(rt, w.namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        if rt.status_subresource {
            // Status is not settable on create when the status subresource is enabled.
            object.as_object_mut().unwrap().remove("status");
        }
        if is_secret(rt) {
            crate::meta::normalize_secret(&mut object);
        }
        if is_namespace(rt) {
            // The namespace strategy's PrepareForCreate: the `kubernetes` finalizer the namespace
            // controller removes once the namespace is empty, and phase Active.
            object["spec"]["finalizers"] = json!(["kubernetes"]);
            object["status"] = json!({"phase": "Active"});
        }
        self.uid_counter += 1;
        let meta = object["metadata"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut meta = Value::Object(meta);
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(w.namespace);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid_counter));
        meta["creationTimestamp"] = json!(now_rfc3339());
        if rt.tracks_generation {
            meta["generation"] = json!(1);
        }
        object["metadata"] = meta;
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        if crate::types::is_workload(rt) {
            decode_workload(&rt.kind, &object)?;
            default_workload(&rt.kind, &mut object);
        }
        if is_pod(rt) {
            // A new pod is Pending until a kubelet runs it (the pod strategy's PrepareForCreate).
            object["status"] = json!({"phase": "Pending"});
        }
        self.validate(rt, &name, &object, None)?;
        self.warnings
            .extend(crate::meta::finalizer_warnings(rt, &object, None));
        let mut ownership = Ownership::default();
        ownership.take(
            ManagerKey {
                manager: w.manager.to_string(),
                apply: false,
                subresource: String::new(),
            },
            fields::leaf_paths(&object, Schema::of(rt)),
        );
        self.store_new(rt, key, object, ownership)
    }

    fn store_new(
        &mut self,
        rt: &ResourceType,
        key: ObjKey,
        mut object: Value,
        ownership: Ownership,
    ) -> Result<Value, ApiError> {
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let now = now_rfc3339();
        let mut ownership = ownership;
        ownership.touch_all(&now);
        object["metadata"]["managedFields"] = ownership.to_managed_fields(&rt.api_version(), &now);
        if rt.kind == "CustomResourceDefinition"
            && let Some(new_type) = ResourceType::from_crd(&object)
        {
            self.add_type(new_type);
        }
        self.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                ownership,
            },
        );
        self.emit(key.0, "ADDED", object.clone(), None);
        Ok(object)
    }

    /// Replaces the stored object by `mutate(current)`, applying the apiserver's rules for the
    /// subresource, resourceVersion preconditions, generation and finalizers.
    pub fn update(
        &mut self,
        w: &Write,
        precondition_rv: Option<String>,
        mutate: impl FnOnce(&Value, &mut Ownership) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let rt = w.rt;
        let key = Self::key(rt, w.namespace, w.name);
        let stored = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, w.name))?;
        let current = stored.object.clone();
        let mut ownership = stored.ownership.clone();
        let owners_before = stored.ownership.managers.clone();
        if let Some(rv) = precondition_rv.filter(|rv| !rv.is_empty())
            && current["metadata"]["resourceVersion"].as_str() != Some(rv.as_str())
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, w.name));
        }
        let proposed = mutate(&current, &mut ownership)?;
        let status_write = w.subresource == "status";
        let mut next;
        if w.subresource == "finalize" {
            // `namespaces/finalize`: only the namespace's spec.finalizers changes.
            next = current.clone();
            next["spec"]["finalizers"] = proposed["spec"]["finalizers"].clone();
        } else if status_write {
            // Only status changes through the status subresource.
            next = current.clone();
            match proposed.get("status") {
                Some(status) => next["status"] = status.clone(),
                None => {
                    next.as_object_mut().unwrap().remove("status");
                }
            }
        } else {
            next = Self::main_resource_write(rt, w.name, &current, proposed)?;
        }
        if crate::types::is_workload(rt) {
            decode_workload(&rt.kind, &next)?;
            default_workload(&rt.kind, &mut next);
        }
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        next["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
        if next == current && ownership.managers == owners_before {
            // A no-op write does not bump resourceVersion or send a watch event; one that makes
            // a manager co-own a field changes managedFields, and is written.
            return Ok(current);
        }
        self.validate(rt, w.name, &next, Some(&current))?;
        self.warnings
            .extend(crate::meta::finalizer_warnings(rt, &next, Some(&current)));
        let rv = self.next_rv();
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        let now = now_rfc3339();
        ownership.touch(w.manager, w.subresource, &now);
        next["metadata"]["managedFields"] = ownership.to_managed_fields(&rt.api_version(), &now);
        Ok(self.commit_update(rt, key, current, next, ownership))
    }

    /// The object a write to the main resource (not `status` or `finalize`) leaves: `proposed`
    /// with the status (when it is a subresource), server-owned metadata and a Namespace's
    /// spec.finalizers kept from `current`, and the generation bumped when the spec changed.
    /// Fails when it adds finalizers to an object being deleted.
    fn main_resource_write(
        rt: &ResourceType,
        name: &str,
        current: &Value,
        mut proposed: Value,
    ) -> Result<Value, ApiError> {
        if rt.status_subresource {
            match current.get("status") {
                Some(s) => proposed["status"] = s.clone(),
                None => {
                    proposed.as_object_mut().unwrap().remove("status");
                }
            }
        }
        keep_server_metadata(current, &mut proposed);
        if current["metadata"].get("deletionTimestamp").is_some() {
            forbid_new_finalizers(rt, name, current, &proposed)?;
        }
        if is_secret(rt) {
            crate::meta::normalize_secret(&mut proposed);
        }
        if is_namespace(rt) {
            // PrepareForUpdate: spec.finalizers changes only through namespaces/finalize.
            match current["spec"].get("finalizers") {
                Some(f) => proposed["spec"]["finalizers"] = f.clone(),
                None => {
                    if let Some(spec) = proposed["spec"].as_object_mut() {
                        spec.remove("finalizers");
                    }
                }
            }
        }
        proposed["apiVersion"] = json!(rt.api_version());
        proposed["kind"] = json!(rt.kind);
        if rt.tracks_generation && spec_changed(current, &proposed) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            proposed["metadata"]["generation"] = json!(generation + 1);
        }
        Ok(proposed)
    }

    /// Stores `next` (an update of `current`, resourceVersion and managedFields already set) and
    /// sends its watch event, or deletes it when it is being deleted and nothing holds it any
    /// more.
    fn commit_update(
        &mut self,
        rt: &ResourceType,
        key: ObjKey,
        current: Value,
        next: Value,
        ownership: Ownership,
    ) -> Value {
        // `ShouldDeleteDuringUpdate`; a Namespace's (`ShouldDeleteNamespaceDuringUpdate`) also
        // waits for its spec.finalizers.
        let spec_finalized = !is_namespace(rt)
            || next["spec"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        if next["metadata"].get("deletionTimestamp").is_some()
            && finalizers(&next).is_empty()
            && spec_finalized
        {
            self.objects.remove(&key);
            self.emit(key.0.clone(), "DELETED", next.clone(), Some(current));
            self.collect_dependents(&next);
            return next;
        }
        self.objects.insert(
            key.clone(),
            Stored {
                object: next.clone(),
                ownership,
            },
        );
        self.emit(key.0, "MODIFIED", next.clone(), Some(current));
        next
    }

    /// Server-side apply of `applied` by `w.manager`.
    pub fn apply(&mut self, w: &Write, applied: Value, force: bool) -> Result<Value, ApiError> {
        let rt = w.rt;
        let manager_key = ManagerKey {
            manager: w.manager.to_string(),
            apply: true,
            subresource: w.subresource.to_string(),
        };
        let key = Self::key(rt, w.namespace, w.name);
        let schema = Schema::of(rt);
        if let Some(problem) = fields::unkeyed_item(&applied, schema, "") {
            return Err(ApiError::bad_request(format!(
                "failed to create typed patch object ({}, Kind={}): {problem}",
                rt.api_version(),
                rt.kind
            )));
        }
        // What the write can change: the status through `status`, everything else otherwise.
        let subresource = w.subresource;
        let status_apart = rt.status_subresource;
        let owned_here = move |p: &fields::FieldPath| {
            if subresource == "status" {
                fields::under(p, "status")
            } else {
                !(status_apart && fields::under(p, "status"))
            }
        };
        let mut applied_paths = fields::leaf_paths(&applied, schema);
        applied_paths.retain(owned_here);
        if !self.objects.contains_key(&key) {
            if w.subresource == "status" {
                return Err(ApiError::not_found(&rt.group, &rt.plural, w.name));
            }
            let mut object = applied.clone();
            object["metadata"]["name"] = json!(w.name);
            let created = self.create(w, object)?;
            // Ownership belongs to the applier as an Apply operation.
            let stored = self
                .objects
                .get_mut(&Self::key(rt, w.namespace, w.name))
                .unwrap();
            stored.ownership = Ownership::default();
            stored.ownership.take(manager_key, applied_paths);
            let now = now_rfc3339();
            stored.ownership.touch_all(&now);
            let managed = stored.ownership.to_managed_fields(&rt.api_version(), &now);
            stored.object["metadata"]["managedFields"] = managed.clone();
            let mut created = created;
            created["metadata"]["managedFields"] = managed;
            return Ok(created);
        }
        let precondition = applied["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        let kind = rt.kind.clone();
        let name = w.name.to_string();
        self.update(w, precondition, move |current, ownership| {
            let me = &manager_key.manager;
            let conflicts = ownership.conflicts(me, &applied_paths, current, &applied, schema);
            if !conflicts.is_empty() && !force {
                let fields: Vec<(String, String)> = conflicts
                    .into_iter()
                    .map(|(m, p)| (m, fields::dotted(&p)))
                    .collect();
                return Err(ApiError::apply_conflict(&kind, &name, &fields));
            }
            // Shared: a field applied with the value it has, or an item that is already there.
            let shared: BTreeSet<fields::FieldPath> = (applied_paths.iter())
                .filter(|p| match fields::get(current, p, schema) {
                    Some(_) if fields::is_item(p) => true,
                    have => have.is_some() && have == fields::get(&applied, p, schema),
                })
                .cloned()
                .collect();
            let previous = ownership.replace_applied(manager_key, applied_paths.clone(), &shared);
            let mut next = current.clone();
            // What the applier stopped applying goes unless another manager owns it. An item
            // of a list goes once nobody owns the item itself, with whatever is in it (others'
            // fields included, as structured-merge-diff removes it); fields go before the items
            // holding them.
            let dropped: Vec<&fields::FieldPath> = previous.difference(&applied_paths).collect();
            for dropped in dropped.into_iter().rev() {
                let kept = ownership.owned_by_anyone(dropped)
                    || (!fields::is_item(dropped) && ownership.owns_within(dropped));
                if !kept {
                    fields::remove(&mut next, dropped, schema);
                }
            }
            ownership.forget(&fields::removed_paths(current, &next, schema));
            let mut applied = applied;
            if let Some(m) = applied["metadata"].as_object_mut() {
                m.remove("resourceVersion");
                m.remove("managedFields");
            }
            fields::merge_applied(&mut next, &applied, schema);
            Ok(next)
        })
    }

    /// Deletes as kube-apiserver does: an object with finalizers is only marked; a scheduled pod
    /// is deleted gracefully (`grace_seconds`, else its `spec.terminationGracePeriodSeconds`, else
    /// `default_pod_grace`): it is marked with `deletionTimestamp` (when its grace ends) and
    /// `deletionGracePeriodSeconds`, and its kubelet removes it once its containers stopped.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        precondition_rv: Option<String>,
        precondition_uid: Option<String>,
        grace_seconds: Option<i64>,
    ) -> Result<Value, ApiError> {
        if is_namespace(rt) && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(
                &rt.group,
                &rt.plural,
                name,
                "this namespace may not be deleted",
            ));
        }
        let key = Self::key(rt, ns, name);
        let stored = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let current = stored.object.clone();
        if precondition_rv
            .is_some_and(|rv| current["metadata"]["resourceVersion"].as_str() != Some(&rv))
            || precondition_uid.is_some_and(|uid| current["metadata"]["uid"].as_str() != Some(&uid))
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        if is_namespace(rt) {
            // The namespace REST's Delete: the first delete sets deletionTimestamp and phase
            // Terminating (the namespace controller then empties it); the Namespace goes only once
            // its spec.finalizers are gone.
            if current["metadata"].get("deletionTimestamp").is_none() {
                let mut next = current.clone();
                next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                next["status"]["phase"] = json!("Terminating");
                let rv = self.next_rv();
                next["metadata"]["resourceVersion"] = json!(rv.to_string());
                self.objects.get_mut(&key).unwrap().object = next.clone();
                self.terminating.insert(name.to_string());
                self.emit(key.0, "MODIFIED", next.clone(), Some(current));
                return Ok(next);
            }
            if current["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                return Ok(current);
            }
        }
        if is_pod(rt) {
            let grace = pod_grace(&current, grace_seconds, self.default_pod_grace);
            if !grace.is_zero() {
                return Ok(self.mark_pod_deleted(key, current, grace));
            }
        }
        if !finalizers(&current).is_empty() {
            if current["metadata"].get("deletionTimestamp").is_some() {
                return Ok(current);
            }
            let mut next = current.clone();
            next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let rv = self.next_rv();
            next["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.objects.get_mut(&key).unwrap().object = next.clone();
            self.emit(key.0, "MODIFIED", next.clone(), Some(current));
            return Ok(next);
        }
        self.objects.remove(&key);
        let mut gone = current.clone();
        let rv = self.next_rv();
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(key.0, "DELETED", gone.clone(), Some(current));
        self.collect_dependents(&gone);
        Ok(gone)
    }

    /// Graceful deletion of a pod (`rest.BeforeDelete` with the pod strategy): the first delete
    /// sets `deletionTimestamp` to when the grace period ends; a later one may only shorten it.
    fn mark_pod_deleted(&mut self, key: ObjKey, current: Value, grace: Duration) -> Value {
        let pod = (key.1.clone(), key.2.clone());
        let deadline = Instant::now() + grace;
        if current["metadata"].get("deletionTimestamp").is_some()
            && self.pod_deadlines.get(&pod).is_none_or(|d| *d <= deadline)
        {
            return current;
        }
        // The API reports whole seconds; the simulated kubelet keeps the exact instant.
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds as i64);
        let mut next = current.clone();
        next["metadata"]["deletionTimestamp"] =
            json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        next["metadata"]["deletionGracePeriodSeconds"] = json!(seconds);
        let rv = self.next_rv();
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.get_mut(&key).unwrap().object = next.clone();
        self.pod_deadlines.insert(pod, deadline);
        self.emit(key.0, "MODIFIED", next.clone(), Some(current));
        next
    }

    /// Background cascading deletion: dependents whose ownerReferences name the deleted uid.
    fn collect_dependents(&mut self, owner: &Value) {
        let Some(uid) = owner["metadata"]["uid"].as_str().map(str::to_string) else {
            return;
        };
        if !self.owner_uids.contains_key(&uid) {
            return;
        }
        let dependents: Vec<(ResourceType, String, String)> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                s.object["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str()))
                    })
            })
            .filter_map(|((res, ns, name), _)| {
                Some((self.types.get(res)?.clone(), ns.clone(), name.clone()))
            })
            .collect();
        for (rt, ns, name) in dependents {
            let _ = self.delete(&rt, &ns, &name, None, None, None);
        }
    }

    /// Writes by the simulated controllers (no ownership, no preconditions).
    pub fn controller_write_status(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: Value,
    ) {
        let w = Write {
            rt,
            namespace: ns,
            name,
            subresource: "status",
            manager: "kube-controller-manager",
        };
        // A status write takes only the proposed object's status.
        let _ = self.update(&w, None, |_, _| Ok(json!({ "status": status })));
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a deleted pod may take to stop (the pod strategy's `CheckGracefulDelete`): the
/// request's grace period, else the pod's own; zero for a pod never scheduled or already finished.
fn pod_grace(pod: &Value, requested: Option<i64>, default: Duration) -> Duration {
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        return Duration::ZERO;
    }
    match requested.or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64()) {
        // A negative grace period counts as one second on the delete path.
        Some(seconds) if seconds < 0 => Duration::from_secs(1),
        Some(seconds) => Duration::from_secs(seconds as u64),
        None => default,
    }
}

/// Server-owned metadata cannot be changed by clients: `proposed` gets `current`'s (or none
/// where `current` has none).
fn keep_server_metadata(current: &Value, proposed: &mut Value) {
    for field in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
    ] {
        match current["metadata"].get(field) {
            Some(v) => proposed["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = proposed["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
}

/// An object being deleted (`current`) takes no new finalizers: 422 naming those `proposed`
/// adds.
fn forbid_new_finalizers(
    rt: &ResourceType,
    name: &str,
    current: &Value,
    proposed: &Value,
) -> Result<(), ApiError> {
    let before = finalizers(current);
    let mut extra: Vec<String> = finalizers(proposed)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    extra.sort();
    extra.dedup();
    if !extra.is_empty() {
        return Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            name,
            vec![crate::meta::forbidden(
                "metadata.finalizers",
                &format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers {}",
                    crate::meta::go_string_slice(&extra)
                ),
            )],
        ));
    }
    Ok(())
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Generation moves on any change outside metadata and status.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
        m
    };
    strip(old) != strip(new)
}

/// What decoding into the apps/v1 Go types refuses (400): a spec, strategy or rolling update
/// that is not an object.
fn decode_workload(kind: &str, object: &Value) -> Result<(), ApiError> {
    let strategy = if kind == "Deployment" {
        "strategy"
    } else {
        "updateStrategy"
    };
    let spec = &object["spec"];
    let fields = [
        ("spec", spec),
        (strategy, &spec[strategy]),
        ("rollingUpdate", &spec[strategy]["rollingUpdate"]),
    ];
    for (field, value) in fields {
        if !(value.is_null() || value.is_object()) {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go struct field {kind}Spec.{field} of type object",
                json_type(value)
            )));
        }
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        _ => "object",
    }
}

/// `ValidateStatefulSetSpec` and `ValidateDaemonSetUpdateStrategy` on the strategy, after
/// defaulting: a known type, and `rollingUpdate` only with (for a DaemonSet, always with)
/// `RollingUpdate`.
fn validate_update_strategy(kind: &str, spec: &Value, causes: &mut Vec<(String, String)>) {
    if !matches!(kind, "StatefulSet" | "DaemonSet") {
        return;
    }
    let strategy = &spec["updateStrategy"];
    let rolling_update = !strategy["rollingUpdate"].is_null();
    match strategy["type"].as_str() {
        Some("RollingUpdate") if kind == "DaemonSet" && !rolling_update => causes.push((
            "spec.updateStrategy.rollingUpdate".into(),
            "Required value".into(),
        )),
        Some("RollingUpdate") => {
            if strategy["rollingUpdate"]["partition"]
                .as_i64()
                .is_some_and(|p| p < 0)
            {
                causes.push((
                    "spec.updateStrategy.rollingUpdate.partition".into(),
                    "Invalid value: must be greater than or equal to 0".into(),
                ));
            }
        }
        Some("OnDelete") if kind == "StatefulSet" && rolling_update => causes.push((
            "spec.updateStrategy.rollingUpdate".into(),
            "Invalid value: only allowed for updateStrategy 'RollingUpdate'".into(),
        )),
        Some("OnDelete") => {}
        Some(other) => causes.push((
            "spec.updateStrategy.type".into(),
            format!(
                "Unsupported value: \"{other}\": supported values: \"OnDelete\", \"RollingUpdate\""
            ),
        )),
        None => causes.push(("spec.updateStrategy".into(), "Required value".into())),
    }
}

/// The apps/v1 defaults the operator reads back.
/// kube-apiserver's defaults (`pkg/apis/apps/v1/defaults.go`) for the fields the operator or
/// the simulated controllers read.
fn default_workload(kind: &str, object: &mut Value) {
    match kind {
        "Deployment" => default_deployment(object),
        "StatefulSet" => default_stateful_set(object),
        "DaemonSet" => default_daemon_set(object),
        _ => {}
    }
}

fn set_if_absent(object: &mut Value, field: &str, value: Value) {
    if object.get(field).is_none_or(Value::is_null) {
        object[field] = value;
    }
}

/// `SetDefaults_StatefulSet`: only an unset strategy type becomes RollingUpdate with a
/// `rollingUpdate`; an explicit `type: RollingUpdate` keeps `rollingUpdate` absent, and a present
/// `rollingUpdate` gets `partition: 0`.
fn default_stateful_set(object: &mut Value) {
    let spec = &mut object["spec"];
    set_if_absent(spec, "replicas", json!(1));
    set_if_absent(spec, "podManagementPolicy", json!("OrderedReady"));
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    set_if_absent(spec, "updateStrategy", json!({}));
    let strategy = &mut spec["updateStrategy"];
    if strategy.get("type").is_none_or(|t| t.is_null() || t == "") {
        strategy["type"] = json!("RollingUpdate");
        set_if_absent(strategy, "rollingUpdate", json!({}));
    }
    if strategy["type"] == "RollingUpdate"
        && strategy.get("rollingUpdate").is_some_and(|r| !r.is_null())
    {
        set_if_absent(&mut strategy["rollingUpdate"], "partition", json!(0));
    }
}

/// `SetDefaults_DaemonSet`: RollingUpdate with `maxUnavailable: 1`, `maxSurge: 0`.
fn default_daemon_set(object: &mut Value) {
    let spec = &mut object["spec"];
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    set_if_absent(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
    let strategy = &mut spec["updateStrategy"];
    set_if_absent(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        set_if_absent(strategy, "rollingUpdate", json!({}));
        set_if_absent(&mut strategy["rollingUpdate"], "maxUnavailable", json!(1));
        set_if_absent(&mut strategy["rollingUpdate"], "maxSurge", json!(0));
    }
}

fn default_deployment(object: &mut Value) {
    let spec = &mut object["spec"];
    if spec.get("replicas").is_none_or(Value::is_null) {
        spec["replicas"] = json!(1);
    }
    if spec
        .get("progressDeadlineSeconds")
        .is_none_or(Value::is_null)
    {
        spec["progressDeadlineSeconds"] = json!(600);
    }
    if spec.get("revisionHistoryLimit").is_none_or(Value::is_null) {
        spec["revisionHistoryLimit"] = json!(10);
    }
}
