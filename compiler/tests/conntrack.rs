//! The conntrack reconciler's judge against the ruleset itself, over random clusters: every
//! DNAT target the packet tracer finds for a new UDP or SCTP packet to a frontend (ClusterIP,
//! LoadBalancer IP, NodePort on the node's address, from a local pod, from outside and from the
//! host) is judged serving, so the reconciler never deletes an entry the ruleset would create
//! again; an entry DNATed anywhere else is stale; an entry never DNATed is stale exactly when
//! the tracer finds a DNAT for that frontend; TCP and entries to addresses that are not
//! frontends are never stale. (That the judge's lists are exactly the tracer's targets, with
//! many clients for source hashing, is `properties.rs`'s reachability check on the same
//! graph lists.) The frontends our tables hold (`frontends_of`, what a restarted
//! daemon or `compile -f` reads back) are exactly the graph's; and the warm compiler's
//! destinations equal those of `compile` after a change.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kube_nft_compiler::compile;
use kube_nft_compiler::conntrack::{
    frontends_of, Address, AffinityMaps, Destinations, Flow, Frontend, Kept, Stale, Targets, Tuple,
    Verdict,
};
use kube_nft_compiler::incremental::Incremental;
use kube_nft_compiler::ir::L4Proto;
use kube_nft_compiler::trace::{trace, Env, Fate, Origin, Packet};
use kube_nft_testkit::cluster::{config, snapshot, svc, Svc};
use proptest::prelude::*;

/// The generated clusters' node address (`testkit::cluster`), where NodePorts listen.
const NODE: &str = "192.168.0.2";

fn node_addresses() -> BTreeSet<IpAddr> {
    BTreeSet::from([NODE.parse().expect("address")])
}

/// A flow from `client` to `dst:port` whose replies come from `from`.
fn flow(proto: L4Proto, client: (IpAddr, u16), dst: (IpAddr, u16), from: (IpAddr, u16)) -> Flow {
    Flow {
        proto: proto.number(),
        original: Tuple {
            src: client.0,
            dst: dst.0,
            src_port: client.1,
            dst_port: dst.1,
        },
        reply: Tuple {
            src: from.0,
            dst: client.0,
            src_port: from.1,
            dst_port: client.1,
        },
    }
}

/// Where new packets to `dst` go, per the tracer: the DNAT targets from a local pod, from
/// outside and from the host.
fn traced(
    compiled: &kube_nft_compiler::Compiled,
    proto: L4Proto,
    dst: (IpAddr, u16),
) -> Vec<(IpAddr, u16)> {
    let env = Env::from_graph(&compiled.graph);
    let mut out = Vec::new();
    for (origin, saddr) in [
        (Origin::LocalPod, "10.99.0.1"),
        (Origin::Outside, "203.0.113.9"),
        (Origin::Host, NODE),
    ] {
        let packet = Packet {
            proto,
            saddr: saddr.parse().expect("address"),
            sport: 40000,
            daddr: dst.0,
            dport: dst.1,
            origin,
        };
        for outcome in trace(&compiled.ruleset, &env, &packet).outcomes {
            if let Fate::Accept {
                dnat: Some(target), ..
            } = outcome.fate
            {
                out.push(target);
            }
        }
    }
    out
}

fn check(services: &[Svc]) {
    let compiled = compile(&snapshot(services), &config());
    let destinations = Destinations::of_graph(&compiled.graph);
    let local = node_addresses();
    let node: IpAddr = NODE.parse().expect("address");
    let client = ("203.0.113.9".parse().expect("address"), 40000);
    let nowhere: (IpAddr, u16) = ("10.250.250.250".parse().expect("address"), 1);
    for (frontend, targets) in destinations.iter() {
        assert!(matches!(targets, Targets::Current(_)), "{frontend}");
        let dst = match frontend.address {
            Address::Ip(ip) => (ip, frontend.port),
            Address::NodePort(_) => (node, frontend.port),
        };
        let reached = traced(&compiled, frontend.proto, dst);
        let judge = |from| destinations.judge(&flow(frontend.proto, client, dst, from), &local);
        for target in &reached {
            assert_eq!(
                judge(*target),
                Verdict::Keep(Kept::Serving),
                "{frontend}: the ruleset DNATs to {target:?}, judged against {targets:?}"
            );
        }
        assert_eq!(
            judge(nowhere),
            Verdict::Delete(Stale::EndpointGone),
            "{frontend}"
        );
        let never = judge(dst);
        if reached.is_empty() {
            assert_eq!(never, Verdict::Keep(Kept::NoEndpoints), "{frontend}");
        } else {
            assert_eq!(never, Verdict::Delete(Stale::NeverNatted), "{frontend}");
        }
        // TCP to the same place, and the same port on an address that is not ours.
        let tcp = flow(L4Proto::Tcp, client, dst, nowhere);
        assert_eq!(
            destinations.judge(&tcp, &local),
            Verdict::Keep(Kept::NotUdpOrSctp)
        );
        let elsewhere = ("192.0.2.77".parse().expect("address"), dst.1);
        assert_eq!(
            destinations.judge(&flow(frontend.proto, client, elsewhere, nowhere), &local),
            Verdict::Keep(Kept::NotOurs)
        );
    }
    let tables: BTreeSet<Frontend> = frontends_of(&compiled.ruleset);
    let graph: BTreeSet<Frontend> = destinations.iter().map(|(f, _)| *f).collect();
    assert_eq!(tables, graph, "the tables' frontends are the graph's");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_judge_keeps_what_the_ruleset_does_and_nothing_else(
        services in prop::collection::vec(svc(), 1..6)
    ) {
        check(&services);
    }

    #[test]
    fn the_warm_compiler_has_the_destinations_and_affinity_maps_of_compile(
        before in prop::collection::vec(svc(), 1..5),
        after in prop::collection::vec(svc(), 1..5),
    ) {
        let mut inc = Incremental::new(&config());
        for state in [&before, &after] {
            let snap = snapshot(state);
            let inputs = inc.inputs_mut();
            // Services of a longer `before` that `after` lacks are deleted with their slices.
            for i in state.len()..before.len().max(after.len()) {
                let key = kube_nft_compiler::normalize::Key::new("ns", format!("svc{i}"));
                inputs.delete(kube_nft_compiler::normalize::Kind::Service, &key);
                let slice = kube_nft_compiler::normalize::Key::new("ns", format!("svc{i}-abc"));
                inputs.delete(kube_nft_compiler::normalize::Kind::EndpointSlice, &slice);
            }
            snap.services.iter().for_each(|o| inputs.apply_service(o));
            snap.endpoint_slices.iter().for_each(|o| inputs.apply_slice(o));
            snap.nodes.iter().for_each(|o| inputs.apply_node(o));
            let _ = inc.sync();
            let compiled = compile(&snap, &config());
            prop_assert_eq!(inc.udp_destinations(), Destinations::of_graph(&compiled.graph));
            prop_assert_eq!(inc.affinity_maps(), AffinityMaps::of_ruleset(&compiled.ruleset));
        }
    }
}

#[test]
fn a_handmade_cluster_with_every_frontend_kind() {
    let mut services = vec![
        Svc::new(kube_nft_testkit::cluster::Kind::LoadBalancer),
        Svc::new(kube_nft_testkit::cluster::Kind::NodePort),
        Svc::new(kube_nft_testkit::cluster::Kind::ClusterIp),
    ];
    for (i, s) in services.iter_mut().enumerate() {
        s.ports = vec![("UDP", 53), ("SCTP", 9), ("TCP", 80)];
        s.etp_local = i == 0;
        s.itp_local = i == 2;
    }
    services[1].endpoints.clear();
    check(&services);
    let destinations = Destinations::of_graph(&compile(&snapshot(&services), &config()).graph);
    // LoadBalancer: ClusterIP, LB IP and NodePort for UDP and SCTP; NodePort: ClusterIP and
    // NodePort; ClusterIP: ClusterIP.
    assert_eq!(destinations.len(), 2 * 3 + 2 * 2 + 2);
}
