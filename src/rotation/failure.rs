//! How a rotation stops when something outside it goes wrong: a target missing or paused (it
//! waits), or a rollout, verification or metrics gate failed (it halts, or rolls back with
//! `failurePolicy: Rollback` while the old key can still be restored).

use super::action::{EventNote, Plan};
use super::reason::Reason;
use super::rotating::Rotating;
use super::status::{DEGRADED, ROTATING};
use crate::crd::{FailurePolicy, Phase, Step, TargetState};
use std::time::Duration;

/// The rotation cannot go on for a reason outside it (missing or paused target): it waits.
pub(crate) fn halted(
    x: &mut Rotating,
    index: usize,
    reason: Reason,
    message: String,
) -> Option<Plan> {
    x.r.step = Step::Roll;
    x.r.target_index = index as u32;
    let event = x.b.degrade(reason, &message);
    x.b.rotating(Reason::Roll, message);
    x.b.status.phase = Some(Phase::Degraded);
    x.wait(Some(Duration::from_secs(60)), event)
}

/// Target `index`'s rollout (or a check of it) failed: the old key stays valid, the rotation
/// halts and reports, and resumes by itself if the Deployment later completes; or, with
/// `failurePolicy: Rollback`, it rolls back.
pub(crate) fn failed(
    x: &mut Rotating,
    progress: usize,
    index: usize,
    reason: Reason,
    message: String,
) -> Option<Plan> {
    let name =
        x.o.spec
            .targets
            .get(index)
            .map(|t| t.name.as_str())
            .unwrap_or("?");
    let r = &mut x.r;
    r.step = Step::Roll;
    r.target_index = index as u32;
    r.targets[progress].state = TargetState::Failed;
    r.targets[progress].message = Some(message.clone());
    // A rollback writes the old key back: never once it was revoked (nor without its raw value).
    let old_key_gone = r.revoked_at.is_some() || x.vault.current_raw_lost;
    let rollback = x.o.spec.failure_policy == FailurePolicy::Rollback && !old_key_gone;
    let what = match reason {
        Reason::VerificationFailed => "Verification",
        Reason::MetricsGateFailed => "Validation",
        _ => "Rollout",
    };
    let text = format!(
        "{what} of {name} failed: {}. {}",
        message.trim_end_matches('.'),
        if rollback {
            "Rolling back to the old key."
        } else if old_key_gone {
            "The old key is revoked or lost, so rolling back is no longer possible; the new key stays."
        } else {
            "The old key stays valid."
        }
    );
    x.b.status.phase = Some(Phase::Degraded);
    if rollback {
        r.rolling_back = Some(text.clone());
        r.validation_started_at = None;
        r.revoked_at = None;
        r.revoke_attempts = 0;
        x.b.condition(DEGRADED, true, reason, text.clone());
        x.b.rotating(Reason::RollingBack, text.clone());
        return x.record(EventNote::new(reason, text));
    }
    let event = x.b.degrade(reason, &text);
    x.b.condition(ROTATING, true, reason, text);
    x.wait(Some(Duration::from_secs(60)), event)
}

/// A check after the last rollout failed (verification before revoking, the metrics gate): the
/// rotation fails as if the last target's rollout had.
pub(crate) fn failed_after_last_target(
    x: &mut Rotating,
    reason: Reason,
    message: String,
) -> Option<Plan> {
    let last = x.o.spec.targets.len().saturating_sub(1);
    let target =
        x.o.spec
            .targets
            .get(last)
            .cloned()
            .unwrap_or_else(|| crate::crd::RolloutTarget::named(Default::default(), ""));
    let progress = x.progress_of(&target);
    failed(x, progress, last, reason, message)
}
