//! The rotation end to end: the real controller against the stand-in and a real Valkey.

use crate::common::*;
use apikey_rotator::key::RawKey;
use kube_sim::Sim;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_completes_in_order_and_revokes_the_old_key() {
    let mut cluster = Cluster::start().await;
    let old = cluster.install(2, Some("first"), json!({})).await; // an installer root key, no record yet
    cluster.run_operator();

    wait_for(Duration::from_secs(30), "rotation 1 to finish", || {
        cluster.status().revision == 1 && cluster.has_event(Reason::RotationSucceeded)
    })
    .await;
    cluster.kill_operator();

    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let status = cluster.status();
    let new = cluster.consumers_key();
    assert_ne!(new, old);
    assert!(new.expose().starts_with("sk_") && new.expose().len() == 67);
    assert_eq!(
        secret_value(sim, "sirius-api-key", "OTHER").as_deref(),
        Some("kept")
    );
    assert_eq!(status.active_key_id, Some(new.id().0.clone()));
    assert_eq!(status.previous_key_id, Some(old.id().0.clone()));
    assert_eq!(status.phase, Some(Phase::Ready));

    // Only the new key's record is left; the old key is refused.
    assert!(cluster.accepts(&new));
    assert!(!cluster.accepts(&old));

    // api completed before ui was touched, ui before engine.
    let rollouts = sim.rollouts();
    let second = |name: &str| {
        rollouts
            .iter()
            .find(|r| r.deployment == name && r.revision == 2)
            .cloned()
            .unwrap_or_else(|| panic!("{name} was not rolled: {rollouts:?}"))
    };
    let (api, ui, engine) = (
        second("sirius-api"),
        second("sirius-ui"),
        second("sirius-engine"),
    );
    assert!(
        api.completed_at_ms.unwrap() <= ui.template_changed_at_ms,
        "{api:?} {ui:?}"
    );
    assert!(
        ui.completed_at_ms.unwrap() <= engine.template_changed_at_ms,
        "{ui:?} {engine:?}"
    );

    let reasons = event_reasons(sim);
    for r in [
        "KeyAdopted",
        "RotationStarted",
        "KeyMinted",
        "KeysRegistered",
        "SecretUpdated",
        "TargetRolled",
        "TargetRolledOut",
        "ValidationStarted",
        "OldKeyRevoked",
        "RotationSucceeded",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "missing Event {r}: {reasons:?}"
        );
    }
    println!("{}", serde_json::to_string_pretty(&status).unwrap());
    println!("{}", valkey.dump());
}

/// Captures every log line of the process (trace level), for the leak check.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_key_reaches_logs_events_status_or_valkey() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || writer.clone())
        .init();
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = RawKey::new("fedcba9876543210".repeat(4));
    install_sirius(&sim, &valkey.url(), &old, 1, Some("leak-check"), json!({})).await;
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(30), "rotation 1 to finish", || {
        status(&sim).revision == 1 && has_event(&sim, Reason::RotationSucceeded)
    })
    .await;
    operator.abort();
    let new = RawKey::new(secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let events = serde_json::to_string(&events(&sim)).unwrap();
    let status = akr_status(&sim).to_string();
    let valkey_dump = valkey.dump();
    assert!(
        logs.lines().count() > 50,
        "the log capture saw too little to prove anything"
    );
    assert!(
        logs.contains(new.id().short()) || events.contains(new.id().short()),
        "key ids are what we report"
    );
    for key in [&old, &new] {
        // The raw value and its hex body (without the prefix) never appear.
        let body = key.expose().trim_start_matches("sk_");
        for (place, text) in [
            ("logs", &logs),
            ("Events", &events),
            ("status", &status),
            ("Valkey", &valkey_dump),
        ] {
            assert!(!text.contains(body), "a raw key reached the {place}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_record_that_comes_back_is_deleted_again() {
    let valkey = std::sync::Arc::new(Valkey::start());
    let sim = start_sim().await;
    let old = known_key();
    install_sirius(&sim, &valkey.url(), &old, 1, Some("x"), json!({})).await;
    // Plays Sirius's last-used rewrite racing the revocation: once the old record is deleted,
    // a request that was in flight writes it back.
    let record = format!("apikey:{}", old.id());
    let resurrector = {
        let valkey = valkey.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !valkey.exists(&record) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            while valkey.exists(&record) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let json = apikey_rotator::sirius::record_json(
                &old,
                "root",
                "system-bootstrap",
                jiff::Timestamp::now(),
            );
            valkey.set(
                &record,
                &json.replace(
                    "\"last_used_at\":\"\"",
                    "\"last_used_at\":\"2026-11-25T00:00:00Z\"",
                ),
            );
        })
    };
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(30), "rotation 1 to finish", || {
        status(&sim).revision == 1
    })
    .await;
    operator.abort();
    resurrector.join().unwrap();
    assert!(
        has_event(&sim, Reason::RevocationRepeated),
        "{:?}",
        event_reasons(&sim)
    );
    assert!(
        !valkey.exists(&format!("apikey:{}", known_key().id())),
        "the old key stays revoked"
    );
}

/// Every version of one kind's objects seen, with its resourceVersion.
type Versions<K> = Arc<Mutex<Vec<(u64, K)>>>;

/// What the API server held, version by version (its resourceVersions are one sequence across
/// kinds, as etcd's revisions are).
fn record_versions<K>(sim: &Sim) -> (tokio::task::JoinHandle<()>, Versions<K>)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<K> = kube::Api::namespaced(client_for(sim), NS);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(object)) = stream.next().await {
            let rv = object.meta().resource_version.as_deref().unwrap_or("0");
            into.lock().unwrap().push((rv.parse().unwrap(), object));
        }
    });
    (task, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_time_is_in_the_status_before_the_first_target_is_stamped() {
    // A roll whose status write is lost must not hide a later rewrite of the Secret: the time
    // the Secret came to hold the key is written before any template is stamped.
    use apikey_rotator::crd::{ApiKeyRotation, ROLLOUT_ANNOTATION};
    use k8s_openapi::api::apps::v1::Deployment;
    let valkey = Valkey::start();
    let sim = start_sim().await;
    install_sirius(&sim, &valkey.url(), &known_key(), 1, None, json!({})).await;
    let (rotations_task, rotations) = record_versions::<ApiKeyRotation>(&sim);
    let (deployments_task, deployments) = record_versions::<Deployment>(&sim);
    let operator = spawn_operator(&sim);
    request_rotation(&sim, "first");
    wait_revision(&sim, 1).await;
    operator.abort();
    rotations_task.abort();
    deployments_task.abort();

    let new_id = status(&sim).active_key_id.unwrap();
    let stamped = (deployments.lock().unwrap().iter())
        .filter(|(_, d)| d.metadata.name.as_deref() == Some("sirius-api"))
        .filter(|(_, d)| {
            let template = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
            let annotations = template.and_then(|m| m.annotations.as_ref());
            annotations.and_then(|a| a.get(ROLLOUT_ANNOTATION)) == Some(&new_id)
        })
        .map(|(rv, _)| *rv)
        .min()
        .expect("sirius-api was stamped with the new key");
    let switch_recorded = (rotations.lock().unwrap().iter())
        .filter(|(_, r)| {
            let rotation = r.status.as_ref().and_then(|s| s.current_rotation.as_ref());
            rotation.is_some_and(|c| c.switched_at.is_some())
        })
        .map(|(rv, _)| *rv)
        .min()
        .expect("the switch was recorded");
    assert!(
        switch_recorded < stamped,
        "switchedAt first written at version {switch_recorded}, sirius-api stamped at {stamped}"
    );
}
