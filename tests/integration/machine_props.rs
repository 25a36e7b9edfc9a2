//! The machine decides on whatever it reads back: a status anyone with access to the status
//! subresource may have written, annotations, Secrets, Valkey. Fed arbitrary values for all of
//! them, it never panics.

use apikey_rotator::crd::{
    ApiKeyRotationSpec, ApiKeyRotationStatus, Condition, Phase, RotationProgress, Step,
    TargetProgress, TargetState,
};
use apikey_rotator::key::KeyId;
use apikey_rotator::pods::PodSummary;
use apikey_rotator::rotation::{
    ConsumerView, Observation, PlanNotes, ProbeStage, RecordView, TargetView, VaultView, decide,
};
use apikey_rotator::workload::RolloutState;
use proptest::prelude::*;

/// Any text, weighted towards what the machine parses: ids, timestamps, numbers.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,80}",
        "[0-9a-f]{64}",
        "[0-9a-f]{0,70}",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{3})?Z",
        "[0-9]{0,25}",
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop::sample::select(vec![
        Step::Mint,
        Step::Register,
        Step::Switch,
        Step::Roll,
        Step::Validate,
        Step::Revoke,
        Step::Finish,
    ])
}

fn target_state() -> impl Strategy<Value = TargetState> {
    prop::sample::select(vec![
        TargetState::Pending,
        TargetState::Rolling,
        TargetState::Complete,
        TargetState::Failed,
    ])
}

fn target_progress() -> impl Strategy<Value = TargetProgress> {
    (
        prop::sample::select(vec!["sirius-api", "sirius-ui", "sirius-engine", "other"]),
        target_state(),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(|(name, state, rolled_at, completed_at, verified_at)| {
            let mut t = TargetProgress::pending(Default::default(), name);
            t.state = state;
            t.rolled_at = rolled_at;
            t.completed_at = completed_at;
            t.verified_at = verified_at;
            t
        })
}

fn rotation() -> impl Strategy<Value = RotationProgress> {
    (
        (
            any::<u64>(),
            text(),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
        (
            step(),
            any::<u32>(),
            prop::collection::vec(target_progress(), 0..5),
        ),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            any::<u32>(),
            prop::option::of(text()),
        ),
        (
            prop::option::of(text()),
            any::<bool>(),
            any::<bool>(),
            any::<u32>(),
        ),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            any::<[bool; 2]>(),
        ),
    )
        .prop_map(
            |(
                (revision, trigger, new_key_id, old_key_id),
                (step, target_index, targets),
                (validation_started_at, revoked_at, revoke_attempts, gate_checked_at),
                (rolling_back, outside_windows, revoked_externally, secret_restores),
                (switched_at, pods_waiting_since, [untracked_reported, change_pending]),
            )| {
                let mut r =
                    RotationProgress::started(revision, trigger, old_key_id, [], text_now());
                r.new_key_id = new_key_id;
                r.step = step;
                r.target_index = target_index;
                r.targets = targets;
                r.validation_started_at = validation_started_at;
                r.revoked_at = revoked_at;
                r.revoke_attempts = revoke_attempts;
                r.gate_checked_at = gate_checked_at;
                r.rolling_back = rolling_back;
                r.outside_windows = outside_windows;
                r.old_key_revoked_externally = revoked_externally;
                r.secret_restores = secret_restores;
                r.switched_at = switched_at;
                r.pods_waiting_since = pods_waiting_since;
                r.untracked_consumers_reported = untracked_reported;
                r.spec_change_pending = change_pending;
                r
            },
        )
}

fn text_now() -> String {
    "2026-11-25T12:00:00Z".into()
}

fn status() -> impl Strategy<Value = ApiKeyRotationStatus> {
    (
        prop::option::of(prop::sample::select(vec![
            Phase::Pending,
            Phase::Ready,
            Phase::Rotating,
            Phase::Suspended,
            Phase::Degraded,
        ])),
        prop::collection::vec(
            (
                prop::sample::select(vec!["Ready", "Rotating", "Degraded", "Other"]),
                prop::sample::select(vec!["True", "False", "Unknown"]),
                text(),
                text(),
            ),
            0..4,
        ),
        (prop::option::of(text()), prop::option::of(text())),
        prop::option::of(rotation()),
        (any::<u64>(), prop::option::of(text()), any::<bool>()),
        prop::option::of(text()),
    )
        .prop_map(
            |(phase, conditions, (active, previous), rotation, (revision, last, flag), trigger)| {
                ApiKeyRotationStatus {
                    phase,
                    conditions: conditions
                        .into_iter()
                        .map(|(type_, status, reason, time)| Condition {
                            type_: type_.into(),
                            status: status.into(),
                            reason,
                            message: String::new(),
                            last_transition_time: time,
                            observed_generation: None,
                        })
                        .collect(),
                    active_key_id_short: active.clone(),
                    active_key_id: active,
                    previous_key_id: previous,
                    current_rotation: rotation,
                    revision,
                    last_rotation_time: last,
                    next_rotation_time: None,
                    bootstrap_flag_in_use: flag,
                    last_trigger: trigger,
                    observed_generation: None,
                }
            },
        )
}

fn key_id() -> impl Strategy<Value = KeyId> {
    text().prop_map(KeyId)
}

fn rollout() -> impl Strategy<Value = RolloutState> {
    prop_oneof![
        Just(RolloutState::Complete),
        text().prop_map(RolloutState::Progressing),
        text().prop_map(RolloutState::Failed),
    ]
}

fn target_view() -> impl Strategy<Value = TargetView> {
    prop_oneof![
        Just(TargetView::Missing),
        (
            any::<bool>(),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            rollout()
        )
            .prop_map(
                |(paused, annotation, rolled_back_in, secret_restores, cannot_roll, rollout)| {
                    TargetView::Found {
                        paused,
                        annotation,
                        rolled_back_in,
                        secret_restores,
                        cannot_roll,
                        rollout,
                    }
                }
            ),
    ]
}

fn pod() -> impl Strategy<Value = PodSummary> {
    (
        text(),
        prop::option::of((text(), text())),
        prop::option::of(0usize..6),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
        prop::option::of(0i64..4_000_000_000),
        any::<bool>(),
    )
        .prop_map(
            |(
                name,
                owner,
                target,
                (key_id, secret_restores, rolled_back_in),
                created,
                terminating,
            )| PodSummary {
                name,
                owner,
                target,
                key_id,
                secret_restores,
                rolled_back_in,
                created_at: created.map(|s| jiff::Timestamp::from_second(s).unwrap()),
                terminating,
            },
        )
}

// Boxed: the observation's strategy is deep enough to overflow a test thread's stack otherwise.
fn pods() -> BoxedStrategy<Option<Result<Vec<PodSummary>, String>>> {
    prop::option::of(prop_oneof![
        prop::collection::vec(pod().boxed(), 0..8).prop_map(Ok),
        text().prop_map(Err)
    ])
    .boxed()
}

fn spec(targets: usize, extra: serde_json::Value) -> ApiKeyRotationSpec {
    let names = ["sirius-api", "sirius-ui", "sirius-engine", "sirius-worker"];
    let mut spec = serde_json::json!({
        "valkey": {"url": "redis://valkey:6379"},
        "targets": names[..targets].iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(spec).unwrap()
}

fn observation() -> impl Strategy<Value = Observation> {
    (
        (1usize..=4, any::<u8>(), any::<bool>()),
        status(),
        (prop::option::of(text()), prop::option::of(text())),
        prop::option::of((
            key_id(),
            prop::option::of((key_id(), any::<u64>())),
            any::<bool>(),
        )),
        prop_oneof![
            Just(ConsumerView::Missing),
            prop::option::of(key_id()).prop_map(ConsumerView::Holds)
        ],
        (any::<[bool; 5]>(), any::<bool>()),
        (prop::collection::vec(target_view(), 4), pods(), any::<[bool; 5]>()).boxed(),
        (
            prop::option::of(prop_oneof![
                any::<u16>().prop_map(Ok),
                text().prop_map(Err)
            ]),
            prop::option::of(prop_oneof![any::<f64>().prop_map(Ok), text().prop_map(Err)]),
            0i64..4_000_000_000,
        ),
    )
        .prop_map(
            |(
                (targets, options, suspend),
                status,
                (trigger, outside_windows),
                vault,
                consumer,
                (records, labelled),
                (views, pods, removed),
                (probe, gate, now),
            )| {
                let checks = serde_json::json!({
                    "suspend": suspend,
                    "failurePolicy": if options & 1 == 0 { "Halt" } else { "Rollback" },
                    "secretDriftPolicy": if options & 2 == 0 { "Restore" } else { "Report" },
                    "externalRevocation": if options & 4 == 0 { "Rotate" } else { "Restore" },
                    "rotationIntervalSeconds": if options & 8 == 0 { serde_json::Value::Null } else { 3600.into() },
                    "maintenanceWindows": if options & 16 == 0 { serde_json::json!([]) } else { serde_json::json!([{"start": "0 3 * * *", "durationMinutes": 60}]) },
                    "verification": if options & 32 == 0 { serde_json::Value::Null } else { serde_json::json!({"url": "https://api/host/", "maxRevocations": 2}) },
                    "metricsGate": if options & 64 == 0 { serde_json::Value::Null } else { serde_json::json!({"prometheusUrl": "https://p", "query": "q", "threshold": 1.0}) },
                    "untrackedConsumers": if options & 128 == 0 { "Wait" } else { "Ignore" },
                });
                let stage = match options >> 7 {
                    0 => ProbeStage::AfterTarget(options as usize % 5),
                    _ => ProbeStage::OldKeyRefused,
                };
                Observation {
                    name: "ns/a".into(),
                    generation: Some(1),
                    spec: spec(targets, checks),
                    status,
                    trigger,
                    outside_windows,
                    now: jiff::Timestamp::from_second(now).unwrap(),
                    vault: vault.map(|(current, pending, current_raw_lost)| VaultView {
                        current,
                        pending,
                        current_raw_lost,
                    }),
                    consumer,
                    consumer_labelled: labelled,
                    consumer_changed_at: None,
                    consumer_immutable: false,
                    consumer_key_rewritten: None,
                    records: RecordView {
                        current: records[0],
                        pending: records[1],
                        bootstrap_flag: records[2],
                        malformed: records[3],
                        current_marked: records[4],
                    },
                    targets: views.into_iter().take(targets).collect(),
                    probe: probe.map(|p| (stage, p)),
                    gate,
                    plan: PlanNotes {
                        deferred: if removed[4] { vec!["spec.targets"] } else { vec![] },
                        removed: removed[..targets].to_vec(),
                        ..Default::default()
                    },
                    pods,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn the_machine_never_panics_on_what_it_reads(o in observation()) {
        let plan = decide(&o);
        // And deciding again on its own status does not either.
        let mut again = o.clone();
        again.status = plan.status;
        let _ = decide(&again);
    }
}
