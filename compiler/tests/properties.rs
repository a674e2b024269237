//! Property tests over random valid clusters: compiling always yields a ruleset that verifies
//! (`compile` panics otherwise), rendering is deterministic, and every endpoint the graph says a
//! service port may use is a DNAT target of some traced packet — with the exact 1/K share for the
//! random scheduler — while nothing else is.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kube_nft_compiler::graph::Graph;
use kube_nft_compiler::ir::{Family, L4Proto};
use kube_nft_compiler::model::{load, Snapshot, Source};
use kube_nft_compiler::render::render;
use kube_nft_compiler::trace::{trace, Env, Origin, Packet, Ratio};
use kube_nft_compiler::{compile, Config};
use proptest::prelude::*;
use serde_json::{json, Value};

/// One generated endpoint: host part of its pod IP, its node, and its conditions.
#[derive(Clone, Debug)]
struct Ep {
    host: u8,
    node: u8,
    ready: bool,
    serving: bool,
    terminating: bool,
}

#[derive(Clone, Debug)]
struct Svc {
    kind: u8,
    etp_local: bool,
    itp_local: bool,
    affinity: bool,
    scheduler: u8,
    ports: Vec<(u8, u16)>,
    endpoints: Vec<Ep>,
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
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        prop::collection::btree_set((0u8..3, 1u16..100), 1..3),
        prop::collection::vec(ep(), 0..6),
    )
        .prop_map(
            |(kind, etp_local, itp_local, affinity, scheduler, ports, endpoints)| Svc {
                kind,
                etp_local,
                itp_local,
                affinity,
                scheduler,
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
        let mut spec = json!({
            "type": kind,
            "clusterIP": format!("172.30.{}.{}", i / 200, i % 200 + 1),
            "ports": ports,
            "selector": {"app": name},
            "externalTrafficPolicy": if s.etp_local { "Local" } else { "Cluster" },
            "internalTrafficPolicy": if s.itp_local { "Local" } else { "Cluster" },
        });
        if s.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
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
            if generated.scheduler == 2 {
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
            if generated.scheduler == 0 && !want.is_empty() {
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
                if generated.scheduler == 2 {
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
