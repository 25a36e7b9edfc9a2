//! Revoke: the old key's record deleted (after the API accepted the new key, when the spec
//! verifies), deleted again if a request in flight rewrote it, and its refusal confirmed.

use crate::crd::Phase;
use crate::crd::{Step, Verification};
use crate::key::KeyId;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::failure::failed_after_last_target;
use crate::rotation::observation::ProbeStage;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use crate::rotation::time::{at_least, parse_ts, ts, ts_precise, until};
use crate::rotation::verify::accepted;
use std::time::Duration;

/// Done when the old key's record is gone, stayed gone through the re-check delay and, when the
/// spec verifies, the API refuses it.
pub(crate) fn revoke(x: &mut Rotating) -> Option<Plan> {
    let (o, now) = (x.o, x.o.now);
    let old = x.vault.current.clone();
    x.r.step = Step::Revoke;
    let Some(at) = parse_ts(&x.r.revoked_at) else {
        if let Some(v) = &o.spec.verification
            && x.r.verified_before_revoke_at.is_none()
        {
            return verify_new_key(x, v);
        }
        x.r.revoked_at = Some(ts_precise(now));
        x.r.revoke_attempts = 1;
        x.b.rotating(
            Reason::Revoke,
            format!("Revoking the old key {}.", old.short()),
        );
        let message = format!("Deleted the Valkey record of the old key {}.", old.short());
        return x.plan(
            Action::Revoke { key_id: old },
            EventNote::new(Reason::OldKeyRevoked, message),
        );
    };
    let recheck = at_least(at, o.spec.revoke_recheck_seconds);
    if now < recheck {
        let message = format!("Confirming the old key {} stays revoked.", old.short());
        x.b.rotating(Reason::Revoke, message);
        return x.wait(Some(until(now, recheck)), None);
    }
    if o.records.current {
        x.r.revoked_at = Some(ts_precise(now));
        x.r.revoke_attempts += 1;
        let message = format!(
            "The old key's record {} came back (a request in flight rewrote it); deleted it again.",
            old.short()
        );
        return x.plan(
            Action::Revoke { key_id: old },
            EventNote::new(Reason::RevocationRepeated, message),
        );
    }
    match &o.spec.verification {
        Some(v) if x.r.old_key_refused_at.is_none() && !x.vault.current_raw_lost => {
            confirm_refused(x, v, old)
        }
        _ => None,
    }
}

/// Before revoking, the API must accept the new key.
fn verify_new_key(x: &mut Rotating, v: &Verification) -> Option<Plan> {
    let stage = ProbeStage::BeforeRevoke;
    let Some(outcome) = x.o.probe_answer(stage) else {
        return x.plan(Action::Probe { stage }, None);
    };
    match accepted(v, outcome) {
        Ok(code) => {
            x.r.verified_before_revoke_at = Some(ts(x.o.now));
            let message =
                format!("The API accepts the new key (HTTP {code}); revoking the old key.");
            x.record(EventNote::new(Reason::NewKeyVerified, message))
        }
        Err(why) => {
            let message =
                format!("before revoking the old key the API did not accept the new key: {why}");
            failed_after_last_target(x, Reason::VerificationFailed, message)
        }
    }
}

/// After the re-check delay, the API must refuse the old key; while it does not, the record is
/// deleted again, up to `spec.verification.maxRevocations` times.
fn confirm_refused(x: &mut Rotating, v: &Verification, old: KeyId) -> Option<Plan> {
    let now = x.o.now;
    let stage = ProbeStage::OldKeyRefused;
    let Some(outcome) = x.o.probe_answer(stage) else {
        return x.plan(Action::Probe { stage }, None);
    };
    let answer = match outcome {
        Ok(code) if *code == v.refused_status_code => {
            x.r.old_key_refused_at = Some(ts(now));
            let message = format!(
                "Confirmed: the API answers HTTP {code} to the old key {}.",
                old.short()
            );
            return x.record(EventNote::new(Reason::OldKeyRefused, message));
        }
        Ok(code) => format!("HTTP {code}"),
        Err(why) => why.clone(),
    };
    // Still accepted somewhere (a record rewritten by a request in flight, an API replica that
    // kept it): delete it again and ask again after the delay.
    if x.r.revoke_attempts >= v.max_revocations {
        // Bounded: a probe pointed at the wrong API must not loop forever.
        let text = format!(
            "The API still did not refuse the old key {} after {} revocations ({answer}, expected HTTP {}); stopped revoking it again (spec.verification.maxRevocations). Check that {} is the API that reads this Valkey.",
            old.short(),
            x.r.revoke_attempts,
            v.refused_status_code,
            crate::redact::url(&v.url)
        );
        let event = x.b.degrade(Reason::OldKeyStillAccepted, &text);
        x.b.rotating(Reason::OldKeyStillAccepted, text);
        x.b.status.phase = Some(Phase::Degraded);
        return x.wait(Some(Duration::from_secs(300)), event);
    }
    let text = format!(
        "The API did not refuse the old key {} after its revocation ({answer}, expected HTTP {}); revoked it again.",
        old.short(),
        v.refused_status_code
    );
    let event = x.b.degrade(Reason::OldKeyStillAccepted, &text);
    x.r.revoked_at = Some(ts_precise(now));
    x.r.revoke_attempts += 1;
    x.plan(Action::Revoke { key_id: old }, event)
}
