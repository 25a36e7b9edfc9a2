//! Sirius's key record, byte-compatible with Go's `json.Marshal` of its struct
//! (`../shared/docs/sirius-auth-contract.md`).

use crate::key::{KeyId, RawKey};

/// The special keys under the record prefix that are not key records.
pub const BOOTSTRAP_FLAG: &str = "bootstrap_complete";

/// `{"id":…,"label":…,"prefix":…,"created_by":…,"created_at":…,"last_used_at":""}` with fields in
/// this order, Go's string escaping, and `created_at` in UTC RFC 3339 seconds.
pub fn record_json(
    key: &RawKey,
    label: &str,
    created_by: &str,
    created_at: jiff::Timestamp,
) -> String {
    let id: KeyId = key.id();
    format!(
        "{{\"id\":{},\"label\":{},\"prefix\":{},\"created_by\":{},\"created_at\":{},\"last_used_at\":\"\"}}",
        go_string(id.as_str()),
        go_string(label),
        go_string(&key.display_prefix()),
        go_string(created_by),
        go_string(&rfc3339_seconds(created_at)),
    )
}

/// Whether `value` is a Sirius record of the key `id`: a JSON object whose `id` is that id and
/// whose other fields are strings (the API rewrites `last_used_at`; it keeps the shape).
pub fn is_record_of(value: &str, id: &KeyId) -> bool {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(value)
    else {
        return false;
    };
    fields.get("id").and_then(|v| v.as_str()) == Some(id.as_str())
        && [
            "label",
            "prefix",
            "created_by",
            "created_at",
            "last_used_at",
        ]
        .iter()
        .all(|f| fields.get(*f).is_some_and(|v| v.is_string()))
}

pub fn rfc3339_seconds(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A JSON string literal as Go's encoding/json writes it (HTML-safe escaping included).
pub fn go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go 1.22+ writes the short escapes for backspace and form feed.
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod record_checks {
    use super::*;

    #[test]
    fn only_a_well_formed_record_of_the_same_id_counts() {
        let key = RawKey::new(format!("sk_{}", "ab".repeat(32)));
        let id = key.id();
        let record = record_json(&key, "l", "me", jiff::Timestamp::UNIX_EPOCH);
        assert!(is_record_of(&record, &id));
        let used = record.replace(
            "\"last_used_at\":\"\"",
            "\"last_used_at\":\"2026-01-01T00:00:00Z\"",
        );
        assert!(is_record_of(&used, &id));
        assert!(!is_record_of(&record, &RawKey::new("other").id()));
        for bad in [
            "",
            "true",
            "{}",
            "[1]",
            "{\"id\":1}",
            "not json",
            "{\"id\":\"é\"",
        ] {
            assert!(!is_record_of(bad, &id), "{bad}");
        }
        let missing_field = record.replace(",\"label\":\"l\"", "");
        assert!(!is_record_of(&missing_field, &id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_matches_gos_json_marshal_byte_for_byte() {
        let key = RawKey::new(format!("sk_1a2b3c4d{}", "e".repeat(56)));
        let t: jiff::Timestamp = "2026-02-16T17:30:59Z".parse().unwrap();
        let json = record_json(&key, "ci <bot> & co", "apikey-rotator", t);
        let expected = format!(
            "{{\"id\":\"{}\",\"label\":\"ci \\u003cbot\\u003e \\u0026 co\",\"prefix\":\"sk_1a2b3c4d...\",\"created_by\":\"apikey-rotator\",\"created_at\":\"2026-02-16T17:30:59Z\",\"last_used_at\":\"\"}}",
            key.id()
        );
        assert_eq!(json, expected);
        // And it is valid JSON that round-trips the label.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["label"], "ci <bot> & co");
    }

    #[test]
    fn go_escapes_line_separators_and_controls() {
        assert_eq!(
            go_string("a\u{2028}b\u{2029}c\u{1}"),
            "\"a\\u2028b\\u2029c\\u0001\""
        );
        assert_eq!(go_string("q\"\\"), "\"q\\\"\\\\\"");
    }
}
