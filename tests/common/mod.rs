//! Shared harness: a real valkey-server on a free loopback port, the kube-sim API stand-in, the
//! real controller against both, and the Sirius fixtures.
// The benches include this harness too and use less of it than the tests.
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod process;
pub mod prometheus;
pub mod sirius;
pub mod sirius_api;

use apikey_rotator::crd::{ApiKeyRotation, crd_yaml};
pub use apikey_rotator::crd::{Phase, Step};
use apikey_rotator::key::RawKey;
pub use apikey_rotator::rotation::Reason;
pub use cluster::*;
use kube::Client;
use kube_sim::{Sim, SimOptions};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const NS: &str = "sirius";

/// A valkey-server of our own (kube-sim starts it), with the commands the tests use.
pub struct Valkey {
    server: kube_sim::valkey::ValkeyServer,
    pub port: u16,
    /// For a TLS-only server: what the test's own connections trust and present.
    tls: Option<redis::TlsCertificates>,
}

impl Valkey {
    pub fn start() -> Self {
        let server = kube_sim::valkey::ValkeyServer::start()
            .expect("valkey-server must be installed (scripts/ensure-valkey.sh)");
        let port = server.port;
        Self {
            server,
            port,
            tls: None,
        }
    }

    /// A TLS-only server (see `ValkeyServer::start_tls`); the test connects with `client`.
    pub fn start_tls(
        cert_dir: &std::path::Path,
        auth_clients: bool,
        client: redis::TlsCertificates,
    ) -> Self {
        let server = kube_sim::valkey::ValkeyServer::start_tls(cert_dir, auth_clients)
            .expect("valkey-server with TLS must be installed (scripts/ensure-valkey.sh)");
        let port = server.port;
        Self {
            server,
            port,
            tls: Some(client),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// An ACL user that may do anything, with this password only (any earlier one removed).
    pub fn set_user_password(&self, user: &str, password: &str) {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("on")
            .arg("resetpass")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .exec(&mut self.conn())
            .unwrap();
    }

    /// Kills the server (its data, kept only in memory, is lost).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts an empty server on the same port again.
    pub fn restart(&mut self) {
        self.server.restart().unwrap();
    }

    pub fn conn(&self) -> redis::Connection {
        match &self.tls {
            None => redis::Client::open(self.url()),
            Some(tls) => redis::Client::build_with_tls(self.url(), tls.clone()),
        }
        .unwrap()
        .get_connection()
        .unwrap()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query(&mut self.conn()).unwrap()
    }

    pub fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(&mut self.conn())
            .unwrap()
            == 1
    }

    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut self.conn()).unwrap();
        k.sort();
        k
    }

    /// Every key and value in the store, for leak checks.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut conn = self.conn();
        for k in self.keys() {
            let t: String = redis::cmd("TYPE").arg(&k).query(&mut conn).unwrap();
            let v: String = match t.as_str() {
                "string" => redis::cmd("GET").arg(&k).query(&mut conn).unwrap(),
                "hash" => {
                    let h: Vec<String> = redis::cmd("HGETALL").arg(&k).query(&mut conn).unwrap();
                    h.join("\n")
                }
                other => format!("<{other}>"),
            };
            out.push_str(&format!("{k} = {v}\n"));
        }
        out
    }

    /// Valkey hangs (SIGSTOP) with its data kept; `resume` thaws it.
    pub fn pause(&self) {
        self.server.pause();
    }

    pub fn resume(&self) {
        self.server.resume();
    }

    /// (client id, user) of the connections that follow changes (client-side tracking is on).
    pub fn change_feeds(&self) -> Vec<(String, String)> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.conn())
            .unwrap();
        let field = |client: &str, name: &str| {
            client
                .split(' ')
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_default()
                .to_string()
        };
        list.lines()
            .filter(|client| field(client, "flags=").contains('t'))
            .map(|client| (field(client, "id="), field(client, "user=")))
            .collect()
    }

    pub fn flushall(&self) {
        let _: () = redis::cmd("FLUSHALL").query(&mut self.conn()).unwrap();
    }

    pub fn set(&self, key: &str, value: &str) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut self.conn())
            .unwrap();
    }

    pub fn del(&self, key: &str) {
        let _: i64 = redis::cmd("DEL").arg(key).query(&mut self.conn()).unwrap();
    }
}

pub async fn start_sim() -> Sim {
    start_sim_with(SimOptions::default()).await
}

pub async fn start_sim_with(options: SimOptions) -> Sim {
    let sim = Sim::start(options).await.unwrap();
    let crd: Value = serde_yaml::from_str(crd_yaml().split("---\n").nth(1).unwrap()).unwrap();
    sim.install_crd(crd).unwrap();
    sim
}

pub fn client_for(sim: &Sim) -> Client {
    let config = kube::Config::new(sim.url().parse().unwrap());
    Client::try_from(config).unwrap()
}

/// The real controller, in this process, against the stand-in. Abort the handle to "kill" it.
pub fn spawn_operator(sim: &Sim) -> tokio::task::JoinHandle<()> {
    spawn_operator_with_resync(sim, apikey_rotator::reconciler::DEFAULT_RESYNC)
}

pub fn spawn_operator_with_resync(sim: &Sim, resync: Duration) -> tokio::task::JoinHandle<()> {
    spawn_operator_with(sim, resync, Default::default())
}

/// The operator with its own clock (set it to run ahead of or behind the stand-in's).
pub fn spawn_operator_with(
    sim: &Sim,
    resync: Duration,
    clock: apikey_rotator::clock::Clock,
) -> tokio::task::JoinHandle<()> {
    spawn_operator_with_settings(
        sim,
        apikey_rotator::controller::Settings {
            resync,
            clock,
            ..apikey_rotator::controller::Settings::namespaced(NS)
        },
    )
}

/// The operator with Argo Rollouts as possible targets (`--argo-rollouts`).
pub fn spawn_operator_with_argo(sim: &Sim) -> tokio::task::JoinHandle<()> {
    spawn_operator_with_settings(
        sim,
        apikey_rotator::controller::Settings {
            argo_rollouts: true,
            ..apikey_rotator::controller::Settings::namespaced(NS)
        },
    )
}

/// Installs Argo Rollouts' CRD (`argoproj.io/v1alpha1` `rollouts`, with its status and scale
/// subresources; its schema left open, as Argo's own CRD leaves most of it).
pub fn install_argo_rollouts_crd(sim: &Sim) {
    sim.install_crd(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "rollouts.argoproj.io"},
        "spec": {
            "group": "argoproj.io",
            "names": {"kind": "Rollout", "listKind": "RolloutList", "plural": "rollouts",
                      "singular": "rollout", "shortNames": ["ro"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                                               "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.HPAReplicas"}},
            }],
        },
    }))
    .unwrap();
}

/// A client acting as the ServiceAccount `name` of [`NS`], which a Role of these `rules` (bound
/// to it) authorizes; its token is `<name>-token`. The stand-in authorizes only such clients (the
/// tests' own client is unrestricted), and counts their requests per token.
pub fn client_as_service_account(sim: &Sim, name: &str, rules: Value) -> Client {
    for rbac in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name, "namespace": NS}, "rules": rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}]}),
    ] {
        sim.create_object(rbac).unwrap();
    }
    let token = format!("{name}-token");
    sim.authenticate(&token, kube_sim::User::service_account(NS, name));
    let mut config = kube::Config::new(sim.url().parse().unwrap());
    config.auth_info.token = Some(token.into());
    Client::try_from(config).unwrap()
}

/// The operator with these settings.
pub fn spawn_operator_with_settings(
    sim: &Sim,
    settings: apikey_rotator::controller::Settings,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(apikey_rotator::controller::run(
        client_for(sim),
        settings,
        std::future::pending(),
    ))
}

/// A Sirius Deployment reading the key as env var and as a mounted file from one Secret.
pub fn sirius_deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{
                        "name": name,
                        "image": format!("ghcr.io/siriusscan/{name}:1.1"),
                        "env": [
                            {"name": "SIRIUS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "sirius-api-key", "key": "SIRIUS_API_KEY"}}},
                            {"name": "SIRIUS_API_KEY_FILE", "value": "/run/secrets/sirius_api_key"},
                        ],
                        "volumeMounts": [{"name": "api-key", "mountPath": "/run/secrets/sirius_api_key", "subPath": "SIRIUS_API_KEY", "readOnly": true}],
                    }],
                    "volumes": [{"name": "api-key", "secret": {"secretName": "sirius-api-key"}}],
                },
            },
        },
    })
}

pub fn consumer_secret(key: &RawKey) -> Value {
    use base64::Engine;
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "sirius-api-key", "namespace": NS},
        "type": "Opaque",
        "data": {
            "SIRIUS_API_KEY": base64::engine::general_purpose::STANDARD.encode(key.expose()),
            "OTHER": base64::engine::general_purpose::STANDARD.encode("kept"),
        },
    })
}

pub fn rotation(valkey_url: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "valkey": {"url": valkey_url},
        "validationWindowSeconds": 1,
        "revokeRecheckSeconds": 1,
        "progressDeadlineSeconds": 30,
    });
    json_patch::merge(&mut spec, &extra_spec);
    json!({
        "apiVersion": "keys.siriusscan.io/v1alpha1",
        "kind": "ApiKeyRotation",
        "metadata": {"name": "sirius", "namespace": NS},
        "spec": spec,
    })
}

/// Merge-patches the `spec.updateStrategy` of the apps/v1 workload `plural/name` (a field set to
/// null is removed, as `kubectl patch --type merge` does).
pub fn set_update_strategy(sim: &Sim, plural: &str, name: &str, strategy: Value) {
    sim.merge_patch_object(
        "apps",
        plural,
        NS,
        name,
        json!({"spec": {"updateStrategy": strategy}}),
    )
    .unwrap();
}

/// The three Sirius workloads as three kinds, (kind, name) in step order.
pub const MIXED_KINDS: [(&str, &str); 3] = [
    ("Deployment", "sirius-api"),
    ("DaemonSet", "sirius-ui"),
    ("StatefulSet", "sirius-engine"),
];

/// [`sirius_deployment`] as a workload of `kind` (a DaemonSet runs one pod per node instead of
/// `replicas`).
pub fn sirius_workload(kind: &str, name: &str, replicas: i64) -> Value {
    let mut w = sirius_deployment(name, replicas);
    w["kind"] = json!(kind);
    match kind {
        "StatefulSet" => w["spec"]["serviceName"] = json!(name),
        "DaemonSet" => {
            w["spec"].as_object_mut().unwrap().remove("replicas");
        }
        "Rollout" => {
            w["apiVersion"] = json!("argoproj.io/v1alpha1");
            // Half the pods on the new template, a second's pause, then the rest: what a
            // canary without traffic routing does, and Argo skips for the first update.
            w["spec"]["strategy"] =
                json!({"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": 1}}]}});
        }
        _ => {}
    }
    w
}

/// `spec.targets` naming `kinds` in order.
pub fn targets_json(kinds: &[(&str, &str)]) -> Value {
    let targets: Vec<Value> = (kinds.iter())
        .map(|(kind, name)| json!({"kind": kind, "name": name}))
        .collect();
    json!({ "targets": targets })
}

/// Waits until `count` rollouts (first rollouts, when the workloads were just created) completed.
pub async fn wait_initial_rollouts(sim: &Sim, count: usize) {
    wait_for(Duration::from_secs(10), "initial rollouts", || {
        (sim.rollouts().iter())
            .filter(|r| r.completed_at_ms.is_some())
            .count()
            >= count
    })
    .await;
}

/// Creates the workloads `kinds` and waits until their first rollout completed.
pub async fn deploy_sirius_as(sim: &Sim, replicas: i64, kinds: &[(&str, &str)]) {
    for (kind, name) in kinds {
        sim.create_object(sirius_workload(kind, name, replicas))
            .unwrap();
    }
    wait_initial_rollouts(sim, kinds.len()).await;
}

/// [`install_sirius`] with the workloads `kinds` as the targets.
pub async fn install_sirius_as(
    sim: &Sim,
    valkey_url: &str,
    old: &RawKey,
    replicas: i64,
    kinds: &[(&str, &str)],
    extra: Value,
) {
    sim.create_object(consumer_secret(old)).unwrap();
    deploy_sirius_as(sim, replicas, kinds).await;
    let mut spec = targets_json(kinds);
    json_patch::merge(&mut spec, &extra);
    sim.create_object(rotation(valkey_url, spec)).unwrap();
}

/// Creates the three Sirius Deployments and waits until their first rollout completed.
pub async fn deploy_sirius(sim: &Sim, replicas: i64) {
    deploy_sirius_with_deadline(sim, replicas, None).await;
}

/// Same, with the Deployments' own `progressDeadlineSeconds` (to make failures show fast).
pub async fn deploy_sirius_with_deadline(sim: &Sim, replicas: i64, deadline_seconds: Option<u32>) {
    for name in ["sirius-api", "sirius-ui", "sirius-engine"] {
        let mut d = sirius_deployment(name, replicas);
        if let Some(seconds) = deadline_seconds {
            d["spec"]["progressDeadlineSeconds"] = json!(seconds);
        }
        sim.create_object(d).unwrap();
    }
    wait_initial_rollouts(sim, 3).await;
}

/// The usual set-up: the consumers' Secret holding `old`, the three Deployments rolled out, and an
/// ApiKeyRotation (with `extra` merged into its spec, and a trigger token if given).
pub async fn install_sirius(
    sim: &Sim,
    valkey_url: &str,
    old: &RawKey,
    replicas: i64,
    trigger: Option<&str>,
    extra: Value,
) {
    sim.create_object(consumer_secret(old)).unwrap();
    deploy_sirius(sim, replicas).await;
    let mut manifest = rotation(valkey_url, extra);
    if let Some(t) = trigger {
        manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": t});
    }
    sim.create_object(manifest).unwrap();
}

pub async fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Waits until `revision` rotations finished and the last one said so (`RotationSucceeded`).
pub async fn wait_revision(sim: &Sim, revision: u64) {
    wait_for(
        Duration::from_secs(45),
        &format!("rotation {revision} to finish"),
        || {
            let status = akr_status(sim);
            status["revision"] == json!(revision)
                && status["phase"] == "Ready"
                && has_event(sim, Reason::RotationSucceeded)
        },
    )
    .await;
}

/// The ApiKeyRotation's condition of this type (Null when absent).
pub fn condition(sim: &Sim, type_: &str) -> Value {
    akr_status(sim)["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// The reason of `Degraded=True`, if it is.
pub fn degraded_reason(sim: &Sim) -> Option<String> {
    let c = condition(sim, "Degraded");
    (c["status"] == "True").then(|| c["reason"].as_str().unwrap_or("").to_string())
}

pub async fn wait_degraded(sim: &Sim, reason: &str) {
    wait_for(Duration::from_secs(30), reason, || {
        degraded_reason(sim).as_deref() == Some(reason)
    })
    .await;
}

/// The first Event with this reason.
pub fn event(sim: &Sim, reason: &str) -> Value {
    events(sim)
        .into_iter()
        .find(|e| e["reason"] == reason)
        .unwrap_or_else(|| panic!("no {reason} Event in {:?}", event_reasons(sim)))
}

/// Requests a rotation with a new trigger token (what `apikey-rotator rotate` does).
pub fn request_rotation(sim: &Sim, token: &str) {
    sim.merge_patch_object(
        "keys.siriusscan.io",
        "apikeyrotations",
        NS,
        "sirius",
        json!({"metadata": {"annotations": {"keys.siriusscan.io/rotate": token}}}),
    )
    .unwrap();
}

/// The key id a Deployment's pod template was rolled to (Null when never rolled).
pub fn template_key(sim: &Sim, deployment: &str) -> Value {
    sim.get_object("apps", "deployments", NS, deployment)
        .unwrap()["spec"]["template"]["metadata"]["annotations"]["keys.siriusscan.io/key-id"]
        .clone()
}

pub fn akr_status(sim: &Sim) -> Value {
    sim.get_object("keys.siriusscan.io", "apikeyrotations", NS, "sirius")
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

pub fn akr(sim: &Sim) -> ApiKeyRotation {
    serde_json::from_value(
        sim.get_object("keys.siriusscan.io", "apikeyrotations", NS, "sirius")
            .unwrap(),
    )
    .unwrap()
}

pub fn secret_value(sim: &Sim, name: &str, key: &str) -> Option<String> {
    use base64::Engine;
    let s = sim.get_object("", "secrets", NS, name)?;
    let b = s["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).ok()?).ok()
}

pub fn events(sim: &Sim) -> Vec<Value> {
    sim.list_objects("events.k8s.io", "events", Some(NS))
}

/// Whether an Event with this reason was published.
pub fn has_event(sim: &Sim, reason: Reason) -> bool {
    events(sim).iter().any(|e| e["reason"] == reason.as_str())
}

/// Waits for an Event with this reason.
pub async fn wait_event(sim: &Sim, reason: Reason) {
    let what = format!("a {reason} Event");
    wait_for(Duration::from_secs(30), &what, || has_event(sim, reason)).await;
}

/// A fixed key the tests can name (the consumers' key a test installs Sirius with).
pub fn known_key() -> RawKey {
    RawKey::new("0123456789abcdef".repeat(4))
}

pub fn event_reasons(sim: &Sim) -> Vec<String> {
    events(sim)
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

/// Every key any version of the vault Secret ever held, to count the keys minted.
pub fn watch_vault_keys(
    sim: &Sim,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client_for(sim), NS);
    let keys = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let seen = keys.clone();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=sirius-apikey-vault");
        let mut stream = watcher(secrets, config).applied_objects().boxed();
        while let Some(Ok(secret)) = stream.next().await {
            for (_, v) in secret.data.unwrap_or_default() {
                seen.lock().unwrap().insert(String::from_utf8(v.0).unwrap());
            }
        }
    });
    (task, keys)
}

/// The value at fraction `p` (0..=1) of an ascending `sorted` slice, for the benchmarks' medians
/// and p99s; NaN when there is nothing to rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
