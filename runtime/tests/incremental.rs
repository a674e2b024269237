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

use kube_nft_compiler::compile;
use kube_nft_compiler::ir::{self, Family};
use kube_nft_compiler::plan::{self, plan, ChainHeader, Object, Op, Verb};
use kube_nft_runtime::apply;
use kube_nft_runtime::netlink::encode::OpKind;
use kube_nft_runtime::netlink::socket;
use kube_nft_testkit::cluster::{self, Ep, Kind, Svc};
use kube_nft_testkit::error_chain as chain;
use kube_nft_testkit::listing::diff;
use kube_nft_testkit::netns::{can_run, in_netns};

// --- Clusters -------------------------------------------------------------------------------

/// The compiled ruleset of a generated cluster, which must compile without diagnostics.
fn ruleset(services: &[Svc]) -> ir::Ruleset {
    ruleset_over(services, 1)
}

/// [`ruleset`] with the Service dispatch over `tables` tables per family.
fn ruleset_over(services: &[Svc], tables: u16) -> ir::Ruleset {
    let config = kube_nft_compiler::Config {
        dispatch_tables: tables,
        ..cluster::config()
    };
    let compiled = compile(&cluster::snapshot(services), &config);
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
        step("add an endpoint", |c| {
            c[CLUSTER_IP].endpoints.push(Ep::ready(4, 0))
        }),
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
            c[CLUSTER_IP].endpoints = vec![Ep::ready(7, 0), Ep::ready(8, 1)];
        }),
        step("endpoints arrive for the empty service", |c| {
            c[NO_ENDPOINTS].endpoints = vec![Ep::ready(9, 2)];
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
        step("IPv6 endpoint added", |c| {
            c[IPV6].endpoints.push(Ep::ready(4, 0))
        }),
        step("many endpoints (numgen map)", |c| {
            c[CLUSTER_IP].endpoints = (1..=40).map(|h| Ep::ready(h, h % 3)).collect();
        }),
        step("one more endpoint (numgen map rebuilt)", |c| {
            c[CLUSTER_IP].endpoints.push(Ep::ready(41, 0));
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

// --- Tests ------------------------------------------------------------------------------------

#[test]
fn every_step_of_a_cluster_history_applied_incrementally_lists_like_a_fresh_replace() {
    if !can_run("every_step_of_a_cluster_history_applied_incrementally_lists_like_a_fresh_replace")
    {
        return;
    }
    history(1);
}

/// The same with the Service dispatch over three tables per family (`--dispatch-tables`).
#[test]
fn the_history_over_dispatch_tables_lists_like_a_fresh_replace() {
    if !can_run("the_history_over_dispatch_tables_lists_like_a_fresh_replace") {
        return;
    }
    history(3);
}

fn history(tables: u16) {
    let mut cluster = base_cluster();
    let mut rulesets = vec![("base", ruleset_over(&cluster, tables))];
    for (name, change) in steps() {
        change(&mut cluster);
        rulesets.push((name, ruleset_over(&cluster, tables)));
    }
    if tables > 1 {
        let names: std::collections::BTreeSet<&str> = (rulesets.iter())
            .flat_map(|(_, r)| r.tables.iter().map(|t| t.name.as_str()))
            .collect();
        assert_eq!(names.len(), usize::from(tables), "{names:?}");
    }
    // Side A: the first ruleset fresh, then one incremental transaction per step.
    let incremental: Vec<String> = in_netns(|ns| {
        apply::replace(&rulesets[0].1).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let mut listings = vec![ns.normalized_ruleset()];
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
            listings.push(ns.normalized_ruleset());
        }
        listings
    });
    // Side B: every ruleset from scratch.
    let fresh: Vec<String> = in_netns(|ns| {
        rulesets
            .iter()
            .map(|(name, ruleset)| {
                apply::cleanup().expect("cleanup");
                apply::replace(ruleset).unwrap_or_else(|e| panic!("{name}: {}", chain(&e)));
                ns.normalized_ruleset()
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

/// Messages and bytes of the transaction for `change` in a cluster of `n` Services.
fn batch_size(n: usize, change: &Change) -> (usize, usize) {
    let before = cluster::uniform(n);
    let mut after = before.clone();
    change(&mut after);
    let (old, new) = (ruleset(&before), ruleset(&after));
    let tx = apply::plan_transaction(&old, &plan(&old, &new)).expect("encode");
    (tx.ops().len(), tx.bytes().len())
}

#[test]
fn a_small_change_is_a_small_batch_whatever_the_cluster_size() {
    // (change, messages, bytes): upper bounds a little above what was measured when this was
    // written (BATCH_BEGIN and BATCH_END included). With the endpoints as map data: adding an
    // endpoint was 11 messages and 1,788 bytes (the port's slots moved from the map of 3
    // endpoints to the map of 4, a hairpin pair, the dispatch element replaced, and here also
    // the shared chain and map for 4 endpoints created, since every Service of this cluster
    // has 3), removing one 11 and 1,700, adding a Service 6 and 560 (elements only), emptying
    // a Service's endpoints 9 and 892. The batch must also be exactly the same in a cluster of
    // 20 and of 200 Services.
    let cases: [(&str, &Change, usize, usize); 4] = [
        (
            "add an endpoint",
            &|c| c[4].endpoints.push(Ep::ready(4, 1)),
            11,
            2_048,
        ),
        (
            "remove an endpoint",
            &|c| {
                c[4].endpoints.pop();
            },
            11,
            2_048,
        ),
        (
            "add a service",
            &|c| c.push(Svc::new(Kind::ClusterIp)),
            6,
            768,
        ),
        ("endpoints to zero", &|c| c[5].endpoints.clear(), 9, 1_024),
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
    cluster[CLUSTER_IP].endpoints.push(Ep::ready(4, 0));
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
    in_netns(|ns| {
        apply::replace(&old).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let before = ns.normalized_ruleset();
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
        assert_eq!(
            ns.normalized_ruleset(),
            before,
            "a refused plan changed the ruleset"
        );
        // The same plan without the bad operation goes through.
        tx.ops.pop();
        apply::apply_plan(&old, &tx).unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert_ne!(ns.normalized_ruleset(), before);
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
