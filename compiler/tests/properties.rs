//! Property tests over random valid clusters: compiling always yields a ruleset that verifies
//! (`compile` panics otherwise), rendering is deterministic, and every endpoint the graph says a
//! service port may use is a DNAT target of some traced packet — with the exact 1/K share for the
//! random scheduler — while nothing else is.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kube_nft_compiler::compile;
use kube_nft_compiler::graph::Graph;
use kube_nft_compiler::ir::{Family, L4Proto};
use kube_nft_compiler::render::render;
use kube_nft_compiler::trace::{trace, Env, Origin, Packet, Ratio};
use kube_nft_testkit::cluster::{config, snapshot, svc, Scheduler, Svc};
use proptest::prelude::*;

fn proto(p: L4Proto) -> &'static str {
    p.keyword()
}

/// DNAT targets of a traced packet, with their probabilities.
fn targets(
    compiled: &kube_nft_compiler::Compiled,
    packet: &str,
    origin: Origin,
) -> Vec<(IpAddr, u16, Ratio)> {
    let packet: Packet = packet.parse().expect("packet");
    let env = Env::from_graph(&compiled.graph);
    trace(&compiled.ruleset, &env, &packet.with_origin(origin)).targets()
}

fn check_reachability(graph: &Graph, compiled: &kube_nft_compiler::Compiled, services: &[Svc]) {
    for svc in &graph.services {
        let generated = &services[svc.name[3..].parse::<usize>().expect("svc index")];
        let cip = svc.cluster_ips[0];
        for port in &svc.ports {
            let internal = if svc.internal_local {
                &port.local
            } else {
                &port.cluster
            };
            let pkt = format!(
                "{} 10.99.0.1:40000 -> {cip}:{}",
                proto(port.proto),
                port.port
            );
            let got = targets(compiled, &pkt, Origin::LocalPod);
            let mut got_set: BTreeSet<_> = got.iter().map(|(a, p, _)| (*a, *p)).collect();
            if generated.scheduler == Scheduler::SourceHash {
                // Source hashing pins each client to one endpoint: ask many clients. With K <= 6
                // endpoints, 256 clients miss one with probability below 1e-19.
                assert!(got.len() <= 1, "{pkt}: a client must be pinned: {got:?}");
                for host in 0..256u32 {
                    let pkt = format!(
                        "{} 10.99.{}.{}:40000 -> {cip}:{}",
                        proto(port.proto),
                        host / 250,
                        host % 250,
                        port.port
                    );
                    got_set.extend(
                        targets(compiled, &pkt, Origin::LocalPod)
                            .into_iter()
                            .map(|(a, p, _)| (a, p)),
                    );
                }
            }
            let want: BTreeSet<_> = internal.iter().map(|b| (b.addr, b.port)).collect();
            assert_eq!(
                got_set, want,
                "ClusterIP targets of {}/{} {pkt}",
                svc.namespace, svc.name
            );
            // Random balancing is exact: each endpoint gets 1/K.
            if generated.scheduler == Scheduler::Random && !want.is_empty() {
                let share = Ratio::new(1, want.len() as u64);
                assert!(got.iter().all(|(_, _, p)| *p == share), "{pkt}: {got:?}");
            }
            if let Some(np) = port.node_port {
                let external = if svc.external_local {
                    &port.local
                } else {
                    &port.cluster
                };
                let pkt = format!(
                    "{} 203.0.113.9:40000 -> 192.168.0.2:{np}",
                    proto(port.proto)
                );
                let got: BTreeSet<_> = targets(compiled, &pkt, Origin::Outside)
                    .into_iter()
                    .map(|(a, p, _)| (a, p))
                    .collect();
                let want: BTreeSet<_> = external.iter().map(|b| (b.addr, b.port)).collect();
                if generated.scheduler == Scheduler::SourceHash {
                    assert!(
                        got.is_subset(&want),
                        "NodePort {pkt}: {got:?} not within {want:?}"
                    );
                    continue;
                }
                assert_eq!(
                    got, want,
                    "NodePort targets of {}/{} {pkt}",
                    svc.namespace, svc.name
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_clusters_verify_render_deterministically_and_reach_every_endpoint(
        services in prop::collection::vec(svc(), 1..8)
    ) {
        let snap = snapshot(&services);
        let config = config();
        // `compile` verifies the ruleset and panics on any violation.
        let compiled = compile(&snap, &config);
        let again = compile(&snap, &config);
        prop_assert_eq!(render(&compiled), render(&again));
        prop_assert!(compiled.ruleset.table(Family::Ip).is_some());
        check_reachability(&compiled.graph, &compiled, &services);
    }
}
