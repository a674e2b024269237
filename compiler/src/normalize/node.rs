//! The node-wide part of the graph: which node we are (name, zone, primary IPs), the addresses
//! NodePorts answer on, and the ServiceCIDR prefixes. These come from the config and the Node
//! and ServiceCIDR objects, never from Services.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::address::{parse_cidr, parse_ip};
use super::Obj;
use crate::config::NodePortAddress;
use crate::graph::NodeInfo;
use crate::ir::Family;
use crate::{Config, Diagnostic};

/// The label the node's zone is read from (and that `forZones` hints refer to).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// This node's name, by kube-proxy's rule: `--hostname-override` trimmed and lower-cased,
/// empty meaning unset.
pub(super) fn node_name(config: &Config) -> Option<String> {
    (config.hostname.as_deref())
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
}

/// This node's name, zone and primary IPs.
pub(super) fn node_info(nodes: &[Node], config: &Config, diags: &mut Vec<Diagnostic>) -> NodeInfo {
    let name = node_name(config);
    let node = name.as_deref().and_then(|name| {
        nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    });
    if let (Some(name), None) = (&name, node) {
        diags.push(Diagnostic::new(
            "Node",
            "",
            name,
            "metadata.name",
            "no Node object with this name; zone unknown and node IPs only from --node-ip",
        ));
    }

    let zone = node
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|labels| labels.get(ZONE_LABEL))
        .filter(|zone| !zone.is_empty())
        .cloned();

    let mut ips = Vec::new();
    if !config.node_ips.is_empty() {
        for ip in &config.node_ips {
            push_first_of_family(&mut ips, *ip);
        }
    } else if let Some(node) = node {
        let obj = Obj::cluster("Node", &node.metadata);
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, address) in addresses.into_iter().flatten().enumerate() {
            if address.type_ != "InternalIP" {
                continue;
            }
            let field = format!("status.addresses[{i}].address");
            match parse_ip(&address.address) {
                Some(ip) => push_first_of_family(&mut ips, ip.value),
                None => diags.push(obj.diag(field, "invalid IP address; skipped")),
            }
        }
    }
    ips.sort();

    let mut addresses: BTreeSet<IpAddr> = ips.iter().copied().collect();
    if let Some(node) = node {
        let obj = Obj::cluster("Node", &node.metadata);
        let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, address) in listed.into_iter().flatten().enumerate() {
            if !matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
                continue;
            }
            match parse_ip(&address.address) {
                Some(ip) => {
                    addresses.insert(ip.value);
                }
                None => diags.push(obj.diag(
                    format!("status.addresses[{i}].address"),
                    "invalid IP address; skipped",
                )),
            }
        }
    }
    let addresses = addresses.into_iter().collect();

    // `spec.podCIDRs`, or the older single `spec.podCIDR` (what kube-proxy's NodeCIDR detector
    // reads); order matters, the first of each family is the one used.
    let mut pod_cidrs = Vec::new();
    if let Some(node) = node {
        let obj = Obj::cluster("Node", &node.metadata);
        let spec = node.spec.as_ref();
        let (texts, field): (Vec<&String>, &str) = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
            Some(list) if !list.is_empty() => (list.iter().collect(), "spec.podCIDRs"),
            _ => (
                spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
                "spec.podCIDR",
            ),
        };
        for (i, text) in texts.into_iter().enumerate() {
            let field = if field == "spec.podCIDRs" {
                format!("{field}[{i}]")
            } else {
                field.to_owned()
            };
            match parse_cidr(text, false) {
                Some(net) => {
                    if net.sloppy {
                        diags.push(obj.diag(
                            &field,
                            format!("leading zeros in IPv4 prefix; read as {}", net.value),
                        ));
                    }
                    pod_cidrs.push(net.value);
                }
                None => diags.push(obj.diag(field, format!("invalid CIDR {text:?}; skipped"))),
            }
        }
    }

    NodeInfo {
        name,
        zone,
        ips,
        addresses,
        pod_cidrs,
    }
}

fn push_first_of_family(ips: &mut Vec<IpAddr>, ip: IpAddr) {
    if !ips.iter().any(|have| Family::of(*have) == Family::of(ip)) {
        ips.push(ip);
    }
}

/// `--nodeport-addresses` resolved against the node IPs, without loopback prefixes.
///
/// Whether a family serves NodePorts on every local address is decided from what the operator
/// wrote, never from what is left after filtering: only a family that no entry names gets the
/// zero-length prefix (kube-proxy's "match all"). `primary` names both families; a family whose
/// entries all resolve to nothing (loopback only, or `primary` on a node without an address of
/// the family) serves no NodePort at all, where a fallback to "every address" would open them
/// exactly where the operator restricted them.
pub(super) fn nodeport_addresses(
    node: &NodeInfo,
    config: &Config,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpNet> {
    let primary = [NodePortAddress::Primary];
    let entries: &[NodePortAddress] = if config.nodeport_addresses.is_empty() {
        &primary
    } else {
        &config.nodeport_addresses
    };
    let mut out = BTreeSet::new();
    let mut named = BTreeSet::new();
    let mut loopback = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let nets: Vec<IpNet> = match entry {
            NodePortAddress::Primary => {
                named.extend([Family::Ip, Family::Ip6]);
                node.ips.iter().map(|ip| IpNet::from(*ip)).collect()
            }
            NodePortAddress::Cidr(net) => {
                named.insert(Family::of_net(net));
                vec![*net]
            }
        };
        for net in nets {
            // NodePorts are never served on localhost (kube-proxy logs and ignores these).
            if Family::of_net(&net).loopback().contains(&net) {
                loopback.push((i, net));
                continue;
            }
            out.insert(net);
        }
    }
    for (i, net) in loopback {
        let family = Family::of_net(&net);
        let left = if out.iter().any(|n| Family::of_net(n) == family) {
            String::new()
        } else {
            // kube-proxy's nftables mode ends up the same way: its nodeport-ips set is empty.
            let family = family.ip_name();
            format!("; no other {family} entry, so no {family} address serves NodePorts")
        };
        diags.push(Diagnostic::new(
            "Config",
            "",
            "nodeport-addresses",
            format!("[{i}]"),
            format!("{net} is loopback, where NodePorts are not served; skipped{left}"),
        ));
    }
    for family in [Family::Ip, Family::Ip6] {
        if !named.contains(&family) {
            let any: IpAddr = match family {
                Family::Ip => std::net::Ipv4Addr::UNSPECIFIED.into(),
                Family::Ip6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            out.insert(IpNet::new(any, 0).expect("a zero-length prefix is valid"));
        }
    }
    out.into_iter().collect()
}

/// The prefixes of every ServiceCIDR object.
pub(super) fn service_cidrs<'a>(
    objects: impl IntoIterator<Item = &'a ServiceCIDR>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpNet> {
    let mut out = BTreeSet::new();
    for cidr in objects {
        let obj = Obj::cluster("ServiceCIDR", &cidr.metadata);
        let cidrs = cidr.spec.as_ref().and_then(|s| s.cidrs.as_ref());
        for (i, text) in cidrs.into_iter().flatten().enumerate() {
            let field = format!("spec.cidrs[{i}]");
            match parse_cidr(text, false) {
                Some(net) => {
                    if net.sloppy {
                        diags.push(obj.diag(
                            field,
                            format!("leading zeros in IPv4 prefix; read as {}", net.value),
                        ));
                    }
                    out.insert(net.value);
                }
                None => diags.push(obj.diag(field, format!("invalid CIDR {text:?}; skipped"))),
            }
        }
    }
    out.into_iter().collect()
}
