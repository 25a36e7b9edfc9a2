//! Zero downtime under both Sirius auth models, with and without the controller being killed at
//! every step boundary and in the middle of steps.

use crate::common::sirius::{
    AuthModel, InvariantChecker, SECRET_REF, accepts, checked_sim_options, installed_key,
    record_ids,
};
use crate::common::*;
use apikey_rotator::key::RawKey;
use kube_sim::Sim;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

struct Scenario {
    sim: Arc<Sim>,
    valkey: Arc<Valkey>,
    checker: InvariantChecker,
    old: RawKey,
}

async fn scenario(model: AuthModel) -> Scenario {
    scenario_as(model, &DEPLOYMENTS).await
}

const DEPLOYMENTS: [(&str, &str); 3] = [
    ("Deployment", "sirius-api"),
    ("Deployment", "sirius-ui"),
    ("Deployment", "sirius-engine"),
];

/// The targets `kinds` (in step order), the consumers' Secret holding the install's key and a
/// triggered rotation; the checker samples from before the pods start.
async fn scenario_as(model: AuthModel, kinds: &[(&str, &str)]) -> Scenario {
    let valkey = Arc::new(Valkey::start());
    let sim = Arc::new(start_sim_with(checked_sim_options()).await);
    // The checker also plays the v1.0 API's bootstrap, so it starts before the pods do.
    let checker = InvariantChecker::start(sim.clone(), valkey.clone(), model);
    let old = installed_key(model);
    sim.create_object(consumer_secret(&old)).unwrap();
    sim.set_nodes(&["node-a", "node-b"]);
    if kinds.iter().any(|(kind, _)| *kind == "Rollout") {
        install_argo_rollouts_crd(&sim);
    }
    deploy_sirius_as(&sim, 2, kinds).await;
    if model == AuthModel::RootKeyPlusValkey {
        assert!(record_ids(&valkey).is_empty());
    }
    let mut spec = targets_json(kinds);
    spec["validationWindowSeconds"] = json!(1);
    let mut manifest = rotation(&valkey.url(), spec);
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    Scenario {
        sim,
        valkey,
        checker,
        old,
    }
}

async fn wait_finished(sim: &Sim) {
    wait_for(Duration::from_secs(90), "rotation 1 to finish", || {
        status(sim).revision == 1
    })
    .await;
    // The checker samples for half a second more with the operator still running (the retired
    // pods finish terminating meanwhile): nothing after the finish refuses a request either.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

impl Scenario {
    /// Stops sampling and checks the whole run: no 401 at any sample, exactly the old and the new
    /// key ever held by a pod, and the end state (new key accepted, old key refused).
    fn assert_zero_downtime(self, model: AuthModel) -> RawKey {
        let (violations, samples, keys_seen) = self.checker.stop();
        assert!(samples > 100, "the checker sampled only {samples} times");
        assert!(
            violations.is_empty(),
            "{} 401s under {model:?}, first: {:?}",
            violations.len(),
            violations.first()
        );
        let new = RawKey::new(secret_value(&self.sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());
        assert_eq!(
            keys_seen,
            BTreeSet::from([self.old.expose().to_string(), new.expose().to_string()]),
            "pods saw exactly the old and the new key"
        );
        let records = record_ids(&self.valkey);
        let pods = self.sim.pods();
        assert!(
            pods.iter()
                .all(|p| p.secrets.get(SECRET_REF).cloned().flatten().as_deref()
                    == Some(new.expose()))
        );
        for api in pods.iter().filter(|p| p.deployment == "sirius-api") {
            assert!(accepts(model, api, new.expose(), &records));
            assert!(
                !accepts(model, api, self.old.expose(), &records),
                "the old key must be refused"
            );
        }
        new
    }
}

async fn zero_downtime(model: AuthModel) {
    let s = scenario(model).await;
    let operator = spawn_operator(&s.sim);
    wait_finished(&s.sim).await;
    operator.abort();
    s.assert_zero_downtime(model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_401_window_under_v1_0_valkey_only_auth() {
    zero_downtime(AuthModel::ValkeyOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_401_window_under_v1_1_root_key_auth() {
    zero_downtime(AuthModel::RootKeyPlusValkey).await;
}

/// A Deployment, a DaemonSet (on two nodes) and a StatefulSet as the targets: each rolled only
/// after the previous one completed, with no 401 and the old key refused at the end.
async fn zero_downtime_across_kinds(model: AuthModel) {
    zero_downtime_across(model, &MIXED_KINDS).await;
}

/// Each target rolled only after the previous one completed, no 401, the old key refused at the
/// end (any DaemonSet on two nodes).
async fn zero_downtime_across(model: AuthModel, kinds: &[(&str, &str)]) {
    let s = scenario_as(model, kinds).await;
    let operator = spawn_operator_with_argo(&s.sim);
    wait_finished(&s.sim).await;
    operator.abort();
    let rollouts = s.sim.rollouts();
    let second = |name: &str| {
        (rollouts.iter())
            .find(|r| r.deployment == name && r.revision == 2)
            .unwrap_or_else(|| panic!("{name} was not rolled: {rollouts:?}"))
            .clone()
    };
    for pair in kinds.windows(2) {
        let (before, after) = (second(pair[0].1), second(pair[1].1));
        assert!(
            before.completed_at_ms.unwrap() <= after.template_changed_at_ms,
            "{after:?} was rolled before {before:?} completed"
        );
    }
    let ui = s.sim.pods();
    let ui: Vec<_> = ui.iter().filter(|p| p.deployment == "sirius-ui").collect();
    assert_eq!(ui.len(), 2, "two pods (one a node for a DaemonSet): {ui:?}");
    s.assert_zero_downtime(model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_401_across_a_deployment_a_daemonset_and_a_statefulset_under_v1_0_auth() {
    zero_downtime_across_kinds(AuthModel::ValkeyOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_401_across_a_deployment_a_daemonset_and_a_statefulset_under_v1_1_auth() {
    zero_downtime_across_kinds(AuthModel::RootKeyPlusValkey).await;
}

/// The API as an Argo Rollout (a canary), then a DaemonSet and a StatefulSet.
const WITH_A_ROLLOUT: [(&str, &str); 3] = [
    ("Rollout", "sirius-api"),
    ("DaemonSet", "sirius-ui"),
    ("StatefulSet", "sirius-engine"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_401_with_the_api_as_an_argo_rollout_under_v1_0_auth() {
    zero_downtime_across(AuthModel::ValkeyOnly, &WITH_A_ROLLOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_401_with_the_api_as_an_argo_rollout_under_v1_1_auth() {
    zero_downtime_across(AuthModel::RootKeyPlusValkey, &WITH_A_ROLLOUT).await;
}

fn mutating_requests(sim: &Sim) -> u64 {
    sim.request_counts()
        .iter()
        .filter(|((verb, _), _)| matches!(verb.as_str(), "create" | "update" | "patch" | "delete"))
        .map(|(_, n)| n)
        .sum()
}

/// Kills the controller right after each of its writes (every step boundary) and, on a timer,
/// in the middle of whatever it is doing; restarts it each time.
async fn crash_everywhere(model: AuthModel) {
    let s = scenario(model).await;
    let (vault_watch, vault_keys) = watch_vault_keys(&s.sim);

    let mut operator = spawn_operator(&s.sim);
    let mut kills = 0;
    let mut last_writes = mutating_requests(&s.sim);
    let mut since_kill = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while status(&s.sim).revision != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotation did not finish under crashes: {}",
            akr_status(&s.sim)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        let writes = mutating_requests(&s.sim);
        let wrote = writes != last_writes;
        // Mid-step kills, at a pace co-prime with the simulator's tick.
        let timer = since_kill.elapsed() > Duration::from_millis(37 + (kills % 5) * 13);
        if wrote || timer {
            operator.abort();
            let _ = operator.await;
            kills += 1;
            operator = spawn_operator(&s.sim);
            last_writes = mutating_requests(&s.sim);
            since_kill = tokio::time::Instant::now();
        }
    }
    operator.abort();
    wait_finished(&s.sim).await;
    vault_watch.abort();
    assert!(kills > 20, "only {kills} kills");
    let old = s.old.clone();
    let new = s.assert_zero_downtime(model);
    let minted = vault_keys.lock().unwrap().clone();
    assert_eq!(
        minted,
        BTreeSet::from([old.expose().to_string(), new.expose().to_string()]),
        "exactly one new key was minted ({kills} kills)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_every_step_mint_one_key_and_keep_zero_downtime_v1_0() {
    crash_everywhere(AuthModel::ValkeyOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_every_step_mint_one_key_and_keep_zero_downtime_v1_1() {
    crash_everywhere(AuthModel::RootKeyPlusValkey).await;
}

/// Waits for `Degraded/RolledBack`, then lets the retired pods finish terminating while the
/// checker still samples.
async fn wait_rolled_back(sim: &Sim) {
    wait_for(Duration::from_secs(60), "the rollback to finish", || {
        (status(sim).conditions.iter())
            .any(|c| c.type_ == "Degraded" && c.reason == Reason::RolledBack)
    })
    .await;
    // The checker samples for half a second more with the operator still running (the retired
    // pods finish terminating meanwhile): nothing after the finish refuses a request either.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Stops the checker: it must have sampled enough and seen no 401. Returns the keys pods held.
fn assert_no_401(checker: InvariantChecker) -> BTreeSet<String> {
    let (violations, samples, keys_seen) = checker.stop();
    assert!(samples > 100);
    assert!(
        violations.is_empty(),
        "{} 401s, first: {:?}",
        violations.len(),
        violations.first()
    );
    keys_seen
}

/// `failurePolicy: Rollback`: sirius-engine only works with the old key. The rotation must put
/// the Secret and all three Deployments back on the old key, in reverse order, each after the
/// previous completed, remove the new key, and never cause a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_returns_everything_to_the_old_key_in_reverse_order_without_a_401() {
    let (sim, _valkey, old) = rolled_back_in_reverse_order(&DEPLOYMENTS).await;
    // A new trigger starts a fresh rotation (engine now works with any key).
    sim.set_rollout_behavior(NS, "sirius-engine", kube_sim::RolloutBehavior::Normal);
    let operator = spawn_operator(&sim);
    request_rotation(&sim, "again");
    wait_for(Duration::from_secs(60), "rotation 2", || is_ready(&sim, 2)).await;
    operator.abort();
    assert_ne!(
        secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref(),
        Some(old.expose())
    );
}

/// The same rollback with a DaemonSet and a StatefulSet (the engine, which fails) among the
/// targets: each kind is rolled back, in reverse step order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_across_kinds_returns_the_statefulset_daemonset_and_deployment_in_reverse_order()
{
    rolled_back_in_reverse_order(&MIXED_KINDS).await;
}

/// `kinds` as the targets, the last one working only with the old key, `failurePolicy:
/// Rollback`: checks the rollback put everything back on the old key in reverse order without a
/// 401.
async fn rolled_back_in_reverse_order(kinds: &[(&str, &str)]) -> (Arc<Sim>, Arc<Valkey>, RawKey) {
    let model = AuthModel::RootKeyPlusValkey;
    let valkey = Arc::new(Valkey::start());
    let sim = Arc::new(start_sim_with(checked_sim_options()).await);
    let checker = InvariantChecker::start(sim.clone(), valkey.clone(), model);
    let old = known_key();
    sim.create_object(consumer_secret(&old)).unwrap();
    sim.set_nodes(&["node-a", "node-b"]);
    for (kind, name) in kinds {
        let mut w = sirius_workload(kind, name, 2);
        // A Deployment's own deadline makes its failure show in a second.
        if *kind == "Deployment" {
            w["spec"]["progressDeadlineSeconds"] = json!(1);
        }
        sim.create_object(w).unwrap();
    }
    wait_initial_rollouts(&sim, kinds.len()).await;
    sim.set_rollout_behavior(
        NS,
        "sirius-engine",
        kube_sim::RolloutBehavior::StallUnlessSecret(old.expose().to_string()),
    );
    let mut spec = targets_json(kinds);
    if kinds[2].0 != "Deployment" {
        // Other kinds have no deadline of their own: the operator's, at its least.
        spec["targets"][2]["progressDeadlineSeconds"] = json!(10);
    }
    spec["failurePolicy"] = json!("Rollback");
    spec["validationWindowSeconds"] = json!(1);
    let mut manifest = rotation(&valkey.url(), spec);
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    let operator = spawn_operator(&sim);
    wait_rolled_back(&sim).await;
    operator.abort();
    let keys_seen = assert_no_401(checker);
    assert_eq!(
        keys_seen.len(),
        2,
        "pods saw the old and the abandoned new key"
    );

    // The Secret and every pod are back on the old key; only the old key's record is left.
    assert_eq!(
        secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref(),
        Some(old.expose())
    );
    assert!(
        sim.pods()
            .iter()
            .all(|p| p.secrets.get(SECRET_REF).cloned().flatten().as_deref() == Some(old.expose()))
    );
    assert_eq!(
        record_ids(&valkey),
        [old.id().0.clone()].into_iter().collect()
    );
    let rolled_back = status(&sim);
    assert_eq!(rolled_back.active_key_id, Some(old.id().0.clone()));
    assert_eq!(rolled_back.phase, Some(Phase::Degraded));
    assert!(rolled_back.current_rotation.is_none());
    let history = valkey.dump();
    assert!(history.contains("\"result\":\"RolledBack\""), "{history}");
    for r in [
        Reason::RolloutFailed,
        Reason::SecretRolledBack,
        Reason::TargetRolledBack,
        Reason::NewKeyRemoved,
        Reason::RotationRolledBack,
    ] {
        assert!(has_event(&sim, r), "missing Event {r}");
    }

    // Reverse order: engine, then ui (after engine completed), then api (after ui completed).
    let rollouts = sim.rollouts();
    let rollback = |name: &str| {
        rollouts
            .iter()
            .filter(|r| r.deployment == name)
            .max_by_key(|r| r.template_changed_at_ms)
            .cloned()
            .unwrap()
    };
    let (engine, ui, api) = (
        rollback("sirius-engine"),
        rollback("sirius-ui"),
        rollback("sirius-api"),
    );
    assert!(
        engine.completed_at_ms.unwrap() <= ui.template_changed_at_ms,
        "{engine:?} {ui:?}"
    );
    assert!(
        ui.completed_at_ms.unwrap() <= api.template_changed_at_ms,
        "{ui:?} {api:?}"
    );
    assert!(api.completed_at_ms.is_some());
    (sim, valkey, old)
}

/// A second rotation fails on sirius-engine after its running pods restarted by themselves and
/// read the new key. Returning the engine to its previous template would bring those same pods
/// back; the rollback must restart every pod onto the old key before the new key goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_also_restarts_pods_that_picked_up_the_new_key_by_themselves() {
    let model = AuthModel::RootKeyPlusValkey;
    let valkey = Arc::new(Valkey::start());
    let sim = Arc::new(start_sim_with(checked_sim_options()).await);
    let installed = installed_key(model);
    sim.create_object(consumer_secret(&installed)).unwrap();
    deploy_sirius_with_deadline(&sim, 2, Some(1)).await;
    let mut manifest = rotation(
        &valkey.url(),
        json!({"failurePolicy": "Rollback", "validationWindowSeconds": 1}),
    );
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "first"});
    sim.create_object(manifest).unwrap();
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(60), "rotation 1", || is_ready(&sim, 1)).await;
    let active = RawKey::new(secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());
    let checker = InvariantChecker::start(sim.clone(), valkey.clone(), model);
    sim.set_rollout_behavior(
        NS,
        "sirius-engine",
        kube_sim::RolloutBehavior::StallUnlessSecret(active.expose().to_string()),
    );
    request_rotation(&sim, "second");
    wait_for(Duration::from_secs(30), "the Secret switched", || {
        secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref() != Some(active.expose())
    })
    .await;
    sim.restart_pods(NS, "sirius-engine");
    wait_rolled_back(&sim).await;
    operator.abort();
    assert_no_401(checker);
    assert!(
        sim.pods()
            .iter()
            .all(|p| p.secrets.get(SECRET_REF).cloned().flatten().as_deref()
                == Some(active.expose())),
        "every pod runs the key from before the failed rotation"
    );
}
