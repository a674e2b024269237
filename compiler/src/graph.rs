//! The normalized graph: what `normalize` makes of a [`crate::model::Snapshot`] for one node and
//! what `lower` consumes. Every Kubernetes subtlety (field defaults, mirroring of legacy
//! Endpoints, readiness, terminating fallback, topology hints, node locality, address
//! validation) has been resolved here; `lower` only decides the nftables layout. Everything is
//! sorted and deduplicated, so lowering is deterministic without further sorting.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::ir::{Family, L4Proto};

/// The cluster as seen from one node, ready to lower.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    /// This node.
    pub node: NodeInfo,
    /// NodePort addresses after resolving `primary` and dropping loopback: a zero-length prefix
    /// (`0.0.0.0/0`, `::/0`) means every local address of that family (what kube-proxy does for
    /// a family `--nodeport-addresses` does not name), and a family with no prefix here serves
    /// no NodePort at all.
    pub nodeport_addresses: Vec<IpNet>,
    /// Prefixes of known ServiceCIDR objects (traffic to unallocated IPs in them is dropped).
    pub service_cidrs: Vec<IpNet>,
    /// The local-traffic detector of each family that has one, in family order. A family
    /// without one has no detector, which kube-proxy handles by never masquerading ClusterIP
    /// traffic for being "not from a pod" and by not short-circuiting pods to
    /// `externalTrafficPolicy: Local` Services.
    pub local_detectors: Vec<(Family, LocalDetector)>,
    /// Services with at least one port to program, sorted by (namespace, name).
    pub services: Vec<Service>,
}

/// What we know about the node we program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name (`--hostname-override`), if known.
    pub name: Option<String>,
    /// Value of the node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// Primary node IPs, at most one per family (from `--node-ip` or the Node's InternalIPs).
    pub ips: Vec<IpAddr>,
    /// Every address the node is known to own, sorted: the primary IPs and every InternalIP
    /// and ExternalIP of the Node object. (`trace` counts them as local; the kernel's `fib`
    /// knows the real list.)
    pub addresses: Vec<IpAddr>,
    /// The Node's `spec.podCIDRs` (or the older `spec.podCIDR`), in the order written.
    pub pod_cidrs: Vec<IpNet>,
}

impl Graph {
    /// The local-traffic detector of a family, if it has one.
    pub fn local_detector(&self, family: Family) -> Option<&LocalDetector> {
        self.local_detectors
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, d)| d)
    }
}

/// kube-proxy's local-traffic detector in one family (`--detect-local-mode`): what makes a
/// packet "from a pod on this node", one variant per mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalDetector {
    /// `ClusterCIDR`: the source is inside the family's first `--cluster-cidr`.
    ClusterCidr(IpNet),
    /// `NodeCIDR`: the source is inside the family's first pod CIDR of this Node.
    NodeCidr(IpNet),
    /// `BridgeInterface`: the packet arrives on this interface (`iifname "cbr0"`).
    Interface(String),
    /// `InterfaceNamePrefix`: the packet arrives on an interface whose name starts with this
    /// (`iifname "veth*"`).
    InterfacePrefix(String),
}

impl LocalDetector {
    /// Whether a packet that arrives on interface `name` counts as a pod's, for the interface
    /// detectors (`None` for the address ones).
    pub fn matches_interface(&self, name: &str) -> Option<bool> {
        match self {
            LocalDetector::Interface(iface) => Some(name == iface),
            LocalDetector::InterfacePrefix(prefix) => Some(name.starts_with(prefix.as_str())),
            LocalDetector::ClusterCidr(_) | LocalDetector::NodeCidr(_) => None,
        }
    }
}

impl NodeInfo {
    /// The primary node IP of a family.
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }
}

/// How a Service spreads new connections over its endpoints
/// (annotation `kube-nft.io/scheduler`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheduler {
    /// Uniform random (`numgen random`), the default.
    #[default]
    Random,
    /// Round robin (`numgen inc`).
    RoundRobin,
    /// Hash of the client address (`jhash ip saddr`): a client always lands on the same
    /// endpoint while the endpoint list is unchanged.
    SourceHash,
    /// Consistent hashing of the client address into a Maglev table (`compiler::maglev`): a
    /// client keeps its endpoint while that endpoint stays, and removing one of K endpoints
    /// moves about 1/K of the clients.
    Maglev,
}

/// A Service that kube-nft programs (not headless, not ExternalName, selected by the proxy
/// name), with the addresses of every family it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Load-balancing scheduler.
    pub scheduler: Scheduler,
    /// `sessionAffinity: ClientIP` timeout in seconds, or `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` (only set for externally reachable services).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// Valid ClusterIPs, at most one per family, sorted.
    pub cluster_ips: Vec<IpAddr>,
    /// Valid `spec.externalIPs`, sorted and deduplicated.
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer ingress IPs with `ipMode` unset or `VIP`, sorted and deduplicated.
    pub lb_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, parsed (whitespace trimmed), sorted and deduplicated.
    pub source_ranges: Vec<IpNet>,
    /// Service ports sorted by (protocol, port).
    pub ports: Vec<ServicePort>,
    /// `spec.healthCheckNodePort`, set only for a LoadBalancer with `externalTrafficPolicy:
    /// Local` (kube-proxy's `NeedsHealthCheck`). No rule depends on it: the daemon serves it
    /// over HTTP for load balancers to probe.
    pub health_check_node_port: Option<u16>,
    /// The addresses of this node's *ready* endpoints, over every slice port of both families,
    /// sorted and distinct; filled only when there is a health-check NodePort, whose answer
    /// counts them per family (kube-proxy's `LocalReadyEndpoints`: serving-but-terminating
    /// endpoints do not count, so load balancers drain a node whose pods are terminating).
    pub local_ready_endpoints: Vec<IpAddr>,
}

/// One port of a Service with its categorized endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (may be empty).
    pub name: String,
    /// Protocol.
    pub proto: L4Proto,
    /// Service port.
    pub port: u16,
    /// NodePort, when the Service is NodePort/LoadBalancer and one is allocated.
    pub node_port: Option<u16>,
    /// Endpoints for Cluster policy: ready endpoints (topology-filtered when hints apply to this
    /// node), else serving-and-terminating ones. Both families, sorted by (address, port).
    /// Shared: the daemon's slot records of a single-family port hold the same list.
    pub cluster: Arc<[Backend]>,
    /// Endpoints on this node: ready ones, else serving-and-terminating ones. Sorted.
    pub local: Arc<[Backend]>,
    /// The addresses in `cluster` or `local` of endpoints not known to run on another node (on
    /// this node, or without a `nodeName`), sorted and distinct: the endpoints whose hairpin
    /// pair is needed whatever the Service (see `lower`'s hairpin pairs). Usually a small part
    /// of the list: a node runs few of the cluster's endpoints.
    pub near: Box<[IpAddr]>,
}

/// One endpoint address and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Endpoint IP.
    pub addr: IpAddr,
    /// Target port.
    pub port: u16,
}
