//! Roll: each target's pod template stamped with the new key's id, in order, each entry of
//! `spec.targets` only after the previous one finished its rollout by `kubectl rollout status`'s
//! rules (and, with `spec.verification`, the API accepted the new key). The workloads one entry
//! selects by label are stamped one after another without waiting, and waited for together.

use crate::crd::{RolloutTarget, Step, TargetState};
use crate::key::KeyId;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::failure::{failed, halted};
use crate::rotation::idle::wait_for_window;
use crate::rotation::observation::{ProbeStage, TargetView};
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use crate::rotation::time::{parse_ts, ts, until};
use crate::rotation::verify::accepted;
use crate::schedule::Calendar;
use crate::workload::RolloutState;
use jiff::SignedDuration;

/// Done when every target completed its rollout on the new key in this rotation.
pub(crate) fn roll(x: &mut Rotating) -> Option<Plan> {
    let new = x.new_key()?;
    let o = x.o;
    // The rollouts under way of the first entry not complete yet.
    let mut waiting: Vec<Waiting> = Vec::new();
    for (i, target) in o.spec.targets.iter().enumerate() {
        if let Some(first) = waiting.first()
            && !o.plan.same_entry(&o.spec.targets, first.index, i)
        {
            break;
        }
        let progress = x.progress_of(target);
        if waiting.is_empty() {
            x.r.target_index = i as u32;
        }
        // A target that completed in this rotation stays complete: its later scale-ups,
        // restarts, evictions or other rollouts are not this rotation's to judge.
        if x.r.targets[progress].state == TargetState::Complete {
            continue;
        }
        match roll_target(x, i, progress, &new) {
            Next::Plan(plan) => return Some(*plan),
            Next::Wait(w) => waiting.push(w),
            Next::Done => {}
        }
    }
    wait_for(x, waiting)
}

/// What one target asks for.
enum Next {
    Plan(Box<Plan>),
    /// Its rollout runs, within its deadline: its entry's other workloads may still be stamped.
    Wait(Waiting),
    Done,
}

impl From<Option<Plan>> for Next {
    fn from(plan: Option<Plan>) -> Self {
        plan.map_or(Next::Done, |p| Next::Plan(Box::new(p)))
    }
}

/// A rollout under way: target `index`, what it waits for, and its deadline.
struct Waiting {
    index: usize,
    message: String,
    limit: jiff::Timestamp,
}

/// Waits for the rollouts under way (all of one entry), up to the earliest deadline.
fn wait_for(x: &mut Rotating, waiting: Vec<Waiting>) -> Option<Plan> {
    let first = waiting.first()?;
    let (o, now) = (x.o, x.o.now);
    let count = o.spec.targets.len();
    let limit = waiting.iter().map(|w| w.limit).min().unwrap_or(first.limit);
    let name = |w: &Waiting| o.spec.targets[w.index].name.as_str();
    let message = match waiting.as_slice() {
        [w] => format!(
            "Waiting for {} ({} of {count}): {}",
            name(w),
            w.index + 1,
            w.message
        ),
        several => {
            let shown: Vec<String> = (several.iter().take(3))
                .map(|w| format!("{}: {}", name(w), w.message))
                .collect();
            let more = several.len().saturating_sub(3);
            format!(
                "Waiting for {} workloads of one entry ({} to {} of {count}): {}{}",
                several.len(),
                first.index + 1,
                several[several.len() - 1].index + 1,
                shown.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            )
        }
    };
    x.r.step = Step::Roll;
    x.b.rotating(Reason::Roll, message);
    x.wait(Some(until(now, limit)), None)
}

/// Target `i` (at `progress` in the status): stamped, waited for, or found complete.
fn roll_target(x: &mut Rotating, i: usize, progress: usize, new: &KeyId) -> Next {
    let (o, target) = (x.o, &x.o.spec.targets[i]);
    match &o.targets[i] {
        // Chosen by a selector, or removed from spec.targets, and deleted since: nothing of it is
        // left to roll (its pods are gone; the pod gate sees any that still run).
        TargetView::Missing if let Some((shown, what)) = left_nothing_to_roll(o, i) => {
            let t = &mut x.r.targets[progress];
            t.state = TargetState::Complete;
            t.completed_at = Some(ts(o.now));
            t.message = Some(shown.into());
            let message = format!(
                "{} {} was {what}; it has nothing left to roll.",
                target.kind, target.name
            );
            x.record(EventNote::new(Reason::TargetRemoved, message))
                .into()
        }
        TargetView::Missing => {
            let message = format!(
                "{} {} does not exist; the rotation waits for it.",
                target.kind, target.name
            );
            halted(x, i, Reason::TargetNotFound, message).into()
        }
        // Its pods would keep the old key whatever its template says (OnDelete, a partition):
        // held here, before or after its stamp, until its spec lets it roll.
        TargetView::Found {
            cannot_roll: Some(why),
            ..
        } => {
            let message = format!(
                "{} {} cannot roll its pods: {why}",
                target.kind, target.name
            );
            halted(x, i, Reason::TargetCannotRoll, message).into()
        }
        TargetView::Found {
            annotation,
            secret_restores,
            paused,
            ..
        } if annotation.as_deref() != Some(new.as_str())
            || *secret_restores != x.restores_marker() =>
        {
            if *paused {
                let message = format!(
                    "{} {} is paused; resume it to continue the rotation.",
                    target.kind, target.name
                );
                return halted(x, i, Reason::TargetPaused, message).into();
            }
            stamp(x, i, progress, new).into()
        }
        TargetView::Found { rollout, .. } => match rollout {
            RolloutState::Complete => rolled_out(x, i, progress).into(),
            RolloutState::Failed(message) => {
                failed(x, progress, i, Reason::RolloutFailed, message.clone()).into()
            }
            RolloutState::Progressing(message) => progressing(x, i, progress, target, message),
        },
    }
}

/// Why a missing target `i` needs no roll, as its status and its Event say it: a selector chose
/// it (it went with its workload), or the user removed it from `spec.targets`; None when the
/// rotation waits for it.
fn left_nothing_to_roll(
    o: &crate::rotation::Observation,
    i: usize,
) -> Option<(&'static str, &'static str)> {
    if o.plan.selected_by.get(i).is_some_and(Option::is_some) {
        let deleted = "deleted during the rotation";
        Some((deleted, deleted))
    } else if o.plan.removed.get(i) == Some(&true) {
        Some((
            "removed from spec.targets and deleted",
            "removed from spec.targets and deleted during the rotation",
        ))
    } else {
        None
    }
}

/// Stamps target `i`'s template with the new key (inside a maintenance window only).
fn stamp(x: &mut Rotating, i: usize, progress: usize, new: &KeyId) -> Option<Plan> {
    let (o, now) = (x.o, x.o.now);
    let (kind, name) = (o.spec.targets[i].kind, &o.spec.targets[i].name);
    let calendar = Calendar::from_spec(&o.spec).unwrap_or_default();
    if !x.r.outside_windows && !calendar.window_open(now) {
        // A rollout starts only inside a window; both keys stay valid meanwhile.
        let opens = calendar.next_window_open(now);
        let message = format!(
            "Rotation {} waits for the next maintenance window{} to roll out {name}.",
            x.r.revision,
            opens.map(|at| format!(" ({})", ts(at))).unwrap_or_default(),
        );
        x.r.step = Step::Roll;
        x.b.status.current_rotation = Some(x.r.clone());
        return Some(wait_for_window(o, &mut x.b, true, message, opens));
    }
    x.r.step = Step::Roll;
    let restores = x.r.secret_restores;
    let t = &mut x.r.targets[progress];
    t.state = TargetState::Rolling;
    t.rolled_at = Some(ts(now));
    t.completed_at = None;
    t.message = None;
    let count = o.spec.targets.len();
    let message = format!("Rolling out {name} ({} of {count}).", i + 1);
    x.b.rotating(Reason::Roll, message);
    let action = Action::Roll {
        index: i,
        key_id: new.clone(),
        rollback_of: None,
        secret_restores: (restores > 0).then_some(restores),
    };
    let message = format!("Restarting {kind} {name} with the new key.");
    x.plan(action, EventNote::new(Reason::TargetRolled, message))
}

/// Target `i` finished its rollout: verified first when the spec asks, then recorded complete.
fn rolled_out(x: &mut Rotating, i: usize, progress: usize) -> Option<Plan> {
    let (o, now) = (x.o, x.o.now);
    let (kind, name) = (o.spec.targets[i].kind, &o.spec.targets[i].name);
    if let Some(v) = &o.spec.verification
        && x.r.targets[progress].verified_at.is_none()
    {
        let stage = ProbeStage::AfterTarget(i);
        let Some(outcome) = o.probe_answer(stage) else {
            return x.plan(Action::Probe { stage }, None);
        };
        return match accepted(v, outcome) {
            Ok(code) => {
                let t = &mut x.r.targets[progress];
                t.state = TargetState::Complete;
                t.completed_at.get_or_insert_with(|| ts(now));
                t.verified_at = Some(ts(now));
                t.message = None;
                let message = format!(
                    "{kind} {name} finished its rollout and the API accepts the new key (HTTP {code})."
                );
                x.record(EventNote::new(Reason::TargetVerified, message))
            }
            Err(why) => {
                let message =
                    format!("after its rollout the API did not accept the new key: {why}");
                failed(x, progress, i, Reason::VerificationFailed, message)
            }
        };
    }
    let t = &mut x.r.targets[progress];
    if t.state == TargetState::Complete {
        return None;
    }
    t.state = TargetState::Complete;
    t.completed_at = Some(ts(now));
    t.message = None;
    let message = format!("{kind} {name} finished its rollout.");
    x.record(EventNote::new(Reason::TargetRolledOut, message))
}

/// Target `i` is still rolling out: wait, up to its progress deadline.
fn progressing(
    x: &mut Rotating,
    i: usize,
    progress: usize,
    target: &RolloutTarget,
    message: &str,
) -> Next {
    let now = x.o.now;
    let deadline = target.deadline_seconds(&x.o.spec);
    // The deadline runs from when this rotation patched the target; a rollout found without
    // that stamp (the status was lost) is timed from now.
    let rolled_at = parse_ts(&x.r.targets[progress].rolled_at).unwrap_or(now);
    x.r.targets[progress].rolled_at = Some(ts(rolled_at));
    let limit = rolled_at + SignedDuration::from_secs(deadline as i64);
    if now >= limit {
        let message = format!(
            "{} {} did not finish its rollout within {deadline}s: {message}",
            target.kind, target.name
        );
        return failed(x, progress, i, Reason::RolloutFailed, message).into();
    }
    x.r.targets[progress].state = TargetState::Rolling;
    x.r.targets[progress].message = Some(message.to_string());
    Next::Wait(Waiting {
        index: i,
        message: message.to_string(),
        limit,
    })
}
