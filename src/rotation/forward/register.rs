//! Register: the new key's Sirius record, so both keys are valid (the old one's record is kept by
//! a guard until it is revoked).

use crate::crd::Step;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;

/// Done when the new key's record is in Valkey.
pub(crate) fn register(x: &mut Rotating) -> Option<Plan> {
    let new = x.new_key()?;
    if x.o.records.pending {
        return None;
    }
    let event = if x.r.step > Step::Register {
        EventNote::new(
            Reason::ValkeyStateRestored,
            format!(
                "The Valkey record of the new key {} was gone; wrote it back.",
                new.short()
            ),
        )
    } else {
        EventNote::new(
            Reason::KeysRegistered,
            format!(
                "Both keys are valid: old {} and new {}.",
                x.vault.current.short(),
                new.short()
            ),
        )
    };
    x.r.step = x.r.step.max(Step::Register);
    x.b.rotating(Reason::Register, "Writing the Valkey records of both keys.");
    let action = Action::Register {
        current: false,
        pending: true,
    };
    x.plan(action, event)
}
