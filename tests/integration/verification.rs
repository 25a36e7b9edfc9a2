//! Verification probes against a real HTTP server that authenticates like sirius-api on top of
//! the test Valkey: they pass on a good rotation, stop a rotation whose new key the API refuses
//! before the next target, and confirm and report the old key's 401 after revocation.

use crate::common::sirius_api::{Behaviour, SiriusApi};
use crate::common::*;
use apikey_rotator::crd::TargetState;
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
    cluster: Cluster,
    api: SiriusApi,
    old: RawKey,
}

async fn install(prepare: impl FnOnce(&SiriusApi, &RawKey)) -> Installed {
    let mut cluster = Cluster::start().await;
    let api = SiriusApi::start(&cluster.valkey.url()).await;
    prepare(&api, &known_key());
    let old = cluster.install(2, Some("first"), verification(&api)).await;
    cluster.run_operator();
    Installed { cluster, api, old }
}

/// How many Events with this reason were published.
fn count(sim: &Sim, reason: Reason) -> usize {
    event_reasons(sim)
        .iter()
        .filter(|r| *r == reason.as_str())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_pass_on_a_good_rotation_and_the_old_keys_401_is_confirmed() {
    let Installed {
        mut cluster,
        api,
        old,
    } = install(|_, _| {}).await;

    wait_revision(&cluster.sim, 1).await;
    cluster.kill_operator();
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let new = cluster.consumers_key();

    // The new key was accepted after each target and before the revocation ...
    assert_eq!(count(sim, Reason::TargetVerified), 3);
    assert_eq!(count(sim, Reason::NewKeyVerified), 1);
    let new_answers = api.answers_to(new.id().as_str());
    assert!(new_answers.len() >= 4, "{new_answers:?}");
    assert!(new_answers.iter().all(|s| *s == 200), "{new_answers:?}");
    // ... and the old key got its 401 after the revocation, which is reported.
    assert_eq!(api.answers_to(old.id().as_str()), vec![401]);
    let refused = event(sim, "OldKeyRefused");
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
        mut cluster,
        api,
        old,
    } = install(|_, _| {}).await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);

    // The API refuses whatever key the rotation mints.
    let new_id = {
        let mut id = None;
        wait_for(Duration::from_secs(10), "the new key", || {
            id = in_flight(sim).and_then(|r| r.new_key_id);
            id.is_some()
        })
        .await;
        id.unwrap()
    };
    api.set(Behaviour {
        refuse: [new_id.clone()].into(),
        ..Behaviour::default()
    });

    cluster.wait_degraded(Reason::VerificationFailed).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // it goes no further meanwhile
    let status = cluster.status();
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(
        (status.current_rotation.as_ref())
            .and_then(|r| r.targets.first())
            .map(|t| t.state),
        Some(TargetState::Failed)
    );
    assert_eq!(template_key(sim, "sirius-api"), json!(new_id));
    assert_eq!(
        template_key(sim, "sirius-ui"),
        Value::Null,
        "stopped before ui"
    );
    assert_eq!(template_key(sim, "sirius-engine"), Value::Null);
    // Nothing was revoked: the old key stays valid.
    assert!(valkey.exists(&format!("apikey:{}", old.id())));
    let failed = event(sim, "VerificationFailed");
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
    wait_revision(sim, 1).await;
    assert!(!cluster.accepts(&old));
    cluster.kill_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_key_still_accepted_after_revocation_is_reported_and_revoked_again() {
    // An API that keeps the old key as its root key (never restarted with the new one).
    let Installed {
        mut cluster,
        api,
        old: _,
    } = install(|api, old| {
        api.set(Behaviour {
            root_key_id: Some(old.id().0),
            ..Behaviour::default()
        })
    })
    .await;

    cluster.wait_degraded(Reason::OldKeyStillAccepted).await;
    let status = cluster.status();
    assert_eq!(status.revision, 0, "not declared finished");
    assert_eq!(status.current_rotation.map(|r| r.step), Some(Step::Revoke));
    assert!(count(&cluster.sim, Reason::OldKeyStillAccepted) >= 1);
    // Once the API refuses it, the rotation confirms and finishes.
    api.set(Behaviour::default());
    wait_revision(&cluster.sim, 1).await;
    assert_eq!(count(&cluster.sim, Reason::OldKeyRefused), 1);
    cluster.kill_operator();
}
