//! The health-check NodePorts over real sockets on loopback: listeners opened, answering as
//! kube-proxy's (status, headers, body, any path and method), updated in place, following the
//! proxy's health at request time, moved and closed; a port another process holds is reported
//! (log, `kube_nft_health_check_ports_unbound`) without stopping the others, and bound once it
//! is free. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use kube_nft_compiler::incremental::HealthCheck;
use kube_nft_compiler::ir::Family;
use kube_nft_compiler::normalize::Key;
use kube_nft_runtime::serve::service_health::Answer;
use kube_nft_runtime::serve::{Metrics, ProxyHealth, ServiceHealth, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const V4: &str = "127.0.0.1";
const V6: &str = "::1";

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One request on a fresh connection (`Connection: close`), or the connect error.
async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(WAIT, exchange).await.expect("reply in time")?;
    let text = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

async fn get(addr: SocketAddr) -> Reply {
    request(addr, "GET", "/")
        .await
        .unwrap_or_else(|e| panic!("GET {addr}: {e}"))
}

/// Waits until nothing listens on `addr` (closing is asynchronous: the listener's task is told
/// to stop, and drops the socket when the runtime next runs it).
async fn refused(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ if Instant::now() >= deadline => panic!("{addr} still accepts connections"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A keep-alive connection that has had one answer (read up to the end of its body).
async fn kept_alive(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = |raw: &[u8]| {
        let text = String::from_utf8_lossy(raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>())
            })
            .and_then(Result::ok);
        length.is_some_and(|n| body.len() >= n)
    };
    while !complete(&raw) {
        let n = timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    assert!(
        raw.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    stream
}

/// A port free on both loopback addresses right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let v4 = std::net::TcpListener::bind((V4, 0)).expect("bind an ephemeral port");
        let port = v4.local_addr().expect("local addr").port();
        if !has_v6() || std::net::TcpListener::bind((V6, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both loopback addresses");
}

fn has_v6() -> bool {
    std::net::TcpListener::bind((V6, 0)).is_ok()
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// A port, its Service's name, the local endpoints per family.
type Entry<'a> = (u16, &'a str, &'a [(Family, usize)]);

fn ports(entries: &[Entry<'_>]) -> BTreeMap<u16, HealthCheck> {
    entries
        .iter()
        .map(|(port, name, counts)| {
            let check = HealthCheck {
                service: Key::new("shop", *name),
                local_endpoints: counts.iter().copied().collect(),
            };
            (*port, check)
        })
        .collect()
}

fn synced_health(sync_period: Duration) -> ProxyHealth {
    let health = ProxyHealth::new(sync_period, &[Family::Ip, Family::Ip6], Timestamp::now());
    health.updated(Timestamp::now());
    health
}

fn unbound_gauge(metrics: &Metrics) -> String {
    let text = metrics.encode().expect("scrape");
    text.lines()
        .find_map(|l| l.strip_prefix("kube_nft_health_check_ports_unbound "))
        .expect("the gauge is exposed")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_open_answer_update_and_close() {
    let v6 = has_v6();
    let loopbacks: Vec<IpAddr> = [V4, V6]
        .iter()
        .filter(|ip| v6 || **ip == V4)
        .map(|ip| ip.parse().expect("ip"))
        .collect();
    // A 50 ms sync period: a change queued 100 ms ago is overdue.
    let health = synced_health(Duration::from_millis(50));
    let metrics = Metrics::new(&[Family::Ip, Family::Ip6], "v");
    let mut service_health = ServiceHealth::new(health.clone(), metrics.clone());
    let (p1, p2) = (free_port(), free_port());

    service_health.update_at(
        &ports(&[(p1, "web", &[(Family::Ip, 2), (Family::Ip6, 1)])]),
        &loopbacks,
    );
    assert_eq!(service_health.listening().len(), loopbacks.len());
    assert!(service_health.unbound().is_empty());

    let reply = get(at(V4, p1)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\
         \"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    assert_eq!(reply.headers["x-load-balancing-endpoint-weight"], "2");
    // Any path, any method: kube-proxy's handler is the server's only one.
    let other = request(at(V4, p1), "POST", "/some/path?x=1")
        .await
        .expect("POST");
    assert_eq!((other.status, &other.body), (200, &reply.body));
    if v6 {
        // Each family's listener counts that family's endpoints.
        let reply = get(at(V6, p1)).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.contains("\"localEndpoints\": 1,"),
            "{}",
            reply.body
        );
    }

    // The IPv4 endpoint goes: 503 there, the same listener.
    service_health.update_at(
        &ports(&[(p1, "web", &[(Family::Ip, 0), (Family::Ip6, 1)])]),
        &loopbacks,
    );
    let reply = get(at(V4, p1)).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("\"localEndpoints\": 0,"),
        "{}",
        reply.body
    );
    assert_eq!(reply.headers["x-load-balancing-endpoint-weight"], "0");

    // The proxy's health is read at each request: an overdue change makes every check 503.
    service_health.update_at(&ports(&[(p1, "web", &[(Family::Ip, 3)])]), &loopbacks);
    assert_eq!(get(at(V4, p1)).await.status, 200);
    health.queued(Timestamp::now());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reply = get(at(V4, p1)).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply
            .body
            .ends_with("\"localEndpoints\": 3,\n\t\"serviceProxyHealthy\": false\n}"),
        "{}",
        reply.body
    );
    health.updated(Timestamp::now());
    assert_eq!(get(at(V4, p1)).await.status, 200);
    if v6 {
        // The Service has no IPv6 ClusterIP any more: no IPv6 listener.
        refused(at(V6, p1)).await;
    }

    // The port moves (a new healthCheckNodePort): the old one closes.
    service_health.update_at(&ports(&[(p2, "web", &[(Family::Ip, 3)])]), &loopbacks);
    refused(at(V4, p1)).await;
    assert_eq!(get(at(V4, p2)).await.status, 200);
    // Another Service takes the port over: the same listener answers for it.
    service_health.update_at(&ports(&[(p2, "db", &[(Family::Ip, 1)])]), &loopbacks);
    assert!(get(at(V4, p2)).await.body.contains("\"name\": \"db\""));
    assert_eq!(
        service_health.listening(),
        BTreeMap::from([(
            at(V4, p2),
            Answer {
                service: Key::new("shop", "db"),
                local_endpoints: 1
            }
        )])
    );

    // The Service goes: nothing listens, and a load balancer's keep-alive connection is closed
    // too (it must not go on reading the last answer).
    let mut connection = kept_alive(at(V4, p2)).await;
    service_health.update_at(&BTreeMap::new(), &loopbacks);
    refused(at(V4, p2)).await;
    let mut rest = Vec::new();
    let eof = timeout(WAIT, connection.read_to_end(&mut rest)).await;
    assert!(matches!(eof, Ok(Ok(0))), "{eof:?} {rest:?}");
    assert!(service_health.listening().is_empty());
    assert_eq!(unbound_gauge(&metrics), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_reported_and_retried() {
    let health = synced_health(Duration::from_secs(30));
    let metrics = Metrics::new(&[Family::Ip], "v");
    let mut service_health = ServiceHealth::new(health, metrics.clone());
    let loopback: Vec<IpAddr> = vec![V4.parse().expect("ip")];
    let (taken, free) = (free_port(), free_port());
    let squatter = std::net::TcpListener::bind((V4, taken)).expect("take the port");
    let wanted = ports(&[
        (taken, "web", &[(Family::Ip, 1)]),
        (free, "db", &[(Family::Ip, 1)]),
    ]);

    service_health.update_at(&wanted, &loopback);
    assert_eq!(
        service_health.unbound().keys().collect::<Vec<_>>(),
        [&at(V4, taken)]
    );
    assert_eq!(unbound_gauge(&metrics), "1");
    // The other Service is served all the same.
    assert_eq!(get(at(V4, free)).await.status, 200);

    // Retried at the next update; once the port is free, it is bound.
    service_health.update_at(&wanted, &loopback);
    assert_eq!(unbound_gauge(&metrics), "1");
    drop(squatter);
    service_health.update_at(&wanted, &loopback);
    assert!(service_health.unbound().is_empty());
    assert_eq!(unbound_gauge(&metrics), "0");
    let reply = get(at(V4, taken)).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("\"name\": \"web\""));

    // Dropping the manager closes everything.
    drop(service_health);
    refused(at(V4, taken)).await;
    refused(at(V4, free)).await;
}
