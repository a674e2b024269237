//! Plans between compiled rulesets, checked against the in-memory kernel model: applying
//! `plan(old, new)` to `old` yields exactly `new` without any ENOENT, EEXIST or EBUSY, for every
//! golden cluster and every pair of them, and for random pairs of clusters; planning a ruleset
//! against itself does nothing; and the work for a Service or endpoint change is the same in a
//! cluster of 20 Services as in one of 200 (proportional to the change, not to the cluster).

use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::plan::{apply, plan, plan_owned, Transaction};
use kube_nft_testkit::cluster::{ruleset, svc, uniform, Ep, Kind, Svc};
use kube_nft_testkit::golden;
use proptest::prelude::*;

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
    // Its phases (prepare, switch, retire) applied in order end in the same place.
    let phases = tx.phases();
    let mut got = old.clone();
    for part in &phases {
        if let Err(e) = apply(&mut got, part) {
            panic!("{name}: the kernel model refused a phase of the plan: {e}\n{part}");
        }
    }
    assert!(
        got == *new,
        "{name}: the phases end elsewhere:\n{phases:#?}"
    );
    tx
}

// --- Golden clusters ------------------------------------------------------------------------

/// Every golden case compiled, named by its path.
fn golden_rulesets() -> Vec<(String, Ruleset)> {
    let paths = golden::cases();
    assert!(paths.len() > 10, "golden cases under testdata/compile");
    paths
        .iter()
        .map(|path| (path.display().to_string(), golden::compile_case(path)))
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

/// The counts of the plan from `uniform(n)` to `uniform(n)` changed by `change`.
fn counts_after(n: usize, change: impl Fn(&mut Vec<Svc>)) -> String {
    counts_between(n, |_| {}, change)
}

/// The same, from `uniform(n)` changed by `setup`.
fn counts_between(
    n: usize,
    setup: impl Fn(&mut Vec<Svc>),
    change: impl Fn(&mut Vec<Svc>),
) -> String {
    let mut before = uniform(n);
    setup(&mut before);
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
fn adding_an_endpoint_changes_slots_and_the_dispatch_element() {
    // The port's 3 slots leave the map of `clusterip-random-3` and 4 slots go into the map of
    // `clusterip-random-4`; the service-ips element is replaced to enter the new chain. In this
    // uniform cluster (3 endpoints each) no Service used that chain yet: it is created with its
    // map and 2 rules. The endpoint runs on node-b: no hairpin pair (it cannot send to this
    // ClusterIP through this node).
    assert_counts(
        |c| c[CLUSTER_IP].endpoints.push(Ep::ready(4, 1)),
        "add chain 1, add set 1, add rule 2, add element 5, delete element 4",
    );
    // On this node, its hairpin pair comes too.
    assert_counts(
        |c| c[CLUSTER_IP].endpoints.push(Ep::ready(4, 0)),
        "add chain 1, add set 1, add rule 2, add element 6, delete element 4",
    );
    // Where another ClusterIP Service already has 4 endpoints, the chain exists: elements only.
    for n in [20, 200] {
        let counts = counts_between(
            n,
            |c| c[CLUSTER_IP + 2].endpoints.push(Ep::ready(9, 1)),
            |c| c[CLUSTER_IP].endpoints.push(Ep::ready(4, 1)),
        );
        assert_eq!(counts, "add element 5, delete element 4", "{n} Services");
    }
}

#[test]
fn removing_an_endpoint_changes_slots_and_the_dispatch_element() {
    // 3 slots out of `clusterip-random-3`'s map, 2 into `clusterip-random-2`'s (created with
    // its chain, unused before in this cluster), the service-ips element replaced. The endpoint
    // ran on node-c: it had no hairpin pair.
    assert_counts(
        |c| {
            c[CLUSTER_IP].endpoints.pop();
        },
        "add chain 1, add set 1, add rule 2, add element 3, delete element 4",
    );
    // The one on this node (the first) takes its hairpin pair with it.
    assert_counts(
        |c| {
            c[CLUSTER_IP].endpoints.remove(0);
        },
        "add chain 1, add set 1, add rule 2, add element 3, delete element 5",
    );
}

#[test]
fn new_paths_go_first_and_old_ones_last() {
    // An endpoint removed (this node's): `clusterip-random-2` with its map, rules and the
    // port's 2 slots first; then the dispatch element moved to it and the endpoint's hairpin
    // pair deleted; then the 3 slots the port leaves in `clusterip-random-3`'s map.
    let before = uniform(20);
    let mut after = before.clone();
    after[CLUSTER_IP].endpoints.remove(0);
    let tx = check(&ruleset(&before), &ruleset(&after));
    let [prepare, switch, retire] = tx.phases();
    assert_eq!(
        prepare.counts().to_string(),
        "add chain 1, add set 1, add rule 2, add element 2"
    );
    assert_eq!(
        switch.counts().to_string(),
        "add element 1, delete element 2"
    );
    assert_eq!(retire.counts().to_string(), "delete element 3");
    for op in &retire.ops {
        assert!(op.to_string().contains("clusterip-random-3"), "{op}");
    }
    // The only Service with 4 endpoints back to 3: the chain and map for 4 are retired
    // (deleting the map deletes its slots); the 3 slots in the map for 3, which exists, are
    // committed with the dispatch element that leads there (replacing the old one): nothing
    // to prepare.
    let mut before = uniform(20);
    before[CLUSTER_IP].endpoints.push(Ep::ready(4, 1));
    let after = uniform(20);
    let tx = check(&ruleset(&before), &ruleset(&after));
    let [prepare, switch, retire] = tx.phases();
    assert!(prepare.is_empty(), "{prepare}");
    assert_eq!(
        switch.counts().to_string(),
        "add element 4, delete element 1"
    );
    assert_eq!(
        retire.counts().to_string(),
        "flush chain 1, delete chain 1, delete set 1"
    );
    // A Service added into existing chains: one transaction.
    let before = uniform(20);
    let mut after = before.clone();
    after.push(Svc::new(Kind::ClusterIp));
    let tx = check(&ruleset(&before), &ruleset(&after));
    let [prepare, switch, retire] = tx.phases();
    assert!(prepare.is_empty() && retire.is_empty(), "{prepare}{retire}");
    assert_eq!(switch.counts().to_string(), "add element 6");
}

#[test]
fn adding_a_service_adds_elements_only() {
    // svc-N is a ClusterIP Service (N even) with 3 endpoints, like others: it enters the
    // existing `clusterip-random-3`; elements: cluster-ips, service-ips, three slots and the
    // hairpin pair of its endpoint on this node.
    for n in [20, 200] {
        let before = uniform(n);
        let mut after = before.clone();
        after.push(Svc::new(Kind::ClusterIp));
        let tx = check(&ruleset(&before), &ruleset(&after));
        assert_eq!(tx.counts().to_string(), "add element 6");
        // And the reverse.
        let tx = check(&ruleset(&after), &ruleset(&before));
        assert_eq!(tx.counts().to_string(), "delete element 6");
    }
}

#[test]
fn a_service_without_endpoints_loses_its_elements_and_rejects() {
    // The service-ips element, the three slots and the hairpin pair of the endpoint on this
    // node go, a no-endpoint-services element (reject) comes. The ClusterIP stays in
    // cluster-ips and the shared chain stays for the other Services.
    assert_counts(
        |c| c[CLUSTER_IP].endpoints.clear(),
        "add element 1, delete element 5",
    );
}

#[test]
fn external_traffic_policy_local_moves_the_nodeport_to_the_local_chains() {
    // The service-nodeports element is replaced to enter `nodeport-from-node-random-3` (this
    // node's pods and the node itself: all 3 endpoints), whose map takes the 3 slots the map
    // of `nodeport-random-3` loses; clients elsewhere are sent by a new
    // external-local-nodeports element to `nodeport-local-random-1`, whose map holds the one
    // node-local endpoint. Both chains are new in this cluster (2 + 1 rules, 2 maps). Pods on
    // other nodes now reach every endpoint through this node's NodePort un-masqueraded (the
    // short-circuit of pod traffic), so the endpoints on node-b and node-c get hairpin pairs.
    assert_counts(
        |c| c[NODE_PORT].etp_local = true,
        "add chain 2, add set 2, add rule 3, add element 8, delete element 4",
    );
}

#[test]
fn changing_the_cluster_ip_moves_its_elements_only() {
    // cluster-ips, service-ips and the three slots are deleted and added with the new address;
    // the shared chain does not name addresses.
    assert_counts(
        |c| c[CLUSTER_IP].moved_ip = true,
        "add element 5, delete element 5",
    );
}

#[test]
fn an_affinity_timeout_change_replaces_the_map_and_rewrites_its_chain() {
    // The affinity map (one for the three endpoints) changes its timeout: it is deleted and
    // re-added; the service chain uses it, so it is flushed and refilled even though its rules
    // (the known-client DNAT and the three-rule cascade, after the masquerade rule) are the same.
    let mut before = uniform(20);
    before[CLUSTER_IP].affinity = Some(None);
    let mut after = before.clone();
    after[CLUSTER_IP].affinity = Some(Some(60));
    let tx = check(&ruleset(&before), &ruleset(&after));
    assert_eq!(
        tx.counts().to_string(),
        "add set 1, add rule 5, flush chain 1, delete set 1"
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
        // The owning variant plans the same, from nothing (a cold start: elements moved) and
        // from another cluster.
        prop_assert_eq!(plan_owned(&Ruleset::default(), new.clone()), plan(&Ruleset::default(), &new));
        prop_assert_eq!(plan_owned(&old, new.clone()), plan(&old, &new));
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
