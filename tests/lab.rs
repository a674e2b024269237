//! Real traffic through real rules: every Service feature proved with packets. Each test builds
//! a lab (`kube-nft-lab`: network namespaces for node-a, node-b, their pods and LAN clients,
//! echo servers on every endpoint) from `testdata/lab/cluster.yaml`, programs node-a with the
//! binary exactly as an operator would (`kube-nft compile -f` inside node-a's namespace, the
//! netlink path), then sends TCP connections and UDP datagrams and asserts which endpoint
//! answered and which source address it saw. Servers answer with their pod name, so a wrong
//! endpoint is visible, and `Refused` (a reject) is told apart from `Timeout` (a drop).
//!
//! Clients: `pod-client` (10.0.1.250 / fd00:10:1::fa, a pod on node-a), `client`
//! (203.0.113.10-19 / 2001:db8:1::10-1f, on the LAN, inside the LoadBalancer source range),
//! `stranger` (192.0.2.10, outside it), node-a itself, and pods that are endpoints (hairpin).
//! Needs root and iproute2; under `CI=true` a machine that cannot run it fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube_nft_compiler::model::{load, Snapshot, Source};
use kube_nft_compiler::trace::{self, Env, Origin, Packet};
use kube_nft_compiler::{compile, Config};
use kube_nft_lab::probe::DROP_TIMEOUT;
use kube_nft_lab::topology::{default_lan_clients, pod_client};
use kube_nft_lab::{Lab, Outcome, Probe, Proto, Reply, Topology};
use kube_nft_testkit::netns::can_run;

use common::*;

/// node-a's flags for the lab cluster.
const FLAGS: [&str; 4] = [
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.0.0.0/16,fd00:10::/32",
];

/// A lab built from a cluster file, node-a programmed from it.
struct Scene {
    lab: Lab,
    /// The cluster file the lab was built from, loaded.
    snapshot: Snapshot,
}

impl Scene {
    /// The lab for `file` with node-a programmed with `FLAGS` plus `extra`; `None` where the
    /// lab cannot run (never under `CI=true`, where `can_run` fails the test instead).
    fn new(test: &str, file: &Path, extra: &[&str]) -> Option<Scene> {
        let scene = Scene::build(test, file)?;
        scene.program(file, extra);
        Some(scene)
    }

    /// The lab with the pods, nodes and clients of `file`, nothing programmed yet.
    fn build(test: &str, file: &Path) -> Option<Scene> {
        Scene::build_with(test, file, None)
    }

    /// [`Scene::build`], with node-a's pods on a bridge called `pod_bridge` if given.
    fn build_with(test: &str, file: &Path, pod_bridge: Option<&str>) -> Option<Scene> {
        if !can_run(test) {
            return None;
        }
        let text = std::fs::read_to_string(file).expect("read cluster file");
        let snapshot = load(&[Source {
            origin: file.display().to_string(),
            text,
        }])
        .expect("cluster file loads")
        .snapshot;
        let mut clients = default_lan_clients();
        clients.extend(pod_client(&snapshot, "node-a"));
        let mut topology = Topology::from_snapshot(&snapshot, "node-a", &clients);
        topology.pod_bridge = pod_bridge.map(str::to_owned);
        let lab = Lab::build(topology).unwrap_or_else(|e| panic!("{test}: build the lab: {e}"));
        Some(Scene { lab, snapshot })
    }

    /// `kube-nft compile -f FILE FLAGS… EXTRA…` inside node-a; panics unless it succeeds
    /// without a warning.
    fn program(&self, file: &Path, extra: &[&str]) -> String {
        let stderr = self.program_with_warnings(file, extra);
        assert!(
            !stderr.contains("warning"),
            "unexpected warnings:\n{stderr}"
        );
        stderr
    }

    /// [`Scene::program`] for input that has diagnostics: returns stderr, warnings included.
    fn program_with_warnings(&self, file: &Path, extra: &[&str]) -> String {
        let out = self
            .lab
            .command("node-a", env!("CARGO_BIN_EXE_kube-nft"))
            .expect("node-a")
            .arg("compile")
            .arg("-f")
            .arg(file)
            .args(FLAGS)
            .args(extra)
            .output()
            .expect("run kube-nft compile -f");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kube-nft compile -f failed:\n{stderr}"
        );
        stderr
    }

    fn probe(&self, from: &str, probe: Probe) -> Outcome {
        self.lab.probe(from, &probe)
    }

    /// `n` probes that must all be answered.
    fn replies(&self, from: &str, probe: Probe, n: usize) -> Vec<Reply> {
        replies(&self.lab, from, probe, n)
    }

    fn assert_masqueraded(&self, replies: &[Reply], what: &str) {
        assert_masqueraded(&self.lab, replies, what);
    }

    fn addr(&self, host: &str, v4: bool) -> IpAddr {
        host_addr(&self.lab, host, v4)
    }
}

// --- ClusterIP ------------------------------------------------------------------------------

#[test]
fn clusterip_balances_tcp_and_udp_over_every_endpoint() {
    let Some(s) = Scene::new("clusterip_balances", &cluster(), &[]) else {
        return;
    };
    // From a pod: every endpoint, the target port, the pod's own address (no masquerade).
    let r = s.replies("pod-client", tcp("172.30.0.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    assert_eq!(ports(&r), BTreeSet::from([8080]));
    assert_eq!(sources(&r), BTreeSet::from([s.addr("pod-client", true)]));
    let r = s.replies("pod-client", udp("172.30.0.10:53"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    assert_eq!(ports(&r), BTreeSet::from([5353]));
    assert_eq!(sources(&r), BTreeSet::from([s.addr("pod-client", true)]));
    // From outside the cluster CIDR: masqueraded to a node address.
    let r = s.replies("client", tcp("172.30.0.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    s.assert_masqueraded(&r, "client to a ClusterIP over TCP");
    let r = s.replies("client", udp("172.30.0.10:53"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    s.assert_masqueraded(&r, "client to a ClusterIP over UDP");
}

#[test]
fn clusterip_from_the_node_itself() {
    let Some(s) = Scene::new("clusterip_from_the_node", &cluster(), &[]) else {
        return;
    };
    for probe in [tcp("172.30.0.10:80"), udp("172.30.0.10:53")] {
        let r = s.replies("node-a", probe, DRAWS);
        assert_eq!(hosts(&r), set(&WEB), "{probe:?}");
        // A host connection carries node-a's own address, masqueraded or not.
        assert_eq!(
            sources(&r),
            BTreeSet::from([s.addr("node-a", true)]),
            "{probe:?}"
        );
    }
}

#[test]
fn multi_port_service_maps_each_port_to_its_target_port() {
    let Some(s) = Scene::new("multi_port", &cluster(), &[]) else {
        return;
    };
    let r = s.replies("pod-client", tcp("172.30.0.11:80"), 5);
    assert_eq!(
        (hosts(&r), ports(&r)),
        (set(&["web-a1"]), BTreeSet::from([8080]))
    );
    let r = s.replies("pod-client", tcp("172.30.0.11:443"), 5);
    assert_eq!(
        (hosts(&r), ports(&r)),
        (set(&["web-a1"]), BTreeSet::from([8443]))
    );
}

#[test]
fn selectorless_service_uses_legacy_endpoints() {
    let Some(s) = Scene::new("selectorless", &cluster(), &[]) else {
        return;
    };
    let r = s.replies("pod-client", tcp("172.30.0.12:80"), 40);
    assert_eq!(hosts(&r), set(&["web-a1", "web-b1"]));
    assert_eq!(ports(&r), BTreeSet::from([9090]));
}

#[test]
fn no_endpoints_and_unknown_ports_are_refused_not_timed_out() {
    let Some(s) = Scene::new("refused", &cluster(), &[]) else {
        return;
    };
    // A Service without endpoints, TCP and UDP, from a pod, from outside and from the node; an
    // unknown port on an active ClusterIP. Refused is the ICMP port-unreachable of `reject`,
    // a drop would be a timeout.
    let probes = [
        tcp("172.30.0.20:80"),
        udp("172.30.0.20:53"),
        tcp("172.30.0.10:9999"),
        udp("172.30.0.10:9999"),
    ];
    for from in ["pod-client", "client", "node-a"] {
        for probe in probes {
            let outcome = s.probe(from, probe);
            if from == "node-a" && probe.proto == Proto::Udp {
                // The node's own datagram is rejected in the output hook, before it leaves:
                // the kernel fails the send itself with EPERM, faster still than an ICMP.
                assert_eq!(
                    outcome,
                    Outcome::Failed("Operation not permitted (os error 1)".into()),
                    "{from} -> {probe:?}"
                );
            } else {
                assert_eq!(outcome, Outcome::Refused, "{from} -> {probe:?}");
            }
        }
    }
}

// --- NodePort, externalIP, LoadBalancer -----------------------------------------------------

#[test]
fn nodeport_and_external_ip_reach_every_endpoint_masqueraded() {
    let Some(s) = Scene::new("nodeport_external_ip", &cluster(), &[]) else {
        return;
    };
    for dst in ["192.168.0.2:30080", "198.51.100.20:80"] {
        let r = s.replies("client", tcp(dst), DRAWS);
        assert_eq!(hosts(&r), set(&WEB), "{dst}");
        assert_eq!(ports(&r), BTreeSet::from([8080]), "{dst}");
        // externalTrafficPolicy Cluster: the source is a node's.
        s.assert_masqueraded(&r, dst);
    }
    // A port that is no NodePort is not ours: nothing listens on node-a, the kernel refuses.
    assert_eq!(
        s.probe("client", tcp("192.168.0.2:30999")),
        Outcome::Refused
    );
}

/// The security fix of issue 10: a `--nodeport-addresses` list that names only loopback serves
/// NodePorts on no address (it used to mean "every address"); a list naming the node's address
/// serves them there.
#[test]
fn loopback_only_nodeport_addresses_serve_no_nodeport() {
    let Some(s) = Scene::build("nodeport_loopback", &cluster()) else {
        return;
    };
    let stderr = s.program_with_warnings(&cluster(), &["--nodeport-addresses", "127.0.0.0/8"]);
    assert!(
        stderr.contains("IPv4 NodePorts are not served"),
        "the operator is told:\n{stderr}"
    );
    // Not served: the packet reaches node-a's own stack, where nothing listens.
    assert_eq!(
        s.probe("client", tcp("192.168.0.2:30080")),
        Outcome::Refused
    );
    // The Service itself is programmed.
    let r = s.replies("client", tcp("172.30.0.13:80"), 20);
    assert_eq!(hosts(&r), set(&WEB));

    let Some(s) = Scene::new(
        "nodeport_node_address",
        &cluster(),
        &["--nodeport-addresses", "192.168.0.2/32"],
    ) else {
        return;
    };
    let r = s.replies("client", tcp("192.168.0.2:30080"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
}

#[test]
fn load_balancer_source_ranges_allow_and_refuse() {
    let Some(s) = Scene::new("source_ranges", &cluster(), &[]) else {
        return;
    };
    let r = s.replies("client", tcp("198.51.100.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    // 192.0.2.10 is outside loadBalancerSourceRanges: dropped before DNAT.
    let refused = tcp("198.51.100.10:80").timeout(DROP_TIMEOUT);
    assert_eq!(s.probe("stranger", refused), Outcome::Timeout);
    // The ranges guard the LoadBalancer IP only; the same Service's NodePort stays open (as
    // kube-proxy).
    let r = s.replies("stranger", tcp("192.168.0.2:30081"), 5);
    assert!(hosts(&r).is_subset(&set(&WEB)));
}

/// lab/local (eTP=Local, a local endpoint): from a LAN client, its LoadBalancer IP and NodePort
/// reach only the local endpoint, which sees the client's own address.
fn etp_local_reaches_the_local_endpoint_with_the_clients_address(s: &Scene) {
    for dst in ["198.51.100.11:80", "192.168.0.2:30082"] {
        let r = s.replies("client", tcp(dst), 20);
        assert_eq!(hosts(&r), set(&["web-a1"]), "{dst}");
        assert_eq!(
            sources(&r),
            BTreeSet::from([s.addr("client", true)]),
            "{dst}"
        );
    }
}

#[test]
fn external_traffic_policy_local_preserves_the_source_or_drops() {
    let Some(s) = Scene::new("etp_local", &cluster(), &[]) else {
        return;
    };
    etp_local_reaches_the_local_endpoint_with_the_clients_address(&s);
    // Pods reaching the external address short-circuit to every endpoint (kube-proxy).
    let r = s.replies("pod-client", tcp("198.51.100.11:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    // No local endpoint: external traffic is dropped…
    let external = tcp("192.168.0.2:30083").timeout(DROP_TIMEOUT);
    assert_eq!(s.probe("client", external), Outcome::Timeout);
    // …while the ClusterIP (Cluster policy) still reaches the remote endpoints.
    let r = s.replies("pod-client", tcp("172.30.0.17:80"), 40);
    assert_eq!(hosts(&r), set(&["web-b1", "web-b2"]));
}

#[test]
fn internal_traffic_policy_local_uses_only_local_endpoints() {
    let Some(s) = Scene::new("itp_local", &cluster(), &[]) else {
        return;
    };
    for from in ["pod-client", "node-a"] {
        let r = s.replies(from, tcp("172.30.0.18:80"), 30);
        assert_eq!(hosts(&r), set(&["web-a1"]), "{from}");
    }
}

// --- Session affinity -----------------------------------------------------------------------

#[test]
fn client_ip_affinity_sticks_per_client_address() {
    let Some(s) = Scene::new("affinity_sticks", &cluster(), &[]) else {
        return;
    };
    let mut chosen = BTreeSet::new();
    for src in &s.lab.topology().host("client").expect("client").addrs {
        if src.is_ipv6() {
            continue;
        }
        let r = s.replies("client", tcp("172.30.0.19:80").from_addr(*src), 10);
        assert_eq!(hosts(&r).len(), 1, "{src} moved between endpoints: {r:?}");
        chosen.insert(r[0].host.clone());
    }
    // Ten client addresses, three endpoints: stickiness is per client, not for the Service.
    assert!(chosen.len() > 1, "every client address stuck to {chosen:?}");
}

#[test]
fn client_ip_affinity_expires_after_its_timeout() {
    let Some(s) = Scene::new("affinity_expires", &cluster(), &[]) else {
        return;
    };
    // lab/sticky-short: timeoutSeconds 1, round-robin over two endpoints. Within the timeout
    // the client keeps its endpoint (round-robin alone would alternate); after it, the next
    // connection takes the next endpoint in the rotation.
    let first = s.replies("client", tcp("172.30.0.27:80"), 6);
    assert_eq!(hosts(&first).len(), 1, "{first:?}");
    std::thread::sleep(Duration::from_millis(2200));
    let after = s.replies("client", tcp("172.30.0.27:80"), 3);
    assert_eq!(hosts(&after).len(), 1, "{after:?}");
    assert_ne!(
        after[0].host, first[0].host,
        "the affinity entry did not expire"
    );
}

// --- Dispatch tables ------------------------------------------------------------------------

/// `--dispatch-tables 3` spreads the lab's Services over three tables per family (web, nodeport
/// and local in `kube-nft-dispatch-1`, external, lb and hairpin in `-2`, sticky in the main
/// table): every way in still reaches the same endpoints with the same sources.
#[test]
fn dispatch_tables_change_no_traffic() {
    let Some(s) = Scene::new("dispatch_tables", &cluster(), &["--dispatch-tables", "3"]) else {
        return;
    };
    let tables = s
        .lab
        .command("node-a", "nft")
        .expect("node-a")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(tables.contains("table ip kube-nft-dispatch-2"), "{tables}");
    // ClusterIP, from a pod and from outside the cluster network.
    let r = s.replies("pod-client", tcp("172.30.0.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    assert_eq!(sources(&r), BTreeSet::from([s.addr("pod-client", true)]));
    let r = s.replies("client", udp("172.30.0.10:53"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    s.assert_masqueraded(&r, "client to a ClusterIP over UDP");
    // NodePort and externalIP, masqueraded.
    for dst in ["192.168.0.2:30080", "198.51.100.20:80"] {
        let r = s.replies("client", tcp(dst), DRAWS);
        assert_eq!(hosts(&r), set(&WEB), "{dst}");
        s.assert_masqueraded(&r, dst);
    }
    etp_local_reaches_the_local_endpoint_with_the_clients_address(&s);
    // ClientIP affinity: each client address sticks to one endpoint.
    let src = (s
        .lab
        .topology()
        .host("client")
        .expect("client")
        .addrs
        .iter())
    .find(|a| a.is_ipv4())
    .copied()
    .expect("an IPv4 client address");
    let r = s.replies("client", tcp("172.30.0.19:80").from_addr(src), 10);
    assert_eq!(hosts(&r).len(), 1, "{r:?}");
    // Hairpin: masqueraded in the main table's postrouting, whatever table DNATed it.
    let r = s.replies("hairpin-a1", tcp("172.30.0.21:80"), 5);
    assert_eq!(hosts(&r), set(&["hairpin-a1"]));
    s.assert_masqueraded(&r, "hairpin");
    // An unknown port of a ClusterIP is still refused.
    assert_eq!(
        s.probe("pod-client", tcp("172.30.0.10:81")),
        Outcome::Refused
    );
    // loadBalancerSourceRanges, its sets sharded as the tables are (`firewall-ips-<i>`).
    let r = s.replies("client", tcp("198.51.100.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    let refused = tcp("198.51.100.10:80").timeout(DROP_TIMEOUT);
    assert_eq!(s.probe("stranger", refused), Outcome::Timeout);
}

/// An externalIP that is node-a's own address wins over another Service's NodePort on the
/// same port when the two are in different dispatch tables, as in one table: the NodePort
/// chains run one nat priority after every table's address dispatch (and by-nodeport's table,
/// created after the main one, would otherwise run first at an equal priority).
#[test]
fn an_external_ip_on_the_node_wins_over_a_nodeport_in_another_table() {
    let file = kube_nft_testkit::golden::repo_root().join("testdata/lab/dispatch.yaml");
    let Some(s) = Scene::new("dispatch_precedence", &file, &["--dispatch-tables", "3"]) else {
        return;
    };
    let r = s.replies("client", tcp("192.168.0.2:30090"), 10);
    assert_eq!(hosts(&r), set(&["web-a1"]));
    // The NodePort Service's other NodePort, which nothing else claims, is served from its
    // table, masqueraded.
    let r = s.replies("client", tcp("192.168.0.2:30091"), DRAWS);
    assert_eq!(hosts(&r), set(&["web-b1", "web-b2"]));
    s.assert_masqueraded(&r, "NodePort from the second table");
}

// --- Hairpin, IPv6, dual-stack --------------------------------------------------------------

#[test]
fn hairpin_endpoint_reaches_itself_through_its_service() {
    let Some(s) = Scene::new("hairpin", &cluster(), &[]) else {
        return;
    };
    let r = s.replies("hairpin-a1", tcp("172.30.0.21:80"), 5);
    assert_eq!(hosts(&r), set(&["hairpin-a1"]));
    // Masqueraded: without it the pod would answer itself directly and the connection fail.
    s.assert_masqueraded(&r, "hairpin");
}

#[test]
fn ipv6_and_dual_stack_services() {
    let Some(s) = Scene::new("ipv6", &cluster(), &[]) else {
        return;
    };
    let r = s.replies("pod-client", tcp("[fd00:30::10]:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    assert!(r.iter().all(|x| x.local.is_ipv6()));
    assert_eq!(sources(&r), BTreeSet::from([s.addr("pod-client", false)]));
    let r = s.replies("client", tcp("[fd00:30::10]:80"), 20);
    s.assert_masqueraded(&r, "client to an IPv6 ClusterIP");
    // One Service, both families.
    for dst in ["172.30.0.22:80", "[fd00:30::22]:80"] {
        let r = s.replies("pod-client", tcp(dst), DRAWS);
        assert_eq!(hosts(&r), set(&WEB), "{dst}");
    }
    assert_eq!(
        s.probe("pod-client", tcp("[fd00:30::10]:9999")),
        Outcome::Refused
    );
}

// --- Endpoint conditions --------------------------------------------------------------------

#[test]
fn terminating_endpoints_only_as_fallback() {
    let Some(s) = Scene::new("terminating", &cluster(), &[]) else {
        return;
    };
    // Only serving+terminating endpoints: they are used.
    let r = s.replies("pod-client", tcp("172.30.0.23:80"), 40);
    assert_eq!(hosts(&r), set(&["web-a1", "web-b1"]));
    // A ready endpoint exists: only it (never the terminating or non-serving ones).
    let r = s.replies("pod-client", tcp("172.30.0.24:80"), 40);
    assert_eq!(hosts(&r), set(&["web-a1"]));
}

// --- Schedulers -----------------------------------------------------------------------------

#[test]
fn random_scheduler_is_not_a_rotation() {
    let Some(s) = Scene::new("random", &cluster(), &[]) else {
        return;
    };
    let r = s.replies("client", tcp("172.30.0.25:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    // A fair random sequence of 60 is a perfect 3-cycle with probability 6/3⁶⁰.
    let rotation = (0..r.len() - 3).all(|i| r[i].host == r[i + 3].host);
    assert!(!rotation, "random looks like round robin");
}

#[test]
fn round_robin_scheduler_rotates_strictly() {
    let Some(s) = Scene::new("round_robin", &cluster(), &[]) else {
        return;
    };
    let r = s.replies("client", tcp("172.30.0.26:80"), 30);
    assert_eq!(hosts(&r), set(&WEB));
    for i in 0..r.len() - 3 {
        assert_ne!(r[i].host, r[i + 1].host, "connection {i}: {r:?}");
        assert_eq!(r[i].host, r[i + 3].host, "connection {i}: {r:?}");
    }
}

#[test]
fn source_hash_scheduler_matches_the_compilers_prediction() {
    let Some(s) = Scene::new("source_hash", &cluster(), &[]) else {
        return;
    };
    // The compiler's tracer computes the kernel's jhash exactly: the endpoint it predicts for
    // each client address must be the one the kernel picks, every time.
    // The same node as `FLAGS`.
    let config = Config {
        hostname: Some("node-a".into()),
        cluster_cidrs: vec![
            "10.0.0.0/16".parse().expect("cidr"),
            "fd00:10::/32".parse().expect("cidr"),
        ],
        ..Config::default()
    };
    let compiled = compile(&s.snapshot, &config);
    let env = Env::from_graph(&compiled.graph);
    let dst: SocketAddr = "172.30.0.28:80".parse().expect("addr");
    let mut seen = BTreeMap::new();
    for src in &s.lab.topology().host("client").expect("client").addrs {
        if src.is_ipv6() {
            continue;
        }
        let packet: Packet = format!("tcp {src}:40000 -> {dst}").parse().expect("packet");
        let t = trace::trace(
            &compiled.ruleset,
            &env,
            &packet.with_origin(Origin::Outside),
        );
        let targets = t.targets();
        assert_eq!(
            targets.len(),
            1,
            "{src}: source-hash must be deterministic: {targets:?}"
        );
        let predicted = s.lab.topology().name_of(targets[0].0);
        let r = s.replies("client", tcp("172.30.0.28:80").from_addr(*src), 5);
        assert_eq!(hosts(&r), set(&[predicted.as_str()]), "{src}");
        seen.insert(*src, predicted);
    }
    let distinct: BTreeSet<&String> = seen.values().collect();
    assert!(
        distinct.len() > 1,
        "all sources hash to one endpoint: {seen:?}"
    );
}

// --- Masquerade -----------------------------------------------------------------------------

/// Item 9 of the compiler's semantics, row by row: who is masqueraded (the endpoint sees a node
/// address) and who keeps its own source.
#[test]
fn masquerade_exactly_where_kube_proxy_does() {
    let Some(s) = Scene::new("masquerade_matrix", &cluster(), &[]) else {
        return;
    };
    // (The node's own connections carry a node address with or without masquerade, so they
    // prove nothing here.)
    let cases: [(&str, &str, bool, &str); 9] = [
        (
            "client",
            "172.30.0.10:80",
            true,
            "off-cluster source to a ClusterIP",
        ),
        ("pod-client", "172.30.0.10:80", false, "pod to a ClusterIP"),
        ("client", "192.168.0.2:30080", true, "NodePort, eTP Cluster"),
        (
            "client",
            "198.51.100.20:80",
            true,
            "externalIP, eTP Cluster",
        ),
        (
            "client",
            "198.51.100.10:80",
            true,
            "LoadBalancer, eTP Cluster",
        ),
        (
            "client",
            "198.51.100.11:80",
            false,
            "LoadBalancer, eTP Local",
        ),
        ("client", "192.168.0.2:30082", false, "NodePort, eTP Local"),
        (
            "pod-client",
            "198.51.100.11:80",
            false,
            "pod to an eTP Local LoadBalancer",
        ),
        (
            "hairpin-a1",
            "172.30.0.21:80",
            true,
            "hairpin: an endpoint to itself",
        ),
    ];
    for (from, dst, masqueraded, what) in cases {
        let r = s.replies(from, tcp(dst), 6);
        if masqueraded {
            s.assert_masqueraded(&r, what);
        } else {
            let own = s.addr(from, true);
            assert_eq!(sources(&r), BTreeSet::from([own]), "{what}");
        }
    }
}

#[test]
fn masquerade_all_masquerades_pod_traffic_too() {
    let Some(s) = Scene::new("masquerade_all", &cluster(), &["--masquerade-all"]) else {
        return;
    };
    let r = s.replies("pod-client", tcp("172.30.0.10:80"), 20);
    assert_eq!(hosts(&r), set(&WEB));
    s.assert_masqueraded(&r, "pod to a ClusterIP with --masquerade-all");
    // eTP Local still preserves the client's address for external traffic.
    let r = s.replies("client", tcp("198.51.100.11:80"), 5);
    assert_eq!(sources(&r), BTreeSet::from([s.addr("client", true)]));
}

// --- Local-traffic detection (--detect-local-mode) ------------------------------------------

/// The flags that make node-a trust only its own pods, per mode (the bridge is the lab's).
const NODE_CIDR: [&str; 2] = ["--detect-local-mode", "NodeCIDR"];
const PREFIX: [&str; 4] = [
    "--detect-local-mode",
    "InterfaceNamePrefix",
    // The lab names node-a's side of each pod veth `v<n>`; its LAN port is `eth0`.
    "--pod-interface-name-prefix",
    "v",
];
const BRIDGE: [&str; 4] = [
    "--detect-local-mode",
    "BridgeInterface",
    "--pod-bridge-interface",
    "kbr0",
];

/// What a detector that trusts only node-a's pods does, with packets: `pod-client` (on node-a)
/// keeps its address to a ClusterIP and short-circuits to every endpoint of the eTP Local
/// LoadBalancer; `web-b1`, a pod of node-b whose traffic node-a routes, is inside
/// `--cluster-cidr` (which the default ClusterCIDR mode would trust), yet it is masqueraded to a
/// ClusterIP and gets only the local endpoint, with its own address, from the LoadBalancer.
fn assert_only_node_a_pods_are_local(s: &Scene, what: &str) {
    // 172.30.0.11 has web-a1 only, so every reply comes back through node-a either way.
    let r = s.replies("pod-client", tcp("172.30.0.11:80"), 5);
    let own = BTreeSet::from([s.addr("pod-client", true)]);
    assert_eq!(sources(&r), own, "{what}: pod-client to a ClusterIP");
    let r = s.replies("web-b1", tcp("172.30.0.11:80"), 5);
    s.assert_masqueraded(&r, &format!("{what}: node-b's pod to a ClusterIP"));
    // Behind [fd00:30::10] are pods of node-b too, web-b1 itself among them: only masquerade
    // brings their replies back through node-a.
    let r = s.replies("web-b1", tcp("[fd00:30::10]:80"), 20);
    assert_eq!(hosts(&r), set(&WEB), "{what}");
    s.assert_masqueraded(&r, &format!("{what}: node-b's pod to an IPv6 ClusterIP"));
    let r = s.replies("pod-client", tcp("[fd00:30::10]:80"), 20);
    let own6 = BTreeSet::from([s.addr("pod-client", false)]);
    assert_eq!(sources(&r), own6, "{what}: pod-client to an IPv6 ClusterIP");
    // eTP Local.
    let r = s.replies("pod-client", tcp("198.51.100.11:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB), "{what}: pods short-circuit");
    let r = s.replies("web-b1", tcp("198.51.100.11:80"), 10);
    assert_eq!(
        hosts(&r),
        set(&["web-a1"]),
        "{what}: node-b's pod is external"
    );
    let own = BTreeSet::from([s.addr("web-b1", true)]);
    assert_eq!(sources(&r), own, "{what}: the client address is kept");
}

#[test]
fn detect_local_node_cidr_trusts_only_this_nodes_pod_cidr() {
    let Some(s) = Scene::new("detect_node_cidr", &cluster(), &[]) else {
        return;
    };
    // ClusterCIDR (the default): node-b's pod, inside 10.0.0.0/16, keeps its address.
    let r = s.replies("web-b1", tcp("172.30.0.11:80"), 5);
    assert_eq!(sources(&r), BTreeSet::from([s.addr("web-b1", true)]));
    s.program(&cluster(), &NODE_CIDR);
    assert_only_node_a_pods_are_local(&s, "NodeCIDR");
}

#[test]
fn detect_local_interface_name_prefix_trusts_pod_interfaces() {
    let Some(s) = Scene::new("detect_prefix", &cluster(), &PREFIX) else {
        return;
    };
    assert_only_node_a_pods_are_local(&s, "InterfaceNamePrefix");
}

#[test]
fn detect_local_bridge_interface_trusts_the_pod_bridge() {
    let Some(s) = Scene::build_with("detect_bridge", &cluster(), Some("kbr0")) else {
        return;
    };
    s.program(&cluster(), &BRIDGE);
    assert_only_node_a_pods_are_local(&s, "BridgeInterface");
    // Everything else still works through the bridge: balancing, hairpin.
    let r = s.replies("pod-client", tcp("172.30.0.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    let r = s.replies("hairpin-a1", tcp("172.30.0.21:80"), 5);
    assert_eq!(hosts(&r), set(&["hairpin-a1"]));
    s.assert_masqueraded(&r, "hairpin through the bridge");
}

// --- Diagnosed inputs, programmed as kube-proxy does -----------------------------------------

#[test]
fn an_endpoint_that_is_a_cluster_ip_is_refused() {
    // Service `proxy` lists only the ClusterIP of Service `db` as its endpoint.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.yaml");
    let docs = [
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"},"spec":{"podCIDRs":["10.0.1.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.2"}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"namespace":"lab","name":"db"},"spec":{"clusterIP":"172.30.3.1","selector":{"app":"db"},"ports":[{"name":"http","port":80,"targetPort":8080}]}}"#,
        r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"namespace":"lab","name":"db-x","labels":{"kubernetes.io/service-name":"db"}},"addressType":"IPv4","endpoints":[{"addresses":["10.0.1.30"],"nodeName":"node-a","targetRef":{"kind":"Pod","name":"db-a"}}],"ports":[{"name":"http","port":8080}]}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"namespace":"lab","name":"proxy"},"spec":{"clusterIP":"172.30.3.2","ports":[{"name":"http","port":80}]}}"#,
        r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"namespace":"lab","name":"proxy-x","labels":{"kubernetes.io/service-name":"proxy"}},"addressType":"IPv4","endpoints":[{"addresses":["172.30.3.1"],"nodeName":"node-a","targetRef":{"kind":"Pod","name":"not-a-pod"}}],"ports":[{"name":"http","port":80}]}"#,
    ];
    std::fs::write(&file, docs.join("\n---\n")).expect("write");
    let Some(s) = Scene::build("cluster_ip_endpoint", &file) else {
        return;
    };
    let stderr = s.program_with_warnings(&file, &[]);
    assert!(
        stderr.contains("endpoint 172.30.3.1 is the ClusterIP of Service lab/db"),
        "{stderr}"
    );
    let r = s.replies("pod-client", tcp("172.30.3.1:80"), 3);
    assert_eq!(hosts(&r), set(&["db-a"]));
    // A connection is NATed once: DNATed to the ClusterIP, it is rejected, not balanced again.
    // (The lab even puts a host `not-a-pod` with a server on 172.30.3.1:80 behind node-a, as the
    // slice says; were the packet not rejected, it would answer.)
    for from in ["pod-client", "client"] {
        assert_eq!(
            s.probe(from, tcp("172.30.3.2:80")),
            Outcome::Refused,
            "{from}"
        );
    }
}

// --- Updates under live traffic -------------------------------------------------------------

#[test]
fn updates_under_live_traffic_never_break_a_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    // The lab holds every pod any step uses (pods start before they become endpoints and keep
    // running after they stop being ones, as in Kubernetes); node-a starts with live-0, live-1.
    let all = file("all.yaml", live_cluster(&[0, 1, 2, 3, 4], &[1, 2, 3]));
    let start = file("step-0.yaml", live_cluster(&[0, 1], &[]));
    let Some(s) = Scene::build("live_updates", &all) else {
        return;
    };
    s.program(&start, &[]);
    let steps: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![0, 1, 2], vec![]),
        (vec![0, 1, 2], vec![1]),
        (vec![1, 2], vec![1, 2]),
        (vec![1, 2, 3], vec![2]),
        (vec![2, 3], vec![2, 3]),
        (vec![2, 3, 4], vec![]),
        (vec![3, 4], vec![3]),
    ];
    let stop = AtomicBool::new(false);
    let (replies, failures) = std::thread::scope(|scope| {
        // Two clients loop on the Service while node-a is reprogrammed under them.
        let loops: Vec<_> = ["pod-client", "client"]
            .into_iter()
            .map(|from| {
                let (s, stop) = (&s, &stop);
                scope.spawn(move || {
                    let (mut ok, mut bad) = (Vec::new(), Vec::new());
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match s.probe(from, tcp("172.30.1.1:80")) {
                            Outcome::Reply(r) => ok.push(r.host),
                            other => bad.push(format!("{from}: {other}")),
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        for (i, (endpoints, others)) in steps.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(300));
            let step = file(
                &format!("step-{}.yaml", i + 1),
                live_cluster(endpoints, others),
            );
            s.program(&step, &[]);
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for l in loops {
            let (o, b) = l.join().expect("client loop");
            ok.extend(o);
            bad.extend(b);
        }
        (ok, bad)
    });
    assert!(
        failures.is_empty(),
        "connections failed during updates: {failures:?}"
    );
    assert!(
        replies.len() > 50,
        "too few connections to mean anything: {}",
        replies.len()
    );
    let answered: BTreeSet<&str> = replies.iter().map(String::as_str).collect();
    assert_eq!(
        answered,
        set(&["live-0", "live-1", "live-2", "live-3", "live-4"]),
        "every endpoint of some step answered"
    );
    // The final state serves exactly live-3 and live-4, and other-3.
    let r = s.replies("pod-client", tcp("172.30.1.1:80"), 40);
    assert_eq!(hosts(&r), set(&["live-3", "live-4"]));
    let r = s.replies("pod-client", tcp("172.30.2.3:80"), 3);
    assert_eq!(hosts(&r), set(&["other-3"]));
    assert_eq!(s.probe("pod-client", tcp("172.30.2.1:80")).reply(), None);
}

// --- kube-nft demo --------------------------------------------------------------------------

/// The demo's table as rows of cells (columns are separated by two or more spaces).
fn demo_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn demo_runs_the_bundled_example_and_cleans_up() {
    if !can_run("demo") {
        return;
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kube-nft demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for kube-nft demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kube-nft demo failed:\n{stderr}");
    assert!(stderr.contains("node-a: applied"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    // The tour's table, then what `kube-nft show` says in node-a.
    let (tour, shown) = stdout
        .split_once("\n$ kube-nft show")
        .unwrap_or_else(|| panic!("no show part in\n{stdout}"));
    let rows = demo_rows(tour);
    let row = |service: &str, via: &str, from: &str| -> &Vec<String> {
        rows.iter()
            .find(|r| r[0] == service && r[1] == via && r[3] == from)
            .unwrap_or_else(|| panic!("no row {service} {via} {from} in\n{stdout}"))
    };
    // ClusterIP from a pod: balanced, source kept.
    let web = row("shop/web", "ClusterIP", "pod-client");
    assert!(web[4].starts_with("web-"), "{web:?}");
    assert!(web[5].contains("(client's own)"), "{web:?}");
    // From outside: masqueraded to node-a.
    let web = row("shop/web", "NodePort", "client");
    assert!(web[5].contains("node-a (masqueraded)"), "{web:?}");
    // shop/api: eTP Local LoadBalancer with source ranges: the local endpoint with the client's
    // own address, and the stranger dropped.
    let api = row("shop/api", "LoadBalancer", "client");
    assert_eq!(api[4], "api-6d8f7b9c4-2hvxs", "{api:?}");
    assert!(
        api[5].contains("203.0.113.10 = client (client's own)"),
        "{api:?}"
    );
    let api = row("shop/api", "LoadBalancer", "stranger");
    assert_eq!(api[4..], ["-", "timed out ×1"], "{api:?}");
    // No endpoints: refused every time.
    let empty = row("shop/empty", "ClusterIP", "pod-client");
    assert_eq!(empty[4..], ["-", "refused ×4"], "{empty:?}");
    // `show` after the tour: shop/web's three endpoints a third each, the tour's connections
    // counted (eight probes: four from the pod, four from the client), all answered, each
    // backend's packets counted; the Service without endpoints flagged. Columns from the
    // right: SHARE CONNS UNREPLIED NEW/s PACKETS BYTES.
    let lines: Vec<Vec<String>> = demo_rows(shown.split_once('\n').map_or("", |(_, rest)| rest));
    let at = lines
        .iter()
        .position(|r| r[0] == "shop/web:http" && r[1] == "ClusterIP")
        .unwrap_or_else(|| panic!("no shop/web:http ClusterIP row in\n{shown}"));
    let web: Vec<&Vec<String>> = lines[at..at + 3].iter().collect();
    assert_eq!(web[0][3], "random", "{shown}");
    let (shares, conns): (Vec<&str>, Vec<u64>) = web
        .iter()
        .map(|r| {
            let n = r.len();
            assert_eq!(r[n - 4], "0", "unreplied: {shown}");
            let conns = r[n - 5].parse::<u64>().expect("CONNS");
            let packets = r[n - 2].parse::<u64>().expect("PACKETS");
            // A connection is at least a request and its answer.
            assert!(packets >= 2 * conns, "packets: {shown}");
            (r[n - 6].as_str(), conns)
        })
        .unzip();
    assert_eq!(shares, ["1/3", "1/3", "1/3"], "{shown}");
    assert_eq!(conns.iter().sum::<u64>(), 8, "{shown}");
    assert!(
        shown.contains("! shop/empty:http tcp 172.30.9.200:80: no backends"),
        "{shown}"
    );
    // Nothing of the lab outlives the demo.
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("knl{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "namespaces left behind: {leftovers:?}"
    );
}
