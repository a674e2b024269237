//! One Service in one family. A service port balanced at random or by source hash is data only
//! ([`add_port_as_data`]): dispatch elements that enter shared DNAT chains, and its endpoints as
//! slots in those chains' maps. A port with round robin or ClientIP affinity keeps kube-proxy's
//! shape of at most three chains of its own — `service-…` (Cluster-policy endpoints), `local-…`
//! (node-local endpoints) and `external-…` (NodePort / externalIP / LoadBalancer entry, where
//! masquerade and externalTrafficPolicy are decided) — with the endpoint selection flattened
//! into a cascade of `numgen` rules (see [`add_balancing`]).

use std::net::IpAddr;

use crate::graph::{Backend, LocalDetector, Scheduler, Service, ServicePort};
use crate::ir::names::{self, DnatEntry, ServicePortId};
use crate::ir::{
    DataType, ElemData, Expr, Family, NatTarget, NumgenMode, Rule, Set, SetFlags, Stmt, Table,
    Value, Verdict,
};

use super::build::{
    add_element, chain, fib_saddr_local, from_local_pod, goto, insert_chain, jump, match_daddr,
};
use super::skeleton::{
    firewall_sets, firewall_shard, CLUSTER_IPS, EXTERNAL_LOCAL_IPS, EXTERNAL_LOCAL_NODEPORTS,
    HAIRPIN, MARK_FOR_MASQUERADE, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, REJECT_CHAIN,
    SERVICE_IPS, SERVICE_NODEPORTS,
};
use super::FamilyCtx;

/// Longest endpoint list balanced by a cascade of rules. A cascade costs one `numgen` and one
/// compare per rule tried on a connection's first packet (K/2 on average), but adds no set to
/// the kernel transaction. Above this, one anonymous `numgen … map` per port keeps the
/// per-packet cost O(1); such Services are few, so their sets do not make commits quadratic.
pub(crate) const CASCADE_MAX: usize = 32;

/// Adds everything one Service needs in this family's table.
pub(crate) fn add(table: &mut Table, ctx: &FamilyCtx<'_>, svc: &Service) {
    let family = ctx.family;
    // Like kube-proxy's per-family proxiers: a Service exists in a family through its ClusterIP.
    let Some(cluster_ip) = svc
        .cluster_ips
        .iter()
        .copied()
        .find(|ip| in_family(*ip, family))
    else {
        return;
    };
    add_element(
        table,
        CLUSTER_IPS,
        vec![Value::Addr(cluster_ip)],
        None,
        None,
    );
    for port in &svc.ports {
        add_port(table, ctx, svc, cluster_ip, port);
    }
}

fn in_family(ip: IpAddr, family: Family) -> bool {
    Family::of(ip) == family
}

/// Addresses a port is reachable on from outside the cluster network (besides NodePorts).
fn external_addrs(svc: &Service, family: Family) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = svc
        .external_ips
        .iter()
        .chain(&svc.lb_ips)
        .copied()
        .filter(|ip| in_family(*ip, family))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The comment of an element keyed by an externalIP or a LoadBalancer IP: the service port's
/// label with the words kube-proxy's iptables mode puts in its comments (`ns/name:port
/// external IP`, `ns/name:port loadbalancer IP`), so that `kube-nft show` reading the tables
/// back can tell the two ways in apart. An address that is both counts as an externalIP.
fn external_label(svc: &Service, label: &str, addr: IpAddr) -> String {
    let what = if svc.lb_ips.contains(&addr) && !svc.external_ips.contains(&addr) {
        names::LOADBALANCER_IP_COMMENT
    } else {
        names::EXTERNAL_IP_COMMENT
    };
    crate::render::sanitize_comment(&format!("{label} {what}"))
}

fn add_port(
    table: &mut Table,
    ctx: &FamilyCtx<'_>,
    svc: &Service,
    cluster_ip: IpAddr,
    port: &ServicePort,
) {
    let family = ctx.family;
    let id = ServicePortId {
        namespace: &svc.namespace,
        name: &svc.name,
        proto: port.proto,
        port: port.port,
    };
    // The element comment naming the service port, cut to what the kernel keeps (128 bytes;
    // two 63-character names and a port name can exceed it), so a read-back equals the IR.
    let label = crate::render::sanitize_comment(&format!(
        "{}/{}:{}",
        svc.namespace,
        svc.name,
        if port.name.is_empty() {
            port.port.to_string()
        } else {
            port.name.clone()
        }
    ));
    let cluster: Vec<Backend> = backends(&port.cluster, family);
    let local: Vec<Backend> = backends(&port.local, family);
    let ext_addrs = external_addrs(svc, family);
    let externally_reachable = port.node_port.is_some() || !ext_addrs.is_empty();
    let key = |addr: IpAddr| {
        vec![
            Value::Addr(addr),
            Value::Proto(port.proto),
            Value::Port(port.port),
        ]
    };
    let nodeport_key = |np: u16| vec![Value::Proto(port.proto), Value::Port(np)];

    add_firewall(table, ctx, svc, port, &label);

    // Cluster endpoints are empty only when no endpoint anywhere is ready or serving (the local
    // list is a subset of the same endpoints), so this is kube-proxy's "no endpoints at all".
    if cluster.is_empty() {
        let reject = || Some(ElemData::Verdict(Verdict::Goto(REJECT_CHAIN.to_string())));
        let comment = Some(label.clone());
        add_element(
            table,
            NO_ENDPOINT_SERVICES,
            key(cluster_ip),
            reject(),
            comment.clone(),
        );
        for addr in &ext_addrs {
            add_element(
                table,
                NO_ENDPOINT_SERVICES,
                key(*addr),
                reject(),
                Some(external_label(svc, &label, *addr)),
            );
        }
        if let Some(np) = port.node_port {
            add_element(
                table,
                NO_ENDPOINT_NODEPORTS,
                nodeport_key(np),
                reject(),
                comment,
            );
        }
        return;
    }

    if uses_shared_chains(svc) {
        add_port_as_data(table, ctx, svc, cluster_ip, port, &label, &cluster, &local);
        return;
    }

    let service_chain = names::service_chain(&id);
    let local_chain = names::local_chain(&id);
    let external_chain = names::external_chain(&id);
    let internal_chain = if svc.internal_local {
        &local_chain
    } else {
        &service_chain
    };
    let internal_list = if svc.internal_local { &local } else { &cluster };

    // Which policy chains exist: the Cluster chain serves Cluster-policy ClusterIP traffic and
    // every external entry (eTP=Cluster, and eTP=Local's short-circuit for pods and the host);
    // the Local chain serves iTP=Local and eTP=Local when there are local endpoints.
    let needs_service_chain = !svc.internal_local || externally_reachable;
    let needs_local_chain =
        !local.is_empty() && (svc.internal_local || (externally_reachable && svc.external_local));

    // ClusterIP dispatch.
    if internal_list.is_empty() {
        drop_internal_local(table, key(cluster_ip), &label);
    } else {
        add_element(
            table,
            SERVICE_IPS,
            key(cluster_ip),
            Some(ElemData::Verdict(Verdict::Goto(internal_chain.clone()))),
            Some(label.clone()),
        );
    }

    for (name, list, needed, is_local) in [
        (&service_chain, &cluster, needs_service_chain, false),
        (&local_chain, &local, needs_local_chain, true),
    ] {
        if !needed {
            continue;
        }
        let mut c = chain(name);
        if name == internal_chain {
            c.rules.extend(cluster_ip_masquerade(ctx, Some(cluster_ip)));
        }
        add_balancing(&mut c.rules, table, ctx, svc, &id, port, list, is_local);
        insert_chain(table, c);
        add_hairpin_pairs(table, ctx, svc, port, externally_reachable, list);
    }

    if !externally_reachable {
        return;
    }
    let mut ext = chain(&external_chain);
    ext.rules = external_rules(ctx, svc, &service_chain, &local_chain, !local.is_empty());
    insert_chain(table, ext);
    let to_external = || Some(ElemData::Verdict(Verdict::Goto(external_chain.clone())));
    // eTP=Local without local endpoints: pods and the host are short-circuited inside the
    // external chain (DNAT happens there); everything else falls through un-NATed and is then
    // dropped by the post-DNAT checks through these elements.
    let no_local = svc.external_local && local.is_empty();
    let drop = || Some(ElemData::Verdict(Verdict::Drop));
    for addr in &ext_addrs {
        let comment = external_label(svc, &label, *addr);
        if no_local {
            add_element(
                table,
                NO_ENDPOINT_SERVICES,
                key(*addr),
                drop(),
                Some(comment.clone()),
            );
        }
        add_element(table, SERVICE_IPS, key(*addr), to_external(), Some(comment));
    }
    if let Some(np) = port.node_port {
        add_element(
            table,
            SERVICE_NODEPORTS,
            nodeport_key(np),
            to_external(),
            Some(label.clone()),
        );
        if no_local {
            add_element(
                table,
                NO_ENDPOINT_NODEPORTS,
                nodeport_key(np),
                drop(),
                Some(label),
            );
        }
    }
}

/// Adds the `hairpin` pairs `e . e` of the endpoints in `list` that a packet DNATed here can
/// come from: in `masquerading` such a packet, sent by an endpoint to itself through the
/// Service, is masqueraded so that the reply comes back through this node.
///
/// kube-proxy checks every endpoint (`ip saddr <ep>` in each endpoint chain), but a packet can
/// only come from an endpoint on another node if it reaches this node un-DNATed, and the only
/// way in without being DNATed on the sender's own node, and without being masqueraded here,
/// is an eTP=Local Service's external address (a NodePort of this node's address, which other
/// nodes do not intercept) from a source the local-traffic detector counts as a pod (with the
/// default `ClusterCIDR` detection, any pod of the cluster): the short-circuit to the Cluster
/// list. So only such Services pay a pair for every endpoint; the others pay for the endpoints
/// not known to run elsewhere (`ServicePort::near`: this node's, and those without a
/// `nodeName`). At 50k synthetic Services × 10 that is 54k pairs instead of 500k, which were a
/// third of the ruleset's elements. ClusterIP traffic from a pod on another node is DNATed on
/// that node, by its own proxy, before it leaves it.
fn add_hairpin_pairs(
    table: &mut Table,
    ctx: &FamilyCtx<'_>,
    svc: &Service,
    port: &ServicePort,
    externally_reachable: bool,
    list: &[Backend],
) {
    let remote_sources = svc.external_local && externally_reachable && ctx.local.is_some();
    for b in list {
        if remote_sources || port.near.binary_search(&b.addr).is_ok() {
            let pair = vec![Value::Addr(b.addr), Value::Addr(b.addr)];
            add_element(table, HAIRPIN, pair, None, None);
        }
    }
}

/// Whether a Service's ports are balanced by the shared DNAT chains, with their endpoints as
/// map data. Round robin needs a counter of its own per service port (a shared `numgen inc`
/// would rotate across every Service using the chain) and ClientIP affinity refreshes per
/// endpoint timeout sets, so those keep chains of their own.
fn uses_shared_chains(svc: &Service) -> bool {
    svc.affinity_timeout.is_none()
        && matches!(
            svc.scheduler,
            Scheduler::Random | Scheduler::SourceHash | Scheduler::Maglev
        )
}

/// One service port as data: each frontend gets a dispatch element that enters a shared chain
/// chosen by how it is entered and by its endpoint count K (`clusterip-random-3`), and K
/// elements `frontend . slot : endpoint . port` in that chain's map (of the same name), which
/// the chain's single DNAT rule reads with `frontend . numgen random mod K`. An endpoint change
/// thus changes elements only: the slots, and the dispatch element when K changes (the slots
/// then move to the map of K ± 1).
#[allow(clippy::too_many_arguments)]
fn add_port_as_data(
    table: &mut Table,
    ctx: &FamilyCtx<'_>,
    svc: &Service,
    cluster_ip: IpAddr,
    port: &ServicePort,
    label: &str,
    cluster: &[Backend],
    local: &[Backend],
) {
    let addr_key = |addr: IpAddr| {
        vec![
            Value::Addr(addr),
            Value::Proto(port.proto),
            Value::Port(port.port),
        ]
    };
    let ext_addrs = external_addrs(svc, ctx.family);
    let externally_reachable = port.node_port.is_some() || !ext_addrs.is_empty();
    let internal_list = if svc.internal_local { local } else { cluster };

    // ClusterIP dispatch.
    if internal_list.is_empty() {
        drop_internal_local(table, addr_key(cluster_ip), label);
    } else {
        let entry = if svc.internal_local {
            DnatEntry::ClusterIpLocal
        } else {
            DnatEntry::ClusterIp
        };
        let slots = slot_list(svc.scheduler, internal_list);
        let chain = shared_chain(table, ctx, svc.scheduler, entry, slots.len());
        let comment = Some(label.to_string());
        add_element(
            table,
            SERVICE_IPS,
            addr_key(cluster_ip),
            goto_data(&chain),
            comment,
        );
        add_slots(table, &chain, addr_key(cluster_ip), &slots);
    }

    // Hairpin pairs of every list a frontend can pick from, as the per-port chains do.
    let cluster_used = !svc.internal_local || externally_reachable;
    let local_used =
        !local.is_empty() && (svc.internal_local || (externally_reachable && svc.external_local));
    for (list, used) in [(cluster, cluster_used), (local, local_used)] {
        if used {
            add_hairpin_pairs(table, ctx, svc, port, externally_reachable, list);
        }
    }
    if !externally_reachable {
        return;
    }

    let (cluster_slots, local_slots) = (
        slot_list(svc.scheduler, cluster),
        slot_list(svc.scheduler, local),
    );
    let frontends = ext_addrs.iter().map(|addr| (false, addr_key(*addr))).chain(
        port.node_port
            .map(|np| (true, vec![Value::Proto(port.proto), Value::Port(np)])),
    );
    for (nodeport, key) in frontends {
        let (dispatch, local_dispatch, no_endpoint) = if nodeport {
            (
                SERVICE_NODEPORTS,
                EXTERNAL_LOCAL_NODEPORTS,
                NO_ENDPOINT_NODEPORTS,
            )
        } else {
            (SERVICE_IPS, EXTERNAL_LOCAL_IPS, NO_ENDPOINT_SERVICES)
        };
        let entry = if svc.external_local {
            DnatEntry::ExternalFromNode { nodeport }
        } else {
            DnatEntry::External { nodeport }
        };
        let chain = shared_chain(table, ctx, svc.scheduler, entry, cluster_slots.len());
        let text = match key[..] {
            [Value::Addr(addr), ..] => external_label(svc, label, addr),
            _ => label.to_string(),
        };
        let comment = || Some(text.clone());
        add_element(table, dispatch, key.clone(), goto_data(&chain), comment());
        add_slots(table, &chain, key.clone(), &cluster_slots);
        if !svc.external_local {
            continue;
        }
        if local.is_empty() {
            // Clients elsewhere leave `services` un-NATed and are dropped by the post-DNAT
            // check, exactly like the per-port chains' fall-through.
            let back = Some(ElemData::Verdict(Verdict::Return));
            add_element(table, local_dispatch, key.clone(), back, comment());
            let drop = Some(ElemData::Verdict(Verdict::Drop));
            add_element(table, no_endpoint, key, drop, comment());
        } else {
            let entry = DnatEntry::ExternalLocal { nodeport };
            let chain = shared_chain(table, ctx, svc.scheduler, entry, local_slots.len());
            add_element(
                table,
                local_dispatch,
                key.clone(),
                goto_data(&chain),
                comment(),
            );
            add_slots(table, &chain, key, &local_slots);
        }
    }
}

/// iTP=Local with endpoints only on other nodes: the ClusterIP drops, as kube-proxy's does.
fn drop_internal_local(table: &mut Table, key: Vec<Value>, label: &str) {
    let drop = Some(ElemData::Verdict(Verdict::Drop));
    add_element(
        table,
        NO_ENDPOINT_SERVICES,
        key,
        drop,
        Some(label.to_string()),
    );
}

fn goto_data(chain: &str) -> Option<ElemData> {
    Some(ElemData::Verdict(Verdict::Goto(chain.to_string())))
}

/// The slots of a shared map for an endpoint list: the list itself (slot i is the i-th
/// endpoint), or for Maglev its lookup table, slot → endpoint (`compiler::maglev`), of at least
/// 1021 slots: a table of another size has nothing in common with it, so the size stays the same
/// from 1 to 10 endpoints (the paper's 100 slots per endpoint) and changes, reshuffling every
/// client, only past 10 (65537 slots) — 251 for one or two endpoints would reshuffle every client
/// whenever a Service grew from two to three.
fn slot_list(scheduler: Scheduler, list: &[Backend]) -> std::borrow::Cow<'_, [Backend]> {
    if scheduler != Scheduler::Maglev || list.is_empty() {
        return std::borrow::Cow::Borrowed(list);
    }
    let size = crate::maglev::table_size(list.len()).max(crate::maglev::SIZES[1]);
    let names: Vec<String> = list
        .iter()
        .map(|b| std::net::SocketAddr::new(b.addr, b.port).to_string())
        .collect();
    let table = crate::maglev::table(&names, size);
    std::borrow::Cow::Owned(table.iter().map(|&i| list[i as usize]).collect())
}

/// `frontend . i : endpoint_i . port_i` for the K endpoints of a list, in list order.
fn add_slots(table: &mut Table, map: &str, frontend: Vec<Value>, list: &[Backend]) {
    for (i, b) in list.iter().enumerate() {
        let mut key = frontend.clone();
        key.push(Value::Int(
            u32::try_from(i).expect("endpoint count fits in u32"),
        ));
        let data = ElemData::Values(vec![Value::Addr(b.addr), Value::Port(b.port)]);
        add_element(table, map, key, Some(data), None);
    }
}

/// The shared chain for `entry` over `k` endpoints with `scheduler`, with its map, added to
/// `table` unless they are there; their name. What the chain does besides the DNAT is
/// kube-proxy's masquerade decision for that way in:
///
/// * `clusterip[-local]`: traffic not from a local pod is masqueraded (all of it under
///   `--masquerade-all`, none without a local-traffic detector), as in kube-proxy's service
///   chain;
/// * `external`/`nodeport` (eTP=Cluster): always masqueraded;
/// * `…-from-node` (eTP=Local, reached only by this node's pods and the node itself, since
///   clients elsewhere were sent to `…-local` first): the node's own traffic is masqueraded,
///   pods keep their address;
/// * `…-local` (eTP=Local, clients elsewhere): never, the client address is preserved.
///
/// The DNAT is `dnat to FRONTEND . SLOT map @NAME`, where FRONTEND is `ip daddr . meta l4proto
/// . th dport` (`meta l4proto . th dport` for NodePorts) and SLOT is `numgen random mod K` or,
/// for source hashing, `jhash ip saddr mod K seed 0`.
///
/// Each chain has a map of its own because the kernel walks every element of a map when a rule
/// that reads it is added (`nf_tables_bind_set` checks a map's data for loops on each new
/// binding, even when the data are not verdicts): a chain created for a new K, reading one map
/// shared by every Service, cost 100–200 ms at 50k Services; its own map is empty when its rule
/// is added, since a transaction adds rules before elements.
fn shared_chain(
    table: &mut Table,
    ctx: &FamilyCtx<'_>,
    scheduler: Scheduler,
    entry: DnatEntry,
    k: usize,
) -> String {
    let word = match scheduler {
        Scheduler::SourceHash => "source-hash",
        Scheduler::Maglev => "maglev",
        Scheduler::Random | Scheduler::RoundRobin => "random",
    };
    let name = names::dnat_chain(entry, word, k);
    if table.chains.contains_key(&name) {
        return name;
    }
    let family = ctx.family;
    let mut c = chain(&name);
    let nodeport = match entry {
        DnatEntry::ClusterIp | DnatEntry::ClusterIpLocal => false,
        DnatEntry::External { nodeport }
        | DnatEntry::ExternalFromNode { nodeport }
        | DnatEntry::ExternalLocal { nodeport } => nodeport,
    };
    match entry {
        DnatEntry::ClusterIp | DnatEntry::ClusterIpLocal => {
            c.rules.extend(cluster_ip_masquerade(ctx, None));
        }
        DnatEntry::External { .. } => c.rules.push(Rule::new(vec![jump(MARK_FOR_MASQUERADE)])),
        DnatEntry::ExternalFromNode { .. } => {
            let mut stmts = Vec::new();
            if let Some(detector) = ctx.local {
                stmts.push(from_local_pod(detector, false));
            }
            stmts.push(fib_saddr_local());
            stmts.push(jump(MARK_FOR_MASQUERADE));
            c.rules
                .push(Rule::new(stmts).with_comment("masquerade local traffic"));
        }
        DnatEntry::ExternalLocal { .. } => {}
    }
    let mut key = if nodeport {
        vec![Expr::L4Proto, Expr::Dport]
    } else {
        vec![Expr::Daddr(family), Expr::L4Proto, Expr::Dport]
    };
    key.push(selector(scheduler, family, k, 0));
    c.rules.push(Rule::new(vec![Stmt::Dnat(NatTarget::Map {
        family,
        key: Expr::Concat(key),
        map: name.clone(),
    })]));
    insert_chain(table, c);
    let mut map_key = if nodeport {
        vec![DataType::InetProto, DataType::InetService]
    } else {
        vec![
            family.addr_type(),
            DataType::InetProto,
            DataType::InetService,
        ]
    };
    map_key.push(DataType::Integer);
    let mut map = Set::new(
        name.clone(),
        map_key,
        vec![family.addr_type(), DataType::InetService],
    );
    map.comment = Some(if nodeport {
        "NodePort proto . port . slot : endpoint . port".to_string()
    } else {
        "service IP . proto . port . slot : endpoint . port".to_string()
    });
    table.sets.insert(name.clone(), map);
    name
}

fn backends(list: &[Backend], family: Family) -> Vec<Backend> {
    list.iter()
        .copied()
        .filter(|b| in_family(b.addr, family))
        .collect()
}

/// The masquerade rule of the chain ClusterIP traffic enters. A per-port chain guards it with
/// `daddr == ClusterIP` (`guard`) because the same chain also serves external entries, which
/// decide masquerade themselves; a shared `clusterip-…` chain serves ClusterIPs only.
fn cluster_ip_masquerade(ctx: &FamilyCtx<'_>, guard: Option<IpAddr>) -> Option<Rule> {
    let guard = guard.map(match_daddr);
    if ctx.masquerade_all {
        return Some(Rule::new(
            guard
                .into_iter()
                .chain([jump(MARK_FOR_MASQUERADE)])
                .collect(),
        ));
    }
    // Without a local-pod detector kube-proxy masquerades no ClusterIP traffic; so do we.
    let detector = ctx.local?;
    let comment = match detector {
        LocalDetector::ClusterCidr(_) => "masquerade traffic from outside the cluster network",
        LocalDetector::NodeCidr(_) => "masquerade traffic from outside this node's pod network",
        LocalDetector::Interface(_) | LocalDetector::InterfacePrefix(_) => {
            "masquerade traffic not from a pod interface"
        }
    };
    Some(
        Rule::new(
            guard
                .into_iter()
                .chain([from_local_pod(detector, false), jump(MARK_FOR_MASQUERADE)])
                .collect(),
        )
        .with_comment(comment),
    )
}

/// Rules of `external-…`.
fn external_rules(
    ctx: &FamilyCtx<'_>,
    svc: &Service,
    service_chain: &str,
    local_chain: &str,
    has_local: bool,
) -> Vec<Rule> {
    if !svc.external_local {
        // eTP=Cluster: the client address is lost anyway (the endpoint may be on another node),
        // so masquerade to keep the return path through this node.
        return vec![
            Rule::new(vec![jump(MARK_FOR_MASQUERADE)]),
            Rule::new(vec![goto(service_chain)]),
        ];
    }
    let mut rules = Vec::new();
    if let Some(detector) = ctx.local {
        rules.push(
            Rule::new(vec![from_local_pod(detector, true), goto(service_chain)])
                .with_comment("short-circuit pod traffic"),
        );
    }
    rules.push(
        Rule::new(vec![fib_saddr_local(), jump(MARK_FOR_MASQUERADE)])
            .with_comment("masquerade local traffic"),
    );
    rules.push(
        Rule::new(vec![fib_saddr_local(), goto(service_chain)])
            .with_comment("short-circuit local traffic"),
    );
    if has_local {
        rules.push(Rule::new(vec![goto(local_chain)]));
    }
    rules
}

/// Appends the endpoint selection for `list` (non-empty) to `rules`.
///
/// Without affinity and with K ≤ [`CASCADE_MAX`] endpoints, rule j (0-based, j < K-1) is
/// `numgen random mod (K-j) 0 … dnat to e_j` and the last rule DNATs unconditionally: rule j is
/// reached with probability (K-j)/K and matches with 1/(K-j), so every endpoint gets exactly 1/K.
/// DNAT is terminal, so the first match wins. `numgen inc` in the same cascade gives strict
/// round robin (each rule's counter advances only when the rule is evaluated), and `jhash ip
/// saddr` with a different seed per rule gives a stable per-client choice (one seed for all rules
/// would nest the hash thresholds and skew the split).
///
/// With ClientIP affinity the chain first DNATs a client its affinity map knows
/// (`dnat to ip saddr map @affinity-… : port`), and each cascade rule records its choice
/// (`update @affinity-… { ip saddr : e }`): keyed on the client address, per service port,
/// across all the port's addresses, as kube-proxy; the node-local list (`local`) has a map of its
/// own, so an eTP=Local client is never sent to a remote endpoint remembered from the Cluster list.
#[allow(clippy::too_many_arguments)]
fn add_balancing(
    rules: &mut Vec<Rule>,
    table: &mut Table,
    ctx: &FamilyCtx<'_>,
    svc: &Service,
    id: &ServicePortId<'_>,
    port: &ServicePort,
    list: &[Backend],
    local: bool,
) {
    let family = ctx.family;
    let dnat = |b: &Backend| {
        Stmt::Dnat(NatTarget::Addr {
            proto: port.proto,
            addr: b.addr,
            port: b.port,
        })
    };
    // ClientIP affinity: one map per endpoint list and target port, client address → endpoint
    // address. A client the map knows is DNATed straight to its endpoint; the others take the
    // cascade, whose every rule records the choice. The kernel keeps an existing element's
    // data, so an entry for an endpoint that left the list would keep sending its client there
    // until it times out: the conntrack reconciler deletes such entries after each change
    // (`conntrack::Destinations::affinity`).
    let affinity: Vec<Option<String>> = list
        .iter()
        .map(|b| {
            svc.affinity_timeout.map(|timeout| {
                let name = names::affinity_map(id, local, b.port);
                table.sets.entry(name.clone()).or_insert_with(|| {
                    rules.push(Rule::new(vec![Stmt::Dnat(NatTarget::AddrMap {
                        proto: port.proto,
                        key: Expr::Saddr(family),
                        map: name.clone(),
                        port: b.port,
                    })]));
                    Set {
                        name: name.clone(),
                        key: vec![family.addr_type()],
                        data: vec![family.addr_type()],
                        // `dynamic` is set explicitly: some kernels add it to sets updated from
                        // the packet path and a later identical `add set` then fails (kube-proxy
                        // note).
                        flags: SetFlags {
                            interval: false,
                            dynamic: true,
                            timeout: true,
                        },
                        timeout: Some(timeout),
                        // None: the kernel's default for a set an `update` fills (65535, see
                        // the read-back). A declared size is also the hash table's initial
                        // size: 65535 made every affinity map allocate 512 KiB of buckets.
                        size: None,
                        counter: false,
                        comment: None,
                        elements: Vec::new(),
                    }
                });
                name
            })
        })
        .collect();
    let update = |map: &Option<String>, b: &Backend| {
        map.as_ref().map(|map| Stmt::Update {
            set: map.clone(),
            key: Expr::Saddr(family),
            data: Some(Value::Addr(b.addr)),
        })
    };

    let k = list.len();
    if k > CASCADE_MAX && svc.affinity_timeout.is_none() {
        rules.push(Rule::new(vec![Stmt::Dnat(NatTarget::NumgenMap {
            proto: port.proto,
            index: selector(svc.scheduler, family, k, 0),
            targets: list.iter().map(|b| (b.addr, b.port)).collect(),
        })]));
        return;
    }
    for (j, (b, map)) in list.iter().zip(&affinity).enumerate() {
        let mut stmts = Vec::new();
        if j + 1 < k {
            stmts.push(Stmt::Match {
                left: selector(svc.scheduler, family, k - j, j as u32),
                op: crate::ir::CmpOp::Eq,
                right: Value::Int(0),
            });
        }
        stmts.extend(update(map, b));
        stmts.push(dnat(b));
        rules.push(Rule::new(stmts));
    }
}

/// The expression that picks among `modulus` choices; `step` seeds source hashing.
fn selector(scheduler: Scheduler, family: Family, modulus: usize, step: u32) -> Expr {
    let modulus = u32::try_from(modulus).expect("endpoint count fits in u32");
    match scheduler {
        Scheduler::Random => Expr::Numgen {
            mode: NumgenMode::Random,
            modulus,
        },
        Scheduler::RoundRobin => Expr::Numgen {
            mode: NumgenMode::Inc,
            modulus,
        },
        // Maglev reaches a per-port cascade only with ClientIP affinity (which keeps chains of
        // its own); there it hashes like source-hash.
        Scheduler::SourceHash | Scheduler::Maglev => Expr::JhashSaddr {
            family,
            modulus,
            seed: step,
        },
    }
}

/// `loadBalancerSourceRanges` for this port's LoadBalancer IPs: the IPs go into `firewall-ips`
/// and each allowed (IP, port, source prefix) into `firewall-allow` (of the frontend's shard); `firewall-check` drops new
/// connections to a listed IP whose source is not allowed, before DNAT.
fn add_firewall(
    table: &mut Table,
    ctx: &FamilyCtx<'_>,
    svc: &Service,
    port: &ServicePort,
    label: &str,
) {
    let family = ctx.family;
    let ranges: Vec<_> = svc
        .source_ranges
        .iter()
        .copied()
        .filter(|n| Family::of_net(n) == family)
        .collect();
    // Overlapping intervals are refused by the kernel; merge them.
    let ranges = ipnet::IpNet::aggregate(&ranges);
    if ranges.is_empty() {
        return;
    }
    // When the node itself is an allowed source, a connection from the node to a VIP that is
    // also a local address gets the VIP as its source: allow the VIP too (kube-proxy does).
    let node_allowed = ctx
        .node_ip
        .is_some_and(|ip| ranges.iter().any(|r| r.contains(&ip)));
    for vip in svc
        .lb_ips
        .iter()
        .copied()
        .filter(|ip| in_family(*ip, family))
    {
        let shard = firewall_shard(vip, port.proto, port.port, ctx.dispatch_tables);
        let (ips, allow) = firewall_sets(ctx.dispatch_tables, shard);
        let head = vec![
            Value::Addr(vip),
            Value::Proto(port.proto),
            Value::Port(port.port),
        ];
        add_element(table, &ips, head.clone(), None, Some(label.to_string()));
        let mut allowed: Vec<Value> = ranges.iter().map(|r| Value::net(*r)).collect();
        // A VIP already inside an allowed range needs no element of its own (and the kernel
        // would refuse the overlapping interval).
        if node_allowed && !ranges.iter().any(|r| r.contains(&vip)) {
            allowed.push(Value::Addr(vip));
        }
        for source in allowed {
            let mut key = head.clone();
            key.push(source);
            add_element(table, &allow, key, None, None);
        }
    }
}
