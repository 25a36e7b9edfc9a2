//! A small HTTP server that authenticates like sirius-api (../shared/docs/sirius-auth-contract.md)
//! on top of the test Valkey: `GET /health` is public; every other path needs `X-API-Key`, which
//! is accepted when `apikey:<sha256>` exists (the record's `last_used_at` is then rewritten, as
//! the API does), and answered 401 otherwise. The verification probes talk to it over HTTP.

use apikey_rotator::key::RawKey;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// How the server decides, besides the contract.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Key ids refused whatever Valkey holds (an API that cannot use the new key).
    pub refuse: HashSet<String>,
    /// A v1.1 root key, accepted without a record (an API replica that still holds the old key).
    pub root_key_id: Option<String>,
}

#[derive(Clone)]
struct Shared {
    valkey: redis::aio::MultiplexedConnection,
    behaviour: Arc<Mutex<Behaviour>>,
    log: Arc<Mutex<Vec<(String, u16)>>>,
}

pub struct SiriusApi {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    log: Arc<Mutex<Vec<(String, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SiriusApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SiriusApi {
    pub async fn start(valkey_url: &str) -> Self {
        let valkey = redis::Client::open(valkey_url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            valkey,
            behaviour: behaviour.clone(),
            log: log.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            behaviour,
            log,
            task,
        }
    }

    /// The URL of the protected route the operator's probes use (`GET /host/` in Sirius).
    pub fn host_url(&self) -> String {
        format!("http://{}/host/", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Every authenticated request so far: (key id, status answered).
    pub fn log(&self) -> Vec<(String, u16)> {
        self.log.lock().unwrap().clone()
    }

    /// The statuses answered to the key with this id.
    pub fn answers_to(&self, key_id: &str) -> Vec<u16> {
        self.log()
            .into_iter()
            .filter(|(id, _)| id == key_id)
            .map(|(_, s)| s)
            .collect()
    }
}

async fn handle(State(s): State<Shared>, uri: Uri, headers: HeaderMap) -> StatusCode {
    if uri.path() == "/health" {
        return StatusCode::OK;
    }
    // Only X-API-Key (header names are case-insensitive).
    let Some(presented) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
        return StatusCode::UNAUTHORIZED;
    };
    let id = RawKey::new(presented.to_string()).id().0;
    let behaviour = s.behaviour.lock().unwrap().clone();
    let status = if behaviour.refuse.contains(&id) {
        StatusCode::UNAUTHORIZED
    } else if behaviour.root_key_id.as_deref() == Some(id.as_str()) {
        StatusCode::OK
    } else {
        let mut conn = s.valkey.clone();
        let record: Option<String> = redis::cmd("GET")
            .arg(format!("apikey:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        match record {
            Some(json) => {
                // The API's best-effort last-used rewrite (a plain SET of the whole record).
                if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&json) {
                    v["last_used_at"] = jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                        .into();
                    let _: Result<(), _> = redis::cmd("SET")
                        .arg(format!("apikey:{id}"))
                        .arg(v.to_string())
                        .query_async(&mut conn)
                        .await;
                }
                StatusCode::OK
            }
            None => StatusCode::UNAUTHORIZED,
        }
    };
    s.log.lock().unwrap().push((id, status.as_u16()));
    status
}
