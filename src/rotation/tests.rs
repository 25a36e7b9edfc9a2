//! The machine's unit tests: each decision from a hand-built observation.

use super::*;
use crate::crd::{
    ApiKeyRotationSpec, ApiKeyRotationStatus, Condition, RolloutTarget, RotationProgress, Step,
    TargetKind, TargetProgress, TargetState, UntrackedConsumers,
};
use crate::key::KeyId;
use crate::pods::PodSummary;
use crate::workload::RolloutState;
use idle::new_rotation;
use jiff::{SignedDuration, Timestamp};
use observation::*;
use status::ROTATING;
use time::*;

/// At the revocation re-check, with every target on the new key and the probe still seeing
/// the old key accepted after `attempts` revocations.
fn still_accepted_after(attempts: u32) -> Plan {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    let (old, new) = (KeyId("a".repeat(64)), KeyId("b".repeat(64)));
    o.spec.verification = Some(
        serde_json::from_value(
            serde_json::json!({"url": "https://api.example/host/", "maxRevocations": 3}),
        )
        .unwrap(),
    );
    o.vault = Some(VaultView {
        current: old.clone(),
        pending: Some((new.clone(), 1)),
        current_raw_lost: false,
    });
    o.consumer = ConsumerView::Holds(Some(new.clone()));
    o.records = RecordView {
        current: false,
        pending: true,
        ..Default::default()
    };
    o.targets = o
        .spec
        .targets
        .iter()
        .map(|_| TargetView::Found {
            paused: false,
            annotation: Some(new.0.clone()),
            rolled_back_in: None,
            secret_restores: None,
            cannot_roll: None,
            rollout: RolloutState::Complete,
        })
        .collect();
    let mut r = RotationProgress::started(
        1,
        "Manual:x".into(),
        Some(old.0.clone()),
        &o.spec.targets,
        "2026-11-25T11:00:00Z".into(),
    );
    r.new_key_id = Some(new.0.clone());
    r.step = Step::Revoke;
    r.switched_at = Some("2026-11-25T11:05:00.000Z".into());
    for t in &mut r.targets {
        t.state = TargetState::Complete;
        t.verified_at = Some("2026-11-25T11:10:00Z".into());
    }
    r.validation_started_at = Some("2026-11-25T11:20:00.000Z".into());
    r.verified_before_revoke_at = Some("2026-11-25T11:30:00Z".into());
    r.revoked_at = Some("2026-11-25T11:40:00.000Z".into());
    r.revoke_attempts = attempts;
    o.status.current_rotation = Some(r);
    o.probe = Some((ProbeStage::OldKeyRefused, Ok(200)));
    decide(&o)
}

/// The vault holds a new key (revision 1) besides the old one, both registered, and the consumers'
/// Secret holds the new one. Returns (old, new).
fn switched_to_a_new_key(o: &mut Observation) -> (KeyId, KeyId) {
    let (old, new) = (KeyId("a".repeat(64)), KeyId("b".repeat(64)));
    o.vault = Some(VaultView {
        current: old.clone(),
        pending: Some((new.clone(), 1)),
        current_raw_lost: false,
    });
    o.consumer = ConsumerView::Holds(Some(new.clone()));
    o.records = RecordView {
        current: true,
        pending: true,
        current_marked: true,
        ..Default::default()
    };
    (old, new)
}

/// A rotation whose validation window is over: only the pod gate stands before revoking.
fn at_the_pod_gate() -> Observation {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    let (old, new) = switched_to_a_new_key(&mut o);
    o.targets = o
        .spec
        .targets
        .iter()
        .map(|_| TargetView::Found {
            paused: false,
            annotation: Some(new.0.clone()),
            rolled_back_in: None,
            secret_restores: None,
            cannot_roll: None,
            rollout: RolloutState::Complete,
        })
        .collect();
    let mut r = new_rotation(&o, 1, "Manual:x".into(), Some(new.clone()), &old);
    r.step = Step::Validate;
    for t in &mut r.targets {
        t.state = TargetState::Complete;
    }
    r.switched_at = Some("2026-11-25T11:00:00.000Z".into());
    r.validation_started_at = Some("2026-11-25T11:20:00.000Z".into());
    o.status.current_rotation = Some(r);
    o
}

fn gate_pod(name: &str, target: Option<usize>, key: &str, created: &str) -> PodSummary {
    PodSummary {
        name: name.into(),
        owner: Some(match target {
            Some(i) => (
                "ReplicaSet".into(),
                format!("{}-5d8f", ["sirius-api", "sirius-ui", "sirius-engine"][i]),
            ),
            None => ("Job".into(), "backfill".into()),
        }),
        target,
        key_id: Some(key.repeat(64)),
        secret_restores: None,
        rolled_back_in: None,
        created_at: Some(created.parse().unwrap()),
        terminating: false,
    }
}

#[test]
fn the_old_key_is_revoked_only_once_every_pod_that_reads_the_secret_runs_the_new_one() {
    let mut o = at_the_pod_gate();
    assert_eq!(
        decide(&o).action,
        Action::CheckPods,
        "the pods are read first"
    );
    let mut pods = vec![gate_pod("api-1", Some(0), "b", "2026-11-25T11:05:00Z")];
    // An engine pod of the old ReplicaSet, still terminating.
    let mut old_engine = gate_pod("engine-0", Some(2), "a", "2026-11-20T00:00:00Z");
    old_engine.terminating = true;
    pods.push(old_engine);
    // Seven pods of no target, created before the switch.
    for n in 0..7 {
        pods.push(gate_pod(
            &format!("job-{n}"),
            None,
            "a",
            "2026-11-25T10:59:00Z",
        ));
    }
    o.pods = Some(Ok(pods.clone()));
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    let event = plan.event.clone().unwrap();
    assert_eq!(event.reason, Reason::UntrackedConsumer);
    assert!(
        event.message.contains("7 pods read Secret sirius-api-key"),
        "{}",
        event.message
    );
    assert!(
        event.message.contains("job-0 (Job/backfill)"),
        "{}",
        event.message
    );
    o.status = plan.status;
    let plan = decide(&o);
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    assert_eq!(
        plan.event.as_ref().map(|e| e.reason),
        Some(Reason::WaitingForPods)
    );
    let rotating = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ROTATING)
        .unwrap();
    assert_eq!(rotating.reason, Reason::WaitingForPods);
    assert!(
        rotating.message.contains("8 pods") && rotating.message.contains("and 3 more"),
        "{}",
        rotating.message
    );
    let r = plan.status.current_rotation.clone().unwrap();
    assert_eq!(r.pods_on_old_key, Some(8));
    assert_eq!(r.targets[2].pods_on_old_key, Some(1));
    assert!(r.revoked_at.is_none());

    // Each Event once.
    o.status = plan.status;
    o.now = "2026-11-25T12:00:05Z".parse().unwrap();
    let plan = decide(&o);
    assert!(matches!(plan.action, Action::Wait { .. }));
    assert_eq!(plan.event, None);

    // An hour later: Degraded, still never revoked.
    o.now = "2026-11-25T13:00:01Z".parse().unwrap();
    let plan = decide(&o);
    assert!(matches!(plan.action, Action::Wait { .. }));
    assert_eq!(
        plan.event.as_ref().map(|e| e.reason),
        Some(Reason::ConsumersOnOldKey)
    );
    assert!(plan.status.conditions.iter().any(|c| c.type_ == DEGRADED
        && c.status == "True"
        && c.reason == Reason::ConsumersOnOldKey));

    // The jobs restarted after the switch (plus the margin), the old engine pod is gone.
    let mut pods: Vec<PodSummary> = pods.into_iter().filter(|p| !p.terminating).collect();
    for p in pods.iter_mut().filter(|p| p.target.is_none()) {
        p.created_at = Some("2026-11-25T11:00:05Z".parse().unwrap());
    }
    o.pods = Some(Ok(pods));
    assert!(matches!(decide(&o).action, Action::Revoke { .. }));
}

#[test]
fn pods_of_no_target_are_reported_and_left_with_ignore_and_an_unreadable_list_never_revokes() {
    let mut o = at_the_pod_gate();
    o.spec.untracked_consumers = UntrackedConsumers::Ignore;
    o.pods = Some(Ok(vec![gate_pod(
        "bare",
        None,
        "a",
        "2026-11-25T10:00:00Z",
    )]));
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    let event = plan.event.clone().unwrap();
    assert_eq!(event.reason, Reason::UntrackedConsumer);
    assert!(event.message.contains("Ignore"), "{}", event.message);
    o.status = plan.status;
    assert!(matches!(decide(&o).action, Action::Revoke { .. }));

    let mut o = at_the_pod_gate();
    o.pods = Some(Err("pods is forbidden".into()));
    let plan = decide(&o);
    assert!(matches!(plan.action, Action::Wait { .. }));
    assert_eq!(plan.event.unwrap().reason, Reason::PodsUnreadable);
}

#[test]
fn a_pod_stamped_before_a_secret_restore_or_created_within_the_margin_still_waits() {
    let mut o = at_the_pod_gate();
    let r = o.status.current_rotation.as_mut().unwrap();
    r.secret_restores = 1;
    r.untracked_consumers_reported = true;
    o.pods = Some(Ok(vec![
        gate_pod("api-1", Some(0), "b", "2026-11-25T10:59:00Z"),
        gate_pod("worker", None, "b", "2026-11-25T11:00:01Z"),
    ]));
    let plan = decide(&o);
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    assert_eq!(
        plan.status.current_rotation.unwrap().pods_on_old_key,
        Some(2)
    );
}

/// Mid-rotation, the first target rolled, and the Secret found holding the old key again.
fn with_the_secret_reverted() -> Observation {
    let mut o = at_the_pod_gate();
    let r = o.status.current_rotation.as_mut().unwrap();
    r.step = Step::Roll;
    r.validation_started_at = None;
    r.target_index = 1;
    r.targets[0].rolled_at = Some("2026-11-25T11:01:00Z".into());
    for t in &mut r.targets[1..] {
        t.state = TargetState::Pending;
    }
    o.consumer = ConsumerView::Holds(Some(KeyId("a".repeat(64))));
    o
}

#[test]
fn a_secret_restore_is_recorded_before_the_new_key_is_written_back() {
    let mut o = with_the_secret_reverted();
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly, "recorded first");
    let r = plan.status.current_rotation.clone().unwrap();
    assert!(r.restoring_secret);
    assert_eq!(r.secret_restores, 1);
    assert_eq!(r.switched_at, None, "the switch counts anew");
    assert_eq!(r.targets[0].state, TargetState::Pending);
    assert_eq!(r.targets[0].rolled_at, None);
    let recorded = plan.status;

    o.status = recorded.clone();
    let plan = decide(&o);
    assert_eq!(plan.action, Action::WriteConsumer { pending: true });
    assert_eq!(plan.status.current_rotation.unwrap().secret_restores, 1);

    // The write landed but its status did not: the Secret looks untouched, yet the restore
    // is on record, so the first target rolls again with the new count.
    o.status = recorded;
    o.consumer = ConsumerView::Holds(Some(KeyId("b".repeat(64))));
    o.consumer_changed_at = Some("2026-11-25T11:59:00Z".parse().unwrap());
    let plan = decide(&o);
    assert_eq!(
        plan.action,
        Action::StatusOnly,
        "the switch is recorded first"
    );
    let r = plan.status.current_rotation.clone().unwrap();
    assert!(!r.restoring_secret);
    assert_eq!(r.switched_at.as_deref(), Some("2026-11-25T11:59:00.000Z"));
    o.status = plan.status;
    let plan = decide(&o);
    assert!(
        matches!(
            plan.action,
            Action::Roll {
                index: 0,
                secret_restores: Some(1),
                ..
            }
        ),
        "{:?}",
        plan.action
    );
}

#[test]
fn a_secret_changed_after_a_roll_whose_status_was_lost_still_rolls_that_target_again() {
    // The status says the Secret switched and no target rolled; target 0's template was
    // patched (its status write lost) and someone put the old key back.
    let mut o = with_the_secret_reverted();
    let r = o.status.current_rotation.as_mut().unwrap();
    r.step = Step::Switch;
    r.target_index = 0;
    r.targets[0] = TargetProgress::pending(TargetKind::Deployment, "sirius-api");
    let plan = decide(&o);
    let r = plan.status.current_rotation.clone().unwrap();
    assert_eq!(plan.action, Action::StatusOnly);
    assert_eq!(
        r.secret_restores, 1,
        "a new stamp, so target 0's counts no more"
    );
}

#[test]
fn the_switch_is_timed_by_the_api_servers_clock_not_the_operators() {
    let mut o = with_the_secret_reverted();
    let r = o.status.current_rotation.as_mut().unwrap();
    r.switched_at = None;
    o.consumer = ConsumerView::Holds(Some(KeyId("b".repeat(64))));
    // The operator's clock is an hour ahead of the API server's.
    o.now = "2026-11-25T13:00:00Z".parse().unwrap();
    o.consumer_changed_at = Some("2026-11-25T12:00:00Z".parse().unwrap());
    let plan = decide(&o);
    let r = plan.status.current_rotation.unwrap();
    assert_eq!(r.switched_at.as_deref(), Some("2026-11-25T12:00:00.000Z"));
    // A pod the API server created 30 minutes after the switch started on the new key; one
    // created a second after it may not have (cache margin, whole-second stamps).
    let switched = parse_ts(&r.switched_at);
    let late = gate_pod("worker-1", None, "b", "2026-11-25T12:30:00Z");
    let early = gate_pod("worker-2", None, "b", "2026-11-25T12:00:02Z");
    assert!(late.created_after(switched));
    assert!(!early.created_after(switched));
}

#[test]
fn a_rollback_never_takes_a_pod_created_before_the_rotation_for_one_on_the_old_key() {
    let mut o = at_the_pod_gate();
    let old = KeyId("a".repeat(64));
    o.consumer = ConsumerView::Holds(Some(old.clone()));
    for t in &mut o.targets {
        *t = TargetView::Found {
            paused: false,
            annotation: Some(old.0.clone()),
            rolled_back_in: Some("1".into()),
            secret_restores: None,
            cannot_roll: None,
            rollout: RolloutState::Complete,
        };
    }
    let r = o.status.current_rotation.as_mut().unwrap();
    r.rolling_back = Some("the engine never became ready".into());
    r.started_at = "2026-11-25T10:50:00Z".into();
    r.switched_back_at = Some("2026-11-25T11:30:00.000Z".into());
    r.validation_started_at = Some("2026-11-25T11:31:00.000Z".into());
    r.untracked_consumers_reported = true;
    for t in &mut r.targets {
        t.state = TargetState::Pending;
    }
    // A worker created before the rotation started: its container may have restarted since
    // the switch and read the new key.
    o.pods = Some(Ok(vec![gate_pod(
        "worker",
        None,
        "a",
        "2026-11-25T10:00:00Z",
    )]));
    let plan = decide(&o);
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    assert_eq!(
        plan.status.current_rotation.unwrap().pods_on_old_key,
        Some(1)
    );
    // Recreated after the Secret held the old key again, it no longer holds the removal up.
    o.pods = Some(Ok(vec![gate_pod(
        "worker",
        None,
        "a",
        "2026-11-25T11:40:00Z",
    )]));
    assert!(matches!(decide(&o).action, Action::Revoke { .. }));
}

#[test]
fn the_new_key_put_back_during_a_rollback_rolls_every_target_back_again() {
    let mut o = at_the_pod_gate();
    let old = KeyId("a".repeat(64));
    for t in &mut o.targets {
        *t = TargetView::Found {
            paused: false,
            annotation: Some(old.0.clone()),
            rolled_back_in: Some("1".into()),
            secret_restores: None,
            cannot_roll: None,
            rollout: RolloutState::Complete,
        };
    }
    let r = o.status.current_rotation.as_mut().unwrap();
    r.rolling_back = Some("the engine never became ready".into());
    r.switched_back_at = Some("2026-11-25T11:30:00.000Z".into());
    r.validation_started_at = Some("2026-11-25T11:31:00.000Z".into());
    for t in &mut r.targets {
        t.state = TargetState::Pending;
    }
    // Someone put the new key back (the Secret holds it, as at_the_pod_gate's does).
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly, "recorded first");
    let r = plan.status.current_rotation.clone().unwrap();
    assert!(r.restoring_secret);
    assert_eq!(r.secret_restores, 1);
    assert_eq!(r.switched_back_at, None);
    assert_eq!(r.validation_started_at, None);
    let recorded = plan.status;

    o.status = recorded.clone();
    let plan = decide(&o);
    assert_eq!(plan.action, Action::WriteConsumer { pending: false });
    assert_eq!(plan.event.unwrap().reason, Reason::SecretRestored);

    // Written back, its status lost: the switch back is recorded anew, then the targets
    // roll back again, the last first.
    o.status = recorded;
    o.consumer = ConsumerView::Holds(Some(old.clone()));
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    assert!(
        plan.status
            .current_rotation
            .as_ref()
            .unwrap()
            .switched_back_at
            .is_some()
    );
    o.status = plan.status;
    let plan = decide(&o);
    assert_eq!(
        plan.action,
        Action::Roll {
            index: 2,
            key_id: old.clone(),
            rollback_of: Some(1),
            secret_restores: Some(1),
        }
    );
    // A pod of the first rollback's template no longer counts as on the old key.
    o.status = plan.status;
    let r = o.status.current_rotation.as_mut().unwrap();
    r.validation_started_at = Some("2026-11-25T11:31:00.000Z".into());
    r.untracked_consumers_reported = true;
    for t in &mut o.targets {
        *t = TargetView::Found {
            paused: false,
            annotation: Some(old.0.clone()),
            rolled_back_in: Some("1".into()),
            secret_restores: Some("1".into()),
            cannot_roll: None,
            rollout: RolloutState::Complete,
        };
    }
    let mut stale = gate_pod("api-1", Some(0), "a", "2026-11-25T11:29:00Z");
    stale.rolled_back_in = Some("1".into());
    o.pods = Some(Ok(vec![stale.clone()]));
    let mut plan = decide(&o);
    for _ in 0..5 {
        if plan.action != Action::StatusOnly {
            break;
        }
        o.status = plan.status.clone();
        plan = decide(&o);
    }
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    stale.secret_restores = Some("1".into());
    o.pods = Some(Ok(vec![stale]));
    assert!(matches!(decide(&o).action, Action::Revoke { .. }));
}

#[test]
fn a_key_rewritten_by_someone_else_since_the_switch_rolls_every_target_again() {
    // At the pod gate, the Secret holds the new key; someone wrote it at 11:10, after the
    // switch at 11:00 (another key may have been there in between).
    let mut o = at_the_pod_gate();
    o.consumer_key_rewritten = Some((
        "kubectl-edit".into(),
        "2026-11-25T11:10:00Z".parse().unwrap(),
    ));
    o.consumer_changed_at = Some("2026-11-25T11:10:00Z".parse().unwrap());
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    let event = plan.event.clone().unwrap();
    assert_eq!(event.reason, Reason::SecretRewritten);
    assert!(event.message.contains("kubectl-edit"), "{}", event.message);
    let r = plan.status.current_rotation.clone().unwrap();
    assert_eq!(r.secret_restores, 1);
    assert_eq!(r.switched_at, None);
    assert!(r.targets.iter().all(|t| t.state == TargetState::Pending));
    o.status = plan.status;
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    assert_eq!(
        plan.status
            .current_rotation
            .as_ref()
            .unwrap()
            .switched_at
            .as_deref(),
        Some("2026-11-25T11:10:00.000Z")
    );
    assert_eq!(plan.event, None, "said once");
    o.status = plan.status;
    assert!(
        matches!(
            decide(&o).action,
            Action::Roll {
                index: 0,
                secret_restores: Some(1),
                ..
            }
        ),
        "{:?}",
        decide(&o).action
    );
}

#[test]
fn the_pod_gate_looks_again_soon_at_first_and_every_5_s_at_most() {
    let at = |ms: i64| pod_gate::recheck_after(SignedDuration::from_millis(ms));
    assert_eq!(at(0), Duration::from_millis(250));
    assert_eq!(at(4_000), Duration::from_secs(1));
    assert_eq!(at(3_600_000), Duration::from_secs(5));
    // The first wait: pods of the rollout that just finished are still terminating.
    let mut o = at_the_pod_gate();
    o.status
        .current_rotation
        .as_mut()
        .unwrap()
        .untracked_consumers_reported = true;
    let mut pod = gate_pod("engine-0", Some(2), "a", "2026-11-20T00:00:00Z");
    pod.terminating = true;
    o.pods = Some(Ok(vec![pod]));
    assert_eq!(
        decide(&o).action,
        Action::Wait {
            requeue_after: Some(Duration::from_millis(250))
        }
    );
}

#[test]
fn an_immutable_consumers_secret_is_refused_before_a_key_is_minted_or_written() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.trigger = Some("go".into());
    assert!(matches!(
        decide(&o).action,
        Action::StatusOnly | Action::MintPending { .. }
    ));
    o.consumer_immutable = true;
    // Starting the rotation is a status write; its next step would mint.
    let mut plan = decide(&o);
    for _ in 0..5 {
        if plan.action != Action::StatusOnly {
            break;
        }
        o.status = plan.status.clone();
        plan = decide(&o);
    }
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: None
        }
    );
    let degraded = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED)
        .unwrap();
    assert_eq!(degraded.reason, Reason::SecretImmutable);
    assert!(
        degraded.message.contains("nothing was minted"),
        "{}",
        degraded.message
    );
    assert_eq!(plan.event.unwrap().reason, Reason::SecretImmutable);

    // Made immutable mid-rotation: the write is refused, the minted key is kept.
    let mut o = with_the_secret_reverted();
    o.consumer_immutable = true;
    o.status.current_rotation.as_mut().unwrap().restoring_secret = true;
    let plan = decide(&o);
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: None
        }
    );
    assert_eq!(plan.status.current_rotation, o.status.current_rotation);
    let degraded = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED)
        .unwrap();
    assert!(
        degraded.message.contains("are kept"),
        "{}",
        degraded.message
    );
}

#[test]
fn a_spec_edit_mid_rotation_waits_for_the_next_one_and_a_removed_deleted_target_is_done() {
    let mut o = at_the_pod_gate();
    let r = o.status.current_rotation.as_mut().unwrap();
    r.step = Step::Roll;
    r.validation_started_at = None;
    r.targets[2].state = TargetState::Rolling;
    o.targets[2] = TargetView::Missing;
    o.plan = PlanNotes {
        deferred: vec!["spec.targets"],
        removed: vec![false, false, true],
        ..Default::default()
    };
    let plan = decide(&o);
    assert_eq!(
        plan.event.as_ref().unwrap().reason,
        Reason::SpecChangePending
    );
    assert!(
        plan.status
            .current_rotation
            .as_ref()
            .unwrap()
            .spec_change_pending
    );
    o.status = plan.status;
    let plan = decide(&o);
    assert_eq!(plan.event.as_ref().unwrap().reason, Reason::TargetRemoved);
    assert_eq!(
        plan.status.current_rotation.as_ref().unwrap().targets[2].state,
        TargetState::Complete
    );
    // Not removed, only missing: the rotation waits for it.
    let mut o = at_the_pod_gate();
    o.status.current_rotation.as_mut().unwrap().targets[2].state = TargetState::Rolling;
    o.targets[2] = TargetView::Missing;
    let plan = decide(&o);
    assert!(
        plan.status
            .conditions
            .iter()
            .any(|c| c.reason == "TargetNotFound")
    );
}

#[test]
fn a_key_revoked_in_sirius_is_never_written_back_suspended_or_mid_rotation() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.records.current = false;
    o.records.current_marked = true;
    o.spec.suspend = true;
    let plan = decide(&o);
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    assert_eq!(plan.event.unwrap().reason, Reason::KeyRevokedExternally);
    // Flushed (the marker went too): written back, suspended or not.
    o.records.current_marked = false;
    assert!(matches!(
        decide(&o).action,
        Action::Register { current: true, .. }
    ));

    // Mid-rotation: the rotation goes on without the old record.
    let mut plan = still_accepted_after(0);
    let mut r = plan.status.current_rotation.take().unwrap();
    r.step = Step::Roll;
    r.revoked_at = None;
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.status.current_rotation = Some(r);
    o.vault = Some(VaultView {
        current: KeyId("a".repeat(64)),
        pending: Some((KeyId("b".repeat(64)), 1)),
        current_raw_lost: false,
    });
    o.records = RecordView {
        current: false,
        pending: true,
        current_marked: true,
        ..Default::default()
    };
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    assert_eq!(
        plan.event.as_ref().unwrap().reason,
        Reason::KeyRevokedExternally
    );
    let r = plan.status.current_rotation.clone().unwrap();
    assert!(r.old_key_revoked_externally && r.outside_windows);
    o.status = plan.status;
    assert!(
        !matches!(decide(&o).action, Action::Register { current: true, .. }),
        "the revoked record is not written back"
    );
}

#[test]
fn an_old_key_still_accepted_is_revoked_again_only_up_to_max_revocations() {
    let plan = still_accepted_after(2);
    assert!(
        matches!(plan.action, Action::Revoke { .. }),
        "{:?}",
        plan.action
    );
    let plan = still_accepted_after(3);
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    assert_eq!(plan.status.phase, Some(Phase::Degraded));
    let degraded = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED)
        .unwrap();
    assert_eq!(degraded.reason, Reason::OldKeyStillAccepted);
    assert!(
        degraded.message.contains("maxRevocations"),
        "{}",
        degraded.message
    );
}

#[test]
fn nothing_read_back_from_status_panics_the_machine() {
    for id in [
        format!("a{}", "é".repeat(40)),
        String::new(),
        "x".into(),
        "\u{0}".repeat(70),
    ] {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        o.status.active_key_id = Some(id.clone());
        o.status.previous_key_id = Some(id.clone());
        let mut r =
            RotationProgress::started(1, id.clone(), Some(id.clone()), &[target("t")], id.clone());
        r.new_key_id = Some(id.clone());
        for at in [&mut r.validation_started_at, &mut r.revoked_at] {
            *at = Some(id.clone());
        }
        for step in [Step::Mint, Step::Switch, Step::Roll, Step::Finish] {
            r.step = step;
            o.status.current_rotation = Some(r.clone());
            let _ = decide(&o);
            o.vault = None;
            let _ = decide(&o);
            o.vault = Some(VaultView {
                current: KeyId(id.clone()),
                pending: None,
                current_raw_lost: false,
            });
            let _ = decide(&o);
        }
    }
}

#[test]
fn waits_end_exactly_from_precise_stamps_and_round_up_from_truncated_ones() {
    let precise: Timestamp = "2026-11-25T10:00:00.250Z".parse().unwrap();
    assert_eq!(
        at_least(precise, 5),
        "2026-11-25T10:00:05.250Z".parse().unwrap()
    );
    assert_eq!(
        parse_ts(&Some(ts_precise(precise))),
        Some(precise),
        "the stored stamp keeps its milliseconds"
    );
    // A stamp truncated to the second may be up to a second early.
    let truncated: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
    assert_eq!(
        at_least(truncated, 5),
        "2026-11-25T10:00:06Z".parse().unwrap()
    );
}

fn idle_observation(interval: Option<u32>, active_since: &str, now: &str) -> Observation {
    let mut spec: ApiKeyRotationSpec =
        serde_json::from_value(serde_json::json!({"valkey": {"url": "redis://v:6379"}})).unwrap();
    spec.rotation_interval_seconds = interval;
    let key = KeyId("a".repeat(64));
    Observation {
        name: "ns/a".into(),
        probe: None,
        gate: None,
        plan: Default::default(),
        pods: None,
        generation: Some(1),
        targets: spec
            .targets
            .iter()
            .map(|_| TargetView::Found {
                paused: false,
                annotation: None,
                rolled_back_in: None,
                secret_restores: None,
                cannot_roll: None,
                rollout: RolloutState::Complete,
            })
            .collect(),
        spec,
        status: ApiKeyRotationStatus {
            active_key_id: Some(key.0.clone()),
            conditions: vec![Condition {
                type_: READY.into(),
                status: "True".into(),
                reason: "KeyActive".into(),
                message: String::new(),
                last_transition_time: active_since.into(),
                observed_generation: Some(1),
            }],
            ..Default::default()
        },
        trigger: None,
        outside_windows: None,
        now: now.parse().unwrap(),
        vault: Some(VaultView {
            current: key.clone(),
            pending: None,
            current_raw_lost: false,
        }),
        consumer: ConsumerView::Holds(Some(key)),
        consumer_labelled: true,
        consumer_changed_at: None,
        consumer_immutable: false,
        consumer_key_rewritten: None,
        records: RecordView {
            current: true,
            pending: false,
            bootstrap_flag: false,
            current_marked: true,
            ..Default::default()
        },
    }
}

#[test]
fn the_interval_starts_a_rotation_when_due_and_waits_until_then() {
    let o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T10:30:00Z");
    let plan = decide(&o);
    assert_eq!(
        plan.status.next_rotation_time.as_deref(),
        Some("2026-11-25T11:00:00Z")
    );
    match plan.action {
        Action::Wait {
            requeue_after: Some(d),
        } => assert!((1799..=1801).contains(&d.as_secs()), "{d:?}"),
        other => panic!("expected a wait, got {other:?}"),
    }
    assert_eq!(plan.status.phase, Some(Phase::Ready));

    let o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T11:00:00Z");
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    let r = plan.status.current_rotation.unwrap();
    assert_eq!(
        (r.revision, r.trigger.as_str(), r.step),
        (1, "Interval", Step::Mint)
    );
    assert_eq!(plan.event.unwrap().reason, Reason::RotationStarted);
}

#[test]
fn the_last_rotation_time_anchors_the_interval() {
    let mut o = idle_observation(Some(7200), "2026-11-01T00:00:00Z", "2026-11-25T10:30:00Z");
    o.status.last_rotation_time = Some("2026-11-25T10:00:00Z".into());
    let plan = decide(&o);
    assert_eq!(
        plan.status.next_rotation_time.as_deref(),
        Some("2026-11-25T12:00:00Z")
    );
    assert!(matches!(plan.action, Action::Wait { .. }));
}

#[test]
fn without_an_interval_only_a_new_trigger_rotates() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2027-11-25T10:00:00Z");
    let plan = decide(&o);
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: None
        }
    );
    assert_eq!(plan.status.next_rotation_time, None);
    o.trigger = Some("t1".into());
    let plan = decide(&o);
    assert_eq!(plan.status.current_rotation.unwrap().trigger, "Manual:t1");
    assert_eq!(plan.status.last_trigger.as_deref(), Some("t1"));
    o.status.last_trigger = Some("t1".into());
    assert!(
        matches!(decide(&o).action, Action::Wait { .. }),
        "the same token does not rotate again"
    );
}

#[test]
fn suspend_keeps_a_due_rotation_from_starting() {
    let mut o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.spec.suspend = true;
    o.trigger = Some("t".into());
    let plan = decide(&o);
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: None
        }
    );
    assert_eq!(plan.status.phase, Some(Phase::Suspended));
    assert!(plan.status.current_rotation.is_none());
}

fn with_calendar(o: &mut Observation, calendar: serde_json::Value) {
    let mut spec = serde_json::to_value(&o.spec).unwrap();
    for (k, v) in calendar.as_object().unwrap() {
        spec[k] = v.clone();
    }
    o.spec = serde_json::from_value(spec).unwrap();
}

#[test]
fn a_cron_schedule_starts_a_rotation_when_due_and_shows_the_next_time() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    with_calendar(
        &mut o,
        serde_json::json!({"schedule": {"cron": "0 3 * * *", "timeZone": "Asia/Tokyo"}}),
    );
    // 03:00 in Tokyo is 18:00 UTC the day before.
    let plan = decide(&o);
    assert_eq!(
        plan.status.next_rotation_time.as_deref(),
        Some("2026-11-25T18:00:00Z")
    );
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: Some(until(o.now, "2026-11-25T18:00:00Z".parse().unwrap()))
        }
    );
    o.now = "2026-11-25T18:00:00Z".parse().unwrap();
    let plan = decide(&o);
    assert_eq!(plan.status.current_rotation.unwrap().trigger, "Schedule");
}

#[test]
fn a_due_or_requested_rotation_waits_for_a_window_and_says_so_once() {
    let mut o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    with_calendar(
        &mut o,
        serde_json::json!({"maintenanceWindows": [{"start": "0 22 * * *", "durationMinutes": 60}]}),
    );
    let plan = decide(&o);
    assert!(plan.status.current_rotation.is_none());
    assert_eq!(
        plan.status.next_rotation_time.as_deref(),
        Some("2026-11-25T22:00:00Z")
    );
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: Some(until(o.now, "2026-11-25T22:00:00Z".parse().unwrap()))
        }
    );
    assert_eq!(
        plan.event.as_ref().unwrap().reason,
        Reason::WaitingForWindow
    );
    // The next decision, on that status, does not repeat the Event.
    o.status = plan.status.clone();
    o.trigger = Some("now-please".into());
    let plan = decide(&o);
    assert!(plan.event.is_none());
    assert!(plan.status.current_rotation.is_none());
    assert_eq!(plan.status.last_trigger, None, "the request stays pending");
    // Inside the window the requested rotation starts.
    o.now = "2026-11-25T22:00:00Z".parse().unwrap();
    let plan = decide(&o);
    assert_eq!(
        plan.status.current_rotation.unwrap().trigger,
        "Manual:now-please"
    );
}

#[test]
fn a_request_marked_outside_windows_starts_at_once_and_only_that_request() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    with_calendar(
        &mut o,
        serde_json::json!({"maintenanceWindows": [{"start": "0 22 * * *", "durationMinutes": 60}]}),
    );
    // A stale override (an earlier token) does not apply to a new request.
    o.trigger = Some("leak-2".into());
    o.outside_windows = Some("leak-1".into());
    let plan = decide(&o);
    assert!(plan.status.current_rotation.is_none());
    assert_eq!(
        plan.event.as_ref().unwrap().reason,
        Reason::WaitingForWindow
    );

    o.outside_windows = Some("leak-2".into());
    let plan = decide(&o);
    let rotation = plan.status.current_rotation.as_ref().unwrap();
    assert_eq!(rotation.trigger, "Manual:leak-2");
    assert!(rotation.outside_windows, "kept for the rollouts to come");
    assert_eq!(plan.status.last_trigger.as_deref(), Some("leak-2"));
    assert_eq!(
        plan.event.unwrap().message,
        "Rotation 1 started (Manual:leak-2), outside maintenance windows as requested."
    );
}

#[test]
fn an_unlabelled_consumer_secret_is_labelled_without_an_event() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T10:00:01Z");
    o.consumer_labelled = false;
    let plan = decide(&o);
    assert_eq!(plan.action, Action::WriteConsumer { pending: false });
    assert_eq!(plan.event, None);
}

#[test]
fn a_bootstrap_flag_once_seen_is_kept_set() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T10:00:01Z");
    assert!(
        !decide(&o).status.bootstrap_flag_in_use,
        "v1.1 installs have no flag to keep"
    );
    o.records.bootstrap_flag = true;
    let plan = decide(&o);
    assert!(plan.status.bootstrap_flag_in_use);
    o.status = plan.status;
    o.records.bootstrap_flag = false;
    let plan = decide(&o);
    assert_eq!(plan.action, Action::SetBootstrapFlag);
    assert_eq!(plan.event.unwrap().reason, Reason::BootstrapFlagRestored);
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T10:05:00Z");
    let plan = decide(&o);
    let ready = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .unwrap();
    assert_eq!(ready.last_transition_time, "2026-11-25T10:00:00Z");
    let types: Vec<_> = plan
        .status
        .conditions
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, [READY, ROTATING, DEGRADED]);
}

fn target(name: &str) -> RolloutTarget {
    RolloutTarget::named(TargetKind::Deployment, name)
}

const PARTITIONED: &str = "its spec.updateStrategy.rollingUpdate.partition is 1, so its pods with an ordinal below 1 would keep the old template and key; set the partition to 0";

fn found(
    annotation: Option<&str>,
    rolled_back_in: Option<&str>,
    cannot_roll: Option<&str>,
) -> TargetView {
    TargetView::Found {
        paused: false,
        annotation: annotation.map(str::to_string),
        rolled_back_in: rolled_back_in.map(str::to_string),
        secret_restores: None,
        cannot_roll: cannot_roll.map(str::to_string),
        rollout: RolloutState::Complete,
    }
}

#[test]
fn a_target_that_cannot_roll_holds_off_a_new_rotation_before_anything_is_minted() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.trigger = Some("go".into());
    o.targets[2] = found(None, None, Some(PARTITIONED));
    let plan = decide(&o);
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: Some(Duration::from_secs(60))
        }
    );
    assert!(plan.status.current_rotation.is_none(), "nothing started");
    assert_eq!(plan.status.last_trigger, None, "the request stays pending");
    let event = plan.event.unwrap();
    assert_eq!(event.reason, Reason::TargetCannotRoll);
    assert!(
        event.message.contains("Deployment sirius-engine: its spec"),
        "{}",
        event.message
    );
    // Once its spec lets it roll, the same request starts the rotation.
    o.status = plan.status;
    o.targets[2] = found(None, None, None);
    let plan = decide(&o);
    assert_eq!(plan.status.current_rotation.unwrap().trigger, "Manual:go");
}

#[test]
fn a_rollback_stamps_a_target_that_cannot_roll_and_leaves_its_pods_to_the_pod_gate() {
    let mut o = at_the_pod_gate();
    let old = KeyId("a".repeat(64));
    o.consumer = ConsumerView::Holds(Some(old.clone()));
    let r = o.status.current_rotation.as_mut().unwrap();
    r.rolling_back = Some("the engine never became ready".into());
    r.switched_back_at = Some("2026-11-25T11:30:00.000Z".into());
    r.validation_started_at = None;
    // The engine (rolled back first) has a partition: it is stamped back all the same, so the
    // pods above the partition are replaced.
    o.targets[2] = found(Some(&"b".repeat(64)), None, Some(PARTITIONED));
    assert!(matches!(
        decide(&o).action,
        Action::Roll {
            index: 2,
            rollback_of: Some(1),
            ..
        }
    ));
    // Stamped: no rollout to wait for; recorded with the reason, then the next target.
    o.targets[2] = found(Some(&old.0), Some("1"), Some(PARTITIONED));
    o.status.current_rotation.as_mut().unwrap().targets[2].state = TargetState::Rolling;
    let plan = decide(&o);
    assert_eq!(plan.action, Action::StatusOnly);
    let event = plan.event.unwrap();
    assert_eq!(event.reason, Reason::TargetCannotRoll);
    assert!(
        event
            .message
            .contains("does not replace its pods by itself")
            && event.message.contains("partition is 1"),
        "{}",
        event.message
    );
    assert_eq!(
        plan.status.current_rotation.as_ref().unwrap().targets[2].state,
        TargetState::Pending
    );
    o.status = plan.status;
    assert!(matches!(
        decide(&o).action,
        Action::Roll {
            index: 1,
            rollback_of: Some(1),
            ..
        }
    ));
    // Every target stamped back: the new key goes only once no pod may hold it; an engine pod
    // below the partition that started before the switch back holds it, named with its cause.
    for i in 0..2 {
        o.targets[i] = found(Some(&old.0), Some("1"), None);
    }
    let r = o.status.current_rotation.as_mut().unwrap();
    r.validation_started_at = Some("2026-11-25T11:31:00.000Z".into());
    r.untracked_consumers_reported = true;
    for t in &mut r.targets {
        t.state = TargetState::Pending;
    }
    o.pods = Some(Ok(vec![gate_pod(
        "sirius-engine-0",
        Some(2),
        "b",
        "2026-11-25T11:10:00Z",
    )]));
    let plan = decide(&o);
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    let text = plan.event.unwrap().message;
    assert!(
        text.contains("new key") && text.contains("partition is 1"),
        "{text}"
    );
}

#[test]
fn the_pod_gate_says_when_a_target_does_not_replace_its_pods_by_itself() {
    let mut o = at_the_pod_gate();
    o.targets[2] = found(Some(&"b".repeat(64)), None, Some(PARTITIONED));
    let r = o.status.current_rotation.as_mut().unwrap();
    r.untracked_consumers_reported = true;
    o.pods = Some(Ok(vec![gate_pod(
        "sirius-engine-0",
        Some(2),
        "a",
        "2026-11-25T10:00:00Z",
    )]));
    let plan = decide(&o);
    let text = &plan.event.unwrap().message;
    assert!(
        text.contains("does not replace its pods by itself"),
        "{text}"
    );
    assert!(text.contains("partition is 1"), "{text}");
}

/// Mid-rotation at the Roll step with `targets` planned, those of `selected_by[i]: Some(..)`
/// chosen by that selector; nothing stamped yet.
fn rolling(targets: &[&str], selected_by: &[Option<&str>]) -> Observation {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.spec.targets = targets.iter().map(|t| target(t)).collect();
    o.targets = targets.iter().map(|_| found(None, None, None)).collect();
    o.plan.selected_by = selected_by.iter().map(|s| s.map(str::to_string)).collect();
    o.plan.removed = vec![false; targets.len()];
    let (old, new) = switched_to_a_new_key(&mut o);
    let mut r = new_rotation(&o, 1, "Manual:x".into(), Some(new), &old);
    r.step = Step::Roll;
    r.switched_at = Some("2026-11-25T11:00:00.000Z".into());
    o.status.current_rotation = Some(r);
    o
}

/// Decides once and applies what the plan asks of the targets (a stamp starts its rollout);
/// returns the plan.
fn roll_once(o: &mut Observation) -> Plan {
    let plan = decide(o);
    if let Action::Roll { index, key_id, .. } = &plan.action {
        o.targets[*index] = TargetView::Found {
            paused: false,
            annotation: Some(key_id.0.clone()),
            rolled_back_in: None,
            secret_restores: None,
            cannot_roll: None,
            rollout: RolloutState::Progressing("1 of 2 updated replicas are available".into()),
        };
    }
    o.status = plan.status.clone();
    plan
}

/// Marks target `i`'s rollout complete.
fn completes(o: &mut Observation, i: usize) {
    if let TargetView::Found { rollout, .. } = &mut o.targets[i] {
        *rollout = RolloutState::Complete;
    }
}

fn rolled(plan: &Plan) -> Option<usize> {
    match plan.action {
        Action::Roll { index, .. } => Some(index),
        _ => None,
    }
}

#[test]
fn the_workloads_a_selector_chose_roll_at_once_and_the_next_entry_waits_for_all_of_them() {
    let w = Some("tier=worker");
    let mut o = rolling(&["api", "w1", "w2", "w3", "engine"], &[None, w, w, w, None]);
    assert_eq!(rolled(&roll_once(&mut o)), Some(0));
    // A named target is an entry of its own: the next waits for it.
    assert!(matches!(roll_once(&mut o).action, Action::Wait { .. }));
    completes(&mut o, 0);
    let recorded = roll_once(&mut o);
    assert_eq!(recorded.event.unwrap().reason, Reason::TargetRolledOut);
    // The selector's three are stamped one after another, none waiting for another's rollout.
    assert_eq!(rolled(&roll_once(&mut o)), Some(1));
    assert_eq!(rolled(&roll_once(&mut o)), Some(2));
    assert_eq!(rolled(&roll_once(&mut o)), Some(3));
    let waiting = roll_once(&mut o);
    assert!(matches!(waiting.action, Action::Wait { .. }));
    let rotating = waiting
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ROTATING);
    let message = &rotating.unwrap().message;
    assert!(
        message.contains("Waiting for 3 workloads of one entry (2 to 4 of 5)")
            && message.contains("w1: 1 of 2 updated replicas are available"),
        "{message}"
    );
    // Two of them done: the last entry still waits for the third.
    completes(&mut o, 1);
    completes(&mut o, 3);
    for _ in 0..2 {
        assert_eq!(
            roll_once(&mut o).event.unwrap().reason,
            Reason::TargetRolledOut
        );
    }
    let plan = roll_once(&mut o);
    assert!(
        matches!(plan.action, Action::Wait { .. }),
        "{:?}",
        plan.action
    );
    completes(&mut o, 2);
    roll_once(&mut o);
    assert_eq!(rolled(&roll_once(&mut o)), Some(4));
    let r = o.status.current_rotation.as_ref().unwrap();
    assert_eq!(r.targets[2].selector.as_deref(), Some("tier=worker"));
    assert_eq!(r.targets[4].selector, None);
}

#[test]
fn two_selector_entries_of_one_kind_roll_one_after_the_other() {
    let (a, b) = (Some("tier=a"), Some("tier=b"));
    let mut o = rolling(&["a1", "a2", "b1"], &[a, a, b]);
    assert_eq!(rolled(&roll_once(&mut o)), Some(0));
    assert_eq!(rolled(&roll_once(&mut o)), Some(1));
    assert!(matches!(roll_once(&mut o).action, Action::Wait { .. }));
    completes(&mut o, 0);
    completes(&mut o, 1);
    roll_once(&mut o);
    roll_once(&mut o);
    assert_eq!(rolled(&roll_once(&mut o)), Some(2));
}

#[test]
fn a_workload_a_selector_chose_that_is_deleted_mid_rotation_has_nothing_left_to_roll() {
    let w = Some("tier=worker");
    let mut o = rolling(&["w1", "w2"], &[w, w]);
    assert_eq!(rolled(&roll_once(&mut o)), Some(0));
    o.targets[1] = TargetView::Missing;
    let plan = roll_once(&mut o);
    let event = plan.event.unwrap();
    assert_eq!(event.reason, Reason::TargetRemoved);
    assert!(
        event.message.contains("w2 was deleted during the rotation"),
        "{}",
        event.message
    );
    // A named target that goes missing is waited for.
    let mut o = rolling(&["api"], &[None]);
    o.targets[0] = TargetView::Missing;
    let plan = roll_once(&mut o);
    assert_eq!(plan.event.unwrap().reason, Reason::TargetNotFound);
}

#[test]
fn a_rollback_rolls_the_workloads_of_one_entry_back_at_once_in_reverse_entry_order() {
    let w = Some("tier=worker");
    let mut o = rolling(&["api", "w1", "w2"], &[None, w, w]);
    let old = o.vault.as_ref().unwrap().current.clone();
    let r = o.status.current_rotation.as_mut().unwrap();
    r.rolling_back = Some("Rollout of w2 failed".into());
    r.switched_back_at = Some("2026-11-25T11:30:00.000Z".into());
    o.consumer = ConsumerView::Holds(Some(old.clone()));
    for t in o.targets.iter_mut() {
        *t = found(Some(&"b".repeat(64)), None, None);
    }
    let back = |o: &mut Observation| {
        let plan = decide(o);
        if let Action::Roll { index, key_id, .. } = &plan.action {
            assert_eq!(*key_id, old);
            o.targets[*index] = TargetView::Found {
                paused: false,
                annotation: Some(key_id.0.clone()),
                rolled_back_in: Some("1".into()),
                secret_restores: None,
                cannot_roll: None,
                rollout: RolloutState::Progressing("rolling".into()),
            };
        }
        o.status = plan.status.clone();
        plan
    };
    let mut order = Vec::new();
    for _ in 0..10 {
        let plan = back(&mut o);
        match plan.action {
            Action::Roll { index, .. } => order.push(index),
            Action::Wait { .. } => break,
            Action::StatusOnly => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        order,
        [2, 1],
        "both workloads of the entry, before any waiting"
    );
    completes(&mut o, 1);
    completes(&mut o, 2);
    let mut next = None;
    for _ in 0..5 {
        if let Some(i) = rolled(&back(&mut o)) {
            next = Some(i);
            break;
        }
    }
    assert_eq!(next, Some(0));
}

#[test]
fn a_rotation_does_not_start_while_a_selector_selects_nothing_or_too_much() {
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.trigger = Some("go".into());
    o.plan.unselected = vec![
        "spec.targets[1]: the selector tier=worker matches no Deployment in this namespace".into(),
    ];
    let plan = decide(&o);
    assert!(plan.status.current_rotation.is_none(), "nothing started");
    assert_eq!(plan.status.last_trigger, None, "the request stays pending");
    let event = plan.event.unwrap();
    assert_eq!(event.reason, Reason::TargetNotFound);
    assert!(
        event.message.contains("matches no Deployment"),
        "{}",
        event.message
    );
    let names: Vec<String> = (0..=crate::plan::MAX_PLANNED_TARGETS)
        .map(|i| format!("w{i}"))
        .collect();
    o.spec.targets = names.iter().map(|n| target(n)).collect();
    o.targets = names.iter().map(|_| found(None, None, None)).collect();
    o.plan.unselected = vec!["spec.targets selects 65 workloads".into()];
    let plan = decide(&o);
    assert!(plan.status.current_rotation.is_none());
    assert_eq!(plan.event.unwrap().reason, Reason::TooManyTargets);
    // Once the selectors select, the same request starts the rotation, recording what chose each.
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.trigger = Some("go".into());
    o.plan.selected_by = vec![None, Some("tier=worker".into()), Some("tier=worker".into())];
    let plan = decide(&o);
    let r = plan.status.current_rotation.unwrap();
    assert_eq!(r.trigger, "Manual:go");
    let by: Vec<_> = r.targets.iter().map(|t| t.selector.as_deref()).collect();
    assert_eq!(by, [None, Some("tier=worker"), Some("tier=worker")]);
}

#[test]
fn no_start_path_plans_on_selectors_that_were_not_looked_up_or_select_nothing() {
    // A normal start, on selectors not looked up in this reconcile: a quiet short wait.
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.trigger = Some("go".into());
    o.plan.unresolved = true;
    let plan = decide(&o);
    assert!(plan.status.current_rotation.is_none());
    assert_eq!(plan.event, None, "nothing to report");
    assert_eq!(
        plan.action,
        Action::Wait {
            requeue_after: Some(Duration::from_secs(1))
        }
    );
    // A rotation resumed from the vault's pending key (its status was lost), and one started
    // because Sirius revoked the active key: neither plans without its selectors.
    let selects_nothing = |o: &mut Observation| {
        o.plan.unselected =
            vec!["spec.targets[1]: the selector tier=x matches no Deployment".into()];
    };
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.vault.as_mut().unwrap().pending = Some((KeyId("b".repeat(64)), 1));
    selects_nothing(&mut o);
    let plan = decide(&o);
    assert!(plan.status.current_rotation.is_none(), "not resumed");
    assert_eq!(plan.event.unwrap().reason, Reason::TargetNotFound);
    let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
    o.records.current = false;
    selects_nothing(&mut o);
    let plan = decide(&o);
    assert!(plan.status.current_rotation.is_none(), "not started");
    assert_eq!(plan.event.unwrap().reason, Reason::TargetNotFound);
}
