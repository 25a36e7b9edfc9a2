//! One test's world: the API stand-in, a real Valkey, and the operator under test, with the
//! runbook's words for looking at it (`wait_ready`, `wait_event`, `accepts`) and for hurting it
//! (`flush_valkey`, `kill_operator`), so that a test reads like the step it checks.

use super::*;
use apikey_rotator::crd::{ApiKeyRotationStatus, Condition, Phase, RotationProgress, Step};
use apikey_rotator::key::KeyId;
use kube_sim::{Sim, SimOptions};
use tokio::task::JoinHandle;

/// The stand-in, Valkey and (once started) the operator; dropping it kills the operator.
pub struct Cluster {
    pub sim: Sim,
    pub valkey: Valkey,
    operator: Option<JoinHandle<()>>,
}

impl Cluster {
    /// An empty cluster (the CRD installed) and an empty Valkey; no operator yet.
    pub async fn start() -> Self {
        Self::start_with(SimOptions::default()).await
    }

    pub async fn start_with(options: SimOptions) -> Self {
        let valkey = Valkey::start();
        let sim = start_sim_with(options).await;
        Self {
            sim,
            valkey,
            operator: None,
        }
    }

    /// Sirius as installed: the consumers' Secret holding [`known_key`], the three Deployments
    /// (`replicas` each) rolled out, and the ApiKeyRotation (`extra` merged into its spec, and
    /// the trigger token if given). Returns the installed key.
    pub async fn install(&self, replicas: i64, trigger: Option<&str>, extra: Value) -> RawKey {
        let old = known_key();
        install_sirius(
            &self.sim,
            &self.valkey.url(),
            &old,
            replicas,
            trigger,
            extra,
        )
        .await;
        old
    }

    /// Starts the operator (the default resync); a running one is killed first.
    pub fn run_operator(&mut self) {
        self.run_operator_with_resync(apikey_rotator::reconciler::DEFAULT_RESYNC);
    }

    pub fn run_operator_with_resync(&mut self, resync: Duration) {
        self.kill_operator();
        self.operator = Some(spawn_operator_with_resync(&self.sim, resync));
    }

    /// Kills the operator mid-step, as a node failure would (nothing is finished or flushed).
    pub fn kill_operator(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.abort();
        }
    }

    /// The ApiKeyRotation's status, typed (empty before the operator wrote one).
    pub fn status(&self) -> ApiKeyRotationStatus {
        status(&self.sim)
    }

    /// The rotation in flight, if one is.
    pub fn in_flight(&self) -> Option<RotationProgress> {
        in_flight(&self.sim)
    }

    pub async fn wait_ready(&self, revision: u64) {
        wait_ready(&self.sim, revision).await;
    }

    pub async fn wait_phase(&self, phase: Phase) {
        wait_phase(&self.sim, phase).await;
    }

    pub async fn wait_step(&self, step: Step) {
        wait_step(&self.sim, step).await;
    }

    pub async fn wait_event(&self, reason: Reason) {
        wait_event(&self.sim, reason).await;
    }

    pub async fn wait_degraded(&self, reason: Reason) {
        wait_degraded(&self.sim, reason.as_str()).await;
    }

    pub fn has_event(&self, reason: Reason) -> bool {
        has_event(&self.sim, reason)
    }

    /// The key the consumers' Secret holds now.
    pub fn consumers_key(&self) -> RawKey {
        RawKey::new(
            secret_value(&self.sim, "sirius-api-key", "SIRIUS_API_KEY")
                .expect("the consumers' Secret holds a key"),
        )
    }

    /// Whether Sirius would accept `key`: its record is in Valkey.
    pub fn accepts(&self, key: &RawKey) -> bool {
        self.valkey.exists(&record_key(&key.id()))
    }

    /// Loses everything Valkey holds (`FLUSHALL`), as a restart without persistence does.
    pub fn flush_valkey(&self) {
        self.valkey.flushall();
    }

    /// Requests a rotation with a new trigger token (what `apikey-rotator rotate` does).
    pub fn request_rotation(&self, token: &str) {
        request_rotation(&self.sim, token);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_operator();
    }
}

/// The Valkey key of a key's record, as Sirius reads it.
pub fn record_key(id: &KeyId) -> String {
    format!("apikey:{id}")
}

/// The ApiKeyRotation `sirius`'s status, typed (empty before the operator wrote one).
pub fn status(sim: &Sim) -> ApiKeyRotationStatus {
    status_of(sim, "sirius")
}

/// The status of the ApiKeyRotation `name` (in [`NS`]), typed: empty until the operator wrote
/// one. A rotation that does not exist has none to read (the test is wrong).
pub fn status_of(sim: &Sim, name: &str) -> ApiKeyRotationStatus {
    let raw = (sim.get_object("keys.siriusscan.io", "apikeyrotations", NS, name))
        .unwrap_or_else(|| panic!("no ApiKeyRotation {name} to read the status of"))["status"]
        .clone();
    if raw.is_null() {
        return ApiKeyRotationStatus::default();
    }
    serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("status {raw}: {e}"))
}

/// The ApiKeyRotation's condition of this type, if there is one.
pub fn find_condition(sim: &Sim, type_: &str) -> Option<Condition> {
    (status(sim).conditions.into_iter()).find(|c| c.type_ == type_)
}

/// The rotation in flight, if one is.
pub fn in_flight(sim: &Sim) -> Option<RotationProgress> {
    status(sim).current_rotation
}

/// `revision` rotations finished and the phase is `Ready`.
pub fn is_ready(sim: &Sim, revision: u64) -> bool {
    let s = status(sim);
    s.revision == revision && s.phase == Some(Phase::Ready)
}

/// Waits until [`is_ready`].
pub async fn wait_ready(sim: &Sim, revision: u64) {
    let what = format!("Ready at revision {revision}");
    wait_for(Duration::from_secs(30), &what, || is_ready(sim, revision)).await;
}

pub async fn wait_phase(sim: &Sim, phase: Phase) {
    let what = format!("phase {phase:?}");
    wait_for(Duration::from_secs(30), &what, || {
        status(sim).phase == Some(phase)
    })
    .await;
}

/// Waits until the rotation in flight is at `step`.
pub async fn wait_step(sim: &Sim, step: Step) {
    let what = format!("step {step:?}");
    wait_for(Duration::from_secs(30), &what, || {
        in_flight(sim).is_some_and(|r| r.step == step)
    })
    .await;
}
