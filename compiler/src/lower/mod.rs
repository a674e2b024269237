//! Graph → IR: chooses the nftables layout. One table per family (`ip kube-nft`, `ip6
//! kube-nft`), a fixed skeleton of base chains, dispatch chains and global sets/maps
//! (`skeleton`), and per service port only elements: dispatch elements entering shared DNAT
//! chains (one per way in, scheduler and endpoint count, each with a map of its own) and the
//! port's endpoints as slots in that map (`service`); round robin and ClientIP affinity keep
//! small per-port chains. The layout and its performance reasoning are described in
//! `compiler/README.md`; the invariants that matter here: the number of chains and rules does
//! not grow with the Services, no set or map per Service in the common case (kernel commit cost
//! grows quadratically with them), and endpoint or Service churn is element operations.

mod build;
mod service;
mod skeleton;

/// The hairpin set, which [`crate::incremental`] stores compactly.
pub(crate) use skeleton::HAIRPIN;
/// The dispatch maps whose keys are the Services' frontends (read by [`crate::conntrack`]).
pub(crate) use skeleton::{
    CLUSTER_IPS, FIREWALL_ALLOW, NODEPORT_IPS, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES,
    SERVICE_IPS, SERVICE_NODEPORTS,
};

use std::net::IpAddr;

use crate::graph::{Graph, LocalDetector, Service};
use crate::ir::{names, Chain, Element, Family, Ruleset, Set, Table};
use crate::Config;

/// Lowers the graph into one table per family (and, with `--dispatch-tables` N above 1, N - 1
/// further dispatch tables per family after it). Both families are always present, so a
/// script that replaces them leaves no stale family behind.
pub fn lower(graph: &Graph, config: &Config) -> Ruleset {
    let tables = [Family::Ip, Family::Ip6]
        .into_iter()
        .flat_map(|family| lower_family(graph, config, family))
        .collect();
    Ruleset { tables }
}

/// The dispatch table (0: the main one) of the Service `namespace/name` among `n`: FNV-1a of
/// `namespace/name`, so a Service stays in its table for its whole life and the tables fill
/// evenly. Everything a Service dispatches through (its dispatch elements, the shared chains
/// and maps they enter, its own chains and affinity maps) lives in that one table: a `goto`
/// cannot leave its table, and a port's frontends share its chains and affinity maps.
pub fn dispatch_table_of(namespace: &str, name: &str, n: u16) -> u16 {
    shard_of(namespace.bytes().chain([b'/']).chain(name.bytes()), n)
}

/// FNV-1a 64 of `bytes` modulo `n` (at least 1): where a name or key goes among `n` tables or
/// set shards, the same on every node and for the object's whole life.
pub(crate) fn shard_of(bytes: impl IntoIterator<Item = u8>, n: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(n.max(1))) as u16
}

/// Whether elements of the global set `name` belong in the Service's dispatch table (the
/// dispatch maps) rather than the main table (the filter side: `cluster-ips`, the firewall,
/// the no-endpoint maps, `hairpin`).
pub(crate) fn is_dispatch_set(name: &str) -> bool {
    matches!(
        name,
        SERVICE_IPS
            | SERVICE_NODEPORTS
            | skeleton::EXTERNAL_LOCAL_IPS
            | skeleton::EXTERNAL_LOCAL_NODEPORTS
    )
}

/// Per-family facts every lowering step needs.
pub(crate) struct FamilyCtx<'a> {
    pub(crate) family: Family,
    pub(crate) mark: u32,
    pub(crate) masquerade_all: bool,
    /// This family's local-traffic detector (`--detect-local-mode`), if it has one.
    pub(crate) local: Option<&'a LocalDetector>,
    /// This family's primary node IP.
    pub(crate) node_ip: Option<IpAddr>,
    /// `--dispatch-tables`: the tables the Service dispatch is spread over (at least 1).
    pub(crate) dispatch_tables: u16,
    pub(crate) graph: &'a Graph,
}

/// The per-family facts of a graph's node-wide part (its Services are not read).
pub(crate) fn family_ctx<'a>(graph: &'a Graph, config: &Config, family: Family) -> FamilyCtx<'a> {
    FamilyCtx {
        family,
        mark: config.masquerade_mark(),
        masquerade_all: config.masquerade_all,
        local: graph.local_detector(family),
        node_ip: graph.node.ip(family),
        dispatch_tables: config.dispatch_tables.max(1),
        graph,
    }
}

fn lower_family(graph: &Graph, config: &Config, family: Family) -> Vec<Table> {
    let ctx = family_ctx(graph, config, family);
    let mut table = skeleton_table(&ctx);
    if ctx.dispatch_tables == 1 {
        for svc in &graph.services {
            service::add(&mut table, &ctx, svc);
        }
        skeleton::finish(&mut table);
        return vec![table];
    }
    let mut tables = vec![table];
    tables.extend((1..ctx.dispatch_tables).map(|i| dispatch_skeleton_table(&ctx, i)));
    // The main table before any Service: what `lower_service` tells a Service's own sets
    // (and shared chains' maps) from the global ones by.
    let skeleton = tables[0].clone();
    let mut scratch = scratch_table(&skeleton);
    let mut placer = Placer::default();
    for svc in &graph.services {
        let fragment = lower_service(&skeleton, &mut scratch, &ctx, svc);
        let t = dispatch_table_of(&svc.namespace, &svc.name, ctx.dispatch_tables);
        placer.place(&mut tables, usize::from(t), fragment);
    }
    for table in &mut tables {
        skeleton::finish(table);
    }
    // Tables in name order, as everything that lists them (`kube-nft-dispatch-10` before `-2`).
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    tables
}

/// Puts each Service's fragment into its dispatch table and its filter-side elements into the
/// main one, claiming dispatch keys and slot groups across all tables: a frontend dispatched
/// by two Services belongs to the first in `lower`'s order, as it does in one table (where
/// `finish` keeps the first element of a key), and a packet must never find it in two tables.
#[derive(Default)]
struct Placer {
    /// (dispatch map, key) and (shared map, frontend) already placed, in any table.
    claimed: std::collections::HashSet<(String, Vec<crate::ir::Value>)>,
}

impl Placer {
    fn place(&mut self, tables: &mut [Table], t: usize, fragment: Fragment) {
        let Fragment {
            chains,
            sets,
            elements,
        } = fragment;
        for chain in chains {
            tables[t].chains.entry(chain.name.clone()).or_insert(chain);
        }
        for mut set in sets {
            if names::is_dnat_chain(&set.name) {
                // A shared chain's map: the frontend's K slots go with its dispatch element.
                let elements = std::mem::take(&mut set.elements);
                let map = tables[t].sets.entry(set.name.clone()).or_insert(set);
                // The frontends this Service claimed in this map; a frontend it lost is one
                // an earlier Service holds.
                let mut mine = std::collections::HashSet::new();
                for e in elements {
                    let frontend = e.key[..e.key.len() - 1].to_vec();
                    if mine.contains(&frontend)
                        || (self.claimed).insert((map.name.clone(), frontend.clone()))
                    {
                        mine.insert(frontend);
                        map.elements.push(e);
                    }
                }
            } else {
                tables[t].sets.insert(set.name.clone(), set);
            }
        }
        for (set, element) in elements {
            let to = if is_dispatch_set(&set) {
                if !self.claimed.insert((set.clone(), element.key.clone())) {
                    continue;
                }
                t
            } else {
                0
            };
            let set = tables[to].sets.get_mut(&set).expect("global set");
            set.elements.push(element);
        }
    }
}

/// Dispatch table `i` > 0 with only its skeleton (the dispatch part of the main table's).
pub(crate) fn dispatch_skeleton_table(ctx: &FamilyCtx<'_>, i: u16) -> Table {
    let mut table = Table::new(ctx.family, names::dispatch_table(i));
    table.comment = Some(format!(
        "Service dispatch for kube-nft, part {} of {}",
        i + 1,
        ctx.dispatch_tables
    ));
    skeleton::add_dispatch_table(&mut table, ctx);
    table
}

/// The table with only the skeleton: base and fixed chains, the global sets and maps, and the
/// skeleton's own elements (not yet sorted).
pub(crate) fn skeleton_table(ctx: &FamilyCtx<'_>) -> Table {
    let mut table = Table::new(ctx.family, names::TABLE);
    table.comment = Some("rules for kube-nft".to_string());
    skeleton::add(&mut table, ctx);
    table
}

/// What one Service adds to one family's table: its own chains and sets, and its elements in
/// the skeleton's global sets and maps (in the order `lower` pushes them, the first of each
/// (set, key) only, since a later one with the same key could never win).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fragment {
    pub(crate) chains: Vec<Chain>,
    pub(crate) sets: Vec<Set>,
    pub(crate) elements: Vec<(String, Element)>,
}

/// An empty table holding only the global sets and maps of `skeleton` (no chains, no
/// elements): what [`lower_service`] lowers into.
pub(crate) fn scratch_table(skeleton: &Table) -> Table {
    let mut table = Table::new(skeleton.family, skeleton.name.clone());
    for (name, set) in &skeleton.sets {
        let mut set = set.clone();
        set.elements.clear();
        table.sets.insert(name.clone(), set);
    }
    table
}

/// Lowers one Service on its own into `scratch` (from [`scratch_table`] of `skeleton`), which
/// is left as it was, so one scratch table serves every Service of a sync.
pub(crate) fn lower_service(
    skeleton: &Table,
    scratch: &mut Table,
    ctx: &FamilyCtx<'_>,
    svc: &Service,
) -> Fragment {
    let global = scratch.sets.len();
    service::add(scratch, ctx, svc);
    let mut fragment = Fragment {
        chains: std::mem::take(&mut scratch.chains).into_values().collect(),
        ..Fragment::default()
    };
    if scratch.sets.len() > global {
        // Sets of the Service's own (ClientIP affinity): not in the scratch table before.
        let own: Vec<String> = scratch
            .sets
            .keys()
            .filter(|name| !skeleton.sets.contains_key(*name))
            .cloned()
            .collect();
        for name in own {
            fragment.sets.extend(scratch.sets.remove(&name));
        }
    }
    for (name, set) in &mut scratch.sets {
        for element in set.elements.drain(..) {
            let duplicate = fragment
                .elements
                .iter()
                .any(|(s, e)| s == name && e.key == element.key);
            if !duplicate {
                fragment.elements.push((name.clone(), element));
            }
        }
    }
    fragment
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Backend, Scheduler, Service, ServicePort};
    use crate::ir::{
        DataType, ElemData, Expr, L4Proto, NatTarget, NumgenMode, Stmt, Value, Verdict,
    };

    fn backend(addr: &str, port: u16) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    fn service(name: &str, cluster: Vec<Backend>) -> Service {
        Service {
            namespace: "ns1".into(),
            name: name.into(),
            scheduler: Scheduler::Random,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            cluster_ips: vec!["172.30.0.41".parse().unwrap()],
            external_ips: vec![],
            lb_ips: vec![],
            source_ranges: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                proto: L4Proto::Tcp,
                port: 80,
                node_port: None,
                // As endpoints without a `nodeName`: every hairpin pair is kept.
                near: (cluster.iter().map(|b| b.addr))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                cluster: cluster.into(),
                local: Default::default(),
            }],
            health_check_node_port: None,
            local_ready_endpoints: vec![],
        }
    }

    fn lower_one(svc: Service) -> Table {
        let graph = Graph {
            services: vec![svc],
            ..Graph::default()
        };
        let ruleset = lower(&graph, &Config::default());
        crate::ir::verify(&ruleset).expect("verifies");
        ruleset.table(Family::Ip).unwrap().clone()
    }

    fn skeleton() -> Table {
        lower(&Graph::default(), &Config::default())
            .table(Family::Ip)
            .unwrap()
            .clone()
    }

    #[test]
    fn clusterip_service_is_elements_entering_a_shared_chain() {
        let eps = vec![
            backend("10.0.3.1", 8080),
            backend("10.0.1.1", 8080),
            backend("10.0.2.1", 8080),
        ];
        let table = lower_one(service("web", eps));
        let base = skeleton();
        // The shared chain and its map, nothing named after the Service.
        assert_eq!(table.sets.len(), base.sets.len() + 1);
        assert_eq!(table.chains.len(), base.chains.len() + 1);
        let chain = &table.chains["clusterip-random-3"];
        // One DNAT through the chain's map (the default config has no local-traffic detector,
        // so there is no masquerade rule before it).
        assert_eq!(chain.rules.len(), 1);
        match &chain.rules[0].stmts[..] {
            [Stmt::Dnat(NatTarget::Map { key, map, .. })] => {
                assert_eq!(map, "clusterip-random-3");
                let Expr::Concat(parts) = key else {
                    panic!("{key:?}")
                };
                assert_eq!(
                    parts[3],
                    Expr::Numgen {
                        mode: NumgenMode::Random,
                        modulus: 3
                    }
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let dispatch = &table.sets["service-ips"].elements;
        assert_eq!(dispatch.len(), 1);
        assert_eq!(
            dispatch[0].data,
            Some(ElemData::Verdict(Verdict::Goto(
                "clusterip-random-3".into()
            )))
        );
        assert_eq!(dispatch[0].comment.as_deref(), Some("ns1/web:http"));
        // One slot per endpoint, in the graph's order (normalize sorts endpoint lists).
        let slots: Vec<(Value, Value)> = table.sets["clusterip-random-3"]
            .elements
            .iter()
            .map(|e| match &e.data {
                Some(ElemData::Values(v)) => (e.key[3].clone(), v[0].clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let addr = |a: &str| Value::Addr(a.parse().unwrap());
        assert_eq!(
            slots,
            vec![
                (Value::Int(0), addr("10.0.3.1")),
                (Value::Int(1), addr("10.0.1.1")),
                (Value::Int(2), addr("10.0.2.1")),
            ]
        );
        assert_eq!(table.sets["hairpin"].elements.len(), 3);
    }

    #[test]
    fn services_with_as_many_endpoints_share_one_chain() {
        let graph = Graph {
            services: (0..3)
                .map(|i| {
                    let mut svc = service(
                        &format!("web{i}"),
                        vec![
                            backend(&format!("10.0.{i}.1"), 80),
                            backend(&format!("10.0.{i}.2"), 80),
                        ],
                    );
                    svc.cluster_ips = vec![format!("172.30.0.{}", 10 + i).parse().unwrap()];
                    svc
                })
                .collect(),
            ..Graph::default()
        };
        let ruleset = lower(&graph, &Config::default());
        crate::ir::verify(&ruleset).expect("verifies");
        let table = ruleset.table(Family::Ip).unwrap();
        assert_eq!(table.chains.len(), skeleton().chains.len() + 1);
        assert!(table.chains.contains_key("clusterip-random-2"));
        assert_eq!(table.sets["clusterip-random-2"].elements.len(), 6);
    }

    #[test]
    fn long_endpoint_lists_need_no_other_chain() {
        let eps: Vec<_> = (1..=40)
            .map(|i| backend(&format!("10.0.{}.{}", i / 200, i % 200 + 1), 80))
            .collect();
        let table = lower_one(service("big", eps.clone()));
        assert!(table.chains.contains_key("clusterip-random-40"));
        assert_eq!(table.sets["clusterip-random-40"].elements.len(), 40);

        // Round robin keeps a chain of its own; above the cascade limit one anonymous map.
        let mut svc = service("big", eps);
        svc.scheduler = Scheduler::RoundRobin;
        let table = lower_one(svc);
        let chain = table
            .chains
            .values()
            .find(|c| c.name.starts_with("service-"))
            .unwrap();
        assert_eq!(chain.rules.len(), 1);
        match &chain.rules[0].stmts[..] {
            [Stmt::Dnat(NatTarget::NumgenMap { targets, .. })] => {
                assert_eq!(targets.len(), 40)
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!table.sets.keys().any(|n| n.starts_with("clusterip-")));
    }

    #[test]
    fn service_without_endpoints_rejects_and_has_no_chain() {
        let table = lower_one(service("empty", vec![]));
        assert_eq!(table.chains.len(), skeleton().chains.len());
        let elems = &table.sets["no-endpoint-services"].elements;
        assert_eq!(elems.len(), 1);
        assert_eq!(
            elems[0].data,
            Some(ElemData::Verdict(Verdict::Goto("reject-chain".into())))
        );
        assert_eq!(elems[0].comment.as_deref(), Some("ns1/empty:http"));
        assert_eq!(
            table.sets["cluster-ips"].elements[0].key,
            vec![Value::Addr("172.30.0.41".parse().unwrap())]
        );
    }

    #[test]
    fn affinity_adds_one_map_per_endpoint_list_and_target_port() {
        let mut svc = service(
            "sticky",
            vec![
                backend("10.0.1.1", 80),
                backend("10.0.1.2", 80),
                backend("10.0.1.3", 81),
            ],
        );
        svc.affinity_timeout = Some(30);
        let table = lower_one(svc);
        let maps: Vec<_> = table
            .sets
            .values()
            .filter(|s| s.name.starts_with("affinity-"))
            .collect();
        assert_eq!(maps.len(), 2, "one per target port, none per endpoint");
        assert!(maps.iter().all(|s| s.timeout == Some(30)
            && s.flags.dynamic
            && s.flags.timeout
            && s.key == [DataType::Ipv4Addr]
            && s.data == [DataType::Ipv4Addr]));
        let chain = (table.chains.values())
            .find(|c| c.name.starts_with("service-"))
            .expect("affinity keeps a chain of its own");
        // A known client first (one DNAT per map), then the cascade, each rule recording
        // its choice in the map of its endpoint's port.
        let remembered: Vec<(&str, u16)> = (chain.rules.iter())
            .filter_map(|r| match &r.stmts[..] {
                [Stmt::Dnat(NatTarget::AddrMap { map, port, .. })] => Some((map.as_str(), *port)),
                _ => None,
            })
            .collect();
        assert_eq!(remembered.len(), 2);
        assert!(remembered.iter().all(|(m, _)| table.sets.contains_key(*m)));
        let recorded: Vec<(&str, Value)> = (chain.rules.iter())
            .flat_map(|r| &r.stmts)
            .filter_map(|s| match s {
                Stmt::Update {
                    set,
                    data: Some(data),
                    ..
                } => Some((set.as_str(), data.clone())),
                _ => None,
            })
            .collect();
        let addr = |a: &str| Value::Addr(a.parse().unwrap());
        let map_of = |port| remembered.iter().find(|(_, p)| *p == port).unwrap().0;
        assert_eq!(
            recorded,
            [
                (map_of(80), addr("10.0.1.1")),
                (map_of(80), addr("10.0.1.2")),
                (map_of(81), addr("10.0.1.3")),
            ]
        );
        assert_eq!(chain.rules.len(), 2 + 3);
    }

    #[test]
    fn external_local_without_local_endpoints_drops_external_traffic() {
        let mut svc = service("lb", vec![backend("10.0.2.1", 80)]);
        svc.external_local = true;
        svc.lb_ips = vec!["198.51.100.10".parse().unwrap()];
        svc.ports[0].node_port = Some(30080);
        let table = lower_one(svc);
        let drops = |set: &str| {
            table.sets[set]
                .elements
                .iter()
                .filter(|e| e.data == Some(ElemData::Verdict(Verdict::Drop)))
                .count()
        };
        assert_eq!(drops("no-endpoint-services"), 1);
        assert_eq!(drops("no-endpoint-nodeports"), 1);
        // Clients elsewhere leave `services` un-NATed (`return`), to be dropped; this node's
        // pods and the node itself still reach the endpoint elsewhere.
        for map in ["external-local-ips", "external-local-nodeports"] {
            let elements = &table.sets[map].elements;
            assert_eq!(elements.len(), 1, "{map}");
            assert_eq!(elements[0].data, Some(ElemData::Verdict(Verdict::Return)));
        }
        assert!(!table.chains.keys().any(|n| n.contains("-local-")));
        assert!(table.chains.contains_key("external-from-node-random-1"));
        assert!(table.chains.contains_key("nodeport-from-node-random-1"));
    }
}
