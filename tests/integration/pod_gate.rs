//! Revocation waits for proof from the pods: every pod that reads the consumers' Secret (a
//! target's or not, running or terminating) runs the new key. The real controller, the stand-in's
//! Pods and a real Valkey, with the zero-downtime checker counting every pod that reads the Secret.

use crate::common::sirius::{AuthModel, InvariantChecker, checked_sim_options, installed_key};
use crate::common::*;
use apikey_rotator::crd::Condition;
use apikey_rotator::key::RawKey;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const MODEL: AuthModel = AuthModel::RootKeyPlusValkey;

struct Setup {
    sim: Arc<kube_sim::Sim>,
    valkey: Arc<Valkey>,
    old: RawKey,
    checker: InvariantChecker,
    operator: tokio::task::JoinHandle<()>,
}

/// Sirius installed and its key adopted (phase Ready), the checker running; `before` runs
/// after the install, before the operator starts.
async fn ready(extra: Value, before: impl FnOnce(&kube_sim::Sim)) -> Setup {
    ready_with_clock(extra, before, Default::default()).await
}

async fn ready_with_clock(
    extra: Value,
    before: impl FnOnce(&kube_sim::Sim),
    clock: apikey_rotator::clock::Clock,
) -> Setup {
    let valkey = Arc::new(Valkey::start());
    let sim = Arc::new(start_sim_with(checked_sim_options()).await);
    let old = installed_key(MODEL);
    install_sirius(&sim, &valkey.url(), &old, 2, None, extra).await;
    before(&sim);
    let checker = InvariantChecker::start(sim.clone(), valkey.clone(), MODEL);
    let operator = spawn_operator_with(&sim, apikey_rotator::reconciler::DEFAULT_RESYNC, clock);
    wait_for(Duration::from_secs(20), "phase Ready", || {
        status(&sim).phase == Some(Phase::Ready)
    })
    .await;
    Setup {
        sim,
        valkey,
        old,
        checker,
        operator,
    }
}

fn old_record_exists(s: &Setup) -> bool {
    s.valkey.exists(&record_key(&s.old.id()))
}

/// The `Rotating` condition, if there is one.
fn rotating(sim: &kube_sim::Sim) -> Option<Condition> {
    find_condition(sim, "Rotating")
}

/// Waits until the revocation is held for pods that may still hold the old key (`Rotating` says
/// `WaitingForPods`).
async fn wait_held_for_pods(sim: &kube_sim::Sim) {
    wait_for(Duration::from_secs(30), "WaitingForPods", || {
        rotating(sim).is_some_and(|c| c.reason == Reason::WaitingForPods)
    })
    .await;
}

/// Pods (in the namespace) that hold `key` from the consumers' Secret.
fn pods_holding(sim: &kube_sim::Sim, key: &RawKey) -> Vec<String> {
    sim.pods()
        .into_iter()
        .filter(|p| p.namespace == NS)
        .filter(|p| {
            p.secrets.get("sirius-api-key/SIRIUS_API_KEY") == Some(&Some(key.expose().to_string()))
        })
        .map(|p| p.name)
        .collect()
}

/// The old key is revoked while no pod holds it, and the checker saw no refusal.
async fn finishes_without_a_refusal(s: Setup) {
    let mut held_at_revocation = None;
    tokio::time::timeout(Duration::from_secs(60), async {
        while !(status(&s.sim).revision == 1 && has_event(&s.sim, Reason::RotationSucceeded)) {
            let holding = pods_holding(&s.sim, &s.old);
            if !old_record_exists(&s) && held_at_revocation.is_none() {
                held_at_revocation = Some(holding);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the rotation did not finish: {}", akr_status(&s.sim)));
    s.operator.abort();
    let (violations, samples, _) = s.checker.stop();
    assert!(samples > 10);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(
        held_at_revocation,
        Some(vec![]),
        "pods held the old key when it was revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_removed_from_the_spec_mid_rotation_is_still_finished_before_revocation() {
    let s = ready(json!({}), |sim| {
        sim.set_pod_ready_after(NS, "sirius-engine", Duration::from_secs(2));
    })
    .await;
    request_rotation(&s.sim, "go");
    wait_for(Duration::from_secs(30), "the engine rolling", || {
        in_flight(&s.sim).is_some_and(|r| r.step == Step::Roll && r.target_index == 2)
    })
    .await;
    // The user gives up on the engine.
    s.sim
        .merge_patch_object(
            "keys.siriusscan.io",
            "apikeyrotations",
            NS,
            "sirius",
            json!({"spec": {"targets": [{"name": "sirius-api"}, {"name": "sirius-ui"}]}}),
        )
        .unwrap();
    let sim = s.sim.clone();
    finishes_without_a_refusal(s).await;
    if std::env::var("POD_GATE_TRACE").is_ok() {
        for e in events(&sim) {
            eprintln!("{} {} {}", e["eventTime"], e["reason"], e["note"]);
        }
    }
    assert!(
        has_event(&sim, Reason::SpecChangePending),
        "{:?}",
        event_reasons(&sim)
    );
    let new = RawKey::new(secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());
    assert_eq!(template_key(&sim, "sirius-engine"), json!(new.id().0));
}

/// A worker Deployment that reads the Secret but is not a target.
fn worker() -> Value {
    let mut d = sirius_deployment("sirius-worker", 1);
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("example/worker:1");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_reads_the_secret_but_is_no_target_holds_revocation_until_it_restarts() {
    let s = ready(json!({}), |sim| {
        sim.create_object(worker()).unwrap();
    })
    .await;
    request_rotation(&s.sim, "go");
    wait_held_for_pods(&s.sim).await;
    let untracked = event(&s.sim, "UntrackedConsumer");
    let message = untracked["note"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("sirius-worker-") && message.contains("(ReplicaSet/sirius-worker-"),
        "{untracked}"
    );
    let waiting = rotating(&s.sim).unwrap();
    assert!(waiting.message.contains("sirius-worker-"), "{waiting:?}");
    // Held for longer than the validation window (1 s).
    tokio::time::sleep(Duration::from_secs(3)).await; // nothing is revoked while held
    assert!(old_record_exists(&s), "revoked under the worker");
    assert!(in_flight(&s.sim).and_then(|r| r.pods_on_old_key) >= Some(1));
    // kubectl rollout restart deploy/sirius-worker
    s.sim
        .merge_patch_object(
            "apps",
            "deployments",
            NS,
            "sirius-worker",
            json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-12-02T08:00:00Z"}}}}}),
        )
        .unwrap();
    finishes_without_a_refusal(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_untracked_consumers_ignore_the_worker_is_reported_and_left() {
    let s = ready(json!({"untrackedConsumers": "Ignore"}), |sim| {
        sim.create_object(worker()).unwrap();
    })
    .await;
    request_rotation(&s.sim, "go");
    wait_revision(&s.sim, 1).await;
    s.operator.abort();
    let revoked = !old_record_exists(&s);
    let (violations, _, _) = s.checker.stop();
    // The worker was left on the old key, as the user chose, and said so.
    assert!(
        violations.iter().any(|v| v.contains("sirius-worker-")),
        "{violations:?}"
    );
    let untracked = event(&s.sim, "UntrackedConsumer");
    assert!(
        untracked["note"]
            .as_str()
            .unwrap()
            .contains("spec.untrackedConsumers: Ignore"),
        "{untracked}"
    );
    assert!(revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_terminating_longer_than_the_window_delays_revocation_until_it_is_gone() {
    let s = ready(json!({}), |sim| {
        // The engine's old pods take 6 s to terminate, far past the 1 s validation window.
        sim.merge_patch_object(
            "apps",
            "deployments",
            NS,
            "sirius-engine",
            json!({"spec": {"template": {"spec": {"terminationGracePeriodSeconds": 6}}}}),
        )
        .unwrap();
    })
    .await;
    wait_for(
        Duration::from_secs(20),
        "the engine's grace in effect",
        || {
            s.sim
                .pods()
                .iter()
                .filter(|p| p.deployment == "sirius-engine")
                .all(|p| !p.terminating)
        },
    )
    .await;
    request_rotation(&s.sim, "go");
    wait_held_for_pods(&s.sim).await;
    let waiting = rotating(&s.sim).unwrap();
    assert!(waiting.message.contains("sirius-engine-"), "{waiting:?}");
    assert!(
        s.sim
            .pods()
            .iter()
            .any(|p| p.deployment == "sirius-engine" && p.terminating),
        "the old engine pods are still terminating"
    );
    finishes_without_a_refusal(s).await;
}

/// A bare pod named `name` that reads the consumers' Secret.
fn bare_pod(sim: &kube_sim::Sim, name: &str) {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": sirius_deployment("debug-shell", 1)["spec"]["template"]["spec"].clone(),
    });
    pod["spec"]["containers"][0]["image"] = json!("busybox");
    sim.create_object(pod).unwrap();
}

/// A bare pod that reads the consumers' Secret (created before the rotation: on the old key).
fn debug_shell(sim: &kube_sim::Sim) {
    bare_pod(sim, "debug-shell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_pod_reading_the_secret_is_named_and_waited_for_until_it_is_deleted() {
    let s = ready(json!({}), debug_shell).await;
    request_rotation(&s.sim, "go");
    wait_held_for_pods(&s.sim).await;
    let untracked = event(&s.sim, "UntrackedConsumer");
    assert!(
        untracked["note"]
            .as_str()
            .unwrap()
            .contains("debug-shell (no owner)"),
        "{untracked}"
    );
    assert!(old_record_exists(&s));
    s.sim.delete_object("", "pods", NS, "debug-shell").unwrap();
    finishes_without_a_refusal(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_clock_an_hour_behind_the_api_servers_never_takes_an_old_pod_for_a_new_one() {
    // Pods' creation times are the API server's; the switch must be timed by the same clock.
    let clock = apikey_rotator::clock::Clock::default();
    clock.set(jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
    let s = ready_with_clock(json!({}), debug_shell, clock).await;
    request_rotation(&s.sim, "go");
    wait_held_for_pods(&s.sim).await;
    // Well past the validation window of the test set-up: still waiting for the bare pod.
    tokio::time::sleep(Duration::from_secs(3)).await; // nothing is revoked while it runs
    assert_eq!(
        rotating(&s.sim).map(|c| c.reason).as_deref(),
        Some(Reason::WaitingForPods.as_str()),
        "{}",
        akr_status(&s.sim)
    );
    assert!(old_record_exists(&s));
    let switched = in_flight(&s.sim).unwrap().switched_at.unwrap();
    let switched: jiff::Timestamp = switched.parse().unwrap();
    assert!(
        switched > jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5),
        "the switch was timed by the operator's clock: {switched}"
    );
    s.sim.delete_object("", "pods", NS, "debug-shell").unwrap();
    finishes_without_a_refusal(s).await;
}

/// Writes `key` into the consumers' Secret as another manager would (`kubectl edit`).
fn put_key(sim: &kube_sim::Sim, key: &RawKey) {
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.encode(key.expose());
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": value}}),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reverted_and_put_back_while_the_operator_was_down_rolls_every_target_again() {
    let mut s = ready(json!({}), debug_shell).await;
    request_rotation(&s.sim, "go");
    wait_held_for_pods(&s.sim).await;
    s.operator.abort();
    let new = RawKey::new(secret_value(&s.sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());
    // While it is down, someone puts the old key back, the API's containers restart on it, and
    // the new key is put back: the Secret looks as the operator left it. They come in a later
    // second than the switch (the Secret's write times have second precision).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put_key(&s.sim, &s.old);
    s.sim.restart_pods(NS, "sirius-api");
    wait_for(
        Duration::from_secs(10),
        "the API's pods on the old key",
        || {
            pods_holding(&s.sim, &s.old)
                .iter()
                .any(|p| p.starts_with("sirius-api"))
        },
    )
    .await;
    put_key(&s.sim, &new);
    s.sim.delete_object("", "pods", NS, "debug-shell").unwrap();
    s.operator = spawn_operator(&s.sim);
    let sim = s.sim.clone();
    finishes_without_a_refusal(s).await;
    assert!(
        has_event(&sim, Reason::SecretRewritten),
        "{:?}",
        event_reasons(&sim)
    );
    assert_eq!(in_flight(&sim), None);
}

/// The namespace's pods come a page of 500 at a time, as kube-apiserver serves a list with a
/// limit: a bare pod that reads the Secret on the second page (600 other pods sort before it)
/// still holds revocation until it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_on_the_second_page_of_the_namespaces_pods_still_holds_revocation() {
    let before = |sim: &kube_sim::Sim| {
        for i in 0..600 {
            sim.create_object(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("aaa-filler-{i:03}"), "namespace": NS},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }))
            .unwrap();
        }
        bare_pod(sim, "zz-debug-shell");
    };
    let s = ready(json!({}), before).await;
    request_rotation(&s.sim, "go");
    wait_held_for_pods(&s.sim).await;
    let untracked = event(&s.sim, "UntrackedConsumer");
    let note = untracked["note"].as_str().unwrap();
    assert!(note.contains("zz-debug-shell (no owner)"), "{note}");
    assert!(
        note.starts_with("1 pod "),
        "only the one that reads the Secret: {note}"
    );
    assert!(old_record_exists(&s));
    s.sim
        .delete_object("", "pods", NS, "zz-debug-shell")
        .unwrap();
    finishes_without_a_refusal(s).await;
}

/// The binary gives the gate a client of its own for pod lists (a pool whose connections alone
/// grow the read buffers of megabyte pages): every pod list goes through it, none through the
/// client the reconciles share. The lists' client here carries a token of its own, so the
/// stand-in tells the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_lists_pods_through_the_pod_list_client_when_given_one() {
    use apikey_rotator::controller::{PodListClient, Settings};
    let cluster = Cluster::start().await;
    cluster.install(1, Some("first"), json!({})).await;
    let sim = &cluster.sim;
    let rules = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]);
    let pod_list_client = PodListClient(Some(client_as_service_account(sim, "pod-lists", rules)));
    let operator = spawn_operator_with_settings(
        sim,
        Settings {
            pod_list_client,
            ..Settings::namespaced(NS)
        },
    );
    wait_revision(sim, 1).await;
    operator.abort();
    let _ = operator.await; // no list is in flight while the counts are read
    let own = (sim.user_request_counts())
        .get(&("pod-lists-token".into(), "list".into(), "pods".into()))
        .copied()
        .unwrap_or(0);
    let all = (sim.request_counts())
        .get(&("list".into(), "pods".into()))
        .copied()
        .unwrap_or(0);
    assert!(own >= 1, "the gate listed no pods through its client");
    assert_eq!(own, all, "some pod lists went through the shared client");
}
