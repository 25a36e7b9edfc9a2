//! The HTTP face of the stand-in: kube-apiserver's REST paths, verbs, content types and watch
//! streams, served on loopback to an ordinary `kube::Client`.

use crate::Shared;
use crate::list_types::Schema;
use crate::paging::PageRequest;
use crate::selector::Selectors;
use crate::status::ApiError;
use crate::store::{Store, Write, resource_key};
use crate::types::ResourceType;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: String,
}

fn error_response(e: ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        e.body().to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// kube-apiserver's `Warning: 299 - "<text>"` headers.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

fn parse_target(shared: &Shared, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::not_found("", "paths", path)),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, more @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*resource];
            v.extend_from_slice(more);
            v
        }),
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, ""),
        [plural, name] => (*plural, Some(name.to_string()), ""),
        [plural, name, sub] => (*plural, Some(name.to_string()), *sub),
        _ => return Err(ApiError::not_found(group, "paths", path)),
    };
    // `/api/v1/namespaces/{name}/{status|finalize}` addresses a Namespace's subresource.
    let (plural, name, namespace, subresource) = match (namespace, plural) {
        (Some(ns), p)
            if group.is_empty()
                && rest.len() == 1
                && p != "namespaces"
                && !shared
                    .store
                    .lock()
                    .unwrap()
                    .types
                    .contains_key(&resource_key("", p)) =>
        {
            ("namespaces", Some(ns), None, p)
        }
        (ns, p) => (p, name, ns, subresource),
    };
    let store = shared.store.lock().unwrap();
    let rt = store
        .types
        .get(&resource_key(group, plural))
        .filter(|rt| rt.version == version)
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(
                group,
                plural,
                "the server could not find the requested resource",
            )
        })?;
    drop(store);
    let finalize = subresource == "finalize" && crate::types::is_namespace(&rt);
    if !(matches!(subresource, "" | "status") || finalize)
        || (subresource == "status" && !rt.status_subresource)
    {
        return Err(ApiError::not_found(group, plural, subresource));
    }
    let namespace = if rt.plural == "namespaces" && group.is_empty() {
        None
    } else {
        namespace
    };
    Ok(Target {
        rt,
        namespace,
        name,
        subresource: subresource.to_string(),
    })
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query().map(url_decode_pairs).unwrap_or_default()
}

fn url_decode_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn handle(
    shared: Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if let Some(response) = early_answer(&shared, &method, &path, &headers) {
        return response;
    }
    let target = match parse_target(&shared, &path) {
        Ok(t) => t,
        Err(e) => return error_response(e),
    };
    let query = query_map(&uri);
    let verb = match verb_of(&method, &target, &query) {
        Ok(verb) => verb,
        Err(e) => return error_response(e),
    };
    let user = match admit(&shared, &headers, verb, &target) {
        Ok(user) => user,
        Err(e) => return error_response(e),
    };
    if let Some(code) = shared.take_fault(verb, &target.rt.plural) {
        return error_response(ApiError::injected(code));
    }
    let request = RequestContext::new(shared, target, query, user, &headers, body);
    match verb {
        "watch" => {
            let RequestContext {
                shared,
                target,
                query,
                metadata_only,
                as_table,
                ..
            } = request;
            watch_response(shared, target, query, metadata_only, as_table).await
        }
        "list" => list(&request),
        "get" => get(&request),
        "create" => create(&request),
        "update" => update(&request),
        "patch" => patch(&request),
        "delete" => delete(&request),
        _ => unreachable!(),
    }
}

/// The answers that need no resource target: `/version`, and the discovery and OpenAPI
/// documents. A discovery-looking path with no document falls through to the resource router.
fn early_answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    if path == "/version" {
        return Some(ok_json(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-sim"}),
        ));
    }
    if *method == Method::GET && crate::discovery::is_discovery_path(path) {
        let host = (headers.get(header::HOST).and_then(|v| v.to_str().ok())).unwrap_or("");
        let store = shared.store.lock().unwrap();
        let document = crate::discovery::document(&store, path, host)
            .or_else(|| crate::openapi::document(&store, path));
        if let Some(document) = document {
            return Some(ok_json(StatusCode::OK, &document));
        }
    }
    None
}

/// The API verb of a request, from its method, whether its path names one object, and
/// `?watch=true`.
fn verb_of(
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<&'static str, ApiError> {
    let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    Ok(match (method, target.name.is_some(), watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => return Err(ApiError::bad_request("unsupported method")),
    })
}

/// Records the request and, when its bearer token is a known user's, authorizes it with RBAC
/// (a denial is recorded for `Sim::denials` and returned, for its 403). Requests without a
/// known token are not checked. Returns the user, which an apply's create check needs again.
fn admit(
    shared: &Shared,
    headers: &HeaderMap,
    verb: &str,
    target: &Target,
) -> Result<Option<crate::rbac::User>, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let user = shared.users.lock().unwrap().get(token).cloned();
    shared.record_request(verb, &target.rt.plural);
    if let Some(user) = &user {
        let resource = if target.subresource.is_empty() {
            target.rt.plural.clone()
        } else {
            format!("{}/{}", target.rt.plural, target.subresource)
        };
        shared.record_user_request(token, verb, &resource);
        let attributes = crate::rbac::Attributes {
            verb,
            group: &target.rt.group,
            resource: &target.rt.plural,
            subresource: &target.subresource,
            namespace: target.namespace.as_deref(),
            name: target.name.as_deref(),
        };
        let store = shared.store.lock().unwrap();
        if let Err(e) = crate::rbac::authorize(&store, user, &attributes) {
            shared.denials.lock().unwrap().push(e.message.clone());
            return Err(e);
        }
    }
    Ok(user)
}

/// A routed, admitted request as the verb handlers need it: its target and query, its user,
/// and what its headers ask for (field manager, body content type, response presentation).
struct RequestContext {
    shared: Shared,
    target: Target,
    query: HashMap<String, String>,
    user: Option<crate::rbac::User>,
    manager: String,
    /// The target's namespace, empty for a cluster-scoped target.
    ns: String,
    content_type: String,
    metadata_only: bool,
    as_table: Option<crate::table::Include>,
    body: Bytes,
}

impl RequestContext {
    /// Reads the field manager, the body's content type and the `Accept` choices off the
    /// request's query and headers.
    fn new(
        shared: Shared,
        target: Target,
        query: HashMap<String, String>,
        user: Option<crate::rbac::User>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> RequestContext {
        let manager = query.get("fieldManager").cloned().unwrap_or_else(|| {
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
                .unwrap_or_else(|| "unknown".into())
        });
        let ns = target.namespace.clone().unwrap_or_default();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();

        // `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`: metadata only,
        // as kube-apiserver serves the metadata watches and lists of kube-rs's `metadata_watcher`.
        let metadata_only = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"));

        // `kubectl get`'s server-side printing.
        let as_table = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::table::wanted)
            .then(|| crate::table::Include::parse(query.get("includeObject")));

        RequestContext {
            shared,
            target,
            query,
            user,
            manager,
            ns,
            content_type,
            metadata_only,
            as_table,
            body,
        }
    }

    /// The request's body as JSON; a 400 if it is not JSON.
    fn parse_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
    }
}

/// `list`: one page of the target's objects matching the selectors (core Events include the
/// recorded events.k8s.io ones), as a List, a PartialObjectMetadataList or a Table.
fn list(r: &RequestContext) -> Response {
    let (shared, target, query) = (&r.shared, &r.target, &r.query);
    let selectors = match Selectors::parse(query, &target.rt) {
        Ok(s) => s,
        Err(e) => return error_response(e),
    };
    let store = shared.store.lock().unwrap();
    let resource = resource_key(&target.rt.group, &target.rt.plural);
    let paging = match PageRequest::parse(query, store.oldest_watchable(&resource)) {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    let recorded = recorded_events(&store, &target.rt, target.namespace.as_deref());
    let matching = store
        .iter(&target.rt, target.namespace.as_deref())
        .chain(recorded.iter())
        .filter(|o| selectors.matches(o));
    let (page, metadata) = paging.page(matching, store.resource_version(), selectors.is_empty());
    if let Some(include) = r.as_table {
        let table = crate::table::table(&target.rt, &page, include, metadata);
        return ok_json(StatusCode::OK, &table);
    }
    let items: Vec<Value> = page
        .into_iter()
        .map(|o| {
            if r.metadata_only {
                partial(o)
            } else {
                o.clone()
            }
        })
        .collect();
    let (kind, api_version) = if r.metadata_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (format!("{}List", target.rt.kind), target.rt.api_version())
    };
    let body = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": metadata,
        "items": items,
    });
    ok_json(StatusCode::OK, &body)
}

/// `get`: the named object (or recorded core Event), whole, as metadata only, or as a Table.
fn get(r: &RequestContext) -> Response {
    let target = &r.target;
    let store = r.shared.store.lock().unwrap();
    let name = target.name.as_deref().unwrap();
    let found = store.get(&target.rt, &r.ns, name).or_else(|e| {
        (recorded_events(&store, &target.rt, Some(&r.ns)).into_iter())
            .find(|o| o["metadata"]["name"] == name)
            .ok_or(e)
    });
    match found {
        Ok(o) if r.as_table.is_some() => {
            let metadata = json!({"resourceVersion": o["metadata"]["resourceVersion"]});
            let include = r.as_table.unwrap();
            let table = crate::table::table(&target.rt, &[&o], include, metadata);
            ok_json(StatusCode::OK, &table)
        }
        Ok(o) if r.metadata_only => ok_json(StatusCode::OK, &partial(&o)),
        Ok(o) => ok_json(StatusCode::OK, &o),
        Err(e) => error_response(e),
    }
}

/// `create`: the body as a new object of the target's namespace, then the pod sync, under one
/// lock; a 201 with the store's warnings.
fn create(r: &RequestContext) -> Response {
    let target = &r.target;
    let object = match r.parse_body() {
        Ok(o) => o,
        Err(e) => return error_response(e),
    };
    if let Some(body_ns) = object["metadata"]["namespace"].as_str()
        && target.rt.namespaced
        && body_ns != r.ns
    {
        return error_response(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let w = Write {
        rt: &target.rt,
        namespace: &r.ns,
        name: "",
        subresource: "",
        manager: &r.manager,
    };
    write_and_sync(r, StatusCode::CREATED, |store| Ok(store.create(&w, object)))
}

/// `update`: the body replaces the named object (or its subresource), guarded by the body's
/// resourceVersion, then the pod sync, under one lock.
fn update(r: &RequestContext) -> Response {
    let target = &r.target;
    let object = match r.parse_body() {
        Ok(o) => o,
        Err(e) => return error_response(e),
    };
    let name = target.name.clone().unwrap_or_default();
    if object["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return error_response(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let precondition = object["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let w = Write {
        rt: &target.rt,
        namespace: &r.ns,
        name: &name,
        subresource: &target.subresource,
        manager: &r.manager,
    };
    write_and_sync(r, StatusCode::OK, |store| {
        Ok(store.update(&w, precondition, |current, ownership| {
            crate::fields::track_update(
                ownership,
                Schema::of(&target.rt),
                &r.manager,
                &target.subresource,
                current,
                &object,
            );
            Ok(object.clone())
        }))
    })
}

/// `patch`: an apply, a merge or strategic-merge patch, or a JSON patch of the named object, by
/// the body's content type; the patch and the pod sync after it happen under one lock.
fn patch(r: &RequestContext) -> Response {
    let target = &r.target;
    let name = target.name.clone().unwrap_or_default();
    let w = Write {
        rt: &target.rt,
        namespace: &r.ns,
        name: &name,
        subresource: &target.subresource,
        manager: &r.manager,
    };
    let patch = match r.parse_body() {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    write_and_sync(r, StatusCode::OK, |store| match r.content_type.as_str() {
        "application/apply-patch+yaml" => patch_apply(r, store, &w, patch),
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            patch_merge(r, store, &w, patch)
        }
        "application/json-patch+json" => patch_json(r, store, &w, patch),
        other => Err(ApiError::unsupported_media(other)),
    })
}

/// One write under one lock of the store: the warnings it raises (and only those), then the pod
/// sync, answered with the object and its warnings. `write`'s outer `Err` refuses the request
/// before anything is written (no pod sync); its inner result is the store's.
fn write_and_sync(
    r: &RequestContext,
    code: StatusCode,
    write: impl FnOnce(&mut Store) -> Result<Result<Value, ApiError>, ApiError>,
) -> Response {
    let mut store = r.shared.store.lock().unwrap();
    store.take_warnings();
    let result = match write(&mut store) {
        Ok(result) => result,
        Err(e) => return error_response(e),
    };
    r.shared.sync_pods(&mut store);
    let warnings = store.take_warnings();
    drop(store);
    match result {
        Ok(o) => with_warnings(ok_json(code, &o), &warnings),
        Err(e) => error_response(e),
    }
}

/// A server-side apply: it needs a field manager, and one that would create the object is
/// authorized as a create too. The outer `Err` refuses the request before any write (and so
/// before any pod sync); the inner result is the store's.
fn patch_apply(
    r: &RequestContext,
    store: &mut Store,
    w: &Write<'_>,
    patch: Value,
) -> Result<Result<Value, ApiError>, ApiError> {
    let target = &r.target;
    if !r.query.contains_key("fieldManager") {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml requests require fieldManager",
        ));
    }
    let force = r.query.get("force").is_some_and(|f| f == "true");
    // An apply that creates the object is authorized as a create too (the patch
    // handler's `withAuthorization` of its create validation).
    let creates = store.get(&target.rt, &r.ns, w.name).is_err();
    if let Some(user) = r.user.as_ref().filter(|_| creates) {
        let attributes = crate::rbac::Attributes {
            verb: "create",
            group: &target.rt.group,
            resource: &target.rt.plural,
            subresource: &target.subresource,
            namespace: target.namespace.as_deref(),
            name: Some(w.name),
        };
        if let Err(e) = crate::rbac::authorize(store, user, &attributes) {
            r.shared.denials.lock().unwrap().push(e.message.clone());
            return Err(e);
        }
    }
    Ok(store.apply(w, patch, force))
}

/// A JSON merge patch, or a strategic merge patch (applied as a merge patch) of a kind
/// kube-apiserver has strategic-merge schemas for; guarded by the patch's resourceVersion.
/// The outer `Err` refuses the request before any write; the inner result is the store's.
fn patch_merge(
    r: &RequestContext,
    store: &mut Store,
    w: &Write<'_>,
    patch: Value,
) -> Result<Result<Value, ApiError>, ApiError> {
    let target = &r.target;
    if r.content_type.starts_with("application/strategic")
        && !target.rt.group.is_empty()
        && target.rt.group.contains('.')
        && ![
            "events.k8s.io",
            "coordination.k8s.io",
            "apiextensions.k8s.io",
        ]
        .contains(&target.rt.group.as_str())
    {
        return Err(ApiError::unsupported_media(&r.content_type));
    }
    let precondition = patch["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    Ok(store.update(w, precondition, |current, ownership| {
        let mut next = current.clone();
        json_patch::merge(&mut next, &patch);
        crate::fields::track_update(
            ownership,
            Schema::of(&target.rt),
            &r.manager,
            &target.subresource,
            current,
            &next,
        );
        Ok(next)
    }))
}

/// A JSON patch (RFC 6902), with kube-apiserver's reading of a `test` op against a missing
/// path. The outer `Err` refuses an unparsable patch before any write; the inner result is the
/// store's.
fn patch_json(
    r: &RequestContext,
    store: &mut Store,
    w: &Write<'_>,
    patch: Value,
) -> Result<Result<Value, ApiError>, ApiError> {
    let target = &r.target;
    let ops: json_patch::Patch = match serde_json::from_value(patch.clone()) {
        Ok(ops) => ops,
        Err(e) => {
            return Err(ApiError::bad_request(format!("invalid JSON patch: {e}")));
        }
    };
    Ok(store.update(w, None, |current, ownership| {
        let mut next = current.clone();
        // kube-apiserver's JSON patch (evanphx/json-patch) treats a missing path
        // as equal to null in a `test` op; kube-rs's finalizer helper relies on it.
        let ops = json_patch::Patch(
            ops.0
                .iter()
                .filter(|op| {
                    !matches!(op, json_patch::PatchOperation::Test(t)
                        if t.value.is_null() && current.pointer(t.path.as_str()).is_none())
                })
                .cloned()
                .collect(),
        );
        json_patch::patch(&mut next, &ops).map_err(|e| {
            ApiError::invalid(
                &target.rt.group,
                &target.rt.kind,
                w.name,
                vec![("patch".into(), format!("Invalid value: {e}"))],
            )
        })?;
        crate::fields::track_update(
            ownership,
            Schema::of(&target.rt),
            &r.manager,
            &target.subresource,
            current,
            &next,
        );
        Ok(next)
    }))
}

/// `delete`: the named object, with the body's preconditions and grace period (or the query's
/// `gracePeriodSeconds`), then the pod sync, under one lock.
fn delete(r: &RequestContext) -> Response {
    let target = &r.target;
    let name = target.name.clone().unwrap_or_default();
    let opts: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let precondition_rv = opts["preconditions"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let precondition_uid = opts["preconditions"]["uid"].as_str().map(str::to_string);
    let grace = opts["gracePeriodSeconds"].as_i64().or_else(|| {
        r.query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
    });
    let mut store = r.shared.store.lock().unwrap();
    let result = store.delete(
        &target.rt,
        &r.ns,
        &name,
        precondition_rv,
        precondition_uid,
        grace,
    );
    r.shared.sync_pods(&mut store);
    match result {
        Ok(o) => ok_json(StatusCode::OK, &o),
        Err(e) => error_response(e),
    }
}

async fn watch_response(
    shared: Shared,
    target: Target,
    query: HashMap<String, String>,
    metadata_only: bool,
    as_table: Option<crate::table::Include>,
) -> Response {
    let rt = target.rt.clone();
    // Each event's object as a one-row Table, for `kubectl get -w`.
    let present = move |mut e: Value| -> Value {
        if let Some(include) = as_table
            && matches!(e["type"].as_str(), Some("ADDED" | "MODIFIED" | "DELETED"))
        {
            let metadata = json!({"resourceVersion": e["object"]["metadata"]["resourceVersion"]});
            e["object"] = crate::table::table(&rt, &[&e["object"]], include, metadata);
        }
        e
    };
    let present_live = present.clone();
    let params = match WatchParams::parse(&query, &target, metadata_only) {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    let (rx, backlog, current_rv) = watch_backlog(&shared, &target, &params);
    let expired = backlog.first().is_some_and(|e| e["type"] == "ERROR");
    let last_sent = backlog
        .last()
        .and_then(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
        })
        .unwrap_or(params.from.unwrap_or(current_rv));
    let head = futures::stream::iter(
        backlog
            .into_iter()
            .map(move |e| Ok::<_, std::io::Error>(Bytes::from(format!("{}\n", present(e))))),
    );
    if expired {
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(head))
            .unwrap();
    }
    let timeout = params.timeout;
    let events = live_events(&shared, &target, params, rx, last_sent, present_live);
    let stream = until_broken(&shared, head.chain(events), timeout);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// What a watch's query asks for.
struct WatchParams {
    selectors: Selectors,
    /// `timeoutSeconds`: when the watch ends.
    timeout: u64,
    /// `allowWatchBookmarks`.
    bookmarks: bool,
    /// The watched resource's key in the store's event logs.
    resource: String,
    namespace: Option<String>,
    /// The `resourceVersion` to start after; none (for none, "" or "0") starts with a listing.
    from: Option<u64>,
    metadata_only: bool,
}

impl WatchParams {
    /// Reads a watch's selectors, timeout (30 minutes by default), bookmark choice and
    /// starting resourceVersion off its query.
    fn parse(
        query: &HashMap<String, String>,
        target: &Target,
        metadata_only: bool,
    ) -> Result<WatchParams, ApiError> {
        let selectors = Selectors::parse(query, &target.rt)?;
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let resource = resource_key(&target.rt.group, &target.rt.plural);
        let namespace = target.namespace.clone();
        let from: Option<u64> = query
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .and_then(|v| v.parse().ok());
        Ok(WatchParams {
            selectors,
            timeout,
            bookmarks,
            resource,
            namespace,
            from,
            metadata_only,
        })
    }
}

/// A watch's subscription to live events, its backlog and the store's resourceVersion, all
/// under one lock: the subscription is taken before the backlog is read so no event falls
/// between the two. The backlog is a 410 ERROR event for a resourceVersion older than the
/// event log keeps, the logged events after the resourceVersion, or, with none, every
/// matching object as ADDED.
fn watch_backlog(
    shared: &Shared,
    target: &Target,
    params: &WatchParams,
) -> (
    tokio::sync::broadcast::Receiver<std::sync::Arc<crate::store::WatchEvent>>,
    Vec<Value>,
    u64,
) {
    let (resource, ns, selectors) = (&params.resource, &params.namespace, &params.selectors);
    let metadata_only = params.metadata_only;
    // Subscribe before reading the backlog so no event falls between the two.
    let mut store = shared.store.lock().unwrap();
    let rx = store.subscribe(resource);
    let backlog: Vec<Value> = match params.from {
        Some(rv) if rv < store.oldest_watchable(resource) => {
            let status = ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                store.oldest_watchable(resource)
            ));
            vec![json!({"type": "ERROR", "object": status.body()})]
        }
        Some(rv) => store
            .log_since(rv, resource)
            .into_iter()
            .filter_map(|e| filter_event(&e, ns.as_deref(), selectors, metadata_only))
            .collect(),
        None => store
            .list(&target.rt, ns.as_deref())
            .into_iter()
            .filter(|o| selectors.matches(o))
            .map(
                |o| json!({"type": "ADDED", "object": if metadata_only { partial(&o) } else { o }}),
            )
            .collect(),
    };
    (rx, backlog, store.resource_version())
}

/// A watch's events after its backlog: the live events past `last_sent` that its namespace and
/// selectors let through, interleaved with bookmarks (every 5 seconds when asked for).
fn live_events<P>(
    shared: &Shared,
    target: &Target,
    params: WatchParams,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::store::WatchEvent>>,
    last_sent: u64,
    present_live: P,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + use<P>
where
    P: Fn(Value) -> Value + Clone + Send + 'static,
{
    let WatchParams {
        selectors,
        bookmarks,
        resource,
        namespace: ns,
        metadata_only,
        ..
    } = params;
    let kind = target.rt.kind.clone();
    let api_version = target.rt.api_version();
    // A watch that lagged behind the event buffer ends; the client resumes from the last
    // resourceVersion it saw (or relists after a 410), as with kube-apiserver.
    let live = tokio_stream::wrappers::BroadcastStream::new(rx)
        .take_while(|item| futures::future::ready(item.is_ok()))
        .filter_map(move |item| {
            let resource = resource.clone();
            let ns = ns.clone();
            let selectors = selectors.clone();
            let present = present_live.clone();
            async move {
                let event = item.ok()?;
                if event.resource != resource || event.rv <= last_sent {
                    return None;
                }
                filter_event(&event, ns.as_deref(), &selectors, metadata_only)
                    .map(|e| Ok::<_, std::io::Error>(Bytes::from(format!("{}\n", present(e)))))
            }
        });
    let bookmark_stream = futures::stream::unfold(shared.clone(), move |shared| {
        let kind = kind.clone();
        let api_version = api_version.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(if bookmarks { 5 } else { 3600 })).await;
            let rv = shared.store.lock().unwrap().resource_version();
            let e = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}});
            Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("{e}\n"))),
                shared,
            ))
        }
    });
    // The watch ends when its live events do (it lagged behind the event buffer): bookmarks
    // alone would carry the store's latest resourceVersion past the events it missed, and the
    // client would resume after them.
    let live = live.map(Some).chain(futures::stream::once(async { None }));
    futures::stream::select(live, bookmark_stream.map(Some))
        .take_while(|event| futures::future::ready(event.is_some()))
        .filter_map(futures::future::ready)
}

/// `stream` until the watch's `timeoutSeconds` pass or `Sim::break_watches` breaks it; a
/// broken watch ends with an error event (not a 410: the client resumes).
fn until_broken<S>(
    shared: &Shared,
    stream: S,
    timeout: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + use<S>
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let deadline = tokio::time::sleep(Duration::from_secs(timeout));
    // `Sim::break_watches`: the watch ends with an error event (not a 410: the client resumes).
    let mut breaks = shared.watch_breaks.subscribe();
    breaks.mark_unchanged();
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mark_broken = broken.clone();
    let broken_off = async move {
        if breaks.changed().await.is_ok() {
            mark_broken.store(true, std::sync::atomic::Ordering::SeqCst);
        } else {
            std::future::pending::<()>().await
        }
    };
    let error_event = futures::stream::once(async move {
        broken.load(std::sync::atomic::Ordering::SeqCst).then(|| {
            let status = ApiError::injected(500).body();
            Ok::<_, std::io::Error>(Bytes::from(format!(
                "{}\n",
                json!({"type": "ERROR", "object": status})
            )))
        })
    })
    .filter_map(futures::future::ready);
    stream
        .take_until(futures::future::select(
            Box::pin(deadline),
            Box::pin(broken_off),
        ))
        .chain(error_event)
}

/// The event a watcher with these selectors sees: objects moving out of a selector are DELETED
/// for it, objects moving in are ADDED, as kube-apiserver's cacher reports them.
fn filter_event(
    e: &crate::store::WatchEvent,
    ns: Option<&str>,
    selectors: &Selectors,
    metadata_only: bool,
) -> Option<Value> {
    if let Some(ns) = ns
        && e.object["metadata"]["namespace"].as_str() != Some(ns)
    {
        return None;
    }
    let now = selectors.matches(&e.object);
    let before = e.previous.as_ref().is_some_and(|p| selectors.matches(p));
    let kind = match (e.kind, before, now) {
        ("MODIFIED", true, true) => "MODIFIED",
        ("MODIFIED", false, true) => "ADDED",
        ("MODIFIED", true, false) => "DELETED",
        ("MODIFIED", false, false) => return None,
        (k, _, true) => k,
        ("DELETED", true, false) => "DELETED",
        _ => return None,
    };
    let object = if metadata_only {
        partial(&e.object)
    } else {
        e.object.clone()
    };
    Some(json!({"type": kind, "object": object}))
}

/// An object as `PartialObjectMetadata`: its metadata and nothing else.
fn partial(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

/// For a read of core/v1 Events: the events.k8s.io/v1 Events of `namespace` in their core view
/// (kube-apiserver stores both as one kind); for any other kind, none.
fn recorded_events(store: &Store, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
    if !(rt.group.is_empty() && rt.plural == "events") {
        return Vec::new();
    }
    let Some(events) = store.resource_type("events.k8s.io", "events") else {
        return Vec::new();
    };
    (store.iter(&events, namespace))
        .map(crate::events::core_view)
        .collect()
}
