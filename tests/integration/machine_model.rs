//! The pure state machine driven against an abstract world, over thousands of random runs with
//! crashes (lost status writes, repeated actions), slow and failing rollouts and lost Valkey
//! records, checking the safety properties at every single step.

use apikey_rotator::crd::{ApiKeyRotationSpec, ApiKeyRotationStatus};
use apikey_rotator::key::KeyId;
use apikey_rotator::pods::PodSummary;
use apikey_rotator::rotation::{
    Action, ConsumerView, Observation, Plan, PlanNotes, ProbeStage, RecordView, TargetView,
    VaultView, decide,
};
use apikey_rotator::workload::RolloutState;
use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeSet;

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Clone)]
struct Target {
    annotation: Option<String>,
    rolled_back_in: Option<String>,
    /// Key the running pods hold; during a rollout both the old and the new.
    running: BTreeSet<String>,
    rollout_done_at: Option<Timestamp>,
    failing: bool,
    secret_restores: Option<String>,
    /// What the Secret held while the current rollout started pods: they run that once done.
    reads: BTreeSet<String>,
    /// Pods of a finished rollout still terminating: the key they hold, until when.
    terminating: Vec<(String, Timestamp)>,
}

/// A pod that reads the consumers' Secret but belongs to no target (a worker, a Job's pod).
#[derive(Clone, Debug)]
struct OtherPod {
    name: String,
    key: String,
    created: Timestamp,
    /// Deleted, and terminating until then.
    terminating_until: Option<Timestamp>,
}

struct World {
    rng: Rng,
    now: Timestamp,
    spec: ApiKeyRotationSpec,
    status: ApiKeyRotationStatus,
    trigger: Option<String>,
    vault: Option<VaultView>,
    consumer: Option<String>,
    records: BTreeSet<String>,
    /// The operator's markers: written and deleted with a record, lost with it in a flush.
    markers: BTreeSet<String>,
    targets: Vec<Target>,
    minted: Vec<String>,
    /// When each key was last held by a running pod.
    last_run: std::collections::HashMap<String, Timestamp>,
    rollbacks: usize,
    counter: u64,
    /// Verification probes and a metrics gate are configured; the API and Prometheus answer
    /// (now and then wrongly: a refused new key, an old key still accepted, a high or missing
    /// reading).
    checks: bool,
    /// The validation windows (by their start stamp) in which the gate read over its threshold,
    /// and the decision that read it was recorded (a crash before the status write loses the
    /// reading, and a fresh one decides).
    high_readings: BTreeSet<String>,
    unrecorded_high: Option<String>,
    /// Targets that completed in this rotation are scaled now and then (an HPA, a drain): their
    /// new pods take longer than the deadline, or never become ready.
    scale_ups: bool,
    /// Rollouts the rotation starts never fail (so any failure comes from elsewhere).
    no_roll_failures: bool,
    /// The vault Secret is deleted now and then.
    vault_losses: bool,
    /// Someone puts the old key back into the consumers' Secret now and then while targets roll
    /// (a GitOps tool syncing the manifest it knows).
    secret_reverts: bool,
    /// Pods of no target read the Secret (and restart now and then); the revocation must wait
    /// for them (`untrackedConsumers: Wait`).
    others: Vec<OtherPod>,
    other_pods: bool,
    /// When the consumers' Secret last changed, by the API server's clock (`now`).
    consumer_changed: Option<Timestamp>,
    /// The operator's clock runs this far ahead of the API server's (behind when negative).
    clock_skew: SignedDuration,
    /// The last two targets were chosen by one selector: they roll at once.
    grouped: bool,
    /// How often the second selected target was stamped while the first still rolled.
    rolling_together: Option<usize>,
}

impl World {
    fn new(seed: u64, adopt: bool) -> Self {
        Self::with_policy(seed, adopt, "Halt")
    }

    fn with_policy(seed: u64, adopt: bool, policy: &str) -> Self {
        let spec: ApiKeyRotationSpec = serde_json::from_value(serde_json::json!({
            "valkey": {"url": "redis://valkey:6379"},
            "validationWindowSeconds": 30,
            "revokeRecheckSeconds": 2,
            "progressDeadlineSeconds": 120,
            "failurePolicy": policy,
        }))
        .unwrap();
        let initial = adopt.then(|| "k-initial".to_string());
        let targets = spec
            .targets
            .iter()
            .map(|_| Target {
                annotation: None,
                rolled_back_in: None,
                running: initial.iter().cloned().collect(),
                rollout_done_at: None,
                failing: false,
                secret_restores: None,
                reads: BTreeSet::new(),
                terminating: Vec::new(),
            })
            .collect();
        Self {
            rng: Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1),
            now: "2026-11-25T12:00:00Z".parse().unwrap(),
            spec,
            status: ApiKeyRotationStatus::default(),
            trigger: None,
            vault: None,
            consumer: initial,
            records: BTreeSet::new(),
            markers: BTreeSet::new(),
            targets,
            minted: Vec::new(),
            last_run: Default::default(),
            rollbacks: 0,
            counter: 0,
            checks: false,
            high_readings: BTreeSet::new(),
            unrecorded_high: None,
            scale_ups: false,
            no_roll_failures: false,
            vault_losses: false,
            secret_reverts: false,
            others: Vec::new(),
            other_pods: false,
            consumer_changed: None,
            clock_skew: SignedDuration::ZERO,
            grouped: false,
            rolling_together: None,
        }
    }

    fn with_checks(seed: u64, adopt: bool, policy: &str) -> Self {
        let mut w = Self::with_policy(seed, adopt, policy);
        w.checks = true;
        w.spec.verification = Some(
            serde_json::from_value(serde_json::json!({"url": "http://sirius-api:9001/host/"}))
                .unwrap(),
        );
        w.spec.metrics_gate = Some(
            serde_json::from_value(serde_json::json!({
                "prometheusUrl": "http://prometheus:9090", "query": "q", "threshold": 1.0, "intervalSeconds": 10
            }))
            .unwrap(),
        );
        w
    }

    /// Decides, answering the probes and gate queries the decision asks for, as the reconciler
    /// does.
    fn decide(&mut self) -> Plan {
        self.unrecorded_high = None;
        let mut o = self.observe();
        let mut plan = decide(&o);
        for _ in 0..3 {
            match plan.action {
                Action::Probe { stage } => {
                    let vault = self.vault.clone().unwrap();
                    let (key, old) = match stage {
                        ProbeStage::OldKeyRefused => (vault.current.0.clone(), true),
                        _ => (vault.pending.as_ref().unwrap().0.0.clone(), false),
                    };
                    let accepted = self.records.contains(&key);
                    // A wrong answer now and then: the API refuses the new key, or still takes
                    // the old one.
                    let accepted = if self.rng.chance(10) { old } else { accepted };
                    o.probe = Some((stage, Ok(if accepted { 200 } else { 401 })));
                }
                Action::QueryGate => {
                    let roll = self.rng.next() % 100;
                    o.gate = Some(match roll {
                        0..3 => Err("prometheus is down".into()),
                        3..8 => Ok(2.0),
                        _ => Ok(0.0),
                    });
                    if o.gate == Some(Ok(2.0))
                        && let Some(started) = self
                            .status
                            .current_rotation
                            .as_ref()
                            .and_then(|r| r.validation_started_at.clone())
                    {
                        self.unrecorded_high = Some(started);
                    }
                }
                Action::CheckPods => o.pods = Some(Ok(self.pod_summaries())),
                _ => return plan,
            }
            plan = decide(&o);
        }
        panic!(
            "a probe answer did not lead to a decision: {:?}",
            plan.action
        )
    }

    /// A key's id as Sirius's are shaped (64 lowercase hex), and reversible: the key's bytes in
    /// hex, padded with zero bytes.
    fn id(key: &str) -> KeyId {
        KeyId(format!("{:0<64}", hex::encode(key)))
    }

    fn observe(&self) -> Observation {
        Observation {
            name: "ns/model".into(),
            probe: None,
            gate: None,
            plan: PlanNotes {
                selected_by: (0..self.targets.len())
                    .map(|i| (self.grouped && i > 0).then(|| "tier=backend".to_string()))
                    .collect(),
                ..Default::default()
            },
            pods: None,
            generation: Some(1),
            spec: self.spec.clone(),
            status: self.status.clone(),
            trigger: self.trigger.clone(),
            outside_windows: None,
            now: self.now + self.clock_skew,
            vault: self.vault.clone(),
            consumer: match &self.consumer {
                None => ConsumerView::Missing,
                Some(k) => ConsumerView::Holds(Some(Self::id(k))),
            },
            consumer_labelled: true,
            consumer_changed_at: self.consumer_changed,
            consumer_immutable: false,
            consumer_key_rewritten: None,
            records: RecordView {
                current: self
                    .vault
                    .as_ref()
                    .is_some_and(|v| self.records.contains(&v.current.0)),
                pending: self
                    .vault
                    .as_ref()
                    .and_then(|v| v.pending.as_ref())
                    .is_some_and(|(p, _)| self.records.contains(&p.0)),
                bootstrap_flag: false,
                current_marked: self
                    .vault
                    .as_ref()
                    .is_some_and(|v| self.markers.contains(&v.current.0)),
                ..Default::default()
            },
            targets: self
                .targets
                .iter()
                .map(|t| TargetView::Found {
                    paused: false,
                    annotation: t.annotation.clone(),
                    rolled_back_in: t.rolled_back_in.clone(),
                    secret_restores: t.secret_restores.clone(),
                    cannot_roll: None,
                    rollout: match (t.rollout_done_at, t.failing) {
                        (_, true) => RolloutState::Failed("ProgressDeadlineExceeded".into()),
                        (Some(at), _) if at <= self.now => RolloutState::Complete,
                        (None, _) => RolloutState::Complete,
                        _ => RolloutState::Progressing("rolling".into()),
                    },
                })
                .collect(),
        }
    }

    /// The pods the reconciler would list: every target pod (running or terminating) and the
    /// others, with what the machine may know of them (annotations, creation), never their key.
    fn pod_summaries(&self) -> Vec<PodSummary> {
        let mut out = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let pods = t
                .running
                .iter()
                .map(|k| (k, false))
                .chain(t.terminating.iter().map(|(k, _)| (k, true)));
            for (n, (key, terminating)) in pods.enumerate() {
                // Created from the template stamped with its key, or from an older one.
                let stamped = t.annotation.as_deref() == Some(Self::id(key).as_str());
                out.push(PodSummary {
                    name: format!("t{i}-{n}"),
                    owner: Some(("ReplicaSet".into(), format!("t{i}-rs"))),
                    target: Some(i),
                    key_id: stamped.then(|| Self::id(key).0),
                    secret_restores: if stamped {
                        t.secret_restores.clone()
                    } else {
                        None
                    },
                    rolled_back_in: if stamped {
                        t.rolled_back_in.clone()
                    } else {
                        None
                    },
                    created_at: None,
                    terminating,
                });
            }
        }
        for p in &self.others {
            out.push(PodSummary {
                name: p.name.clone(),
                owner: Some(("Job".into(), "worker".into())),
                target: None,
                key_id: None,
                secret_restores: None,
                rolled_back_in: None,
                created_at: Some(p.created),
                terminating: p.terminating_until.is_some(),
            });
        }
        out
    }

    /// The other pods restart now and then: one is deleted (and terminates for a while), a new
    /// one reads the Secret as it is now.
    fn churn_other_pods(&mut self) {
        let now = self.now;
        self.others
            .retain(|p| p.terminating_until.is_none_or(|until| until > now));
        if !self.other_pods || !self.rng.chance(4) {
            return;
        }
        let Some(key) = self.consumer.clone() else {
            return;
        };
        let linger = SignedDuration::from_secs((self.rng.next() % 90) as i64);
        if let Some(p) = self
            .others
            .iter_mut()
            .find(|p| p.terminating_until.is_none())
        {
            p.terminating_until = Some(now + linger);
        }
        self.counter += 1;
        self.others.push(OtherPod {
            name: format!("worker-{}", self.counter),
            key,
            created: now,
            terminating_until: None,
        });
    }

    fn mint(&mut self) -> String {
        self.counter += 1;
        let k = format!("k{}", self.counter);
        self.minted.push(k.clone());
        k
    }

    fn key_of(id: &str) -> String {
        let mut bytes = hex::decode(id).unwrap();
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        String::from_utf8(bytes).unwrap()
    }

    fn key_of_id(&self, id: &KeyId) -> String {
        Self::key_of(&id.0)
    }

    fn advance(&mut self, secs: i64) {
        self.now += SignedDuration::from_secs(secs);
        // Finished rollouts: only the new key keeps running.
        for t in &mut self.targets {
            // A failed rollout recovers some time later (someone fixed the image).
            if t.failing && self.rng.chance(5) {
                t.failing = false;
            }
            // Pods the rollout starts read the Secret as it is when they start.
            if t.rollout_done_at.is_some()
                && let Some(k) = &self.consumer
            {
                t.reads.insert(k.clone());
            }
            t.terminating.retain(|(_, until)| *until > self.now);
            if t.rollout_done_at.is_some_and(|at| at <= self.now) && !t.failing {
                if !t.reads.is_empty() {
                    let replaced = std::mem::replace(&mut t.running, std::mem::take(&mut t.reads));
                    // The old pods take a while to terminate, some longer than the window.
                    let linger = SignedDuration::from_secs((self.rng.next() % 90) as i64);
                    t.terminating
                        .extend(replaced.into_iter().map(|k| (k, self.now + linger)));
                }
                t.rollout_done_at = None;
            }
            // A pod restarts by itself now and then (a crash, an eviction) and reads the Secret
            // as it is at that moment; it keeps that key until its Deployment rolls again.
            if let Some(k) = &self.consumer
                && self.rng.chance(3)
            {
                t.running.insert(k.clone());
            }
        }
        self.note_running();
        self.churn_other_pods();
    }

    fn note_running(&mut self) {
        for t in &self.targets {
            for k in &t.running {
                self.last_run.insert(k.clone(), self.now);
            }
        }
    }

    /// Performs one action on the world; the safety properties are asserted here.
    fn perform(&mut self, action: &Action) {
        match action {
            Action::Probe { .. } | Action::QueryGate | Action::CheckPods => {
                panic!("probes and gate queries are answered in World::decide")
            }
            Action::CreateVault { adopt } => {
                let key = match (adopt, &self.consumer) {
                    (true, Some(k)) => k.clone(),
                    _ => self.mint(),
                };
                if self.vault.is_none() {
                    self.vault = Some(VaultView {
                        current: Self::id(&key),
                        pending: None,
                        current_raw_lost: false,
                    });
                }
            }
            Action::RestoreVault { as_pending } => {
                let held = Self::id(self.consumer.as_ref().expect("restored from no key"));
                assert!(self.vault.is_none(), "restored a vault that exists");
                self.vault = Some(match as_pending {
                    None => VaultView {
                        current: held,
                        pending: None,
                        current_raw_lost: false,
                    },
                    Some((revision, lost)) => VaultView {
                        current: lost.clone(),
                        pending: Some((held, *revision)),
                        current_raw_lost: true,
                    },
                });
            }
            Action::Register { current, pending } => {
                let v = self.vault.clone().unwrap();
                if *current && !v.current_raw_lost {
                    self.records.insert(v.current.0.clone());
                    self.markers.insert(v.current.0.clone());
                }
                if let (true, Some((p, _))) = (*pending, &v.pending) {
                    self.records.insert(p.0.clone());
                    self.markers.insert(p.0.clone());
                }
            }
            Action::MintPending { revision } => {
                let k = self.mint();
                self.vault.as_mut().unwrap().pending = Some((Self::id(&k), *revision));
            }
            Action::WriteConsumer { pending } => {
                let v = self.vault.clone().unwrap();
                let id = if *pending {
                    v.pending.unwrap().0
                } else {
                    assert!(
                        !v.current_raw_lost,
                        "delivered a key whose raw value is lost"
                    );
                    v.current
                };
                // Never hand consumers a key that is not valid.
                assert!(
                    self.records.contains(&id.0),
                    "consumers got {} before its record existed",
                    id.0
                );
                self.consumer = Some(self.key_of_id(&id));
                self.consumer_changed = Some(self.now);
            }
            Action::Roll {
                index,
                key_id,
                rollback_of,
                secret_restores,
            } => {
                assert!(
                    self.records.contains(&key_id.0),
                    "rolled to an unregistered key"
                );
                assert_eq!(
                    self.consumer.as_deref(),
                    Some(self.key_of_id(key_id).as_str()),
                    "rolled before the Secret switched"
                );
                let v = self.vault.clone().unwrap();
                let rolling_back = v.current == *key_id;
                if rolling_back {
                    // Reverse order: no later target still runs the new template.
                    let new = v.pending.unwrap().0;
                    for later in &self.targets[*index + 1..] {
                        assert_ne!(
                            later.annotation.as_ref(),
                            Some(&new.0),
                            "target {index} rolled back before a later one"
                        );
                    }
                } else {
                    for (i, earlier) in self.targets[..*index].iter().enumerate() {
                        assert_eq!(
                            earlier.annotation.as_ref(),
                            Some(&key_id.0),
                            "target {index} rolled before an earlier one"
                        );
                        // One selector's targets roll at once: only earlier entries completed.
                        if self.grouped && i > 0 {
                            continue;
                        }
                        assert!(
                            earlier.running == BTreeSet::from([self.key_of_id(key_id)]),
                            "target {index} rolled before an earlier one completed"
                        );
                    }
                }
                let new_key = BTreeSet::from([self.key_of_id(key_id)]);
                let first_still_rolls = self.targets[1].running != new_key;
                if let Some(n) = self.rolling_together.as_mut()
                    && *index == 2
                    && !rolling_back
                    && first_still_rolls
                {
                    *n += 1;
                }
                let duration = 1 + (self.rng.next() % 20) as i64;
                let failing = !rolling_back && !self.no_roll_failures && self.rng.chance(10);
                let k = self.key_of_id(key_id);
                let t = &mut self.targets[*index];
                t.annotation = Some(key_id.0.clone());
                t.rolled_back_in = rollback_of.map(|r| r.to_string());
                t.secret_restores = secret_restores.map(|n| n.to_string());
                t.reads = BTreeSet::from([k.clone()]);
                t.running.insert(k);
                t.rollout_done_at = Some(self.now + SignedDuration::from_secs(duration));
                t.failing = failing;
                self.note_running();
            }
            Action::Revoke { key_id } => {
                let revoked = self.key_of_id(key_id);
                let r = self.status.current_rotation.clone();
                // A revocation outside a rotation is of a key from a lost vault's set-up; inside
                // one, of the old key, the new key of a rollback, or an undelivered new key.
                let old_key_revocation = r.as_ref().is_some_and(|r| {
                    r.rolling_back.is_none() && r.old_key_id.as_ref() == Some(&key_id.0)
                });
                if let (true, true, Some(r)) = (self.checks, old_key_revocation, &r) {
                    assert!(
                        r.verified_before_revoke_at.is_some(),
                        "revoked before the API accepted the new key"
                    );
                    let window_end: Timestamp =
                        r.validation_started_at.as_ref().unwrap().parse().unwrap();
                    let window_end = window_end
                        + SignedDuration::from_secs(self.spec.validation_window_seconds as i64);
                    let checked: Timestamp = r
                        .gate_checked_at
                        .as_ref()
                        .expect("revoked without a metrics gate reading")
                        .parse()
                        .unwrap();
                    assert!(
                        checked >= window_end,
                        "revoked without a gate reading at the window's end"
                    );
                    assert!(
                        !self
                            .high_readings
                            .contains(r.validation_started_at.as_ref().unwrap()),
                        "revoked although the gate read over its threshold in this window"
                    );
                }
                for t in &self.targets {
                    assert!(
                        !t.running.contains(&revoked),
                        "revoked a key a target still runs"
                    );
                    assert!(
                        !t.terminating.iter().any(|(k, _)| *k == revoked),
                        "revoked a key a terminating pod still holds"
                    );
                }
                for p in &self.others {
                    assert_ne!(p.key, revoked, "revoked a key {} still holds", p.name);
                }
                assert_ne!(
                    self.consumer.as_deref(),
                    Some(revoked.as_str()),
                    "revoked the key the Secret holds"
                );
                if let Some(last) = self.last_run.get(&revoked) {
                    let window =
                        SignedDuration::from_secs(self.spec.validation_window_seconds as i64);
                    assert!(
                        self.now.duration_since(*last) >= window,
                        "revoked {revoked} before the validation window passed"
                    );
                }
                self.records.remove(&key_id.0);
                self.markers.remove(&key_id.0);
            }
            Action::Promote => {
                if self.checks {
                    let r = self.status.current_rotation.as_ref().unwrap();
                    assert!(
                        r.old_key_refused_at.is_some(),
                        "finished before the API refused the old key"
                    );
                }
                let v = self.vault.as_mut().unwrap();
                if let Some((p, _)) = v.pending.take() {
                    v.current = p;
                    v.current_raw_lost = false;
                }
            }
            Action::DropPending => {
                let v = self.vault.as_mut().unwrap();
                assert!(!v.current_raw_lost, "dropped the only raw key left");
                v.pending = None;
            }
            Action::RecordHistory { result, .. } => {
                self.rollbacks += usize::from(*result == "RolledBack");
                if *result == "Succeeded" {
                    let r = self.status.current_rotation.as_ref().unwrap();
                    let old = r.old_key_id.as_ref().unwrap();
                    assert!(
                        !self.records.contains(old),
                        "finished while the old key {old} is still valid"
                    );
                }
            }
            Action::StatusOnly | Action::SetBootstrapFlag => {}
            Action::Wait { requeue_after } => {
                let secs = requeue_after
                    .map(|d| d.as_secs().clamp(1, 30) as i64)
                    .unwrap_or(30);
                self.advance(secs);
            }
        }
    }

    /// A target this rotation completed is scaled up: the new pods read the Secret as it is, and
    /// take longer than the progress deadline to become ready, or never do.
    fn scale_a_completed_target(&mut self) {
        let Some(r) = &self.status.current_rotation else {
            return;
        };
        let completed: Vec<usize> = r
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == apikey_rotator::crd::TargetState::Complete)
            .map(|(i, _)| i)
            .collect();
        if completed.is_empty() {
            return;
        }
        let i = completed[(self.rng.next() % completed.len() as u64) as usize];
        let slow = self.now + SignedDuration::from_secs(600);
        let failing = self.rng.chance(50);
        let consumer = self.consumer.clone();
        let t = &mut self.targets[i];
        t.running.extend(consumer);
        t.rollout_done_at = Some(slow);
        t.failing = failing;
        self.note_running();
    }

    /// The consumers' Secret gets the old key back while a forward rotation rolls.
    fn revert_the_secret(&mut self) {
        let (Some(r), Some(v)) = (&self.status.current_rotation, &self.vault) else {
            return;
        };
        if r.rolling_back.is_some()
            || r.step < apikey_rotator::crd::Step::Roll
            || v.pending.is_none()
        {
            return;
        }
        self.consumer = Some(Self::key_of(&v.current.0));
        self.consumer_changed = Some(self.now);
    }

    /// Every key a pod holds is valid, once set-up registered the first key.
    fn check_no_401(&self) {
        if self.status.revision == 0 && self.status.current_rotation.is_none() {
            return;
        }
        for t in &self.targets {
            for k in t.running.iter().chain(t.terminating.iter().map(|(k, _)| k)) {
                assert!(
                    self.records.contains(&Self::id(k).0),
                    "a pod holds {k}, which has no record"
                );
            }
        }
        for p in &self.others {
            assert!(
                self.records.contains(&Self::id(&p.key).0),
                "{} holds {}, which has no record",
                p.name,
                p.key
            );
        }
    }
}

fn run(seed: u64, adopt: bool, crash_percent: u64, rotations: u64) -> World {
    run_with_policy(seed, adopt, crash_percent, rotations, "Halt")
}

fn run_with_policy(
    seed: u64,
    adopt: bool,
    crash_percent: u64,
    rotations: u64,
    policy: &str,
) -> World {
    run_world(
        World::with_policy(seed, adopt, policy),
        seed,
        crash_percent,
        rotations,
    )
}

fn run_world(mut w: World, seed: u64, crash_percent: u64, rotations: u64) -> World {
    let mut steps = 0;
    let mut flushes = 0;
    let mut vault_losses = 0;
    while w.status.revision < rotations {
        steps += 1;
        assert!(
            steps < 20_000,
            "seed {seed}: no progress, status {:?}",
            w.status
        );
        if w.status.current_rotation.is_none()
            && w.status.active_key_id.is_some()
            && w.consumer.is_some()
        {
            w.trigger = Some(format!("t{}", w.status.revision + 1));
        }
        // Valkey data loss now and then.
        if w.rng.chance(1) && flushes < 3 && w.vault.is_some() {
            flushes += 1;
            w.records.clear();
            w.markers.clear();
            // The records come back before anyone notices: the next decision must re-register
            // (during set-up, once the status names the key).
            let mut plan = w.decide();
            if w.status.active_key_id.as_ref() != w.vault.as_ref().map(|v| &v.current.0)
                && plan.action == Action::StatusOnly
            {
                w.status = plan.status;
                plan = w.decide();
            }
            assert!(
                matches!(
                    plan.action,
                    Action::Register { .. } | Action::CreateVault { .. }
                ),
                "seed {seed}: after a flush the machine did {:?}",
                plan.action
            );
            w.perform(&plan.action);
            w.status = plan.status;
            continue;
        }
        if w.scale_ups && w.rng.chance(3) {
            w.scale_a_completed_target();
        }
        if w.secret_reverts && w.rng.chance(2) {
            w.revert_the_secret();
        }
        if w.vault_losses && w.vault.is_some() && w.rng.chance(1) && vault_losses < 3 {
            vault_losses += 1;
            w.vault = None;
        }
        let plan = w.decide();
        if std::env::var("MODEL_TRACE").is_ok_and(|v| v == seed.to_string()) {
            eprintln!(
                "{:?} {:?} vault={:?} consumer={:?} records={:?}",
                plan.action,
                plan.event.as_ref().map(|e| e.reason),
                w.vault.as_ref().map(|v| (
                    World::key_of(&v.current.0),
                    v.pending.as_ref().map(|p| World::key_of(&p.0.0))
                )),
                w.consumer,
                w.records
                    .iter()
                    .map(|r| World::key_of(r))
                    .collect::<Vec<_>>()
            );
        }
        // A crash may happen before the action (nothing done), or after it but before the status
        // write; either way the next decision starts from the world as it is.
        let crash = w.rng.next() % 100;
        if crash < crash_percent / 2 {
            continue;
        }
        w.perform(&plan.action);
        if crash < crash_percent {
            continue;
        }
        w.status = plan.status;
        if let Some(started) = w.unrecorded_high.take() {
            w.high_readings.insert(started);
        }
        if flushes == 0 {
            w.check_no_401();
        }
    }
    w
}

#[test]
fn thousands_of_runs_with_crashes_never_break_safety_and_always_finish() {
    for seed in 0..2_000 {
        let adopt = seed % 2 == 0;
        let w = run(seed, adopt, 30, 3);
        // One mint per rotation, plus the first key when there was nothing to adopt.
        let expected = 3 + usize::from(!adopt);
        assert_eq!(
            w.minted.len(),
            expected,
            "seed {seed}: minted {:?}",
            w.minted
        );
        let active = w.vault.as_ref().unwrap().current.clone();
        assert_eq!(w.consumer.as_deref().map(World::id), Some(active.clone()));
        assert_eq!(
            w.records.iter().cloned().collect::<Vec<_>>(),
            vec![active.0.clone()],
            "seed {seed}: only the active key's record is left"
        );
    }
}

#[test]
fn targets_one_selector_chose_roll_at_once_and_crashes_never_break_safety() {
    let mut together = 0;
    for seed in 0..800 {
        let adopt = seed % 2 == 0;
        let mut w = World::with_policy(seed, adopt, ["Halt", "Rollback"][(seed % 2) as usize]);
        w.grouped = true;
        w.rolling_together = Some(0);
        let w = run_world(w, seed, 30, 3);
        together += w.rolling_together.unwrap_or(0);
        assert_eq!(w.records.len(), 1, "seed {seed}: one valid key left");
    }
    assert!(
        together > 100,
        "the two selected targets rolled at once only {together} times"
    );
}

#[test]
fn no_revocation_while_any_pod_that_reads_the_secret_holds_the_old_key() {
    for seed in 0..600 {
        let adopt = seed % 2 == 0;
        let mut w = World::with_policy(seed, adopt, "Halt");
        w.other_pods = true;
        // The operator's clock an hour off the API server's either way, or not at all; and now
        // and then the old key put back into the Secret mid-rotation.
        w.clock_skew = SignedDuration::from_secs([-3600, 0, 3600][(seed % 3) as usize]);
        w.secret_reverts = seed % 4 >= 2;
        if let Some(k) = w.consumer.clone() {
            for n in 0..2 {
                w.others.push(OtherPod {
                    name: format!("worker-initial-{n}"),
                    key: k.clone(),
                    created: w.now,
                    terminating_until: None,
                });
            }
        }
        let w = run_world(w, seed, 30, 3);
        assert_eq!(w.minted.len(), 3 + usize::from(!adopt), "seed {seed}");
    }
}

#[test]
fn rollbacks_with_crashes_never_break_safety_and_leave_one_valid_key() {
    let mut rolled_back = 0;
    for seed in 0..1_000 {
        let w = run_with_policy(seed, seed % 2 == 0, 30, 3, "Rollback");
        rolled_back += w.rollbacks;
        let active = w.vault.as_ref().unwrap().current.clone();
        assert!(
            w.vault.as_ref().unwrap().pending.is_none(),
            "seed {seed}: a pending key was left behind"
        );
        assert_eq!(
            w.consumer.as_deref().map(World::id),
            Some(active.clone()),
            "seed {seed}"
        );
        assert_eq!(
            w.records.iter().cloned().collect::<Vec<_>>(),
            vec![active.0.clone()],
            "seed {seed}: only the active key's record is left"
        );
        for t in &w.targets {
            assert!(
                t.running.iter().all(|k| World::id(k) == active),
                "seed {seed}: every target runs the active key"
            );
        }
    }
    assert!(
        rolled_back > 50,
        "rollbacks were exercised only {rolled_back} times"
    );
}

#[test]
fn with_probes_and_a_metrics_gate_nothing_is_revoked_or_finished_unverified() {
    let mut rolled_back = 0;
    for seed in 0..600 {
        let policy = if seed % 3 == 0 { "Rollback" } else { "Halt" };
        let w = run_world(World::with_checks(seed, seed % 2 == 0, policy), seed, 30, 3);
        rolled_back += w.rollbacks;
        let active = w.vault.as_ref().unwrap().current.clone();
        assert_eq!(
            w.records.iter().cloned().collect::<Vec<_>>(),
            vec![active.0.clone()],
            "seed {seed}: only the active key's record is left"
        );
    }
    assert!(
        rolled_back > 10,
        "failed checks rolled back only {rolled_back} times"
    );
}

#[test]
fn a_completed_target_scaled_or_failing_later_never_fails_or_rolls_back_the_rotation() {
    for seed in 0..600 {
        let mut w = World::with_policy(seed, seed % 2 == 0, "Rollback");
        w.scale_ups = true;
        w.no_roll_failures = true;
        let w = run_world(w, seed, 30, 3);
        assert_eq!(w.rollbacks, 0, "seed {seed}: a later scale-up rolled back");
        let active = w.vault.as_ref().unwrap().current.clone();
        assert_eq!(
            w.records.iter().cloned().collect::<Vec<_>>(),
            vec![active.0.clone()],
            "seed {seed}: only the active key's record is left"
        );
    }
}

#[test]
fn a_secret_put_back_to_the_old_key_while_targets_roll_is_restored_and_they_roll_again() {
    let mut restored = 0;
    for seed in 0..800 {
        let mut w = World::with_policy(seed, seed % 2 == 0, "Halt");
        w.secret_reverts = true;
        let w = run_world(w, seed, 30, 3);
        restored += usize::from(w.targets.iter().any(|t| t.secret_restores.is_some()));
        let active = w.vault.as_ref().unwrap().current.clone();
        for t in &w.targets {
            assert!(
                t.running.iter().all(|k| World::id(k) == active),
                "seed {seed}: a target runs {:?}",
                t.running
            );
        }
        assert_eq!(
            w.records.iter().cloned().collect::<Vec<_>>(),
            vec![active.0.clone()],
            "seed {seed}"
        );
    }
    assert!(restored > 50, "restores exercised only {restored} times");
}

#[test]
fn a_lost_vault_is_recreated_from_a_key_the_status_vouches_for_and_no_key_is_left_valid() {
    let mut restored_mid_rotation = 0;
    for seed in 0..1_000 {
        let mut w = World::with_policy(seed, seed % 2 == 0, "Halt");
        w.vault_losses = true;
        let w = run_world(w, seed, 30, 3);
        let v = w.vault.as_ref().unwrap();
        assert!(!v.current_raw_lost && v.pending.is_none(), "seed {seed}");
        restored_mid_rotation += usize::from(w.minted.len() > 3 + usize::from(seed % 2 != 0));
        assert_eq!(
            w.consumer.as_deref().map(World::id),
            Some(v.current.clone())
        );
        assert_eq!(
            w.records.iter().cloned().collect::<Vec<_>>(),
            vec![v.current.0.clone()],
            "seed {seed}: only the active key's record is left (no orphan stays valid)"
        );
    }
    assert!(
        restored_mid_rotation > 10,
        "a vault lost before the switch (a second mint) happened only {restored_mid_rotation} times"
    );
}

#[test]
fn without_crashes_each_rotation_walks_the_steps_in_order() {
    let mut w = World::new(7, true);
    w.trigger = Some("go".into());
    let mut actions = Vec::new();
    while w.status.revision < 1 {
        let plan = w.decide();
        actions.push(match &plan.action {
            Action::CreateVault { .. } | Action::RestoreVault { .. } => "vault".to_string(),
            Action::Register { .. } => "register".into(),
            Action::MintPending { .. } => "mint".into(),
            Action::WriteConsumer { pending: true } => "switch".into(),
            Action::WriteConsumer { pending: false } => "deliver".into(),
            Action::Roll { index, .. } => format!("roll{index}"),
            Action::Revoke { .. } => "revoke".into(),
            Action::Promote => "promote".into(),
            Action::RecordHistory { .. } => "history".into(),
            Action::DropPending => "drop".into(),
            Action::Probe { .. } => "probe".into(),
            Action::QueryGate => "gate".into(),
            Action::CheckPods => "pods".into(),
            Action::StatusOnly | Action::SetBootstrapFlag => continue_marker(),
            Action::Wait { .. } => continue_marker(),
        });
        w.perform(&plan.action);
        w.status = plan.status;
        // The simulated rollouts never fail in this run.
        w.targets.iter_mut().for_each(|t| t.failing = false);
    }
    actions.retain(|a| !a.is_empty());
    actions.dedup();
    assert_eq!(
        actions,
        [
            "vault", "register", "mint", "register", "switch", "roll0", "roll1", "roll2", "revoke",
            "promote", "history"
        ],
    );
}

fn continue_marker() -> String {
    String::new()
}

#[test]
fn a_new_trigger_token_means_exactly_one_rotation() {
    let mut w = World::new(3, true);
    w.trigger = Some("once".into());
    for _ in 0..2_000 {
        let plan = w.decide();
        w.perform(&plan.action);
        w.status = plan.status;
        w.targets.iter_mut().for_each(|t| t.failing = false);
    }
    assert_eq!(w.status.revision, 1, "the same token never rotates twice");
    assert_eq!(w.status.last_trigger.as_deref(), Some("once"));
}

#[test]
fn suspend_holds_a_rotation_at_a_step_boundary_and_resume_finishes_it() {
    let mut w = World::new(11, true);
    w.trigger = Some("go".into());
    // Run until the first target is rolling.
    while !w.targets[0]
        .annotation
        .as_ref()
        .is_some_and(|a| World::key_of(a).starts_with('k'))
    {
        let plan = w.decide();
        w.perform(&plan.action);
        w.status = plan.status;
    }
    w.spec.suspend = true;
    let before: Vec<_> = w.targets.iter().map(|t| t.annotation.clone()).collect();
    for _ in 0..200 {
        let plan = w.decide();
        assert!(
            matches!(plan.action, Action::Wait { .. }),
            "suspended but did {:?}",
            plan.action
        );
        w.perform(&plan.action);
        w.status = plan.status;
    }
    assert_eq!(
        w.targets
            .iter()
            .map(|t| t.annotation.clone())
            .collect::<Vec<_>>(),
        before
    );
    w.spec.suspend = false;
    w.targets.iter_mut().for_each(|t| t.failing = false);
    for _ in 0..2_000 {
        if w.status.revision == 1 {
            break;
        }
        let plan = w.decide();
        w.perform(&plan.action);
        w.status = plan.status;
    }
    assert_eq!(w.status.revision, 1);
}
