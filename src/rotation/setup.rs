//! Before any rotation: the vault's first key (adopted or minted), a lost vault recreated only
//! from a key the status vouches for, and the refusal to write into an immutable Secret.

use super::action::{Action, EventNote, Plan};
use super::observation::{ConsumerView, Observation};
use super::reason::Reason;
use super::status::{READY, ROTATING, StatusBuilder};
use crate::crd::{Phase, Step};
use crate::key::KeyId;
use std::time::Duration;

/// No vault yet: adopt the key the consumers already hold, or mint the first one.
pub(super) fn bootstrap(o: &Observation, mut b: StatusBuilder) -> Plan {
    let adopt = matches!(o.consumer, ConsumerView::Holds(Some(_)));
    b.status.phase = Some(Phase::Pending);
    b.condition(
        READY,
        false,
        Reason::Initializing,
        "Setting up the active key.",
    );
    b.condition(ROTATING, false, Reason::Idle, "No rotation in flight.");
    b.healthy();
    let event = if adopt {
        EventNote::new(
            Reason::KeyAdopted,
            format!(
                "Adopted the key in Secret {} as the active key.",
                o.spec.secret.name
            ),
        )
    } else {
        EventNote::new(Reason::KeyMinted, "No key to adopt: minted the first key.")
    };
    b.plan(Action::CreateVault { adopt }, event)
}

/// The vault (the only copy of the raw keys besides the consumers' Secret) was deleted or emptied
/// after the operator set it up. It is recreated only from a key whose id the status vouches for;
/// anything else halts with nothing revoked, since a wrong guess could cut off every consumer.
pub(super) fn vault_lost(o: &Observation, mut b: StatusBuilder) -> Plan {
    let vault = o.vault_name();
    let secret = &o.spec.secret.name;
    let held = o.consumer_id().map(KeyId::as_str);
    let held_is = |id: Option<&String>| held.is_some() && held == id.map(String::as_str);
    let rotation = o.status.current_rotation.as_ref();
    let restore = |b: StatusBuilder, as_pending, message: String| {
        b.plan(
            Action::RestoreVault { as_pending },
            EventNote::new(Reason::VaultLost, message),
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
                    EventNote::new(Reason::VaultLost,
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
    let event = b.degrade(Reason::VaultLost, &message);
    b.status.phase = Some(Phase::Degraded);
    b.plan(
        Action::Wait {
            requeue_after: Some(Duration::from_secs(60)),
        },
        event,
    )
}

/// Whether the Ready condition was ever true (the active key was delivered at least once).
pub(super) fn ever_ready(o: &Observation) -> bool {
    o.status.revision > 0
        || o.status
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.status == "True")
}

/// The short form of an id read back from status (`?` when it is not one).
pub(super) fn short_id(id: Option<&str>) -> String {
    id.and_then(KeyId::parse)
        .map(|id| id.short().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The next step would mint a key for, or write one into, an immutable consumers' Secret:
/// refuse it before it is taken, keeping the status as it was.
pub(super) fn immutable_consumer(o: &Observation, nothing_minted: bool) -> Plan {
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
    let event = b.degrade(Reason::SecretImmutable, &message);
    b.plan(
        Action::Wait {
            requeue_after: None,
        },
        event,
    )
}
