//! Performing the one action the machine decided: Secret writes, Valkey writes, pod-template
//! stamps.

use super::{Error, FIELD_MANAGER, Reconciliation, key_of};
use crate::crd::{
    MANAGED_BY_LABEL, ROLLBACK_ANNOTATION, ROLLOUT_ANNOTATION, RolloutTarget,
    SECRET_RESTORES_ANNOTATION,
};
use crate::key::{KeyId, RawKey};
use crate::keystore::KeyStore;
use crate::observe;
use crate::observe::{PENDING_REVISION_ANNOTATION, VAULT_CURRENT, VAULT_PENDING, Vault};
use crate::rotation::{Action, Plan};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;

pub(super) fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// A vault write that lost a race (409) is not an error: the loop observes again and decides on
/// what the other writer left, so a key is never minted twice.
pub(super) fn tolerate_conflict<T>(result: Result<T, kube::Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Reconciliation<'_> {
    pub(super) async fn perform(
        &self,
        plan: &Plan,
        store: &KeyStore,
        vault: Option<&Vault>,
        consumer_key: Option<&RawKey>,
    ) -> Result<(), Error> {
        let spec = &self.planned.spec;
        let prefix = &spec.valkey.record_prefix;
        let prefixes = spec.valkey.prefixes();
        let need_vault =
            || vault.ok_or_else(|| Error::Corrupt("the vault Secret disappeared".into()));
        let need_current = |vault: &'_ Vault| -> Result<RawKey, Error> {
            vault
                .current
                .clone()
                .ok_or_else(|| Error::Corrupt("the vault lost the current key's raw value".into()))
        };
        match &plan.action {
            // Performed by `drive`, which decides again on the answer.
            Action::Probe { .. } | Action::QueryGate | Action::CheckPods => {}
            Action::CreateVault { adopt } => {
                let key = match (adopt, consumer_key) {
                    (true, Some(k)) => k.clone(),
                    _ => self.mint()?,
                };
                self.create_vault(&key).await?;
            }
            Action::RestoreVault { as_pending } => {
                let key = consumer_key
                    .ok_or_else(|| Error::Corrupt("the consumers' Secret lost its key".into()))?;
                self.restore_vault(key, as_pending.as_ref()).await?;
            }
            Action::Register { current, pending } => {
                let vault = need_vault()?;
                if let (true, Some(key)) = (*current, &vault.current) {
                    store.register(prefixes, key, &spec.key.label).await?;
                }
                if let (true, Some((key, _))) = (*pending, &vault.pending) {
                    store.register(prefixes, key, &spec.key.label).await?;
                }
            }
            Action::MintPending { revision } => {
                let vault = need_vault()?;
                let key = self.mint()?;
                let mut data = BTreeMap::new();
                data.insert(VAULT_CURRENT.to_string(), need_current(vault)?);
                data.insert(VAULT_PENDING.to_string(), key);
                self.replace_vault(vault, data, Some(*revision)).await?;
            }
            Action::WriteConsumer { pending } => {
                let vault = need_vault()?;
                let key = match (pending, &vault.pending) {
                    (true, Some((k, _))) => k.clone(),
                    _ => need_current(vault)?,
                };
                self.write_consumer(&key).await?;
            }
            Action::Roll {
                index,
                key_id,
                rollback_of,
                secret_restores,
            } => {
                let target = &spec.targets[*index];
                self.stamp_template(target, key_id, *rollback_of, *secret_restores)
                    .await?;
            }
            Action::Revoke { key_id } => store.revoke(prefixes, key_id).await?,
            Action::SetBootstrapFlag => store.set_bootstrap_flag(prefix).await?,
            Action::Promote => {
                let vault = need_vault()?;
                let Some((pending, _)) = &vault.pending else {
                    return Ok(());
                };
                let mut data = BTreeMap::new();
                data.insert(VAULT_CURRENT.to_string(), pending.clone());
                self.replace_vault(vault, data, None).await?;
            }
            Action::DropPending => {
                let vault = need_vault()?;
                if vault.pending.is_some() {
                    let data = BTreeMap::from([(VAULT_CURRENT.to_string(), need_current(vault)?)]);
                    self.replace_vault(vault, data, None).await?;
                }
            }
            Action::RecordHistory { revision, result } => {
                self.record_history(store, *revision, result).await?;
            }
            Action::StatusOnly | Action::Wait { .. } => {}
        }
        Ok(())
    }

    /// Stamps the target's pod template with the key's id (and the rollback's and restores'
    /// markers), so its pods restart.
    async fn stamp_template(
        &self,
        target: &RolloutTarget,
        key_id: &KeyId,
        rollback_of: Option<u64>,
        secret_restores: Option<u32>,
    ) -> Result<(), Error> {
        // A marker the roll leaves out is dropped by server-side apply.
        let mut annotations = json!({ROLLOUT_ANNOTATION: key_id.as_str()});
        if let Some(revision) = rollback_of {
            annotations[ROLLBACK_ANNOTATION] = json!(revision.to_string());
        }
        if let Some(restores) = secret_restores {
            annotations[SECRET_RESTORES_ANNOTATION] = json!(restores.to_string());
        }
        let world = &self.ctx.world;
        let mark = world.before_target_write(&self.ns, target);
        let client = &self.ctx.client;
        let (view, rv) =
            crate::workload::stamp(client, &self.ns, target, annotations, FIELD_MANAGER).await?;
        world.target_written(mark, view, rv);
        Ok(())
    }

    /// The finished rotation's entry in the bounded Valkey history.
    async fn record_history(
        &self,
        store: &KeyStore,
        revision: u64,
        result: &str,
    ) -> Result<(), Error> {
        let spec = &self.planned.spec;
        let r = self.status.current_rotation.as_ref();
        let entry = json!({
            "revision": revision,
            "result": result,
            "trigger": r.map(|r| r.trigger.clone()),
            "oldKeyId": r.and_then(|r| r.old_key_id.clone()),
            "newKeyId": r.and_then(|r| r.new_key_id.clone()),
            "startedAt": r.map(|r| r.started_at.clone()),
            "finishedAt": self.ctx.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "failure": r.and_then(|r| r.rolling_back.clone()),
            "verifiedBeforeRevokeAt": r.and_then(|r| r.verified_before_revoke_at.clone()),
            "oldKeyRefusedAt": r.and_then(|r| r.old_key_refused_at.clone()),
            "targets": r.map(|r| r.targets.clone()),
        });
        let owner = key_of(self.akr);
        let prefix = &spec.valkey.operator_prefix;
        (store)
            .record_history(
                prefix,
                &owner,
                revision,
                &entry.to_string(),
                spec.history_limit,
            )
            .await?;
        Ok(())
    }

    pub(super) fn mint(&self) -> Result<RawKey, Error> {
        RawKey::mint(
            &self.akr.spec.key.prefix,
            self.akr.spec.key.random_bytes as usize,
        )
        .map_err(|e| Error::Random(e.to_string()))
    }

    pub(super) fn owned_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.ns.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                self.akr.name_any(),
            )])),
            owner_references: self.akr.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        }
    }

    pub(super) async fn create_vault(&self, key: &RawKey) -> Result<(), Error> {
        let secret = Secret {
            metadata: self.owned_meta(observe::vault_name(self.akr)),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                VAULT_CURRENT.to_string(),
                ByteString(key.expose().as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        // Another writer got there first: the next observation shows its key.
        tolerate_conflict(self.secrets.create(&write_params(), &secret).await)
    }

    /// Writes a lost vault back from the consumers' key: replacing an emptied one (only if it is
    /// unchanged since it was read), else creating it (a 409 means another writer got there first).
    pub(super) async fn restore_vault(
        &self,
        key: &RawKey,
        as_pending: Option<&(u64, KeyId)>,
    ) -> Result<(), Error> {
        let mut meta = self.owned_meta(observe::vault_name(self.akr));
        let slot = match as_pending {
            None => VAULT_CURRENT,
            Some((revision, lost_current)) => {
                meta.annotations = Some(BTreeMap::from([
                    (
                        PENDING_REVISION_ANNOTATION.to_string(),
                        revision.to_string(),
                    ),
                    (
                        observe::LOST_CURRENT_ANNOTATION.to_string(),
                        lost_current.to_string(),
                    ),
                ]));
                VAULT_PENDING
            }
        };
        let emptied = self.emptied_vault.lock().unwrap().clone();
        meta.resource_version = emptied.clone();
        let secret = Secret {
            metadata: meta,
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                slot.to_string(),
                ByteString(key.expose().as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        let name = observe::vault_name(self.akr);
        tolerate_conflict(match emptied {
            Some(_) => self.secrets.replace(&name, &write_params(), &secret).await,
            None => self.secrets.create(&write_params(), &secret).await,
        })
    }

    /// Replaces the vault's data, only if it is unchanged since it was read (a 409 means someone
    /// else wrote it: the next observation decides again, so a key is never minted twice).
    pub(super) async fn replace_vault(
        &self,
        vault: &Vault,
        data: BTreeMap<String, RawKey>,
        pending_revision: Option<u64>,
    ) -> Result<(), Error> {
        let mut meta = self.owned_meta(observe::vault_name(self.akr));
        meta.resource_version = vault.resource_version.clone();
        if let Some(r) = pending_revision {
            meta.annotations = Some(BTreeMap::from([(
                PENDING_REVISION_ANNOTATION.to_string(),
                r.to_string(),
            )]));
        }
        let secret = Secret {
            metadata: meta,
            type_: Some("Opaque".into()),
            data: Some(
                data.into_iter()
                    .map(|(k, v)| (k, ByteString(v.expose().as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let name = observe::vault_name(self.akr);
        let mark = self.ctx.world.before_secret_write(&self.ns, &name);
        match self.secrets.replace(&name, &write_params(), &secret).await {
            Ok(written) => {
                self.ctx.world.secret_written(mark, written);
                Ok(())
            }
            conflict => tolerate_conflict(conflict),
        }
    }

    /// Server-side apply of the one data key we own; the Secret's other keys are untouched.
    pub(super) async fn write_consumer(&self, key: &RawKey) -> Result<(), Error> {
        let spec = &self.planned.spec;
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": spec.secret.name,
                "labels": {MANAGED_BY_LABEL: self.akr.name_any()},
            },
            "data": {spec.secret.key.as_str(): ByteString(key.expose().as_bytes().to_vec())},
        });
        let mark = (self.ctx.world).before_secret_write(&self.ns, &spec.secret.name);
        let written = (self.secrets)
            .patch(
                &spec.secret.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.ctx.world.secret_written(mark, written);
        Ok(())
    }
}
