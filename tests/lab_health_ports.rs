//! Health-check NodePorts in the lab, probed as a cloud load balancer probes them: `kube-nft
//! run` programs node-a of a lab (`kube-nft-lab`: node-a, node-b, their pods, LAN clients) from
//! a folder of manifests holding a dual-stack LoadBalancer with `externalTrafficPolicy: Local`
//! and a `healthCheckNodePort`, and the LAN `client` sends `GET /` to node-a's addresses on that
//! port. Proved here: 200 with `localEndpoints: 1` on each family while node-a has a ready
//! endpoint; 503 with 0 while that endpoint is terminating (and traffic to the LoadBalancer IP
//! still reaches it, the graceful drain of KEP-1669) and once it is gone from the slices (and
//! that traffic is dropped); 200 again when it is back; the port closed (connection refused)
//! once the Service is deleted. A port another process holds is reported in
//! `kube_nft_health_check_ports_unbound` without disturbing the others, and bound once free.
//! Needs root and iproute2; under `CI=true` a machine that cannot run it fails the test.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kube_nft_compiler::model::{load, Source};
use kube_nft_lab::probe::DROP_TIMEOUT;
use kube_nft_lab::topology::default_lan_clients;
use kube_nft_lab::{Lab, Outcome, Probe, Proto, Topology};
use kube_nft_testkit::daemon::{http_get, metric, wait_until, Daemon, Response};
use kube_nft_testkit::netns::can_run;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_kube-nft");
/// node-a's flags for the lab (as `tests/lab.rs`).
const FLAGS: [&str; 4] = [
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.0.0.0/16,fd00:10::/32",
];
/// The Service's `healthCheckNodePort`, and that of a second Service whose port is taken.
const HC: u16 = 32100;
const HC_TAKEN: u16 = 32101;
/// node-a's InternalIPs: with the default `--nodeport-addresses primary`, where NodePorts and
/// so health checks are served.
const NODE_A: [&str; 2] = ["192.168.0.2", "fd00:192:168::2"];
/// The LoadBalancer's ingress IP.
const VIP: &str = "198.51.100.40";
/// Generous bound for a change the daemon programs within about a second (its minimum sync
/// period), in a debug build on a busy machine; and for its start.
const CONVERGE: Duration = Duration::from_secs(20);

/// What node-a's endpoint of the Service is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Local {
    Ready,
    Terminating,
    Gone,
}

fn node(name: &str, n: u8) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDRs": [format!("10.0.{n}.0/24"), format!("fd00:10:{n}::/64")]},
           "status": {"addresses": [
               {"type": "InternalIP", "address": format!("192.168.0.{}", n + 1)},
               {"type": "InternalIP", "address": format!("fd00:192:168::{}", n + 1)}]}})
}

fn lb(name: &str, n: u8, health_check_node_port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "lab", "name": name},
           "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                    "healthCheckNodePort": health_check_node_port,
                    "clusterIPs": [format!("172.30.0.{n}"), format!("fd00:30::{n}")],
                    "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                    "selector": {"app": name},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
                               "nodePort": 30000 + u16::from(n)}]},
           "status": {"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{n}")}]}}})
}

fn endpoint(addr: &str, pod: &str, node: &str, local: Local) -> Value {
    let ready = local == Local::Ready;
    json!({"addresses": [addr], "nodeName": node,
           "conditions": {"ready": ready, "serving": true, "terminating": !ready},
           "targetRef": {"kind": "Pod", "namespace": "lab", "name": pod}})
}

/// The slices of Service `name`: web-a1 on node-a as `local` says, web-b1 on node-b ready.
fn slices(name: &str, local: Local) -> Vec<Value> {
    [
        ("IPv4", "10.0.1.11", "10.0.2.11"),
        ("IPv6", "fd00:10:1::11", "fd00:10:2::11"),
    ]
    .into_iter()
    .map(|(family, a1, b1)| {
        let mut endpoints = vec![endpoint(b1, "web-b1", "node-b", Local::Ready)];
        if local != Local::Gone {
            endpoints.insert(0, endpoint(a1, "web-a1", "node-a", local));
        }
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"namespace": "lab", "name": format!("{name}-{family}"),
                                "labels": {"kubernetes.io/service-name": name}},
                   "addressType": family, "endpoints": endpoints,
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    })
    .collect()
}

/// The cluster: both nodes, `local-hc` with node-a's endpoint as `local` (none at all without
/// `service`), and `taken`, whose health-check port another process holds.
fn cluster(service: bool, local: Local) -> Vec<Value> {
    let mut objects = vec![node("node-a", 1), node("node-b", 2)];
    if service {
        objects.push(lb("local-hc", 40, HC));
        objects.extend(slices("local-hc", local));
    }
    objects.push(lb("taken", 41, HC_TAKEN));
    objects.extend(slices("taken", Local::Ready));
    objects
}

fn list(objects: &[Value]) -> String {
    serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))
        .expect("json")
}

/// Writes the manifests folder's one file atomically (write, then rename), as a config
/// management tool would.
fn write(dir: &Path, objects: &[Value]) {
    let tmp = dir.join(".cluster.json.tmp");
    std::fs::write(&tmp, list(objects)).expect("write");
    std::fs::rename(&tmp, dir.join("cluster.json")).expect("rename");
}

/// kube-proxy's body for `lab/local-hc`.
fn body(local_endpoints: usize) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"lab\",\n\t\t\"name\": \"local-hc\"\n\t}},\n\t\
         \"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": true\n}}"
    )
}

/// `GET /` from the LAN client to node-a's address of each family on `port`.
fn probe_both(lab: &Lab, port: u16) -> Vec<Result<Response, String>> {
    NODE_A
        .iter()
        .map(|ip| {
            let addr = SocketAddr::new(ip.parse().expect("ip"), port);
            lab.run_in("client", || http_get(addr, "/"))
                .unwrap_or_else(|e| Err(e.to_string()))
        })
        .collect()
}

/// Waits until both of node-a's addresses answer `port` with `status` and `body`; then checks
/// kube-proxy's headers.
fn answers(lab: &Lab, port: u16, status: u16, body: &str, what: &str) {
    let ok = |r: &Result<Response, String>| {
        r.as_ref()
            .is_ok_and(|r| r.status == status && r.body == body)
    };
    let mut last = Vec::new();
    let waited = wait_until(CONVERGE, Duration::from_millis(50), || {
        last = probe_both(lab, port);
        last.iter().all(ok)
    });
    assert!(
        waited.is_some(),
        "{what}: expected {status} with {body:?} on both families, got {last:#?}"
    );
    for reply in last.iter().flatten() {
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        let weight = if status == 200 { "1" } else { "0" };
        assert_eq!(
            reply.header("x-load-balancing-endpoint-weight"),
            Some(weight)
        );
    }
}

/// Waits until connecting to `port` on both of node-a's addresses is refused.
fn closed(lab: &Lab, port: u16, what: &str) {
    let refused =
        |r: &Result<Response, String>| r.as_ref().is_err_and(|e| e.contains("Connection refused"));
    let mut last = Vec::new();
    let waited = wait_until(CONVERGE, Duration::from_millis(50), || {
        last = probe_both(lab, port);
        last.iter().all(refused)
    });
    assert!(
        waited.is_some(),
        "{what}: port {port} still open: {last:#?}"
    );
}

/// One TCP connection from the LAN client to the LoadBalancer IP: who answered, if anyone.
fn vip(lab: &Lab, timeout: Duration) -> Outcome {
    let dst = SocketAddr::new(VIP.parse().expect("ip"), 80);
    lab.probe("client", &Probe::new(Proto::Tcp, dst).timeout(timeout))
}

/// `kube_nft_health_check_ports_unbound`, scraped inside node-a.
fn unbound(lab: &Lab) -> Option<f64> {
    let scrape = lab
        .run_in("node-a", || {
            http_get("127.0.0.1:10249".parse().expect("addr"), "/metrics")
        })
        .ok()?
        .ok()?;
    metric(&scrape.body, "kube_nft_health_check_ports_unbound")
}

#[test]
fn health_check_ports_follow_local_endpoints_from_the_lan() {
    if !can_run("health_check_ports_follow_local_endpoints_from_the_lan") {
        return;
    }
    let snapshot = load(&[Source {
        origin: "lab_health_ports".into(),
        text: list(&cluster(true, Local::Ready)),
    }])
    .expect("the cluster loads")
    .snapshot;
    let topology = Topology::from_snapshot(&snapshot, "node-a", &default_lan_clients());
    let lab = Lab::build(topology).expect("build the lab");
    let folder = tempfile::tempdir().expect("temp dir");
    write(folder.path(), &cluster(true, Local::Ready));
    // Another process holds `taken`'s port on node-a's IPv4 address.
    let taken: SocketAddr = SocketAddr::new(NODE_A[0].parse().expect("ip"), HC_TAKEN);
    let squatter = lab
        .run_in("node-a", || std::net::TcpListener::bind(taken))
        .expect("node-a")
        .expect("hold the port");

    let dir = folder.path().to_str().expect("utf-8 path");
    let mut args = vec![
        "--manifests",
        dir,
        "--metrics-bind-address",
        "127.0.0.1:10249",
    ];
    args.extend(FLAGS);
    let mut daemon = Daemon::spawn_with(lab.command("node-a", BIN).expect("node-a"), &args);

    // Ready on node-a: healthy on both families, and the LoadBalancer IP reaches that pod.
    answers(&lab, HC, 200, &body(1), "ready");
    match vip(&lab, Duration::from_secs(3)) {
        Outcome::Reply(r) => assert_eq!(r.host, "web-a1", "eTP Local keeps to node-a"),
        other => panic!("the LoadBalancer IP: {other}"),
    }
    // The taken port: reported, never fatal; its IPv6 listener and the other Service serve.
    assert_eq!(unbound(&lab), Some(1.0));
    daemon
        .wait_log("cannot listen on a health-check node port", 1, CONVERGE)
        .expect("the bind failure is logged");
    let v6 = SocketAddr::new(NODE_A[1].parse().expect("ip"), HC_TAKEN);
    let reply = lab
        .run_in("client", || http_get(v6, "/"))
        .expect("client")
        .expect("IPv6 health check of `taken`");
    assert_eq!(reply.status, 200, "{reply:?}");

    // Terminating: 503 with no local endpoint, while traffic still reaches the pod (it drains).
    drop(squatter);
    write(folder.path(), &cluster(true, Local::Terminating));
    answers(&lab, HC, 503, &body(0), "terminating");
    match vip(&lab, Duration::from_secs(3)) {
        Outcome::Reply(r) => assert_eq!(r.host, "web-a1", "a terminating pod still serves"),
        other => panic!("the LoadBalancer IP while terminating: {other}"),
    }
    // That round committed with the port free: bound now.
    assert!(
        wait_until(CONVERGE, Duration::from_millis(50), || unbound(&lab)
            == Some(0.0))
        .is_some(),
        "the freed port is bound at the next sync"
    );
    let reply = lab
        .run_in("client", || http_get(taken, "/"))
        .expect("client")
        .expect("IPv4 health check of `taken`");
    assert_eq!(reply.status, 200, "{reply:?}");

    // Gone from the slices: 503, and the LoadBalancer IP drops at node-a.
    // (The health check reads as while terminating, so the data plane tells when it is in.)
    write(folder.path(), &cluster(true, Local::Gone));
    let dropped = wait_until(CONVERGE, Duration::from_millis(50), || {
        vip(&lab, DROP_TIMEOUT) == Outcome::Timeout
    });
    assert!(
        dropped.is_some(),
        "no local endpoint: the LoadBalancer IP drops at node-a"
    );
    answers(&lab, HC, 503, &body(0), "gone");

    // Back: 200 again.
    write(folder.path(), &cluster(true, Local::Ready));
    answers(&lab, HC, 200, &body(1), "back");

    // The Service is deleted: nothing listens on its port any more.
    write(folder.path(), &cluster(false, Local::Ready));
    closed(&lab, HC, "deleted");
    assert!(
        daemon.try_wait().is_none(),
        "the daemon runs on:\n{}",
        daemon.log()
    );
}
