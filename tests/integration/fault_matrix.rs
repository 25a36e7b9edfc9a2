//! The fault matrix: each fault injected at each step of a rotation, under both Sirius auth
//! models. Every cell asserts: no 401 from any running pod to any API pod (except, for a flush,
//! the window until the operator writes the records back, which is measured and bounded), exactly
//! one new key minted and only the old and the new key ever held by pods, the old key revoked
//! only at the end, the rotation finished after the fault healed, and the fault's own condition
//! and Event. docs/fault-matrix.md shows the matrix.

use crate::common::sirius::{
    AuthModel, InvariantChecker, SECRET_REF, accepts, checked_sim_options, installed_key,
    record_ids,
};
use crate::common::*;
use apikey_rotator::key::RawKey;
use kube_sim::{RolloutBehavior, Sim};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    ControllerKill,
    ValkeyDown,
    ValkeyFlushed,
    RolloutFailure,
    ConflictStorm,
    SecretDeleted,
}

/// Where the fault lands: the first time the status shows this step (and target).
#[derive(Clone, Copy, Debug, PartialEq)]
enum At {
    Mint,
    Register,
    Switch,
    Roll(u64),
    Validate,
    Revoke,
}

const STEPS: [At; 8] = [
    At::Mint,
    At::Register,
    At::Switch,
    At::Roll(0),
    At::Roll(1),
    At::Roll(2),
    At::Validate,
    At::Revoke,
];

impl At {
    fn reached(self, status: &Value) -> bool {
        let r = &status["currentRotation"];
        let step = r["step"].as_str().unwrap_or("");
        let index = r["targetIndex"].as_u64().unwrap_or(0);
        let order = |s: &str| match s {
            "Mint" => 0,
            "Register" => 1,
            "Switch" => 2,
            "Roll" => 3,
            "Validate" => 4,
            "Revoke" => 5,
            _ => 6,
        };
        let (want, want_index) = match self {
            At::Mint => ("Mint", 0),
            At::Register => ("Register", 0),
            At::Switch => ("Switch", 0),
            At::Roll(i) => ("Roll", i),
            At::Validate => ("Validate", 0),
            At::Revoke => ("Revoke", 0),
        };
        // The first observation at or past the step (short steps can be passed between polls).
        !step.is_empty()
            && (order(step) > order(want) || (order(step) == order(want) && index >= want_index))
    }
}

fn new_events(sim: &Sim, before: usize, reason: &str) -> bool {
    events(sim)
        .iter()
        .skip(before)
        .any(|e| e["reason"] == reason)
}

fn degraded(sim: &Sim, reason: &str) -> bool {
    akr_status(sim)["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Degraded" && c["status"] == "True" && c["reason"] == reason)
    })
}

/// One cell; returns a line for the report.
async fn cell(fault: Fault, at: At, model: AuthModel) -> String {
    if fault == Fault::RolloutFailure && matches!(at, At::Validate | At::Revoke) {
        return format!("{fault:?} at {at:?}: not applicable (every target already rolled)");
    }
    let valkey = Arc::new(Valkey::start());
    let sim = Arc::new(start_sim_with(checked_sim_options()).await);
    let checker = InvariantChecker::start(sim.clone(), valkey.clone(), model);
    let old = installed_key(model);
    sim.create_object(consumer_secret(&old)).unwrap();
    deploy_sirius_with_deadline(&sim, 2, Some(1)).await;
    let (vault_watch, vault_keys) = watch_vault_keys(&sim);
    let mut manifest = rotation(&valkey.url(), json!({"validationWindowSeconds": 1}));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    let resync = Duration::from_secs(1);
    let mut operator = spawn_operator_with_resync(&sim, resync);

    wait_for(Duration::from_secs(60), &format!("step {at:?}"), || {
        at.reached(&akr_status(&sim))
    })
    .await;
    let injected_at = akr_status(&sim)["currentRotation"].clone();
    let events_before = events(&sim).len();
    let mut note = String::new();
    match fault {
        Fault::ControllerKill => {
            operator.abort();
            let _ = (&mut operator).await;
            operator = spawn_operator_with_resync(&sim, resync);
        }
        Fault::ValkeyDown => {
            valkey.pause();
            // Hold the outage until the operator reports it: every rotation needs Valkey again
            // before it can finish (state, revocation), so this always comes.
            let shown = tokio::time::timeout(Duration::from_secs(30), async {
                while !degraded(&sim, "ValkeyUnavailable") {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            let revision_during = akr_status(&sim)["revision"].clone();
            valkey.resume();
            assert!(shown.is_ok(), "{fault:?} at {at:?}: no ValkeyUnavailable");
            assert_eq!(
                revision_during,
                json!(0),
                "nothing finished while Valkey was down"
            );
        }
        Fault::ValkeyFlushed => {
            checker
                .excuse
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let flushed = Instant::now();
            valkey.flushall();
            wait_for(Duration::from_secs(15), "ValkeyStateRestored", || {
                new_events(&sim, events_before, "ValkeyStateRestored")
            })
            .await;
            // Every key a running pod holds is accepted again.
            wait_for(Duration::from_secs(5), "records back", || {
                let records = record_ids(&valkey);
                sim.pods().iter().all(|p| {
                    p.secrets
                        .get(SECRET_REF)
                        .cloned()
                        .flatten()
                        .is_none_or(|k| records.contains(RawKey::new(k).id().as_str()))
                })
            })
            .await;
            let window = flushed.elapsed();
            checker
                .excuse
                .store(false, std::sync::atomic::Ordering::SeqCst);
            // Valkey's change feed reports the flush at once (about 25 ms to repair here); the
            // resync alone took up to resync + 1 s.
            assert!(
                window < Duration::from_secs(1),
                "repaired only after {window:?}"
            );
            note = format!(
                ", flush repaired in {} ms ({} refused samples in that window)",
                window.as_millis(),
                checker.excused.lock().unwrap()
            );
        }
        Fault::RolloutFailure => {
            // The engine's new pods never become ready (it is the last to roll).
            sim.set_rollout_behavior(NS, "sirius-engine", RolloutBehavior::Stall);
            wait_for(Duration::from_secs(30), "Degraded RolloutFailed", || {
                degraded(&sim, "RolloutFailed") && new_events(&sim, events_before, "RolloutFailed")
            })
            .await;
            assert!(
                valkey.exists(&format!("apikey:{}", old.id())) || model == AuthModel::ValkeyOnly,
                "the old key stays valid"
            );
            sim.set_rollout_behavior(NS, "sirius-engine", RolloutBehavior::Normal);
        }
        Fault::ConflictStorm => {
            for plural in ["apikeyrotations", "secrets", "deployments"] {
                sim.inject_faults("patch", plural, 12, 409);
            }
            sim.inject_faults("get", "*", 4, 503);
        }
        Fault::SecretDeleted => {
            sim.delete_object("", "secrets", NS, "sirius-api-key")
                .unwrap();
            wait_for(Duration::from_secs(15), "the Secret written back", || {
                secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").is_some()
            })
            .await;
        }
    }

    let finished = tokio::time::timeout(Duration::from_secs(90), async {
        while !(akr_status(&sim)["revision"] == json!(1) && akr_status(&sim)["phase"] == "Ready") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "{fault:?} at {at:?}: the rotation did not finish: {} {:?}",
        akr_status(&sim),
        event_reasons(&sim)
    );
    // Let the retired pods finish terminating while the checker still samples.
    tokio::time::sleep(Duration::from_millis(500)).await;
    operator.abort();
    vault_watch.abort();
    let (violations, samples, keys_seen) = checker.stop();
    assert!(samples > 50, "{fault:?} at {at:?}: only {samples} samples");
    assert!(
        violations.is_empty(),
        "{fault:?} at {at:?} under {model:?}: {} 401s, first {:?}",
        violations.len(),
        violations.first()
    );
    let new = RawKey::new(secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());
    assert_ne!(new, old);
    assert_eq!(
        keys_seen,
        BTreeSet::from([old.expose().to_string(), new.expose().to_string()]),
        "{fault:?} at {at:?}: pods held only the old and the new key"
    );
    assert_eq!(
        vault_keys.lock().unwrap().clone(),
        BTreeSet::from([old.expose().to_string(), new.expose().to_string()]),
        "{fault:?} at {at:?}: exactly one key minted"
    );
    let records = record_ids(&valkey);
    for api in sim.pods().iter().filter(|p| p.deployment == "sirius-api") {
        assert!(accepts(model, api, new.expose(), &records));
        assert!(
            !accepts(model, api, old.expose(), &records),
            "the old key is refused at the end"
        );
    }
    let reasons = event_reasons(&sim);
    let expected_event = match fault {
        Fault::ValkeyDown => Some("ValkeyUnavailable"),
        Fault::ValkeyFlushed => Some("ValkeyStateRestored"),
        Fault::RolloutFailure => Some("RolloutFailed"),
        Fault::SecretDeleted => Some("SecretRestored"),
        Fault::ControllerKill | Fault::ConflictStorm => None,
    };
    // Deleted before the rotation first wrote the Secret, the write that follows is its usual one.
    let expected_event = match (fault, at) {
        (Fault::SecretDeleted, At::Mint | At::Register | At::Switch) => None,
        _ => expected_event,
    };
    if let Some(reason) = expected_event {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{fault:?} at {at:?}: no {reason} Event in {reasons:?}"
        );
    }
    assert!(reasons.iter().any(|r| r == "RotationSucceeded"));
    format!(
        "{fault:?} at {at:?} (injected at step {} target {}): passed, {samples} samples, 0 refused{note}",
        injected_at["step"].as_str().unwrap_or("-"),
        injected_at["targetIndex"]
    )
}

async fn row(fault: Fault, model: AuthModel) {
    for at in STEPS {
        let line = cell(fault, at, model).await;
        println!("{model:?}: {line}");
    }
}

macro_rules! matrix {
    ($($name:ident: $fault:expr, $model:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                row($fault, $model).await;
            }
        )*
    };
}

matrix! {
    controller_kill_v1_0: Fault::ControllerKill, AuthModel::ValkeyOnly;
    controller_kill_v1_1: Fault::ControllerKill, AuthModel::RootKeyPlusValkey;
    valkey_down_v1_0: Fault::ValkeyDown, AuthModel::ValkeyOnly;
    valkey_down_v1_1: Fault::ValkeyDown, AuthModel::RootKeyPlusValkey;
    valkey_flushed_v1_0: Fault::ValkeyFlushed, AuthModel::ValkeyOnly;
    valkey_flushed_v1_1: Fault::ValkeyFlushed, AuthModel::RootKeyPlusValkey;
    rollout_failure_v1_0: Fault::RolloutFailure, AuthModel::ValkeyOnly;
    rollout_failure_v1_1: Fault::RolloutFailure, AuthModel::RootKeyPlusValkey;
    conflict_storm_v1_0: Fault::ConflictStorm, AuthModel::ValkeyOnly;
    conflict_storm_v1_1: Fault::ConflictStorm, AuthModel::RootKeyPlusValkey;
    secret_deleted_v1_0: Fault::SecretDeleted, AuthModel::ValkeyOnly;
    secret_deleted_v1_1: Fault::SecretDeleted, AuthModel::RootKeyPlusValkey;
}
