//! Kernel tests of `readback`: what `apply::replace` (or `nft -f` of the rendered script) puts
//! into the kernel reads back as exactly the compiled IR, for every golden case and for a table
//! with every IR form. Each test runs in throwaway network namespaces (a thread that called
//! `unshare(CLONE_NEWNET)`, as in `tests/kernel.rs`), so the host's ruleset is never touched.
//! Needs root; where that is impossible the tests print `SKIPPED`, except under `CI=true`,
//! where they fail.

use kube_nft_compiler::ir::{self, Family};
use kube_nft_runtime::netlink::socket::Socket;
use kube_nft_runtime::{apply, readback};
use kube_nft_testkit::error_chain as chain;
use kube_nft_testkit::every_form::every_form_ruleset;
use kube_nft_testkit::golden::{self, compile_case, shown};
use kube_nft_testkit::netns::{can_run, in_netns};

const BOTH: [Family; 2] = [Family::Ip, Family::Ip6];

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

#[test]
fn every_golden_case_reads_back_as_its_compiled_ir() {
    if !can_run("every_golden_case_reads_back_as_its_compiled_ir") {
        return;
    }
    let cases = golden::cases();
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
    let cases = golden::cases();
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
    let ruleset = every_form_ruleset();
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
    let ruleset = compile_case("testdata/compile/cluster/small-cluster.yaml");
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
