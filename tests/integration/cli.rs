//! `apikey-rotator rotate` and `status` against the stand-in, with the real operator running.

use crate::common::*;
use apikey_rotator::cli::{self, Output, Scope};
use apikey_rotator::crd::TargetState;
use kube_sim::RolloutBehavior;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_requests_one_rotation_and_status_shows_finished_and_in_flight_rotations() {
    let mut cluster = Cluster::start().await;
    cluster.install(1, None, json!({})).await;
    cluster.run_operator();
    let client = client_for(&cluster.sim);
    wait_for(Duration::from_secs(10), "Ready", || {
        cluster.status().phase == Some(Phase::Ready)
    })
    .await;

    let table = cli::status(client.clone(), &Scope::Namespace(NS.into()), Output::Table)
        .await
        .unwrap();
    assert!(
        table.lines().next().unwrap().starts_with("NAMESPACE  NAME"),
        "{table}"
    );
    assert!(
        table.contains("Ready(KeyActive)") && table.contains("sirius-api=-"),
        "{table}"
    );

    let token = cli::rotate(client.clone(), NS, "sirius", None, false)
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "rotation 1", || {
        cluster.status().revision == 1
    })
    .await;
    assert_eq!(
        cluster.status().last_trigger.as_deref(),
        Some(token.as_str())
    );
    let finished = cli::status(client.clone(), &Scope::All, Output::Table)
        .await
        .unwrap();
    let row = finished.lines().nth(1).unwrap();
    assert!(row.starts_with("sirius     sirius  Ready"), "{finished}");
    assert!(
        row.contains("deploy/sirius-api=done,deploy/sirius-ui=done,deploy/sirius-engine=done"),
        "{finished}"
    );
    let active = cluster.status().active_key_id_short.unwrap();
    assert!(row.contains(&active), "{finished}");

    // The same token again is refused; a new one starts rotation 2, held at sirius-engine.
    assert!(
        cli::rotate(client.clone(), NS, "sirius", Some(token), false)
            .await
            .is_err()
    );
    cluster
        .sim
        .set_rollout_behavior(NS, "sirius-engine", RolloutBehavior::Stall);
    cli::rotate(client.clone(), NS, "sirius", Some("second".into()), false)
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "rotation 2 waiting on sirius-engine",
        || {
            cluster.in_flight().is_some_and(|r| {
                r.targets
                    .get(2)
                    .is_some_and(|t| t.state == TargetState::Rolling)
            })
        },
    )
    .await;
    let in_flight = cli::status(client.clone(), &Scope::Namespace(NS.into()), Output::Table)
        .await
        .unwrap();
    let row = in_flight.lines().nth(1).unwrap();
    assert!(
        row.contains("Rotating") && row.contains("2:Roll"),
        "{in_flight}"
    );
    assert!(
        row.contains("deploy/sirius-api=done,deploy/sirius-ui=done,deploy/sirius-engine=rolling"),
        "{in_flight}"
    );
    assert!(row.contains("Rotating(Roll)"), "{in_flight}");

    let json_out = cli::status(client, &Scope::Namespace(NS.into()), Output::Json)
        .await
        .unwrap();
    cluster.kill_operator();
    let parsed: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(parsed[0]["name"], "sirius");
    assert_eq!(parsed[0]["revision"], 1);
    assert_eq!(parsed[0]["currentRotation"]["revision"], 2);
    assert_eq!(parsed[0]["currentRotation"]["step"], "Roll");
    assert_eq!(parsed[0]["phase"], "Rotating");
}
