//! Checks rendered scripts against the real nft parser and the kernel: every golden
//! `testdata/**/*.nft` and a ruleset that uses every IR form. Each script is first checked with
//! `unshare -n nft -c -f FILE` and then really loaded with `unshare -n nft -f FILE`, each in a
//! fresh network namespace that disappears with the process, so the host's ruleset is never
//! touched. The load is needed because `-c` stops before the kernel's commit-time validation:
//! on nft 1.0.6 / kernel 6.x, `-c` accepts `reject` reached from a postrouting chain, `dnat`
//! reached from a filter chain, `masquerade` reached from prerouting, jump loops and jumps
//! deeper than 15 chains, all of which fail the real commit (EOPNOTSUPP or EMLINK).
//! This needs root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN for nft); where it cannot
//! run, the tests print `SKIPPED: …`, except under `CI=true`, where they fail.

use std::net::IpAddr;
use std::path::Path;

use kube_nft_compiler::ir::{
    priority, verify, BaseChain, Chain, ChainKind, CmpOp, DataType, ElemData, Element, Expr,
    Family, FibAddr, Hook, L4Proto, NatTarget, NumgenMode, Rule, Ruleset, Set, SetFlags, Stmt,
    Table, Value, Verdict,
};
use kube_nft_compiler::render::render_ruleset;
use kube_nft_testkit::golden::{files_under, repo_root};
use kube_nft_testkit::netns::{can_run, nft_in_fresh_netns};

/// Runs `unshare -n nft -c -f path` (parse, evaluate, kernel check without commit); `Err`
/// carries nft's stderr.
fn nft_check(path: &Path) -> Result<(), String> {
    run_nft(&["-c", "-f"], path)
}

/// Runs `unshare -n nft -f path`: a real commit, into a namespace that is thrown away right
/// after, to get the kernel's commit-time validation too; `Err` carries nft's stderr.
fn nft_load(path: &Path) -> Result<(), String> {
    run_nft(&["-f"], path)
}

/// Both checks, the cheap one first.
fn nft_check_and_load(path: &Path) -> Result<(), String> {
    nft_check(path).map_err(|e| format!("nft -c: {e}"))?;
    nft_load(path).map_err(|e| format!("nft -f: {e}"))
}

fn run_nft(args: &[&str], path: &Path) -> Result<(), String> {
    nft_in_fresh_netns(args, path).map(|_| ())
}

#[test]
fn every_golden_nft_passes_nft_check() {
    let root = repo_root().join("testdata");
    let files = files_under(&root, "nft");
    assert!(
        !files.is_empty(),
        "no golden .nft files under {}: the compile goldens (testdata/compile/**/*.nft) must \
         exist before this test can pass",
        root.display()
    );
    if !can_run("every_golden_nft_passes_nft_check") {
        return;
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let shown = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string();
            nft_check_and_load(path)
                .err()
                .map(|e| format!("{shown}:\n{e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden files fail nft:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn render_covers_every_ir_form_and_nft_accepts_it() {
    let ruleset = Ruleset {
        tables: vec![every_form(Family::Ip), every_form(Family::Ip6)],
    };
    // The same ruleset must satisfy the verifier: render and verify agree on what is valid.
    if let Err(errors) = verify(&ruleset) {
        panic!("all-forms ruleset fails ir::verify:\n{errors}");
    }
    let script = render_ruleset(&ruleset);
    if !can_run("render_covers_every_ir_form_and_nft_accepts_it") {
        return;
    }
    let path = std::env::temp_dir().join(format!("kube-nft-every-form-{}.nft", std::process::id()));
    std::fs::write(&path, &script).expect("write the script to a temp file");
    let result = nft_check_and_load(&path);
    // Best effort: a leftover temp file is harmless.
    let _ = std::fs::remove_file(&path);
    if let Err(stderr) = result {
        panic!("nft rejects the rendered script:\n{stderr}\nscript:\n{script}");
    }
}

/// Pins the reason `nft_load` exists: a `reject` reached from a postrouting chain passes
/// `nft -c` and fails only at commit. If nft ever starts catching it in `-c`, this test says so.
#[test]
fn commit_time_errors_need_a_real_load() {
    if !can_run("commit_time_errors_need_a_real_load") {
        return;
    }
    let script = "add table ip t\n\
                  add chain ip t post { type filter hook postrouting priority 0; }\n\
                  add chain ip t r\n\
                  add rule ip t post jump r\n\
                  add rule ip t r reject\n";
    let path = std::env::temp_dir().join(format!("kube-nft-commit-{}.nft", std::process::id()));
    std::fs::write(&path, script).expect("write the script to a temp file");
    let (checked, loaded) = (nft_check(&path), nft_load(&path));
    let _ = std::fs::remove_file(&path);
    assert_eq!(checked, Ok(()));
    let stderr = loaded.expect_err("the kernel refuses reject in postrouting at commit");
    assert!(stderr.contains("Operation not supported"), "{stderr}");
}

/// Addresses of one family for [`every_form`].
struct Addrs {
    family: Family,
    v: fn(&str, &str) -> IpAddr,
}

impl Addrs {
    fn addr(&self, v4: &str, v6: &str) -> IpAddr {
        (self.v)(v4, v6)
    }
    fn value(&self, v4: &str, v6: &str) -> Value {
        Value::Addr(self.addr(v4, v6))
    }
    fn prefix(&self, v4: &str, v6: &str) -> Value {
        let text = match self.family {
            Family::Ip => v4,
            Family::Ip6 => v6,
        };
        Value::Prefix(text.parse().expect("valid prefix"))
    }
}

fn pick(family: Family) -> Addrs {
    Addrs {
        family,
        v: match family {
            Family::Ip => |v4, _| v4.parse().expect("valid ipv4"),
            Family::Ip6 => |_, v6| v6.parse().expect("valid ipv6"),
        },
    }
}

fn m(left: Expr, op: CmpOp, right: Value) -> Stmt {
    Stmt::Match { left, op, right }
}

fn verdict(v: Verdict) -> Stmt {
    Stmt::Verdict(v)
}

fn jump(chain: &str) -> Verdict {
    Verdict::Jump(chain.into())
}

fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.into())
}

fn base(kind: ChainKind, hook: Hook, priority: i32) -> Option<BaseChain> {
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}

fn set(name: &str, key: Vec<DataType>, data: Vec<DataType>, elements: Vec<Element>) -> Set {
    Set {
        elements,
        ..Set::new(name, key, data)
    }
}

fn element(key: Vec<Value>, data: Option<ElemData>, comment: Option<&str>) -> Element {
    Element {
        key,
        data,
        comment: comment.map(str::to_string),
    }
}

/// One table using every `Stmt`, `Expr`, `Value`, `DataType` (except `integer`, which nft only
/// accepts through `typeof`), set flag, chain type and hook, in a layout the verifier accepts.
fn every_form(family: Family) -> Table {
    let a = pick(family);
    let addr_t = family.addr_type();
    let saddr = Expr::Saddr(family);
    let daddr = Expr::Daddr(family);
    let service_key = Expr::Concat(vec![daddr.clone(), Expr::L4Proto, Expr::Dport]);
    let firewall_key = Expr::Concat(vec![
        daddr.clone(),
        Expr::L4Proto,
        Expr::Dport,
        saddr.clone(),
    ]);
    let filter = ChainKind::Filter;
    let nat = ChainKind::Nat;

    let chains: Vec<(&str, Option<BaseChain>, Vec<Rule>)> = vec![
        (
            "filter-prerouting",
            base(filter, Hook::Prerouting, -110),
            vec![
                Rule::new(vec![
                    m(Expr::Mark, CmpOp::Eq, Value::Int(0x4000)),
                    verdict(Verdict::Return),
                ]),
                Rule::new(vec![
                    m(Expr::CtState, CmpOp::Eq, Value::CtNew),
                    m(Expr::CtStatus, CmpOp::Ne, Value::CtDnat),
                    Stmt::MarkXor(0x1),
                ]),
                Rule::new(vec![
                    m(Expr::FibType(FibAddr::Saddr), CmpOp::Eq, Value::FibLocal),
                    m(Expr::FibType(FibAddr::Daddr), CmpOp::Ne, Value::FibLocal),
                    Stmt::Lookup {
                        left: Expr::Concat(vec![
                            Expr::CtState,
                            Expr::CtStatus,
                            Expr::FibType(FibAddr::Daddr),
                            Expr::Mark,
                        ]),
                        set: "conntrack-marks".into(),
                        negate: false,
                    },
                ])
                .with_comment("a \"quoted\"\ncomment that is far too long for nft's 128-byte limit, so render cuts it short before nft ever sees it ....."),
            ],
        ),
        (
            "nat-prerouting",
            base(nat, Hook::Prerouting, priority::DSTNAT),
            vec![
                Rule::new(vec![verdict(jump("services"))]),
                Rule::new(vec![
                    m(Expr::Iifname, CmpOp::Eq, Value::Iface("cni0".into())),
                    m(Expr::Iifname, CmpOp::Ne, Value::IfacePrefix("veth".into())),
                    verdict(Verdict::Return),
                ]),
                Rule::new(vec![
                    Stmt::Lookup {
                        left: daddr.clone(),
                        set: "nodeport-ips".into(),
                        negate: false,
                    },
                    m(Expr::L4Proto, CmpOp::Eq, Value::Proto(L4Proto::Tcp)),
                    m(Expr::Dport, CmpOp::Eq, Value::Port(30080)),
                    verdict(goto("service-a")),
                ]),
            ],
        ),
        (
            "nat-output",
            base(nat, Hook::Output, priority::DSTNAT),
            vec![Rule::new(vec![verdict(jump("services"))])],
        ),
        (
            "services",
            None,
            vec![
                Rule::new(vec![Stmt::Vmap {
                    left: service_key.clone(),
                    map: "service-ips".into(),
                }]),
                Rule::new(vec![
                    Stmt::Lookup {
                        left: daddr.clone(),
                        set: "cluster-ips".into(),
                        negate: false,
                    },
                    verdict(Verdict::Drop),
                ]),
            ],
        ),
        (
            "service-a",
            None,
            vec![
                Rule::new(vec![
                    Stmt::Lookup {
                        left: saddr.clone(),
                        set: "affinity-a".into(),
                        negate: false,
                    },
                    verdict(goto("endpoint-1")),
                ]),
                Rule::new(vec![
                    m(
                        Expr::Numgen {
                            mode: NumgenMode::Random,
                            modulus: 2,
                        },
                        CmpOp::Eq,
                        Value::Int(0),
                    ),
                    verdict(goto("endpoint-1")),
                ]),
                Rule::new(vec![
                    m(
                        Expr::Numgen {
                            mode: NumgenMode::Inc,
                            modulus: 2,
                        },
                        CmpOp::Ne,
                        Value::Int(0),
                    ),
                    verdict(jump("endpoint-2")),
                ]),
            ],
        ),
        (
            "endpoint-1",
            None,
            vec![
                Rule::new(vec![
                    m(saddr.clone(), CmpOp::Eq, a.value("10.0.0.1", "fd00::1")),
                    Stmt::MarkOr(0x4000),
                ]),
                Rule::new(vec![Stmt::Update {
                    set: "affinity-a".into(),
                    key: saddr.clone(),
                    data: None,
                }]),
                Rule::new(vec![Stmt::Dnat(NatTarget::Addr {
                    proto: L4Proto::Tcp,
                    addr: a.addr("10.0.0.1", "fd00::1"),
                    port: 8080,
                })])
                .with_comment("ns1/web:http -> endpoint"),
            ],
        ),
        (
            "endpoint-2",
            None,
            vec![Rule::new(vec![
                m(
                    Expr::JhashSaddr {
                        family,
                        modulus: 2,
                        seed: 0x2a,
                    },
                    CmpOp::Eq,
                    Value::Int(1),
                ),
                Stmt::Dnat(NatTarget::NumgenMap {
                    proto: L4Proto::Udp,
                    index: Expr::JhashSaddr {
                        family,
                        modulus: 2,
                        seed: 0,
                    },
                    targets: vec![
                        (a.addr("10.0.0.1", "fd00::1"), 53),
                        (a.addr("10.0.0.2", "fd00::2"), 5353),
                    ],
                }),
            ])],
        ),
        (
            "service-b",
            None,
            vec![Rule::new(vec![Stmt::Dnat(NatTarget::NumgenMap {
                proto: L4Proto::Sctp,
                index: Expr::Numgen {
                    mode: NumgenMode::Random,
                    modulus: 3,
                },
                targets: vec![
                    (a.addr("10.0.0.1", "fd00::1"), 80),
                    (a.addr("10.0.0.2", "fd00::2"), 80),
                    (a.addr("10.0.0.3", "fd00::3"), 8080),
                ],
            })])],
        ),
        (
            "nat-postrouting",
            base(nat, Hook::Postrouting, priority::SRCNAT),
            vec![
                Rule::new(vec![
                    m(Expr::MarkAnd(0x4000), CmpOp::Eq, Value::Int(0)),
                    verdict(Verdict::Return),
                ]),
                Rule::new(vec![Stmt::MarkXor(0x4000)]),
                Rule::new(vec![
                    m(saddr.clone(), CmpOp::Ne, a.prefix("10.0.0.0/8", "fd00::/8")),
                    Stmt::Masquerade {
                        fully_random: false,
                    },
                ]),
                Rule::new(vec![Stmt::Masquerade { fully_random: true }]),
            ],
        ),
        (
            "filter-input",
            base(filter, Hook::Input, priority::FILTER),
            vec![Rule::new(vec![Stmt::Vmap {
                left: service_key.clone(),
                map: "no-endpoint-services".into(),
            }])],
        ),
        (
            "filter-output",
            base(filter, Hook::Output, priority::FILTER),
            vec![Rule::new(vec![Stmt::Vmap {
                left: service_key.clone(),
                map: "no-endpoint-services".into(),
            }])],
        ),
        (
            "filter-forward",
            base(filter, Hook::Forward, priority::FILTER),
            vec![
                Rule::new(vec![
                    m(Expr::CtState, CmpOp::Eq, Value::CtNew),
                    verdict(jump("firewall-check")),
                ]),
                Rule::new(vec![
                    m(Expr::MarkAnd(0x4000), CmpOp::Ne, Value::Int(0)),
                    m(daddr.clone(), CmpOp::Ne, a.value("10.0.0.9", "fd00::9")),
                    m(Expr::L4Proto, CmpOp::Ne, Value::Proto(L4Proto::Udp)),
                    m(Expr::Dport, CmpOp::Ne, Value::Port(22)),
                    verdict(Verdict::Accept),
                ]),
            ],
        ),
        (
            "firewall-check",
            None,
            vec![Rule::new(vec![
                Stmt::Lookup {
                    left: firewall_key,
                    set: "firewall-allow".into(),
                    negate: true,
                },
                verdict(Verdict::Drop),
            ])
            .with_comment("load balancer source ranges")],
        ),
        (
            "reject-chain",
            None,
            vec![Rule::new(vec![Stmt::Reject])],
        ),
    ];

    let mut table = Table::new(family, "kube-nft");
    table.comment = Some("rules for kube-nft".into());
    for (name, base, rules) in chains {
        let comment = (name == "services").then(|| "dispatch on service IP".to_string());
        let chain = Chain {
            name: name.into(),
            base,
            comment,
            rules,
        };
        table.chains.insert(name.into(), chain);
    }

    let service_types = vec![addr_t, DataType::InetProto, DataType::InetService];
    let mut cluster_ips = set(
        "cluster-ips",
        vec![addr_t],
        vec![],
        vec![element(
            vec![a.value("172.30.0.1", "fd00:30::1")],
            None,
            None,
        )],
    );
    cluster_ips.comment = Some("every ClusterIP".into());
    let service_ips = set(
        "service-ips",
        service_types.clone(),
        vec![DataType::Verdict],
        vec![
            element(
                vec![
                    a.value("172.30.0.41", "fd00:30::41"),
                    Value::Proto(L4Proto::Tcp),
                    Value::Port(80),
                ],
                Some(ElemData::Verdict(goto("service-a"))),
                Some("ns1/web:http"),
            ),
            element(
                vec![
                    a.value("172.30.0.42", "fd00:30::42"),
                    Value::Proto(L4Proto::Sctp),
                    Value::Port(80),
                ],
                Some(ElemData::Verdict(jump("service-b"))),
                None,
            ),
            element(
                vec![
                    a.value("172.30.0.43", "fd00:30::43"),
                    Value::Proto(L4Proto::Udp),
                    Value::Port(53),
                ],
                Some(ElemData::Verdict(Verdict::Return)),
                None,
            ),
        ],
    );
    let no_endpoints = set(
        "no-endpoint-services",
        service_types,
        vec![DataType::Verdict],
        vec![
            element(
                vec![
                    a.value("172.30.0.44", "fd00:30::44"),
                    Value::Proto(L4Proto::Tcp),
                    Value::Port(443),
                ],
                Some(ElemData::Verdict(goto("reject-chain"))),
                Some("ns1/empty:https has no endpoints"),
            ),
            element(
                vec![
                    a.value("172.30.0.45", "fd00:30::45"),
                    Value::Proto(L4Proto::Udp),
                    Value::Port(53),
                ],
                Some(ElemData::Verdict(Verdict::Drop)),
                None,
            ),
            element(
                vec![
                    a.value("172.30.0.46", "fd00:30::46"),
                    Value::Proto(L4Proto::Udp),
                    Value::Port(54),
                ],
                Some(ElemData::Verdict(Verdict::Accept)),
                None,
            ),
        ],
    );
    let mut nodeport_ips = set(
        "nodeport-ips",
        vec![addr_t],
        vec![],
        vec![
            element(vec![a.prefix("192.168.0.0/16", "fd01::/64")], None, None),
            element(vec![a.value("10.1.2.3", "fd02::3")], None, Some("node IP")),
        ],
    );
    nodeport_ips.flags.interval = true;
    let mut firewall_allow = set(
        "firewall-allow",
        vec![addr_t, DataType::InetProto, DataType::InetService, addr_t],
        vec![],
        vec![element(
            vec![
                a.value("172.30.0.41", "fd00:30::41"),
                Value::Proto(L4Proto::Tcp),
                Value::Port(80),
                a.prefix("10.0.0.0/8", "fd00::/8"),
            ],
            None,
            None,
        )],
    );
    firewall_allow.flags.interval = true;
    let mut affinity = set("affinity-a", vec![addr_t], vec![], vec![]);
    affinity.flags = SetFlags {
        interval: false,
        dynamic: true,
        timeout: true,
    };
    affinity.timeout = Some(10800);
    let conntrack_marks = set(
        "conntrack-marks",
        vec![
            DataType::CtState,
            DataType::CtStatus,
            DataType::FibAddrType,
            DataType::Mark,
        ],
        vec![],
        vec![element(
            vec![
                Value::CtNew,
                Value::CtDnat,
                Value::FibLocal,
                Value::Int(0x4000),
            ],
            None,
            None,
        )],
    );
    let endpoint_map = set(
        "endpoint-map",
        vec![addr_t],
        vec![addr_t, DataType::InetService],
        vec![element(
            vec![a.value("172.30.0.41", "fd00:30::41")],
            Some(ElemData::Values(vec![
                a.value("10.0.0.1", "fd00::1"),
                Value::Port(8080),
            ])),
            None,
        )],
    );
    let mark_map = set(
        "mark-map",
        vec![DataType::Mark],
        vec![DataType::Mark],
        vec![element(
            vec![Value::Int(1)],
            Some(ElemData::Values(vec![Value::Int(0x4000)])),
            None,
        )],
    );
    let interfaces = set(
        "pod-interfaces",
        vec![DataType::Ifname],
        vec![],
        vec![element(vec![Value::Iface("cni0".into())], None, None)],
    );
    for s in [
        interfaces,
        cluster_ips,
        service_ips,
        no_endpoints,
        nodeport_ips,
        firewall_allow,
        affinity,
        conntrack_marks,
        endpoint_map,
        mark_map,
    ] {
        table.sets.insert(s.name.clone(), s);
    }
    table
}
