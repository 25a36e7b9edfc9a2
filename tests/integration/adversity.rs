//! Ordinary events nobody scripts: a finished target scaled, the vault Secret deleted, a Valkey
//! that refuses the operator, a write someone else keeps undoing. None of them may cost a key,
//! a rollback or a request storm.

use crate::common::*;
use apikey_rotator::key::RawKey;
use apikey_rotator::reconciler::DEFAULT_RESYNC;
use kube_sim::Sim;
use serde_json::json;
use std::time::Duration;

/// The usual install (the consumers' Secret, the three Deployments, an ApiKeyRotation with
/// `extra` in its spec), the operator running with `resync`, and the adopted key Ready with its
/// record written.
async fn ready(extra: serde_json::Value, resync: Duration) -> (Cluster, RawKey) {
    let mut cluster = Cluster::start().await;
    let old = cluster.install(1, None, extra).await;
    cluster.run_operator_with_resync(resync);
    wait_for(Duration::from_secs(10), "Ready", || {
        cluster.status().phase == Some(Phase::Ready) && cluster.accepts(&old)
    })
    .await;
    (cluster, old)
}

fn total_requests(sim: &Sim) -> u64 {
    sim.request_counts().values().sum()
}

fn delete_vault(sim: &Sim) {
    sim.delete_object("", "secrets", NS, "sirius-apikey-vault")
        .unwrap();
}

/// Issue 13, case 1: `kubectl scale` of a target that finished its rollout (its new pods slower
/// than every deadline) late in the validation window. Before, the Roll loop re-judged it against
/// a deadline counted from its old `rolledAt`: RolloutFailed, and the whole rotation rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_after_a_target_completed_never_fails_or_rolls_back_the_rotation() {
    let mut cluster = Cluster::start().await;
    let spec = json!({"failurePolicy": "Rollback", "progressDeadlineSeconds": 10, "validationWindowSeconds": 12});
    let old = cluster.install(1, Some("now"), spec).await;
    cluster.run_operator();
    cluster.wait_step(Step::Validate).await;
    let sim = &cluster.sim;
    // The new pods of the scale-up take longer than the 10 s deadline to become ready.
    sim.set_pod_ready_after(NS, "sirius-api", Duration::from_secs(30));
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-api",
        json!({"spec": {"replicas": 2}}),
    )
    .unwrap();
    wait_revision(sim, 1).await;
    cluster.kill_operator();
    let reasons = event_reasons(&cluster.sim);
    for bad in [
        Reason::RolloutFailed,
        Reason::RotationRolledBack,
        Reason::SecretRolledBack,
    ] {
        assert!(
            !cluster.has_event(bad),
            "{bad} after a scale-up: {reasons:?}"
        );
    }
    assert!(!cluster.accepts(&old));
    assert!(cluster.accepts(&cluster.consumers_key()));
}

/// Issue 13, case 2: Valkey with `requirepass` and no `passwordSecretRef`. Before, the change
/// feed's refused HELLO reported a loss, the loss scheduled an immediate reconcile over the error
/// policy's back-off, and the operator sent about 950 API requests a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valkey_that_refuses_the_operator_backs_off_and_costs_the_api_server_almost_nothing() {
    let mut cluster = Cluster::start().await;
    cluster.install(1, None, json!({})).await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("only-the-admin-knows")
        .exec(&mut cluster.valkey.conn())
        .unwrap();
    cluster.run_operator();
    cluster.wait_degraded(Reason::ValkeyUnavailable).await;
    let sim = &cluster.sim;
    let message = condition(sim, "Degraded")["message"].to_string();
    assert!(
        message.contains("NOAUTH") || message.contains("uthentication"),
        "{message}"
    );
    let before = total_requests(sim);
    tokio::time::sleep(Duration::from_secs(20)).await; // 20 s of refusals, counted
    let during = total_requests(sim) - before;
    cluster.kill_operator();
    let sim = &cluster.sim;
    assert!(
        during < 10,
        "{during} API requests in 20 s from one rotation whose Valkey refuses it: {:?}",
        sim.request_counts()
    );
    assert!(
        events(sim)
            .iter()
            .filter(|e| e["reason"] == "ValkeyUnavailable")
            .count()
            <= 2
    );
}

/// Issue 13, case 3: the vault deleted while sirius-engine still has to roll. Before, the
/// operator adopted the consumers' (new) key as if nothing had happened and said
/// `RotationSucceeded` ("old key is revoked") with the old record still valid and the engine never
/// rolled. Now the vault is recreated from the new key and the rotation goes on to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_deleted_mid_roll_is_recreated_from_the_new_key_and_the_rotation_really_finishes() {
    let mut cluster = Cluster::start().await;
    let old = cluster.install(1, Some("now"), json!({})).await;
    cluster
        .sim
        .set_pod_ready_after(NS, "sirius-ui", Duration::from_secs(2));
    cluster.run_operator();
    wait_for(Duration::from_secs(30), "sirius-ui rolling", || {
        cluster
            .in_flight()
            .is_some_and(|r| r.step == Step::Roll && r.target_index == 1)
    })
    .await;
    delete_vault(&cluster.sim);
    wait_revision(&cluster.sim, 1).await;
    cluster.kill_operator();
    let sim = &cluster.sim;
    let lost = event(sim, "VaultLost");
    assert!(
        lost["note"]
            .as_str()
            .unwrap()
            .contains("rollback is no longer possible"),
        "{lost}"
    );
    let new = cluster.consumers_key();
    assert_ne!(new, old);
    assert_eq!(template_key(sim, "sirius-engine"), json!(new.id().0));
    assert!(!cluster.accepts(&old), "finished with the old key valid");
    assert!(cluster.accepts(&new));
    assert_eq!(
        secret_value(sim, "sirius-apikey-vault", "current").as_deref(),
        Some(new.expose())
    );
}

/// The vault deleted before the new key reached the consumers' Secret: the vault is recreated
/// from the old key, the undelivered new key's record is revoked (not left valid and
/// unrecorded), and a fresh key is minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_deleted_before_the_switch_leaves_no_orphan_key_valid() {
    let (mut cluster, _old) = ready(json!({}), DEFAULT_RESYNC).await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    // The switch (an apply of the consumers' Secret) keeps failing for a while (500: kube's
    // client retries a 503 by itself).
    sim.inject_faults("patch", "secrets", 1_000, 500);
    cluster.request_rotation("now");
    let mut first_new = String::new();
    wait_for(Duration::from_secs(20), "the new key registered", || {
        first_new = cluster
            .in_flight()
            .and_then(|r| r.new_key_id)
            .unwrap_or_default();
        !first_new.is_empty() && valkey.exists(&format!("apikey:{first_new}"))
    })
    .await;
    delete_vault(sim);
    wait_for(Duration::from_secs(20), "the orphan revoked", || {
        !valkey.exists(&format!("apikey:{first_new}"))
    })
    .await;
    sim.clear_faults();
    wait_revision(sim, 1).await;
    cluster.kill_operator();
    assert!(cluster.has_event(Reason::UndeliveredKeyRevoked));
    let new = cluster.consumers_key();
    assert_ne!(new.id().0, first_new, "a fresh key was minted");
    let mut records: Vec<String> = cluster
        .valkey
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("apikey:") && k.len() == "apikey:".len() + 64)
        .collect();
    records.sort();
    assert_eq!(
        records,
        vec![format!("apikey:{}", new.id())],
        "only the active key is valid"
    );
}

/// Outside a rotation: a deleted vault is recreated from the consumers' Secret when it holds the
/// active key; when it holds some other key, nothing is adopted or revoked and the rotation says
/// what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_lost_while_idle_is_restored_only_from_the_active_key() {
    let (mut cluster, old) = ready(json!({}), DEFAULT_RESYNC).await;
    let sim = &cluster.sim;
    delete_vault(sim);
    wait_for(Duration::from_secs(10), "the vault back", || {
        secret_value(sim, "sirius-apikey-vault", "current").as_deref() == Some(old.expose())
    })
    .await;
    cluster.wait_event(Reason::VaultLost).await;
    // Now the consumers' Secret gets a key nobody registered (reported, not restored), then
    // the vault is emptied.
    sim.merge_patch_object(
        "keys.siriusscan.io",
        "apikeyrotations",
        NS,
        "sirius",
        json!({"spec": {"secretDriftPolicy": "Report"}}),
    )
    .unwrap();
    // A reconcile that read the spec before the edit could still restore the Secret.
    wait_for(Duration::from_secs(10), "the edited spec observed", || {
        cluster.status().observed_generation == Some(2)
    })
    .await;
    let stranger = RawKey::new("fedcba9876543210".repeat(4));
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": base64_of(stranger.expose())}}),
    )
    .unwrap();
    cluster.wait_degraded(Reason::SecretDrift).await;
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-apikey-vault",
        json!({"data": {"current": null}}),
    )
    .unwrap();
    cluster.wait_degraded(Reason::VaultLost).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing is adopted or revoked
    cluster.kill_operator();
    let message = condition(&cluster.sim, "Degraded")["message"].to_string();
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(cluster.accepts(&old), "the active key stays valid");
    assert!(!cluster.accepts(&stranger));
    assert_eq!(
        cluster.consumers_key(),
        stranger,
        "the consumers' Secret is left as found"
    );
}

/// Another manager (a GitOps tool's self-heal) puts the old key back into the consumers' Secret
/// every time the operator switches it. The operator neither gives up the rotation nor loops:
/// it reports `WriteUndone` and writes again ever less often.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_someone_keeps_undoing_is_reported_and_backed_off() {
    // Not on `Cluster`: the other manager's task needs the stand-in in an `Arc`.
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = known_key();
    install_sirius(&sim, &valkey.url(), &old, 1, None, json!({})).await;
    let operator = spawn_operator_with_resync(&sim, DEFAULT_RESYNC);
    wait_for(Duration::from_secs(10), "Ready", || {
        status(&sim).phase == Some(Phase::Ready) && valkey.exists(&record_key(&old.id()))
    })
    .await;
    let sim = std::sync::Arc::new(sim);
    let undo = {
        let sim = sim.clone();
        let old = old.expose().to_string();
        tokio::spawn(async move {
            loop {
                if secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref()
                    != Some(old.as_str())
                {
                    let _ = sim.merge_patch_object(
                        "",
                        "secrets",
                        NS,
                        "sirius-api-key",
                        json!({"data": {"SIRIUS_API_KEY": base64_of(&old)}}),
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let patches = || {
        sim.request_counts()
            .get(&("patch".to_string(), "secrets".to_string()))
            .copied()
            .unwrap_or(0)
    };
    request_rotation(&sim, "now");
    wait_degraded(&sim, "WriteUndone").await;
    let message = condition(&sim, "Degraded")["message"].to_string();
    assert!(message.contains("Secret sirius-api-key"), "{message}");
    wait_event(&sim, Reason::WriteUndone).await;
    let before = patches();
    tokio::time::sleep(Duration::from_secs(8)).await; // 8 s of undone writes, counted
    let during = patches() - before;
    assert!(during <= 4, "{during} writes of the Secret in 8 s");
    // The other manager stops: the rotation finishes.
    undo.abort();
    tokio::time::timeout(Duration::from_secs(60), wait_revision(&sim, 1))
        .await
        .unwrap();
    operator.abort();
    assert!(!valkey.exists(&format!("apikey:{}", old.id())));
}

/// A key revoked in Sirius itself (one record deleted, Valkey otherwise intact: a leaked key
/// deleted in the UI) is a revocation, not data loss: it is never written back, and a rotation
/// starts at once although no maintenance window is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_in_sirius_itself_is_honoured_and_replaced_at_once() {
    // A window that is closed but for one minute a year.
    let windows = json!({"maintenanceWindows": [{"start": "0 3 1 1 *", "durationMinutes": 1}]});
    let (mut cluster, old) = ready(windows, Duration::from_secs(3600)).await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let record = record_key(&old.id());
    wait_for(Duration::from_secs(5), "the change feed", || {
        !valkey.change_feeds().is_empty()
    })
    .await;
    valkey.del(&record);
    let mut came_back = false;
    tokio::time::timeout(Duration::from_secs(45), async {
        while !(is_ready(sim, 1)) {
            came_back |= valkey.exists(&record);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the rotation the revocation started finishes");
    cluster.kill_operator();
    assert!(!came_back, "the revoked key's record was written back");
    let revoked = event(&cluster.sim, "KeyRevokedExternally");
    assert_eq!(revoked["type"], "Warning");
    let new = cluster.consumers_key();
    assert_ne!(new, old);
    assert!(cluster.accepts(&new));
    assert!(!cluster.has_event(Reason::ValkeyStateRestored));
}

/// A flush is data loss even when one of the operator's writes (its state entry, its history)
/// lands just after it: only the marker written with each record vouches that Valkey kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_followed_at_once_by_an_operator_write_is_repaired_not_taken_for_a_revocation() {
    let (mut cluster, old) = ready(json!({}), Duration::from_secs(3600)).await;
    wait_for(Duration::from_secs(5), "the change feed", || {
        !cluster.valkey.change_feeds().is_empty()
    })
    .await;
    let mut conn = cluster.valkey.conn();
    let state_keys: Vec<String> = redis::cmd("KEYS")
        .arg("apikey-rotator:state:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(state_keys.len(), 1, "the operator keeps its state entry");
    let state: String = redis::cmd("GET")
        .arg(&state_keys[0])
        .query(&mut conn)
        .unwrap();
    // In one transaction, so no read of the operator's can fall between the two.
    let _: ((), ()) = redis::pipe()
        .atomic()
        .cmd("FLUSHALL")
        .set(&state_keys[0], &state)
        .query(&mut conn)
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "an Event on the lost record",
        || {
            cluster.has_event(Reason::ValkeyStateRestored)
                || cluster.has_event(Reason::KeyRevokedExternally)
        },
    )
    .await;
    wait_for(Duration::from_secs(5), "the record written back", || {
        cluster.accepts(&old)
    })
    .await;
    cluster.kill_operator();
    let reasons = event_reasons(&cluster.sim);
    assert!(
        cluster.has_event(Reason::ValkeyStateRestored),
        "{reasons:?}"
    );
    assert!(
        !cluster.has_event(Reason::KeyRevokedExternally),
        "a flush was taken for a revocation: {reasons:?}"
    );
    assert_eq!(cluster.status().revision, 0, "no rotation started");
}

/// A record that exists but is no Sirius record of its key (malformed JSON, another id, another
/// Valkey type) counts as missing and is rewritten; a malformed history never blocks a finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_checked_not_only_counted() {
    let (mut cluster, old) = ready(json!({}), Duration::from_secs(1)).await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let record = record_key(&old.id());
    let valid = |valkey: &Valkey| {
        let mut conn = valkey.conn();
        let value: Result<Option<String>, _> = redis::cmd("GET").arg(&record).query(&mut conn);
        value
            .ok()
            .flatten()
            .is_some_and(|v| apikey_rotator::sirius::is_record_of(&v, &old.id()))
    };
    for (what, value) in [
        ("malformed JSON", "{\"id\":"),
        (
            "another key's record",
            "{\"id\":\"00\",\"label\":\"l\",\"prefix\":\"p\",\"created_by\":\"c\",\"created_at\":\"t\",\"last_used_at\":\"\"}",
        ),
    ] {
        valkey.set(&record, value);
        wait_for(
            Duration::from_secs(10),
            &format!("{what} rewritten"),
            || valid(valkey),
        )
        .await;
    }
    valkey.del(&record);
    let _: () = redis::cmd("HSET")
        .arg(&record)
        .arg("id")
        .arg(old.id().0)
        .query(&mut valkey.conn())
        .unwrap();
    wait_for(Duration::from_secs(10), "a hash replaced", || valid(valkey)).await;
    assert!(
        events(sim)
            .iter()
            .any(|e| e["reason"] == "ValkeyStateRestored"
                && e["note"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not a valid Sirius record")),
        "{:?}",
        event_reasons(sim)
    );
    // Someone wrote junk into the operator's history: the next rotation still finishes.
    let history = "apikey-rotator:history:sirius/sirius";
    let _: () = redis::cmd("HSET")
        .arg(history)
        .arg("not-a-revision")
        .arg("{")
        .query(&mut valkey.conn())
        .unwrap();
    cluster.request_rotation("now");
    wait_revision(sim, 1).await;
    valkey.del(history);
    valkey.set(history, "a string, not a hash");
    cluster.request_rotation("again");
    wait_revision(sim, 2).await;
    cluster.kill_operator();
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A rotation's change feed and key store go with it: moved to another Valkey, or deleted, the
/// connections it used close (none is left to a server nobody uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feeds_and_connections_are_released_with_their_rotation() {
    let other = Valkey::start();
    let (mut cluster, _old) = ready(json!({}), DEFAULT_RESYNC).await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    wait_for(Duration::from_secs(5), "a feed on the first Valkey", || {
        valkey.change_feeds().len() == 1
    })
    .await;
    sim.merge_patch_object(
        "keys.siriusscan.io",
        "apikeyrotations",
        NS,
        "sirius",
        json!({"spec": {"valkey": {"url": other.url()}}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the feed moved", || {
        other.change_feeds().len() == 1 && valkey.change_feeds().is_empty()
    })
    .await;
    // The key store's connection to the first Valkey is closed too (CLIENT LIST shows only the
    // connection that asks).
    let clients = |valkey: &Valkey| {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut valkey.conn())
            .unwrap();
        list.lines().count()
    };
    wait_for(
        Duration::from_secs(10),
        "no operator connection left",
        || clients(valkey) == 1,
    )
    .await;
    sim.delete_object("keys.siriusscan.io", "apikeyrotations", NS, "sirius")
        .unwrap();
    wait_for(Duration::from_secs(10), "the ApiKeyRotation gone", || {
        sim.get_object("keys.siriusscan.io", "apikeyrotations", NS, "sirius")
            .is_none()
    })
    .await;
    wait_for(Duration::from_secs(5), "no feed or connection left", || {
        other.change_feeds().is_empty() && clients(&other) == 1
    })
    .await;
    cluster.kill_operator();
}

/// One hung Valkey never delays another: with rotation `sirius`'s Valkey frozen (its reconnects
/// hang until they time out), rotation `second`'s records are written back within a second of
/// each flush of its own Valkey.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_valkey_never_delays_another_rotations_repair() {
    let healthy = Valkey::start();
    let (mut cluster, _old) = ready(json!({}), Duration::from_secs(1)).await;
    let (sim, hung) = (&cluster.sim, &cluster.valkey);
    // A second Sirius, its own Secret, Deployment and Valkey.
    let second_key = RawKey::new("fedcba9876543210".repeat(4));
    let mut secret = consumer_secret(&second_key);
    secret["metadata"]["name"] = json!("second-key");
    sim.create_object(secret).unwrap();
    let deployment = sirius_deployment("second-api", 1)
        .to_string()
        .replace("sirius-api-key", "second-key");
    sim.create_object(serde_json::from_str(&deployment).unwrap())
        .unwrap();
    let mut second = rotation(
        &healthy.url(),
        json!({"secret": {"name": "second-key"}, "targets": [{"name": "second-api"}]}),
    );
    second["metadata"]["name"] = json!("second");
    sim.create_object(second).unwrap();
    let record = record_key(&second_key.id());
    wait_for(
        Duration::from_secs(15),
        "the second rotation's record",
        || healthy.exists(&record),
    )
    .await;
    wait_for(
        Duration::from_secs(5),
        "the second Valkey's change feed",
        || healthy.change_feeds().len() == 1,
    )
    .await;
    hung.pause();
    cluster.wait_degraded(Reason::ValkeyUnavailable).await;
    for _ in 0..5 {
        healthy.flushall();
        let flushed = std::time::Instant::now();
        wait_for(Duration::from_secs(10), "the second record back", || {
            healthy.exists(&record)
        })
        .await;
        let took = flushed.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "the repair waited {took:?} for the hung Valkey"
        );
        // The next flush falls elsewhere in the hung Valkey's reconnects (a resync a second).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    hung.resume();
    cluster.kill_operator();
}
