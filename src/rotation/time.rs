//! How the machine writes, reads and waits on the instants it keeps in status.

use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// Whole seconds, as Kubernetes stamps its own times.
pub(crate) fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Millisecond precision, for the instants that start a wait (validation, revocation re-check),
/// so the wait ends when asked and not up to a second later.
pub(crate) fn ts_precise(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// An instant read back from status; None when absent or not a time (never a panic).
pub(crate) fn parse_ts(s: &Option<String>) -> Option<Timestamp> {
    s.as_deref().and_then(|s| s.parse().ok())
}

/// The end of a wait of `seconds` that began at `stamp`. A stamp without a fraction may have been
/// truncated to the second (a status written by an older version), so that wait is rounded up: a
/// wait that protects keys (validation, revocation re-check) is never shorter than asked.
pub(crate) fn at_least(stamp: Timestamp, seconds: u32) -> Timestamp {
    let truncated = if stamp.subsec_nanosecond() == 0 { 1 } else { 0 };
    stamp + SignedDuration::from_secs(seconds as i64 + truncated)
}

/// How long from `now` until `at`, for a requeue.
pub(crate) fn until(now: Timestamp, at: Timestamp) -> Duration {
    let d = at.duration_since(now);
    if d <= SignedDuration::ZERO {
        Duration::ZERO
    } else {
        // Wake up just after the instant, so the comparison has passed.
        Duration::from_millis(d.as_millis() as u64 + 5)
    }
}
