//! Snapshot → Graph for one node: every Kubernetes rule that decides *what* to program is
//! resolved here (which Services are ours, field defaults, address validation, mirroring of
//! legacy Endpoints, readiness, terminating fallback, topology hints, node locality), so that
//! `lower` only decides *how*. Bad input degrades per object or per field with a diagnostic and
//! never stops the rest; the output is sorted so the same snapshot always yields the same graph.

mod address;
mod conflicts;
mod detect;
mod endpoints;
mod node;
mod service;

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::graph::Graph;
use crate::model::Snapshot;
use crate::{Config, Diagnostic};

/// Resolves Kubernetes semantics for the node described by `config`.
///
/// Returns the graph and the diagnostics (sorted, deduplicated) for everything that was skipped
/// or read in a degraded way. Services that are not ours (headless, ExternalName, another
/// proxy's) are left out silently, as kube-proxy does.
pub fn normalize(snapshot: &Snapshot, config: &Config) -> (Graph, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let node = node::node_info(snapshot, config, &mut diags);
    let nodeport_addresses = node::nodeport_addresses(&node, config, &mut diags);
    let local_detectors = detect::local_detectors(&node, config, &mut diags);
    let service_cidrs = node::service_cidrs(snapshot, &mut diags);
    let index = endpoints::Index::new(snapshot, &mut diags);

    let mut seen = BTreeSet::new();
    let mut services = Vec::new();
    for svc in &snapshot.services {
        let obj = Obj::of("Service", &svc.metadata);
        if !seen.insert((obj.namespace.clone(), obj.name.clone())) {
            diags.push(obj.diag("metadata.name", "duplicate Service; later copy skipped"));
            continue;
        }
        if let Some(service) = service::service(svc, &obj, config, &node, &index, &mut diags) {
            services.push(service);
        }
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let graph = Graph {
        node,
        nodeport_addresses,
        service_cidrs,
        local_detectors,
        services,
    };
    diags.extend(conflicts::check(&graph));
    diags.sort();
    diags.dedup();
    (graph, diags)
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
