//! Sirius's key store in Valkey: the key records (by SHA-256 id only) and the operator's own
//! state and history under a separate prefix. The raw key never reaches Valkey: the record holds
//! its id and Sirius's display prefix, exactly as the API writes it.

use crate::key::{KeyId, RawKey};
use crate::sirius;
pub use crate::valkey_endpoint::{Endpoint, KeyStoreError, check_url, client, normalize_url};
use crate::valkey_watch::OwnChanges;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use std::time::Duration;

/// What Valkey holds under one key record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    Valid,
    Missing,
    /// Something is there, but not a Sirius record of that key: it counts as missing.
    Malformed,
}

/// One read of a rotation's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordsRead {
    pub records: Vec<RecordState>,
    /// Per id: the operator's marker that it wrote that record (see [`marker_key`]).
    pub marked: Vec<bool>,
    pub bootstrap_flag: bool,
}

/// Where a rotation's data lives in Valkey: Sirius's key records, and the operator's own entries.
#[derive(Clone, Copy, Debug)]
pub struct Prefixes<'a> {
    pub records: &'a str,
    pub operator: &'a str,
}

/// redis's reconnecting connection, or, for a server named apart from its URL's host (which the
/// `ConnectionManager` cannot reach), a multiplexed one (see [`crate::valkey_link`]).
#[derive(Clone)]
enum Conn {
    Managed(ConnectionManager),
    Pinned(MultiplexedConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Pinned(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Pinned(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Pinned(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct KeyStore {
    conn: Conn,
    /// Where record writes are announced to Valkey's change feed, when one follows this server.
    own_changes: Option<OwnChanges>,
}

/// A command refused because the key holds another Valkey type (also inside a pipeline, where
/// the crate wraps the server's error).
fn is_wrong_type(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE") || e.to_string().contains("WRONGTYPE")
}

/// Where the operator keeps a rotation's state (`owner` is `namespace/name`).
pub fn state_key(operator_prefix: &str, owner: &str) -> String {
    format!("{operator_prefix}state:{owner}")
}

/// The operator's marker for the record of `id`: written in the same transaction as the record
/// and deleted in the same transaction as its revocation. A flush or an empty restart takes both;
/// a record missing while its marker is there was deleted on its own (revoked in Sirius). Unlike
/// any other witness of "Valkey kept its data", no write of the operator that lands just after a
/// flush can bring the marker back without its record.
pub fn marker_key(operator_prefix: &str, id: &KeyId) -> String {
    format!("{operator_prefix}registered:{id}")
}

impl KeyStore {
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, KeyStoreError> {
        let client = client(endpoint, redis::ProtocolVersion::RESP2)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = match crate::valkey_endpoint::connect_to(endpoint) {
            None => Conn::Managed(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(crate::valkey_tls::explain)?,
            ),
            Some(resolver) => Conn::Pinned(
                crate::valkey_link::connect(&client, resolver)
                    .await
                    .map_err(crate::valkey_tls::explain)?,
            ),
        };
        Ok(Self {
            conn,
            own_changes: None,
        })
    }

    /// Announces this store's record writes to a change feed (see [`OwnChanges`]).
    pub fn with_own_changes(mut self, own_changes: OwnChanges) -> Self {
        self.own_changes = Some(own_changes);
        self
    }

    fn expect_change(&self, key: &str) {
        if let Some(own) = &self.own_changes {
            own.expect(key);
        }
    }

    fn withdraw_change(&self, key: &str) {
        if let Some(own) = &self.own_changes {
            own.withdraw(key);
        }
    }

    /// Whether the server answers (and takes the endpoint's password).
    pub async fn ping(&self) -> Result<(), KeyStoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn record_key(prefix: &str, id: &KeyId) -> String {
        format!("{prefix}{id}")
    }

    /// Which ids have a valid Sirius record and the operator's marker, and whether the bootstrap
    /// flag is set (one `MGET`: Valkey answers nil for a key of another type).
    pub async fn read_records(
        &self,
        prefixes: Prefixes<'_>,
        ids: &[&KeyId],
    ) -> Result<RecordsRead, KeyStoreError> {
        let mut keys: Vec<String> = ids
            .iter()
            .map(|id| Self::record_key(prefixes.records, id))
            .collect();
        keys.extend(ids.iter().map(|id| marker_key(prefixes.operator, id)));
        keys.push(format!("{}{}", prefixes.records, sirius::BOOTSTRAP_FLAG));
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        if values.len() != keys.len() {
            return Err(KeyStoreError::Unavailable(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "MGET answered a different number of values",
            ))));
        }
        let mut records: Vec<RecordState> = ids
            .iter()
            .zip(&values)
            .map(|(id, value)| match value {
                None => RecordState::Missing,
                Some(v) if sirius::is_record_of(v, id) => RecordState::Valid,
                Some(_) => RecordState::Malformed,
            })
            .collect();
        // A nil is a missing key or one of another type; only data loss costs this second look.
        for (state, key) in records.iter_mut().zip(&keys) {
            if *state == RecordState::Missing {
                let exists: bool = conn.exists(key).await?;
                if exists {
                    *state = RecordState::Malformed;
                }
            }
        }
        Ok(RecordsRead {
            records,
            marked: values[ids.len()..2 * ids.len()]
                .iter()
                .map(Option::is_some)
                .collect(),
            bootstrap_flag: values[2 * ids.len()].is_some(),
        })
    }

    /// Writes a Sirius record unless a valid one exists (an existing one keeps its label and
    /// times); one that is not a valid record of this key (malformed JSON, another id, another
    /// Valkey type) is overwritten. The operator's marker is set in the same transaction, so it
    /// only ever exists alongside the record.
    pub async fn register(
        &self,
        prefixes: Prefixes<'_>,
        key: &RawKey,
        label: &str,
    ) -> Result<bool, KeyStoreError> {
        let id = key.id();
        let json = sirius::record_json(key, label, "apikey-rotator", jiff::Timestamp::now());
        let record = Self::record_key(prefixes.records, &id);
        let mut conn = self.conn.clone();
        let existing: Result<Option<String>, _> = conn.get(&record).await;
        let overwritten = || tracing::warn!(record = %record, "a record that is not a valid Sirius record of its key was overwritten");
        let valid = match existing {
            Ok(Some(v)) if sirius::is_record_of(&v, &id) => true,
            Ok(None) => false,
            Ok(Some(_)) => {
                overwritten();
                false
            }
            Err(e) if is_wrong_type(&e) => {
                overwritten();
                false
            }
            Err(e) => return Err(e.into()),
        };
        if !valid {
            self.expect_change(&record);
        }
        // A valid record is kept (NX): if it vanished since the GET, NX writes it afresh.
        let mut set = redis::cmd("SET");
        set.arg(&record).arg(&json);
        if valid {
            set.arg("NX");
        }
        let (written, ()): (Option<String>, ()) = redis::pipe()
            .atomic()
            .add_command(set)
            .set(marker_key(prefixes.operator, &id), "1")
            .query_async(&mut conn)
            .await
            // A failed command withdraws too: the feed then checks the change (harmless if made).
            .inspect_err(|_| self.withdraw_change(&record))?;
        Ok(written.is_some())
    }

    pub async fn set_bootstrap_flag(&self, prefix: &str) -> Result<(), KeyStoreError> {
        let flag = format!("{prefix}{}", sirius::BOOTSTRAP_FLAG);
        self.expect_change(&flag);
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(&flag, "true")
            .await
            .inspect_err(|_| self.withdraw_change(&flag))?;
        Ok(())
    }

    /// Deletes the record and the operator's marker together.
    pub async fn revoke(&self, prefixes: Prefixes<'_>, id: &KeyId) -> Result<(), KeyStoreError> {
        let record = Self::record_key(prefixes.records, id);
        self.expect_change(&record);
        let mut conn = self.conn.clone();
        let (deleted, _): (i64, i64) = redis::pipe()
            .atomic()
            .del(&record)
            .del(marker_key(prefixes.operator, id))
            .query_async(&mut conn)
            .await
            .inspect_err(|_| self.withdraw_change(&record))?;
        if deleted == 0 {
            self.withdraw_change(&record);
        }
        Ok(())
    }

    /// The rotation's current state, for anyone reading Valkey (never a raw key).
    pub async fn write_state(
        &self,
        operator_prefix: &str,
        owner: &str,
        state_json: &str,
    ) -> Result<(), KeyStoreError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(state_key(operator_prefix, owner), state_json)
            .await?;
        Ok(())
    }

    /// Removes this rotation's state and history (its ApiKeyRotation is gone for good).
    pub async fn forget_owner(
        &self,
        operator_prefix: &str,
        owner: &str,
        keep_history: bool,
    ) -> Result<(), KeyStoreError> {
        let mut keys = vec![state_key(operator_prefix, owner)];
        if !keep_history {
            keys.push(format!("{operator_prefix}history:{owner}"));
        }
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(keys).await?;
        Ok(())
    }

    /// Adds a finished rotation to the bounded history (a hash keyed by revision, so a repeat of
    /// the same revision after a crash overwrites instead of duplicating).
    pub async fn record_history(
        &self,
        operator_prefix: &str,
        owner: &str,
        revision: u64,
        entry_json: &str,
        limit: u32,
    ) -> Result<(), KeyStoreError> {
        let key = format!("{operator_prefix}history:{owner}");
        let mut conn = self.conn.clone();
        let written: Result<((), Vec<String>), _> = redis::pipe()
            .hset(&key, revision, entry_json)
            .hkeys(&key)
            .query_async(&mut conn)
            .await;
        let fields = match written {
            Ok((_, fields)) => fields,
            // Our own key, holding something else: history is best kept, never a blocker.
            Err(e) if is_wrong_type(&e) => {
                tracing::warn!(history = %key, "the history key held another Valkey type; replaced it");
                let _: ((), ()) = redis::pipe()
                    .del(&key)
                    .hset(&key, revision, entry_json)
                    .query_async(&mut conn)
                    .await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let oldest_kept = revision.saturating_sub(limit as u64) + 1;
        // A field that is no revision (written by hand) is dropped with the expired ones.
        let expired: Vec<String> = fields
            .into_iter()
            .filter(|f| f.parse::<u64>().map_or(true, |r| r < oldest_kept))
            .collect();
        if !expired.is_empty() {
            let _: i64 = conn.hdel(&key, expired).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_never_prints_its_password() {
        let endpoint = Endpoint {
            url: "redis://sirius:in-the-url@valkey:6379/0".into(),
            password: Some("from-the-secret".into()),
            insecure_skip_tls_verify: false,
            tls: None,
            server_name: None,
        };
        let printed = format!("{endpoint:?} {endpoint:#?}");
        assert!(!printed.contains("in-the-url"), "{printed}");
        assert!(!printed.contains("from-the-secret"), "{printed}");
        assert!(
            printed.contains("redis://sirius:***@valkey:6379/0"),
            "{printed}"
        );
    }

    #[test]
    fn url_errors_do_not_quote_the_password() {
        for url in [
            "redis://u:s3cret@valkey:notaport",
            "redis://u:s3cret@valkey:6379/notadb",
            "redis://u:s3cret@",
            "rediss://u:s3cret@valkey:6379/#s3cret",
        ] {
            let e = check_url(url).unwrap_err();
            let printed = format!("{e} {e:?}");
            assert!(!printed.contains("s3cret"), "{url}: {printed}");
        }
    }
}
