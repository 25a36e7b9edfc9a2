//! The pod gate: a key is removed only once every pod that reads the consumers' Secret (a
//! target's or not, running or terminating) started on the key that stays. Forward it holds the
//! old key's revocation; in a rollback, the new key's removal.

use super::action::{Action, EventNote, Plan};
use super::observation::TargetView;
use super::reason::Reason;
use super::rotating::Rotating;
use super::status::rotating_for;
use super::time::{at_least, parse_ts, ts_precise, until};
use crate::crd::UntrackedConsumers;
use crate::pods::PodSummary;
use jiff::SignedDuration;
use std::time::Duration;

/// None when no pod may still hold the key about to be removed (`revoking` names it); else the
/// plan that lists the pods, reports them, or waits for them. `moved` tells a pod that started
/// on the key that stays.
pub(crate) fn pod_gate(
    x: &mut Rotating,
    moved: &dyn Fn(&PodSummary) -> bool,
    revoking: &str,
) -> Option<Plan> {
    let o = x.o;
    let pods = match &o.pods {
        None => return x.plan(Action::CheckPods, None),
        Some(Err(why)) => {
            // Never revoke blind.
            let text = format!(
                "Cannot list the pods to check which key they run ({why}); the {revoking} key stays valid, retrying."
            );
            let event = (!rotating_for(o, Reason::PodsUnreadable))
                .then(|| EventNote::new(Reason::PodsUnreadable, text.clone()))
                .flatten();
            x.b.rotating(Reason::PodsUnreadable, text);
            return x.wait(Some(Duration::from_secs(10)), event);
        }
        Some(Ok(pods)) => pods,
    };
    let on_old: Vec<&PodSummary> = pods.iter().filter(|p| !moved(p)).collect();
    x.r.pods_on_old_key = Some(on_old.len() as u32);
    for (i, t) in x.r.targets.iter_mut().enumerate() {
        t.pods_on_old_key = Some(on_old.iter().filter(|p| p.target == Some(i)).count() as u32);
    }
    if let Some(plan) = report_untracked(x, &on_old, revoking) {
        return Some(plan);
    }
    let waits_for_untracked = o.spec.untracked_consumers == UntrackedConsumers::Wait;
    let blocking: Vec<&PodSummary> = on_old
        .into_iter()
        .filter(|p| p.target.is_some() || waits_for_untracked)
        .collect();
    if blocking.is_empty() {
        x.r.pods_waiting_since = None;
        return None;
    }
    wait_for_pods(x, &blocking, revoking)
}

/// Pods of no target that may hold the key get their own Warning Event, once per rotation.
fn report_untracked(x: &mut Rotating, on_old: &[&PodSummary], revoking: &str) -> Option<Plan> {
    let untracked: Vec<&PodSummary> = on_old
        .iter()
        .copied()
        .filter(|p| p.target.is_none())
        .collect();
    if untracked.is_empty() || x.r.untracked_consumers_reported {
        return None;
    }
    x.r.untracked_consumers_reported = true;
    let then = if x.o.spec.untracked_consumers == UntrackedConsumers::Wait {
        format!(
            "The {revoking} key stays valid until each of them was restarted or is gone (spec.untrackedConsumers: Wait); restart them, or add their workload to spec.targets."
        )
    } else {
        format!(
            "spec.untrackedConsumers: Ignore: the {revoking} key is removed anyway, and they are refused until they restart."
        )
    };
    let message = format!(
        "{} read Secret {} but belong to no target and may hold the {revoking} key: {}. {then}",
        count(untracked.len(), "pod"),
        x.o.spec.secret.name,
        some_pods(&untracked)
    );
    // Its own Event, before the wait's.
    x.record(EventNote::new(Reason::UntrackedConsumer, message))
}

/// Waits for the `blocking` pods, naming them; past `spec.podGateTimeoutSeconds` also Degraded
/// (the key still stays: a timeout never removes it).
fn wait_for_pods(x: &mut Rotating, blocking: &[&PodSummary], revoking: &str) -> Option<Plan> {
    let (o, now) = (x.o, x.o.now);
    let mut event = None;
    let since = parse_ts(&x.r.pods_waiting_since).unwrap_or(now);
    x.r.pods_waiting_since = Some(ts_precise(since));
    let stuck = cannot_replace(x, blocking);
    let text = format!(
        "Waiting for {} that may hold the {revoking} key to restart or go before it is removed: {}.{stuck}",
        count(blocking.len(), "pod"),
        some_pods(blocking)
    );
    let timeout = at_least(since, o.spec.pod_gate_timeout_seconds);
    if now >= timeout {
        let message = format!(
            "Pods that read Secret {} may still hold the {revoking} key {}s after the validation window ended (spec.podGateTimeoutSeconds); that key stays valid, a timeout never revokes. Restart them (kubectl rollout restart, or delete the pods), or set spec.untrackedConsumers: Ignore for pods of no target.{stuck}",
            o.spec.secret.name, o.spec.pod_gate_timeout_seconds
        );
        event = event.or(x.b.degrade(Reason::ConsumersOnOldKey, &message));
    }
    if !rotating_for(o, Reason::WaitingForPods) {
        event = event.or(EventNote::new(Reason::WaitingForPods, text.clone()));
    }
    x.b.rotating(Reason::WaitingForPods, text);
    let next = recheck_after(now.duration_since(since));
    let next = if now < timeout {
        until(now, timeout).min(next)
    } else {
        next
    };
    x.wait(Some(next), event)
}

/// For the targets of `blocking` pods whose spec keeps them from replacing pods (OnDelete, a
/// partition): why, so the user knows a restart of their template will not move them.
fn cannot_replace(x: &Rotating, blocking: &[&PodSummary]) -> String {
    let mut targets: Vec<usize> = blocking.iter().filter_map(|p| p.target).collect();
    targets.sort_unstable();
    targets.dedup();
    targets
        .into_iter()
        .filter_map(|i| match (x.o.spec.targets.get(i), x.o.targets.get(i)) {
            (
                Some(t),
                Some(TargetView::Found {
                    cannot_roll: Some(why),
                    ..
                }),
            ) => Some(format!(
                " {} {} does not replace its pods by itself: {why}; or delete its pods.",
                t.kind, t.name
            )),
            _ => None,
        })
        .collect()
}

/// How soon a revocation waiting for pods looks at them again (one list of the namespace's
/// pods): a quarter of the wait so far, from 250 ms up to 5 s. Most waits are for pods of a
/// finished rollout that end their grace period within moments; long ones cost a list per 5 s.
pub(crate) fn recheck_after(waited: SignedDuration) -> Duration {
    let quarter = Duration::from_millis((waited.as_millis().max(0) / 4) as u64);
    quarter.clamp(Duration::from_millis(250), Duration::from_secs(5))
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Up to five pods by name and owner, and how many more.
fn some_pods(pods: &[&PodSummary]) -> String {
    let mut names: Vec<String> = pods.iter().take(5).map(|p| p.describe()).collect();
    if pods.len() > 5 {
        names.push(format!("and {} more", pods.len() - 5));
    }
    names.join(", ")
}
