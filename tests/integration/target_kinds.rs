//! Targets whose pods a new template would not replace (`updateStrategy: OnDelete`, a
//! StatefulSet partition above 0): kubectl calls their rollout done while pods keep the old key,
//! so the operator refuses them before a rotation starts, holds a rotation in flight at them, and
//! never revokes under them; it goes on by itself once their spec lets them roll.

use crate::common::*;
use kube_sim::Sim;
use serde_json::{Value, json};
use std::time::Duration;

/// The consumers' Secret, the three Sirius workloads as [`MIXED_KINDS`] (the engine a StatefulSet
/// with `engine_strategy`, the UI a DaemonSet on two nodes) and a triggered rotation of them.
async fn install(sim: &Sim, valkey: &Valkey, engine_strategy: Value) {
    install_with(sim, valkey, engine_strategy, json!({})).await;
}

async fn install_with(sim: &Sim, valkey: &Valkey, engine_strategy: Value, spec: Value) {
    sim.create_object(consumer_secret(&known_key())).unwrap();
    sim.set_nodes(&["node-a", "node-b"]);
    for (kind, name) in MIXED_KINDS {
        let mut w = sirius_workload(kind, name, 2);
        if name == "sirius-engine" && !engine_strategy.is_null() {
            w["spec"]["updateStrategy"] = engine_strategy.clone();
        }
        sim.create_object(w).unwrap();
    }
    let mut spec_with_targets = targets_json(&MIXED_KINDS);
    json_patch::merge(&mut spec_with_targets, &spec);
    let mut manifest = rotation(&valkey.url(), spec_with_targets);
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
}

fn set_engine_strategy(sim: &Sim, strategy: Value) {
    set_update_strategy(sim, "statefulsets", "sirius-engine", strategy);
}

fn vault_pending(sim: &Sim) -> Option<Value> {
    sim.get_object("", "secrets", NS, "sirius-apikey-vault")
        .and_then(|v| v["data"].get("pending").cloned())
}

async fn wait_rotated(sim: &Sim) {
    wait_for(Duration::from_secs(60), "rotation 1 to finish", || {
        is_ready(sim, 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_delete_statefulset_is_refused_before_any_key_is_minted_and_rolls_once_it_can() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    install(&sim, &valkey, json!({"type": "OnDelete"})).await;
    let operator = spawn_operator(&sim);
    wait_degraded(&sim, "TargetCannotRoll").await;
    let message = event(&sim, "TargetCannotRoll")["note"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("StatefulSet sirius-engine")
            && message.as_str().unwrap().contains("OnDelete"),
        "{message}"
    );
    // Held with nothing started: no key minted, no target stamped, the trigger still pending.
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing happens while refused
    let status = akr_status(&sim);
    assert!(status["currentRotation"].is_null(), "{status}");
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(vault_pending(&sim), None);
    assert_eq!(template_key(&sim, "sirius-api"), Value::Null);
    assert!(!has_event(&sim, Reason::RotationStarted));

    // An explicit type keeps `rollingUpdate` absent (kube-apiserver defaults it only for an unset
    // type), so the engine is complete by kubectl's revision rule.
    set_engine_strategy(&sim, json!({"type": "RollingUpdate"}));
    let engine = sim
        .get_object("apps", "statefulsets", NS, "sirius-engine")
        .unwrap();
    assert_eq!(
        engine["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate"})
    );
    wait_rotated(&sim).await;
    operator.abort();
    let new = secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap();
    assert_ne!(new, known_key().expose());
    assert!(
        sim.pods()
            .iter()
            .filter(|p| p.namespace == NS)
            .all(|p| p.secrets.get("sirius-api-key/SIRIUS_API_KEY") == Some(&Some(new.clone())))
    );
    assert!(!valkey.exists(&format!("apikey:{}", known_key().id())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_set_mid_rotation_holds_it_at_that_target_and_the_old_key_stays_valid() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    // The API's new pods are slow, so the rotation is still at its first target when the
    // engine's partition is set.
    sim.set_pod_ready_after(NS, "sirius-api", Duration::from_millis(1500));
    install(&sim, &valkey, Value::Null).await;
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(30), "the roll of sirius-api", || {
        let r = &akr_status(&sim)["currentRotation"];
        r["step"] == "Roll" && r["targetIndex"] == 0
    })
    .await;
    set_engine_strategy(
        &sim,
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}),
    );
    wait_degraded(&sim, "TargetCannotRoll").await;
    let status = akr_status(&sim);
    assert_eq!(status["currentRotation"]["targetIndex"], 2, "{status}");
    assert!(
        event(&sim, "TargetCannotRoll")["note"]
            .as_str()
            .unwrap()
            .contains("partition is 1")
    );
    // Held: the engine keeps its template, and the old key its record.
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing happens while held
    let engine = sim
        .get_object("apps", "statefulsets", NS, "sirius-engine")
        .unwrap();
    assert!(
        engine["spec"]["template"]["metadata"]["annotations"]["keys.siriusscan.io/key-id"]
            .is_null()
    );
    assert!(valkey.exists(&format!("apikey:{}", known_key().id())));
    assert_eq!(akr_status(&sim)["currentRotation"]["targetIndex"], 2);

    set_engine_strategy(
        &sim,
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    );
    wait_rotated(&sim).await;
    operator.abort();
    assert!(!valkey.exists(&format!("apikey:{}", known_key().id())));
    let engine = sim
        .get_object("apps", "statefulsets", NS, "sirius-engine")
        .unwrap();
    assert_eq!(
        engine["status"]["currentRevision"],
        engine["status"]["updateRevision"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_made_on_delete_during_a_rollback_keeps_the_new_key_valid_until_its_pods_move()
{
    let valkey = Valkey::start();
    let sim = start_sim().await;
    // The engine runs only with the installed key: its rollout fails and the rotation rolls back.
    sim.set_rollout_behavior(
        NS,
        "sirius-engine",
        kube_sim::RolloutBehavior::StallUnlessSecret(known_key().expose().to_string()),
    );
    let spec = json!({"failurePolicy": "Rollback", "progressDeadlineSeconds": 10});
    install_with(&sim, &valkey, Value::Null, spec).await;
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(40), "the rollback", || {
        in_flight(&sim).is_some_and(|r| r.rolling_back.is_some())
    })
    .await;
    let new = akr_status(&sim)["currentRotation"]["newKeyId"]
        .as_str()
        .unwrap()
        .to_string();
    // The UI's pods run the new key; made OnDelete, its stamped template replaces none of them.
    set_update_strategy(
        &sim,
        "daemonsets",
        "sirius-ui",
        json!({"type": "OnDelete", "rollingUpdate": null}),
    );
    wait_for(
        Duration::from_secs(30),
        "the pod gate to name the UI",
        || {
            has_event(&sim, Reason::TargetCannotRoll)
                && akr_status(&sim)["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["reason"] == "WaitingForPods"
                            && c["message"].as_str().is_some_and(|m| {
                                m.contains(
                                    "DaemonSet sirius-ui does not replace its pods by itself",
                                )
                            })
                    })
        },
    )
    .await;
    let note = event(&sim, "TargetCannotRoll")["note"].clone();
    assert!(
        note.as_str()
            .unwrap()
            .contains("DaemonSet sirius-ui was stamped with the old key"),
        "{note}"
    );
    let ui_on_new = || {
        sim.pods().iter().any(|p| {
            p.deployment == "sirius-ui"
                && p.secrets.get("sirius-api-key/SIRIUS_API_KEY")
                    != Some(&Some(known_key().expose().into()))
        })
    };
    assert!(ui_on_new(), "OnDelete replaced none of the UI's pods");
    assert!(
        valkey.exists(&format!("apikey:{new}")),
        "the new key stays valid while the UI's pods hold it"
    );

    set_update_strategy(
        &sim,
        "daemonsets",
        "sirius-ui",
        json!({"type": "RollingUpdate"}),
    );
    // Until the last UI pod left the new key, its record stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let valid = valkey.exists(&format!("apikey:{new}"));
        if !ui_on_new() {
            break;
        }
        assert!(valid, "the new key was removed while a UI pod held it");
        assert!(std::time::Instant::now() < deadline, "the UI never rolled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for(Duration::from_secs(60), "the rollback to finish", || {
        in_flight(&sim).is_none()
    })
    .await;
    operator.abort();
    assert!(!valkey.exists(&format!("apikey:{new}")));
    assert!(valkey.exists(&format!("apikey:{}", known_key().id())));
    assert!(sim.pods().iter().filter(|p| p.namespace == NS).all(|p| {
        p.secrets.get("sirius-api-key/SIRIUS_API_KEY") == Some(&Some(known_key().expose().into()))
    }));
}
