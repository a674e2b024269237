//! `kube-nft run --metrics-per-service`: per Service port and backend, the new connections,
//! packets and bytes the packet path counted, appended to each `/metrics` scrape. Off by
//! default, because the series grow with Services × backends. Each scrape reads the kernel's
//! per-backend counters ([`crate::counters::read`], a netlink dump, on a blocking thread so the
//! async runtime never waits on the kernel; the daemon runs in the node's network namespace,
//! which is the one the dump reads) and gives each counter to the Service ports of the index the
//! daemon published after its last committed sync ([`BackendIndex::attribute`]: the frontend
//! address and the backend decide; a node address is a NodePort's). The counters have no
//! frontend port, so a backend port that two ports of one Service address send to counts under
//! both, and a NodePort counter under every NodePort Service with that backend. Counts of
//! several frontend addresses of one Service port (ClusterIP, externalIP, node addresses) are
//! summed. A kernel counter lives until an hour after its last packet, so a series can go back
//! down when one of its frontends goes quiet (Prometheus reads that as a counter reset), and
//! disappears with its last counter. A failed read leaves the per-Service series out of that
//! scrape, logs a warning and counts `kube_nft_service_metrics_read_failures_total`; the rest
//! of the scrape is served. Series are in a fixed order: namespace, Service, port name,
//! protocol (TCP, UDP, SCTP), backend address.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use kube_nft_compiler::attribution::{BackendIndex, PortLabel};
use kube_nft_compiler::ir::L4Proto;
use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::counters::{self, Counters, Counts};
use crate::error_chain;

/// What reads the counters: [`counters::read`] in the daemon.
type Reader = dyn Fn() -> Result<Counters, counters::Error> + Send + Sync;

/// The per-Service metrics of a daemon: the index its sync loop publishes, how the counters are
/// read, and the read failures. Cloning is cheap; clones share all three.
#[derive(Clone)]
pub struct PerService {
    index: Arc<RwLock<Arc<BackendIndex>>>,
    read: Arc<Reader>,
    read_failures: Counter,
    /// The last read failed (a failing read warns once, then at debug level).
    failing: Arc<AtomicBool>,
}

impl fmt::Debug for PerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerService")
            .field("read_failures", &self.read_failures.get())
            .finish_non_exhaustive()
    }
}

impl Default for PerService {
    fn default() -> PerService {
        PerService::new()
    }
}

impl PerService {
    /// Reads the counters of the calling process's network namespace, with an empty index
    /// until the first [`PerService::publish`].
    pub fn new() -> PerService {
        PerService::with_reader(counters::read)
    }

    /// Reads the counters with `read` (a fixed read in tests).
    pub fn with_reader(
        read: impl Fn() -> Result<Counters, counters::Error> + Send + Sync + 'static,
    ) -> PerService {
        PerService {
            index: Arc::new(RwLock::new(Arc::new(BackendIndex::default()))),
            read: Arc::new(read),
            read_failures: Counter::default(),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Replaces the index scrapes attribute counters with (after a committed sync).
    pub fn publish(&self, index: BackendIndex) {
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
    }

    /// The index as last published.
    pub fn index(&self) -> Arc<BackendIndex> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads that failed so far.
    pub fn read_failures(&self) -> u64 {
        self.read_failures.get()
    }

    /// The per-Service part of a scrape: reads the counters on a blocking thread and encodes
    /// them against the current index. A failed read is counted and leaves the series out.
    pub async fn scrape(&self) -> Result<String, fmt::Error> {
        let read = self.read.clone();
        let counters = match tokio::task::spawn_blocking(move || read()).await {
            Ok(Ok(counters)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the per-backend counters are readable again");
                }
                Some(counters)
            }
            Ok(Err(err)) => {
                self.failed(&error_chain(&err));
                None
            }
            Err(err) => {
                self.failed(&format!("the read panicked: {err}"));
                None
            }
        };
        encode(&self.index(), counters.as_ref(), &self.read_failures)
    }

    fn failed(&self, error: &str) {
        self.read_failures.inc();
        if self.failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(error, "reading the per-backend counters failed again");
        } else {
            tracing::warn!(
                error,
                "reading the per-backend counters failed; per-Service metrics are left out of \
                 the scrape"
            );
        }
    }
}

/// The `protocol` label: the Kubernetes `v1.Protocol` strings.
pub fn protocol(proto: L4Proto) -> &'static str {
    match proto {
        L4Proto::Tcp => "TCP",
        L4Proto::Udp => "UDP",
        L4Proto::Sctp => "SCTP",
    }
}

/// The counters of one read summed per Service port and backend (every frontend address of the
/// port), in exposition order; counters that belong to no Service port are left out.
pub fn series<'a>(
    index: &'a BackendIndex,
    counters: &Counters,
) -> BTreeMap<(&'a PortLabel, SocketAddr), Counts> {
    let mut out: BTreeMap<(&PortLabel, SocketAddr), Counts> = BTreeMap::new();
    for (pair, counts) in &counters.pairs {
        let backend = SocketAddr::new(pair.backend, pair.port);
        for port in index.attribute(pair.frontend, pair.proto, backend) {
            let sum = out.entry((port, backend)).or_default();
            sum.connections = sum.connections.saturating_add(counts.connections);
            sum.packets = sum.packets.saturating_add(counts.packets);
            sum.bytes = sum.bytes.saturating_add(counts.bytes);
        }
    }
    out
}

/// `namespace`, `service`, `port_name`, `protocol`, `backend` (`IP:PORT`, `[IPv6]:PORT`).
type Labels = [(&'static str, String); 5];

/// One counter family: a value per label set, in order.
#[derive(Debug)]
struct Samples {
    labels: Arc<[Labels]>,
    values: Vec<u64>,
}

impl EncodeMetric for Samples {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (labels, value) in self.labels.iter().zip(&self.values) {
            encoder
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, u64, u64>(value, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The per-Service families in the Prometheus text format: the three counters per Service port
/// and backend of `counters` (none when the read failed) and the read failures.
pub fn encode(
    index: &BackendIndex,
    counters: Option<&Counters>,
    read_failures: &Counter,
) -> Result<String, fmt::Error> {
    let series = counters.map(|c| series(index, c)).unwrap_or_default();
    let labels: Arc<[Labels]> = series
        .keys()
        .map(|(port, backend)| {
            [
                ("namespace", port.namespace.clone()),
                ("service", port.service.clone()),
                ("port_name", port.port_name.clone()),
                ("protocol", protocol(port.proto).to_owned()),
                ("backend", backend.to_string()),
            ]
        })
        .collect();
    let samples = |value: fn(&Counts) -> u64| Samples {
        labels: labels.clone(),
        values: series.values().map(value).collect(),
    };
    let mut registry = Registry::default();
    // Counters are registered without `_total`: the encoder appends it.
    registry.register(
        "kube_nft_service_backend_new_connections",
        "New connections per Service port and backend, from the packet path's per-backend \
         counters (--metrics-per-service); a backend port two ports of one address send to \
         counts under both",
        samples(|c| c.connections),
    );
    registry.register(
        "kube_nft_service_backend_packets",
        "Packets both ways per Service port and backend (--metrics-per-service)",
        samples(|c| c.packets),
    );
    registry.register(
        "kube_nft_service_backend_bytes",
        "Bytes both ways, IP headers included, per Service port and backend \
         (--metrics-per-service)",
        samples(|c| c.bytes),
    );
    registry.register(
        "kube_nft_service_metrics_read_failures",
        "Scrapes whose read of the per-backend counters failed (their per-Service series were \
         left out)",
        read_failures.clone(),
    );
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use kube_nft_compiler::graph::{Backend, Service, ServicePort};
    use kube_nft_compiler::ir::Family;

    use super::*;
    use crate::counters::Pair;
    use crate::netlink::socket;
    use crate::serve::Metrics;

    fn service(name: &str, addresses: &[&str], ports: Vec<ServicePort>) -> Service {
        Service {
            namespace: "shop".into(),
            name: name.into(),
            scheduler: Default::default(),
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            cluster_ips: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            external_ips: vec![],
            lb_ips: vec![],
            source_ranges: vec![],
            ports,
            health_check_node_port: None,
            local_ready_endpoints: vec![],
        }
    }

    fn port(name: &str, proto: L4Proto, node_port: Option<u16>, backends: &[&str]) -> ServicePort {
        let cluster: Vec<Backend> = backends
            .iter()
            .map(|b| {
                let b: SocketAddr = b.parse().unwrap();
                Backend {
                    addr: b.ip(),
                    port: b.port(),
                }
            })
            .collect();
        ServicePort {
            name: name.into(),
            proto,
            port: 80,
            node_port,
            cluster: cluster.into(),
            local: Default::default(),
            near: Default::default(),
        }
    }

    /// `shop/web` (10.96.0.10, fd00:96::10): `http` TCP with a NodePort on 10.0.1.11:8080,
    /// 10.0.1.12:8080 and [fd00:10::11]:8080, `alt` TCP on 10.0.1.11:8080 too, and unnamed UDP
    /// on 10.0.1.11:5353. `shop/db` (10.96.0.20): `sql` TCP on 10.0.2.5:5432. NodePorts on
    /// 192.168.0.2.
    fn index() -> BackendIndex {
        let web = service(
            "web",
            &["10.96.0.10", "fd00:96::10"],
            vec![
                port(
                    "http",
                    L4Proto::Tcp,
                    Some(30080),
                    &["10.0.1.11:8080", "10.0.1.12:8080", "[fd00:10::11]:8080"],
                ),
                port("alt", L4Proto::Tcp, None, &["10.0.1.11:8080"]),
                port("", L4Proto::Udp, None, &["10.0.1.11:5353"]),
            ],
        );
        let db = service(
            "db",
            &["10.96.0.20"],
            vec![port("sql", L4Proto::Tcp, None, &["10.0.2.5:5432"])],
        );
        BackendIndex::from_services(&["192.168.0.2/32".parse().unwrap()], [&web, &db])
    }

    fn counters(pairs: &[(&str, &str, L4Proto, u64, u64, u64)]) -> Counters {
        let pairs: HashMap<Pair, Counts> = pairs
            .iter()
            .map(|&(frontend, backend, proto, connections, packets, bytes)| {
                let backend: SocketAddr = backend.parse().unwrap();
                let pair = Pair {
                    frontend: frontend.parse().unwrap(),
                    backend: backend.ip(),
                    proto,
                    port: backend.port(),
                };
                let counts = Counts {
                    connections,
                    packets,
                    bytes,
                };
                (pair, counts)
            })
            .collect();
        Counters {
            at: Instant::now(),
            pairs,
        }
    }

    fn fixed() -> Counters {
        counters(&[
            // ClusterIP and NodePort traffic to one backend: one series each for http and
            // alt (the ClusterIP counter belongs to both; the NodePort one to http only).
            ("10.96.0.10", "10.0.1.11:8080", L4Proto::Tcp, 3, 30, 3000),
            ("192.168.0.2", "10.0.1.11:8080", L4Proto::Tcp, 2, 20, 2000),
            ("10.96.0.10", "10.0.1.12:8080", L4Proto::Tcp, 1, 10, 1000),
            (
                "fd00:96::10",
                "[fd00:10::11]:8080",
                L4Proto::Tcp,
                4,
                40,
                4000,
            ),
            ("10.96.0.10", "10.0.1.11:5353", L4Proto::Udp, 5, 50, 500),
            ("10.96.0.20", "10.0.2.5:5432", L4Proto::Tcp, 6, 60, 6000),
            // A backend that left, and a Service address that does not send there.
            ("10.96.0.10", "10.0.1.99:8080", L4Proto::Tcp, 7, 70, 7000),
            ("10.96.0.20", "10.0.1.11:8080", L4Proto::Tcp, 8, 80, 8000),
        ])
    }

    const FIXED: &str = "\
# HELP kube_nft_service_backend_new_connections_total New connections per Service port and backend, from the packet path's per-backend counters (--metrics-per-service); a backend port two ports of one address send to counts under both.
# TYPE kube_nft_service_backend_new_connections_total counter
kube_nft_service_backend_new_connections_total{namespace=\"shop\",service=\"db\",port_name=\"sql\",protocol=\"TCP\",backend=\"10.0.2.5:5432\"} 6
kube_nft_service_backend_new_connections_total{namespace=\"shop\",service=\"web\",port_name=\"\",protocol=\"UDP\",backend=\"10.0.1.11:5353\"} 5
kube_nft_service_backend_new_connections_total{namespace=\"shop\",service=\"web\",port_name=\"alt\",protocol=\"TCP\",backend=\"10.0.1.11:8080\"} 3
kube_nft_service_backend_new_connections_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"10.0.1.11:8080\"} 5
kube_nft_service_backend_new_connections_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"10.0.1.12:8080\"} 1
kube_nft_service_backend_new_connections_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"[fd00:10::11]:8080\"} 4
# HELP kube_nft_service_backend_packets_total Packets both ways per Service port and backend (--metrics-per-service).
# TYPE kube_nft_service_backend_packets_total counter
kube_nft_service_backend_packets_total{namespace=\"shop\",service=\"db\",port_name=\"sql\",protocol=\"TCP\",backend=\"10.0.2.5:5432\"} 60
kube_nft_service_backend_packets_total{namespace=\"shop\",service=\"web\",port_name=\"\",protocol=\"UDP\",backend=\"10.0.1.11:5353\"} 50
kube_nft_service_backend_packets_total{namespace=\"shop\",service=\"web\",port_name=\"alt\",protocol=\"TCP\",backend=\"10.0.1.11:8080\"} 30
kube_nft_service_backend_packets_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"10.0.1.11:8080\"} 50
kube_nft_service_backend_packets_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"10.0.1.12:8080\"} 10
kube_nft_service_backend_packets_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"[fd00:10::11]:8080\"} 40
# HELP kube_nft_service_backend_bytes_total Bytes both ways, IP headers included, per Service port and backend (--metrics-per-service).
# TYPE kube_nft_service_backend_bytes_total counter
kube_nft_service_backend_bytes_total{namespace=\"shop\",service=\"db\",port_name=\"sql\",protocol=\"TCP\",backend=\"10.0.2.5:5432\"} 6000
kube_nft_service_backend_bytes_total{namespace=\"shop\",service=\"web\",port_name=\"\",protocol=\"UDP\",backend=\"10.0.1.11:5353\"} 500
kube_nft_service_backend_bytes_total{namespace=\"shop\",service=\"web\",port_name=\"alt\",protocol=\"TCP\",backend=\"10.0.1.11:8080\"} 3000
kube_nft_service_backend_bytes_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"10.0.1.11:8080\"} 5000
kube_nft_service_backend_bytes_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"10.0.1.12:8080\"} 1000
kube_nft_service_backend_bytes_total{namespace=\"shop\",service=\"web\",port_name=\"http\",protocol=\"TCP\",backend=\"[fd00:10::11]:8080\"} 4000
# HELP kube_nft_service_metrics_read_failures_total Scrapes whose read of the per-backend counters failed (their per-Service series were left out).
# TYPE kube_nft_service_metrics_read_failures_total counter
kube_nft_service_metrics_read_failures_total 0
";

    #[test]
    fn the_exposition_of_a_fixed_read_is_exact() {
        let text = encode(&index(), Some(&fixed()), &Counter::default()).unwrap();
        assert_eq!(text, FIXED);
    }

    #[test]
    fn a_failed_read_exposes_only_the_failure_count() {
        let failures = Counter::default();
        failures.inc();
        let text = encode(&index(), None, &failures).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, ["kube_nft_service_metrics_read_failures_total 1"]);
    }

    fn failed_read() -> Result<Counters, counters::Error> {
        Err(counters::Error::Netlink {
            family: Family::Ip,
            set: "backend-connections",
            source: socket::Error::Open(std::io::Error::other("no netlink here")),
        })
    }

    #[tokio::test]
    async fn the_scrape_appends_the_per_service_series_only_when_enabled() {
        let off = Metrics::new(&[Family::Ip, Family::Ip6], "v");
        let text = off.exposition().await.unwrap();
        assert_eq!(text, off.encode().unwrap());
        assert!(!text.contains("kube_nft_service_"), "{text}");

        let per_service = PerService::with_reader(|| Ok(fixed()));
        let on =
            Metrics::new(&[Family::Ip, Family::Ip6], "v").with_per_service(per_service.clone());
        // Nothing published yet: nothing attributed.
        let text = on.exposition().await.unwrap();
        assert!(
            !text.contains("kube_nft_service_backend_bytes_total{"),
            "{text}"
        );
        per_service.publish(index());
        let text = on.exposition().await.unwrap();
        let base = on.encode().unwrap();
        assert_eq!(text.strip_prefix(base.as_str()), Some(FIXED));
    }

    #[tokio::test]
    async fn a_failed_read_is_counted_and_the_rest_is_served() {
        let per_service = PerService::with_reader(failed_read);
        per_service.publish(index());
        let metrics = Metrics::new(&[Family::Ip], "v").with_per_service(per_service.clone());
        for _ in 0..2 {
            let text = metrics.exposition().await.unwrap();
            assert!(
                text.contains("kube_nft_build_info{version=\"v\"} 1"),
                "{text}"
            );
            assert!(
                !text.contains("kube_nft_service_backend_packets_total{"),
                "{text}"
            );
        }
        assert_eq!(per_service.read_failures(), 2);
        let text = metrics.exposition().await.unwrap();
        assert!(
            text.contains("\nkube_nft_service_metrics_read_failures_total 3\n"),
            "{text}"
        );
    }
}
