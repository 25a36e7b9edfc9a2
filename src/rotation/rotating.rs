//! A rotation in flight, as the steps see it: the observation, the vault, the progress being
//! recorded and the status being built. A step changes the progress and returns its plan, which
//! records the progress as it then stands.

use super::action::{Action, EventNote, Plan};
use super::observation::{Observation, VaultView};
use super::reason::Reason;
use super::status::StatusBuilder;
use super::time::{parse_ts, ts_precise};
use crate::crd::{RolloutTarget, RotationProgress, TargetProgress};
use crate::key::KeyId;
use std::time::Duration;

pub(crate) struct Rotating<'a> {
    pub o: &'a Observation,
    pub vault: &'a VaultView,
    pub r: RotationProgress,
    pub b: StatusBuilder<'a>,
}

/// One step of a table: the plan for its part of the rotation, or None when the world already
/// shows that part done.
pub(crate) type StepFn = for<'x, 'a> fn(&'x mut Rotating<'a>) -> Option<Plan>;

impl<'a> Rotating<'a> {
    /// The plan of a step: its action and Event, with the progress recorded as it now stands.
    pub fn plan(&mut self, action: Action, event: Option<EventNote>) -> Option<Plan> {
        Some(self.planned(action, event))
    }

    /// As [`Self::plan`], for the caller that has no step's Option to return.
    pub fn planned(&mut self, action: Action, event: Option<EventNote>) -> Plan {
        self.b.status.current_rotation = Some(self.r.clone());
        self.b.plan_copy(action, event)
    }

    /// Only the progress (and the Event) to record; decide again at once.
    pub fn record(&mut self, event: Option<EventNote>) -> Option<Plan> {
        self.plan(Action::StatusOnly, event)
    }

    /// Nothing to do until something changes or `after` passed.
    pub fn wait(&mut self, after: Option<Duration>, event: Option<EventNote>) -> Option<Plan> {
        self.plan(
            Action::Wait {
                requeue_after: after,
            },
            event,
        )
    }

    /// This rotation's new key, once the vault holds it (the Mint step's work).
    pub fn new_key(&self) -> Option<KeyId> {
        match &self.vault.pending {
            Some((id, revision)) if *revision == self.r.revision => Some(id.clone()),
            _ => None,
        }
    }

    /// Where `target` is in the status (added if the status lost it).
    pub fn progress_of(&mut self, target: &RolloutTarget) -> usize {
        let targets = &mut self.r.targets;
        targets
            .iter()
            .position(|t| t.kind == target.kind && t.name == target.name)
            .unwrap_or_else(|| {
                targets.push(TargetProgress::pending(target.kind, &target.name));
                targets.len() - 1
            })
    }

    /// The Secret-restores annotation a target rolled in this rotation carries.
    pub fn restores_marker(&self) -> Option<String> {
        (self.r.secret_restores > 0).then(|| self.r.secret_restores.to_string())
    }

    /// Every target rolls (again) with a new restore count, so no template stamped before counts.
    pub fn roll_every_target_again(&mut self) {
        let r = &mut self.r;
        r.secret_restores += 1;
        for t in r.targets.iter_mut() {
            *t = TargetProgress {
                selector: t.selector.take(),
                ..TargetProgress::pending(t.kind, &t.name)
            };
        }
        r.target_index = 0;
        r.validation_started_at = None;
        r.gate_checked_at = None;
    }

    /// Another manager wrote the Secret's data key after the switch recorded in `switch` (by
    /// the API server's clock): the switch is cleared (it is recorded again at once) and the
    /// Warning Event says who.
    pub fn rewritten_since(&mut self, switch: SwitchField) -> Option<Option<EventNote>> {
        let (manager, at) = self.o.consumer_key_rewritten.as_ref()?;
        let switched = parse_ts(switch(&mut self.r))?;
        if *at <= switched {
            return None;
        }
        *switch(&mut self.r) = None;
        Some(EventNote::new(
            Reason::SecretRewritten,
            format!(
                "Secret {}'s key was written by {manager} after the operator's switch; pods that started meanwhile may hold another key, so every target rolls again.",
                self.o.spec.secret.name
            ),
        ))
    }

    /// Once the Secret holds the key: when it changed to hold it (`switch`, by the API server's
    /// clock, as pods' creation times are) and the end of a restore, in a status write of their
    /// own before any target rolls, so a later change of the Secret is always seen as one (a roll
    /// whose status write was lost could otherwise hide it). True when there is something to
    /// record.
    pub fn record_switch(&mut self, switch: SwitchField) -> bool {
        let unrecorded = switch(&mut self.r).is_none();
        if unrecorded {
            let at = self.o.consumer_changed_at.unwrap_or(self.o.now);
            *switch(&mut self.r) = Some(ts_precise(at));
        }
        let restored = std::mem::take(&mut self.r.restoring_secret);
        unrecorded || restored
    }
}

/// Which switch a step records: forward (`switchedAt`) or back (`switchedBackAt`).
pub(crate) type SwitchField = fn(&mut RotationProgress) -> &mut Option<String>;
