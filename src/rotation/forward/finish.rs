//! Finish: the vault's pending key becomes current (the old raw key is dropped), then the
//! rotation's bookkeeping: status, history, the next rotation's time.

use crate::crd::Phase;
use crate::crd::Step;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::idle::next_rotation;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use crate::rotation::setup::short_id;
use crate::rotation::status::{READY, ROTATING};
use crate::rotation::time::ts;
use crate::schedule::Calendar;

/// The last step: promote the new key (every step before it is done).
pub(crate) fn promote(x: &mut Rotating) -> Option<Plan> {
    x.new_key()?;
    x.r.step = Step::Finish;
    x.b.rotating(Reason::Finish, "The old key is refused; finishing.");
    x.plan(Action::Promote, None)
}

/// Promoted already (the vault's current key is the rotation's new one): only the bookkeeping
/// of the finished rotation is left.
pub(crate) fn finished(x: &mut Rotating) -> Option<Plan> {
    let (o, vault) = (x.o, x.vault);
    if vault.pending.is_some() || x.r.new_key_id.as_deref() != Some(vault.current.as_str()) {
        return None;
    }
    if !o.records.current {
        // The new key lost its record after promotion: restore it before declaring success.
        let message = format!(
            "Wrote the Valkey record of the active key {}.",
            vault.current.short()
        );
        let action = Action::Register {
            current: true,
            pending: false,
        };
        return x.plan(action, EventNote::new(Reason::KeyRegistered, message));
    }
    let revision = x.r.revision;
    let b = &mut x.b;
    b.status.revision = revision;
    b.status.last_rotation_time = Some(ts(o.now));
    b.status.previous_key_id = x.r.old_key_id.clone();
    b.status.active_key_id = Some(vault.current.0.clone());
    b.status.current_rotation = None;
    b.status.phase = Some(Phase::Ready);
    let calendar = Calendar::from_spec(&o.spec).unwrap_or_default();
    b.status.next_rotation_time = next_rotation(o, &calendar, o.now).1.map(ts);
    let finished = format!("Rotation {revision} finished.");
    b.condition(ROTATING, false, Reason::Idle, finished);
    let active = format!("Key {} is registered and delivered.", vault.current.short());
    b.condition(READY, true, Reason::KeyActive, active);
    b.healthy();
    let old = short_id(x.r.old_key_id.as_deref());
    let message = format!(
        "Rotation {revision} finished: key {} is active, old key {old} is revoked.",
        vault.current.short()
    );
    let action = Action::RecordHistory {
        revision,
        result: "Succeeded",
    };
    Some(b.plan_copy(action, EventNote::new(Reason::RotationSucceeded, message)))
}
