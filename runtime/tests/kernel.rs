//! Kernel tests: the netlink encoder against the real nf_tables, each inside throwaway network
//! namespaces so the host's ruleset is never touched. The oracle is nft itself: for every golden
//! case, `nft -f case.nft` in one namespace and `apply::replace(compile(case.yaml))` in another
//! must give byte-identical `nft list ruleset` output, which proves that what kube-nft sends
//! decodes to exactly the rules the rendered script describes.
//!
//! Namespaces: the nft oracle runs as `unshare -n sh -c …`. The runtime side runs in a thread
//! that calls `unshare(CLONE_NEWNET)`: the network namespace is per thread on Linux, so that
//! thread's netlink sockets, and the `nft` processes it spawns (children inherit the spawning
//! thread's namespaces), see only the new namespace, while the rest of the test process stays in
//! the host's. Needs root; where that is impossible the tests print `SKIPPED`, except under
//! `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube_nft_compiler::config::{
    normalize_hostname, parse_cidr, parse_kube_proxy_configuration, NodePortAddress,
};
use kube_nft_compiler::ir::{self, Family, Rule, Stmt, Verdict};
use kube_nft_compiler::model::{self, Source};
use kube_nft_compiler::Config;
use kube_nft_runtime::apply;
use kube_nft_runtime::netlink::encode::OpKind;
use kube_nft_runtime::netlink::socket;

// ---------------------------------------------------------------------------------------------
// Environment

/// Why this environment cannot run kernel tests, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not root (effective uid {euid})"));
    }
    for (program, args) in [
        ("nft", &["--version"][..]),
        ("unshare", &["-n", "true"][..]),
    ] {
        match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Some(format!(
                    "`{program} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => return Some(format!("cannot run {program}: {e}")),
        }
    }
    None
}

/// `true` when kernel tests can run; otherwise skips loudly, or fails under `CI=true`.
fn can_run(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI=true but kernel tests cannot run here: {reason}");
    }
    eprintln!("\n*** SKIPPED: {test}: {reason} ***\n");
    false
}

/// A network namespace owned by the current thread (see [`in_netns`]).
struct Netns;

impl Netns {
    /// Runs nft in this namespace; `Err` carries stderr.
    fn nft(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("nft")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Loads an nft script from text.
    fn nft_load(&self, script: &str) -> Result<(), String> {
        let path = temp_path("script.nft");
        std::fs::write(&path, script).map_err(|e| e.to_string())?;
        let result = self.nft(&["-f", path_str(&path)]).map(|_| ());
        let _ = std::fs::remove_file(&path);
        result
    }

    fn ruleset(&self) -> String {
        self.nft(&["list", "ruleset"])
            .unwrap_or_else(|e| panic!("nft list ruleset: {e}"))
    }
}

/// Runs `f` on a new thread inside a fresh network namespace that disappears with the thread.
fn in_netns<T: Send>(f: impl FnOnce(&Netns) -> T + Send) -> T {
    let host_ns = std::fs::read_link("/proc/thread-self/ns/net").expect("read own netns");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only changes this thread's namespace membership.
                let res = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    res,
                    0,
                    "unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                );
                let ns = std::fs::read_link("/proc/thread-self/ns/net").expect("read netns");
                assert_ne!(ns, host_ns, "still in the host's network namespace");
                // Children spawned from this thread must land in the new namespace too.
                let child = Command::new("readlink")
                    .arg("/proc/self/ns/net")
                    .output()
                    .expect("run readlink");
                let child_ns = String::from_utf8_lossy(&child.stdout).trim().to_owned();
                assert_eq!(Path::new(&child_ns), ns, "child process in another netns");
                f(&Netns)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `nft -f FILE; nft list ruleset` in a throwaway namespace: the oracle.
fn nft_listing_of(script: &Path) -> Result<String, String> {
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", "nft -f \"$1\" && nft list ruleset", "sh"])
        .arg(script)
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn temp_path(name: &str) -> PathBuf {
    let tid = std::thread::current().id();
    std::env::temp_dir().join(format!(
        "kube-nft-kernel-{}-{tid:?}-{name}",
        std::process::id()
    ))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------------
// Golden cases

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

fn golden_cases() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut cases = Vec::new();
    walk(&repo_root().join("testdata/compile"), &mut cases);
    cases.sort();
    cases
}

/// The node config from a case's leading `# args:` lines, built like the binary does: the
/// `--config` file first, then the flags.
fn case_config(text: &str) -> Config {
    let args: Vec<&str> = text
        .lines()
        .take_while(|line| line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("# args:"))
        .flat_map(str::split_whitespace)
        .collect();
    let value = |i: usize| *args.get(i + 1).expect("flag value");
    let mut file = None;
    let mut flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "--config" => {
                file = Some(value(i));
                i += 2;
            }
            "--masquerade-all" => {
                flags.push(("--masquerade-all", ""));
                i += 1;
            }
            flag => {
                flags.push((flag, value(i)));
                i += 2;
            }
        }
    }
    let mut config = Config::default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(repo_root().join(path)).expect("read --config file");
        let (file, _warnings) = parse_kube_proxy_configuration(&text).expect("parse --config");
        file.apply_to(&mut config);
    }
    let list = |v: &str| v.split(',').map(str::to_owned).collect::<Vec<_>>();
    for (flag, v) in flags {
        match flag {
            "--hostname-override" => config.hostname = normalize_hostname(v),
            "--node-ip" => {
                config.node_ips = list(v).iter().map(|s| s.parse().expect("IP")).collect()
            }
            "--cluster-cidr" => {
                config.cluster_cidrs = list(v)
                    .iter()
                    .map(|s| parse_cidr(s).expect("CIDR"))
                    .collect()
            }
            "--nodeport-addresses" => {
                config.nodeport_addresses = list(v)
                    .iter()
                    .map(|s| s.parse::<NodePortAddress>().expect("nodeport address"))
                    .collect()
            }
            "--masquerade-all" => config.masquerade_all = true,
            "--service-proxy-name" => config.service_proxy_name = Some(v.to_owned()),
            other => panic!("case uses flag {other}, which this test does not parse yet"),
        }
    }
    config
}

fn compile_case(case: &Path) -> ir::Ruleset {
    let text = std::fs::read_to_string(case).expect("read case");
    let config = case_config(&text);
    let loaded = model::load(&[Source {
        origin: case.display().to_string(),
        text,
    }])
    .expect("load case");
    kube_nft_compiler::compile(&loaded.snapshot, &config).ruleset
}

/// Sorts the entries of every `elements = { … }` block. nft prints most sets in its own sorted
/// order, but elements of concatenated interval sets (the pipapo backend) in the kernel's dump
/// order, which is insertion order, and `nft -f` inserts them in an order of its own making (the
/// `add element` lines of one set arrive partly reversed). The element *set* must be equal; its
/// order carries no meaning, so it is compared sorted.
fn normalize_element_order(listing: &str) -> String {
    let mut out = Vec::new();
    let mut block: Vec<String> = Vec::new();
    let mut prefix = String::new();
    let mut in_block = false;
    for line in listing.lines() {
        let mut rest = line;
        if !in_block {
            if let Some(at) = line.find("elements = { ") {
                in_block = true;
                prefix = line[..at + "elements = { ".len()].to_owned();
                rest = &line[at + "elements = { ".len()..];
            } else {
                out.push(line.to_owned());
                continue;
            }
        }
        let entry = rest.trim();
        let (entry, last) = match entry.strip_suffix(" }") {
            Some(entry) => (entry, true),
            None => (entry, false),
        };
        block.push(entry.trim_end_matches(',').to_owned());
        if last {
            block.sort();
            out.push(format!("{prefix}{}", block.join(", ")));
            block.clear();
            in_block = false;
        }
    }
    out.join("\n")
}

/// A line diff of two listings, for failure messages.
fn diff(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for line in &a {
        if !b.contains(line) {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for line in &b {
        if !a.contains(line) {
            out.push_str(&format!("+ {line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

#[test]
fn every_golden_case_lists_exactly_like_nft_loading_its_script() {
    if !can_run("every_golden_case_lists_exactly_like_nft_loading_its_script") {
        return;
    }
    let cases = golden_cases();
    assert!(!cases.is_empty(), "no golden cases");
    let mut failures = Vec::new();
    for case in &cases {
        let shown = case
            .strip_prefix(repo_root())
            .unwrap_or(case)
            .display()
            .to_string();
        let script = case.with_extension("nft");
        let expected = match nft_listing_of(&script) {
            Ok(listing) => listing,
            Err(e) => {
                failures.push(format!("{shown}: nft -f failed: {e}"));
                continue;
            }
        };
        let ruleset = compile_case(case);
        let actual = in_netns(|ns| apply::replace(&ruleset).map(|_| ns.ruleset()));
        match actual {
            Ok(actual) if actual == expected => {}
            Ok(actual)
                if normalize_element_order(&actual) == normalize_element_order(&expected) => {}
            Ok(actual) => failures.push(format!("{shown}:\n{}", diff(&expected, &actual))),
            Err(e) => failures.push(format!("{shown}: apply failed: {e:#}: {}", chain(&e))),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The error and its sources, `: `-joined.
fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = err.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}

fn small_cluster() -> ir::Ruleset {
    compile_case(&repo_root().join("testdata/compile/cluster/small-cluster.yaml"))
}

#[test]
fn applying_twice_is_idempotent() {
    if !can_run("applying_twice_is_idempotent") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|ns| {
        let report = apply::replace(&ruleset).expect("first apply");
        // Kernels since 6.10 acknowledge BATCH_END; older ones stay silent on success.
        if kernel_at_least(6, 10) {
            assert!(report.end_acked, "{report:?}");
        }
        let first = ns.ruleset();
        assert!(first.contains("table ip kube-nft"), "{first}");
        apply::replace(&ruleset).expect("second apply");
        assert_eq!(ns.ruleset(), first);
    });
}

#[test]
fn cleanup_removes_only_our_tables() {
    if !can_run("cleanup_removes_only_our_tables") {
        return;
    }
    let foreign = "add table ip other\n\
                   add chain ip other input { type filter hook input priority 0; }\n\
                   add rule ip other input tcp dport 22 accept\n\
                   add table inet fast\n\
                   add set inet fast peers { type ipv4_addr; elements = { 10.0.0.1 }; }\n\
                   add table ip6 kube-nft-other\n";
    // Flowtables need nf_flow_table, which not every kernel has (ENOENT without it).
    let flowtable = "add flowtable inet fast ft { hook ingress priority 0; devices = { lo }; }\n";
    let ruleset = small_cluster();
    in_netns(|ns| {
        // Absent tables are fine.
        apply::cleanup().expect("cleanup of nothing");
        assert_eq!(ns.ruleset(), "");
        ns.nft_load(foreign).expect("load foreign tables");
        if let Err(e) = ns.nft_load(flowtable) {
            eprintln!("note: no flowtable in the foreign tables, the kernel refuses it: {e}");
        }
        let before = ns.ruleset();
        apply::replace(&ruleset).expect("apply");
        assert!(ns.ruleset().contains("table ip kube-nft {"));
        let report = apply::cleanup().expect("cleanup");
        assert!(report.messages >= 6, "{report:?}");
        assert_eq!(ns.ruleset(), before);
        apply::cleanup().expect("second cleanup");
        assert_eq!(ns.ruleset(), before);
    });
}

#[test]
fn a_failed_transaction_names_the_object_and_changes_nothing() {
    if !can_run("a_failed_transaction_names_the_object_and_changes_nothing") {
        return;
    }
    let good = small_cluster();
    let mut bad = good.clone();
    let table = bad
        .tables
        .iter_mut()
        .find(|t| t.family == Family::Ip)
        .expect("ip table");
    table
        .chains
        .get_mut("services")
        .expect("services chain")
        .rules
        .push(Rule::new(vec![Stmt::Verdict(Verdict::Jump(
            "does-not-exist".into(),
        ))]));
    in_netns(|ns| {
        apply::replace(&good).expect("apply the good ruleset");
        let before = ns.ruleset();
        let err = apply::replace(&bad).expect_err("a jump to a missing chain must fail");
        let Some(socket::Error::Rejected { rejections }) = err.netlink() else {
            panic!("expected a rejection, got {err:?}");
        };
        let first = &rejections[0];
        assert_eq!(first.op, Some(OpKind::AddRule), "{first}");
        assert!(first.errno.is_not_found(), "{first}");
        let text = first.to_string();
        assert!(
            text.starts_with("add rule ip kube-nft services jump does-not-exist: "),
            "{text}"
        );
        assert_eq!(
            ns.ruleset(),
            before,
            "a failed transaction changed the ruleset"
        );
    });
}

/// A ruleset with every statement and expression form the IR has, including the ones no golden
/// case uses yet (numgen-map DNAT, `meta mark` equality, unaligned prefixes, data maps).
fn every_form(family: Family) -> ir::Table {
    use std::collections::BTreeMap;

    use ir::{
        BaseChain, Chain, ChainKind, CmpOp, DataType, ElemData, Element, Expr, FibAddr, Hook,
        L4Proto, NatTarget, NumgenMode, Set, SetFlags, Value,
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
                    },
                    Stmt::Dnat(NatTarget::Addr {
                        proto: L4Proto::Tcp,
                        addr: addr("10.1.0.9", "fd00:1::9"),
                        port: 8080,
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

#[test]
fn every_ir_form_lists_exactly_like_nft_loading_its_rendering() {
    if !can_run("every_ir_form_lists_exactly_like_nft_loading_its_rendering") {
        return;
    }
    let ruleset = ir::Ruleset {
        tables: vec![every_form(Family::Ip), every_form(Family::Ip6)],
    };
    if let Err(errors) = ir::verify(&ruleset) {
        panic!("the every-form ruleset fails ir::verify:\n{errors}");
    }
    let script = kube_nft_compiler::render::render_ruleset(&ruleset);
    let path = temp_path("every-form.nft");
    std::fs::write(&path, &script).expect("write script");
    let expected = nft_listing_of(&path);
    let _ = std::fs::remove_file(&path);
    let expected = expected.unwrap_or_else(|e| panic!("nft -f rejects the script: {e}\n{script}"));
    let actual = in_netns(|ns| {
        apply::replace(&ruleset).unwrap_or_else(|e| panic!("apply: {e}: {}", chain(&e)));
        ns.ruleset()
    });
    assert!(
        normalize_element_order(&actual) == normalize_element_order(&expected),
        "listings differ:\n{}\n--- nft:\n{expected}\n--- kube-nft:\n{actual}",
        diff(&expected, &actual)
    );
}

/// A batch far above the default socket buffers (~208 KiB) and the 64 KiB attribute limit goes
/// through as one transaction: SO_SNDBUFFORCE and element chunking, end to end.
#[test]
fn a_big_map_goes_in_one_transaction() {
    use ir::{Chain, DataType, ElemData, Element, L4Proto, Set, Value};

    if !can_run("a_big_map_goes_in_one_transaction") {
        return;
    }
    const N: u32 = 20_000;
    let mut table = ir::Table::new(Family::Ip, "kube-nft");
    table.chains.insert(
        "target".into(),
        Chain {
            name: "target".into(),
            base: None,
            comment: None,
            rules: vec![Rule::new(vec![Stmt::Verdict(Verdict::Accept)])],
        },
    );
    let mut map = Set::new(
        "service-ips",
        vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        vec![DataType::Verdict],
    );
    map.elements = (0..N)
        .map(|i| Element {
            key: vec![
                Value::Addr(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()),
                Value::Proto(L4Proto::Tcp),
                Value::Port(80),
            ],
            data: Some(ElemData::Verdict(Verdict::Goto("target".into()))),
            comment: None,
        })
        .collect();
    table.sets.insert(map.name.clone(), map);
    let ruleset = ir::Ruleset {
        tables: vec![table],
    };
    in_netns(|ns| {
        let report = apply::replace(&ruleset).unwrap_or_else(|e| panic!("{e}: {}", chain(&e)));
        assert!(report.bytes > 512 * 1024, "{report:?}");
        // Replacing it again (delete + recreate) is one transaction too.
        apply::replace(&ruleset).unwrap_or_else(|e| panic!("{e}: {}", chain(&e)));
        let listing = ns
            .nft(&["list", "map", "ip", "kube-nft", "service-ips"])
            .expect("list map");
        assert_eq!(listing.matches("goto target").count(), N as usize);
    });
}
