//! The metrics gate against a real Prometheus scraping a test exporter: a rising 401 rate during
//! the validation window fails the rotation (the old key is not revoked); a flat one lets it
//! finish.

use crate::common::prometheus::{Exporter, Prometheus};
use crate::common::*;
use apikey_rotator::key::RawKey;
use serde_json::{Value, json};
use std::time::Duration;

const QUERY: &str = r#"sum(rate(sirius_api_http_requests_total{code="401"}[5s]))"#;

fn gate(prometheus: &Prometheus) -> Value {
    json!({
        "validationWindowSeconds": 8,
        "metricsGate": {"prometheusUrl": prometheus.url, "query": QUERY, "threshold": 0.5, "intervalSeconds": 1},
    })
}

/// A test exporter, Prometheus scraping it, Sirius, an ApiKeyRotation gated on the 401 rate, and
/// the operator.
struct Gated {
    exporter: Exporter,
    prometheus: Prometheus,
    valkey: Valkey,
    sim: kube_sim::Sim,
    old: RawKey,
    operator: tokio::task::JoinHandle<()>,
}

async fn gated() -> Gated {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(exporter.addr).await;
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let old = known_key();
    install_sirius(
        &sim,
        &valkey.url(),
        &old,
        1,
        Some("first"),
        gate(&prometheus),
    )
    .await;
    let operator = spawn_operator(&sim);
    Gated {
        exporter,
        prometheus,
        valkey,
        sim,
        old,
        operator,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_401_rate_lets_the_rotation_finish() {
    // (Bound, not `_`: the exporter must keep serving until the end.)
    let Gated {
        exporter: _exporter,
        prometheus,
        valkey,
        sim,
        old,
        operator,
    } = gated().await;

    wait_revision(&sim, 1).await;
    operator.abort();
    assert!(!valkey.exists(&format!("apikey:{}", old.id())));
    let passed = event(&sim, "MetricsGatePassed");
    assert!(
        passed["note"].as_str().unwrap().contains("last 0"),
        "{passed}"
    );
    assert_eq!(prometheus.query(QUERY).await, Ok(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rising_401_rate_fails_the_rotation_and_keeps_the_old_key() {
    let Gated {
        exporter,
        prometheus,
        valkey,
        sim,
        old,
        operator,
    } = gated().await;

    // The 401s start once every target runs the new key.
    wait_for(Duration::from_secs(30), "the validation window", || {
        in_flight(&sim).is_some_and(|r| r.step == Step::Validate)
    })
    .await;
    exporter.set_401_rate(20);

    wait_degraded(&sim, "MetricsGateFailed").await;
    let status = akr_status(&sim);
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(status["revision"], 0);
    // Nothing revoked: both keys are still valid.
    assert!(valkey.exists(&format!("apikey:{}", old.id())));
    let new_id = status["currentRotation"]["newKeyId"].as_str().unwrap();
    assert!(valkey.exists(&format!("apikey:{new_id}")));
    let failed = event(&sim, "MetricsGateFailed");
    assert!(
        failed["note"].as_str().unwrap().contains("over 0.5"),
        "{failed}"
    );
    assert!(prometheus.query(QUERY).await.unwrap() > 0.5);
    operator.abort();
}
