//! `/metrics`, `/healthz` and `/readyz` of the running operator, scraped during and after real
//! rotations: the counters and histograms move as the README documents.

use crate::common::*;
use apikey_rotator::controller::Settings;
use apikey_rotator::operator::{self, Options};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (status code, body) of a plain HTTP/1.1 GET.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of one sample (`name{labels}` exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const SUCCEEDED: &str = r#"apikey_rotator_rotations_total{result="succeeded"}"#;

/// Scrapes `/metrics` until the succeeded rotations reach `count` (or 5 s pass), and returns
/// that scrape.
async fn scrape_once_counted(addr: SocketAddr, count: f64) -> (u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, text) = get(addr, "/metrics").await;
        if sample(&text, SUCCEEDED) == Some(count) || std::time::Instant::now() > deadline {
            return (code, text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn phase(name: &str, phase: &str) -> String {
    format!(r#"apikey_rotator_phase{{namespace="{NS}",name="{name}",phase="{phase}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_and_after_rotations() {
    let cluster = Cluster::start().await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let old = cluster.install(2, Some("first"), json!({})).await;
    // Two failed Deployment patches: reconcile errors and API errors by code. (kube's client
    // retries 503s by itself, so a 500.)
    sim.inject_faults("patch", "deployments", 2, 500);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = Options {
        settings: Settings {
            namespace: None,
            resync: Duration::from_secs(60),
            ..Settings::namespaced(NS)
        },
        namespaces: vec![NS.into()],
        election: None,
        endpoints: Some(listener),
    };
    let operator = tokio::spawn(operator::run(
        client_for(sim),
        options,
        std::future::pending(),
    ));

    wait_for(Duration::from_secs(10), "the endpoints", || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let mut ready = false;
    for _ in 0..100 {
        if get(addr, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz never answered 200");

    // During the rotation: the phase gauge says Rotating.
    let mut seen_rotating = false;
    for _ in 0..400 {
        let (_, text) = get(addr, "/metrics").await;
        if sample(&text, &phase("sirius", "Rotating")) == Some(1.0) {
            seen_rotating = true;
            assert_eq!(sample(&text, &phase("sirius", "Ready")), Some(0.0));
            assert_eq!(sample(&text, "apikey_rotator_leader"), Some(1.0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_rotating, "the phase gauge never showed Rotating");

    wait_revision(sim, 1).await;
    // The status is visible a moment before the operator counts its write.
    let (code, text) = scrape_once_counted(addr, 1.0).await;
    assert_eq!(code, 200);
    let value = |series: &str| sample(&text, series).unwrap_or(0.0);
    assert_eq!(value(SUCCEEDED), 1.0, "{text}");
    assert_eq!(value("apikey_rotator_targets_rolled_total"), 3.0);
    assert_eq!(
        value(r#"apikey_rotator_rotation_duration_seconds_count{result="succeeded"}"#),
        1.0
    );
    for step in ["Mint", "Register", "Switch", "Roll", "Validate", "Revoke"] {
        assert!(
            value(&format!(
                r#"apikey_rotator_step_duration_seconds_count{{step="{step}"}}"#
            )) >= 1.0,
            "no {step} duration in:\n{text}"
        );
    }
    assert_eq!(value(&phase("sirius", "Ready")), 1.0);
    assert_eq!(value(&phase("sirius", "Rotating")), 0.0);
    assert!(value("apikey_rotator_reconcile_duration_seconds_count") >= 5.0);
    assert!(
        value(r#"apikey_rotator_reconcile_errors_total{reason="KubernetesApiError"}"#) >= 1.0,
        "{text}"
    );
    assert!(value(r#"apikey_rotator_kubernetes_api_errors_total{code="500"}"#) >= 1.0);
    assert_eq!(value("apikey_rotator_rollout_failures_total"), 0.0);
    assert_eq!(value("apikey_rotator_valkey_change_feeds"), 1.0, "{text}");

    // A second rotation adds to the counters; Valkey down shows as Valkey errors.
    cluster.request_rotation("second");
    wait_revision(sim, 2).await;
    scrape_once_counted(addr, 2.0).await;
    valkey.pause();
    cluster.request_rotation("third");
    let mut valkey_errors = 0.0;
    for _ in 0..300 {
        let (_, text) = get(addr, "/metrics").await;
        valkey_errors = sample(&text, "apikey_rotator_valkey_errors_total").unwrap_or(0.0);
        if valkey_errors >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    valkey.resume();
    assert!(valkey_errors >= 1.0, "Valkey errors were not counted");
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            r#"apikey_rotator_rotations_total{result="succeeded"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "apikey_rotator_targets_rolled_total"),
        Some(6.0)
    );

    // The change feed reports a flush.
    cluster.flush_valkey();
    let mut reported = 0.0;
    for _ in 0..100 {
        let (_, text) = get(addr, "/metrics").await;
        reported = sample(&text, "apikey_rotator_valkey_losses_reported_total").unwrap_or(0.0);
        if reported >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reported >= 1.0, "the flush was not counted");

    // No key, old or new, is ever exposed.
    for key in [
        old.expose().to_string(),
        secret_value(sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap(),
    ] {
        assert!(!text.contains(&key));
    }
    operator.abort();
}
