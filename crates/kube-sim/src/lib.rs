//! kube-sim: a stateful Kubernetes API stand-in served over HTTP on loopback, for integration
//! tests and the embedded demo. It keeps kube-apiserver's semantics where the operator depends on
//! them (resourceVersion and 409s, generation and the status subresource, server-side apply with
//! field managers, watches from a resourceVersion, finalizers, 404/422 bodies) and runs a
//! simulator that rolls pods the way the Deployment, StatefulSet and DaemonSet controllers do, and a kubelet
//! that runs them and any pod created through the API, each a Pod object in the store.

mod deploy;
mod discovery;
mod events;
mod fields;
mod http;
mod list_types;
pub mod memory_valkey;
mod meta;
mod namespace;
mod openapi;
mod paging;
mod rbac;
mod schema;
mod selector;
mod status;
mod store;
mod table;
mod types;
pub mod valkey;

use deploy::DeploySim;
pub use deploy::{PodView, RolloutBehavior, RolloutRecord};
use namespace::NamespaceController;
pub use namespace::NamespaceDeletion;
pub use rbac::User;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Store, Write, resource_key};

pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    /// How long a new pod takes to become ready.
    pub pod_ready_after: Duration,
    /// How long a retired or deleted pod keeps running (holding the key it started with), unless
    /// its `spec.terminationGracePeriodSeconds` or the delete request says otherwise.
    pub termination_grace: Duration,
    /// How often the Deployment simulator runs.
    pub tick: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            pod_ready_after: Duration::from_millis(100),
            termination_grace: Duration::from_millis(50),
            tick: Duration::from_millis(10),
        }
    }
}

struct Fault {
    verb: String,
    plural: String,
    remaining: u32,
    code: u16,
}

pub(crate) struct Inner {
    pub store: Mutex<Store>,
    deploy: Mutex<DeploySim>,
    namespaces: Mutex<NamespaceController>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<BTreeMap<(String, String), u64>>,
    /// Bearer tokens whose requests RBAC authorizes, and who they are.
    pub users: Mutex<BTreeMap<String, rbac::User>>,
    user_requests: Mutex<BTreeMap<(String, String, String), u64>>,
    /// The messages of the 403s RBAC answered, in order.
    denials: Mutex<Vec<String>>,
    /// Bumped to end every open watch with an error event (see [`Sim::break_watches`]).
    pub watch_breaks: tokio::sync::watch::Sender<u64>,
}

pub(crate) type Shared = Arc<Inner>;

impl Inner {
    pub fn record_request(&self, verb: &str, plural: &str) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((verb.to_string(), plural.to_string()))
            .or_default() += 1;
    }

    pub fn record_user_request(&self, token: &str, verb: &str, plural: &str) {
        *self
            .user_requests
            .lock()
            .unwrap()
            .entry((token.to_string(), verb.to_string(), plural.to_string()))
            .or_default() += 1;
    }

    /// After a write through the API: the simulated kubelet takes in what happened to pods (a
    /// new pod starts, reading its Secrets as they are now; a deleted one terminates).
    pub fn sync_pods(&self, store: &mut Store) {
        if store.has_touched_pods() {
            self.deploy.lock().unwrap().sync_pods(store);
        }
    }

    pub fn take_fault(&self, verb: &str, plural: &str) -> Option<u16> {
        let mut faults = self.faults.lock().unwrap();
        let fault = faults.iter_mut().find(|f| {
            f.remaining > 0
                && (f.verb == "*" || f.verb == verb)
                && (f.plural == "*" || f.plural == plural)
        })?;
        fault.remaining -= 1;
        Some(fault.code)
    }
}

/// A running stand-in. Dropping it stops the server and the simulator.
pub struct Sim {
    addr: SocketAddr,
    shared: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Sim {
    pub async fn start(options: SimOptions) -> std::io::Result<Self> {
        let mut store = Store::new();
        store.default_pod_grace = options.termination_grace;
        let shared: Shared = Arc::new(Inner {
            store: Mutex::new(store),
            deploy: Mutex::new(DeploySim::new(options.pod_ready_after)),
            namespaces: Mutex::new(NamespaceController::default()),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(BTreeMap::new()),
            users: Mutex::new(BTreeMap::new()),
            user_requests: Mutex::new(BTreeMap::new()),
            denials: Mutex::new(Vec::new()),
            watch_breaks: tokio::sync::watch::Sender::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app_state = shared.clone();
        let app = axum::Router::new().fallback(move |method, uri, headers, body| {
            http::handle(app_state.clone(), method, uri, headers, body)
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let sim_state = shared.clone();
        let tick = options.tick;
        let simulator = tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let mut store = sim_state.store.lock().unwrap();
                sim_state.namespaces.lock().unwrap().tick(&mut store);
                sim_state.deploy.lock().unwrap().tick(&mut store);
            }
        });
        Ok(Self {
            addr,
            shared,
            tasks: vec![server, simulator],
        })
    }

    /// Base URL for a kube client (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points kubectl (or any client) at this cluster, with `namespace`
    /// as its context's default; the stand-in serves plain HTTP and needs no credentials. The
    /// file is written beside `path` (readable by its owner only) and renamed onto it, so a
    /// reader never sees it half written and a symlink at `path` is replaced, not followed.
    pub fn write_kubeconfig(&self, path: &std::path::Path, namespace: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: {}\n\
             contexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: kube-sim\n    namespace: {namespace}\n\
             current-context: kube-sim\nusers:\n- name: kube-sim\n  user: {{}}\n",
            self.url()
        );
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".{}.partial", std::process::id()));
        let partial = std::path::PathBuf::from(partial);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(config.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    }

    /// Registers a CustomResourceDefinition, as `kubectl apply -f crds/` would.
    pub fn install_crd(&self, crd: Value) -> Result<(), String> {
        self.create_object(crd).map(|_| ())
    }

    /// Creates any object directly (test set-up), with the apiserver's validation.
    pub fn create_object(&self, object: Value) -> Result<Value, String> {
        let (rt, ns) = self.type_of(&object)?;
        let mut store = self.shared.store.lock().unwrap();
        let w = Write {
            rt: &rt,
            namespace: &ns,
            name: "",
            subresource: "",
            manager: "kube-sim-test",
        };
        let result = store.create(&w, object).map_err(|e| e.message);
        self.shared.sync_pods(&mut store);
        result
    }

    pub fn get_object(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().unwrap();
        let rt = store.types.get(&resource_key(group, plural))?.clone();
        store.get(&rt, ns, name).ok()
    }

    pub fn list_objects(&self, group: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        match store.types.get(&resource_key(group, plural)).cloned() {
            Some(rt) => store.list(&rt, ns),
            None => Vec::new(),
        }
    }

    /// Deletes an object as a client would (finalizers honoured).
    pub fn delete_object(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Result<(), String> {
        let mut store = self.shared.store.lock().unwrap();
        let rt = store
            .types
            .get(&resource_key(group, plural))
            .cloned()
            .ok_or("unknown resource")?;
        let result = store
            .delete(&rt, ns, name, None, None, None)
            .map(|_| ())
            .map_err(|e| e.message);
        self.shared.sync_pods(&mut store);
        result
    }

    /// Merge-patches an object's status subresource as another client would (`kubectl argo
    /// rollouts abort` and `promote` write a Rollout's status).
    pub fn merge_patch_status(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> Result<Value, String> {
        self.patch_as_test(group, plural, ns, name, "status", patch)
    }

    /// Replaces `path` inside an object as another client would (merge patch semantics).
    pub fn merge_patch_object(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> Result<Value, String> {
        self.patch_as_test(group, plural, ns, name, "", patch)
    }

    fn patch_as_test(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        subresource: &str,
        patch: Value,
    ) -> Result<Value, String> {
        let mut store = self.shared.store.lock().unwrap();
        let rt = store
            .types
            .get(&resource_key(group, plural))
            .cloned()
            .ok_or("unknown resource")?;
        let w = Write {
            rt: &rt,
            namespace: ns,
            name,
            subresource,
            manager: "kube-sim-test",
        };
        let result = store
            .update(&w, None, |current, ownership| {
                let mut next = current.clone();
                json_patch::merge(&mut next, &patch);
                crate::fields::track_update(
                    ownership,
                    crate::list_types::Schema::of(&rt),
                    "kube-sim-test",
                    subresource,
                    current,
                    &next,
                );
                Ok(next)
            })
            .map_err(|e| e.message);
        self.shared.sync_pods(&mut store);
        result
    }

    fn type_of(&self, object: &Value) -> Result<(types::ResourceType, String), String> {
        let api_version = object["apiVersion"].as_str().ok_or("apiVersion missing")?;
        let kind = object["kind"].as_str().ok_or("kind missing")?;
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let store = self.shared.store.lock().unwrap();
        let rt = store
            .types
            .values()
            .find(|t| t.group == group && t.kind == kind)
            .cloned()
            .ok_or_else(|| format!("no resource for {api_version} {kind}"))?;
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        Ok((rt, ns))
    }

    /// How the namespace controller empties a Namespace being deleted (from now on):
    /// [`NamespaceDeletion::Immediate`] by default, [`NamespaceDeletion::Concurrent`] for
    /// kube-controller-manager's order (each resource in its own turn, in no set order; pods
    /// terminate by their grace).
    pub fn set_namespace_deletion(&self, mode: NamespaceDeletion) {
        self.shared.namespaces.lock().unwrap().mode = mode;
    }

    pub fn set_rollout_behavior(&self, ns: &str, deployment: &str, behavior: RolloutBehavior) {
        self.shared
            .deploy
            .lock()
            .unwrap()
            .set_behavior(ns, deployment, behavior);
    }

    /// Whether the `analysis` steps of the Argo Rollout `ns/name` pass (by default they do); a
    /// failing one aborts the update, as Argo does.
    pub fn set_analysis_passes(&self, ns: &str, name: &str, passes: bool) {
        let mut deploy = self.shared.deploy.lock().unwrap();
        deploy.set_analysis_passes(ns, name, passes);
    }

    pub fn set_pod_ready_after(&self, ns: &str, deployment: &str, delay: Duration) {
        self.shared
            .deploy
            .lock()
            .unwrap()
            .set_pod_ready_after(ns, deployment, delay);
    }

    /// The nodes each DaemonSet runs one pod on (one node, `sim-node`, unless set).
    pub fn set_nodes(&self, nodes: &[&str]) {
        let nodes = nodes.iter().map(|n| n.to_string()).collect();
        self.shared.deploy.lock().unwrap().set_nodes(nodes);
    }

    /// The workload's running pods restart by themselves and read their Secrets again.
    pub fn restart_pods(&self, ns: &str, deployment: &str) {
        let store = self.shared.store.lock().unwrap();
        self.shared
            .deploy
            .lock()
            .unwrap()
            .restart_pods(&store, ns, deployment);
    }

    /// A pod's containers finish, as a Job's do: `phase` is `Succeeded` or `Failed`. The Pod
    /// object stays (with that phase, not Ready), and the pod no longer counts in [`Sim::pods`].
    /// Only pods created through the API (not a Deployment's) can finish.
    pub fn set_pod_phase(&self, ns: &str, name: &str, phase: &str) -> Result<(), String> {
        let mut store = self.shared.store.lock().unwrap();
        let mut deploy = self.shared.deploy.lock().unwrap();
        deploy.sync_pods(&mut store);
        deploy.set_pod_phase(&mut store, ns, name, phase)
    }

    /// Every pod that runs on the simulated node or still terminates there (a Deployment's, and
    /// those created through the API; not those that finished), with the Secret values it
    /// started with.
    pub fn pods(&self) -> Vec<PodView> {
        self.shared.deploy.lock().unwrap().pods()
    }

    /// Pods and the store read under one lock, so a check sees one instant.
    pub fn snapshot<T>(&self, f: impl FnOnce(&[PodView]) -> T) -> T {
        let _store = self.shared.store.lock().unwrap();
        let pods = self.shared.deploy.lock().unwrap().pods();
        f(&pods)
    }

    pub fn rollouts(&self) -> Vec<RolloutRecord> {
        self.shared.deploy.lock().unwrap().rollouts.clone()
    }

    /// The next `count` requests matching `verb` (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete` or `*`) on `plural` (or `*`) fail with `code`.
    pub fn inject_faults(&self, verb: &str, plural: &str, count: u32, code: u16) {
        self.shared.faults.lock().unwrap().push(Fault {
            verb: verb.into(),
            plural: plural.into(),
            remaining: count,
            code,
        });
    }

    /// Ends every open watch with an `ERROR` event of code 500 (as a kube-apiserver restarting or
    /// failing mid-watch sends it): a client resumes from the last resourceVersion it saw.
    pub fn break_watches(&self) {
        self.shared.watch_breaks.send_modify(|n| *n += 1);
    }

    /// Drops every injected fault not yet served.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    /// Requests bearing `token` act as `user` and are authorized by RBAC (the Roles, ClusterRoles
    /// and bindings created in the stand-in); requests without a registered token stay
    /// unrestricted.
    pub fn authenticate(&self, token: &str, user: User) {
        self.shared
            .users
            .lock()
            .unwrap()
            .insert(token.to_string(), user);
    }

    /// Requests made with each registered token: (token, verb, resource[/subresource]) → count.
    pub fn user_request_counts(&self) -> BTreeMap<(String, String, String), u64> {
        self.shared.user_requests.lock().unwrap().clone()
    }

    /// What RBAC refused so far (kube-apiserver's 403 messages).
    pub fn denials(&self) -> Vec<String> {
        self.shared.denials.lock().unwrap().clone()
    }

    pub fn request_counts(&self) -> BTreeMap<(String, String), u64> {
        self.shared.requests.lock().unwrap().clone()
    }
}
