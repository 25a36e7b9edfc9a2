//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas can run and only
//! one acts. The rules are client-go's `leaderelection`:
//!
//! - every write of the Lease carries the resourceVersion it was read at, so of two replicas
//!   racing for it one wins and the other gets 409 and reads again;
//! - a Lease held by another is taken only once its record went unchanged, as seen by this
//!   replica's own monotonic clock, for a whole `leaseDurationSeconds` (clocks of different
//!   machines are never compared);
//! - the holder renews every retry period; finding the Lease taken makes it step down at once,
//!   and so does having renewed none for `leaseDurationSeconds - grace` (API down), which is
//!   before any other replica can see the Lease unchanged for a whole `leaseDurationSeconds`;
//! - a release clears the holder only while this replica still holds it (the same precondition),
//!   so a replica that stalled past its Lease never clears the one a successor just took
//!   (kube-lease-manager's forced release re-read the Lease and cleared any holder).

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use std::time::{Duration, Instant};
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
    lease: LeaseClient,
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Candidate {
    pub async fn start(client: Client, election: &Election) -> anyhow::Result<Self> {
        anyhow::ensure!(
            election.renew_grace < election.lease_duration,
            "the renew grace ({:?}) must be shorter than the lease duration ({:?})",
            election.renew_grace,
            election.lease_duration
        );
        let lease = LeaseClient {
            api: Api::namespaced(client, &election.namespace),
            election: election.clone(),
        };
        let (tx, state) = watch::channel(false);
        let task = tokio::spawn(campaign(lease.clone(), tx));
        Ok(Self { lease, state, task })
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

    /// Gives the Lease up so a standby takes over without waiting for it to expire; only while
    /// this instance still holds it.
    pub async fn release(mut self) {
        self.task.abort();
        // A renewal in flight lands before the release reads the Lease.
        let _ = (&mut self.task).await;
        if let Err(e) = self.lease.release().await {
            tracing::warn!(error = %e, "could not release the leader Lease; it will expire");
        }
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often the holder renews and a standby looks: at least three tries before the holder's
/// deadline (`lease_duration - grace`), and at most every 2 s.
fn retry_period(election: &Election) -> Duration {
    let deadline = election.lease_duration - election.renew_grace;
    (deadline / 3).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Campaigns until this instance lost a Lease it held (then it stops: the process restarts and
/// stands by). The holder renews every retry period; a renewal that fails is retried, but once
/// none succeeded for `lease_duration - grace` (each round is cut off at that deadline, so a hung
/// request cannot outlast it) it steps down, before any other instance can see the Lease
/// unchanged for a whole `lease_duration`. A renewal refused with 409 (another write came first)
/// also steps down: client-go would read again, but whoever wrote may hold it now.
async fn campaign(lease: LeaseClient, tx: watch::Sender<bool>) {
    let identity = lease.election.identity.clone();
    let renew_deadline = lease.election.lease_duration - lease.election.renew_grace;
    let mut seen = Observed::default();
    let mut renewed = Instant::now();
    loop {
        let leading = *tx.borrow();
        let started = Instant::now();
        let limit = if leading {
            renew_deadline.saturating_sub(renewed.elapsed())
        } else {
            lease.election.lease_duration
        };
        let round = tokio::time::timeout(limit, lease.try_acquire_or_renew(&mut seen, leading));
        match round.await {
            Ok(Ok(Round::Held)) => {
                // Stamped when the request left: the Lease was renewed no earlier than that.
                renewed = started;
                if !leading {
                    tracing::info!(%identity, "acquired the leader Lease");
                    tx.send_replace(true);
                }
            }
            Ok(Ok(Round::HeldByAnother | Round::LostRace)) if leading => {
                tracing::error!(%identity, "lost the leader Lease");
                tx.send_replace(false);
                return;
            }
            Ok(Ok(_)) => {}
            _ if leading && renewed.elapsed() >= renew_deadline => {
                // Could not renew in time: stop acting now, before the Lease can pass on.
                tracing::error!(%identity, "could not renew the leader Lease in time; stepping down");
                tx.send_replace(false);
                return;
            }
            Ok(Err(e)) => tracing::warn!(%identity, error = %e, "leader election: retrying"),
            Err(_) => {
                tracing::warn!(%identity, "leader election: the API did not answer; retrying")
            }
        }
        tokio::time::sleep(retry_period(&lease.election)).await;
    }
}

/// What one round of the campaign found.
enum Round {
    /// This instance holds the Lease (acquired or renewed).
    Held,
    /// Another instance holds it and its record is fresh.
    HeldByAnother,
    /// Another write came first (409): read again.
    LostRace,
}

/// The Lease record as this instance last saw it change, and when (its own monotonic clock).
#[derive(Default)]
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    at: Option<Instant>,
}

impl Observed {
    /// Notes that the Lease is gone; true while one was seen held less than `duration` ago.
    fn absent_within(&mut self, duration: Duration) -> bool {
        let held_before = self
            .record
            .as_ref()
            .is_some_and(|(holder, _)| holder.as_deref().is_some_and(|h| !h.is_empty()));
        if held_before {
            self.record = Some((None, None));
            self.at = Some(Instant::now());
            return true;
        }
        self.at.is_some_and(|at| at.elapsed() < duration) && self.record.is_some()
    }

    /// Notes the record; true when it has not changed for `duration` (the holder stopped renewing).
    fn unchanged_for(&mut self, spec: &LeaseSpec, duration: Duration) -> bool {
        let record = Some((spec.holder_identity.clone(), spec.renew_time.clone()));
        if self.record != record || self.at.is_none() {
            self.record = record;
            self.at = Some(Instant::now());
            return false;
        }
        self.at.is_some_and(|at| at.elapsed() >= duration)
    }
}

#[derive(Clone)]
struct LeaseClient {
    api: Api<Lease>,
    election: Election,
}

impl LeaseClient {
    fn now() -> MicroTime {
        MicroTime(Timestamp::now())
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.election.identity.clone()),
            lease_duration_seconds: Some(self.election.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquired.or_else(|| Some(Self::now())),
            renew_time: Some(Self::now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: acquire a free or expired Lease, or renew this instance's.
    async fn try_acquire_or_renew(
        &self,
        seen: &mut Observed,
        leading: bool,
    ) -> Result<Round, kube::Error> {
        let me = self.election.identity.as_str();
        let Some(mut lease) = self.api.get_opt(&self.election.lease_name).await? else {
            // Deleted under its holder (by hand): that holder may still act, so a standby that
            // saw it held waits a whole duration, as for any change; the holder steps down.
            if leading || seen.absent_within(self.election.lease_duration) {
                return Ok(Round::HeldByAnother);
            }
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(self.election.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return written(self.api.create(&write_params(), &new).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let held_by_me = spec.holder_identity.as_deref() == Some(me);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.election.lease_duration);
        let expired = seen.unchanged_for(&spec, duration);
        if !held_by_me && !free && !expired {
            return Ok(Round::HeldByAnother);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if held_by_me {
            self.spec(transitions, spec.acquire_time.clone())
        } else {
            self.spec(transitions.saturating_add(1), None)
        });
        // `replace` sends the resourceVersion it was read at: a concurrent write wins, this 409s.
        let name = lease.name_any();
        written(self.api.replace(&name, &write_params(), &lease).await)
    }

    /// Clears the holder, only if it is still this instance (at the resourceVersion read).
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.election.lease_name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(Self::now());
        let name = lease.name_any();
        match self.api.replace(&name, &write_params(), &lease).await {
            // Changed since it was read: another instance holds it now, or will.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(crate::crd::FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// A write of the Lease: held, or refused with 409 because another instance wrote first.
fn written<T>(result: Result<T, kube::Error>) -> Result<Round, kube::Error> {
    match result {
        Ok(_) => Ok(Round::Held),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::LostRace),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(duration: u64, grace: u64) -> Election {
        Election {
            namespace: "ns".into(),
            lease_name: "lease".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(duration),
            renew_grace: Duration::from_secs(grace),
        }
    }

    #[test]
    fn the_holder_gets_three_tries_before_its_deadline() {
        for (d, g) in [(15, 5), (4, 2), (3, 2), (10, 9), (60, 1)] {
            let e = election(d, g);
            let deadline = e.lease_duration - e.renew_grace;
            assert!(retry_period(&e) * 3 <= deadline, "{d}/{g}");
            assert!(retry_period(&e) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn a_lease_is_taken_only_after_a_whole_duration_unchanged_or_after_it_vanished() {
        let held = |holder: &str| LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        };
        let mut seen = Observed::default();
        // The first sight of a held Lease starts the wait; so does any change.
        assert!(!seen.unchanged_for(&held("b"), Duration::ZERO));
        assert!(seen.unchanged_for(&held("b"), Duration::ZERO));
        assert!(!seen.unchanged_for(&held("c"), Duration::ZERO));
        // Gone after being held: wait; never seen: create at once.
        assert!(seen.absent_within(Duration::from_secs(60)));
        assert!(seen.absent_within(Duration::from_secs(60)));
        assert!(!seen.absent_within(Duration::ZERO));
        assert!(!Observed::default().absent_within(Duration::from_secs(60)));
    }
}
