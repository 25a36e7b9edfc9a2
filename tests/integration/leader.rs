//! Two operator processes, as the chart runs them (two replicas, leader election on a Lease, the
//! chart's RBAC): only the Lease holder acts; killing it hands over and the rotation in flight
//! completes with the key it had minted.

use crate::common::process::*;
use crate::common::*;
use apikey_rotator::key::RawKey;
use kube_sim::{Sim, SimOptions};
use serde_json::json;
use std::time::{Duration, Instant};

const LEASE: &str = "apikey-rotator-leader";
const LEASE_SECONDS: u64 = 4;

fn holder(sim: &Sim) -> Option<String> {
    sim.get_object("coordination.k8s.io", "leases", RELEASE_NS, LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// Requests made with `token` to anything but the Lease.
fn acting_requests(sim: &Sim, token: &str) -> Vec<(String, String, u64)> {
    sim.user_request_counts()
        .into_iter()
        .filter(|((t, _, resource), _)| t == token && resource != "leases")
        .map(|((_, verb, resource), n)| (verb, resource, n))
        .collect()
}

struct TwoReplicas {
    valkey: Valkey,
    sim: Sim,
    dir: tempfile::TempDir,
    a: OperatorProcess,
    b: OperatorProcess,
}

/// Sirius with rollouts slow enough to catch a rotation in flight, and two operator replicas.
async fn two_replicas() -> TwoReplicas {
    let valkey = Valkey::start();
    let sim = start_sim_with(SimOptions {
        pod_ready_after: Duration::from_millis(700),
        ..SimOptions::default()
    })
    .await;
    let lease = format!(
        "leaderElection.leaseDurationSeconds={LEASE_SECONDS},leaderElection.renewGraceSeconds=2"
    );
    let objects = render_chart(&[&lease]);
    create_rbac(&sim, &objects, &["token-a", "token-b"]);
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_chart_operator(&sim, &objects, dir.path(), "op-a", "token-a");
    let b = spawn_chart_operator(&sim, &objects, dir.path(), "op-b", "token-b");
    wait_for(Duration::from_secs(20), "a leader", || {
        holder(&sim).is_some()
    })
    .await;
    TwoReplicas {
        valkey,
        sim,
        dir,
        a,
        b,
    }
}

async fn start_rotation(r: &TwoReplicas) -> RawKey {
    let old = known_key();
    install_sirius(&r.sim, &r.valkey.url(), &old, 2, Some("first"), json!({})).await;
    old
}

fn new_key_id(sim: &Sim) -> Option<String> {
    in_flight(sim).and_then(|r| r.new_key_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_killed_leader_hands_over_mid_rotation() {
    let mut r = two_replicas().await;
    let leader = holder(&r.sim).unwrap();
    let (leader_token, standby, standby_token) = if leader == "op-a" {
        ("token-a", "op-b", "token-b")
    } else {
        ("token-b", "op-a", "token-a")
    };
    let _old = start_rotation(&r).await;

    // Kill the leader while it rolls the second target.
    wait_for(
        Duration::from_secs(30),
        "the rotation to reach sirius-ui",
        || in_flight(&r.sim).is_some_and(|c| c.step == Step::Roll && c.target_index == 1),
    )
    .await;
    let minted = new_key_id(&r.sim).expect("the new key is minted before the rollouts");
    assert!(
        acting_requests(&r.sim, standby_token).is_empty(),
        "the standby acted: {:?}",
        acting_requests(&r.sim, standby_token)
    );
    assert!(!acting_requests(&r.sim, leader_token).is_empty());
    let killed_at = Instant::now();
    if leader == "op-a" {
        r.a.kill();
    } else {
        r.b.kill();
    }

    wait_for(
        Duration::from_secs(LEASE_SECONDS + 5),
        "the standby to lead",
        || holder(&r.sim).as_deref() == Some(standby),
    )
    .await;
    let handover = killed_at.elapsed();
    // The Lease expires at most LEASE_SECONDS after the kill; kube-lease-manager then waits
    // 0.1 to 1 s before taking it (against two standbys colliding).
    assert!(
        handover <= Duration::from_millis(LEASE_SECONDS * 1000 + 1_500),
        "handover took {handover:?}"
    );
    eprintln!("handover after the kill: {handover:?}");

    wait_revision(&r.sim, 1).await;
    assert_eq!(
        status(&r.sim).active_key_id,
        Some(minted),
        "the new leader finished the rotation with the key minted before the kill"
    );
    assert!(!acting_requests(&r.sim, standby_token).is_empty());
    // The Events after the handover come from the new leader.
    let last = events(&r.sim)
        .into_iter()
        .rev()
        .find(|e| e["reason"] == "RotationSucceeded")
        .unwrap();
    assert_eq!(last["reportingInstance"], standby);
    drop(r.dir);
}

/// SIGTERM: the leader finishes what it was doing, gives the Lease up and exits 0, both right
/// after it started leading (before its first list) and later; the standby takes over
/// (kube-lease-manager's standby looks again when the Lease would have expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_exits_cleanly_and_gives_the_lease_up() {
    let mut r = two_replicas().await;
    let leader = holder(&r.sim).unwrap();
    let (leading, standby) = if leader == "op-a" {
        (&mut r.a, "op-b")
    } else {
        (&mut r.b, "op-a")
    };
    let Some(status) = leading.terminate(Duration::from_secs(10)) else {
        panic!(
            "the leader did not exit on SIGTERM:\n{}",
            leading.log_text()
        );
    };
    assert!(status.success(), "{status}: {}", leading.log_text());
    assert_eq!(holder(&r.sim), None, "the Lease was released");
    let released_at = Instant::now();
    wait_for(
        Duration::from_secs(LEASE_SECONDS + 2),
        "the standby to lead",
        || holder(&r.sim).as_deref() == Some(standby),
    )
    .await;
    eprintln!(
        "standby took over {:?} after the release",
        released_at.elapsed()
    );
    start_rotation(&r).await;
    wait_revision(&r.sim, 1).await;

    // The new leader, its watches running and a rotation behind it, stops as cleanly.
    let (new_leader, _) = if standby == "op-a" {
        (&mut r.a, ())
    } else {
        (&mut r.b, ())
    };
    let Some(status) = new_leader.terminate(Duration::from_secs(10)) else {
        panic!(
            "the new leader did not exit on SIGTERM:\n{}",
            new_leader.log_text()
        );
    };
    assert!(status.success(), "{status}: {}", new_leader.log_text());
    assert_eq!(holder(&r.sim), None);
}

fn election(identity: &str) -> apikey_rotator::leader::Election {
    apikey_rotator::leader::Election {
        namespace: NS.into(),
        lease_name: LEASE.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_grace: Duration::from_secs(1),
    }
}

fn lease_holder(sim: &Sim) -> Option<String> {
    sim.get_object("coordination.k8s.io", "leases", NS, LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// Two candidates start at once against no Lease: both create it, one wins and the other gets
/// 409; for the next seconds never both lead, and the Lease names the one that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_racing_for_a_new_lease_never_both_lead() {
    use apikey_rotator::leader::Candidate;
    let sim = start_sim().await;
    let (ea, eb) = (election("a"), election("b"));
    let (a, b) = tokio::join!(
        Candidate::start(client_for(&sim), &ea),
        Candidate::start(client_for(&sim), &eb),
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    tokio::select! {
        _ = a.leading() => {}
        _ = b.leading() => {}
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let leading = |c: &mut Candidate| futures::FutureExt::now_or_never(c.leading()).is_some();
        let (la, lb) = (leading(&mut a), leading(&mut b));
        assert!(!(la && lb), "both lead");
        assert!(la || lb, "neither leads");
        let expected = if la { "a" } else { "b" };
        assert_eq!(lease_holder(&sim).as_deref(), Some(expected));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leader that stalled past its Lease (here: the Lease rewritten to another holder, as a
/// successor takes it) and releases before it noticed never clears the successor's hold
/// (kube-lease-manager's forced release re-read the Lease and cleared whoever held it); a leader
/// that does notice steps down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leaders_release_never_clears_its_successors_lease() {
    use apikey_rotator::leader::Candidate;
    let sim = start_sim().await;
    let mut a = Candidate::start(client_for(&sim), &election("a"))
        .await
        .unwrap();
    a.leading().await;
    assert_eq!(lease_holder(&sim).as_deref(), Some("a"));
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    sim.merge_patch_object(
        "coordination.k8s.io",
        "leases",
        NS,
        LEASE,
        json!({"spec": {"holderIdentity": "b", "renewTime": now, "acquireTime": now}}),
    )
    .unwrap();
    a.release().await;
    assert_eq!(lease_holder(&sim).as_deref(), Some("b"));

    let mut c = Candidate::start(client_for(&sim), &election("c"))
        .await
        .unwrap();
    // "b" never renews: after a whole Lease duration unchanged, "c" takes it over.
    tokio::time::timeout(Duration::from_secs(8), c.leading())
        .await
        .expect("c leads once the Lease went unrenewed");
    sim.merge_patch_object(
        "coordination.k8s.io",
        "leases",
        NS,
        LEASE,
        json!({"spec": {"holderIdentity": "d"}}),
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.lost())
        .await
        .expect("c steps down once it sees the Lease taken");
}
