//! The commands a platform engineer runs against a cluster: `status` (a table or JSON of the
//! rotations) and `rotate` (request one rotation now).

use crate::crd::{
    ApiKeyRotation, OUTSIDE_WINDOWS_ANNOTATION, TRIGGER_ANNOTATION, TargetKind, TargetState,
};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Which rotations to show.
pub enum Scope {
    Namespace(String),
    All,
}

pub async fn status(client: Client, scope: &Scope, output: Output) -> anyhow::Result<String> {
    let api: Api<ApiKeyRotation> = match scope {
        Scope::Namespace(ns) => Api::namespaced(client, ns),
        Scope::All => Api::all(client),
    };
    let mut rotations = api.list(&ListParams::default()).await?.items;
    rotations.sort_by_key(|r| (r.namespace(), r.name_any()));
    Ok(match output {
        Output::Table => render_table(&rotations),
        Output::Json => {
            serde_json::to_string_pretty(&rotations.iter().map(summary_json).collect::<Vec<_>>())?
                + "\n"
        }
    })
}

fn summary_json(r: &ApiKeyRotation) -> serde_json::Value {
    let status = r.status.clone().unwrap_or_default();
    json!({
        "namespace": r.namespace(),
        "name": r.name_any(),
        "phase": status.phase,
        "activeKeyId": status.active_key_id,
        "previousKeyId": status.previous_key_id,
        "revision": status.revision,
        "lastRotationTime": status.last_rotation_time,
        "nextRotationTime": status.next_rotation_time,
        "currentRotation": status.current_rotation,
        "conditions": status.conditions,
    })
}

/// One row per rotation; per-target progress and conditions in compact columns.
pub fn render_table(rotations: &[ApiKeyRotation]) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "PHASE",
            "ACTIVE KEY",
            "LAST ROTATION",
            "NEXT ROTATION",
            "STEP",
            "TARGETS",
            "CONDITIONS",
        ]
        .map(str::to_string),
    ];
    for r in rotations {
        let status = r.status.clone().unwrap_or_default();
        let current = status.current_rotation.as_ref();
        let step = current
            .map(|c| {
                match c
                    .pods_on_old_key
                    .filter(|n| *n > 0 && c.revoked_at.is_none())
                {
                    Some(n) => format!("{}:{:?}({n} pods on old key)", c.revision, c.step),
                    None => format!("{}:{:?}", c.revision, c.step),
                }
            })
            .unwrap_or_else(|| "-".into());
        // A rotation in flight shows the targets it started with (its plan).
        // Idle, a selector entry shows its selector (`deploy/[tier=web]`).
        let names: Vec<(TargetKind, String)> = match current.filter(|c| !c.targets.is_empty()) {
            Some(c) => (c.targets.iter())
                .map(|t| (t.kind, t.name.clone()))
                .collect(),
            None => (r.spec.targets.iter())
                .map(|t| match &t.selector {
                    Some(s) => (t.kind, format!("[{}]", crate::crd::selector_text(s))),
                    None => (t.kind, t.name.clone()),
                })
                .collect(),
        };
        let targets = target_states(names, current, status.revision);
        let conditions = status
            .conditions
            .iter()
            .map(|c| {
                if c.status == "True" {
                    format!("{}({})", c.type_, c.reason)
                } else {
                    format!("!{}", c.type_)
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        rows.push([
            r.namespace().unwrap_or_default(),
            r.name_any(),
            status
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "-".into()),
            status.active_key_id_short.unwrap_or_else(|| "-".into()),
            status.last_rotation_time.unwrap_or_else(|| "-".into()),
            status.next_rotation_time.unwrap_or_else(|| "-".into()),
            step,
            targets,
            if conditions.is_empty() {
                "-".into()
            } else {
                conditions
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Each target as `kind/name=state` (kubectl's short kind: `deploy`, `sts`, `ds`), with how many
/// of its pods still hold the old key while the revocation waits for them.
fn target_states(
    names: Vec<(TargetKind, String)>,
    current: Option<&crate::crd::RotationProgress>,
    revision: u64,
) -> String {
    names
        .into_iter()
        .map(|(kind, name)| {
            let progress =
                current.and_then(|c| c.targets.iter().find(|p| p.kind == kind && p.name == name));
            let state = progress
                .map(|p| match p.state {
                    TargetState::Pending => "pending",
                    TargetState::Rolling => "rolling",
                    TargetState::Complete => "done",
                    TargetState::Failed => "FAILED",
                })
                .unwrap_or(if revision > 0 { "done" } else { "-" });
            // While the revocation waits for pods: how many of this target's still hold the
            // old key.
            let waiting = progress
                .filter(|_| current.is_some_and(|c| c.revoked_at.is_none()))
                .and_then(|p| p.pods_on_old_key)
                .filter(|n| *n > 0)
                .map(|n| format!("({n} on old key)"))
                .unwrap_or_default();
            let short = match kind {
                TargetKind::Deployment => "deploy",
                TargetKind::StatefulSet => "sts",
                TargetKind::DaemonSet => "ds",
                TargetKind::Rollout => "rollout",
            };
            format!("{short}/{name}={state}{waiting}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Sets the trigger annotation to a new token: exactly one rotation follows. With
/// `outside_windows`, that rotation does not wait for maintenance windows. Returns the token.
pub async fn rotate(
    client: Client,
    namespace: &str,
    name: &str,
    token: Option<String>,
    outside_windows: bool,
) -> anyhow::Result<String> {
    let api: Api<ApiKeyRotation> = Api::namespaced(client, namespace);
    let current = api.get(name).await?;
    let token = token.unwrap_or_else(|| {
        jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%S%.3fZ")
            .to_string()
    });
    anyhow::ensure!(
        current.annotations().get(TRIGGER_ANNOTATION) != Some(&token),
        "token {token:?} was already requested; each token means one rotation, pick another"
    );
    // One patch: the controller never sees the token without its window override.
    let mut annotations = json!({TRIGGER_ANNOTATION: token});
    if outside_windows {
        annotations[OUTSIDE_WINDOWS_ANNOTATION] = json!(token);
    }
    let patch = json!({"metadata": {"annotations": annotations}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_selector_entry_shows_its_selector_and_a_rotation_what_it_selected() {
        let mut r: ApiKeyRotation = serde_json::from_value(json!({
            "apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"valkey": {"url": "redis://v:6379"}, "targets": [
                {"name": "sirius-api"},
                {"kind": "StatefulSet", "selector": {"matchLabels": {"tier": "backend"}}},
            ]},
        }))
        .unwrap();
        let table = render_table(std::slice::from_ref(&r));
        assert!(
            table.contains("deploy/sirius-api=-,sts/[tier=backend]=-"),
            "{table}"
        );
        let mut rotating = crate::crd::RotationProgress::started(
            1,
            "Manual:x".into(),
            None,
            &[
                crate::crd::RolloutTarget::named(TargetKind::Deployment, "sirius-api"),
                crate::crd::RolloutTarget::named(TargetKind::StatefulSet, "engine"),
            ],
            "t".into(),
        );
        rotating.targets[1].selector = Some("tier=backend".into());
        r.status = Some(crate::crd::ApiKeyRotationStatus {
            current_rotation: Some(rotating),
            ..Default::default()
        });
        let table = render_table(&[r]);
        assert!(
            table.contains("deploy/sirius-api=pending,sts/engine=pending"),
            "{table}"
        );
    }
}
