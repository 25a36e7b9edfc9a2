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

    /// Writes the plan's Event, its status (when it changed) and the state record in Valkey.
    pub(super) async fn record(&mut self, plan: &Plan, store: &KeyStore) -> Result<(), Error> {
        // The Event first: if the status write fails, the retry repeats the (idempotent) action
        // and its Event, so an Event can be doubled but never lost.
        if let Some(note) = &plan.event {
            self.publish(note).await;
        }
        if plan.status != self.status {
            self.apply_status(&plan.status).await?;
            self.ctx.metrics.observe_status(
                &self.ns,
                &self.akr.name_any(),
                &self.status,
                &plan.status,
            );
            // The state record follows the phase (and which rotation is in flight), not every step:
            // each Valkey command counts.
            let state_changed = plan.status.phase != self.status.phase
                || plan.status.current_rotation.as_ref().map(|r| r.revision)
                    != self.status.current_rotation.as_ref().map(|r| r.revision);
            if state_changed {
                let state = json!({
                    "phase": plan.status.phase,
                    "revision": plan.status.revision,
                    "activeKeyId": plan.status.active_key_id,
                    "rotation": plan.status.current_rotation.as_ref().map(|r| json!({
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
            self.status = plan.status.clone();
            self.planned = crate::plan::planned(&self.akr.spec, &self.status);
        }
        Ok(())
    }

    pub(super) async fn apply_status(&self, status: &ApiKeyRotationStatus) -> Result<(), Error> {
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
        self.planned = crate::plan::planned(&self.akr.spec, &status);
        self.status = status;
        let note = EventNote {
            reason,
            message: message.to_string(),
        };
        self.publish(&note).await;
        Ok(())
    }
}
