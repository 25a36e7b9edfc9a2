//! The rotation end to end: the real controller against the stand-in and a real Valkey.

mod common;

use apikey_rotator::key::RawKey;
use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_completes_in_order_and_revokes_the_old_key() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = RawKey::new("0123456789abcdef".repeat(4)); // an installer root key, no record yet
    sim.create_object(consumer_secret(&old)).unwrap();
    deploy_sirius(&sim, 2).await;
    let mut manifest = rotation(&valkey.url(), json!({}));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "first"});
    sim.create_object(manifest).unwrap();
    let operator = spawn_operator(&sim);

    wait_for(Duration::from_secs(30), "rotation 1 to finish", || {
        akr_status(&sim)["revision"] == json!(1)
            && event_reasons(&sim).iter().any(|r| r == "RotationSucceeded")
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
