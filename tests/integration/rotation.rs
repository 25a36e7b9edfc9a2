//! The rotation end to end: the real controller against the stand-in and a real Valkey.

use crate::common::*;
use apikey_rotator::key::RawKey;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_completes_in_order_and_revokes_the_old_key() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = known_key(); // an installer root key, no record yet
    install_sirius(&sim, &valkey.url(), &old, 2, Some("first"), json!({})).await;
    let operator = spawn_operator(&sim);

    wait_for(Duration::from_secs(30), "rotation 1 to finish", || {
        akr_status(&sim)["revision"] == json!(1) && has_event(&sim, Reason::RotationSucceeded)
    })
    .await;
    operator.abort();

    let status = akr_status(&sim);
    let new = secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap();
    let new = RawKey::new(new);
    assert_ne!(new, old);
    assert!(new.expose().starts_with("sk_") && new.expose().len() == 67);
    assert_eq!(
        secret_value(&sim, "sirius-api-key", "OTHER").as_deref(),
        Some("kept")
    );
    assert_eq!(status["activeKeyId"], json!(new.id().0));
    assert_eq!(status["previousKeyId"], json!(old.id().0));
    assert_eq!(status["phase"], json!("Ready"));

    // Only the new key's record is left; the old key is refused.
    assert!(valkey.exists(&format!("apikey:{}", new.id())));
    assert!(!valkey.exists(&format!("apikey:{}", old.id())));

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

    let reasons = event_reasons(&sim);
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
        akr_status(&sim)["revision"] == json!(1) && has_event(&sim, Reason::RotationSucceeded)
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
        akr_status(&sim)["revision"] == json!(1)
    })
    .await;
    operator.abort();
    resurrector.join().unwrap();
    assert!(
        event_reasons(&sim)
            .iter()
            .any(|r| r == "RevocationRepeated"),
        "{:?}",
        event_reasons(&sim)
    );
    assert!(
        !valkey.exists(&format!("apikey:{}", known_key().id())),
        "the old key stays revoked"
    );
}
