//! Recording what was done: the status (server-side apply), the Event, the Valkey state and
//! history, and failures the machine never sees (Degraded with a reason).

use super::{Error, FIELD_MANAGER, Reconciliation, key_of};
use crate::crd::{ApiKeyRotation, ApiKeyRotationStatus, Phase, ROLLOUT_ANNOTATION};
use crate::keystore::KeyStore;
use crate::rotation::{Action, EventNote, Plan, Reason};
use crate::{observe, rotation};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

/// How often a rolling target's newer progress message is written at most (see
/// [`Reconciliation::record`]).
pub(super) const PROGRESS_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a plan whose status is only taken (`StatusOnly`) may have it written after `next`
/// rather than before: after a wait, another such plan, or a forward roll. A crash before that
/// write loses nothing the next reconcile does not find again in the world (the vault, the
/// Secret, the templates): a forward roll's stamp is its own record, and a target found
/// complete is found complete again. Not so a switch's record (when the Secret came to hold the
/// key, the end of a restore): it is what shows a later rewrite of the Secret, so a roll never
/// goes before it is written. Anything else (a key minted, registered or revoked, a rollback)
/// is written before it acts, as every step was.
pub(super) fn holds_status_over(
    next: &Action,
    held: &ApiKeyRotationStatus,
    written: &ApiKeyRotationStatus,
) -> bool {
    match next {
        Action::StatusOnly | Action::Wait { .. } => true,
        Action::Roll {
            rollback_of: None, ..
        } => !records_a_switch(held, written),
        _ => false,
    }
}

/// Whether `held` records a switch (or the end of a restore) that `written` does not.
fn records_a_switch(held: &ApiKeyRotationStatus, written: &ApiKeyRotationStatus) -> bool {
    let switch = |s: &ApiKeyRotationStatus| {
        (s.current_rotation.as_ref()).map(|r| {
            (
                r.switched_at.clone(),
                r.switched_back_at.clone(),
                r.restoring_secret,
            )
        })
    };
    switch(held) != switch(written)
}

/// A status without its rollout progress messages (each target's, and the Rotating
/// condition's in the Roll step).
fn without_progress(status: &ApiKeyRotationStatus) -> ApiKeyRotationStatus {
    let mut status = status.clone();
    if let Some(r) = status.current_rotation.as_mut() {
        for t in &mut r.targets {
            t.message = None;
        }
    }
    for c in &mut status.conditions {
        if c.type_ == rotation::ROTATING && c.reason == Reason::Roll.as_str() {
            c.message.clear();
        }
    }
    status
}

/// events.k8s.io/v1 refuses a note over 1 kB; long messages (many spec problems, a long
/// Deployment condition) are cut at a character boundary.
pub(super) fn truncate_note(message: &str) -> String {
    const LIMIT: usize = 1024;
    if message.len() <= LIMIT {
        return message.to_string();
    }
    let mut end = LIMIT - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

impl Reconciliation<'_> {
    /// What a write changes, in the words of a report that it keeps being undone.
    pub(super) fn describe(&self, action: &Action) -> String {
        let spec = &self.planned.spec;
        match action {
            Action::WriteConsumer { .. } => format!(
                "The key in Secret {} (data key {})",
                spec.secret.name, spec.secret.key
            ),
            Action::Roll { index, .. } => format!(
                "The pod-template annotation {ROLLOUT_ANNOTATION} of {}",
                spec.targets
                    .get(*index)
                    .map_or("?".to_string(), |t| format!("{} {}", t.kind, t.name))
            ),
            Action::RestoreVault { .. } => {
                format!("The vault Secret {}", observe::vault_name(self.akr))
            }
            other => format!("{other:?}"),
        }
    }

    /// Publishes the plan's Event and takes its status; writes that status (see
    /// [`Self::write_status`]) unless the plan only records progress (`StatusOnly`), which the
    /// next write carries (see [`holds_status_over`]).
    pub(super) async fn record(&mut self, plan: &Plan, store: &KeyStore) -> Result<(), Error> {
        // The Event first: if the status write fails, the retry repeats the (idempotent) action
        // and its Event, so an Event can be doubled but never lost.
        if let Some(note) = &plan.event {
            self.publish(note).await;
        }
        if plan.status != self.status {
            self.status = plan.status.clone();
            self.replan();
        }
        match plan.action {
            Action::StatusOnly => Ok(()),
            Action::Wait { .. } if self.progress_only_and_written_lately() => Ok(()),
            _ => self.write_status(store).await,
        }
    }

    /// Whether what is unwritten is only a newer rollout progress message, and the status was
    /// written less than [`PROGRESS_REFRESH`] ago: such messages are refreshed at that pace, not
    /// at every status change of a rolling workload (a Deployment of 50 replicas makes a
    /// hundred).
    fn progress_only_and_written_lately(&self) -> bool {
        let lately = (self.ctx.world)
            .status_written_at(&key_of(self.akr))
            .is_some_and(|at| at.elapsed() < PROGRESS_REFRESH);
        lately && without_progress(&self.status) == without_progress(&self.written)
    }

    /// When a held-back progress message is due (see [`Self::record`]).
    pub(super) fn progress_due_in(&self) -> Option<std::time::Duration> {
        if self.status == self.written {
            return None;
        }
        let at = self.ctx.world.status_written_at(&key_of(self.akr))?;
        Some(PROGRESS_REFRESH.saturating_sub(at.elapsed()))
    }

    /// Writes the status taken since the last write, if it changed, with the metrics and the
    /// state record in Valkey that follow it.
    pub(super) async fn write_status(&mut self, store: &KeyStore) -> Result<(), Error> {
        if self.status == self.written {
            return Ok(());
        }
        let (before, after) = (self.written.clone(), self.status.clone());
        self.apply_status(&after).await?;
        self.ctx
            .metrics
            .observe_status(&self.ns, &self.akr.name_any(), &before, &after);
        // The state record follows the phase (and which rotation is in flight), not every step:
        // each Valkey command counts.
        let state_changed = after.phase != before.phase
            || after.current_rotation.as_ref().map(|r| r.revision)
                != before.current_rotation.as_ref().map(|r| r.revision);
        if state_changed {
            let state = json!({
                "phase": after.phase,
                "revision": after.revision,
                "activeKeyId": after.active_key_id,
                "rotation": after.current_rotation.as_ref().map(|r| json!({
                    "revision": r.revision, "step": r.step, "newKeyId": r.new_key_id, "startedAt": r.started_at,
                })),
                "updatedAt": self.ctx.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            });
            store
                .write_state(
                    &self.akr.spec.valkey.operator_prefix,
                    &key_of(self.akr),
                    &state.to_string(),
                )
                .await?;
        }
        Ok(())
    }

    pub(super) async fn apply_status(
        &mut self,
        status: &ApiKeyRotationStatus,
    ) -> Result<(), Error> {
        let patch = json!({
            "apiVersion": ApiKeyRotation::api_version(&()),
            "kind": ApiKeyRotation::kind(&()),
            "status": status,
        });
        let written = self
            .akrs
            .patch_status(
                &self.akr.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.ctx.world.note_rotation(&written);
        self.ctx.world.note_status_written(&key_of(self.akr));
        self.written = status.clone();
        Ok(())
    }

    pub(super) async fn publish(&self, note: &EventNote) {
        let event = Event {
            type_: if note.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.as_str().into(),
            note: Some(truncate_note(&note.message)),
            action: note.reason.as_str().into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &self.akr.object_ref(&()))
            .await
        {
            tracing::warn!(rotation = %key_of(self.akr), error = %e, "could not publish an Event");
        }
    }

    /// `Degraded=True` with this reason (and an Event when it is new); keeps everything else.
    pub(super) async fn report_failure(
        &mut self,
        reason: Reason,
        message: &str,
    ) -> Result<(), Error> {
        if rotation::degraded_with(&self.status.conditions, reason, message) {
            return Ok(());
        }
        let now = self
            .ctx
            .clock
            .now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut status = self.status.clone();
        let generation = self.akr.metadata.generation;
        let (conditions, text) = (&mut status.conditions, message.to_string());
        let degraded = rotation::DEGRADED;
        rotation::set_condition(conditions, degraded, true, reason, text, now, generation);
        status.phase = Some(Phase::Degraded);
        status.observed_generation = generation;
        self.apply_status(&status).await?;
        self.status = status;
        self.replan();
        let note = EventNote {
            reason,
            message: message.to_string(),
        };
        self.publish(&note).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RotationProgress;
    use crate::key::RawKey;

    fn rotating(switched_at: Option<&str>) -> ApiKeyRotationStatus {
        let mut r = RotationProgress::started(1, "test".into(), None, [], "t0".into());
        r.switched_at = switched_at.map(str::to_string);
        ApiKeyRotationStatus {
            current_rotation: Some(r),
            ..Default::default()
        }
    }

    fn forward_roll() -> Action {
        Action::Roll {
            index: 0,
            key_id: RawKey::new("a".repeat(64)).id(),
            rollback_of: None,
            secret_restores: None,
        }
    }

    #[test]
    fn a_switch_is_written_before_the_first_roll_and_progress_may_ride_on_it() {
        let written = rotating(None);
        let switched = rotating(Some("2026-12-04T00:00:00.123Z"));
        // The switch's time shows a later rewrite of the Secret: it is not held over a roll.
        assert!(!holds_status_over(&forward_roll(), &switched, &written));
        // Once written, a later record (a target found complete) rides on the roll.
        let mut progressed = switched.clone();
        progressed.current_rotation.as_mut().unwrap().target_index = 1;
        assert!(holds_status_over(&forward_roll(), &progressed, &switched));
        // A wait or another status-only plan holds it too; a revocation never does.
        assert!(holds_status_over(&Action::StatusOnly, &switched, &written));
        let revoke = Action::Revoke {
            key_id: RawKey::new("b".repeat(64)).id(),
        };
        assert!(!holds_status_over(&revoke, &progressed, &switched));
    }
}
