//! The daemon in the lab, with real packets: `kube-nft run` programs node-a of a lab
//! (`kube-nft-lab`, built from `testdata/lab/cluster.yaml` as in `tests/lab.rs`) from a fake
//! Kubernetes API server (`kube_nft_testkit::apiserver`) whose listener lives on 127.0.0.1
//! inside node-a's network namespace, so the daemon, started there with `ip netns exec`, reaches
//! it through an ordinary kubeconfig. Proved here: node-a's kernel holds exactly what `compile`
//! makes of the same objects and the lab's scenarios pass through it; endpoint and Service
//! changes reach the kernel under live client loops without a failed connection; twenty
//! restarts (SIGTERM, and SIGKILL) under client loops fail no connection and each restarted
//! daemon adopts the kernel and sends nothing; `nft flush ruleset` and `nft delete table` are
//! repaired within a second; /healthz, /livez and /metrics answer as kube-proxy's, and with
//! `--metrics-per-service` (on for every daemon here) count each backend's connections under the
//! Service port they came through; and the API server's faults (cut watches, a deletion no watch
//! saw, an outage) with traffic flowing.
//!
//! Clients as in `tests/lab.rs`: `pod-client` (a pod on node-a), `client` (on the LAN, inside
//! the LoadBalancer source range), `stranger` (outside it), node-a itself. Legacy Endpoints of
//! the cluster file reach the fake API server as the EndpointSlices the EndpointSliceMirroring
//! controller would make of them (the daemon, like kube-proxy, watches only slices).
//! Needs root and iproute2; under `CI=true` a machine that cannot run it fails the tests.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube_nft_compiler::ir::{Family, Ruleset};
use kube_nft_compiler::model::{load, Snapshot, Source};
use kube_nft_compiler::render::render_ruleset;
use kube_nft_compiler::{compile, Config};
use kube_nft_lab::probe::DROP_TIMEOUT;
use kube_nft_lab::topology::{default_lan_clients, pod_client};
use kube_nft_lab::{Lab, Outcome, Probe, Proto, Reply, Topology};
use kube_nft_runtime::readback;
use kube_nft_testkit::apiserver::FakeApiServer;
use kube_nft_testkit::daemon::{http_get, metric, wait_until, Daemon, Response};
use kube_nft_testkit::listing;
use kube_nft_testkit::netns::can_run;
use serde_json::{json, Value};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nft");
/// node-a's flags for the lab cluster (as `tests/lab.rs`).
const FLAGS: [&str; 4] = [
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.0.0.0/16,fd00:10::/32",
];
/// Inside node-a's namespace.
const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
/// Generous bound for a convergence the daemon does within about a second (its minimum sync
/// period), in a debug build on a busy machine.
const CONVERGE: Duration = Duration::from_secs(10);
/// Bound on a client loop, whatever happens to the test.
const LOOP_BOUND: Duration = Duration::from_secs(120);
/// Pause between two connections of a client loop.
const LOOP_PAUSE: Duration = Duration::from_millis(5);
/// The one line each sync round logs (`kube_nft_runtime::daemon`'s target, message `synced`).
const SYNCED: &str = "daemon: synced";
const SIGKILL: i32 = 9;
/// The kinds the fake API server holds here (the daemon watches all of them, of Nodes only
/// its own).
const KINDS: [(&str, &str); 4] = [
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("networking.k8s.io/v1", "ServiceCIDR"),
    ("v1", "Node"),
];
/// node-a's config, the same as `FLAGS`.
fn config() -> Config {
    Config {
        hostname: Some("node-a".into()),
        cluster_cidrs: vec![
            "10.0.0.0/16".parse().expect("cidr"),
            "fd00:10::/32".parse().expect("cidr"),
        ],
        ..Config::default()
    }
}

/// Loads cluster objects (YAML or JSON text).
fn snapshot_of(origin: &str, text: String) -> Snapshot {
    load(&[Source {
        origin: origin.to_owned(),
        text,
    }])
    .expect("the objects load")
    .snapshot
}

fn snapshot_of_file(file: &Path) -> Snapshot {
    let text = std::fs::read_to_string(file).expect("read the cluster file");
    snapshot_of(&file.display().to_string(), text)
}

/// What the daemon must program for `snapshot`, in the form the kernel is read back in.
fn ruleset_of(snapshot: &Snapshot) -> Ruleset {
    ruleset_over(snapshot, 1)
}

/// [`ruleset_of`] with the Service dispatch over `tables` tables per family.
fn ruleset_over(snapshot: &Snapshot, tables: u16) -> Ruleset {
    let config = Config {
        dispatch_tables: tables,
        ..config()
    };
    readback::canonical(&compile(snapshot, &config).ruleset)
}

/// The objects of a snapshot as an API server holds them (apiVersion, kind, metadata), legacy
/// Endpoints replaced by the slices the EndpointSliceMirroring controller makes of them.
fn api_objects(snapshot: &Snapshot) -> Vec<Value> {
    let mut objects: Vec<Value> = (snapshot.nodes.iter().map(serde_json::to_value))
        .chain(snapshot.services.iter().map(serde_json::to_value))
        .chain(snapshot.endpoint_slices.iter().map(serde_json::to_value))
        .chain(snapshot.service_cidrs.iter().map(serde_json::to_value))
        .collect::<Result<_, _>>()
        .expect("objects serialize");
    for endpoints in &snapshot.endpoints {
        let endpoints = serde_json::to_value(endpoints).expect("Endpoints serialize");
        objects.extend(mirror(&endpoints));
    }
    for object in &objects {
        assert!(
            object["apiVersion"].is_string() && object["kind"].is_string(),
            "{object}"
        );
    }
    objects
}

/// The EndpointSlices the mirroring controller makes of a selectorless Service's Endpoints: one
/// per subset, ready addresses ready, `notReadyAddresses` not.
fn mirror(endpoints: &Value) -> Vec<Value> {
    let meta = &endpoints["metadata"];
    let name = meta["name"].as_str().expect("name");
    let subsets = endpoints["subsets"].as_array().cloned().unwrap_or_default();
    subsets
        .iter()
        .enumerate()
        .filter_map(|(i, subset)| {
            let mut list = Vec::new();
            for (field, ready) in [("addresses", true), ("notReadyAddresses", false)] {
                for address in subset[field].as_array().into_iter().flatten() {
                    let mut endpoint = json!({"addresses": [address["ip"]],
                                              "conditions": {"ready": ready}});
                    for key in ["nodeName", "targetRef"] {
                        if let Some(v) = address.get(key) {
                            endpoint[key] = v.clone();
                        }
                    }
                    list.push(endpoint);
                }
            }
            let first = list.first()?["addresses"][0].as_str()?.to_owned();
            let family = if first.contains(':') { "IPv6" } else { "IPv4" };
            Some(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "namespace": meta["namespace"],
                    "name": format!("{name}-mirror-{i}"),
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by":
                            "endpointslicemirroring-controller.k8s.io",
                    },
                },
                "addressType": family,
                "endpoints": list,
                "ports": subset["ports"],
            }))
        })
        .collect()
}

/// (apiVersion, kind, namespace, name) of an object.
fn key(object: &Value) -> (String, String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&object["apiVersion"]),
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

/// A lab, the fake API server on 127.0.0.1 inside node-a, and `kube-nft run` inside node-a
/// reading it. Dropped in field order: the daemon first, then the server, then the lab.
struct Scene {
    daemon: Daemon,
    api: FakeApiServer,
    lab: Lab,
    kubeconfig: PathBuf,
    /// The daemon's `--dispatch-tables`.
    dispatch_tables: u16,
    _dir: tempfile::TempDir,
}

impl Scene {
    /// The lab for `lab_from`, the API server holding `objects`, the daemon started and its
    /// first sync done, the kernel equal to `compile` of the objects. `None` where the lab
    /// cannot run (never under `CI=true`).
    fn start(test: &str, lab_from: &Snapshot, objects: &[Value]) -> Option<Scene> {
        Scene::start_over(test, lab_from, objects, 1)
    }

    /// [`Scene::start`] with the daemon's `--dispatch-tables` at `tables`.
    fn start_over(
        test: &str,
        lab_from: &Snapshot,
        objects: &[Value],
        tables: u16,
    ) -> Option<Scene> {
        let mut s = Scene::launch_over(test, lab_from, objects, true, tables)?;
        s.daemon
            .wait_log(SYNCED, 1, CONVERGE)
            .unwrap_or_else(|e| panic!("{test}: the first sync: {e}"));
        s.converges("the first sync");
        Some(s)
    }

    /// [`Scene::start`] without waiting, the API server unreachable from the start unless
    /// `reachable`.
    fn launch(
        test: &str,
        lab_from: &Snapshot,
        objects: &[Value],
        reachable: bool,
    ) -> Option<Scene> {
        Scene::launch_over(test, lab_from, objects, reachable, 1)
    }

    fn launch_over(
        test: &str,
        lab_from: &Snapshot,
        objects: &[Value],
        reachable: bool,
        tables: u16,
    ) -> Option<Scene> {
        if !can_run(test) {
            return None;
        }
        let mut clients = default_lan_clients();
        clients.extend(pod_client(lab_from, "node-a"));
        let topology = Topology::from_snapshot(lab_from, "node-a", &clients);
        let lab = Lab::build(topology).unwrap_or_else(|e| panic!("{test}: build the lab: {e}"));
        // A socket stays in the namespace it was created in: the server thread (in the test's
        // namespace) accepts on node-a's loopback.
        let listener = lab
            .run_in("node-a", || TcpListener::bind("127.0.0.1:0"))
            .expect("enter node-a")
            .expect("bind 127.0.0.1:0 inside node-a");
        let api = FakeApiServer::start(listener).expect("start the fake API server");
        for object in objects {
            api.apply(object.clone())
                .unwrap_or_else(|e| panic!("apply {}: {e}", object["metadata"]));
        }
        api.set_unreachable(!reachable);
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        let daemon = spawn_daemon(&lab, &kubeconfig, tables);
        Some(Scene {
            daemon,
            api,
            lab,
            kubeconfig,
            dispatch_tables: tables,
            _dir: dir,
        })
    }

    /// What the daemon must program now: `compile` of the objects it watches on the API server
    /// (every Service, EndpointSlice and ServiceCIDR, its own Node).
    fn expected(&self) -> Ruleset {
        let mut items = Vec::new();
        for (api_version, kind) in KINDS.into_iter().filter(|(_, k)| *k != "Node") {
            items.extend(self.api.objects(api_version, kind).expect("a served kind"));
        }
        items.extend(self.api.get("v1", "Node", None, "node-a"));
        let text = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
        ruleset_over(
            &snapshot_of("the fake API server", text),
            self.dispatch_tables,
        )
    }

    /// Makes the API server hold exactly `objects`: applies each (a no-op when unchanged),
    /// then deletes what is not among them.
    fn set_objects(&self, objects: &[Value]) {
        for object in objects {
            self.api.apply(object.clone()).expect("apply");
        }
        let wanted: BTreeSet<_> = objects.iter().map(key).collect();
        for (api_version, kind) in KINDS {
            for object in self.api.objects(api_version, kind).expect("a served kind") {
                let k = key(&object);
                if !wanted.contains(&k) {
                    let ns = Some(k.2.as_str()).filter(|n| !n.is_empty());
                    self.api
                        .delete(api_version, kind, ns, &k.3)
                        .expect("delete");
                }
            }
        }
    }

    /// node-a's kube-nft tables, read back over netlink from inside node-a.
    fn kernel(&self) -> Result<Ruleset, String> {
        self.lab
            .run_in("node-a", || readback::read(&[Family::Ip, Family::Ip6]))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Waits until node-a's kernel holds [`Scene::expected`]; panics with a diff otherwise.
    fn converges(&self, what: &str) -> Duration {
        let expected = self.expected();
        wait_until(CONVERGE, Duration::from_millis(25), || {
            self.kernel().is_ok_and(|k| k == expected)
        })
        .unwrap_or_else(|| {
            let diff = match self.kernel() {
                Ok(got) => listing::diff(&render_ruleset(&expected), &render_ruleset(&got)),
                Err(e) => e,
            };
            panic!("{what}: node-a's kernel did not converge within {CONVERGE:?}:\n{diff}")
        })
    }

    /// `GET path` on `addr` from inside node-a.
    fn get(&self, addr: &str, path: &str) -> Result<Response, String> {
        let addr: SocketAddr = addr.parse().expect("socket address");
        self.lab
            .run_in("node-a", || http_get(addr, path))
            .map_err(|e| e.to_string())?
    }

    /// One sample of a metrics scrape.
    fn metric(&self, sample: &str) -> Option<f64> {
        let scrape = self.get(METRICS, "/metrics").ok()?.body;
        metric(&scrape, sample)
    }

    /// `nft ARGS` inside node-a.
    fn nft(&self, args: &[&str]) {
        let out = self
            .lab
            .command("node-a", "nft")
            .expect("node-a")
            .args(args)
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

/// `ip netns exec NODE-A kube-nft run --kubeconfig … FLAGS`.
fn spawn_daemon(lab: &Lab, kubeconfig: &Path, dispatch_tables: u16) -> Daemon {
    let command = lab.command("node-a", BIN).expect("node-a");
    let tables = dispatch_tables.to_string();
    let mut args = vec![
        "--dispatch-tables",
        tables.as_str(),
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8 path"),
        "--healthz-bind-address",
        HEALTHZ,
        "--metrics-bind-address",
        METRICS,
        "--metrics-per-service",
    ];
    args.extend(FLAGS);
    Daemon::spawn_with(command, &args)
}

/// The first sync line of a daemon's log.
fn first_sync(daemon: &Daemon) -> String {
    daemon
        .log()
        .lines()
        .find(|l| l.contains(SYNCED))
        .expect("a sync line")
        .to_owned()
}

/// What client loops saw.
struct Traffic {
    replies: Vec<Reply>,
    failures: Vec<String>,
}

impl Traffic {
    /// No connection failed, and there were enough of them to mean something.
    fn assert_unbroken(&self, what: &str, at_least: usize) {
        assert!(
            self.failures.is_empty(),
            "{what}: {} connections failed (of {}): {:?}",
            self.failures.len(),
            self.failures.len() + self.replies.len(),
            self.failures
        );
        assert!(
            self.replies.len() >= at_least,
            "{what}: too few connections to mean anything: {}",
            self.replies.len()
        );
    }
}

/// Runs `work` while one client loop per `(host, probe)` connects over and over (bounded by
/// [`LOOP_BOUND`]); the loops stop when `work` returns or panics.
fn under_traffic<T>(lab: &Lab, loops: &[(&str, Probe)], work: impl FnOnce() -> T) -> (T, Traffic) {
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handles: Vec<_> = loops
            .iter()
            .map(|&(from, probe)| {
                let stop = &stop;
                scope.spawn(move || {
                    let (mut ok, mut bad) = (Vec::new(), Vec::new());
                    let start = Instant::now();
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < LOOP_BOUND {
                        let at = start.elapsed();
                        match lab.probe(from, &probe) {
                            Outcome::Reply(r) => ok.push(r),
                            other => bad.push(format!(
                                "{from} -> {:?} {} at {at:?}: {other}",
                                probe.proto, probe.dst
                            )),
                        }
                        std::thread::sleep(LOOP_PAUSE);
                    }
                    (ok, bad)
                })
            })
            .collect();
        let guard = StopOnDrop(&stop);
        let result = work();
        drop(guard);
        let mut traffic = Traffic {
            replies: Vec::new(),
            failures: Vec::new(),
        };
        for handle in handles {
            let (ok, bad) = handle.join().expect("client loop");
            traffic.replies.extend(ok);
            traffic.failures.extend(bad);
        }
        (result, traffic)
    })
}

// --- The lab's scenarios through the daemon --------------------------------------------------

#[test]
fn daemon_programs_node_a_like_compile_and_the_lab_scenarios_pass() {
    let file = cluster();
    let snapshot = snapshot_of_file(&file);
    let objects = api_objects(&snapshot);
    let Some(s) = Scene::start(
        "daemon_programs_node_a_like_compile_and_the_lab_scenarios_pass",
        &snapshot,
        &objects,
    ) else {
        return;
    };
    // What the daemon programmed from the API server is what `compile -f cluster.yaml` makes
    // of the file (its legacy Endpoints included, mirrored by the compiler itself).
    let kernel = s.kernel().expect("read back node-a");
    let file_ruleset = ruleset_of(&snapshot);
    assert!(
        kernel == file_ruleset,
        "node-a differs from compile -f {}:\n{}",
        file.display(),
        listing::diff(&render_ruleset(&file_ruleset), &render_ruleset(&kernel))
    );
    assert!(
        s.daemon.log().lines().all(|l| !l.contains("bad input")),
        "the lab cluster has no diagnostics:\n{}",
        s.daemon.log()
    );

    // ClusterIP over TCP and UDP, from a pod (source kept) and from outside (masqueraded).
    let r = s.replies("pod-client", tcp("172.30.0.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    assert_eq!(ports(&r), BTreeSet::from([8080]));
    assert_eq!(sources(&r), BTreeSet::from([s.addr("pod-client", true)]));
    let r = s.replies("pod-client", udp("172.30.0.10:53"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    assert_eq!(ports(&r), BTreeSet::from([5353]));
    assert_eq!(sources(&r), BTreeSet::from([s.addr("pod-client", true)]));
    let r = s.replies("client", tcp("172.30.0.10:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    s.assert_masqueraded(&r, "client to a ClusterIP over TCP");
    let r = s.replies("client", udp("172.30.0.10:53"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    s.assert_masqueraded(&r, "client to a ClusterIP over UDP");

    // A selectorless Service, its Endpoints mirrored into a slice on the API server.
    let r = s.replies("pod-client", tcp("172.30.0.12:80"), 40);
    assert_eq!(hosts(&r), set(&["web-a1", "web-b1"]));
    assert_eq!(ports(&r), BTreeSet::from([9090]));

    // NodePort and externalIP: every endpoint, masqueraded; a port that is no NodePort refused.
    for dst in ["192.168.0.2:30080", "198.51.100.20:80"] {
        let r = s.replies("client", tcp(dst), DRAWS);
        assert_eq!(hosts(&r), set(&WEB), "{dst}");
        assert_eq!(ports(&r), BTreeSet::from([8080]), "{dst}");
        s.assert_masqueraded(&r, dst);
    }
    assert_eq!(
        s.probe("client", tcp("192.168.0.2:30999")),
        Outcome::Refused
    );

    // LoadBalancer source ranges: the client in range answered, the stranger dropped, the
    // NodePort of the same Service open to it.
    let r = s.replies("client", tcp("198.51.100.10:80"), 20);
    assert_eq!(hosts(&r), set(&WEB));
    let dropped = tcp("198.51.100.10:80").timeout(DROP_TIMEOUT);
    assert_eq!(s.probe("stranger", dropped), Outcome::Timeout);
    let r = s.replies("stranger", tcp("192.168.0.2:30081"), 5);
    assert!(hosts(&r).is_subset(&set(&WEB)));

    // externalTrafficPolicy Local: the local endpoint with the client's own address; pods
    // short-circuit to every endpoint; no local endpoint drops external traffic while the
    // ClusterIP reaches the remote ones.
    for dst in ["198.51.100.11:80", "192.168.0.2:30082"] {
        let r = s.replies("client", tcp(dst), 20);
        assert_eq!(hosts(&r), set(&["web-a1"]), "{dst}");
        let own = BTreeSet::from([s.addr("client", true)]);
        assert_eq!(sources(&r), own, "{dst}");
    }
    let r = s.replies("pod-client", tcp("198.51.100.11:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    let external = tcp("192.168.0.2:30083").timeout(DROP_TIMEOUT);
    assert_eq!(s.probe("client", external), Outcome::Timeout);
    let r = s.replies("pod-client", tcp("172.30.0.17:80"), 40);
    assert_eq!(hosts(&r), set(&["web-b1", "web-b2"]));

    // No endpoints, and an unknown port of an active ClusterIP: refused, not timed out.
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
                // Rejected in the output hook: the send itself fails with EPERM.
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

    // Multi-port, internal traffic policy Local, hairpin, terminating fallback, affinity.
    let r = s.replies("pod-client", tcp("172.30.0.11:443"), 5);
    assert_eq!(
        (hosts(&r), ports(&r)),
        (set(&["web-a1"]), BTreeSet::from([8443]))
    );
    for from in ["pod-client", "node-a"] {
        let r = s.replies(from, tcp("172.30.0.18:80"), 30);
        assert_eq!(hosts(&r), set(&["web-a1"]), "{from}");
    }
    let r = s.replies("hairpin-a1", tcp("172.30.0.21:80"), 5);
    assert_eq!(hosts(&r), set(&["hairpin-a1"]));
    s.assert_masqueraded(&r, "hairpin");
    let r = s.replies("pod-client", tcp("172.30.0.23:80"), 40);
    assert_eq!(hosts(&r), set(&["web-a1", "web-b1"]));
    let r = s.replies("pod-client", tcp("172.30.0.24:80"), 40);
    assert_eq!(hosts(&r), set(&["web-a1"]));
    let r = s.replies("client", tcp("172.30.0.19:80"), 10);
    assert_eq!(hosts(&r).len(), 1, "ClientIP affinity sticks: {r:?}");

    // IPv6 and dual-stack.
    let r = s.replies("pod-client", tcp("[fd00:30::10]:80"), DRAWS);
    assert_eq!(hosts(&r), set(&WEB));
    assert!(r.iter().all(|x| x.local.is_ipv6()));
    assert_eq!(sources(&r), BTreeSet::from([s.addr("pod-client", false)]));
    let r = s.replies("client", tcp("[fd00:30::10]:80"), 20);
    s.assert_masqueraded(&r, "client to an IPv6 ClusterIP");
    for dst in ["172.30.0.22:80", "[fd00:30::22]:80"] {
        let r = s.replies("pod-client", tcp(dst), DRAWS);
        assert_eq!(hosts(&r), set(&WEB), "{dst}");
    }
    assert_eq!(
        s.probe("pod-client", tcp("[fd00:30::10]:9999")),
        Outcome::Refused
    );

    // Traffic changed nothing the daemon owns (affinity entries are packet-path state).
    assert_eq!(s.kernel().expect("read back"), file_ruleset);
}

// --- Changes under live traffic --------------------------------------------------------------

fn live_objects(endpoints: &[u8], others: &[u8]) -> Vec<Value> {
    api_objects(&snapshot_of("live", live_cluster(endpoints, others)))
}

#[test]
fn endpoint_and_service_changes_arrive_under_live_traffic() {
    changes_under_live_traffic("endpoint_and_service_changes_arrive_under_live_traffic", 1);
}

/// The same with the Service dispatch over three tables per family: `live` and the `other-…`
/// Services spread over them, each change still three commits that never strand a packet.
#[test]
fn changes_under_live_traffic_over_dispatch_tables() {
    changes_under_live_traffic("changes_under_live_traffic_over_dispatch_tables", 3);
}

fn changes_under_live_traffic(test: &str, tables: u16) {
    // The lab holds every pod any step uses; the API server starts with live-0 and live-1.
    let all = snapshot_of("all", live_cluster(&[0, 1, 2, 3, 4], &[1, 2, 3]));
    let Some(s) = Scene::start_over(test, &all, &live_objects(&[0, 1], &[]), tables) else {
        return;
    };
    // Each step keeps a ready endpoint of the step before, adds or removes endpoints of `live`
    // (on both nodes) and adds or removes other Services.
    let steps: [(&[u8], &[u8]); 7] = [
        (&[0, 1, 2], &[]),
        (&[0, 1, 2], &[1]),
        (&[1, 2], &[1, 2]),
        (&[1, 2, 3], &[2]),
        (&[2, 3], &[2, 3]),
        (&[2, 3, 4], &[]),
        (&[3, 4], &[3]),
    ];
    let started = Instant::now();
    let loops = [
        ("pod-client", tcp("172.30.1.1:80")),
        ("client", tcp("172.30.1.1:80")),
    ];
    let (timings, traffic) = under_traffic(&s.lab, &loops, || {
        steps
            .iter()
            .enumerate()
            .map(|(i, (endpoints, others))| {
                std::thread::sleep(Duration::from_millis(200));
                s.set_objects(&live_objects(endpoints, others));
                s.converges(&format!(
                    "step {}: live {endpoints:?}, others {others:?}",
                    i + 1
                ))
            })
            .collect::<Vec<_>>()
    });
    eprintln!(
        "{} steps in {:?}, each in the kernel after {timings:?}; {} connections",
        steps.len(),
        started.elapsed(),
        traffic.replies.len()
    );
    traffic.assert_unbroken("changes under live traffic", 100);
    let answered: BTreeSet<&str> = traffic.replies.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(
        answered,
        set(&["live-0", "live-1", "live-2", "live-3", "live-4"]),
        "every endpoint of some step answered"
    );
    // The final state, exactly: live-3 and live-4, other-3, and other-1 gone.
    let r = s.replies("pod-client", tcp("172.30.1.1:80"), 40);
    assert_eq!(hosts(&r), set(&["live-3", "live-4"]));
    let r = s.replies("pod-client", tcp("172.30.2.3:80"), 3);
    assert_eq!(hosts(&r), set(&["other-3"]));
    let gone = tcp("172.30.2.1:80").timeout(DROP_TIMEOUT);
    assert_eq!(s.probe("pod-client", gone).reply(), None);
    assert_eq!(
        s.kernel().expect("read back"),
        ruleset_over(&snapshot_of("final", live_cluster(&[3, 4], &[3])), tables)
    );
}

// --- Restarts --------------------------------------------------------------------------------

#[test]
fn twenty_restarts_under_live_traffic_break_no_connection() {
    let snapshot = snapshot_of_file(&cluster());
    let objects = api_objects(&snapshot);
    let Some(mut s) = Scene::start(
        "twenty_restarts_under_live_traffic_break_no_connection",
        &snapshot,
        &objects,
    ) else {
        return;
    };
    let expected = s.expected();
    let loops = [
        ("pod-client", tcp("172.30.0.10:80")),
        ("client", tcp("192.168.0.2:30080")),
    ];
    let Scene {
        daemon,
        lab,
        kubeconfig,
        ..
    } = &mut s;
    let started = Instant::now();
    let (restarts, traffic) =
        under_traffic(lab, &loops, || {
            let mut took = Vec::new();
            for i in 0..20 {
                let down = Instant::now();
                // Two of them are SIGKILLs: no clean shutdown at all.
                let killed = i % 10 == 4;
                if killed {
                    daemon.signal(SIGKILL);
                    let status = daemon
                        .wait_exit(Duration::from_secs(5))
                        .expect("SIGKILL ends the daemon");
                    assert!(!status.success(), "restart {i}: killed, yet {status}");
                } else {
                    let status = daemon.terminate();
                    assert!(
                        status.success(),
                        "restart {i}: SIGTERM exits cleanly: {status}"
                    );
                }
                // The rules stay while no daemon runs.
                let kernel = lab
                    .run_in("node-a", || readback::read(&[Family::Ip, Family::Ip6]))
                    .expect("enter node-a")
                    .expect("read back");
                assert!(kernel == expected, "restart {i}: the rules changed on exit");
                *daemon = spawn_daemon(lab, kubeconfig, 1);
                daemon
                    .wait_log(SYNCED, 1, CONVERGE)
                    .unwrap_or_else(|e| panic!("restart {i}: first sync: {e}"));
                let line = first_sync(daemon);
                assert!(
                line.contains("operations=nothing"),
                "restart {i} ({}): a restarted daemon adopts the kernel and sends nothing: {line}",
                if killed { "after SIGKILL" } else { "after SIGTERM" }
            );
                took.push(down.elapsed());
            }
            took
        });
    let slowest = restarts.iter().max().copied().unwrap_or_default();
    eprintln!(
        "20 restarts in {:?} (slowest stop-to-first-sync {slowest:?}); {} connections",
        started.elapsed(),
        traffic.replies.len()
    );
    traffic.assert_unbroken("20 restarts", 100);
    assert_eq!(hosts(&traffic.replies), set(&WEB));
    assert_eq!(s.kernel().expect("read back"), expected);
    assert!(
        s.daemon.try_wait().is_none(),
        "the last daemon keeps running"
    );
}

// --- Drift ------------------------------------------------------------------------------------

#[test]
fn flush_ruleset_and_delete_table_are_repaired_within_a_second() {
    let snapshot = snapshot_of_file(&cluster());
    let objects = api_objects(&snapshot);
    let Some(s) = Scene::start(
        "flush_ruleset_and_delete_table_are_repaired_within_a_second",
        &snapshot,
        &objects,
    ) else {
        return;
    };
    const REPAIRS: &str = "kube_nft_drift_repairs_total{reason=\"monitor\"}";
    let wait = Duration::from_millis(100);
    for args in [
        &["flush", "ruleset"][..],
        &["delete", "table", "ip", "kube-nft"][..],
    ] {
        let before = s.metric(REPAIRS).expect("the drift metric");
        // Prove traffic flows first, so what follows measures the repair.
        s.replies("pod-client", tcp("172.30.0.10:80"), 3);
        let start = Instant::now();
        s.nft(args);
        // New connections (each a new conntrack entry) until one is answered; the first ones
        // may find no rules. Short timeouts so a connection that missed the repair is not
        // waiting for its SYN's retransmission.
        let mut misses = 0;
        let took = loop {
            match s.probe("pod-client", tcp("172.30.0.10:80").timeout(wait)) {
                Outcome::Reply(_) => break start.elapsed(),
                _ if start.elapsed() > CONVERGE => {
                    panic!("nft {args:?}: no connection answered within {CONVERGE:?}")
                }
                _ => misses += 1,
            }
        };
        eprintln!("nft {args:?}: traffic again after {took:?} ({misses} missed)");
        assert!(
            took < Duration::from_secs(1),
            "nft {args:?}: traffic again only after {took:?}"
        );
        s.converges(&format!("after nft {args:?}"));
        let repaired = wait_until(CONVERGE, Duration::from_millis(20), || {
            s.metric(REPAIRS).is_some_and(|n| n > before)
        });
        assert!(
            repaired.is_some(),
            "nft {args:?}: {REPAIRS} stayed at {before}"
        );
        let r = s.replies("client", tcp("192.168.0.2:30080"), 20);
        assert_eq!(hosts(&r), set(&WEB), "NodePort after nft {args:?}");
    }
}

// --- Health and metrics -----------------------------------------------------------------------

#[test]
fn health_and_metrics_answer_from_node_a() {
    let snapshot = snapshot_of_file(&cluster());
    let objects = api_objects(&snapshot);
    // The API server is down when the daemon starts: nothing can be synced yet.
    let Some(mut s) = Scene::launch(
        "health_and_metrics_answer_from_node_a",
        &snapshot,
        &objects,
        false,
    ) else {
        return;
    };
    let up = wait_until(CONVERGE, Duration::from_millis(50), || {
        s.get(HEALTHZ, "/livez").is_ok()
    });
    assert!(
        up.is_some(),
        "the health server listens:\n{}",
        s.daemon.log()
    );
    // Not synced: /healthz refuses (no rules yet), /livez tolerates a daemon that is starting.
    let r = s.get(HEALTHZ, "/healthz").expect("healthz");
    assert_eq!(r.status, 503, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).expect("JSON body");
    assert_eq!(body["lastUpdated"], "0001-01-01T00:00:00Z", "{body}");
    assert_eq!(s.get(HEALTHZ, "/livez").expect("livez").status, 200);
    assert!(s.kernel().expect("read back").tables.is_empty());
    let restarts = "kube_nft_watch_restarts_total{resource=\"services\"}";
    let retried = wait_until(CONVERGE, Duration::from_millis(50), || {
        s.metric(restarts).is_some_and(|n| n > 0.0)
    });
    assert!(retried.is_some(), "{restarts} counts the failed lists");

    s.api.set_unreachable(false);
    s.daemon
        .wait_log(SYNCED, 1, CONVERGE)
        .expect("the first sync once the API server answers");
    s.converges("the first sync");
    let healthy = wait_until(CONVERGE, Duration::from_millis(50), || {
        s.get(HEALTHZ, "/healthz").is_ok_and(|r| r.status == 200)
    });
    assert!(healthy.is_some(), "/healthz 200 after the first sync");
    let r = s.get(HEALTHZ, "/healthz").expect("healthz");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&r.body).expect("JSON body");
    assert_eq!(body["nodeEligible"], true, "{body}");
    assert!(body["lastUpdated"].is_string() && body["currentTime"].is_string());
    assert_ne!(body["lastUpdated"], "0001-01-01T00:00:00Z", "{body}");
    let r = s.get(HEALTHZ, "/livez").expect("livez");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&r.body).expect("JSON body");
    assert!(body.get("nodeEligible").is_none(), "{body}");
    assert!(body["lastUpdated"].is_string() && body["currentTime"].is_string());

    assert_eq!(
        s.get(METRICS, "/proxyMode").expect("proxyMode").body,
        "nftables"
    );
    let scrape = s.get(METRICS, "/metrics").expect("metrics").body;
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"}",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kube_nft_transaction_operations_count",
    ] {
        let value = metric(&scrape, name).unwrap_or_else(|| panic!("{name} in:\n{scrape}"));
        assert!(value > 0.0, "{name} = {value}");
    }
    // The lab's eTP Local Service `remote` has no endpoint on node-a.
    let no_local = "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"}";
    assert_eq!(
        metric(&scrape, no_local),
        Some(1.0),
        "{no_local} in:\n{scrape}"
    );
    let configz: Value =
        serde_json::from_str(&s.get(METRICS, "/configz").expect("configz").body).expect("JSON");
    assert_eq!(
        configz["kubeproxy.config.k8s.io"]["hostnameOverride"], "node-a",
        "{configz}"
    );

    // --metrics-per-service: the packet path's counters, per Service port and backend. Each
    // backend of `web` counts exactly the connections that reached it through the ClusterIP;
    // NodePort connections count under `nodeport` (and the other NodePort Services with those
    // backends), never under `external`, which has the same backends but no NodePort.
    let via_cluster_ip = s.replies("pod-client", tcp("172.30.0.10:80"), 12);
    let via_node_port = s.replies("client", tcp("192.168.0.2:30080"), 6);
    let per_backend = |service: &str, port_name: &str, scrape: &str| {
        let prefix = format!(
            "kube_nft_service_backend_new_connections_total{{namespace=\"lab\",service=\"{service}\",port_name=\"{port_name}\",protocol=\"TCP\",backend=\""
        );
        scrape
            .lines()
            .filter_map(|l| {
                let (backend, value) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
                Some((backend.to_owned(), value.parse::<f64>().ok()?))
            })
            .collect::<std::collections::BTreeMap<String, f64>>()
    };
    let total = |m: &std::collections::BTreeMap<String, f64>| m.values().sum::<f64>();
    let mut scrape = String::new();
    let counted = wait_until(CONVERGE, Duration::from_millis(100), || {
        scrape = s
            .get(METRICS, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default();
        total(&per_backend("web", "http", &scrape)) >= via_cluster_ip.len() as f64
            && total(&per_backend("nodeport", "http", &scrape)) >= via_node_port.len() as f64
    });
    assert!(counted.is_some(), "per-Service counters in:\n{scrape}");
    let mut expected = std::collections::BTreeMap::<String, f64>::new();
    for reply in &via_cluster_ip {
        *expected.entry(reply.local.to_string()).or_default() += 1.0;
    }
    assert_eq!(per_backend("web", "http", &scrape), expected, "{scrape}");
    assert_eq!(
        total(&per_backend("nodeport", "http", &scrape)),
        via_node_port.len() as f64,
        "{scrape}"
    );
    assert!(
        per_backend("external", "http", &scrape).is_empty(),
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "kube_nft_service_metrics_read_failures_total"),
        Some(0.0),
        "{scrape}"
    );

    // Endpoint changes are counted, and measured as network programming latency from the
    // slice's trigger time (the EndpointSlice controller's annotation, whole seconds).
    let changes = "kubeproxy_sync_proxy_rules_endpoint_changes_total";
    let before = metric(&scrape, changes).expect("endpoint changes");
    let mut slice = s
        .api
        .get("discovery.k8s.io/v1", "EndpointSlice", Some("lab"), "web-x")
        .expect("web-x");
    slice["endpoints"].as_array_mut().expect("endpoints").pop();
    slice["metadata"]["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": rfc3339_now()});
    s.api.apply(slice).expect("apply");
    s.converges("web-x without web-b2");
    // The daemon records the round's metrics once its last commit (a change may be up to three
    // transactions) is acknowledged, just after the kernel already shows the change.
    let programmed = "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}";
    let deadline = Instant::now() + CONVERGE;
    let scrape = loop {
        let scrape = s.get(METRICS, "/metrics").expect("metrics").body;
        if metric(&scrape, programmed).unwrap_or(0.0) > 0.0 || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(metric(&scrape, changes).expect("endpoint changes") > before);
    let sample =
        |name: &str| metric(&scrape, name).unwrap_or_else(|| panic!("{name} in:\n{scrape}"));
    let count = sample("kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}");
    let sum = sample("kubeproxy_network_programming_duration_seconds_sum{ip_family=\"IPv4\"}");
    assert_eq!(count, 1.0, "one change programmed");
    assert!(
        sum < CONVERGE.as_secs_f64() + 1.0,
        "programmed {sum} s after the change"
    );
}

/// The wall clock as RFC 3339 in whole seconds (`2006-01-02T15:04:05Z`).
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

// --- API server faults, with traffic ----------------------------------------------------------

#[test]
fn api_server_faults_with_real_traffic() {
    let snapshot = snapshot_of_file(&cluster());
    let objects = api_objects(&snapshot);
    let Some(mut s) = Scene::start("api_server_faults_with_real_traffic", &snapshot, &objects)
    else {
        return;
    };
    // TCP: a UDP flow to an endpoint that is removed may lose its conntrack entry (kube-proxy
    // clears stale UDP entries), and with it an in-flight reply. `external` is never changed.
    let loops = [
        ("pod-client", tcp("172.30.0.10:80")),
        ("client", tcp("198.51.100.20:80")),
    ];
    let ((), traffic) = under_traffic(&s.lab, &loops, || {
        // Watches cut, a change meanwhile: the resumed watch brings it.
        s.api.drop_watches();
        let mut slice = s
            .api
            .get("discovery.k8s.io/v1", "EndpointSlice", Some("lab"), "web-x")
            .expect("web-x");
        slice["endpoints"].as_array_mut().expect("endpoints").pop();
        s.api.apply(slice).expect("apply");
        s.converges("a change after the watches were cut");
        let r = s.replies("pod-client", tcp("172.30.0.10:80"), 40);
        assert_eq!(hosts(&r), set(&["web-a1", "web-b1"]));

        // Deletions no watch ever saw (and the history compacted): the relist finds them.
        // `multi` loses its Service; `nodeport` its only slice.
        s.api
            .delete_missed("v1", "Service", Some("lab"), "multi")
            .expect("delete multi");
        s.api
            .delete_missed(
                "discovery.k8s.io/v1",
                "EndpointSlice",
                Some("lab"),
                "nodeport-x",
            )
            .expect("delete nodeport-x");
        s.api.drop_watches();
        s.converges("deletions only a relist can see");
        let gone = tcp("172.30.0.11:80").timeout(DROP_TIMEOUT);
        assert_eq!(s.probe("pod-client", gone).reply(), None, "multi is gone");
        assert_eq!(
            s.probe("pod-client", tcp("172.30.0.13:80")),
            Outcome::Refused,
            "nodeport has no endpoints left"
        );
        let log = s.daemon.log();
        assert!(
            log.contains("relist removed objects whose deletion was missed"),
            "{log}"
        );

        // The API server goes away for a while: the rules stay, traffic flows (the loops
        // count every connection), the daemon keeps running; a change after it is back
        // arrives.
        let expected = s.expected();
        s.api.set_unreachable(true);
        let outage = Instant::now();
        while outage.elapsed() < Duration::from_secs(2) {
            assert_eq!(
                s.kernel().expect("read back"),
                expected,
                "during the outage"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let alive = s.get(HEALTHZ, "/livez").map(|r| r.status);
        assert_eq!(alive, Ok(200), "the daemon survives the outage");
        s.api.set_unreachable(false);
        let late = [
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"namespace": "lab", "name": "late"},
                   "spec": {"clusterIP": "172.30.0.40", "selector": {"app": "late"},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"namespace": "lab", "name": "late-x",
                                "labels": {"kubernetes.io/service-name": "late"}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.0.1.11"], "nodeName": "node-a",
                                  "conditions": {"ready": true},
                                  "targetRef": {"kind": "Pod", "name": "web-a1"}}],
                   "ports": [{"name": "http", "port": 8080}]}),
        ];
        for object in late {
            s.api.apply(object).expect("apply");
        }
        let took = s.converges("a Service added after the outage");
        eprintln!("a change after a 2 s outage reached the kernel in {took:?}");
        let r = s.replies("pod-client", tcp("172.30.0.40:80"), 3);
        assert_eq!(hosts(&r), set(&["web-a1"]));
    });
    traffic.assert_unbroken("API server faults", 100);
    let relists = s
        .metric("kube_nft_watch_relists_total{resource=\"services\"}")
        .expect("relist metric");
    assert!(relists >= 1.0, "relists: {relists}");
    assert!(s.daemon.try_wait().is_none(), "the daemon keeps running");
}
