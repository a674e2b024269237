//! Graph → IR (TODO).

use crate::graph::Graph;
use crate::ir::Ruleset;
use crate::Config;

/// Chooses the nftables layout.
pub fn lower(_graph: &Graph, _config: &Config) -> Ruleset {
    Ruleset::default()
}
