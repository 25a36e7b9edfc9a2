//! Targets chosen by label: an entry of `spec.targets` with a `selector` plans the workloads it
//! matches when a rotation starts; they roll at once, the next entry waits for all of them, and
//! what starts matching later waits for the next rotation while the pod gate protects it.

use crate::common::sirius::{AuthModel, InvariantChecker, checked_sim_options, installed_key};
use crate::common::*;
use apikey_rotator::key::RawKey;
use kube_sim::{Sim, SimOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The workloads the `tier: backend` selector of [`targets`] matches.
const BACKENDS: [&str; 3] = ["sirius-ui", "sirius-engine", "sirius-worker"];

/// The API by name, then every Deployment labelled `tier: backend`.
fn targets() -> Value {
    json!({"targets": [
        {"kind": "Deployment", "name": "sirius-api"},
        {"kind": "Deployment", "selector": {"matchLabels": {"tier": "backend"}}},
    ]})
}

/// A Sirius Deployment reading the consumers' Secret, with `labels` on the Deployment itself.
fn labelled(name: &str, labels: Value) -> Value {
    let mut d = sirius_deployment(name, 2);
    d["metadata"]["labels"] = labels;
    d
}

fn label(sim: &Sim, name: &str, labels: Value) {
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        name,
        json!({"metadata": {"labels": labels}}),
    )
    .unwrap();
}

/// Each target of rotation `revision`'s plan, from its Valkey history entry: the name, and the
/// selector that chose it ("" for a named one).
fn planned(valkey: &Valkey, revision: u64) -> Vec<(String, String)> {
    let entry: String = redis::cmd("HGET")
        .arg("apikey-rotator:history:sirius/sirius")
        .arg(revision)
        .query(&mut valkey.conn())
        .unwrap();
    let entry: Value = serde_json::from_str(&entry).unwrap();
    (entry["targets"].as_array().unwrap().iter())
        .map(|t| {
            let name = t["name"].as_str().unwrap().to_string();
            (name, t["selector"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// The second rollout of each Deployment (the rotation's), by name.
fn rotation_rollout(sim: &Sim, name: &str) -> kube_sim::RolloutRecord {
    let rollouts = sim.rollouts();
    (rollouts.iter())
        .find(|r| r.deployment == name && r.revision == 2)
        .unwrap_or_else(|| panic!("{name} was not rolled: {rollouts:?}"))
        .clone()
}

/// The Secret, the API, the three backends and `also` (a Deployment with those labels, if any),
/// their first rollouts complete, and a triggered rotation of [`targets`] merged with `spec`.
async fn install(sim: &Sim, valkey: &Valkey, old: &RawKey, spec: Value) {
    sim.create_object(consumer_secret(old)).unwrap();
    sim.create_object(labelled("sirius-api", json!({"tier": "front"})))
        .unwrap();
    for name in BACKENDS {
        sim.create_object(labelled(name, json!({"tier": "backend"})))
            .unwrap();
    }
    wait_initial_rollouts(sim, 4).await;
    let mut with_targets = targets();
    json_patch::merge(&mut with_targets, &spec);
    let mut manifest = rotation(&valkey.url(), with_targets);
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
}

async fn three_selected_roll_at_once(model: AuthModel) {
    let valkey = Arc::new(Valkey::start());
    // Pods slow enough to become ready that one rollout cannot finish between two stamps.
    let options = SimOptions {
        pod_ready_after: Duration::from_millis(400),
        ..checked_sim_options()
    };
    let sim = Arc::new(start_sim_with(options).await);
    let checker = InvariantChecker::start(sim.clone(), valkey.clone(), model);
    let old = installed_key(model);
    install(&sim, &valkey, &old, json!({})).await;
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(60), "rotation 1 to finish", || {
        is_ready(&sim, 1)
    })
    .await;
    // The checker samples for half a second more with the operator still running (the retired
    // pods finish terminating meanwhile): nothing after the finish refuses a request either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    operator.abort();
    let api = rotation_rollout(&sim, "sirius-api");
    let backends: Vec<_> = BACKENDS.iter().map(|n| rotation_rollout(&sim, n)).collect();
    let first_done = backends
        .iter()
        .map(|r| r.completed_at_ms.unwrap())
        .min()
        .unwrap();
    for b in &backends {
        assert!(
            api.completed_at_ms.unwrap() <= b.template_changed_at_ms,
            "{b:?} was rolled before the API ({api:?}) completed"
        );
        assert!(
            b.template_changed_at_ms < first_done,
            "{b:?} was stamped only after another backend completed: {backends:?}"
        );
    }
    let (violations, samples, keys_seen) = checker.stop();
    assert!(samples > 100, "the checker sampled only {samples} times");
    assert!(violations.is_empty(), "401s: {:?}", violations.first());
    let new = RawKey::new(secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());
    assert_eq!(
        keys_seen,
        [old.expose().to_string(), new.expose().to_string()].into(),
        "pods saw exactly the old and the new key"
    );
    let records = crate::common::sirius::record_ids(&valkey);
    assert!(!records.contains(&old.id().0), "the old key was revoked");
    // The history keeps the plan: which workloads the selector chose.
    let chosen = planned(&valkey, 1);
    let chosen: Vec<(&str, &str)> = chosen
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        chosen,
        [
            ("sirius-api", ""),
            ("sirius-engine", "tier=backend"),
            ("sirius-ui", "tier=backend"),
            ("sirius-worker", "tier=backend"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workloads_one_selector_chose_roll_at_once_with_no_401_under_v1_0_auth() {
    three_selected_roll_at_once(AuthModel::ValkeyOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workloads_one_selector_chose_roll_at_once_with_no_401_under_v1_1_auth() {
    three_selected_roll_at_once(AuthModel::RootKeyPlusValkey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_matches_nothing_holds_the_rotation_before_any_key_is_minted() {
    let mut cluster = Cluster::start().await;
    install(
        &cluster.sim,
        &cluster.valkey,
        &known_key(),
        // The backends the typo leaves out read the Secret too; the pod gate would (rightly)
        // hold the revocation for them, which is not what this test is about.
        json!({"untrackedConsumers": "Ignore", "targets": [
            {"kind": "Deployment", "name": "sirius-api"},
            {"kind": "Deployment", "selector": {"matchLabels": {"tier": "backnd"}}},
        ]}),
    )
    .await;
    cluster.run_operator();
    cluster.wait_event(Reason::TargetNotFound).await;
    let sim = &cluster.sim;
    let note = event(sim, "TargetNotFound")["note"].clone();
    assert!(
        note.as_str().unwrap().contains(
            "spec.targets[1]: the selector tier=backnd matches no Deployment in this namespace"
        ),
        "{note}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing happens while held
    let held = cluster.status();
    assert!(held.current_rotation.is_none(), "{held:?}");
    assert_eq!(template_key(sim, "sirius-api"), Value::Null);
    assert!(!cluster.has_event(Reason::RotationStarted));
    // A workload given the label starts the same request's rotation, through the watch.
    label(sim, "sirius-worker", json!({"tier": "backnd"}));
    cluster.wait_ready(1).await;
    cluster.kill_operator();
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let names: Vec<String> = planned(valkey, 1).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["sirius-api", "sirius-worker"]);
    assert_eq!(template_key(sim, "sirius-ui"), Value::Null, "not selected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_starts_matching_mid_rotation_waits_for_the_next_one_behind_the_pod_gate() {
    let mut cluster = Cluster::start().await;
    let sim = &cluster.sim;
    let old = known_key();
    // One backend at first; the API's rollout stalls until the test lets it go.
    sim.create_object(consumer_secret(&old)).unwrap();
    sim.create_object(labelled("sirius-api", json!({})))
        .unwrap();
    sim.create_object(labelled("sirius-ui", json!({"tier": "backend"})))
        .unwrap();
    sim.create_object(labelled("sirius-worker", json!({})))
        .unwrap();
    wait_initial_rollouts(sim, 3).await;
    sim.set_rollout_behavior(NS, "sirius-api", kube_sim::RolloutBehavior::Stall);
    let mut manifest = rotation(&cluster.valkey.url(), targets());
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    cluster.run_operator();
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    wait_for(Duration::from_secs(30), "the API to be stamped", || {
        template_key(sim, "sirius-api") != Value::Null
    })
    .await;
    // The worker starts matching while the rotation runs: it is not in this rotation's plan.
    label(sim, "sirius-worker", json!({"tier": "backend"}));
    sim.set_rollout_behavior(NS, "sirius-api", kube_sim::RolloutBehavior::Normal);
    // Its pods read the Secret and still hold the old key: the pod gate holds the revocation.
    cluster.wait_event(Reason::UntrackedConsumer).await;
    let note = event(sim, "UntrackedConsumer")["note"].clone();
    assert!(note.as_str().unwrap().contains("sirius-worker"), "{note}");
    assert_eq!(
        template_key(sim, "sirius-worker"),
        Value::Null,
        "not stamped"
    );
    assert!(
        crate::common::sirius::record_ids(valkey).contains(&old.id().0),
        "the old key stays valid while the worker's pods may hold it"
    );
    let plan = cluster.in_flight().unwrap().targets;
    assert_eq!(plan.len(), 2, "{plan:?}");
    // Its owner restarts it (kubectl rollout restart): the rotation finishes. Pods created in the
    // second of the switch cannot be told from pods that read the old key (creation times have
    // second precision), so the restart comes two seconds after it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-worker",
        json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}}),
    )
    .unwrap();
    cluster.wait_ready(1).await;
    // The next rotation plans it.
    cluster.request_rotation("again");
    wait_for(Duration::from_secs(60), "rotation 2 to finish", || {
        is_ready(sim, 2)
    })
    .await;
    cluster.kill_operator();
    let valkey = &cluster.valkey;
    let names: Vec<String> = planned(valkey, 2).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["sirius-api", "sirius-ui", "sirius-worker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_through_a_selector_is_refused() {
    let mut cluster = Cluster::start().await;
    install(&cluster.sim, &cluster.valkey, &known_key(), json!({})).await;
    cluster.run_operator();
    let sim = &cluster.sim;
    wait_for(Duration::from_secs(60), "rotation 1 to finish", || {
        is_ready(sim, 1)
    })
    .await;
    // A second rotation of another Secret names a workload the first one's selector chose.
    let mut other = rotation(
        &cluster.valkey.url(),
        json!({"secret": {"name": "other-key"}, "targets": [{"kind": "Deployment", "name": "sirius-engine"}]}),
    );
    other["metadata"]["name"] = json!("other");
    sim.create_object(other).unwrap();
    wait_for(Duration::from_secs(30), "the claim conflict", || {
        (status_of(sim, "other").conditions.iter())
            .any(|c| c.type_ == "Degraded" && c.reason == Reason::ClaimConflict)
    })
    .await;
    let other = status_of(sim, "other");
    let degraded = (other.conditions.iter())
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded
            .message
            .contains("Deployment sirius-engine is already a target of ApiKeyRotation sirius"),
        "{degraded:?}"
    );
    assert!(other.active_key_id.is_none(), "it did nothing");
    cluster.kill_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_selector_is_an_invalid_spec_and_changes_nothing() {
    let mut cluster = Cluster::start().await;
    install(
        &cluster.sim,
        &cluster.valkey,
        &known_key(),
        json!({"targets": [
            {"kind": "Deployment", "name": "sirius-api", "selector": {"matchLabels": {"tier": "front"}}},
            {"kind": "Deployment", "selector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}},
        ]}),
    )
    .await;
    cluster.run_operator();
    cluster.wait_event(Reason::InvalidSpec).await;
    let note = event(&cluster.sim, "InvalidSpec")["note"]
        .as_str()
        .unwrap()
        .to_string();
    for expected in [
        "spec.targets[0]: both name and selector are set",
        "spec.targets[1].selector.matchExpressions[0].values: must be specified when operator is In",
    ] {
        assert!(note.contains(expected), "{note}");
    }
    assert!(cluster.status().active_key_id.is_none());
    assert_eq!(template_key(&cluster.sim, "sirius-api"), Value::Null);
    cluster.kill_operator();
}
