//! What every reconcile shares: the API client, the key stores per Valkey endpoint (connected
//! on first use), the record cache, back-off, metrics, the clock, the prober and the bound on
//! pod lists.

use super::records::RecordCache;
use super::{FIELD_MANAGER, key_of};
use crate::backoff::Backoffs;
use crate::clock::Clock;
use crate::crd::ApiKeyRotation;
use crate::keystore::{Endpoint, KeyStore, KeyStoreError};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::valkey_watch::Watchers;
use kube::Client;
use kube::runtime::events::Reporter;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

pub struct Context {
    pub client: Client,
    /// Every ApiKeyRotation the controller sees, to refuse a second claim on a Secret or target.
    pub rotations: kube::runtime::reflector::Store<ApiKeyRotation>,
    pub reporter: Reporter,
    pub resync: Duration,
    /// One key store per Valkey endpoint, each connected on first use under its own lock, so a
    /// slow or unreachable server never delays the rotations that use another.
    pub(super) stores: std::sync::Mutex<HashMap<Endpoint, Arc<OnceCell<KeyStore>>>>,
    /// Which endpoint each rotation (`namespace/name`) uses, so a store nobody uses is dropped.
    pub(super) store_users: std::sync::Mutex<HashMap<String, Endpoint>>,
    /// The last Valkey record view per rotation, to spare a read on every watch event.
    pub(super) records: RecordCache,
    pub backoffs: Backoffs,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub(super) prober: Prober,
    /// Valkey's change feeds, started for each server a rotation uses (none in unit tests).
    pub valkey_watchers: Watchers,
    /// The pod lists the gate reads, shared by each namespace's rotations.
    pub(super) pod_lists: super::pod_lists::PodLists,
    /// The client they are read with.
    pub(super) pod_list_client: Client,
    /// How long a `Revoke` deletion tries an unreachable Valkey before it lets go.
    pub(super) revoke_on_delete_timeout: Duration,
    /// Whether Argo Rollouts may be targets (`--argo-rollouts`).
    pub(super) argo_rollouts: bool,
    /// Each `Revoke` deletion's progress (by the object's uid): see [`DeletionProgress`].
    pub(super) deletions: std::sync::Mutex<HashMap<String, DeletionProgress>>,
    /// The objects rotations read, reused while the watches show them unchanged.
    pub(super) world: super::world::World,
}

/// How far a `Revoke` deletion got across its attempts.
#[derive(Default)]
pub(super) struct DeletionProgress {
    /// Since when Valkey has been out of reach without a break, by this process's monotonic
    /// clock: the timeout runs from there, so it never ends unretried (an operator that was
    /// down) nor by another machine's clock. Cleared whenever an attempt reaches Valkey.
    pub unreachable_since: Option<std::time::Instant>,
    /// The ids revoked so far (an attempt can fail after some).
    pub revoked: std::collections::BTreeSet<String>,
}

/// What the controller gives a [`Context`].
pub struct ContextParts {
    /// This replica's name, for the Events it reports.
    pub instance: Option<String>,
    pub resync: Duration,
    /// The controller's cache of every ApiKeyRotation.
    pub rotations: kube::runtime::reflector::Store<ApiKeyRotation>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub valkey_watchers: Watchers,
    pub revoke_on_delete_timeout: Duration,
    pub argo_rollouts: bool,
    /// The client pod lists go through, where it is not `client` (see
    /// [`crate::controller::PodListClient`]).
    pub pod_list_client: Option<Client>,
    /// The metadata watches' stores (empty: every read goes to the API server).
    pub watched: super::world::Watched,
}

impl Context {
    /// Everything a reconcile needs, whole: what the controller wires (`parts`) and the caches
    /// that start empty.
    pub fn new(client: Client, parts: ContextParts) -> Self {
        Self {
            pod_list_client: parts.pod_list_client.unwrap_or_else(|| client.clone()),
            client,
            rotations: parts.rotations,
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance: parts.instance,
            },
            resync: parts.resync,
            stores: Default::default(),
            store_users: Default::default(),
            records: RecordCache::default(),
            backoffs: Backoffs::default(),
            metrics: parts.metrics,
            clock: parts.clock,
            prober: Prober::new(),
            valkey_watchers: parts.valkey_watchers,
            pod_lists: Default::default(),
            revoke_on_delete_timeout: parts.revoke_on_delete_timeout,
            argo_rollouts: parts.argo_rollouts,
            deletions: Default::default(),
            world: super::world::World::new(parts.watched),
        }
    }

    /// The next reconcile of `akr` reads Valkey instead of the cached record view (and a read
    /// under way now is not cached: it may hold what Valkey had before the loss).
    pub fn forget_records(&self, akr: &ApiKeyRotation) {
        self.records.lost(&key_of(akr));
    }

    /// Valkey answers again (its change feed reconnected): a rotation backing off because of
    /// Valkey may try again at once.
    pub fn valkey_is_back(&self, akr: &ApiKeyRotation) {
        let key = key_of(akr);
        if self.backoffs.valkey_failed_last(&key) {
            self.backoffs.succeeded(&key);
        }
    }

    /// The key store `rotation` uses for `endpoint`; the one it used before is dropped (its
    /// connection closed) unless another rotation uses it too.
    pub(super) async fn keystore(
        &self,
        rotation: &str,
        endpoint: &Endpoint,
    ) -> Result<KeyStore, KeyStoreError> {
        let before = self
            .store_users
            .lock()
            .unwrap()
            .insert(rotation.to_string(), endpoint.clone());
        if let Some(before) = before.filter(|b| b != endpoint) {
            self.drop_store_if_unused(&before);
        }
        let cell = self
            .stores
            .lock()
            .unwrap()
            .entry(endpoint.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let store = KeyStore::connect(endpoint).await?;
            Ok(store.with_own_changes(self.valkey_watchers.own_changes(endpoint)))
        })
        .await
        .cloned()
    }

    pub(super) fn forget_keystore(&self, endpoint: &Endpoint) {
        self.stores.lock().unwrap().remove(endpoint);
    }

    pub(super) fn drop_store_if_unused(&self, endpoint: &Endpoint) {
        if !self
            .store_users
            .lock()
            .unwrap()
            .values()
            .any(|e| e == endpoint)
        {
            self.forget_keystore(endpoint);
        }
    }

    /// A rotation deleted without its clean-up (its finalizer removed by hand) leaves its
    /// change feed, Secret watches and key store behind: whatever belongs to a rotation the
    /// controller's cache no longer holds is let go (the controller calls this every resync).
    pub fn forget_the_gone(&self) {
        let live: std::collections::HashSet<String> =
            self.rotations.state().iter().map(|r| key_of(r)).collect();
        let mut known = self.world.rotations_reading_secrets();
        known.extend(self.valkey_watchers.rotations());
        known.extend(self.store_users.lock().unwrap().keys().cloned());
        known.sort();
        known.dedup();
        for gone in known.iter().filter(|k| !live.contains(*k)) {
            tracing::debug!(rotation = %gone, "gone without its clean-up; letting its watches go");
            self.forget_rotation(gone);
        }
    }

    /// `rotation` is gone: its cached view, back-off, change feed and key store go with it.
    pub(super) fn forget_rotation(&self, rotation: &str) {
        self.records.forget(rotation);
        self.world.forget_rotation(rotation);
        self.backoffs.forget(rotation);
        self.valkey_watchers.release(rotation);
        let used = self.store_users.lock().unwrap().remove(rotation);
        if let Some(endpoint) = used {
            self.drop_store_if_unused(&endpoint);
        }
    }
}
