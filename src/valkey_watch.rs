//! Valkey's own change feed, so data loss is repaired in milliseconds rather than at the next
//! resync. One RESP3 connection per server and record prefix turns on client-side tracking in
//! broadcast mode (`CLIENT TRACKING ON BCAST PREFIX apikey:`): Valkey then pushes an invalidation
//! for every change under the prefix, and a null one for `FLUSHALL`/`FLUSHDB`. Each connect is
//! reported too: what changed before tracking began (on a reconnect, a restart perhaps without
//! persistence) is found by the reads that follow.
//!
//! The feed only says where records may be gone; the reconciler, which decides what must exist,
//! reads Valkey and writes back. Without the feed (a server without RESP3, or tracking refused by
//! an ACL) the resync still finds the loss.

use crate::crd::ApiKeyRotation;
use crate::metrics::Metrics;
use crate::sirius;
use crate::valkey_endpoint::{self, Endpoint};
use redis::{PushKind, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Records under `prefix` on the server at `url` may be gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub url: String,
    pub prefix: String,
    /// The record ids (or `bootstrap_complete`) found missing; `None` when anything may be gone
    /// (a flush, or a reconnect after the server went away).
    pub missing: Option<Vec<String>>,
    /// The feed just connected again: the server answers and takes the endpoint's password, so
    /// a rotation backing off because of Valkey may try again at once.
    pub reconnected: bool,
}

impl Loss {
    /// Whether the loss may have taken records `akr` needs: same server and prefix, and a flush,
    /// or the active key, a key of the rotation in flight or the bootstrap flag in use (the
    /// previous key was revoked on purpose).
    pub fn hits(&self, akr: &ApiKeyRotation) -> bool {
        let valkey = &akr.spec.valkey;
        if valkey.url != self.url || valkey.record_prefix != self.prefix {
            return false;
        }
        let (Some(missing), Some(status)) = (&self.missing, &akr.status) else {
            return true;
        };
        let rotation = status.current_rotation.as_ref();
        let needed = [
            status.active_key_id.as_deref(),
            rotation.and_then(|r| r.new_key_id.as_deref()),
            rotation.and_then(|r| r.old_key_id.as_deref()),
        ];
        missing.iter().any(|id| {
            needed.contains(&Some(id.as_str()))
                || (id == sirius::BOOTSTRAP_FLAG && status.bootstrap_flag_in_use)
        })
    }
}

/// Record changes the operator makes itself on one server. Their invalidations are skipped
/// rather than checked: an own write is no loss (and checking each would cost a command).
#[derive(Clone, Default)]
pub struct OwnChanges(Arc<Mutex<HashMap<String, Instant>>>);

/// An expected change not seen by then is forgotten (the feed may have been reconnecting).
const OWN_CHANGE_TTL: Duration = Duration::from_secs(10);

impl OwnChanges {
    /// This operator is about to change `key` (a full Valkey key).
    pub fn expect(&self, key: &str) {
        let mut expected = self.0.lock().unwrap();
        expected.retain(|_, at| at.elapsed() < OWN_CHANGE_TTL);
        expected.insert(key.to_string(), Instant::now());
    }

    /// The change did not happen after all (`SET NX` found a record, `DEL` found none).
    pub fn withdraw(&self, key: &str) {
        self.0.lock().unwrap().remove(key);
    }

    /// Whether a change of `key` was this operator's own (each expectation counts once).
    fn take(&self, key: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .remove(key)
            .is_some_and(|at| at.elapsed() < OWN_CHANGE_TTL)
    }
}

/// The running feeds, one per server and record prefix, each kept while a rotation uses it;
/// dropping this stops them.
pub struct Watchers {
    losses: mpsc::UnboundedSender<Loss>,
    own_changes: Mutex<HashMap<Endpoint, OwnChanges>>,
    feeds: Arc<Mutex<Feeds>>,
    metrics: Arc<Metrics>,
}

type FeedKey = (Endpoint, String);

#[derive(Default)]
struct Feeds {
    running: HashMap<FeedKey, JoinHandle<()>>,
    /// Feeds that ended because the server refused them (no tracking, a refused password): not
    /// asked for again before this instant, and how often they were refused in a row.
    refused: HashMap<FeedKey, (Instant, u32)>,
    /// Which feed each rotation (`namespace/name`) uses.
    users: HashMap<String, FeedKey>,
}

impl Feeds {
    /// Stops the feed if no rotation uses it any more.
    fn stop_if_unused(&mut self, key: &FeedKey) {
        if self.users.values().any(|k| k == key) {
            return;
        }
        if let Some(task) = self.running.remove(key) {
            task.abort();
        }
        self.refused.remove(key);
    }

    /// A feed ended for a reason that retrying at once would not change.
    fn refused(&mut self, key: &FeedKey, first_retry: Duration) {
        self.running.remove(key);
        let times = self.refused.get(key).map_or(0, |(_, n)| *n);
        let wait = (first_retry * 2u32.pow(times.min(5))).min(MAX_REFUSED_WAIT);
        self.refused
            .insert(key.clone(), (Instant::now() + wait, times + 1));
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server that refused tracking is asked again after this long (an ACL may have changed).
const RETRY_UNSUPPORTED: Duration = Duration::from_secs(600);
/// A refused password is tried again after 30 s, then ever less often.
const RETRY_REFUSED_PASSWORD: Duration = Duration::from_secs(30);
const MAX_REFUSED_WAIT: Duration = Duration::from_secs(900);

impl Watchers {
    pub fn new(metrics: Arc<Metrics>) -> (Self, mpsc::UnboundedReceiver<Loss>) {
        let (losses, receiver) = mpsc::unbounded_channel();
        let own_changes = Mutex::new(HashMap::new());
        (
            Self {
                losses,
                own_changes,
                feeds: Default::default(),
                metrics,
            },
            receiver,
        )
    }

    /// Where the key store for `endpoint` notes its own record changes.
    pub fn own_changes(&self, endpoint: &Endpoint) -> OwnChanges {
        let mut own = self.own_changes.lock().unwrap();
        own.entry(endpoint.clone()).or_default().clone()
    }

    /// Starts the feed `rotation` needs for this server and prefix, unless it runs already or
    /// was refused lately; a feed the rotation used before and nobody else uses stops.
    pub fn ensure(&self, rotation: &str, endpoint: &Endpoint, prefix: &str) {
        let mut feeds = self.feeds.lock().unwrap();
        let key = (endpoint.clone(), prefix.to_string());
        if let Some(before) = feeds.users.insert(rotation.to_string(), key.clone())
            && before != key
        {
            feeds.stop_if_unused(&before);
        }
        if feeds.running.contains_key(&key)
            || feeds
                .refused
                .get(&key)
                .is_some_and(|(until, _)| Instant::now() < *until)
        {
            return;
        }
        let feed = Feed {
            endpoint: endpoint.clone(),
            prefix: prefix.to_string(),
            losses: self.losses.clone(),
            own: self.own_changes(endpoint),
            metrics: self.metrics.clone(),
        };
        let task = tokio::spawn(follow(feed, Arc::downgrade(&self.feeds)));
        feeds.running.insert(key, task);
    }

    /// The rotations that use a feed.
    pub fn rotations(&self) -> Vec<String> {
        self.feeds.lock().unwrap().users.keys().cloned().collect()
    }

    /// `rotation` is gone: its feed stops unless another rotation uses it.
    pub fn release(&self, rotation: &str) {
        let mut feeds = self.feeds.lock().unwrap();
        if let Some(key) = feeds.users.remove(rotation) {
            feeds.stop_if_unused(&key);
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in self.feeds.lock().unwrap().running.values() {
            task.abort();
        }
    }
}

/// Why a session with the server ended.
enum Ended {
    /// The connection dropped or could not be made: try again.
    Disconnected(String),
    /// The server will not track (no RESP3, or an ACL refuses CLIENT TRACKING): give up.
    Unsupported(String),
    /// The password was refused. The reconciler just connected with the endpoint's password, so
    /// it changed since: this feed ends, and the next reconcile starts one with the new password.
    PasswordRefused,
}

/// One server and record prefix followed: where its losses go, and which changes are our own.
struct Feed {
    endpoint: Endpoint,
    prefix: String,
    losses: mpsc::UnboundedSender<Loss>,
    own: OwnChanges,
    metrics: Arc<Metrics>,
}

/// Counts a feed in `valkey_change_feeds` while it follows its server.
struct Following(Arc<Metrics>);

impl Following {
    fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.valkey_change_feed_started();
        Self(metrics.clone())
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.valkey_change_feed_ended();
    }
}

async fn follow(feed: Feed, feeds: Weak<Mutex<Feeds>>) {
    let url = &feed.endpoint.url;
    let key = (feed.endpoint.clone(), feed.prefix.clone());
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let retry_after = match feed.session(&mut connected_before, &mut backoff).await {
            Ended::Unsupported(why) => {
                tracing::warn!(url = %crate::redact::url(url), why = %crate::redact::text(&why), "Valkey does not push changes; data loss is found at the next resync");
                RETRY_UNSUPPORTED
            }
            Ended::Disconnected(why) => {
                tracing::debug!(url = %crate::redact::url(url), why = %crate::redact::text(&why), ?backoff, "Valkey change feed lost; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Ended::PasswordRefused => {
                tracing::debug!(url = %crate::redact::url(url), "Valkey refused this feed's password; ending it");
                if connected_before {
                    // The password worked before, so it changed: the rotations reconcile, read
                    // the new one, and start a feed with it. A password that never worked
                    // reports nothing (the rotations' own back-off covers them).
                    feed.report(None, false);
                }
                RETRY_REFUSED_PASSWORD
            }
        };
        if let Some(feeds) = feeds.upgrade() {
            feeds.lock().unwrap().refused(&key, retry_after);
        }
        return;
    }
}

impl Feed {
    /// A RESP3 connection that receives the invalidations of every key under the prefix.
    async fn connect_and_track(
        &self,
    ) -> Result<
        (
            redis::aio::MultiplexedConnection,
            mpsc::UnboundedReceiver<redis::PushInfo>,
        ),
        Ended,
    > {
        let client = match valkey_endpoint::client(&self.endpoint, redis::ProtocolVersion::RESP3) {
            Ok(client) => client,
            Err(e) => return Err(Ended::Unsupported(e.to_string())),
        };
        let (pushes, pushed) = mpsc::unbounded_channel();
        let mut config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_push_sender(pushes);
        if let Some(resolver) = valkey_endpoint::connect_to(&self.endpoint) {
            config = config.set_dns_resolver(resolver);
        }
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(e) if password_refused(&e) => return Err(Ended::PasswordRefused),
            // The server answered, but not to HELLO 3 (Redis before 6, or a stand-in without
            // RESP3).
            Err(e)
                if matches!(
                    e.kind(),
                    redis::ErrorKind::RESP3NotSupported | redis::ErrorKind::Server(_)
                ) =>
            {
                return Err(Ended::Unsupported(e.to_string()));
            }
            Err(e) => return Err(Ended::Disconnected(e.to_string())),
        };
        let tracking = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&self.prefix)
            .exec_async(&mut conn)
            .await;
        match tracking {
            Ok(()) => {}
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(Ended::Disconnected(e.to_string()));
            }
            Err(e) => return Err(Ended::Unsupported(e.to_string())),
        }
        Ok((conn, pushed))
    }

    async fn session(&self, connected_before: &mut bool, backoff: &mut Duration) -> Ended {
        let (mut conn, mut pushed) = match self.connect_and_track().await {
            Ok(tracked) => tracked,
            Err(ended) => return ended,
        };
        let _following = Following::start(&self.metrics);
        tracing::debug!(url = %crate::redact::url(&self.endpoint.url), prefix = %self.prefix, "following Valkey's changes");
        *backoff = Duration::from_millis(100);
        // Nothing was followed until now: a change since the rotations last read Valkey (a
        // flush while this feed connected, or, on a reconnect, a restart without persistence
        // while it was down) would otherwise wait for the resync, so they all read it again.
        if *connected_before {
            self.report(None, true);
        } else {
            // Not a loss seen, so not counted as one: only a gap closed.
            self.send(None, false);
        }
        *connected_before = true;
        while let Some(push) = pushed.recv().await {
            match push.kind {
                PushKind::Disconnection => return Ended::Disconnected("connection closed".into()),
                PushKind::Invalidate => {
                    if let Err(ended) = self.invalidated(&mut conn, &push.data).await {
                        return ended;
                    }
                }
                _ => {}
            }
        }
        Ended::Disconnected("push channel closed".into())
    }

    /// Keys changed: reports the watched records among them that are gone (mostly the change is
    /// Sirius rewriting `last_used_at`; only a missing record matters).
    async fn invalidated(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        data: &[redis::Value],
    ) -> Result<(), Ended> {
        let Some(changed) = invalidated_keys(data) else {
            self.report(None, false);
            return Ok(());
        };
        let watched: Vec<String> = changed
            .into_iter()
            .filter(|key| is_watched_record(&self.prefix, key) && !self.own.take(key))
            .collect();
        if watched.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for key in &watched {
            pipe.exists(key);
        }
        match pipe.query_async::<Vec<bool>>(conn).await {
            Ok(exists) => {
                let missing: Vec<String> = watched
                    .iter()
                    .zip(exists)
                    .filter(|(_, exists)| !exists)
                    .map(|(key, _)| key[self.prefix.len()..].to_string())
                    .collect();
                if !missing.is_empty() {
                    self.report(Some(missing), false);
                }
            }
            Err(e) => {
                self.report(None, false);
                return Err(Ended::Disconnected(e.to_string()));
            }
        }
        Ok(())
    }

    fn report(&self, missing: Option<Vec<String>>, reconnected: bool) {
        tracing::debug!(url = %crate::redact::url(&self.endpoint.url), prefix = %self.prefix, ?missing, "Valkey records may be gone");
        self.metrics.count_valkey_loss_reported();
        self.send(missing, reconnected);
    }

    fn send(&self, missing: Option<Vec<String>>, reconnected: bool) {
        let _ = self.losses.send(Loss {
            url: self.endpoint.url.clone(),
            prefix: self.prefix.clone(),
            missing,
            reconnected,
        });
    }
}

fn password_refused(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// The keys of an invalidation push; `None` for a flush (Valkey sends null then).
fn invalidated_keys(data: &[Value]) -> Option<Vec<String>> {
    match data.first() {
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .filter_map(|key| match key {
                    Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
                    Value::SimpleString(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// A Sirius key record (`<prefix><sha256 hex>`) or the v1.0 bootstrap flag.
fn is_watched_record(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| {
        rest == sirius::BOOTSTRAP_FLAG
            || (rest.len() == 64 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_and_the_bootstrap_flag_are_watched() {
        let id = "ab".repeat(32);
        assert!(is_watched_record("apikey:", &format!("apikey:{id}")));
        assert!(is_watched_record("apikey:", "apikey:bootstrap_complete"));
        assert!(!is_watched_record("apikey:", "apikey:root"));
        assert!(!is_watched_record(
            "apikey:",
            &format!("apikey:{}", "AB".repeat(32))
        ));
        assert!(!is_watched_record("apikey:", &format!("other:{id}")));
    }

    fn rotation(status: serde_json::Value) -> ApiKeyRotation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keys.siriusscan.io/v1alpha1",
            "kind": "ApiKeyRotation",
            "metadata": {"name": "sirius", "namespace": "sirius"},
            "spec": {"valkey": {"url": "redis://valkey:6379"}},
            "status": status,
        }))
        .unwrap()
    }

    fn loss(url: &str, missing: Option<&[&str]>) -> Loss {
        Loss {
            url: url.into(),
            prefix: "apikey:".into(),
            missing: missing.map(|m| m.iter().map(|s| s.to_string()).collect()),
            reconnected: false,
        }
    }

    #[test]
    fn a_loss_hits_the_rotations_that_need_what_went_missing() {
        let ready = rotation(serde_json::json!({"activeKeyId": "a1", "previousKeyId": "a0"}));
        assert!(loss("redis://valkey:6379", None).hits(&ready));
        assert!(loss("redis://valkey:6379", Some(&["a1"])).hits(&ready));
        assert!(
            !loss("redis://valkey:6379", Some(&["a0"])).hits(&ready),
            "revoked already"
        );
        assert!(!loss("redis://valkey:6379", Some(&["b2"])).hits(&ready));
        assert!(!loss("redis://other:6379", None).hits(&ready));
        assert!(!loss("redis://valkey:6379", Some(&["bootstrap_complete"])).hits(&ready));

        let rotating = rotation(serde_json::json!({
            "activeKeyId": "a1",
            "bootstrapFlagInUse": true,
            "currentRotation": {"revision": 2, "trigger": "manual", "newKeyId": "a2",
                "oldKeyId": "a1", "step": "Validate", "targetIndex": 3, "targets": [],
                "startedAt": "2026-11-26T00:00:00Z"},
        }));
        assert!(loss("redis://valkey:6379", Some(&["a2"])).hits(&rotating));
        assert!(loss("redis://valkey:6379", Some(&["bootstrap_complete"])).hits(&rotating));

        let new = rotation(serde_json::Value::Null);
        assert!(loss("redis://valkey:6379", Some(&["zz"])).hits(&new));
    }

    #[test]
    fn an_own_change_is_skipped_once_and_a_withdrawn_one_not_at_all() {
        let own = OwnChanges::default();
        own.expect("apikey:a");
        own.expect("apikey:b");
        own.withdraw("apikey:b");
        assert!(own.take("apikey:a"));
        assert!(
            !own.take("apikey:a"),
            "a second change of the same key is someone else's"
        );
        assert!(!own.take("apikey:b"));
        assert!(!own.take("apikey:c"));
    }

    #[test]
    fn a_null_invalidation_is_a_flush() {
        assert_eq!(invalidated_keys(&[Value::Nil]), None);
        assert_eq!(invalidated_keys(&[]), None);
        assert_eq!(
            invalidated_keys(&[Value::Array(vec![Value::BulkString(b"apikey:x".to_vec())])]),
            Some(vec!["apikey:x".to_string()])
        );
    }
}
