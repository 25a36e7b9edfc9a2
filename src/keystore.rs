//! Sirius's key store in Valkey: the key records (by SHA-256 id only) and the operator's own
//! state and history under a separate prefix. The raw key never reaches Valkey: the record holds
//! its id and Sirius's display prefix, exactly as the API writes it.

use crate::key::{KeyId, RawKey};
use crate::sirius;
use crate::valkey_watch::OwnChanges;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

#[derive(thiserror::Error)]
pub enum KeyStoreError {
    // The redis crate's messages do not quote the URL today; they are redacted anyway, so a
    // future one that does cannot leak a password.
    #[error("Valkey URL is invalid: {}", crate::redact::text(.0))]
    InvalidUrl(String),
    #[error("Valkey is unavailable: {}", crate::redact::text(&.0.to_string()))]
    Unavailable(#[from] redis::RedisError),
}

/// As its (redacted) message: the wrapped errors' own `Debug` is not redacted.
impl std::fmt::Debug for KeyStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStoreError({self})")
    }
}

/// Where a rotation's records live.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub url: String,
    pub password: Option<String>,
    pub insecure_skip_tls_verify: bool,
}

/// Only the redacted URL: the password (in the URL or from a Secret) never prints.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &crate::redact::url(&self.url))
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct KeyStore {
    conn: ConnectionManager,
    /// Where record writes are announced to Valkey's change feed, when one follows this server.
    own_changes: Option<OwnChanges>,
}

/// Accepts `valkey://` and `valkeys://` as aliases of `redis://` and `rediss://`.
pub fn normalize_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("valkeys://") {
        format!("rediss://{rest}")
    } else if let Some(rest) = url.strip_prefix("valkey://") {
        format!("redis://{rest}")
    } else {
        url.to_string()
    }
}

/// Parses the URL as the client will, so a bad one is reported as a spec error.
pub fn check_url(url: &str) -> Result<(), KeyStoreError> {
    redis::Client::open(normalize_url(url))
        .map(|_| ())
        .map_err(|e| KeyStoreError::InvalidUrl(e.to_string()))
}

/// A client for the endpoint speaking `protocol` (RESP3 is needed for pushed invalidations).
pub fn client(
    endpoint: &Endpoint,
    protocol: redis::ProtocolVersion,
) -> Result<redis::Client, KeyStoreError> {
    let mut url = normalize_url(&endpoint.url);
    if endpoint.insecure_skip_tls_verify && url.starts_with("rediss://") && !url.contains('#') {
        url.push_str("#insecure");
    }
    let client =
        redis::Client::open(url.as_str()).map_err(|e| KeyStoreError::InvalidUrl(e.to_string()))?;
    let info = client.get_connection_info().clone();
    let mut settings = info.redis_settings().clone().set_protocol(protocol);
    if let Some(password) = &endpoint.password {
        settings = settings.set_password(password);
    }
    redis::Client::open(info.set_redis_settings(settings))
        .map_err(|e| KeyStoreError::InvalidUrl(e.to_string()))
}

impl KeyStore {
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, KeyStoreError> {
        let client = client(endpoint, redis::ProtocolVersion::RESP2)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config).await?;
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

    fn record_key(prefix: &str, id: &KeyId) -> String {
        format!("{prefix}{id}")
    }

    /// Whether each id has a record, then whether the bootstrap flag is set (one round trip).
    pub async fn records_exist(
        &self,
        prefix: &str,
        ids: &[&KeyId],
    ) -> Result<Vec<bool>, KeyStoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.exists(Self::record_key(prefix, id));
        }
        pipe.exists(format!("{prefix}{}", sirius::BOOTSTRAP_FLAG));
        let mut conn = self.conn.clone();
        Ok(pipe.query_async(&mut conn).await?)
    }

    /// Writes a Sirius record unless one exists (an existing one keeps its label and times).
    pub async fn register(
        &self,
        prefix: &str,
        key: &RawKey,
        label: &str,
    ) -> Result<bool, KeyStoreError> {
        let json = sirius::record_json(key, label, "apikey-rotator", jiff::Timestamp::now());
        let record = Self::record_key(prefix, &key.id());
        self.expect_change(&record);
        let mut conn = self.conn.clone();
        // A failed command withdraws too: the feed then checks the change (harmless if it was made).
        let written: bool = redis::cmd("SET")
            .arg(&record)
            .arg(json)
            .arg("NX")
            .query_async::<Option<String>>(&mut conn)
            .await
            .inspect_err(|_| self.withdraw_change(&record))?
            .is_some();
        if !written {
            self.withdraw_change(&record);
        }
        Ok(written)
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

    pub async fn revoke(&self, prefix: &str, id: &KeyId) -> Result<(), KeyStoreError> {
        let record = Self::record_key(prefix, id);
        self.expect_change(&record);
        let mut conn = self.conn.clone();
        let deleted: i64 = conn
            .del(&record)
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
            .set(format!("{operator_prefix}state:{owner}"), state_json)
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
        let mut keys = vec![format!("{operator_prefix}state:{owner}")];
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
        let (_, revisions): ((), Vec<u64>) = redis::pipe()
            .hset(&key, revision, entry_json)
            .hkeys(&key)
            .query_async(&mut conn)
            .await?;
        let oldest_kept = revision.saturating_sub(limit as u64) + 1;
        let expired: Vec<u64> = revisions.into_iter().filter(|r| *r < oldest_kept).collect();
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
