//! kube-apiserver's object metadata rules, each written from its source with the same error
//! text: `k8s.io/apimachinery/pkg/util/validation` (names, label keys and values, config keys),
//! `k8s.io/apimachinery/pkg/api/validation/objectmeta.go` (`ValidateObjectMetaAccessor`,
//! annotations, finalizers, owner references), `pkg/apis/core/validation` (the name rule of each
//! kind, the standard finalizer names of built-in kinds, Secrets and ConfigMaps) and the custom
//! resource validator (`NameIsDNSSubdomain`, finalizer warnings). The messages are those of
//! kube-apiserver 1.33, the version the stand-in reports.
//!
//! A cause is `(field, body)`, the body as `field.Error.ErrorBody()` renders it
//! (`Invalid value: "x": detail`, `Forbidden: detail`, `Too long: ...`); `ApiError::invalid`
//! derives each cause's reason from it.

use crate::types::ResourceType;
use serde_json::{Map, Value};

pub type Cause = (String, String);

/// `TotalAnnotationSizeLimitB`: keys and values of all annotations together.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * (1 << 10);
/// `core.MaxSecretSize`: the values of a Secret's (or ConfigMap's) data together.
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;
/// `names.SimpleNameGenerator`: a generateName longer than this is cut before the 5 random
/// characters are appended (63 - 5).
pub const MAX_GENERATED_NAME_PREFIX: usize = 58;
/// The alphabet of `utilrand.String` (no vowels, no look-alikes).
pub const RANDOM_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_MSG: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
/// Finalizers of built-in kinds that need no domain (`standardFinalizers`).
const STANDARD_FINALIZERS: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];

/// `MaxLenError`.
fn max_len(length: usize) -> String {
    format!("must be no more than {length} characters")
}

/// `RegexError`: the message, its examples and the regex.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

/// Go's `%q` of a string, as `field.Invalid` prints the bad value.
pub fn quote(s: &str) -> String {
    format!("{s:?}")
}

pub fn invalid(field: &str, value: &str, detail: &str) -> Cause {
    (
        field.to_string(),
        format!("Invalid value: {}: {detail}", quote(value)),
    )
}

pub fn forbidden(field: &str, detail: &str) -> Cause {
    (field.to_string(), format!("Forbidden: {detail}"))
}

/// `field.TooLong` (the value itself is never printed).
pub fn too_long(field: &str, max_bytes: usize) -> Cause {
    (
        field.to_string(),
        format!("Too long: may not be more than {max_bytes} bytes"),
    )
}

fn alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && alnum_lower(b[0])
        && alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| alnum_lower(c) || c == b'-')
}

fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `IsDNS1123Label`.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    if !matches_dns1123_label(value) {
        if matches_dns1123_subdomain(value) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `IsDNS1123Subdomain`.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len(253));
    }
    if !matches_dns1123_subdomain(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `IsDNS1035Label`.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    let b = value.as_bytes();
    let ok = !b.is_empty() && b[0].is_ascii_lowercase() && matches_dns1123_label(value);
    if !ok {
        errs.push(regex_error(
            DNS1035_LABEL_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `IsQualifiedName`: label keys, annotation keys (lowercased first) and finalizer names.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len(63)));
    }
    if !matches_qualified_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`.
pub fn is_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    if !value.is_empty() && !matches_qualified_name(value) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsConfigMapKey`: the keys of a Secret's or ConfigMap's data.
pub fn is_config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len(253));
    }
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !ok {
        errs.push(regex_error(
            CONFIG_KEY_MSG,
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if value == "." {
        errs.push("must not be '.'".to_string());
    } else if value == ".." {
        errs.push("must not be '..'".to_string());
    } else if value.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// `path.IsValidPathSegmentName` (RBAC object names).
fn is_path_segment_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value == "." || value == ".." {
        errs.push(format!("may not be '{value}'"));
    }
    for bad in ["/", "%"] {
        if value.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

/// `maskTrailingDash`, upstream's quirk included (it drops two characters and appends one).
fn mask_trailing_dash(name: &str) -> String {
    if name.len() > 1 && name.ends_with('-') {
        format!("{}a", &name[..name.len() - 2])
    } else {
        name.to_string()
    }
}

/// The groups kube-apiserver itself serves (the others are custom resources).
pub fn is_builtin(rt: &ResourceType) -> bool {
    matches!(
        rt.group.as_str(),
        "" | "apps"
            | "events.k8s.io"
            | "coordination.k8s.io"
            | "apiextensions.k8s.io"
            | "rbac.authorization.k8s.io"
    )
}

/// Each kind's `ValidateNameFunc`: a DNS-1123 label for Namespaces, a DNS-1035 label for
/// Services, a path segment for RBAC objects, `<plural>.<group>` for CustomResourceDefinitions,
/// a DNS-1123 subdomain for everything else, custom resources included.
fn name_errors(rt: &ResourceType, object: &Value, name: &str, prefix: bool) -> Vec<String> {
    let masked;
    let name = if prefix {
        masked = mask_trailing_dash(name);
        masked.as_str()
    } else {
        name
    };
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => is_dns1123_label(name),
        ("", "Service") => is_dns1035_label(name),
        ("rbac.authorization.k8s.io", _) => is_path_segment_name(name),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let mut errs = is_dns1123_subdomain(name);
            let spec = &object["spec"];
            let required = format!(
                "{}.{}",
                spec["names"]["plural"].as_str().unwrap_or_default(),
                spec["group"].as_str().unwrap_or_default()
            );
            if !prefix && name != required {
                errs.push("must be spec.names.plural+\".\"+spec.group".to_string());
            }
            errs
        }
        _ => is_dns1123_subdomain(name),
    }
}

fn string_map(meta: &Value, field: &str) -> Map<String, Value> {
    meta.get(field)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// `ValidateLabels` at `path`.
pub fn labels(labels: &Map<String, Value>, path: &str, out: &mut Vec<Cause>) {
    for (k, v) in labels {
        for msg in is_qualified_name(k) {
            out.push(invalid(path, k, &msg));
        }
        let v = v.as_str().unwrap_or_default();
        for msg in is_label_value(v) {
            out.push(invalid(path, v, &msg));
        }
    }
}

/// `ValidateAnnotations` at `path`: keys as label keys (case does not matter), and the size of
/// every key and value together.
pub fn annotations(annotations: &Map<String, Value>, path: &str, out: &mut Vec<Cause>) {
    let mut total = 0;
    for (k, v) in annotations {
        for msg in is_qualified_name(&k.to_lowercase()) {
            out.push(invalid(path, k, &msg));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
}

/// Go's `%#v` of a `[]string`.
pub fn go_string_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// `ValidateFinalizers`, and for built-in kinds `validateKubeFinalizerName` (a finalizer without a
/// domain must be a standard one: `kubernetes`, `orphan`, `foregroundDeletion`).
fn finalizers(rt: &ResourceType, list: &[String], out: &mut Vec<Cause>) {
    for f in list {
        for msg in is_qualified_name(f) {
            out.push(invalid("metadata.finalizers", f, &msg));
        }
    }
    if list.iter().any(|f| f == "orphan") && list.iter().any(|f| f == "foregroundDeletion") {
        out.push((
            "metadata.finalizers".into(),
            format!(
                "Invalid value: {}: finalizer orphan and foregroundDeletion cannot be both set",
                go_string_slice(list)
            ),
        ));
    }
    if is_builtin(rt) {
        for (i, f) in list.iter().enumerate() {
            if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()) {
                out.push(invalid(
                    &format!("metadata.finalizers[{i}]"),
                    f,
                    "name is neither a standard finalizer name nor is it fully qualified",
                ));
            }
        }
    }
}

/// The finalizer warnings of custom resources (`validateKubeFinalizerName` as warnings, for each
/// finalizer the write adds): a finalizer without a path is allowed, with this warning.
pub fn finalizer_warnings(rt: &ResourceType, object: &Value, old: Option<&Value>) -> Vec<String> {
    if is_builtin(rt) {
        return Vec::new();
    }
    let before = old.map(finalizer_names).unwrap_or_default();
    finalizer_names(object)
        .into_iter()
        .filter(|f| !before.contains(f))
        .filter(|f| !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()))
        .map(|f| {
            let advice = if f.contains('.') {
                "prefer a domain-qualified finalizer name including a path (/) to avoid accidental conflicts with other finalizer writers"
            } else {
                "prefer a domain-qualified finalizer name to avoid accidental conflicts with other finalizer writers"
            };
            format!("metadata.finalizers: {}: {advice}", quote(&f))
        })
        .collect()
}

pub fn finalizer_names(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `validateOwnerReference` for each entry (apiVersion with a version, kind, name and uid set).
fn owner_references(meta: &Value, out: &mut Vec<Cause>) {
    let path = "metadata.ownerReferences";
    for r in meta["ownerReferences"].as_array().into_iter().flatten() {
        let api_version = r["apiVersion"].as_str().unwrap_or_default();
        let version = api_version.rsplit('/').next().unwrap_or_default();
        if version.is_empty() {
            out.push(invalid(
                &format!("{path}.apiVersion"),
                api_version,
                "version must not be empty",
            ));
        }
        for field in ["kind", "name", "uid"] {
            let v = r[field].as_str().unwrap_or_default();
            if v.is_empty() {
                out.push(invalid(&format!("{path}.{field}"), v, "must not be empty"));
            }
        }
    }
}

/// The object metadata rules on create (`ValidateObjectMetaAccessor` with the kind's name rule;
/// the name has been generated already) and on every update (`ValidateObjectMetaAccessorUpdate`:
/// the same rules for labels, annotations, owner references and finalizers).
pub fn validate_object_meta(
    rt: &ResourceType,
    object: &Value,
    creating: bool,
    out: &mut Vec<Cause>,
) {
    let meta = &object["metadata"];
    if creating {
        let generate_name = meta["generateName"].as_str().unwrap_or_default();
        if !generate_name.is_empty() {
            for msg in name_errors(rt, object, generate_name, true) {
                out.push(invalid("metadata.generateName", generate_name, &msg));
            }
        }
        let name = meta["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            out.push((
                "metadata.name".into(),
                "Required value: name or generateName is required".into(),
            ));
        } else {
            for msg in name_errors(rt, object, name, false) {
                out.push(invalid("metadata.name", name, &msg));
            }
        }
        if rt.namespaced {
            let ns = meta["namespace"].as_str().unwrap_or_default();
            if ns.is_empty() {
                out.push(("metadata.namespace".into(), "Required value".into()));
            } else {
                for msg in is_dns1123_label(ns) {
                    out.push(invalid("metadata.namespace", ns, &msg));
                }
            }
        }
    }
    labels(&string_map(meta, "labels"), "metadata.labels", out);
    annotations(
        &string_map(meta, "annotations"),
        "metadata.annotations",
        out,
    );
    owner_references(meta, out);
    finalizers(rt, &finalizer_names(object), out);
}

/// A pod template's metadata (`ValidatePodTemplateSpec`): its labels and annotations.
pub fn validate_template_meta(template: &Value, path: &str, out: &mut Vec<Cause>) {
    let meta = &template["metadata"];
    labels(&string_map(meta, "labels"), &format!("{path}.labels"), out);
    annotations(
        &string_map(meta, "annotations"),
        &format!("{path}.annotations"),
        out,
    );
}

/// `ValidateSecret`'s and `ValidateConfigMap`'s data rules: every key a config key, the values
/// together at most 1 MiB (`data` of a Secret holds base64: its decoded size counts).
pub fn validate_data_keys(object: &Value, kind: &str, out: &mut Vec<Cause>) {
    let mut total = 0;
    let bags: &[&str] = if kind == "Secret" {
        &["data"]
    } else {
        &["data", "binaryData"]
    };
    for bag in bags {
        let Some(map) = object.get(*bag).and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in map {
            for msg in is_config_map_key(k) {
                out.push(invalid(&format!("{bag}[{k}]"), k, &msg));
            }
            if kind == "ConfigMap"
                && *bag == "data"
                && object["binaryData"].get(k.as_str()).is_some()
            {
                out.push(invalid(
                    &format!("data[{k}]"),
                    k,
                    "duplicate of key present in binaryData",
                ));
            }
            let s = v.as_str().unwrap_or_default();
            total += if kind == "Secret" || *bag == "binaryData" {
                crate::b64_decode(s).map_or(s.len(), |b| b.len())
            } else {
                s.len()
            };
        }
    }
    if total > MAX_SECRET_SIZE {
        let field = if kind == "Secret" { "data" } else { "" };
        out.push(too_long(field, MAX_SECRET_SIZE));
    }
}

/// `ValidateSecretUpdate` / `ValidateConfigMapUpdate`: a Secret's `type` never changes; once
/// `immutable` is set, neither it nor the data may change.
pub fn validate_immutable(kind: &str, old: &Value, new: &Value, out: &mut Vec<Cause>) {
    if kind == "Secret" && old.get("type") != new.get("type") {
        let t = new["type"].as_str().unwrap_or_default();
        out.push(invalid("type", t, "field is immutable"));
    }
    if old["immutable"] != Value::Bool(true) {
        return;
    }
    const MSG: &str = "field is immutable when `immutable` is set";
    if new["immutable"] != Value::Bool(true) {
        out.push(forbidden("immutable", MSG));
    }
    let bags: &[&str] = if kind == "Secret" {
        &["data"]
    } else {
        &["data", "binaryData"]
    };
    for bag in bags {
        let empty = |v: Option<&Value>| v.is_none_or(|v| v.is_null());
        let same = old.get(*bag) == new.get(*bag) || (empty(old.get(*bag)) && empty(new.get(*bag)));
        if !same {
            out.push(forbidden(bag, MSG));
        }
    }
}

/// The v1 Secret's conversion to the internal one: `stringData` is merged into `data` (base64;
/// it wins over a `data` key of the same name) and is never stored; `type` defaults to Opaque.
pub fn normalize_secret(object: &mut Value) {
    use base64::Engine;
    if let Some(Value::Object(string_data)) =
        object.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        if !object["data"].is_object() {
            object["data"] = Value::Object(Map::new());
        }
        let data = object["data"].as_object_mut().unwrap();
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(
                k,
                Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    } else if let Some(o) = object.as_object_mut() {
        o.remove("stringData");
    }
    if object["type"].as_str().is_none_or(str::is_empty) {
        object["type"] = Value::String("Opaque".into());
    }
}

/// The 5 characters `SimpleNameGenerator` appends to a generateName, here drawn from a counter
/// by a bijection so that no two generated names repeat.
pub fn generated_name(prefix: &str, counter: u64) -> String {
    let mut cut = prefix.len().min(MAX_GENERATED_NAME_PREFIX);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    const SPACE: u64 = 27 * 27 * 27 * 27 * 27;
    let mut x = counter.wrapping_mul(9_181_237).wrapping_add(4_421_113) % SPACE;
    let mut out = prefix[..cut].to_string();
    for _ in 0..5 {
        out.push(RANDOM_ALPHABET[(x % 27) as usize] as char);
        x /= 27;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules_match_the_regexes() {
        assert!(is_label_value("").is_empty());
        assert!(is_label_value("a_b.C-1").is_empty());
        assert_eq!(is_label_value(&"a".repeat(64)), vec![max_len(63)]);
        assert_eq!(is_label_value("-a").len(), 1);
        assert!(is_qualified_name("keys.siriusscan.io/rotation").is_empty());
        assert!(is_qualified_name("a/b/c")[0].starts_with("a qualified name must consist of"));
        assert_eq!(
            is_qualified_name("/x"),
            vec!["prefix part must be non-empty"]
        );
        assert!(is_dns1123_label("a.b") == vec!["must not contain dots"]);
        assert!(is_dns1035_label("1a")[0].starts_with("a DNS-1035 label"));
        assert_eq!(mask_trailing_dash("ab-"), "aa");
    }

    #[test]
    fn generated_names_are_cut_to_58_and_never_repeat() {
        let name = generated_name(&"x".repeat(70), 1);
        assert_eq!(name.len(), 63);
        let names: std::collections::BTreeSet<String> =
            (0..1000).map(|i| generated_name("p-", i)).collect();
        assert_eq!(names.len(), 1000);
    }
}
