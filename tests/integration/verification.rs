//! Verification probes against a real HTTP server that authenticates like sirius-api on top of
//! the test Valkey: they pass on a good rotation, stop a rotation whose new key the API refuses
//! before the next target, and confirm and report the old key's 401 after revocation.

use crate::common::sirius_api::{Behaviour, SiriusApi};
use crate::common::*;
use apikey_rotator::key::RawKey;
use kube_sim::Sim;
use serde_json::{Value, json};
use std::time::Duration;

/// With revocations enough that no test's timing can use them up: one test waits for an API that
/// keeps the old key and then fixes it, and under load the 5 by default (one per 1 s re-check)
/// ran out before the test saw the first report, which left the rotation waiting 300 s.
fn verification(api: &SiriusApi) -> Value {
    json!({"verification": {"url": api.host_url(), "timeoutSeconds": 2, "maxRevocations": 100}})
}

/// Sirius (its Secret, Deployments and a sirius-api that authenticates on the test Valkey), an
/// ApiKeyRotation with verification probes, and the operator. `prepare` sets the API up first.
struct Installed {
    valkey: Valkey,
    api: SiriusApi,
    sim: Sim,
    old: RawKey,
    operator: tokio::task::JoinHandle<()>,
}

async fn install(prepare: impl FnOnce(&SiriusApi, &RawKey)) -> Installed {
    let valkey = Valkey::start();
    let api = SiriusApi::start(&valkey.url()).await;
    let sim = start_sim().await;
    let old = known_key();
    prepare(&api, &old);
    install_sirius(
        &sim,
        &valkey.url(),
        &old,
        2,
        Some("first"),
        verification(&api),
    )
    .await;
    let operator = spawn_operator(&sim);
    Installed {
        valkey,
        api,
        sim,
        old,
        operator,
    }
}

fn count(sim: &Sim, reason: &str) -> usize {
    event_reasons(sim).iter().filter(|r| *r == reason).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_pass_on_a_good_rotation_and_the_old_keys_401_is_confirmed() {
    let Installed {
        valkey,
        api,
        sim,
        old,
        operator,
    } = install(|_, _| {}).await;

    wait_revision(&sim, 1).await;
    operator.abort();
    let new = RawKey::new(secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());

    // The new key was accepted after each target and before the revocation ...
    assert_eq!(count(&sim, "TargetVerified"), 3);
    assert_eq!(count(&sim, "NewKeyVerified"), 1);
    let new_answers = api.answers_to(new.id().as_str());
    assert!(new_answers.len() >= 4, "{new_answers:?}");
    assert!(new_answers.iter().all(|s| *s == 200), "{new_answers:?}");
    // ... and the old key got its 401 after the revocation, which is reported.
    assert_eq!(api.answers_to(old.id().as_str()), vec![401]);
    let refused = event(&sim, "OldKeyRefused");
    assert!(
        refused["note"].as_str().unwrap().contains("HTTP 401"),
        "{refused}"
    );
    // The rotation's history in Valkey keeps the confirmations.
    let history = valkey.dump();
    for field in [
        "\"oldKeyRefusedAt\":\"20",
        "\"verifiedBeforeRevokeAt\":\"20",
        "\"verifiedAt\":\"20",
    ] {
        assert!(history.contains(field), "{field} missing from {history}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_the_new_key_stops_the_rotation_before_the_next_target() {
    let Installed {
        valkey,
        api,
        sim,
        old,
        operator,
    } = install(|_, _| {}).await;

    // The API refuses whatever key the rotation mints.
    let new_id = {
        let mut id = Value::Null;
        wait_for(Duration::from_secs(10), "the new key", || {
            id = akr_status(&sim)["currentRotation"]["newKeyId"].clone();
            !id.is_null()
        })
        .await;
        id.as_str().unwrap().to_string()
    };
    api.set(Behaviour {
        refuse: [new_id.clone()].into(),
        ..Behaviour::default()
    });

    wait_degraded(&sim, "VerificationFailed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = akr_status(&sim);
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(status["currentRotation"]["targets"][0]["state"], "Failed");
    assert_eq!(template_key(&sim, "sirius-api"), json!(new_id));
    assert_eq!(
        template_key(&sim, "sirius-ui"),
        Value::Null,
        "stopped before ui"
    );
    assert_eq!(template_key(&sim, "sirius-engine"), Value::Null);
    // Nothing was revoked: the old key stays valid.
    assert!(valkey.exists(&format!("apikey:{}", old.id())));
    let failed = event(&sim, "VerificationFailed");
    assert!(
        failed["note"].as_str().unwrap().contains("HTTP 401"),
        "{failed}"
    );
    assert!(api.answers_to(&new_id).contains(&401));

    // Once the API accepts the new key, a nudge resumes the rotation, which completes.
    api.set(Behaviour::default());
    sim.merge_patch_object(
        "keys.siriusscan.io",
        "apikeyrotations",
        NS,
        "sirius",
        json!({"metadata": {"labels": {"nudge": "1"}}}),
    )
    .unwrap();
    wait_revision(&sim, 1).await;
    assert!(!valkey.exists(&format!("apikey:{}", old.id())));
    operator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_key_still_accepted_after_revocation_is_reported_and_revoked_again() {
    // An API that keeps the old key as its root key (never restarted with the new one).
    let Installed {
        valkey: _valkey,
        api,
        sim,
        old: _,
        operator,
    } = install(|api, old| {
        api.set(Behaviour {
            root_key_id: Some(old.id().0),
            ..Behaviour::default()
        })
    })
    .await;

    wait_degraded(&sim, "OldKeyStillAccepted").await;
    let status = akr_status(&sim);
    assert_eq!(status["revision"], 0, "not declared finished");
    assert_eq!(status["currentRotation"]["step"], "Revoke");
    assert!(count(&sim, "OldKeyStillAccepted") >= 1);
    // Once the API refuses it, the rotation confirms and finishes.
    api.set(Behaviour::default());
    wait_revision(&sim, 1).await;
    assert_eq!(count(&sim, "OldKeyRefused"), 1);
    operator.abort();
}
