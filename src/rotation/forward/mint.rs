//! Mint: a new key for this rotation, in the vault before anything else sees it.

use crate::crd::{Phase, Step};
use crate::key::KeyId;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use std::time::Duration;

/// Done when the vault holds this rotation's key and the status names it.
pub(crate) fn mint(x: &mut Rotating) -> Option<Plan> {
    let Some(new) = x.new_key() else {
        return revoke_orphan(x).or_else(|| {
            x.r.step = Step::Mint;
            let message = format!("Rotation {}: minting the new key.", x.r.revision);
            x.b.rotating(Reason::Mint, message);
            let revision = x.r.revision;
            x.plan(Action::MintPending { revision }, None)
        });
    };
    if x.r.new_key_id.as_deref() != Some(new.as_str()) {
        x.r.new_key_id = Some(new.0.clone());
        x.r.old_key_id = Some(x.vault.current.0.clone());
        let message = format!("Minted new key {}.", new.short());
        return x.record(EventNote::new(Reason::KeyMinted, message));
    }
    None
}

/// A new key named in status but in no vault (the vault was lost and recreated from the old
/// key): revoke it before minting another, so no registered key is left valid and unrecorded.
/// Once delivered, pods may run it: halt instead.
fn revoke_orphan(x: &mut Rotating) -> Option<Plan> {
    let orphan =
        x.r.new_key_id
            .as_deref()
            .and_then(KeyId::parse)
            .filter(|id| *id != x.vault.current)?;
    if x.r.step >= Step::Switch {
        let message = format!(
            "Rotation {}'s new key {} was delivered, but its raw value was lost with the vault Secret {}; nothing was revoked. Put the new key back into Secret {}, or restore the vault from a backup.",
            x.r.revision,
            orphan.short(),
            x.o.vault_name(),
            x.o.spec.secret.name
        );
        let event = x.b.degrade(Reason::VaultLost, &message);
        x.b.status.phase = Some(Phase::Degraded);
        return x.wait(Some(Duration::from_secs(60)), event);
    }
    x.r.new_key_id = None;
    let message = format!(
        "Revoked the undelivered new key {}, whose raw value was lost with the vault.",
        orphan.short()
    );
    x.plan(
        Action::Revoke { key_id: orphan },
        EventNote::new(Reason::UndeliveredKeyRevoked, message),
    )
}
