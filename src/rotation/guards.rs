//! What comes before any step of a rotation in flight: a paused rotation, a spec edited
//! mid-rotation, and the old key's record, which stays valid until the Revoke step.

use super::action::{EventNote, Plan};
use super::idle::revoked_in_sirius;
use super::reason::Reason;
use super::rotating::Rotating;
use crate::crd::Phase;

/// `spec.suspend` holds the rotation where it is.
pub(crate) fn suspended(x: &mut Rotating) -> Option<Plan> {
    if !x.o.spec.suspend {
        return None;
    }
    x.b.status.phase = Some(Phase::Suspended);
    let message = format!(
        "Rotation {} paused at step {:?} by spec.suspend.",
        x.r.revision, x.r.step
    );
    x.b.rotating(Reason::Suspended, message);
    x.wait(None, None)
}

/// The plan is fixed at the start: a rotation from before plans were kept takes the Secret it
/// is working with; an edit of the targets or the Secret waits for the next rotation (said
/// once).
pub(crate) fn plan_fixed(x: &mut Rotating) -> Option<Plan> {
    let o = x.o;
    if x.r.secret.is_none() {
        x.r.secret = Some(o.spec.secret.clone());
    }
    if o.plan.deferred.is_empty() {
        x.r.spec_change_pending = false;
        return None;
    }
    if x.r.spec_change_pending {
        return None;
    }
    x.r.spec_change_pending = true;
    let message = format!(
        "{} changed during rotation {}; the change applies to the next rotation (this one finishes with the targets and Secret it started with).",
        o.plan.deferred.join(" and "),
        x.r.revision
    );
    x.record(EventNote::new(Reason::SpecChangePending, message))
}

/// The old key stays valid until it is revoked: its record is written back if it was lost.
/// (During a rollback `revokedAt` tracks the new key's removal; the old key stays.) Deleted
/// while Valkey kept the rest (revoked in Sirius), it is not written back: the rotation goes on,
/// outside windows.
pub(crate) fn old_record_kept(x: &mut Rotating) -> Option<Plan> {
    let (o, vault) = (x.o, x.vault);
    let revoking = x.r.revoked_at.is_some() && x.r.rolling_back.is_none();
    if o.records.current || revoking || vault.current_raw_lost || x.r.old_key_revoked_externally {
        return None;
    }
    // Not during a rollback, which needs the old key.
    if x.r.rolling_back.is_none() && revoked_in_sirius(o) {
        x.r.old_key_revoked_externally = true;
        x.r.outside_windows = true;
        let message = format!(
            "The Valkey record of the old key {} was deleted during rotation {} while Valkey kept its other data (revoked in Sirius?). It is not restored; the rotation goes on, outside maintenance windows.",
            vault.current.short(),
            x.r.revision
        );
        return x.record(EventNote::new(Reason::KeyRevokedExternally, message));
    }
    let action = super::action::Action::Register {
        current: true,
        pending: vault.pending.is_some() && !o.records.pending,
    };
    let message = format!(
        "The Valkey record of the old key {}, which consumers still hold, was gone; wrote it back.",
        vault.current.short()
    );
    x.plan(action, EventNote::new(Reason::ValkeyStateRestored, message))
}
