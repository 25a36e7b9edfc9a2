//! Events are one kind in kube-apiserver, stored once and served as both `events.k8s.io/v1` and
//! core `v1`: an Event the operator records through `events.k8s.io` is listed by `kubectl get
//! events` and `kubectl describe` (by `involvedObject`) as a core Event, converted as
//! `pkg/apis/events/v1`'s conversion does.

use serde_json::{Map, Value, json};

/// The core/v1 view of an events.k8s.io/v1 Event.
pub fn core_view(event: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    let renames = [
        ("metadata", "metadata"),
        ("regarding", "involvedObject"),
        ("related", "related"),
        ("note", "message"),
        ("reason", "reason"),
        ("type", "type"),
        ("action", "action"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("deprecatedSource", "source"),
    ];
    for (from, to) in renames {
        if let Some(v) = event.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    out.entry("involvedObject").or_insert_with(|| json!({}));
    out.entry("source").or_insert_with(|| json!({}));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regarding_becomes_involved_object_and_note_the_message() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "ns"}, "eventTime": "2026-12-03T00:00:00.000000Z",
            "regarding": {"kind": "ApiKeyRotation", "name": "sirius", "namespace": "ns", "uid": "u"},
            "note": "Rotation 1 started.", "reason": "RotationStarted", "type": "Normal",
            "reportingController": "apikey-rotator", "reportingInstance": "pod-1", "action": "Rotate",
            "series": {"count": 2, "lastObservedTime": "2026-12-03T00:00:05.000000Z"}});
        let core = core_view(&e);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["kind"], "ApiKeyRotation");
        assert_eq!(core["message"], "Rotation 1 started.");
        assert_eq!(core["reportingComponent"], "apikey-rotator");
        assert_eq!(core["series"]["count"], 2);
        assert_eq!(core["metadata"]["name"], "e1");
        assert_eq!(core["source"], json!({}));
    }
}
