//! What a node does with each Service, read off a ruleset (for `kube-nft show`, one read back
//! from the kernel): one [`Row`] per service port and way in — each key of the dispatch maps
//! (`service-ips`, `service-nodeports`) and of their no-endpoint twins — with the backends a new
//! connection goes to and the share of new connections each gets. The shares are the tracer's
//! exact fractions for the first packet of a connection from a client outside the cluster (so
//! an `externalTrafficPolicy: Local` address shows its local endpoints), except behind a
//! source-hash or Maglev chain, where one client always lands on one endpoint: there the share
//! is the endpoint's part of the hash space, its slots in the chain's map over the chain's
//! slot count. A row without backends says what happens instead (rejected: no endpoints;
//! dropped). A LoadBalancer IP with `loadBalancerSourceRanges` is traced from a client they
//! allow. The Service name is the dispatch element's comment (`ns/name:port`); a ClusterIP is
//! an address of `cluster-ips`, and the comment of an externalIP's or LoadBalancer IP's
//! element says which it is (`ns/name:port external IP`, `… loadbalancer IP`). Pure: the
//! caller brings the ruleset, the node's addresses and, for live numbers, conntrack.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ir::{names, ElemData, Family, L4Proto, NumgenMode, Ruleset, Stmt, Table, Value};
use crate::trace::{Env, Fate, Origin, Packet, Ratio, Tracer};

/// The service port and way in of an element comment of an externalIP or LoadBalancer IP
/// (`ns/name:port loadbalancer IP`); a comment without either word is an externalIP's.
fn external_way(mut label: String) -> (String, Via) {
    for (word, via) in [
        (names::LOADBALANCER_IP_COMMENT, Via::LoadBalancer),
        (names::EXTERNAL_IP_COMMENT, Via::ExternalIp),
    ] {
        if let Some(service) = label.strip_suffix(word).and_then(|s| s.strip_suffix(' ')) {
            label.truncate(service.len());
            return (label, via);
        }
    }
    (label, Via::ExternalIp)
}

/// The way into a Service a row describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// The ClusterIP.
    ClusterIp,
    /// An externalIP.
    ExternalIp,
    /// A LoadBalancer ingress IP.
    LoadBalancer,
    /// The NodePort, on every NodePort address of the node.
    NodePort,
}

impl Via {
    /// `ClusterIP`, `ExternalIP`, `LoadBalancer`, `NodePort`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::ClusterIp => "ClusterIP",
            Via::ExternalIp => "ExternalIP",
            Via::LoadBalancer => "LoadBalancer",
            Via::NodePort => "NodePort",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service port reached one way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frontend {
    /// `ns/name:port` (the dispatch element's comment), empty when the element has none.
    pub service: String,
    /// How it is reached.
    pub via: Via,
    /// Transport protocol.
    pub proto: L4Proto,
    /// The address (`None` for a NodePort: every NodePort address).
    pub addr: Option<IpAddr>,
    /// The port (the NodePort for [`Via::NodePort`]).
    pub port: u16,
    /// The table's family (a NodePort exists per family).
    pub family: Family,
}

impl Frontend {
    /// `tcp 10.96.0.10:53`, `tcp [fd00::a]:53`, `tcp *:30080` (IPv6 NodePort: `tcp [*]:30080`).
    pub fn address(&self) -> String {
        match (self.addr, self.family) {
            (Some(IpAddr::V4(a)), _) => format!("{} {a}:{}", self.proto, self.port),
            (Some(IpAddr::V6(a)), _) => format!("{} [{a}]:{}", self.proto, self.port),
            (None, Family::Ip) => format!("{} *:{}", self.proto, self.port),
            (None, Family::Ip6) => format!("{} [*]:{}", self.proto, self.port),
        }
    }
}

/// An endpoint a frontend DNATs to, with its share of new connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Endpoint address.
    pub addr: IpAddr,
    /// Endpoint port.
    pub port: u16,
    /// The share of new connections (of the hash space, for source hashing).
    pub share: Ratio,
}

/// What one frontend does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The frontend.
    pub frontend: Frontend,
    /// `random`, `round-robin` or `source-hash`, with `+affinity` for ClientIP affinity; empty
    /// when nothing is DNATed.
    pub scheduler: String,
    /// The backends, by address and port.
    pub backends: Vec<Backend>,
    /// What happens to the rest of the new connections (`reject`, `drop`, `accept`: not
    /// DNATed) with its probability, when anything does: a Service without endpoints, an
    /// eTP=Local address without a local endpoint, a client outside `loadBalancerSourceRanges`.
    pub otherwise: Vec<(String, Ratio)>,
}

/// Every frontend of `ruleset`, sorted by Service, way in and address. `env` is the node (its
/// addresses: a NodePort is traced to the first non-loopback one of the family).
pub fn rows(ruleset: &Ruleset, env: &Env) -> Vec<Row> {
    rows_where(ruleset, env, |_| true)
}

/// [`rows`] of the frontends `wanted` keeps, tracing only those (a trace per frontend is most
/// of the cost at 50k Services). Every lookup the rows make per frontend is a search, not a
/// walk of a set: one tracer serves all the traces, and what the rows read from the tables
/// besides is indexed once per table.
pub fn rows_where(ruleset: &Ruleset, env: &Env, wanted: impl Fn(&Frontend) -> bool) -> Vec<Row> {
    let tracer = Tracer::new(ruleset, env);
    let mut rows = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let mut tables = ruleset.tables.iter().filter(|t| t.family == family);
        let Some(first) = tables.next() else { continue };
        match merged(first, tables) {
            Some(view) => rows.extend(table_rows(&view, &tracer, env, &wanted)),
            None => rows.extend(table_rows(first, &tracer, env, &wanted)),
        }
    }
    rows.sort_by(|a, b| a.frontend.cmp(&b.frontend));
    rows
}

/// One family's tables as one for reading (`--dispatch-tables` above 1): every chain and set
/// by its name, the elements of a set of one name in several tables together. That is what
/// the rows read: the frontends of every dispatch table, the shared chains and their maps the
/// traces went through (a frontend and its slots live in one table only), and the main
/// table's `cluster-ips`, `nodeport-ips` and firewall sets. `None` for a single table.
fn merged<'a>(first: &Table, rest: impl Iterator<Item = &'a Table>) -> Option<Table> {
    let mut view: Option<Table> = None;
    // Sets that got elements from more than one table, sorted once at the end (the tracer
    // searches sets by key).
    let mut joined = BTreeSet::new();
    for table in rest {
        let view = view.get_or_insert_with(|| first.clone());
        for (name, chain) in &table.chains {
            view.chains
                .entry(name.clone())
                .or_insert_with(|| chain.clone());
        }
        for (name, set) in &table.sets {
            match view.sets.get_mut(name) {
                Some(into) => {
                    into.elements.extend(set.elements.iter().cloned());
                    joined.insert(name.clone());
                }
                None => {
                    view.sets.insert(name.clone(), set.clone());
                }
            }
        }
    }
    if let Some(view) = &mut view {
        for name in joined {
            let set = view.sets.get_mut(&name).expect("joined above");
            set.elements.sort_by(|a, b| a.key.cmp(&b.key));
            set.elements.dedup_by(|a, b| a.key == b.key);
        }
    }
    view
}

/// The chain of a trace's path step: a chain of a dispatch table other than the main one
/// shows as `<table>:<chain>`.
fn chain_of_step(step: &str) -> &str {
    match step.split_once(':') {
        Some((table, chain)) if names::is_ours(table) => chain,
        _ => step,
    }
}

fn table_rows(
    table: &Table,
    tracer: &Tracer,
    env: &Env,
    wanted: &dyn Fn(&Frontend) -> bool,
) -> Vec<Row> {
    let family = table.family;
    let cluster_ips: BTreeSet<IpAddr> = (table.sets.get(crate::lower::CLUSTER_IPS))
        .map(|s| {
            (s.elements.iter())
                .filter_map(|e| match e.key[..] {
                    [Value::Addr(a)] => Some(a),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // The frontends with their labels; a key may sit in a dispatch map and in a no-endpoint
    // map (eTP=Local without local endpoints): one row, whose trace says both.
    let mut frontends: BTreeMap<(Option<IpAddr>, L4Proto, u16), String> = BTreeMap::new();
    for name in [
        crate::lower::SERVICE_IPS,
        crate::lower::NO_ENDPOINT_SERVICES,
        crate::lower::SERVICE_NODEPORTS,
        crate::lower::NO_ENDPOINT_NODEPORTS,
    ] {
        let Some(set) = table.sets.get(name) else {
            continue;
        };
        for element in &set.elements {
            let key = match element.key[..] {
                [Value::Addr(a), Value::Proto(p), Value::Port(port)] => (Some(a), p, port),
                [Value::Proto(p), Value::Port(port)] => (None, p, port),
                _ => continue,
            };
            let label = frontends.entry(key).or_default();
            if label.is_empty() {
                label.clone_from(&element.comment.clone().unwrap_or_default());
            }
        }
    }
    let client = match family {
        Family::Ip => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        Family::Ip6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    };
    // A NodePort is traced to a local address `nodeport-ips` lets through (the node may hold
    // others, a pod-side gateway say, that serve no NodePort).
    let serves_nodeports = |a: IpAddr| {
        (table.sets.get(crate::lower::NODEPORT_IPS)).is_some_and(|s| {
            s.elements.iter().any(|e| match e.key[..] {
                [Value::Addr(x)] => x == a,
                [Value::Prefix(net)] => net.contains(&a),
                _ => false,
            })
        })
    };
    let candidates = || {
        (env.local_addrs.iter().copied()).filter(|a| Family::of(*a) == family && !a.is_loopback())
    };
    let node_addr = candidates()
        .find(|a| serves_nodeports(*a))
        .or_else(|| candidates().next());
    let allowed = allowed_clients(table);
    let mut slots = SlotShares::default();
    let mut rows = Vec::new();
    for ((addr, proto, port), label) in frontends {
        let (service, via) = match addr {
            None => (label, Via::NodePort),
            Some(a) if cluster_ips.contains(&a) => (label, Via::ClusterIp),
            Some(_) => external_way(label),
        };
        let frontend = Frontend {
            service,
            via,
            proto,
            addr,
            port,
            family,
        };
        if !wanted(&frontend) {
            continue;
        }
        let Some(daddr) = addr.or(node_addr) else {
            // A NodePort on a node without an address of the family: nothing reaches it.
            rows.push(Row {
                frontend,
                scheduler: String::new(),
                backends: Vec::new(),
                otherwise: Vec::new(),
            });
            continue;
        };
        let packet = Packet {
            proto,
            saddr: (addr.and_then(|a| allowed.get(&(a, proto, port))).copied()).unwrap_or(client),
            sport: 40000,
            daddr,
            dport: port,
            origin: Origin::Outside,
        };
        let traced = tracer.trace(&packet);
        let path: Vec<&str> = (traced.outcomes.iter())
            .flat_map(|o| o.path.iter().map(|step| chain_of_step(step)))
            .collect();
        let mut backends: Vec<Backend> = (traced.targets().into_iter())
            .map(|(addr, port, share)| Backend { addr, port, share })
            .collect();
        let hashed = path.iter().find(|c| {
            names::is_dnat_chain(c) && (c.contains("-source-hash-") || c.contains("-maglev-"))
        });
        if let Some(chain) = hashed {
            if let Some(shares) = slots.of(table, chain, addr, proto, port) {
                backends = shares;
            }
        }
        let otherwise = (traced.outcomes.iter())
            .filter_map(|o| match &o.fate {
                Fate::Accept { dnat: Some(_), .. } => None,
                Fate::Accept { dnat: None, .. } => Some(("accept".to_owned(), o.probability)),
                Fate::Drop => Some(("drop".to_owned(), o.probability)),
                Fate::Reject => Some(("reject".to_owned(), o.probability)),
                Fate::Error(e) => Some((format!("error: {e}"), o.probability)),
            })
            .collect();
        let scheduler = if backends.is_empty() {
            String::new()
        } else {
            scheduler(table, &path)
        };
        rows.push(Row {
            frontend,
            scheduler,
            backends,
            otherwise,
        });
    }
    rows
}

/// A client `loadBalancerSourceRanges` lets in, for each LoadBalancer IP, protocol and port
/// that has them (the first address of the first allowed range): the row shows what allowed
/// clients get.
fn allowed_clients(table: &Table) -> BTreeMap<(IpAddr, L4Proto, u16), IpAddr> {
    let mut clients = BTreeMap::new();
    // `firewall-allow`, or its shards `firewall-allow-<i>` with several dispatch tables.
    let shards = table.sets.values().filter(|set| {
        set.name
            .strip_prefix(crate::lower::FIREWALL_ALLOW)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    });
    for element in shards.flat_map(|set| &set.elements) {
        let [Value::Addr(addr), Value::Proto(proto), Value::Port(port), source] = &element.key[..]
        else {
            continue;
        };
        let client = match source {
            Value::Addr(a) => *a,
            Value::Prefix(net) => net.hosts().next().unwrap_or(net.network()),
            _ => continue,
        };
        clients.entry((*addr, *proto, *port)).or_insert(client);
    }
    clients
}

/// The scheduler the trace went through: a shared chain's word, or a service port chain's
/// cascade (`numgen inc`: round robin); ClientIP affinity shows as an `update @affinity-…`.
fn scheduler(table: &Table, path: &[&str]) -> String {
    let mut word = "random";
    for step in path {
        if names::is_dnat_chain(step) {
            if step.contains("-source-hash-") {
                word = "source-hash";
            } else if step.contains("-maglev-") {
                word = "maglev";
            }
        } else if let Some(chain) = table.chains.get(*step) {
            // A service port chain's cascade (or its long-list map) says its scheduler.
            for stmt in chain.rules.iter().flat_map(|r| &r.stmts) {
                let index = match stmt {
                    Stmt::Match { left, .. } => left,
                    Stmt::Dnat(crate::ir::NatTarget::NumgenMap { index, .. }) => index,
                    _ => continue,
                };
                match index {
                    crate::ir::Expr::Numgen {
                        mode: NumgenMode::Inc,
                        ..
                    } => word = "round-robin",
                    crate::ir::Expr::JhashSaddr { .. } => word = "source-hash",
                    _ => {}
                }
            }
        }
    }
    let affinity = path.iter().any(|s| s.starts_with("update @affinity-"));
    match affinity {
        true => format!("{word}+affinity"),
        false => word.to_owned(),
    }
}

/// The slots of each frontend in the maps of the shared source-hash and Maglev chains, counted
/// per endpoint the first time a row goes through the chain: a Maglev map holds M slots per
/// frontend, so walking it for each of its frontends would cost the square of its size.
#[derive(Default)]
struct SlotShares {
    /// Chain → its frontends' slots.
    counted: BTreeMap<String, Slots>,
}

/// A frontend (its key in a chain's map, without the slot) → endpoint → slots.
type Slots = BTreeMap<Vec<Value>, BTreeMap<(IpAddr, u16), u64>>;

impl SlotShares {
    /// The endpoints of a frontend's slots in the shared source-hash chain `chain`'s map, each
    /// with its slots over K (the chain's name ends in K).
    fn of(
        &mut self,
        table: &Table,
        chain: &str,
        addr: Option<IpAddr>,
        proto: L4Proto,
        port: u16,
    ) -> Option<Vec<Backend>> {
        let k: u64 = chain.rsplit_once('-')?.1.parse().ok()?;
        let map = table.sets.get(chain)?;
        let counted = self.counted.entry(chain.to_owned()).or_insert_with(|| {
            let mut counted = Slots::new();
            for element in &map.elements {
                let Some((_slot, head)) = element.key.split_last() else {
                    continue;
                };
                if let Some(ElemData::Values(v)) = &element.data {
                    if let [Value::Addr(a), Value::Port(p)] = v[..] {
                        let endpoints = counted.entry(head.to_vec()).or_default();
                        *endpoints.entry((a, p)).or_default() += 1;
                    }
                }
            }
            counted
        });
        let head: Vec<Value> = match addr {
            Some(a) => vec![Value::Addr(a), Value::Proto(proto), Value::Port(port)],
            None => vec![Value::Proto(proto), Value::Port(port)],
        };
        let counts = counted.get(&head)?;
        Some(
            (counts.iter())
                .map(|(&(addr, port), &n)| Backend {
                    addr,
                    port,
                    share: Ratio::new(n, k),
                })
                .collect(),
        )
    }
}
