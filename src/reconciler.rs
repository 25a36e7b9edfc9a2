//! The thin side of the operator: observe, ask the machine, perform its one action, record the
//! status and the Event, and repeat until the machine says to wait.

use crate::backoff::{self, Backoffs, Failure};
use crate::clock::Clock;
use crate::crd::{
    ApiKeyRotation, ApiKeyRotationStatus, DeletionPolicy, FINALIZER, MANAGED_BY_LABEL,
    OUTSIDE_WINDOWS_ANNOTATION, Phase, ROLLBACK_ANNOTATION, ROLLOUT_ANNOTATION,
    SECRET_RESTORES_ANNOTATION, TRIGGER_ANNOTATION,
};
use crate::key::{KeyId, RawKey};
use crate::keystore::{Endpoint, KeyStore, KeyStoreError};
use crate::metrics::Metrics;
use crate::observe::{self, PENDING_REVISION_ANNOTATION, VAULT_CURRENT, VAULT_PENDING, Vault};
use crate::probe::Prober;
use crate::rotation::{
    self, Action, EventNote, Observation, Plan, ProbeOutcome, ProbeStage, Reason, RecordView,
};
use crate::spec_check;
use crate::valkey_watch::Watchers;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

pub const FIELD_MANAGER: &str = "apikey-rotator";
/// How soon a Secret managed elsewhere is looked at again (one GET).
const HANDOVER_RECHECK: Duration = Duration::from_secs(10);
/// How often a quiet rotation is looked at anyway (detects Valkey data loss and drift).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// How long a Valkey record view is reused (bounds, with the resync, how long data loss can go
/// unnoticed). Decisions that revoke or promote always read afresh.
const RECORDS_TTL: Duration = Duration::from_secs(5);

/// What was last read from (or written to) Valkey for one rotation's keys.
#[derive(Clone)]
struct CachedRecords {
    read_at: std::time::Instant,
    current: KeyId,
    pending: Option<KeyId>,
    view: RecordView,
}

/// Steps taken in one reconcile before yielding to other work.
const MAX_STEPS_PER_RECONCILE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error("the OS random source failed: {0}")]
    Random(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("Valkey password: {0}")]
    Password(String),
    /// `spec.valkey.tls`: a missing Secret or key, or PEM that does not parse (never its content).
    #[error("Valkey TLS: {0}")]
    ValkeyTls(String),
    #[error(transparent)]
    Undone(#[from] backoff::Undone),
    #[error("Valkey password: {0}")]
    SecretNotPermitted(String),
}

impl Error {
    /// Conflicts, throttling, server errors and lost connections: retried quickly and reported
    /// only when they persist.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => matches!(s.code, 409 | 429 | 500 | 502 | 503 | 504),
            Error::Kube(kube::Error::HyperError(_) | kube::Error::Service(_)) => true,
            _ => false,
        }
    }

    /// The HTTP code of a failed Kubernetes API request (`connection` when none came back).
    pub fn api_code(&self) -> Option<String> {
        match self {
            Error::Kube(kube::Error::Api(s)) => Some(s.code.to_string()),
            Error::Kube(_) => Some("connection".into()),
            _ => None,
        }
    }

    pub fn is_valkey(&self) -> bool {
        matches!(
            self,
            Error::KeyStore(KeyStoreError::Unavailable(_))
                | Error::Password(_)
                | Error::ValkeyTls(_)
        )
    }

    /// A write that lost a race with another writer.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }

    /// What decides the back-off after this error.
    pub fn failure(&self) -> Failure {
        match self {
            _ if self.is_conflict() => Failure::Conflict,
            _ if self.is_transient() => Failure::Transient,
            _ if self.is_valkey() => Failure::Valkey,
            Error::Undone(u) => Failure::Undone(u.retry_in),
            _ => Failure::Other,
        }
    }

    /// The condition reason a failure is reported with.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Kube(_) => Reason::KubernetesApiError,
            Error::KeyStore(KeyStoreError::InvalidUrl(_)) => Reason::InvalidSpec,
            Error::KeyStore(KeyStoreError::Unavailable(_))
            | Error::Password(_)
            | Error::ValkeyTls(_) => Reason::ValkeyUnavailable,
            Error::Random(_) => Reason::RandomSourceFailed,
            Error::Corrupt(_) => Reason::VaultCorrupt,
            Error::Undone(_) => Reason::WriteUndone,
            Error::SecretNotPermitted(_) => Reason::SecretNotPermitted,
        }
    }
}

pub struct Context {
    pub client: Client,
    /// Every ApiKeyRotation the controller sees, to refuse a second claim on a Secret or target.
    pub rotations: Option<kube::runtime::reflector::Store<ApiKeyRotation>>,
    pub reporter: Reporter,
    pub resync: Duration,
    /// One key store per Valkey endpoint, each connected on first use under its own lock, so a
    /// slow or unreachable server never delays the rotations that use another.
    stores: std::sync::Mutex<HashMap<Endpoint, Arc<OnceCell<KeyStore>>>>,
    /// Which endpoint each rotation (`namespace/name`) uses, so a store nobody uses is dropped.
    store_users: std::sync::Mutex<HashMap<String, Endpoint>>,
    /// The last Valkey record view per rotation, to spare a read on every watch event.
    records: std::sync::Mutex<HashMap<String, CachedRecords>>,
    pub backoffs: Backoffs,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    prober: Prober,
    /// Valkey's change feeds, started for each server a rotation uses (none in unit tests).
    pub valkey_watchers: Option<Watchers>,
    /// Pod lists in flight at once: each holds a page of full Pods while it summarizes them, so
    /// the reconciles waiting at the pod gate together cannot hold more than a few pages.
    pod_lists: tokio::sync::Semaphore,
}

/// At most this many pod lists at once (see [`Context`]): 4 pages of 500 Pods, some 18 MiB.
const CONCURRENT_POD_LISTS: usize = 4;

impl Context {
    pub fn new(client: Client, instance: Option<String>, resync: Duration) -> Self {
        Self {
            client,
            rotations: None,
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance,
            },
            resync,
            stores: Default::default(),
            store_users: Default::default(),
            records: std::sync::Mutex::new(HashMap::new()),
            backoffs: Backoffs::default(),
            metrics: Arc::new(Metrics::new()),
            clock: Clock::default(),
            prober: Prober::new(),
            valkey_watchers: None,
            pod_lists: tokio::sync::Semaphore::new(CONCURRENT_POD_LISTS),
        }
    }

    /// The next reconcile of `akr` reads Valkey instead of the cached record view.
    pub fn forget_records(&self, akr: &ApiKeyRotation) {
        self.records.lock().unwrap().remove(&key_of(akr));
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
    async fn keystore(
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
            Ok(match &self.valkey_watchers {
                Some(watchers) => store.with_own_changes(watchers.own_changes(endpoint)),
                None => store,
            })
        })
        .await
        .cloned()
    }

    fn forget_keystore(&self, endpoint: &Endpoint) {
        self.stores.lock().unwrap().remove(endpoint);
    }

    fn drop_store_if_unused(&self, endpoint: &Endpoint) {
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

    /// `rotation` is gone: its cached view, back-off, change feed and key store go with it.
    fn forget_rotation(&self, rotation: &str) {
        self.records.lock().unwrap().remove(rotation);
        self.backoffs.forget(rotation);
        if let Some(watchers) = &self.valkey_watchers {
            watchers.release(rotation);
        }
        let used = self.store_users.lock().unwrap().remove(rotation);
        if let Some(endpoint) = used {
            self.drop_store_if_unused(&endpoint);
        }
    }
}

/// events.k8s.io/v1 refuses a note over 1 kB; long messages (many spec problems, a long
/// Deployment condition) are cut at a character boundary.
fn truncate_note(message: &str) -> String {
    const LIMIT: usize = 1024;
    if message.len() <= LIMIT {
        return message.to_string();
    }
    let mut end = LIMIT - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// A vault write that lost a race (409) is not an error: the loop observes again and decides on
/// what the other writer left, so a key is never minted twice.
fn tolerate_conflict<T>(result: Result<T, kube::Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn key_of(akr: &ApiKeyRotation) -> String {
    format!("{}/{}", akr.namespace().unwrap_or_default(), akr.name_any())
}

pub async fn reconcile(akr: Arc<ApiKeyRotation>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // Backing off: whatever triggered this reconcile waits its turn, costing nothing.
    if let Some(left) = ctx.backoffs.holding(
        &key_of(&akr),
        akr.metadata.generation,
        akr.metadata.deletion_timestamp.is_some(),
    ) {
        return Ok(Requeue::requeue(left));
    }
    let started = std::time::Instant::now();
    let result = reconcile_once(akr, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .count_reconcile_error(e.reason().as_str(), e.api_code(), e.is_valkey());
    }
    result
}

async fn reconcile_once(akr: Arc<ApiKeyRotation>, ctx: &Arc<Context>) -> Result<Requeue, Error> {
    // The watch cache can lag behind this operator's own status writes (a Secret or Deployment
    // event may start a reconcile before the ApiKeyRotation's own update arrives); deciding on a
    // stale status could repeat a step, so read the object afresh.
    let api: Api<ApiKeyRotation> = Api::namespaced(
        ctx.client.clone(),
        &akr.namespace().unwrap_or_else(|| "default".into()),
    );
    let Some(akr) = api.get_opt(&akr.name_any()).await? else {
        return Ok(Requeue::await_change());
    };
    let key = key_of(&akr);
    let result = finalizer(&api, FINALIZER, Arc::new(akr), |event| async {
        match event {
            FinalizerEvent::Apply(akr) => Reconciliation::new(&akr, ctx).run().await,
            FinalizerEvent::Cleanup(akr) => Reconciliation::new(&akr, ctx).clean_up().await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => e.into(),
        other => Error::Corrupt(other.to_string()),
    });
    if result.is_ok() {
        ctx.backoffs.succeeded(&key);
    }
    result
}

/// Exponential back-off per ApiKeyRotation, short for transient API errors.
pub fn error_policy(akr: Arc<ApiKeyRotation>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let delay = ctx
        .backoffs
        .failed(&key_of(&akr), akr.metadata.generation, error.failure());
    tracing::warn!(rotation = %key_of(&akr), reason = error.reason().as_str(), error = %error, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

struct Reconciliation<'a> {
    akr: &'a ApiKeyRotation,
    /// The spec with the plan of the rotation in flight (its targets and Secret) in place of
    /// edits made since; follows `status`.
    planned: crate::plan::Planned,
    ctx: &'a Context,
    ns: String,
    akrs: Api<ApiKeyRotation>,
    secrets: Api<Secret>,
    deployments: Api<Deployment>,
    recorder: Recorder,
    status: ApiKeyRotationStatus,
    /// The resourceVersion of a vault Secret observed without any key.
    emptied_vault: std::sync::Mutex<Option<String>>,
}

impl<'a> Reconciliation<'a> {
    fn new(akr: &'a ApiKeyRotation, ctx: &'a Context) -> Self {
        let ns = akr.namespace().unwrap_or_else(|| "default".into());
        Self {
            akr,
            ctx,
            akrs: Api::namespaced(ctx.client.clone(), &ns),
            secrets: Api::namespaced(ctx.client.clone(), &ns),
            deployments: Api::namespaced(ctx.client.clone(), &ns),
            recorder: Recorder::new(ctx.client.clone(), ctx.reporter.clone()),
            status: akr.status.clone().unwrap_or_default(),
            planned: crate::plan::planned(&akr.spec, &akr.status.clone().unwrap_or_default()),
            emptied_vault: Default::default(),
            ns,
        }
    }

    async fn run(mut self) -> Result<Requeue, Error> {
        let spec = &self.akr.spec;
        let mut problems = spec_check::problems(spec);
        let name = self.akr.name_any();
        if name.len() > crate::crd::MAX_NAME_LENGTH {
            // The CRD refuses such a name; an object admitted before that bound existed gets here.
            problems.push(format!(
                "metadata.name: {} characters, at most {} (it becomes the value of the label {} on the Secrets this operator writes); recreate the ApiKeyRotation under a shorter name",
                name.len(),
                crate::crd::MAX_NAME_LENGTH,
                MANAGED_BY_LABEL
            ));
        }
        if spec.secret.name == observe::vault_name(self.akr) {
            problems.push(format!(
                "spec.secret.name: {:?} is this rotation's own vault Secret",
                spec.secret.name
            ));
        }
        if !problems.is_empty() {
            self.report_failure(
                Reason::InvalidSpec,
                &format!("Invalid spec, nothing was changed: {}", problems.join("; ")),
            )
            .await?;
            return Ok(Requeue::await_change());
        }
        if let Some(store) = &self.ctx.rotations {
            let all = store.state();
            if let Some(message) =
                crate::claims::conflicting_claim(self.akr, all.iter().map(|r| r.as_ref()))
            {
                self.report_failure(Reason::ClaimConflict, &message).await?;
                return Ok(Requeue::requeue(self.ctx.resync));
            }
        }
        let planned = self.planned.spec.clone();
        let consumer = self.secrets.get_opt(&planned.secret.name).await?;
        if let Some(secret) = &consumer
            && let Some(message) = crate::trust::consumer_secret_problem(
                secret,
                &self.akr.name_any(),
                self.ctx.rotations.iter().flat_map(|s| s.state()),
            )
            .or_else(|| {
                crate::trust::adoptable_key_problem(
                    secret,
                    &self.akr.name_any(),
                    &planned.secret.key,
                    &planned.key.prefix,
                )
            })
        {
            self.report_failure(Reason::ClaimConflict, &message).await?;
            return Ok(Requeue::requeue(self.ctx.resync));
        }
        if let Some(secret) = &consumer
            && let Some(message) = crate::handover::managed_elsewhere(secret, &planned.secret.key)
        {
            self.report_failure(Reason::SecretManagedElsewhere, &message)
                .await?;
            // The Secret is not labelled yet, so its watch does not see the hand-over: look again.
            return Ok(Requeue::requeue(self.ctx.resync.min(HANDOVER_RECHECK)));
        }
        let outcome = self.drive().await;
        let failures_so_far = self.ctx.backoffs.failures(&key_of(self.akr));
        if let Err(e) = &outcome {
            if e.is_transient() && failures_so_far < 3 {
                return outcome;
            }
            let message = match e {
                Error::KeyStore(KeyStoreError::Unavailable(_))
                | Error::Password(_)
                | Error::ValkeyTls(_) => {
                    format!("{e}. No step that needs Valkey goes ahead; retrying with back-off.")
                }
                _ => format!("{e}; retrying with back-off."),
            };
            // Reporting is best effort: the original error decides the back-off.
            let _ = self.report_failure(e.reason(), &message).await;
        }
        outcome
    }

    /// The ApiKeyRotation is being deleted. `Retain` never revokes anything: the consumers' Secret
    /// and every key this rotation made valid stay valid (a rotation in flight stops where it is,
    /// with both keys accepted), and only its Valkey state entry is dropped (best effort, so an
    /// unreachable Valkey never blocks a deletion). `Revoke` deletes the records of every key it
    /// manages, then its state and history, and retries until Valkey confirms.
    async fn clean_up(self) -> Result<Requeue, Error> {
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

    async fn endpoint(&self) -> Result<Endpoint, Error> {
        let v = &self.akr.spec.valkey;
        let password = match &v.password_secret_ref {
            None => None,
            Some(r) => {
                let secret = self
                    .secrets
                    .get_opt(&r.name)
                    .await?
                    .ok_or_else(|| Error::Password(format!("Secret {} not found", r.name)))?;
                crate::trust::password_secret_problem(
                    &secret,
                    self.akr,
                    self.ctx.rotations.iter().flat_map(|s| s.state()),
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
            Some(tls) => Some(crate::valkey_tls::read(&self.secrets, tls).await?),
        };
        Ok(Endpoint {
            url: v.url.clone(),
            password,
            insecure_skip_tls_verify: v.insecure_skip_tls_verify,
            tls,
        })
    }

    async fn drive(&mut self) -> Result<Requeue, Error> {
        let endpoint = self.endpoint().await?;
        let result = self.drive_on(&endpoint).await;
        if matches!(result, Err(Error::KeyStore(KeyStoreError::Unavailable(_)))) {
            // The next attempt connects afresh.
            self.ctx.forget_keystore(&endpoint);
        }
        result
    }

    async fn drive_on(&mut self, endpoint: &Endpoint) -> Result<Requeue, Error> {
        let store = self.ctx.keystore(&key_of(self.akr), endpoint).await?;
        if self.ctx.backoffs.valkey_failed_last(&key_of(self.akr)) {
            // Valkey failed last time: ask it first, before reading anything from the API server.
            store.ping().await?;
        }
        let endpoint = endpoint.clone();
        if let Some(watchers) = &self.ctx.valkey_watchers {
            watchers.ensure(
                &key_of(self.akr),
                &endpoint,
                &self.akr.spec.valkey.record_prefix,
            );
        }
        for _ in 0..MAX_STEPS_PER_RECONCILE {
            let (mut observation, mut vault, mut consumer_key, cached) =
                self.observe(&store, false).await?;
            let mut plan = rotation::decide(&observation);
            if plan.action == Action::CheckPods {
                observation.pods = Some(self.pods_reading_the_secret().await);
                plan = rotation::decide(&observation);
            }
            if cached
                && matches!(
                    plan.action,
                    Action::Promote | Action::DropPending | Action::Revoke { .. }
                )
            {
                // Revocation and promotion are decided on what Valkey holds now.
                let pods = observation.pods.take();
                (observation, vault, consumer_key, _) = self.observe(&store, true).await?;
                observation.pods = pods;
                plan = rotation::decide(&observation);
            }
            if let (Action::QueryGate, Some(gate)) = (&plan.action, &self.akr.spec.metrics_gate) {
                let reading = self
                    .ctx
                    .prober
                    .query_prometheus(&gate.prometheus_url, &gate.query, Duration::from_secs(10))
                    .await;
                tracing::info!(rotation = %key_of(self.akr), ?reading, "metrics gate");
                observation.gate = Some(reading);
                plan = rotation::decide(&observation);
            }
            if let Action::Probe { stage } = plan.action {
                let outcome = self.probe(stage, vault.as_ref()).await;
                tracing::info!(rotation = %key_of(self.akr), ?stage, ?outcome, "verification probe");
                observation.probe = Some((stage, outcome));
                plan = rotation::decide(&observation);
            }
            tracing::debug!(rotation = %key_of(self.akr), action = ?plan.action, "decided");
            let wait = match &plan.action {
                Action::Wait { requeue_after } => Some(*requeue_after),
                _ => None,
            };
            let revision = plan.status.current_rotation.as_ref().map(|r| r.revision);
            let key = key_of(self.akr);
            self.ctx
                .backoffs
                .guard(&key, revision, &plan.action, || self.describe(&plan.action))?;
            self.perform(&plan, &store, vault.as_ref(), consumer_key.as_ref())
                .await?;
            self.ctx.backoffs.performed(&key, revision, &plan.action);
            self.note_own_valkey_write(&plan.action);
            self.record(&plan, &store).await?;
            if wait.is_none() {
                // A step went through: the back-off of earlier failures no longer applies.
                self.ctx.backoffs.succeeded(&key_of(self.akr));
            }
            if let Some(requeue_after) = wait {
                let resync = self.ctx.resync;
                let delay = requeue_after.map(|d| d.min(resync)).unwrap_or(resync);
                return Ok(Requeue::requeue(delay));
            }
        }
        Ok(Requeue::requeue(Duration::from_millis(10)))
    }

    /// The namespace's pods that read the consumers' Secret, listed a page at a time so that
    /// only their summaries are kept.
    async fn pods_reading_the_secret(&self) -> Result<Vec<crate::pods::PodSummary>, String> {
        const PAGE: u32 = 500;
        const MAX_PAGES: usize = 200;
        let spec = &self.planned.spec;
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.ctx.client.clone(), &self.ns);
        let _turn = self
            .ctx
            .pod_lists
            .acquire()
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut params = kube::api::ListParams::default().limit(PAGE);
        for _ in 0..MAX_PAGES {
            let page = pods.list(&params).await.map_err(|e| e.to_string())?;
            out.extend(
                page.items
                    .iter()
                    .filter_map(|p| crate::pods::summarize(p, &spec.secret, &spec.targets)),
            );
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(out),
            }
        }
        Err(format!(
            "more than {} pods in namespace {}",
            PAGE as usize * MAX_PAGES,
            self.ns
        ))
    }

    /// What a write changes, in the words of a report that it keeps being undone.
    fn describe(&self, action: &Action) -> String {
        let spec = &self.planned.spec;
        match action {
            Action::WriteConsumer { .. } => format!(
                "The key in Secret {} (data key {})",
                spec.secret.name, spec.secret.key
            ),
            Action::Roll { index, .. } => format!(
                "The pod-template annotation {ROLLOUT_ANNOTATION} of Deployment {}",
                spec.targets.get(*index).map_or("?", |t| t.name.as_str())
            ),
            Action::RestoreVault { .. } => {
                format!("The vault Secret {}", observe::vault_name(self.akr))
            }
            other => format!("{other:?}"),
        }
    }

    /// Asks the API with the key the stage is about (`spec.verification`).
    async fn probe(&self, stage: ProbeStage, vault: Option<&Vault>) -> ProbeOutcome {
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

    /// Keeps the cached record view true to what this reconcile just wrote.
    fn note_own_valkey_write(&self, action: &Action) {
        let mut cache = self.ctx.records.lock().unwrap();
        let Some(entry) = cache.get_mut(&key_of(self.akr)) else {
            return;
        };
        match action {
            Action::Register { current, pending } => {
                entry.view.current |= *current;
                entry.view.current_marked |= *current;
                entry.view.pending |= *pending && entry.pending.is_some();
            }
            Action::Revoke { key_id } => {
                if *key_id == entry.current {
                    entry.view.current = false;
                    entry.view.current_marked = false;
                }
                if Some(key_id) == entry.pending.as_ref() {
                    entry.view.pending = false;
                }
            }
            Action::SetBootstrapFlag => entry.view.bootstrap_flag = true,
            Action::CreateVault { .. }
            | Action::RestoreVault { .. }
            | Action::MintPending { .. }
            | Action::Promote
            | Action::DropPending => {
                // The keys change: the next observation reads Valkey again.
                cache.remove(&key_of(self.akr));
            }
            _ => {}
        }
    }

    /// The record view for the vault's keys: cached unless `fresh`, too old, or for other keys.
    async fn records(
        &self,
        store: &KeyStore,
        vault: Option<&Vault>,
        fresh: bool,
    ) -> Result<(RecordView, bool), Error> {
        let Some(v) = vault else {
            return Ok((RecordView::default(), false));
        };
        let current = v.current_id.clone();
        let pending = v.pending.as_ref().map(|(k, _)| k.id());
        let ttl = RECORDS_TTL.min(self.ctx.resync);
        if !fresh {
            let cache = self.ctx.records.lock().unwrap();
            if let Some(c) = cache.get(&key_of(self.akr)).filter(|c| {
                c.current == current && c.pending == pending && c.read_at.elapsed() < ttl
            }) {
                return Ok((c.view, true));
            }
        }
        let view = observe::record_view(store, &self.akr.spec.valkey, vault).await?;
        self.ctx.records.lock().unwrap().insert(
            key_of(self.akr),
            CachedRecords {
                read_at: std::time::Instant::now(),
                current,
                pending,
                view,
            },
        );
        Ok((view, false))
    }

    async fn observe(
        &self,
        store: &KeyStore,
        fresh: bool,
    ) -> Result<(Observation, Option<Vault>, Option<RawKey>, bool), Error> {
        let spec = &self.planned.spec;
        let vault_secret = self.secrets.get_opt(&observe::vault_name(self.akr)).await?;
        let vault = match &vault_secret {
            Some(s) => observe::parse_vault(s).map_err(Error::Corrupt)?,
            None => None,
        };
        // An emptied vault is lost, but its restore must replace it rather than create it.
        *self.emptied_vault.lock().unwrap() = vault_secret
            .filter(|_| vault.is_none())
            .and_then(|s| s.metadata.resource_version);
        let consumer = self.secrets.get_opt(&spec.secret.name).await?;
        let (consumer_view, consumer_key) =
            observe::consumer_view(consumer.as_ref(), &spec.secret.key);
        let mut targets = Vec::with_capacity(spec.targets.len());
        for t in &spec.targets {
            let d = self.deployments.get_opt(&t.name).await?;
            targets.push(observe::target_view(d.as_ref()));
        }
        let (records, cached) = self.records(store, vault.as_ref(), fresh).await?;
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
            consumer_labelled: observe::is_labelled(consumer.as_ref()),
            consumer_changed_at: observe::last_changed_at(consumer.as_ref()),
            consumer_key_rewritten: observe::key_rewritten_by_other(
                consumer.as_ref(),
                &spec.secret.key,
                FIELD_MANAGER,
            ),
            consumer_immutable: consumer.as_ref().and_then(|s| s.immutable) == Some(true),
            records,
            targets,
            plan: rotation::PlanNotes {
                deferred: self.planned.deferred.clone(),
                removed: self.planned.removed.clone(),
            },
            pods: None,
        };
        Ok((observation, vault, consumer_key, cached))
    }

    async fn perform(
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
                // A marker the roll leaves out is dropped by server-side apply.
                let mut annotations = json!({ROLLOUT_ANNOTATION: key_id.as_str()});
                if let Some(revision) = rollback_of {
                    annotations[ROLLBACK_ANNOTATION] = json!(revision.to_string());
                }
                if let Some(restores) = secret_restores {
                    annotations[SECRET_RESTORES_ANNOTATION] = json!(restores.to_string());
                }
                let patch = json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": target.name},
                    "spec": {"template": {"metadata": {"annotations": annotations}}},
                });
                self.deployments
                    .patch(
                        &target.name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
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
                store
                    .record_history(
                        &spec.valkey.operator_prefix,
                        &key_of(self.akr),
                        *revision,
                        &entry.to_string(),
                        spec.history_limit,
                    )
                    .await?;
            }
            Action::StatusOnly | Action::Wait { .. } => {}
        }
        Ok(())
    }

    fn mint(&self) -> Result<RawKey, Error> {
        RawKey::mint(
            &self.akr.spec.key.prefix,
            self.akr.spec.key.random_bytes as usize,
        )
        .map_err(|e| Error::Random(e.to_string()))
    }

    fn owned_meta(&self, name: String) -> ObjectMeta {
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

    async fn create_vault(&self, key: &RawKey) -> Result<(), Error> {
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
    async fn restore_vault(
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
    async fn replace_vault(
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
        tolerate_conflict(
            self.secrets
                .replace(&observe::vault_name(self.akr), &write_params(), &secret)
                .await,
        )
    }

    /// Server-side apply of the one data key we own; the Secret's other keys are untouched.
    async fn write_consumer(&self, key: &RawKey) -> Result<(), Error> {
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
        self.secrets
            .patch(
                &spec.secret.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    /// Writes the plan's Event, its status (when it changed) and the state record in Valkey.
    async fn record(&mut self, plan: &Plan, store: &KeyStore) -> Result<(), Error> {
        // The Event first: if the status write fails, the retry repeats the (idempotent) action
        // and its Event, so an Event can be doubled but never lost.
        if let Some(note) = &plan.event {
            self.publish(note).await;
        }
        if plan.status != self.status {
            self.apply_status(&plan.status).await?;
            self.ctx.metrics.observe_status(
                &self.ns,
                &self.akr.name_any(),
                &self.status,
                &plan.status,
            );
            // The state record follows the phase (and which rotation is in flight), not every step:
            // each Valkey command counts.
            let state_changed = plan.status.phase != self.status.phase
                || plan.status.current_rotation.as_ref().map(|r| r.revision)
                    != self.status.current_rotation.as_ref().map(|r| r.revision);
            if state_changed {
                let state = json!({
                    "phase": plan.status.phase,
                    "revision": plan.status.revision,
                    "activeKeyId": plan.status.active_key_id,
                    "rotation": plan.status.current_rotation.as_ref().map(|r| json!({
                        "revision": r.revision, "step": r.step, "newKeyId": r.new_key_id, "startedAt": r.started_at,
                    })),
                    "updatedAt": self.ctx.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                });
                store
                    .write_state(
                        &self.akr.spec.valkey.operator_prefix,
                        &key_of(self.akr),
                        &state.to_string(),
                    )
                    .await?;
            }
            self.status = plan.status.clone();
            self.planned = crate::plan::planned(&self.akr.spec, &self.status);
        }
        Ok(())
    }

    async fn apply_status(&self, status: &ApiKeyRotationStatus) -> Result<(), Error> {
        let patch = json!({
            "apiVersion": ApiKeyRotation::api_version(&()),
            "kind": ApiKeyRotation::kind(&()),
            "status": status,
        });
        self.akrs
            .patch_status(
                &self.akr.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    async fn publish(&self, note: &EventNote) {
        let event = Event {
            type_: if note.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.as_str().into(),
            note: Some(truncate_note(&note.message)),
            action: note.reason.as_str().into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &self.akr.object_ref(&()))
            .await
        {
            tracing::warn!(rotation = %key_of(self.akr), error = %e, "could not publish an Event");
        }
    }

    /// `Degraded=True` with this reason (and an Event when it is new); keeps everything else.
    async fn report_failure(&mut self, reason: Reason, message: &str) -> Result<(), Error> {
        if rotation::degraded_with(&self.status.conditions, reason, message) {
            return Ok(());
        }
        let now = self
            .ctx
            .clock
            .now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut status = self.status.clone();
        let generation = self.akr.metadata.generation;
        let (conditions, text) = (&mut status.conditions, message.to_string());
        let degraded = rotation::DEGRADED;
        rotation::set_condition(conditions, degraded, true, reason, text, now, generation);
        status.phase = Some(Phase::Degraded);
        status.observed_generation = generation;
        self.apply_status(&status).await?;
        self.planned = crate::plan::planned(&self.akr.spec, &status);
        self.status = status;
        let note = EventNote {
            reason,
            message: message.to_string(),
        };
        self.publish(&note).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::truncate_note;

    #[test]
    fn event_notes_fit_the_events_api_limit() {
        assert_eq!(truncate_note("short"), "short");
        let long = "é".repeat(800);
        let cut = truncate_note(&long);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
        assert!(cut.starts_with("éé"));
    }
}
