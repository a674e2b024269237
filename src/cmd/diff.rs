//! `kube-nft diff`: compare the ruleset the input compiles to with what the kernel holds in
//! our tables, printing the operations that would make the kernel match (as `compile -f` would
//! apply them). Exit 0 when equal, 1 when different, 2 on error.

use anyhow::Context;
use kube_nft_compiler::ir::Family;
use kube_nft_compiler::plan::plan;
use kube_nft_runtime::readback;

use super::{load_and_compile, print_stdout};
use crate::cli::DiffArgs;

/// Runs `diff`. Any error is reported here and exits 2, because exit 1 means "different".
pub(super) fn run(args: &DiffArgs) -> anyhow::Result<u8> {
    diff(args).or_else(|err| {
        eprintln!("error: diff: {err:#}");
        Ok(2)
    })
}

fn diff(args: &DiffArgs) -> anyhow::Result<u8> {
    let compiled = load_and_compile(&args.input, &args.node)?;
    let current =
        readback::read(&[Family::Ip, Family::Ip6]).context("read the current kube-nft tables")?;
    let tx = plan(&current, &compiled.ruleset);
    if tx.is_empty() {
        eprintln!("no differences");
        return Ok(0);
    }
    print_stdout(&tx.to_string())?;
    eprintln!("differences: {}", tx.counts());
    Ok(1)
}
