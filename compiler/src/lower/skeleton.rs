//! The fixed part of each table: base chains on the netfilter hooks, the dispatch and check
//! chains, and the global sets and maps that every Service adds elements to. The skeleton is the
//! same for every cluster (only the masquerade mark and the ServiceCIDR drop rules vary), so the
//! runtime can create it once and afterwards change only elements and the shared and per-port chains.
//!
//! Hook placement follows kube-proxy's documented contract so other components can order
//! themselves around us: DNAT in `type nat` at `dstnat` (-100) on prerouting/output, masquerade
//! in `type nat` at `srcnat` (100) on postrouting, the source-range firewall in `type filter` at
//! `dstnat - 10` (before DNAT, so it sees the LoadBalancer IP), and the no-endpoint / invalid-port
//! checks in `type filter` at `filter` (0) on input/forward/output (after DNAT, and `reject` was
//! only allowed in those hooks before kernel 5.9). Beyond kube-proxy's contract, chains that only
//! count (`nat-input`, `filter-postrouting`, `backend-stats`, and a rule at the head of
//! `nat-postrouting` and the end of `filter-input`) fill the per-backend counter sets.

use std::net::IpAddr;

use crate::ir::{
    names, priority, BaseChain, ChainKind, CtDir, DataType, Expr, Family, Hook, L4Proto, Rule,
    SetFlags, Stmt, Table, Value,
};

use super::build::{
    addr_proto_port, base_chain, chain, ct_state_new, from_local_pod, goto, insert_chain, jump,
    lookup, match_eq, match_ne, proto_port, set_decl, vmap,
};
use super::FamilyCtx;

/// Active ClusterIPs: traffic to them that no service port claimed is rejected.
pub(crate) const CLUSTER_IPS: &str = "cluster-ips";
/// Local addresses (prefixes) that serve NodePorts.
pub(crate) const NODEPORT_IPS: &str = "nodeport-ips";
/// `addr . proto . port : goto <chain>` for ClusterIPs, externalIPs and LoadBalancer IPs.
pub(crate) const SERVICE_IPS: &str = "service-ips";
/// `proto . port : goto external-…` for NodePorts.
pub(crate) const SERVICE_NODEPORTS: &str = "service-nodeports";
/// `addr . proto . port : drop | goto reject-chain` for service IPs without usable endpoints.
pub(crate) const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// `proto . port : drop | goto reject-chain` for NodePorts without usable endpoints.
pub(crate) const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// `lbip . proto . port` of LoadBalancer IPs that have source ranges.
pub(crate) const FIREWALL_IPS: &str = "firewall-ips";
/// `lbip . proto . port . source-prefix` that are allowed through the firewall.
pub(crate) const FIREWALL_ALLOW: &str = "firewall-allow";
/// `addr . proto . port : goto external-local-…` | `return`: eTP=Local externalIPs and
/// LoadBalancer IPs, for sources outside this node (looked up before `service-ips`).
pub(crate) const EXTERNAL_LOCAL_IPS: &str = "external-local-ips";
/// `proto . port : goto nodeport-local-…` | `return`: the same for NodePorts.
pub(crate) const EXTERNAL_LOCAL_NODEPORTS: &str = "external-local-nodeports";
/// `endpoint . endpoint`: an endpoint reaching itself through a Service (hairpin).
pub(crate) const HAIRPIN: &str = "hairpin";

pub(crate) const REJECT_CHAIN: &str = "reject-chain";
pub(crate) const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const SERVICES: &str = "services";
/// With several dispatch tables, the NodePort half of `services`, one nat priority later.
const NODEPORTS: &str = "nodeports";
const MASQUERADING: &str = "masquerading";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const FIREWALL_CHECK: &str = "firewall-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const BACKEND_STATS: &str = "backend-stats";

/// The firewall's two sets for `shard` of `n` ([`firewall_shard`]): `firewall-ips` and
/// `firewall-allow` with one, `firewall-ips-<shard>` and `firewall-allow-<shard>` with more.
pub(crate) fn firewall_sets(n: u16, shard: u16) -> (String, String) {
    if n <= 1 {
        (FIREWALL_IPS.to_owned(), FIREWALL_ALLOW.to_owned())
    } else {
        (
            format!("{FIREWALL_IPS}-{shard}"),
            format!("{FIREWALL_ALLOW}-{shard}"),
        )
    }
}

/// The firewall shard of a LoadBalancer frontend among `n` (`--dispatch-tables`): FNV-1a of
/// its address, protocol and port. `firewall-allow` is a concatenation with an interval, which
/// the kernel keeps in a pipapo set, and removing one element from a pipapo set walks all of
/// its rules (`nft_pipapo_remove`): measured 5–7 µs per element, 28 ms per commit at 50k
/// Services (3,572 elements), 114 ms at 16k elements. Adding one stays under a millisecond. So
/// a large cluster gets one pair of sets per dispatch table, each about 1/n of the elements.
/// By frontend, not by Service: two Services claiming one address and port then share a shard,
/// and their ranges a set, as with one.
pub(crate) fn firewall_shard(vip: IpAddr, proto: L4Proto, port: u16, n: u16) -> u16 {
    let tail = [proto.number()].into_iter().chain(port.to_be_bytes());
    match vip {
        IpAddr::V4(a) => super::shard_of(a.octets().into_iter().chain(tail), n),
        IpAddr::V6(a) => super::shard_of(a.octets().into_iter().chain(tail), n),
    }
}

/// Adds the base chains, fixed chains and (empty) global sets to `table`.
pub(crate) fn add(table: &mut Table, ctx: &FamilyCtx<'_>) {
    let family = ctx.family;
    add_sets(table, family, ctx.dispatch_tables);
    add_dispatch(table, ctx);

    let base = |kind, hook, priority| BaseChain {
        kind,
        hook,
        priority,
    };
    let pre_dnat = priority::DSTNAT - 10;
    let base_chains = [
        (
            "filter-prerouting-pre-dnat",
            base(ChainKind::Filter, Hook::Prerouting, pre_dnat),
            vec![FIREWALL_CHECK],
        ),
        (
            "filter-output-pre-dnat",
            base(ChainKind::Filter, Hook::Output, pre_dnat),
            vec![FIREWALL_CHECK],
        ),
        (
            "filter-input",
            base(ChainKind::Filter, Hook::Input, priority::FILTER),
            vec![NODEPORT_ENDPOINTS_CHECK, SERVICE_ENDPOINTS_CHECK],
        ),
        (
            "filter-forward",
            base(ChainKind::Filter, Hook::Forward, priority::FILTER),
            vec![SERVICE_ENDPOINTS_CHECK, CLUSTER_IPS_CHECK],
        ),
        (
            "filter-output",
            base(ChainKind::Filter, Hook::Output, priority::FILTER),
            vec![SERVICE_ENDPOINTS_CHECK, CLUSTER_IPS_CHECK],
        ),
    ];
    for (name, hook, targets) in base_chains {
        let mut c = base_chain(name, hook);
        // Only the first packet of a connection needs checking; later packets follow conntrack.
        c.rules = targets
            .into_iter()
            .map(|t| Rule::new(vec![ct_state_new(), jump(t)]))
            .collect();
        insert_chain(table, c);
    }
    let mut c = base_chain(
        "nat-postrouting",
        base(ChainKind::Nat, Hook::Postrouting, priority::SRCNAT),
    );
    c.rules.push(count_connection(family));
    c.rules.push(Rule::new(vec![jump(MASQUERADING)]));
    insert_chain(table, c);
    // The source-NAT hooks run their nat chains once per connection, on its first packet, and
    // after DNAT (the packet already goes to the backend): postrouting for everything that
    // leaves, input for what is delivered here (a backend on the host network). Counting there
    // counts each connection exactly once; `ct state new` in a filter chain would also count
    // retransmitted SYNs and unanswered UDP.
    let mut c = base_chain(
        "nat-input",
        base(ChainKind::Nat, Hook::Input, priority::SRCNAT),
    );
    c.rules.push(count_connection(family));
    insert_chain(table, c);

    // Packets and bytes of DNATed connections, both ways, counted once per packet on this
    // node: everything that leaves passes postrouting, everything delivered here passes input
    // (except what this host sent itself over `lo`, counted on its way out). Both run before
    // the source-NAT hooks (100), where a reply still comes from the backend.
    let mut c = base_chain(
        "filter-postrouting",
        base(ChainKind::Filter, Hook::Postrouting, priority::FILTER),
    );
    c.rules.push(Rule::new(vec![
        match_eq(Expr::CtStatus, Value::CtDnat),
        jump(BACKEND_STATS),
    ]));
    insert_chain(table, c);
    table
        .chains
        .get_mut("filter-input")
        .expect("added above")
        .rules
        .push(Rule::new(vec![
            match_ne(Expr::Iifname, Value::Iface("lo".to_string())),
            match_eq(Expr::CtStatus, Value::CtDnat),
            jump(BACKEND_STATS),
        ]));
    let mut stats = chain(BACKEND_STATS);
    stats.rules = [
        (CtDir::Original, Expr::Daddr(family), Expr::Dport),
        (CtDir::Reply, Expr::Saddr(family), Expr::Sport),
    ]
    .into_iter()
    .map(|(dir, backend, port)| {
        Rule::new(vec![
            match_eq(Expr::CtDirection, Value::CtDir(dir)),
            Stmt::Update {
                set: names::BACKEND_TRAFFIC.to_string(),
                key: Expr::Concat(vec![
                    Expr::CtOriginalDaddr(family),
                    backend,
                    Expr::L4Proto,
                    port,
                ]),
                data: None,
            },
        ])
    })
    .collect();
    insert_chain(table, stats);

    let mut check = chain(SERVICE_ENDPOINTS_CHECK);
    check.rules = vec![Rule::new(vec![vmap(
        addr_proto_port(family),
        NO_ENDPOINT_SERVICES,
    )])];
    insert_chain(table, check);

    // Runs in the input hook only, where the destination is already known to be local.
    let mut check = chain(NODEPORT_ENDPOINTS_CHECK);
    check.rules = vec![Rule::new({
        let mut stmts = nodeport_dst(family, false);
        stmts.push(vmap(proto_port(), NO_ENDPOINT_NODEPORTS));
        stmts
    })];
    insert_chain(table, check);

    let mut firewall = chain(FIREWALL_CHECK);
    // One rule per shard: a frontend is in one shard's `firewall-ips`, so at most one rule's
    // second lookup runs.
    for shard in 0..ctx.dispatch_tables {
        let (ips, allow) = firewall_sets(ctx.dispatch_tables, shard);
        firewall.rules.push(
            Rule::new(vec![
                lookup(addr_proto_port(family), &ips),
                Stmt::Lookup {
                    left: Expr::Concat(vec![
                        Expr::Daddr(family),
                        Expr::L4Proto,
                        Expr::Dport,
                        Expr::Saddr(family),
                    ]),
                    set: allow,
                    negate: true,
                },
                Stmt::Verdict(crate::ir::Verdict::Drop),
            ])
            .with_comment("source not in loadBalancerSourceRanges"),
        );
    }
    insert_chain(table, firewall);

    let mut cluster_ips_check = chain(CLUSTER_IPS_CHECK);
    cluster_ips_check.rules.push(
        Rule::new(vec![
            lookup(Expr::Daddr(family), CLUSTER_IPS),
            goto(REJECT_CHAIN),
        ])
        .with_comment("reject traffic to invalid ports of ClusterIPs"),
    );
    for cidr in ctx
        .graph
        .service_cidrs
        .iter()
        .filter(|n| Family::of_net(n) == family)
    {
        cluster_ips_check.rules.push(
            Rule::new(vec![
                match_eq(Expr::Daddr(family), Value::net(*cidr)),
                Stmt::Verdict(crate::ir::Verdict::Drop),
            ])
            .with_comment("drop traffic to unallocated ClusterIPs"),
        );
    }
    insert_chain(table, cluster_ips_check);

    // `reject` cannot be a verdict-map value, so the no-endpoint maps `goto` this chain.
    let mut reject = chain(REJECT_CHAIN);
    reject.rules = vec![Rule::new(vec![Stmt::Reject])];
    insert_chain(table, reject);

    let mut masq = chain(MASQUERADING);
    masq.rules = vec![
        // Hairpin: after DNAT the packet goes from an endpoint to the same endpoint; without
        // SNAT the reply would short-cut inside the pod and never be un-NATed.
        Rule::new(vec![
            match_eq(Expr::CtStatus, Value::CtDnat),
            lookup(
                Expr::Concat(vec![Expr::Saddr(family), Expr::Daddr(family)]),
                HAIRPIN,
            ),
            jump(MARK_FOR_MASQUERADE),
        ])
        .with_comment("hairpin"),
        Rule::new(vec![
            match_eq(Expr::MarkAnd(ctx.mark), Value::Int(0)),
            Stmt::Verdict(crate::ir::Verdict::Return),
        ]),
        // Clear the bit so the mark does not leak to whatever sees the packet next.
        Rule::new(vec![Stmt::MarkXor(ctx.mark)]),
        Rule::new(vec![Stmt::Masquerade { fully_random: true }]),
    ];
    insert_chain(table, masq);
}

/// The NodePort match: a local destination address inside `nodeport-ips`, never loopback
/// (localhost NodePorts would need route_localnet, which kube-proxy's nftables mode also
/// refuses). `fib daddr type local` keeps the set of prefixes honest: only addresses this node
/// really owns match, whatever the CIDRs given.
fn nodeport_dst(family: Family, with_fib: bool) -> Vec<Stmt> {
    let mut stmts = Vec::new();
    if with_fib {
        stmts.push(match_eq(
            Expr::FibType(crate::ir::FibAddr::Daddr),
            Value::FibLocal,
        ));
    }
    stmts.push(match_ne(Expr::Daddr(family), Value::net(family.loopback())));
    stmts.push(lookup(Expr::Daddr(family), NODEPORT_IPS));
    stmts
}

/// Adds the Service dispatch part of a table: the dispatch maps and `nodeport-ips`, the nat
/// base chains on prerouting and output, `services` and `mark-for-masquerade`. The main table
/// has it (with its other parts, [`add`]), and so does each further dispatch table
/// ([`add_dispatch_table`]).
fn add_dispatch(table: &mut Table, ctx: &FamilyCtx<'_>) {
    let family = ctx.family;
    add_dispatch_sets(table, family);
    let base = |kind, hook, priority| BaseChain {
        kind,
        hook,
        priority,
    };
    for (name, hook) in [
        ("nat-prerouting", Hook::Prerouting),
        ("nat-output", Hook::Output),
    ] {
        let mut c = base_chain(name, base(ChainKind::Nat, hook, priority::DSTNAT));
        c.rules.push(Rule::new(vec![jump(SERVICES)]));
        insert_chain(table, c);
    }

    // The NodePort match: a local destination address inside `nodeport-ips`, never loopback
    // (localhost NodePorts would need route_localnet, which kube-proxy's nftables mode also
    // refuses). `fib daddr type local` keeps the set of prefixes honest: only addresses this
    // node really owns match, whatever the CIDRs given.

    // eTP=Local frontends first send clients from elsewhere (neither a pod of this node nor the
    // node itself) to the local endpoints, keeping their address; whatever is left of eTP=Local
    // traffic, and all other traffic, is dispatched by `service-ips` / `service-nodeports`.
    let from_elsewhere = || {
        let mut stmts = Vec::new();
        if let Some(detector) = ctx.local {
            stmts.push(from_local_pod(detector, false));
        }
        stmts.push(match_ne(
            Expr::FibType(crate::ir::FibAddr::Saddr),
            Value::FibLocal,
        ));
        stmts
    };
    // With several dispatch tables, a new connection passes every table's `services` and
    // `nodeports`, and all but one hold nothing for it: there, each rule first tests the key
    // against its own map (a hash miss) instead of paying the `fib` checks before it.
    let several = ctx.dispatch_tables > 1;
    let keyed = |key: Expr, map: &str| several.then(|| lookup(key, map));
    let mut services = chain(SERVICES);
    services.rules = vec![
        Rule::new({
            let mut stmts: Vec<Stmt> = keyed(addr_proto_port(family), EXTERNAL_LOCAL_IPS)
                .into_iter()
                .collect();
            stmts.extend(from_elsewhere());
            stmts.push(vmap(addr_proto_port(family), EXTERNAL_LOCAL_IPS));
            stmts
        }),
        Rule::new(vec![vmap(addr_proto_port(family), SERVICE_IPS)]),
    ];
    let nodeport_rules = vec![
        Rule::new({
            let mut stmts: Vec<Stmt> = keyed(proto_port(), EXTERNAL_LOCAL_NODEPORTS)
                .into_iter()
                .collect();
            stmts.extend(from_elsewhere());
            stmts.extend(nodeport_dst(family, true));
            stmts.push(vmap(proto_port(), EXTERNAL_LOCAL_NODEPORTS));
            stmts
        }),
        Rule::new({
            let mut stmts: Vec<Stmt> = keyed(proto_port(), SERVICE_NODEPORTS).into_iter().collect();
            stmts.extend(nodeport_dst(family, true));
            stmts.push(vmap(proto_port(), SERVICE_NODEPORTS));
            stmts
        }),
    ];
    if ctx.dispatch_tables == 1 {
        services.rules.extend(nodeport_rules);
    } else {
        // Several dispatch tables: every table's address dispatch must run before any table's
        // NodePort dispatch, as rules 1-2 run before rules 3-4 in one table (an externalIP that
        // is a node address wins over another Service's NodePort). nf_nat asks a hook's nat
        // chains in priority order until one sets up a mapping, so the NodePorts go in chains
        // one priority later.
        let mut nodeports = chain(NODEPORTS);
        nodeports.rules = nodeport_rules;
        insert_chain(table, nodeports);
        for (name, hook) in [
            ("nat-prerouting-nodeports", Hook::Prerouting),
            ("nat-output-nodeports", Hook::Output),
        ] {
            let mut c = base_chain(name, base(ChainKind::Nat, hook, priority::DSTNAT + 1));
            c.rules.push(Rule::new(vec![jump(NODEPORTS)]));
            insert_chain(table, c);
        }
    }
    insert_chain(table, services);

    let mut mark = chain(MARK_FOR_MASQUERADE);
    mark.rules = vec![Rule::new(vec![Stmt::MarkOr(ctx.mark)])];
    insert_chain(table, mark);

    // NodePort addresses exactly as `normalize` resolved them: a zero-length prefix where the
    // family serves every local address, nothing where it serves none (the lookup then never
    // matches, and NodePorts of this family are not ours to handle).
    let nodeport_nets: Vec<_> = ctx
        .graph
        .nodeport_addresses
        .iter()
        .filter(|n| Family::of_net(n) == family)
        .copied()
        .collect();
    // Interval sets refuse overlapping prefixes, so merge them first.
    for net in ipnet::IpNet::aggregate(&nodeport_nets) {
        let key = Value::net(net);
        super::build::add_element(table, NODEPORT_IPS, vec![key], None, None);
    }
}

/// Adds to `table` (dispatch table `i` > 0, `--dispatch-tables`) what it holds before any
/// Service: the dispatch part of the skeleton only.
pub(crate) fn add_dispatch_table(table: &mut Table, ctx: &FamilyCtx<'_>) {
    add_dispatch(table, ctx);
}

/// `ct status dnat update @backend-connections { frontend . backend . proto . port }`, for a
/// source-NAT hook (the packet is already DNATed).
fn count_connection(family: Family) -> Rule {
    Rule::new(vec![
        match_eq(Expr::CtStatus, Value::CtDnat),
        Stmt::Update {
            set: names::BACKEND_CONNECTIONS.to_string(),
            key: Expr::Concat(vec![
                Expr::CtOriginalDaddr(family),
                Expr::Daddr(family),
                Expr::L4Proto,
                Expr::Dport,
            ]),
            data: None,
        },
    ])
}

/// The dispatch maps and `nodeport-ips`, in every table that dispatches Services.
fn add_dispatch_sets(table: &mut Table, family: Family) {
    let addr = family.addr_type();
    let app = vec![addr, DataType::InetProto, DataType::InetService];
    let pp = vec![DataType::InetProto, DataType::InetService];
    let verdict = vec![DataType::Verdict];
    let mut nodeport_ips = set_decl(
        NODEPORT_IPS,
        vec![addr],
        vec![],
        "local addresses that serve NodePorts",
    );
    nodeport_ips.flags = SetFlags {
        interval: true,
        ..SetFlags::default()
    };
    let sets = [
        set_decl(
            SERVICE_IPS,
            app.clone(),
            verdict.clone(),
            "ClusterIP, externalIP and LoadBalancer IP traffic",
        ),
        set_decl(
            SERVICE_NODEPORTS,
            pp.clone(),
            verdict.clone(),
            "NodePort traffic",
        ),
        set_decl(
            EXTERNAL_LOCAL_IPS,
            app,
            verdict.clone(),
            "externalTrafficPolicy Local IPs, for clients not on this node",
        ),
        set_decl(
            EXTERNAL_LOCAL_NODEPORTS,
            pp,
            verdict,
            "externalTrafficPolicy Local NodePorts, for clients not on this node",
        ),
        nodeport_ips,
    ];
    for set in sets {
        table.sets.insert(set.name.clone(), set);
    }
}

fn add_sets(table: &mut Table, family: Family, shards: u16) {
    let addr = family.addr_type();
    let app = vec![addr, DataType::InetProto, DataType::InetService];
    let pp = vec![DataType::InetProto, DataType::InetService];
    let verdict = vec![DataType::Verdict];
    let interval = SetFlags {
        interval: true,
        ..SetFlags::default()
    };
    let mut sets = vec![
        set_decl(CLUSTER_IPS, vec![addr], vec![], "active ClusterIPs"),
        set_decl(
            NO_ENDPOINT_SERVICES,
            app.clone(),
            verdict.clone(),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        set_decl(
            NO_ENDPOINT_NODEPORTS,
            pp.clone(),
            verdict.clone(),
            "vmap to drop or reject packets to NodePorts with no endpoints",
        ),
        set_decl(HAIRPIN, vec![addr, addr], vec![], "endpoint . endpoint"),
    ];
    let mut allow_key = app.clone();
    allow_key.push(addr);
    for shard in 0..shards {
        let (ips, allow_name) = firewall_sets(shards, shard);
        sets.push(set_decl(
            &ips,
            app.clone(),
            vec![],
            "LoadBalancer IP ports with loadBalancerSourceRanges",
        ));
        let mut allow = set_decl(
            &allow_name,
            allow_key.clone(),
            vec![],
            "LoadBalancer IP . proto . port . allowed source range",
        );
        allow.flags = interval;
        sets.push(allow);
    }
    // Per-backend counters, filled by the packet path (`kube-nft show`, per-Service metrics).
    // Dynamic: a commit never carries their elements, so they cost nothing to program. An
    // element lives as long as it sees traffic and [`names::BACKEND_COUNTER_TIMEOUT`] after, so
    // pairs whose backend left (and the odd ICMP error, keyed by its checksum) go away by
    // themselves. No size: the kernel gives a set an `update` fills at most 65535 elements
    // (past that, new pairs go uncounted and their packets pass); a declared size would also
    // preallocate that many hash buckets.
    for (name, comment) in [
        (
            names::BACKEND_CONNECTIONS,
            "frontend . backend . proto . port: new connections",
        ),
        (
            names::BACKEND_TRAFFIC,
            "frontend . backend . proto . port: packets and bytes, both ways",
        ),
    ] {
        let mut set = set_decl(
            name,
            vec![addr, addr, DataType::InetProto, DataType::InetService],
            vec![],
            comment,
        );
        set.flags = SetFlags {
            interval: false,
            dynamic: true,
            timeout: true,
        };
        set.timeout = Some(names::BACKEND_COUNTER_TIMEOUT);
        set.counter = true;
        sets.push(set);
    }
    for set in sets {
        table.sets.insert(set.name.clone(), set);
    }
}

/// Sorts every set's elements and removes duplicates (the same key added by two services, e.g.
/// a hairpin pair for an endpoint shared by two Services). Keeps the first element for a key.
/// Then returns the spare capacity the vectors grew by doubling (up to half of a large set's
/// allocation; a reallocation of a large block is a remap, not a copy).
pub(crate) fn finish(table: &mut Table) {
    for set in table.sets.values_mut() {
        set.elements.sort_by(|a, b| a.key.cmp(&b.key));
        set.elements.dedup_by(|a, b| a.key == b.key);
        set.elements.shrink_to_fit();
    }
}
