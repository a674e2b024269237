//! What the conntrack reconciler may delete, decided without IO. A UDP (or SCTP) client that
//! keeps its source port keeps refreshing one conntrack entry, and only the first packet of an
//! entry crosses the NAT chains: once its endpoint is gone the entry still carries the old DNAT
//! and the flow blackholes, or, when it was created before the Service had endpoints, it carries
//! none at all. [`Destinations`] is every UDP and SCTP frontend of the programmed Services
//! (ClusterIP, externalIP and LoadBalancer IP with their port, or a NodePort on any local address
//! inside the NodePort addresses) with the endpoints the ruleset can DNAT a new packet of that
//! frontend to, exactly as `lower` writes it: the ClusterIP uses the Cluster list, or the Local
//! one with `internalTrafficPolicy: Local`; external frontends use the Cluster list, plus the
//! Local one with `externalTrafficPolicy: Local` (pods and the host are short-circuited to the
//! Cluster chain, everything else goes to the Local chain); a family exists through its
//! ClusterIP; a frontend several Services claim belongs to the first of them (in (namespace,
//! name) order) that has endpoints, as the dispatch map's first claimant does. That is stricter
//! than kube-proxy, which keeps entries to any *serving* endpoint whatever the policy, topology
//! or terminating state: here a UDP flow follows the ruleset, so a flow pinned to an endpoint new
//! flows no longer reach (terminating while ready ones exist, or hinted to another zone) moves
//! too, which for fixed-port clients such as DNS resolvers is the point. Frontends that were ours
//! and no longer are (a Service deleted, a ClusterIP or port changed) stay in the set as
//! [`Targets::Retired`] until one reconcile has seen them: the caller carries them forward
//! ([`Destinations::inherit`], [`frontends_of`] a read-back of our tables), because once gone
//! from the desired state nothing else remembers that the address was ours. [`Destinations::judge`]
//! looks at one entry, as its original and reply tuples tell: only UDP and SCTP, only entries
//! whose original destination is one of our frontends (the DNAT dispatch first, then a NodePort
//! on a local address, never loopback, as the `services` chain matches them), and deletes those
//! whose reply source (the DNAT target) is not one of that frontend's endpoints, those that were
//! never DNATed while the frontend now has endpoints, and those DNATed through a retired
//! frontend. The status bits are not consulted: an entry inserted over ctnetlink (`conntrack
//! -I`, conntrackd) carries a translated reply tuple without `IPS_DST_NAT`, and the tuples are
//! what the kernel forwards by. TCP is never touched: a stale TCP connection fails on its own and
//! a live one to a terminating endpoint must be allowed to finish.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::graph::{Backend, Graph, Service};
use crate::ir::{Chain, Family, L4Proto, Ruleset, Stmt, Value};
use crate::lower::{NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, SERVICE_IPS, SERVICE_NODEPORTS};

/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
/// `IPPROTO_SCTP`.
pub const IPPROTO_SCTP: u8 = 132;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;

/// One direction of a conntrack entry: addresses and, for protocols with ports, ports (0
/// otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Tuple {
    /// The source as a socket address.
    pub fn source(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.src_port)
    }

    /// The destination as a socket address.
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dst_port)
    }
}

/// What the reconciler judges of a conntrack entry: its protocol and both tuples. The original
/// tuple is the first packet as it arrived (a client to a Service address); the reply tuple is
/// what replies look like, so after DNAT its source is the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// The IP protocol number (`IPPROTO_*`).
    pub proto: u8,
    /// The original direction.
    pub original: Tuple,
    /// The reply direction.
    pub reply: Tuple,
}

impl Flow {
    /// Where the entry was DNATed to: the reply source, when it is not the original
    /// destination (an SNAT alone changes only the reply destination).
    pub fn dnat_target(&self) -> Option<SocketAddr> {
        let to = self.reply.source();
        (to != self.original.destination()).then_some(to)
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            IPPROTO_UDP => "udp".to_owned(),
            IPPROTO_SCTP => "sctp".to_owned(),
            IPPROTO_TCP => "tcp".to_owned(),
            other => format!("proto {other}"),
        };
        write!(
            f,
            "{proto} {} -> {}",
            self.original.source(),
            self.original.destination()
        )?;
        if let Some(to) = self.dnat_target() {
            write!(f, " (DNAT to {to})")?;
        }
        Ok(())
    }
}

/// The address part of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    /// A ClusterIP, externalIP or LoadBalancer IP.
    Ip(IpAddr),
    /// A NodePort: any local address of the family inside the NodePort addresses.
    NodePort(Family),
}

/// Where a Service port receives traffic: protocol, address, port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// UDP or SCTP (TCP frontends are never collected).
    pub proto: L4Proto,
    /// The address.
    pub address: Address,
    /// The Service port, or the NodePort.
    pub port: u16,
}

impl Frontend {
    /// The frontend's family.
    pub fn family(&self) -> Family {
        match self.address {
            Address::Ip(ip) => Family::of(ip),
            Address::NodePort(family) => family,
        }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Address::Ip(ip) => write!(f, "{} {}", self.proto, SocketAddr::new(ip, self.port)),
            Address::NodePort(family) => {
                write!(f, "{} NodePort {} ({family})", self.proto, self.port)
            }
        }
    }
}

/// What a frontend leads to now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Ours: the endpoints a new packet can be DNATed to (none while the port has no usable
    /// endpoint: then it is rejected or dropped, never DNATed).
    Current(BTreeSet<Backend>),
    /// Was ours until recently and is not any more: any DNAT through it is stale.
    Retired,
}

/// Why an entry is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kept {
    /// Neither UDP nor SCTP.
    NotUdpOrSctp,
    /// Not to one of our frontends (or un-NATed to one that is no longer ours).
    NotOurs,
    /// DNATed to an endpoint the frontend still leads to.
    Serving,
    /// Never DNATed, and the frontend has no endpoint to send it to either.
    NoEndpoints,
}

/// Why an entry is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stale {
    /// DNATed to an endpoint the frontend no longer leads to (removed, not ready any more, the
    /// Service scaled to zero, the target port changed).
    EndpointGone,
    /// DNATed through a frontend that is no longer ours (the Service deleted, its ClusterIP
    /// or port changed).
    ServiceGone,
    /// Never DNATed (created while the frontend had no endpoint, or before our rules existed),
    /// and the frontend has endpoints now.
    NeverNatted,
}

impl Stale {
    /// Every reason, for metrics and reports.
    pub const ALL: [Stale; 3] = [Stale::EndpointGone, Stale::ServiceGone, Stale::NeverNatted];

    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stale::EndpointGone => "endpoint gone",
            Stale::ServiceGone => "service gone",
            Stale::NeverNatted => "never DNATed",
        }
    }
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The judgement on one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Leave it.
    Keep(Kept),
    /// Delete it.
    Delete(Stale),
}

/// The UDP and SCTP frontends of the programmed Services and where each leads (see the module
/// documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    frontends: BTreeMap<Frontend, Targets>,
    /// Where NodePorts listen (`Graph::nodeport_addresses`): a zero-length prefix is every
    /// local address of its family.
    nodeport_addresses: Vec<IpNet>,
}

/// Whether the reconciler looks at a protocol's entries.
pub(crate) fn reconciled(proto: L4Proto) -> bool {
    matches!(proto, L4Proto::Udp | L4Proto::Sctp)
}

fn proto_of(number: u8) -> Option<L4Proto> {
    match number {
        IPPROTO_UDP => Some(L4Proto::Udp),
        IPPROTO_SCTP => Some(L4Proto::Sctp),
        _ => None,
    }
}

impl Destinations {
    /// No frontends, with the NodePort addresses given.
    pub fn new(nodeport_addresses: &[IpNet]) -> Destinations {
        Destinations {
            frontends: BTreeMap::new(),
            nodeport_addresses: nodeport_addresses.to_vec(),
        }
    }

    /// The frontends of the given Services (in (namespace, name) order, as a graph lists them)
    /// for a node whose NodePorts listen on `nodeport_addresses`.
    pub fn from_services<'a>(
        nodeport_addresses: &[IpNet],
        services: impl IntoIterator<Item = &'a Service>,
    ) -> Destinations {
        let mut out = Destinations::new(nodeport_addresses);
        for svc in services {
            out.add_service(svc);
        }
        out
    }

    /// The frontends of a compiled graph (what `compile` programs).
    pub fn of_graph(graph: &Graph) -> Destinations {
        Destinations::from_services(&graph.nodeport_addresses, &graph.services)
    }

    fn add_service(&mut self, svc: &Service) {
        for family in [Family::Ip, Family::Ip6] {
            let in_family = |ip: &IpAddr| Family::of(*ip) == family;
            // As in `lower`: a Service exists in a family through its ClusterIP.
            let Some(cluster_ip) = svc.cluster_ips.iter().copied().find(in_family) else {
                continue;
            };
            let mut external_addrs: Vec<IpAddr> = (svc.external_ips.iter())
                .chain(&svc.lb_ips)
                .copied()
                .filter(in_family)
                .collect();
            external_addrs.sort();
            external_addrs.dedup();
            let serves_nodeports = self
                .nodeport_addresses
                .iter()
                .any(|net| Family::of_net(net) == family);
            for port in svc.ports.iter().filter(|p| reconciled(p.proto)) {
                let of_family = |list: &[Backend]| -> BTreeSet<Backend> {
                    list.iter()
                        .copied()
                        .filter(|b| in_family(&b.addr))
                        .collect()
                };
                let cluster = of_family(&port.cluster);
                let local = of_family(&port.local);
                // No Cluster endpoint means no usable endpoint anywhere: everything is
                // rejected, nothing DNATed (the Local list is a subset of the same endpoints).
                let (internal, external) = if cluster.is_empty() {
                    (BTreeSet::new(), BTreeSet::new())
                } else {
                    let internal = if svc.internal_local {
                        local.clone()
                    } else {
                        cluster.clone()
                    };
                    let external = if svc.external_local {
                        cluster.union(&local).copied().collect()
                    } else {
                        cluster
                    };
                    (internal, external)
                };
                let frontend = |address| Frontend {
                    proto: port.proto,
                    address,
                    port: port.port,
                };
                self.claim(frontend(Address::Ip(cluster_ip)), internal);
                for addr in &external_addrs {
                    self.claim(frontend(Address::Ip(*addr)), external.clone());
                }
                if let (Some(node_port), true) = (port.node_port, serves_nodeports) {
                    let nodeport = Frontend {
                        proto: port.proto,
                        address: Address::NodePort(family),
                        port: node_port,
                    };
                    self.claim(nodeport, external);
                }
            }
        }
    }

    /// Adds a frontend claimed by a Service. The dispatch map holds one element per key: the
    /// first claimant's that has endpoints (a claimant without any puts its key into the
    /// no-endpoint map instead, which a DNATing element of the same key overrides).
    pub fn claim(&mut self, frontend: Frontend, targets: BTreeSet<Backend>) {
        if !reconciled(frontend.proto) {
            return;
        }
        match self.frontends.entry(frontend) {
            MapEntry::Vacant(slot) => {
                slot.insert(Targets::Current(targets));
            }
            MapEntry::Occupied(mut slot) => {
                let replace = match slot.get() {
                    Targets::Retired => true,
                    Targets::Current(existing) => existing.is_empty() && !targets.is_empty(),
                };
                if replace {
                    slot.insert(Targets::Current(targets));
                }
            }
        }
    }

    /// Adds frontends that were ours (a read-back of our tables, an earlier state) as retired,
    /// unless they are current.
    pub fn retire(&mut self, frontends: impl IntoIterator<Item = Frontend>) {
        for frontend in frontends.into_iter().filter(|f| reconciled(f.proto)) {
            self.frontends.entry(frontend).or_insert(Targets::Retired);
        }
    }

    /// Carries forward what `previous` knew: every frontend of it (current or retired) that is
    /// not current here is retired here. Applied to each new state in turn, no frontend is
    /// forgotten before [`Destinations::forget_retired`] says a reconcile has seen it.
    pub fn inherit(&mut self, previous: &Destinations) {
        self.retire(previous.frontends.keys().copied());
    }

    /// Drops the retired frontends (after a reconcile has deleted what went through them).
    pub fn forget_retired(&mut self) {
        self.frontends
            .retain(|_, targets| matches!(targets, Targets::Current(_)));
    }

    /// Where `frontend` leads, if it is (or was) ours.
    pub fn get(&self, frontend: &Frontend) -> Option<&Targets> {
        self.frontends.get(frontend)
    }

    /// Every frontend, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Frontend, &Targets)> {
        self.frontends.iter()
    }

    /// The number of frontends, retired ones included.
    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    /// Whether there is no frontend at all (nothing to reconcile).
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// The retired frontends.
    pub fn retired(&self) -> impl Iterator<Item = &Frontend> {
        self.frontends
            .iter()
            .filter(|(_, t)| matches!(t, Targets::Retired))
            .map(|(f, _)| f)
    }

    /// The protocols with a frontend in `family`: the conntrack dumps a reconcile needs.
    pub fn protocols(&self, family: Family) -> BTreeSet<L4Proto> {
        self.frontends
            .keys()
            .filter(|f| f.family() == family)
            .map(|f| f.proto)
            .collect()
    }

    /// Whether judging needs the node's addresses (there is a NodePort frontend).
    pub fn has_nodeports(&self) -> bool {
        self.frontends
            .keys()
            .any(|f| matches!(f.address, Address::NodePort(_)))
    }

    /// Whether a packet to `addr` reaches the NodePort dispatch: a local address (one of
    /// `node_addresses`, the addresses on the node's interfaces) inside the NodePort
    /// addresses, never loopback (the `services` chain's `fib daddr type local`, `!=
    /// 127.0.0.0/8` and `@nodeport-ips`).
    pub fn is_nodeport_address(&self, addr: IpAddr, node_addresses: &BTreeSet<IpAddr>) -> bool {
        let family = Family::of(addr);
        node_addresses.contains(&addr)
            && !family.loopback().contains(&addr)
            && self
                .nodeport_addresses
                .iter()
                .any(|net| net.contains(&addr))
    }

    /// The judgement on one entry; `node_addresses` are the node's local addresses (only
    /// consulted when there are NodePort frontends).
    pub fn judge(&self, flow: &Flow, node_addresses: &BTreeSet<IpAddr>) -> Verdict {
        let Some(proto) = proto_of(flow.proto) else {
            return Verdict::Keep(Kept::NotUdpOrSctp);
        };
        let dst = flow.original.dst;
        let port = flow.original.dst_port;
        let by_ip = self.frontends.get(&Frontend {
            proto,
            address: Address::Ip(dst),
            port,
        });
        let by_nodeport = if self.is_nodeport_address(dst, node_addresses) {
            self.frontends.get(&Frontend {
                proto,
                address: Address::NodePort(Family::of(dst)),
                port,
            })
        } else {
            None
        };
        // The ruleset dispatches addresses first (`service-ips`), then NodePorts; a key without
        // endpoints has no dispatch element, so the next one DNATs.
        let candidates = [by_ip, by_nodeport];
        let targets = candidates
            .iter()
            .flatten()
            .find(|t| matches!(t, Targets::Current(set) if !set.is_empty()))
            .or_else(|| (candidates.iter().flatten()).find(|t| matches!(t, Targets::Current(_))))
            .or_else(|| candidates.iter().flatten().next());
        let reply_source = flow.reply.source();
        match targets {
            None => Verdict::Keep(Kept::NotOurs),
            Some(Targets::Current(set)) => {
                let serving = set.contains(&Backend {
                    addr: reply_source.ip(),
                    port: reply_source.port(),
                });
                if serving {
                    Verdict::Keep(Kept::Serving)
                } else if flow.dnat_target().is_some() {
                    Verdict::Delete(Stale::EndpointGone)
                } else if set.is_empty() {
                    Verdict::Keep(Kept::NoEndpoints)
                } else {
                    Verdict::Delete(Stale::NeverNatted)
                }
            }
            Some(Targets::Retired) => match flow.dnat_target() {
                Some(_) => Verdict::Delete(Stale::ServiceGone),
                None => Verdict::Keep(Kept::NotOurs),
            },
        }
    }
}

/// The UDP and SCTP frontends our tables hold: the keys of the address and NodePort dispatch
/// maps and of their no-endpoint twins, in every table of `ruleset` (a read-back of ours). What
/// the kernel held before a commit is what was ours, also across a restart of the daemon.
pub fn frontends_of(ruleset: &Ruleset) -> BTreeSet<Frontend> {
    let mut out = BTreeSet::new();
    for table in &ruleset.tables {
        for name in [SERVICE_IPS, NO_ENDPOINT_SERVICES] {
            let Some(set) = table.sets.get(name) else {
                continue;
            };
            for element in &set.elements {
                if let [Value::Addr(addr), Value::Proto(proto), Value::Port(port)] =
                    element.key.as_slice()
                {
                    out.insert(Frontend {
                        proto: *proto,
                        address: Address::Ip(*addr),
                        port: *port,
                    });
                }
            }
        }
        for name in [SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS] {
            let Some(set) = table.sets.get(name) else {
                continue;
            };
            for element in &set.elements {
                if let [Value::Proto(proto), Value::Port(port)] = element.key.as_slice() {
                    out.insert(Frontend {
                        proto: *proto,
                        address: Address::NodePort(table.family),
                        port: *port,
                    });
                }
            }
        }
    }
    out.retain(|f| reconciled(f.proto));
    out
}

/// The ClientIP affinity maps of a ruleset (`affinity-…`, client address → endpoint address,
/// filled from the packet path; see `lower`) with the endpoint addresses each may hold: the data
/// of the map's `update` statements. The kernel never rewrites an existing element's data, so an
/// element whose endpoint left the list would keep DNATing its client to it until the element
/// times out (hours, by default); the reconciler deletes such elements after each change, which
/// is what kube-proxy gets by deleting the endpoint's affinity set. Maps the ruleset does not
/// have are not listed: they go with their chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AffinityMaps {
    /// By family, table and map name.
    maps: BTreeMap<(Family, String, String), BTreeSet<IpAddr>>,
}

impl AffinityMaps {
    /// The affinity maps of every table of `ruleset`.
    pub fn of_ruleset(ruleset: &Ruleset) -> AffinityMaps {
        let mut out = AffinityMaps::default();
        for table in &ruleset.tables {
            for chain in table.chains.values() {
                out.add_chain(table.family, &table.name, chain);
            }
        }
        out
    }

    /// Adds the maps `chain` (of the `family` table `table`) records endpoints in.
    pub fn add_chain(&mut self, family: Family, table: &str, chain: &Chain) {
        for stmt in chain.rules.iter().flat_map(|r| &r.stmts) {
            if let Stmt::Update {
                set,
                data: Some(Value::Addr(addr)),
                ..
            } = stmt
            {
                self.maps
                    .entry((family, table.to_owned(), set.clone()))
                    .or_default()
                    .insert(*addr);
            }
        }
    }

    /// Each map, by family, table and name, with the endpoint addresses its elements may hold.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &str, &str, &BTreeSet<IpAddr>)> {
        (self.maps.iter())
            .map(|((family, table, name), addrs)| (*family, table.as_str(), name.as_str(), addrs))
    }

    /// No affinity map at all (no Service uses ClientIP affinity).
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// The maps of `self` that `before` lacks or whose endpoints differ: the only ones a
    /// change can have left stale elements in (a map whose endpoint list did not change has
    /// no element a sweep would delete that the previous sweep did not).
    pub fn changed_since(&self, before: &AffinityMaps) -> AffinityMaps {
        let maps = (self.maps.iter())
            .filter(|(key, addrs)| before.maps.get(*key) != Some(*addrs))
            .map(|(key, addrs)| (key.clone(), addrs.clone()))
            .collect();
        AffinityMaps { maps }
    }

    /// Adds the maps of `other`, whose endpoint lists replace those of the same maps here.
    pub fn extend(&mut self, other: AffinityMaps) {
        self.maps.extend(other.maps);
    }

    /// The maps of `self` that `names` also has (with the endpoints `self` gives them).
    pub fn only(&self, names: &AffinityMaps) -> AffinityMaps {
        let maps = (self.maps.iter())
            .filter(|(key, _)| names.maps.contains_key(*key))
            .map(|(key, addrs)| (key.clone(), addrs.clone()))
            .collect();
        AffinityMaps { maps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::{json, Value};

    use crate::test_support::{node, snapshot_of};
    use crate::{compile, Config};

    fn config() -> Config {
        Config {
            hostname: Some("node-a".into()),
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        }
    }

    /// A Service `name` with `spec` and one slice of `(address, node, ready)` endpoints on
    /// target port 5353 (UDP `dns`) and 8080 (TCP `http`).
    fn service(name: &str, spec: Value, endpoints: &[(&str, &str, bool)]) -> Vec<Value> {
        let ipv6 = spec["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.contains(':'));
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(addr, node, ready)| {
                json!({"addresses": [addr], "nodeName": node,
                    "conditions": {"ready": ready, "serving": ready, "terminating": !ready}})
            })
            .collect();
        let mut spec = spec;
        spec["selector"] = json!({"app": name});
        if spec.get("ports").is_none() {
            spec["ports"] = json!([
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353},
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]);
        }
        vec![
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "ns", "name": name}, "spec": spec}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": "ns", "name": format!("{name}-x"),
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": if ipv6 { "IPv6" } else { "IPv4" },
                "endpoints": endpoints,
                "ports": [{"name": "dns", "protocol": "UDP", "port": 5353},
                          {"name": "http", "protocol": "TCP", "port": 8080}]}),
        ]
    }

    fn destinations(services: Vec<Vec<Value>>) -> Destinations {
        let mut docs = vec![node()];
        docs.extend(services.into_iter().flatten());
        Destinations::of_graph(&compile(&snapshot_of(docs), &config()).graph)
    }

    fn flow(proto: u8, client: &str, to: &str, reply_from: &str) -> Flow {
        let client: SocketAddr = client.parse().unwrap();
        let to: SocketAddr = to.parse().unwrap();
        let from: SocketAddr = reply_from.parse().unwrap();
        Flow {
            proto,
            original: Tuple {
                src: client.ip(),
                dst: to.ip(),
                src_port: client.port(),
                dst_port: to.port(),
            },
            reply: Tuple {
                src: from.ip(),
                dst: client.ip(),
                src_port: from.port(),
                dst_port: client.port(),
            },
        }
    }

    fn udp(to: &str, reply_from: &str) -> Flow {
        let client = if to.starts_with('[') {
            "[2001:db8::9]:40000"
        } else {
            "203.0.113.9:40000"
        };
        flow(IPPROTO_UDP, client, to, reply_from)
    }

    fn local() -> BTreeSet<IpAddr> {
        ["192.168.0.2", "fd00::2", "10.9.9.9", "127.0.0.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    }

    const KEEP_SERVING: Verdict = Verdict::Keep(Kept::Serving);
    const GONE: Verdict = Verdict::Delete(Stale::EndpointGone);

    #[test]
    fn clusterip_entries_are_judged_by_their_dnat_target() {
        let d = destinations(vec![service(
            "dns",
            json!({"clusterIP": "172.30.0.10"}),
            &[("10.0.1.1", "node-a", true), ("10.0.2.1", "node-b", true)],
        )]);
        let j = |f: Flow| d.judge(&f, &local());
        assert_eq!(j(udp("172.30.0.10:53", "10.0.1.1:5353")), KEEP_SERVING);
        assert_eq!(j(udp("172.30.0.10:53", "10.0.2.1:5353")), KEEP_SERVING);
        // Removed endpoint, or the right pod on a port it no longer serves.
        assert_eq!(j(udp("172.30.0.10:53", "10.0.3.1:5353")), GONE);
        assert_eq!(j(udp("172.30.0.10:53", "10.0.1.1:53")), GONE);
        // Created before there were endpoints (or before our rules): never DNATed.
        assert_eq!(
            j(udp("172.30.0.10:53", "172.30.0.10:53")),
            Verdict::Delete(Stale::NeverNatted)
        );
        // TCP is never touched, even to a gone endpoint; other addresses and ports are not ours.
        let tcp = flow(
            IPPROTO_TCP,
            "10.0.1.9:4000",
            "172.30.0.10:80",
            "10.0.3.1:8080",
        );
        assert_eq!(j(tcp), Verdict::Keep(Kept::NotUdpOrSctp));
        assert_eq!(
            j(udp("172.30.0.10:54", "10.0.3.1:5353")),
            Verdict::Keep(Kept::NotOurs)
        );
        assert_eq!(
            j(udp("8.8.8.8:53", "10.0.3.1:5353")),
            Verdict::Keep(Kept::NotOurs)
        );
        // ICMP (no ports) and an SCTP entry to a UDP-only frontend.
        let icmp = flow(1, "10.0.1.9:0", "172.30.0.10:0", "172.30.0.10:0");
        assert_eq!(j(icmp), Verdict::Keep(Kept::NotUdpOrSctp));
        let sctp = flow(
            IPPROTO_SCTP,
            "10.0.1.9:4000",
            "172.30.0.10:53",
            "10.0.3.1:5353",
        );
        assert_eq!(j(sctp), Verdict::Keep(Kept::NotOurs));
    }

    #[test]
    fn a_service_scaled_to_zero_loses_its_dnats_but_not_its_rejected_flows() {
        // Not ready and not serving: no usable endpoint at all, but still our frontend.
        let d = destinations(vec![service(
            "dns",
            json!({"clusterIP": "172.30.0.10"}),
            &[("10.0.1.1", "node-a", false)],
        )]);
        let key = Frontend {
            proto: L4Proto::Udp,
            address: Address::Ip("172.30.0.10".parse().unwrap()),
            port: 53,
        };
        assert_eq!(d.get(&key), Some(&Targets::Current(BTreeSet::new())));
        let j = |f: Flow| d.judge(&f, &local());
        assert_eq!(j(udp("172.30.0.10:53", "10.0.1.1:5353")), GONE);
        assert_eq!(
            j(udp("172.30.0.10:53", "172.30.0.10:53")),
            Verdict::Keep(Kept::NoEndpoints)
        );
    }

    #[test]
    fn retired_frontends_delete_any_dnat_through_them() {
        let before = destinations(vec![service(
            "dns",
            json!({"clusterIP": "172.30.0.10"}),
            &[("10.0.1.1", "node-a", true)],
        )]);
        // The Service is deleted; the new state remembers its frontend until reconciled once.
        let mut after = destinations(vec![]);
        after.inherit(&before);
        assert_eq!(after.retired().count(), 1);
        let j = |d: &Destinations, f: Flow| d.judge(&f, &local());
        assert_eq!(
            j(&after, udp("172.30.0.10:53", "10.0.1.1:5353")),
            Verdict::Delete(Stale::ServiceGone)
        );
        assert_eq!(
            j(&after, udp("172.30.0.10:53", "172.30.0.10:53")),
            Verdict::Keep(Kept::NotOurs)
        );
        // Inherited through any number of states until forgotten.
        let mut later = destinations(vec![]);
        later.inherit(&after);
        assert_eq!(later.retired().count(), 1);
        later.forget_retired();
        assert!(later.is_empty());
        assert_eq!(
            j(&later, udp("172.30.0.10:53", "10.0.1.1:5353")),
            Verdict::Keep(Kept::NotOurs)
        );
        // Re-created with the same ClusterIP: current again, judged by its endpoints.
        let mut again = destinations(vec![service(
            "dns",
            json!({"clusterIP": "172.30.0.10"}),
            &[("10.0.2.1", "node-b", true)],
        )]);
        again.inherit(&after);
        assert_eq!(again.retired().count(), 0);
        assert_eq!(j(&again, udp("172.30.0.10:53", "10.0.1.1:5353")), GONE);
        assert_eq!(
            j(&again, udp("172.30.0.10:53", "172.30.0.10:53")),
            Verdict::Delete(Stale::NeverNatted)
        );
    }

    #[test]
    fn nodeports_are_ours_only_on_local_nodeport_addresses() {
        let d = destinations(vec![service(
            "np",
            json!({"type": "NodePort", "clusterIP": "172.30.0.11", "ports": [
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353,
                 "nodePort": 30053}]}),
            &[("10.0.1.1", "node-a", true)],
        )]);
        assert!(d.has_nodeports());
        let j = |f: Flow| d.judge(&f, &local());
        assert_eq!(j(udp("192.168.0.2:30053", "10.0.1.1:5353")), KEEP_SERVING);
        assert_eq!(j(udp("192.168.0.2:30053", "10.0.2.1:5353")), GONE);
        assert_eq!(
            j(udp("192.168.0.2:30053", "192.168.0.2:30053")),
            Verdict::Delete(Stale::NeverNatted)
        );
        // Another node's NodePort seen in passing, a local address outside the NodePort
        // addresses (`primary`: 192.168.0.2 only), loopback: not ours.
        let not_ours = Verdict::Keep(Kept::NotOurs);
        assert_eq!(j(udp("192.168.0.3:30053", "192.168.0.3:30053")), not_ours);
        assert_eq!(j(udp("10.9.9.9:30053", "10.0.2.1:5353")), not_ours);
        assert_eq!(j(udp("127.0.0.1:30053", "10.0.2.1:5353")), not_ours);
        // The Service has no IPv6 ClusterIP, so no IPv6 NodePort either.
        assert_eq!(j(udp("[fd00::2]:30053", "[fd00::99]:5353")), not_ours);
    }

    #[test]
    fn traffic_policies_choose_the_lists_the_ruleset_uses() {
        let eps = [("10.0.1.1", "node-a", true), ("10.0.2.1", "node-b", true)];
        let d = destinations(vec![
            service(
                "itp",
                json!({"clusterIP": "172.30.0.12", "internalTrafficPolicy": "Local"}),
                &eps,
            ),
            service(
                "etp",
                json!({"type": "LoadBalancer", "clusterIP": "172.30.0.13",
                    "externalTrafficPolicy": "Local", "ports": [
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353,
                     "nodePort": 30054}]}),
                &eps,
            ),
        ]);
        let j = |f: Flow| d.judge(&f, &local());
        // iTP=Local: the ClusterIP leads to this node's endpoints only.
        assert_eq!(j(udp("172.30.0.12:53", "10.0.1.1:5353")), KEEP_SERVING);
        assert_eq!(j(udp("172.30.0.12:53", "10.0.2.1:5353")), GONE);
        // eTP=Local: external entries go local, but pods and the host go anywhere; the
        // ClusterIP (iTP=Cluster) anywhere.
        assert_eq!(j(udp("192.168.0.2:30054", "10.0.2.1:5353")), KEEP_SERVING);
        assert_eq!(j(udp("192.168.0.2:30054", "10.0.1.1:5353")), KEEP_SERVING);
        assert_eq!(j(udp("172.30.0.13:53", "10.0.2.1:5353")), KEEP_SERVING);
    }

    #[test]
    fn a_shared_frontend_belongs_to_its_first_claimant_with_endpoints() {
        let d = destinations(vec![
            service(
                "a-empty",
                json!({"clusterIP": "172.30.0.20", "externalIPs": ["198.51.100.1"]}),
                &[],
            ),
            service(
                "b-full",
                json!({"clusterIP": "172.30.0.21", "externalIPs": ["198.51.100.1"]}),
                &[("10.0.2.1", "node-b", true)],
            ),
            service(
                "c-full",
                json!({"clusterIP": "172.30.0.22", "externalIPs": ["198.51.100.1"]}),
                &[("10.0.2.2", "node-b", true)],
            ),
        ]);
        let j = |f: Flow| d.judge(&f, &local());
        assert_eq!(j(udp("198.51.100.1:53", "10.0.2.1:5353")), KEEP_SERVING);
        assert_eq!(j(udp("198.51.100.1:53", "10.0.2.2:5353")), GONE);
    }

    #[test]
    fn dual_stack_services_have_frontends_in_both_families() {
        let d = destinations(vec![service(
            "dual",
            json!({"clusterIP": "172.30.0.30", "clusterIPs": ["172.30.0.30", "fd00:30::30"],
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
            &[("10.0.1.1", "node-a", true)],
        )]);
        assert_eq!(d.protocols(Family::Ip), BTreeSet::from([L4Proto::Udp]));
        assert_eq!(d.protocols(Family::Ip6), BTreeSet::from([L4Proto::Udp]));
        // No IPv6 endpoint: the IPv6 ClusterIP DNATs nowhere.
        let j = |f: Flow| d.judge(&f, &local());
        assert_eq!(j(udp("[fd00:30::30]:53", "[fd00:10::1]:5353")), GONE);
        assert_eq!(
            j(udp("[fd00:30::30]:53", "[fd00:30::30]:53")),
            Verdict::Keep(Kept::NoEndpoints)
        );
    }

    #[test]
    fn the_tables_name_the_same_frontends() {
        let mut docs = vec![node()];
        docs.extend(service(
            "a",
            json!({"type": "NodePort", "clusterIP": "172.30.0.40", "ports": [
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353,
                 "nodePort": 30055},
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}),
            &[("10.0.1.1", "node-a", true)],
        ));
        docs.extend(service("b", json!({"clusterIP": "172.30.0.41"}), &[]));
        let compiled = compile(&snapshot_of(docs), &config());
        let from_tables = frontends_of(&compiled.ruleset);
        let from_graph: BTreeSet<Frontend> = Destinations::of_graph(&compiled.graph)
            .iter()
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(from_tables, from_graph);
        assert_eq!(from_tables.len(), 3, "{from_tables:?}");
    }
}
