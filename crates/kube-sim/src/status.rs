//! `metav1.Status` failure bodies shaped like kube-apiserver's, so clients parse them as they would
//! on a real cluster.

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(group, plural)),
            details: json!({"name": name, "group": group, "kind": plural}),
        }
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(group, plural)),
            details: json!({"name": name, "group": group, "kind": plural}),
        }
    }

    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
            details: json!({"name": name, "group": group, "kind": plural}),
        }
    }

    pub fn apply_conflict(kind: &str, name: &str, fields: &[(String, String)]) -> Self {
        let causes: Vec<Value> = fields
            .iter()
            .map(|(manager, field)| {
                json!({"reason": "FieldManagerConflict",
                       "message": format!("conflict with \"{manager}\""), "field": field})
            })
            .collect();
        let listed: Vec<String> = fields
            .iter()
            .map(|(m, f)| format!("- {f} (owned by \"{m}\")"))
            .collect();
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Apply failed with {} conflict(s): conflicts with other managers:\n{}",
                fields.len(),
                listed.join("\n")
            ),
            details: json!({"name": name, "kind": kind, "causes": causes}),
        }
    }

    /// 422 with one cause per invalid field, as the apiserver's field validation reports it.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        // `ToAggregate` drops repeated messages.
        let mut text: Vec<String> = Vec::new();
        for (f, m) in &causes {
            let line = format!("{f}: {m}");
            if !text.contains(&line) {
                text.push(line);
            }
        }
        // Each cause's reason is the `field.ErrorType` its body names, as `NewInvalid` reports it.
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, message)| {
                json!({"reason": cause_type(&message), "message": message, "field": field})
            })
            .collect();
        let message = if text.len() == 1 {
            format!("{qualified_kind} \"{name}\" is invalid: {}", text[0])
        } else {
            format!(
                "{qualified_kind} \"{name}\" is invalid: [{}]",
                text.join(", ")
            )
        };
        Self {
            code: 422,
            reason: "Invalid",
            message,
            details: json!({"name": name, "group": group, "kind": kind, "causes": causes}),
        }
    }

    /// 403 as `errors.NewForbidden` words it: `<resource> "<name>" is forbidden: <why>`.
    pub fn forbidden(group: &str, plural: &str, name: &str, why: &str) -> Self {
        let resource = qualified(group, plural);
        let message = if name.is_empty() {
            format!("{resource} is forbidden: {why}")
        } else {
            format!("{resource} \"{name}\" is forbidden: {why}")
        };
        Self {
            code: 403,
            reason: "Forbidden",
            message,
            details: json!({"name": name, "group": group, "kind": plural}),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn unsupported_media(content_type: &str) -> Self {
        Self {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
            ),
            details: Value::Null,
        }
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn injected(code: u16) -> Self {
        let reason = match code {
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        Self {
            code,
            reason,
            message: format!("injected fault ({code})"),
            details: Value::Null,
        }
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            body["details"] = self.details.clone();
        }
        body
    }
}

/// The `field.ErrorType` whose text (`ErrorType.String()`) begins a cause's body.
fn cause_type(body: &str) -> &'static str {
    const TYPES: [(&str, &str); 10] = [
        ("Required value", "FieldValueRequired"),
        ("Forbidden", "FieldValueForbidden"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Not found", "FieldValueNotFound"),
        ("Internal error", "InternalError"),
        ("Invalid value", "FieldValueInvalid"),
        ("", "FieldValueInvalid"),
    ];
    TYPES
        .iter()
        .find(|(text, _)| body.starts_with(text))
        .map(|(_, t)| *t)
        .unwrap_or("FieldValueInvalid")
}

fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}
