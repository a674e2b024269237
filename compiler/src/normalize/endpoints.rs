//! Endpoints of one Service: its EndpointSlices (and, for selectorless Services, its legacy
//! `v1 Endpoints` mirrored the way the EndpointSlice mirroring controller would), validated once
//! per object, then categorized per service port as kube-proxy's `CategorizeEndpoints` does:
//! ready endpoints (topology-filtered when hints apply), else serving-and-terminating ones; the
//! same again restricted to this node for the Local policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::address::{parse_ip, unusable_endpoint};
use super::service::{port_number, protocol};
use super::Obj;
use crate::graph::{Backend, NodeInfo};
use crate::ir::{Family, L4Proto};
use crate::Diagnostic;

/// Label linking an EndpointSlice to its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label (also accepted as an annotation) that opts legacy Endpoints out of mirroring.
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// One endpoint of a slice with its conditions resolved (API defaults applied). The daemon
/// keeps one per endpoint of the cluster (500k at 50k Services), so it is 32 bytes without a
/// heap allocation of its own: of its node only whether it is this one is kept, and the rare
/// topology hints are boxed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    addr: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Placement,
    hints: Option<Box<Hints>>,
}

/// Where an endpoint runs, as far as this node is concerned (`nodeName` against the node
/// name of the config the store was made for, which never changes for a store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// No `nodeName`.
    Unknown,
    /// On this node.
    Here,
    /// On another node (known only when this node's name is).
    Elsewhere,
}

impl Placement {
    fn of(node_name: Option<&str>, here: Option<&str>) -> Placement {
        match (node_name, here) {
            (None, _) | (_, None) => Placement::Unknown,
            (Some(name), Some(here)) if name == here => Placement::Here,
            (Some(_), Some(_)) => Placement::Elsewhere,
        }
    }
}

/// An endpoint's `hints`: `forNodes` and `forZones` names (either may be empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Hints {
    for_nodes: BTreeSet<String>,
    for_zones: BTreeSet<String>,
}

impl Endpoint {
    fn for_nodes(&self) -> Option<&BTreeSet<String>> {
        (self.hints.as_deref()).map(|h| &h.for_nodes)
    }

    fn for_zones(&self) -> Option<&BTreeSet<String>> {
        (self.hints.as_deref()).map(|h| &h.for_zones)
    }

    fn has_node_hint(&self, name: &str) -> bool {
        self.for_nodes().is_some_and(|n| n.contains(name))
    }

    fn has_zone_hint(&self, zone: &str) -> bool {
        self.for_zones().is_some_and(|z| z.contains(zone))
    }
}

/// A named port of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SlicePort {
    name: String,
    proto: L4Proto,
    port: u16,
}

/// One validated slice (or one mirrored Endpoints subset): the compact form the daemon keeps
/// instead of the Kubernetes object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slice {
    ports: Vec<SlicePort>,
    endpoints: Vec<Endpoint>,
}

/// Whether the mirroring controller would copy these Endpoints into slices.
pub(super) fn mirrored(eps: &Endpoints) -> bool {
    let skip = |map: Option<&BTreeMap<String, String>>| {
        map.and_then(|m| m.get(SKIP_MIRROR))
            .is_some_and(|v| v == "true")
    };
    !skip(eps.metadata.labels.as_ref()) && !skip(eps.metadata.annotations.as_ref())
}

pub(super) fn read_slice(
    slice: &EndpointSlice,
    here: Option<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Slice> {
    let obj = Obj::of("EndpointSlice", &slice.metadata);
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::Ip,
        "IPv6" => Family::Ip6,
        other => {
            diags.push(obj.diag(
                "addressType",
                format!("address type {other:?} is not supported; slice skipped"),
            ));
            return None;
        }
    };

    // Sized up front: the daemon keeps these vectors for the slice's lifetime, and growing
    // by doubling left 60 % slack in a 10-endpoint slice (15 MB at 10k Services).
    let mut ports = Vec::with_capacity(slice.ports.as_ref().map_or(0, Vec::len));
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(proto) = protocol(
            p.protocol.as_deref(),
            &format!("ports[{i}].protocol"),
            &obj,
            diags,
        ) else {
            continue;
        };
        let Some(port) = p.port.and_then(port_number) else {
            let message = match p.port {
                None | Some(0) => "no port number; slice port unused".to_owned(),
                Some(n) => format!("port {n} is not in 1-65535; slice port unused"),
            };
            diags.push(obj.diag(format!("ports[{i}].port"), message));
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        ports.push(SlicePort { name, proto, port });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.as_ref().map_or(0, Vec::len));
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        // Only the first address has defined semantics; kube-proxy ignores the rest.
        let Some(text) = ep.addresses.first() else {
            diags.push(obj.diag(
                format!("endpoints[{i}].addresses"),
                "no address; endpoint skipped",
            ));
            continue;
        };
        if ep.addresses.len() > 1 {
            // The API says the addresses are fungible and consumers may use only the first;
            // kube-proxy does, so the others never get traffic.
            diags.push(obj.diag(
                format!("endpoints[{i}].addresses"),
                format!(
                    "{} addresses; only the first, {text}, is used (as kube-proxy does), the \
                     others get no traffic",
                    ep.addresses.len()
                ),
            ));
        }
        let field = format!("endpoints[{i}].addresses[0]");
        let Some(addr) = endpoint_addr(text, Some(family), &field, &obj, diags) else {
            continue;
        };
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let hints = ep.hints.as_ref().map(|h| Hints {
            for_nodes: (h.for_nodes.iter().flatten())
                .map(|n| n.name.clone())
                .collect(),
            for_zones: (h.for_zones.iter().flatten())
                .map(|z| z.name.clone())
                .collect(),
        });
        endpoints.push(Endpoint {
            addr,
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node: Placement::of(ep.node_name.as_deref(), here),
            // `hints: {}` is no hint, as an absent one.
            hints: hints.filter(|h| *h != Hints::default()).map(Box::new),
        });
    }
    Some(Slice { ports, endpoints })
}

/// Parses and vets one endpoint address; `family` is the slice's address type, if any.
fn endpoint_addr(
    text: &str,
    family: Option<Family>,
    field: &str,
    obj: &Obj,
    diags: &mut Vec<Diagnostic>,
) -> Option<IpAddr> {
    let Some(parsed) = parse_ip(text) else {
        diags.push(obj.diag(
            field,
            format!("invalid IP address {text:?}; endpoint skipped"),
        ));
        return None;
    };
    let addr = parsed.value;
    if parsed.sloppy {
        diags.push(obj.diag(
            field,
            format!("leading zeros in IPv4 address; read as {addr}"),
        ));
    }
    if let Some(family) = family.filter(|f| *f != Family::of(addr)) {
        let want = match family {
            Family::Ip => "IPv4",
            Family::Ip6 => "IPv6",
        };
        diags.push(obj.diag(
            field,
            format!("{addr} is not an {want} address; endpoint skipped"),
        ));
        return None;
    }
    if let Some(why) = unusable_endpoint(addr) {
        diags.push(obj.diag(
            field,
            format!("{addr} is not a usable endpoint address ({why}); endpoint skipped"),
        ));
        return None;
    }
    Some(addr)
}

/// Legacy Endpoints as slices, one per subset: `addresses` are ready, `notReadyAddresses` are
/// neither ready nor serving (the mirroring controller's mapping); there are no hints.
pub(super) fn mirror(
    eps: &Endpoints,
    here: Option<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Slice> {
    let obj = Obj::of("Endpoints", &eps.metadata);
    let mut out = Vec::new();
    for (s, subset) in eps.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for (i, p) in subset.ports.iter().flatten().enumerate() {
            let field = format!("subsets[{s}].ports[{i}]");
            let Some(proto) = protocol(
                p.protocol.as_deref(),
                &format!("{field}.protocol"),
                &obj,
                diags,
            ) else {
                continue;
            };
            let Some(port) = port_number(p.port) else {
                diags.push(obj.diag(
                    format!("{field}.port"),
                    format!("port {} is not in 1-65535; port unused", p.port),
                ));
                continue;
            };
            let name = p.name.clone().unwrap_or_default();
            ports.push(SlicePort { name, proto, port });
        }
        let mut endpoints = Vec::new();
        let lists: [(&str, Option<&Vec<EndpointAddress>>, bool); 2] = [
            ("addresses", subset.addresses.as_ref(), true),
            (
                "notReadyAddresses",
                subset.not_ready_addresses.as_ref(),
                false,
            ),
        ];
        for (list, addresses, ready) in lists {
            for (i, address) in addresses.into_iter().flatten().enumerate() {
                let field = format!("subsets[{s}].{list}[{i}].ip");
                let Some(addr) = endpoint_addr(&address.ip, None, &field, &obj, diags) else {
                    continue;
                };
                endpoints.push(Endpoint {
                    addr,
                    ready,
                    serving: ready,
                    terminating: false,
                    node: Placement::of(address.node_name.as_deref(), here),
                    hints: None,
                });
            }
        }
        out.push(Slice { ports, endpoints });
    }
    out
}

/// The endpoints of the service port `(name, proto)` for this node.
pub(super) struct Categorized {
    /// What the Cluster policy picks from.
    pub(super) cluster: Vec<Backend>,
    /// What the Local policy picks from: endpoints on this node.
    pub(super) local: Vec<Backend>,
    /// The addresses in `cluster` or `local` not known to run on another node (on this node, or
    /// without a `nodeName`), sorted and distinct; see `graph::ServicePort::near`.
    pub(super) near: Vec<IpAddr>,
}

/// Categorizes the endpoints of the service port `(name, proto)` for this node.
pub(super) fn categorize(
    slices: &[&Slice],
    name: &str,
    proto: L4Proto,
    node: &NodeInfo,
) -> Categorized {
    // The same endpoint may appear in several slices (mirrored and real, or during a slice
    // rewrite): merge copies so that any ready copy makes it ready.
    let mut merged: BTreeMap<Backend, Endpoint> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == name && p.proto == proto)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let key = Backend {
                addr: ep.addr,
                port: port.port,
            };
            match merged.get_mut(&key) {
                None => {
                    merged.insert(key, ep.clone());
                }
                Some(have) => {
                    have.ready |= ep.ready;
                    have.serving |= ep.serving;
                    have.terminating |= ep.terminating;
                    if have.node == Placement::Unknown {
                        have.node = ep.node;
                    }
                    if let Some(hints) = &ep.hints {
                        let have = have.hints.get_or_insert_with(Box::default);
                        have.for_nodes.extend(hints.for_nodes.iter().cloned());
                        have.for_zones.extend(hints.for_zones.iter().cloned());
                    }
                }
            }
        }
    }

    let topology = Topology::of(merged.values(), node);
    // `Here` was decided against this same node name when the slice was read.
    let is_local = |ep: &Endpoint| ep.node == Placement::Here;
    let fallback = |ep: &Endpoint| ep.serving && ep.terminating;

    let mut cluster = select(&merged, |ep| ep.ready && topology.admits(ep));
    if cluster.is_empty() {
        cluster = select(&merged, fallback);
    }
    let mut local = select(&merged, |ep| ep.ready && is_local(ep));
    if local.is_empty() {
        local = select(&merged, |ep| fallback(ep) && is_local(ep));
    }
    let near: BTreeSet<IpAddr> = (cluster.iter().chain(&local))
        .filter(|b| merged[*b].node != Placement::Elsewhere)
        .map(|b| b.addr)
        .collect();
    Categorized {
        cluster,
        local,
        near: near.into_iter().collect(),
    }
}

/// The addresses of this node's ready endpoints in `slices`, sorted and distinct: what
/// kube-proxy's health-check NodePort reports (`EndpointsMap.LocalReadyEndpoints`). Unlike the
/// Local policy's endpoints there is no fallback to serving-but-terminating ones (upstream's
/// `TestHealthCheckNodePortWhenTerminating`: a node whose pods are all terminating fails the
/// check, so the load balancer drains it while those pods finish their connections), and the
/// count is of addresses over every slice port, not per Service port (a pod serving 80 and 443
/// is one endpoint). A slice with no usable port contributes nothing, as its endpoints reach no
/// port in kube-proxy's map either.
pub(super) fn local_ready(slices: &[&Slice], node: &NodeInfo) -> Vec<IpAddr> {
    if node.name.is_none() {
        return Vec::new();
    }
    let addrs: BTreeSet<IpAddr> = slices
        .iter()
        .filter(|slice| !slice.ports.is_empty())
        .flat_map(|slice| &slice.endpoints)
        .filter(|ep| ep.ready && ep.node == Placement::Here)
        .map(|ep| ep.addr)
        .collect();
    addrs.into_iter().collect()
}

/// Backends matching `keep`, in (address, port) order (the map's order).
fn select(merged: &BTreeMap<Backend, Endpoint>, keep: impl Fn(&Endpoint) -> bool) -> Vec<Backend> {
    (merged.iter())
        .filter(|(_, ep)| keep(ep))
        .map(|(backend, _)| *backend)
        .collect()
}

/// Which topology hints apply to this node (kube-proxy's `topologyModeFromHints`).
enum Topology<'n> {
    /// Hints do not apply: every ready endpoint is eligible.
    None,
    /// PreferSameNode: only endpoints hinted for this node.
    Node(&'n str),
    /// PreferSameZone: only endpoints hinted for this node's zone.
    Zone(&'n str),
}

impl<'n> Topology<'n> {
    /// Hints apply only when *every* ready endpoint carries one (a partial rollout by the slice
    /// controller must not concentrate traffic) and at least one names this node or zone (an
    /// empty result would black-hole the service).
    fn of<'e>(
        endpoints: impl Iterator<Item = &'e Endpoint> + Clone,
        node: &'n NodeInfo,
    ) -> Topology<'n> {
        let ready = endpoints.filter(|ep| ep.ready);
        if let Some(name) = node.name.as_deref() {
            if ready
                .clone()
                .all(|ep| ep.for_nodes().is_some_and(|n| !n.is_empty()))
                && ready.clone().any(|ep| ep.has_node_hint(name))
            {
                return Topology::Node(name);
            }
        }
        if let Some(zone) = node.zone.as_deref() {
            if ready
                .clone()
                .all(|ep| ep.for_zones().is_some_and(|z| !z.is_empty()))
                && ready.clone().any(|ep| ep.has_zone_hint(zone))
            {
                return Topology::Zone(zone);
            }
        }
        Topology::None
    }

    fn admits(&self, ep: &Endpoint) -> bool {
        match self {
            Topology::None => true,
            Topology::Node(name) => ep.has_node_hint(name),
            Topology::Zone(zone) => ep.has_zone_hint(zone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_this_node_only_by_the_exact_name() {
        assert_eq!(Placement::of(None, Some("node-a")), Placement::Unknown);
        assert_eq!(
            Placement::of(Some("node-a"), Some("node-a")),
            Placement::Here
        );
        assert_eq!(
            Placement::of(Some("node-b"), Some("node-a")),
            Placement::Elsewhere
        );
        // The store's name is already kube-proxy's (lower-cased); nodeName is compared as is.
        assert_eq!(
            Placement::of(Some("Node-A"), Some("node-a")),
            Placement::Elsewhere
        );
        // Without a name of our own nothing is known to be elsewhere (see `categorize`'s `near`).
        assert_eq!(Placement::of(Some("node-a"), None), Placement::Unknown);
    }

    #[test]
    fn an_endpoint_is_small() {
        // What the daemon keeps per endpoint of the cluster; see `Endpoint`.
        assert!(std::mem::size_of::<Endpoint>() <= 32);
    }
}
