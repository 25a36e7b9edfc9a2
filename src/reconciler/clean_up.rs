//! The finalizer's clean-up when an ApiKeyRotation is deleted (`deletionPolicy`).

use super::{Error, Reconciliation, key_of};
use crate::crd::DeletionPolicy;
use crate::key::KeyId;
use crate::observe;
use crate::rotation::{EventNote, Reason};
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;

impl Reconciliation<'_> {
    /// The ApiKeyRotation is being deleted. `Retain` never revokes anything: the consumers' Secret
    /// and every key this rotation made valid stay valid (a rotation in flight stops where it is,
    /// with both keys accepted), and only its Valkey state entry is dropped (best effort, so an
    /// unreachable Valkey never blocks a deletion). `Revoke` deletes the records of every key it
    /// manages, then its state and history, and retries until Valkey confirms.
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
            DeletionPolicy::Revoke => {
                let store = self.ctx.keystore(&owner, &self.endpoint().await?).await?;
                let mut ids: Vec<KeyId> = Vec::new();
                // The vault (if the garbage collector has not taken it yet) also knows a key minted
                // just before a crash, which the status may not name yet.
                if let Some(secret) = self.secrets.get_opt(&observe::vault_name(self.akr)).await?
                    && let Ok(Some(vault)) = observe::parse_vault(&secret)
                {
                    ids.push(vault.current_id.clone());
                    ids.extend(vault.pending.map(|(k, _)| k.id()));
                }
                let status = &self.status;
                let named = [
                    status.active_key_id.as_ref(),
                    status
                        .current_rotation
                        .as_ref()
                        .and_then(|r| r.new_key_id.as_ref()),
                    status
                        .current_rotation
                        .as_ref()
                        .and_then(|r| r.old_key_id.as_ref()),
                ];
                ids.extend(
                    named
                        .into_iter()
                        .flatten()
                        .filter_map(|id| KeyId::parse(id)),
                );
                ids.sort();
                ids.dedup();
                for id in &ids {
                    store.revoke(spec.valkey.prefixes(), id).await?;
                }
                store
                    .forget_owner(&spec.valkey.operator_prefix, &owner, false)
                    .await?;
                let shorts: Vec<String> = ids.iter().map(|id| id.short().to_string()).collect();
                self.publish(&EventNote {
                    reason: Reason::DeletionRevokedKeys,
                    message: format!(
                        "Deleted with deletionPolicy Revoke: revoked key(s) {} and removed the rotation's state and history.",
                        shorts.join(", ")
                    ),
                })
                .await;
            }
        }
        self.ctx.forget_rotation(&owner);
        Ok(Requeue::await_change())
    }
}
