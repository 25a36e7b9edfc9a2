//! The finalizer's clean-up when an ApiKeyRotation is deleted (`deletionPolicy`).

use super::{Error, Reconciliation, key_of};
use crate::crd::DeletionPolicy;
use crate::key::KeyId;
use crate::observe;
use crate::rotation::{EventNote, Reason};
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use std::time::{Duration, Instant};

impl Reconciliation<'_> {
    /// The ApiKeyRotation is being deleted. `Retain` never revokes anything: the consumers' Secret
    /// and every key this rotation made valid stay valid (a rotation in flight stops where it is,
    /// with both keys accepted), and only its Valkey state entry is dropped (best effort, so an
    /// unreachable Valkey never blocks a deletion). `Revoke` deletes the records of every key it
    /// manages, then its state and history, and retries until Valkey confirms (for a bounded
    /// time while Valkey is out of reach: see [`Self::revoke_on_delete`]).
    /// A deletion reads the Valkey password and TLS Secrets afresh: one deleted a moment ago (with
    /// its namespace) is not used from what the watches last showed.
    pub(super) async fn clean_up(self) -> Result<Requeue, Error> {
        let spec = &self.akr.spec;
        let owner = key_of(self.akr);
        self.ctx.metrics.forget(&self.ns, &self.akr.name_any());
        match spec.deletion_policy {
            DeletionPolicy::Retain => {
                let forgotten = async {
                    let store = self
                        .ctx
                        .keystore(&owner, &self.endpoint(true).await?)
                        .await?;
                    store
                        .forget_owner(&spec.valkey.operator_prefix, &owner, true)
                        .await?;
                    Ok::<_, Error>(())
                };
                if let Err(e) = forgotten.await {
                    tracing::warn!(rotation = %owner, error = %e, "could not drop the rotation's Valkey state; its keys stay valid either way");
                }
                self.publish(&EventNote {
                    reason: Reason::DeletionRetainedKeys,
                    message: format!(
                        "Deleted with deletionPolicy Retain: Secret {} and its key stay valid; nothing was revoked.",
                        spec.secret.name
                    ),
                })
                .await;
            }
            DeletionPolicy::Revoke => self.revoke_on_delete(&owner).await?,
        }
        self.ctx.forget_rotation(&owner);
        Ok(Requeue::await_change())
    }

    /// `deletionPolicy: Revoke`: every key this rotation manages revoked, then its state and
    /// history removed. A Valkey out of reach (down, or its password or TLS Secret deleted with
    /// the namespace) is retried with back-off, each retry with a fresh connection, until
    /// Valkey has been out of reach for the operator's `--revoke-on-delete-timeout-seconds`
    /// (300 by default, counted from the first failure this process saw): then the finalizer is
    /// released anyway, and the keys left valid are named (a Warning Event where the namespace
    /// still takes one, and the log), so a deletion, or a namespace's, always ends. Any other
    /// error (the Kubernetes API, a refused Secret) is retried without end, as before.
    async fn revoke_on_delete(&self, owner: &str) -> Result<(), Error> {
        let spec = &self.akr.spec;
        let ids = self.keys_to_revoke().await?;
        // By uid: a rotation deleted and made again under its name starts afresh.
        let progress_key = self.akr.uid().unwrap_or_else(|| owner.to_string());
        let mut revoked = Vec::new();
        let mut endpoint = None;
        let result = async {
            let reached = self.endpoint(true).await?;
            let store = self.ctx.keystore(owner, endpoint.insert(reached)).await?;
            for id in &ids {
                store.revoke(spec.valkey.prefixes(), id).await?;
                revoked.push(id.0.clone());
            }
            store
                .forget_owner(&spec.valkey.operator_prefix, owner, false)
                .await?;
            Ok::<_, Error>(())
        }
        .await;
        let e = match result {
            Ok(()) => {
                self.ctx.deletions.lock().unwrap().remove(&progress_key);
                let shorts: Vec<&str> = ids.iter().map(KeyId::short).collect();
                self.publish(&EventNote {
                    reason: Reason::DeletionRevokedKeys,
                    message: format!(
                        "Deleted with deletionPolicy Revoke: revoked key(s) {} and removed the rotation's state and history.",
                        shorts.join(", ")
                    ),
                })
                .await;
                return Ok(());
            }
            Err(e) => e,
        };
        let (since, left) = {
            let mut deletions = self.ctx.deletions.lock().unwrap();
            let progress = deletions.entry(progress_key.clone()).or_default();
            // Valkey answered this attempt, or something else failed: the outage clock restarts.
            if !revoked.is_empty() || !e.is_valkey() {
                progress.unreachable_since = None;
            }
            progress.revoked.extend(revoked);
            if !e.is_valkey() {
                return Err(e);
            }
            let since = *progress.unreachable_since.get_or_insert_with(Instant::now);
            let left: Vec<KeyId> = (ids.iter())
                .filter(|id| !progress.revoked.contains(&id.0))
                .cloned()
                .collect();
            (since, left)
        };
        // The next attempt connects afresh (a store's connection may be the thing that broke).
        if let Some(endpoint) = &endpoint {
            self.ctx.forget_keystore(endpoint);
        }
        let timeout = self.ctx.revoke_on_delete_timeout;
        if since.elapsed() < timeout {
            return Err(e);
        }
        self.ctx.deletions.lock().unwrap().remove(&progress_key);
        self.release_unrevoked(owner, &left, &e).await;
        Ok(())
    }

    /// The `Revoke` deletion lets go with `left` still valid: says which, and why.
    async fn release_unrevoked(&self, owner: &str, left: &[KeyId], e: &Error) {
        let timeout = self.ctx.revoke_on_delete_timeout.as_secs();
        let shorts: Vec<&str> = left.iter().map(KeyId::short).collect();
        let message = if left.is_empty() {
            format!(
                "Deleted with deletionPolicy Revoke: every key was revoked, but the rotation's state and history could not be removed from Valkey for {timeout}s ({e}); released anyway."
            )
        } else {
            format!(
                "Deleted with deletionPolicy Revoke, but Valkey was out of reach or refused the operator for {timeout}s ({e}); released anyway, so key(s) {} stay valid: delete their records (apikey:<id>) by hand.",
                shorts.join(", ")
            )
        };
        let ids: Vec<&str> = left.iter().map(KeyId::as_str).collect();
        tracing::error!(rotation = %owner, keys_left_valid = ?ids, error = %e, "deletion released without revoking every key");
        self.publish(&EventNote {
            reason: Reason::DeletionRevokeIncomplete,
            message,
        })
        .await;
    }

    /// Every key this rotation manages: the vault's (if the garbage collector has not taken it
    /// yet: it also knows a key minted just before a crash, which the status may not name yet)
    /// and those the status names.
    async fn keys_to_revoke(&self) -> Result<Vec<KeyId>, Error> {
        let mut ids: Vec<KeyId> = Vec::new();
        if let Some(secret) = self.secrets.get_opt(&observe::vault_name(self.akr)).await?
            && let Ok(Some(vault)) = observe::parse_vault(&secret)
        {
            ids.push(vault.current_id.clone());
            ids.extend(vault.pending.map(|(k, _)| k.id()));
        }
        let status = &self.status;
        let rotation = status.current_rotation.as_ref();
        let named = [
            status.active_key_id.as_ref(),
            rotation.and_then(|r| r.new_key_id.as_ref()),
            rotation.and_then(|r| r.old_key_id.as_ref()),
        ];
        ids.extend(
            named
                .into_iter()
                .flatten()
                .filter_map(|id| KeyId::parse(id)),
        );
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// How long a `Revoke` deletion tries a Valkey it cannot reach, by default (see
/// [`Reconciliation::revoke_on_delete`]).
pub const DEFAULT_REVOKE_ON_DELETE_TIMEOUT: Duration = Duration::from_secs(300);
