//! The rotation as a pure state machine: from what was observed (spec, status, Secrets,
//! Deployments, pods, Valkey records) and the time, it decides the one next action and the
//! status that records it. No I/O happens here; the reconciler performs the action.
//!
//! Crash safety comes from deciding on the world as observed, not on remembered intent: every
//! action is idempotent, progress is re-derived from the vault Secret, the consumers' Secret, the
//! pod-template annotations and the Valkey records, and the status only adds what the world cannot
//! show (timestamps, the rotation in flight).
//!
//! A rotation in flight runs the guards below, then one table of steps: [`FORWARD`], or
//! [`ROLLBACK`] once a failure asked for it. See `docs/architecture.md`.

mod action;
mod failure;
mod forward;
mod guards;
mod idle;
mod observation;
mod pod_gate;
mod reason;
mod rollback;
mod rotating;
mod setup;
mod status;
mod time;
mod verify;

#[cfg(test)]
mod tests;

pub use action::{Action, EventNote, Plan};
pub(crate) use forward::FORWARD;
pub use observation::{
    ConsumerView, GateReading, Observation, PlanNotes, ProbeOutcome, ProbeStage, RecordView,
    TargetView, VaultView,
};
pub use reason::Reason;
pub(crate) use rollback::ROLLBACK;
pub use status::{DEGRADED, READY, ROTATING};
pub(crate) use status::{degraded_with, set_condition};

use crate::crd::Phase;
use rotating::{Rotating, StepFn};
use status::StatusBuilder;
use std::time::Duration;

/// The one entry point: what to do next.
pub fn decide(o: &Observation) -> Plan {
    let plan = decide_ignoring_immutability(o);
    if o.consumer_immutable {
        let starts_rotation =
            o.status.current_rotation.is_none() && plan.status.current_rotation.is_some();
        let nothing_minted = match plan.action {
            _ if starts_rotation => true,
            Action::MintPending { .. } | Action::CreateVault { adopt: false } => true,
            // Labelling it (its data unchanged) is allowed.
            Action::WriteConsumer { pending } if !o.holds(pending) => false,
            _ => return plan,
        };
        return setup::immutable_consumer(o, nothing_minted);
    }
    plan
}

fn decide_ignoring_immutability(o: &Observation) -> Plan {
    let mut b = StatusBuilder::new(o);
    let Some(vault) = &o.vault else {
        if o.status.active_key_id.is_some() {
            return setup::vault_lost(o, b);
        }
        return setup::bootstrap(o, b);
    };
    b.status.active_key_id = Some(vault.current.0.clone());
    b.status.active_key_id_short = Some(vault.current.short().to_string());
    // Bootstrap drift: once v1.0's flag was seen, it stays set (the record side is repaired below).
    if o.records.bootstrap_flag {
        b.status.bootstrap_flag_in_use = true;
    } else if o.status.bootstrap_flag_in_use {
        let message = "Sirius v1.0's bootstrap_complete flag was gone from Valkey; set it again.";
        let event = EventNote::new(Reason::BootstrapFlagRestored, message);
        return b.plan(Action::SetBootstrapFlag, event);
    }
    match o.status.current_rotation.clone() {
        None => idle::idle(o, vault, b),
        Some(r) => rotating(Rotating { o, vault, r, b }),
    }
}

/// A rotation in flight: the guards, then the first step of its table that has work to do.
fn rotating(mut x: Rotating) -> Plan {
    x.b.status.phase = Some(Phase::Rotating);
    if let Some(plan) = forward::finished(&mut x).or_else(|| guards::suspended(&mut x)) {
        return plan;
    }
    x.b.healthy();
    if let Some(plan) = guards::plan_fixed(&mut x).or_else(|| guards::old_record_kept(&mut x)) {
        return plan;
    }
    match x.r.rolling_back.clone() {
        Some(why) => rollback::begin(&mut x, &why).unwrap_or_else(|| run(&mut x, &ROLLBACK)),
        None => run(&mut x, &FORWARD),
    }
}

/// The first step of `table` that plans. The last step of each table always plans; were none
/// to, the rotation waits (and nothing is done) rather than guessing.
fn run<S>(x: &mut Rotating, table: &[(S, StepFn)]) -> Plan {
    for (_, step) in table {
        if let Some(plan) = step(x) {
            return plan;
        }
    }
    let action = Action::Wait {
        requeue_after: Some(Duration::from_secs(60)),
    };
    x.planned(action, None)
}
