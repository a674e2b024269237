//! Incremental transactions against the real nf_tables: a sequence of cluster snapshots, each
//! compiled, and at every step `apply_plan(plan(prev, next))` in one network namespace must
//! leave exactly the ruleset that `replace(next)` builds from scratch in another (the oracle,
//! itself checked against `nft -f` by `tests/kernel.rs`). Also: the batch for a small change
//! stays small whatever the cluster size, an empty plan sends nothing, and a plan the kernel
//! refuses names the operation and changes nothing.
//!
//! Namespaces work as in `tests/kernel.rs`: each side runs on a thread that unshared its network
//! namespace, so its sockets and the `nft` it spawns see only that namespace. Needs root; where
//! that is impossible the kernel tests print `SKIPPED`, except under `CI=true`, where they fail.

use std::process::Command;

use kube_nft_compiler::ir::{self, Family};
use kube_nft_compiler::model::{load, Source};
use kube_nft_compiler::plan::{self, plan, ChainHeader, Object, Op, Verb};
use kube_nft_compiler::{compile, Config};
use kube_nft_runtime::apply;
use kube_nft_runtime::netlink::encode::OpKind;
use kube_nft_runtime::netlink::socket;
use serde_json::{json, Value};

// --- Clusters -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One Service with one EndpointSlice. Endpoints are `(host, node)`: pod IP `10.<node>.<i>.<host>`
/// (or `fd00:10:<i>::<host>`) on `node-a` (this node), `node-b` or `node-c`.
#[derive(Clone, Debug)]
struct Svc {
    kind: Kind,
    ipv6: bool,
    ports: Vec<(&'static str, u16)>,
    endpoints: Vec<(u8, u8)>,
    etp_local: bool,
    itp_local: bool,
    /// `Some(timeout)`: ClientIP affinity; `Some(None)` with the default timeout.
    affinity: Option<Option<u32>>,
    source_ranges: Vec<&'static str>,
}

impl Svc {
    /// A TCP port 80 Service with three ready endpoints, one per node.
    fn new(kind: Kind) -> Svc {
        Svc {
            kind,
            ipv6: false,
            ports: vec![("TCP", 80)],
            endpoints: vec![(1, 0), (2, 1), (3, 2)],
            etp_local: false,
            itp_local: false,
            affinity: None,
            source_ranges: Vec::new(),
        }
    }
}

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn manifests(services: &[Svc]) -> Vec<Value> {
    let mut docs = vec![json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}
    })];
    for (i, s) in services.iter().enumerate() {
        let name = format!("svc{i}");
        let kind = match s.kind {
            Kind::ClusterIp => "ClusterIP",
            Kind::NodePort => "NodePort",
            Kind::LoadBalancer => "LoadBalancer",
        };
        let ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, (proto, port))| {
                let mut p = json!({"name": format!("p{j}"), "protocol": proto, "port": port,
                    "targetPort": 8000 + port});
                if s.kind != Kind::ClusterIp {
                    p["nodePort"] = json!(30000 + i * 10 + j);
                }
                p
            })
            .collect();
        let (cluster_ip, family) = if s.ipv6 {
            (format!("fd00:30::{:x}", i + 1), "IPv6")
        } else {
            (format!("172.30.{}.{}", i / 200, i % 200 + 1), "IPv4")
        };
        let mut spec = json!({
            "type": kind,
            "clusterIP": cluster_ip,
            "ipFamilies": [family],
            "ports": ports,
            "selector": {"app": name},
            "internalTrafficPolicy": if s.itp_local { "Local" } else { "Cluster" },
        });
        if s.kind != Kind::ClusterIp {
            spec["externalTrafficPolicy"] = json!(if s.etp_local { "Local" } else { "Cluster" });
        }
        if let Some(timeout) = s.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
            if let Some(timeout) = timeout {
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
            }
        }
        if !s.source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = json!(s.source_ranges);
        }
        let mut service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "ns", "name": name},
            "spec": spec,
        });
        if s.kind == Kind::LoadBalancer {
            service["status"] =
                json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", i + 1)}]}});
        }
        docs.push(service);
        let endpoints: Vec<Value> = s
            .endpoints
            .iter()
            .map(|&(host, node)| {
                let address = if s.ipv6 {
                    format!("fd00:10:{i:x}::{host:x}")
                } else {
                    format!("10.{node}.{}.{host}", i % 250)
                };
                json!({
                    "addresses": [address],
                    "nodeName": NODES[node as usize],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                })
            })
            .collect();
        let slice_ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, (proto, port))| {
                json!({"name": format!("p{j}"), "protocol": proto, "port": 8000 + port})
            })
            .collect();
        docs.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": format!("{name}-abc"),
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": slice_ports,
        }));
    }
    docs
}

fn ruleset(services: &[Svc]) -> ir::Ruleset {
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
    let config = Config {
        hostname: Some("node-a".into()),
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..Config::default()
    };
    let compiled = compile(&loaded.snapshot, &config);
    assert!(
        compiled.diagnostics.is_empty(),
        "generated cluster compiles cleanly: {:?}",
        compiled.diagnostics
    );
    compiled.ruleset
}

/// The starting cluster of the sequence: one of each kind of Service this test changes.
fn base_cluster() -> Vec<Svc> {
    let mut lb = Svc::new(Kind::LoadBalancer);
    lb.source_ranges = vec!["203.0.113.0/24"];
    let mut affinity = Svc::new(Kind::ClusterIp);
    affinity.affinity = Some(None);
    let mut v6 = Svc::new(Kind::ClusterIp);
    v6.ipv6 = true;
    let mut empty = Svc::new(Kind::NodePort);
    empty.endpoints.clear();
    vec![
        Svc::new(Kind::ClusterIp),
        Svc::new(Kind::NodePort),
        lb,
        affinity,
        v6,
        empty,
    ]
}

/// Service indexes in [`base_cluster`].
const CLUSTER_IP: usize = 0;
const NODE_PORT: usize = 1;
const LOAD_BALANCER: usize = 2;
const AFFINITY: usize = 3;
const IPV6: usize = 4;
const NO_ENDPOINTS: usize = 5;

/// A change to a cluster.
type Change = dyn Fn(&mut Vec<Svc>);

/// The sequence of changes, each applied to the cluster left by the one before.
fn steps() -> Vec<(&'static str, Box<Change>)> {
    fn step(
        name: &'static str,
        change: impl Fn(&mut Vec<Svc>) + 'static,
    ) -> (&'static str, Box<Change>) {
        (name, Box::new(change))
    }
    vec![
        step("add an endpoint", |c| c[CLUSTER_IP].endpoints.push((4, 0))),
        step("remove an endpoint", |c| {
            c[CLUSTER_IP].endpoints.remove(0);
        }),
        step("add a service", |c| c.push(Svc::new(Kind::NodePort))),
        step("remove that service", |c| {
            c.pop();
        }),
        step("add a port", |c| c[NODE_PORT].ports.push(("UDP", 53))),
        step("remove the first port", |c| {
            c[NODE_PORT].ports.remove(0);
        }),
        step("eTP Cluster to Local", |c| {
            c[LOAD_BALANCER].etp_local = true
        }),
        step("eTP Local to Cluster", |c| {
            c[LOAD_BALANCER].etp_local = false
        }),
        step("iTP Cluster to Local", |c| c[NODE_PORT].itp_local = true),
        step("iTP Local to Cluster", |c| c[NODE_PORT].itp_local = false),
        step("affinity timeout change", |c| {
            c[AFFINITY].affinity = Some(Some(60))
        }),
        step("affinity off", |c| c[AFFINITY].affinity = None),
        step("affinity on", |c| c[AFFINITY].affinity = Some(Some(600))),
        step("zero endpoints", |c| c[CLUSTER_IP].endpoints.clear()),
        step("endpoints back", |c| {
            c[CLUSTER_IP].endpoints = vec![(7, 0), (8, 1)];
        }),
        step("endpoints arrive for the empty service", |c| {
            c[NO_ENDPOINTS].endpoints = vec![(9, 2)];
        }),
        step("add a source range", |c| {
            c[LOAD_BALANCER].source_ranges.push("192.0.2.128/25");
        }),
        step("remove all source ranges", |c| {
            c[LOAD_BALANCER].source_ranges.clear();
        }),
        step("source ranges back", |c| {
            c[LOAD_BALANCER].source_ranges = vec!["198.18.0.0/15", "0.0.0.0/0"];
        }),
        step("IPv6 endpoint added", |c| c[IPV6].endpoints.push((4, 0))),
        step("many endpoints (numgen map)", |c| {
            c[CLUSTER_IP].endpoints = (1..=40).map(|h| (h, h % 3)).collect();
        }),
        step("one more endpoint (numgen map rebuilt)", |c| {
            c[CLUSTER_IP].endpoints.push((41, 0));
        }),
        step("few endpoints again", |c| {
            c[CLUSTER_IP].endpoints.truncate(2)
        }),
        step("IPv6 service removed", |c| {
            c.remove(IPV6);
        }),
        step("no services", |c| c.clear()),
        step("everything back", |c| *c = base_cluster()),
    ]
}

// --- Environment ------------------------------------------------------------------------------

/// Why kernel tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not root (effective uid {euid})"));
    }
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`nft --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run nft: {e}")),
    }
}

/// `true` when kernel tests can run; otherwise skips loudly, or fails under `CI=true`.
fn can_run(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI=true but kernel tests cannot run here: {reason}");
    }
    eprintln!("\n*** SKIPPED: {test}: {reason} ***\n");
    false
}

/// Runs `f` on a new thread inside a fresh network namespace that disappears with the thread.
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only changes this thread's namespace membership.
                let res = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    res,
                    0,
                    "unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `nft list ruleset` in the calling thread's namespace, normalized for order only. `nft list`
/// shows chains and sets in creation order, so a chain added by an incremental transaction comes
/// after the chains that were there before, where a fresh load has it in name order; and some
/// set backends list elements in insertion order. Neither order carries meaning, so the chain
/// and set blocks of each table are sorted, as are the entries of every `elements = { … }`
/// block. Rules keep their order: within a chain it is the meaning.
fn listing() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft list ruleset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sort_blocks(&sort_elements(&String::from_utf8_lossy(&out.stdout)))
}

/// Sorts the blocks (`\tchain … {` to `\t}`) inside every table of a listing.
fn sort_blocks(listing: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line == "\t}" {
                blocks.extend(current.take());
            }
        } else if line.starts_with('\t') && line.ends_with(" {") {
            current = Some(format!("{line}\n"));
        } else {
            // A table's header or closing brace (or a blank line between blocks).
            if line == "}" {
                blocks.sort();
                out.append(&mut blocks);
            }
            if !line.is_empty() {
                out.push(format!("{line}\n"));
            }
        }
    }
    out.concat()
}

fn sort_elements(listing: &str) -> String {
    const OPEN: &str = "elements = { ";
    let mut out = Vec::new();
    let mut block: Vec<String> = Vec::new();
    let mut prefix = String::new();
    for line in listing.lines() {
        let rest = if block.is_empty() && prefix.is_empty() {
            let Some(at) = line.find(OPEN) else {
                out.push(line.to_owned());
                continue;
            };
            prefix = line[..at + OPEN.len()].to_owned();
            &line[at + OPEN.len()..]
        } else {
            line
        };
        let entry = rest.trim();
        let (entry, last) = match entry.strip_suffix(" }") {
            Some(entry) => (entry, true),
            None => (entry, false),
        };
        block.push(entry.trim_end_matches(',').to_owned());
        if last {
            block.sort();
            out.push(format!("{prefix}{}", block.join(", ")));
            block.clear();
            prefix.clear();
        }
    }
    out.join("\n")
}

/// Lines of `a` missing from `b` and the other way round, for failure messages.
fn diff(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for line in a.iter().filter(|l| !b.contains(l)) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in b.iter().filter(|l| !a.contains(l)) {
        out.push_str(&format!("+ {line}\n"));
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

/// The error and its sources, `: `-joined.
fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

// --- Tests ------------------------------------------------------------------------------------

#[test]
fn every_step_of_a_cluster_history_applied_incrementally_lists_like_a_fresh_replace() {
    if !can_run("every_step_of_a_cluster_history_applied_incrementally_lists_like_a_fresh_replace")
    {
        return;
    }
    let mut cluster = base_cluster();
    let mut rulesets = vec![("base", ruleset(&cluster))];
    for (name, change) in steps() {
        change(&mut cluster);
        rulesets.push((name, ruleset(&cluster)));
    }
    // Side A: the first ruleset fresh, then one incremental transaction per step.
    let incremental: Vec<String> = in_netns(|| {
        apply::replace(&rulesets[0].1).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let mut listings = vec![listing()];
        for pair in rulesets.windows(2) {
            let [(_, old), (name, new)] = pair else {
                unreachable!("windows of two")
            };
            let tx = plan(old, new);
            assert!(!tx.is_empty(), "{name}: the step changes nothing");
            let report = apply::apply_plan(old, &tx)
                .unwrap_or_else(|e| panic!("{name}: {}\nplan:\n{tx}", chain(&e)));
            eprintln!(
                "{name:>40}: {:>3} messages, {:>6} bytes ({})",
                report.messages,
                report.bytes,
                tx.counts()
            );
            listings.push(listing());
        }
        listings
    });
    // Side B: every ruleset from scratch.
    let fresh: Vec<String> = in_netns(|| {
        rulesets
            .iter()
            .map(|(name, ruleset)| {
                apply::cleanup().expect("cleanup");
                apply::replace(ruleset).unwrap_or_else(|e| panic!("{name}: {}", chain(&e)));
                listing()
            })
            .collect()
    });
    for (((name, _), a), b) in rulesets.iter().zip(&incremental).zip(&fresh) {
        assert!(
            a == b,
            "after step {name:?} the incremental ruleset differs from a fresh one \
             (- fresh, + incremental):\n{}",
            diff(b, a)
        );
    }
    assert!(fresh[0].contains("table ip6 kube-nft"), "{}", fresh[0]);
}

/// N ClusterIP and NodePort Services, each TCP 80 with three endpoints.
fn uniform_cluster(n: usize) -> Vec<Svc> {
    (0..n)
        .map(|i| {
            Svc::new(if i % 2 == 0 {
                Kind::ClusterIp
            } else {
                Kind::NodePort
            })
        })
        .collect()
}

/// Messages and bytes of the transaction for `change` in a cluster of `n` Services.
fn batch_size(n: usize, change: &Change) -> (usize, usize) {
    let before = uniform_cluster(n);
    let mut after = before.clone();
    change(&mut after);
    let (old, new) = (ruleset(&before), ruleset(&after));
    let tx = apply::plan_transaction(&old, &plan(&old, &new)).expect("encode");
    (tx.ops().len(), tx.bytes().len())
}

#[test]
fn a_small_change_is_a_small_batch_whatever_the_cluster_size() {
    // (change, messages, bytes): upper bounds a little above what was measured when this was
    // written (BATCH_BEGIN and BATCH_END included): adding an endpoint was 9 messages and 2,072
    // bytes (flush the service chain, 5 rules, 1 hairpin element), removing one 7 and 1,280,
    // adding a Service 10 and 1,944, emptying a Service's endpoints 11 and 904. The batch must
    // also be exactly the same in a cluster of 20 and of 200 Services.
    let cases: [(&str, &Change, usize, usize); 4] = [
        (
            "add an endpoint",
            &|c| c[4].endpoints.push((4, 1)),
            9,
            2_304,
        ),
        (
            "remove an endpoint",
            &|c| {
                c[4].endpoints.pop();
            },
            7,
            1_536,
        ),
        (
            "add a service",
            &|c| c.push(Svc::new(Kind::ClusterIp)),
            10,
            2_304,
        ),
        ("endpoints to zero", &|c| c[5].endpoints.clear(), 11, 1_024),
    ];
    for (name, change, max_messages, max_bytes) in cases {
        let small = batch_size(20, change);
        let big = batch_size(200, change);
        assert_eq!(small, big, "{name}: the batch grows with the cluster");
        let (messages, bytes) = small;
        assert!(
            messages <= max_messages && bytes <= max_bytes,
            "{name}: {messages} messages, {bytes} bytes"
        );
    }
}

#[test]
fn an_empty_plan_sends_nothing() {
    let ruleset = ruleset(&base_cluster());
    let tx = plan(&ruleset, &ruleset);
    assert!(tx.is_empty());
    // No kernel needed: nothing is sent, not even to open a socket.
    let report = apply::apply_plan(&ruleset, &tx).expect("an empty plan cannot fail");
    assert!(report.nothing_sent(), "{report:?}");
    assert_eq!((report.messages, report.bytes), (0, 0));
}

#[test]
fn a_plan_the_kernel_refuses_names_the_operation_and_changes_nothing() {
    if !can_run("a_plan_the_kernel_refuses_names_the_operation_and_changes_nothing") {
        return;
    }
    let old = ruleset(&base_cluster());
    let mut cluster = base_cluster();
    cluster[CLUSTER_IP].endpoints.push((4, 0));
    let new = ruleset(&cluster);
    // A valid change, then the deletion of a chain the base chains still jump to: EBUSY.
    let mut tx = plan(&old, &new);
    let services = &old.table(Family::Ip).expect("ip table").chains["services"];
    tx.ops.push(Op {
        verb: Verb::Delete,
        family: Family::Ip,
        table: "kube-nft".into(),
        object: Object::Chain(ChainHeader::of(services)),
    });
    in_netns(|| {
        apply::replace(&old).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let before = listing();
        let err = apply::apply_plan(&old, &tx).expect_err("deleting a used chain must fail");
        let Some(socket::Error::Rejected { rejections }) = err.netlink() else {
            panic!("expected a rejection, got {err:?}");
        };
        let first = &rejections[0];
        assert_eq!(first.op, Some(OpKind::DeleteChain), "{first}");
        assert_eq!(first.errno.0, libc::EBUSY, "{first}");
        let text = first.to_string();
        assert!(
            text.starts_with("delete chain ip kube-nft services: "),
            "{text}"
        );
        assert_eq!(listing(), before, "a refused plan changed the ruleset");
        // The same plan without the bad operation goes through.
        tx.ops.pop();
        apply::apply_plan(&old, &tx).unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert_ne!(listing(), before);
    });
}

#[test]
fn an_unknown_set_is_an_encode_error_naming_it() {
    let old = ruleset(&base_cluster());
    let tx = plan::Transaction {
        ops: vec![Op {
            verb: Verb::Delete,
            family: Family::Ip,
            table: "kube-nft".into(),
            object: Object::Elements {
                set: "no-such-set".into(),
                elements: vec![ir::Element {
                    key: vec![ir::Value::Port(80)],
                    data: None,
                    comment: None,
                }],
            },
        }],
    };
    let err = apply::plan_transaction(&old, &tx).expect_err("unknown set");
    assert_eq!(
        chain(&err),
        "cannot encode elements of set ip kube-nft no-such-set: \
         set ip kube-nft no-such-set is neither in the kernel nor created earlier in the batch"
    );
}
