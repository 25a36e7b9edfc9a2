//! Reading the world for the machine: the vault, the consumers' Secret, the targets, the Valkey
//! records (from a short-lived cache the operator's own writes keep true), the pods at the gate
//! and the verification probe.

use super::{Error, FIELD_MANAGER, Reconciliation, key_of};
use crate::crd::{OUTSIDE_WINDOWS_ANNOTATION, TRIGGER_ANNOTATION};
use crate::key::RawKey;
use crate::keystore::{Endpoint, KeyStore};
use crate::observe::Vault;
use crate::rotation::{Action, Observation, ProbeOutcome, ProbeStage, RecordView};
use crate::{observe, rotation};
use kube::ResourceExt;
use std::time::Duration;

/// How long a Valkey record view is reused (bounds, with the resync, how long data loss can go
/// unnoticed). Decisions that revoke or promote always read afresh.
const RECORDS_TTL: Duration = Duration::from_secs(5);

impl Reconciliation<'_> {
    /// Resolves the spec's selectors when a rotation could start (none is in flight), from the
    /// target watches while they are in step, else by listing; the plan follows.
    pub(super) async fn select(&mut self) -> Result<(), Error> {
        let in_flight =
            (self.status.current_rotation.as_ref()).is_some_and(|r| !r.targets.is_empty());
        if in_flight || self.akr.spec.targets.iter().all(|t| t.selector.is_none()) {
            return Ok(());
        }
        let mut selected = Vec::with_capacity(self.akr.spec.targets.len());
        for t in &self.akr.spec.targets {
            let Some(selector) = &t.selector else {
                selected.push(None);
                continue;
            };
            // The spec checks refused a selector that does not parse.
            let Ok(selector) = kube::core::Selector::try_from(selector.clone()) else {
                selected.push(Some(Vec::new()));
                continue;
            };
            let names = match self.ctx.world.selected(t.kind, &self.ns, &selector) {
                Some(names) => names,
                None => {
                    let limit = crate::plan::MAX_PLANNED_TARGETS;
                    let client = &self.ctx.client;
                    crate::workload::list_selected(client, &self.ns, t.kind, &selector, limit)
                        .await?
                }
            };
            selected.push(Some(names));
        }
        self.selected = selected;
        self.replan();
        Ok(())
    }

    /// The plan follows the status (and the selection).
    pub(super) fn replan(&mut self) {
        let status = &self.status;
        self.planned = crate::plan::planned(&self.akr.spec, status, &self.selected);
    }

    /// The Valkey endpoint with its password and TLS material; `fresh` reads their Secrets from
    /// the API rather than reusing what the watches vouch for.
    pub(super) async fn endpoint(&self, fresh: bool) -> Result<Endpoint, Error> {
        let v = &self.akr.spec.valkey;
        // The Secrets named here are watched, so that a copy read once is reused while the watch
        // shows it unchanged.
        let tls_names: Vec<String> = v
            .tls
            .iter()
            .flat_map(crate::valkey_tls::secret_names)
            .collect();
        let referenced =
            (v.password_secret_ref.iter().map(|r| r.name.clone())).chain(tls_names.iter().cloned());
        (self.ctx.world).reads_secrets(&key_of(self.akr), &self.ns, referenced);
        let world = &self.ctx.world;
        let password = match &v.password_secret_ref {
            None => None,
            Some(r) => {
                let secret = (world
                    .secret(&self.secrets, &self.ns, &r.name, fresh)
                    .await?)
                    .ok_or_else(|| Error::Password(format!("Secret {} not found", r.name)))?;
                crate::trust::password_secret_problem(
                    &secret,
                    self.akr,
                    self.ctx.rotations.state(),
                )
                .map_or(Ok(()), |why| Err(Error::SecretNotPermitted(why)))?;
                let value = observe::secret_value(&secret, &r.key).ok_or_else(|| {
                    Error::Password(format!("Secret {} has no key {}", r.name, r.key))
                })?;
                Some(value.expose().to_string())
            }
        };
        let tls = match &v.tls {
            None => None,
            Some(tls) => {
                let mut found = std::collections::HashMap::new();
                for name in tls_names {
                    let secret = world.secret(&self.secrets, &self.ns, &name, fresh).await?;
                    found.insert(name, secret);
                }
                Some(crate::valkey_tls::read(
                    |name| found.get(name).cloned().flatten(),
                    tls,
                )?)
            }
        };
        Ok(Endpoint {
            url: v.url.clone(),
            password,
            insecure_skip_tls_verify: v.insecure_skip_tls_verify,
            tls,
            server_name: v.tls.as_ref().and_then(|t| t.server_name.clone()),
        })
    }

    /// The namespace's pods that read the consumers' Secret, from a pod list that began after
    /// this call (shared with the other rotations of the namespace asking meanwhile, see
    /// [`super::pod_lists`]).
    pub(super) async fn pods_reading_the_secret(
        &self,
    ) -> Result<Vec<crate::pods::PodSummary>, String> {
        let spec = &self.planned.spec;
        let pods = self
            .ctx
            .pod_lists
            .list(&self.ctx.pod_list_client, &self.ns)
            .await?;
        Ok((pods.iter())
            .filter_map(|p| crate::pods::summarize(p, &spec.secret, &spec.targets))
            .collect())
    }

    /// Asks the API with the key the stage is about (`spec.verification`).
    pub(super) async fn probe(&self, stage: ProbeStage, vault: Option<&Vault>) -> ProbeOutcome {
        let Some(v) = &self.akr.spec.verification else {
            return Err("no spec.verification".into());
        };
        let key = match (stage, vault) {
            (ProbeStage::OldKeyRefused, Some(vault)) => vault.current.as_ref(),
            (_, Some(vault)) => vault.pending.as_ref().map(|(key, _)| key),
            (_, None) => None,
        };
        let Some(key) = key else {
            return Err("the vault holds no key to probe with".into());
        };
        self.ctx
            .prober
            .status(
                &v.url,
                &v.header,
                key,
                Duration::from_secs(v.timeout_seconds.into()),
            )
            .await
    }

    /// The record view for the vault's keys: cached unless `fresh`, too old, or for other keys.
    pub(super) async fn records(
        &self,
        store: &KeyStore,
        vault: Option<&Vault>,
        fresh: bool,
    ) -> Result<RecordView, Error> {
        let Some(v) = vault else {
            return Ok(RecordView::default());
        };
        let current = v.current_id.clone();
        let pending = v.pending.as_ref().map(|(k, _)| k.id());
        let ttl = RECORDS_TTL.min(self.ctx.resync);
        let key = key_of(self.akr);
        if !fresh && let Some(view) = self.ctx.records.get(&key, &current, pending.as_ref(), ttl) {
            return Ok(view);
        }
        let ticket = self.ctx.records.ticket();
        let view = observe::record_view(store, &self.akr.spec.valkey, vault).await?;
        self.ctx
            .records
            .insert(&key, ticket, current, pending, view);
        Ok(view)
    }

    pub(super) async fn observe(
        &self,
        store: &KeyStore,
        fresh: bool,
    ) -> Result<(Observation, Option<Vault>, Option<RawKey>), Error> {
        let spec = &self.planned.spec;
        // Cached reads, unless the decision revokes or promotes (`fresh`): see `world`.
        let world = &self.ctx.world;
        let vault_name = observe::vault_name(self.akr);
        let vault_secret = world
            .secret(&self.secrets, &self.ns, &vault_name, fresh)
            .await?;
        let vault = match &vault_secret {
            Some(s) => observe::parse_vault(s).map_err(Error::Corrupt)?,
            None => None,
        };
        // An emptied vault is lost, but its restore must replace it rather than create it.
        *self.emptied_vault.lock().unwrap() = vault_secret
            .filter(|_| vault.is_none())
            .and_then(|s| s.metadata.resource_version.clone());
        let consumer = world
            .secret(&self.secrets, &self.ns, &spec.secret.name, fresh)
            .await?;
        let consumer = consumer.as_deref();
        let (consumer_view, consumer_key) = observe::consumer_view(consumer, &spec.secret.key);
        let mut targets = Vec::with_capacity(spec.targets.len());
        for t in &spec.targets {
            targets.push(world.target(&self.ctx.client, &self.ns, t, fresh).await?);
        }
        let records = self.records(store, vault.as_ref(), fresh).await?;
        let observation = Observation {
            name: key_of(self.akr),
            probe: None,
            gate: None,
            generation: self.akr.metadata.generation,
            spec: spec.clone(),
            status: self.status.clone(),
            trigger: self.akr.annotations().get(TRIGGER_ANNOTATION).cloned(),
            outside_windows: self
                .akr
                .annotations()
                .get(OUTSIDE_WINDOWS_ANNOTATION)
                .cloned(),
            now: self.ctx.clock.now(),
            vault: vault.as_ref().map(Vault::view),
            consumer: consumer_view,
            consumer_labelled: observe::is_labelled(consumer),
            consumer_changed_at: observe::last_changed_at(consumer),
            consumer_key_rewritten: observe::key_rewritten_by_other(
                consumer,
                &spec.secret.key,
                FIELD_MANAGER,
            ),
            consumer_immutable: consumer.and_then(|s| s.immutable) == Some(true),
            records,
            targets,
            plan: rotation::PlanNotes {
                deferred: self.planned.deferred.clone(),
                removed: self.planned.removed.clone(),
                selected_by: self.planned.selected_by.clone(),
                unselected: self.planned.unselected.clone(),
                unresolved: self.planned.unresolved,
            },
            pods: None,
        };
        Ok((observation, vault, consumer_key))
    }

    /// The objects `action` writes are forgotten before it writes them: read afresh next time,
    /// unless the write goes through and keeps what the API answered (see `World::written`).
    pub(super) fn forget_what_it_writes(&self, action: &Action) {
        let (world, ns, spec) = (&self.ctx.world, &self.ns, &self.planned.spec);
        let vault = || world.forget_secret(ns, &observe::vault_name(self.akr));
        let consumer = || world.forget_secret(ns, &spec.secret.name);
        match action {
            Action::CreateVault { .. } | Action::RestoreVault { .. } => {
                vault();
                consumer();
            }
            Action::MintPending { .. } | Action::Promote | Action::DropPending => vault(),
            Action::WriteConsumer { .. } => consumer(),
            Action::Roll { index, .. } => {
                if let Some(target) = spec.targets.get(*index) {
                    world.forget_target(ns, target);
                }
            }
            _ => {}
        }
    }

    /// Keeps the cached record view true to what this reconcile just wrote.
    pub(super) fn note_own_valkey_write(&self, action: &Action) {
        self.ctx.records.wrote(&key_of(self.akr), action);
    }
}
