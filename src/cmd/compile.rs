//! `kube-nft compile`: compile the ruleset for one node, then either print it as an nft script
//! (`--dry-run`) or program it into the current network namespace: read our tables back,
//! plan the difference and apply it in one netlink transaction (nothing when equal).

use anyhow::Context;
use kube_nft_compiler::ir::{Family, Ruleset};
use kube_nft_compiler::plan::plan;
use kube_nft_compiler::render::render;
use kube_nft_runtime::{apply, readback};

use super::{load_and_compile, print_stdout};
use crate::cli::CompileArgs;

/// Runs `compile`.
pub(super) fn run(args: &CompileArgs) -> anyhow::Result<u8> {
    let compiled = load_and_compile(&args.input, &args.node)?;
    if args.dry_run {
        print_stdout(&render(&compiled))?;
        return Ok(0);
    }
    eprintln!("{}", program(&compiled.ruleset)?);
    Ok(0)
}

/// Programs `desired` into the calling thread's network namespace: reads our tables back, plans
/// the difference and applies it in one transaction. Returns what was done, for stderr.
pub(super) fn program(desired: &Ruleset) -> anyhow::Result<String> {
    let current = match readback::read(&[Family::Ip, Family::Ip6]) {
        Ok(current) => current,
        // Someone edited our tables with rules we did not write: planning against them is
        // impossible, so replace the tables wholesale (still one atomic transaction).
        Err(err @ readback::Error::UnrecognisedRule { .. }) => {
            eprintln!("warning: {err}; replacing the kube-nft tables");
            let report = apply::replace(desired).context("program the kernel")?;
            return Ok(format!(
                "replaced ip/ip6 kube-nft in one transaction ({} messages, {} bytes)",
                report.messages, report.bytes
            ));
        }
        Err(err) => return Err(err).context("read the current kube-nft tables"),
    };
    let tx = plan(&current, desired);
    if tx.is_empty() {
        return Ok("no changes: the kernel already holds this ruleset".into());
    }
    let report = apply::apply_plan(&current, &tx)
        .context("program the kernel (the transaction was refused; nothing was changed)")?;
    // A cold start of a large cluster is split into bounded transactions (hooks last);
    // every other change is one.
    let transactions = match report.transactions {
        1 => "one transaction".to_owned(),
        n => format!("{n} transactions, the hooks in the last"),
    };
    Ok(format!(
        "applied {} in {transactions} ({} messages, {} bytes)",
        tx.counts(),
        report.messages,
        report.bytes
    ))
}
