//! The cluster as the daemon holds it: every object converted, as it arrives, into the compact
//! per-object form that `normalize` reads (a Service's addresses, ports and knobs; a slice's
//! ports and endpoints), together with the diagnostics of reading it, so the Kubernetes object
//! can be dropped at once. The Node and the ServiceCIDRs are few and are kept whole. From this
//! store any one Service can be assembled for the node on its own, which is what makes a sync
//! proportional to what changed; [`super::normalize`] assembles them all. Which Services an
//! update may change is tracked here, so callers never need to know how slices and legacy
//! Endpoints map to Services, and a relist (after a watch expired) is a mark-and-sweep here too.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Endpoints, Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::endpoints::{self, Slice, SERVICE_NAME_LABEL};
use super::service::{self, ServiceIn};
use super::{conflicts, detect, namespace_of, node, Obj};
use crate::graph::{Graph, Service};
use crate::model::{Object, Snapshot};
use crate::{Config, Diagnostic};

/// A namespaced object's identity (cluster-scoped objects use an empty namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Namespace (`default` when the object has none).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn of(obj: &Obj) -> Key {
        Key::new(obj.namespace.clone(), obj.name.clone())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The kinds of objects the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1 Service`.
    Service,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice,
    /// Legacy `v1 Endpoints` (manifests only; the API server mirrors them into slices).
    Endpoints,
    /// `v1 Node` (only the one named by `--hostname-override` is kept).
    Node,
    /// `networking.k8s.io/v1 ServiceCIDR`.
    ServiceCidr,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::Node,
        Kind::ServiceCidr,
    ];

    /// The Kubernetes kind name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::Node => "Node",
            Kind::ServiceCidr => "ServiceCIDR",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Service | Kind::EndpointSlice | Kind::Endpoints)
    }
}

/// One Service as read: `None` when it is not ours or has nothing to program.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceEntry {
    service: Option<ServiceIn>,
    diags: Vec<Diagnostic>,
}

/// One EndpointSlice as read: the Service it belongs to (its `kubernetes.io/service-name`
/// label) and its validated contents. Its diagnostics are reported only by a Service that
/// consumes it, as kube-proxy never looks at slices of Services it does not program.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SliceEntry {
    service: Option<Key>,
    slice: Option<Slice>,
    diags: Vec<Diagnostic>,
}

/// Legacy Endpoints as read: mirrored into slices unless they opt out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EndpointsEntry {
    mirrored: bool,
    slices: Vec<Slice>,
    diags: Vec<Diagnostic>,
}

/// What changed since the last [`Inputs::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services whose assembled form may differ.
    pub services: BTreeSet<Key>,
    /// The Node or a ServiceCIDR changed: the node-wide part of the graph may differ.
    pub context: bool,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.context
    }
}

/// The compact store of every object kube-nft reads, for one node.
#[derive(Clone, Debug)]
pub struct Inputs {
    config: Config,
    // Boxed: B-tree nodes are on average a third empty, and these entries are 100-200 bytes.
    services: BTreeMap<Key, Box<ServiceEntry>>,
    slices: BTreeMap<Key, Box<SliceEntry>>,
    /// Service → names of the slices labelled for it.
    /// Sorted and distinct; a vector, as almost every Service has one slice (a B-tree set
    /// allocates a node of eleven names for one).
    slices_by_service: BTreeMap<Key, Vec<String>>,
    endpoints: BTreeMap<Key, EndpointsEntry>,
    /// The Node named by the config's hostname, if it has been seen.
    node: Option<Node>,
    service_cidrs: BTreeMap<String, ServiceCIDR>,
    /// Problems of the input as a whole (duplicates in a snapshot).
    input_diags: Vec<Diagnostic>,
    changes: Changes,
    /// Keys seen since a relist of each kind began.
    relisting: BTreeMap<Kind, BTreeSet<Key>>,
    /// This node's name (kube-proxy's rule), which endpoints are placed against as they are
    /// read.
    here: Option<String>,
}

impl Inputs {
    /// An empty store for the node described by `config`.
    pub fn new(config: &Config) -> Inputs {
        Inputs {
            config: config.clone(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slices_by_service: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            node: None,
            service_cidrs: BTreeMap::new(),
            input_diags: Vec::new(),
            changes: Changes::default(),
            relisting: BTreeMap::new(),
            here: super::node::node_name(config),
        }
    }

    /// A store holding a whole snapshot. Within a snapshot the first copy of a Service,
    /// EndpointSlice, Endpoints, Node or ServiceCIDR wins; later copies are reported.
    pub fn from_snapshot(snapshot: &Snapshot, config: &Config) -> Inputs {
        let mut inputs = Inputs::new(config);
        for svc in &snapshot.services {
            inputs.add_service(svc);
        }
        for slice in &snapshot.endpoint_slices {
            inputs.add_slice(slice);
        }
        for eps in &snapshot.endpoints {
            inputs.add_endpoints(eps);
        }
        for node in &snapshot.nodes {
            inputs.add_node(node);
        }
        for cidr in &snapshot.service_cidrs {
            inputs.add_service_cidr(cidr);
        }
        inputs.changes.context = true;
        inputs
    }

    /// Adds an object read from files, as [`Inputs::from_snapshot`] reads a snapshot: the
    /// first copy of a name wins (a later one is a diagnostic), and so does the first Node with
    /// our name. `compile` feeds objects here as the loader reads them
    /// (`model::load_each`), so the Kubernetes objects are dropped at once.
    pub fn add(&mut self, object: &Object) {
        match object {
            Object::Service(svc) => self.add_service(svc),
            Object::EndpointSlice(slice) => self.add_slice(slice),
            Object::Endpoints(eps) => self.add_endpoints(eps),
            Object::Node(node) => self.add_node(node),
            Object::ServiceCidr(cidr) => self.add_service_cidr(cidr),
        }
        self.changes.context = true;
    }

    fn add_service(&mut self, svc: &K8sService) {
        let obj = Obj::of("Service", &svc.metadata);
        if self.services.contains_key(&Key::of(&obj)) {
            self.duplicate(&obj, "Service");
        } else {
            self.apply_service(svc);
        }
    }

    fn add_slice(&mut self, slice: &EndpointSlice) {
        let obj = Obj::of("EndpointSlice", &slice.metadata);
        if self.slices.contains_key(&Key::of(&obj)) {
            self.duplicate(&obj, "EndpointSlice");
        } else {
            self.apply_slice(slice);
        }
    }

    fn add_endpoints(&mut self, eps: &Endpoints) {
        let obj = Obj::of("Endpoints", &eps.metadata);
        if self.endpoints.contains_key(&Key::of(&obj)) {
            self.duplicate(&obj, "Endpoints");
        } else {
            self.apply_endpoints(eps);
        }
    }

    /// The first Node with our name, as kube-proxy's informer would only ever see one.
    fn add_node(&mut self, node: &Node) {
        if self.node.is_none() && self.is_our_node(node) {
            self.node = Some(node.clone());
        }
    }

    fn add_service_cidr(&mut self, cidr: &ServiceCIDR) {
        let name = cidr.metadata.name.clone().unwrap_or_default();
        self.service_cidrs
            .entry(name)
            .or_insert_with(|| cidr.clone());
    }

    fn duplicate(&mut self, obj: &Obj, kind: &str) {
        let message = format!("duplicate {kind}; later copy skipped");
        self.input_diags.push(obj.diag("metadata.name", message));
    }

    /// The node config the store reads objects for.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds or replaces a Service.
    pub fn apply_service(&mut self, svc: &K8sService) {
        let obj = Obj::of("Service", &svc.metadata);
        let key = Key::of(&obj);
        self.seen(Kind::Service, &key);
        let mut diags = Vec::new();
        let service = service::read(svc, &obj, &self.config, &mut diags);
        let entry = Box::new(ServiceEntry { service, diags });
        if self.services.get(&key) != Some(&entry) {
            self.services.insert(key.clone(), entry);
            self.changes.services.insert(key);
        }
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let obj = Obj::of("EndpointSlice", &slice.metadata);
        let key = Key::of(&obj);
        self.seen(Kind::EndpointSlice, &key);
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|name| Key::new(namespace_of(&slice.metadata), name.clone()));
        let mut diags = Vec::new();
        let read = endpoints::read_slice(slice, self.here.as_deref(), &mut diags);
        let entry = Box::new(SliceEntry {
            service,
            slice: read,
            diags,
        });
        if self.slices.get(&key) == Some(&entry) {
            return;
        }
        self.unlink_slice(&key);
        if let Some(service) = &entry.service {
            let names = self.slices_by_service.entry(service.clone()).or_default();
            if let Err(at) = names.binary_search(&key.name) {
                names.insert(at, key.name.clone());
            }
            self.changes.services.insert(service.clone());
        }
        self.slices.insert(key, entry);
    }

    /// Adds or replaces legacy Endpoints.
    pub fn apply_endpoints(&mut self, eps: &Endpoints) {
        let obj = Obj::of("Endpoints", &eps.metadata);
        let key = Key::of(&obj);
        self.seen(Kind::Endpoints, &key);
        let mut diags = Vec::new();
        let mirrored = endpoints::mirrored(eps);
        let slices = if mirrored {
            endpoints::mirror(eps, self.here.as_deref(), &mut diags)
        } else {
            Vec::new()
        };
        let entry = EndpointsEntry {
            mirrored,
            slices,
            diags,
        };
        if self.endpoints.get(&key) != Some(&entry) {
            self.endpoints.insert(key.clone(), entry);
            self.changes.services.insert(key);
        }
    }

    /// Adds or replaces the Node; Nodes with another name are ignored.
    pub fn apply_node(&mut self, node: &Node) {
        if !self.is_our_node(node) {
            return;
        }
        self.seen(
            Kind::Node,
            &Key::new("", node.metadata.name.clone().unwrap_or_default()),
        );
        self.node = Some(node.clone());
        self.changes.context = true;
    }

    /// Adds or replaces a ServiceCIDR.
    pub fn apply_service_cidr(&mut self, cidr: &ServiceCIDR) {
        let name = cidr.metadata.name.clone().unwrap_or_default();
        self.seen(Kind::ServiceCidr, &Key::new("", name.clone()));
        self.service_cidrs.insert(name, cidr.clone());
        self.changes.context = true;
    }

    /// Removes an object; removing one that is absent changes nothing. Namespaced kinds with
    /// an empty namespace mean `default`, as for objects.
    pub fn delete(&mut self, kind: Kind, key: &Key) {
        let key = match kind.namespaced() && key.namespace.is_empty() {
            true => Key::new("default", key.name.clone()),
            false => key.clone(),
        };
        match kind {
            Kind::Service => {
                if self.services.remove(&key).is_some() {
                    self.changes.services.insert(key);
                }
            }
            Kind::EndpointSlice => {
                self.unlink_slice(&key);
                self.slices.remove(&key);
            }
            Kind::Endpoints => {
                if self.endpoints.remove(&key).is_some() {
                    self.changes.services.insert(key);
                }
            }
            Kind::Node => {
                let ours = self.node.as_ref().and_then(|n| n.metadata.name.as_deref());
                if ours == Some(key.name.as_str()) {
                    self.node = None;
                    self.changes.context = true;
                }
            }
            Kind::ServiceCidr => {
                if self.service_cidrs.remove(&key.name).is_some() {
                    self.changes.context = true;
                }
            }
        }
    }

    /// A (re)list of `kind` begins: every object of that kind not applied again before
    /// [`Inputs::end_relist`] is deleted then. This is how deletions missed while a watch was
    /// down (the API server answered 410 Gone and the client listed again) are noticed.
    pub fn begin_relist(&mut self, kind: Kind) {
        self.relisting.insert(kind, BTreeSet::new());
    }

    /// The (re)list of `kind` is complete: deletes what it did not contain. Returns how many
    /// objects were deleted.
    pub fn end_relist(&mut self, kind: Kind) -> usize {
        let Some(seen) = self.relisting.remove(&kind) else {
            return 0;
        };
        let stale: Vec<Key> = match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Endpoints => self.endpoints.keys().cloned().collect(),
            Kind::Node => self
                .node
                .iter()
                .map(|n| Key::new("", n.metadata.name.clone().unwrap_or_default()))
                .collect(),
            Kind::ServiceCidr => self
                .service_cidrs
                .keys()
                .map(|name| Key::new("", name.clone()))
                .collect(),
        };
        let stale: Vec<Key> = stale.into_iter().filter(|k| !seen.contains(k)).collect();
        for key in &stale {
            self.delete(kind, key);
        }
        stale.len()
    }

    fn seen(&mut self, kind: Kind, key: &Key) {
        if let Some(seen) = self.relisting.get_mut(&kind) {
            seen.insert(key.clone());
        }
    }

    fn is_our_node(&self, node: &Node) -> bool {
        let name = self
            .config
            .hostname
            .as_deref()
            .map(|h| h.trim().to_lowercase());
        name.is_some() && node.metadata.name.as_deref() == name.as_deref()
    }

    /// Removes a slice from its Service's list, marking that Service changed.
    fn unlink_slice(&mut self, key: &Key) {
        let Some(service) = self.slices.get(key).and_then(|e| e.service.clone()) else {
            return;
        };
        if let Some(names) = self.slices_by_service.get_mut(&service) {
            names.retain(|name| *name != key.name);
            if names.is_empty() {
                self.slices_by_service.remove(&service);
            }
        }
        self.changes.services.insert(service);
    }

    /// What changed since the last call, and resets it.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// The node-wide part of the graph (node, NodePort addresses, ServiceCIDRs) with no
    /// Services, and the problems found reading it.
    pub fn context(&self) -> (Graph, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let node = node::node_info(self.node.as_slice(), &self.config, &mut diags);
        let nodeport_addresses = node::nodeport_addresses(&node, &self.config, &mut diags);
        let local_detectors = detect::local_detectors(&node, &self.config, &mut diags);
        let service_cidrs = node::service_cidrs(self.service_cidrs.values(), &mut diags);
        let graph = Graph {
            node,
            nodeport_addresses,
            service_cidrs,
            local_detectors,
            services: Vec::new(),
        };
        (graph, diags)
    }

    /// One Service assembled for the node described by `context` (from [`Inputs::context`]),
    /// with the problems of its object and of the slices it consumed. `None` when the Service
    /// is absent, not ours, or has nothing to program.
    pub fn service(&self, key: &Key, context: &Graph) -> (Option<Service>, Vec<Diagnostic>) {
        let Some(entry) = self.services.get(key) else {
            return (None, Vec::new());
        };
        let mut diags = entry.diags.clone();
        let Some(svc) = &entry.service else {
            return (None, diags);
        };
        let mut slices: Vec<&Slice> = Vec::new();
        for name in self.slices_by_service.get(key).into_iter().flatten() {
            let slice = &self.slices[&Key::new(key.namespace.clone(), name.clone())];
            diags.extend(slice.diags.iter().cloned());
            slices.extend(slice.slice.as_ref());
        }
        if svc.selectorless {
            if let Some(eps) = self.endpoints.get(key).filter(|e| e.mirrored) {
                diags.extend(eps.diags.iter().cloned());
                slices.extend(eps.slices.iter());
            }
        }
        (service::assemble(key, svc, &slices, &context.node), diags)
    }

    /// The keys of every Service in the store, in order.
    pub fn service_keys(&self) -> impl Iterator<Item = &Key> {
        self.services.keys()
    }

    /// The whole graph: the context plus every Service assembled, with all diagnostics sorted
    /// and deduplicated.
    pub fn graph(&self) -> (Graph, Vec<Diagnostic>) {
        let (mut graph, mut diags) = self.context();
        diags.extend(self.input_diags.iter().cloned());
        for key in self.services.keys() {
            let (service, service_diags) = self.service(key, &graph);
            diags.extend(service_diags);
            graph.services.extend(service);
        }
        diags.extend(conflicts::check(&graph));
        diags.sort();
        diags.dedup();
        (graph, diags)
    }

    /// Number of objects held, by kind (for metrics and logs).
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        BTreeMap::from([
            (Kind::Service, self.services.len()),
            (Kind::EndpointSlice, self.slices.len()),
            (Kind::Endpoints, self.endpoints.len()),
            (Kind::Node, usize::from(self.node.is_some())),
            (Kind::ServiceCidr, self.service_cidrs.len()),
        ])
    }
}
