//! What the machine decides on: the world as the reconciler read it, reduced to what matters.

use crate::crd::{ApiKeyRotationSpec, ApiKeyRotationStatus};
use crate::key::KeyId;
use crate::pods::PodSummary;
use crate::workload::RolloutState;
use jiff::Timestamp;

/// The operator's own Secret: the only place raw keys live besides the consumers' Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct VaultView {
    /// The key consumers hold when no rotation is in flight (the old key during a rotation).
    pub current: KeyId,
    /// The key being rolled out, with the rotation revision it was minted for.
    pub pending: Option<(KeyId, u64)>,
    /// Only the current key's id is known: the vault was lost mid-rotation and recreated from
    /// the consumers' Secret, which held the new key. The old key can still be revoked (by id),
    /// but neither restored, nor rolled back to, nor probed.
    pub current_raw_lost: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ConsumerView {
    /// The Secret does not exist.
    Missing,
    /// The Secret exists; the id of the key under the data key (None if that key is absent).
    Holds(Option<KeyId>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetView {
    Missing,
    Found {
        paused: bool,
        /// The rotation annotation on the pod template.
        annotation: Option<String>,
        /// The rollback annotation on the pod template (the revision that rolled it back).
        rolled_back_in: Option<String>,
        /// The Secret-restores annotation on the pod template (see
        /// [`crate::crd::SECRET_RESTORES_ANNOTATION`]).
        secret_restores: Option<String>,
        /// Why a new pod template would not replace its pods (an `OnDelete` update strategy, a
        /// StatefulSet partition): such a target is never rolled, nor counted as rolled.
        cannot_roll: Option<String>,
        rollout: RolloutState,
    },
}

/// Which of the relevant keys have a Sirius record in Valkey, and whether v1.0's bootstrap flag
/// is set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RecordView {
    /// The current key has a valid record.
    pub current: bool,
    /// The pending key has a valid record.
    pub pending: bool,
    pub bootstrap_flag: bool,
    /// One of the records is there but is not a valid Sirius record of its key.
    pub malformed: bool,
    /// The operator's marker for the current key's record is there (it is written and deleted
    /// only together with the record, and a flush takes both): a missing record with its marker
    /// was deleted on its own (a revocation in Sirius), not lost with the rest of Valkey.
    pub current_marked: bool,
}

#[derive(Clone, Debug)]
pub struct Observation {
    /// `namespace/name` of the ApiKeyRotation (seeds the schedule's jitter).
    pub name: String,
    pub generation: Option<i64>,
    pub spec: ApiKeyRotationSpec,
    pub status: ApiKeyRotationStatus,
    /// Value of the manual trigger annotation.
    pub trigger: Option<String>,
    /// Value of the annotation that lets the manual trigger with this token ignore maintenance
    /// windows.
    pub outside_windows: Option<String>,
    pub now: Timestamp,
    pub vault: Option<VaultView>,
    pub consumer: ConsumerView,
    /// Whether the consumers' Secret carries this operator's label (so its edits are watched).
    pub consumer_labelled: bool,
    /// When the consumers' Secret last changed, by the API server's clock (see
    /// [`crate::observe::last_changed_at`]).
    pub consumer_changed_at: Option<Timestamp>,
    /// The last write of the consumers' Secret's data key by a manager other than the operator
    /// (its name, and when, by the API server's clock), if another manager owns that field.
    pub consumer_key_rewritten: Option<(String, Timestamp)>,
    /// The consumers' Secret is immutable: no key can be written into it.
    pub consumer_immutable: bool,
    pub records: RecordView,
    pub targets: Vec<TargetView>,
    /// The answer to the probe the previous decision asked for (see [`Action::Probe`]).
    pub probe: Option<(ProbeStage, ProbeOutcome)>,
    /// The metrics gate's reading, when the previous decision asked for it.
    pub gate: Option<GateReading>,
    /// How the spec was edited during the rotation in flight (see [`crate::plan`]).
    pub plan: PlanNotes,
    /// The pods that read the consumers' Secret, when the previous decision asked for them
    /// ([`Action::CheckPods`]), or why they could not be listed.
    pub pods: Option<Result<Vec<PodSummary>, String>>,
}

/// The spec fields whose edit waits for the next rotation, which of the rotation's targets the
/// user removed from `spec.targets`, which a selector chose, and why the selectors cannot make a
/// plan (see [`crate::plan::Planned`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanNotes {
    pub deferred: Vec<&'static str>,
    pub removed: Vec<bool>,
    pub selected_by: Vec<Option<String>>,
    pub unselected: Vec<String>,
    /// The selectors were not looked up: no rotation starts on this plan (decide again soon).
    pub unresolved: bool,
}

impl PlanNotes {
    /// Whether planned targets `a` and `b` roll at once (see [`crate::plan::Planned::same_entry`]).
    pub fn same_entry(&self, targets: &[crate::crd::RolloutTarget], a: usize, b: usize) -> bool {
        crate::plan::same_entry(targets, &self.selected_by, a, b)
    }
}

/// The metrics gate query's value, or why there is none.
pub type GateReading = Result<f64, String>;

/// Which verification probe: the new key after a target's rollout or before revoking, or the
/// old key after its revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeStage {
    AfterTarget(usize),
    BeforeRevoke,
    OldKeyRefused,
}

/// The HTTP status the API answered, or why no answer came.
pub type ProbeOutcome = Result<u16, String>;

impl Observation {
    /// The key the consumers' Secret holds, if it holds one under the data key.
    pub(crate) fn consumer_id(&self) -> Option<&KeyId> {
        match &self.consumer {
            ConsumerView::Holds(Some(id)) => Some(id),
            _ => None,
        }
    }

    /// The consumers' Secret already holds the vault's pending (or current) key.
    pub(crate) fn holds(&self, pending: bool) -> bool {
        let key = self.vault.as_ref().and_then(|v| match pending {
            true => v.pending.as_ref().map(|(id, _)| id),
            false => Some(&v.current),
        });
        key.is_some() && self.consumer_id() == key
    }

    /// The probe answer for `stage`, if the previous decision asked for it.
    pub(crate) fn probe_answer(&self, stage: ProbeStage) -> Option<&ProbeOutcome> {
        self.probe
            .as_ref()
            .filter(|(asked, _)| *asked == stage)
            .map(|(_, outcome)| outcome)
    }

    /// The name of the vault Secret of this ApiKeyRotation.
    pub(crate) fn vault_name(&self) -> String {
        crate::crd::vault_name(self.name.rsplit('/').next().unwrap_or_default())
    }
}
