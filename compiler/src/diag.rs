//! Diagnostics: what was wrong with one input object, named by kind, namespace/name and field.
//! They are data, not errors: the compiler keeps going and the binary prints them as
//! `warning: <Kind> <namespace>/<name>: <field>: <message>`.

use std::fmt;

/// A problem with one object of the input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Object kind (`Service`, `EndpointSlice`, `Endpoints`, `Node`, `ServiceCIDR`), or the
    /// input source for document-level problems.
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The field at fault, as a JSON path (`spec.ports[1].port`).
    pub field: String,
    /// What is wrong and what was done about it.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic about one object field.
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)?;
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)?;
        }
        write!(f, ": {}: {}", self.field, self.message)
    }
}
