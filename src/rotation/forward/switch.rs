//! Switch: the new key into the consumers' Secret, put back if someone changes it, and the
//! instant of the switch recorded by the API server's clock (pods created after it read the new
//! key).

use crate::crd::Step;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::observation::ConsumerView;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;

/// Done when the Secret holds the new key, nobody else wrote it since the recorded switch, and
/// the switch (and the end of any restore) is recorded.
pub(crate) fn switch(x: &mut Rotating) -> Option<Plan> {
    let new = x.new_key()?;
    if x.o.consumer_id() != Some(&new) {
        return write_new_key(x);
    }
    // The Secret holds the new key. Someone else wrote the key since the switch, though: another
    // key may have been there between two looks (the operator down, a revert undone by hand).
    if let Some(event) = x.rewritten_since(|r| &mut r.switched_at) {
        x.roll_every_target_again();
        return x.record(event);
    }
    // Pods of no target created from now on start on the new key.
    if x.record_switch(|r| &mut r.switched_at) {
        return x.record(None);
    }
    None
}

/// Once the status says the Secret was switched (it is recorded only after the write
/// succeeded), a Secret without the new key was changed by someone else: put the new key back
/// (the rotation cannot go on without it) and say so.
fn write_new_key(x: &mut Rotating) -> Option<Plan> {
    let (o, new) = (x.o, x.new_key()?);
    let tampered = x.r.step >= Step::Switch;
    // Pods that started while the Secret held another key read that key: every target rolls
    // (again) once the new key is back, with a new restore count so that no template stamped
    // before counts. All of them, not only those the status says were rolled: a roll whose
    // status write was lost left a stamped template the status does not know. (A deleted
    // Secret, or one without the data key, lets no pod start.)
    // What the restore changes is recorded before the write: were the write to land and its
    // status not (a crash, a 5xx), the Secret would look untouched, and pods that read the
    // other key would count as on the new one.
    if tampered && !x.r.restoring_secret {
        if matches!(o.consumer, ConsumerView::Holds(Some(_))) {
            x.roll_every_target_again();
        }
        // Pods that started since may have read the other key: the switch counts anew.
        x.r.switched_at = None;
        x.r.restoring_secret = true;
        let message = format!(
            "Secret {} no longer holds the new key; putting it back.",
            o.spec.secret.name
        );
        x.b.rotating(Reason::Switch, message);
        return x.record(None);
    }
    x.r.step = x.r.step.max(Step::Switch);
    let message = format!("Writing the new key into Secret {}.", o.spec.secret.name);
    x.b.rotating(Reason::Switch, message);
    let event = if tampered {
        let found = match &o.consumer {
            ConsumerView::Missing => "was deleted".to_string(),
            ConsumerView::Holds(None) => "lost its key".to_string(),
            ConsumerView::Holds(Some(other)) => format!("held key {}", other.short()),
        };
        EventNote::new(
            Reason::SecretRestored,
            format!(
                "Secret {} {found} during the rotation; wrote the new key {} back.",
                o.spec.secret.name,
                new.short()
            ),
        )
    } else {
        EventNote::new(
            Reason::SecretUpdated,
            format!(
                "Secret {} now holds the new key {}.",
                o.spec.secret.name,
                new.short()
            ),
        )
    };
    x.plan(Action::WriteConsumer { pending: true }, event)
}
