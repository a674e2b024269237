//! Checks across objects, over the finished graph: what no single Service, slice or Node is wrong
//! about on its own but the ruleset cannot honour as written (two Services claiming one address
//! and port or one health-check NodePort, an endpoint that is another Service's ClusterIP,
//! NodePorts no address serves). Each
//! finding is a diagnostic and nothing more; the graph is already what kube-proxy would program,
//! and lowering keeps it so. The checks are a pure function of the graph, so the one-shot
//! `normalize` and an incremental path that patches a graph can both run them on the result.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::graph::{Backend, Graph, Service};
use crate::ir::{Family, L4Proto};
use crate::Diagnostic;

/// How many Services a diagnostic that lists them names before it only counts.
const LISTED: usize = 3;

/// Every cross-object finding about `graph`, sorted.
pub(crate) fn check(graph: &Graph) -> Vec<Diagnostic> {
    check_services(graph, &graph.services.iter().collect::<Vec<_>>())
}

/// [`check`] over the node-wide part of a graph (`context`, whose own Services are ignored)
/// and Services held elsewhere (the daemon keeps them per Service, not in one graph).
pub(crate) fn check_services(context: &Graph, services: &[&Service]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    unserved_node_ports(context, services, &mut diags);
    endpoints_that_are_cluster_ips(services, &mut diags);
    shared_addresses_and_ports(services, &mut diags);
    shared_health_check_ports(services, &mut diags);
    diags.sort();
    diags
}

/// NodePorts of a family in which no address serves NodePorts: `--nodeport-addresses` named the
/// family (a CIDR of it, or `primary`) but nothing usable was left (only loopback, or `primary`
/// on a node without an address of the family). kube-proxy's nftables mode serves none there
/// either; the operator learns which Services that leaves unreachable.
fn unserved_node_ports(graph: &Graph, services: &[&Service], diags: &mut Vec<Diagnostic>) {
    for family in [Family::Ip, Family::Ip6] {
        if graph
            .nodeport_addresses
            .iter()
            .any(|net| Family::of_net(net) == family)
        {
            continue;
        }
        let ports: Vec<String> = services
            .iter()
            .filter(|svc| svc.cluster_ips.iter().any(|ip| Family::of(*ip) == family))
            .flat_map(|svc| {
                svc.ports.iter().filter_map(move |p| {
                    p.node_port
                        .map(|np| format!("{}/{} {np}/{}", svc.namespace, svc.name, p.proto))
                })
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let family = family.ip_name();
        diags.push(Diagnostic::new(
            "Config",
            "",
            "nodeport-addresses",
            family,
            format!(
                "no {family} address of this node is selected (the {family} entries are \
                 loopback, or `primary` and the node has no {family} address), so {family} \
                 NodePorts are not served: {}",
                listed(&ports)
            ),
        ));
    }
}

/// `a, b, c and 4 more`.
fn listed(items: &[String]) -> String {
    let shown = items[..items.len().min(LISTED)].join(", ");
    match items.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Endpoints whose address is a ClusterIP. A connection is NATed once: the DNAT to the ClusterIP
/// is not dispatched again, and after it `cluster-ips-check` (forward and output hooks) sees a
/// ClusterIP destination that no service port claimed and rejects it, in kube-proxy's ruleset as
/// in ours. The Service is named because the graph keeps endpoints per Service port, not per
/// slice; its EndpointSlices (or Endpoints) hold the address.
fn endpoints_that_are_cluster_ips(services: &[&Service], diags: &mut Vec<Diagnostic>) {
    let mut owner: BTreeMap<IpAddr, &Service> = BTreeMap::new();
    for &svc in services {
        for ip in &svc.cluster_ips {
            owner.entry(*ip).or_insert(svc);
        }
    }
    for &svc in services {
        let mut seen = BTreeSet::new();
        for port in &svc.ports {
            for backend in port.cluster.iter().chain(port.local.iter()) {
                let Some(other) = owner.get(&backend.addr) else {
                    continue;
                };
                if !seen.insert(backend.addr) {
                    continue;
                }
                diags.push(Diagnostic::new(
                    "Service",
                    &svc.namespace,
                    &svc.name,
                    "endpoints",
                    format!(
                        "endpoint {} is the ClusterIP of Service {}/{}: a connection is NATed \
                         once, so traffic sent to it is not balanced again but rejected \
                         (cluster-ips-check), as with kube-proxy; list the pods' addresses",
                        backend.addr, other.namespace, other.name
                    ),
                ));
            }
        }
    }
}

/// What a Service claims a dispatch key with, and the field that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    NodePort,
}

impl Claim {
    fn field(self) -> &'static str {
        match self {
            Claim::ClusterIp => "spec.clusterIPs",
            Claim::ExternalIp => "spec.externalIPs",
            Claim::LoadBalancerIp => "status.loadBalancer.ingress",
            Claim::NodePort => "spec.ports",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Claim::ClusterIp => "ClusterIP",
            Claim::ExternalIp => "externalIP",
            Claim::LoadBalancerIp => "LoadBalancer IP",
            Claim::NodePort => "NodePort",
        }
    }
}

/// One Service's claim on a dispatch key (`service-ips`: address, protocol, port;
/// `service-nodeports`: family, protocol, NodePort).
struct Claimant<'g> {
    svc: &'g Service,
    claim: Claim,
    /// Whether it puts an element for the key into the dispatch map (it has endpoints for
    /// it), rather than only a reject or drop into a `no-endpoint-*` map.
    dispatches: bool,
}

/// Several Services claiming one address and port (an externalIP or LoadBalancer IP shared
/// with another Service, or a ClusterIP or NodePort the API server would not have handed out
/// twice). A map holds one element per key, so one Service wins: lowering keeps the first
/// element for a key, and adds them in namespace/name order, so the winner is the first such
/// Service that has endpoints for the port (it is the one that adds a dispatch element), or
/// the first at all when none has. kube-proxy has no stable winner: its nftables proxier
/// writes the elements while iterating over a Go map of service ports, the last write wins,
/// and the order can change from one sync to the next (`pkg/proxy/nftables/proxier.go`,
/// `nftElementStorage.ensureElem`). kube-nft keeps its deterministic choice and says so.
fn shared_addresses_and_ports(services: &[&Service], diags: &mut Vec<Diagnostic>) {
    type Key = (Option<IpAddr>, Family, L4Proto, u16);
    let mut claims: BTreeMap<Key, Vec<Claimant<'_>>> = BTreeMap::new();
    for &svc in services {
        for port in &svc.ports {
            for family in [Family::Ip, Family::Ip6] {
                // A Service exists in a family through its ClusterIP (see `lower`).
                let Some(cluster_ip) = svc
                    .cluster_ips
                    .iter()
                    .copied()
                    .find(|ip| Family::of(*ip) == family)
                else {
                    continue;
                };
                let has = |list: &[Backend]| list.iter().any(|b| Family::of(b.addr) == family);
                let cluster = has(&port.cluster);
                let internal = if svc.internal_local {
                    has(&port.local)
                } else {
                    cluster
                };
                let mut add = |addr: Option<IpAddr>, number: u16, claim, dispatches| {
                    let key = (addr, family, port.proto, number);
                    let list = claims.entry(key).or_default();
                    // One Service claiming a key twice (an externalIP that is also its LoadBalancer
                    // IP) is one claim.
                    if !list.iter().any(|c| std::ptr::eq(c.svc, svc)) {
                        list.push(Claimant {
                            svc,
                            claim,
                            dispatches,
                        });
                    }
                };
                add(Some(cluster_ip), port.port, Claim::ClusterIp, internal);
                for ip in svc
                    .external_ips
                    .iter()
                    .filter(|ip| Family::of(**ip) == family)
                {
                    add(Some(*ip), port.port, Claim::ExternalIp, cluster);
                }
                for ip in svc.lb_ips.iter().filter(|ip| Family::of(**ip) == family) {
                    add(Some(*ip), port.port, Claim::LoadBalancerIp, cluster);
                }
                if let Some(node_port) = port.node_port {
                    add(None, node_port, Claim::NodePort, cluster);
                }
            }
        }
    }
    for ((addr, family, proto, number), list) in claims {
        if list.len() < 2 {
            continue;
        }
        let (winner, why) = match list.iter().find(|c| c.dispatches) {
            Some(w) => (w, "the first Service in namespace/name order with endpoints for it"),
            None => (
                &list[0],
                "no claimant has endpoints; the first in namespace/name order decides reject or drop",
            ),
        };
        let what = match addr {
            Some(addr) => format!("{addr} port {number}/{proto}"),
            None => format!("{} NodePort {number}/{proto}", family.ip_name()),
        };
        for loser in list.iter().filter(|c| !std::ptr::eq(c.svc, winner.svc)) {
            diags.push(Diagnostic::new(
                "Service",
                &loser.svc.namespace,
                &loser.svc.name,
                loser.claim.field(),
                format!(
                    "{what} ({}) is also claimed by Service {}/{} ({}), which gets the traffic: \
                     {why}. kube-proxy picks whichever it writes last, which can change from one \
                     sync to the next",
                    loser.claim.what(),
                    winner.svc.namespace,
                    winner.svc.name,
                    winner.claim.what(),
                ),
            ));
        }
    }
}

/// Several Services with one `spec.healthCheckNodePort` (the API server hands each out once,
/// so only hand-written objects get here). One listener answers for one Service: the first in
/// namespace/name order, as the daemon serves it; kube-proxy opens them in Go map order and the
/// second fails to listen, so which one answers can change between restarts.
fn shared_health_check_ports(services: &[&Service], diags: &mut Vec<Diagnostic>) {
    let mut first: BTreeMap<u16, &Service> = BTreeMap::new();
    for &svc in services {
        let Some(port) = svc.health_check_node_port else {
            continue;
        };
        let Some(winner) = first.get(&port) else {
            first.insert(port, svc);
            continue;
        };
        diags.push(Diagnostic::new(
            "Service",
            &svc.namespace,
            &svc.name,
            "spec.healthCheckNodePort",
            format!(
                "{port} is also the health-check NodePort of Service {}/{}, which answers on it \
                 (the first in namespace/name order); this Service's health is not served",
                winner.namespace, winner.name
            ),
        ));
    }
}
