//! `kube-nft compile`: print the ruleset for one node as an nft script (`--dry-run`).
//! Programming the kernel is not implemented yet, so `--dry-run` is required.

use kube_nft_compiler::render::render;

use super::{load_and_compile, print_stdout, UsageError};
use crate::cli::CompileArgs;

/// Runs `compile`.
pub(super) fn run(args: &CompileArgs) -> anyhow::Result<()> {
    if !args.dry_run {
        return Err(UsageError(
            "programming the kernel is not implemented yet; pass --dry-run to print the \
             ruleset instead"
                .into(),
        )
        .into());
    }
    let compiled = load_and_compile(&args.input, &args.node)?;
    print_stdout(&render(&compiled))
}
