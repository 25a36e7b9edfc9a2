//! The thin side of the operator: observe, ask the machine, perform its one action, record the
//! status and the Event, and repeat until the machine says to wait.

mod act;
mod clean_up;
mod context;
mod pod_lists;
mod read;
mod record;
mod records;
mod referenced;
mod refusal;
mod world;

pub use clean_up::DEFAULT_REVOKE_ON_DELETE_TIMEOUT;
pub use context::{Context, ContextParts};
pub use referenced::Referenced;
use world::CachedRotation;
pub use world::{KeepLabels, Kind as WatchKind, WatchHealth, Watched, slim_metadata};

use crate::backoff::Failure;
use crate::crd::{ApiKeyRotation, ApiKeyRotationStatus, FINALIZER};
use crate::keystore::{Endpoint, KeyStoreError};
use crate::rotation::{Action, Reason};
use crate::{backoff, rotation};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer;
use kube::runtime::finalizer::Event as FinalizerEvent;
use std::sync::Arc;
use std::time::Duration;

pub use crate::crd::FIELD_MANAGER;
/// How soon a Secret managed elsewhere is looked at again (one GET).
const HANDOVER_RECHECK: Duration = Duration::from_secs(10);
/// How often a quiet rotation is looked at anyway (detects Valkey data loss and drift).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

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

impl From<crate::valkey_tls::Error> for Error {
    fn from(e: crate::valkey_tls::Error) -> Self {
        match e {
            crate::valkey_tls::Error::ValkeyTls(why) => Error::ValkeyTls(why),
            crate::valkey_tls::Error::Kube(e) => Error::Kube(e),
        }
    }
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
    // stale status could repeat a step, so a cached object older than the last one this operator
    // wrote or read is read afresh.
    let api: Api<ApiKeyRotation> = Api::namespaced(
        ctx.client.clone(),
        &akr.namespace().unwrap_or_else(|| "default".into()),
    );
    let akr = match ctx.world.cached_rotation(&akr) {
        CachedRotation::Current => akr.as_ref().clone(),
        // The watch event of this process's own later write is on its way and reconciles the
        // rotation again; the requeue only covers its loss.
        CachedRotation::Behind => return Ok(Requeue::requeue(Duration::from_secs(1))),
        CachedRotation::Unknown => {
            let Some(akr) = api.get_opt(&akr.name_any()).await? else {
                ctx.world.distrust_rotation(&key_of(&akr));
                return Ok(Requeue::await_change());
            };
            ctx.world.note_rotation(&akr);
            akr
        }
    };
    let key = key_of(&akr);
    // The finalizer helper writes the object itself (adding the finalizer, or removing it after
    // the clean-up) without telling `world`: the next reconcile reads it afresh.
    let finalizer_writes = akr.metadata.deletion_timestamp.is_some()
        || !akr.finalizers().iter().any(|f| f == FINALIZER);
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
    if finalizer_writes {
        ctx.world.distrust_rotation(&key);
    }
    match &result {
        Ok(_) => ctx.backoffs.succeeded(&key),
        // A write may have failed half seen (the finalizer's JSON patch, a status write): the
        // next reconcile reads the ApiKeyRotation afresh.
        Err(_) => ctx.world.distrust_rotation(&key),
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
    recorder: Recorder,
    status: ApiKeyRotationStatus,
    /// The status as last written (or read); `status` runs ahead of it while a step's record is
    /// held for the next write (see `record::holds_status_over`).
    written: ApiKeyRotationStatus,
    /// The resourceVersion of a vault Secret observed without any key.
    emptied_vault: std::sync::Mutex<Option<String>>,
    /// What each selector of `spec.targets` selects now (looked up only while no rotation is in
    /// flight: a rotation's plan keeps what it selected when it started).
    selected: Vec<Option<Vec<String>>>,
}

impl<'a> Reconciliation<'a> {
    fn new(akr: &'a ApiKeyRotation, ctx: &'a Context) -> Self {
        let ns = akr.namespace().unwrap_or_else(|| "default".into());
        Self {
            akr,
            ctx,
            akrs: Api::namespaced(ctx.client.clone(), &ns),
            secrets: Api::namespaced(ctx.client.clone(), &ns),
            recorder: Recorder::new(ctx.client.clone(), ctx.reporter.clone()),
            status: akr.status.clone().unwrap_or_default(),
            written: akr.status.clone().unwrap_or_default(),
            planned: crate::plan::planned(&akr.spec, &akr.status.clone().unwrap_or_default(), &[]),
            emptied_vault: Default::default(),
            selected: Vec::new(),
            ns,
        }
    }

    async fn run(mut self) -> Result<Requeue, Error> {
        if let Some(requeue) = self.refusal().await? {
            return Ok(requeue);
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

    async fn drive(&mut self) -> Result<Requeue, Error> {
        let endpoint = self.endpoint(false).await?;
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
        let prefix = &self.akr.spec.valkey.record_prefix;
        (self.ctx.valkey_watchers).ensure(&key_of(self.akr), &endpoint, prefix);
        let result = self.steps(&store).await;
        if result.is_err()
            && let Err(e) = self.write_status(&store).await
        {
            // A step's record held for the next write is found again by the next reconcile.
            tracing::debug!(rotation = %key_of(self.akr), error = %e, "held status not written");
        }
        result
    }

    /// Decides and acts, step after step, until the machine waits.
    async fn steps(&mut self, store: &crate::keystore::KeyStore) -> Result<Requeue, Error> {
        for _ in 0..MAX_STEPS_PER_RECONCILE {
            let (mut observation, mut vault, mut consumer_key) = self.observe(store, false).await?;
            let mut plan = rotation::decide(&observation);
            if plan.action == Action::CheckPods {
                observation.pods = Some(self.pods_reading_the_secret().await);
                plan = rotation::decide(&observation);
            }
            if matches!(
                plan.action,
                Action::Promote | Action::DropPending | Action::Revoke { .. }
            ) {
                // Revocation and promotion are decided on what Valkey and the API server hold
                // now, not on what the caches kept; an ApiKeyRotation changed since this
                // reconcile read it is reconciled again from its new version first.
                let now = self.akrs.get_opt(&self.akr.name_any()).await?;
                if !now.as_ref().is_some_and(|a| self.ctx.world.is_latest(a)) {
                    if let Some(now) = &now {
                        self.ctx.world.note_rotation(now);
                    }
                    // Nothing held is written: it was decided on the older version, and the
                    // next reconcile decides it again on the newer one.
                    self.status = self.written.clone();
                    return Ok(Requeue::requeue(Duration::from_millis(10)));
                }
                let pods = observation.pods.take();
                (observation, vault, consumer_key) = self.observe(store, true).await?;
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
            if !record::holds_status_over(&plan.action, &self.status, &self.written) {
                self.write_status(store).await?;
            }
            // Forgotten first, whether the write goes through or not; one that does keeps what
            // the API answered.
            self.forget_what_it_writes(&plan.action);
            (self.perform(&plan, store, vault.as_ref(), consumer_key.as_ref())).await?;
            self.ctx.backoffs.performed(&key, revision, &plan.action);
            self.note_own_valkey_write(&plan.action);
            self.record(&plan, store).await?;
            if wait.is_none() {
                // A step went through: the back-off of earlier failures no longer applies.
                self.ctx.backoffs.succeeded(&key_of(self.akr));
            }
            if let Some(requeue_after) = wait {
                let resync = self.ctx.resync;
                let delay = requeue_after.map(|d| d.min(resync)).unwrap_or(resync);
                let delay = self.progress_due_in().map_or(delay, |due| due.min(delay));
                return Ok(Requeue::requeue(delay));
            }
        }
        self.write_status(store).await?;
        Ok(Requeue::requeue(Duration::from_millis(10)))
    }
}

#[cfg(test)]
mod tests {
    use super::record::truncate_note;

    #[test]
    fn event_notes_fit_the_events_api_limit() {
        assert_eq!(truncate_note("short"), "short");
        let long = "é".repeat(800);
        let cut = truncate_note(&long);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
        assert!(cut.starts_with("éé"));
    }
}
