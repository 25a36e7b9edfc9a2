//! What the machine asks the reconciler to do, and the status and Event that record it.

use super::observation::ProbeStage;
use super::reason::Reason;
use crate::crd::ApiKeyRotationStatus;
use crate::key::KeyId;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the vault Secret: adopt the consumers' key when there is one, else mint.
    CreateVault { adopt: bool },
    /// Recreate a lost (deleted or emptied) vault from the key the consumers' Secret holds: as the
    /// current key, or as the pending key of a rotation in flight whose old key (by id) lost its
    /// raw value.
    RestoreVault { as_pending: Option<(u64, KeyId)> },
    /// Write Sirius records (SET NX) for the keys marked true.
    Register { current: bool, pending: bool },
    /// Mint the new key into the vault for this rotation revision.
    MintPending { revision: u64 },
    /// Write the current (false) or pending (true) key into the consumers' Secret.
    WriteConsumer { pending: bool },
    /// Mark target `index`'s pod template with the key's id; a rollback also marks the revision
    /// it rolls back, so the template is new and every pod restarts.
    Roll {
        index: usize,
        key_id: KeyId,
        rollback_of: Option<u64>,
        /// On a forward roll after the Secret was put back: the count of restores, so the
        /// template is new (see [`crate::crd::SECRET_RESTORES_ANNOTATION`]).
        secret_restores: Option<u32>,
    },
    /// Delete the old key's record.
    Revoke { key_id: KeyId },
    /// Set Sirius v1.0's `bootstrap_complete` flag again.
    SetBootstrapFlag,
    /// The vault's pending key becomes current; the old raw key is dropped.
    Promote,
    /// A rolled-back rotation drops the new raw key; the current one stays.
    DropPending,
    /// Record the finished rotation in Valkey history, with its result.
    RecordHistory { revision: u64, result: &'static str },
    /// Ask the API with a key (`verification`), then decide again with the answer: the new key
    /// for `AfterTarget` and `BeforeRevoke`, the old key for `OldKeyRefused`.
    Probe { stage: ProbeStage },
    /// Run the metrics gate's query, then decide again with the reading.
    QueryGate,
    /// List the pods that read the consumers' Secret, then decide again with them.
    CheckPods,
    /// Nothing but the status (and event) to write; decide again right away.
    StatusOnly,
    /// Nothing to do until something changes or the time passes.
    Wait { requeue_after: Option<Duration> },
}

/// An Event to emit with the plan; its type (Normal or Warning) is the reason's.
#[derive(Clone, Debug, PartialEq)]
pub struct EventNote {
    pub reason: Reason,
    pub message: String,
}

impl EventNote {
    pub fn new(reason: Reason, message: impl Into<String>) -> Option<Self> {
        Some(Self {
            reason,
            message: message.into(),
        })
    }

    pub fn is_warning(&self) -> bool {
        self.reason.is_warning()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub action: Action,
    /// The status to record once the action succeeded.
    pub status: ApiKeyRotationStatus,
    pub event: Option<EventNote>,
}
