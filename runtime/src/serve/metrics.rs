//! The daemon's Prometheus metrics: kube-proxy's (subsystem `kubeproxy`, names, types, label
//! sets and buckets as in `pkg/proxy/metrics/metrics.go` of v1.34, so existing dashboards and
//! the KEP-3866 rollback alert on `kubeproxy_sync_proxy_rules_nftables_sync_failures_total`
//! keep working) plus kube-nft's own (`kube_nft_*`). [`Metrics`] holds the registry and a typed
//! handle per metric; every label set is created up front and encoded in a fixed order, so a
//! scrape is deterministic and every series exists (at 0) before its first event. The
//! exposition is the Prometheus text format 0.0.4, which is what kube-proxy serves (its handler
//! does not negotiate OpenMetrics) and what every scraper reads; counters are registered without
//! their `_total` suffix because the encoder appends it, so the exposed names are kube-proxy's.
//! The one exception to fixed label sets is opt-in: with `--metrics-per-service`,
//! [`Metrics::exposition`] appends the series of [`super::per_service`], one per Service port
//! and backend with traffic, read from the kernel at scrape time.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube_nft_compiler::diag::Diagnostic;
use kube_nft_compiler::ir::Family;
use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::per_service::PerService;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A gauge holding seconds (timestamps).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// The `ip_family` label value: Kubernetes' `v1.IPFamily` strings.
pub fn ip_family(family: Family) -> &'static str {
    match family {
        Family::Ip => "IPv4",
        Family::Ip6 => "IPv6",
    }
}

/// A metric's label values, as `(name, value)` pairs in the order they are exposed.
pub trait LabelKey: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    /// The label pairs of this key.
    fn labels(self) -> Vec<(&'static str, &'static str)>;
}

impl LabelKey for Family {
    fn labels(self) -> Vec<(&'static str, &'static str)> {
        vec![("ip_family", ip_family(self))]
    }
}

/// `traffic_policy` of `kubeproxy_sync_proxy_rules_no_local_endpoints_total`: which Local
/// policy has no local endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrafficPolicy {
    /// `externalTrafficPolicy: Local`.
    External,
    /// `internalTrafficPolicy: Local`.
    Internal,
}

impl TrafficPolicy {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            TrafficPolicy::External => "external",
            TrafficPolicy::Internal => "internal",
        }
    }
}

impl LabelKey for (Family, TrafficPolicy) {
    fn labels(self) -> Vec<(&'static str, &'static str)> {
        // Go's client sorts label names: ip_family before traffic_policy.
        vec![
            ("ip_family", ip_family(self.0)),
            ("traffic_policy", self.1.label()),
        ]
    }
}

/// The `code` label of the probe counters: the two statuses the health endpoints answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeCode {
    /// 200.
    Ok,
    /// 503.
    Unavailable,
}

impl ProbeCode {
    /// The code for an HTTP status the health endpoints answer (anything but 200 is 503).
    pub fn of(status: u16) -> ProbeCode {
        if status == 200 {
            ProbeCode::Ok
        } else {
            ProbeCode::Unavailable
        }
    }
}

impl LabelKey for ProbeCode {
    fn labels(self) -> Vec<(&'static str, &'static str)> {
        let code = match self {
            ProbeCode::Ok => "200",
            ProbeCode::Unavailable => "503",
        };
        vec![("code", code)]
    }
}

/// How a sync round reconciled the kernel: `kind` of `kube_nft_syncs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncKind {
    /// Planned against a read-back of the kernel (startup, after a failure, a repair).
    Full,
    /// Planned against the last committed ruleset, without reading the kernel back.
    Partial,
    /// The kernel was read back to check it and already matched; nothing was sent.
    Verify,
}

impl LabelKey for SyncKind {
    fn labels(self) -> Vec<(&'static str, &'static str)> {
        let kind = match self {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
            SyncKind::Verify => "verify",
        };
        vec![("kind", kind)]
    }
}

/// What found the drift a repair fixed: `reason` of `kube_nft_drift_repairs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriftReason {
    /// The periodic read-back.
    Periodic,
    /// The nf_tables event monitor saw someone else change our tables.
    Monitor,
}

impl LabelKey for DriftReason {
    fn labels(self) -> Vec<(&'static str, &'static str)> {
        let reason = match self {
            DriftReason::Periodic => "periodic",
            DriftReason::Monitor => "monitor",
        };
        vec![("reason", reason)]
    }
}

/// A watched API resource: `resource` of the watch metrics, as the API's plural names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WatchResource {
    /// `endpointslices`.
    EndpointSlices,
    /// `nodes`.
    Nodes,
    /// `services`.
    Services,
}

impl LabelKey for WatchResource {
    fn labels(self) -> Vec<(&'static str, &'static str)> {
        let resource = match self {
            WatchResource::EndpointSlices => "endpointslices",
            WatchResource::Nodes => "nodes",
            WatchResource::Services => "services",
        };
        vec![("resource", resource)]
    }
}

/// A metric family whose label sets are fixed when it is built and encoded in that order
/// (prometheus-client's `Family` is a hash map, so its scrape order varies).
#[derive(Clone, Debug)]
pub struct Labelled<K, M> {
    children: Arc<[(K, M)]>,
}

impl<K: LabelKey, M> Labelled<K, M> {
    fn new(keys: impl IntoIterator<Item = K>, make: impl Fn() -> M) -> Labelled<K, M> {
        Labelled {
            children: keys.into_iter().map(|k| (k, make())).collect(),
        }
    }

    /// The metric for `key`, or `None` if this family has no such label set (an IP family
    /// the daemon does not run).
    pub fn get(&self, key: K) -> Option<&M> {
        self.children
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m)
    }

    /// Every label set and its metric, in exposition order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &M)> {
        self.children.iter().map(|(k, m)| (*k, m))
    }
}

impl<K, M> EncodeMetric for Labelled<K, M>
where
    K: LabelKey,
    M: EncodeMetric + TypedMetric + fmt::Debug + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (key, metric) in self.children.iter() {
            let labels = key.labels();
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// A gauge per object kind whose kinds are open-ended (the compiler's `Diagnostic::kind`),
/// encoded in sorted order. Kinds once seen stay, at 0, so an alert on `> 0` resolves.
#[derive(Clone, Debug)]
pub struct GaugeByKind {
    children: Arc<RwLock<BTreeMap<String, Gauge>>>,
}

impl GaugeByKind {
    fn new(kinds: &[&str]) -> GaugeByKind {
        let children = kinds
            .iter()
            .map(|k| ((*k).to_owned(), Gauge::default()))
            .collect();
        GaugeByKind {
            children: Arc::new(RwLock::new(children)),
        }
    }

    /// Sets every kind's value: those in `values` to theirs, every other kind to 0.
    pub fn set_all(&self, values: &BTreeMap<String, i64>) {
        let mut children = self
            .children
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, gauge) in children.iter() {
            gauge.set(values.get(kind).copied().unwrap_or(0));
        }
        for (kind, value) in values {
            children.entry(kind.clone()).or_default().set(*value);
        }
    }

    /// The value for `kind` (0 if never set).
    pub fn get(&self, kind: &str) -> i64 {
        let children = self
            .children
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        children.get(kind).map_or(0, Gauge::get)
    }
}

impl EncodeMetric for GaugeByKind {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let children = self
            .children
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, gauge) in children.iter() {
            let labels = [("kind", kind.as_str())];
            gauge.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// `kube_nft_build_info{version}`: a gauge of 1, like `kubernetes_build_info`.
#[derive(Debug)]
struct BuildInfo {
    version: String,
}

impl EncodeMetric for BuildInfo {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let labels = [("version", self.version.as_str())];
        encoder.encode_family(&labels)?.encode_gauge(&1i64)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Encoding the registry failed (a formatter error; not expected with a `String`).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The text encoder failed.
    #[error("encode metrics")]
    Encode(#[from] fmt::Error),
}

/// The kinds `kube_nft_objects_with_diagnostics` exposes from the start.
const DIAGNOSTIC_KINDS: &[&str] = &[
    "EndpointSlice",
    "Endpoints",
    "Node",
    "Service",
    "ServiceCIDR",
];

/// `prometheus.ExponentialBuckets(0.001, 2, 15)`: 1 ms to 16.384 s, kube-proxy's buckets for
/// the sync durations.
fn sync_buckets() -> Vec<f64> {
    (0..15).map(|i| 0.001 * f64::from(1u32 << i)).collect()
}

/// kube-proxy's `network_programming_duration_seconds` buckets: `metrics.MergeBuckets` of
/// 0.25 s and 0.5 s, 1–59 s every 1 s, 60–115 s every 5 s and 120–300 s every 30 s. `MergeBuckets`
/// starts from a one-element slice, so kube-proxy also exposes an `le="0"` bucket; it is kept
/// so that the series match kube-proxy's exactly.
fn network_programming_buckets() -> Vec<f64> {
    let mut buckets = vec![0.0, 0.25, 0.5];
    buckets.extend((1..=59).map(f64::from));
    buckets.extend((0..12).map(|i| f64::from(60 + 5 * i)));
    buckets.extend((0..7).map(|i| f64::from(120 + 30 * i)));
    buckets
}

/// Operations per committed transaction: 1 to 4^10 (≈1M, a 50k-Service cold start).
fn operation_buckets() -> Vec<f64> {
    (0..11).map(|i| f64::from(1u32 << (2 * i))).collect()
}

/// Bytes per committed transaction: 256 B to 256 × 4^10 (256 MiB).
fn byte_buckets() -> Vec<f64> {
    (0..11)
        .map(|i| 256.0 * f64::from(1u32 << (2 * i)))
        .collect()
}

/// Every metric the daemon records, and the registry that exposes them. Cloning is cheap and
/// every clone records into the same metrics. Per-family metrics have a label set per IP
/// family given to [`Metrics::new`]; the recording helpers record the same value for each,
/// since kube-nft programs both families in one transaction (kube-proxy runs one proxier per
/// family, each recording its own).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    families: Vec<Family>,

    /// `kubeproxy_sync_proxy_rules_duration_seconds{ip_family}` (histogram): every sync
    /// round, successful or not.
    pub sync_proxy_rules_duration_seconds: Labelled<Family, Histogram>,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family}` (histogram).
    pub sync_full_proxy_rules_duration_seconds: Labelled<Family, Histogram>,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family}` (histogram).
    pub sync_partial_proxy_rules_duration_seconds: Labelled<Family, Histogram>,
    /// `kubeproxy_network_programming_duration_seconds{ip_family}` (histogram): from an
    /// EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` to the sync that
    /// programmed it.
    pub network_programming_duration_seconds: Labelled<Family, Histogram>,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}` (gauge): the last
    /// successful sync, Unix seconds.
    pub sync_proxy_rules_last_timestamp_seconds: Labelled<Family, FloatGauge>,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family}` (gauge): the last
    /// time a sync was queued, Unix seconds.
    pub sync_proxy_rules_last_queued_timestamp_seconds: Labelled<Family, FloatGauge>,
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family}` (counter).
    pub sync_proxy_rules_nftables_sync_failures: Labelled<Family, Counter>,
    /// `kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total{ip_family}` (counter):
    /// kube-proxy's separate stale-chain cleanup; kube-nft deletes stale objects in the sync
    /// transaction itself, so this stays 0 unless the daemon grows a separate cleanup step.
    /// Exposed because KEP-3866 promises it.
    pub sync_proxy_rules_nftables_cleanup_failures: Labelled<Family, Counter>,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_total` (counter): EndpointSlice events.
    pub sync_proxy_rules_endpoint_changes: Counter,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_pending` (gauge): EndpointSlice changes
    /// not yet synced.
    pub sync_proxy_rules_endpoint_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_service_changes_total` (counter): Service events.
    pub sync_proxy_rules_service_changes: Counter,
    /// `kubeproxy_sync_proxy_rules_service_changes_pending` (gauge): Service changes not yet
    /// synced.
    pub sync_proxy_rules_service_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family,traffic_policy}`: a
    /// **gauge** despite the name (kube-proxy's), the Services with a Local policy and no
    /// local endpoint as of the last sync.
    pub sync_proxy_rules_no_local_endpoints_total: Labelled<(Family, TrafficPolicy), Gauge>,
    /// `kubeproxy_proxy_healthz_total{code}` (counter): `/healthz` answers.
    pub proxy_healthz: Labelled<ProbeCode, Counter>,
    /// `kubeproxy_proxy_livez_total{code}` (counter): `/livez` answers.
    pub proxy_livez: Labelled<ProbeCode, Counter>,
    /// `kubeproxy_conntrack_reconciler_sync_duration_seconds{ip_family}` (histogram): one
    /// conntrack reconcile pass of a family (dump and deletes).
    pub conntrack_reconciler_sync_duration_seconds: Labelled<Family, Histogram>,
    /// `kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family}` (counter): stale
    /// UDP/SCTP conntrack entries deleted.
    pub conntrack_reconciler_deleted_entries: Labelled<Family, Counter>,

    /// `kube_nft_transaction_operations` (histogram): nf_tables operations (messages) per
    /// committed transaction.
    pub transaction_operations: Histogram,
    /// `kube_nft_transaction_bytes` (histogram): netlink bytes per committed transaction.
    pub transaction_bytes: Histogram,
    /// `kube_nft_syncs_total{kind}` (counter): successful sync rounds by how they reconciled.
    pub syncs: Labelled<SyncKind, Counter>,
    /// `kube_nft_drift_repairs_total{reason}` (counter): transactions that restored our
    /// tables after something else changed them.
    pub drift_repairs: Labelled<DriftReason, Counter>,
    /// `kube_nft_conntrack_reconcile_errors_total` (counter): conntrack reconcile passes that
    /// failed (a dump or a delete the kernel refused); the next pass retries.
    pub conntrack_reconcile_errors: Counter,
    /// `kube_nft_objects_with_diagnostics{kind}` (gauge): objects with at least one
    /// diagnostic in the last compile.
    pub objects_with_diagnostics: GaugeByKind,
    /// `kube_nft_watch_restarts_total{resource}` (counter): watch streams re-established.
    pub watch_restarts: Labelled<WatchResource, Counter>,
    /// `kube_nft_watch_relists_total{resource}` (counter): full re-lists (initial list and
    /// after `410 Gone`).
    pub watch_relists: Labelled<WatchResource, Counter>,
    /// `kube_nft_health_check_ports_unbound` (gauge): health-check NodePort listeners (address
    /// and port) that should be open but could not be bound, as of the last committed sync.
    /// A gauge, not a count of attempts, since each sync retries them.
    pub health_check_ports_unbound: Gauge,
    /// `--metrics-per-service`: the per-Service series each scrape appends, when enabled.
    per_service: Option<PerService>,
}

impl Metrics {
    /// Every metric, with a label set per family in `families` (in `IPv4`, `IPv6` order) and
    /// `kube_nft_build_info{version}` set to `version`.
    pub fn new(families: &[Family], version: &str) -> Metrics {
        let mut families = families.to_vec();
        families.sort();
        families.dedup();
        let fams = || families.iter().copied();
        let per_family_histogram =
            |buckets: fn() -> Vec<f64>| Labelled::new(fams(), || Histogram::new(buckets()));
        let no_local = families
            .iter()
            .flat_map(|&f| [TrafficPolicy::External, TrafficPolicy::Internal].map(|p| (f, p)));
        let probes = || [ProbeCode::Ok, ProbeCode::Unavailable];
        let resources = || {
            [
                WatchResource::EndpointSlices,
                WatchResource::Nodes,
                WatchResource::Services,
            ]
        };

        let metrics = Metrics {
            registry: Arc::new(Registry::default()),
            sync_proxy_rules_duration_seconds: per_family_histogram(sync_buckets),
            sync_full_proxy_rules_duration_seconds: per_family_histogram(sync_buckets),
            sync_partial_proxy_rules_duration_seconds: per_family_histogram(sync_buckets),
            network_programming_duration_seconds: per_family_histogram(network_programming_buckets),
            sync_proxy_rules_last_timestamp_seconds: Labelled::new(fams(), FloatGauge::default),
            sync_proxy_rules_last_queued_timestamp_seconds: Labelled::new(
                fams(),
                FloatGauge::default,
            ),
            sync_proxy_rules_nftables_sync_failures: Labelled::new(fams(), Counter::default),
            sync_proxy_rules_nftables_cleanup_failures: Labelled::new(fams(), Counter::default),
            sync_proxy_rules_endpoint_changes: Counter::default(),
            sync_proxy_rules_endpoint_changes_pending: Gauge::default(),
            sync_proxy_rules_service_changes: Counter::default(),
            sync_proxy_rules_service_changes_pending: Gauge::default(),
            sync_proxy_rules_no_local_endpoints_total: Labelled::new(no_local, Gauge::default),
            proxy_healthz: Labelled::new(probes(), Counter::default),
            proxy_livez: Labelled::new(probes(), Counter::default),
            conntrack_reconciler_sync_duration_seconds: per_family_histogram(sync_buckets),
            conntrack_reconciler_deleted_entries: Labelled::new(fams(), Counter::default),
            transaction_operations: Histogram::new(operation_buckets()),
            transaction_bytes: Histogram::new(byte_buckets()),
            syncs: Labelled::new(
                [SyncKind::Full, SyncKind::Partial, SyncKind::Verify],
                Counter::default,
            ),
            drift_repairs: Labelled::new(
                [DriftReason::Monitor, DriftReason::Periodic],
                Counter::default,
            ),
            conntrack_reconcile_errors: Counter::default(),
            objects_with_diagnostics: GaugeByKind::new(DIAGNOSTIC_KINDS),
            watch_restarts: Labelled::new(resources(), Counter::default),
            watch_relists: Labelled::new(resources(), Counter::default),
            health_check_ports_unbound: Gauge::default(),
            per_service: None,
            families,
        };
        metrics.registered(version)
    }

    /// Builds the registry over clones of the handles. Help texts are kube-proxy's (the
    /// encoder appends a full stop).
    fn registered(mut self, version: &str) -> Metrics {
        let mut r = Registry::default();
        let m = &self;
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_proxy_rules_duration_seconds.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_proxy_rules_duration_seconds.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_proxy_rules_duration_seconds.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming_duration_seconds.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.sync_proxy_rules_last_timestamp_seconds.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.sync_proxy_rules_last_queued_timestamp_seconds.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.sync_proxy_rules_nftables_sync_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures",
            "Cumulative proxy nftables cleanup failures",
            m.sync_proxy_rules_nftables_cleanup_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.sync_proxy_rules_endpoint_changes_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.sync_proxy_rules_endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.sync_proxy_rules_service_changes_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.sync_proxy_rules_service_changes.clone(),
        );
        // A gauge, so the name keeps its `_total` as registered.
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.sync_proxy_rules_no_local_endpoints_total.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.proxy_healthz.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.proxy_livez.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            m.conntrack_reconciler_sync_duration_seconds.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            m.conntrack_reconciler_deleted_entries.clone(),
        );
        r.register(
            "kube_nft_transaction_operations",
            "nf_tables operations per committed transaction",
            m.transaction_operations.clone(),
        );
        r.register(
            "kube_nft_transaction_bytes",
            "Netlink bytes per committed transaction",
            m.transaction_bytes.clone(),
        );
        r.register(
            "kube_nft_syncs",
            "Successful sync rounds by kind: full (planned against a kernel read-back), \
             partial (planned against the last committed ruleset), verify (read back, nothing \
             to change)",
            m.syncs.clone(),
        );
        r.register(
            "kube_nft_drift_repairs",
            "Transactions that restored kube-nft's tables after another writer changed them, \
             by what found the drift",
            m.drift_repairs.clone(),
        );
        r.register(
            "kube_nft_conntrack_reconcile_errors",
            "Conntrack reconcile passes that failed (retried)",
            m.conntrack_reconcile_errors.clone(),
        );
        r.register(
            "kube_nft_objects_with_diagnostics",
            "Objects with at least one diagnostic in the last compile, by kind",
            m.objects_with_diagnostics.clone(),
        );
        r.register(
            "kube_nft_watch_restarts",
            "Watch streams re-established, by resource",
            m.watch_restarts.clone(),
        );
        r.register(
            "kube_nft_watch_relists",
            "Full re-lists (initial and after 410 Gone), by resource",
            m.watch_relists.clone(),
        );
        r.register(
            "kube_nft_health_check_ports_unbound",
            "Health-check node port listeners (address and port) that could not be bound",
            m.health_check_ports_unbound.clone(),
        );
        r.register(
            "kube_nft_build_info",
            "A metric with a constant '1' value labeled by the kube-nft version",
            BuildInfo {
                version: version.to_owned(),
            },
        );
        self.registry = Arc::new(r);
        self
    }

    /// The scrape: every metric in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// These metrics with the per-Service series of `per_service` appended to every scrape
    /// ([`Metrics::exposition`]).
    pub fn with_per_service(mut self, per_service: PerService) -> Metrics {
        self.per_service = Some(per_service);
        self
    }

    /// The per-Service series, when enabled.
    pub fn per_service(&self) -> Option<&PerService> {
        self.per_service.as_ref()
    }

    /// What `/metrics` serves: [`Metrics::encode`], then the per-Service series when they are
    /// enabled (their counters read on a blocking thread; a failed read leaves them out).
    pub async fn exposition(&self) -> Result<String, MetricsError> {
        let mut out = self.encode()?;
        if let Some(per_service) = &self.per_service {
            out.push_str(&per_service.scrape().await?);
        }
        Ok(out)
    }

    /// The IP families the per-family metrics have label sets for.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// A change was queued for sync at `now` (kube-proxy sets this on every Service and
    /// EndpointSlice event).
    pub fn queued(&self, now: SystemTime) {
        let secs = unix_seconds(now);
        for (_, gauge) in self.sync_proxy_rules_last_queued_timestamp_seconds.iter() {
            gauge.set(secs);
        }
    }

    /// A sync round of `kind` took `elapsed`, successful or not (kube-proxy observes the
    /// duration in a `defer`). `Verify` is a full sync that found nothing to send.
    pub fn observe_sync(&self, kind: SyncKind, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let by_kind = match kind {
            SyncKind::Partial => &self.sync_partial_proxy_rules_duration_seconds,
            SyncKind::Full | SyncKind::Verify => &self.sync_full_proxy_rules_duration_seconds,
        };
        for family in &self.families {
            if let Some(h) = self.sync_proxy_rules_duration_seconds.get(*family) {
                h.observe(secs);
            }
            if let Some(h) = by_kind.get(*family) {
                h.observe(secs);
            }
        }
    }

    /// A sync round of `kind` succeeded at `now`.
    pub fn sync_succeeded(&self, kind: SyncKind, now: SystemTime) {
        let secs = unix_seconds(now);
        for (_, gauge) in self.sync_proxy_rules_last_timestamp_seconds.iter() {
            gauge.set(secs);
        }
        if let Some(counter) = self.syncs.get(kind) {
            counter.inc();
        }
    }

    /// A sync transaction failed (the KEP-3866 rollback signal).
    pub fn sync_failed(&self) {
        for (_, counter) in self.sync_proxy_rules_nftables_sync_failures.iter() {
            counter.inc();
        }
    }

    /// A transaction committed with `operations` nf_tables messages in `bytes` bytes.
    pub fn observe_transaction(&self, operations: usize, bytes: usize) {
        // usize → f64 loses precision only above 2^53, far beyond any transaction.
        self.transaction_operations.observe(operations as f64);
        self.transaction_bytes.observe(bytes as f64);
    }

    /// The network programming latency of one EndpointSlice change for `family`.
    pub fn observe_network_programming(&self, family: Family, latency: Duration) {
        if let Some(h) = self.network_programming_duration_seconds.get(family) {
            h.observe(latency.as_secs_f64());
        }
    }

    /// Services with a Local `policy` and no local endpoint in `family`, as of the last sync.
    pub fn set_no_local_endpoints(&self, family: Family, policy: TrafficPolicy, services: usize) {
        if let Some(g) = self
            .sync_proxy_rules_no_local_endpoints_total
            .get((family, policy))
        {
            g.set(i64::try_from(services).unwrap_or(i64::MAX));
        }
    }

    /// A conntrack reconcile pass of `family` took `elapsed` and deleted `deleted` entries.
    pub fn observe_conntrack_reconcile(&self, family: Family, elapsed: Duration, deleted: usize) {
        if let Some(h) = self.conntrack_reconciler_sync_duration_seconds.get(family) {
            h.observe(elapsed.as_secs_f64());
        }
        if let Some(c) = self.conntrack_reconciler_deleted_entries.get(family) {
            c.inc_by(deleted as u64);
        }
    }

    /// A conntrack reconcile pass failed.
    pub fn conntrack_reconcile_failed(&self) {
        self.conntrack_reconcile_errors.inc();
    }

    /// Sets `kube_nft_objects_with_diagnostics` from a compile's diagnostics: per kind, the
    /// distinct objects (namespace/name) with at least one. A gauge rather than a counter of
    /// rejections because the compiler re-reports every bad object on every compile, and not
    /// every diagnostic rejects the object (the rest of it is still programmed).
    pub fn set_diagnostics<'a>(&self, diagnostics: impl IntoIterator<Item = &'a Diagnostic>) {
        let mut objects: BTreeMap<&str, std::collections::BTreeSet<(&str, &str)>> = BTreeMap::new();
        for d in diagnostics {
            objects
                .entry(d.kind.as_str())
                .or_default()
                .insert((d.namespace.as_str(), d.name.as_str()));
        }
        let counts = objects
            .into_iter()
            .map(|(kind, set)| {
                (
                    kind.to_owned(),
                    i64::try_from(set.len()).unwrap_or(i64::MAX),
                )
            })
            .collect();
        self.objects_with_diagnostics.set_all(&counts);
    }
}

/// Unix seconds with the fraction, as Go's `Gauge.SetToCurrentTime`.
fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUAL: &[Family] = &[Family::Ip, Family::Ip6];

    /// The lines of `text` that are samples.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn network_programming_buckets_are_kube_proxys() {
        let b = network_programming_buckets();
        // 80 from the four linear ranges, plus MergeBuckets' leading 0.
        assert_eq!(b.len(), 81);
        assert_eq!(&b[..5], &[0.0, 0.25, 0.5, 1.0, 2.0]);
        assert_eq!(b[61], 59.0);
        assert_eq!(&b[62..64], &[60.0, 65.0]);
        assert_eq!(b[73], 115.0);
        assert_eq!(&b[74..], &[120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0]);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn sync_buckets_are_exponential_from_1ms() {
        let b = sync_buckets();
        assert_eq!(b.len(), 15);
        assert_eq!((b[0], b[1], b[14]), (0.001, 0.002, 16.384));
    }

    #[test]
    fn exposed_names_types_and_labels() {
        let m = Metrics::new(DUAL, "v0.1.0");
        let text = m.encode().expect("encode");
        let expect = [
            ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "histogram",
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "histogram",
            ),
            (
                "kubeproxy_network_programming_duration_seconds",
                "histogram",
            ),
            ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
            (
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "gauge",
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "counter",
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                "counter",
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "gauge",
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "counter",
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "gauge",
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "counter",
            ),
            (
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "gauge",
            ),
            ("kubeproxy_proxy_healthz_total", "counter"),
            ("kubeproxy_proxy_livez_total", "counter"),
            (
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "histogram",
            ),
            (
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                "counter",
            ),
            ("kube_nft_transaction_operations", "histogram"),
            ("kube_nft_transaction_bytes", "histogram"),
            ("kube_nft_syncs_total", "counter"),
            ("kube_nft_drift_repairs_total", "counter"),
            ("kube_nft_conntrack_reconcile_errors_total", "counter"),
            ("kube_nft_objects_with_diagnostics", "gauge"),
            ("kube_nft_watch_restarts_total", "counter"),
            ("kube_nft_watch_relists_total", "counter"),
            ("kube_nft_health_check_ports_unbound", "gauge"),
            ("kube_nft_build_info", "gauge"),
        ];
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        assert_eq!(types.len(), expect.len(), "{text}");
        for (name, kind) in expect {
            assert_eq!(
                types
                    .iter()
                    .filter(|l| **l == format!("# TYPE {name} {kind}"))
                    .count(),
                1,
                "{name} {kind} in\n{text}"
            );
        }
        for series in [
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"}",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv6\",traffic_policy=\"internal\"}",
            "kubeproxy_proxy_healthz_total{code=\"503\"}",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "kube_nft_drift_repairs_total{reason=\"monitor\"}",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"}",
            "kube_nft_conntrack_reconcile_errors_total",
            "kube_nft_watch_relists_total{resource=\"endpointslices\"}",
            "kube_nft_objects_with_diagnostics{kind=\"Service\"}",
        ] {
            assert_eq!(sample(&text, series).as_deref(), Some("0"), "{series}");
        }
        assert_eq!(
            sample(&text, "kube_nft_build_info{version=\"v0.1.0\"}").as_deref(),
            Some("1")
        );
        // `le` is written as Go writes it (`0`, `0.25`, `1`), so the series are kube-proxy's.
        for le in ["0", "0.25", "1", "300", "+Inf"] {
            let series = format!(
                "kubeproxy_network_programming_duration_seconds_bucket{{ip_family=\"IPv4\",le=\"{le}\"}}"
            );
            assert_eq!(sample(&text, &series).as_deref(), Some("0"), "{series}");
        }
    }

    #[test]
    fn single_stack_exposes_one_family() {
        let m = Metrics::new(&[Family::Ip6], "v");
        let text = m.encode().expect("encode");
        assert!(!text.contains("IPv4"));
        assert!(text.contains("ip_family=\"IPv6\""));
        assert!(m
            .sync_proxy_rules_last_timestamp_seconds
            .get(Family::Ip)
            .is_none());
        // Recording for a family that is not run is a no-op, not a panic.
        m.observe_network_programming(Family::Ip, Duration::from_secs(1));
        m.set_no_local_endpoints(Family::Ip, TrafficPolicy::External, 3);
    }

    #[test]
    fn the_scrape_is_deterministic() {
        let a = Metrics::new(DUAL, "v");
        let b = Metrics::new(&[Family::Ip6, Family::Ip], "v");
        for m in [&a, &b] {
            m.set_diagnostics(&[Diagnostic::new("Widget", "ns", "w", "spec", "bad")]);
        }
        assert_eq!(a.encode().expect("a"), b.encode().expect("b"));
    }

    #[test]
    fn recording_helpers() {
        let m = Metrics::new(DUAL, "v");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_208_000_500);
        m.queued(t);
        m.observe_sync(SyncKind::Partial, Duration::from_millis(3));
        m.observe_sync(SyncKind::Verify, Duration::from_millis(20));
        m.sync_succeeded(SyncKind::Partial, t);
        m.sync_failed();
        m.observe_transaction(100, 10_000);
        m.observe_network_programming(Family::Ip6, Duration::from_millis(700));
        m.set_no_local_endpoints(Family::Ip, TrafficPolicy::Internal, 2);
        m.sync_proxy_rules_endpoint_changes.inc();
        m.sync_proxy_rules_service_changes_pending.set(4);
        m.watch_restarts
            .get(WatchResource::Services)
            .map(Counter::inc);
        let text = m.encode().expect("encode");
        let s = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        for fam in ["IPv4", "IPv6"] {
            assert_eq!(
                s(&format!("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{{ip_family=\"{fam}\"}}")),
                "1709208000.5"
            );
            assert_eq!(
                s(&format!(
                    "kubeproxy_sync_proxy_rules_duration_seconds_count{{ip_family=\"{fam}\"}}"
                )),
                "2"
            );
            assert_eq!(
                s(&format!("kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{{ip_family=\"{fam}\",le=\"0.004\"}}")),
                "1"
            );
            assert_eq!(
                s(&format!(
                    "kubeproxy_sync_full_proxy_rules_duration_seconds_count{{ip_family=\"{fam}\"}}"
                )),
                "1"
            );
            assert_eq!(
                s(&format!("kubeproxy_sync_proxy_rules_nftables_sync_failures_total{{ip_family=\"{fam}\"}}")),
                "1"
            );
        }
        assert_eq!(s("kube_nft_syncs_total{kind=\"partial\"}"), "1");
        assert_eq!(s("kube_nft_transaction_operations_count"), "1");
        assert_eq!(s("kube_nft_transaction_bytes_sum"), "10000.0");
        assert_eq!(
            s("kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv6\",le=\"1\"}"),
            "1"
        );
        assert_eq!(
            s("kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"}"),
            "2"
        );
        assert_eq!(s("kubeproxy_sync_proxy_rules_endpoint_changes_total"), "1");
        assert_eq!(s("kubeproxy_sync_proxy_rules_service_changes_pending"), "4");
        assert_eq!(
            s("kube_nft_watch_restarts_total{resource=\"services\"}"),
            "1"
        );
        assert!(!samples(&text).is_empty());
    }

    #[test]
    fn diagnostics_count_distinct_objects_per_kind() {
        let m = Metrics::new(DUAL, "v");
        m.set_diagnostics(&[
            Diagnostic::new("Service", "a", "web", "spec.ports[0]", "x"),
            Diagnostic::new("Service", "a", "web", "spec.ports[1]", "y"),
            Diagnostic::new("Service", "b", "web", "spec", "z"),
            Diagnostic::new("EndpointSlice", "a", "web-1", "endpoints", "z"),
        ]);
        let g = &m.objects_with_diagnostics;
        assert_eq!(
            (g.get("Service"), g.get("EndpointSlice"), g.get("Node")),
            (2, 1, 0)
        );
        // A later compile without them resets the kinds to 0 (series stay).
        m.set_diagnostics(&[]);
        assert_eq!((g.get("Service"), g.get("EndpointSlice")), (0, 0));
        let text = m.encode().expect("encode");
        assert_eq!(
            sample(&text, "kube_nft_objects_with_diagnostics{kind=\"Service\"}").as_deref(),
            Some("0")
        );
    }
}
