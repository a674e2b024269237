//! The warm compiler against the whole-snapshot one: after any sequence of cluster states fed
//! object by object (applies and deletes, as watch events arrive), the incremental ruleset is
//! exactly what `compile` makes of the same objects, and the deltas it plans, applied in order
//! to the kernel model (`plan::apply`, which refuses dangling references as the kernel does),
//! end in that same ruleset. Each sync re-lowers only the Services whose objects changed.

use std::collections::BTreeSet;

use kube_nft_compiler::attribution::BackendIndex;
use kube_nft_compiler::compile;
use kube_nft_compiler::incremental::{Incremental, Sync};
use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::model::Snapshot;
use kube_nft_compiler::normalize::{Key, Kind};
use kube_nft_compiler::plan;
use kube_nft_compiler::Config;
use kube_nft_testkit::cluster::{config, snapshot, svc, Svc};
use kube_nft_testkit::synthetic::snapshot_of;
use proptest::prelude::*;
use serde_json::json;

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, ns: bool) -> Key {
    let namespace = match (ns, meta.namespace.as_deref()) {
        (false, _) => String::new(),
        (true, None | Some("")) => "default".to_owned(),
        (true, Some(ns)) => ns.to_owned(),
    };
    Key::new(namespace, meta.name.clone().unwrap_or_default())
}

/// Every object of a snapshot with its kind and key.
fn keys(s: &Snapshot) -> BTreeSet<(Kind, Key)> {
    let mut out = BTreeSet::new();
    out.extend(
        s.services
            .iter()
            .map(|o| (Kind::Service, key(&o.metadata, true))),
    );
    out.extend(
        s.endpoint_slices
            .iter()
            .map(|o| (Kind::EndpointSlice, key(&o.metadata, true))),
    );
    out.extend(
        s.endpoints
            .iter()
            .map(|o| (Kind::Endpoints, key(&o.metadata, true))),
    );
    out.extend(
        s.nodes
            .iter()
            .map(|o| (Kind::Node, key(&o.metadata, false))),
    );
    out.extend(
        s.service_cidrs
            .iter()
            .map(|o| (Kind::ServiceCidr, key(&o.metadata, false))),
    );
    out
}

/// Feeds the difference between two snapshots as watch events would: deletions of what is
/// gone, then every object of the new one (unchanged objects must change nothing).
fn feed(inc: &mut Incremental, old: &Snapshot, new: &Snapshot) {
    let inputs = inc.inputs_mut();
    for (kind, key) in keys(old).difference(&keys(new)) {
        inputs.delete(*kind, key);
    }
    new.services.iter().for_each(|o| inputs.apply_service(o));
    new.endpoint_slices
        .iter()
        .for_each(|o| inputs.apply_slice(o));
    new.endpoints.iter().for_each(|o| inputs.apply_endpoints(o));
    new.nodes.iter().for_each(|o| inputs.apply_node(o));
    new.service_cidrs
        .iter()
        .for_each(|o| inputs.apply_service_cidr(o));
}

/// Syncs and applies the result to the kernel model; returns how many Services a delta
/// re-lowered (`None` for a full sync).
fn sync(inc: &mut Incremental, kernel: &mut Ruleset) -> Option<usize> {
    match inc.sync() {
        Sync::Unchanged => Some(0),
        Sync::Delta {
            transaction,
            services,
            ..
        } => {
            plan::apply(kernel, &transaction)
                .unwrap_or_else(|err| panic!("delta refused: {err}\n{transaction}"));
            Some(services)
        }
        Sync::Full => {
            let desired = inc.ruleset();
            let tx = plan::plan(kernel, &desired);
            plan::apply(kernel, &tx).expect("full plan applies");
            None
        }
    }
}

fn run(states: &[Snapshot], config: &Config) {
    let mut inc = Incremental::new(config);
    let mut kernel = Ruleset::default();
    let mut previous = Snapshot::default();
    // What a daemon last handed the conntrack reconciler: refreshed only when the compiler
    // says it may have changed, which must be whenever it has.
    let mut handed = None;
    for (i, state) in states.iter().enumerate() {
        feed(&mut inc, &previous, state);
        sync(&mut inc, &mut kernel);
        let now = (inc.udp_destinations(), inc.affinity_maps());
        if inc.take_conntrack_changed() {
            handed = Some(now);
        } else {
            assert_eq!(
                handed.as_ref(),
                Some(&now),
                "state {i}: the conntrack state changed unannounced"
            );
        }
        let expected = compile(state, config);
        assert_eq!(inc.ruleset(), expected.ruleset, "state {i}: materialized");
        assert_eq!(
            kernel, expected.ruleset,
            "state {i}: kernel after the deltas"
        );
        assert_eq!(
            inc.diagnostics(),
            expected.diagnostics,
            "state {i}: diagnostics"
        );
        assert_eq!(
            inc.backend_index(),
            BackendIndex::of_graph(&expected.graph),
            "state {i}: backend index"
        );
        // The running totals equal those of a compiler that saw only this state.
        let mut fresh = Incremental::new(config);
        feed(&mut fresh, &Snapshot::default(), state);
        let _ = fresh.sync();
        assert_eq!(
            inc.no_local_endpoints(),
            fresh.no_local_endpoints(),
            "state {i}: no-local-endpoint counts"
        );
        // Nothing changed: nothing to do.
        feed(&mut inc, state, state);
        assert!(matches!(inc.sync(), Sync::Unchanged), "state {i}: resync");
        assert!(!inc.take_conntrack_changed(), "state {i}: resync");
        previous = state.clone();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn deltas_end_where_compile_does(
        states in prop::collection::vec(prop::collection::vec(svc(), 0..6), 1..5)
    ) {
        let snapshots: Vec<Snapshot> = states.iter().map(|s| snapshot(s)).collect();
        run(&snapshots, &config());
    }

    /// The same over three dispatch tables (`--dispatch-tables`): each Service's elements in
    /// its table, claims across tables.
    #[test]
    fn deltas_end_where_compile_does_over_dispatch_tables(
        states in prop::collection::vec(prop::collection::vec(svc(), 0..6), 1..5)
    ) {
        let snapshots: Vec<Snapshot> = states.iter().map(|s| snapshot(s)).collect();
        run(&snapshots, &three_tables());
    }
}

/// The test cluster's config with the dispatch over three tables per family.
fn three_tables() -> Config {
    Config {
        dispatch_tables: 3,
        ..config()
    }
}

#[test]
fn one_endpoint_change_relowers_one_service() {
    let mut services: Vec<Svc> = kube_nft_testkit::cluster::uniform(50);
    let config = config();
    let mut inc = Incremental::new(&config);
    let mut kernel = Ruleset::default();
    let first = snapshot(&services);
    feed(&mut inc, &Snapshot::default(), &first);
    assert_eq!(sync(&mut inc, &mut kernel), None, "the first sync is full");

    services[7].endpoints.pop();
    let second = snapshot(&services);
    feed(&mut inc, &first, &second);
    match inc.sync() {
        Sync::Delta {
            transaction,
            services,
            base,
        } => {
            assert_eq!(services, 1);
            // Only svc7's objects are in the partial rulesets.
            let chains: usize = base.tables.iter().map(|t| t.chains.len()).sum();
            assert!(chains <= 3, "{chains} chains in the partial ruleset");
            plan::apply(&mut kernel, &transaction).expect("applies");
        }
        other => panic!("expected a delta, got {other:?}"),
    }
    assert_eq!(kernel, compile(&second, &config).ruleset);
}

#[test]
fn only_udp_sctp_and_affinity_services_change_the_conntrack_state() {
    let mut services: Vec<Svc> = kube_nft_testkit::cluster::uniform(10);
    services[3].ports = vec![("UDP", 53)];
    services[4].affinity = Some(Some(60));
    let config = config();
    let mut inc = Incremental::new(&config);
    let mut kernel = Ruleset::default();
    let mut before = snapshot(&services);
    feed(&mut inc, &Snapshot::default(), &before);
    sync(&mut inc, &mut kernel);
    assert!(inc.take_conntrack_changed(), "the first sync");
    assert!(!inc.take_conntrack_changed(), "reset once taken");
    // Removing a Service renames the ones after it (names follow the position): all TCP.
    type Change = fn(&mut Vec<Svc>);
    let changes: [(&str, bool, Change); 7] = [
        ("a TCP endpoint removed", false, |s| {
            s[2].endpoints.pop();
        }),
        ("a UDP endpoint removed", true, |s| {
            s[3].endpoints.pop();
        }),
        ("an affinity endpoint removed", true, |s| {
            s[4].endpoints.pop();
        }),
        ("TCP became SCTP", true, |s| s[5].ports = vec![("SCTP", 80)]),
        ("and back", true, |s| s[5].ports = vec![("TCP", 80)]),
        ("a TCP Service deleted", false, |s| {
            s.remove(6);
        }),
        ("the UDP Service deleted", true, |s| {
            s.remove(3);
        }),
    ];
    for (what, expect, change) in changes {
        change(&mut services);
        let after = snapshot(&services);
        feed(&mut inc, &before, &after);
        assert!(sync(&mut inc, &mut kernel).is_some(), "{what}: a delta");
        assert_eq!(inc.take_conntrack_changed(), expect, "{what}");
        before = after;
    }
}

/// Two Services claiming the same externalIP and port: the first in namespace/name order owns
/// the dispatch element; when it goes, the other one takes over in the same delta.
#[test]
fn contested_elements_change_hands() {
    let svc = |name: &str, cluster_ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"namespace": "ns", "name": name},
               "spec": {"clusterIP": cluster_ip, "externalIPs": ["192.0.2.7"],
                        "selector": {"app": name},
                        "ports": [{"name": "http", "port": 80}]}})
    };
    let slice = |name: &str, ip: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "ns", "name": format!("{name}-x"),
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [ip], "nodeName": "node-b"},
                             {"addresses": ["10.1.0.99"], "nodeName": "node-b"}]})
    };
    let both = snapshot_of(vec![
        svc("a", "172.30.0.1"),
        slice("a", "10.1.0.1"),
        svc("b", "172.30.0.2"),
        slice("b", "10.1.0.2"),
    ]);
    let only_b = snapshot_of(vec![svc("b", "172.30.0.2"), slice("b", "10.1.0.2")]);
    let empty = Snapshot::default();
    run(
        &[
            both.clone(),
            only_b.clone(),
            both.clone(),
            empty,
            only_b.clone(),
        ],
        &config(),
    );
    // With another endpoint count, b's slots for the shared address are in another map: both
    // Services' slot groups exist, only a's dispatch element leads to them.
    let slice3 = |name: &str, ip: &str| {
        let mut s = slice(name, ip);
        s["endpoints"]
            .as_array_mut()
            .unwrap()
            .push(json!({"addresses": ["10.1.0.98"], "nodeName": "node-b"}));
        s
    };
    let uneven = snapshot_of(vec![
        svc("a", "172.30.0.1"),
        slice("a", "10.1.0.1"),
        svc("b", "172.30.0.2"),
        slice3("b", "10.1.0.2"),
    ]);
    let only_b3 = snapshot_of(vec![svc("b", "172.30.0.2"), slice3("b", "10.1.0.2")]);
    run(
        &[
            uneven.clone(),
            only_b3.clone(),
            uneven.clone(),
            both.clone(),
        ],
        &config(),
    );
    // Over dispatch tables, a and b live in different ones (ns/a in 0, ns/b in 2 of 3): the
    // elements change tables as they change hands.
    assert_ne!(
        kube_nft_compiler::lower::dispatch_table_of("ns", "a", 3),
        kube_nft_compiler::lower::dispatch_table_of("ns", "b", 3)
    );
    run(
        &[
            both.clone(),
            only_b.clone(),
            both.clone(),
            Snapshot::default(),
            only_b,
        ],
        &three_tables(),
    );
    run(&[uneven.clone(), only_b3, uneven, both], &three_tables());
}

/// A Node change that moves the node-wide part (its InternalIP, hence NodePort addresses)
/// makes the next sync a full one; a Node update that changes nothing we read does not.
#[test]
fn node_changes_are_full_only_when_they_matter() {
    let node = |ip: &str, heartbeat: &str| {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "node-a", "annotations": {"beat": heartbeat}},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    };
    let services = kube_nft_testkit::cluster::uniform(4);
    let with_node = |n| {
        let mut docs = kube_nft_testkit::cluster::manifests(&services);
        docs.retain(|d| d["kind"] != "Node");
        docs.push(n);
        snapshot_of(docs)
    };
    let config = config();
    let mut inc = Incremental::new(&config);
    let mut kernel = Ruleset::default();
    let a = with_node(node("192.168.0.10", "1"));
    feed(&mut inc, &Snapshot::default(), &a);
    assert_eq!(sync(&mut inc, &mut kernel), None);
    let b = with_node(node("192.168.0.10", "2"));
    feed(&mut inc, &a, &b);
    assert!(matches!(inc.sync(), Sync::Unchanged));
    let c = with_node(node("192.168.0.11", "3"));
    feed(&mut inc, &b, &c);
    assert_eq!(
        sync(&mut inc, &mut kernel),
        None,
        "a new node IP is a full sync"
    );
    assert_eq!(kernel, compile(&c, &config).ruleset);
}

/// After a relist, objects the new list does not contain are deleted (missed deletions).
#[test]
fn relist_sweeps_missed_deletions() {
    let services = kube_nft_testkit::cluster::uniform(3);
    let config = config();
    let mut inc = Incremental::new(&config);
    let mut kernel = Ruleset::default();
    let all = snapshot(&services);
    feed(&mut inc, &Snapshot::default(), &all);
    sync(&mut inc, &mut kernel);

    let fewer = snapshot(&services[..2]);
    let inputs = inc.inputs_mut();
    for kind in [Kind::Service, Kind::EndpointSlice] {
        inputs.begin_relist(kind);
    }
    fewer.services.iter().for_each(|o| inputs.apply_service(o));
    fewer
        .endpoint_slices
        .iter()
        .for_each(|o| inputs.apply_slice(o));
    assert_eq!(inputs.end_relist(Kind::Service), 1);
    assert_eq!(inputs.end_relist(Kind::EndpointSlice), 1);
    sync(&mut inc, &mut kernel);
    assert_eq!(kernel, compile(&fewer, &config).ruleset);
}

/// The health-check NodePorts follow the Services and their local ready endpoints: per family
/// the Service has a ClusterIP in, a port claimed twice goes to the first Service, and a
/// deleted (or refused) Service has none.
#[test]
fn health_check_ports_follow_services_and_local_endpoints() {
    use kube_nft_compiler::incremental::HealthCheck;
    use kube_nft_compiler::ir::Family;
    use std::collections::BTreeMap;

    let lb = |name: &str, cluster_ips: &[&str], hc: u16| -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "ns", "name": name},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "clusterIPs": cluster_ips, "healthCheckNodePort": hc,
                     "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}))
        .expect("service")
    };
    let slice = |service: &str, addr: &str, ready: bool| {
        let address_type = if addr.contains(':') { "IPv6" } else { "IPv4" };
        serde_json::from_value(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": format!("{service}-{address_type}"),
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": address_type,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [addr], "nodeName": "node-a",
                           "conditions": {"ready": ready, "serving": true,
                                          "terminating": !ready}}]}),
        )
        .expect("slice")
    };
    // (port, Service, local endpoints per family)
    type Entry<'a> = (u16, &'a str, &'a [(Family, usize)]);
    let expect = |entries: &[Entry<'_>]| -> BTreeMap<u16, HealthCheck> {
        entries
            .iter()
            .map(|(port, name, counts)| {
                let check = HealthCheck {
                    service: Key::new("ns", *name),
                    local_endpoints: counts.iter().copied().collect(),
                };
                (*port, check)
            })
            .collect()
    };
    let config = Config {
        hostname: Some("node-a".into()),
        ..Config::default()
    };
    let mut inc = Incremental::new(&config);
    let inputs = inc.inputs_mut();
    inputs.apply_service(&lb("web", &["10.96.0.1", "fd00:96::1"], 32000));
    inputs.apply_slice(&slice("web", "10.0.1.1", true));
    inputs.apply_slice(&slice("web", "fd00:10:1::1", false));
    // A second claimant of 32000, after `web` in namespace/name order, and one of its own.
    inputs.apply_service(&lb("zed", &["10.96.0.2"], 32000));
    inputs.apply_service(&lb("other", &["10.96.0.3"], 32001));
    inc.sync();
    assert_eq!(
        inc.health_check_ports(),
        expect(&[
            (32000, "web", &[(Family::Ip, 1), (Family::Ip6, 0)]),
            (32001, "other", &[(Family::Ip, 0)]),
        ])
    );

    // The IPv4 endpoint starts terminating; the IPv6 one becomes ready.
    let inputs = inc.inputs_mut();
    inputs.apply_slice(&slice("web", "10.0.1.1", false));
    inputs.apply_slice(&slice("web", "fd00:10:1::1", true));
    inc.sync();
    assert_eq!(
        inc.health_check_ports()[&32000],
        expect(&[(32000, "web", &[(Family::Ip, 0), (Family::Ip6, 1)])])[&32000]
    );

    // `web` goes: `zed` answers on 32000. A refused Service is not programmed: no port.
    inc.inputs_mut()
        .delete(Kind::Service, &Key::new("ns", "web"));
    inc.quarantine(&Key::new("ns", "other"), "refused");
    inc.sync();
    assert_eq!(
        inc.health_check_ports(),
        expect(&[(32000, "zed", &[(Family::Ip, 0)])])
    );
}
