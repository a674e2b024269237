//! The input as received: Kubernetes objects parsed with k8s-openapi types (TODO: loader).

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

/// Every object kube-nft reads, exactly as the API server (or a file) gave it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `v1 Service`.
    pub services: Vec<Service>,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// `v1 Endpoints` (legacy; mirrored into slices by `normalize`).
    pub endpoints: Vec<Endpoints>,
    /// `v1 Node`.
    pub nodes: Vec<Node>,
    /// `networking.k8s.io/v1 ServiceCIDR`.
    pub service_cidrs: Vec<ServiceCIDR>,
}
