//! `kube-nft cleanup`: delete kube-nft's own tables in both families and nothing else.

use anyhow::Context;

/// Runs `cleanup`.
pub(super) fn run() -> anyhow::Result<u8> {
    kube_nft_runtime::apply::cleanup().context("delete the kube-nft tables")?;
    eprintln!("deleted ip/ip6 kube-nft (if they existed)");
    Ok(0)
}
