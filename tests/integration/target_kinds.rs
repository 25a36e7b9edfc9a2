//! Targets whose pods a new template would not replace (`updateStrategy: OnDelete`, a
//! StatefulSet partition above 0): kubectl calls their rollout done while pods keep the old key,
//! so the operator refuses them before a rotation starts, holds a rotation in flight at them, and
//! never revokes under them; it goes on by itself once their spec lets them roll.

use crate::common::*;
use apikey_rotator::key::KeyId;
use kube_sim::Sim;
use serde_json::{Value, json};
use std::time::Duration;

/// The consumers' Secret, the three Sirius workloads as [`MIXED_KINDS`] (the engine a StatefulSet
/// with `engine_strategy`, the UI a DaemonSet on two nodes) and a triggered rotation of them.
async fn install(cluster: &Cluster, engine_strategy: Value) {
    install_with(cluster, engine_strategy, json!({})).await;
}

async fn install_with(cluster: &Cluster, engine_strategy: Value, spec: Value) {
    let sim = &cluster.sim;
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
    let mut manifest = rotation(&cluster.valkey.url(), spec_with_targets);
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
    let mut cluster = Cluster::start().await;
    install(&cluster, json!({"type": "OnDelete"})).await;
    cluster.run_operator();
    cluster.wait_degraded(Reason::TargetCannotRoll).await;
    let sim = &cluster.sim;
    let message = event(sim, "TargetCannotRoll")["note"].clone();
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
    let held = cluster.status();
    assert!(held.current_rotation.is_none(), "{held:?}");
    assert_eq!(held.phase, Some(Phase::Degraded));
    assert_eq!(vault_pending(sim), None);
    assert_eq!(template_key(sim, "sirius-api"), Value::Null);
    assert!(!cluster.has_event(Reason::RotationStarted));

    // An explicit type keeps `rollingUpdate` absent (kube-apiserver defaults it only for an unset
    // type), so the engine is complete by kubectl's revision rule.
    set_engine_strategy(sim, json!({"type": "RollingUpdate"}));
    let engine = sim
        .get_object("apps", "statefulsets", NS, "sirius-engine")
        .unwrap();
    assert_eq!(
        engine["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate"})
    );
    wait_rotated(sim).await;
    cluster.kill_operator();
    let sim = &cluster.sim;
    let new = secret_value(sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap();
    assert_ne!(new, known_key().expose());
    assert!(
        sim.pods()
            .iter()
            .filter(|p| p.namespace == NS)
            .all(|p| p.secrets.get("sirius-api-key/SIRIUS_API_KEY") == Some(&Some(new.clone())))
    );
    assert!(!cluster.accepts(&known_key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_set_mid_rotation_holds_it_at_that_target_and_the_old_key_stays_valid() {
    let mut cluster = Cluster::start().await;
    // The API's new pods are slow, so the rotation is still at its first target when the
    // engine's partition is set.
    cluster
        .sim
        .set_pod_ready_after(NS, "sirius-api", Duration::from_millis(1500));
    install(&cluster, Value::Null).await;
    cluster.run_operator();
    wait_for(Duration::from_secs(30), "the roll of sirius-api", || {
        cluster
            .in_flight()
            .is_some_and(|r| r.step == Step::Roll && r.target_index == 0)
    })
    .await;
    let sim = &cluster.sim;
    set_engine_strategy(
        sim,
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}),
    );
    cluster.wait_degraded(Reason::TargetCannotRoll).await;
    let held = cluster.status();
    assert_eq!(
        held.current_rotation.as_ref().map(|r| r.target_index),
        Some(2),
        "{held:?}"
    );
    assert!(
        event(sim, "TargetCannotRoll")["note"]
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
    assert!(cluster.accepts(&known_key()));
    assert_eq!(cluster.in_flight().map(|r| r.target_index), Some(2));

    set_engine_strategy(
        sim,
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    );
    wait_rotated(sim).await;
    cluster.kill_operator();
    assert!(!cluster.accepts(&known_key()));
    let engine = cluster
        .sim
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
    let mut cluster = Cluster::start().await;
    // The engine runs only with the installed key: its rollout fails and the rotation rolls back.
    cluster.sim.set_rollout_behavior(
        NS,
        "sirius-engine",
        kube_sim::RolloutBehavior::StallUnlessSecret(known_key().expose().to_string()),
    );
    let spec = json!({"failurePolicy": "Rollback", "progressDeadlineSeconds": 10});
    install_with(&cluster, Value::Null, spec).await;
    cluster.run_operator();
    wait_for(Duration::from_secs(40), "the rollback", || {
        cluster
            .in_flight()
            .is_some_and(|r| r.rolling_back.is_some())
    })
    .await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let new_record = record_key(&KeyId(cluster.in_flight().unwrap().new_key_id.unwrap()));
    // The UI's pods run the new key; made OnDelete, its stamped template replaces none of them.
    set_update_strategy(
        sim,
        "daemonsets",
        "sirius-ui",
        json!({"type": "OnDelete", "rollingUpdate": null}),
    );
    wait_for(
        Duration::from_secs(30),
        "the pod gate to name the UI",
        || {
            cluster.has_event(Reason::TargetCannotRoll)
                && cluster.status().conditions.iter().any(|c| {
                    c.reason == Reason::WaitingForPods
                        && c.message
                            .contains("DaemonSet sirius-ui does not replace its pods by itself")
                })
        },
    )
    .await;
    let note = event(sim, "TargetCannotRoll")["note"].clone();
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
        valkey.exists(&new_record),
        "the new key stays valid while the UI's pods hold it"
    );

    set_update_strategy(
        sim,
        "daemonsets",
        "sirius-ui",
        json!({"type": "RollingUpdate"}),
    );
    // Until the last UI pod left the new key, its record stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let valid = valkey.exists(&new_record);
        if !ui_on_new() {
            break;
        }
        assert!(valid, "the new key was removed while a UI pod held it");
        assert!(std::time::Instant::now() < deadline, "the UI never rolled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for(Duration::from_secs(60), "the rollback to finish", || {
        cluster.in_flight().is_none()
    })
    .await;
    cluster.kill_operator();
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    assert!(!valkey.exists(&new_record));
    assert!(cluster.accepts(&known_key()));
    assert!(sim.pods().iter().filter(|p| p.namespace == NS).all(|p| {
        p.secrets.get("sirius-api-key/SIRIUS_API_KEY") == Some(&Some(known_key().expose().into()))
    }));
}
