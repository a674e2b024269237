//! The HTTP side: an HTTP/1.1 server (hyper, one task per connection) that routes the REST
//! paths, answers discovery, GET, LIST and WATCH, and injects the faults. Each connection task
//! also waits on an "epoch" that [`Shared::kill_connections`] bumps: dropping the connection
//! future closes the socket mid-whatever, which is what a dying API server or a load balancer
//! cutting connections looks like to a client (a watch body ends without its last chunk). The
//! protocol's less obvious rules are noted where they are implemented: [`watch`] (410 is an
//! event, not a status), [`list`] (continue tokens), [`WatchStream::push_change`] (selectors
//! turn modifications into ADDED and DELETED) and [`WatchStream::push_bookmark`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Interval, Sleep};

use super::resources::{self, Resource, RESOURCES};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, ChangeKind, Key, Store, WatchFrom, WatchMsg};
use super::table;

pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Locks, ignoring poisoning: a panicking test thread must not take the server down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the test thread and the server thread share.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) requests: Mutex<Vec<String>>,
    pub(crate) latency: Mutex<Duration>,
    pub(crate) bookmark_interval: Mutex<Duration>,
    pub(crate) failing: Mutex<Option<StatusCode>>,
    pub(crate) unreachable: AtomicBool,
    /// Bumped to close every open connection.
    pub(crate) epoch: watch::Sender<u64>,
    /// `127.0.0.1:PORT`, for `/api`'s serverAddressByClientCIDRs.
    pub(crate) address: String,
}

impl Shared {
    pub(crate) fn kill_connections(&self) {
        lock(&self.store).drop_watches(None);
        self.epoch.send_modify(|e| *e += 1);
    }
}

/// Accepts until `shutdown` fires. While unreachable, connections are accepted and closed at
/// once: the client sees a reset or an empty reply, like a port nothing serves.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // EMFILE and friends: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if shared.unreachable.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let mut epoch = shared.epoch.subscribe();
        let shared = shared.clone();
        tokio::spawn(async move {
            // Unreachable may have been set between the accept and the subscribe.
            if shared.unreachable.load(Ordering::SeqCst) {
                return;
            }
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = epoch.changed() => {}
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let line = if query.is_empty() {
        format!("{} {path}", req.method())
    } else {
        format!("{} {path}?{query}", req.method())
    };
    lock(&shared.requests).push(line);
    let latency = *lock(&shared.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = *lock(&shared.failing) {
        return Ok(failure(code));
    }
    if req.method() != Method::GET {
        return Ok(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the fake API server is read-only over HTTP ({} {path})",
                req.method()
            ),
            None,
        ));
    }
    let table = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"));
    Ok(route(&shared, &path, &query, table))
}

/// What an injected failure looks like: the Status the API server (or APF) would send.
fn failure(code: StatusCode) -> Response<Body> {
    let reason = match code.as_u16() {
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    let mut response = status(code, reason, format!("injected failure {code}"), None);
    if code == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    response
}

fn route(shared: &Arc<Shared>, path: &str, query: &str, table: bool) -> Response<Body> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let hidden = lock(&shared.store).hidden().to_vec();
    let found = |doc: Option<Value>| match doc {
        Some(doc) => json_response(StatusCode::OK, &doc),
        None => not_found_path(),
    };
    match segments.as_slice() {
        ["version"] => json_response(StatusCode::OK, &resources::version()),
        ["healthz" | "livez" | "readyz"] => Response::builder()
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full(Bytes::from_static(b"ok")))
            .unwrap_or_else(|_| not_found_path()),
        ["api"] => json_response(StatusCode::OK, &resources::api_versions(&shared.address)),
        ["api", "v1"] => found(resources::api_resource_list("", "v1", &hidden)),
        ["api", "v1", rest @ ..] => resource_request(shared, "", "v1", rest, query, table),
        ["apis"] => json_response(StatusCode::OK, &resources::api_group_list(&hidden)),
        ["apis", group] => found(resources::api_group(group, &hidden)),
        ["apis", group, version] => found(resources::api_resource_list(group, version, &hidden)),
        ["apis", group, version, rest @ ..] => {
            resource_request(shared, group, version, rest, query, table)
        }
        _ => not_found_path(),
    }
}

fn resource_request(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &str,
    table: bool,
) -> Response<Body> {
    let served = |plural: &str| {
        resources::by_path(group, version, plural).filter(|&r| !lock(&shared.store).hidden()[r])
    };
    let (resource, namespace, name) = match *rest {
        [plural] => (served(plural), None, None),
        [plural, name] => (
            served(plural).filter(|&r| !RESOURCES[r].namespaced),
            None,
            Some(name),
        ),
        ["namespaces", ns, plural] => (
            served(plural).filter(|&r| RESOURCES[r].namespaced),
            Some(ns),
            None,
        ),
        ["namespaces", ns, plural, name] => (
            served(plural).filter(|&r| RESOURCES[r].namespaced),
            Some(ns),
            Some(name),
        ),
        _ => (None, None, None),
    };
    let Some(resource) = resource else {
        return not_found_path();
    };
    let query = match Query::parse(query) {
        Ok(q) => q,
        Err(message) => return bad_request(message),
    };
    match name {
        Some(name) => get(shared, resource, namespace, name, table),
        None => collection(shared, resource, namespace, &query, table),
    }
}

fn get(
    shared: &Arc<Shared>,
    resource: usize,
    namespace: Option<&str>,
    name: &str,
    table: bool,
) -> Response<Body> {
    let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
    match lock(&shared.store).get(resource, &key) {
        Some(object) if table => json_response(StatusCode::OK, &table::table(resource, &[object])),
        Some(object) => json_response(StatusCode::OK, &object),
        None => not_found(resource, name),
    }
}

/// The query parameters of a list or watch.
#[derive(Debug, Default)]
struct Query {
    watch: bool,
    label_selector: String,
    field_selector: String,
    limit: Option<usize>,
    continue_token: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    allow_bookmarks: bool,
    send_initial_events: Option<bool>,
}

/// Go's `strconv.ParseBool`, which is what the API server parses boolean parameters with.
fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{name}: invalid boolean {value:?}")),
    }
}

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}: invalid number {v:?}"))
            };
            match &*k {
                "watch" => q.watch = parse_bool(&k, &v)?,
                "labelSelector" => q.label_selector = v.into_owned(),
                "fieldSelector" => q.field_selector = v.into_owned(),
                // limit=0 means no limit.
                "limit" => q.limit = Some(number(&v)? as usize).filter(|&l| l > 0),
                "continue" if !v.is_empty() => q.continue_token = Some(v.into_owned()),
                "resourceVersion" => q.resource_version = Some(v.into_owned()),
                "timeoutSeconds" => q.timeout_seconds = Some(number(&v)?),
                "allowWatchBookmarks" => q.allow_bookmarks = parse_bool(&k, &v)?,
                "sendInitialEvents" => q.send_initial_events = Some(parse_bool(&k, &v)?),
                // resourceVersionMatch, timeout, includeObject, pretty…: accepted; the current
                // state is served whatever consistency is asked for.
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Which objects a request selects.
struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let meta = object.get("metadata");
        if let Some(ns) = &self.namespace {
            if meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                != Some(ns)
            {
                return false;
            }
        }
        self.labels.matches(
            meta.and_then(|m| m.get("labels"))
                .and_then(Value::as_object),
        ) && self.fields.matches(object)
    }
}

fn collection(
    shared: &Arc<Shared>,
    resource: usize,
    namespace: Option<&str>,
    query: &Query,
    table: bool,
) -> Response<Body> {
    let r = &RESOURCES[resource];
    let filter = match (
        LabelSelector::parse(&query.label_selector),
        FieldSelector::parse(&query.field_selector, r),
    ) {
        (Ok(labels), Ok(fields)) => Filter {
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        },
        (Err(e), _) | (_, Err(e)) => return bad_request(e.to_string()),
    };
    if query.watch {
        watch(shared, resource, filter, query, table)
    } else {
        list(shared, resource, &filter, query, table)
    }
}

/// Continue tokens are opaque to clients: hex of `<snapshot rv>\n<namespace>\n<name>`, the
/// list's resourceVersion and the last key served.
fn encode_continue(rv: u64, key: &Key) -> String {
    format!("{rv}\n{}\n{}", key.0, key.1)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    if !token.is_ascii() || !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(3, '\n');
    let rv = parts.next()?.parse().ok()?;
    let key = (parts.next()?.to_owned(), parts.next()?.to_owned());
    Some((rv, key))
}

/// A LIST. Unlike an expired watch, an expired `continue` token *is* an HTTP 410 (reason
/// `Expired`); clients restart the list from scratch.
fn list(
    shared: &Arc<Shared>,
    resource: usize,
    filter: &Filter,
    query: &Query,
    table: bool,
) -> Response<Body> {
    let r = &RESOURCES[resource];
    let store = lock(&shared.store);
    // A continued list keeps the resourceVersion of its first page (the snapshot it pages
    // through). Pages after the first show the current objects past the last key rather than a
    // true snapshot; the watch from the list's resourceVersion replays whatever changed since,
    // so a client still converges.
    let (rv, after) = match &query.continue_token {
        None => (store.rv(), None),
        Some(token) => match decode_continue(token) {
            None => return bad_request(format!("invalid continue token {token:?}")),
            Some((rv, _)) if store.is_compacted(rv) => {
                return status(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list \
                     result. You can start a new list without the continue parameter."
                        .to_owned(),
                    None,
                )
            }
            Some((rv, key)) => (rv, Some(key)),
        },
    };
    let page = store.page(resource, after.as_ref(), query.limit, |o| filter.matches(o));
    drop(store);
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(last) = &page.more {
        metadata["continue"] = Value::String(encode_continue(rv, last));
        // Upstream leaves the count out when a selector makes it expensive to know.
        if query.label_selector.is_empty() && query.field_selector.is_empty() {
            metadata["remainingItemCount"] = json!(page.remaining);
        }
    }
    if table {
        let mut t = table::table(resource, &page.items);
        t["metadata"] = metadata;
        return json_response(StatusCode::OK, &t);
    }
    let items: Vec<&Value> = page.items.iter().map(|o| &**o).collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// A WATCH. Starting from a compacted resourceVersion is *not* an HTTP 410: the API server
/// answers 200 and streams one `ERROR` event whose object is a 410 Status, then ends the
/// stream. Clients relist on that event; kube-rs only does for the event (an HTTP error on a
/// watch request makes it retry the same watch, forever). resourceVersion "" or "0" starts
/// with synthetic ADDED events for the current objects, as does `sendInitialEvents=true`
/// (a streaming list), which then ends them with a bookmark.
fn watch(
    shared: &Arc<Shared>,
    resource: usize,
    filter: Filter,
    query: &Query,
    table: bool,
) -> Response<Body> {
    let rv = query.resource_version.as_deref().unwrap_or_default();
    let from_start = rv.is_empty() || rv == "0";
    let initial_events = query.send_initial_events.unwrap_or(from_start);
    let mut store = lock(&shared.store);
    let from = if initial_events {
        WatchFrom::Current
    } else if from_start {
        WatchFrom::After(store.rv())
    } else {
        match rv.parse() {
            Ok(rv) => WatchFrom::After(rv),
            Err(_) => return bad_request(format!("resourceVersion: invalid value {rv:?}")),
        }
    };
    let started = match store.watch(resource, from) {
        Ok(started) => started,
        Err(gone) => {
            drop(store);
            let event = json!({
                "type": "ERROR",
                "object": status_object(
                    410,
                    "Expired",
                    format!("too old resource version: {} ({})", gone.requested, gone.oldest),
                    None,
                ),
            });
            let line = Ok(Frame::data(event_line(&event)));
            return streaming(StreamBody::new(futures::stream::iter([line])).boxed_unsync());
        }
    };
    drop(store);
    let interval = *lock(&shared.bookmark_interval);
    let mut w = WatchStream {
        shared: shared.clone(),
        id: started.id,
        resource,
        filter,
        table,
        queue: VecDeque::new(),
        rx: started.rx,
        bookmarks: query.allow_bookmarks.then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + interval, interval);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }),
        deadline: query
            .timeout_seconds
            .map(|s| Box::pin(tokio::time::sleep(Duration::from_secs(s)))),
        ended: false,
    };
    for change in &started.backlog {
        w.push_change(change);
    }
    if query.send_initial_events == Some(true) {
        w.push_bookmark(started.rv, true);
    }
    let stream = futures::stream::unfold(w, |mut w| async move {
        let frame = w.next_frame().await?;
        Some((frame, w))
    });
    streaming(StreamBody::new(stream).boxed_unsync())
}

/// An open watch: its backlog and live changes become newline-terminated JSON events.
struct WatchStream {
    shared: Arc<Shared>,
    id: u64,
    resource: usize,
    filter: Filter,
    table: bool,
    queue: VecDeque<Bytes>,
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    bookmarks: Option<Interval>,
    deadline: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        lock(&self.shared.store).unregister(self.id);
    }
}

impl WatchStream {
    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, io::Error>> {
        loop {
            if let Some(line) = self.queue.pop_front() {
                return Some(Ok(Frame::data(line)));
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(WatchMsg::Change(change)) => self.push_change(&change),
                    Some(WatchMsg::Drop) | None => return Some(Err(dropped())),
                },
                _ = tick(&mut self.bookmarks) => {
                    // Take the resourceVersion and whatever is already queued for us under the
                    // store lock, so the bookmark never claims a change we have not sent yet.
                    let (rv, pending) = {
                        let store = lock(&self.shared.store);
                        let mut pending = Vec::new();
                        while let Ok(msg) = self.rx.try_recv() {
                            pending.push(msg);
                        }
                        (store.rv(), pending)
                    };
                    for msg in pending {
                        match msg {
                            WatchMsg::Change(change) => self.push_change(&change),
                            WatchMsg::Drop => return Some(Err(dropped())),
                        }
                    }
                    self.push_bookmark(rv, false);
                }
                _ = expire(&mut self.deadline) => self.ended = true,
            }
        }
    }

    /// Queues the event this change is for this watcher, if any. With a label or field
    /// selector, the API server sends a modification that moves an object into the selection
    /// as ADDED, and one that moves it out as DELETED carrying the object's previous state at
    /// the new resourceVersion: to the watcher, the object appeared or disappeared.
    fn push_change(&mut self, change: &Change) {
        let now = self.filter.matches(&change.object);
        let before = change.previous.as_deref().map(|p| self.filter.matches(p));
        let (kind, object) = match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => ("ADDED", Value::clone(&change.object)),
            (ChangeKind::Deleted, _, true) => ("DELETED", Value::clone(&change.object)),
            (ChangeKind::Modified, Some(true) | None, true) => {
                ("MODIFIED", Value::clone(&change.object))
            }
            (ChangeKind::Modified, Some(false), true) => ("ADDED", Value::clone(&change.object)),
            (ChangeKind::Modified, Some(true), false) => {
                // Left the selection: the previous state, at the change's resourceVersion.
                let mut last = change.previous.as_deref().cloned().unwrap_or_default();
                if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert(
                        "resourceVersion".into(),
                        Value::String(change.rv.to_string()),
                    );
                }
                ("DELETED", last)
            }
            _ => return,
        };
        let object = if self.table {
            table::table(self.resource, &[Arc::new(object)])
        } else {
            object
        };
        self.queue
            .push_back(event_line(&json!({"type": kind, "object": object})));
    }

    /// A BOOKMARK: an object of the watched kind with nothing but `metadata.resourceVersion`,
    /// plus the `k8s.io/initial-events-end` annotation on the one that closes the initial
    /// events of a streaming list (KEP-3157).
    fn push_bookmark(&mut self, rv: u64, initial_events_end: bool) {
        let r = &RESOURCES[self.resource];
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": metadata});
        self.queue
            .push_back(event_line(&json!({"type": "BOOKMARK", "object": object})));
    }
}

fn dropped() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "watch dropped by the test",
    )
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn expire(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

fn event_line(event: &Value) -> Bytes {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A chunked `application/json` response (no Content-Length), as watches are served.
fn streaming(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `v1 Status`, as every API error body is.
pub(crate) fn status_object(
    code: u16,
    reason: &str,
    message: String,
    details: Option<Value>,
) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn status(
    code: StatusCode,
    reason: &str,
    message: String,
    details: Option<Value>,
) -> Response<Body> {
    json_response(
        code,
        &status_object(code.as_u16(), reason, message, details),
    )
}

fn bad_request(message: String) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

fn not_found_path() -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".to_owned(),
        Some(json!({})),
    )
}

fn not_found(resource: usize, name: &str) -> Response<Body> {
    let r: &Resource = &RESOURCES[resource];
    let group = if r.group.is_empty() {
        r.plural.to_owned()
    } else {
        format!("{}.{}", r.plural, r.group)
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{group} \"{name}\" not found"),
        Some(json!({"name": name, "group": r.group, "kind": r.plural})),
    )
}
