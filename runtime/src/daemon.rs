//! `kube-nft run`: the node daemon, wiring the pieces in the direction the data flows. A source
//! ([`sources::kube`] or [`sources::manifests`]) sends updates; the loop folds them into the
//! sync [`Engine`] and runs a sync round when the [`Runner`] says so, on a blocking thread
//! (netlink is synchronous); an nf_tables [`Monitor`] on its own thread reports foreign changes
//! to our tables, which trigger an immediate repair; a conntrack [`Reconciler`] on its own thread
//! deletes stale UDP/SCTP entries after each round that changed the ruleset and every sync
//! period; [`serve`] answers `/healthz`, `/livez` and `/metrics` (with `--metrics-per-service`
//! also per Service port and backend, against an index of the backends published after each
//! committed round). The instance lock is taken first, so a second daemon in the same network
//! namespace exits before touching anything.
//! Nothing is flushed at start and nothing deleted at exit: the rules keep serving while the
//! daemon is down, and a restarted daemon adopts them.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use kube_nft_compiler::ir::Family;
use kube_nft_compiler::{Config, Diagnostic};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::conntrack::Reconciler;
use crate::error_chain;
use crate::lock::{self, InstanceLock, LockError};
use crate::netlink::monitor::{self, Monitor};
use crate::serve::health::{ProxyHealth, Timestamp};
use crate::serve::metrics::{self, DriftReason, Metrics, TrafficPolicy, WatchResource};
use crate::serve::per_service::PerService;
use crate::serve::service_health::ServiceHealth;
use crate::serve::{self};
use crate::sources::{self, Event, Resource, Update};
use crate::sync::runner::Runner;
use crate::sync::{self, Engine, Outcome, SyncKind};

/// Where objects come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The API server: a kubeconfig and/or a `--master` URL; neither means in-cluster config.
    Api {
        /// `--kubeconfig`.
        kubeconfig: Option<PathBuf>,
        /// `--master`.
        master: Option<String>,
    },
    /// A folder of manifests, re-read on change and every `rescan`.
    Manifests {
        /// The folder.
        dir: PathBuf,
        /// Period of the full rescan behind inotify.
        rescan: Duration,
    },
}

/// Everything `kube-nft run` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node config (the compiler's).
    pub config: Config,
    /// The node name (kube-proxy's: `--hostname-override` or the OS hostname, lower-cased).
    pub node_name: String,
    /// Where objects come from.
    pub source: Source,
    /// `--min-sync-period`.
    pub min_sync_period: Duration,
    /// `--sync-period`: the periodic verification, and half the health timeout.
    pub sync_period: Duration,
    /// `--healthz-bind-address`; `None` disables the server.
    pub healthz: Option<SocketAddr>,
    /// `--metrics-bind-address`; `None` disables the server.
    pub metrics: Option<SocketAddr>,
    /// The `/configz` document.
    pub configz: String,
    /// How long the Node's watch may stay silent before it counts against health (the kubelet
    /// updates its Node at least every 5 minutes); `None` for sources without a heartbeat.
    pub watch_silence: Option<Duration>,
    /// `--metrics-per-service`: `/metrics` also exposes per Service port and backend the
    /// counters the packet path keeps ([`serve::per_service`]). Off, nothing of it is built.
    pub metrics_per_service: bool,
    /// Returns freed heap to the kernel; called after each round that materialized the whole
    /// ruleset (a cold start holds it, its plan and its encoded batches at once) or sent a
    /// change, on the thread that ran the round. The binary knows its allocator
    /// (`src/alloc.rs`).
    pub release_memory: fn(),
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another daemon programs this network namespace.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A listener could not be bound.
    #[error("bind {what} on {addr}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API client could not be configured.
    #[error("configure the API client")]
    Client(#[from] sources::kube::Error),
}

/// The resources whose first list gates the first sync, for a source.
fn required(source: &Source) -> Vec<Resource> {
    match source {
        // kube-proxy waits for Services and EndpointSlices, and for its Node (whose addresses
        // and labels shape the ruleset). Not for ServiceCIDRs: an API server without them
        // answers 404 (handled), but RBAC without them answers 403 forever, and that must not
        // keep every Service unprogrammed; they are folded in when they arrive.
        Source::Api { .. } => vec![Resource::Services, Resource::EndpointSlices, Resource::Node],
        // The manifests source lists every resource at once, legacy Endpoints included.
        Source::Manifests { .. } => Resource::ALL.to_vec(),
    }
}

/// Runs the daemon until `shutdown` completes. The rules stay in the kernel afterwards.
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let _lock: InstanceLock = lock::acquire(&format!("node {}", options.node_name))?;
    let families = [Family::Ip, Family::Ip6];
    let mut metrics = Metrics::new(&families, env!("CARGO_PKG_VERSION"));
    // Per-Service series: the index of the committed state is published after each round that
    // may have changed it, and each scrape reads the counters against it.
    let per_service = options.metrics_per_service.then(PerService::new);
    if let Some(per_service) = &per_service {
        metrics = metrics.with_per_service(per_service.clone());
    }
    let health = ProxyHealth::new(options.sync_period, &families, Timestamp::now());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let mut servers: Vec<JoinHandle<()>> = Vec::new();
    if let Some(addr) = options.healthz {
        let listener = bind("healthz", addr).await?;
        let (health, metrics, stop) = (health.clone(), metrics.clone(), stopped());
        servers.push(tokio::spawn(async move {
            if let Err(err) = serve::http::serve_healthz(listener, health, metrics, stop).await {
                error!(error = %err, "healthz server failed");
            }
        }));
    }
    if let Some(addr) = options.metrics {
        let listener = bind("metrics", addr).await?;
        let (metrics, configz, stop) = (metrics.clone(), options.configz.clone(), stopped());
        servers.push(tokio::spawn(async move {
            if let Err(err) = serve::http::serve_metrics(listener, metrics, configz, stop).await {
                error!(error = %err, "metrics server failed");
            }
        }));
    }

    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let source = match &options.source {
        Source::Api { kubeconfig, master } => {
            let client = sources::kube::client(kubeconfig.as_deref(), master.as_deref()).await?;
            let mut watch = sources::kube::WatchOptions::new(options.node_name.clone());
            watch.service_proxy_name = options.config.service_proxy_name.clone();
            tokio::spawn(sources::kube::run(client, watch, tx))
        }
        Source::Manifests { dir, rescan } => {
            tokio::spawn(sources::manifests::run(dir.clone(), *rescan, tx))
        }
    };

    // The nf_tables monitor subscribes after the first successful sync: while anyone listens,
    // the kernel builds a notification for every object of every commit, and for a cold start
    // of 10k Services that was 14 % of its CPU. A foreign change before it subscribes is caught
    // by the periodic check (the generation is no longer the one we committed).
    let (drift_tx, mut drift_rx) = mpsc::unbounded_channel::<monitor::Event>();
    let monitor_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut monitor_thread: Option<std::thread::JoinHandle<()>> = None;
    // Stale UDP/SCTP conntrack entries, on a thread of their own: after each round that
    // changed the ruleset (or read the kernel back first) and every sync period.
    let conntrack = Reconciler::spawn(options.sync_period, Some(metrics.clone()));

    let mut engine = Some(Engine::new(&options.config, required(&options.source)));
    // Health-check NodePorts: opened, updated and closed after each committed round.
    let mut service_health = ServiceHealth::new(health.clone(), metrics.clone());
    let mut runner = Runner::new(options.min_sync_period, options.sync_period);
    let mut reported: Vec<Diagnostic> = Vec::new();
    let mut relisted: std::collections::BTreeSet<Resource> = Default::default();
    let mut drift_pending = false;
    // The Node's watch is the one with a heartbeat: kube-rs does not surface bookmarks, and
    // Services or slices may legitimately be quiet for hours.
    let mut node_heard = Instant::now();
    let mut node_silent = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    info!(
        node = %options.node_name,
        min_sync_period = ?options.min_sync_period,
        sync_period = ?options.sync_period,
        "kube-nft started; waiting for the initial lists"
    );
    tokio::pin!(shutdown);
    loop {
        let ready = engine.as_ref().is_some_and(Engine::initialized);
        let deadline = if drift_pending {
            Instant::now()
        } else if ready {
            runner.deadline(Instant::now())
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            update = rx.recv() => {
                let Some(update) = update else {
                    // The source ended (it only does when its task failed): keep serving
                    // what is programmed, and say so.
                    error!("the object source stopped; no further updates will be programmed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(3600)) => continue,
                    }
                };
                let engine = engine.as_mut().expect("engine is home between rounds");
                let mut heard = |update: &Update| {
                    if update.resource == Resource::Node && !matches!(update.event, Event::Error(_)) {
                        node_heard = Instant::now();
                    }
                };
                heard(&update);
                fold(engine, update, &metrics, &health, &mut runner, &mut relisted);
                // Drain what else is queued without yielding, so a burst is one round.
                while let Ok(update) = rx.try_recv() {
                    heard(&update);
                    fold(engine, update, &metrics, &health, &mut runner, &mut relisted);
                }
            }
            _ = tick.tick(), if options.watch_silence.is_some() => {
                let limit = options.watch_silence.expect("guarded");
                let silent = node_heard.elapsed() > limit;
                if silent != node_silent {
                    node_silent = silent;
                    if silent {
                        warn!(silence = ?limit, "nothing heard from the Node's watch; the view of the cluster may be stale");
                        let since = Timestamp::now();
                        health.set_watch_silent(Some(since));
                    } else {
                        info!("the Node's watch is heard again");
                        health.set_watch_silent(None);
                    }
                }
            }
            Some(event) = drift_rx.recv() => {
                warn!(%event, "our nftables tables were changed by someone else; repairing");
                drift_pending = true;
            }
            () = tokio::time::sleep_until(deadline.into()), if ready || drift_pending => {
                let mut current = engine.take().expect("engine is home between rounds");
                let drift = std::mem::take(&mut drift_pending);
                let periodic = runner.is_periodic() && !drift;
                if drift || periodic {
                    current.verify_next();
                }
                runner.started(Instant::now());
                let index_wanted = per_service.is_some();
                let release_memory = options.release_memory;
                let (mut current, result, index) = tokio::task::spawn_blocking(move || {
                    let result = current.sync();
                    if matches!(&result, Some(Ok(o)) if o.kind != SyncKind::Partial || o.sent()) {
                        // On this thread: an allocator with per-thread heaps (mimalloc) frees
                        // what the thread that allocated it releases. After every round that
                        // sent something, not only full ones: at 10k Services the RSS after 90
                        // changes was 151 MiB with full rounds only, 138 MiB so.
                        release_memory();
                    }
                    // Built here, off the async runtime: O(Service ports x endpoints). Only
                    // after a commit that may have changed the desired state (a delta, a
                    // full or verifying round, anything sent).
                    let changed = matches!(&result, Some(Ok(o))
                        if o.sent() || o.services > 0 || o.kind != SyncKind::Partial);
                    let index = (index_wanted && changed).then(|| current.backend_index());
                    (current, result, index)
                })
                .await
                .expect("the sync round does not panic");
                if let (Some(per_service), Some(index)) = (&per_service, index) {
                    per_service.publish(index);
                }
                let committed = matches!(result, Some(Ok(_)));
                // The reconciler gets the desired state again after a full round and a repair,
                // and after a delta only if it touched a Service with a UDP or SCTP port or with
                // affinity: rebuilding what it judges against walks all of those Services (a
                // quarter of the daemon's CPU per change at 50k), for nothing when a delta
                // touched only TCP Services without affinity.
                let conntrack_due = match &result {
                    Some(Ok(o)) if o.kind == SyncKind::Partial => {
                        o.sent() && current.take_conntrack_changed()
                    }
                    Some(Ok(o)) if o.sent() || o.kind == SyncKind::Full => {
                        // Handed on whatever the flag says; it is reset all the same.
                        current.take_conntrack_changed();
                        true
                    }
                    _ => false,
                };
                let ok = record(&current, result, drift, &metrics, &health, &mut reported);
                if conntrack_due {
                    conntrack.update(current.conntrack_destinations(), current.affinity_maps());
                }
                if committed && monitor_thread.is_none() {
                    match Monitor::open() {
                        Ok(monitor) => {
                            let stop = monitor_stop.clone();
                            let n = options.config.dispatch_tables;
                            monitor_thread =
                                Some(spawn_monitor(monitor, n, drift_tx.clone(), stop));
                            // A change between our commit and the subscription is not announced:
                            // check once now (free when the generation is still ours).
                            drift_pending = true;
                        }
                        Err(err) => warn!(error = %err, "cannot subscribe to nf_tables events yet; drift is caught by the periodic check"),
                    }
                }
                if committed {
                    // What the kernel now holds, not what is pending: only a committed round
                    // changes what the health-check ports answer.
                    let ports = current.health_check_ports();
                    service_health.update(&ports, current.nodeport_addresses());
                }
                runner.finished(ok);
                engine = Some(current);
            }
        }
    }

    info!("kube-nft stopping; the rules stay in the kernel");
    service_health.close_all();
    let _ = stop_tx.send(true);
    source.abort();
    monitor_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for server in servers {
        let _ = server.await;
    }
    if let Some(thread) = monitor_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    let _ = tokio::task::spawn_blocking(move || conntrack.stop()).await;
    Ok(())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// The monitor's thread: reports foreign changes to our tables until told to stop (it wakes
/// up every 200 ms to check).
fn spawn_monitor(
    mut monitor: Monitor,
    dispatch_tables: u16,
    tx: mpsc::UnboundedSender<monitor::Event>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // Ours: the main table and every dispatch table (`--dispatch-tables`), both families.
        let names = monitor::our_table_names(dispatch_tables);
        let tables = monitor::in_both_families(&names);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match monitor.next_foreign_change(&tables, Duration::from_millis(200)) {
                Ok(Some(event)) => {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    error!(error = %err, "nf_tables monitor failed; drift is now only caught by the periodic check");
                    return;
                }
            }
        }
    })
}

/// Folds one update into the engine and records what it means for metrics and health.
fn fold(
    engine: &mut Engine,
    update: Update,
    metrics: &Metrics,
    health: &ProxyHealth,
    runner: &mut Runner,
    relisted: &mut std::collections::BTreeSet<Resource>,
) {
    let resource = update.resource;
    match &update.event {
        Event::Error(message) => {
            warn!(%resource, error = %message, "watch failed; retrying");
            if let Some(r) = watch_resource(resource) {
                if let Some(c) = metrics.watch_restarts.get(r) {
                    c.inc();
                }
            }
        }
        // The first list of each resource is not a relist.
        Event::Relisting if !relisted.insert(resource) => {
            info!(%resource, "relisting");
            if let Some(c) = watch_resource(resource).and_then(|r| metrics.watch_relists.get(r)) {
                c.inc();
            }
        }
        _ => {}
    }
    let effect = engine.update(update);
    if let Some(resource) = effect.first_synced {
        info!(%resource, "initial list complete");
    }
    if effect.swept > 0 {
        info!(%resource, deleted = effect.swept, "relist removed objects whose deletion was missed");
    }
    if effect.node_change {
        health.sync_node(engine.node());
    }
    let changed = effect.service_change || effect.endpoint_change || effect.swept > 0;
    if effect.service_change {
        metrics.sync_proxy_rules_service_changes.inc();
    }
    if effect.endpoint_change {
        metrics.sync_proxy_rules_endpoint_changes.inc();
    }
    if changed || effect.node_change || effect.first_synced.is_some() {
        health.queued(Timestamp::now());
        metrics.queued(SystemTime::now());
        runner.request();
    }
}

fn watch_resource(resource: Resource) -> Option<WatchResource> {
    match resource {
        Resource::Services => Some(WatchResource::Services),
        Resource::EndpointSlices => Some(WatchResource::EndpointSlices),
        Resource::Node => Some(WatchResource::Nodes),
        Resource::Endpoints | Resource::ServiceCidrs => None,
    }
}

/// Logs and records the result of a round; returns whether it succeeded.
fn record(
    engine: &Engine,
    result: Option<Result<Outcome, sync::Error>>,
    drift: bool,
    metrics: &Metrics,
    health: &ProxyHealth,
    reported: &mut Vec<Diagnostic>,
) -> bool {
    let Some(result) = result else {
        debug!("not initialized yet; nothing programmed");
        return true;
    };
    let now = SystemTime::now();
    match result {
        Ok(outcome) => {
            let kind = match outcome.kind {
                SyncKind::Partial => metrics::SyncKind::Partial,
                SyncKind::Full => metrics::SyncKind::Full,
                SyncKind::Verify if outcome.sent() => metrics::SyncKind::Full,
                SyncKind::Verify => metrics::SyncKind::Verify,
            };
            metrics.observe_sync(kind, outcome.elapsed);
            metrics.sync_succeeded(kind, now);
            health.updated(Timestamp::now());
            if outcome.sent() {
                metrics.observe_transaction(outcome.report.messages, outcome.report.bytes);
            }
            if outcome.kind == SyncKind::Verify && outcome.sent() {
                let reason = if drift {
                    DriftReason::Monitor
                } else {
                    DriftReason::Periodic
                };
                if let Some(c) = metrics.drift_repairs.get(reason) {
                    c.inc();
                }
                warn!(?reason, operations = %outcome.counts, "repaired drift in our tables");
            }
            for trigger in &outcome.triggers {
                if let Ok(latency) = now.duration_since(*trigger) {
                    for family in metrics.families().to_vec() {
                        metrics.observe_network_programming(family, latency);
                    }
                }
            }
            let (external, internal) = outcome.no_local_endpoints;
            for family in metrics.families().to_vec() {
                metrics.set_no_local_endpoints(family, TrafficPolicy::External, external);
                metrics.set_no_local_endpoints(family, TrafficPolicy::Internal, internal);
            }
            if outcome.sent() || outcome.kind != SyncKind::Partial {
                info!(
                    kind = %outcome.kind,
                    operations = %outcome.counts,
                    services = outcome.services,
                    transactions = outcome.report.transactions,
                    bytes = outcome.report.bytes,
                    duration = ?outcome.elapsed,
                    "synced"
                );
            }
            // Every round reports what is new about the Services it recomputed; rounds that
            // read the kernel back (rare, and O(cluster) anyway) also run the checks across
            // Services and refresh the gauge.
            let full = outcome.kind != SyncKind::Partial;
            let diagnostics = if full {
                engine.diagnostics()
            } else {
                engine.changed_diagnostics()
            };
            for diagnostic in &diagnostics {
                if reported.binary_search(diagnostic).is_err() {
                    warn!(%diagnostic, "bad input (the rest is programmed)");
                }
            }
            if full {
                metrics.set_diagnostics(&diagnostics);
                *reported = diagnostics;
            } else {
                reported.extend(diagnostics);
                reported.sort();
                reported.dedup();
            }
            true
        }
        Err(err) => {
            metrics.sync_failed();
            error!(error = %error_chain(&err), "sync failed; the next round reads the kernel back");
            false
        }
    }
}
