//! Tests over hand-built rulesets shaped like `lower`'s layout.

use std::net::IpAddr;

use expect_test::{expect, Expect};

use super::jhash::jhash_addr;
use super::{trace, Env, Fate, Origin, Packet, PacketParseError, Ratio, Trace, Tracer};
use crate::graph::{Graph, NodeInfo};
use crate::ir::{
    BaseChain, Chain, ChainKind, CmpOp, DataType, ElemData, Element, Expr, Family, FibAddr, Hook,
    L4Proto, NatTarget, NumgenMode, Rule, Ruleset, Set, SetFlags, Stmt, Table, Value, Verdict,
};

const SVC_A: &str = "service-AAAA-ns1/svc1/tcp/80";
const SVC_B: &str = "service-BBBB-ns2/svc2/tcp/80";
const SVC_C: &str = "service-CCCC-ns3/svc3/tcp/80";
const SVC_D: &str = "service-DDDD-ns4/svc4/tcp/443";
const MARK: u32 = 0x4000;
const JHASH_SEED: u32 = 0x1234;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> Value {
    Value::Addr(ip(s))
}

fn prefix(s: &str) -> Value {
    Value::Prefix(s.parse().unwrap())
}

fn pkt(s: &str) -> Packet {
    s.parse().unwrap()
}

fn eq(left: Expr, right: Value) -> Stmt {
    Stmt::Match {
        left,
        op: CmpOp::Eq,
        right,
    }
}

fn ne(left: Expr, right: Value) -> Stmt {
    Stmt::Match {
        left,
        op: CmpOp::Ne,
        right,
    }
}

fn daddr_is(a: &str) -> Stmt {
    eq(Expr::Daddr(Family::of(ip(a))), addr(a))
}

fn jump(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(c.to_string()))
}

fn goto(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(c.to_string()))
}

fn dnat(a: &str, port: u16) -> Stmt {
    Stmt::Dnat(NatTarget::Addr {
        proto: L4Proto::Tcp,
        addr: ip(a),
        port,
    })
}

fn numgen(modulus: u32) -> Expr {
    Expr::Numgen {
        mode: NumgenMode::Random,
        modulus,
    }
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}

fn chain(name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.to_string(),
        base: None,
        comment: None,
        rules,
    }
}

fn base(name: &str, kind: ChainKind, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        base: Some(BaseChain {
            kind,
            hook,
            priority,
        }),
        ..chain(name, rules)
    }
}

fn set(name: &str, key: Vec<DataType>, interval: bool, elements: Vec<Vec<Value>>) -> Set {
    Set {
        name: name.to_string(),
        key,
        data: vec![],
        flags: SetFlags {
            interval,
            ..SetFlags::default()
        },
        timeout: None,
        size: None,
        counter: false,
        comment: None,
        elements: elements
            .into_iter()
            .map(|key| Element {
                key,
                data: None,
                comment: None,
            })
            .collect(),
    }
}

fn vmap_decl(name: &str, key: Vec<DataType>, elements: Vec<(Vec<Value>, Verdict)>) -> Set {
    Set {
        data: vec![DataType::Verdict],
        elements: elements
            .into_iter()
            .map(|(key, v)| Element {
                key,
                data: Some(ElemData::Verdict(v)),
                comment: None,
            })
            .collect(),
        ..set(name, key, false, vec![])
    }
}

fn table(family: Family, chains: Vec<Chain>, sets: Vec<Set>) -> Table {
    let mut t = Table::new(family, "kube-nft");
    for c in chains {
        t.chains.insert(c.name.clone(), c);
    }
    for s in sets {
        t.sets.insert(s.name.clone(), s);
    }
    t
}

fn app(a: &str, proto: L4Proto, port: u16) -> Vec<Value> {
    vec![addr(a), Value::Proto(proto), Value::Port(port)]
}

fn addr_proto_port() -> Expr {
    Expr::Concat(vec![Expr::Daddr(Family::Ip), Expr::L4Proto, Expr::Dport])
}

/// The base chains and fixed chains of the layout, plus four services:
/// A (172.30.0.41, LB 1.2.3.4 with source ranges, NodePort 30080): a three-endpoint cascade;
/// B (172.30.0.42): a four-target numgen map with (never hit) affinity;
/// C (172.30.0.43): a three-target jhash map;
/// D (172.30.0.44:443): one hostNetwork endpoint on this node, always masqueraded.
/// 172.30.0.46:80/tcp has no endpoints (reject), 172.30.0.47:53/udp none (drop).
fn fixture() -> Ruleset {
    let ct_new = || eq(Expr::CtState, Value::CtNew);
    let filter = |name: &str, hook| {
        base(
            name,
            ChainKind::Filter,
            hook,
            0,
            vec![rule(vec![ct_new(), jump("service-endpoints-check")])],
        )
    };
    let v4 = || DataType::Ipv4Addr;
    let app_key = || vec![v4(), DataType::InetProto, DataType::InetService];
    let chains = vec![
        base(
            "filter-prerouting-pre-dnat",
            ChainKind::Filter,
            Hook::Prerouting,
            -110,
            vec![rule(vec![
                daddr_is("1.2.3.4"),
                Stmt::Lookup {
                    left: Expr::Saddr(Family::Ip),
                    set: "lb-source-ranges".to_string(),
                    negate: true,
                },
                Stmt::Verdict(Verdict::Drop),
            ])],
        ),
        base(
            "nat-prerouting",
            ChainKind::Nat,
            Hook::Prerouting,
            -100,
            vec![rule(vec![jump("services")])],
        ),
        base(
            "nat-output",
            ChainKind::Nat,
            Hook::Output,
            -100,
            vec![rule(vec![jump("services")])],
        ),
        filter("filter-input", Hook::Input),
        filter("filter-forward", Hook::Forward),
        filter("filter-output", Hook::Output),
        base(
            "nat-postrouting",
            ChainKind::Nat,
            Hook::Postrouting,
            100,
            vec![rule(vec![jump("masquerading")])],
        ),
        chain(
            "services",
            vec![
                rule(vec![Stmt::Vmap {
                    left: addr_proto_port(),
                    map: "service-ips".to_string(),
                }]),
                rule(vec![
                    eq(Expr::FibType(FibAddr::Daddr), Value::FibLocal),
                    ne(Expr::Daddr(Family::Ip), prefix("127.0.0.0/8")),
                    Stmt::Lookup {
                        left: Expr::Daddr(Family::Ip),
                        set: "nodeport-ips".to_string(),
                        negate: false,
                    },
                    Stmt::Vmap {
                        left: Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                        map: "service-nodeports".to_string(),
                    },
                ]),
            ],
        ),
        chain(
            "service-endpoints-check",
            vec![rule(vec![Stmt::Vmap {
                left: addr_proto_port(),
                map: "no-endpoint-services".to_string(),
            }])],
        ),
        chain(
            SVC_A,
            vec![
                rule(vec![
                    daddr_is("172.30.0.41"),
                    ne(Expr::Saddr(Family::Ip), prefix("10.0.0.0/8")),
                    jump("mark-for-masquerade"),
                ]),
                rule(vec![eq(numgen(3), Value::Int(0)), dnat("10.0.1.1", 8080)]),
                rule(vec![eq(numgen(2), Value::Int(0)), dnat("10.0.1.2", 8080)]),
                rule(vec![dnat("10.0.1.3", 8080)]),
            ],
        ),
        chain(
            SVC_B,
            vec![
                rule(vec![
                    Stmt::Lookup {
                        left: Expr::Saddr(Family::Ip),
                        set: "affinity-BBBB".to_string(),
                        negate: false,
                    },
                    Stmt::Verdict(Verdict::Drop),
                ]),
                rule(vec![
                    Stmt::Update {
                        set: "affinity-BBBB".to_string(),
                        key: Expr::Saddr(Family::Ip),
                        data: None,
                    },
                    Stmt::Dnat(NatTarget::NumgenMap {
                        proto: L4Proto::Tcp,
                        index: numgen(4),
                        targets: (1..=4)
                            .map(|i| (ip(&format!("10.0.2.{i}")), 8080))
                            .collect(),
                    }),
                ]),
            ],
        ),
        chain(
            SVC_C,
            vec![rule(vec![Stmt::Dnat(NatTarget::NumgenMap {
                proto: L4Proto::Tcp,
                index: Expr::JhashSaddr {
                    family: Family::Ip,
                    modulus: 3,
                    seed: JHASH_SEED,
                },
                targets: (1..=3)
                    .map(|i| (ip(&format!("10.0.3.{i}")), 8080))
                    .collect(),
            })])],
        ),
        chain(
            SVC_D,
            vec![
                rule(vec![jump("mark-for-masquerade")]),
                rule(vec![dnat("192.168.0.2", 10250)]),
            ],
        ),
        chain("mark-for-masquerade", vec![rule(vec![Stmt::MarkOr(MARK)])]),
        chain(
            "masquerading",
            vec![
                rule(vec![
                    eq(Expr::CtStatus, Value::CtDnat),
                    Stmt::Lookup {
                        left: Expr::Concat(vec![Expr::Saddr(Family::Ip), Expr::Daddr(Family::Ip)]),
                        set: "hairpin".to_string(),
                        negate: false,
                    },
                    jump("mark-for-masquerade"),
                ]),
                rule(vec![
                    eq(Expr::MarkAnd(MARK), Value::Int(0)),
                    Stmt::Verdict(Verdict::Return),
                ]),
                rule(vec![Stmt::MarkXor(MARK)]),
                rule(vec![Stmt::Masquerade { fully_random: true }]),
            ],
        ),
        chain("reject-chain", vec![rule(vec![Stmt::Reject])]),
    ];
    let to = |c: &str| Verdict::Goto(c.to_string());
    let sets = vec![
        vmap_decl(
            "service-ips",
            app_key(),
            vec![
                (app("1.2.3.4", L4Proto::Tcp, 80), to(SVC_A)),
                (app("172.30.0.41", L4Proto::Tcp, 80), to(SVC_A)),
                (app("172.30.0.42", L4Proto::Tcp, 80), to(SVC_B)),
                (app("172.30.0.43", L4Proto::Tcp, 80), to(SVC_C)),
                (app("172.30.0.44", L4Proto::Tcp, 443), to(SVC_D)),
            ],
        ),
        vmap_decl(
            "service-nodeports",
            vec![DataType::InetProto, DataType::InetService],
            vec![(
                vec![Value::Proto(L4Proto::Tcp), Value::Port(30080)],
                to(SVC_A),
            )],
        ),
        vmap_decl(
            "no-endpoint-services",
            app_key(),
            vec![
                (app("172.30.0.46", L4Proto::Tcp, 80), to("reject-chain")),
                (app("172.30.0.47", L4Proto::Udp, 53), Verdict::Drop),
            ],
        ),
        set(
            "nodeport-ips",
            vec![v4()],
            true,
            vec![vec![prefix("192.168.0.0/24")]],
        ),
        set(
            "lb-source-ranges",
            vec![v4()],
            true,
            vec![vec![prefix("203.0.113.0/25")]],
        ),
        set(
            "hairpin",
            vec![v4(), v4()],
            false,
            (1..=3)
                .map(|i| {
                    let a = addr(&format!("10.0.1.{i}"));
                    vec![a.clone(), a]
                })
                .collect(),
        ),
        Set {
            flags: SetFlags {
                dynamic: true,
                timeout: true,
                interval: false,
            },
            timeout: Some(10800),
            ..set("affinity-BBBB", vec![v4()], false, vec![])
        },
    ];
    Ruleset {
        tables: vec![table(Family::Ip, chains, sets)],
    }
}

fn env() -> Env {
    Env {
        local_addrs: vec![ip("192.168.0.2")],
        ..Env::default()
    }
}

fn run(ruleset: &Ruleset, packet: &str, origin: Origin) -> Trace {
    trace(ruleset, &env(), &pkt(packet).with_origin(origin))
}

fn third() -> Ratio {
    Ratio::new(1, 3)
}

fn chain_mut<'a>(rs: &'a mut Ruleset, name: &str) -> &'a mut Chain {
    rs.tables[0].chains.get_mut(name).unwrap()
}

fn check(t: &Trace, expect: Expect) {
    expect.assert_eq(&t.to_string());
}

#[test]
fn cascade_gives_each_endpoint_exactly_a_third() {
    let t = run(
        &fixture(),
        "tcp 203.0.113.2:40000 -> 172.30.0.41:80",
        Origin::Outside,
    );
    assert_eq!(
        t.targets(),
        vec![
            (ip("10.0.1.1"), 8080, third()),
            (ip("10.0.1.2"), 8080, third()),
            (ip("10.0.1.3"), 8080, third()),
        ]
    );
    // From outside the cluster network: marked in the service chain, masqueraded on the way
    // out, and the mark bit cleared again before the masquerade.
    for o in &t.outcomes {
        assert!(
            matches!(
                o.fate,
                Fate::Accept {
                    masquerade: true,
                    ..
                }
            ),
            "{o:?}"
        );
        assert!(o.path.contains(&"mark 0x4000".to_string()), "{:?}", o.path);
        assert_eq!(o.path.last().map(String::as_str), Some("masquerade"));
        assert!(o.path.contains(&"mark 0x0".to_string()), "{:?}", o.path);
    }
    check(
        &t,
        expect![[r#"
            tcp 203.0.113.2:40000 -> 172.30.0.41:80 (from outside)
              1/3  dnat 10.0.1.1:8080  masquerade  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > mark-for-masquerade > mark 0x4000 > dnat 10.0.1.1:8080 > nat-postrouting > masquerading > mark 0x0 > masquerade
              1/3  dnat 10.0.1.2:8080  masquerade  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > mark-for-masquerade > mark 0x4000 > dnat 10.0.1.2:8080 > nat-postrouting > masquerading > mark 0x0 > masquerade
              1/3  dnat 10.0.1.3:8080  masquerade  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > mark-for-masquerade > mark 0x4000 > dnat 10.0.1.3:8080 > nat-postrouting > masquerading > mark 0x0 > masquerade
        "#]],
    );
}

#[test]
fn sets_out_of_key_order_are_still_found() {
    // Hand-built sets need not be sorted: the tracer must walk them rather than search.
    let sorted = fixture();
    let mut unsorted = fixture();
    for set in unsorted.tables[0].sets.values_mut() {
        set.elements.reverse();
    }
    let env = env();
    let (sorted_tracer, unsorted_tracer) =
        (Tracer::new(&sorted, &env), Tracer::new(&unsorted, &env));
    let packets = [
        ("tcp 203.0.113.2:40000 -> 172.30.0.41:80", Origin::Outside),
        ("tcp 203.0.113.2:40000 -> 1.2.3.4:80", Origin::Outside),
        ("tcp 198.51.100.1:40000 -> 1.2.3.4:80", Origin::Outside),
        ("tcp 10.0.1.1:40000 -> 172.30.0.41:80", Origin::LocalPod),
        ("tcp 10.0.9.9:40000 -> 172.30.0.42:80", Origin::LocalPod),
        ("tcp 10.0.9.9:40000 -> 172.30.0.43:80", Origin::LocalPod),
        ("tcp 10.0.9.9:40000 -> 172.30.0.44:443", Origin::Host),
        ("tcp 10.0.9.9:40000 -> 172.30.0.46:80", Origin::LocalPod),
        ("udp 10.0.9.9:40000 -> 172.30.0.47:53", Origin::LocalPod),
        (
            "tcp 203.0.113.2:40000 -> 192.168.0.2:30080",
            Origin::Outside,
        ),
        (
            "tcp 203.0.113.2:40000 -> 192.168.0.2:30081",
            Origin::Outside,
        ),
        ("udp 10.0.9.9:40000 -> 172.30.0.41:80", Origin::LocalPod),
    ];
    for (packet, origin) in packets {
        let packet = pkt(packet).with_origin(origin);
        let expected = trace(&sorted, &env, &packet);
        assert_eq!(sorted_tracer.trace(&packet), expected, "{packet}");
        assert_eq!(unsorted_tracer.trace(&packet), expected, "{packet}");
    }
    // The last element of the sorted dispatch map, first of the reversed one, and one in the
    // middle; the hairpin pair of the first endpoint, last of its reversed set.
    for daddr in ["172.30.0.44:443", "172.30.0.42:80"] {
        let packet = pkt(&format!("tcp 10.0.9.9:40000 -> {daddr}"));
        assert!(
            !unsorted_tracer.trace(&packet).targets().is_empty(),
            "{daddr}"
        );
    }
    let hairpin = pkt("tcp 10.0.1.1:40000 -> 172.30.0.41:80").with_origin(Origin::LocalPod);
    let t = unsorted_tracer.trace(&hairpin);
    let to_itself = (t.outcomes.iter()).find(|o| o.fate.to_string().starts_with("dnat 10.0.1.1:"));
    assert!(
        matches!(
            to_itself.map(|o| &o.fate),
            Some(Fate::Accept {
                masquerade: true,
                ..
            })
        ),
        "{t}"
    );
}

#[test]
fn pod_traffic_is_balanced_but_not_masqueraded() {
    let t = run(
        &fixture(),
        "tcp 10.0.0.5:40000 -> 172.30.0.41:80",
        Origin::LocalPod,
    );
    assert_eq!(t.outcomes.len(), 3);
    for o in &t.outcomes {
        assert!(matches!(
            o.fate,
            Fate::Accept {
                masquerade: false,
                ..
            }
        ));
        assert_eq!(o.probability, third());
        // `masquerading` returned early and left no trace.
        assert!(!o.path.iter().any(|p| p == "masquerading"), "{:?}", o.path);
    }
    check(
        &t,
        expect![[r#"
            tcp 10.0.0.5:40000 -> 172.30.0.41:80 (from a local pod)
              1/3  dnat 10.0.1.1:8080  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > dnat 10.0.1.1:8080
              1/3  dnat 10.0.1.2:8080  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > dnat 10.0.1.2:8080
              1/3  dnat 10.0.1.3:8080  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > dnat 10.0.1.3:8080
        "#]],
    );
}

#[test]
fn hairpin_is_masqueraded_after_dnat() {
    // An endpoint reaching itself through its Service: `ct status dnat` holds in postrouting
    // and saddr . daddr is in @hairpin only on the branch that picked 10.0.1.2 itself.
    let t = run(
        &fixture(),
        "tcp 10.0.1.2:40000 -> 172.30.0.41:80",
        Origin::LocalPod,
    );
    let fates: Vec<_> = t.outcomes.iter().map(|o| o.fate.clone()).collect();
    let accept = |a: &str, masquerade| Fate::Accept {
        dnat: Some((ip(a), 8080)),
        masquerade,
    };
    assert_eq!(
        fates,
        vec![
            accept("10.0.1.1", false),
            accept("10.0.1.2", true),
            accept("10.0.1.3", false),
        ]
    );
}

#[test]
fn numgen_map_splits_evenly_and_records_the_affinity_update() {
    let t = run(
        &fixture(),
        "tcp 203.0.113.2:40000 -> 172.30.0.42:80",
        Origin::Outside,
    );
    let quarter = Ratio::new(1, 4);
    assert_eq!(
        t.targets(),
        (1..=4)
            .map(|i| (ip(&format!("10.0.2.{i}")), 8080, quarter))
            .collect::<Vec<_>>()
    );
    // The affinity set is empty in a stateless trace, so the lookup rule (drop) never hits.
    assert!(!t.outcomes.iter().any(|o| o.fate == Fate::Drop));
    for o in &t.outcomes {
        assert!(o.path.contains(&"update @affinity-BBBB".to_string()));
    }
}

#[test]
fn numgen_map_index_without_target_falls_through() {
    // `numgen random mod 3` with only two targets: index 2 misses the anonymous map, which
    // breaks the rule, and the next rule rejects.
    let mut rs = fixture();
    chain_mut(&mut rs, SVC_B).rules = vec![
        rule(vec![Stmt::Dnat(NatTarget::NumgenMap {
            proto: L4Proto::Tcp,
            index: numgen(3),
            targets: vec![(ip("10.0.2.1"), 8080), (ip("10.0.2.2"), 8080)],
        })]),
        rule(vec![Stmt::Reject]),
    ];
    let t = run(&rs, "tcp 203.0.113.2:1 -> 172.30.0.42:80", Origin::Outside);
    let probabilities: Vec<_> = t
        .outcomes
        .iter()
        .map(|o| (o.fate.clone(), o.probability))
        .collect();
    let to = |a: &str| Fate::Accept {
        dnat: Some((ip(a), 8080)),
        masquerade: false,
    };
    assert_eq!(
        probabilities,
        vec![
            (to("10.0.2.1"), third()),
            (to("10.0.2.2"), third()),
            (Fate::Reject, third()),
        ]
    );
}

#[test]
fn numgen_inc_is_traced_as_a_uniform_split() {
    let mut rs = fixture();
    for r in &mut chain_mut(&mut rs, SVC_A).rules {
        for s in &mut r.stmts {
            if let Stmt::Match {
                left: Expr::Numgen { mode, .. },
                ..
            } = s
            {
                *mode = NumgenMode::Inc;
            }
        }
    }
    let t = run(&rs, "tcp 10.0.0.5:1 -> 172.30.0.41:80", Origin::LocalPod);
    assert_eq!(t.targets().len(), 3);
    assert!(t.targets().iter().all(|t| t.2 == third()));
}

#[test]
fn jhash_sends_each_client_to_one_computed_endpoint() {
    let rs = fixture();
    let mut seen = Vec::new();
    for i in 1..=16 {
        let client = format!("203.0.113.{i}");
        let t = run(
            &rs,
            &format!("tcp {client}:40000 -> 172.30.0.43:80"),
            Origin::Outside,
        );
        let index = jhash_addr(ip(&client), 3, JHASH_SEED);
        let expected = ip(&format!("10.0.3.{}", index + 1));
        assert_eq!(t.targets(), vec![(expected, 8080, Ratio::ONE)], "{client}");
        // The same client again: the same endpoint.
        let again = run(
            &rs,
            &format!("tcp {client}:50000 -> 172.30.0.43:80"),
            Origin::Outside,
        );
        assert_eq!(again.targets(), t.targets());
        seen.push(index);
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() > 1, "16 clients all hashed to {seen:?}");
}

#[test]
fn vmap_miss_is_not_a_service() {
    let t = run(
        &fixture(),
        "tcp 203.0.113.2:40000 -> 172.30.0.99:80",
        Origin::Outside,
    );
    let accept = Fate::Accept {
        dnat: None,
        masquerade: false,
    };
    assert!(t.is_certain(&accept));
    assert!(t.outcomes[0].path.is_empty());
    // The right address with the wrong protocol misses the concatenated key too.
    let t = run(
        &fixture(),
        "udp 203.0.113.2:40000 -> 172.30.0.41:80",
        Origin::Outside,
    );
    assert!(t.is_certain(&accept));
    check(
        &t,
        expect![[r#"
            udp 203.0.113.2:40000 -> 172.30.0.41:80 (from outside)
              1  accept (not a service)
        "#]],
    );
}

#[test]
fn services_without_endpoints_are_rejected_or_dropped() {
    let rs = fixture();
    let t = run(&rs, "tcp 10.0.0.5:1 -> 172.30.0.46:80", Origin::LocalPod);
    assert!(t.is_certain(&Fate::Reject));
    check(
        &t,
        expect![[r#"
            tcp 10.0.0.5:1 -> 172.30.0.46:80 (from a local pod)
              1  reject  via filter-forward > service-endpoints-check > reject-chain
        "#]],
    );
    let t = run(&rs, "udp 10.0.0.5:1 -> 172.30.0.47:53", Origin::LocalPod);
    assert!(t.is_certain(&Fate::Drop));
    assert_eq!(
        t.outcomes[0].path,
        ["filter-forward", "service-endpoints-check"]
    );
}

#[test]
fn negated_lookup_in_interval_set_drops_before_dnat() {
    let rs = fixture();
    // 203.0.113.130 is outside 203.0.113.0/25: dropped in the pre-DNAT filter chain, so
    // nat-prerouting never runs.
    let t = run(&rs, "tcp 203.0.113.130:1 -> 1.2.3.4:80", Origin::Outside);
    assert!(t.is_certain(&Fate::Drop));
    assert_eq!(t.outcomes[0].path, ["filter-prerouting-pre-dnat"]);
    check(
        &t,
        expect![[r#"
            tcp 203.0.113.130:1 -> 1.2.3.4:80 (from outside)
              1  drop  via filter-prerouting-pre-dnat
        "#]],
    );
    // 203.0.113.127 is inside the prefix: allowed, and balanced.
    let t = run(&rs, "tcp 203.0.113.127:1 -> 1.2.3.4:80", Origin::Outside);
    assert_eq!(t.targets().len(), 3);
    assert!(!t.outcomes.iter().any(|o| o.fate == Fate::Drop));
}

#[test]
fn nodeport_needs_a_local_non_loopback_address_in_the_set() {
    let rs = fixture();
    let t = run(
        &rs,
        "tcp 203.0.113.2:1 -> 192.168.0.2:30080",
        Origin::Outside,
    );
    assert_eq!(t.targets().len(), 3);
    // In the interval set but not a local address: `fib daddr type local` fails.
    let t = run(
        &rs,
        "tcp 203.0.113.2:1 -> 192.168.0.3:30080",
        Origin::Outside,
    );
    assert!(t.targets().is_empty());
    // Local, but loopback is excluded by `ip daddr != 127.0.0.0/8`.
    let t = run(&rs, "tcp 127.0.0.1:1 -> 127.0.0.1:30080", Origin::Host);
    assert!(t.targets().is_empty());
}

/// base: `jump a`, then `meta mark 0x1 drop`; a: `goto b`, then `mark |= 0x10`; b: `mark |= 1`.
fn goto_ruleset(verdict_in_a: Stmt) -> Ruleset {
    let chains = vec![
        base(
            "filter-prerouting",
            ChainKind::Filter,
            Hook::Prerouting,
            0,
            vec![
                rule(vec![jump("a")]),
                rule(vec![
                    eq(Expr::Mark, Value::Int(1)),
                    Stmt::Verdict(Verdict::Drop),
                ]),
            ],
        ),
        chain(
            "a",
            vec![rule(vec![verdict_in_a]), rule(vec![Stmt::MarkOr(0x10)])],
        ),
        chain("b", vec![rule(vec![Stmt::MarkOr(0x1)])]),
    ];
    Ruleset {
        tables: vec![table(Family::Ip, chains, vec![])],
    }
}

#[test]
fn goto_returns_to_the_caller_of_the_chain_that_did_the_goto() {
    // After b falls off its end, control returns to the base chain (a's caller), skipping the
    // rest of a: the mark is exactly 0x1 and the drop rule matches.
    let t = run(
        &goto_ruleset(goto("b")),
        "tcp 1.1.1.1:1 -> 2.2.2.2:2",
        Origin::Outside,
    );
    assert!(t.is_certain(&Fate::Drop));
    assert_eq!(
        t.outcomes[0].path,
        ["filter-prerouting", "a", "b", "mark 0x1"]
    );
}

#[test]
fn jump_returns_to_the_rule_after_the_jump() {
    // With `jump b` the rest of a runs after b returns: the mark becomes 0x11, no drop.
    let t = run(
        &goto_ruleset(jump("b")),
        "tcp 1.1.1.1:1 -> 2.2.2.2:2",
        Origin::Outside,
    );
    assert!(t.is_certain(&Fate::Accept {
        dnat: None,
        masquerade: false
    }));
    assert_eq!(
        t.outcomes[0].path,
        ["filter-prerouting", "a", "b", "mark 0x1", "mark 0x11"]
    );
}

#[test]
fn accept_ends_only_its_base_chain() {
    // An early `accept` in the pre-DNAT filter chain does not stop nat-prerouting.
    let mut rs = fixture();
    chain_mut(&mut rs, "filter-prerouting-pre-dnat").rules =
        vec![rule(vec![Stmt::Verdict(Verdict::Accept)])];
    let t = run(&rs, "tcp 10.0.0.5:1 -> 172.30.0.41:80", Origin::LocalPod);
    assert_eq!(t.targets().len(), 3);
    assert_eq!(t.outcomes[0].path[0], "filter-prerouting-pre-dnat");
}

#[test]
fn host_traffic_goes_through_output() {
    let t = run(
        &fixture(),
        "tcp 192.168.0.2:40000 -> 172.30.0.41:80",
        Origin::Host,
    );
    assert_eq!(t.targets().len(), 3);
    for o in &t.outcomes {
        assert_eq!(o.path[0], "nat-output");
        // The node address is not in the pod network: masqueraded.
        assert!(matches!(
            o.fate,
            Fate::Accept {
                masquerade: true,
                ..
            }
        ));
    }
}

#[test]
fn iifname_is_the_pod_interface_the_outside_interface_or_empty_for_the_host() {
    // A service chain whose masquerade rule trusts the pod interfaces `veth*`, and a separate
    // exact match on `cni0` that drops: which rules fire depends only on the origin.
    let mut rs = fixture();
    chain_mut(&mut rs, SVC_A).rules[0] = rule(vec![
        daddr_is("172.30.0.41"),
        ne(Expr::Iifname, Value::IfacePrefix("veth".into())),
        jump("mark-for-masquerade"),
    ]);
    chain_mut(&mut rs, "filter-prerouting-pre-dnat")
        .rules
        .push(rule(vec![
            eq(Expr::Iifname, Value::Iface("cni0".into())),
            Stmt::Verdict(Verdict::Drop),
        ]));
    let env = Env {
        local_addrs: vec![ip("192.168.0.2")],
        pod_iifname: "veth1a2b".into(),
        outside_iifname: "eth0".into(),
    };
    let masqueraded = |packet: &str, origin| {
        let t = trace(&rs, &env, &pkt(packet).with_origin(origin));
        t.outcomes
            .iter()
            .map(|o| {
                matches!(
                    o.fate,
                    Fate::Accept {
                        masquerade: true,
                        ..
                    }
                )
            })
            .collect::<Vec<_>>()
    };
    // Whatever the source address: the interface decides.
    assert_eq!(
        masqueraded("tcp 203.0.113.9:1 -> 172.30.0.41:80", Origin::LocalPod),
        [false; 3]
    );
    assert_eq!(
        masqueraded("tcp 10.0.0.5:1 -> 172.30.0.41:80", Origin::Outside),
        [true; 3]
    );
    assert_eq!(
        masqueraded("tcp 192.168.0.2:1 -> 172.30.0.41:80", Origin::Host),
        [true; 3]
    );
    // The exact name matches only itself, not a name it is a prefix of.
    let bridged = Env {
        pod_iifname: "cni0".into(),
        ..env.clone()
    };
    let t = trace(
        &rs,
        &bridged,
        &pkt("tcp 10.0.0.5:1 -> 172.30.0.41:80").with_origin(Origin::LocalPod),
    );
    assert!(t.is_certain(&Fate::Drop));
    let longer = Env {
        pod_iifname: "cni01".into(),
        ..env
    };
    let t = trace(
        &rs,
        &longer,
        &pkt("tcp 10.0.0.5:1 -> 172.30.0.41:80").with_origin(Origin::LocalPod),
    );
    assert_eq!(t.targets().len(), 3);
}

#[test]
fn dnat_to_a_node_address_is_delivered_through_input() {
    let mut rs = fixture();
    // Evidence that the input hook saw the rewritten destination.
    chain_mut(&mut rs, "filter-input").rules.push(rule(vec![
        daddr_is("192.168.0.2"),
        eq(Expr::Dport, Value::Port(10250)),
        Stmt::Update {
            set: "seen-in-input".to_string(),
            key: Expr::Saddr(Family::Ip),
            data: None,
        },
    ]));
    // Routed in and delivered locally: postrouting (and so masquerade) never runs, although
    // the service chain set the mark.
    let t = run(&rs, "tcp 203.0.113.2:1 -> 172.30.0.44:443", Origin::Outside);
    assert!(t.is_certain(&Fate::Accept {
        dnat: Some((ip("192.168.0.2"), 10250)),
        masquerade: false
    }));
    check(
        &t,
        expect![[r#"
            tcp 203.0.113.2:1 -> 172.30.0.44:443 (from outside)
              1  dnat 192.168.0.2:10250  via nat-prerouting > services > service-DDDD-ns4/svc4/tcp/443 > mark-for-masquerade > mark 0x4000 > dnat 192.168.0.2:10250 > filter-input > update @seen-in-input
        "#]],
    );
    // From the host itself the packet loops through lo: postrouting masquerades, then input.
    let t = run(&rs, "tcp 192.168.0.2:1 -> 172.30.0.44:443", Origin::Host);
    let o = &t.outcomes[0];
    assert_eq!(
        o.fate,
        Fate::Accept {
            dnat: Some((ip("192.168.0.2"), 10250)),
            masquerade: true
        }
    );
    assert_eq!(
        o.path.last().map(String::as_str),
        Some("update @seen-in-input")
    );
}

#[test]
fn later_filter_chains_see_the_dnat_destination() {
    let mut rs = fixture();
    chain_mut(&mut rs, "filter-forward").rules.push(rule(vec![
        daddr_is("10.0.1.2"),
        eq(Expr::Dport, Value::Port(8080)),
        Stmt::Reject,
    ]));
    let t = run(&rs, "tcp 10.0.0.5:1 -> 172.30.0.41:80", Origin::LocalPod);
    check(
        &t,
        expect![[r#"
            tcp 10.0.0.5:1 -> 172.30.0.41:80 (from a local pod)
              1/3  dnat 10.0.1.1:8080  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > dnat 10.0.1.1:8080
              1/3  dnat 10.0.1.3:8080  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > dnat 10.0.1.3:8080
              1/3  reject  via nat-prerouting > services > service-AAAA-ns1/svc1/tcp/80 > dnat 10.0.1.2:8080 > filter-forward
        "#]],
    );
}

#[test]
fn a_nat_binding_skips_later_nat_chains_of_the_hook() {
    let mut rs = fixture();
    let late = base(
        "nat-prerouting-late",
        ChainKind::Nat,
        Hook::Prerouting,
        -50,
        vec![rule(vec![dnat("10.9.9.9", 1)])],
    );
    rs.tables[0].chains.insert(late.name.clone(), late);
    let t = run(&rs, "tcp 10.0.0.5:1 -> 172.30.0.41:80", Origin::LocalPod);
    assert_eq!(t.targets().len(), 3);
    // Unhandled traffic gets no binding from nat-prerouting, so the later chain runs.
    let t = run(&rs, "tcp 10.0.0.5:1 -> 172.30.0.99:80", Origin::LocalPod);
    assert_eq!(t.targets(), vec![(ip("10.9.9.9"), 1, Ratio::ONE)]);
}

#[test]
fn cyclic_jumps_end_in_an_error_outcome() {
    let cycle = Ruleset {
        tables: vec![table(
            Family::Ip,
            vec![
                base(
                    "filter-prerouting",
                    ChainKind::Filter,
                    Hook::Prerouting,
                    0,
                    vec![rule(vec![jump("a")])],
                ),
                chain("a", vec![rule(vec![jump("b")])]),
                chain("b", vec![rule(vec![goto("a")])]),
            ],
            vec![],
        )],
    };
    let t = run(&cycle, "tcp 1.1.1.1:1 -> 2.2.2.2:2", Origin::Outside);
    assert_eq!(t.outcomes.len(), 1);
    assert!(
        matches!(&t.outcomes[0].fate, Fate::Error(e) if e.contains("nested chains")),
        "{t}"
    );
}

#[test]
fn rule_evaluations_are_bounded_per_branch() {
    let many = vec![rule(vec![daddr_is("9.9.9.9")]); 10_001];
    let rs = Ruleset {
        tables: vec![table(
            Family::Ip,
            vec![base(
                "filter-prerouting",
                ChainKind::Filter,
                Hook::Prerouting,
                0,
                many,
            )],
            vec![],
        )],
    };
    let t = run(&rs, "tcp 1.1.1.1:1 -> 2.2.2.2:2", Origin::Outside);
    assert!(matches!(&t.outcomes[0].fate, Fate::Error(e) if e.contains("rule evaluations")));
}

#[test]
fn missing_chain_is_an_error_outcome() {
    let mut rs = fixture();
    chain_mut(&mut rs, "nat-prerouting").rules = vec![rule(vec![jump("nowhere")])];
    let t = run(&rs, "tcp 1.1.1.1:1 -> 2.2.2.2:2", Origin::Outside);
    check(
        &t,
        expect![[r#"
            tcp 1.1.1.1:1 -> 2.2.2.2:2 (from outside)
              1  error: no chain nowhere  via nat-prerouting
        "#]],
    );
}

#[test]
fn ipv6_uses_the_ip6_table_only() {
    let chains = vec![
        base(
            "nat-prerouting",
            ChainKind::Nat,
            Hook::Prerouting,
            -100,
            vec![rule(vec![jump("svc")])],
        ),
        chain(
            "svc",
            vec![rule(vec![
                daddr_is("fd00:10:96::a"),
                eq(Expr::L4Proto, Value::Proto(L4Proto::Udp)),
                eq(numgen(2), Value::Int(1)),
                Stmt::Dnat(NatTarget::Addr {
                    proto: L4Proto::Udp,
                    addr: ip("fd00::53"),
                    port: 53,
                }),
            ])],
        ),
    ];
    let mut rs = fixture();
    rs.tables.push(table(Family::Ip6, chains, vec![]));
    let t = run(
        &rs,
        "udp [fd00::1]:5353 -> [fd00:10:96::a]:53",
        Origin::LocalPod,
    );
    check(
        &t,
        expect![[r#"
            udp [fd00::1]:5353 -> [fd00:10:96::a]:53 (from a local pod)
              1/2  accept (not a service)
              1/2  dnat [fd00::53]:53  via nat-prerouting > svc > dnat [fd00::53]:53
        "#]],
    );
    // No ip6 table at all: nothing handles the packet.
    let t = run(
        &fixture(),
        "udp [fd00::1]:5353 -> [fd00:10:96::a]:53",
        Origin::LocalPod,
    );
    assert_eq!(t.outcomes.len(), 1);
    assert!(t.outcomes[0].path.is_empty());
}

#[test]
fn parses_packets() {
    let p = pkt("tcp 192.0.2.2:40000 -> 10.96.0.10:80");
    assert_eq!(
        p,
        Packet {
            proto: L4Proto::Tcp,
            saddr: ip("192.0.2.2"),
            sport: 40000,
            daddr: ip("10.96.0.10"),
            dport: 80,
            origin: Origin::Outside,
        }
    );
    assert_eq!(p.to_string(), "tcp 192.0.2.2:40000 -> 10.96.0.10:80");
    let p = pkt("  udp [fd00::1]:5353->[fd00:10:96::a]:53 ");
    assert_eq!(p.proto, L4Proto::Udp);
    assert_eq!(p.daddr, ip("fd00:10:96::a"));
    assert_eq!(p.to_string(), "udp [fd00::1]:5353 -> [fd00:10:96::a]:53");
    assert_eq!(
        pkt("sctp 10.0.0.1:1 -> 10.0.0.2:2")
            .with_origin(Origin::Host)
            .origin,
        Origin::Host
    );
}

#[test]
fn rejects_malformed_packets() {
    let err = |s: &str| s.parse::<Packet>().unwrap_err();
    assert_eq!(
        err("icmp 1.1.1.1:1 -> 2.2.2.2:2"),
        PacketParseError::Protocol("icmp".to_string())
    );
    assert!(matches!(
        err("tcp 1.1.1.1:1 2.2.2.2:2"),
        PacketParseError::Shape(_)
    ));
    assert!(matches!(err("tcp"), PacketParseError::Shape(_)));
    assert_eq!(
        err("tcp 1.1.1.1 -> 2.2.2.2:2"),
        PacketParseError::Endpoint("1.1.1.1".to_string())
    );
    assert_eq!(
        err("udp fd00::1:53 -> [fd00::2]:53"),
        PacketParseError::Endpoint("fd00::1:53".to_string())
    );
    assert_eq!(
        err("tcp 1.1.1.1:70000 -> 2.2.2.2:2"),
        PacketParseError::Endpoint("1.1.1.1:70000".to_string())
    );
    assert_eq!(
        err("tcp 1.1.1.1:1 -> [fd00::2]:2"),
        PacketParseError::MixedFamilies(ip("1.1.1.1"), ip("fd00::2"))
    );
    assert_eq!(
        err("tcp 1.1.1.1:1 -> [fd00::2]:2").to_string(),
        "source 1.1.1.1 and destination fd00::2 are of different IP families"
    );
}

#[test]
fn env_from_graph_uses_every_node_address() {
    let graph = Graph {
        node: NodeInfo {
            ips: vec![ip("192.168.0.2"), ip("2001:db8::1")],
            addresses: vec![ip("192.168.0.2"), ip("192.168.1.2"), ip("2001:db8::1")],
            ..NodeInfo::default()
        },
        ..Graph::default()
    };
    let env = Env::from_graph(&graph);
    assert!(env.is_local(ip("2001:db8::1")));
    // A secondary address of the Node object is local too, not only the primary IPs.
    assert!(env.is_local(ip("192.168.1.2")));
    assert!(env.is_local(ip("127.0.0.53")));
    assert!(env.is_local(ip("::1")));
    assert!(!env.is_local(ip("192.168.0.3")));
}
