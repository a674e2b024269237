//! IR → nft script (TODO).

use crate::Compiled;

/// Renders the script.
pub fn render(_compiled: &Compiled) -> String {
    String::new()
}
