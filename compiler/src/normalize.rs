//! Snapshot → Graph (TODO).

use crate::graph::Graph;
use crate::model::Snapshot;
use crate::{Config, Diagnostic};

/// Resolves Kubernetes semantics for one node.
pub fn normalize(_snapshot: &Snapshot, _config: &Config) -> (Graph, Vec<Diagnostic>) {
    (Graph::default(), Vec::new())
}
