//! kube-nft's runtime: everything that talks to the kernel. [`netlink`] encodes the compiler's
//! `ir::Ruleset` as nf_tables netlink batches and sends them; [`apply`] wraps that into the
//! operations the proxy needs (atomically replace our tables, clean them up); [`conntrack`]
//! deletes the conntrack entries the ruleset no longer agrees with. The compiler
//! stays pure; this crate is where IO happens.

pub mod apply;
pub mod conntrack;
pub mod daemon;
pub mod lock;
pub mod netlink;
pub mod readback;
pub mod serve;
pub mod sources;
pub mod sync;
