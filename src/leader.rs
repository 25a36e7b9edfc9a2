//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so that several
//! replicas can run and only one acts.
//!
//! The crate renews the Lease `grace` seconds before it expires. A renewal that fails (API down,
//! conflict lost) makes this instance step down at once, before the Lease can expire and another
//! instance take it: two leaders never act at the same time, as long as clocks agree within
//! `grace`.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Election {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    pub lease_name: String,
    /// Unique per instance (the pod name).
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// The holder renews this long before the Lease would expire.
    pub renew_grace: Duration,
}

/// One instance's part in the election; dropping it stops campaigning (without releasing).
pub struct Candidate {
    manager: Arc<LeaseManager>,
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Candidate {
    pub async fn start(client: Client, election: &Election) -> anyhow::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(election.lease_duration.as_secs())
            .with_grace(election.renew_grace.as_secs())
            .with_field_manager(format!("apikey-rotator-{}", election.identity))
            .build()
            .await?;
        let manager = Arc::new(manager);
        let (tx, state) = watch::channel(false);
        let campaign = manager.clone();
        let identity = election.identity.clone();
        let task = tokio::spawn(async move {
            loop {
                match campaign.changed().await {
                    Ok(leading) => {
                        let was_leading = tx.send_replace(leading);
                        if leading {
                            tracing::info!(%identity, "acquired the leader Lease");
                        } else if was_leading {
                            tracing::error!(%identity, "lost the leader Lease");
                            return;
                        }
                    }
                    Err(e) if *tx.borrow() => {
                        // Could not renew: stop acting now rather than when the Lease expires.
                        tracing::error!(%identity, error = %e, "could not renew the leader Lease; stepping down");
                        tx.send_replace(false);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%identity, error = %e, "leader election failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self {
            manager,
            state,
            task,
        })
    }

    /// Resolves once this instance leads (never, if it lost the election for good).
    pub async fn leading(&mut self) {
        if self.state.wait_for(|leading| *leading).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when this instance no longer leads.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leading| !*leading).await;
    }

    /// Gives the Lease up so a standby takes over without waiting for it to expire.
    pub async fn release(self) {
        self.task.abort();
        if let Err(e) = self.manager.release().await {
            tracing::warn!(error = %e, "could not release the leader Lease; it will expire");
        }
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
