//! Why a rotation may not act at all, before anything is read from Valkey or written: a spec it
//! cannot use, a Secret or workload another ApiKeyRotation already rotates, a consumers' Secret
//! it may not take over. Each is reported (`Degraded`, a Warning Event) and changes nothing.

use super::{Error, HANDOVER_RECHECK, Reconciliation, key_of};
use crate::crd::{ApiKeyRotation, MANAGED_BY_LABEL, RolloutTarget, TargetKind};
use crate::rotation::Reason;
use crate::{observe, spec_check};
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use std::time::Duration;

impl Reconciliation<'_> {
    /// The requeue of a rotation that may not act, once reported; None when it may.
    pub(super) async fn refusal(&mut self) -> Result<Option<Requeue>, Error> {
        let problems = self.spec_problems();
        if !problems.is_empty() {
            self.report_failure(
                Reason::InvalidSpec,
                &format!("Invalid spec, nothing was changed: {}", problems.join("; ")),
            )
            .await?;
            return Ok(Some(Requeue::await_change()));
        }
        self.select().await?;
        if let Some(requeue) = self.claim_refusal().await? {
            return Ok(Some(requeue));
        }
        self.consumer_refusal().await
    }

    /// What is wrong with the spec, beyond what the schema refused.
    fn spec_problems(&self) -> Vec<String> {
        let spec = &self.akr.spec;
        let mut problems = spec_check::problems(spec);
        let name = self.akr.name_any();
        if name.len() > crate::crd::MAX_NAME_LENGTH {
            // The CRD refuses such a name; an object admitted before that bound existed gets here.
            problems.push(format!(
                "metadata.name: {} characters, at most {} (it becomes the value of the label {} on the Secrets this operator writes); recreate the ApiKeyRotation under a shorter name",
                name.len(),
                crate::crd::MAX_NAME_LENGTH,
                MANAGED_BY_LABEL
            ));
        }
        if !self.ctx.argo_rollouts
            && let Some(t) = (spec.targets.iter()).find(|t| t.kind == TargetKind::Rollout)
        {
            problems.push(format!(
                "spec.targets: {} is an Argo Rollout, and this operator was started without --argo-rollouts (chart: argoRollouts.enabled=true, which also grants it the rollouts)",
                t.describe()
            ));
        }
        if spec.secret.name == observe::vault_name(self.akr) {
            problems.push(format!(
                "spec.secret.name: {:?} is this rotation's own vault Secret",
                spec.secret.name
            ));
        }
        problems
    }

    /// An older ApiKeyRotation claims this one's Secret or one of its workloads.
    async fn claim_refusal(&mut self) -> Result<Option<Requeue>, Error> {
        let all = self.ctx.rotations.state();
        // What another rotation's selector claims is known only from an in-step watch: until
        // then, act on nothing (a claim missed would let two rotations stamp one workload).
        let ns = self.akr.namespace();
        if let Some(kind) = (all.iter())
            .filter(|o| o.namespace() == ns && o.metadata.uid != self.akr.metadata.uid)
            .flat_map(|o| o.spec.targets.iter())
            .filter(|t| t.selector.is_some())
            .map(|t| t.kind)
            .find(|kind| !self.ctx.world.target_watch_in_step(*kind))
        {
            tracing::debug!(rotation = %key_of(self.akr), %kind, "waiting for the watch to list before judging claims");
            return Ok(Some(Requeue::requeue(Duration::from_secs(1))));
        }
        // Another rotation's selector claims what the watch shows it selecting (its plan claims
        // what it selected once it starts).
        let selected = |other: &ApiKeyRotation, t: &RolloutTarget| {
            let ns = other.namespace().unwrap_or_default();
            (t.selector.clone())
                .and_then(|s| kube::core::Selector::try_from(s).ok())
                .and_then(|s| self.ctx.world.selected(t.kind, &ns, &s))
                .unwrap_or_default()
        };
        let claim = crate::claims::conflicting_claim(
            self.akr,
            &self.planned.spec.targets,
            all.iter().map(|r| r.as_ref()),
            selected,
        );
        let Some(message) = claim else {
            return Ok(None);
        };
        self.report_failure(Reason::ClaimConflict, &message).await?;
        Ok(Some(Requeue::requeue(self.ctx.resync)))
    }

    /// The consumers' Secret is another rotation's, holds a key this one may not adopt, or is
    /// managed by another tool.
    async fn consumer_refusal(&mut self) -> Result<Option<Requeue>, Error> {
        let planned = self.planned.spec.clone();
        let consumer = (self.ctx.world)
            .secret(&self.secrets, &self.ns, &planned.secret.name, false)
            .await?;
        if let Some(secret) = &consumer
            && let Some(message) = crate::trust::consumer_secret_problem(
                secret,
                &self.akr.name_any(),
                self.ctx.rotations.state(),
            )
            .or_else(|| {
                crate::trust::adoptable_key_problem(
                    secret,
                    &self.akr.name_any(),
                    &planned.secret.key,
                    &planned.key.prefix,
                )
            })
        {
            self.report_failure(Reason::ClaimConflict, &message).await?;
            return Ok(Some(Requeue::requeue(self.ctx.resync)));
        }
        if let Some(secret) = &consumer
            && let Some(message) = crate::handover::managed_elsewhere(secret, &planned.secret.key)
        {
            self.report_failure(Reason::SecretManagedElsewhere, &message)
                .await?;
            // The Secret is not labelled yet, so its watch does not see the hand-over: look again.
            return Ok(Some(Requeue::requeue(
                self.ctx.resync.min(HANDOVER_RECHECK),
            )));
        }
        Ok(None)
    }
}
