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
    if path == "/version" {
        return ok_json(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-sim"}),
        );
    }
    if method == Method::GET && crate::discovery::is_discovery_path(&path) {
        let host = (headers.get(header::HOST).and_then(|v| v.to_str().ok())).unwrap_or("");
        let store = shared.store.lock().unwrap();
        let document = crate::discovery::document(&store, &path, host)
            .or_else(|| crate::openapi::document(&store, &path));
        if let Some(document) = document {
            return ok_json(StatusCode::OK, &document);
        }
    }
    let target = match parse_target(&shared, &path) {
        Ok(t) => t,
        Err(e) => return error_response(e),
    };
    let query = query_map(&uri);
    let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    let verb = match (&method, target.name.is_some(), watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => return error_response(ApiError::bad_request("unsupported method")),
    };
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
            return error_response(e);
        }
    }
    if let Some(code) = shared.take_fault(verb, &target.rt.plural) {
        return error_response(ApiError::injected(code));
    }
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

    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
    };

    match verb {
        "watch" => watch_response(shared, target, query, metadata_only, as_table).await,
        "list" => {
            let selectors = match Selectors::parse(&query, &target.rt) {
                Ok(s) => s,
                Err(e) => return error_response(e),
            };
            let store = shared.store.lock().unwrap();
            let resource = resource_key(&target.rt.group, &target.rt.plural);
            let paging = match PageRequest::parse(&query, store.oldest_watchable(&resource)) {
                Ok(p) => p,
                Err(e) => return error_response(e),
            };
            let recorded = recorded_events(&store, &target.rt, target.namespace.as_deref());
            let matching = store
                .iter(&target.rt, target.namespace.as_deref())
                .chain(recorded.iter())
                .filter(|o| selectors.matches(o));
            let (page, metadata) =
                paging.page(matching, store.resource_version(), selectors.is_empty());
            if let Some(include) = as_table {
                let table = crate::table::table(&target.rt, &page, include, metadata);
                return ok_json(StatusCode::OK, &table);
            }
            let items: Vec<Value> = page
                .into_iter()
                .map(|o| if metadata_only { partial(o) } else { o.clone() })
                .collect();
            let (kind, api_version) = if metadata_only {
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
        "get" => {
            let store = shared.store.lock().unwrap();
            let name = target.name.as_deref().unwrap();
            let found = store.get(&target.rt, &ns, name).or_else(|e| {
                (recorded_events(&store, &target.rt, Some(&ns)).into_iter())
                    .find(|o| o["metadata"]["name"] == name)
                    .ok_or(e)
            });
            match found {
                Ok(o) if as_table.is_some() => {
                    let metadata = json!({"resourceVersion": o["metadata"]["resourceVersion"]});
                    let include = as_table.unwrap();
                    let table = crate::table::table(&target.rt, &[&o], include, metadata);
                    ok_json(StatusCode::OK, &table)
                }
                Ok(o) if metadata_only => ok_json(StatusCode::OK, &partial(&o)),
                Ok(o) => ok_json(StatusCode::OK, &o),
                Err(e) => error_response(e),
            }
        }
        "create" => {
            let object = match parse_body() {
                Ok(o) => o,
                Err(e) => return error_response(e),
            };
            if let Some(body_ns) = object["metadata"]["namespace"].as_str()
                && target.rt.namespaced
                && body_ns != ns
            {
                return error_response(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let mut store = shared.store.lock().unwrap();
            let w = Write {
                rt: &target.rt,
                namespace: &ns,
                name: "",
                subresource: "",
                manager: &manager,
            };
            store.take_warnings();
            let result = store.create(&w, object);
            shared.sync_pods(&mut store);
            let warnings = store.take_warnings();
            drop(store);
            match result {
                Ok(o) => with_warnings(ok_json(StatusCode::CREATED, &o), &warnings),
                Err(e) => error_response(e),
            }
        }
        "update" => {
            let object = match parse_body() {
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
                namespace: &ns,
                name: &name,
                subresource: &target.subresource,
                manager: &manager,
            };
            let mut store = shared.store.lock().unwrap();
            store.take_warnings();
            let result = store.update(&w, precondition, |current, ownership| {
                crate::fields::track_update(
                    ownership,
                    Schema::of(&target.rt),
                    &manager,
                    &target.subresource,
                    current,
                    &object,
                );
                Ok(object.clone())
            });
            shared.sync_pods(&mut store);
            let warnings = store.take_warnings();
            drop(store);
            match result {
                Ok(o) => with_warnings(ok_json(StatusCode::OK, &o), &warnings),
                Err(e) => error_response(e),
            }
        }
        "patch" => {
            let name = target.name.clone().unwrap_or_default();
            let w = Write {
                rt: &target.rt,
                namespace: &ns,
                name: &name,
                subresource: &target.subresource,
                manager: &manager,
            };
            let patch = match parse_body() {
                Ok(p) => p,
                Err(e) => return error_response(e),
            };
            let mut store = shared.store.lock().unwrap();
            store.take_warnings();
            let result = match content_type.as_str() {
                "application/apply-patch+yaml" => {
                    if !query.contains_key("fieldManager") {
                        return error_response(ApiError::bad_request(
                            "PATCH, application/apply-patch+yaml requests require fieldManager",
                        ));
                    }
                    let force = query.get("force").is_some_and(|f| f == "true");
                    // An apply that creates the object is authorized as a create too (the patch
                    // handler's `withAuthorization` of its create validation).
                    let creates = store.get(&target.rt, &ns, &name).is_err();
                    if let Some(user) = user.as_ref().filter(|_| creates) {
                        let attributes = crate::rbac::Attributes {
                            verb: "create",
                            group: &target.rt.group,
                            resource: &target.rt.plural,
                            subresource: &target.subresource,
                            namespace: target.namespace.as_deref(),
                            name: Some(&name),
                        };
                        if let Err(e) = crate::rbac::authorize(&store, user, &attributes) {
                            shared.denials.lock().unwrap().push(e.message.clone());
                            return error_response(e);
                        }
                    }
                    store.apply(&w, patch, force)
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    if content_type.starts_with("application/strategic")
                        && !target.rt.group.is_empty()
                        && target.rt.group.contains('.')
                        && ![
                            "events.k8s.io",
                            "coordination.k8s.io",
                            "apiextensions.k8s.io",
                        ]
                        .contains(&target.rt.group.as_str())
                    {
                        return error_response(ApiError::unsupported_media(&content_type));
                    }
                    let precondition = patch["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string);
                    store.update(&w, precondition, |current, ownership| {
                        let mut next = current.clone();
                        json_patch::merge(&mut next, &patch);
                        crate::fields::track_update(
                            ownership,
                            Schema::of(&target.rt),
                            &manager,
                            &target.subresource,
                            current,
                            &next,
                        );
                        Ok(next)
                    })
                }
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = match serde_json::from_value(patch.clone()) {
                        Ok(ops) => ops,
                        Err(e) => {
                            return error_response(ApiError::bad_request(format!(
                                "invalid JSON patch: {e}"
                            )));
                        }
                    };
                    store.update(&w, None, |current, ownership| {
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
                                &name,
                                vec![("patch".into(), format!("Invalid value: {e}"))],
                            )
                        })?;
                        crate::fields::track_update(
                            ownership,
                            Schema::of(&target.rt),
                            &manager,
                            &target.subresource,
                            current,
                            &next,
                        );
                        Ok(next)
                    })
                }
                other => return error_response(ApiError::unsupported_media(other)),
            };
            shared.sync_pods(&mut store);
            let warnings = store.take_warnings();
            drop(store);
            match result {
                Ok(o) => with_warnings(ok_json(StatusCode::OK, &o), &warnings),
                Err(e) => error_response(e),
            }
        }
        "delete" => {
            let name = target.name.clone().unwrap_or_default();
            let opts: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let precondition_rv = opts["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
            let precondition_uid = opts["preconditions"]["uid"].as_str().map(str::to_string);
            let grace = opts["gracePeriodSeconds"].as_i64().or_else(|| {
                query
                    .get("gracePeriodSeconds")
                    .and_then(|g| g.parse::<i64>().ok())
            });
            let mut store = shared.store.lock().unwrap();
            let result = store.delete(
                &target.rt,
                &ns,
                &name,
                precondition_rv,
                precondition_uid,
                grace,
            );
            shared.sync_pods(&mut store);
            match result {
                Ok(o) => ok_json(StatusCode::OK, &o),
                Err(e) => error_response(e),
            }
        }
        _ => unreachable!(),
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
    let selectors = match Selectors::parse(&query, &target.rt) {
        Ok(s) => s,
        Err(e) => return error_response(e),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let resource = resource_key(&target.rt.group, &target.rt.plural);
    let ns = target.namespace.clone();
    let from: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());

    // Subscribe before reading the backlog so no event falls between the two.
    let (rx, backlog, current_rv) = {
        let mut store = shared.store.lock().unwrap();
        let rx = store.subscribe(&resource);
        let backlog: Vec<Value> = match from {
            Some(rv) if rv < store.oldest_watchable(&resource) => {
                let status = ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    store.oldest_watchable(&resource)
                ));
                vec![json!({"type": "ERROR", "object": status.body()})]
            }
            Some(rv) => store
                .log_since(rv, &resource)
                .into_iter()
                .filter_map(|e| filter_event(&e, ns.as_deref(), &selectors, metadata_only))
                .collect(),
            None => store
                .list(&target.rt, ns.as_deref())
                .into_iter()
                .filter(|o| selectors.matches(o))
                .map(|o| json!({"type": "ADDED", "object": if metadata_only { partial(&o) } else { o }}))
                .collect(),
        };
        (rx, backlog, store.resource_version())
    };
    let expired = backlog.first().is_some_and(|e| e["type"] == "ERROR");
    let last_sent = backlog
        .last()
        .and_then(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
        })
        .unwrap_or(from.unwrap_or(current_rv));
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
                    .map(|e| Ok(Bytes::from(format!("{}\n", present(e)))))
            }
        });
    let bookmark_stream = futures::stream::unfold(shared.clone(), move |shared| {
        let kind = kind.clone();
        let api_version = api_version.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(if bookmarks { 5 } else { 3600 })).await;
            let rv = shared.store.lock().unwrap().resource_version();
            let e = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}});
            Some((Ok(Bytes::from(format!("{e}\n"))), shared))
        }
    });
    // The watch ends when its live events do (it lagged behind the event buffer): bookmarks
    // alone would carry the store's latest resourceVersion past the events it missed, and the
    // client would resume after them.
    let live = live.map(Some).chain(futures::stream::once(async { None }));
    let events = futures::stream::select(live, bookmark_stream.map(Some))
        .take_while(|event| futures::future::ready(event.is_some()))
        .filter_map(futures::future::ready);
    let stream = head.chain(events);
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
    let stream = stream
        .take_until(futures::future::select(
            Box::pin(deadline),
            Box::pin(broken_off),
        ))
        .chain(error_event);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
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
