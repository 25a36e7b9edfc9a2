//! Roll back: every target restarts on the old key, in reverse order, each entry of
//! `spec.targets` after the later ones completed (the workloads one entry selected roll back at
//! once); also those never rolled, since any pod that restarted by itself after the switch
//! read the new key, which is about to be removed.

use crate::crd::TargetState;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::observation::TargetView;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use crate::workload::RolloutState;
use std::time::Duration;

/// Done when every target that exists runs a template stamped with the old key, this rollback
/// and the current restore count, and completed its rollout.
pub(crate) fn roll_back(x: &mut Rotating) -> Option<Plan> {
    let o = x.o;
    let old = x.vault.current.clone();
    let restores = x.restores_marker();
    let marker = x.r.revision.to_string();
    // The first rollout under way (in reverse order): waited for once the rest of its entry was
    // stamped.
    let mut waiting: Option<(usize, String)> = None;
    for (i, target) in o.spec.targets.iter().enumerate().rev() {
        if let Some((w, _)) = &waiting
            && !o.plan.same_entry(&o.spec.targets, *w, i)
        {
            break;
        }
        let TargetView::Found {
            annotation,
            rolled_back_in,
            secret_restores,
            rollout,
            cannot_roll,
            ..
        } = &o.targets[i]
        else {
            continue;
        };
        let progress =
            (x.r.targets.iter()).position(|t| t.kind == target.kind && t.name == target.name);
        let needs_stamp = annotation.as_deref() != Some(old.as_str())
            || rolled_back_in.as_deref() != Some(marker.as_str())
            || *secret_restores != restores;
        if needs_stamp {
            if let Some(p) = progress {
                x.r.targets[p].state = TargetState::Rolling;
                x.r.targets[p].message = Some("rolling back to the old key".into());
            }
            x.r.target_index = i as u32;
            let message = format!("Rolling {} back to the old key.", target.name);
            x.b.rotating(Reason::RollingBack, message);
            let (revision, count) = (x.r.revision, x.r.secret_restores);
            let action = Action::Roll {
                index: i,
                key_id: old.clone(),
                rollback_of: Some(revision),
                secret_restores: (count > 0).then_some(count),
            };
            let message = format!(
                "Restarting {} {} with the old key.",
                target.kind, target.name
            );
            return x.plan(action, EventNote::new(Reason::TargetRolledBack, message));
        }
        // Stamped, but its pods are replaced only when deleted (OnDelete) or above a partition:
        // kubectl's rollout test says nothing of the others. It is done here, and the rollback's
        // pod gate keeps the new key valid until each of its pods restarted on the old key.
        if let Some(why) = cannot_roll {
            if let Some(p) = progress.filter(|&p| x.r.targets[p].state != TargetState::Pending) {
                x.r.targets[p].state = TargetState::Pending;
                x.r.targets[p].message = Some(format!("stamped with the old key; {why}"));
                let message = format!(
                    "{} {} was stamped with the old key but does not replace its pods by itself: {why}. The new key stays valid until each of its pods restarted on the old key (delete them, or change its spec).",
                    target.kind, target.name
                );
                return x.record(EventNote::new(Reason::TargetCannotRoll, message));
            }
            continue;
        }
        match rollout {
            RolloutState::Complete => {
                if let Some(p) = progress.filter(|&p| x.r.targets[p].state != TargetState::Pending)
                {
                    x.r.targets[p].state = TargetState::Pending;
                    x.r.targets[p].message = Some("rolled back".into());
                    return x.record(None);
                }
            }
            RolloutState::Failed(message) | RolloutState::Progressing(message) => {
                waiting.get_or_insert((i, message.clone()));
            }
        }
    }
    let (i, message) = waiting?;
    x.r.target_index = i as u32;
    let name = &o.spec.targets[i].name;
    let message = format!("Waiting for {name} to roll back: {message}");
    x.b.rotating(Reason::RollingBack, message);
    x.wait(Some(Duration::from_secs(60)), None)
}
