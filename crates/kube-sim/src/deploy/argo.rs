//! Argo Rollouts, simulated by the Deployment controller (one surge pod at a time, which is what
//! a canary without steps does) with the status Argo's controller writes: `observedGeneration`
//! as a string, `currentPodHash`, `stableRS` (the current hash once the update completed),
//! `phase` and `message`, and a `Progressing` condition with Argo's reasons. Pods carry
//! `rollouts-pod-template-hash` and are owned by the ReplicaSet `<rollout>-<hash>`. Pause
//! (`spec.paused`) and the progress deadline (`Degraded`, `ProgressDeadlineExceeded`) behave as
//! Argo's; analysis runs and traffic routing are not simulated.

use serde_json::{Value, json};

/// Argo's names of the Deployment controller's pause reasons.
const REASONS: [(&str, &str); 2] = [
    ("DeploymentPaused", "RolloutPaused"),
    ("DeploymentResumed", "RolloutResumed"),
];

/// Reads an Argo `Progressing` condition with the Deployment controller's reason names.
pub(super) fn deployment_reason(condition: &mut Value) {
    for (deployment, argo) in REASONS {
        if condition["reason"] == argo {
            condition["reason"] = json!(deployment);
        }
    }
}

/// The Rollout's status from the Deployment-style `status` computed for it.
pub(super) fn status(
    status: &Value,
    rollout: &Value,
    old: &Value,
    hash: Option<String>,
    complete: bool,
) -> Value {
    let mut conditions = status["conditions"].clone();
    for c in conditions.as_array_mut().into_iter().flatten() {
        for (deployment, argo) in REASONS {
            if c["reason"] == deployment {
                c["reason"] = json!(argo);
            }
        }
        if c["reason"] == "RolloutPaused" {
            c["message"] = json!("Rollout is paused");
        }
    }
    let progressing = (conditions.as_array().into_iter().flatten())
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or(Value::Null);
    let stable = match (&hash, complete) {
        (Some(h), true) => json!(h),
        _ => old.get("stableRS").cloned().unwrap_or(Value::Null),
    };
    let count = |field: &str| status[field].as_u64().unwrap_or(0);
    let (phase, message) = if progressing["reason"] == "ProgressDeadlineExceeded" {
        let message = progressing["message"].as_str().unwrap_or("");
        ("Degraded", format!("ProgressDeadlineExceeded: {message}"))
    } else if rollout["spec"]["paused"] == json!(true) {
        ("Paused", "manually paused".to_string())
    } else if complete && stable.as_str() == hash.as_deref() {
        ("Healthy", String::new())
    } else if count("updatedReplicas") < rollout["spec"]["replicas"].as_u64().unwrap_or(1) {
        ("Progressing", "more replicas need to be updated".into())
    } else {
        (
            "Progressing",
            "updated replicas are still becoming available".into(),
        )
    };
    let generation = rollout["metadata"]["generation"].as_i64().unwrap_or(0);
    let mut out = json!({
        "observedGeneration": generation.to_string(),
        "replicas": count("replicas"),
        "updatedReplicas": count("updatedReplicas"),
        "readyReplicas": count("readyReplicas"),
        "availableReplicas": count("availableReplicas"),
        "currentPodHash": hash,
        "stableRS": stable,
        "phase": phase,
        "message": message,
        "conditions": conditions,
    });
    let object = out.as_object_mut().expect("an object");
    object.retain(|_, v| !v.is_null());
    out
}
