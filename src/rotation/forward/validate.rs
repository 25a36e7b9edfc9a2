//! Validate: both keys stay valid for the validation window after the last target completed
//! (with the metrics gate read through it); then the pod gate holds the revocation until every
//! pod that reads the Secret runs the new key.

use crate::crd::{MetricsGate, Step};
use crate::pods::PodSummary;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::failure::failed_after_last_target;
use crate::rotation::pod_gate::pod_gate;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use crate::rotation::status::rotating_for;
use crate::rotation::time::{at_least, parse_ts, ts, ts_precise, until};
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// Done when the window passed, the metrics gate stayed under its threshold through it, and no
/// pod that reads the Secret may still hold the old key.
pub(crate) fn validate(x: &mut Rotating) -> Option<Plan> {
    let (o, now) = (x.o, x.o.now);
    let new = x.new_key()?;
    x.r.target_index = o.spec.targets.len().saturating_sub(1) as u32;
    let window = o.spec.validation_window_seconds;
    let Some(started) = parse_ts(&x.r.validation_started_at) else {
        x.r.step = Step::Validate;
        x.r.validation_started_at = Some(ts_precise(now));
        let message = format!("All targets run the new key; validating for {window}s.");
        x.b.rotating(Reason::Validate, message);
        let message =
            format!("All targets run the new key; the old key stays valid for {window}s.");
        return x.record(EventNote::new(Reason::ValidationStarted, message));
    };
    let window_end = at_least(started, window);
    // The next wake-up while validating, and what the gate read so far.
    let (mut wake, mut gate_note) = (window_end, String::new());
    if let Some(gate) = &o.spec.metrics_gate {
        let next_check = next_gate_check(x, gate, started, window_end);
        if let Some(plan) = read_gate(x, gate, next_check, window_end) {
            return Some(plan);
        }
        wake = next_check.max(now).min(window_end);
        gate_note = format!(
            "; the metrics gate read {} (at most {})",
            x.r.gate_value.map(|v| v.to_string()).unwrap_or_default(),
            gate.threshold
        );
    }
    if now < window_end {
        x.r.step = Step::Validate;
        let message = format!("Validating until {}{gate_note}.", ts(window_end));
        x.b.rotating(Reason::Validate, message);
        return x.wait(Some(until(now, wake)), None);
    }
    // The pod gate: every pod that reads the Secret started on the new key.
    if x.r.revoked_at.is_none() {
        x.r.step = Step::Validate;
        let restores = x.restores_marker();
        let switched_at = parse_ts(&x.r.switched_at);
        let on_new = |p: &PodSummary| p.runs_key(&new, restores.as_deref(), switched_at);
        return pod_gate(x, &on_new, "old");
    }
    None
}

/// When the metrics gate is read next: at the window's start, then every interval, and once
/// more at its end.
fn next_gate_check(
    x: &Rotating,
    gate: &MetricsGate,
    started: Timestamp,
    window_end: Timestamp,
) -> Timestamp {
    match parse_ts(&x.r.gate_checked_at) {
        None => started,
        Some(t) => (t + SignedDuration::from_secs(gate.interval_seconds.into())).min(window_end),
    }
}

/// The metrics gate's reading, when one is due: asked for, recorded, or a failed rotation.
fn read_gate(
    x: &mut Rotating,
    gate: &MetricsGate,
    next_check: Timestamp,
    window_end: Timestamp,
) -> Option<Plan> {
    let (o, now) = (x.o, x.o.now);
    let final_check_done = parse_ts(&x.r.gate_checked_at).is_some_and(|t| t >= window_end);
    if now < next_check || final_check_done {
        return None;
    }
    x.r.step = Step::Validate;
    match &o.gate {
        None => x.plan(Action::QueryGate, None),
        Some(Ok(value)) if *value > gate.threshold => {
            // Resumed (Halt) or not, a new validation window must start over.
            x.r.validation_started_at = None;
            x.r.gate_checked_at = None;
            let message = format!(
                "the metrics gate read {value} (over {}) during the validation window: {}",
                gate.threshold,
                crate::redact::text(&gate.query)
            );
            failed_after_last_target(x, Reason::MetricsGateFailed, message)
        }
        Some(Ok(value)) => {
            x.r.gate_checked_at = Some(ts_precise(now));
            x.r.gate_value = Some(*value);
            let event = (now >= window_end).then(|| {
                EventNote::new(
                    Reason::MetricsGatePassed,
                    format!(
                        "The metrics gate stayed at or under {} for the whole validation window (last {value}).",
                        gate.threshold
                    ),
                )
            });
            x.record(event.flatten())
        }
        Some(Err(why)) => {
            // No reading, no verdict: the revocation waits for one.
            let text = format!("Cannot read the metrics gate ({why}); retrying.");
            let event = (!rotating_for(o, Reason::MetricsGateUnavailable))
                .then(|| EventNote::new(Reason::MetricsGateUnavailable, text.clone()))
                .flatten();
            x.b.rotating(Reason::MetricsGateUnavailable, text);
            x.wait(Some(Duration::from_secs(5)), event)
        }
    }
}
