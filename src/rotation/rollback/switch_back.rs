//! Switch back: the old key into the consumers' Secret again, and the instant recorded.

use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::observation::ConsumerView;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;

/// Done when the Secret holds the old key, nobody else wrote it since, and the switch back is
/// recorded (from then on, pods of no target start on the old key).
pub(crate) fn switch_back(x: &mut Rotating) -> Option<Plan> {
    if x.o.consumer_id() != Some(&x.vault.current) {
        return write_old_key(x);
    }
    // As forward: a key written by someone else since the switch back, then the switch back
    // recorded.
    if let Some(event) = x.rewritten_since(|r| &mut r.switched_back_at) {
        x.r.secret_restores += 1;
        x.r.validation_started_at = None;
        return x.record(event);
    }
    if x.record_switch(|r| &mut r.switched_back_at) {
        return x.record(None);
    }
    None
}

fn write_old_key(x: &mut Rotating) -> Option<Plan> {
    let (o, old) = (x.o, &x.vault.current);
    let secret = &o.spec.secret.name;
    // Once the Secret held the old key again, a Secret without it was changed by someone else:
    // pods that started since may hold another key (the new one, about to be removed). As
    // forward, what this changes is recorded before the write: every target rolls back again (a
    // new restore count, so a new template), and the switch back counts anew.
    if x.r.switched_back_at.is_some()
        && !x.r.restoring_secret
        && matches!(o.consumer, ConsumerView::Holds(Some(_)))
    {
        x.r.secret_restores += 1;
        x.r.switched_back_at = None;
        x.r.validation_started_at = None;
        x.r.restoring_secret = true;
        let message = format!("Secret {secret} no longer holds the old key; putting it back.");
        x.b.rotating(Reason::RollingBack, message);
        return x.record(None);
    }
    let event = if x.r.restoring_secret {
        EventNote::new(
            Reason::SecretRestored,
            format!(
                "Secret {secret} lost the old key {} while the rotation was rolled back; wrote it back, and every target rolls back again.",
                old.short()
            ),
        )
    } else {
        EventNote::new(
            Reason::SecretRolledBack,
            format!("Secret {secret} holds the old key {} again.", old.short()),
        )
    };
    x.b.rotating(
        Reason::RollingBack,
        format!("Restoring the old key in Secret {secret}."),
    );
    x.plan(Action::WriteConsumer { pending: false }, event)
}
