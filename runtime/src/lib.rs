//! kube-nft's runtime: all of its IO, in the direction the data flows. [`sources`] bring
//! cluster objects (kube-rs watchers or a folder of manifests); [`sync`] folds them into the warm
//! compiler and decides what the kernel needs; [`netlink`] encodes the compiler's IR as
//! nf_tables batches and sends them, reads our tables back ([`readback`]) and watches for
//! foreign changes; [`apply`] wraps that into the operations the proxy needs; [`conntrack`]
//! deletes the conntrack entries the ruleset no longer agrees with and [`affinity`] the ClientIP
//! affinity entries of endpoints that left; [`serve`] answers health,
//! metrics and health-check node ports; [`lock`] keeps one daemon per network namespace; and
//! [`daemon`] wires them into `kube-nft run`. The compiler stays pure; this crate is where IO
//! happens.

pub mod affinity;
pub mod apply;
pub mod conntrack;
pub mod counters;
pub mod daemon;
pub mod lock;
pub mod netlink;
pub mod readback;
pub mod serve;
pub mod sources;
pub mod sync;

/// An error and its sources on one line, `outer: inner: innermost`, skipping a source whose
/// text the previous one already contains (many error types repeat their source).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
