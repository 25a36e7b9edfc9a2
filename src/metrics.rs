//! Prometheus metrics. Rotation metrics are derived from status transitions (the status the
//! reconciler just wrote against the one before), so they count what happened, once, whichever
//! replica or restart did it.

use crate::crd::{ApiKeyRotationStatus, Phase, Step, TargetState};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum RotationResult {
    Succeeded,
    RolledBack,
}

/// Label values in Prometheus's snake case.
impl EncodeLabelValue for RotationResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            RotationResult::Succeeded => "succeeded",
            RotationResult::RolledBack => "rolled_back",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: RotationResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// (namespace, name) of an ApiKeyRotation.
type RotationName = (String, String);
/// A rotation's revision and step, and when this process first saw it there.
type StepSeen = (u64, Step, Instant);

const PHASES: [Phase; 5] = [
    Phase::Pending,
    Phase::Ready,
    Phase::Rotating,
    Phase::Suspended,
    Phase::Degraded,
];

/// Every metric the operator exports, registered under the `apikey_rotator` prefix.
pub struct Metrics {
    registry: Registry,
    reconcile_duration: Histogram,
    reconcile_errors: Family<ReasonLabels, Counter>,
    kubernetes_api_errors: Family<CodeLabels, Counter>,
    valkey_errors: Counter,
    valkey_change_feeds: Gauge,
    valkey_losses_reported: Counter,
    rotations: Family<ResultLabels, Counter>,
    rollout_failures: Counter,
    rotation_duration: Family<ResultLabels, Histogram>,
    step_duration: Family<StepLabels, Histogram>,
    targets_rolled: Counter,
    phase: Family<PhaseLabels, Gauge>,
    pods_on_old_key: Family<RotationLabels, Gauge>,
    leader: Gauge,
    /// When this process first saw each rotation's current step: (revision, step, since).
    steps_seen: Mutex<HashMap<RotationName, StepSeen>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("apikey_rotator");
        let metrics = Self {
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            reconcile_errors: Family::default(),
            kubernetes_api_errors: Family::default(),
            valkey_errors: Counter::default(),
            valkey_change_feeds: Gauge::default(),
            valkey_losses_reported: Counter::default(),
            rotations: Family::default(),
            rollout_failures: Counter::default(),
            rotation_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 16))
            }),
            step_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 18))
            }),
            targets_rolled: Counter::default(),
            phase: Family::default(),
            pods_on_old_key: Family::default(),
            leader: Gauge::default(),
            steps_seen: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        metrics.register(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    /// Every metric, by its exported name and help text.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile of an ApiKeyRotation took",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error, by reason (the Degraded condition's reason)",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "kubernetes_api_errors",
            "Kubernetes API requests that failed, by HTTP code (or 'connection')",
            self.kubernetes_api_errors.clone(),
        );
        registry.register(
            "valkey_errors",
            "Reconciles stopped because Valkey was unreachable or refused the operator",
            self.valkey_errors.clone(),
        );
        registry.register(
            "valkey_change_feeds",
            "Valkey change feeds following their server (0 for a server while it reconnects or \
             cannot give one; its data loss is then found at the resync)",
            self.valkey_change_feeds.clone(),
        );
        registry.register(
            "valkey_losses_reported",
            "Possible Valkey data losses a change feed reported (a flush, a missing record, a \
             reconnect)",
            self.valkey_losses_reported.clone(),
        );
        registry.register(
            "rotations",
            "Rotations that ended, by result: succeeded (old key revoked) or rolled_back",
            self.rotations.clone(),
        );
        registry.register(
            "rollout_failures",
            "Target rollouts that failed during a rotation",
            self.rollout_failures.clone(),
        );
        registry.register(
            "rotation_duration_seconds",
            "Time from a rotation's start to its end, by result",
            self.rotation_duration.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time a rotation spent in each step (Mint, Register, Switch, Roll, Validate, Revoke)",
            self.step_duration.clone(),
        );
        registry.register(
            "targets_rolled",
            "Target rollouts that finished during rotations",
            self.targets_rolled.clone(),
        );
        registry.register(
            "phase",
            "1 for each ApiKeyRotation's current phase, 0 for the others",
            self.phase.clone(),
        );
        registry.register(
            "pods_on_old_key",
            "Pods that read a rotation's consumers' Secret and may still hold the key it is about to \
             revoke, at its last pod-gate check (0 when no revocation waits)",
            self.pods_on_old_key.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader Lease (or runs without leader election)",
            self.leader.clone(),
        );
    }

    /// The name of every metric exported (as in its `# TYPE` line), for checks that the
    /// dashboard and the docs cover them all. Labelled families appear only once they hold a
    /// series, so each gets a placeholder one here.
    pub fn catalogue() -> Vec<String> {
        let metrics = Self::new();
        let any = || "any".to_string();
        let _ = metrics
            .reconcile_errors
            .get_or_create(&ReasonLabels { reason: any() });
        let _ = metrics
            .kubernetes_api_errors
            .get_or_create(&CodeLabels { code: any() });
        let result = ResultLabels {
            result: RotationResult::Succeeded,
        };
        let _ = metrics.rotations.get_or_create(&result);
        let _ = metrics.rotation_duration.get_or_create(&result);
        let _ = metrics
            .step_duration
            .get_or_create(&StepLabels { step: any() });
        let _ = metrics.phase.get_or_create(&PhaseLabels {
            namespace: any(),
            name: any(),
            phase: any(),
        });
        let _ = metrics.pods_on_old_key.get_or_create(&RotationLabels {
            namespace: any(),
            name: any(),
        });
        metrics
            .encode()
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next())
            .map(str::to_string)
            .collect()
    }

    /// The text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }

    pub fn valkey_change_feed_started(&self) {
        self.valkey_change_feeds.inc();
    }

    pub fn valkey_change_feed_ended(&self) {
        self.valkey_change_feeds.dec();
    }

    pub fn count_valkey_loss_reported(&self) {
        self.valkey_losses_reported.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn observe_reconcile(&self, seconds: f64) {
        self.reconcile_duration.observe(seconds);
    }

    pub fn count_reconcile_error(&self, reason: &str, api_code: Option<String>, valkey: bool) {
        self.reconcile_errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
        if let Some(code) = api_code {
            self.kubernetes_api_errors
                .get_or_create(&CodeLabels { code })
                .inc();
        }
        if valkey {
            self.valkey_errors.inc();
        }
    }

    /// Counts what changed between the status before and after a write.
    pub fn observe_status(
        &self,
        namespace: &str,
        name: &str,
        before: &ApiKeyRotationStatus,
        after: &ApiKeyRotationStatus,
    ) {
        self.observe_gauges(namespace, name, before, after);
        self.observe_step_time(namespace, name, before, after);
        self.observe_targets(before, after);
        self.observe_end(before, after);
    }

    /// The phase and the pods still on the old key, as they are now.
    fn observe_gauges(
        &self,
        namespace: &str,
        name: &str,
        before: &ApiKeyRotationStatus,
        after: &ApiKeyRotationStatus,
    ) {
        if before.phase != after.phase {
            for phase in PHASES {
                self.phase
                    .get_or_create(&PhaseLabels {
                        namespace: namespace.into(),
                        name: name.into(),
                        phase: format!("{phase:?}"),
                    })
                    .set(i64::from(after.phase == Some(phase)));
            }
        }
        let waiting = after
            .current_rotation
            .as_ref()
            .filter(|r| r.revoked_at.is_none())
            .and_then(|r| r.pods_on_old_key)
            .unwrap_or(0);
        self.pods_on_old_key
            .get_or_create(&RotationLabels {
                namespace: namespace.into(),
                name: name.into(),
            })
            .set(i64::from(waiting));
    }

    /// How long the step just left took (a step is timed from when this process first saw it).
    fn observe_step_time(
        &self,
        namespace: &str,
        name: &str,
        before: &ApiKeyRotationStatus,
        after: &ApiKeyRotationStatus,
    ) {
        let key = (namespace.to_string(), name.to_string());
        let mut seen = self.steps_seen.lock().unwrap();
        let now = Instant::now();
        let current = after
            .current_rotation
            .as_ref()
            .map(|r| (r.revision, r.step));
        if let Some(&(revision, step, since)) = seen.get(&key)
            && current != Some((revision, step))
        {
            let same_rotation = before
                .current_rotation
                .as_ref()
                .is_some_and(|r| r.revision == revision);
            if same_rotation {
                self.step_duration
                    .get_or_create(&StepLabels {
                        step: format!("{step:?}"),
                    })
                    .observe(now.duration_since(since).as_secs_f64());
            }
        }
        match current {
            Some((revision, step)) => {
                if seen.get(&key).map(|&(r, s, _)| (r, s)) != Some((revision, step)) {
                    seen.insert(key, (revision, step, now));
                }
            }
            None => {
                seen.remove(&key);
            }
        }
    }

    /// Targets that completed or failed since the last write of the same rotation.
    fn observe_targets(&self, before: &ApiKeyRotationStatus, after: &ApiKeyRotationStatus) {
        let targets = |s: &ApiKeyRotationStatus, state: TargetState| {
            s.current_rotation.as_ref().map_or(0, |r| {
                r.targets.iter().filter(|t| t.state == state).count() as u64
            })
        };
        let same = before.current_rotation.as_ref().map(|r| r.revision)
            == after.current_rotation.as_ref().map(|r| r.revision);
        if same && after.current_rotation.is_some() {
            let completed = targets(after, TargetState::Complete);
            let failed = targets(after, TargetState::Failed);
            self.targets_rolled
                .inc_by(completed.saturating_sub(targets(before, TargetState::Complete)));
            self.rollout_failures
                .inc_by(failed.saturating_sub(targets(before, TargetState::Failed)));
        }
    }

    /// A rotation that ended with this write: its result and duration.
    fn observe_end(&self, before: &ApiKeyRotationStatus, after: &ApiKeyRotationStatus) {
        if let (Some(ended), None) = (&before.current_rotation, &after.current_rotation) {
            // A rollback also takes up its revision, so the flag tells the two apart.
            let result = if ended.rolling_back.is_some() {
                Some(RotationResult::RolledBack)
            } else if after.revision > before.revision {
                Some(RotationResult::Succeeded)
            } else {
                None
            };
            let Some(result) = result else { return };
            let labels = ResultLabels { result };
            self.rotations.get_or_create(&labels).inc();
            if let Ok(started) = ended.started_at.parse::<jiff::Timestamp>() {
                let seconds = jiff::Timestamp::now().duration_since(started).as_secs_f64();
                self.rotation_duration
                    .get_or_create(&labels)
                    .observe(seconds.max(0.0));
            }
        }
    }

    /// The ApiKeyRotation is gone: drop its per-rotation series.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.pods_on_old_key.remove(&RotationLabels {
            namespace: namespace.into(),
            name: name.into(),
        });
        for phase in PHASES {
            self.phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                name: name.into(),
                phase: format!("{phase:?}"),
            });
        }
        self.steps_seen
            .lock()
            .unwrap()
            .remove(&(namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RotationProgress, TargetProgress};

    fn rotating(revision: u64, step: Step, states: &[TargetState]) -> ApiKeyRotationStatus {
        ApiKeyRotationStatus {
            phase: Some(Phase::Rotating),
            revision: revision - 1,
            current_rotation: Some(RotationProgress {
                step,
                targets: states
                    .iter()
                    .enumerate()
                    .map(|(i, state)| TargetProgress {
                        state: *state,
                        ..TargetProgress::pending(Default::default(), &format!("t{i}"))
                    })
                    .collect(),
                ..RotationProgress::started(
                    revision,
                    "Manual:x".into(),
                    None,
                    [],
                    "2026-01-01T00:00:00Z".into(),
                )
            }),
            ..Default::default()
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_successful_rotation_counts_once_with_its_steps_and_targets() {
        use TargetState::*;
        let m = Metrics::new();
        let ready = ApiKeyRotationStatus {
            phase: Some(Phase::Ready),
            ..Default::default()
        };
        let walk = [
            ready.clone(),
            rotating(1, Step::Mint, &[Pending, Pending]),
            rotating(1, Step::Roll, &[Rolling, Pending]),
            rotating(1, Step::Roll, &[Complete, Rolling]),
            rotating(1, Step::Validate, &[Complete, Complete]),
            ApiKeyRotationStatus {
                revision: 1,
                ..ready
            },
        ];
        for pair in walk.windows(2) {
            m.observe_status("ns", "a", &pair[0], &pair[1]);
        }
        // A repeated write of the same status changes nothing.
        m.observe_status("ns", "a", &walk[5], &walk[5]);
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                r#"apikey_rotator_rotations_total{result="succeeded"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "apikey_rotator_targets_rolled_total"),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"apikey_rotator_step_duration_seconds_count{step="Roll"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"apikey_rotator_phase{namespace="ns",name="a",phase="Ready"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"apikey_rotator_phase{namespace="ns",name="a",phase="Rotating"}"#
            ),
            Some(0.0)
        );
        m.forget("ns", "a");
        assert!(!m.encode().contains(r#"name="a""#));
    }

    #[test]
    fn a_failed_rollout_and_its_rollback_count_apart() {
        use TargetState::*;
        let m = Metrics::new();
        let mut rolling_back = rotating(2, Step::Roll, &[Complete, Failed]);
        rolling_back.current_rotation.as_mut().unwrap().rolling_back = Some("t1 failed".into());
        let walk = [
            rotating(2, Step::Roll, &[Complete, Rolling]),
            rotating(2, Step::Roll, &[Complete, Failed]),
            rolling_back,
            ApiKeyRotationStatus {
                phase: Some(Phase::Degraded),
                revision: 2,
                ..Default::default()
            },
        ];
        for pair in walk.windows(2) {
            m.observe_status("ns", "b", &pair[0], &pair[1]);
        }
        let text = m.encode();
        assert_eq!(
            sample(&text, "apikey_rotator_rollout_failures_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"apikey_rotator_rotations_total{result="rolled_back"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"apikey_rotator_rotations_total{result="succeeded"}"#
            ),
            None
        );
    }
}
