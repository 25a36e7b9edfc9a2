//! Argo Rollouts as targets: judged by Argo's phase (Healthy completes, Degraded fails), paused
//! by `spec.paused`, refused with a `workloadRef`, and only with `--argo-rollouts`. The stand-in's
//! Rollouts carry the status Argo's controller writes.

use crate::common::*;
use apikey_rotator::workload::argo_rollout::{Phase, Rollout};
use kube::api::Api;
use kube_sim::{RolloutBehavior, Sim};
use serde_json::{Value, json};
use std::time::Duration;

/// The Secret, the API as a Rollout (after `edit`) and the UI and engine as Deployments, and a
/// triggered rotation of them.
async fn install(sim: &Sim, valkey: &Valkey, mut edit: impl FnMut(&mut Value)) {
    install_argo_rollouts_crd(sim);
    sim.create_object(consumer_secret(&known_key())).unwrap();
    let kinds = [
        ("Rollout", "sirius-api"),
        ("Deployment", "sirius-ui"),
        ("Deployment", "sirius-engine"),
    ];
    for (kind, name) in kinds {
        let mut w = sirius_workload(kind, name, 2);
        if kind == "Rollout" {
            edit(&mut w);
        }
        sim.create_object(w).unwrap();
    }
    let mut manifest = rotation(&valkey.url(), targets_json(&kinds));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
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
    let valkey = Valkey::start();
    let sim = start_sim().await;
    install(&sim, &valkey, |_| {}).await;
    let operator = spawn_operator(&sim);
    wait_degraded(&sim, "InvalidSpec").await;
    let message = condition(&sim, "Degraded")["message"].clone();
    assert!(
        message.as_str().unwrap().contains("--argo-rollouts"),
        "{message}"
    );
    assert!(
        sim.get_object("", "secrets", NS, "sirius-apikey-vault")
            .is_none()
    );
    operator.abort();
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
    assert!(akr_status(&sim)["currentRotation"].is_null());
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
    let message = condition(&sim, "Degraded")["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("is Degraded: ProgressDeadlineExceeded"),
        "{message}"
    );
    assert!(valkey.exists(&format!("apikey:{}", known_key().id())));
    assert_eq!(rollout(&sim).await.phase().0, Phase::Degraded);
    // The rotation resumes by itself once the Rollout is Healthy again.
    sim.set_rollout_behavior(NS, "sirius-api", RolloutBehavior::Normal);
    wait_for(Duration::from_secs(60), "rotation 1", || {
        akr_status(&sim)["revision"] == json!(1) && akr_status(&sim)["phase"] == "Ready"
    })
    .await;
    operator.abort();
    assert!(!valkey.exists(&format!("apikey:{}", known_key().id())));
}
