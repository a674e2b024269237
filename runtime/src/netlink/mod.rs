//! nf_tables over netlink, in pure Rust: [`encode`] turns `ir` objects into the bytes of one
//! transaction (sans-IO, unit-testable without a kernel), [`socket`] sends a transaction in one
//! `sendmsg` and maps the kernel's answers back to the objects that failed. [`conntrack`] encodes
//! and decodes the messages of the conntrack table (ctnetlink) the same way. `socket` is the only module in kube-nft that
//! opens a socket.

mod attr;
pub mod conntrack;
pub mod decode;
pub mod encode;
pub mod monitor;
mod rule;
pub mod socket;
mod sys;
