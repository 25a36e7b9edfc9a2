//! No password in any output: a rotation whose Valkey URL carries an ACL user's password, with a
//! verification probe URL and a Prometheus URL that carry credentials (both pointing at a closed
//! port, so their failures are reported), runs with the operator's logs captured at trace level.
//! None of the passwords appears in the logs, an Event, a status, the metrics or Valkey.

use crate::common::*;
use apikey_rotator::controller::Settings;
use apikey_rotator::operator::{self, Options};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VALKEY_PASSWORD: &str = "Vk-pass-3e9a1c";
const PROBE_PASSWORD: &str = "Probe-pass-71bd04";
const PROMETHEUS_PASSWORD: &str = "Prom-pass-c2f85e";

/// Every log line the process writes, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_logs_events_status_metrics_or_valkey() {
    // The whole process logs at trace level into memory (each test is a process of its own under
    // nextest; the operator's tasks run on several threads, so the subscriber is global). The API
    // stand-in's own logs are left out: they are not the operator's.
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace,kube_sim=off"))
        .with_ansi(false)
        .with_writer(logs.clone())
        .try_init()
        .expect("no other subscriber in this process");

    let valkey = Valkey::start();
    valkey.set_user_password("sirius", VALKEY_PASSWORD);
    let valkey_url = format!(
        "redis://sirius:{VALKEY_PASSWORD}@127.0.0.1:{}/0",
        valkey.port
    );
    let probe_port = closed_port();
    let probe_url = format!("http://probe:{PROBE_PASSWORD}@127.0.0.1:{probe_port}/host/");
    let prometheus_url = format!(
        "http://prom:{PROMETHEUS_PASSWORD}@127.0.0.1:{}",
        closed_port()
    );

    let sim = start_sim().await;
    let old = known_key();
    // "sirius": the probe after the first target cannot reach its URL (VerificationFailed).
    install_sirius(
        &sim,
        &valkey_url,
        &old,
        1,
        Some("first"),
        json!({"verification": {"url": probe_url, "timeoutSeconds": 1}}),
    )
    .await;
    // "gate": the metrics gate cannot reach Prometheus during the validation window.
    sim.create_object(sirius_deployment("gate-target", 1))
        .unwrap();
    let mut gate = rotation(
        &valkey_url,
        json!({
            "secret": {"name": "gate-key"},
            "targets": [{"name": "gate-target"}],
            "metricsGate": {"prometheusUrl": prometheus_url, "query": "up", "threshold": 1.0, "intervalSeconds": 1},
        }),
    );
    gate["metadata"]["name"] = json!("gate");
    gate["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "first"});
    sim.create_object(gate).unwrap();

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
        client_for(&sim),
        options,
        std::future::pending(),
    ));

    wait_degraded(&sim, "VerificationFailed").await;
    wait_event(&sim, Reason::MetricsGateUnavailable).await;
    // A change feed followed the server (its log lines name the URL).
    wait_for(Duration::from_secs(10), "a change feed as sirius", || {
        valkey
            .change_feeds()
            .iter()
            .any(|(_, user)| user == "sirius")
    })
    .await;
    // The gate's status reports it too (its Event may come first: a wait rides on the next
    // status write).
    wait_for(Duration::from_secs(10), "the gate's status", || {
        serde_json::to_string(&sim.list_objects("keys.siriusscan.io", "apikeyrotations", Some(NS)))
            .unwrap()
            .contains("prom:***@127.0.0.1")
    })
    .await;
    let metrics = get(addr, "/metrics").await;
    operator.abort();

    let events = serde_json::to_string(&events(&sim)).unwrap();
    let statuses = serde_json::to_string(
        &sim.list_objects("keys.siriusscan.io", "apikeyrotations", Some(NS))
            .iter()
            .map(|r| r["status"].clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let dump = valkey.dump();
    let logs = logs.text();

    let mut leaks = Vec::new();
    for (what, text) in [
        ("logs", &logs),
        ("Events", &events),
        ("status", &statuses),
        ("metrics", &metrics),
        ("Valkey", &dump),
    ] {
        for password in [VALKEY_PASSWORD, PROBE_PASSWORD, PROMETHEUS_PASSWORD] {
            if let Some(at) = text.find(password) {
                let context: String = text[..at].chars().rev().take(200).collect();
                let context: String = context.chars().rev().collect();
                leaks.push(format!(
                    "{password} in the {what}: ...{context}{password}..."
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
    // The outputs do report the failures, with the URLs redacted.
    assert!(
        events.contains(&format!("http://probe:***@127.0.0.1:{probe_port}/host/")),
        "{events}"
    );
    assert!(statuses.contains("prom:***@127.0.0.1"), "{statuses}");
    assert!(logs.contains("verification probe"), "logs were captured");
    assert!(logs.contains("redis://sirius:***@127.0.0.1"), "{logs}");
    assert!(metrics.contains("apikey_rotator_"), "{metrics}");
}
