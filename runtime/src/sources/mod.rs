//! Where cluster objects come from: the API server ([`kube`], four kube-rs watchers) or a folder
//! of manifests ([`manifests`], for cluster-less use and tests). Every source speaks the same
//! vocabulary, an [`Update`] per event on a bounded `tokio::sync::mpsc` channel, so the sync
//! loop does not know which one it reads. Relists are explicit rather than buffered: a source
//! never collects a whole list before sending it, it says [`Event::Relisting`], streams the
//! objects as [`Event::Apply`], and closes with [`Event::Synced`]; the consumer converts each
//! object as it arrives and, at `Synced`, drops what the relist did not mention. That is the only
//! way to learn of deletions missed while a watch was down (kube-rs's watcher sends no `Delete`
//! for objects that vanished before a 410-triggered relist), and no source keeps a second copy
//! of a list for the consumer's sake (kube-rs holds the list response it is iterating over).

pub mod kube;
pub mod manifests;

use std::fmt;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The kinds of object a source delivers; each has its own relist cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `v1 Service`.
    Services,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlices,
    /// `v1 Endpoints`, the legacy API: only the manifests source delivers these (in a cluster,
    /// the EndpointSliceMirroring controller already turns custom Endpoints into slices).
    Endpoints,
    /// `v1 Node`: the node kube-nft runs on (the API source watches only that one).
    Node,
    /// `networking.k8s.io/v1 ServiceCIDR`.
    ServiceCidrs,
}

impl Resource {
    /// Every resource, in a fixed order.
    pub const ALL: [Resource; 5] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Endpoints,
        Resource::Node,
        Resource::ServiceCidrs,
    ];

    /// The lower-case plural name, as in the API path (`services`, `endpointslices`, …), for
    /// log fields and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Endpoints => "endpoints",
            Resource::Node => "nodes",
            Resource::ServiceCidrs => "servicecidrs",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object as the source received it (k8s-openapi types), minus `metadata.managedFields`.
/// Boxed: the types are 0.3 to 1.5 KB inline, and every [`Update`] on the channel would be as
/// large as the largest.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A legacy Endpoints object (manifests only).
    Endpoints(Box<Endpoints>),
    /// The node.
    Node(Box<Node>),
    /// A ServiceCIDR.
    ServiceCidr(Box<ServiceCIDR>),
}

impl Object {
    /// Wraps a Service.
    pub fn service(object: Service) -> Self {
        Object::Service(Box::new(object))
    }

    /// Wraps an EndpointSlice.
    pub fn endpoint_slice(object: EndpointSlice) -> Self {
        Object::EndpointSlice(Box::new(object))
    }

    /// Wraps an Endpoints object.
    pub fn endpoints(object: Endpoints) -> Self {
        Object::Endpoints(Box::new(object))
    }

    /// Wraps a Node.
    pub fn node(object: Node) -> Self {
        Object::Node(Box::new(object))
    }

    /// Wraps a ServiceCIDR.
    pub fn service_cidr(object: ServiceCIDR) -> Self {
        Object::ServiceCidr(Box::new(object))
    }

    /// The resource this object belongs to.
    pub fn resource(&self) -> Resource {
        match self {
            Object::Service(_) => Resource::Services,
            Object::EndpointSlice(_) => Resource::EndpointSlices,
            Object::Endpoints(_) => Resource::Endpoints,
            Object::Node(_) => Resource::Node,
            Object::ServiceCidr(_) => Resource::ServiceCidrs,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Endpoints(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::ServiceCidr(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Endpoints(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::ServiceCidr(o) => &mut o.metadata,
        }
    }

    /// `(namespace, name)`, `""` for what is missing (cluster-scoped objects have no namespace).
    /// The same pair a later [`Event::Delete`] of this object carries.
    pub fn namespace_name(&self) -> (&str, &str) {
        let meta = self.metadata();
        (
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    /// Drops `metadata.managedFields`: server-side apply bookkeeping, often larger than the
    /// spec, that nothing in kube-nft reads. Sources strip it before sending.
    fn without_managed_fields(mut self) -> Self {
        self.metadata_mut().managed_fields = None;
        self
    }
}

/// One event of one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// Which resource the event is about (and, for relist markers, which relist).
    pub resource: Resource,
    /// What happened.
    pub event: Event,
}

/// What a source reports about one resource.
///
/// The per-resource grammar is `(Relisting Apply* Synced | Apply | Delete | Alive | Error)*`,
/// where a `Relisting` may also be followed by another `Relisting` (the list failed midway and
/// started over) and `Error`s may interleave anywhere.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A (re)list began. Every object of this resource that is not applied again before the
    /// next [`Event::Synced`] is gone. This is how deletions missed during a watch outage (a
    /// 410 Gone, a long disconnect) reach the consumer: kube-rs sends no `Delete` for them.
    Relisting,
    /// An object was added or modified (or re-listed).
    Apply(Object),
    /// An object was deleted. `namespace` is `""` for cluster-scoped objects.
    Delete {
        /// The object's namespace, `""` when cluster-scoped.
        namespace: String,
        /// The object's name.
        name: String,
    },
    /// The (re)list that the last `Relisting` began is complete. The first one is kube-proxy's
    /// `HasSynced` for this resource: nothing should be programmed before every resource the
    /// sync needs has reached it. A resource the API server does not serve (ServiceCIDRs on a
    /// cluster without that API) is reported as `Relisting` + `Synced` with nothing between.
    Synced,
    /// The source heard from the API server for this resource (an object arrived); at most one
    /// per second per resource. See [`kube`] for what its absence does and does not mean.
    Alive,
    /// Something failed and the source is retrying: a list or watch request (retried with
    /// backoff), or a manifest file that did not parse (its previous objects are kept; the
    /// error goes to each resource the file held, or to all five when it never parsed). The
    /// state the consumer holds stays valid; this is for logs, metrics and health. Sources do
    /// not log what they send here.
    Error(String),
}

impl Update {
    fn new(resource: Resource, event: Event) -> Self {
        Update { resource, event }
    }
}

pub(crate) use crate::error_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn managed_fields_are_stripped_and_names_read() {
        let service = Service {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("web".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        let object = Object::Service(Box::new(service)).without_managed_fields();
        assert_eq!(object.metadata().managed_fields, None);
        assert_eq!(object.namespace_name(), ("ns", "web"));
        assert_eq!(object.resource(), Resource::Services);
        let node = Object::Node(Box::default());
        assert_eq!(node.namespace_name(), ("", ""));
    }

    #[test]
    fn error_chain_skips_repeated_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner: {0}")]
        struct Inner(#[source] std::io::Error);
        let err = Outer(Inner(std::io::Error::other("disk on fire")));
        assert_eq!(error_chain(&err), "outer: inner: disk on fire");
    }
}
