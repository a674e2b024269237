//! Kernel tests of `readback`: what `apply::replace` (or `nft -f` of the rendered script) puts
//! into the kernel reads back as exactly the compiled IR, for every golden case and for a table
//! with every IR form. Each test runs in throwaway network namespaces (a thread that called
//! `unshare(CLONE_NEWNET)`, as in `tests/kernel.rs`), so the host's ruleset is never touched.
//! Needs root; where that is impossible the tests print `SKIPPED`, except under `CI=true`,
//! where they fail.

#[path = "readback/every_form.rs"]
mod every_form;

use std::path::{Path, PathBuf};
use std::process::Command;

use kube_nft_compiler::config::{
    normalize_hostname, parse_cidr, parse_kube_proxy_configuration, NodePortAddress,
};
use kube_nft_compiler::ir::{self, Family};
use kube_nft_compiler::model::{self, Source};
use kube_nft_compiler::Config;
use kube_nft_runtime::netlink::socket::Socket;
use kube_nft_runtime::{apply, readback};

const BOTH: [Family; 2] = [Family::Ip, Family::Ip6];

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// Tests

/// The first difference between two rulesets, object by object, for failure messages.
fn first_difference(expected: &ir::Ruleset, actual: &ir::Ruleset) -> String {
    if expected.tables.len() != actual.tables.len() {
        let names = |r: &ir::Ruleset| {
            r.tables
                .iter()
                .map(|t| format!("{} {}", t.family, t.name))
                .collect::<Vec<_>>()
        };
        return format!("tables {:?} vs {:?}", names(expected), names(actual));
    }
    for (e, a) in expected.tables.iter().zip(&actual.tables) {
        if e.comment != a.comment || e.name != a.name || e.family != a.family {
            return format!("table header {e:?} vs {a:?}");
        }
        for (name, chain) in &e.chains {
            match a.chains.get(name) {
                None => return format!("chain {name} missing"),
                Some(got) if got.base != chain.base || got.comment != chain.comment => {
                    return format!("chain {name}: {chain:?}\nvs {got:?}")
                }
                Some(got) => {
                    for (i, rule) in chain.rules.iter().enumerate() {
                        if got.rules.get(i) != Some(rule) {
                            return format!(
                                "chain {name} rule {i}:\n  {rule:?}\nvs {:?}",
                                got.rules.get(i)
                            );
                        }
                    }
                    if got.rules.len() != chain.rules.len() {
                        return format!(
                            "chain {name}: extra rules {:?}",
                            &got.rules[chain.rules.len()..]
                        );
                    }
                }
            }
        }
        for (name, set) in &e.sets {
            match a.sets.get(name) {
                None => return format!("set {name} missing"),
                Some(got) if got != set => return format!("set {name}: {set:?}\nvs {got:?}"),
                Some(_) => {}
            }
        }
        let extra: Vec<_> = a
            .chains
            .keys()
            .filter(|k| !e.chains.contains_key(*k))
            .chain(a.sets.keys().filter(|k| !e.sets.contains_key(*k)))
            .collect();
        if !extra.is_empty() {
            return format!("extra objects {extra:?}");
        }
    }
    "(no difference found)".into()
}

fn check(expected: &ir::Ruleset, actual: &ir::Ruleset) -> Result<(), String> {
    let expected = readback::canonical(expected);
    if &expected == actual {
        Ok(())
    } else {
        Err(first_difference(&expected, actual))
    }
}

/// The error and its sources, `: `-joined.
fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

fn shown(case: &Path) -> String {
    case.strip_prefix(repo_root())
        .unwrap_or(case)
        .display()
        .to_string()
}

#[test]
fn every_golden_case_reads_back_as_its_compiled_ir() {
    if !can_run("every_golden_case_reads_back_as_its_compiled_ir") {
        return;
    }
    let cases = golden_cases();
    assert!(!cases.is_empty(), "no golden cases");
    let mut failures = Vec::new();
    for case in &cases {
        let ruleset = compile_case(case);
        let result = in_netns(|_| {
            apply::replace(&ruleset).map_err(|e| format!("apply: {}", chain(&e)))?;
            readback::read(&BOTH).map_err(|e| format!("read: {}", chain(&e)))
        });
        match result.and_then(|actual| check(&ruleset, &actual)) {
            Ok(()) => {}
            Err(e) => failures.push(format!("{}: {e}", shown(case))),
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

/// Decodability of what nft itself writes: each golden case's script, loaded by `nft -f`, reads
/// back as the compiled IR too.
#[test]
fn every_golden_script_loaded_by_nft_reads_back_as_its_compiled_ir() {
    if !can_run("every_golden_script_loaded_by_nft_reads_back_as_its_compiled_ir") {
        return;
    }
    let mut failures = Vec::new();
    let cases = golden_cases();
    for case in &cases {
        let ruleset = compile_case(case);
        let script = std::fs::read_to_string(case.with_extension("nft")).expect("read script");
        let result = in_netns(|ns| {
            ns.nft_load(&script).map_err(|e| format!("nft -f: {e}"))?;
            readback::read(&BOTH).map_err(|e| format!("read: {}", chain(&e)))
        });
        match result.and_then(|actual| check(&ruleset, &actual)) {
            Ok(()) => {}
            Err(e) => failures.push(format!("{}: {e}", shown(case))),
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

#[test]
fn every_ir_form_reads_back_as_applied_and_as_loaded_by_nft() {
    if !can_run("every_ir_form_reads_back_as_applied_and_as_loaded_by_nft") {
        return;
    }
    let ruleset = every_form::every_form_ruleset();
    let expected = ruleset.clone();
    let applied = in_netns(|_| {
        apply::replace(&ruleset).unwrap_or_else(|e| panic!("apply: {}", chain(&e)));
        readback::read(&BOTH).unwrap_or_else(|e| panic!("read: {}", chain(&e)))
    });
    if let Err(e) = check(&expected, &applied) {
        panic!("applied: {e}");
    }
    let script = kube_nft_compiler::render::render_ruleset(&ruleset);
    let loaded = in_netns(|ns| {
        ns.nft_load(&script)
            .unwrap_or_else(|e| panic!("nft -f: {e}"));
        readback::read(&BOTH).unwrap_or_else(|e| panic!("read: {}", chain(&e)))
    });
    if let Err(e) = check(&expected, &loaded) {
        panic!("loaded by nft: {e}");
    }
}

#[test]
fn absent_tables_are_absent_and_foreign_tables_are_ignored() {
    if !can_run("absent_tables_are_absent_and_foreign_tables_are_ignored") {
        return;
    }
    in_netns(|ns| {
        assert_eq!(readback::read(&BOTH).expect("read"), ir::Ruleset::default());
        ns.nft_load(
            "add table ip other\n\
             add chain ip other input { type filter hook input priority 0; }\n\
             add rule ip other input tcp dport 22 counter accept\n\
             add table ip6 kube-nft\n",
        )
        .expect("nft -f");
        let read = readback::read(&BOTH).expect("read");
        assert_eq!(read.tables.len(), 1, "{read:?}");
        assert_eq!(read.tables[0], ir::Table::new(Family::Ip6, "kube-nft"));
        assert_eq!(
            readback::read(&[Family::Ip]).expect("read"),
            ir::Ruleset::default()
        );
    });
}

#[test]
fn a_foreign_rule_in_our_chain_is_reported_by_chain_and_position() {
    if !can_run("a_foreign_rule_in_our_chain_is_reported_by_chain_and_position") {
        return;
    }
    let ruleset = compile_case(&repo_root().join("testdata/compile/cluster/small-cluster.yaml"));
    in_netns(|ns| {
        apply::replace(&ruleset).expect("apply");
        let mut socket = Socket::open().expect("socket");
        let before = socket.get_gen().expect("getgen");
        let table = ruleset.table(Family::Ip).expect("ip table");
        let (name, chain_) = table
            .chains
            .iter()
            .find(|(_, c)| !c.rules.is_empty())
            .expect("a chain with rules");
        ns.nft(&[
            "add", "rule", "ip", "kube-nft", name, "tcp", "dport", "22", "counter",
        ])
        .expect("nft add rule");
        assert_ne!(
            socket.get_gen().expect("getgen"),
            before,
            "commit changes the generation"
        );
        let err = readback::read(&BOTH).expect_err("foreign rule");
        match &err {
            readback::Error::UnrecognisedRule {
                family,
                chain,
                index,
                ..
            } => {
                assert_eq!((*family, chain.as_str()), (Family::Ip, name.as_str()));
                assert_eq!(*index, chain_.rules.len());
            }
            other => panic!("{}", chain(other)),
        }
        assert!(err
            .to_string()
            .contains("foreign or unrecognised rule in chain ip kube-nft"));
    });
}
