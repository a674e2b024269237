//! Checks across objects, over the finished graph: what no single Service, slice or Node is wrong
//! about on its own but the ruleset cannot honour as written. Each finding is a diagnostic and
//! nothing more; the graph is already what kube-proxy would program, and lowering keeps it so.
//! The checks are a pure function of the graph, so the one-shot `normalize` and an incremental
//! path that patches a graph can both run them on the result.

use crate::graph::Graph;
use crate::ir::Family;
use crate::Diagnostic;

use super::node::family_name;

/// How many Services a diagnostic that lists them names before it only counts.
const LISTED: usize = 3;

/// Every cross-object finding about `graph`, sorted.
pub(crate) fn check(graph: &Graph) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    unserved_node_ports(graph, &mut diags);
    diags.sort();
    diags
}

/// NodePorts of a family in which no address serves NodePorts: `--nodeport-addresses` named the
/// family (a CIDR of it, or `primary`) but nothing usable was left (only loopback, or `primary`
/// on a node without an address of the family). kube-proxy's nftables mode serves none there
/// either; the operator learns which Services that leaves unreachable.
fn unserved_node_ports(graph: &Graph, diags: &mut Vec<Diagnostic>) {
    for family in [Family::Ip, Family::Ip6] {
        if graph
            .nodeport_addresses
            .iter()
            .any(|net| Family::of_net(net) == family)
        {
            continue;
        }
        let ports: Vec<String> = graph
            .services
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
        let family = family_name(family);
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
