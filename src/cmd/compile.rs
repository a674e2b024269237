//! `kube-nft compile`: compile the ruleset for one node, then either print it as an nft script
//! (`--dry-run`) or program it into the current network namespace.

use anyhow::Context;
use kube_nft_compiler::render::render;

use super::{load_and_compile, print_stdout};
use crate::cli::CompileArgs;

/// Runs `compile`.
pub(super) fn run(args: &CompileArgs) -> anyhow::Result<()> {
    let compiled = load_and_compile(&args.input, &args.node)?;
    if args.dry_run {
        return print_stdout(&render(&compiled));
    }
    let report = kube_nft_runtime::apply::replace(&compiled.ruleset)
        .context("program the kernel (nothing was changed)")?;
    eprintln!(
        "programmed ip/ip6 kube-nft in one transaction ({} messages, {} bytes)",
        report.messages, report.bytes
    );
    Ok(())
}
