//! Stale conntrack, with real packets: a UDP client with a fixed source port (a DNS resolver, a
//! statsd sender) keeps one conntrack entry alive on node-a, and only the first packet of an entry
//! is NATed, so without the reconciler the client would stay on a removed endpoint for as long as
//! it keeps sending. Each test builds a lab (`kube-nft-lab`) with a UDP Service `dns` (ClusterIP
//! 172.30.3.10:53 and NodePort 30053, to port 5353 of pods `dns-1` on node-a and `dns-2`, `dns-3`
//! on node-b, which all keep answering whether or not they are endpoints), programs node-a with
//! `kube-nft compile -f` (or runs `kube-nft run --manifests` there), starts clients that send a
//! datagram every 50 ms from a fixed port, changes the Service, and asserts that every flow answers
//! from the new endpoints within one second of the change and keeps doing so: an endpoint removed
//! while its pod still answers, the Service scaled to zero and back, the Service deleted and
//! re-created; and a restarted daemon deletes nothing that is still right, but does delete, from
//! the tables it reads back, what went stale while no daemon ran. Meanwhile an established TCP
//! connection to the removed endpoint keeps working and keeps its conntrack entry, and an unrelated
//! UDP flow (straight to a pod) keeps its entry (conntrack entries are read in node-a over netlink,
//! by their ids). Clients: `pod-client` (10.0.1.250, a pod on node-a) and `client` (203.0.113.10,
//! on the LAN, through the NodePort). Needs root and iproute2; under `CI=true` a machine that
//! cannot run it fails the tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube_nft_compiler::ir::Family;
use kube_nft_compiler::model::{load, Source};
use kube_nft_lab::flow::{Sample, UdpFlow};
use kube_nft_lab::topology::{default_lan_clients, pod_client};
use kube_nft_lab::{Lab, Outcome, Topology};
use kube_nft_runtime::netlink::conntrack::{self as ct, DumpFilter};
use kube_nft_runtime::netlink::socket::ConntrackSocket;
use kube_nft_testkit::daemon::{http_get, metric, wait_until, Daemon};
use kube_nft_testkit::netns::can_run;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nft");
/// node-a's flags.
const FLAGS: [&str; 4] = [
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.0.0.0/16",
];
/// The brief's bound: a flow follows its Service within this of the change.
const FOLLOW: Duration = Duration::from_secs(1);
/// How often the clients send.
const INTERVAL: Duration = Duration::from_millis(50);
/// How long a test watches the flows after a change.
const WATCH: Duration = Duration::from_millis(1800);
/// Inside node-a's namespace.
const METRICS: &str = "127.0.0.1:10249";

/// The pods: name, address, node.
const PODS: [(&str, &str, &str); 3] = [
    ("dns-1", "10.0.1.21", "node-a"),
    ("dns-2", "10.0.2.21", "node-b"),
    ("dns-3", "10.0.2.22", "node-b"),
];

/// The cluster: nodes, and the Service `dns` with the pods numbered in `endpoints` (1-based),
/// or no Service at all. `tcp` adds TCP port 80 → 9000 (served by the tests' stream servers,
/// not by the lab's echo servers).
fn cluster(endpoints: Option<&[usize]>, tcp: bool) -> String {
    let mut docs = vec![
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"},"spec":{"podCIDRs":["10.0.1.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.2"}]}}"#.to_owned(),
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-b"},"spec":{"podCIDRs":["10.0.2.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.3"}]}}"#.to_owned(),
    ];
    if let Some(endpoints) = endpoints {
        let (ports, slice_ports) = if tcp {
            (
                r#"[{"name":"dns","protocol":"UDP","port":53,"targetPort":5353,"nodePort":30053},{"name":"http","protocol":"TCP","port":80,"targetPort":9000,"nodePort":30090}]"#,
                r#"[{"name":"dns","protocol":"UDP","port":5353},{"name":"http","protocol":"TCP","port":9000}]"#,
            )
        } else {
            (
                r#"[{"name":"dns","protocol":"UDP","port":53,"targetPort":5353,"nodePort":30053}]"#,
                r#"[{"name":"dns","protocol":"UDP","port":5353}]"#,
            )
        };
        docs.push(format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"namespace":"lab","name":"dns"}},"spec":{{"type":"NodePort","clusterIP":"172.30.3.10","selector":{{"app":"dns"}},"ports":{ports}}}}}"#
        ));
        let eps: Vec<String> = endpoints
            .iter()
            .map(|i| {
                let (pod, addr, node) = PODS[i - 1];
                format!(
                    r#"{{"addresses":["{addr}"],"nodeName":"{node}","conditions":{{"ready":true}},"targetRef":{{"kind":"Pod","namespace":"lab","name":"{pod}"}}}}"#
                )
            })
            .collect();
        docs.push(format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"namespace":"lab","name":"dns-x","labels":{{"kubernetes.io/service-name":"dns"}}}},"addressType":"IPv4","endpoints":[{}],"ports":{slice_ports}}}"#,
            eps.join(",")
        ));
    }
    docs.join("\n---\n")
}

/// A lab with every pod, node-a not programmed yet.
struct Scene {
    lab: Lab,
    dir: tempfile::TempDir,
}

impl Scene {
    fn build(test: &str) -> Option<Scene> {
        if !can_run(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // The lab is built from every pod as an endpoint of the UDP port only: the lab's echo
        // servers answer on 5353, and port 9000 stays free for the stream servers.
        let text = cluster(Some(&[1, 2, 3]), false);
        let snapshot = load(&[Source {
            origin: "lab".into(),
            text,
        }])
        .expect("cluster loads")
        .snapshot;
        let mut clients = default_lan_clients();
        clients.extend(pod_client(&snapshot, "node-a"));
        let topology = Topology::from_snapshot(&snapshot, "node-a", &clients);
        let lab = Lab::build(topology).unwrap_or_else(|e| panic!("{test}: build the lab: {e}"));
        Some(Scene { lab, dir })
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// `kube-nft compile -f FILE` in node-a; returns stderr.
    fn program(&self, file: &Path) -> String {
        let out = self
            .lab
            .command("node-a", BIN)
            .expect("node-a")
            .arg("compile")
            .arg("-f")
            .arg(file)
            .args(FLAGS)
            .output()
            .expect("run kube-nft compile -f");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kube-nft compile -f failed:\n{stderr}"
        );
        assert!(!stderr.contains("warning"), "{stderr}");
        stderr
    }

    /// Programs `text`; returns when the change started.
    fn change(&self, name: &str, text: &str) -> Instant {
        let file = self.file(name, text);
        let at = Instant::now();
        let stderr = self.program(&file);
        eprintln!("{name}: {stderr}");
        at
    }

    /// The daemon's manifests folder (created empty).
    fn manifests(&self) -> PathBuf {
        let manifests = self.dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        manifests
    }

    /// Replaces the cluster in [`Scene::manifests`] atomically (the manifests source skips
    /// names starting with `.`); returns when.
    fn write_manifest(&self, text: &str) -> Instant {
        let manifests = self.dir.path().join("manifests");
        let tmp = manifests.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, manifests.join("cluster.yaml")).expect("rename");
        Instant::now()
    }

    fn flow(&self, from: &str, src: &str, dst: &str) -> UdpFlow {
        self.lab
            .udp_flow(
                from,
                src.parse().expect("source"),
                dst.parse().expect("destination"),
                INTERVAL,
            )
            .expect("start the UDP flow")
    }

    /// The conntrack id of node-a's entry whose original source is `src`.
    fn entry_id(&self, src: SocketAddr) -> Option<u32> {
        self.lab
            .run_in("node-a", move || {
                let mut socket = ConntrackSocket::open().expect("open");
                let mut id = None;
                socket
                    .dump(
                        &ct::dump_request(Family::Ip, &DumpFilter::default()),
                        Instant::now() + Duration::from_secs(3),
                        |bytes| {
                            let entry = ct::entry(bytes).expect("decode");
                            if entry.flow.original.source() == src {
                                id = entry.id;
                            }
                        },
                    )
                    .expect("dump node-a's conntrack table");
                id
            })
            .expect("node-a")
    }
}

/// Who answered a sample, if someone did.
fn host(sample: &Sample) -> Option<&str> {
    match &sample.outcome {
        Outcome::Reply(r) => Some(&r.host),
        _ => None,
    }
}

/// Samples sent in `[from, to)`.
fn between(samples: &[Sample], from: Instant, to: Instant) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.sent >= from && s.sent < to)
        .collect()
}

/// How long after `change` the flow settled on `ok` for good (every later sample, up to `end`,
/// satisfies it, and there are some); panics with the samples otherwise.
fn settled(
    what: &str,
    samples: &[Sample],
    change: Instant,
    end: Instant,
    ok: impl Fn(&Sample) -> bool,
) -> Duration {
    let after = between(samples, change, end);
    let last_bad = after.iter().rposition(|s| !ok(s));
    let first_good = last_bad.map_or(0, |i| i + 1);
    let show = || {
        after
            .iter()
            .map(|s| format!("{:>5}ms {}", (s.sent - change).as_millis(), s.outcome))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        after.len() - first_good >= 10,
        "{what}: never settled after the change:\n{}",
        show()
    );
    let took = after[first_good].sent.saturating_duration_since(change);
    eprintln!("{what}: settled {took:?} after the change");
    assert!(
        took <= FOLLOW,
        "{what}: settled only {took:?} after the change:\n{}",
        show()
    );
    took
}

fn answered_by(names: &'static [&'static str]) -> impl Fn(&Sample) -> bool {
    move |s| host(s).is_some_and(|h| names.contains(&h))
}

#[test]
fn udp_flows_follow_a_removed_endpoint_while_tcp_and_other_flows_keep_their_entries() {
    let Some(s) = Scene::build("udp_flows_follow_a_removed_endpoint") else {
        return;
    };
    s.change("step-1.yaml", &cluster(Some(&[1]), true));
    let _servers: Vec<_> = [("dns-1", "10.0.1.21:9000"), ("dns-2", "10.0.2.21:9000")]
        .iter()
        .map(|(host, addr)| {
            s.lab
                .stream_server(host, addr.parse().expect("address"))
                .expect("stream server")
        })
        .collect();
    let via_cluster_ip = s.flow("pod-client", "10.0.1.250:40053", "172.30.3.10:53");
    let via_node_port = s.flow("client", "203.0.113.10:40053", "192.168.0.2:30053");
    let unrelated = s.flow("pod-client", "10.0.1.250:40054", "10.0.2.21:5353");
    let mut tcp = s
        .lab
        .stream_client("pod-client", "172.30.3.10:80".parse().expect("address"))
        .expect("connect");
    assert_eq!(tcp.ask().reply().map(|r| r.host.as_str()), Some("dns-1"));
    std::thread::sleep(Duration::from_millis(500));
    let tcp_source = tcp.local_addr().expect("local address");
    let unrelated_source: SocketAddr = "10.0.1.250:40054".parse().expect("address");
    let flow_source: SocketAddr = "10.0.1.250:40053".parse().expect("address");
    let ids_before = (
        s.entry_id(tcp_source),
        s.entry_id(unrelated_source),
        s.entry_id(flow_source),
    );
    assert!(
        ids_before.0.is_some() && ids_before.1.is_some() && ids_before.2.is_some(),
        "{ids_before:?}"
    );

    // dns-1 stops being an endpoint; its pod keeps answering.
    let change = s.change("step-2.yaml", &cluster(Some(&[2]), true));
    std::thread::sleep(WATCH);
    let end = Instant::now();
    let start = change - Duration::from_millis(400);
    for (what, flow) in [
        ("ClusterIP from a pod", &via_cluster_ip),
        ("NodePort from the LAN", &via_node_port),
    ] {
        let samples = flow.samples();
        assert!(
            between(&samples, start, change)
                .iter()
                .all(|s| host(s) == Some("dns-1")),
            "{what}: on dns-1 before the change"
        );
        settled(what, &samples, change, end, answered_by(&["dns-2"]));
    }
    let samples = unrelated.samples();
    assert!(
        between(&samples, start, end)
            .iter()
            .all(|s| host(s) == Some("dns-2")),
        "the unrelated flow answers throughout"
    );
    // The TCP connection to the removed endpoint still works, on the same entry; so does the
    // unrelated flow; the Service flow got a new one.
    assert_eq!(tcp.ask().reply().map(|r| r.host.as_str()), Some("dns-1"));
    let ids_after = (
        s.entry_id(tcp_source),
        s.entry_id(unrelated_source),
        s.entry_id(flow_source),
    );
    assert_eq!(
        ids_after.0, ids_before.0,
        "the TCP connection's entry survives"
    );
    assert_eq!(
        ids_after.1, ids_before.1,
        "the unrelated flow's entry survives"
    );
    // The Service flow's entry was replaced (it now answers from dns-2, above); its id may be
    // the old one, which the kernel derives from the entry's address and tuple.
    assert!(ids_after.2.is_some(), "the Service flow has an entry");
}

#[test]
fn a_udp_flow_follows_its_service_scaled_to_zero_and_back() {
    let Some(s) = Scene::build("scaled_to_zero_and_back") else {
        return;
    };
    s.change("step-1.yaml", &cluster(Some(&[1]), false));
    let flow = s.flow("pod-client", "10.0.1.250:40053", "172.30.3.10:53");
    std::thread::sleep(Duration::from_millis(500));
    let zero = s.change("step-2.yaml", &cluster(Some(&[]), false));
    std::thread::sleep(WATCH);
    let back = s.change("step-3.yaml", &cluster(Some(&[2, 3]), false));
    std::thread::sleep(WATCH);
    let end = Instant::now();
    let samples = flow.stop();
    settled("scaled to zero", &samples, zero, back, |s| {
        s.outcome == Outcome::Refused
    });
    settled(
        "scaled back up",
        &samples,
        back,
        end,
        answered_by(&["dns-2", "dns-3"]),
    );
}

#[test]
fn a_udp_flow_follows_its_service_deleted_and_recreated() {
    let Some(s) = Scene::build("deleted_and_recreated") else {
        return;
    };
    s.change("step-1.yaml", &cluster(Some(&[1]), false));
    let flow = s.flow("pod-client", "10.0.1.250:40053", "172.30.3.10:53");
    std::thread::sleep(Duration::from_millis(500));
    // Deleted: the address is nobody's, its datagrams are routed out unanswered (and leave an
    // un-NATed entry behind), but never again to dns-1.
    let deleted = s.change("step-2.yaml", &cluster(None, false));
    std::thread::sleep(WATCH);
    // Re-created with the same ClusterIP and other endpoints.
    let recreated = s.change("step-3.yaml", &cluster(Some(&[2]), false));
    std::thread::sleep(WATCH);
    let end = Instant::now();
    let samples = flow.stop();
    settled("deleted", &samples, deleted, recreated, |s| {
        host(s).is_none()
    });
    settled(
        "re-created",
        &samples,
        recreated,
        end,
        answered_by(&["dns-2"]),
    );
}

#[test]
fn the_daemon_reconciles_conntrack_after_each_change() {
    let Some(s) = Scene::build("daemon_reconciles_conntrack") else {
        return;
    };
    let manifests = s.manifests();
    let write = |text: &str| s.write_manifest(text);
    write(&cluster(Some(&[1]), false));
    let mut daemon = start_daemon(&s, &manifests);
    let flow = s.flow("pod-client", "10.0.1.250:40053", "172.30.3.10:53");
    std::thread::sleep(Duration::from_millis(500));

    let removed = write(&cluster(Some(&[2]), false));
    std::thread::sleep(WATCH);
    let deleted = write(&cluster(None, false));
    std::thread::sleep(WATCH);
    let recreated = write(&cluster(Some(&[3]), false));
    std::thread::sleep(WATCH);
    let end = Instant::now();
    let samples = flow.stop();
    settled(
        "endpoint removed",
        &samples,
        removed,
        deleted,
        answered_by(&["dns-2"]),
    );
    settled("Service deleted", &samples, deleted, recreated, |s| {
        host(s).is_none()
    });
    settled(
        "Service re-created",
        &samples,
        recreated,
        end,
        answered_by(&["dns-3"]),
    );

    let scrape = || {
        s.lab
            .run_in("node-a", || {
                http_get(METRICS.parse().expect("address"), "/metrics").map(|r| r.body)
            })
            .expect("node-a")
            .expect("scrape /metrics")
    };
    let deleted_entries =
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"}";
    let counted = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        metric(&scrape(), deleted_entries).is_some_and(|v| v >= 3.0)
    });
    assert!(counted.is_some(), "{}", scrape());
    let text = scrape();
    assert_eq!(
        metric(&text, "kube_nft_conntrack_reconcile_errors_total"),
        Some(0.0)
    );
    assert!(
        metric(
            &text,
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"}"
        )
        .is_some_and(|v| v >= 3.0),
        "{text}"
    );
    assert!(
        daemon.log().contains("reconciled conntrack"),
        "{}",
        daemon.log()
    );
    daemon.terminate();
}

// --- ClientIP affinity ----------------------------------------------------------------------

/// [`cluster`] with `sessionAffinity: ClientIP` on the Service.
fn with_affinity(cluster: &str) -> String {
    let out = cluster.replace(
        r#""type":"NodePort","#,
        r#""type":"NodePort","sessionAffinity":"ClientIP","#,
    );
    assert_ne!(out, cluster, "the Service is there");
    out
}

/// The endpoint each of `client`'s ten IPv4 addresses sticks to through the NodePort (three new
/// UDP flows each, from new source ports, which must all land on one pod).
fn stuck(s: &Scene) -> Vec<(std::net::IpAddr, String)> {
    let addrs = s
        .lab
        .topology()
        .host("client")
        .expect("client")
        .addrs
        .clone();
    addrs
        .into_iter()
        .filter(|a| a.is_ipv4())
        .map(|src| {
            let probe = kube_nft_lab::Probe::new(
                kube_nft_lab::Proto::Udp,
                "192.168.0.2:30053".parse().expect("address"),
            )
            .from_addr(src);
            let hosts: std::collections::BTreeSet<String> = (0..3)
                .map(|i| match s.lab.probe("client", &probe) {
                    Outcome::Reply(r) => r.host,
                    other => panic!("{src}: probe {i}: {other}"),
                })
                .collect();
            assert_eq!(hosts.len(), 1, "{src} moved between endpoints: {hosts:?}");
            (src, hosts.into_iter().next().expect("one"))
        })
        .collect()
}

/// After `dns-<gone>` stopped being an endpoint (its pod still answers): every client that was
/// on it is on another endpoint now, and every other client kept its endpoint (the sweep deleted
/// only the affinity entries of the endpoint that left).
fn assert_moved_only_from(
    before: &[(std::net::IpAddr, String)],
    after: &[(std::net::IpAddr, String)],
    gone: &str,
) {
    assert!(before.iter().any(|(_, h)| h == gone), "{before:?}");
    for ((src, was), (_, now)) in before.iter().zip(after) {
        if was == gone {
            assert_ne!(now, gone, "{src} still goes to the removed endpoint");
        } else {
            assert_eq!(
                now, was,
                "{src} lost its affinity although its endpoint stayed"
            );
        }
    }
}

#[test]
fn clients_with_affinity_to_a_removed_endpoint_move_and_the_others_stay() {
    let Some(s) = Scene::build("affinity_to_a_removed_endpoint") else {
        return;
    };
    s.change(
        "step-1.yaml",
        &with_affinity(&cluster(Some(&[1, 2, 3]), false)),
    );
    let before = stuck(&s);
    // The endpoint of the first client leaves; its pod keeps answering, so a client the kernel
    // still remembered on it would still get replies from it.
    let gone = before[0].1.clone();
    let keep: Vec<usize> = (1..=3).filter(|i| PODS[i - 1].0 != gone).collect();
    let stderr = s.program(&s.file("step-2.yaml", &with_affinity(&cluster(Some(&keep), false))));
    assert!(
        stderr.contains("stale ClientIP affinity entries"),
        "compile -f reports the sweep: {stderr}"
    );
    assert_moved_only_from(&before, &stuck(&s), &gone);
}

#[test]
fn the_daemon_sweeps_affinity_to_a_removed_endpoint() {
    let Some(s) = Scene::build("daemon_sweeps_affinity") else {
        return;
    };
    let manifests = s.manifests();
    let write = |text: &str| s.write_manifest(text);
    write(&with_affinity(&cluster(Some(&[1, 2, 3]), false)));
    let mut daemon = start_daemon(&s, &manifests);
    let before = stuck(&s);
    let gone = before[0].1.clone();
    let keep: Vec<usize> = (1..=3).filter(|i| PODS[i - 1].0 != gone).collect();
    write(&with_affinity(&cluster(Some(&keep), false)));
    daemon
        .wait_log("swept ClientIP affinity", 1, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("no sweep: {e}\n{}", daemon.log()));
    assert_moved_only_from(&before, &stuck(&s), &gone);
    daemon.terminate();
}

// --- Maglev ----------------------------------------------------------------------------------

#[test]
fn maglev_moves_only_the_clients_of_a_removed_endpoint() {
    let Some(s) = Scene::build("maglev_moves_only_removed") else {
        return;
    };
    let maglev = |text: String| {
        let out = text.replace(
            r#""metadata":{"namespace":"lab","name":"dns"}"#,
            r#""metadata":{"namespace":"lab","name":"dns","annotations":{"kube-nft.io/scheduler":"maglev"}}"#,
        );
        assert_ne!(out, text, "the Service is there");
        out
    };
    s.change("step-1.yaml", &maglev(cluster(Some(&[1, 2, 3]), false)));
    // Ten client addresses, each pinned to one endpoint by the hash of its address.
    let before = stuck(&s);
    let spread: std::collections::BTreeSet<&str> = before.iter().map(|(_, h)| h.as_str()).collect();
    assert!(spread.len() > 1, "every client on {spread:?}");
    let gone = before[0].1.clone();
    let keep: Vec<usize> = (1..=3).filter(|i| PODS[i - 1].0 != gone).collect();
    s.change("step-2.yaml", &maglev(cluster(Some(&keep), false)));
    let after = stuck(&s);
    // The clients of the removed endpoint move (its pod still answers, so a client the table
    // still sent there would reach it); Maglev keeps the others where they were: the table
    // moves only a few percent of the other endpoints' slots, and none of these ten clients.
    let mut moved_others = Vec::new();
    for ((src, was), (_, now)) in before.iter().zip(&after) {
        if *was == gone {
            assert_ne!(*now, gone, "{src} still on the removed endpoint");
        } else if now != was {
            moved_others.push(format!("{src}: {was} -> {now}"));
        }
    }
    assert!(
        moved_others.is_empty(),
        "moved although their endpoint stayed: {moved_others:?}"
    );
}

// --- kube-nft show ------------------------------------------------------------------------

#[test]
fn show_counts_live_connections_per_backend_and_flags_a_silent_one() {
    let Some(s) = Scene::build("show_counts_connections") else {
        return;
    };
    // dns-1, dns-2 and 10.0.2.99, an endpoint no pod holds: what is sent there is never
    // answered.
    let text = cluster(Some(&[1, 2]), false).replace(
        r#""endpoints":["#,
        r#""endpoints":[{"addresses":["10.0.2.99"],"nodeName":"node-b","conditions":{"ready":true}},"#,
    );
    s.change("step-1.yaml", &text);
    // Fixed-port UDP flows: each keeps one conntrack entry, DNATed by its first packet. With
    // 24 flows each backend gets one but with probability (2/3)^24 < 1e-4.
    let flows: Vec<UdpFlow> = (0..24)
        .map(|i| {
            s.flow(
                "pod-client",
                &format!("10.0.1.250:{}", 41000 + i),
                "172.30.3.10:53",
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let out = s
        .lab
        .command("node-a", BIN)
        .expect("node-a")
        .args(["show", "-o", "json", "--address", "172.30.3.10:53"])
        .output()
        .expect("run kube-nft show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{doc:#}");
    let row = &rows[0];
    assert_eq!(row["service"], "lab/dns:dns", "{row:#}");
    let backends = row["backends"].as_array().expect("backends");
    let conns = |addr: &str| -> (u64, u64) {
        let b = backends
            .iter()
            .find(|b| b["address"] == addr)
            .unwrap_or_else(|| panic!("{addr} in {row:#}"));
        assert_eq!(b["share"], "1/3", "{row:#}");
        let live = b["connections"].as_u64().expect("connections");
        let unreplied = b["unreplied"].as_u64().expect("unreplied");
        // The kernel's counters agree with conntrack: each flow was one new connection, counted
        // once when node-a DNATed it; none started in the second between the two reads; every
        // datagram (and every answer) was counted with its bytes.
        let counted = |key: &str| b[key].as_u64().unwrap_or_else(|| panic!("{key}: {b}"));
        assert_eq!(counted("new_connections"), live, "{b}");
        assert_eq!(b["new_per_second"].as_f64(), Some(0.0), "{b}");
        let replies = if unreplied == 0 { 2 } else { 1 };
        assert!(counted("packets") >= replies * live, "{b}");
        assert!(
            counted("bytes") >= 28 * counted("packets"),
            "IP + UDP headers: {b}"
        );
        (live, unreplied)
    };
    let (one, two, silent) = (conns("10.0.1.21"), conns("10.0.2.21"), conns("10.0.2.99"));
    assert_eq!(one.0 + two.0 + silent.0, 24, "one entry per flow: {row:#}");
    assert!(one.0 > 0 && two.0 > 0 && silent.0 > 0, "{row:#}");
    assert_eq!((one.1, two.1), (0, 0), "the pods answer: {row:#}");
    assert_eq!(silent.1, silent.0, "nobody answers at 10.0.2.99: {row:#}");
    let flags = row["flags"].as_array().expect("flags");
    assert!(
        flags.iter().any(|f| f
            .as_str()
            .is_some_and(|f| f.contains("10.0.2.99:5353 never replied"))),
        "{row:#}"
    );
    assert_eq!(flags.len(), 1, "{row:#}");
    drop(flows);
}

/// Starts `kube-nft run --manifests DIR` in node-a and waits for its first sync.
fn start_daemon(s: &Scene, manifests: &Path) -> Daemon {
    let mut args = vec![
        "--manifests",
        manifests.to_str().expect("utf-8 path"),
        "--healthz-bind-address",
        "",
        "--metrics-bind-address",
        METRICS,
        "--min-sync-period",
        "100ms",
    ];
    args.extend(FLAGS);
    let mut daemon = Daemon::spawn_with(s.lab.command("node-a", BIN).expect("node-a"), &args);
    daemon
        .wait_log("daemon: synced", 1, Duration::from_secs(10))
        .expect("first sync");
    daemon
}

#[test]
fn a_restarted_daemon_deletes_only_what_went_stale_while_it_was_down() {
    let Some(s) = Scene::build("restarted_daemon") else {
        return;
    };
    let manifests = s.manifests();
    let write = |text: &str| s.write_manifest(text);
    write(&cluster(Some(&[1]), false));
    let mut daemon = start_daemon(&s, &manifests);
    let flow = s.flow("pod-client", "10.0.1.250:40053", "172.30.3.10:53");
    std::thread::sleep(Duration::from_millis(500));
    let source: SocketAddr = "10.0.1.250:40053".parse().expect("address");
    let first = s.entry_id(source).expect("the flow's entry");
    daemon.terminate();

    // A restart that changes nothing deletes nothing: the flow keeps its entry and endpoint.
    let mut daemon = start_daemon(&s, &manifests);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.entry_id(source),
        Some(first),
        "the entry survives a restart"
    );
    daemon.terminate();

    // The Service is deleted while no daemon runs: the next one knows the address was ours
    // from the tables it reads back, and deletes the entry that still leads to dns-1.
    write(&cluster(None, false));
    let restart = Instant::now();
    let mut daemon = start_daemon(&s, &manifests);
    std::thread::sleep(WATCH);
    let end = Instant::now();
    let samples = flow.stop();
    let before: Vec<&Sample> = samples.iter().filter(|s| s.sent <= restart).collect();
    assert!(
        before.len() > 20 && before.iter().all(|s| host(s) == Some("dns-1")),
        "on dns-1 through the first restart, until the Service was deleted"
    );
    let after = between(&samples, restart, end);
    let left = after
        .iter()
        .rposition(|s| host(s).is_some())
        .map_or(0, |i| i + 1);
    assert!(after.len() - left >= 10, "dns-1 kept answering");
    let took = after[left].sent.saturating_duration_since(restart);
    eprintln!("Service deleted while down: the flow left dns-1 {took:?} after the restart");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(daemon.log().contains("1 service gone"), "{}", daemon.log());
    daemon.terminate();
}
