//! What the sync engine needs from the kernel, as a trait: read our tables back, apply a
//! planned transaction, replace our tables, and the ruleset generation. [`Netlink`] is the real
//! thing; tests of the engine's decisions (gating, delta or full, isolation of a Service the
//! kernel refuses) use the compiler's kernel model instead, with refusals injected.

use kube_nft_compiler::ir::{Family, Ruleset};
use kube_nft_compiler::plan::Transaction;

use crate::apply::{self, ApplyReport};
use crate::readback;

/// The kernel as the engine uses it.
pub trait Kernel {
    /// Our tables, as [`readback::read`] returns them.
    fn read(&mut self) -> Result<Ruleset, readback::Error>;
    /// Applies `tx`, planned from `base` (the tables it refers to), as [`apply::apply_plan`].
    fn apply(&mut self, base: &Ruleset, tx: &Transaction) -> Result<ApplyReport, apply::Error>;
    /// Replaces our tables with `desired` in one transaction, as [`apply::replace`].
    fn replace(&mut self, desired: &Ruleset) -> Result<ApplyReport, apply::Error>;
    /// The ruleset generation, if it can be read.
    fn generation(&mut self) -> Option<u32>;
}

/// The kernel of the calling thread's network namespace, over netlink.
#[derive(Clone, Copy, Debug, Default)]
pub struct Netlink;

impl Kernel for Netlink {
    fn read(&mut self) -> Result<Ruleset, readback::Error> {
        readback::read(&[Family::Ip, Family::Ip6])
    }

    fn apply(&mut self, base: &Ruleset, tx: &Transaction) -> Result<ApplyReport, apply::Error> {
        apply::apply_plan(base, tx)
    }

    fn replace(&mut self, desired: &Ruleset) -> Result<ApplyReport, apply::Error> {
        apply::replace(desired)
    }

    fn generation(&mut self) -> Option<u32> {
        apply::generation().ok()
    }
}
