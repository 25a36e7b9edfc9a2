//! Wires the reconciler to watches: ApiKeyRotations, the Secrets this operator labels, the
//! Deployments the rotations target, and Valkey's own change feed. Reconciles are driven by these
//! events, with a slow resync.

use crate::clock::Clock;
use crate::crd::{ApiKeyRotation, MANAGED_BY_LABEL};
use crate::metrics::Metrics;
use crate::reconciler::{self, Context, ContextParts, KeepLabels};
use crate::valkey_watch::{Loss, Watchers};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;

/// Where and how often to look.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace, or all.
    pub namespace: Option<String>,
    /// Reconcile quiet rotations this often (catches drift, and Valkey data loss where the
    /// server gives no change feed).
    pub resync: std::time::Duration,
    /// Reconciles running at once (each holds an API connection while it runs); 0 is unbounded.
    pub concurrency: u16,
    /// The time rotations are decided on (the system clock but in tests).
    pub clock: Clock,
    /// How long a `deletionPolicy: Revoke` deletion keeps trying a Valkey it cannot reach
    /// before it lets go (see [`crate::reconciler::DEFAULT_REVOKE_ON_DELETE_TIMEOUT`]).
    pub revoke_on_delete_timeout: std::time::Duration,
    /// Argo Rollouts may be targets: their CRD is installed and RBAC grants them.
    pub argo_rollouts: bool,
    /// The client the pod gate lists pods with (the main client when not given).
    pub pod_list_client: PodListClient,
}

/// A client of its own for the pod gate's lists (built from the same configuration as the main
/// one): a namespace's pods come in pages of megabytes, and each connection that reads one keeps a
/// read buffer grown up to hyper's maximum (about 400 KiB) while it idles in the pool. With a pool
/// of their own the lists grow the buffers of their few connections, not of the connections the
/// reconciles share (the watches' list pages still come through the main pool).
#[derive(Clone, Default)]
pub struct PodListClient(pub Option<Client>);

impl std::fmt::Debug for PodListClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let which = if self.0.is_some() { "own" } else { "shared" };
        f.debug_tuple("PodListClient").field(&which).finish()
    }
}

/// Enough to keep every rollout moving (reconciles are short; waiting is done by requeueing),
/// small enough that a thousand rotations share a few dozen connections.
pub const DEFAULT_CONCURRENCY: u16 = 32;

impl Settings {
    pub fn namespaced(ns: &str) -> Self {
        Self {
            namespace: Some(ns.to_string()),
            resync: crate::reconciler::DEFAULT_RESYNC,
            concurrency: DEFAULT_CONCURRENCY,
            clock: Clock::default(),
            revoke_on_delete_timeout: crate::reconciler::DEFAULT_REVOKE_ON_DELETE_TIMEOUT,
            argo_rollouts: false,
            pod_list_client: PodListClient::default(),
        }
    }
}

/// Runs until `shutdown` resolves, finishing reconciles in flight.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    run_with_metrics(client, settings, Arc::new(Metrics::new()), shutdown).await
}

/// [`run`], counting into `metrics`.
pub async fn run_with_metrics(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let (rotations, secrets) = match &settings.namespace {
        Some(ns) => (
            Api::<ApiKeyRotation>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // The store keeps each ApiKeyRotation without its managedFields and
    // last-applied-configuration: nothing reads them, and on a real API server they are often
    // larger than the rest of the object (the status's fields, each listed per manager).
    let (store, store_writer) = kube::runtime::reflector::store();
    let rotation_events = watcher::watcher(rotations, watcher::Config::default().any_semantic())
        .modify(|akr| slim_rotation(&mut akr.metadata))
        .reflect(store_writer)
        .applied_objects();
    let controller = Controller::for_stream(rotation_events, store.clone());
    let (valkey_watchers, losses) = Watchers::new(metrics.clone());
    let mut watched = reconciler::Watched {
        referenced: Some(Arc::new(reconciler::Referenced::new(client.clone()))),
        ..Default::default()
    };
    let controller = crate::workload::watch_targets(
        controller,
        &client,
        settings.namespace.as_deref(),
        store.clone(),
        settings.argo_rollouts,
        &mut watched,
    );
    let (secret_store, secret_writer) = kube::runtime::reflector::store();
    watched.secrets = Some(secret_store);
    let secret_events = managed_secret_events(secrets, secret_writer, watched.health.clone());
    let parts = ContextParts {
        instance: std::env::var("POD_NAME").ok(),
        resync: settings.resync,
        rotations: store.clone(),
        metrics,
        clock: settings.clock.clone(),
        valkey_watchers,
        revoke_on_delete_timeout: settings.revoke_on_delete_timeout,
        argo_rollouts: settings.argo_rollouts,
        pod_list_client: settings.pod_list_client.0.clone(),
        watched,
    };
    let ctx = Arc::new(Context::new(client, parts));
    let hit_by_valkey_loss = rotations_hit(losses, store.clone(), ctx.clone());
    let _sweeper =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sweep_the_gone(ctx.clone())));
    // The Secrets' and the targets' watches carry metadata only, and their stores keep only
    // names, resourceVersions and the labels selectors match (`reconciler::slim_metadata`): a
    // cluster's workloads and Secrets never sit in memory; a reconcile reads what they do not
    // vouch for.
    let running = controller
        .watches_stream(secret_events, |secret: PartialObjectMeta<Secret>| {
            let owner = secret.labels().get(MANAGED_BY_LABEL).cloned();
            let ns = secret.namespace();
            owner.map(|name| ObjectRef::new(&name).within(ns.as_deref().unwrap_or("default")))
        })
        .reconcile_on(hit_by_valkey_loss)
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown.clone())
        .run(reconciler::reconcile, reconciler::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(rotation = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    tokio::select! {
        _ = running => {}
        _ = stopped_before_the_first_list(shutdown, store) => {
            tracing::info!("stopped before the first list; nothing was in flight");
        }
    }
}

/// This operator's Secrets (vault, consumers'), by label: a change reconciles their rotation, and
/// their resourceVersions tell a reconcile whether what it read is still current.
fn managed_secret_events(
    secrets: Api<PartialObjectMeta<Secret>>,
    writer: kube::runtime::reflector::store::Writer<PartialObjectMeta<Secret>>,
    health: Arc<reconciler::WatchHealth>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static
{
    crate::relist::relisting_watcher(
        secrets,
        watcher::Config::default()
            .labels(MANAGED_BY_LABEL)
            .any_semantic(),
    )
    .modify(|s| reconciler::slim_metadata(&mut s.metadata, KeepLabels::Only(MANAGED_BY_LABEL)))
    .reflect(writer)
    .inspect(move |event| health.follow(reconciler::WatchKind::Secret, event))
    .filter(|event| std::future::ready(event.is_ok()))
    .touched_objects()
}

/// Lets go, every resync, of what rotations deleted without their clean-up left behind. Before
/// the first list no rotation was reconciled, so nothing is known to let go (and the store's
/// readiness is not awaited here: its one waiter is the controller).
async fn sweep_the_gone(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(ctx.resync).await;
        ctx.forget_the_gone();
    }
}

/// Resolves on `shutdown` when no list filled the store yet. Reconciles start only once the first
/// list filled it, so there is nothing to wait for, and kube-runtime's graceful shutdown would
/// wait for the store forever.
async fn stopped_before_the_first_list(
    shutdown: impl std::future::Future<Output = ()>,
    store: Store<ApiKeyRotation>,
) {
    shutdown.await;
    if store.wait_until_ready().now_or_never().is_none() {
        return;
    }
    std::future::pending::<()>().await
}

/// The rotations a Valkey loss may have hit, each with its cached record view dropped so that its
/// reconcile reads Valkey afresh and writes back what is missing.
fn rotations_hit(
    losses: tokio::sync::mpsc::UnboundedReceiver<Loss>,
    rotations: Store<ApiKeyRotation>,
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<ApiKeyRotation>> + Send + 'static {
    futures::stream::unfold(losses, |mut losses| async move {
        losses.recv().await.map(|loss| (loss, losses))
    })
    .flat_map(move |loss| {
        let hit: Vec<_> = rotations
            .state()
            .into_iter()
            .filter(|akr| loss.hits(akr))
            .map(|akr| {
                ctx.forget_records(&akr);
                if loss.reconnected {
                    ctx.valkey_is_back(&akr);
                }
                ObjectRef::from_obj(&*akr)
            })
            .collect();
        futures::stream::iter(hit)
    })
}

/// What the controller's store keeps of an ApiKeyRotation's metadata: all but its managed fields
/// and `kubectl apply`'s copy of the last applied object.
fn slim_rotation(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}
