//! Argo Rollouts as targets: judged by Argo's phase (Healthy completes, Degraded fails), paused
//! by `spec.paused`, refused with a `workloadRef`, and only with `--argo-rollouts`. The stand-in's
//! Rollouts carry the status Argo's controller writes.

use crate::common::*;
use apikey_rotator::workload::argo_rollout::{Phase, Rollout};
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube_sim::{RolloutBehavior, Sim};
use serde_json::{Value, json};
use std::time::Duration;

/// The targets: the API as a Rollout, the UI and engine as Deployments.
const KINDS: [(&str, &str); 3] = [
    ("Rollout", "sirius-api"),
    ("Deployment", "sirius-ui"),
    ("Deployment", "sirius-engine"),
];

/// Argo's CRD, the Secret and the [`KINDS`] of workloads, the Rollout after `edit`.
fn create_workloads(sim: &Sim, mut edit: impl FnMut(&mut Value)) {
    install_argo_rollouts_crd(sim);
    sim.create_object(consumer_secret(&known_key())).unwrap();
    for (kind, name) in KINDS {
        let mut w = sirius_workload(kind, name, 2);
        if kind == "Rollout" {
            edit(&mut w);
        }
        sim.create_object(w).unwrap();
    }
}

/// A triggered rotation of the [`KINDS`], with `spec`.
fn trigger_rotation(sim: &Sim, valkey: &Valkey, spec: Value) {
    let mut with_targets = targets_json(&KINDS);
    json_patch::merge(&mut with_targets, &spec);
    let mut manifest = rotation(&valkey.url(), with_targets);
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
}

/// The workloads (the Rollout after `edit`) and a triggered rotation of them.
async fn install(sim: &Sim, valkey: &Valkey, edit: impl FnMut(&mut Value)) {
    create_workloads(sim, edit);
    trigger_rotation(sim, valkey, json!({}));
}

async fn rollout(sim: &Sim) -> Rollout {
    Api::<Rollout>::namespaced(client_for(sim), NS)
        .get("sirius-api")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_ins_rollout_reports_argos_status_and_pods() {
    let sim = start_sim().await;
    install_argo_rollouts_crd(&sim);
    sim.create_object(consumer_secret(&known_key())).unwrap();
    sim.create_object(sirius_workload("Rollout", "sirius-api", 2))
        .unwrap();
    wait_for(Duration::from_secs(10), "Healthy", || {
        sim.get_object("argoproj.io", "rollouts", NS, "sirius-api")
            .is_some_and(|r| r["status"]["phase"] == "Healthy")
    })
    .await;
    let r = sim
        .get_object("argoproj.io", "rollouts", NS, "sirius-api")
        .unwrap();
    let status = &r["status"];
    assert_eq!(
        status["observedGeneration"],
        json!("1"),
        "a string, as Argo writes it"
    );
    assert_eq!(status["stableRS"], status["currentPodHash"]);
    assert_eq!(status["availableReplicas"], 2);
    let hash = status["currentPodHash"].as_str().unwrap().to_string();
    let pods = sim.list_objects("", "pods", Some(NS));
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(
            p["metadata"]["labels"]["rollouts-pod-template-hash"],
            json!(hash)
        );
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["name"],
            json!(format!("sirius-api-{hash}"))
        );
    }
    assert_eq!(rollout(&sim).await.phase().0, Phase::Healthy);

    // Paused: a new template waits; Argo's phase says so.
    sim.merge_patch_object(
        "argoproj.io",
        "rollouts",
        NS,
        "sirius-api",
        json!({"spec": {"paused": true, "template": {"metadata": {"annotations": {"x": "1"}}}}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "Paused", || {
        sim.get_object("argoproj.io", "rollouts", NS, "sirius-api")
            .is_some_and(|r| r["status"]["phase"] == "Paused")
    })
    .await;
    assert_eq!(rollout(&sim).await.phase().0, Phase::Paused);
    assert!(sim.pods().iter().all(|p| p.revision == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_target_needs_the_argo_rollouts_flag_and_nothing_is_minted_without_it() {
    let mut cluster = Cluster::start().await;
    install(&cluster.sim, &cluster.valkey, |_| {}).await;
    cluster.run_operator();
    cluster.wait_degraded(Reason::InvalidSpec).await;
    let degraded = find_condition(&cluster.sim, "Degraded").unwrap();
    assert!(degraded.message.contains("--argo-rollouts"), "{degraded:?}");
    assert!(
        cluster
            .sim
            .get_object("", "secrets", NS, "sirius-apikey-vault")
            .is_none()
    );
    cluster.kill_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_references_a_deployment_is_refused_before_any_key_is_minted() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    install(&sim, &valkey, |r| {
        r["spec"].as_object_mut().unwrap().remove("template");
        r["spec"]["workloadRef"] =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "sirius-api"});
    })
    .await;
    let operator = spawn_operator_with_argo(&sim);
    wait_degraded(&sim, "TargetCannotRoll").await;
    assert!(
        event(&sim, "TargetCannotRoll")["note"]
            .as_str()
            .unwrap()
            .contains("workloadRef")
    );
    assert!(in_flight(&sim).is_none());
    operator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_rollout_fails_the_rotation_with_argos_message_and_the_old_key_stays_valid() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    install(&sim, &valkey, |r| {
        r["spec"]["progressDeadlineSeconds"] = json!(1);
    })
    .await;
    sim.set_rollout_behavior(NS, "sirius-api", RolloutBehavior::Stall);
    let operator = spawn_operator_with_argo(&sim);
    wait_degraded(&sim, "RolloutFailed").await;
    let degraded = find_condition(&sim, "Degraded").unwrap();
    assert!(
        degraded
            .message
            .contains("is Degraded: ProgressDeadlineExceeded"),
        "{degraded:?}"
    );
    assert!(valkey.exists(&record_key(&known_key().id())));
    assert_eq!(rollout(&sim).await.phase().0, Phase::Degraded);
    // The rotation resumes by itself once the Rollout is Healthy again.
    sim.set_rollout_behavior(NS, "sirius-api", RolloutBehavior::Normal);
    wait_for(Duration::from_secs(60), "rotation 1", || is_ready(&sim, 1)).await;
    operator.abort();
    assert!(!valkey.exists(&record_key(&known_key().id())));
}

/// The stand-in's Rollout `sirius-api`, as JSON.
fn rollout_json(sim: &Sim) -> Value {
    sim.get_object("argoproj.io", "rollouts", NS, "sirius-api")
        .unwrap()
}

/// A canary Rollout `sirius-api` of two replicas with `steps`, its first update done.
async fn canary_with_steps(sim: &Sim, steps: Value) {
    install_argo_rollouts_crd(sim);
    sim.create_object(consumer_secret(&known_key())).unwrap();
    let mut w = sirius_workload("Rollout", "sirius-api", 2);
    w["spec"]["strategy"] = json!({"canary": {"steps": steps}});
    sim.create_object(w).unwrap();
    wait_for(Duration::from_secs(20), "the first update", || {
        rollout_json(sim)["status"]["phase"] == "Healthy"
    })
    .await;
}

/// A new template, as `kubectl argo rollouts restart` would not (it deletes pods) but a new
/// image or annotation does: a new update that runs the steps.
fn new_template(sim: &Sim, n: u32) {
    sim.merge_patch_object(
        "argoproj.io",
        "rollouts",
        NS,
        "sirius-api",
        json!({"spec": {"template": {"metadata": {"annotations": {"example.com/n": n.to_string()}}}}}),
    )
    .unwrap();
}

/// [`new_template`], returning once the controller has seen it (a new `currentPodHash`).
async fn new_update(sim: &Sim, n: u32) {
    let before = rollout_json(sim)["status"]["currentPodHash"].clone();
    new_template(sim, n);
    wait_for(Duration::from_secs(10), "the new update", || {
        rollout_json(sim)["status"]["currentPodHash"] != before
    })
    .await;
}

/// `kubectl argo rollouts promote` (not `--full`): the pause conditions cleared.
fn promote(sim: &Sim) {
    sim.merge_patch_status(
        "argoproj.io",
        "rollouts",
        NS,
        "sirius-api",
        json!({"status": {"pauseConditions": null}}),
    )
    .unwrap();
}

/// `kubectl argo rollouts abort`.
fn abort(sim: &Sim) {
    sim.merge_patch_status(
        "argoproj.io",
        "rollouts",
        NS,
        "sirius-api",
        json!({"status": {"abort": true}}),
    )
    .unwrap();
}

/// The hashes of the Rollout's running pods.
fn pod_hashes(sim: &Sim) -> Vec<String> {
    (sim.list_objects("", "pods", Some(NS)).iter())
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["labels"]["rollouts-pod-template-hash"].as_str())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_ins_canary_runs_its_steps_and_waits_at_a_pause_until_promoted() {
    let sim = start_sim().await;
    canary_with_steps(
        &sim,
        json!([{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}, {"pause": {"duration": "1s"}}]),
    )
    .await;
    assert_eq!(rollout_json(&sim)["status"]["currentStepIndex"], json!(4));
    new_template(&sim, 1);
    wait_for(Duration::from_secs(10), "the pause step", || {
        let s = &rollout_json(&sim)["status"];
        s["phase"] == "Paused" && s["currentStepIndex"] == json!(1)
    })
    .await;
    let status = rollout_json(&sim)["status"].clone();
    assert_eq!(status["pauseConditions"][0]["reason"], "CanaryPauseStep");
    assert_eq!(status["controllerPause"], json!(true));
    assert_eq!(status["message"], "CanaryPauseStep");
    assert_eq!(status["updatedReplicas"], json!(1), "50 % of 2: {status}");
    assert_ne!(status["stableRS"], status["currentPodHash"]);
    let mut hashes = pod_hashes(&sim);
    hashes.sort();
    hashes.dedup();
    assert_eq!(
        hashes.len(),
        2,
        "the canary and the stable pods run side by side"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // a pause without duration stays
    assert_eq!(rollout_json(&sim)["status"]["phase"], "Paused");
    promote(&sim);
    // The timed pause at the end passes by itself.
    wait_for(Duration::from_secs(10), "the timed pause", || {
        rollout_json(&sim)["status"]["currentStepIndex"] == json!(3)
    })
    .await;
    wait_for(Duration::from_secs(10), "Healthy", || {
        rollout_json(&sim)["status"]["phase"] == "Healthy"
    })
    .await;
    let status = rollout_json(&sim)["status"].clone();
    assert_eq!(status["stableRS"], status["currentPodHash"]);
    assert_eq!(status["updatedReplicas"], json!(2));
    assert!(status.get("pauseConditions").is_none(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_ins_aborted_canary_goes_back_to_its_stable_pods_until_a_new_template() {
    let sim = start_sim().await;
    canary_with_steps(&sim, json!([{"setWeight": 50}, {"pause": {}}])).await;
    let stable = rollout_json(&sim)["status"]["stableRS"].clone();
    new_template(&sim, 1);
    wait_for(Duration::from_secs(10), "the pause step", || {
        rollout_json(&sim)["status"]["phase"] == "Paused"
    })
    .await;
    abort(&sim);
    wait_for(Duration::from_secs(10), "the abort", || {
        rollout_json(&sim)["status"]["phase"] == "Degraded"
            && pod_hashes(&sim) == [stable.as_str().unwrap(); 2]
    })
    .await;
    let status = rollout_json(&sim)["status"].clone();
    assert_eq!(
        status["message"],
        "RolloutAborted: Rollout aborted update to revision 2"
    );
    let progressing = (status["conditions"].as_array().unwrap().iter())
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressing["reason"], "RolloutAborted");
    assert_eq!(status["stableRS"], stable, "the stable ReplicaSet stays");
    assert_eq!(
        status["currentStepIndex"],
        json!(0),
        "an abort starts the steps over"
    );
    assert_eq!(
        status["updatedReplicas"],
        json!(0),
        "the new ReplicaSet scaled away"
    );
    // Aborted and settled, the status is not written again.
    let rv = rollout_json(&sim)["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await; // nothing changes while aborted
    assert_eq!(rollout_json(&sim)["metadata"]["resourceVersion"], rv);
    // A new template is a new update: the abort is over.
    new_template(&sim, 2);
    wait_for(Duration::from_secs(10), "the new update's pause", || {
        let s = &rollout_json(&sim)["status"];
        s["phase"] == "Paused" && s.get("abort").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_ins_pause_step_holds_the_progress_deadline_and_spec_paused_holds_the_steps() {
    let sim = start_sim().await;
    let steps = json!([{"setWeight": 50}, {"pause": {"duration": 3}}]);
    install_argo_rollouts_crd(&sim);
    sim.create_object(consumer_secret(&known_key())).unwrap();
    let mut w = sirius_workload("Rollout", "sirius-api", 2);
    w["spec"]["strategy"] = json!({"canary": {"steps": steps}});
    w["spec"]["progressDeadlineSeconds"] = json!(1);
    sim.create_object(w).unwrap();
    wait_for(Duration::from_secs(20), "the first update", || {
        rollout_json(&sim)["status"]["phase"] == "Healthy"
    })
    .await;
    // Every status written, through a watch (a Degraded that lasts one tick is not missed).
    let phases = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = phases.clone();
    let api: Api<Rollout> = Api::namespaced(client_for(&sim), NS);
    let watch = tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut events = kube::runtime::watcher(api, Default::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(r)) = events.next().await {
            let (phase, _) = r.phase();
            seen.lock().unwrap().push(format!("{phase:?}"));
        }
    });
    new_update(&sim, 1).await;
    // A 3 s pause against a 1 s deadline: never Degraded, Healthy once it passed.
    wait_for(Duration::from_secs(15), "Healthy after the pause", || {
        rollout_json(&sim)["status"]["phase"] == "Healthy"
            && phases.lock().unwrap().iter().any(|p| p == "Paused")
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "the watch to deliver the last writes",
        || {
            // The Healthy after the pause (the phases seen come in the order they were written).
            phases
                .lock()
                .unwrap()
                .last()
                .is_some_and(|p| p == "Healthy")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // nothing degrades after Healthy either
    watch.abort();
    let phases = phases.lock().unwrap().clone();
    assert!(!phases.iter().any(|p| p == "Degraded"), "{phases:?}");
    // `spec.paused` during a timed pause holds it past its duration.
    new_template(&sim, 2);
    wait_for(Duration::from_secs(10), "the pause step", || {
        rollout_json(&sim)["status"]["phase"] == "Paused"
    })
    .await;
    sim.merge_patch_object(
        "argoproj.io",
        "rollouts",
        NS,
        "sirius-api",
        json!({"spec": {"paused": true}}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await; // past the 3 s pause: nothing moves
    let status = rollout_json(&sim)["status"].clone();
    assert_eq!(status["currentStepIndex"], json!(1), "{status}");
    assert_eq!(status["message"], "manually paused");
    sim.merge_patch_object(
        "argoproj.io",
        "rollouts",
        NS,
        "sirius-api",
        json!({"spec": {"paused": false}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "Healthy", || {
        rollout_json(&sim)["status"]["phase"] == "Healthy"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_ins_failed_analysis_aborts_the_update() {
    let sim = start_sim().await;
    let analysis = json!({"analysis": {"templates": [{"templateName": "success-rate"}]}});
    canary_with_steps(&sim, json!([{"setWeight": 50}, analysis])).await;
    // A passing analysis lets the update through.
    new_update(&sim, 1).await;
    wait_for(
        Duration::from_secs(10),
        "the update past its analysis",
        || {
            let s = &rollout_json(&sim)["status"];
            s["phase"] == "Healthy" && s["updatedReplicas"] == json!(2)
        },
    )
    .await;
    let stable = rollout_json(&sim)["status"]["stableRS"].clone();
    sim.set_analysis_passes(NS, "sirius-api", false);
    new_update(&sim, 2).await;
    wait_for(Duration::from_secs(10), "the failed analysis", || {
        rollout_json(&sim)["status"]["phase"] == "Degraded"
    })
    .await;
    let message = rollout_json(&sim)["status"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with("RolloutAborted: Rollout aborted update to revision 3: Metric"),
        "{message}"
    );
    wait_for(Duration::from_secs(10), "the stable pods back", || {
        pod_hashes(&sim) == [stable.as_str().unwrap(); 2]
    })
    .await;
}

/// The API as a canary Rollout with `steps`, the UI and engine as Deployments, their first
/// updates done, and a triggered rotation with `spec`.
async fn install_canary(sim: &Sim, valkey: &Valkey, steps: Value, spec: Value) {
    create_workloads(sim, |w| {
        w["spec"]["strategy"] = json!({"canary": {"steps": steps.clone()}});
    });
    wait_for(Duration::from_secs(20), "the first updates", || {
        rollout_json(sim)["status"]["phase"] == "Healthy"
    })
    .await;
    trigger_rotation(sim, valkey, spec);
}

fn rotating_message(sim: &Sim) -> String {
    find_condition(sim, "Rotating")
        .map(|c| c.message)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canarys_pause_step_holds_the_rotation_until_it_is_promoted_and_the_old_key_stays_valid()
{
    let valkey = Valkey::start();
    let sim = start_sim().await;
    install_canary(
        &sim,
        &valkey,
        json!([{"setWeight": 50}, {"pause": {}}]),
        json!({}),
    )
    .await;
    let operator = spawn_operator_with_argo(&sim);
    wait_for(
        Duration::from_secs(30),
        "the rotation to wait at the pause",
        || rotating_message(&sim).contains("Paused: CanaryPauseStep"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing moves while paused
    assert!(rotating_message(&sim).contains("Paused: CanaryPauseStep"));
    assert_eq!(
        degraded_reason(&sim),
        None,
        "a pause step is progress, not a failure"
    );
    assert_eq!(
        template_key(&sim, "sirius-ui"),
        Value::Null,
        "the next target waits"
    );
    assert!(valkey.exists(&record_key(&known_key().id())));
    promote(&sim);
    wait_for(Duration::from_secs(60), "rotation 1", || is_ready(&sim, 1)).await;
    operator.abort();
    assert!(!valkey.exists(&record_key(&known_key().id())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_canary_rolls_the_rotation_back_and_the_old_key_is_never_revoked() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let steps = json!([{"setWeight": 50}, {"pause": {"duration": 2}}]);
    install_canary(&sim, &valkey, steps, json!({"failurePolicy": "Rollback"})).await;
    let operator = spawn_operator_with_argo(&sim);
    wait_for(Duration::from_secs(30), "the canary's pause", || {
        rollout_json(&sim)["status"]["phase"] == "Paused"
    })
    .await;
    abort(&sim);
    wait_event(&sim, Reason::RolloutFailed).await;
    let note = event(&sim, "RolloutFailed")["note"].clone();
    assert!(
        note.as_str()
            .unwrap()
            .contains("is Degraded: RolloutAborted"),
        "{note}"
    );
    // Rolled back: the old key in the Secret and in a new update of the Rollout (which runs
    // the canary's steps again), the new key removed.
    wait_for(Duration::from_secs(60), "the rollback", || {
        has_event(&sim, Reason::RotationRolledBack)
    })
    .await;
    operator.abort();
    assert_eq!(
        secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref(),
        Some(known_key().expose())
    );
    let stamped = &rollout_json(&sim)["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        stamped["keys.siriusscan.io/key-id"],
        json!(known_key().id().0)
    );
    assert!(valkey.exists(&record_key(&known_key().id())));
    assert_eq!(rollout_json(&sim)["status"]["phase"], "Healthy");
}
