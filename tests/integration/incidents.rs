//! The runbook's incidents, handled by the operator by itself: Valkey outage and data loss,
//! a deleted or edited consumers' Secret, missing and paused targets, a failed rollout.

use crate::common::*;
use apikey_rotator::crd::TargetState;
use apikey_rotator::key::RawKey;
use kube_sim::RolloutBehavior;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_data_loss_between_rotations_is_repaired_within_a_resync() {
    let mut cluster = Cluster::start().await;
    let old = cluster.install(1, None, json!({})).await;
    cluster.run_operator_with_resync(Duration::from_secs(1));
    wait_for(Duration::from_secs(10), "the adopted key's record", || {
        cluster.accepts(&old)
    })
    .await;
    // Sirius v1.0 sets its bootstrap flag; the operator notes that it is in use.
    cluster.valkey.set("apikey:bootstrap_complete", "true");
    wait_for(Duration::from_secs(10), "Ready with the flag noted", || {
        cluster.status().phase == Some(Phase::Ready) && cluster.status().bootstrap_flag_in_use
    })
    .await;
    cluster.flush_valkey();
    wait_for(
        Duration::from_secs(5),
        "the record to be written back",
        || cluster.accepts(&old),
    )
    .await;
    wait_for(
        Duration::from_secs(15),
        "the ValkeyStateRestored Event",
        || cluster.has_event(Reason::ValkeyStateRestored),
    )
    .await;
    wait_for(
        Duration::from_secs(5),
        "the bootstrap flag set again",
        || cluster.valkey.get("apikey:bootstrap_complete").as_deref() == Some("true"),
    )
    .await;
    wait_for(Duration::from_secs(5), "BootstrapFlagRestored", || {
        cluster.has_event(Reason::BootstrapFlagRestored)
    })
    .await;
    cluster.kill_operator();
    assert_eq!(
        cluster.status().phase,
        Some(Phase::Ready),
        "a repaired record does not take the rotation out of Ready"
    );
}

/// With the resync an hour away, only Valkey's change feed can explain a repair: a flush, one
/// deleted record, and a restart of the server without persistence are each written back within
/// seconds (milliseconds, in practice: printed with `--no-capture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_data_loss_is_repaired_from_valkeys_change_feed_without_waiting_for_a_resync() {
    let mut cluster = Cluster::start().await;
    // A deleted record is written back too (by default it would be a revocation: see
    // adversity::a_key_revoked_in_sirius_itself_is_honoured_and_replaced_at_once).
    let old = cluster
        .install(1, None, json!({"externalRevocation": "Restore"}))
        .await;
    // Sirius v1.0 has started: its record and bootstrap flag are there before the operator.
    let record = record_key(&old.id());
    cluster.valkey.set(
        &record,
        &apikey_rotator::sirius::record_json(
            &old,
            "root",
            "system-bootstrap",
            jiff::Timestamp::now(),
        ),
    );
    cluster.valkey.set("apikey:bootstrap_complete", "true");
    cluster.run_operator_with_resync(Duration::from_secs(3600));
    wait_for(Duration::from_secs(10), "Ready with the flag noted", || {
        cluster.status().phase == Some(Phase::Ready) && cluster.status().bootstrap_flag_in_use
    })
    .await;
    wait_for(Duration::from_secs(5), "the operator's change feed", || {
        !cluster.valkey.change_feeds().is_empty()
    })
    .await;
    let intact = |valkey: &Valkey| {
        valkey.exists(&record) && valkey.get("apikey:bootstrap_complete").as_deref() == Some("true")
    };

    type Lose = fn(&mut Valkey, &str);
    let losses: [(&str, Lose); 3] = [
        ("FLUSHALL", |valkey, _| valkey.flushall()),
        ("the active key's record deleted", |valkey, record| {
            valkey.del(record)
        }),
        ("a restart without persistence", |valkey, _| {
            valkey.restart()
        }),
    ];
    for (what, lose) in losses {
        let lost = std::time::Instant::now();
        lose(&mut cluster.valkey, &record);
        assert!(!intact(&cluster.valkey), "{what} lost nothing");
        wait_for(
            Duration::from_secs(10),
            &format!("repair after {what}"),
            || intact(&cluster.valkey),
        )
        .await;
        eprintln!("{what}: repaired in {} ms", lost.elapsed().as_millis());
    }
    wait_for(
        Duration::from_secs(5),
        "the ValkeyStateRestored Event",
        || cluster.has_event(Reason::ValkeyStateRestored),
    )
    .await;
    // The restart may have been reported as an outage meanwhile; it heals without a resync too.
    wait_for(Duration::from_secs(10), "Ready", || {
        cluster.status().phase == Some(Phase::Ready)
    })
    .await;
    cluster.kill_operator();
}

/// A change feed sees only what changes after it starts tracking; a flush in the moment between
/// a rotation's read of Valkey and that start would wait for the resync. So a feed that starts
/// tells its rotations to read Valkey again, once tracking is on, without counting it as a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_feed_that_starts_tracking_has_its_rotations_read_valkey_again() {
    use apikey_rotator::metrics::Metrics;
    use apikey_rotator::valkey_watch::{Loss, Watchers};
    let valkey = Valkey::start();
    let metrics = std::sync::Arc::new(Metrics::new());
    let (watchers, mut losses) = Watchers::new(metrics.clone());
    let endpoint = apikey_rotator::valkey_endpoint::Endpoint {
        url: valkey.url(),
        password: None,
        insecure_skip_tls_verify: false,
        tls: None,
        server_name: None,
    };
    watchers.ensure("sirius/rotation", &endpoint, "apikey:");
    let started = tokio::time::timeout(Duration::from_secs(10), losses.recv())
        .await
        .expect("a started feed asks for a fresh read")
        .unwrap();
    assert_eq!(
        started,
        Loss {
            url: valkey.url(),
            prefix: "apikey:".into(),
            missing: None,
            reconnected: false,
        }
    );
    assert_eq!(
        valkey.change_feeds().len(),
        1,
        "the read is asked for once tracking is on"
    );
    let sample = |name: &str| {
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    assert_eq!(
        sample("apikey_rotator_valkey_losses_reported_total"),
        Some(0.0),
        "a start is not a loss"
    );
    // A later flush is one.
    valkey.flushall();
    let flushed = tokio::time::timeout(Duration::from_secs(10), losses.recv())
        .await
        .expect("the flush is reported")
        .unwrap();
    assert_eq!(flushed.missing, None);
    assert_eq!(
        sample("apikey_rotator_valkey_losses_reported_total"),
        Some(1.0)
    );
}

/// The Valkey password comes from `valkey.passwordSecretRef` (here an ACL user named in the URL).
/// When it changes on the server and in the Secret, the operator and its change feed go on with
/// the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valkey_password_from_a_secret_is_used_and_a_changed_one_is_picked_up() {
    use base64::Engine;
    let valkey = Valkey::start();
    let set_password = |password: &str| valkey.set_user_password("sirius", password);
    let password_data = |password: &str| json!({"password": base64::engine::general_purpose::STANDARD.encode(password)});
    set_password("first-password");
    let sim = start_sim().await;
    sim.create_object(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        // Its owner lets this rotation send it to Valkey (without this, SecretNotPermitted).
        "metadata": {"name": "sirius-valkey-auth", "namespace": NS,
                     "annotations": {"keys.siriusscan.io/valkey-password": "sirius"}},
        "data": password_data("first-password"),
    }))
    .unwrap();
    let old = known_key();
    let url = format!("redis://sirius@127.0.0.1:{}/0", valkey.port);
    let auth =
        json!({"valkey": {"passwordSecretRef": {"name": "sirius-valkey-auth", "key": "password"}}});
    install_sirius(&sim, &url, &old, 1, None, auth).await;
    let operator = spawn_operator_with_resync(&sim, Duration::from_secs(3600));
    let record = record_key(&old.id());
    wait_for(
        Duration::from_secs(10),
        "Ready, with the record written as sirius",
        || status(&sim).phase == Some(Phase::Ready) && valkey.exists(&record),
    )
    .await;
    let mut feeds = vec![];
    wait_for(Duration::from_secs(5), "a change feed as sirius", || {
        feeds = valkey.change_feeds();
        feeds.len() == 1 && feeds[0].1 == "sirius"
    })
    .await;
    let first_feed = feeds[0].0.clone();
    // The reconciles that Ready's own status writes trigger end; with the resync an hour away,
    // nothing but the feed can now make the operator read the password again.
    tokio::time::sleep(Duration::from_secs(1)).await;

    set_password("second-password");
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-valkey-auth",
        json!({"data": password_data("second-password")}),
    )
    .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("sirius")
        .exec(&mut valkey.conn())
        .unwrap();
    // The old feed is refused on reconnecting; the reconcile that follows reads the new password
    // and starts a feed with it (a new connection: the killed one may linger in CLIENT LIST).
    wait_for(
        Duration::from_secs(10),
        "a change feed with the new password",
        || {
            let feeds = valkey.change_feeds();
            feeds.len() == 1 && feeds[0].1 == "sirius" && feeds[0].0 != first_feed
        },
    )
    .await;
    valkey.flushall();
    wait_for(Duration::from_secs(5), "the record written back", || {
        valkey.exists(&record)
    })
    .await;
    operator.abort();
    assert_eq!(status(&sim).phase, Some(Phase::Ready));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_down_blocks_every_step_that_needs_it_and_the_rotation_resumes_after() {
    let mut cluster = Cluster::start().await;
    cluster.valkey.stop();
    let old = cluster.install(1, Some("now"), json!({})).await;
    cluster.run_operator();
    wait_for(
        Duration::from_secs(15),
        "Degraded ValkeyUnavailable",
        || degraded_reason(&cluster.sim).as_deref() == Some("ValkeyUnavailable"),
    )
    .await;
    cluster.wait_event(Reason::ValkeyUnavailable).await;
    // Nothing moved: no key minted, no Secret switched, no restart.
    assert_eq!(cluster.consumers_key(), old);
    assert!(cluster.sim.rollouts().iter().all(|r| r.revision == 1));
    cluster.valkey.restart();
    wait_for(
        Duration::from_secs(60),
        "the rotation after Valkey returned",
        || cluster.status().revision == 1,
    )
    .await;
    cluster.kill_operator();
    assert_ne!(
        degraded_reason(&cluster.sim).as_deref(),
        Some("ValkeyUnavailable")
    );
    assert!(cluster.accepts(&cluster.consumers_key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_consumer_secret_is_restored_to_the_active_key() {
    let mut cluster = Cluster::start().await;
    let old = cluster.install(1, None, json!({})).await;
    cluster.run_operator();
    wait_for(Duration::from_secs(10), "Ready", || {
        cluster.status().phase == Some(Phase::Ready)
    })
    .await;

    let sim = &cluster.sim;
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": "dGFtcGVyZWQ="}}),
    )
    .unwrap();
    let restored =
        || secret_value(sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref() == Some(old.expose());
    wait_for(
        Duration::from_secs(10),
        "the edited Secret restored",
        restored,
    )
    .await;
    cluster.wait_event(Reason::SecretRestored).await;

    sim.delete_object("", "secrets", NS, "sirius-api-key")
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the deleted Secret recreated",
        restored,
    )
    .await;
    cluster.kill_operator();
    let warning = event(&cluster.sim, "SecretRestored");
    assert_eq!(warning["type"], "Warning");
    assert!(
        !warning.to_string().contains("dGFtcGVyZWQ") && !warning.to_string().contains("tampered"),
        "no secret value in the Event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_halts_with_the_old_key_valid_and_resumes_when_it_recovers() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = known_key();
    sim.create_object(consumer_secret(&old)).unwrap();
    deploy_sirius_with_deadline(&sim, 1, Some(1)).await;
    sim.set_rollout_behavior(NS, "sirius-ui", RolloutBehavior::Stall);
    let mut manifest = rotation(&valkey.url(), json!({}));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(20), "Degraded RolloutFailed", || {
        degraded_reason(&sim).as_deref() == Some("RolloutFailed")
    })
    .await;
    let message = condition(&sim, "Degraded")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("sirius-ui") && message.contains("timed out progressing"),
        "{message}"
    );
    assert_eq!(
        in_flight(&sim).and_then(|r| r.targets.get(1).map(|t| t.state)),
        Some(TargetState::Failed)
    );
    // The old key is still valid and sirius-engine was never touched.
    assert!(valkey.exists(&format!("apikey:{}", old.id())));
    assert!(
        !sim.rollouts()
            .iter()
            .any(|r| r.deployment == "sirius-engine" && r.revision == 2)
    );
    wait_event(&sim, Reason::RolloutFailed).await;

    // Someone fixes the Deployment: the rotation picks up where it stopped.
    sim.set_rollout_behavior(NS, "sirius-ui", RolloutBehavior::Normal);
    wait_for(Duration::from_secs(30), "the rotation to finish", || {
        status(&sim).revision == 1
    })
    .await;
    operator.abort();
    assert!(!valkey.exists(&format!("apikey:{}", old.id())));
    assert_eq!(degraded_reason(&sim), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_paused_targets_hold_the_rotation_with_a_clear_reason() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = known_key();
    sim.create_object(consumer_secret(&old)).unwrap();
    for name in ["sirius-api", "sirius-ui"] {
        sim.create_object(sirius_deployment(name, 1)).unwrap();
    }
    wait_initial_rollouts(&sim, 2).await;
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-ui",
        json!({"spec": {"paused": true}}),
    )
    .unwrap();
    let mut manifest = rotation(&valkey.url(), json!({}));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(20), "Degraded TargetPaused", || {
        degraded_reason(&sim).as_deref() == Some("TargetPaused")
    })
    .await;
    assert!(
        sim.rollouts()
            .iter()
            .all(|r| r.deployment != "sirius-ui" || r.revision == 1),
        "a paused target is not touched"
    );
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-ui",
        json!({"spec": {"paused": false}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "Degraded TargetNotFound", || {
        degraded_reason(&sim).as_deref() == Some("TargetNotFound")
    })
    .await;
    assert!(
        condition(&sim, "Degraded")["message"]
            .as_str()
            .unwrap()
            .contains("sirius-engine")
    );
    assert!(
        valkey.exists(&format!("apikey:{}", old.id())),
        "nothing is revoked while a target is missing"
    );
    sim.create_object(sirius_deployment("sirius-engine", 1))
        .unwrap();
    wait_for(Duration::from_secs(30), "the rotation to finish", || {
        status(&sim).revision == 1
    })
    .await;
    operator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_storms_and_server_errors_are_retried_quickly() {
    let mut cluster = Cluster::start().await;
    let old = cluster.install(1, Some("now"), json!({})).await;
    // Every kind of write the rotation makes fails several times over.
    let sim = &cluster.sim;
    sim.inject_faults("patch", "secrets", 3, 409);
    sim.inject_faults("patch", "deployments", 3, 409);
    sim.inject_faults("update", "secrets", 3, 409);
    sim.inject_faults("patch", "apikeyrotations", 3, 500);
    sim.inject_faults("get", "deployments", 3, 503);
    let started = std::time::Instant::now();
    cluster.run_operator();
    wait_for(
        Duration::from_secs(30),
        "the rotation despite the faults",
        || cluster.status().revision == 1,
    )
    .await;
    cluster.kill_operator();
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "transient errors took {:?}",
        started.elapsed()
    );
    let new = cluster.consumers_key();
    assert_ne!(new, old);
    assert!(cluster.accepts(&new) && !cluster.accepts(&old));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rotation_claiming_the_same_secret_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::start().await;
    let old = cluster.install(1, None, json!({})).await;
    cluster.run_operator();
    wait_for(Duration::from_secs(10), "Ready", || {
        cluster.status().phase == Some(Phase::Ready)
    })
    .await;
    let mut second = rotation(
        &cluster.valkey.url(),
        json!({"targets": [{"name": "sirius-worker"}]}),
    );
    second["metadata"]["name"] = json!("second");
    second["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    cluster.sim.create_object(second).unwrap();
    wait_for(Duration::from_secs(10), "the second claim refused", || {
        degraded_condition(&cluster.sim, "second").is_some_and(|c| c["reason"] == "ClaimConflict")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the refused claim changes nothing
    cluster.kill_operator();
    let sim = &cluster.sim;
    assert!(
        degraded_condition(sim, "second").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("already rotated by ApiKeyRotation sirius")
    );
    assert!(
        sim.get_object("", "secrets", NS, "second-apikey-vault")
            .is_none()
    );
    assert_eq!(cluster.consumers_key(), old);
    assert_eq!(
        cluster.status().phase,
        Some(Phase::Ready),
        "the first rotation is undisturbed"
    );
}

/// The `Degraded=True` condition of the ApiKeyRotation `name` (raw), if it is.
fn degraded_condition(sim: &kube_sim::Sim, name: &str) -> Option<serde_json::Value> {
    sim.get_object("keys.siriusscan.io", "apikeyrotations", NS, name)
        .and_then(|o| o["status"]["conditions"].as_array().cloned())
        .and_then(|cs| {
            cs.into_iter()
                .find(|c| c["type"] == "Degraded" && c["status"] == "True")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_secret_drift_policy_report_an_edited_secret_is_reported_not_restored() {
    let mut cluster = Cluster::start().await;
    let old = cluster
        .install(1, None, json!({"secretDriftPolicy": "Report"}))
        .await;
    cluster.run_operator();
    wait_for(Duration::from_secs(10), "Ready", || {
        cluster.status().phase == Some(Phase::Ready)
    })
    .await;
    let sim = &cluster.sim;
    let foreign = RawKey::new("foreign-key-value");
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": "Zm9yZWlnbi1rZXktdmFsdWU="}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "Degraded SecretDrift", || {
        degraded_reason(sim).as_deref() == Some("SecretDrift")
    })
    .await;
    cluster.wait_event(Reason::SecretDrift).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the Secret is left as it is
    assert_eq!(cluster.consumers_key(), foreign, "reported, not restored");
    let message = condition(sim, "Degraded")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(foreign.id().short()) && message.contains(old.id().short()),
        "{message}"
    );
    // Putting the right key back clears it.
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(old.expose());
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": encoded}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "drift cleared", || {
        degraded_reason(sim).is_none() && cluster.status().phase == Some(Phase::Ready)
    })
    .await;
    cluster.kill_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_scaled_to_zero_completes_at_once_and_the_rotation_goes_on() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = known_key();
    sim.create_object(consumer_secret(&old)).unwrap();
    for (name, replicas) in [("sirius-api", 1), ("sirius-ui", 0), ("sirius-engine", 1)] {
        sim.create_object(sirius_deployment(name, replicas))
            .unwrap();
    }
    let mut manifest = rotation(&valkey.url(), json!({}));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(30), "the rotation", || {
        status(&sim).revision == 1
    })
    .await;
    operator.abort();
    assert_eq!(in_flight(&sim), None);
    let ui = sim
        .get_object("apps", "deployments", NS, "sirius-ui")
        .unwrap();
    assert!(
        ui["spec"]["template"]["metadata"]["annotations"]["keys.siriusscan.io/key-id"].is_string(),
        "the scaled-down target is still marked, so it starts on the new key"
    );
    assert!(!valkey.exists(&format!("apikey:{}", old.id())));
}
