//! Schedules and maintenance windows end to end: the real controller with its clock moved to the
//! edges (a window closing mid-rotation, DST changes), the stand-in and a real Valkey.

use crate::common::*;
use apikey_rotator::clock::Clock;
use apikey_rotator::controller::Settings;
use apikey_rotator::crd::{Condition, TargetState};
use apikey_rotator::key::{KeyId, RawKey};
use kube_sim::{Sim, SimOptions};
use serde_json::{Value, json};
use std::time::Duration;

fn t(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

/// The `Rotating` condition, if there is one.
fn rotating(sim: &Sim) -> Option<Condition> {
    find_condition(sim, "Rotating")
}

/// The rotation (or the request for one) waits for a maintenance window.
fn waiting_for_window(sim: &Sim) -> bool {
    rotating(sim).is_some_and(|c| c.reason == Reason::WaitingForWindow)
}

/// The controller in this process, on `clock`, re-checking quiet rotations every second.
fn spawn_operator_on(sim: &Sim, clock: &Clock) -> tokio::task::JoinHandle<()> {
    let settings = Settings {
        namespace: Some(NS.into()),
        resync: Duration::from_secs(1),
        clock: clock.clone(),
        ..Settings::namespaced(NS)
    };
    tokio::spawn(apikey_rotator::controller::run(
        client_for(sim),
        settings,
        std::future::pending(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closing_mid_rotation_lets_the_rollout_finish_and_the_rest_waits() {
    let valkey = Valkey::start();
    // Rollouts take a few seconds, so the window closes while sirius-api rolls.
    let sim = start_sim_with(SimOptions {
        pod_ready_after: Duration::from_secs(3),
        ..SimOptions::default()
    })
    .await;
    let clock = Clock::default();
    // Windows: 02:00-03:00 in New York (07:00-08:00 UTC in November). Two seconds before the
    // window closes, a rotation is requested.
    let old = known_key();
    let windows = json!({"maintenanceWindows": [{"start": "0 2 * * *", "durationMinutes": 60, "timeZone": "America/New_York"}]});
    install_sirius(&sim, &valkey.url(), &old, 2, Some("first"), windows).await;
    clock.set(t("2026-11-28T07:59:58Z"));
    let operator = spawn_operator_on(&sim, &clock);

    wait_for(
        Duration::from_secs(30),
        "sirius-ui to wait for the next window",
        || {
            waiting_for_window(&sim)
                && in_flight(&sim).is_some_and(|r| {
                    r.targets
                        .first()
                        .is_some_and(|api| api.state == TargetState::Complete)
                })
        },
    )
    .await;
    let new_id = in_flight(&sim).unwrap().new_key_id.unwrap();
    assert_eq!(
        template_key(&sim, "sirius-api"),
        new_id,
        "api finished its rollout"
    );
    assert_eq!(
        template_key(&sim, "sirius-ui"),
        Value::Null,
        "ui was not started"
    );
    assert_eq!(template_key(&sim, "sirius-engine"), Value::Null);
    let waiting = rotating(&sim).unwrap();
    assert!(
        waiting.message.contains("2026-11-29T07:00:00Z"),
        "{waiting:?}"
    );
    // Both keys stay valid while the rotation waits.
    assert!(valkey.exists(&record_key(&old.id())));
    assert!(valkey.exists(&record_key(&KeyId(new_id.clone()))));
    assert!(has_event(&sim, Reason::WaitingForWindow));
    // Still waiting a few resyncs later.
    tokio::time::sleep(Duration::from_secs(3)).await; // ui is not started outside the window
    assert_eq!(template_key(&sim, "sirius-ui"), Value::Null);

    // The next window opens: the rest of the rotation goes through.
    clock.set(t("2026-11-29T07:00:00Z"));
    wait_revision(&sim, 1).await;
    assert_eq!(template_key(&sim, "sirius-engine"), new_id);
    assert!(!valkey.exists(&record_key(&old.id())));

    // After that window, a new request waits for the next one.
    clock.set(t("2026-11-29T08:30:00Z"));
    request_rotation(&sim, "second");
    wait_for(Duration::from_secs(10), "the request to wait", || {
        waiting_for_window(&sim)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // no rotation starts outside the window
    let waiting = status(&sim);
    assert!(waiting.current_rotation.is_none(), "{waiting:?}");
    assert_eq!(
        waiting.next_rotation_time.as_deref(),
        Some("2026-11-30T07:00:00Z")
    );
    assert_eq!(waiting.revision, 1);
    clock.set(t("2026-11-30T07:00:00Z"));
    wait_revision(&sim, 2).await;
    assert_eq!(
        status(&sim).last_trigger.as_deref(),
        Some("second"),
        "the pending request was the one served"
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_across_dst_changes_rotates_once_at_the_right_instant() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let clock = Clock::default();
    // 02:30 every day in Berlin. On 2027-03-28 the clock jumps from 02:00 to 03:00 CEST.
    let old = known_key();
    let schedule = json!({"schedule": {"cron": "30 2 * * *", "timeZone": "Europe/Berlin"}});
    install_sirius(&sim, &valkey.url(), &old, 1, None, schedule).await;
    clock.set(t("2027-03-28T00:59:55Z"));
    let operator = spawn_operator_on(&sim, &clock);

    wait_for(Duration::from_secs(10), "the next rotation time", || {
        status(&sim).next_rotation_time.as_deref() == Some("2027-03-28T01:00:00Z")
    })
    .await;
    // 02:30 does not exist that day: the rotation runs right after the gap, at 03:00 CEST.
    wait_revision(&sim, 1).await;
    let started = event(&sim, "RotationStarted");
    assert!(
        started["note"].as_str().unwrap().contains("(Schedule)"),
        "{started}"
    );
    let rotated = status(&sim);
    let last: jiff::Timestamp = rotated.last_rotation_time.unwrap().parse().unwrap();
    assert!(last >= t("2027-03-28T01:00:00Z") && last < t("2027-03-28T01:01:00Z"));
    // Back to 02:30 CEST the next day.
    assert_eq!(
        rotated.next_rotation_time.as_deref(),
        Some("2027-03-29T00:30:00Z")
    );

    // On 2026-10-25 Berlin repeats 02:00-03:00: 02:30 comes twice, the rotation runs once.
    // (A second installation: on this clock the first one's last rotation is in the future.)
    operator.abort();
    let sim2 = start_sim().await;
    let valkey2 = Valkey::start();
    install_sirius(
        &sim2,
        &valkey2.url(),
        &old,
        1,
        None,
        json!({"schedule": {"cron": "30 2 * * *", "timeZone": "Europe/Berlin"}}),
    )
    .await;
    clock.set(t("2026-10-25T00:29:55Z"));
    let operator = spawn_operator_on(&sim2, &clock);
    wait_revision(&sim2, 1).await; // at 02:30 CEST = 00:30 UTC
    assert_eq!(
        status(&sim2).next_rotation_time.as_deref(),
        Some("2026-10-26T01:30:00Z")
    );
    // The repeated 02:30 (CET, 01:30 UTC) passes without a second rotation.
    clock.set(t("2026-10-25T01:29:58Z"));
    tokio::time::sleep(Duration::from_secs(5)).await; // past the repeated 02:30: no rotation
    assert_eq!(status(&sim2).revision, 1);
    operator.abort();
    drop((valkey, sim));
}

/// Repeated triggers and spec edits during a rotation never start a second rotation alongside it:
/// the last token is served once, after the rotation in flight finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_triggers_and_spec_edits_never_overlap_rotations() {
    let valkey = Valkey::start();
    let sim = start_sim_with(SimOptions {
        pod_ready_after: Duration::from_millis(400),
        ..SimOptions::default()
    })
    .await;
    let old = known_key();
    install_sirius(&sim, &valkey.url(), &old, 2, Some("t0"), json!({})).await;
    let operator = spawn_operator_on(&sim, &Clock::default());
    wait_for(Duration::from_secs(10), "rotation 1 to start", || {
        in_flight(&sim).is_some()
    })
    .await;
    for (i, token) in ["t1", "t2", "t3", "t4", "t5"].into_iter().enumerate() {
        request_rotation(&sim, token);
        // A spec edit too (a new generation).
        sim.merge_patch_object(
            "keys.siriusscan.io",
            "apikeyrotations",
            NS,
            "sirius",
            json!({"spec": {"validationWindowSeconds": 1 + i}}),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await; // no second rotation starts
        let revision = in_flight(&sim).map(|r| r.revision);
        assert!(matches!(revision, Some(1) | None), "{revision:?}");
    }
    wait_revision(&sim, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // and no third one follows
    let done = status(&sim);
    assert_eq!(done.revision, 2, "{done:?}");
    assert_eq!(done.last_trigger.as_deref(), Some("t5"));
    let started: Vec<String> = events(&sim)
        .into_iter()
        .filter(|e| e["reason"] == "RotationStarted")
        .map(|e| e["note"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started[1].contains("Manual:t5"), "{started:?}");
    operator.abort();
}

/// An emergency (a leaked key) cannot wait for the window: `apikey-rotator rotate
/// --outside-windows` starts and rolls out that one rotation now, while the ordinary request
/// before it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_requested_outside_windows_runs_to_the_end_at_once() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let clock = Clock::default();
    let old = known_key();
    let windows = json!({"maintenanceWindows": [{"start": "0 2 * * *", "durationMinutes": 60, "timeZone": "America/New_York"}]});
    install_sirius(&sim, &valkey.url(), &old, 1, Some("routine"), windows).await;
    clock.set(t("2026-11-28T12:00:00Z"));
    let operator = spawn_operator_on(&sim, &clock);
    wait_for(
        Duration::from_secs(10),
        "the routine request to wait",
        || waiting_for_window(&sim),
    )
    .await;

    apikey_rotator::cli::rotate(client_for(&sim), NS, "sirius", Some("leaked".into()), true)
        .await
        .unwrap();
    wait_revision(&sim, 1).await;
    operator.abort();
    let done = status(&sim);
    assert_eq!(done.last_trigger.as_deref(), Some("leaked"));
    let new = RawKey::new(secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap());
    assert_eq!(done.active_key_id.as_deref(), Some(new.id().as_str()));
    for target in ["sirius-api", "sirius-ui", "sirius-engine"] {
        assert_eq!(template_key(&sim, target), new.id().as_str(), "{target}");
    }
    assert!(!valkey.exists(&record_key(&old.id())), "old key revoked");
    assert!(
        event(&sim, "RotationStarted")["note"]
            .as_str()
            .unwrap()
            .contains("outside maintenance windows as requested"),
        "{}",
        event(&sim, "RotationStarted")
    );
}
