//! `kube-nft run` as an operator runs it, against the kernel of a throwaway network namespace:
//! the daemon (the real binary, a child process) reads a folder of manifests, and after every
//! change the kernel's kube-nft tables, read back over netlink, must equal what `compile`
//! makes of the same files. Covered here: editing, adding, deleting and breaking files;
//! restart without changes (and dynamic affinity state kept); a second daemon refused; drift
//! (`nft flush ruleset`, `nft delete table`, a foreign rule) repaired within a second; health,
//! metrics and bad objects. The API-server source has its own suite (`tests/daemon_api.rs`).
//! Needs root; under `CI=true` a machine that cannot run it fails the tests.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube_nft_compiler::ir::{self, ElemData, Family, L4Proto, Ruleset, Verdict};
use kube_nft_compiler::model::{load, Source};
use kube_nft_compiler::{compile, Config};
use kube_nft_runtime::readback;
use kube_nft_testkit::cluster::{manifests, uniform, Svc};
use kube_nft_testkit::daemon::{http_get, loopback_up, metric, wait_until, Daemon};
use kube_nft_testkit::netns::{can_run, in_netns};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_kube-nft");
/// Node flags of every daemon here (the generated clusters' node).
const NODE: [&str; 4] = [
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.0.0.0/8",
];
const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
/// Generous bound for a convergence the daemon does in milliseconds (debug build, busy CI).
const CONVERGE: Duration = Duration::from_secs(10);

/// A folder of manifests, one file per document, removed on drop.
struct Folder(tempfile::TempDir);

impl Folder {
    fn new() -> Folder {
        Folder(tempfile::tempdir().expect("temp dir"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Writes `docs` as one JSON List, atomically (write then rename), as a config
    /// management tool would.
    fn write(&self, name: &str, docs: &[Value]) {
        let text = serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List",
                                                         "items": docs}))
        .expect("json");
        self.write_text(name, &text);
    }

    fn write_text(&self, name: &str, text: &str) {
        let tmp = self.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.file(name)).expect("rename");
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.file(name)).expect("remove");
    }

    /// What `compile` makes of the folder now, as read back (dynamic set contents excluded).
    fn expected(&self) -> Ruleset {
        self.expected_with(&config())
    }

    /// [`Folder::expected`] for the node config `config`.
    fn expected_with(&self, config: &Config) -> Ruleset {
        let mut sources = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.path())
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "yaml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).expect("read");
            sources.push(Source {
                origin: path.display().to_string(),
                text,
            });
        }
        let loaded = load(&sources).expect("the test's manifests load");
        readback::canonical(&compile(&loaded.snapshot, config).ruleset)
    }
}

fn config() -> Config {
    Config {
        hostname: Some("node-a".into()),
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..Config::default()
    }
}

fn kernel() -> Ruleset {
    readback::read(&[Family::Ip, Family::Ip6]).unwrap_or_default()
}

/// Waits until the kernel holds `expected`; panics with a diff of table sizes otherwise.
fn converges(expected: &Ruleset, what: &str) -> Duration {
    wait_until(CONVERGE, Duration::from_millis(20), || {
        kernel() == *expected
    })
    .unwrap_or_else(|| {
        let got = kernel();
        panic!(
            "{what}: the kernel did not converge within {CONVERGE:?}\nexpected {} chains, got {}",
            chains(expected),
            chains(&got)
        )
    })
}

fn chains(r: &Ruleset) -> usize {
    r.tables.iter().map(|t| t.chains.len()).sum()
}

fn daemon(folder: &Folder, extra: &[&str]) -> Daemon {
    let dir = folder.path().to_str().expect("utf-8 path").to_owned();
    let mut args = vec![
        "--manifests",
        dir.as_str(),
        "--healthz-bind-address",
        HEALTHZ,
        "--metrics-bind-address",
        METRICS,
    ];
    args.extend(NODE);
    args.extend(extra);
    Daemon::spawn(Path::new(BIN), &args)
}

/// One file per Service (Service, slice) plus the Node, for the generated cluster `services`.
fn write_cluster(folder: &Folder, services: &[Svc]) {
    let docs = manifests(services);
    let (nodes, rest): (Vec<Value>, Vec<Value>) =
        docs.into_iter().partition(|d| d["kind"] == "Node");
    folder.write("nodes.json", &nodes);
    for doc in rest {
        let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
        let service = doc["metadata"]["labels"]["kubernetes.io/service-name"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or(name);
        let file = format!("{service}.json");
        let mut existing: Vec<Value> = std::fs::read_to_string(folder.file(&file))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default();
        existing.push(doc);
        folder.write(&file, &existing);
    }
}

/// The manifests of the generated Service `name` of `services`: the Service and its slices.
fn service_manifests(services: &[Svc], name: &str) -> Vec<Value> {
    manifests(services)
        .into_iter()
        .filter(|d| {
            d["metadata"]["name"] == name
                || d["metadata"]["labels"]["kubernetes.io/service-name"] == name
        })
        .collect()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

#[test]
fn manifests_edits_additions_deletions_and_broken_files() {
    if !can_run("manifests_edits_additions_deletions_and_broken_files") {
        return;
    }
    in_netns(|_| {
        loopback_up();
        let folder = Folder::new();
        let mut services = uniform(4);
        write_cluster(&folder, &services);
        let mut d = daemon(&folder, &[]);
        converges(&folder.expected(), "initial sync");
        d.wait_log("synced", 1, CONVERGE).expect("a sync is logged");

        // Edit: one endpoint fewer in svc1.
        services[1].endpoints.pop();
        folder.write("svc1.json", &service_manifests(&services, "svc1"));
        converges(&folder.expected(), "after editing svc1.json");

        // Add a file; delete another.
        let more = uniform(6);
        folder.write("svc5.json", &service_manifests(&more, "svc5"));
        converges(&folder.expected(), "after adding svc5.json");
        folder.remove("svc2.json");
        converges(&folder.expected(), "after deleting svc2.json");

        // A broken file keeps its previous objects; fixing it applies the fix.
        let before = folder.expected();
        folder.write_text("svc3.json", "{ this is not json");
        d.wait_log("svc3.json", 1, CONVERGE)
            .expect("the broken file is reported by name");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            kernel(),
            before,
            "a broken file must not remove its objects"
        );
        folder.remove("svc3.json");
        converges(&folder.expected(), "after removing the broken file");
        assert!(d.try_wait().is_none(), "the daemon keeps running");
    });
}

/// `--dispatch-tables 3`: the daemon's deltas keep each Service in its table (endpoint and
/// Service changes, a Service added and deleted), and a restart with another number moves
/// every Service in its first sync, deleting the tables it no longer uses.
#[test]
fn dispatch_tables_through_the_daemon() {
    if !can_run("dispatch_tables_through_the_daemon") {
        return;
    }
    in_netns(|_| {
        loopback_up();
        let folder = Folder::new();
        let mut services = uniform(9);
        services[4].affinity = Some(Some(60));
        write_cluster(&folder, &services);
        let three = Config {
            dispatch_tables: 3,
            ..config()
        };
        let mut d = daemon(&folder, &["--dispatch-tables", "3"]);
        converges(&folder.expected_with(&three), "initial sync");
        let tables: BTreeSet<String> = kernel().tables.into_iter().map(|t| t.name).collect();
        assert_eq!(tables.len(), 3, "{tables:?}");
        for (i, what) in [(1, "an endpoint fewer"), (4, "an affinity endpoint fewer")] {
            services[i].endpoints.pop();
            let name = format!("svc{i}");
            folder.write(
                &format!("{name}.json"),
                &service_manifests(&services, &name),
            );
            converges(&folder.expected_with(&three), what);
        }
        services[7].ports.push(("UDP", 53));
        folder.write("svc7.json", &service_manifests(&services, "svc7"));
        converges(&folder.expected_with(&three), "a port added");
        let more = uniform(11);
        for name in ["svc9", "svc10"] {
            folder.write(&format!("{name}.json"), &service_manifests(&more, name));
        }
        converges(&folder.expected_with(&three), "two Services added");
        folder.remove("svc2.json");
        converges(&folder.expected_with(&three), "a Service deleted");
        d.terminate();

        let d = daemon(&folder, &[]);
        converges(&folder.expected(), "restarted with one table");
        let tables: BTreeSet<String> = kernel().tables.into_iter().map(|t| t.name).collect();
        assert_eq!(tables, BTreeSet::from(["kube-nft".to_owned()]));
        drop(d);
    });
}

#[test]
fn restart_adopts_the_kernel_and_keeps_affinity_state() {
    if !can_run("restart_adopts_the_kernel_and_keeps_affinity_state") {
        return;
    }
    in_netns(|ns| {
        loopback_up();
        let folder = Folder::new();
        let mut services = uniform(3);
        services[0].affinity = Some(Some(600));
        write_cluster(&folder, &services);
        let expected = folder.expected();
        let mut d = daemon(&folder, &[]);
        converges(&expected, "first run");
        let status = d.terminate();
        assert!(status.success(), "SIGTERM exits cleanly: {status}");
        assert_eq!(kernel(), expected, "the rules stay after the daemon exits");

        // Packet-path state: a ClientIP affinity entry, as a packet would have added it (a
        // client remembered on one of the Service's endpoints).
        let maps = kube_nft_compiler::conntrack::AffinityMaps::of_ruleset(&expected);
        let (_, _, set, endpoints) = maps.iter().next().expect("an affinity map");
        let set = set.to_owned();
        let entry = format!(
            "{{ 203.0.113.9 : {} }}",
            endpoints.first().expect("an endpoint")
        );
        ns.nft(&["add", "element", "ip", "kube-nft", &set, &entry])
            .expect("add an affinity entry");

        let mut d = daemon(&folder, &[]);
        d.wait_log("synced", 1, CONVERGE).expect("first sync");
        let log = d.log();
        let line = log
            .lines()
            .find(|l| l.contains("synced"))
            .expect("sync line");
        assert!(
            line.contains("operations=nothing"),
            "a restart with nothing changed sends nothing: {line}"
        );
        let listing = ns
            .nft(&["list", "map", "ip", "kube-nft", &set])
            .expect("list");
        assert!(
            listing.contains("203.0.113.9"),
            "affinity state survives a restart:\n{listing}"
        );
        assert_eq!(kernel(), expected);
    });
}

#[test]
fn a_second_daemon_refuses_to_start() {
    if !can_run("a_second_daemon_refuses_to_start") {
        return;
    }
    in_netns(|_| {
        loopback_up();
        let folder = Folder::new();
        write_cluster(&folder, &uniform(2));
        let mut first = daemon(&folder, &[]);
        converges(&folder.expected(), "first daemon");
        let mut second = Daemon::spawn(
            Path::new(BIN),
            &[
                "--manifests",
                folder.path().to_str().expect("utf-8"),
                "--healthz-bind-address",
                "",
                "--metrics-bind-address",
                "",
                "--hostname-override",
                "node-a",
            ],
        );
        let status = second
            .wait_exit(Duration::from_secs(10))
            .expect("the second daemon exits");
        assert!(!status.success(), "it must exit non-zero");
        let log = second.log();
        assert!(
            log.contains(&format!("pid {}", first.pid())) && log.contains("already programs"),
            "the message names the first daemon:\n{log}"
        );
        assert!(first.try_wait().is_none(), "the first one keeps running");
    });
}

#[test]
fn drift_is_repaired_within_a_second() {
    if !can_run("drift_is_repaired_within_a_second") {
        return;
    }
    in_netns(|ns| {
        loopback_up();
        let folder = Folder::new();
        write_cluster(&folder, &uniform(4));
        let expected = folder.expected();
        let _d = daemon(&folder, &[]);
        converges(&expected, "initial sync");
        let chain = expected.tables[0]
            .chains
            .keys()
            .find(|n| n.starts_with("service-"))
            .expect("a service chain")
            .clone();
        let tampering: [&[&str]; 3] = [
            &["flush", "ruleset"],
            &["delete", "table", "ip", "kube-nft"],
            &["add", "rule", "ip", "kube-nft", &chain, "counter", "accept"],
        ];
        for (i, args) in tampering.iter().enumerate() {
            let repairs = || {
                let scrape = http_get(addr(METRICS), "/metrics").expect("scrape").body;
                metric(&scrape, "kube_nft_drift_repairs_total{reason=\"monitor\"}")
                    .expect("drift metric")
            };
            assert_eq!(repairs(), i as f64, "repairs before nft {args:?}");
            let start = Instant::now();
            ns.nft(args).expect("tamper");
            // The repair may land before any check here could see the damage; the counter
            // says whether one happened.
            let repaired = wait_until(CONVERGE, Duration::from_millis(5), || {
                repairs() > i as f64 && kernel() == expected
            })
            .map(|_| start.elapsed());
            let took = repaired.unwrap_or_else(|| panic!("nft {args:?} was not repaired"));
            assert!(
                took < Duration::from_secs(1),
                "nft {args:?} repaired in {took:?}, not within a second"
            );
            eprintln!("nft {args:?}: repaired within {took:?}");
        }
    });
}

#[test]
fn health_and_metrics_answer_like_kube_proxy() {
    if !can_run("health_and_metrics_answer_like_kube_proxy") {
        return;
    }
    in_netns(|_| {
        loopback_up();
        let folder = Folder::new();
        write_cluster(&folder, &uniform(2));
        let mut d = daemon(&folder, &[]);
        converges(&folder.expected(), "initial sync");
        d.wait_log("synced", 1, CONVERGE).expect("synced");
        let healthz = wait_until(CONVERGE, Duration::from_millis(50), || {
            http_get(addr(HEALTHZ), "/healthz").is_ok_and(|r| r.status == 200)
        });
        assert!(healthz.is_some(), "/healthz 200 after the first sync");
        let r = http_get(addr(HEALTHZ), "/healthz").expect("healthz");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_str(&r.body).expect("JSON body");
        assert_eq!(body["nodeEligible"], true, "{body}");
        assert!(body["lastUpdated"].is_string() && body["currentTime"].is_string());
        let r = http_get(addr(HEALTHZ), "/livez").expect("livez");
        assert_eq!(r.status, 200);
        let body: Value = serde_json::from_str(&r.body).expect("JSON body");
        assert!(body.get("nodeEligible").is_none(), "{body}");

        let r = http_get(addr(METRICS), "/proxyMode").expect("proxyMode");
        assert_eq!(r.body, "nftables");
        let scrape = http_get(addr(METRICS), "/metrics").expect("metrics").body;
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "kube_nft_transaction_operations_count",
        ] {
            let value = metric(&scrape, name).unwrap_or_else(|| panic!("{name} in:\n{scrape}"));
            assert!(value > 0.0, "{name} = {value}");
        }
        let r = http_get(addr(METRICS), "/configz").expect("configz");
        let body: Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(
            body["kubeproxy.config.k8s.io"]["hostnameOverride"], "node-a",
            "{body}"
        );

        // A Node being deleted makes /healthz (not /livez) fail.
        let mut node: Value = serde_json::from_str::<Value>(
            &std::fs::read_to_string(folder.file("nodes.json")).expect("nodes"),
        )
        .expect("json")["items"][0]
            .clone();
        node["spec"]["taints"] = json!([{"key": "ToBeDeletedByClusterAutoscaler",
                                         "effect": "NoSchedule"}]);
        folder.write("nodes.json", &[node]);
        let failing = wait_until(CONVERGE, Duration::from_millis(50), || {
            http_get(addr(HEALTHZ), "/healthz").is_ok_and(|r| r.status == 503)
        });
        assert!(
            failing.is_some(),
            "/healthz 503 for a node being scaled down"
        );
        assert_eq!(
            http_get(addr(HEALTHZ), "/livez").expect("livez").status,
            200
        );
    });
}

#[test]
fn bad_objects_are_reported_and_the_rest_is_programmed() {
    if !can_run("bad_objects_are_reported_and_the_rest_is_programmed") {
        return;
    }
    in_netns(|_| {
        loopback_up();
        let folder = Folder::new();
        write_cluster(&folder, &uniform(2));
        let svc = |name: &str, spec: Value| {
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"namespace": "ns", "name": name}, "spec": spec})
        };
        let many_ports: Vec<Value> = (1..=100)
            .map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP"}))
            .collect();
        let many_endpoints: Vec<Value> = (0..1000)
            .map(|i| json!({"addresses": [format!("10.{}.{}.{}", 200 + i / 65536, (i / 256) % 256, i % 256)]}))
            .collect();
        let bad = vec![
            svc(
                "bad-ip",
                json!({"clusterIP": "10.0.0.300", "ports": [{"port": 80}]}),
            ),
            svc(
                "bad-port",
                json!({"clusterIP": "172.30.9.1", "ports": [{"port": 70000}]}),
            ),
            svc(
                "hundred-ports",
                json!({"clusterIP": "172.30.9.2", "selector": {"a": "b"},
                                        "ports": many_ports}),
            ),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"namespace": "ns", "name": "hundred-ports-x",
                                "labels": {"kubernetes.io/service-name": "hundred-ports"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "p1", "port": 8080, "protocol": "TCP"}],
                   "endpoints": many_endpoints}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"namespace": "ns", "name": "svc0-bad",
                                "labels": {"kubernetes.io/service-name": "svc0"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "p0", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [{"addresses": ["not-an-ip"]}]}),
        ];
        folder.write("bad.json", &bad);
        let mut d = daemon(&folder, &[]);
        converges(&folder.expected(), "everything valid is programmed");
        for needle in ["ns/bad-ip", "ns/bad-port", "70000", "not-an-ip"] {
            d.wait_log(needle, 1, CONVERGE)
                .unwrap_or_else(|e| panic!("{needle} reported: {e}"));
        }
        let scrape = http_get(addr(METRICS), "/metrics").expect("metrics").body;
        let bad_services = metric(
            &scrape,
            "kube_nft_objects_with_diagnostics{kind=\"Service\"}",
        )
        .expect("diagnostics gauge");
        assert!(bad_services >= 2.0, "{bad_services}");
        // The Service with 100 ports: port 1 has the slice's 1,000 endpoints, the 99 others
        // none (rejected), all programmed.
        let table = &kernel().tables[0];
        let dispatched = table.sets["service-ips"].elements.iter().find_map(|e| {
            match (&e.data, e.comment.as_deref()) {
                (Some(ElemData::Verdict(Verdict::Goto(chain))), Some("ns/hundred-ports:p1")) => {
                    Some(chain.clone())
                }
                _ => None,
            }
        });
        let chain = dispatched
            .expect("port 1 of the Service with 100 ports is dispatched to its endpoints");
        // The shared chain's map of the same name holds one slot per endpoint.
        let slots = table.sets[&chain].elements.iter().filter(|e| {
            e.key[..3]
                == [
                    ir::Value::Addr("172.30.9.2".parse().unwrap()),
                    ir::Value::Proto(L4Proto::Tcp),
                    ir::Value::Port(1),
                ]
        });
        assert_eq!(slots.count(), 1000, "one backend slot per endpoint");
        let rejected = table.sets["no-endpoint-services"]
            .elements
            .iter()
            .filter(|e| {
                e.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with("ns/hundred-ports:"))
            })
            .count();
        assert_eq!(rejected, 99, "the other 99 ports reject");
    });
}

#[test]
fn json_logs_are_one_object_per_line() {
    if !can_run("json_logs_are_one_object_per_line") {
        return;
    }
    in_netns(|_| {
        loopback_up();
        let folder = Folder::new();
        write_cluster(&folder, &uniform(2));
        let mut d = daemon(&folder, &["--log-format", "json"]);
        d.wait_log("\"synced\"", 1, CONVERGE)
            .expect("a sync is logged");
        let mut lines = 0;
        for line in d.log().lines() {
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
            assert!(
                entry["level"].is_string() && entry["fields"]["message"].is_string(),
                "{line}"
            );
            lines += 1;
        }
        assert!(lines >= 3, "started, lists complete, synced: {lines} lines");
    });
}
