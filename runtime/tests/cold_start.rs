//! Kernel tests of the split cold start (`apply::plan_transactions`): with a tiny cost budget a
//! ruleset goes to an empty namespace in many transactions, nothing is hooked (no base chain
//! exists) until the last one, and the result lists exactly like `nft -f` of the rendered
//! script and reads back with nothing left to plan. Incremental changes are never split.
//! Needs root; see `kernel.rs` for the namespace policy.

use kube_nft_compiler::ir::{self, Family};
use kube_nft_compiler::plan::plan;
use kube_nft_compiler::render::render_ruleset;
use kube_nft_runtime::{apply, readback};
use kube_nft_testkit::error_chain as chain;
use kube_nft_testkit::every_form::every_form_ruleset;
use kube_nft_testkit::listing::{diff, normalized};
use kube_nft_testkit::netns::{can_run, in_netns, nft_listing_of, temp_path};
use kube_nft_testkit::synthetic;

/// Splits the cold start of `ruleset` at `max_cost`, applies it transaction by transaction and
/// checks every step; returns the number of transactions.
fn check(name: &str, ruleset: &ir::Ruleset, max_cost: usize) -> usize {
    let script = temp_path(&format!("{name}.nft"));
    std::fs::write(&script, render_ruleset(ruleset)).expect("write script");
    let expected = nft_listing_of(&script).unwrap_or_else(|e| panic!("{name}: nft -f: {e}"));
    let _ = std::fs::remove_file(&script);

    in_netns(|ns| {
        let empty = readback::read(&[Family::Ip, Family::Ip6]).expect("read back");
        assert!(empty.tables.is_empty(), "{name}: namespace not empty");
        let tx = plan(&empty, ruleset);
        let transactions =
            apply::plan_transactions(&empty, &tx, max_cost).expect("encode transactions");
        let (last, body) = transactions.split_last().expect("at least one transaction");
        for (index, t) in body.iter().enumerate() {
            apply::apply_transactions(std::slice::from_ref(t))
                .unwrap_or_else(|e| panic!("{name}: transaction {index}: {}", chain(&e)));
        }
        // Everything but the hooks is in place, and nothing is hooked.
        let partial = readback::read(&[Family::Ip, Family::Ip6]).expect("read back");
        let hooked: Vec<&str> = partial
            .tables
            .iter()
            .flat_map(|t| t.chains.values())
            .filter(|c| c.base.is_some())
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            hooked.is_empty(),
            "{name}: hooked before the last transaction: {hooked:?}"
        );
        apply::apply_transactions(std::slice::from_ref(last))
            .unwrap_or_else(|e| panic!("{name}: last transaction: {}", chain(&e)));

        let listing = ns.ruleset();
        assert!(
            normalized(&listing) == normalized(&expected),
            "{name}: split cold start lists differently:\n{}",
            diff(&expected, &listing)
        );
        let again = readback::read(&[Family::Ip, Family::Ip6]).expect("read back");
        assert_eq!(plan(&again, ruleset).len(), 0, "{name}: left to plan");
        transactions.len()
    })
}

#[test]
fn a_split_cold_start_hooks_last_and_ends_like_one_transaction() {
    if !can_run("a_split_cold_start_hooks_last_and_ends_like_one_transaction") {
        return;
    }
    // Sets created in one transaction and used by rules in later ones, elements split between
    // transactions, verdict maps into chains committed earlier.
    let n = check("every-form", &every_form_ruleset(), 7);
    assert!(n > 5, "every-form: only {n} transactions");
    let cluster = synthetic::generate(60, 4, synthetic::SEED).ruleset();
    let n = check("synthetic-60", &cluster, 15);
    assert!(n > 10, "synthetic-60: only {n} transactions");
}

#[test]
fn small_cold_starts_are_one_transaction_and_changes_are_not_split_by_cost() {
    if !can_run("small_cold_starts_are_one_transaction_and_changes_are_not_split_by_cost") {
        return;
    }
    let small = synthetic::generate(20, 3, synthetic::SEED).ruleset();
    let bigger = synthetic::generate(21, 3, synthetic::SEED).ruleset();
    in_netns(|_| {
        let empty = ir::Ruleset { tables: Vec::new() };
        let report = apply::apply_plan(&empty, &plan(&empty, &small))
            .unwrap_or_else(|e| panic!("cold start: {}", chain(&e)));
        assert_eq!(report.transactions, 1, "{report:?}");
        // However small the budget, a change to a table the kernel holds is not split by
        // cost: one transaction per non-empty phase (the shared chains and slots it prepares,
        // the change, what it retires).
        let tx = plan(&small, &bigger);
        let phases = tx.phases().iter().filter(|p| !p.is_empty()).count();
        assert!((1..=3).contains(&phases), "{phases}");
        assert_eq!(
            apply::plan_transactions(&small, &tx, 1)
                .expect("encode")
                .len(),
            phases
        );
        let report =
            apply::apply_plan(&small, &tx).unwrap_or_else(|e| panic!("incremental: {}", chain(&e)));
        assert_eq!(report.transactions, phases, "{report:?}");
    });
}

#[test]
fn a_cold_start_over_the_budget_is_encoded_while_sent_and_ends_complete() {
    if !can_run("a_cold_start_over_the_budget_is_encoded_while_sent_and_ends_complete") {
        return;
    }
    // 2,000 Services × 10: about 38k elements, over `COLD_START_COST`, so `apply_plan` splits
    // it and hands the transactions from its encoding thread to the sending one.
    let ruleset = synthetic::generate(2_000, 10, synthetic::SEED).ruleset();
    in_netns(|_| {
        let empty = ir::Ruleset { tables: Vec::new() };
        let tx = plan(&empty, &ruleset);
        let expected = apply::plan_transactions(&empty, &tx, apply::COLD_START_COST)
            .expect("encode")
            .len();
        assert!(expected > 1, "only {expected} transaction");
        let report =
            apply::apply_plan(&empty, &tx).unwrap_or_else(|e| panic!("cold start: {}", chain(&e)));
        assert_eq!(report.transactions, expected, "{report:?}");
        let again = readback::read(&[Family::Ip, Family::Ip6]).expect("read back");
        assert_eq!(plan(&again, &ruleset).len(), 0, "left to plan");
    });
}
