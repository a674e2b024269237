//! A table with every statement, expression, set and element form the IR has, including the ones
//! no golden case uses yet (numgen-map DNAT, `meta mark` equality, unaligned prefixes, data
//! maps): for the kernel tests, the read-back tests and the decoder's unit tests.

use kube_nft_compiler::ir::{self, Family, Rule, Stmt, Verdict};

/// The table, for `family`.
pub fn every_form(family: Family) -> ir::Table {
    use std::collections::BTreeMap;

    use ir::{
        BaseChain, Chain, ChainKind, CmpOp, CtDir, DataType, ElemData, Element, Expr, FibAddr,
        Hook, L4Proto, NatTarget, NumgenMode, Set, SetFlags, Value,
    };

    let v4 = family == Family::Ip;
    let addr = |a: &str, b: &str| -> std::net::IpAddr { (if v4 { a } else { b }).parse().unwrap() };
    let net = |a: &str, b: &str| -> ipnet::IpNet { (if v4 { a } else { b }).parse().unwrap() };
    let m = |left, op, right| Stmt::Match { left, op, right };
    let key = Expr::Concat(vec![Expr::Daddr(family), Expr::L4Proto, Expr::Dport]);
    let base = |kind, hook, priority| {
        Some(BaseChain {
            kind,
            hook,
            priority,
        })
    };
    let chain = |name: &str, base, rules: Vec<Rule>| {
        (
            name.to_owned(),
            Chain {
                name: name.to_owned(),
                base,
                comment: Some(format!("chain {name}")),
                rules,
            },
        )
    };
    let jump = |c: &str| Stmt::Verdict(Verdict::Jump(c.into()));
    let chains = BTreeMap::from([
        chain(
            "nat-prerouting",
            base(ChainKind::Nat, Hook::Prerouting, -100),
            vec![
                Rule::new(vec![
                    m(
                        Expr::Saddr(family),
                        CmpOp::Eq,
                        Value::Prefix(net("10.16.0.0/12", "fd00:10::/60")),
                    ),
                    jump("to-endpoints"),
                ]),
                Rule::new(vec![
                    m(
                        Expr::Saddr(family),
                        CmpOp::Ne,
                        Value::Prefix(net("0.0.0.0/0", "::/0")),
                    ),
                    jump("to-endpoints"),
                ]),
                Rule::new(vec![
                    m(
                        Expr::Daddr(family),
                        CmpOp::Eq,
                        Value::Prefix(net("10.0.0.0/31", "fd00::/127")),
                    ),
                    m(
                        Expr::Daddr(family),
                        CmpOp::Ne,
                        Value::Addr(addr("10.0.0.2", "fd00::2")),
                    ),
                    jump("to-endpoints"),
                ])
                .with_comment("prefix forms"),
                Rule::new(vec![
                    m(Expr::Iifname, CmpOp::Eq, Value::Iface("cni0".into())),
                    m(
                        Expr::Iifname,
                        CmpOp::Ne,
                        Value::Iface("abcdefghijklmno".into()),
                    ),
                    m(Expr::Iifname, CmpOp::Eq, Value::IfacePrefix("veth".into())),
                    m(
                        Expr::Iifname,
                        CmpOp::Ne,
                        Value::IfacePrefix("abcdefghijklmn".into()),
                    ),
                    jump("to-endpoints"),
                ])
                .with_comment("interface names"),
                Rule::new(vec![Stmt::Vmap {
                    left: key.clone(),
                    map: "services".into(),
                }]),
            ],
        ),
        chain(
            "to-endpoints",
            None,
            vec![
                Rule::new(vec![Stmt::Dnat(NatTarget::NumgenMap {
                    proto: L4Proto::Udp,
                    index: Expr::Numgen {
                        mode: NumgenMode::Random,
                        modulus: 3,
                    },
                    targets: vec![
                        (addr("10.1.0.1", "fd00:1::1"), 53),
                        (addr("10.1.0.2", "fd00:1::2"), 5353),
                        (addr("10.1.0.3", "fd00:1::3"), 53),
                    ],
                })]),
                Rule::new(vec![Stmt::Dnat(NatTarget::NumgenMap {
                    proto: L4Proto::Sctp,
                    index: Expr::JhashSaddr {
                        family,
                        modulus: 2,
                        seed: 0xdead_beef,
                    },
                    targets: vec![
                        (addr("10.1.0.1", "fd00:1::1"), 80),
                        (addr("10.1.0.2", "fd00:1::2"), 81),
                    ],
                })]),
                Rule::new(vec![
                    m(
                        Expr::Numgen {
                            mode: NumgenMode::Inc,
                            modulus: 4,
                        },
                        CmpOp::Ne,
                        Value::Int(2),
                    ),
                    Stmt::Update {
                        set: "affinity".into(),
                        key: Expr::Saddr(family),
                        data: None,
                    },
                    Stmt::Dnat(NatTarget::Addr {
                        proto: L4Proto::Tcp,
                        addr: addr("10.1.0.9", "fd00:1::9"),
                        port: 8080,
                    }),
                ]),
                Rule::new(vec![Stmt::Dnat(NatTarget::AddrMap {
                    proto: L4Proto::Sctp,
                    key: Expr::Saddr(family),
                    map: "affinity-map".into(),
                    port: 3868,
                })]),
                Rule::new(vec![
                    Stmt::Update {
                        set: "affinity-map".into(),
                        key: Expr::Saddr(family),
                        data: Some(Value::Addr(addr("10.1.0.7", "fd00:1::7"))),
                    },
                    Stmt::Dnat(NatTarget::Addr {
                        proto: L4Proto::Sctp,
                        addr: addr("10.1.0.7", "fd00:1::7"),
                        port: 3868,
                    }),
                ]),
                Rule::new(vec![Stmt::Verdict(Verdict::Return)]),
            ],
        ),
        chain(
            "filter-input",
            base(ChainKind::Filter, Hook::Input, 0),
            vec![
                Rule::new(vec![
                    m(Expr::CtState, CmpOp::Eq, Value::CtNew),
                    jump("filter"),
                ]),
                Rule::new(vec![
                    m(Expr::CtState, CmpOp::Ne, Value::CtNew),
                    Stmt::Verdict(Verdict::Accept),
                ]),
                Rule::new(vec![
                    m(Expr::CtStatus, CmpOp::Ne, Value::CtDnat),
                    Stmt::Verdict(Verdict::Goto("filter".into())),
                ]),
                Rule::new(vec![
                    m(Expr::CtDirection, CmpOp::Eq, Value::CtDir(CtDir::Original)),
                    Stmt::Update {
                        set: "counted".into(),
                        key: Expr::Concat(vec![
                            Expr::CtOriginalDaddr(family),
                            Expr::Daddr(family),
                            Expr::L4Proto,
                            Expr::Dport,
                        ]),
                        data: None,
                    },
                ]),
                Rule::new(vec![
                    m(Expr::CtDirection, CmpOp::Ne, Value::CtDir(CtDir::Reply)),
                    m(Expr::Sport, CmpOp::Eq, Value::Port(53)),
                    m(
                        Expr::CtOriginalDaddr(family),
                        CmpOp::Ne,
                        Value::Addr(addr("10.96.0.10", "fd00::a")),
                    ),
                    Stmt::Verdict(Verdict::Accept),
                ]),
            ],
        ),
        chain(
            "filter",
            None,
            vec![
                Rule::new(vec![
                    m(Expr::FibType(FibAddr::Daddr), CmpOp::Eq, Value::FibLocal),
                    m(Expr::FibType(FibAddr::Saddr), CmpOp::Ne, Value::FibLocal),
                    m(Expr::L4Proto, CmpOp::Eq, Value::Proto(L4Proto::Tcp)),
                    m(Expr::Dport, CmpOp::Ne, Value::Port(22)),
                    Stmt::Lookup {
                        left: Expr::Concat(vec![
                            Expr::Daddr(family),
                            Expr::L4Proto,
                            Expr::Dport,
                            Expr::Saddr(family),
                        ]),
                        set: "allow".into(),
                        negate: true,
                    },
                    Stmt::Verdict(Verdict::Drop),
                ]),
                Rule::new(vec![
                    m(Expr::Mark, CmpOp::Eq, Value::Int(0x4000)),
                    m(Expr::MarkAnd(0x4000), CmpOp::Ne, Value::Int(0)),
                    m(
                        Expr::JhashSaddr {
                            family,
                            modulus: 3,
                            seed: 0,
                        },
                        CmpOp::Eq,
                        Value::Int(1),
                    ),
                    Stmt::Lookup {
                        left: Expr::Saddr(family),
                        set: "nodeport-ips".into(),
                        negate: false,
                    },
                    Stmt::Reject,
                ]),
                Rule::new(vec![Stmt::Vmap {
                    left: Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                    map: "ports".into(),
                }]),
            ],
        ),
        chain(
            "nat-postrouting",
            base(ChainKind::Nat, Hook::Postrouting, 100),
            vec![
                Rule::new(vec![
                    m(Expr::MarkAnd(0x4000), CmpOp::Eq, Value::Int(0)),
                    Stmt::Verdict(Verdict::Return),
                ]),
                Rule::new(vec![Stmt::MarkXor(0x4000), Stmt::MarkOr(0x8000)]),
                Rule::new(vec![Stmt::Masquerade { fully_random: true }]),
                Rule::new(vec![Stmt::Masquerade {
                    fully_random: false,
                }]),
            ],
        ),
    ]);
    let element = |key: Vec<Value>, data: Option<ElemData>, comment: Option<&str>| Element {
        key,
        data,
        comment: comment.map(str::to_owned),
    };
    let mut sets = BTreeMap::new();
    let mut services = Set::new(
        "services",
        vec![
            family.addr_type(),
            DataType::InetProto,
            DataType::InetService,
        ],
        vec![DataType::Verdict],
    );
    services.comment = Some("service dispatch".into());
    services.elements = vec![
        element(
            vec![
                Value::Addr(addr("172.30.0.1", "fd00:30::1")),
                Value::Proto(L4Proto::Tcp),
                Value::Port(80),
            ],
            Some(ElemData::Verdict(Verdict::Goto("to-endpoints".into()))),
            Some("ns/svc:http"),
        ),
        element(
            vec![
                Value::Addr(addr("172.30.0.2", "fd00:30::2")),
                Value::Proto(L4Proto::Udp),
                Value::Port(53),
            ],
            Some(ElemData::Verdict(Verdict::Drop)),
            None,
        ),
    ];
    let mut allow = Set::new(
        "allow",
        vec![
            family.addr_type(),
            DataType::InetProto,
            DataType::InetService,
            family.addr_type(),
        ],
        vec![],
    );
    allow.flags.interval = true;
    allow.elements = vec![element(
        vec![
            Value::Addr(addr("198.51.100.1", "2001:db8::1")),
            Value::Proto(L4Proto::Tcp),
            Value::Port(443),
            Value::Prefix(net("192.168.0.0/16", "fd00:99::/48")),
        ],
        None,
        None,
    )];
    let mut nodeport_ips = Set::new("nodeport-ips", vec![family.addr_type()], vec![]);
    nodeport_ips.flags.interval = true;
    nodeport_ips.elements = vec![
        element(
            vec![Value::Prefix(net("10.0.0.0/8", "fd00::/8"))],
            None,
            Some("pods"),
        ),
        element(
            vec![Value::Addr(addr("192.168.1.1", "2001:db8::5"))],
            None,
            None,
        ),
        element(
            vec![Value::Prefix(net("255.255.255.0/24", "ffff::/16"))],
            None,
            None,
        ),
    ];
    let mut ports = Set::new(
        "ports",
        vec![DataType::InetProto, DataType::InetService],
        vec![DataType::Verdict],
    );
    ports.elements = vec![element(
        vec![Value::Proto(L4Proto::Sctp), Value::Port(3868)],
        Some(ElemData::Verdict(Verdict::Accept)),
        None,
    )];
    let mut marks = Set::new("marks", vec![DataType::Mark], vec![DataType::Mark]);
    marks.elements = vec![element(
        vec![Value::Int(1)],
        Some(ElemData::Values(vec![Value::Int(0x4000)])),
        None,
    )];
    let mut affinity = Set::new("affinity", vec![family.addr_type()], vec![]);
    affinity.flags = SetFlags {
        interval: false,
        dynamic: true,
        timeout: true,
    };
    affinity.timeout = Some(10800);
    let mut affinity_map = Set::new(
        "affinity-map",
        vec![family.addr_type()],
        vec![family.addr_type()],
    );
    affinity_map.flags = affinity.flags;
    affinity_map.timeout = Some(60);
    let addr_type = family.addr_type();
    let mut counted = Set::new(
        "counted",
        vec![
            addr_type,
            addr_type,
            DataType::InetProto,
            DataType::InetService,
        ],
        vec![],
    );
    counted.flags = affinity.flags;
    counted.timeout = Some(3600);
    counted.size = Some(1024);
    counted.counter = true;
    let mut everything_open = Set::new("open", vec![family.addr_type()], vec![]);
    everything_open.flags.interval = true;
    everything_open.elements = vec![element(
        vec![Value::Prefix(net("0.0.0.0/0", "::/0"))],
        None,
        None,
    )];
    for set in [
        services,
        allow,
        nodeport_ips,
        ports,
        marks,
        affinity,
        affinity_map,
        counted,
        everything_open,
    ] {
        sets.insert(set.name.clone(), set);
    }
    ir::Table {
        family,
        name: "kube-nft".into(),
        comment: Some("every form".into()),
        chains,
        sets,
    }
}

/// Both families' every-form tables.
pub fn every_form_ruleset() -> ir::Ruleset {
    ir::Ruleset {
        tables: vec![every_form(Family::Ip), every_form(Family::Ip6)],
    }
}
