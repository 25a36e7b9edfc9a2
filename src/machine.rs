//! The rotation as a pure state machine: from what was observed (spec, status, Secrets,
//! Deployments, Valkey records) and the time, it decides the one next action and the status that
//! records it. No I/O happens here; the reconciler performs the action.
//!
//! Crash safety comes from deciding on the world as observed, not on remembered intent: every
//! action is idempotent, progress is re-derived from the vault Secret, the consumers' Secret, the
//! pod-template annotations and the Valkey records, and the status only adds what the world cannot
//! show (timestamps, the rotation in flight).

use crate::crd::{
    ApiKeyRotationSpec, ApiKeyRotationStatus, Condition, ExternalRevocation, FailurePolicy, Phase,
    RotationProgress, SecretDriftPolicy, Step, TargetProgress, TargetState, UntrackedConsumers,
    Verification,
};
use crate::key::KeyId;
use crate::pods::PodSummary;
use crate::rollout::RolloutState;
use crate::schedule::Calendar;
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

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

/// The spec fields whose edit waits for the next rotation, and which of the rotation's targets
/// the user removed from `spec.targets`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanNotes {
    pub deferred: Vec<&'static str>,
    pub removed: Vec<bool>,
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

#[derive(Clone, Debug, PartialEq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub action: Action,
    /// The status to record once the action succeeded.
    pub status: ApiKeyRotationStatus,
    pub event: Option<EventNote>,
}

/// The Rotating condition's reason while a maintenance window is awaited.
pub const WAITING_FOR_WINDOW: &str = "WaitingForWindow";

/// The Rotating condition's current reason.
fn waiting_reason(o: &Observation) -> Option<&str> {
    o.status
        .conditions
        .iter()
        .find(|c| c.type_ == ROTATING)
        .map(|c| c.reason.as_str())
}

pub const ROLLOUT_FAILED: &str = "RolloutFailed";
pub const SPEC_CHANGE_PENDING: &str = "SpecChangePending";
pub const WAITING_FOR_PODS: &str = "WaitingForPods";
pub const PODS_UNREADABLE: &str = "PodsUnreadable";
pub const UNTRACKED_CONSUMER: &str = "UntrackedConsumer";
pub const CONSUMERS_ON_OLD_KEY: &str = "ConsumersOnOldKey";
pub const SECRET_IMMUTABLE: &str = "SecretImmutable";
pub const SECRET_REWRITTEN: &str = "SecretRewritten";
pub const VERIFICATION_FAILED: &str = "VerificationFailed";
pub const OLD_KEY_STILL_ACCEPTED: &str = "OldKeyStillAccepted";
pub const METRICS_GATE_FAILED: &str = "MetricsGateFailed";
pub const GATE_UNAVAILABLE: &str = "MetricsGateUnavailable";

pub const READY: &str = "Ready";
pub const ROTATING: &str = "Rotating";
pub const DEGRADED: &str = "Degraded";

fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Millisecond precision, for the instants that start a wait (validation, revocation re-check),
/// so the wait ends when asked and not up to a second later.
fn ts_precise(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn parse_ts(s: &Option<String>) -> Option<Timestamp> {
    s.as_deref().and_then(|s| s.parse().ok())
}

/// The end of a wait of `seconds` that began at `stamp`. A stamp without a fraction may have been
/// truncated to the second (a status written by an older version), so that wait is rounded up: a
/// wait that protects keys (validation, revocation re-check) is never shorter than asked.
fn at_least(stamp: Timestamp, seconds: u32) -> Timestamp {
    let truncated = if stamp.subsec_nanosecond() == 0 { 1 } else { 0 };
    stamp + SignedDuration::from_secs(seconds as i64 + truncated)
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    let d = at.duration_since(now);
    if d <= SignedDuration::ZERO {
        Duration::ZERO
    } else {
        // Wake up just after the instant, so the comparison has passed.
        Duration::from_millis(d.as_millis() as u64 + 5)
    }
}

/// Builds the status of a plan from the observed one.
struct StatusBuilder<'a> {
    o: &'a Observation,
    status: ApiKeyRotationStatus,
}

impl<'a> StatusBuilder<'a> {
    fn new(o: &'a Observation) -> Self {
        let mut status = o.status.clone();
        status.observed_generation = o.generation;
        Self { o, status }
    }

    fn condition(&mut self, type_: &str, on: bool, reason: &str, message: impl Into<String>) {
        let message = message.into();
        let status = if on { "True" } else { "False" };
        let now = ts(self.o.now);
        let previous = self.status.conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now,
        };
        let c = Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time,
            observed_generation: self.o.generation,
        };
        match self.status.conditions.iter_mut().find(|x| x.type_ == type_) {
            Some(x) => *x = c,
            None => self.status.conditions.push(c),
        }
        let order = |t: &str| {
            [READY, ROTATING, DEGRADED]
                .iter()
                .position(|x| *x == t)
                .unwrap_or(9)
        };
        self.status.conditions.sort_by_key(|c| order(&c.type_));
    }

    fn healthy(&mut self) {
        self.condition(DEGRADED, false, "AsExpected", "No problems found.");
    }

    fn degraded_changed(&self, reason: &str, message: &str) -> bool {
        !self.o.status.conditions.iter().any(|c| {
            c.type_ == DEGRADED && c.status == "True" && c.reason == reason && c.message == message
        })
    }

    /// `Degraded=True` with this reason; the Warning Event only when the condition is new, so a
    /// repeated decision does not repeat it.
    fn degrade(&mut self, reason: &'static str, message: &str) -> Option<EventNote> {
        let event = self
            .degraded_changed(reason, message)
            .then(|| warning(reason, message))
            .flatten();
        self.condition(DEGRADED, true, reason, message);
        event
    }

    fn plan(self, action: Action, event: Option<EventNote>) -> Plan {
        Plan {
            action,
            status: self.status,
            event,
        }
    }
}

fn normal(reason: &'static str, message: impl Into<String>) -> Option<EventNote> {
    Some(EventNote {
        warning: false,
        reason,
        message: message.into(),
    })
}

fn warning(reason: &'static str, message: impl Into<String>) -> Option<EventNote> {
    Some(EventNote {
        warning: true,
        reason,
        message: message.into(),
    })
}

/// The one entry point: what to do next.
pub fn decide(o: &Observation) -> Plan {
    let plan = decide_ignoring_immutability(o);
    if o.consumer_immutable {
        let starts_rotation =
            o.status.current_rotation.is_none() && plan.status.current_rotation.is_some();
        let nothing_minted = match plan.action {
            _ if starts_rotation => true,
            Action::MintPending { .. } | Action::CreateVault { adopt: false } => true,
            // Labelling it (its data unchanged) is allowed.
            Action::WriteConsumer { pending } if !holds(o, pending) => false,
            _ => return plan,
        };
        return immutable_consumer(o, nothing_minted);
    }
    plan
}

/// Every target rolls (again) with a new restore count, so no template stamped before counts.
fn roll_every_target_again(r: &mut RotationProgress) {
    r.secret_restores += 1;
    for t in r.targets.iter_mut() {
        *t = TargetProgress {
            kind: t.kind,
            ..TargetProgress::pending(&t.name)
        };
    }
    r.target_index = 0;
    r.validation_started_at = None;
    r.gate_checked_at = None;
}

/// Another manager wrote the Secret's data key after the switch recorded in `switch` (by the
/// API server's clock): the switch is cleared (it is recorded again at once) and the Warning
/// Event says who.
fn rewritten_since(
    o: &Observation,
    r: &mut RotationProgress,
    switch: impl Fn(&mut RotationProgress) -> &mut Option<String>,
) -> Option<Option<EventNote>> {
    let (manager, at) = o.consumer_key_rewritten.as_ref()?;
    let switched = parse_ts(switch(r))?;
    if *at <= switched {
        return None;
    }
    *switch(r) = None;
    Some(warning(
        SECRET_REWRITTEN,
        format!(
            "Secret {}'s key was written by {manager} after the operator's switch; pods that started meanwhile may hold another key, so every target rolls again.",
            o.spec.secret.name
        ),
    ))
}

/// Once the Secret holds the key: when it changed to hold it (`switch`, by the API server's
/// clock, as pods' creation times are) and the end of a restore, in a status write of their own
/// before any target rolls, so a later change of the Secret is always seen as one (a roll whose
/// status write was lost could otherwise hide it). True when there is something to record.
fn record_switch(
    o: &Observation,
    r: &mut RotationProgress,
    switch: impl Fn(&mut RotationProgress) -> &mut Option<String>,
) -> bool {
    let unrecorded = switch(r).is_none();
    if unrecorded {
        *switch(r) = Some(ts_precise(o.consumer_changed_at.unwrap_or(o.now)));
    }
    let restored = std::mem::take(&mut r.restoring_secret);
    unrecorded || restored
}

/// The consumers' Secret already holds the vault's pending (or current) key.
fn holds(o: &Observation, pending: bool) -> bool {
    let key = o.vault.as_ref().and_then(|v| match pending {
        true => v.pending.as_ref().map(|(id, _)| id),
        false => Some(&v.current),
    });
    key.is_some() && consumer_id(o) == key
}

/// The next step would mint a key for, or write one into, an immutable consumers' Secret:
/// refuse it before it is taken, keeping the status as it was.
fn immutable_consumer(o: &Observation, nothing_minted: bool) -> Plan {
    let mut b = StatusBuilder::new(o);
    let kept = if nothing_minted {
        "nothing was minted or written".to_string()
    } else {
        "the keys in the vault and their Valkey records are kept, and the rotation goes on once the Secret can be written".to_string()
    };
    let message = format!(
        "Secret {} is immutable (immutable: true), so the operator cannot write a key into it; {kept}. Create a Secret without immutable: true under another name and point spec.secret.name and the workloads at it: recreating this one under the same name is not enough, as each node's kubelet keeps an immutable Secret cached while pods there use it",
        o.spec.secret.name
    );
    let event = b.degrade(SECRET_IMMUTABLE, &message);
    b.plan(
        Action::Wait {
            requeue_after: None,
        },
        event,
    )
}

fn decide_ignoring_immutability(o: &Observation) -> Plan {
    let mut b = StatusBuilder::new(o);
    let Some(vault) = &o.vault else {
        if o.status.active_key_id.is_some() {
            return vault_lost(o, b);
        }
        return bootstrap(o, b);
    };
    b.status.active_key_id = Some(vault.current.0.clone());
    b.status.active_key_id_short = Some(vault.current.short().to_string());
    // Bootstrap drift: once v1.0's flag was seen, it stays set (the record side is repaired below).
    if o.records.bootstrap_flag {
        b.status.bootstrap_flag_in_use = true;
    } else if o.status.bootstrap_flag_in_use {
        return b.plan(
            Action::SetBootstrapFlag,
            warning(
                "BootstrapFlagRestored",
                "Sirius v1.0's bootstrap_complete flag was gone from Valkey; set it again.",
            ),
        );
    }

    match o.status.current_rotation.clone() {
        None => idle(o, vault, b),
        Some(r) => rotating(o, vault, r, b),
    }
}

/// No vault yet: adopt the key the consumers already hold, or mint the first one.
fn bootstrap(o: &Observation, mut b: StatusBuilder) -> Plan {
    let adopt = matches!(o.consumer, ConsumerView::Holds(Some(_)));
    b.status.phase = Some(Phase::Pending);
    b.condition(READY, false, "Initializing", "Setting up the active key.");
    b.condition(ROTATING, false, "Idle", "No rotation in flight.");
    b.healthy();
    let event = if adopt {
        normal(
            "KeyAdopted",
            format!(
                "Adopted the key in Secret {} as the active key.",
                o.spec.secret.name
            ),
        )
    } else {
        normal("KeyMinted", "No key to adopt: minted the first key.")
    };
    b.plan(Action::CreateVault { adopt }, event)
}

pub const VAULT_LOST: &str = "VaultLost";

fn vault_name(o: &Observation) -> String {
    crate::crd::vault_name(o.name.rsplit('/').next().unwrap_or_default())
}

/// The vault (the only copy of the raw keys besides the consumers' Secret) was deleted or emptied
/// after the operator set it up. It is recreated only from a key whose id the status vouches for;
/// anything else halts with nothing revoked, since a wrong guess could cut off every consumer.
fn vault_lost(o: &Observation, mut b: StatusBuilder) -> Plan {
    let vault = vault_name(o);
    let secret = &o.spec.secret.name;
    let held = consumer_id(o).map(KeyId::as_str);
    let held_is = |id: Option<&String>| held.is_some() && held == id.map(String::as_str);
    let rotation = o.status.current_rotation.as_ref();
    let restore = |b: StatusBuilder, as_pending, message: String| {
        b.plan(
            Action::RestoreVault { as_pending },
            warning(VAULT_LOST, message),
        )
    };
    match rotation {
        None if held_is(o.status.active_key_id.as_ref()) => {
            return restore(
                b,
                None,
                format!(
                    "The vault Secret {vault} was gone; recreated it from Secret {secret}, which holds the active key."
                ),
            );
        }
        Some(r) if r.rolling_back.is_none() && held_is(r.new_key_id.as_ref()) => {
            if let Some(old) = r.old_key_id.as_deref().and_then(KeyId::parse) {
                return restore(
                    b,
                    Some((r.revision, old)),
                    format!(
                        "The vault Secret {vault} was gone during rotation {}; recreated it from Secret {secret}, which holds the new key. The rotation goes on, but the old key's raw value is lost: a rollback is no longer possible.",
                        r.revision
                    ),
                );
            }
        }
        Some(r)
            if r.rolling_back.is_none()
                && r.step < Step::Switch
                && held_is(r.old_key_id.as_ref()) =>
        {
            return restore(
                b,
                None,
                format!(
                    "The vault Secret {vault} was gone during rotation {} before the new key was delivered; recreated it from Secret {secret}, which holds the old key. The undelivered new key is revoked and another one minted.",
                    r.revision
                ),
            );
        }
        None if o.status.revision == 0 && !ever_ready(o) => {
            // Lost during set-up, before its key reached anyone: start over, revoking that key's
            // record first so it is not left valid and unrecorded.
            if let Some(first) = o.status.active_key_id.as_deref().and_then(KeyId::parse) {
                b.status.active_key_id = None;
                b.status.active_key_id_short = None;
                return b.plan(
                    Action::Revoke { key_id: first },
                    warning(
                        VAULT_LOST,
                        format!("The vault Secret {vault} was gone before its first key was delivered; revoked that key and starts over."),
                    ),
                );
            }
        }
        _ => {}
    }
    let wanted = match rotation {
        Some(r) => format!(
            "the new key {} or, before the switch, the old key {}",
            short_id(r.new_key_id.as_deref()),
            short_id(r.old_key_id.as_deref())
        ),
        None => format!(
            "the active key {}",
            short_id(o.status.active_key_id.as_deref())
        ),
    };
    let message = format!(
        "The vault Secret {vault} is gone and Secret {secret} does not hold {wanted}; nothing was changed or revoked. Restore {vault} from a backup, or put that key back into Secret {secret}."
    );
    let event = b.degrade(VAULT_LOST, &message);
    b.status.phase = Some(Phase::Degraded);
    b.plan(
        Action::Wait {
            requeue_after: Some(Duration::from_secs(60)),
        },
        event,
    )
}

/// Whether the Ready condition was ever true (the active key was delivered at least once).
fn ever_ready(o: &Observation) -> bool {
    o.status.revision > 0
        || o.status
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.status == "True")
}

/// The short form of an id read back from status (`?` when it is not one).
fn short_id(id: Option<&str>) -> String {
    id.and_then(KeyId::parse)
        .map(|id| id.short().to_string())
        .unwrap_or_else(|| "?".into())
}

fn consumer_id(o: &Observation) -> Option<&KeyId> {
    match &o.consumer {
        ConsumerView::Holds(Some(id)) => Some(id),
        _ => None,
    }
}

fn idle(o: &Observation, vault: &VaultView, mut b: StatusBuilder) -> Plan {
    let now = o.now;
    // A pending key without a rotation in status: the status was lost; resume that rotation.
    if let Some((pending, revision)) = &vault.pending {
        b.status.current_rotation = Some(new_rotation(
            o,
            *revision,
            "Resumed".into(),
            Some(pending.clone()),
            &vault.current,
        ));
        b.status.phase = Some(Phase::Rotating);
        return b.plan(
            Action::StatusOnly,
            normal(
                "RotationResumed",
                format!("Resuming rotation {revision} to key {}.", pending.short()),
            ),
        );
    }
    if !o.records.current {
        // The status names a key before its record is written, so every registered key can be
        // found (and revoked) even if the vault is lost.
        if o.status.active_key_id.as_ref() != Some(&vault.current.0) {
            b.status.phase = Some(Phase::Pending);
            return b.plan(Action::StatusOnly, None);
        }
        if ever_ready(o) && revoked_in_sirius(o) {
            if o.spec.suspend {
                // Honoured even while suspended: the record stays deleted; the rotation that
                // moves consumers to a new key waits for spec.suspend to be lifted.
                let message = format!(
                    "The Valkey record of the active key {} was deleted while Valkey kept its other data (revoked in Sirius?). It is not restored; consumers holding it are refused until a rotation runs, and spec.suspend holds that rotation back.",
                    vault.current.short()
                );
                let event = b.degrade(KEY_REVOKED_EXTERNALLY, &message);
                b.status.phase = Some(Phase::Suspended);
                return b.plan(
                    Action::Wait {
                        requeue_after: None,
                    },
                    event,
                );
            }
            return revoked_externally(o, vault, b);
        }
        let event = if ever_ready(o) {
            // It was registered before: Valkey lost it (flush, restart without persistence), or
            // it was overwritten with something that is no record of the key.
            let what = if o.records.malformed {
                "was not a valid Sirius record"
            } else {
                "was gone"
            };
            warning(
                "ValkeyStateRestored",
                format!(
                    "The Valkey record of the active key {} {what}; wrote it back.",
                    vault.current.short()
                ),
            )
        } else {
            b.status.phase = Some(Phase::Pending);
            normal(
                "KeyRegistered",
                format!(
                    "Wrote the Valkey record of the active key {}.",
                    vault.current.short()
                ),
            )
        };
        return b.plan(
            Action::Register {
                current: true,
                pending: false,
            },
            event,
        );
    }
    if !o.records.current_marked && !vault.current_raw_lost {
        // A record the operator did not write itself (Sirius's bootstrap of its root key, or one
        // from before markers existed) gets its marker, so that a later deletion of the record
        // reads as a revocation in Sirius and not as data loss.
        return b.plan(
            Action::Register {
                current: true,
                pending: false,
            },
            None,
        );
    }
    let delivered_before = o.status.active_key_id.is_some();
    if consumer_id(o) != Some(&vault.current)
        && delivered_before
        && o.spec.secret_drift_policy == SecretDriftPolicy::Report
    {
        let found = match &o.consumer {
            ConsumerView::Missing => "is gone".to_string(),
            ConsumerView::Holds(None) => format!("has no {} key", o.spec.secret.key),
            ConsumerView::Holds(Some(other)) => format!("holds key {} instead", other.short()),
        };
        let message = format!(
            "Secret {} {found} of the active key {}; not restored (secretDriftPolicy: Report).",
            o.spec.secret.name,
            vault.current.short()
        );
        let event = b.degrade("SecretDrift", &message);
        b.status.phase = Some(Phase::Degraded);
        return b.plan(
            Action::Wait {
                requeue_after: None,
            },
            event,
        );
    }
    if consumer_id(o) != Some(&vault.current) {
        let event = match &o.consumer {
            ConsumerView::Missing => normal(
                "SecretCreated",
                format!("Created Secret {} with the active key.", o.spec.secret.name),
            ),
            ConsumerView::Holds(None) => normal(
                "SecretUpdated",
                format!("Wrote the active key into Secret {}.", o.spec.secret.name),
            ),
            ConsumerView::Holds(Some(other)) => warning(
                "SecretRestored",
                format!(
                    "Secret {} held key {} instead of the active key {}; restored it.",
                    o.spec.secret.name,
                    other.short(),
                    vault.current.short()
                ),
            ),
        };
        return b.plan(Action::WriteConsumer { pending: false }, event);
    }
    if !o.consumer_labelled {
        // Label the Secret (server-side apply of the same key) so edits to it are watched.
        return b.plan(Action::WriteConsumer { pending: false }, None);
    }

    let active_since = parse_ts(&o.status.last_rotation_time)
        .or(parse_ts(
            &o.status
                .conditions
                .iter()
                .find(|c| c.type_ == READY && c.status == "True")
                .map(|c| c.last_transition_time.clone()),
        ))
        .unwrap_or(now);
    let calendar = Calendar::from_spec(&o.spec).unwrap_or_default();
    let (next, next_start) = next_rotation(o, &calendar, active_since);
    b.status.next_rotation_time = next_start.map(ts);
    b.status.current_rotation = None;
    b.condition(ROTATING, false, "Idle", "No rotation in flight.");
    b.condition(
        READY,
        true,
        "KeyActive",
        format!("Key {} is registered and delivered.", vault.current.short()),
    );
    let rolled_back = o
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == DEGRADED && c.status == "True" && c.reason == ROLLED_BACK);
    if !rolled_back {
        b.healthy();
    }

    if o.spec.suspend {
        b.status.phase = Some(Phase::Suspended);
        return b.plan(
            Action::Wait {
                requeue_after: None,
            },
            None,
        );
    }
    let revision = o.status.revision + 1;
    let manual = o
        .trigger
        .as_ref()
        .filter(|t| !t.is_empty() && o.status.last_trigger.as_ref() != Some(t));
    let trigger = match (manual, next) {
        (Some(token), _) => Some(format!("Manual:{token}")),
        (None, Some(at)) if at <= now && !rolled_back => Some(
            if o.spec.rotation_interval_seconds.is_some() {
                "Interval"
            } else {
                "Schedule"
            }
            .to_string(),
        ),
        _ => None,
    };
    let outside_windows = manual.is_some() && o.outside_windows.as_ref() == manual;
    if let Some(trigger) = &trigger
        && !outside_windows
        && !calendar.window_open(now)
    {
        // Requested or due, but no window is open: the trigger stays pending until one opens.
        let opens = calendar.next_window_open(now);
        let message = format!(
            "Rotation {revision} ({trigger}) starts when the next maintenance window opens{}.",
            opens
                .map(|at| format!(" at {}", ts(at)))
                .unwrap_or_default()
        );
        b.status.next_rotation_time = opens.map(ts);
        b.status.phase = Some(if rolled_back {
            Phase::Degraded
        } else {
            Phase::Ready
        });
        return wait_for_window(o, b, false, message, opens);
    }
    match trigger {
        Some(trigger) => {
            if let Some(token) = manual {
                b.status.last_trigger = Some(token.clone());
            }
            b.status.current_rotation = Some(RotationProgress {
                outside_windows,
                ..new_rotation(o, revision, trigger.clone(), None, &vault.current)
            });
            b.status.phase = Some(Phase::Rotating);
            let message = if outside_windows && !calendar.window_open(now) {
                format!(
                    "Rotation {revision} started ({trigger}), outside maintenance windows as requested."
                )
            } else {
                format!("Rotation {revision} started ({trigger}).")
            };
            b.condition(ROTATING, true, "Mint", message.clone());
            b.plan(Action::StatusOnly, normal("RotationStarted", message))
        }
        None => {
            b.status.phase = Some(if rolled_back {
                Phase::Degraded
            } else {
                Phase::Ready
            });
            b.plan(
                Action::Wait {
                    requeue_after: next_start.map(|at| until(now, at)),
                },
                None,
            )
        }
    }
}

pub const KEY_REVOKED_EXTERNALLY: &str = "KeyRevokedExternally";

/// The current key's record is missing while Valkey kept everything else (the operator's own
/// state entry is there, nothing malformed), and the spec honours that as a revocation.
fn revoked_in_sirius(o: &Observation) -> bool {
    o.records.current_marked
        && !o.records.malformed
        && o.spec.external_revocation == ExternalRevocation::Rotate
}

/// The active key's record was deleted while Valkey kept everything else: someone revoked the
/// key in Sirius (a leak). That is honoured: the key is not written back, and a rotation starts
/// at once, maintenance windows or not, so consumers move to a new key.
fn revoked_externally(o: &Observation, vault: &VaultView, mut b: StatusBuilder) -> Plan {
    let revision = o.status.revision + 1;
    let trigger = KEY_REVOKED_EXTERNALLY.to_string();
    b.status.current_rotation = Some(RotationProgress {
        outside_windows: true,
        old_key_revoked_externally: true,
        ..new_rotation(o, revision, trigger, None, &vault.current)
    });
    b.status.phase = Some(Phase::Rotating);
    let message = format!(
        "The Valkey record of the active key {} was deleted while Valkey kept its other data (revoked in Sirius?). It is not restored; rotation {revision} starts now, outside maintenance windows (spec.externalRevocation: Restore writes such a record back instead).",
        vault.current.short()
    );
    b.condition(ROTATING, true, "Mint", message.clone());
    b.plan(Action::StatusOnly, warning(KEY_REVOKED_EXTERNALLY, message))
}

/// When the next automatic rotation is due after a rotation (or activation) at `active_since`,
/// and when it can start (the first instant a maintenance window allows).
fn next_rotation(
    o: &Observation,
    calendar: &Calendar,
    active_since: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let due = match o.spec.rotation_interval_seconds {
        Some(s) => Some(active_since + SignedDuration::from_secs(s as i64)),
        None => calendar.next_scheduled(active_since, &o.name),
    };
    (due, due.and_then(|at| calendar.next_window_open(at)))
}

/// Waits until the next maintenance window opens, saying why in the Rotating condition (an Event
/// only when the wait begins).
fn wait_for_window(
    o: &Observation,
    mut b: StatusBuilder,
    rotating: bool,
    message: String,
    opens: Option<Timestamp>,
) -> Plan {
    let first_wait = waiting_reason(o) != Some(WAITING_FOR_WINDOW);
    b.condition(ROTATING, rotating, WAITING_FOR_WINDOW, message.clone());
    b.plan(
        Action::Wait {
            requeue_after: opens.map(|at| until(o.now, at)),
        },
        first_wait
            .then(|| normal(WAITING_FOR_WINDOW, message))
            .flatten(),
    )
}

fn new_rotation(
    o: &Observation,
    revision: u64,
    trigger: String,
    new_key: Option<KeyId>,
    old: &KeyId,
) -> RotationProgress {
    let mut r = RotationProgress {
        new_key_id: new_key.map(|k| k.0),
        secret: Some(o.spec.secret.clone()),
        ..RotationProgress::started(
            revision,
            trigger,
            Some(old.0.clone()),
            o.spec.targets.iter().map(|t| t.name.as_str()),
            ts(o.now),
        )
    };
    for (progress, target) in r.targets.iter_mut().zip(&o.spec.targets) {
        progress.kind = target.kind;
    }
    r
}

fn rotating<'a>(
    o: &'a Observation,
    vault: &VaultView,
    mut r: RotationProgress,
    mut b: StatusBuilder<'a>,
) -> Plan {
    let now = o.now;
    b.status.phase = Some(Phase::Rotating);
    // Promoted already: only the bookkeeping of the finished rotation is left.
    if vault.pending.is_none() && r.new_key_id.as_deref() == Some(vault.current.as_str()) {
        return finish(o, vault, r, b);
    }
    if o.spec.suspend {
        b.status.phase = Some(Phase::Suspended);
        b.condition(
            ROTATING,
            true,
            "Suspended",
            format!(
                "Rotation {} paused at step {:?} by spec.suspend.",
                r.revision, r.step
            ),
        );
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::Wait {
                requeue_after: None,
            },
            None,
        );
    }
    b.healthy();

    // The plan is fixed at the start: a rotation from before plans were kept takes the Secret
    // it is working with; an edit of the targets or the Secret waits for the next rotation.
    if r.secret.is_none() {
        r.secret = Some(o.spec.secret.clone());
    }
    if !o.plan.deferred.is_empty() && !r.spec_change_pending {
        r.spec_change_pending = true;
        let message = format!(
            "{} changed during rotation {}; the change applies to the next rotation (this one finishes with the targets and Secret it started with).",
            o.plan.deferred.join(" and "),
            r.revision
        );
        b.status.current_rotation = Some(r);
        return b.plan(Action::StatusOnly, normal(SPEC_CHANGE_PENDING, message));
    }
    if o.plan.deferred.is_empty() {
        r.spec_change_pending = false;
    }

    // The old key stays valid until it is revoked: restore its record first if it was lost.
    // (During a rollback `revokedAt` tracks the new key's removal; the old key stays.)
    let revoking = r.revoked_at.is_some() && r.rolling_back.is_none();
    if !o.records.current && !revoking && !vault.current_raw_lost && !r.old_key_revoked_externally {
        // Revoked in Sirius mid-rotation (not during a rollback, which needs the old key): the
        // rotation goes on, outside windows, without writing the record back.
        if r.rolling_back.is_none() && revoked_in_sirius(o) {
            r.old_key_revoked_externally = true;
            r.outside_windows = true;
            let message = format!(
                "The Valkey record of the old key {} was deleted during rotation {} while Valkey kept its other data (revoked in Sirius?). It is not restored; the rotation goes on, outside maintenance windows.",
                vault.current.short(),
                r.revision
            );
            b.status.current_rotation = Some(r);
            return b.plan(Action::StatusOnly, warning(KEY_REVOKED_EXTERNALLY, message));
        }
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::Register {
                current: true,
                pending: vault.pending.is_some() && !o.records.pending,
            },
            warning(
                "ValkeyStateRestored",
                format!(
                    "The Valkey record of the old key {}, which consumers still hold, was gone; wrote it back.",
                    vault.current.short()
                ),
            ),
        );
    }

    if let Some(why) = r.rolling_back.clone() {
        return rollback(o, vault, r, why, b);
    }

    // Mint.
    let pending = match &vault.pending {
        Some((id, rev)) if *rev == r.revision => id.clone(),
        _ => {
            // A new key named in status but in no vault (the vault was lost and recreated
            // from the old key): revoke it before minting another, so no registered key is left
            // valid and unrecorded. Once delivered, pods may run it: halt instead.
            if let Some(orphan) = r
                .new_key_id
                .as_deref()
                .and_then(KeyId::parse)
                .filter(|id| *id != vault.current)
            {
                if r.step >= Step::Switch {
                    let message = format!(
                        "Rotation {}'s new key {} was delivered, but its raw value was lost with the vault Secret {}; nothing was revoked. Put the new key back into Secret {}, or restore the vault from a backup.",
                        r.revision,
                        orphan.short(),
                        vault_name(o),
                        o.spec.secret.name
                    );
                    let event = b.degrade(VAULT_LOST, &message);
                    b.status.phase = Some(Phase::Degraded);
                    b.status.current_rotation = Some(r);
                    return b.plan(
                        Action::Wait {
                            requeue_after: Some(Duration::from_secs(60)),
                        },
                        event,
                    );
                }
                r.new_key_id = None;
                b.status.current_rotation = Some(r);
                return b.plan(
                    Action::Revoke {
                        key_id: orphan.clone(),
                    },
                    warning(
                        "UndeliveredKeyRevoked",
                        format!(
                            "Revoked the undelivered new key {}, whose raw value was lost with the vault.",
                            orphan.short()
                        ),
                    ),
                );
            }
            r.step = Step::Mint;
            b.condition(
                ROTATING,
                true,
                "Mint",
                format!("Rotation {}: minting the new key.", r.revision),
            );
            b.status.current_rotation = Some(r.clone());
            return b.plan(
                Action::MintPending {
                    revision: r.revision,
                },
                None,
            );
        }
    };
    if r.new_key_id.as_deref() != Some(pending.as_str()) {
        r.new_key_id = Some(pending.0.clone());
        r.old_key_id = Some(vault.current.0.clone());
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::StatusOnly,
            normal("KeyMinted", format!("Minted new key {}.", pending.short())),
        );
    }

    // Register the new key (the old one's record is ensured above until it is revoked).
    if !o.records.pending {
        let event = if r.step > Step::Register {
            warning(
                "ValkeyStateRestored",
                format!(
                    "The Valkey record of the new key {} was gone; wrote it back.",
                    pending.short()
                ),
            )
        } else {
            normal(
                "KeysRegistered",
                format!(
                    "Both keys are valid: old {} and new {}.",
                    vault.current.short(),
                    pending.short()
                ),
            )
        };
        r.step = r.step.max(Step::Register);
        b.condition(
            ROTATING,
            true,
            "Register",
            "Writing the Valkey records of both keys.",
        );
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::Register {
                current: false,
                pending: true,
            },
            event,
        );
    }

    // Switch. Once the status says the Secret was switched (it is recorded only after the write
    // succeeded), a Secret without the new key was changed by someone else: put the new key back
    // (the rotation cannot go on without it) and say so.
    if consumer_id(o) != Some(&pending) {
        let tampered = r.step >= Step::Switch;
        // Pods that started while the Secret held another key read that key: every target
        // rolls (again) once the new key is back, with a new restore count so that no template
        // stamped before counts. All of them, not only those the status says were rolled: a
        // roll whose status write was lost left a stamped template the status does not know.
        // (A deleted Secret, or one without the data key, lets no pod start.)
        // What the restore changes is recorded before the write: were the write to land and its
        // status not (a crash, a 5xx), the Secret would look untouched, and pods that read the
        // other key would count as on the new one.
        let record_first = tampered && !r.restoring_secret;
        if record_first && matches!(o.consumer, ConsumerView::Holds(Some(_))) {
            roll_every_target_again(&mut r);
        }
        if record_first {
            // Pods that started since may have read the other key: the switch counts anew.
            r.switched_at = None;
            r.restoring_secret = true;
            b.condition(
                ROTATING,
                true,
                "Switch",
                format!(
                    "Secret {} no longer holds the new key; putting it back.",
                    o.spec.secret.name
                ),
            );
            b.status.current_rotation = Some(r);
            return b.plan(Action::StatusOnly, None);
        }
        r.step = r.step.max(Step::Switch);
        b.condition(
            ROTATING,
            true,
            "Switch",
            format!("Writing the new key into Secret {}.", o.spec.secret.name),
        );
        b.status.current_rotation = Some(r);
        let event = if tampered {
            let found = match &o.consumer {
                ConsumerView::Missing => "was deleted".to_string(),
                ConsumerView::Holds(None) => "lost its key".to_string(),
                ConsumerView::Holds(Some(other)) => format!("held key {}", other.short()),
            };
            warning(
                "SecretRestored",
                format!(
                    "Secret {} {found} during the rotation; wrote the new key {} back.",
                    o.spec.secret.name,
                    pending.short()
                ),
            )
        } else {
            normal(
                "SecretUpdated",
                format!(
                    "Secret {} now holds the new key {}.",
                    o.spec.secret.name,
                    pending.short()
                ),
            )
        };
        return b.plan(Action::WriteConsumer { pending: true }, event);
    }

    // The Secret holds the new key. Someone else wrote the key since the switch, though: another
    // key may have been there between two looks (the operator down, a revert undone by hand).
    if let Some(event) = rewritten_since(o, &mut r, |r| &mut r.switched_at) {
        roll_every_target_again(&mut r);
        b.status.current_rotation = Some(r);
        return b.plan(Action::StatusOnly, event);
    }
    // Pods of no target created from now on start on the new key.
    if record_switch(o, &mut r, |r| &mut r.switched_at) {
        b.status.current_rotation = Some(r);
        return b.plan(Action::StatusOnly, None);
    }

    // Roll, in order, each only after the previous completed.
    for (i, target) in o.spec.targets.iter().enumerate() {
        let progress = r
            .targets
            .iter()
            .position(|t| t.name == target.name)
            .unwrap_or_else(|| {
                r.targets.push(TargetProgress::pending(&target.name));
                r.targets.len() - 1
            });
        r.target_index = i as u32;
        // A target that completed in this rotation stays complete: its later scale-ups,
        // restarts, evictions or other rollouts are not this rotation's to judge.
        if r.targets[progress].state == TargetState::Complete {
            continue;
        }
        let deadline = target.deadline_seconds(&o.spec);
        match &o.targets[i] {
            // Removed from spec.targets and deleted: its pods are gone (the pod gate sees any
            // that still run); nothing is left to roll.
            TargetView::Missing if o.plan.removed.get(i) == Some(&true) => {
                let t = &mut r.targets[progress];
                t.state = TargetState::Complete;
                t.completed_at = Some(ts(now));
                t.message = Some("removed from spec.targets and deleted".into());
                b.status.current_rotation = Some(r);
                return b.plan(
                    Action::StatusOnly,
                    normal(
                        "TargetRemoved",
                        format!(
                            "Deployment {} was removed from spec.targets and deleted during the rotation; it has nothing left to roll.",
                            target.name
                        ),
                    ),
                );
            }
            TargetView::Missing => {
                return halted(
                    b,
                    r,
                    i,
                    "TargetNotFound",
                    format!(
                        "Deployment {} does not exist; the rotation waits for it.",
                        target.name
                    ),
                );
            }
            TargetView::Found {
                annotation,
                secret_restores,
                ..
            } if annotation.as_deref() != Some(pending.as_str())
                || *secret_restores != restores_marker(&r) =>
            {
                if let TargetView::Found { paused: true, .. } = &o.targets[i] {
                    return halted(
                        b,
                        r,
                        i,
                        "TargetPaused",
                        format!(
                            "Deployment {} is paused; resume it to continue the rotation.",
                            target.name
                        ),
                    );
                }
                let calendar = Calendar::from_spec(&o.spec).unwrap_or_default();
                if !r.outside_windows && !calendar.window_open(now) {
                    // A rollout starts only inside a window; both keys stay valid meanwhile.
                    let opens = calendar.next_window_open(now);
                    let message = format!(
                        "Rotation {} waits for the next maintenance window{} to roll out {}.",
                        r.revision,
                        opens.map(|at| format!(" ({})", ts(at))).unwrap_or_default(),
                        target.name
                    );
                    r.step = Step::Roll;
                    b.status.current_rotation = Some(r);
                    return wait_for_window(o, b, true, message, opens);
                }
                r.step = Step::Roll;
                let r_restores = r.secret_restores;
                r.targets[progress].state = TargetState::Rolling;
                r.targets[progress].rolled_at = Some(ts(now));
                r.targets[progress].completed_at = None;
                r.targets[progress].message = None;
                b.condition(
                    ROTATING,
                    true,
                    "Roll",
                    format!(
                        "Rolling out {} ({} of {}).",
                        target.name,
                        i + 1,
                        o.spec.targets.len()
                    ),
                );
                b.status.current_rotation = Some(r);
                return b.plan(
                    Action::Roll {
                        index: i,
                        key_id: pending.clone(),
                        rollback_of: None,
                        secret_restores: (r_restores > 0).then_some(r_restores),
                    },
                    normal(
                        "TargetRolled",
                        format!("Restarting Deployment {} with the new key.", target.name),
                    ),
                );
            }
            TargetView::Found { rollout, .. } => match rollout {
                RolloutState::Complete => {
                    if let Some(v) = &o.spec.verification
                        && r.targets[progress].verified_at.is_none()
                    {
                        let stage = ProbeStage::AfterTarget(i);
                        let Some(outcome) = probe_answer(o, stage) else {
                            b.status.current_rotation = Some(r);
                            return b.plan(Action::Probe { stage }, None);
                        };
                        return match accepted(v, outcome) {
                            Ok(code) => {
                                let t = &mut r.targets[progress];
                                t.state = TargetState::Complete;
                                t.completed_at.get_or_insert_with(|| ts(now));
                                t.verified_at = Some(ts(now));
                                t.message = None;
                                b.status.current_rotation = Some(r);
                                b.plan(
                                    Action::StatusOnly,
                                    normal(
                                        "TargetVerified",
                                        format!(
                                            "Deployment {} finished its rollout and the API accepts the new key (HTTP {code}).",
                                            target.name
                                        ),
                                    ),
                                )
                            }
                            Err(why) => failed(
                                o,
                                b,
                                r,
                                progress,
                                i,
                                target.name.clone(),
                                VERIFICATION_FAILED,
                                format!(
                                    "after its rollout the API did not accept the new key: {why}"
                                ),
                            ),
                        };
                    }
                    if r.targets[progress].state != TargetState::Complete {
                        r.targets[progress].state = TargetState::Complete;
                        r.targets[progress].completed_at = Some(ts(now));
                        r.targets[progress].message = None;
                        b.status.current_rotation = Some(r);
                        return b.plan(
                            Action::StatusOnly,
                            normal(
                                "TargetRolledOut",
                                format!("Deployment {} finished its rollout.", target.name),
                            ),
                        );
                    }
                }
                RolloutState::Failed(message) => {
                    return failed(
                        o,
                        b,
                        r,
                        progress,
                        i,
                        target.name.clone(),
                        ROLLOUT_FAILED,
                        message.clone(),
                    );
                }
                RolloutState::Progressing(message) => {
                    // The deadline runs from when this rotation patched the target; a rollout
                    // found without that stamp (the status was lost) is timed from now.
                    let rolled_at = parse_ts(&r.targets[progress].rolled_at).unwrap_or(now);
                    r.targets[progress].rolled_at = Some(ts(rolled_at));
                    let limit = rolled_at + SignedDuration::from_secs(deadline as i64);
                    if now >= limit {
                        let message = format!(
                            "deployment \"{}\" did not finish its rollout within {deadline}s: {message}",
                            target.name
                        );
                        return failed(
                            o,
                            b,
                            r,
                            progress,
                            i,
                            target.name.clone(),
                            ROLLOUT_FAILED,
                            message,
                        );
                    }
                    r.step = Step::Roll;
                    r.targets[progress].state = TargetState::Rolling;
                    r.targets[progress].message = Some(message.clone());
                    b.condition(
                        ROTATING,
                        true,
                        "Roll",
                        format!(
                            "Waiting for {} ({} of {}): {message}",
                            target.name,
                            i + 1,
                            o.spec.targets.len()
                        ),
                    );
                    b.status.current_rotation = Some(r);
                    return b.plan(
                        Action::Wait {
                            requeue_after: Some(until(now, limit)),
                        },
                        None,
                    );
                }
            },
        }
    }

    // Validate: both keys stay valid for the window after the last target completed.
    r.target_index = o.spec.targets.len().saturating_sub(1) as u32;
    let Some(started) = parse_ts(&r.validation_started_at) else {
        r.step = Step::Validate;
        r.validation_started_at = Some(ts_precise(now));
        b.condition(
            ROTATING,
            true,
            "Validate",
            format!(
                "All targets run the new key; validating for {}s.",
                o.spec.validation_window_seconds
            ),
        );
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::StatusOnly,
            normal(
                "ValidationStarted",
                format!(
                    "All targets run the new key; the old key stays valid for {}s.",
                    o.spec.validation_window_seconds
                ),
            ),
        );
    };
    let window_end = at_least(started, o.spec.validation_window_seconds);
    // The next wake-up while validating, and what the gate read so far.
    let mut wake = window_end;
    let mut gate_note = String::new();
    if let Some(gate) = &o.spec.metrics_gate {
        let last = parse_ts(&r.gate_checked_at);
        let next_check = match last {
            None => started,
            Some(t) => {
                (t + SignedDuration::from_secs(gate.interval_seconds.into())).min(window_end)
            }
        };
        let final_check_done = last.is_some_and(|t| t >= window_end);
        if now >= next_check && !final_check_done {
            r.step = Step::Validate;
            match &o.gate {
                None => {
                    b.status.current_rotation = Some(r);
                    return b.plan(Action::QueryGate, None);
                }
                Some(Ok(value)) if *value > gate.threshold => {
                    // Resumed (Halt) or not, a new validation window must start over.
                    r.validation_started_at = None;
                    r.gate_checked_at = None;
                    return failed_after_last_target(
                        o,
                        b,
                        r,
                        METRICS_GATE_FAILED,
                        format!(
                            "the metrics gate read {value} (over {}) during the validation window: {}",
                            gate.threshold,
                            crate::redact::text(&gate.query)
                        ),
                    );
                }
                Some(Ok(value)) => {
                    r.gate_checked_at = Some(ts_precise(now));
                    r.gate_value = Some(*value);
                    let event = (now >= window_end).then(|| {
                        normal(
                            "MetricsGatePassed",
                            format!(
                                "The metrics gate stayed at or under {} for the whole validation window (last {value}).",
                                gate.threshold
                            ),
                        )
                    });
                    b.status.current_rotation = Some(r);
                    return b.plan(Action::StatusOnly, event.flatten());
                }
                Some(Err(why)) => {
                    // No reading, no verdict: the revocation waits for one.
                    let text = format!("Cannot read the metrics gate ({why}); retrying.");
                    let event = (waiting_reason(o) != Some(GATE_UNAVAILABLE))
                        .then(|| warning(GATE_UNAVAILABLE, text.clone()))
                        .flatten();
                    b.condition(ROTATING, true, GATE_UNAVAILABLE, text);
                    b.status.current_rotation = Some(r);
                    return b.plan(
                        Action::Wait {
                            requeue_after: Some(Duration::from_secs(5)),
                        },
                        event,
                    );
                }
            }
        }
        wake = next_check.max(now).min(window_end);
        gate_note = format!(
            "; the metrics gate read {} (at most {})",
            r.gate_value.map(|v| v.to_string()).unwrap_or_default(),
            gate.threshold
        );
    }
    if now < window_end {
        r.step = Step::Validate;
        b.condition(
            ROTATING,
            true,
            "Validate",
            format!("Validating until {}{gate_note}.", ts(window_end)),
        );
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::Wait {
                requeue_after: Some(until(now, wake)),
            },
            None,
        );
    }

    // The pod gate: every pod that reads the Secret started on the new key.
    if r.revoked_at.is_none() {
        r.step = Step::Validate;
        let restores = restores_marker(&r);
        let switched_at = parse_ts(&r.switched_at);
        let on_new = |p: &PodSummary| p.runs_key(&pending, restores.as_deref(), switched_at);
        (r, b) = match pod_gate(o, r, b, &on_new, "old") {
            Ok(passed) => passed,
            Err(plan) => return *plan,
        };
    }

    // Revoke, then confirm after a delay that the API's last-used rewrite did not bring it back.
    let old = vault.current.clone();
    r.step = Step::Revoke;
    match parse_ts(&r.revoked_at) {
        None if o.spec.verification.is_some() && r.verified_before_revoke_at.is_none() => {
            let v = o.spec.verification.as_ref().expect("checked");
            let stage = ProbeStage::BeforeRevoke;
            let Some(outcome) = probe_answer(o, stage) else {
                b.status.current_rotation = Some(r);
                return b.plan(Action::Probe { stage }, None);
            };
            match accepted(v, outcome) {
                Ok(code) => {
                    r.verified_before_revoke_at = Some(ts(now));
                    b.status.current_rotation = Some(r);
                    b.plan(
                        Action::StatusOnly,
                        normal(
                            "NewKeyVerified",
                            format!(
                                "The API accepts the new key (HTTP {code}); revoking the old key."
                            ),
                        ),
                    )
                }
                Err(why) => failed_after_last_target(
                    o,
                    b,
                    r,
                    VERIFICATION_FAILED,
                    format!(
                        "before revoking the old key the API did not accept the new key: {why}"
                    ),
                ),
            }
        }
        None => {
            r.revoked_at = Some(ts_precise(now));
            r.revoke_attempts = 1;
            b.condition(
                ROTATING,
                true,
                "Revoke",
                format!("Revoking the old key {}.", old.short()),
            );
            b.status.current_rotation = Some(r);
            b.plan(
                Action::Revoke {
                    key_id: old.clone(),
                },
                normal(
                    "OldKeyRevoked",
                    format!("Deleted the Valkey record of the old key {}.", old.short()),
                ),
            )
        }
        Some(at) if now < at_least(at, o.spec.revoke_recheck_seconds) => {
            b.condition(
                ROTATING,
                true,
                "Revoke",
                format!("Confirming the old key {} stays revoked.", old.short()),
            );
            b.status.current_rotation = Some(r);
            b.plan(
                Action::Wait {
                    requeue_after: Some(until(now, at_least(at, o.spec.revoke_recheck_seconds))),
                },
                None,
            )
        }
        Some(_) if o.records.current => {
            r.revoked_at = Some(ts_precise(now));
            r.revoke_attempts += 1;
            b.status.current_rotation = Some(r);
            b.plan(
                Action::Revoke { key_id: old.clone() },
                warning("RevocationRepeated", format!("The old key's record {} came back (a request in flight rewrote it); deleted it again.", old.short())),
            )
        }
        Some(_)
            if o.spec.verification.is_some()
                && r.old_key_refused_at.is_none()
                && !vault.current_raw_lost =>
        {
            let v = o.spec.verification.as_ref().expect("checked");
            let stage = ProbeStage::OldKeyRefused;
            let Some(outcome) = probe_answer(o, stage) else {
                b.status.current_rotation = Some(r);
                return b.plan(Action::Probe { stage }, None);
            };
            match outcome {
                Ok(code) if *code == v.refused_status_code => {
                    r.old_key_refused_at = Some(ts(now));
                    b.status.current_rotation = Some(r);
                    b.plan(
                        Action::StatusOnly,
                        normal(
                            "OldKeyRefused",
                            format!(
                                "Confirmed: the API answers HTTP {code} to the old key {}.",
                                old.short()
                            ),
                        ),
                    )
                }
                other => {
                    // Still accepted somewhere (a record rewritten by a request in flight, an
                    // API replica that kept it): delete it again and ask again after the delay.
                    let answer = match other {
                        Ok(code) => format!("HTTP {code}"),
                        Err(why) => why.clone(),
                    };
                    if r.revoke_attempts >= v.max_revocations {
                        // Bounded: a probe pointed at the wrong API must not loop forever.
                        let text = format!(
                            "The API still did not refuse the old key {} after {} revocations ({answer}, expected HTTP {}); stopped revoking it again (spec.verification.maxRevocations). Check that {} is the API that reads this Valkey.",
                            old.short(),
                            r.revoke_attempts,
                            v.refused_status_code,
                            crate::redact::url(&v.url)
                        );
                        let event = b.degrade(OLD_KEY_STILL_ACCEPTED, &text);
                        b.condition(ROTATING, true, OLD_KEY_STILL_ACCEPTED, text);
                        b.status.phase = Some(Phase::Degraded);
                        b.status.current_rotation = Some(r);
                        return b.plan(
                            Action::Wait {
                                requeue_after: Some(Duration::from_secs(300)),
                            },
                            event,
                        );
                    }
                    let text = format!(
                        "The API did not refuse the old key {} after its revocation ({answer}, expected HTTP {}); revoked it again.",
                        old.short(),
                        v.refused_status_code
                    );
                    let event = b.degrade(OLD_KEY_STILL_ACCEPTED, &text);
                    r.revoked_at = Some(ts_precise(now));
                    r.revoke_attempts += 1;
                    b.status.current_rotation = Some(r);
                    b.plan(
                        Action::Revoke {
                            key_id: old.clone(),
                        },
                        event,
                    )
                }
            }
        }
        Some(_) => {
            r.step = Step::Finish;
            b.condition(
                ROTATING,
                true,
                "Finish",
                "The old key is refused; finishing.",
            );
            b.status.current_rotation = Some(r);
            b.plan(Action::Promote, None)
        }
    }
}

/// The Secret-restores annotation a target rolled in this rotation carries.
/// Revocation waits until every pod that reads the consumers' Secret (a target's or not,
/// running or terminating) started on the new key. `Ok` gives the rotation back to go on.
/// `moved` tells a pod that started on the key that stays; `revoking` names the other one.
fn pod_gate<'a>(
    o: &'a Observation,
    mut r: RotationProgress,
    mut b: StatusBuilder<'a>,
    moved: &dyn Fn(&PodSummary) -> bool,
    revoking: &str,
) -> Result<(RotationProgress, StatusBuilder<'a>), Box<Plan>> {
    let now = o.now;
    let pods = match &o.pods {
        None => {
            b.status.current_rotation = Some(r);
            return Err(Box::new(b.plan(Action::CheckPods, None)));
        }
        Some(Err(why)) => {
            // Never revoke blind.
            let text = format!(
                "Cannot list the pods to check which key they run ({why}); the {revoking} key stays valid, retrying."
            );
            let event = (waiting_reason(o) != Some(PODS_UNREADABLE))
                .then(|| warning(PODS_UNREADABLE, text.clone()))
                .flatten();
            b.condition(ROTATING, true, PODS_UNREADABLE, text);
            b.status.current_rotation = Some(r);
            return Err(Box::new(b.plan(
                Action::Wait {
                    requeue_after: Some(Duration::from_secs(10)),
                },
                event,
            )));
        }
        Some(Ok(pods)) => pods,
    };
    let on_old: Vec<&PodSummary> = pods.iter().filter(|p| !moved(p)).collect();
    r.pods_on_old_key = Some(on_old.len() as u32);
    for (i, t) in r.targets.iter_mut().enumerate() {
        t.pods_on_old_key = Some(on_old.iter().filter(|p| p.target == Some(i)).count() as u32);
    }
    let untracked: Vec<&PodSummary> = on_old
        .iter()
        .copied()
        .filter(|p| p.target.is_none())
        .collect();
    let waits_for_untracked = o.spec.untracked_consumers == UntrackedConsumers::Wait;
    if !untracked.is_empty() && !r.untracked_consumers_reported {
        r.untracked_consumers_reported = true;
        let then = if waits_for_untracked {
            format!(
                "The {revoking} key stays valid until each of them was restarted or is gone (spec.untrackedConsumers: Wait); restart them, or add their workload to spec.targets."
            )
        } else {
            format!(
                "spec.untrackedConsumers: Ignore: the {revoking} key is removed anyway, and they are refused until they restart."
            )
        };
        let event = warning(
            UNTRACKED_CONSUMER,
            format!(
                "{} read Secret {} but belong to no target and may hold the {revoking} key: {}. {then}",
                count(untracked.len(), "pod"),
                o.spec.secret.name,
                some_pods(&untracked)
            ),
        );
        // Its own Event, before the wait's.
        b.status.current_rotation = Some(r);
        return Err(Box::new(b.plan(Action::StatusOnly, event)));
    }
    let blocking: Vec<&PodSummary> = on_old
        .into_iter()
        .filter(|p| p.target.is_some() || waits_for_untracked)
        .collect();
    if blocking.is_empty() {
        r.pods_waiting_since = None;
        return Ok((r, b));
    }
    let mut event = None;
    let since = parse_ts(&r.pods_waiting_since).unwrap_or(now);
    r.pods_waiting_since = Some(ts_precise(since));
    let text = format!(
        "Waiting for {} that may hold the {revoking} key to restart or go before it is removed: {}.",
        count(blocking.len(), "pod"),
        some_pods(&blocking)
    );
    let timeout = at_least(since, o.spec.pod_gate_timeout_seconds);
    if now >= timeout {
        let message = format!(
            "Pods that read Secret {} may still hold the {revoking} key {}s after the validation window ended (spec.podGateTimeoutSeconds); that key stays valid, a timeout never revokes. Restart them (kubectl rollout restart, or delete the pods), or set spec.untrackedConsumers: Ignore for pods of no target.",
            o.spec.secret.name, o.spec.pod_gate_timeout_seconds
        );
        event = event.or(b.degrade(CONSUMERS_ON_OLD_KEY, &message));
    }
    if waiting_reason(o) != Some(WAITING_FOR_PODS) {
        event = event.or(normal(WAITING_FOR_PODS, text.clone()));
    }
    b.condition(ROTATING, true, WAITING_FOR_PODS, text);
    b.status.current_rotation = Some(r);
    let next = pod_gate_recheck(now.duration_since(since));
    let next = if now < timeout {
        until(now, timeout).min(next)
    } else {
        next
    };
    Err(Box::new(b.plan(
        Action::Wait {
            requeue_after: Some(next),
        },
        event,
    )))
}

/// How soon a revocation waiting for pods looks at them again (one list of the namespace's
/// pods): a quarter of the wait so far, from 250 ms up to 5 s. Most waits are for pods of a
/// finished rollout that end their grace period within moments; long ones cost a list per 5 s.
fn pod_gate_recheck(waited: SignedDuration) -> Duration {
    let quarter = Duration::from_millis((waited.as_millis().max(0) / 4) as u64);
    quarter.clamp(Duration::from_millis(250), Duration::from_secs(5))
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Up to five pods by name and owner, and how many more.
fn some_pods(pods: &[&PodSummary]) -> String {
    let mut names: Vec<String> = pods.iter().take(5).map(|p| p.describe()).collect();
    if pods.len() > 5 {
        names.push(format!("and {} more", pods.len() - 5));
    }
    names.join(", ")
}

fn restores_marker(r: &RotationProgress) -> Option<String> {
    (r.secret_restores > 0).then(|| r.secret_restores.to_string())
}

/// The probe answer for `stage`, if the previous decision asked for it.
fn probe_answer(o: &Observation, stage: ProbeStage) -> Option<&ProbeOutcome> {
    o.probe
        .as_ref()
        .filter(|(asked, _)| *asked == stage)
        .map(|(_, outcome)| outcome)
}

/// Whether the answer shows the new key accepted: the status code, or what was wrong.
fn accepted(v: &Verification, outcome: &ProbeOutcome) -> Result<u16, String> {
    match outcome {
        Ok(code) if v.accepted_status_codes.contains(code) => Ok(*code),
        Ok(code) => Err(format!(
            "{} answered HTTP {code} (accepted: {:?})",
            crate::redact::url(&v.url),
            v.accepted_status_codes
        )),
        Err(why) => Err(why.clone()),
    }
}

fn finish(o: &Observation, vault: &VaultView, r: RotationProgress, mut b: StatusBuilder) -> Plan {
    if !o.records.current {
        // The new key lost its record after promotion: restore it before declaring success.
        return b.plan(
            Action::Register {
                current: true,
                pending: false,
            },
            normal(
                "KeyRegistered",
                format!(
                    "Wrote the Valkey record of the active key {}.",
                    vault.current.short()
                ),
            ),
        );
    }
    let revision = r.revision;
    b.status.revision = revision;
    b.status.last_rotation_time = Some(ts(o.now));
    b.status.previous_key_id = r.old_key_id.clone();
    b.status.active_key_id = Some(vault.current.0.clone());
    b.status.current_rotation = None;
    b.status.phase = Some(Phase::Ready);
    let calendar = Calendar::from_spec(&o.spec).unwrap_or_default();
    b.status.next_rotation_time = next_rotation(o, &calendar, o.now).1.map(ts);
    b.condition(
        ROTATING,
        false,
        "Idle",
        format!("Rotation {revision} finished."),
    );
    b.condition(
        READY,
        true,
        "KeyActive",
        format!("Key {} is registered and delivered.", vault.current.short()),
    );
    b.healthy();
    let old = r
        .old_key_id
        .as_deref()
        .and_then(KeyId::parse)
        .map(|id| id.short().to_string())
        .unwrap_or_else(|| "?".into())
        .to_string();
    b.plan(
        Action::RecordHistory {
            revision,
            result: "Succeeded",
        },
        normal(
            "RotationSucceeded",
            format!(
                "Rotation {revision} finished: key {} is active, old key {old} is revoked.",
                vault.current.short()
            ),
        ),
    )
}

/// The rotation cannot go on for a reason outside it (missing or paused target): it waits.
fn halted(
    mut b: StatusBuilder,
    mut r: RotationProgress,
    index: usize,
    reason: &'static str,
    message: String,
) -> Plan {
    r.step = Step::Roll;
    r.target_index = index as u32;
    let event = b.degrade(reason, &message);
    b.condition(ROTATING, true, "Roll", message);
    b.status.phase = Some(Phase::Degraded);
    b.status.current_rotation = Some(r);
    b.plan(
        Action::Wait {
            requeue_after: Some(Duration::from_secs(60)),
        },
        event,
    )
}

/// A target's rollout failed: the old key stays valid, the rotation halts and reports. It
/// resumes by itself if the Deployment later completes.
#[allow(clippy::too_many_arguments)]
fn failed(
    o: &Observation,
    mut b: StatusBuilder,
    mut r: RotationProgress,
    progress: usize,
    index: usize,
    name: String,
    reason: &'static str,
    message: String,
) -> Plan {
    r.step = Step::Roll;
    r.target_index = index as u32;
    r.targets[progress].state = TargetState::Failed;
    r.targets[progress].message = Some(message.clone());
    // A rollback writes the old key back: never once it was revoked (nor without its raw value).
    let old_key_gone =
        r.revoked_at.is_some() || o.vault.as_ref().is_some_and(|v| v.current_raw_lost);
    let rollback = o.spec.failure_policy == FailurePolicy::Rollback && !old_key_gone;
    let what = match reason {
        VERIFICATION_FAILED => "Verification",
        METRICS_GATE_FAILED => "Validation",
        _ => "Rollout",
    };
    let text = format!(
        "{what} of {name} failed: {}. {}",
        message.trim_end_matches('.'),
        if rollback {
            "Rolling back to the old key."
        } else if old_key_gone {
            "The old key is revoked or lost, so rolling back is no longer possible; the new key stays."
        } else {
            "The old key stays valid."
        }
    );
    if rollback {
        r.rolling_back = Some(text.clone());
        r.validation_started_at = None;
        r.revoked_at = None;
        r.revoke_attempts = 0;
        b.condition(DEGRADED, true, reason, text.clone());
        b.condition(ROTATING, true, "RollingBack", text.clone());
        b.status.phase = Some(Phase::Degraded);
        b.status.current_rotation = Some(r);
        return b.plan(Action::StatusOnly, warning(reason, text));
    }
    let event = b.degrade(reason, &text);
    b.condition(ROTATING, true, reason, text);
    b.status.phase = Some(Phase::Degraded);
    b.status.current_rotation = Some(r);
    b.plan(
        Action::Wait {
            requeue_after: Some(Duration::from_secs(60)),
        },
        event,
    )
}

/// A check after the last rollout failed (verification before revoking, the metrics gate): the
/// rotation fails as if the last target's rollout had.
fn failed_after_last_target(
    o: &Observation,
    b: StatusBuilder,
    r: RotationProgress,
    reason: &'static str,
    message: String,
) -> Plan {
    let last = o.spec.targets.len().saturating_sub(1);
    let name = o.spec.targets[last].name.clone();
    let progress = r
        .targets
        .iter()
        .position(|t| t.name == name)
        .unwrap_or(last);
    failed(o, b, r, progress, last, name, reason, message)
}

/// Undo a failed rotation (`failurePolicy: Rollback`): the old key back into the Secret, the
/// targets that got the new key rolled back in reverse order (each after the previous completed),
/// a validation window, then the new key's record removed and the new raw key dropped.
fn rollback<'a>(
    o: &'a Observation,
    vault: &VaultView,
    mut r: RotationProgress,
    why: String,
    mut b: StatusBuilder<'a>,
) -> Plan {
    let now = o.now;
    let old = vault.current.clone();
    b.status.phase = Some(Phase::Degraded);
    b.condition(DEGRADED, true, "RolloutFailed", why.clone());
    let new = match &vault.pending {
        Some((id, rev)) if *rev == r.revision => id.clone(),
        _ => return finish_rollback(o, r, why, b),
    };
    if !o.records.pending && r.revoked_at.is_none() {
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::Register {
                current: false,
                pending: true,
            },
            None,
        );
    }
    if consumer_id(o) != Some(&old) {
        // Once the Secret held the old key again, a Secret without it was changed by someone
        // else: pods that started since may hold another key (the new one, about to be removed).
        // As forward, what this changes is recorded before the write: every target rolls back
        // again (a new restore count, so a new template), and the switch back counts anew.
        if r.switched_back_at.is_some()
            && !r.restoring_secret
            && matches!(o.consumer, ConsumerView::Holds(Some(_)))
        {
            r.secret_restores += 1;
            r.switched_back_at = None;
            r.validation_started_at = None;
            r.restoring_secret = true;
            b.condition(
                ROTATING,
                true,
                "RollingBack",
                format!(
                    "Secret {} no longer holds the old key; putting it back.",
                    o.spec.secret.name
                ),
            );
            b.status.current_rotation = Some(r);
            return b.plan(Action::StatusOnly, None);
        }
        let event = if r.restoring_secret {
            warning(
                "SecretRestored",
                format!(
                    "Secret {} lost the old key {} while the rotation was rolled back; wrote it back, and every target rolls back again.",
                    o.spec.secret.name,
                    old.short()
                ),
            )
        } else {
            normal(
                "SecretRolledBack",
                format!(
                    "Secret {} holds the old key {} again.",
                    o.spec.secret.name,
                    old.short()
                ),
            )
        };
        b.condition(
            ROTATING,
            true,
            "RollingBack",
            format!("Restoring the old key in Secret {}.", o.spec.secret.name),
        );
        b.status.current_rotation = Some(r);
        return b.plan(Action::WriteConsumer { pending: false }, event);
    }
    // As forward: a key written by someone else since the switch back, then the switch back
    // recorded; from then on, pods of no target start on the old key.
    if let Some(event) = rewritten_since(o, &mut r, |r| &mut r.switched_back_at) {
        r.secret_restores += 1;
        r.validation_started_at = None;
        b.status.current_rotation = Some(r);
        return b.plan(Action::StatusOnly, event);
    }
    if record_switch(o, &mut r, |r| &mut r.switched_back_at) {
        b.status.current_rotation = Some(r);
        return b.plan(Action::StatusOnly, None);
    }
    let restores = restores_marker(&r);
    // Every target restarts on the old key, in reverse order, each after the later ones completed:
    // also those never rolled, since any pod that restarted by itself after the switch read the
    // new key, which is about to be removed.
    let marker = r.revision.to_string();
    for (i, target) in o.spec.targets.iter().enumerate().rev() {
        let TargetView::Found {
            annotation,
            rolled_back_in,
            secret_restores,
            rollout,
            ..
        } = &o.targets[i]
        else {
            continue;
        };
        let progress = r.targets.iter().position(|t| t.name == target.name);
        if annotation.as_deref() != Some(old.as_str())
            || rolled_back_in.as_deref() != Some(marker.as_str())
            || *secret_restores != restores
        {
            if let Some(p) = progress {
                r.targets[p].state = TargetState::Rolling;
                r.targets[p].message = Some("rolling back to the old key".into());
            }
            r.target_index = i as u32;
            b.condition(
                ROTATING,
                true,
                "RollingBack",
                format!("Rolling {} back to the old key.", target.name),
            );
            let (revision, count) = (r.revision, r.secret_restores);
            b.status.current_rotation = Some(r);
            return b.plan(
                Action::Roll {
                    index: i,
                    key_id: old.clone(),
                    rollback_of: Some(revision),
                    secret_restores: (count > 0).then_some(count),
                },
                normal(
                    "TargetRolledBack",
                    format!("Restarting Deployment {} with the old key.", target.name),
                ),
            );
        }
        match rollout {
            RolloutState::Complete => {
                if let Some(p) = progress.filter(|&p| r.targets[p].state != TargetState::Pending) {
                    r.targets[p].state = TargetState::Pending;
                    r.targets[p].message = Some("rolled back".into());
                    b.status.current_rotation = Some(r);
                    return b.plan(Action::StatusOnly, None);
                }
            }
            RolloutState::Failed(message) | RolloutState::Progressing(message) => {
                r.target_index = i as u32;
                b.condition(
                    ROTATING,
                    true,
                    "RollingBack",
                    format!("Waiting for {} to roll back: {message}", target.name),
                );
                b.status.current_rotation = Some(r);
                return b.plan(
                    Action::Wait {
                        requeue_after: Some(Duration::from_secs(60)),
                    },
                    None,
                );
            }
        }
    }
    // Every consumer is back on the old key: keep the new one valid for the window, then remove it.
    let Some(started) = parse_ts(&r.validation_started_at) else {
        r.validation_started_at = Some(ts_precise(now));
        b.status.current_rotation = Some(r);
        return b.plan(Action::StatusOnly, None);
    };
    let window_end = at_least(started, o.spec.validation_window_seconds);
    if now < window_end {
        b.condition(
            ROTATING,
            true,
            "RollingBack",
            format!(
                "Every target runs the old key; removing the new key after {}.",
                ts(window_end)
            ),
        );
        b.status.current_rotation = Some(r);
        return b.plan(
            Action::Wait {
                requeue_after: Some(until(now, window_end)),
            },
            None,
        );
    }
    match parse_ts(&r.revoked_at) {
        Some(at) if now < at_least(at, o.spec.revoke_recheck_seconds) => {
            b.status.current_rotation = Some(r);
            b.plan(
                Action::Wait {
                    requeue_after: Some(until(now, at_least(at, o.spec.revoke_recheck_seconds))),
                },
                None,
            )
        }
        Some(_) if !o.records.pending => {
            b.status.current_rotation = Some(r);
            b.plan(Action::DropPending, None)
        }
        _ => {
            // No pod that may have started on the new key is left (terminating ones included).
            if r.revoked_at.is_none() {
                // A pod created before the rotation is no proof: a container that restarted
                // since, or started late, read the new key.
                let back = parse_ts(&r.switched_back_at);
                let marker = Some(r.revision.to_string());
                let restores = restores_marker(&r);
                let on_old = |p: &PodSummary| {
                    let stamped = p.target.is_some()
                        && p.key_id.as_deref() == Some(old.as_str())
                        && p.rolled_back_in == marker
                        && p.secret_restores == restores;
                    stamped || p.created_after(back)
                };
                (r, b) = match pod_gate(o, r, b, &on_old, "new") {
                    Ok(passed) => passed,
                    Err(plan) => return *plan,
                };
            }
            r.revoked_at = Some(ts_precise(now));
            r.revoke_attempts += 1;
            b.status.current_rotation = Some(r);
            b.plan(
                Action::Revoke {
                    key_id: new.clone(),
                },
                normal(
                    "NewKeyRemoved",
                    format!(
                        "Deleted the Valkey record of the abandoned new key {}.",
                        new.short()
                    ),
                ),
            )
        }
    }
}

fn finish_rollback(
    o: &Observation,
    r: RotationProgress,
    why: String,
    mut b: StatusBuilder,
) -> Plan {
    let revision = r.revision;
    b.status.revision = revision;
    b.status.current_rotation = None;
    b.status.phase = Some(Phase::Degraded);
    b.condition(
        ROTATING,
        false,
        "Idle",
        format!("Rotation {revision} was rolled back."),
    );
    b.condition(
        DEGRADED,
        true,
        ROLLED_BACK,
        format!(
            "Rotation {revision} was rolled back: {why} Automatic rotations wait for a new trigger."
        ),
    );
    let _ = o;
    b.plan(
        Action::RecordHistory { revision, result: "RolledBack" },
        warning("RotationRolledBack", format!("Rotation {revision} was rolled back; the old key is active and the new one is removed.")),
    )
}

/// The Degraded reason a finished rollback leaves until the next rotation starts.
pub const ROLLED_BACK: &str = "RolledBack";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Condition;

    /// At the revocation re-check, with every target on the new key and the probe still seeing
    /// the old key accepted after `attempts` revocations.
    fn still_accepted_after(attempts: u32) -> Plan {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        let (old, new) = (KeyId("a".repeat(64)), KeyId("b".repeat(64)));
        o.spec.verification = Some(
            serde_json::from_value(
                serde_json::json!({"url": "https://api.example/host/", "maxRevocations": 3}),
            )
            .unwrap(),
        );
        o.vault = Some(VaultView {
            current: old.clone(),
            pending: Some((new.clone(), 1)),
            current_raw_lost: false,
        });
        o.consumer = ConsumerView::Holds(Some(new.clone()));
        o.records = RecordView {
            current: false,
            pending: true,
            ..Default::default()
        };
        o.targets = o
            .spec
            .targets
            .iter()
            .map(|_| TargetView::Found {
                paused: false,
                annotation: Some(new.0.clone()),
                rolled_back_in: None,
                secret_restores: None,
                rollout: RolloutState::Complete,
            })
            .collect();
        let mut r = RotationProgress::started(
            1,
            "Manual:x".into(),
            Some(old.0.clone()),
            o.spec.targets.iter().map(|t| t.name.as_str()),
            "2026-11-25T11:00:00Z".into(),
        );
        r.new_key_id = Some(new.0.clone());
        r.step = Step::Revoke;
        r.switched_at = Some("2026-11-25T11:05:00.000Z".into());
        for t in &mut r.targets {
            t.state = TargetState::Complete;
            t.verified_at = Some("2026-11-25T11:10:00Z".into());
        }
        r.validation_started_at = Some("2026-11-25T11:20:00.000Z".into());
        r.verified_before_revoke_at = Some("2026-11-25T11:30:00Z".into());
        r.revoked_at = Some("2026-11-25T11:40:00.000Z".into());
        r.revoke_attempts = attempts;
        o.status.current_rotation = Some(r);
        o.probe = Some((ProbeStage::OldKeyRefused, Ok(200)));
        decide(&o)
    }

    /// A rotation whose validation window is over: only the pod gate stands before revoking.
    fn at_the_pod_gate() -> Observation {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        let (old, new) = (KeyId("a".repeat(64)), KeyId("b".repeat(64)));
        o.vault = Some(VaultView {
            current: old.clone(),
            pending: Some((new.clone(), 1)),
            current_raw_lost: false,
        });
        o.consumer = ConsumerView::Holds(Some(new.clone()));
        o.records = RecordView {
            current: true,
            pending: true,
            current_marked: true,
            ..Default::default()
        };
        o.targets = o
            .spec
            .targets
            .iter()
            .map(|_| TargetView::Found {
                paused: false,
                annotation: Some(new.0.clone()),
                rolled_back_in: None,
                secret_restores: None,
                rollout: RolloutState::Complete,
            })
            .collect();
        let mut r = new_rotation(&o, 1, "Manual:x".into(), Some(new.clone()), &old);
        r.step = Step::Validate;
        for t in &mut r.targets {
            t.state = TargetState::Complete;
        }
        r.switched_at = Some("2026-11-25T11:00:00.000Z".into());
        r.validation_started_at = Some("2026-11-25T11:20:00.000Z".into());
        o.status.current_rotation = Some(r);
        o
    }

    fn gate_pod(name: &str, target: Option<usize>, key: &str, created: &str) -> PodSummary {
        PodSummary {
            name: name.into(),
            owner: Some(match target {
                Some(i) => (
                    "ReplicaSet".into(),
                    format!("{}-5d8f", ["sirius-api", "sirius-ui", "sirius-engine"][i]),
                ),
                None => ("Job".into(), "backfill".into()),
            }),
            target,
            key_id: Some(key.repeat(64)),
            secret_restores: None,
            rolled_back_in: None,
            created_at: Some(created.parse().unwrap()),
            terminating: false,
        }
    }

    #[test]
    fn the_old_key_is_revoked_only_once_every_pod_that_reads_the_secret_runs_the_new_one() {
        let mut o = at_the_pod_gate();
        assert_eq!(
            decide(&o).action,
            Action::CheckPods,
            "the pods are read first"
        );
        let mut pods = vec![gate_pod("api-1", Some(0), "b", "2026-11-25T11:05:00Z")];
        // An engine pod of the old ReplicaSet, still terminating.
        let mut old_engine = gate_pod("engine-0", Some(2), "a", "2026-11-20T00:00:00Z");
        old_engine.terminating = true;
        pods.push(old_engine);
        // Seven pods of no target, created before the switch.
        for n in 0..7 {
            pods.push(gate_pod(
                &format!("job-{n}"),
                None,
                "a",
                "2026-11-25T10:59:00Z",
            ));
        }
        o.pods = Some(Ok(pods.clone()));
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly);
        let event = plan.event.clone().unwrap();
        assert_eq!(event.reason, UNTRACKED_CONSUMER);
        assert!(
            event.message.contains("7 pods read Secret sirius-api-key"),
            "{}",
            event.message
        );
        assert!(
            event.message.contains("job-0 (Job/backfill)"),
            "{}",
            event.message
        );
        o.status = plan.status;
        let plan = decide(&o);
        assert!(
            matches!(plan.action, Action::Wait { .. }),
            "{:?}",
            plan.action
        );
        assert_eq!(
            plan.event.as_ref().map(|e| e.reason),
            Some(WAITING_FOR_PODS)
        );
        let rotating = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == ROTATING)
            .unwrap();
        assert_eq!(rotating.reason, WAITING_FOR_PODS);
        assert!(
            rotating.message.contains("8 pods") && rotating.message.contains("and 3 more"),
            "{}",
            rotating.message
        );
        let r = plan.status.current_rotation.clone().unwrap();
        assert_eq!(r.pods_on_old_key, Some(8));
        assert_eq!(r.targets[2].pods_on_old_key, Some(1));
        assert!(r.revoked_at.is_none());

        // Each Event once.
        o.status = plan.status;
        o.now = "2026-11-25T12:00:05Z".parse().unwrap();
        let plan = decide(&o);
        assert!(matches!(plan.action, Action::Wait { .. }));
        assert_eq!(plan.event, None);

        // An hour later: Degraded, still never revoked.
        o.now = "2026-11-25T13:00:01Z".parse().unwrap();
        let plan = decide(&o);
        assert!(matches!(plan.action, Action::Wait { .. }));
        assert_eq!(
            plan.event.as_ref().map(|e| e.reason),
            Some(CONSUMERS_ON_OLD_KEY)
        );
        assert!(plan.status.conditions.iter().any(|c| c.type_ == DEGRADED
            && c.status == "True"
            && c.reason == CONSUMERS_ON_OLD_KEY));

        // The jobs restarted after the switch (plus the margin), the old engine pod is gone.
        let mut pods: Vec<PodSummary> = pods.into_iter().filter(|p| !p.terminating).collect();
        for p in pods.iter_mut().filter(|p| p.target.is_none()) {
            p.created_at = Some("2026-11-25T11:00:05Z".parse().unwrap());
        }
        o.pods = Some(Ok(pods));
        assert!(matches!(decide(&o).action, Action::Revoke { .. }));
    }

    #[test]
    fn pods_of_no_target_are_reported_and_left_with_ignore_and_an_unreadable_list_never_revokes() {
        let mut o = at_the_pod_gate();
        o.spec.untracked_consumers = UntrackedConsumers::Ignore;
        o.pods = Some(Ok(vec![gate_pod(
            "bare",
            None,
            "a",
            "2026-11-25T10:00:00Z",
        )]));
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly);
        let event = plan.event.clone().unwrap();
        assert_eq!(event.reason, UNTRACKED_CONSUMER);
        assert!(event.message.contains("Ignore"), "{}", event.message);
        o.status = plan.status;
        assert!(matches!(decide(&o).action, Action::Revoke { .. }));

        let mut o = at_the_pod_gate();
        o.pods = Some(Err("pods is forbidden".into()));
        let plan = decide(&o);
        assert!(matches!(plan.action, Action::Wait { .. }));
        assert_eq!(plan.event.unwrap().reason, PODS_UNREADABLE);
    }

    #[test]
    fn a_pod_stamped_before_a_secret_restore_or_created_within_the_margin_still_waits() {
        let mut o = at_the_pod_gate();
        let r = o.status.current_rotation.as_mut().unwrap();
        r.secret_restores = 1;
        r.untracked_consumers_reported = true;
        o.pods = Some(Ok(vec![
            gate_pod("api-1", Some(0), "b", "2026-11-25T10:59:00Z"),
            gate_pod("worker", None, "b", "2026-11-25T11:00:01Z"),
        ]));
        let plan = decide(&o);
        assert!(
            matches!(plan.action, Action::Wait { .. }),
            "{:?}",
            plan.action
        );
        assert_eq!(
            plan.status.current_rotation.unwrap().pods_on_old_key,
            Some(2)
        );
    }

    /// Mid-rotation, the first target rolled, and the Secret found holding the old key again.
    fn with_the_secret_reverted() -> Observation {
        let mut o = at_the_pod_gate();
        let r = o.status.current_rotation.as_mut().unwrap();
        r.step = Step::Roll;
        r.validation_started_at = None;
        r.target_index = 1;
        r.targets[0].rolled_at = Some("2026-11-25T11:01:00Z".into());
        for t in &mut r.targets[1..] {
            t.state = TargetState::Pending;
        }
        o.consumer = ConsumerView::Holds(Some(KeyId("a".repeat(64))));
        o
    }

    #[test]
    fn a_secret_restore_is_recorded_before_the_new_key_is_written_back() {
        let mut o = with_the_secret_reverted();
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly, "recorded first");
        let r = plan.status.current_rotation.clone().unwrap();
        assert!(r.restoring_secret);
        assert_eq!(r.secret_restores, 1);
        assert_eq!(r.switched_at, None, "the switch counts anew");
        assert_eq!(r.targets[0].state, TargetState::Pending);
        assert_eq!(r.targets[0].rolled_at, None);
        let recorded = plan.status;

        o.status = recorded.clone();
        let plan = decide(&o);
        assert_eq!(plan.action, Action::WriteConsumer { pending: true });
        assert_eq!(plan.status.current_rotation.unwrap().secret_restores, 1);

        // The write landed but its status did not: the Secret looks untouched, yet the restore
        // is on record, so the first target rolls again with the new count.
        o.status = recorded;
        o.consumer = ConsumerView::Holds(Some(KeyId("b".repeat(64))));
        o.consumer_changed_at = Some("2026-11-25T11:59:00Z".parse().unwrap());
        let plan = decide(&o);
        assert_eq!(
            plan.action,
            Action::StatusOnly,
            "the switch is recorded first"
        );
        let r = plan.status.current_rotation.clone().unwrap();
        assert!(!r.restoring_secret);
        assert_eq!(r.switched_at.as_deref(), Some("2026-11-25T11:59:00.000Z"));
        o.status = plan.status;
        let plan = decide(&o);
        assert!(
            matches!(
                plan.action,
                Action::Roll {
                    index: 0,
                    secret_restores: Some(1),
                    ..
                }
            ),
            "{:?}",
            plan.action
        );
    }

    #[test]
    fn a_secret_changed_after_a_roll_whose_status_was_lost_still_rolls_that_target_again() {
        // The status says the Secret switched and no target rolled; target 0's template was
        // patched (its status write lost) and someone put the old key back.
        let mut o = with_the_secret_reverted();
        let r = o.status.current_rotation.as_mut().unwrap();
        r.step = Step::Switch;
        r.target_index = 0;
        r.targets[0] = TargetProgress::pending("sirius-api");
        let plan = decide(&o);
        let r = plan.status.current_rotation.clone().unwrap();
        assert_eq!(plan.action, Action::StatusOnly);
        assert_eq!(
            r.secret_restores, 1,
            "a new stamp, so target 0's counts no more"
        );
    }

    #[test]
    fn the_switch_is_timed_by_the_api_servers_clock_not_the_operators() {
        let mut o = with_the_secret_reverted();
        let r = o.status.current_rotation.as_mut().unwrap();
        r.switched_at = None;
        o.consumer = ConsumerView::Holds(Some(KeyId("b".repeat(64))));
        // The operator's clock is an hour ahead of the API server's.
        o.now = "2026-11-25T13:00:00Z".parse().unwrap();
        o.consumer_changed_at = Some("2026-11-25T12:00:00Z".parse().unwrap());
        let plan = decide(&o);
        let r = plan.status.current_rotation.unwrap();
        assert_eq!(r.switched_at.as_deref(), Some("2026-11-25T12:00:00.000Z"));
        // A pod the API server created 30 minutes after the switch started on the new key; one
        // created a second after it may not have (cache margin, whole-second stamps).
        let switched = parse_ts(&r.switched_at);
        let late = gate_pod("worker-1", None, "b", "2026-11-25T12:30:00Z");
        let early = gate_pod("worker-2", None, "b", "2026-11-25T12:00:02Z");
        assert!(late.created_after(switched));
        assert!(!early.created_after(switched));
    }

    #[test]
    fn a_rollback_never_takes_a_pod_created_before_the_rotation_for_one_on_the_old_key() {
        let mut o = at_the_pod_gate();
        let old = KeyId("a".repeat(64));
        o.consumer = ConsumerView::Holds(Some(old.clone()));
        for t in &mut o.targets {
            *t = TargetView::Found {
                paused: false,
                annotation: Some(old.0.clone()),
                rolled_back_in: Some("1".into()),
                secret_restores: None,
                rollout: RolloutState::Complete,
            };
        }
        let r = o.status.current_rotation.as_mut().unwrap();
        r.rolling_back = Some("the engine never became ready".into());
        r.started_at = "2026-11-25T10:50:00Z".into();
        r.switched_back_at = Some("2026-11-25T11:30:00.000Z".into());
        r.validation_started_at = Some("2026-11-25T11:31:00.000Z".into());
        r.untracked_consumers_reported = true;
        for t in &mut r.targets {
            t.state = TargetState::Pending;
        }
        // A worker created before the rotation started: its container may have restarted since
        // the switch and read the new key.
        o.pods = Some(Ok(vec![gate_pod(
            "worker",
            None,
            "a",
            "2026-11-25T10:00:00Z",
        )]));
        let plan = decide(&o);
        assert!(
            matches!(plan.action, Action::Wait { .. }),
            "{:?}",
            plan.action
        );
        assert_eq!(
            plan.status.current_rotation.unwrap().pods_on_old_key,
            Some(1)
        );
        // Recreated after the Secret held the old key again, it no longer holds the removal up.
        o.pods = Some(Ok(vec![gate_pod(
            "worker",
            None,
            "a",
            "2026-11-25T11:40:00Z",
        )]));
        assert!(matches!(decide(&o).action, Action::Revoke { .. }));
    }

    #[test]
    fn the_new_key_put_back_during_a_rollback_rolls_every_target_back_again() {
        let mut o = at_the_pod_gate();
        let old = KeyId("a".repeat(64));
        for t in &mut o.targets {
            *t = TargetView::Found {
                paused: false,
                annotation: Some(old.0.clone()),
                rolled_back_in: Some("1".into()),
                secret_restores: None,
                rollout: RolloutState::Complete,
            };
        }
        let r = o.status.current_rotation.as_mut().unwrap();
        r.rolling_back = Some("the engine never became ready".into());
        r.switched_back_at = Some("2026-11-25T11:30:00.000Z".into());
        r.validation_started_at = Some("2026-11-25T11:31:00.000Z".into());
        for t in &mut r.targets {
            t.state = TargetState::Pending;
        }
        // Someone put the new key back (the Secret holds it, as at_the_pod_gate's does).
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly, "recorded first");
        let r = plan.status.current_rotation.clone().unwrap();
        assert!(r.restoring_secret);
        assert_eq!(r.secret_restores, 1);
        assert_eq!(r.switched_back_at, None);
        assert_eq!(r.validation_started_at, None);
        let recorded = plan.status;

        o.status = recorded.clone();
        let plan = decide(&o);
        assert_eq!(plan.action, Action::WriteConsumer { pending: false });
        assert_eq!(plan.event.unwrap().reason, "SecretRestored");

        // Written back, its status lost: the switch back is recorded anew, then the targets
        // roll back again, the last first.
        o.status = recorded;
        o.consumer = ConsumerView::Holds(Some(old.clone()));
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly);
        assert!(
            plan.status
                .current_rotation
                .as_ref()
                .unwrap()
                .switched_back_at
                .is_some()
        );
        o.status = plan.status;
        let plan = decide(&o);
        assert_eq!(
            plan.action,
            Action::Roll {
                index: 2,
                key_id: old.clone(),
                rollback_of: Some(1),
                secret_restores: Some(1),
            }
        );
        // A pod of the first rollback's template no longer counts as on the old key.
        o.status = plan.status;
        let r = o.status.current_rotation.as_mut().unwrap();
        r.validation_started_at = Some("2026-11-25T11:31:00.000Z".into());
        r.untracked_consumers_reported = true;
        for t in &mut o.targets {
            *t = TargetView::Found {
                paused: false,
                annotation: Some(old.0.clone()),
                rolled_back_in: Some("1".into()),
                secret_restores: Some("1".into()),
                rollout: RolloutState::Complete,
            };
        }
        let mut stale = gate_pod("api-1", Some(0), "a", "2026-11-25T11:29:00Z");
        stale.rolled_back_in = Some("1".into());
        o.pods = Some(Ok(vec![stale.clone()]));
        let mut plan = decide(&o);
        for _ in 0..5 {
            if plan.action != Action::StatusOnly {
                break;
            }
            o.status = plan.status.clone();
            plan = decide(&o);
        }
        assert!(
            matches!(plan.action, Action::Wait { .. }),
            "{:?}",
            plan.action
        );
        stale.secret_restores = Some("1".into());
        o.pods = Some(Ok(vec![stale]));
        assert!(matches!(decide(&o).action, Action::Revoke { .. }));
    }

    #[test]
    fn a_key_rewritten_by_someone_else_since_the_switch_rolls_every_target_again() {
        // At the pod gate, the Secret holds the new key; someone wrote it at 11:10, after the
        // switch at 11:00 (another key may have been there in between).
        let mut o = at_the_pod_gate();
        o.consumer_key_rewritten = Some((
            "kubectl-edit".into(),
            "2026-11-25T11:10:00Z".parse().unwrap(),
        ));
        o.consumer_changed_at = Some("2026-11-25T11:10:00Z".parse().unwrap());
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly);
        let event = plan.event.clone().unwrap();
        assert_eq!(event.reason, SECRET_REWRITTEN);
        assert!(event.message.contains("kubectl-edit"), "{}", event.message);
        let r = plan.status.current_rotation.clone().unwrap();
        assert_eq!(r.secret_restores, 1);
        assert_eq!(r.switched_at, None);
        assert!(r.targets.iter().all(|t| t.state == TargetState::Pending));
        o.status = plan.status;
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly);
        assert_eq!(
            plan.status
                .current_rotation
                .as_ref()
                .unwrap()
                .switched_at
                .as_deref(),
            Some("2026-11-25T11:10:00.000Z")
        );
        assert_eq!(plan.event, None, "said once");
        o.status = plan.status;
        assert!(
            matches!(
                decide(&o).action,
                Action::Roll {
                    index: 0,
                    secret_restores: Some(1),
                    ..
                }
            ),
            "{:?}",
            decide(&o).action
        );
    }

    #[test]
    fn the_pod_gate_looks_again_soon_at_first_and_every_5_s_at_most() {
        let at = |ms: i64| pod_gate_recheck(SignedDuration::from_millis(ms));
        assert_eq!(at(0), Duration::from_millis(250));
        assert_eq!(at(4_000), Duration::from_secs(1));
        assert_eq!(at(3_600_000), Duration::from_secs(5));
        // The first wait: pods of the rollout that just finished are still terminating.
        let mut o = at_the_pod_gate();
        o.status
            .current_rotation
            .as_mut()
            .unwrap()
            .untracked_consumers_reported = true;
        let mut pod = gate_pod("engine-0", Some(2), "a", "2026-11-20T00:00:00Z");
        pod.terminating = true;
        o.pods = Some(Ok(vec![pod]));
        assert_eq!(
            decide(&o).action,
            Action::Wait {
                requeue_after: Some(Duration::from_millis(250))
            }
        );
    }

    #[test]
    fn an_immutable_consumers_secret_is_refused_before_a_key_is_minted_or_written() {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        o.trigger = Some("go".into());
        assert!(matches!(
            decide(&o).action,
            Action::StatusOnly | Action::MintPending { .. }
        ));
        o.consumer_immutable = true;
        // Starting the rotation is a status write; its next step would mint.
        let mut plan = decide(&o);
        for _ in 0..5 {
            if plan.action != Action::StatusOnly {
                break;
            }
            o.status = plan.status.clone();
            plan = decide(&o);
        }
        assert_eq!(
            plan.action,
            Action::Wait {
                requeue_after: None
            }
        );
        let degraded = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(degraded.reason, SECRET_IMMUTABLE);
        assert!(
            degraded.message.contains("nothing was minted"),
            "{}",
            degraded.message
        );
        assert_eq!(plan.event.unwrap().reason, SECRET_IMMUTABLE);

        // Made immutable mid-rotation: the write is refused, the minted key is kept.
        let mut o = with_the_secret_reverted();
        o.consumer_immutable = true;
        o.status.current_rotation.as_mut().unwrap().restoring_secret = true;
        let plan = decide(&o);
        assert_eq!(
            plan.action,
            Action::Wait {
                requeue_after: None
            }
        );
        assert_eq!(plan.status.current_rotation, o.status.current_rotation);
        let degraded = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert!(
            degraded.message.contains("are kept"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn a_spec_edit_mid_rotation_waits_for_the_next_one_and_a_removed_deleted_target_is_done() {
        let mut o = at_the_pod_gate();
        let r = o.status.current_rotation.as_mut().unwrap();
        r.step = Step::Roll;
        r.validation_started_at = None;
        r.targets[2].state = TargetState::Rolling;
        o.targets[2] = TargetView::Missing;
        o.plan = PlanNotes {
            deferred: vec!["spec.targets"],
            removed: vec![false, false, true],
        };
        let plan = decide(&o);
        assert_eq!(plan.event.as_ref().unwrap().reason, SPEC_CHANGE_PENDING);
        assert!(
            plan.status
                .current_rotation
                .as_ref()
                .unwrap()
                .spec_change_pending
        );
        o.status = plan.status;
        let plan = decide(&o);
        assert_eq!(plan.event.as_ref().unwrap().reason, "TargetRemoved");
        assert_eq!(
            plan.status.current_rotation.as_ref().unwrap().targets[2].state,
            TargetState::Complete
        );
        // Not removed, only missing: the rotation waits for it.
        let mut o = at_the_pod_gate();
        o.status.current_rotation.as_mut().unwrap().targets[2].state = TargetState::Rolling;
        o.targets[2] = TargetView::Missing;
        let plan = decide(&o);
        assert!(
            plan.status
                .conditions
                .iter()
                .any(|c| c.reason == "TargetNotFound")
        );
    }

    #[test]
    fn a_key_revoked_in_sirius_is_never_written_back_suspended_or_mid_rotation() {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        o.records.current = false;
        o.records.current_marked = true;
        o.spec.suspend = true;
        let plan = decide(&o);
        assert!(
            matches!(plan.action, Action::Wait { .. }),
            "{:?}",
            plan.action
        );
        assert_eq!(plan.event.unwrap().reason, KEY_REVOKED_EXTERNALLY);
        // Flushed (the marker went too): written back, suspended or not.
        o.records.current_marked = false;
        assert!(matches!(
            decide(&o).action,
            Action::Register { current: true, .. }
        ));

        // Mid-rotation: the rotation goes on without the old record.
        let mut plan = still_accepted_after(0);
        let mut r = plan.status.current_rotation.take().unwrap();
        r.step = Step::Roll;
        r.revoked_at = None;
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        o.status.current_rotation = Some(r);
        o.vault = Some(VaultView {
            current: KeyId("a".repeat(64)),
            pending: Some((KeyId("b".repeat(64)), 1)),
            current_raw_lost: false,
        });
        o.records = RecordView {
            current: false,
            pending: true,
            current_marked: true,
            ..Default::default()
        };
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly);
        assert_eq!(plan.event.as_ref().unwrap().reason, KEY_REVOKED_EXTERNALLY);
        let r = plan.status.current_rotation.clone().unwrap();
        assert!(r.old_key_revoked_externally && r.outside_windows);
        o.status = plan.status;
        assert!(
            !matches!(decide(&o).action, Action::Register { current: true, .. }),
            "the revoked record is not written back"
        );
    }

    #[test]
    fn an_old_key_still_accepted_is_revoked_again_only_up_to_max_revocations() {
        let plan = still_accepted_after(2);
        assert!(
            matches!(plan.action, Action::Revoke { .. }),
            "{:?}",
            plan.action
        );
        let plan = still_accepted_after(3);
        assert!(
            matches!(plan.action, Action::Wait { .. }),
            "{:?}",
            plan.action
        );
        assert_eq!(plan.status.phase, Some(Phase::Degraded));
        let degraded = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(degraded.reason, OLD_KEY_STILL_ACCEPTED);
        assert!(
            degraded.message.contains("maxRevocations"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn nothing_read_back_from_status_panics_the_machine() {
        for id in [
            format!("a{}", "é".repeat(40)),
            String::new(),
            "x".into(),
            "\u{0}".repeat(70),
        ] {
            let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
            o.status.active_key_id = Some(id.clone());
            o.status.previous_key_id = Some(id.clone());
            let mut r =
                RotationProgress::started(1, id.clone(), Some(id.clone()), ["t"], id.clone());
            r.new_key_id = Some(id.clone());
            for at in [&mut r.validation_started_at, &mut r.revoked_at] {
                *at = Some(id.clone());
            }
            for step in [Step::Mint, Step::Switch, Step::Roll, Step::Finish] {
                r.step = step;
                o.status.current_rotation = Some(r.clone());
                let _ = decide(&o);
                o.vault = None;
                let _ = decide(&o);
                o.vault = Some(VaultView {
                    current: KeyId(id.clone()),
                    pending: None,
                    current_raw_lost: false,
                });
                let _ = decide(&o);
            }
        }
    }

    #[test]
    fn waits_end_exactly_from_precise_stamps_and_round_up_from_truncated_ones() {
        let precise: Timestamp = "2026-11-25T10:00:00.250Z".parse().unwrap();
        assert_eq!(
            at_least(precise, 5),
            "2026-11-25T10:00:05.250Z".parse().unwrap()
        );
        assert_eq!(
            parse_ts(&Some(ts_precise(precise))),
            Some(precise),
            "the stored stamp keeps its milliseconds"
        );
        // A stamp truncated to the second may be up to a second early.
        let truncated: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        assert_eq!(
            at_least(truncated, 5),
            "2026-11-25T10:00:06Z".parse().unwrap()
        );
    }

    fn idle_observation(interval: Option<u32>, active_since: &str, now: &str) -> Observation {
        let mut spec: ApiKeyRotationSpec =
            serde_json::from_value(serde_json::json!({"valkey": {"url": "redis://v:6379"}}))
                .unwrap();
        spec.rotation_interval_seconds = interval;
        let key = KeyId("a".repeat(64));
        Observation {
            name: "ns/a".into(),
            probe: None,
            gate: None,
            plan: Default::default(),
            pods: None,
            generation: Some(1),
            targets: spec
                .targets
                .iter()
                .map(|_| TargetView::Found {
                    paused: false,
                    annotation: None,
                    rolled_back_in: None,
                    secret_restores: None,
                    rollout: RolloutState::Complete,
                })
                .collect(),
            spec,
            status: ApiKeyRotationStatus {
                active_key_id: Some(key.0.clone()),
                conditions: vec![Condition {
                    type_: READY.into(),
                    status: "True".into(),
                    reason: "KeyActive".into(),
                    message: String::new(),
                    last_transition_time: active_since.into(),
                    observed_generation: Some(1),
                }],
                ..Default::default()
            },
            trigger: None,
            outside_windows: None,
            now: now.parse().unwrap(),
            vault: Some(VaultView {
                current: key.clone(),
                pending: None,
                current_raw_lost: false,
            }),
            consumer: ConsumerView::Holds(Some(key)),
            consumer_labelled: true,
            consumer_changed_at: None,
            consumer_immutable: false,
            consumer_key_rewritten: None,
            records: RecordView {
                current: true,
                pending: false,
                bootstrap_flag: false,
                current_marked: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_interval_starts_a_rotation_when_due_and_waits_until_then() {
        let o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T10:30:00Z");
        let plan = decide(&o);
        assert_eq!(
            plan.status.next_rotation_time.as_deref(),
            Some("2026-11-25T11:00:00Z")
        );
        match plan.action {
            Action::Wait {
                requeue_after: Some(d),
            } => assert!((1799..=1801).contains(&d.as_secs()), "{d:?}"),
            other => panic!("expected a wait, got {other:?}"),
        }
        assert_eq!(plan.status.phase, Some(Phase::Ready));

        let o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T11:00:00Z");
        let plan = decide(&o);
        assert_eq!(plan.action, Action::StatusOnly);
        let r = plan.status.current_rotation.unwrap();
        assert_eq!(
            (r.revision, r.trigger.as_str(), r.step),
            (1, "Interval", Step::Mint)
        );
        assert_eq!(plan.event.unwrap().reason, "RotationStarted");
    }

    #[test]
    fn the_last_rotation_time_anchors_the_interval() {
        let mut o = idle_observation(Some(7200), "2026-11-01T00:00:00Z", "2026-11-25T10:30:00Z");
        o.status.last_rotation_time = Some("2026-11-25T10:00:00Z".into());
        let plan = decide(&o);
        assert_eq!(
            plan.status.next_rotation_time.as_deref(),
            Some("2026-11-25T12:00:00Z")
        );
        assert!(matches!(plan.action, Action::Wait { .. }));
    }

    #[test]
    fn without_an_interval_only_a_new_trigger_rotates() {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2027-11-25T10:00:00Z");
        let plan = decide(&o);
        assert_eq!(
            plan.action,
            Action::Wait {
                requeue_after: None
            }
        );
        assert_eq!(plan.status.next_rotation_time, None);
        o.trigger = Some("t1".into());
        let plan = decide(&o);
        assert_eq!(plan.status.current_rotation.unwrap().trigger, "Manual:t1");
        assert_eq!(plan.status.last_trigger.as_deref(), Some("t1"));
        o.status.last_trigger = Some("t1".into());
        assert!(
            matches!(decide(&o).action, Action::Wait { .. }),
            "the same token does not rotate again"
        );
    }

    #[test]
    fn suspend_keeps_a_due_rotation_from_starting() {
        let mut o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        o.spec.suspend = true;
        o.trigger = Some("t".into());
        let plan = decide(&o);
        assert_eq!(
            plan.action,
            Action::Wait {
                requeue_after: None
            }
        );
        assert_eq!(plan.status.phase, Some(Phase::Suspended));
        assert!(plan.status.current_rotation.is_none());
    }

    fn with_calendar(o: &mut Observation, calendar: serde_json::Value) {
        let mut spec = serde_json::to_value(&o.spec).unwrap();
        for (k, v) in calendar.as_object().unwrap() {
            spec[k] = v.clone();
        }
        o.spec = serde_json::from_value(spec).unwrap();
    }

    #[test]
    fn a_cron_schedule_starts_a_rotation_when_due_and_shows_the_next_time() {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        with_calendar(
            &mut o,
            serde_json::json!({"schedule": {"cron": "0 3 * * *", "timeZone": "Asia/Tokyo"}}),
        );
        // 03:00 in Tokyo is 18:00 UTC the day before.
        let plan = decide(&o);
        assert_eq!(
            plan.status.next_rotation_time.as_deref(),
            Some("2026-11-25T18:00:00Z")
        );
        assert_eq!(
            plan.action,
            Action::Wait {
                requeue_after: Some(until(o.now, "2026-11-25T18:00:00Z".parse().unwrap()))
            }
        );
        o.now = "2026-11-25T18:00:00Z".parse().unwrap();
        let plan = decide(&o);
        assert_eq!(plan.status.current_rotation.unwrap().trigger, "Schedule");
    }

    #[test]
    fn a_due_or_requested_rotation_waits_for_a_window_and_says_so_once() {
        let mut o = idle_observation(Some(3600), "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        with_calendar(
            &mut o,
            serde_json::json!({"maintenanceWindows": [{"start": "0 22 * * *", "durationMinutes": 60}]}),
        );
        let plan = decide(&o);
        assert!(plan.status.current_rotation.is_none());
        assert_eq!(
            plan.status.next_rotation_time.as_deref(),
            Some("2026-11-25T22:00:00Z")
        );
        assert_eq!(
            plan.action,
            Action::Wait {
                requeue_after: Some(until(o.now, "2026-11-25T22:00:00Z".parse().unwrap()))
            }
        );
        assert_eq!(plan.event.as_ref().unwrap().reason, WAITING_FOR_WINDOW);
        // The next decision, on that status, does not repeat the Event.
        o.status = plan.status.clone();
        o.trigger = Some("now-please".into());
        let plan = decide(&o);
        assert!(plan.event.is_none());
        assert!(plan.status.current_rotation.is_none());
        assert_eq!(plan.status.last_trigger, None, "the request stays pending");
        // Inside the window the requested rotation starts.
        o.now = "2026-11-25T22:00:00Z".parse().unwrap();
        let plan = decide(&o);
        assert_eq!(
            plan.status.current_rotation.unwrap().trigger,
            "Manual:now-please"
        );
    }

    #[test]
    fn a_request_marked_outside_windows_starts_at_once_and_only_that_request() {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T12:00:00Z");
        with_calendar(
            &mut o,
            serde_json::json!({"maintenanceWindows": [{"start": "0 22 * * *", "durationMinutes": 60}]}),
        );
        // A stale override (an earlier token) does not apply to a new request.
        o.trigger = Some("leak-2".into());
        o.outside_windows = Some("leak-1".into());
        let plan = decide(&o);
        assert!(plan.status.current_rotation.is_none());
        assert_eq!(plan.event.as_ref().unwrap().reason, WAITING_FOR_WINDOW);

        o.outside_windows = Some("leak-2".into());
        let plan = decide(&o);
        let rotation = plan.status.current_rotation.as_ref().unwrap();
        assert_eq!(rotation.trigger, "Manual:leak-2");
        assert!(rotation.outside_windows, "kept for the rollouts to come");
        assert_eq!(plan.status.last_trigger.as_deref(), Some("leak-2"));
        assert_eq!(
            plan.event.unwrap().message,
            "Rotation 1 started (Manual:leak-2), outside maintenance windows as requested."
        );
    }

    #[test]
    fn an_unlabelled_consumer_secret_is_labelled_without_an_event() {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T10:00:01Z");
        o.consumer_labelled = false;
        let plan = decide(&o);
        assert_eq!(plan.action, Action::WriteConsumer { pending: false });
        assert_eq!(plan.event, None);
    }

    #[test]
    fn a_bootstrap_flag_once_seen_is_kept_set() {
        let mut o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T10:00:01Z");
        assert!(
            !decide(&o).status.bootstrap_flag_in_use,
            "v1.1 installs have no flag to keep"
        );
        o.records.bootstrap_flag = true;
        let plan = decide(&o);
        assert!(plan.status.bootstrap_flag_in_use);
        o.status = plan.status;
        o.records.bootstrap_flag = false;
        let plan = decide(&o);
        assert_eq!(plan.action, Action::SetBootstrapFlag);
        assert_eq!(plan.event.unwrap().reason, "BootstrapFlagRestored");
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let o = idle_observation(None, "2026-11-25T10:00:00Z", "2026-11-25T10:05:00Z");
        let plan = decide(&o);
        let ready = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(ready.last_transition_time, "2026-11-25T10:00:00Z");
        let types: Vec<_> = plan
            .status
            .conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, [READY, ROTATING, DEGRADED]);
    }
}
