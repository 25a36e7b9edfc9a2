//! The one place that builds the status of a plan: conditions (and their transition times),
//! the Degraded reason and its Event.

use super::action::{Action, EventNote, Plan};
use super::observation::Observation;
use super::reason::Reason;
use super::time::ts;
use crate::crd::{ApiKeyRotationStatus, Condition};

pub const READY: &str = "Ready";
pub const ROTATING: &str = "Rotating";
pub const DEGRADED: &str = "Degraded";

/// Builds the status of a plan from the observed one.
pub(crate) struct StatusBuilder<'a> {
    o: &'a Observation,
    pub status: ApiKeyRotationStatus,
}

impl<'a> StatusBuilder<'a> {
    pub fn new(o: &'a Observation) -> Self {
        let mut status = o.status.clone();
        status.observed_generation = o.generation;
        Self { o, status }
    }

    /// Sets a condition; its transition time moves only when its status does.
    pub fn condition(&mut self, type_: &str, on: bool, reason: Reason, message: impl Into<String>) {
        let (now, generation) = (ts(self.o.now), self.o.generation);
        let conditions = &mut self.status.conditions;
        set_condition(
            conditions,
            type_,
            on,
            reason,
            message.into(),
            now,
            generation,
        );
    }

    /// The Rotating condition, true: the rotation is at this step or waits for this reason.
    pub fn rotating(&mut self, reason: Reason, message: impl Into<String>) {
        self.condition(ROTATING, true, reason, message);
    }

    pub fn healthy(&mut self) {
        self.condition(DEGRADED, false, Reason::AsExpected, "No problems found.");
    }

    /// `Degraded=True` with this reason; the Warning Event only when the condition is new, so a
    /// repeated decision does not repeat it.
    pub fn degrade(&mut self, reason: Reason, message: &str) -> Option<EventNote> {
        let event = (!degraded_with(&self.o.status.conditions, reason, message))
            .then(|| EventNote::new(reason, message))
            .flatten();
        self.condition(DEGRADED, true, reason, message);
        event
    }

    pub fn plan(self, action: Action, event: Option<EventNote>) -> Plan {
        Plan {
            action,
            status: self.status,
            event,
        }
    }

    /// The plan with a copy of the status so far (for a builder still in use).
    pub fn plan_copy(&self, action: Action, event: Option<EventNote>) -> Plan {
        Plan {
            action,
            status: self.status.clone(),
            event,
        }
    }
}

/// Sets condition `type_` (as of `now` and for `generation`) among `conditions`, kept in the
/// order Ready, Rotating, Degraded. Its transition time moves only when its status does. The
/// reconciler's failure reports set theirs here too.
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    on: bool,
    reason: Reason,
    message: String,
    now: String,
    generation: Option<i64>,
) {
    let status = if on { "True" } else { "False" };
    let previous = conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now,
    };
    let c = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.as_str().to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|x| x.type_ == type_) {
        Some(x) => *x = c,
        None => conditions.push(c),
    }
    let order = |t: &str| {
        [READY, ROTATING, DEGRADED]
            .iter()
            .position(|x| *x == t)
            .unwrap_or(9)
    };
    conditions.sort_by_key(|c| order(&c.type_));
}

/// Whether `Degraded=True` already says exactly this.
pub(crate) fn degraded_with(conditions: &[Condition], reason: Reason, message: &str) -> bool {
    conditions.iter().any(|c| {
        c.type_ == DEGRADED
            && c.status == "True"
            && c.reason == reason.as_str()
            && c.message == message
    })
}

/// Whether the observed Rotating condition already gives this reason (so its Event, said when
/// the wait began, is not said again).
pub(crate) fn rotating_for(o: &Observation, reason: Reason) -> bool {
    o.status
        .conditions
        .iter()
        .any(|c| c.type_ == ROTATING && c.reason == reason.as_str())
}
