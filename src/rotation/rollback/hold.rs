//! Hold: every consumer is back on the old key; the new one stays valid for the validation
//! window before it is removed.

use crate::rotation::action::Plan;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use crate::rotation::time::{at_least, parse_ts, ts, ts_precise, until};

/// Done when the window that began after the last target rolled back has passed.
pub(crate) fn hold(x: &mut Rotating) -> Option<Plan> {
    let now = x.o.now;
    let Some(started) = parse_ts(&x.r.validation_started_at) else {
        x.r.validation_started_at = Some(ts_precise(now));
        return x.record(None);
    };
    let window_end = at_least(started, x.o.spec.validation_window_seconds);
    if now >= window_end {
        return None;
    }
    let message = format!(
        "Every target runs the old key; removing the new key after {}.",
        ts(window_end)
    );
    x.b.rotating(Reason::RollingBack, message);
    x.wait(Some(until(now, window_end)), None)
}
