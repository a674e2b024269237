//! Plans between compiled rulesets, checked against the in-memory kernel model: applying
//! `plan(old, new)` to `old` yields exactly `new` without any ENOENT, EEXIST or EBUSY, for every
//! golden cluster and every pair of them, and for random pairs of clusters; planning a ruleset
//! against itself does nothing; and the work for a Service or endpoint change is the same in a
//! cluster of 20 Services as in one of 200 (proportional to the change, not to the cluster).

use std::path::{Path, PathBuf};

use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::model::{load, Snapshot, Source};
use kube_nft_compiler::plan::{apply, plan, Transaction};
use kube_nft_compiler::{compile, Config};
use proptest::prelude::*;
use serde_json::{json, Value};

// --- Generated clusters (after tests/properties.rs) ----------------------------------------

/// One generated endpoint: host part of its pod IP, its node, and its conditions.
#[derive(Clone, Debug)]
struct Ep {
    host: u8,
    node: u8,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl Ep {
    fn ready(host: u8, node: u8) -> Ep {
        Ep {
            host,
            node,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

#[derive(Clone, Debug)]
struct Svc {
    /// ClusterIP, NodePort, LoadBalancer.
    kind: u8,
    etp_local: bool,
    itp_local: bool,
    /// None, ClientIP with the default timeout, ClientIP with 60 s.
    affinity: u8,
    scheduler: u8,
    /// Take the ClusterIP from 172.31.0.0/16 instead of 172.30.0.0/16.
    moved_ip: bool,
    ports: Vec<(u8, u16)>,
    endpoints: Vec<Ep>,
}

impl Svc {
    /// A TCP port 80 Service of `kind` with three ready endpoints, one per node.
    fn plain(kind: u8) -> Svc {
        Svc {
            kind,
            etp_local: false,
            itp_local: false,
            affinity: 0,
            scheduler: 0,
            moved_ip: false,
            ports: vec![(0, 80)],
            endpoints: vec![Ep::ready(1, 0), Ep::ready(2, 1), Ep::ready(3, 2)],
        }
    }
}

fn ep() -> impl Strategy<Value = Ep> {
    (
        1u8..=40,
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(host, node, ready, serving, terminating)| Ep {
            host,
            node,
            ready,
            serving: serving || ready,
            terminating,
        })
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        (0u8..3, any::<bool>(), any::<bool>(), 0u8..3, 0u8..3),
        any::<bool>(),
        prop::collection::btree_set((0u8..3, 1u16..100), 1..3),
        prop::collection::vec(ep(), 0..6),
    )
        .prop_map(
            |((kind, etp_local, itp_local, affinity, scheduler), moved_ip, ports, endpoints)| Svc {
                kind,
                etp_local,
                itp_local,
                affinity,
                scheduler,
                moved_ip,
                ports: ports.into_iter().collect(),
                endpoints,
            },
        )
}

const PROTOS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// Builds the manifests of a generated cluster as JSON documents.
fn manifests(services: &[Svc]) -> Vec<Value> {
    let mut docs = vec![json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}
    })];
    for (i, s) in services.iter().enumerate() {
        let name = format!("svc{i}");
        let kind = ["ClusterIP", "NodePort", "LoadBalancer"][s.kind as usize];
        let ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, (proto, port))| {
                let mut p = json!({"name": format!("p{j}"), "protocol": PROTOS[*proto as usize],
                    "port": port, "targetPort": 8000 + port});
                if s.kind > 0 {
                    p["nodePort"] = json!(30000 + i as u16 * 10 + j as u16);
                }
                p
            })
            .collect();
        let net = if s.moved_ip { 31 } else { 30 };
        let mut spec = json!({
            "type": kind,
            "clusterIP": format!("172.{net}.{}.{}", i / 200, i % 200 + 1),
            "ports": ports,
            "selector": {"app": name},
            "externalTrafficPolicy": if s.etp_local { "Local" } else { "Cluster" },
            "internalTrafficPolicy": if s.itp_local { "Local" } else { "Cluster" },
        });
        if s.affinity > 0 {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        if s.affinity == 2 {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
        }
        let scheduler = ["random", "round-robin", "source-hash"][s.scheduler as usize];
        let mut service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "ns", "name": name,
                "annotations": {"kube-nft.io/scheduler": scheduler}},
            "spec": spec,
        });
        if s.kind == 2 {
            service["status"] =
                json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", i + 1)}]}});
        }
        docs.push(service);
        let endpoints: Vec<Value> = s
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [format!("10.{}.{}.{}", e.node, i % 250, e.host)],
                    "nodeName": NODES[e.node as usize],
                    "conditions": {"ready": e.ready, "serving": e.serving,
                        "terminating": e.terminating},
                })
            })
            .collect();
        let slice_ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, (proto, port))| {
                json!({"name": format!("p{j}"), "protocol": PROTOS[*proto as usize],
                    "port": 8000 + port})
            })
            .collect();
        docs.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": format!("{name}-abc"),
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": slice_ports,
        }));
    }
    docs
}

fn snapshot(services: &[Svc]) -> Snapshot {
    let text = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List",
        "items": manifests(services)}))
    .expect("serialize");
    let loaded = load(&[Source {
        origin: "generated".into(),
        text,
    }])
    .expect("generated input loads");
    assert!(
        loaded.diagnostics.is_empty(),
        "generated input is valid: {:?}",
        loaded.diagnostics
    );
    loaded.snapshot
}

fn config() -> Config {
    Config {
        hostname: Some("node-a".into()),
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..Config::default()
    }
}

fn ruleset(services: &[Svc]) -> Ruleset {
    compile(&snapshot(services), &config()).ruleset
}

/// Plans `old → new` and applies the plan to `old` in the model: it must be accepted and give
/// exactly `new`. Returns the plan.
fn check(old: &Ruleset, new: &Ruleset) -> Transaction {
    check_named(old, new, "")
}

/// [`check`], naming the pair in failure messages.
fn check_named(old: &Ruleset, new: &Ruleset, name: &str) -> Transaction {
    let tx = plan(old, new);
    let mut got = old.clone();
    if let Err(e) = apply(&mut got, &tx) {
        panic!("{name}: the kernel model refused the plan: {e}\n{tx}");
    }
    assert!(
        got == *new,
        "{name}: applying the plan does not give the new ruleset:\n{tx}"
    );
    tx
}

// --- Golden clusters ------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read testdata dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// Every golden case compiled. The `# args:` hostname and cluster CIDR are honoured; other
/// flags are not needed here (any valid ruleset will do).
fn golden_rulesets() -> Vec<(String, Ruleset)> {
    let mut paths = Vec::new();
    collect_yaml(&repo_root().join("testdata/compile"), &mut paths);
    assert!(paths.len() > 10, "golden cases under testdata/compile");
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("read case");
            let mut config = Config::default();
            let args: Vec<&str> = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .filter_map(|l| l.strip_prefix("# args:"))
                .flat_map(str::split_whitespace)
                .collect();
            for pair in args.windows(2) {
                match pair[0] {
                    "--hostname-override" => config.hostname = Some(pair[1].into()),
                    "--cluster-cidr" => {
                        config.cluster_cidrs.extend(pair[1].split(',').map(|c| {
                            kube_nft_compiler::config::parse_cidr(c).expect("cluster CIDR")
                        }))
                    }
                    _ => {}
                }
            }
            let name = path.display().to_string();
            let loaded = load(&[Source {
                origin: name.clone(),
                text,
            }])
            .expect("golden loads");
            (name, compile(&loaded.snapshot, &config).ruleset)
        })
        .collect()
}

#[test]
fn golden_rulesets_plan_to_nothing_from_themselves_and_build_from_and_to_empty() {
    let empty = Ruleset::default();
    for (name, ruleset) in golden_rulesets() {
        let same = plan(&ruleset, &ruleset);
        assert!(same.is_empty(), "{name}: plan(x, x) is not empty:\n{same}");
        assert_eq!(same.len(), 0);
        let create = check_named(&empty, &ruleset, &name);
        // Everything is added, nothing flushed or deleted.
        assert!(create
            .ops
            .iter()
            .all(|op| op.verb == kube_nft_compiler::plan::Verb::Add));
        let destroy = check_named(&ruleset, &empty, &name);
        assert_eq!(
            destroy.len(),
            ruleset.tables.len(),
            "{name}: one delete per table"
        );
    }
}

#[test]
fn every_golden_ruleset_plans_to_every_other() {
    let goldens = golden_rulesets();
    for (a_name, a) in &goldens {
        for (b_name, b) in &goldens {
            check_named(a, b, &format!("{a_name} -> {b_name}"));
        }
    }
}

// --- Work proportional to the change --------------------------------------------------------

/// N Services, even ones ClusterIP and odd ones NodePort, each TCP 80 with three endpoints.
fn cluster(n: usize) -> Vec<Svc> {
    (0..n).map(|i| Svc::plain((i % 2) as u8)).collect()
}

/// The counts of the plan from `cluster(n)` to `cluster(n)` changed by `change`.
fn counts_after(n: usize, change: impl Fn(&mut Vec<Svc>)) -> String {
    let before = cluster(n);
    let mut after = before.clone();
    change(&mut after);
    let tx = check(&ruleset(&before), &ruleset(&after));
    assert_eq!(tx.counts().total(), tx.len());
    tx.counts().to_string()
}

/// Checks the counts of one change in a cluster of 20 and of 200 Services: both must be
/// `expected`.
fn assert_counts(change: impl Fn(&mut Vec<Svc>), expected: &str) {
    for n in [20, 200] {
        assert_eq!(
            counts_after(n, &change),
            expected,
            "in a cluster of {n} Services"
        );
    }
}

/// Service 4: a ClusterIP Service. Service 5: a NodePort Service.
const CLUSTER_IP: usize = 4;
const NODE_PORT: usize = 5;

#[test]
fn adding_an_endpoint_rewrites_one_chain_and_adds_its_hairpin_pair() {
    // Flush the service chain, add the ClusterIP masquerade rule and 4 cascade rules; one
    // hairpin element for the new endpoint. The service-ips element does not change.
    assert_counts(
        |c| c[CLUSTER_IP].endpoints.push(Ep::ready(4, 1)),
        "add rule 5, add element 1, flush chain 1",
    );
}

#[test]
fn removing_an_endpoint_rewrites_one_chain_and_deletes_its_hairpin_pair() {
    assert_counts(
        |c| {
            c[CLUSTER_IP].endpoints.pop();
        },
        "add rule 3, flush chain 1, delete element 1",
    );
}

#[test]
fn adding_a_service_adds_its_chain_rules_and_elements() {
    // svc-N is a ClusterIP Service (N even): one service chain with 1 + 3 rules; elements:
    // cluster-ips, service-ips and three hairpin pairs.
    for n in [20, 200] {
        let before = cluster(n);
        let mut after = before.clone();
        after.push(Svc::plain(0));
        let tx = check(&ruleset(&before), &ruleset(&after));
        assert_eq!(
            tx.counts().to_string(),
            "add chain 1, add rule 4, add element 5"
        );
        // And the reverse: the chain is flushed, then deleted after its element is gone.
        let tx = check(&ruleset(&after), &ruleset(&before));
        assert_eq!(
            tx.counts().to_string(),
            "flush chain 1, delete chain 1, delete element 5"
        );
    }
}

#[test]
fn a_service_without_endpoints_loses_its_chain_and_rejects() {
    // The service-ips element and the three hairpin pairs go, a no-endpoint-services element
    // (reject) comes; the chain is flushed and deleted. The ClusterIP stays in cluster-ips.
    assert_counts(
        |c| c[CLUSTER_IP].endpoints.clear(),
        "add element 1, flush chain 1, delete chain 1, delete element 4",
    );
}

#[test]
fn external_traffic_policy_local_adds_a_local_chain_and_rewrites_the_external_one() {
    // New local chain with its one node-local endpoint (1 rule, no masquerade rule: iTP is
    // Cluster); the external chain is rewritten with the 4 eTP=Local rules (pod sources to the
    // service chain; host sources masqueraded, then to the service chain; everything else to
    // the local chain). The map elements keep pointing at the same chains.
    assert_counts(
        |c| c[NODE_PORT].etp_local = true,
        "add chain 1, add rule 5, flush chain 1",
    );
}

#[test]
fn changing_the_cluster_ip_moves_two_elements_and_rewrites_the_masquerade_rule() {
    // cluster-ips and service-ips elements are deleted and added with the new address; the
    // chain keeps its name (it is named by port, not address) but its ClusterIP masquerade
    // rule names the address, so it is rewritten: 1 + 3 rules.
    assert_counts(
        |c| c[CLUSTER_IP].moved_ip = true,
        "add rule 4, add element 2, flush chain 1, delete element 2",
    );
}

#[test]
fn an_affinity_timeout_change_replaces_the_sets_and_rewrites_their_chain() {
    // Three affinity sets change their timeout: each is deleted and re-added; the service chain
    // uses them, so it is flushed and refilled even though its rules are the same.
    let mut before = cluster(20);
    before[CLUSTER_IP].affinity = 1;
    let mut after = before.clone();
    after[CLUSTER_IP].affinity = 2;
    let tx = check(&ruleset(&before), &ruleset(&after));
    assert_eq!(
        tx.counts().to_string(),
        "add set 3, add rule 7, flush chain 1, delete set 3"
    );
}

// --- Random pairs ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_pairs_of_clusters_plan_exactly(
        old in prop::collection::vec(svc(), 0..8),
        new in prop::collection::vec(svc(), 0..8),
    ) {
        let old = ruleset(&old);
        let new = ruleset(&new);
        check(&old, &new);
        prop_assert!(plan(&new, &new).is_empty());
    }

    #[test]
    fn random_changes_to_one_service_plan_exactly(
        services in prop::collection::vec(svc(), 1..8),
        changed in svc(),
        index in any::<prop::sample::Index>(),
    ) {
        let mut after = services.clone();
        let i = index.index(after.len());
        after[i] = changed;
        check(&ruleset(&services), &ruleset(&after));
    }
}
