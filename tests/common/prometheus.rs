//! A real Prometheus server (Debian's `prometheus`, installed by scripts/ensure-prometheus.sh) on
//! a free loopback port, scraping a test exporter every second; and that exporter, which serves
//! the API's request counter by status code, rising at a rate the test sets.

use axum::extract::State;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `sirius_api_http_requests_total{code="401"}`, going up by `per_second` (set by the test).
pub struct Exporter {
    pub addr: SocketAddr,
    per_second: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Exporter {
    pub async fn start() -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let per_second = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(|State(count): State<Arc<AtomicU64>>| async move {
                    format!(
                        "# TYPE sirius_api_http_requests_total counter\n\
                         sirius_api_http_requests_total{{code=\"200\"}} 1000\n\
                         sirius_api_http_requests_total{{code=\"401\"}} {}\n",
                        count.load(Ordering::Relaxed)
                    )
                }),
            )
            .with_state(count.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let rate = per_second.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut tenths = 0u64;
            loop {
                tick.tick().await;
                tenths += rate.load(Ordering::Relaxed);
                count.fetch_add(tenths / 10, Ordering::Relaxed);
                tenths %= 10;
            }
        });
        Self {
            addr,
            per_second,
            tasks: vec![server, ticker],
        }
    }

    /// 401 answers per second from now on.
    pub fn set_401_rate(&self, per_second: u64) {
        self.per_second.store(per_second, Ordering::Relaxed);
    }
}

pub struct Prometheus {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; returns once it answers queries.
    pub async fn start(target: SocketAddr) -> Self {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "prometheus is missing: run scripts/ensure-prometheus.sh (scripts/test.sh does)",
            );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: sirius-api\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        // Ready once the target has been scraped a few times.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = prometheus
                .query("count_over_time(up{job=\"sirius-api\"}[1m])")
                .await
                && v >= 3.0
            {
                return prometheus;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus did not scrape the exporter within 30s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One instant query's value, with the operator's own client.
    pub async fn query(&self, query: &str) -> Result<f64, String> {
        apikey_rotator::probe::Prober::new()
            .query_prometheus(&self.url, query, Duration::from_secs(5))
            .await
    }
}
