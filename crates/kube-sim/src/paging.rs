//! `limit` and `continue` on lists, as kube-apiserver pages them (`staging/src/k8s.io/apiserver/
//! pkg/storage`): items in key order (namespace, then name), at most `limit` per page, and a
//! `continue` token naming the list's resourceVersion and the last key served.
//!
//! One difference: kube-apiserver serves every page of a list from the snapshot at its first
//! page's resourceVersion; the stand-in keeps no snapshots, so a later page shows the objects
//! after the token's key as they are now (and says the first page's resourceVersion, as
//! kube-apiserver does).

use crate::status::ApiError;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Where a list request starts and how much it takes.
#[derive(Debug, Default)]
pub struct PageRequest {
    /// None: no limit (also for `limit` <= 0, as kube-apiserver treats it).
    pub limit: Option<usize>,
    /// From a `continue` token: the list's resourceVersion and the last key served.
    pub after: Option<(u64, String)>,
}

/// The key an item sorts and continues by: `namespace/name`.
pub fn item_key(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap_or("")
    )
}

impl PageRequest {
    /// Reads `limit` and `continue`; refused as kube-apiserver refuses them (400), and a token
    /// whose resourceVersion is older than `oldest` as too old (410 Expired).
    pub fn parse(query: &HashMap<String, String>, oldest: u64) -> Result<Self, ApiError> {
        let limit = match query.get("limit") {
            None => None,
            Some(v) => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for limit")))?;
                (n > 0).then_some(n as usize)
            }
        };
        let Some(token) = query.get("continue").filter(|t| !t.is_empty()) else {
            return Ok(Self { limit, after: None });
        };
        if query
            .get("resourceVersion")
            .is_some_and(|v| !v.is_empty() && v != "0")
        {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (rv, start) = decode(token).ok_or_else(|| {
            ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        })?;
        if rv < oldest {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        Ok(Self {
            limit,
            after: Some((rv, start)),
        })
    }

    /// One page of `items` (the list's objects that match; any order), copied only as far as
    /// served, and the list's metadata: the resourceVersion (the token's on a later page), and
    /// `continue` with `remainingItemCount` when more are left.
    pub fn page<'a>(
        &self,
        items: impl Iterator<Item = &'a Value>,
        rv: u64,
        counted: bool,
    ) -> (Vec<&'a Value>, Value) {
        let mut keyed: Vec<(String, &Value)> = items.map(|o| (item_key(o), o)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((_, start)) = &self.after {
            keyed.retain(|(key, _)| key.as_str() > start.as_str());
        }
        let list_rv = self.after.as_ref().map_or(rv, |(rv, _)| *rv);
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if let Some(limit) = self.limit
            && keyed.len() > limit
        {
            let left = keyed.len() - limit;
            keyed.truncate(limit);
            let last = keyed
                .last()
                .map(|(key, _)| key.as_str())
                .unwrap_or_default();
            meta["continue"] = json!(encode(list_rv, last));
            // kube-apiserver counts what is left only for a list without selectors.
            if counted {
                meta["remainingItemCount"] = json!(left);
            }
        }
        (keyed.into_iter().map(|(_, o)| o).collect(), meta)
    }
}

/// kube-apiserver's token: base64 (URL-safe, unpadded) of `{"v","rv","start"}`, `start` being
/// the key after which the next page begins.
fn encode(rv: u64, last_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode(token: &str) -> Option<(u64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    if v["v"] != "meta.k8s.io/v1" {
        return None;
    }
    let start = v["start"].as_str()?.strip_suffix('\u{0}')?.to_string();
    Some((v["rv"].as_u64()?, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_garbage_is_refused() {
        assert_eq!(decode(&encode(7, "ns/a")), Some((7, "ns/a".into())));
        assert_eq!(decode("not a token"), None);
        let q = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            PageRequest::parse(&q("continue", "xyz"), 1)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            PageRequest::parse(&q("limit", "x"), 1).unwrap_err().code,
            400
        );
        assert_eq!(
            PageRequest::parse(&q("limit", "-1"), 1).unwrap().limit,
            None
        );
        let old = q("continue", &encode(3, "ns/a"));
        assert_eq!(PageRequest::parse(&old, 5).unwrap_err().code, 410);
    }
}
