//! Deleting an ApiKeyRotation: the finalizer; `deletionPolicy: Retain` (default) never revokes a
//! key, `Revoke` decommissions them and waits for Valkey.

use crate::common::*;
use apikey_rotator::key::RawKey;
use serde_json::{Value, json};
use std::time::Duration;

const GROUP: &str = "keys.siriusscan.io";
const PLURAL: &str = "apikeyrotations";

fn rotation_object(sim: &kube_sim::Sim) -> Option<Value> {
    sim.get_object(GROUP, PLURAL, NS, "sirius")
}

/// Sirius installed with a rotation requested (`extra` in the spec); no operator yet.
async fn rotated_once(extra: Value) -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install(1, Some("one"), extra).await;
    cluster
}

async fn wait_rotated(sim: &kube_sim::Sim) -> String {
    wait_for(Duration::from_secs(30), "rotation 1", || {
        status(sim).revision == 1
    })
    .await;
    assert_eq!(
        rotation_object(sim).unwrap()["metadata"]["finalizers"],
        json!(["keys.siriusscan.io/cleanup"]),
        "the operator adds its finalizer"
    );
    status(sim).active_key_id.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_keeps_the_secret_and_the_active_key_valid() {
    let mut cluster = rotated_once(json!({})).await;
    cluster.run_operator();
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let active = wait_rotated(sim).await;
    let secret_before = secret_value(sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap();

    sim.delete_object(GROUP, PLURAL, NS, "sirius").unwrap();
    wait_for(Duration::from_secs(10), "the ApiKeyRotation gone", || {
        rotation_object(sim).is_none()
    })
    .await;
    assert_eq!(
        secret_value(sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref(),
        Some(secret_before.as_str()),
        "the consumers' Secret is untouched"
    );
    assert_eq!(RawKey::new(secret_before).id().as_str(), active);
    assert!(
        valkey.exists(&format!("apikey:{active}")),
        "the active key stays valid"
    );
    assert!(!valkey.exists("apikey-rotator:state:sirius/sirius"));
    assert!(
        valkey.exists("apikey-rotator:history:sirius/sirius"),
        "history is kept for audit"
    );
    assert!(cluster.has_event(Reason::DeletionRetainedKeys));
    wait_for(
        Duration::from_secs(5),
        "the vault garbage-collected",
        || {
            sim.get_object("", "secrets", NS, "sirius-apikey-vault")
                .is_none()
        },
    )
    .await;
    cluster.kill_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_mid_rotation_leaves_both_keys_valid() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = known_key();
    sim.create_object(consumer_secret(&old)).unwrap();
    deploy_sirius(&sim, 1).await;
    // The last target never becomes ready: the rotation stays in flight.
    sim.set_rollout_behavior(NS, "sirius-engine", kube_sim::RolloutBehavior::Stall);
    let mut manifest = rotation(&valkey.url(), json!({}));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(30), "rolling the engine", || {
        in_flight(&sim).is_some_and(|r| r.target_index == 2)
    })
    .await;
    let new_id = in_flight(&sim).unwrap().new_key_id.unwrap();
    sim.delete_object(GROUP, PLURAL, NS, "sirius").unwrap();
    wait_for(Duration::from_secs(10), "the ApiKeyRotation gone", || {
        rotation_object(&sim).is_none()
    })
    .await;
    assert!(
        valkey.exists(&format!("apikey:{}", old.id())),
        "old key valid"
    );
    assert!(valkey.exists(&format!("apikey:{new_id}")), "new key valid");
    operator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_deletes_the_records_and_waits_for_valkey() {
    let mut cluster = rotated_once(json!({"deletionPolicy": "Revoke"})).await;
    cluster.run_operator();
    let active = wait_rotated(&cluster.sim).await;

    // With Valkey down the deletion waits: nothing can be confirmed revoked.
    cluster.valkey.stop();
    cluster
        .sim
        .delete_object(GROUP, PLURAL, NS, "sirius")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // the deletion waits meanwhile
    let pending = rotation_object(&cluster.sim).expect("kept while Valkey is down");
    assert!(pending["metadata"]["deletionTimestamp"].is_string());

    cluster.valkey.restart();
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let record = format!("apikey:{active}");
    valkey.set(&record, "{}");
    valkey.set("apikey-rotator:history:sirius/sirius", "x");
    wait_for(Duration::from_secs(30), "the ApiKeyRotation gone", || {
        rotation_object(sim).is_none()
    })
    .await;
    assert!(!valkey.exists(&record), "the active key is revoked");
    assert!(!valkey.exists("apikey-rotator:history:sirius/sirius"));
    assert!(cluster.has_event(Reason::DeletionRevokedKeys));
    cluster.kill_operator();
}

/// A namespace deleted with everything in it, Valkey's password Secret first: a `Revoke`
/// deletion can no longer reach Valkey. It keeps trying (the namespace stays Terminating) until
/// Valkey has been out of reach for the operator's timeout (here 3 s), then lets go, so the
/// namespace goes; the key it could not revoke stays valid and is named (in the log: the
/// namespace takes no more Events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_deletion_in_a_namespace_being_deleted_ends_after_its_timeout() {
    use base64::Engine;
    let valkey = Valkey::start();
    valkey.set_user_password("sirius", "pw");
    let sim = start_sim().await;
    sim.create_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .unwrap();
    sim.create_object(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "valkey-auth", "namespace": NS,
                     "annotations": {"keys.siriusscan.io/valkey-password": "sirius"}},
        "data": {"password": base64::engine::general_purpose::STANDARD.encode("pw")},
    }))
    .unwrap();
    let old = known_key();
    let url = format!("redis://sirius@127.0.0.1:{}/0", valkey.port);
    let spec = json!({"deletionPolicy": "Revoke",
        "valkey": {"passwordSecretRef": {"name": "valkey-auth", "key": "password"}}});
    install_sirius(&sim, &url, &old, 1, None, spec).await;
    let settings = apikey_rotator::controller::Settings {
        revoke_on_delete_timeout: Duration::from_secs(3),
        ..apikey_rotator::controller::Settings::namespaced(NS)
    };
    let operator = spawn_operator_with_settings(&sim, settings);
    let record = format!("apikey:{}", old.id());
    wait_for(Duration::from_secs(20), "Ready", || {
        status(&sim).phase == Some(Phase::Ready) && valkey.exists(&record)
    })
    .await;

    sim.delete_object("", "secrets", NS, "valkey-auth").unwrap();
    sim.delete_object("", "namespaces", "", NS).unwrap();
    let namespace = || sim.get_object("", "namespaces", "", NS);
    tokio::time::sleep(Duration::from_millis(1500)).await; // still within its 3 s timeout
    assert!(
        namespace().is_some() && rotation_object(&sim).is_some(),
        "within its timeout the deletion keeps trying Valkey"
    );
    wait_for(Duration::from_secs(30), "the namespace gone", || {
        namespace().is_none()
    })
    .await;
    assert!(valkey.exists(&record), "nothing could revoke it");
    operator.abort();
}

/// A rotation deleted after someone stripped its finalizer gets no clean-up, but what the
/// operator held open for it does not outlive it: its Valkey change feed (and its Secret
/// watches and key store) are let go at the next resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_deleted_without_its_clean_up_leaves_no_change_feed_behind() {
    let mut cluster = rotated_once(json!({})).await;
    cluster.run_operator_with_resync(Duration::from_millis(300));
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    wait_rotated(sim).await;
    wait_for(Duration::from_secs(10), "its change feed", || {
        !valkey.change_feeds().is_empty()
    })
    .await;
    sim.merge_patch_object(
        GROUP,
        PLURAL,
        NS,
        "sirius",
        json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
    sim.delete_object(GROUP, PLURAL, NS, "sirius").unwrap();
    wait_for(Duration::from_secs(10), "the ApiKeyRotation gone", || {
        rotation_object(sim).is_none()
    })
    .await;
    wait_for(Duration::from_secs(5), "its change feed closed", || {
        valkey.change_feeds().is_empty()
    })
    .await;
    cluster.kill_operator();
}
