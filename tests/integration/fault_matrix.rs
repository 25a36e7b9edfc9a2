//! The fault matrix: each fault injected at each step of a rotation, under both Sirius auth
//! models. Every cell asserts: no 401 from any running pod to any API pod (except, for a flush,
//! the window until the operator writes the records back, which is measured and bounded), exactly
//! one new key minted and only the old and the new key ever held by pods, the old key revoked
//! only at the end, the rotation finished after the fault healed, and the fault's own condition
//! and Event. The targets are a StatefulSet, a DaemonSet and a Deployment. docs/fault-matrix.md
//! shows the matrix.

use crate::common::sirius::{
    AuthModel, InvariantChecker, SECRET_REF, accepts, checked_sim_options, installed_key,
    record_ids,
};
use crate::common::*;
use apikey_rotator::crd::RotationProgress;
use apikey_rotator::key::RawKey;
use kube_sim::{RolloutBehavior, Sim};
use serde_json::json;
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
    /// The vault Secret deleted.
    VaultDeleted,
    /// A target that already completed in this rotation scaled up, its new pods slower than its
    /// progress deadline (an HPA, a node drain).
    TargetScaled,
    /// Valkey refuses the operator's user (its password changed), until it is changed back.
    ValkeyRefusesAuth,
    /// Another manager keeps putting the old key back into the consumers' Secret for a while.
    WriteUndone,
}

/// The targets, in step order: one of each kind. The engine (the target a rollout failure hits)
/// is the Deployment, whose own 1 s progress deadline makes the failure show at once.
const TARGETS: [(&str, &str); 3] = [
    ("StatefulSet", "sirius-api"),
    ("DaemonSet", "sirius-ui"),
    ("Deployment", "sirius-engine"),
];

/// The progress deadline of the StatefulSet and DaemonSet targets.
const SET_DEADLINE_SECONDS: u64 = 10;

/// The operator's own Valkey user in the cells where Valkey refuses it.
const OPERATOR_USER: &str = "operator";
const OPERATOR_PASSWORD: &str = "operator-password";

fn set_operator_password(valkey: &Valkey, password: &str) {
    valkey.set_user_password(OPERATOR_USER, password);
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
    /// Whether the rotation in flight is at or past this step (and target).
    fn reached(self, rotation: Option<&RotationProgress>) -> bool {
        let Some(r) = rotation else {
            return false;
        };
        let (want, want_index) = match self {
            At::Mint => (Step::Mint, 0),
            At::Register => (Step::Register, 0),
            At::Switch => (Step::Switch, 0),
            At::Roll(i) => (Step::Roll, i),
            At::Validate => (Step::Validate, 0),
            At::Revoke => (Step::Revoke, 0),
        };
        // The first observation at or past the step (short steps can be passed between polls);
        // the steps are ordered as they run.
        r.step > want || (r.step == want && u64::from(r.target_index) >= want_index)
    }
}

fn new_events(sim: &Sim, before: usize, reason: &str) -> bool {
    events(sim)
        .iter()
        .skip(before)
        .any(|e| e["reason"] == reason)
}

fn degraded(sim: &Sim, reason: &str) -> bool {
    (status(sim).conditions.iter())
        .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason)
}

/// One cell; returns a line for the report.
async fn cell(fault: Fault, at: At, model: AuthModel) -> String {
    if fault == Fault::RolloutFailure && matches!(at, At::Validate | At::Revoke) {
        return format!("{fault:?} at {at:?}: not applicable (every target already rolled)");
    }
    if fault == Fault::TargetScaled
        && matches!(at, At::Mint | At::Register | At::Switch | At::Roll(0))
    {
        return format!("{fault:?} at {at:?}: not applicable (no target completed yet)");
    }
    if fault == Fault::WriteUndone && at == At::Revoke {
        return format!(
            "{fault:?} at {at:?}: not applicable (the old key is revoked: a pod that starts while someone keeps it in the Secret is refused by design)"
        );
    }
    let valkey = Arc::new(Valkey::start());
    let sim = Arc::new(start_sim_with(checked_sim_options()).await);
    let checker = InvariantChecker::start(sim.clone(), valkey.clone(), model);
    let old = installed_key(model);
    sim.create_object(consumer_secret(&old)).unwrap();
    sim.set_nodes(&["node-a", "node-b"]);
    for (kind, name) in TARGETS {
        let mut w = sirius_workload(kind, name, 2);
        if kind == "Deployment" {
            w["spec"]["progressDeadlineSeconds"] = json!(1);
        }
        sim.create_object(w).unwrap();
    }
    wait_initial_rollouts(&sim, TARGETS.len()).await;
    let (vault_watch, vault_keys) = watch_vault_keys(&sim);
    let url = if fault == Fault::ValkeyRefusesAuth {
        set_operator_password(&valkey, OPERATOR_PASSWORD);
        format!(
            "redis://{OPERATOR_USER}:{OPERATOR_PASSWORD}@127.0.0.1:{}/0",
            valkey.port
        )
    } else {
        valkey.url()
    };
    let mut spec = targets_json(&TARGETS);
    // A StatefulSet or DaemonSet has no deadline of its own: the target's, at its least.
    for (i, (kind, _)) in TARGETS.iter().enumerate() {
        if *kind != "Deployment" {
            spec["targets"][i]["progressDeadlineSeconds"] = json!(SET_DEADLINE_SECONDS);
        }
    }
    spec["validationWindowSeconds"] = json!(1);
    let mut manifest = rotation(&url, spec);
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
    sim.create_object(manifest).unwrap();
    let resync = Duration::from_secs(1);
    let mut operator = spawn_operator_with_resync(&sim, resync);

    wait_for(Duration::from_secs(60), &format!("step {at:?}"), || {
        at.reached(in_flight(&sim).as_ref())
    })
    .await;
    let injected_at = in_flight(&sim);
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
            let revision_during = status(&sim).revision;
            valkey.resume();
            assert!(shown.is_ok(), "{fault:?} at {at:?}: no ValkeyUnavailable");
            assert_eq!(revision_during, 0, "nothing finished while Valkey was down");
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
            for plural in ["apikeyrotations", "secrets"] {
                sim.inject_faults("patch", plural, 12, 409);
            }
            // Twelve on the targets' patches too, spread over their three kinds.
            for plural in ["deployments", "statefulsets", "daemonsets"] {
                sim.inject_faults("patch", plural, 4, 409);
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
        Fault::VaultDeleted => {
            sim.delete_object("", "secrets", NS, "sirius-apikey-vault")
                .unwrap();
            wait_for(Duration::from_secs(15), "VaultLost", || {
                new_events(&sim, events_before, "VaultLost")
            })
            .await;
        }
        Fault::TargetScaled => {
            // The target that completed last grows (the StatefulSet and the Deployment scaled,
            // a node added for the DaemonSet); its new pods take longer than its deadline.
            let (plural, target) = match at {
                At::Roll(1) => ("statefulsets", "sirius-api"),
                At::Roll(2) => ("daemonsets", "sirius-ui"),
                _ => ("deployments", "sirius-engine"),
            };
            let slower = match plural {
                "deployments" => Duration::from_secs(3),
                _ => Duration::from_secs(SET_DEADLINE_SECONDS + 2),
            };
            sim.set_pod_ready_after(NS, target, slower);
            if plural == "daemonsets" {
                sim.set_nodes(&["node-a", "node-b", "node-c"]);
            } else {
                sim.merge_patch_object(
                    "apps",
                    plural,
                    NS,
                    target,
                    json!({"spec": {"replicas": 3}}),
                )
                .unwrap();
            }
            note = format!(", {target} grown to 3 pods");
        }
        Fault::ValkeyRefusesAuth => {
            set_operator_password(&valkey, "changed-by-someone");
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("USER")
                .arg(OPERATOR_USER)
                .exec(&mut valkey.conn())
                .unwrap();
            wait_for(Duration::from_secs(30), "ValkeyUnavailable", || {
                degraded(&sim, "ValkeyUnavailable")
            })
            .await;
            // Refused, the rotation costs the API server (almost) nothing.
            let requests = || sim.request_counts().values().sum::<u64>();
            let before = requests();
            tokio::time::sleep(Duration::from_secs(3)).await; // the span the requests are counted over
            let during = requests() - before;
            assert!(
                during < 10,
                "{fault:?} at {at:?}: {during} API requests in 3 s while refused"
            );
            assert_eq!(status(&sim).revision, 0, "nothing finished while refused");
            set_operator_password(&valkey, OPERATOR_PASSWORD);
            note = format!(", {during} API requests in 3 s while refused");
        }
        Fault::WriteUndone => {
            // For 3 s, the old key goes back into the Secret whenever it holds another.
            let (sim, old) = (sim.clone(), old.expose().to_string());
            tokio::spawn(async move {
                use base64::Engine;
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    if secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref()
                        != Some(old.as_str())
                    {
                        let old = base64::engine::general_purpose::STANDARD.encode(&old);
                        let _ = sim.merge_patch_object(
                            "",
                            "secrets",
                            NS,
                            "sirius-api-key",
                            json!({"data": {"SIRIUS_API_KEY": old}}),
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap();
        }
    }

    let finished = tokio::time::timeout(Duration::from_secs(90), async {
        while !(is_ready(&sim, 1)) {
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
    // The checker samples for half a second more with the operator still running (the retired
    // pods finish terminating meanwhile): nothing after the finish refuses a request either.
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
    let records = record_ids(&valkey);
    let minted: BTreeSet<String> = vault_keys.lock().unwrap().clone();
    let extra: Vec<&String> = minted
        .iter()
        .filter(|k| **k != old.expose() && **k != new.expose())
        .collect();
    assert!(minted.contains(new.expose()) && minted.contains(old.expose()));
    if fault == Fault::VaultDeleted {
        // A vault lost before the switch: its undelivered key was revoked and another minted.
        for k in extra {
            assert!(
                !records.contains(RawKey::new(k.as_str()).id().as_str()),
                "{fault:?} at {at:?}: an orphan key stays valid"
            );
        }
    } else {
        assert!(
            extra.is_empty(),
            "{fault:?} at {at:?}: exactly one key minted"
        );
    }
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
        Fault::SecretDeleted | Fault::WriteUndone => Some("SecretRestored"),
        Fault::VaultDeleted => Some("VaultLost"),
        Fault::ValkeyRefusesAuth => Some("ValkeyUnavailable"),
        Fault::ControllerKill | Fault::ConflictStorm | Fault::TargetScaled => None,
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
    if fault == Fault::TargetScaled {
        assert!(
            !reasons.iter().any(|r| r == "RolloutFailed"),
            "{fault:?} at {at:?}: a scale-up after completion failed the rotation"
        );
    }
    format!(
        "{fault:?} at {at:?} (injected at step {} target {}): passed, {samples} samples, 0 refused{note}",
        injected_at
            .as_ref()
            .map_or("-".to_string(), |r| format!("{:?}", r.step)),
        injected_at
            .as_ref()
            .map_or("null".to_string(), |r| r.target_index.to_string())
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
    vault_deleted_v1_0: Fault::VaultDeleted, AuthModel::ValkeyOnly;
    vault_deleted_v1_1: Fault::VaultDeleted, AuthModel::RootKeyPlusValkey;
    target_scaled_v1_0: Fault::TargetScaled, AuthModel::ValkeyOnly;
    target_scaled_v1_1: Fault::TargetScaled, AuthModel::RootKeyPlusValkey;
    valkey_refuses_auth_v1_0: Fault::ValkeyRefusesAuth, AuthModel::ValkeyOnly;
    valkey_refuses_auth_v1_1: Fault::ValkeyRefusesAuth, AuthModel::RootKeyPlusValkey;
    write_undone_v1_0: Fault::WriteUndone, AuthModel::ValkeyOnly;
    write_undone_v1_1: Fault::WriteUndone, AuthModel::RootKeyPlusValkey;
}
