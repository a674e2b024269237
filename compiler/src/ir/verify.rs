//! IR verifier (TODO).

use std::fmt;

use super::Ruleset;

/// One violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError(pub String);

/// All violations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{}", e.0)?;
        }
        Ok(())
    }
}

impl std::error::Error for VerifyErrors {}

/// Checks the ruleset.
pub fn verify(_ruleset: &Ruleset) -> Result<(), VerifyErrors> {
    Ok(())
}
