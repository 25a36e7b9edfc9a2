//! The `run` command: endpoints, leader election, then the controller while this instance leads.

use crate::controller::{self, Settings};
use crate::leader::{Candidate, Election};
use crate::metrics::Metrics;
use crate::server::{self, Health};
use futures::FutureExt;
use kube::Client;
use std::sync::Arc;

pub struct Options {
    /// `settings.namespace` is ignored: see `namespaces`.
    pub settings: Settings,
    /// Watch only these namespaces (one controller each); empty: every namespace.
    pub namespaces: Vec<String>,
    /// Absent: this instance acts alone (one replica, or tests).
    pub election: Option<Election>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub endpoints: Option<tokio::net::TcpListener>,
}

/// Runs until `shutdown` resolves (Ok) or leadership is lost (Err: exit, and the restart stands
/// by). A shutdown lets reconciles in flight finish; a lost Lease drops them at once, which is
/// safe because every step can be resumed.
pub async fn run(
    client: Client,
    mut options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let _endpoints = options
        .endpoints
        .take()
        .map(|listener| {
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                if let Err(e) = server::serve(listener, metrics, health).await {
                    tracing::error!(error = %e, "the metrics and health endpoints stopped");
                }
            })
        })
        .map(tokio_util::task::AbortOnDropHandle::new);
    let shutdown = shutdown.shared();

    let version = client.apiserver_version().await?;
    tracing::info!(
        server = %version.git_version,
        namespaces = %if options.namespaces.is_empty() { "(all)".to_string() } else { options.namespaces.join(",") },
        "connected to the API server"
    );

    let Some(election) = options.election.take() else {
        health.set_ready(true);
        metrics.set_leader(true);
        controllers(client, &options, metrics, shutdown).await;
        return Ok(());
    };

    let mut candidate = Candidate::start(client.clone(), &election).await?;
    health.set_ready(true);
    tracing::info!(lease = %election.lease_name, identity = %election.identity, "standing by for the leader Lease");
    tokio::select! {
        _ = candidate.leading() => {}
        _ = shutdown.clone() => {
            candidate.release().await;
            return Ok(());
        }
    }
    metrics.set_leader(true);
    let work = controllers(client, &options, metrics.clone(), shutdown);
    tokio::select! {
        _ = work => {
            metrics.set_leader(false);
            candidate.release().await;
            Ok(())
        }
        _ = candidate.lost() => {
            metrics.set_leader(false);
            health.set_ready(false);
            anyhow::bail!("lost the leader Lease; stopped acting")
        }
    }
}

/// One controller per watched namespace (a namespaced Role allows no cluster-wide watch), or one
/// for the whole cluster.
async fn controllers(
    client: Client,
    options: &Options,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    futures::future::join_all(scopes.into_iter().map(|namespace| {
        let settings = Settings {
            namespace,
            ..options.settings.clone()
        };
        controller::run_with_metrics(client.clone(), settings, metrics.clone(), shutdown.clone())
    }))
    .await;
}
