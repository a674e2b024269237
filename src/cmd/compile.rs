//! `kube-nft compile`: compile the ruleset for one node, then either print it as an nft script
//! (`--dry-run`) or program it into the current network namespace: read our tables back,
//! plan the difference and apply it in one netlink transaction (nothing when equal), then
//! delete the UDP/SCTP conntrack entries the new ruleset disagrees with (the frontends the
//! tables held before count as ours, so a Service deleted from the input is reconciled too) and
//! the ClientIP affinity entries of endpoints that left.

use anyhow::Context;
use kube_nft_compiler::conntrack::{frontends_of, AffinityMaps, Destinations};
use kube_nft_compiler::ir::{Family, Ruleset};
use kube_nft_compiler::plan::plan_owned;
use kube_nft_compiler::render::render;
use kube_nft_runtime::{affinity, apply, conntrack, readback};

use super::{load_and_compile, print_stdout};
use crate::cli::CompileArgs;

/// Runs `compile`.
pub(super) fn run(args: &CompileArgs) -> anyhow::Result<u8> {
    let mut compiled = load_and_compile(&args.input, &args.node)?;
    if args.dry_run {
        print_stdout(&render(&compiled))?;
        return Ok(0);
    }
    // What the sweep needs of the ruleset, before planning takes the ruleset over.
    let affinity_maps = AffinityMaps::of_ruleset(&compiled.ruleset);
    let (summary, before) = program_keeping(std::mem::take(&mut compiled.ruleset))?;
    eprintln!("{summary}");
    let mut destinations = Destinations::of_graph(&compiled.graph);
    destinations.retire(before.as_ref().map(frontends_of).unwrap_or_default());
    match conntrack::reconcile_here(&destinations) {
        Ok(report) if report.deleted() > 0 => eprintln!("{report}"),
        Ok(_) => {}
        // The rules are in: a failed reconcile is reported, not fatal (a rerun retries it).
        Err(err) => eprintln!("warning: {:#}", anyhow::Error::from(err)),
    }
    match affinity::sweep(&affinity_maps) {
        Ok(report) if report.deleted > 0 => eprintln!("{report}"),
        Ok(_) => {}
        Err(err) => eprintln!("warning: {:#}", anyhow::Error::from(err)),
    }
    Ok(0)
}

/// Programs `desired` into the calling thread's network namespace: reads our tables back, plans
/// the difference and applies it in one transaction. Returns what was done, for stderr.
pub(super) fn program(desired: Ruleset) -> anyhow::Result<String> {
    program_keeping(desired).map(|(summary, _)| summary)
}

/// [`program`], also returning our tables as they were before (when they could be read).
fn program_keeping(desired: Ruleset) -> anyhow::Result<(String, Option<Ruleset>)> {
    let current = match readback::read(&[Family::Ip, Family::Ip6]) {
        Ok(current) => current,
        // Someone edited our tables with rules we did not write: planning against them is
        // impossible, so replace the tables wholesale (still one atomic transaction).
        Err(err @ readback::Error::UnrecognisedRule { .. }) => {
            eprintln!("warning: {err}; replacing the kube-nft tables");
            let report = apply::replace(&desired).context("program the kernel")?;
            let summary = format!(
                "replaced ip/ip6 kube-nft in one transaction ({} messages, {} bytes)",
                report.messages, report.bytes
            );
            return Ok((summary, None));
        }
        Err(err) => return Err(err).context("read the current kube-nft tables"),
    };
    // Owned: a cold start moves the ruleset's elements into the plan instead of copying them.
    let tx = plan_owned(&current, desired);
    if tx.is_empty() {
        let summary = "no changes: the kernel already holds this ruleset".to_owned();
        return Ok((summary, Some(current)));
    }
    let report = apply::apply_plan(&current, &tx)
        .context("program the kernel (the transaction was refused; nothing was changed)")?;
    // A cold start of a large cluster is split into bounded transactions (hooks last);
    // every other change is one.
    let transactions = match report.transactions {
        1 => "one transaction".to_owned(),
        n => format!("{n} transactions, the hooks in the last"),
    };
    let summary = format!(
        "applied {} in {transactions} ({} messages, {} bytes)",
        tx.counts(),
        report.messages,
        report.bytes
    );
    Ok((summary, Some(current)))
}
