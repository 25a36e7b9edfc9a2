//! An idle operator costs the API server nothing: a resync of an unchanged rotation reads the
//! ApiKeyRotation, its vault, the consumers' Secret and its targets from what the watches already
//! hold, and writes nothing.

use crate::common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Requests other than watches (a watch is one long request, opened at start).
fn requests(sim: &kube_sim::Sim) -> BTreeMap<(String, String), u64> {
    let mut counts = sim.request_counts();
    counts.retain(|(verb, _), _| verb != "watch");
    counts
}

fn since(
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
) -> BTreeMap<(String, String), u64> {
    after
        .iter()
        .filter_map(|(k, n)| {
            let new = n - before.get(k).copied().unwrap_or(0);
            (new > 0).then(|| (k.clone(), new))
        })
        .collect()
}

/// Runs the operator and waits until the rotation requested in the manifest finished and is
/// Ready.
async fn operator_after_one_rotation(cluster: &mut Cluster, resync: Duration) {
    cluster.run_operator_with_resync(resync);
    wait_for(Duration::from_secs(60), "the rotation", || {
        is_ready(&cluster.sim, 1)
    })
    .await;
}

/// The requests before ten resyncs, and those sent during them.
async fn over_ten_resyncs(
    sim: &kube_sim::Sim,
    resync: Duration,
) -> (
    BTreeMap<(String, String), u64>,
    BTreeMap<(String, String), u64>,
) {
    let before = requests(sim);
    tokio::time::sleep(resync * 10).await; // ten resyncs
    let during = since(&before, &requests(sim));
    (before, during)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_of_an_unchanged_rotation_send_the_api_server_nothing() {
    let mut cluster = Cluster::start().await;
    cluster.install(1, Some("once"), json!({})).await;
    let resync = Duration::from_millis(300);
    operator_after_one_rotation(&mut cluster, resync).await;
    let sim = &cluster.sim;
    // The last writes land and the watches catch up with them.
    tokio::time::sleep(Duration::from_secs(2)).await; // settling, not a wait for an event
    let (before, during) = over_ten_resyncs(sim, resync).await;
    assert!(
        during.is_empty(),
        "an idle operator sent {during:?} over ten resyncs"
    );

    // A change still reaches it: the engine annotated by someone is read once, not per resync.
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-engine",
        json!({"metadata": {"annotations": {"team": "scanners"}}}),
    )
    .unwrap();
    tokio::time::sleep(resync * 4).await; // a few resyncs after the edit
    let after_edit = since(&before, &requests(sim));
    let engine_reads = after_edit
        .get(&("get".to_string(), "deployments".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(
        (1..=2).contains(&engine_reads),
        "the annotated Deployment is read once (twice if a resync ran before its watch event), not at every resync: {after_edit:?}"
    );
}

/// Status patches of the ApiKeyRotation (its finalizer's included).
fn status_writes(sim: &kube_sim::Sim) -> u64 {
    requests(sim)
        .get(&("patch".to_string(), "apikeyrotations".to_string()))
        .copied()
        .unwrap_or(0)
}

/// A rotation writes its status about once per step, not at every status change of a rolling
/// workload: a step that only records (a target found complete) rides on the next write, and a
/// newer rollout message is written at most every five seconds. Three targets of three
/// replicas each make a dozen Deployment status changes apiece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_writes_its_status_per_step_not_per_rollout_change() {
    let mut cluster = Cluster::start().await;
    cluster.install(3, None, json!({})).await;
    cluster.run_operator();
    cluster.wait_phase(Phase::Ready).await;
    let before = status_writes(&cluster.sim);
    cluster.request_rotation("counted");
    wait_for(Duration::from_secs(60), "the rotation", || {
        is_ready(&cluster.sim, 1)
    })
    .await;
    let writes = status_writes(&cluster.sim) - before;
    // Start, mint (two: the key, then its id), register, switch, a stamp per target, validate,
    // revoke, its re-check, finish, done: 13 steps, one write each, and a few spare.
    assert!(
        writes <= 16,
        "{writes} status writes for one rotation of three 3-replica targets"
    );
}

/// A rollout that stops moving still shows its latest progress in the status within the
/// refresh interval, though no watch event follows to bring it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rollout_shows_its_progress_message_without_another_event() {
    let mut cluster = Cluster::start().await;
    cluster.install(1, None, json!({})).await;
    cluster.run_operator();
    cluster.wait_phase(Phase::Ready).await;
    cluster
        .sim
        .set_rollout_behavior(NS, "sirius-api", kube_sim::RolloutBehavior::Stall);
    cluster.request_rotation("stalled");
    let rotating_message = || {
        let status = cluster.status();
        let rotating = status.conditions.iter().find(|c| c.type_ == "Rotating");
        rotating.map(|c| c.message.clone()).unwrap_or_default()
    };
    wait_for(Duration::from_secs(10), "the rollout's own message", || {
        rotating_message().starts_with("Waiting for sirius-api (1 of 3):")
    })
    .await;
    let target = cluster.in_flight().and_then(|r| r.targets.first().cloned());
    assert!(
        target
            .as_ref()
            .and_then(|t| t.message.as_deref())
            .is_some_and(|m| m.contains("replicas")),
        "{target:?}"
    );
}

/// The Secrets a rotation reads but does not label (the Valkey password here) are watched too:
/// a resync reuses the copy read once, and a changed password is read again once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_read_the_valkey_password_secret_only_when_it_changed() {
    use base64::Engine;
    let mut cluster = Cluster::start().await;
    cluster.valkey.set_user_password("sirius", "first-password");
    let sim = &cluster.sim;
    let password =
        |p: &str| json!({"password": base64::engine::general_purpose::STANDARD.encode(p)});
    sim.create_object(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sirius-valkey-auth", "namespace": NS,
                     "annotations": {"keys.siriusscan.io/valkey-password": "sirius"}},
        "data": password("first-password"),
    }))
    .unwrap();
    let url = format!("redis://sirius@127.0.0.1:{}/0", cluster.valkey.port);
    let auth =
        json!({"valkey": {"passwordSecretRef": {"name": "sirius-valkey-auth", "key": "password"}}});
    install_sirius(sim, &url, &known_key(), 1, Some("once"), auth).await;
    let resync = Duration::from_millis(300);
    operator_after_one_rotation(&mut cluster, resync).await;
    let sim = &cluster.sim;
    // The last writes land and the watches catch up with them.
    tokio::time::sleep(Duration::from_secs(2)).await; // settling, not a wait for an event
    let (before, during) = over_ten_resyncs(sim, resync).await;
    assert!(
        during.is_empty(),
        "an idle operator with a Valkey password sent {during:?} over ten resyncs"
    );

    // Someone edits the password Secret (same password, new annotation): read once, not at
    // every resync.
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-valkey-auth",
        json!({"metadata": {"annotations": {"team": "platform"}}}),
    )
    .unwrap();
    tokio::time::sleep(resync * 4).await; // a few resyncs after the edit
    let after_edit = since(&before, &requests(sim));
    let secret_reads = after_edit
        .get(&("get".to_string(), "secrets".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(
        (1..=2).contains(&secret_reads),
        "the edited password Secret is read once (twice if a resync ran before its watch event), not at every resync: {after_edit:?}"
    );
}

/// A watch that fails (the API server restarts, or ends the watch with an error) is listed
/// again, so its store vouches again and an idle operator goes back to sending nothing; resumed
/// without a list, it never vouched again and every resync read everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_watches_fail_an_idle_operator_again_sends_nothing() {
    let mut cluster = Cluster::start().await;
    cluster.install(1, Some("once"), json!({})).await;
    let resync = Duration::from_millis(300);
    operator_after_one_rotation(&mut cluster, resync).await;
    let sim = &cluster.sim;
    // The last writes land and the watches catch up with them.
    tokio::time::sleep(Duration::from_secs(2)).await; // settling, not a wait for an event
    let lists = |sim: &kube_sim::Sim| {
        let counts = requests(sim);
        ["secrets", "deployments", "statefulsets", "daemonsets"].map(|plural| {
            counts
                .get(&("list".to_string(), plural.to_string()))
                .copied()
        })
    };
    let listed_before = lists(sim);
    sim.break_watches();
    // Each watch lists again after its own back-off (under two seconds after a first error).
    wait_for(Duration::from_secs(60), "every watch listed again", || {
        let now = lists(sim);
        (0..4).all(|i| now[i] > listed_before[i])
    })
    .await;
    // The relisted watches resume and catch up.
    tokio::time::sleep(Duration::from_secs(1)).await; // settling, not a wait for an event
    let (_, during) = over_ten_resyncs(sim, resync).await;
    assert!(
        during.is_empty(),
        "after its watches failed, an idle operator sent {during:?} over ten resyncs"
    );
}

/// A watch the API server keeps refusing is retried ever more slowly: 0.8 s, then 1.6 s, then
/// 3.2 s (each up to twice that, with jitter), not once a second for ever (kube-runtime's
/// watcher yields `Init` before its first request, so a back-off reset by any success never
/// grew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_refused_again_and_again_backs_off_further_each_time() {
    use futures::StreamExt;
    let sim = start_sim().await;
    sim.inject_faults("list", "secrets", 1_000, 500);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client_for(&sim), NS);
    let watch = apikey_rotator::relist::relisting_watcher(secrets, Default::default());
    let lists = || {
        sim.request_counts()
            .get(&("list".to_string(), "secrets".to_string()))
            .copied()
            .unwrap_or(0)
    };
    let watched = tokio::spawn(watch.for_each(|_| async {}));
    tokio::time::sleep(Duration::from_secs(6)).await; // the span the attempts are counted over
    watched.abort();
    // At 0 s, >= 0.8 s, >= 2.4 s and >= 5.6 s at most; a back-off that never grows lists at
    // least five times (every wait under 1.6 s).
    let attempts = lists();
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} lists of a refused watch in 6 s"
    );
}

/// A rotation whose targets are chosen by label: its resyncs match the selectors against what
/// the workload watches hold, and send nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_of_a_rotation_with_a_selector_send_the_api_server_nothing() {
    let mut cluster = Cluster::start().await;
    let sim = &cluster.sim;
    sim.create_object(consumer_secret(&known_key())).unwrap();
    deploy_sirius(sim, 1).await;
    for name in ["sirius-ui", "sirius-engine"] {
        sim.merge_patch_object(
            "apps",
            "deployments",
            NS,
            name,
            json!({"metadata": {"labels": {"tier": "backend"}}}),
        )
        .unwrap();
    }
    let targets = json!({"targets": [
        {"name": "sirius-api"},
        {"kind": "Deployment", "selector": {"matchLabels": {"tier": "backend"}}},
    ]});
    let mut manifest = rotation(&cluster.valkey.url(), targets);
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "once"});
    sim.create_object(manifest).unwrap();
    let resync = Duration::from_millis(300);
    operator_after_one_rotation(&mut cluster, resync).await;
    let sim = &cluster.sim;
    assert_ne!(
        template_key(sim, "sirius-engine"),
        serde_json::Value::Null,
        "selected and rolled"
    );
    // The last writes land and the watches catch up with them.
    tokio::time::sleep(Duration::from_secs(2)).await; // settling, not a wait for an event
    let (_, during) = over_ten_resyncs(sim, resync).await;
    assert!(
        during.is_empty(),
        "an idle operator sent {during:?} over ten resyncs"
    );
}
