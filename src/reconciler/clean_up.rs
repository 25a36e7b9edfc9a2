//! The finalizer's clean-up when an ApiKeyRotation is deleted (`deletionPolicy`).

use super::{Error, Reconciliation, key_of};
use crate::crd::DeletionPolicy;
use crate::key::KeyId;
use crate::observe;
use crate::rotation::{EventNote, Reason};
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use std::time::Duration;

impl Reconciliation<'_> {
    /// The ApiKeyRotation is being deleted. `Retain` never revokes anything: the consumers' Secret
    /// and every key this rotation made valid stay valid (a rotation in flight stops where it is,
    /// with both keys accepted), and only its Valkey state entry is dropped (best effort, so an
    /// unreachable Valkey never blocks a deletion). `Revoke` deletes the records of every key it
    /// manages, then its state and history, and retries until Valkey confirms, for up to
    /// [`REVOKE_ON_DELETE_BOUND`] after the deletion began.
    pub(super) async fn clean_up(self) -> Result<Requeue, Error> {
        let spec = &self.akr.spec;
        let owner = key_of(self.akr);
        self.ctx.metrics.forget(&self.ns, &self.akr.name_any());
        match spec.deletion_policy {
            DeletionPolicy::Retain => {
                let forgotten = async {
                    let store = self.ctx.keystore(&owner, &self.endpoint().await?).await?;
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
    /// history removed. Valkey out of reach (down, or its password Secret deleted with the
    /// namespace) is retried with back-off, but only until [`REVOKE_ON_DELETE_BOUND`] after the
    /// deletion began: then the finalizer is released anyway, and the keys left valid are named
    /// (a Warning Event where the namespace still takes one, and the log), so a deletion, or a
    /// namespace's, always ends.
    async fn revoke_on_delete(&self, owner: &str) -> Result<(), Error> {
        let spec = &self.akr.spec;
        let ids = self.keys_to_revoke().await?;
        let shorts: Vec<String> = ids.iter().map(|id| id.short().to_string()).collect();
        let revoked = async {
            let store = self.ctx.keystore(owner, &self.endpoint().await?).await?;
            for id in &ids {
                store.revoke(spec.valkey.prefixes(), id).await?;
            }
            store
                .forget_owner(&spec.valkey.operator_prefix, owner, false)
                .await?;
            Ok::<_, Error>(())
        };
        match revoked.await {
            Ok(()) => {
                self.publish(&EventNote {
                    reason: Reason::DeletionRevokedKeys,
                    message: format!(
                        "Deleted with deletionPolicy Revoke: revoked key(s) {} and removed the rotation's state and history.",
                        shorts.join(", ")
                    ),
                })
                .await;
                Ok(())
            }
            Err(e) if self.deleting_for() >= REVOKE_ON_DELETE_BOUND => {
                let message = format!(
                    "Deleted with deletionPolicy Revoke, but Valkey could not be reached for {}s ({}); released anyway, so key(s) {} stay valid: delete their records (apikey:<id>) by hand.",
                    REVOKE_ON_DELETE_BOUND.as_secs(),
                    e,
                    shorts.join(", ")
                );
                let ids: Vec<&str> = ids.iter().map(KeyId::as_str).collect();
                tracing::error!(rotation = %owner, keys = ?ids, error = %e, "deletion released without revoking");
                self.publish(&EventNote {
                    reason: Reason::DeletionRevokeIncomplete,
                    message,
                })
                .await;
                Ok(())
            }
            Err(e) => Err(e),
        }
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

    /// How long ago the deletion began (by the API server's stamp and the operator's clock).
    fn deleting_for(&self) -> Duration {
        let since = self.akr.metadata.deletion_timestamp.as_ref().map(|t| t.0);
        let now = self.ctx.clock.now();
        since
            .map(|t| now.duration_since(t))
            .filter(|d| d.is_positive())
            .map(|d| Duration::from_millis(d.as_millis() as u64))
            .unwrap_or_default()
    }
}

/// How long a `Revoke` deletion waits for Valkey before it lets go (see
/// [`Reconciliation::revoke_on_delete`]).
pub const REVOKE_ON_DELETE_BOUND: Duration = Duration::from_secs(300);
