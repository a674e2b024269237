//! Snapshot → Graph for one node: every Kubernetes rule that decides *what* to program is
//! resolved here (which Services are ours, field defaults, address validation, mirroring of
//! legacy Endpoints, readiness, terminating fallback, topology hints, node locality), so that
//! `lower` only decides *how*. Bad input degrades per object or per field with a diagnostic and
//! never stops the rest; the output is sorted so the same snapshot always yields the same graph.

mod address;
mod conflicts;
mod detect;
mod endpoints;
mod inputs;
mod node;
mod service;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use inputs::{Changes, Inputs, Key, Kind};

use crate::graph::Graph;
use crate::model::Snapshot;
use crate::{Config, Diagnostic};

/// Resolves Kubernetes semantics for the node described by `config`.
///
/// Returns the graph and the diagnostics (sorted, deduplicated) for everything that was skipped
/// or read in a degraded way. Services that are not ours (headless, ExternalName, another
/// proxy's) are left out silently, as kube-proxy does. This is [`Inputs::graph`] over a store
/// filled from the snapshot: the daemon, which fills its store object by object, assembles
/// exactly what this returns.
pub fn normalize(snapshot: &Snapshot, config: &Config) -> (Graph, Vec<Diagnostic>) {
    Inputs::from_snapshot(snapshot, config).graph()
}

/// The checks across objects (two Services claiming one address and port, an endpoint that is
/// a ClusterIP, NodePorts no address serves) over the node-wide part of a graph and Services
/// held elsewhere; `normalize` runs them over its whole graph.
pub fn cross_checks(context: &Graph, services: &[&crate::graph::Service]) -> Vec<Diagnostic> {
    conflicts::check_services(context, services)
}

/// The identity of one input object, for naming it in diagnostics.
#[derive(Clone, Debug)]
struct Obj {
    kind: &'static str,
    namespace: String,
    name: String,
}

impl Obj {
    /// Namespaced objects without a namespace are in `default`, as `kubectl apply` would put
    /// them; this keeps a Service and its slices matched when a file omits the namespace.
    fn of(kind: &'static str, meta: &ObjectMeta) -> Obj {
        Obj {
            kind,
            namespace: namespace_of(meta),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// A cluster-scoped object (Node, ServiceCIDR): no namespace.
    fn cluster(kind: &'static str, meta: &ObjectMeta) -> Obj {
        Obj {
            kind,
            namespace: String::new(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    fn diag(&self, field: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.kind, &self.namespace, &self.name, field, message)
    }
}

fn namespace_of(meta: &ObjectMeta) -> String {
    match meta.namespace.as_deref() {
        None | Some("") => "default".to_owned(),
        Some(ns) => ns.to_owned(),
    }
}

#[cfg(test)]
mod tests;
