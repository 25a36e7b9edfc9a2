//! Undoing a failed rotation (`failurePolicy: Rollback`): the old key back into the Secret, every
//! target rolled back in reverse order (each after the later ones completed), a window in which
//! both keys stay valid, then, once no pod can hold it, the new key's record removed and its raw
//! value dropped.

mod hold;
mod remove_new_key;
mod roll_back;
mod switch_back;

use super::action::{Action, EventNote, Plan};
use super::reason::Reason;
use super::rotating::{Rotating, StepFn};
use super::status::{DEGRADED, ROTATING};
use crate::crd::Phase;

/// The rollback's steps, in order; each returns its plan, or None when the world shows it done.
pub(crate) const ROLLBACK: [(&str, StepFn); 5] = [
    ("KeepNewRecord", keep_new_record),
    ("SwitchBack", switch_back::switch_back),
    ("RollBack", roll_back::roll_back),
    ("Hold", hold::hold),
    ("RemoveNewKey", remove_new_key::remove_new_key),
];

/// Every rollback plan says why (`Degraded`); once the new raw key is dropped, only the
/// bookkeeping of the rolled-back rotation is left.
pub(crate) fn begin(x: &mut Rotating, why: &str) -> Option<Plan> {
    x.b.status.phase = Some(Phase::Degraded);
    x.b.condition(DEGRADED, true, Reason::RolloutFailed, why);
    if x.new_key().is_some() {
        return None;
    }
    let revision = x.r.revision;
    let b = &mut x.b;
    b.status.revision = revision;
    b.status.current_rotation = None;
    let message = format!("Rotation {revision} was rolled back.");
    b.condition(ROTATING, false, Reason::Idle, message);
    let message = format!(
        "Rotation {revision} was rolled back: {why} Automatic rotations wait for a new trigger."
    );
    b.condition(DEGRADED, true, Reason::RolledBack, message);
    let action = Action::RecordHistory {
        revision,
        result: "RolledBack",
    };
    let message = format!(
        "Rotation {revision} was rolled back; the old key is active and the new one is removed."
    );
    Some(b.plan_copy(action, EventNote::new(Reason::RotationRolledBack, message)))
}

/// The new key stays valid until it is removed: restore its record if it was lost.
fn keep_new_record(x: &mut Rotating) -> Option<Plan> {
    if x.o.records.pending || x.r.revoked_at.is_some() {
        return None;
    }
    let action = Action::Register {
        current: false,
        pending: true,
    };
    x.plan(action, None)
}
