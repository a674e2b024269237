//! kube-nft's compiler: Kubernetes Services, EndpointSlices (and mirrored legacy Endpoints) and
//! the local Node in, one nftables ruleset IR out. It is pure: no IO, no async, no clock, and the
//! same input always renders to the same bytes. The pipeline, one module per stage, in reading
//! order: `model` (parse documents) → `normalize` (resolve Kubernetes semantics into a
//! [`graph::Graph`]) → `lower` (choose the nftables layout) → `ir` (typed ruleset, `verify`) →
//! `render` (nft script) | `trace` (packet interpreter) | `show` (what each Service does, read off
//! a ruleset). Beside the pipeline: `incremental` (the daemon's warm compiler), `plan` (diffs),
//! `conntrack` (the reconciler's judgements), `attribution` (which Service port a per-backend
//! counter belongs to) and `maglev` (consistent-hash tables).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod attribution;
pub mod config;
pub mod conntrack;
pub mod diag;
pub mod graph;
pub mod incremental;
pub mod ir;
pub mod lower;
pub mod maglev;
pub mod model;
pub mod normalize;
pub mod plan;
pub mod render;
pub mod show;
pub mod trace;

#[cfg(test)]
mod test_support;

pub use config::Config;
pub use diag::Diagnostic;

/// The result of compiling a snapshot: the ruleset and everything that was wrong with the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// The desired ruleset (verified).
    pub ruleset: ir::Ruleset,
    /// The normalized graph the ruleset was lowered from (used by `trace` for node context).
    pub graph: graph::Graph,
    /// Problems with individual objects; each was skipped or degraded, never fatal.
    pub diagnostics: Vec<Diagnostic>,
}

/// Compiles a snapshot for the node described by `config`.
///
/// Bad objects become diagnostics and never stop the others from being programmed. The result
/// is verified; a verifier failure is a compiler bug and panics with the full list.
pub fn compile(snapshot: &model::Snapshot, config: &Config) -> Compiled {
    compile_inputs(normalize::Inputs::from_snapshot(snapshot, config))
}

/// [`compile`] of objects already folded into the compact store (`Inputs::add` as the loader
/// reads them): the same result, without ever holding the Kubernetes objects of the whole
/// cluster. The store is dropped before lowering.
pub fn compile_inputs(inputs: normalize::Inputs) -> Compiled {
    let config = inputs.config().clone();
    let (graph, diagnostics) = inputs.graph();
    drop(inputs);
    let ruleset = lower::lower(&graph, &config);
    if let Err(errors) = ir::verify(&ruleset) {
        panic!("compiler produced an invalid ruleset (a bug):\n{errors}");
    }
    Compiled {
        ruleset,
        graph,
        diagnostics,
    }
}
