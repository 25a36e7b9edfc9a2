//! The metrics gate against a real Prometheus scraping a test exporter: a rising 401 rate during
//! the validation window fails the rotation (the old key is not revoked); a flat one lets it
//! finish.

use crate::common::prometheus::{Exporter, Prometheus};
use crate::common::*;
use apikey_rotator::key::RawKey;
use serde_json::{Value, json};

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
    cluster: Cluster,
    old: RawKey,
}

async fn gated() -> Gated {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(exporter.addr).await;
    let mut cluster = Cluster::start().await;
    let old = cluster.install(1, Some("first"), gate(&prometheus)).await;
    cluster.run_operator();
    Gated {
        exporter,
        prometheus,
        cluster,
        old,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_401_rate_lets_the_rotation_finish() {
    // (Bound, not `_`: the exporter must keep serving until the end.)
    let Gated {
        exporter: _exporter,
        prometheus,
        mut cluster,
        old,
    } = gated().await;

    wait_revision(&cluster.sim, 1).await;
    cluster.kill_operator();
    assert!(!cluster.accepts(&old));
    let passed = event(&cluster.sim, "MetricsGatePassed");
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
        mut cluster,
        old,
    } = gated().await;

    // The 401s start once every target runs the new key.
    cluster.wait_step(Step::Validate).await;
    exporter.set_401_rate(20);

    cluster.wait_degraded(Reason::MetricsGateFailed).await;
    let status = cluster.status();
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(status.revision, 0);
    // Nothing revoked: both keys are still valid.
    assert!(cluster.accepts(&old));
    let new_id = status.current_rotation.unwrap().new_key_id.unwrap();
    assert!(cluster.valkey.exists(&format!("apikey:{new_id}")));
    let failed = event(&cluster.sim, "MetricsGateFailed");
    assert!(
        failed["note"].as_str().unwrap().contains("over 0.5"),
        "{failed}"
    );
    assert!(prometheus.query(QUERY).await.unwrap() > 0.5);
    cluster.kill_operator();
}
