//! The fake API server against real clients: kube-rs 5's `watcher` (paging, selectors, resume,
//! relist after 410, outages, streaming lists, bookmarks, a kind that is not served) and the
//! `kubectl` binary (discovery, lists, Tables, `--watch`), the wire format itself, and a
//! listener bound in another network namespace. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use kube_nft_testkit::apiserver::FakeApiServer;
use serde_json::{json, Value};
use tokio::sync::mpsc as mpsc_async;

/// kube-proxy's Service and EndpointSlice selector.
const SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
const WAIT: Duration = Duration::from_secs(10);

fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn client(server: &FakeApiServer) -> Client {
    let config = kube::Config::new(server.url().parse().expect("url"));
    Client::try_from(config).expect("client")
}

/// One watcher item, short: `Init`, `InitApply default/a`, `Apply default/a`, `Delete …`,
/// `InitDone`, or `Err: …`.
fn summary<K: kube::Resource>(item: &Result<watcher::Event<K>, watcher::Error>) -> String {
    let name = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    match item {
        Ok(watcher::Event::Init) => "Init".to_owned(),
        Ok(watcher::Event::InitApply(o)) => format!("InitApply {}", name(o)),
        Ok(watcher::Event::InitDone) => "InitDone".to_owned(),
        Ok(watcher::Event::Apply(o)) => format!("Apply {}", name(o)),
        Ok(watcher::Event::Delete(o)) => format!("Delete {}", name(o)),
        Err(e) => format!("Err: {e:?}"),
    }
}

/// Drives the watcher on its own task (it only sends requests while polled, as a reflector
/// polls it) and hands over item summaries.
fn drive<S, K>(stream: S) -> mpsc_async::UnboundedReceiver<String>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: kube::Resource + Send + 'static,
{
    let (tx, rx) = mpsc_async::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if tx.send(summary(&item)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Summaries until `last` (included); panics with what came if it does not within [`WAIT`].
async fn until(events: &mut mpsc_async::UnboundedReceiver<String>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(s)) => {
                let done = s == last;
                seen.push(s);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("watcher ended waiting for {last:?}; saw {seen:#?}"),
            Err(_) => panic!("no {last:?} within {WAIT:?}; saw {seen:#?}"),
        }
    }
}

/// The next summary, within [`WAIT`].
async fn next_event(events: &mut mpsc_async::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no watcher item within the timeout")
        .expect("watcher ended")
}

/// The next item, within [`WAIT`].
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no item within the timeout")
}

/// Without the errors, which depend on timing.
fn ok_only(events: Vec<String>) -> Vec<String> {
    events
        .into_iter()
        .filter(|e| !e.starts_with("Err"))
        .collect()
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lists(server: &FakeApiServer, path: &str) -> Vec<String> {
    let prefix = format!("GET {path}?");
    server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(&prefix) && !r.contains("watch=true"))
        .collect()
}

fn watches(server: &FakeApiServer, path: &str) -> Vec<String> {
    let prefix = format!("GET {path}?");
    server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(&prefix) && r.contains("watch=true"))
        .collect()
}

#[tokio::test]
async fn watcher_pages_selects_and_follows_changes() {
    let server = FakeApiServer::start_local().unwrap();
    for name in ["c", "a", "b"] {
        server.apply(service("default", name, json!({}))).unwrap();
    }
    server
        .apply(service(
            "default",
            "other-proxy",
            json!({"service.kubernetes.io/service-proxy-name": "x"}),
        ))
        .unwrap();
    server
        .apply(service(
            "kube-system",
            "headless",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();
    let api = Api::<Service>::all(client(&server));
    let config = watcher::Config::default().labels(SELECTOR).page_size(2);
    let mut events = drive(watcher(api, config));

    assert_eq!(
        until(&mut events, "InitDone").await,
        [
            "Init",
            "InitApply default/a",
            "InitApply default/b",
            "InitApply default/c",
            "InitDone"
        ]
    );
    let pages = lists(&server, "/api/v1/services");
    assert_eq!(pages.len(), 2, "{pages:#?}");
    assert!(pages.iter().all(|p| p.contains("limit=2")), "{pages:#?}");
    assert!(pages[1].contains("continue="), "{pages:#?}");

    server.apply(service("default", "d", json!({}))).unwrap();
    assert_eq!(
        until(&mut events, "Apply default/d").await,
        ["Apply default/d"]
    );
    // Labelled out of the selection: the watcher is told it is gone.
    server
        .apply(service(
            "default",
            "a",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();
    assert_eq!(
        until(&mut events, "Delete default/a").await,
        ["Delete default/a"]
    );
    // And back in.
    server
        .apply(service("default", "a", json!({"app": "a"})))
        .unwrap();
    assert_eq!(
        until(&mut events, "Apply default/a").await,
        ["Apply default/a"]
    );
    server
        .delete("v1", "Service", Some("default"), "b")
        .unwrap();
    assert_eq!(
        until(&mut events, "Delete default/b").await,
        ["Delete default/b"]
    );
    // Changes outside the selection are never sent.
    server
        .apply(service(
            "default",
            "other-proxy",
            json!({"service.kubernetes.io/service-proxy-name": "y"}),
        ))
        .unwrap();
    server.apply(service("default", "e", json!({}))).unwrap();
    assert_eq!(
        until(&mut events, "Apply default/e").await,
        ["Apply default/e"]
    );

    let watch = watches(&server, "/api/v1/services");
    assert_eq!(watch.len(), 1, "{watch:#?}");
    assert!(watch[0].contains("allowWatchBookmarks=true"), "{watch:#?}");
    assert!(
        watch[0].contains("labelSelector=%21service.kubernetes.io%2Fservice-proxy-name"),
        "{watch:#?}"
    );
}

#[tokio::test]
async fn watcher_resumes_a_dropped_watch_without_relisting() {
    let server = FakeApiServer::start_local().unwrap();
    server.set_bookmark_interval(Duration::from_millis(20));
    server.apply(service("default", "a", json!({}))).unwrap();
    let mut events = drive(watcher(
        Api::<Service>::all(client(&server)),
        watcher::Config::default(),
    ));
    until(&mut events, "InitDone").await;
    wait_for("the watch", || server.open_watches() == 1).await;

    // Only a Node changes: the Service watch learns the new resourceVersion from a bookmark.
    let rv = server.apply(node("node-a")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.drop_watches();
    server.apply(service("default", "b", json!({}))).unwrap();
    assert_eq!(
        ok_only(until(&mut events, "Apply default/b").await),
        ["Apply default/b"]
    );

    assert_eq!(
        lists(&server, "/api/v1/services").len(),
        1,
        "{:#?}",
        server.requests()
    );
    let watch = watches(&server, "/api/v1/services");
    assert_eq!(watch.len(), 2, "{watch:#?}");
    assert!(
        watch[1].contains(&format!("resourceVersion={rv}")),
        "resumed from the bookmark's resourceVersion {rv}: {watch:#?}"
    );
}

#[tokio::test]
async fn watcher_relists_after_a_missed_delete() {
    let server = FakeApiServer::start_local().unwrap();
    for name in ["a", "b", "c"] {
        server.apply(service("default", name, json!({}))).unwrap();
    }
    let mut events = drive(watcher(
        Api::<Service>::all(client(&server)),
        watcher::Config::default(),
    ));
    until(&mut events, "InitDone").await;
    wait_for("the watch", || server.open_watches() == 1).await;

    server
        .delete_missed("v1", "Service", Some("default"), "b")
        .unwrap();
    server.drop_watches();
    let relist = until(&mut events, "InitDone").await;
    assert!(
        relist
            .iter()
            .any(|e| e.contains("410") || e.contains("Expired")),
        "the resumed watch is told 410 Gone: {relist:#?}"
    );
    assert_eq!(
        ok_only(relist),
        [
            "Init",
            "InitApply default/a",
            "InitApply default/c",
            "InitDone"
        ]
    );
    assert_eq!(lists(&server, "/api/v1/services").len(), 2);
}

#[tokio::test]
async fn watcher_backs_off_until_the_server_is_reachable() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    server.set_unreachable(true);
    let mut events = drive(
        watcher(
            Api::<Service>::all(client(&server)),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    // Init comes before the list is even tried; the list then fails.
    assert_eq!(next_event(&mut events).await, "Init");
    let failed = next_event(&mut events).await;
    assert!(failed.starts_with("Err"), "{failed}");

    server.set_unreachable(false);
    assert_eq!(
        ok_only(until(&mut events, "InitDone").await),
        ["Init", "InitApply default/a", "InitDone"]
    );

    // Down mid-run: the open watch is cut and the watcher gets back on its own.
    wait_for("the watch", || server.open_watches() == 1).await;
    server.set_unreachable(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.apply(service("default", "b", json!({}))).unwrap();
    server.set_unreachable(false);
    assert_eq!(
        ok_only(until(&mut events, "Apply default/b").await),
        ["Apply default/b"]
    );
}

#[tokio::test]
async fn streaming_list_ends_its_initial_events_with_a_bookmark() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    server
        .apply(service(
            "default",
            "b",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();
    let config = watcher::Config::default()
        .labels(SELECTOR)
        .streaming_lists();
    let mut events = drive(watcher(Api::<Service>::all(client(&server)), config));
    assert_eq!(
        until(&mut events, "InitDone").await,
        ["Init", "InitApply default/a", "InitDone"]
    );
    server.apply(service("default", "c", json!({}))).unwrap();
    assert_eq!(
        until(&mut events, "Apply default/c").await,
        ["Apply default/c"]
    );
    assert!(lists(&server, "/api/v1/services").is_empty());
    let watch = watches(&server, "/api/v1/services");
    assert!(watch[0].contains("sendInitialEvents=true"), "{watch:#?}");
}

#[tokio::test]
async fn node_watch_with_a_field_selector() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(node("node-a")).unwrap();
    server.apply(node("node-b")).unwrap();
    let config = watcher::Config::default().fields("metadata.name=node-a");
    let mut events = drive(watcher(Api::<Node>::all(client(&server)), config));
    assert_eq!(
        until(&mut events, "InitDone").await,
        ["Init", "InitApply /node-a", "InitDone"]
    );
    let mut b = node("node-b");
    b["metadata"]["labels"] = json!({"x": "1"});
    server.apply(b).unwrap();
    let mut a = node("node-a");
    a["metadata"]["labels"] = json!({"x": "1"});
    server.apply(a).unwrap();
    assert_eq!(until(&mut events, "Apply /node-a").await, ["Apply /node-a"]);
}

#[tokio::test]
async fn missing_kind_is_404_until_served() {
    let server = FakeApiServer::start_local().unwrap();
    server
        .set_kind_missing("networking.k8s.io/v1", "ServiceCIDR", true)
        .unwrap();
    let mut events = drive(
        watcher(
            Api::<ServiceCIDR>::all(client(&server)),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    assert_eq!(next_event(&mut events).await, "Init");
    let failed = next_event(&mut events).await;
    assert!(
        failed.starts_with("Err: InitialListFailed") && failed.contains("code: 404"),
        "{failed}"
    );
    server
        .set_kind_missing("networking.k8s.io/v1", "ServiceCIDR", false)
        .unwrap();
    // Every retry starts with Init, until one lists (nothing).
    let retried = ok_only(until(&mut events, "InitDone").await);
    assert!(
        retried.iter().all(|e| e == "Init" || e == "InitDone"),
        "{retried:#?}"
    );
}

#[tokio::test]
async fn compaction_expires_watches_and_continue_tokens() {
    let server = FakeApiServer::start_local().unwrap();
    let first = server.apply(service("default", "a", json!({}))).unwrap();
    server.apply(service("default", "b", json!({}))).unwrap();
    let api = Api::<Service>::all(client(&server));
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.clone().expect("a continue token");
    assert_eq!(page.metadata.remaining_item_count, Some(1));
    let rest = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items[0].name_any(), "b");
    assert_eq!(
        rest.metadata.resource_version,
        page.metadata.resource_version
    );

    server.compact();
    match api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410: {other:?}"),
    }
    // A watch from before the compaction: HTTP 200 and one ERROR event, then the end.
    let mut stream = api
        .watch(&WatchParams::default(), &first)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected an ERROR event: {}", other.is_some()),
    }
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn get_by_name_latency_and_injected_errors() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    server.apply(node("node-a")).unwrap();
    let c = client(&server);
    let svc = Api::<Service>::namespaced(c.clone(), "default")
        .get("a")
        .await
        .unwrap();
    assert_eq!(svc.metadata.resource_version.as_deref(), Some("2"));
    assert!(svc.metadata.uid.is_some() && svc.metadata.creation_timestamp.is_some());
    assert_eq!(
        Api::<Node>::all(c.clone())
            .get("node-a")
            .await
            .unwrap()
            .name_any(),
        "node-a"
    );
    match Api::<Service>::namespaced(c.clone(), "default")
        .get("nope")
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected 404: {other:?}"),
    }

    server.set_latency(Duration::from_millis(300));
    let start = Instant::now();
    Api::<Service>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    server.set_latency(Duration::ZERO);

    server.set_failing(Some(500));
    match Api::<Service>::all(c.clone())
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 500),
        other => panic!("expected 500: {other:?}"),
    }
    server.set_failing(None);
    assert_eq!(
        Api::<Service>::all(c)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

/// `kubectl`, or `None` (skipped loudly) when it is not installed, except under `CI=true`,
/// where its absence fails the test.
fn kubectl(test: &str) -> Option<Kubectl> {
    let found = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: CI=true but kubectl is not installed");
        }
        eprintln!("\n*** SKIPPED: {test}: kubectl not found ***\n");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("kube-nft-kubectl-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Some(Kubectl { dir })
}

/// A kubectl with its own kubeconfig and cache directory, so it neither reads nor writes the
/// user's `~/.kube`.
struct Kubectl {
    dir: PathBuf,
}

impl Kubectl {
    fn command(&self, server: &FakeApiServer, args: &[&str]) -> Command {
        let kubeconfig = self.dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .arg("--request-timeout=10s")
            .args(args)
            .env_remove("KUBECONFIG");
        command
    }

    fn run(&self, server: &FakeApiServer, args: &[&str]) -> String {
        let out = self.command(server, args).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn endpoint_slice(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

#[test]
fn kubectl_gets() {
    let Some(kubectl) = kubectl("kubectl_gets") else {
        return;
    };
    let server = FakeApiServer::start_local().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    server
        .apply(service("kube-system", "dns", json!({})))
        .unwrap();
    server.apply(node("node-a")).unwrap();
    server.apply(endpoint_slice("default", "a-1")).unwrap();

    let list: Value =
        serde_json::from_str(&kubectl.run(&server, &["get", "services", "-A", "-o", "json"]))
            .unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "dns"]);
    assert_eq!(
        kubectl.run(&server, &["get", "nodes", "-o", "name"]),
        "node/node-a\n"
    );
    assert_eq!(
        kubectl.run(&server, &["get", "endpointslices", "-A", "-o", "name"]),
        "endpointslice.discovery.k8s.io/a-1\n"
    );
    // The default output is the server-side Table.
    let table = kubectl.run(&server, &["get", "nodes"]);
    assert!(
        table.starts_with("NAME ") && table.contains("node-a") && table.contains("Ready"),
        "{table}"
    );
    let table = kubectl.run(&server, &["get", "svc", "-A"]);
    assert!(
        table.contains("kube-system") && table.contains("80/TCP"),
        "{table}"
    );
    // Discovery went the legacy way and nothing was written to.
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /apis/discovery.k8s.io/v1")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.starts_with("GET ")),
        "{requests:#?}"
    );
}

#[test]
fn kubectl_watch_prints_changes() {
    let Some(kubectl) = kubectl("kubectl_watch_prints_changes") else {
        return;
    };
    let server = FakeApiServer::start_local().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    let mut child = kubectl
        .command(&server, &["get", "services", "-A", "--watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let opened = server.wait_until(WAIT, |s| s.open_watches() == 1);
    if opened {
        server.apply(service("default", "late", json!({}))).unwrap();
    }
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let printed = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("\"name\": \"late\"") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    assert!(
        opened,
        "kubectl never opened a watch: {:#?}",
        server.requests()
    );
    assert!(
        printed,
        "kubectl did not print the new Service; printed:\n{}",
        seen.join("\n")
    );
    assert!(seen.iter().any(|l| l.contains("\"name\": \"a\"")));
    // The server notices the client went away.
    assert!(server.wait_until(WAIT, |s| s.open_watches() == 0));
}

/// One request over a fresh connection (`Connection: close`), read to the end: the status
/// code, the lower-cased header block and the de-chunked body.
fn raw(server: &FakeApiServer, method: &str, target: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, mut body) = response.split_once("\r\n\r\n").unwrap();
    let head = head.to_lowercase();
    let code = head[9..12].parse().unwrap();
    if !head.contains("transfer-encoding: chunked") {
        return (code, head, body.to_owned());
    }
    let mut plain = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            return (code, head, plain);
        }
        plain.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn wire_format() {
    let server = FakeApiServer::start_local().unwrap();
    server.set_bookmark_interval(Duration::from_millis(300));
    server
        .apply(service("default", "a", json!({"app": "a"})))
        .unwrap();
    server.apply(service("default", "b", json!({}))).unwrap();

    let (code, head, body) = raw(&server, "GET", "/api/v1/services?limit=1");
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("ServiceList"), Some("v1"))
    );
    assert_eq!(list["metadata"]["resourceVersion"], "3");
    assert_eq!(list["metadata"]["remainingItemCount"], 1);
    assert!(list["metadata"]["continue"].is_string());
    assert_eq!(list["items"][0]["metadata"]["name"], "a");

    // A streaming list, with a periodic bookmark, ended by timeoutSeconds.
    let (code, head, body) = raw(
        &server,
        "GET",
        "/api/v1/namespaces/default/services?watch=1&labelSelector=app&allowWatchBookmarks=true\
         &sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=&timeoutSeconds=1",
    );
    assert_eq!(code, 200);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let events = lines(&body);
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "a");
    assert_eq!(
        events[1],
        json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {
            "resourceVersion": "3", "annotations": {"k8s.io/initial-events-end": "true"}}}})
    );
    assert!(events.len() >= 3, "{events:#?}");
    assert!(events[2..]
        .iter()
        .all(|e| e["type"] == "BOOKMARK" && e["object"]["metadata"].get("annotations").is_none()));

    // From a compacted resourceVersion: 200, one ERROR event with a 410 Status, the end.
    server.compact();
    let (code, _, body) = raw(
        &server,
        "GET",
        "/api/v1/services?watch=true&resourceVersion=2",
    );
    assert_eq!(code, 200);
    let events = lines(&body);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["kind"], "Status");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");

    // Errors are Status objects with their HTTP code.
    for (method, target, code, reason) in [
        (
            "GET",
            "/api/v1/namespaces/default/services/nope",
            404,
            "NotFound",
        ),
        ("GET", "/api/v1/nope", 404, "NotFound"),
        ("GET", "/api/v1/services?continue=zz", 400, "BadRequest"),
        (
            "GET",
            "/api/v1/services?watch=true&resourceVersion=x",
            400,
            "BadRequest",
        ),
        ("GET", "/api/v1/namespaces/default/nodes", 404, "NotFound"),
        (
            "GET",
            "/api/v1/services?labelSelector=a%20in%20(",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/services?fieldSelector=spec.nope%3D1",
            400,
            "BadRequest",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/services/a",
            405,
            "MethodNotAllowed",
        ),
    ] {
        let (got, _, body) = raw(&server, method, target);
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (got, status["kind"].as_str(), status["reason"].as_str()),
            (code, Some("Status"), Some(reason)),
            "{target}"
        );
        assert_eq!(status["code"], code);
    }
    let (_, _, body) = raw(&server, "GET", "/api/v1/namespaces/default/services/nope");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["message"], "services \"nope\" not found");
    assert_eq!(
        status["details"],
        json!({"name": "nope", "group": "", "kind": "services"})
    );

    // Discovery follows what is served.
    let groups = |server: &FakeApiServer| -> Vec<String> {
        let (_, _, body) = raw(server, "GET", "/apis");
        let list: Value = serde_json::from_str(&body).unwrap();
        list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(groups(&server), ["discovery.k8s.io", "networking.k8s.io"]);
    server
        .set_kind_missing("networking.k8s.io/v1", "ServiceCIDR", true)
        .unwrap();
    assert_eq!(groups(&server), ["discovery.k8s.io"]);
    assert_eq!(raw(&server, "GET", "/apis/networking.k8s.io/v1").0, 404);
    assert_eq!(
        raw(&server, "GET", "/apis/networking.k8s.io/v1/servicecidrs").0,
        404
    );
    let (_, _, body) = raw(&server, "GET", "/api/v1");
    let core: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["services", "endpoints", "nodes"]);
}

/// The daemon's tests bind the listener inside a network namespace and start the server from
/// the host: the server thread (in the host namespace) must accept on it, and clients inside
/// the namespace reach it at 127.0.0.1.
#[test]
fn serves_a_listener_bound_in_another_netns() {
    if !kube_nft_testkit::netns::can_run("serves_a_listener_bound_in_another_netns") {
        return;
    }
    let (listener_tx, listener_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let inside = std::thread::spawn(move || {
        kube_nft_testkit::netns::in_netns(move |_| {
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            listener_tx.send(listener).unwrap();
            started_rx.recv_timeout(WAIT).unwrap();
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream
                .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
    });
    let listener = listener_rx.recv_timeout(WAIT).unwrap();
    let server = FakeApiServer::start(listener).unwrap();
    started_tx.send(()).unwrap();
    let response = inside.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"gitVersion\""), "{response}");
    assert_eq!(server.requests(), ["GET /version"]);
}
