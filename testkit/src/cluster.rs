//! Generated clusters: a list of [`Svc`]s becomes JSON manifests (this node `node-a` as a Node
//! object, then one Service and one EndpointSlice each), a snapshot and a ruleset compiled with
//! [`config`]; [`svc`] and [`ep`] are proptest strategies for random ones.
//!
//! Service `i` is `ns/svc<i>`, with ClusterIP `172.30.<i / 200>.<i % 200 + 1>` (`172.31.…` when
//! moved, `fd00:30::<i + 1>` for IPv6), port `j` named `p<j>` with target port `8000 + port` and
//! node port `30000 + 10 i + j`, and LoadBalancer ingress `198.51.100.<i + 1>`. An endpoint's pod
//! IP is `10.<node>.<i % 250>.<host>` (`fd00:10:<i>::<host>` for IPv6).

use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::model::Snapshot;
use kube_nft_compiler::{compile, Config};
use proptest::prelude::*;
use serde_json::{json, Value};

/// The nodes endpoints live on; `node-a` is this node.
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// Service port protocols, as the strategies pick them.
pub const PROTOS: [&str; 3] = ["TCP", "UDP", "SCTP"];

/// A Service's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// kube-nft's `kube-nft.io/scheduler` annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    Random,
    RoundRobin,
    SourceHash,
}

/// One endpoint: host part of its pod IP, its node (index into [`NODES`]), and its conditions.
#[derive(Clone, Debug)]
pub struct Ep {
    pub host: u8,
    pub node: u8,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Ep {
    /// A ready, serving endpoint.
    pub fn ready(host: u8, node: u8) -> Ep {
        Ep {
            host,
            node,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// One Service with one EndpointSlice.
#[derive(Clone, Debug)]
pub struct Svc {
    pub kind: Kind,
    pub ipv6: bool,
    /// Take the ClusterIP from 172.31.0.0/16 instead of 172.30.0.0/16.
    pub moved_ip: bool,
    /// `(protocol, port)`.
    pub ports: Vec<(&'static str, u16)>,
    pub endpoints: Vec<Ep>,
    pub etp_local: bool,
    pub itp_local: bool,
    /// `Some(timeout)`: ClientIP affinity; `Some(None)` with the default timeout.
    pub affinity: Option<Option<u32>>,
    pub scheduler: Scheduler,
    pub source_ranges: Vec<&'static str>,
}

impl Svc {
    /// A TCP port 80 Service of `kind` with three ready endpoints, one per node.
    pub fn new(kind: Kind) -> Svc {
        Svc {
            kind,
            ipv6: false,
            moved_ip: false,
            ports: vec![("TCP", 80)],
            endpoints: vec![Ep::ready(1, 0), Ep::ready(2, 1), Ep::ready(3, 2)],
            etp_local: false,
            itp_local: false,
            affinity: None,
            scheduler: Scheduler::Random,
            source_ranges: Vec::new(),
        }
    }
}

/// `n` Services, even ones ClusterIP and odd ones NodePort, each [`Svc::new`].
pub fn uniform(n: usize) -> Vec<Svc> {
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

/// A random endpoint (serving whenever ready).
pub fn ep() -> impl Strategy<Value = Ep> {
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

/// A random IPv4 Service: any kind, traffic policies, affinity (none, default or 60 s timeout),
/// scheduler, one or two ports and up to five endpoints.
pub fn svc() -> impl Strategy<Value = Svc> {
    (
        (0u8..3, any::<bool>(), any::<bool>(), 0u8..3, 0u8..3),
        any::<bool>(),
        prop::collection::btree_set((0u8..3, 1u16..100), 1..3),
        prop::collection::vec(ep(), 0..6),
    )
        .prop_map(
            |((kind, etp_local, itp_local, affinity, scheduler), moved_ip, ports, endpoints)| Svc {
                kind: [Kind::ClusterIp, Kind::NodePort, Kind::LoadBalancer][kind as usize],
                etp_local,
                itp_local,
                affinity: [None, Some(None), Some(Some(60))][affinity as usize],
                scheduler: [
                    Scheduler::Random,
                    Scheduler::RoundRobin,
                    Scheduler::SourceHash,
                ][scheduler as usize],
                moved_ip,
                ports: ports
                    .into_iter()
                    .map(|(proto, port)| (PROTOS[proto as usize], port))
                    .collect(),
                endpoints,
                ..Svc::new(Kind::ClusterIp)
            },
        )
}

/// The manifests of a cluster as JSON documents.
pub fn manifests(services: &[Svc]) -> Vec<Value> {
    let mut docs = vec![json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
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
            let net = if s.moved_ip { 31 } else { 30 };
            (format!("172.{net}.{}.{}", i / 200, i % 200 + 1), "IPv4")
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
        let scheduler = match s.scheduler {
            Scheduler::Random => "random",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::SourceHash => "source-hash",
        };
        let mut service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "ns", "name": name,
                "annotations": {"kube-nft.io/scheduler": scheduler}},
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
            .map(|e| {
                let address = if s.ipv6 {
                    format!("fd00:10:{i:x}::{:x}", e.host)
                } else {
                    format!("10.{}.{}.{}", e.node, i % 250, e.host)
                };
                json!({
                    "addresses": [address],
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

/// The snapshot of a cluster, which must load without diagnostics.
pub fn snapshot(services: &[Svc]) -> Snapshot {
    crate::synthetic::snapshot_of(manifests(services))
}

/// The node config generated clusters are compiled with: `node-a`, cluster CIDR 10.0.0.0/8.
pub fn config() -> Config {
    Config {
        hostname: Some("node-a".into()),
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..Config::default()
    }
}

/// The compiled ruleset of a cluster.
pub fn ruleset(services: &[Svc]) -> Ruleset {
    compile(&snapshot(services), &config()).ruleset
}
