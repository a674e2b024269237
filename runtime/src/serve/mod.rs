//! The node daemon's HTTP side, shaped like kube-proxy's so that probes, load balancers,
//! dashboards and `curl localhost:10249/proxyMode` keep working when kube-nft replaces it:
//! [`health`] is kube-proxy's `ProxyHealthServer` state machine (pure, time passed in),
//! [`metrics`] the Prometheus registry with kube-proxy's metric names plus kube-nft's own,
//! [`http`] the two servers (`/healthz` and `/livez` on the healthz port, `/metrics`,
//! `/healthz`, `/proxyMode` and `/configz` on the metrics port) over listeners the caller
//! binds, [`service_health`] the health-check NodePorts of `externalTrafficPolicy: Local`
//! LoadBalancers, [`per_service`] the opt-in per-Service backend series of `/metrics`
//! (`--metrics-per-service`), and [`addr`] the `--healthz-bind-address` /
//! `--metrics-bind-address` flag forms.

pub mod addr;
pub mod health;
pub mod http;
pub mod metrics;
pub mod per_service;
pub mod service_health;

pub use addr::{parse_bind_address, BindAddressError};
pub use health::{node_eligible, ProxyHealth, Status, Timestamp};
pub use http::{serve_healthz, serve_metrics, ServeError};
pub use metrics::{Metrics, MetricsError};
pub use per_service::PerService;
pub use service_health::ServiceHealth;
