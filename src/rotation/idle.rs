//! No rotation in flight: the active key's record, its delivery to the consumers' Secret, and
//! when the next rotation starts (interval, schedule, manual trigger, maintenance windows).

use super::action::{Action, EventNote, Plan};
use super::observation::{ConsumerView, Observation, TargetView, VaultView};
use super::reason::Reason;
use super::setup::ever_ready;
use super::status::{DEGRADED, READY, ROTATING, StatusBuilder, rotating_for};
use super::time::{parse_ts, ts, until};
use crate::crd::{ExternalRevocation, Phase, RotationProgress, SecretDriftPolicy};
use crate::key::KeyId;
use crate::schedule::Calendar;
use jiff::{SignedDuration, Timestamp};

/// The active key is kept registered and delivered; a rotation starts when one is due.
pub(super) fn idle(o: &Observation, vault: &VaultView, mut b: StatusBuilder) -> Plan {
    let kept = resume_lost_rotation(o, vault, &mut b)
        .or_else(|| keep_record(o, vault, &mut b))
        .or_else(|| keep_delivered(o, vault, &mut b));
    match kept {
        Some(plan) => plan,
        None => start_when_due(o, vault, b),
    }
}

/// A pending key without a rotation in status: the status was lost; resume that rotation.
fn resume_lost_rotation(o: &Observation, vault: &VaultView, b: &mut StatusBuilder) -> Option<Plan> {
    let (pending, revision) = vault.pending.as_ref()?;
    if let Some(plan) = refuse_unselected_targets(o, b, *revision) {
        return Some(plan);
    }
    b.status.current_rotation = Some(new_rotation(
        o,
        *revision,
        "Resumed".into(),
        Some(pending.clone()),
        &vault.current,
    ));
    b.status.phase = Some(Phase::Rotating);
    Some(b.plan_copy(
        Action::StatusOnly,
        EventNote::new(
            Reason::RotationResumed,
            format!("Resuming rotation {revision} to key {}.", pending.short()),
        ),
    ))
}

/// The active key's Valkey record: written first, written back after a loss, given its marker;
/// deleted while Valkey kept the rest (revoked in Sirius), it starts a rotation instead.
fn keep_record(o: &Observation, vault: &VaultView, b: &mut StatusBuilder) -> Option<Plan> {
    if !o.records.current {
        // The status names a key before its record is written, so every registered key can be
        // found (and revoked) even if the vault is lost.
        if o.status.active_key_id.as_ref() != Some(&vault.current.0) {
            b.status.phase = Some(Phase::Pending);
            return Some(b.plan_copy(Action::StatusOnly, None));
        }
        if ever_ready(o) && revoked_in_sirius(o) {
            if o.spec.suspend {
                // Honoured even while suspended: the record stays deleted; the rotation that
                // moves consumers to a new key waits for spec.suspend to be lifted.
                let message = format!(
                    "The Valkey record of the active key {} was deleted while Valkey kept its other data (revoked in Sirius?). It is not restored; consumers holding it are refused until a rotation runs, and spec.suspend holds that rotation back.",
                    vault.current.short()
                );
                let event = b.degrade(Reason::KeyRevokedExternally, &message);
                b.status.phase = Some(Phase::Suspended);
                return Some(b.plan_copy(
                    Action::Wait {
                        requeue_after: None,
                    },
                    event,
                ));
            }
            return Some(revoked_externally(o, vault, b));
        }
        let event = if ever_ready(o) {
            // It was registered before: Valkey lost it (flush, restart without persistence), or
            // it was overwritten with something that is no record of the key.
            let what = if o.records.malformed {
                "was not a valid Sirius record"
            } else {
                "was gone"
            };
            EventNote::new(
                Reason::ValkeyStateRestored,
                format!(
                    "The Valkey record of the active key {} {what}; wrote it back.",
                    vault.current.short()
                ),
            )
        } else {
            b.status.phase = Some(Phase::Pending);
            EventNote::new(
                Reason::KeyRegistered,
                format!(
                    "Wrote the Valkey record of the active key {}.",
                    vault.current.short()
                ),
            )
        };
        return Some(b.plan_copy(
            Action::Register {
                current: true,
                pending: false,
            },
            event,
        ));
    }
    if !o.records.current_marked && !vault.current_raw_lost {
        // A record the operator did not write itself (Sirius's bootstrap of its root key, or one
        // from before markers existed) gets its marker, so that a later deletion of the record
        // reads as a revocation in Sirius and not as data loss.
        return Some(b.plan_copy(
            Action::Register {
                current: true,
                pending: false,
            },
            None,
        ));
    }
    None
}

/// The consumers' Secret holds the active key and carries the operator's label.
fn keep_delivered(o: &Observation, vault: &VaultView, b: &mut StatusBuilder) -> Option<Plan> {
    let delivered_before = o.status.active_key_id.is_some();
    if o.consumer_id() != Some(&vault.current)
        && delivered_before
        && o.spec.secret_drift_policy == SecretDriftPolicy::Report
    {
        let found = match &o.consumer {
            ConsumerView::Missing => "is gone".to_string(),
            ConsumerView::Holds(None) => format!("has no {} key", o.spec.secret.key),
            ConsumerView::Holds(Some(other)) => format!("holds key {} instead", other.short()),
        };
        let message = format!(
            "Secret {} {found} of the active key {}; not restored (secretDriftPolicy: Report).",
            o.spec.secret.name,
            vault.current.short()
        );
        let event = b.degrade(Reason::SecretDrift, &message);
        b.status.phase = Some(Phase::Degraded);
        return Some(b.plan_copy(
            Action::Wait {
                requeue_after: None,
            },
            event,
        ));
    }
    if o.consumer_id() != Some(&vault.current) {
        let event = match &o.consumer {
            ConsumerView::Missing => EventNote::new(
                Reason::SecretCreated,
                format!("Created Secret {} with the active key.", o.spec.secret.name),
            ),
            ConsumerView::Holds(None) => EventNote::new(
                Reason::SecretUpdated,
                format!("Wrote the active key into Secret {}.", o.spec.secret.name),
            ),
            ConsumerView::Holds(Some(other)) => EventNote::new(
                Reason::SecretRestored,
                format!(
                    "Secret {} held key {} instead of the active key {}; restored it.",
                    o.spec.secret.name,
                    other.short(),
                    vault.current.short()
                ),
            ),
        };
        return Some(b.plan_copy(Action::WriteConsumer { pending: false }, event));
    }
    if !o.consumer_labelled {
        // Label the Secret (server-side apply of the same key) so edits to it are watched.
        return Some(b.plan_copy(Action::WriteConsumer { pending: false }, None));
    }
    None
}

/// Ready: the next rotation starts when it is due (or requested) and a window is open.
fn start_when_due(o: &Observation, vault: &VaultView, mut b: StatusBuilder) -> Plan {
    let now = o.now;
    let active_since = parse_ts(&o.status.last_rotation_time)
        .or(parse_ts(
            &o.status
                .conditions
                .iter()
                .find(|c| c.type_ == READY && c.status == "True")
                .map(|c| c.last_transition_time.clone()),
        ))
        .unwrap_or(now);
    let calendar = Calendar::from_spec(&o.spec).unwrap_or_default();
    let (next, next_start) = next_rotation(o, &calendar, active_since);
    b.status.next_rotation_time = next_start.map(ts);
    let rolled_back = show_ready(o, vault, &mut b);
    if o.spec.suspend {
        b.status.phase = Some(Phase::Suspended);
        return b.plan(
            Action::Wait {
                requeue_after: None,
            },
            None,
        );
    }
    let Some((trigger, manual)) = due_trigger(o, next, rolled_back) else {
        return b.plan(
            Action::Wait {
                requeue_after: next_start.map(|at| until(now, at)),
            },
            None,
        );
    };
    let outside_windows = manual.is_some() && o.outside_windows.as_ref() == manual;
    let revision = o.status.revision + 1;
    if !outside_windows && !calendar.window_open(now) {
        // Requested or due, but no window is open: the trigger stays pending until one opens.
        let opens = calendar.next_window_open(now);
        let message = format!(
            "Rotation {revision} ({trigger}) starts when the next maintenance window opens{}.",
            opens
                .map(|at| format!(" at {}", ts(at)))
                .unwrap_or_default()
        );
        b.status.next_rotation_time = opens.map(ts);
        return wait_for_window(o, &mut b, false, message, opens);
    }
    if let Some(plan) = refuse_unselected_targets(o, &mut b, revision) {
        return plan;
    }
    if let Some(plan) = refuse_targets_that_cannot_roll(o, &mut b, revision) {
        return plan;
    }
    if let Some(token) = manual {
        b.status.last_trigger = Some(token.clone());
    }
    b.status.current_rotation = Some(RotationProgress {
        outside_windows,
        ..new_rotation(o, revision, trigger.clone(), None, &vault.current)
    });
    b.status.phase = Some(Phase::Rotating);
    let message = if outside_windows && !calendar.window_open(now) {
        format!(
            "Rotation {revision} started ({trigger}), outside maintenance windows as requested."
        )
    } else {
        format!("Rotation {revision} started ({trigger}).")
    };
    b.rotating(Reason::Mint, message.clone());
    b.plan(
        Action::StatusOnly,
        EventNote::new(Reason::RotationStarted, message),
    )
}

/// No rotation in flight: Ready with the active key, or Degraded after a rollback (which stays
/// until a person requests the next rotation). Returns whether it is the rollback.
fn show_ready(o: &Observation, vault: &VaultView, b: &mut StatusBuilder) -> bool {
    b.status.current_rotation = None;
    b.condition(ROTATING, false, Reason::Idle, "No rotation in flight.");
    b.condition(
        READY,
        true,
        Reason::KeyActive,
        format!("Key {} is registered and delivered.", vault.current.short()),
    );
    let rolled_back = o.status.conditions.iter().any(|c| {
        c.type_ == DEGRADED && c.status == "True" && c.reason == Reason::RolledBack.as_str()
    });
    if !rolled_back {
        b.healthy();
    }
    b.status.phase = Some(if rolled_back {
        Phase::Degraded
    } else {
        Phase::Ready
    });
    rolled_back
}

/// What starts a rotation now, with the manual token if it is one: a trigger token not acted on
/// yet, or the interval or schedule once due (but not after a rollback).
fn due_trigger(
    o: &Observation,
    next: Option<Timestamp>,
    rolled_back: bool,
) -> Option<(String, Option<&String>)> {
    let manual = o
        .trigger
        .as_ref()
        .filter(|t| !t.is_empty() && o.status.last_trigger.as_ref() != Some(t));
    match (manual, next) {
        (Some(token), _) => Some((format!("Manual:{token}"), manual)),
        (None, Some(at)) if at <= o.now && !rolled_back => {
            let trigger = if o.spec.rotation_interval_seconds.is_some() {
                "Interval"
            } else {
                "Schedule"
            };
            Some((trigger.to_string(), None))
        }
        _ => None,
    }
}

/// A rotation does not start (nothing is minted) while a selector selects nothing (a typo in a
/// label would otherwise leave its workloads on the old key until the pod gate catches them) or
/// more than a plan holds: the trigger stays pending until the selectors or the labels change.
fn refuse_unselected_targets(
    o: &Observation,
    b: &mut StatusBuilder,
    revision: u64,
) -> Option<Plan> {
    if o.plan.unresolved {
        // Not looked up in this reconcile: the next one does, before anything starts.
        return Some(b.plan_copy(
            Action::Wait {
                requeue_after: Some(std::time::Duration::from_secs(1)),
            },
            None,
        ));
    }
    if o.plan.unselected.is_empty() {
        return None;
    }
    let reason = if o.spec.targets.len() > crate::plan::MAX_PLANNED_TARGETS {
        Reason::TooManyTargets
    } else {
        Reason::TargetNotFound
    };
    let message = format!(
        "Rotation {revision} does not start: {}.",
        o.plan.unselected.join("; ")
    );
    let event = b.degrade(reason, &message);
    b.status.phase = Some(Phase::Degraded);
    Some(b.plan_copy(
        Action::Wait {
            requeue_after: Some(std::time::Duration::from_secs(60)),
        },
        event,
    ))
}

/// A rotation does not start (nothing is minted) while a target's pods would keep the old key
/// whatever its template says: the trigger stays pending until the target's spec is changed.
fn refuse_targets_that_cannot_roll(
    o: &Observation,
    b: &mut StatusBuilder,
    revision: u64,
) -> Option<Plan> {
    let why: Vec<String> = (o.spec.targets.iter().zip(&o.targets))
        .filter_map(|(t, view)| match view {
            TargetView::Found {
                cannot_roll: Some(why),
                ..
            } => Some(format!("{} {}: {why}", t.kind, t.name)),
            _ => None,
        })
        .collect();
    if why.is_empty() {
        return None;
    }
    let message = format!(
        "Rotation {revision} does not start: a target cannot roll its pods, so they would keep the old key. {}",
        why.join("; ")
    );
    let event = b.degrade(Reason::TargetCannotRoll, &message);
    b.status.phase = Some(Phase::Degraded);
    Some(b.plan_copy(
        Action::Wait {
            requeue_after: Some(std::time::Duration::from_secs(60)),
        },
        event,
    ))
}

/// The current key's record is missing while Valkey kept everything else (the operator's own
/// state entry is there, nothing malformed), and the spec honours that as a revocation.
pub(super) fn revoked_in_sirius(o: &Observation) -> bool {
    o.records.current_marked
        && !o.records.malformed
        && o.spec.external_revocation == ExternalRevocation::Rotate
}

/// The active key's record was deleted while Valkey kept everything else: someone revoked the
/// key in Sirius (a leak). That is honoured: the key is not written back, and a rotation starts
/// at once, maintenance windows or not, so consumers move to a new key.
fn revoked_externally(o: &Observation, vault: &VaultView, b: &mut StatusBuilder) -> Plan {
    let revision = o.status.revision + 1;
    if let Some(plan) = refuse_unselected_targets(o, b, revision) {
        return plan;
    }
    let trigger = Reason::KeyRevokedExternally.to_string();
    b.status.current_rotation = Some(RotationProgress {
        outside_windows: true,
        old_key_revoked_externally: true,
        ..new_rotation(o, revision, trigger, None, &vault.current)
    });
    b.status.phase = Some(Phase::Rotating);
    let message = format!(
        "The Valkey record of the active key {} was deleted while Valkey kept its other data (revoked in Sirius?). It is not restored; rotation {revision} starts now, outside maintenance windows (spec.externalRevocation: Restore writes such a record back instead).",
        vault.current.short()
    );
    b.rotating(Reason::Mint, message.clone());
    b.plan_copy(
        Action::StatusOnly,
        EventNote::new(Reason::KeyRevokedExternally, message),
    )
}

/// When the next automatic rotation is due after a rotation (or activation) at `active_since`,
/// and when it can start (the first instant a maintenance window allows).
pub(super) fn next_rotation(
    o: &Observation,
    calendar: &Calendar,
    active_since: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let due = match o.spec.rotation_interval_seconds {
        Some(s) => Some(active_since + SignedDuration::from_secs(s as i64)),
        None => calendar.next_scheduled(active_since, &o.name),
    };
    (due, due.and_then(|at| calendar.next_window_open(at)))
}

/// Waits until the next maintenance window opens, saying why in the Rotating condition (an Event
/// only when the wait begins).
pub(crate) fn wait_for_window(
    o: &Observation,
    b: &mut StatusBuilder,
    rotating: bool,
    message: String,
    opens: Option<Timestamp>,
) -> Plan {
    let first_wait = !rotating_for(o, Reason::WaitingForWindow);
    b.condition(
        ROTATING,
        rotating,
        Reason::WaitingForWindow,
        message.clone(),
    );
    b.plan_copy(
        Action::Wait {
            requeue_after: opens.map(|at| until(o.now, at)),
        },
        first_wait
            .then(|| EventNote::new(Reason::WaitingForWindow, message))
            .flatten(),
    )
}

pub(super) fn new_rotation(
    o: &Observation,
    revision: u64,
    trigger: String,
    new_key: Option<KeyId>,
    old: &KeyId,
) -> RotationProgress {
    let mut r = RotationProgress {
        new_key_id: new_key.map(|k| k.0),
        secret: Some(o.spec.secret.clone()),
        ..RotationProgress::started(
            revision,
            trigger,
            Some(old.0.clone()),
            &o.spec.targets,
            ts(o.now),
        )
    };
    // The plan records which selector chose each workload: those of one entry roll at once.
    for (t, by) in r.targets.iter_mut().zip(&o.plan.selected_by) {
        t.selector = by.clone();
    }
    r
}
