//! Every reason the operator gives, in conditions and Events, as one type: the string a user sees
//! (`kubectl describe`, `kubectl get events`) is the variant's name, and its Event type is fixed
//! here, so a reason never reads as a warning in one place and as normal in another.

/// A condition or Event reason. Conditions use every variant; Events use those a decision or the
/// reconciler reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display)]
pub enum Reason {
    // The Ready and Rotating conditions: where the rotation stands.
    Initializing,
    KeyActive,
    Idle,
    Suspended,
    Mint,
    Register,
    Switch,
    Roll,
    Validate,
    Revoke,
    Finish,
    RollingBack,
    WaitingForWindow,
    WaitingForPods,
    AsExpected,
    // Normal Events.
    KeyAdopted,
    KeyMinted,
    KeyRegistered,
    KeysRegistered,
    RotationStarted,
    RotationResumed,
    RotationSucceeded,
    SpecChangePending,
    SecretCreated,
    SecretUpdated,
    SecretRolledBack,
    TargetRolled,
    TargetRolledOut,
    TargetVerified,
    TargetRemoved,
    TargetRolledBack,
    ValidationStarted,
    MetricsGatePassed,
    NewKeyVerified,
    OldKeyRevoked,
    OldKeyRefused,
    NewKeyRemoved,
    DeletionRetainedKeys,
    DeletionRevokedKeys,
    // Warning Events (most of them also a Degraded reason).
    BootstrapFlagRestored,
    ValkeyStateRestored,
    VaultLost,
    UndeliveredKeyRevoked,
    KeyRevokedExternally,
    SecretDrift,
    SecretRestored,
    SecretRewritten,
    SecretImmutable,
    TargetNotFound,
    TargetPaused,
    TargetCannotRoll,
    TooManyTargets,
    RolloutFailed,
    VerificationFailed,
    MetricsGateFailed,
    MetricsGateUnavailable,
    PodsUnreadable,
    UntrackedConsumer,
    ConsumersOnOldKey,
    RevocationRepeated,
    OldKeyStillAccepted,
    RotationRolledBack,
    RolledBack,
    DeletionRevokeIncomplete,
    // The reconciler's failures (Degraded, with a Warning Event).
    InvalidSpec,
    ClaimConflict,
    SecretManagedElsewhere,
    SecretNotPermitted,
    KubernetesApiError,
    ValkeyUnavailable,
    RandomSourceFailed,
    VaultCorrupt,
    WriteUndone,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether an Event with this reason is a Warning (otherwise Normal).
    pub fn is_warning(self) -> bool {
        use Reason::*;
        matches!(
            self,
            BootstrapFlagRestored
                | DeletionRevokedKeys
                | ValkeyStateRestored
                | VaultLost
                | UndeliveredKeyRevoked
                | KeyRevokedExternally
                | SecretDrift
                | SecretRestored
                | SecretRewritten
                | SecretImmutable
                | TargetNotFound
                | TargetPaused
                | TargetCannotRoll
                | TooManyTargets
                | RolloutFailed
                | VerificationFailed
                | MetricsGateFailed
                | MetricsGateUnavailable
                | PodsUnreadable
                | UntrackedConsumer
                | ConsumersOnOldKey
                | RevocationRepeated
                | OldKeyStillAccepted
                | RotationRolledBack
                | RolledBack
                | DeletionRevokeIncomplete
                | InvalidSpec
                | ClaimConflict
                | SecretManagedElsewhere
                | SecretNotPermitted
                | KubernetesApiError
                | ValkeyUnavailable
                | RandomSourceFailed
                | VaultCorrupt
                | WriteUndone
        )
    }
}

/// A condition's reason (a string in status) reads as the typed one.
impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Reason> for &str {
    fn eq(&self, other: &Reason) -> bool {
        *self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_reads_as_its_name() {
        assert_eq!(Reason::WaitingForPods.as_str(), "WaitingForPods");
        assert_eq!(Reason::ConsumersOnOldKey.to_string(), "ConsumersOnOldKey");
        assert!(Reason::ConsumersOnOldKey.is_warning());
        assert!(!Reason::RotationSucceeded.is_warning());
    }
}
