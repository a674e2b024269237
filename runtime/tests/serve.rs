//! The daemon's HTTP servers over real sockets: each binds 127.0.0.1:0, serves, and answers a
//! tiny HTTP/1.1 client (a `TcpStream`, one request per connection) on every path, checked by
//! status, headers and body; the `/metrics` body is parsed line by line. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use kube_nft_compiler::ir::Family;
use kube_nft_runtime::serve::{
    http::{configz_document, SHUTDOWN_GRACE},
    serve_healthz, serve_metrics, Metrics, ProxyHealth, Timestamp,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One request on a fresh connection; the server closes it after the reply.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = timeout(WAIT, exchange).await.expect("reply in time");
    let text = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    // Bodies are sent with a Content-Length (never chunked), which must match.
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .expect("content-length");
    if method != "HEAD" {
        assert_eq!(body.len(), length, "body of {path}");
    }
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), kube_nft_runtime::serve::ServeError>>,
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        let result = timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .expect("server task");
        assert!(result.is_ok(), "{result:?}");
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

async fn healthz_server(health: &ProxyHealth, metrics: &Metrics) -> Server {
    let (listener, addr) = listener().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_healthz(
        listener,
        health.clone(),
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server { addr, stop, task }
}

async fn metrics_server(metrics: &Metrics, configz: String) -> Server {
    let (listener, addr) = listener().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_metrics(
        listener,
        metrics.clone(),
        configz,
        async move {
            let _ = stopped.await;
        },
    ));
    Server { addr, stop, task }
}

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).expect("JSON body")
}

fn assert_headers(reply: &Reply, content_type: &str) {
    assert_eq!(
        reply.headers.get("content-type").map(String::as_str),
        Some(content_type)
    );
    assert_eq!(
        reply
            .headers
            .get("x-content-type-options")
            .map(String::as_str),
        Some("nosniff")
    );
}

/// A Go-formatted time (`2024-02-29T12:00:00.5Z`): RFC 3339, UTC, fraction without trailing
/// zeros.
fn assert_go_time(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is a string"));
    let (date_time, zone) = s.split_at(s.len() - 1);
    assert_eq!(zone, "Z", "{s}");
    let (whole, fraction) = date_time.split_once('.').unwrap_or((date_time, ""));
    assert_eq!(whole.len(), 19, "{s}");
    let b = whole.as_bytes();
    assert!(
        b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':',
        "{s}"
    );
    assert!(fraction.len() <= 9 && !fraction.ends_with('0'), "{s}");
    assert!(fraction.bytes().all(|c| c.is_ascii_digit()), "{s}");
}

#[tokio::test]
async fn healthz_server_answers_like_kube_proxy() {
    let health = ProxyHealth::new(
        Duration::from_secs(30),
        &[Family::Ip, Family::Ip6],
        Timestamp::now(),
    );
    let metrics = Metrics::new(&[Family::Ip, Family::Ip6], "v0.0.0-test");
    health.set_node_eligible(true);
    let server = healthz_server(&health, &metrics).await;

    // Starting up: /healthz 503 until the first sync, /livez 200.
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, 503);
    assert_headers(&reply, "application/json");
    let body = json(&reply);
    assert_eq!(body["lastUpdated"], "0001-01-01T00:00:00Z");
    assert_go_time(&body["currentTime"]);
    assert_eq!(body["nodeEligible"], true);
    assert_eq!(body["healthy"], false);
    assert!(body.get("status").is_none());

    let reply = get(server.addr, "/livez").await;
    assert_eq!(reply.status, 200);
    assert_headers(&reply, "application/json");
    let body = json(&reply);
    assert_eq!(body["healthy"], true);
    assert!(body.get("nodeEligible").is_none());

    // Synced.
    health.updated(Timestamp::now());
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, 200);
    let body = json(&reply);
    assert_eq!(body["healthy"], true);
    assert_eq!(body["nodeEligible"], true);
    // A 200 reports "now" as lastUpdated, as kube-proxy does.
    assert_eq!(body["lastUpdated"], body["currentTime"]);
    for family in ["IPv4", "IPv6"] {
        assert_eq!(body["status"][family]["healthy"], true);
        assert_go_time(&body["status"][family]["lastUpdated"]);
    }
    let keys: Vec<&str> = body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys.len(),
        5,
        "lastUpdated, currentTime, nodeEligible, healthy, status: {keys:?}"
    );
    // Field order as Go's encoding/json writes kube-proxy's struct.
    let order: Vec<usize> = [
        "lastUpdated",
        "currentTime",
        "nodeEligible",
        "healthy",
        "status",
    ]
    .iter()
    .map(|k| reply.body.find(&format!("\"{k}\"")).expect("field"))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", reply.body);

    // Any method, as Go's handlers ignore it.
    assert_eq!(request(server.addr, "POST", "/livez").await.status, 200);
    let head = request(server.addr, "HEAD", "/healthz").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    // A draining node: /healthz 503, /livez still 200.
    health.set_node_eligible(false);
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, 503);
    let body = json(&reply);
    assert_eq!(body["nodeEligible"], false);
    assert_eq!(body["healthy"], true);
    assert_eq!(get(server.addr, "/livez").await.status, 200);

    // Exact paths only; Go's 404 elsewhere.
    for path in ["/", "/healthz/", "/metrics", "/livez/x"] {
        let reply = get(server.addr, path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_headers(&reply, "text/plain; charset=utf-8");
        assert_eq!(reply.body, "404 page not found\n");
    }

    // Every answer was counted by code.
    let text = metrics.encode().expect("encode");
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    };
    assert_eq!(
        value("kubeproxy_proxy_healthz_total{code=\"200\"}").as_deref(),
        Some("2")
    );
    assert_eq!(
        value("kubeproxy_proxy_healthz_total{code=\"503\"}").as_deref(),
        Some("2")
    );
    assert_eq!(
        value("kubeproxy_proxy_livez_total{code=\"200\"}").as_deref(),
        Some("3")
    );
    assert_eq!(
        value("kubeproxy_proxy_livez_total{code=\"503\"}").as_deref(),
        Some("0")
    );

    server.stop().await;
}

#[tokio::test]
async fn metrics_server_serves_every_path() {
    let metrics = Metrics::new(&[Family::Ip, Family::Ip6], "v0.0.0-test");
    metrics.sync_failed();
    let config = configz_document(serde_json::json!({"mode": "nftables", "syncPeriod": "30s"}));
    let server = metrics_server(&metrics, config.clone()).await;

    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_headers(&reply, "text/plain; version=0.0.4; charset=utf-8");
    let families = parse_exposition(&reply.body);
    for (name, kind) in [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        (
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_network_programming_duration_seconds",
            "histogram",
        ),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        (
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "gauge",
        ),
        ("kubeproxy_proxy_healthz_total", "counter"),
        ("kubeproxy_proxy_livez_total", "counter"),
        (
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "counter",
        ),
        ("kube_nft_transaction_operations", "histogram"),
        ("kube_nft_transaction_bytes", "histogram"),
        ("kube_nft_syncs_total", "counter"),
        ("kube_nft_drift_repairs_total", "counter"),
        ("kube_nft_conntrack_reconcile_errors_total", "counter"),
        ("kube_nft_objects_with_diagnostics", "gauge"),
        ("kube_nft_watch_restarts_total", "counter"),
        ("kube_nft_watch_relists_total", "counter"),
        ("kube_nft_health_check_ports_unbound", "gauge"),
        ("kube_nft_build_info", "gauge"),
    ] {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(family.kind, kind, "{name}");
        assert!(family.samples > 0, "{name} has samples");
    }
    assert_eq!(families.len(), 27, "{:?}", families.keys());
    assert!(reply.body.contains(
        "\nkubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"} 1\n"
    ));
    assert!(reply
        .body
        .contains("\nkube_nft_build_info{version=\"v0.0.0-test\"} 1\n"));

    let reply = get(server.addr, "/healthz").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    assert_headers(&reply, "text/plain; charset=utf-8");
    let reply = get(server.addr, "/healthz?verbose").await;
    assert_eq!(reply.body, "[+]ping ok\nhealthz check passed\n");
    assert_eq!(get(server.addr, "/healthz/ping").await.body, "ok");

    let reply = get(server.addr, "/proxyMode").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "nftables"));
    assert_headers(&reply, "text/plain; charset=utf-8");

    let reply = get(server.addr, "/configz").await;
    assert_eq!(reply.status, 200);
    assert_headers(&reply, "application/json");
    assert_eq!(reply.body, config);
    assert_eq!(json(&reply)["kubeproxy.config.k8s.io"]["mode"], "nftables");

    for path in ["/", "/livez", "/metrics/", "/proxymode"] {
        let reply = get(server.addr, path).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (404, "404 page not found\n"),
            "{path}"
        );
    }

    server.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_or_half_sent_requests() {
    let metrics = Metrics::new(&[Family::Ip], "v");
    let server = metrics_server(&metrics, "{}".to_owned()).await;
    // Clients that connected and never sent (all of) a request must not hold the shutdown up
    // beyond the grace period.
    let idle = timeout(WAIT, TcpStream::connect(server.addr))
        .await
        .expect("connect in time")
        .expect("connect");
    assert_eq!(get(server.addr, "/proxyMode").await.status, 200);
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    // Let the server accept both connections, then stop it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = std::time::Instant::now();
    server.stop().await;
    let took = asked.elapsed();
    assert!(
        took < SHUTDOWN_GRACE + Duration::from_secs(2),
        "stopped after {took:?}"
    );
    drop((idle, partial));
}

/// One metric family of an exposition.
struct ParsedFamily {
    kind: String,
    samples: usize,
}

/// Parses the Prometheus text format 0.0.4 strictly enough to catch what a scraper rejects:
/// every family has exactly one `# HELP` then one `# TYPE` before its samples, every sample
/// line is `name{label="value",…} value` with a name of the current family (plus `_bucket`,
/// `_sum`, `_count` for histograms), histogram buckets carry `le`, and values are numbers.
fn parse_exposition(text: &str) -> BTreeMap<String, ParsedFamily> {
    let mut families: BTreeMap<String, ParsedFamily> = BTreeMap::new();
    let mut helped: Option<String> = None;
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "{line}");
            assert!(valid_name(name), "{line}");
            assert!(!families.contains_key(name), "{name} described twice");
            helped = Some(name.to_owned());
            current = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(
                helped.as_deref(),
                Some(name),
                "TYPE follows its HELP: {line}"
            );
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            let previous = families.insert(
                name.to_owned(),
                ParsedFamily {
                    kind: kind.to_owned(),
                    samples: 0,
                },
            );
            assert!(previous.is_none(), "{name} typed twice");
            current = Some(name.to_owned());
            helped = None;
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let family_name = current
                .clone()
                .unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            let family = families.get_mut(&family_name).expect("current family");
            let (name, labels, value) = parse_sample(line);
            let suffix = name
                .strip_prefix(family_name.as_str())
                .unwrap_or_else(|| panic!("{name} outside {family_name}"));
            let allowed: &[&str] = if family.kind == "histogram" {
                &["_bucket", "_sum", "_count"]
            } else {
                &[""]
            };
            assert!(allowed.contains(&suffix), "{line}");
            assert_eq!(
                suffix == "_bucket",
                labels.iter().any(|(k, _)| k == "le"),
                "le on buckets only: {line}"
            );
            assert!(
                value == "+Inf"
                    || value == "-Inf"
                    || value == "NaN"
                    || value.parse::<f64>().is_ok(),
                "{line}"
            );
            family.samples += 1;
        }
    }
    families
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",…} value` → (name, labels, value).
fn parse_sample(line: &str) -> (&str, Vec<(String, String)>, &str) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "{line}");
    let bytes = line.as_bytes();
    let mut i = name_end;
    let mut labels = Vec::new();
    if bytes[i] == b'{' {
        i += 1;
        while bytes.get(i) != Some(&b'}') {
            let eq = line[i..]
                .find("=\"")
                .unwrap_or_else(|| panic!("key=\"value\": {line}"))
                + i;
            let key = &line[i..eq];
            assert!(valid_name(key), "label name {key:?} in {line}");
            i = eq + 2;
            let mut value = String::new();
            loop {
                match bytes.get(i) {
                    Some(b'\\') => {
                        value.push(match bytes.get(i + 1) {
                            Some(b'n') => '\n',
                            Some(b'\\') => '\\',
                            Some(b'"') => '"',
                            _ => panic!("bad escape in {line}"),
                        });
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => {
                        let c = line[i..].chars().next().expect("a char");
                        value.push(c);
                        i += c.len_utf8();
                    }
                    None => panic!("unterminated label value: {line}"),
                }
            }
            labels.push((key.to_owned(), value));
            i += 1;
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => panic!("expected , or }} in {line}"),
            }
        }
        i += 1;
    }
    let value = line[i..]
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no value: {line}"));
    assert!(!value.contains(' '), "one value, no timestamp: {line}");
    (name, labels, value)
}
