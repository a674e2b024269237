//! The API server as a source: a client built the way kube-proxy builds one ([`config`],
//! [`client`]) and four kube-rs watchers ([`run`]) for the objects kube-proxy watches, with its
//! selectors: Services and EndpointSlices that no other proxy claims and that are not headless
//! ([`service_selector`]), this node's Node, and every ServiceCIDR.
//!
//! What kube-rs 5's `watcher` does, and what [`run`] adds (checked in kube-runtime 5.0.0's
//! `watcher.rs` and by `runtime/tests/sources_kube.rs`):
//! - Lists are served from the API server's watch cache (`resourceVersion=0`, `NotOlderThan`),
//!   as client-go informers' are. A per-node DaemonSet must not send a quorum read to etcd
//!   from every node at once after an API server restart (the 410 relist storm of
//!   kubernetes#85342). kube-rs's `any_semantic()` alone does not do it: kube-core drops
//!   `resourceVersion=0` from a list that carries a `limit` (`ListParams::populate_qp`), and
//!   the watcher's default page size is 500, so the request silently became a paginated quorum
//!   read. [`list_config`] also clears the page size. The whole list then comes in one response,
//!   which kube-rs holds while it yields the objects one by one; the API server's cache ignores
//!   `limit` for `resourceVersion=0` anyway, so client-go receives the same. The price of
//!   cache reads: a relist may come from a lagging API server replica and be briefly older than
//!   what this node already saw; the watch then catches up. Streaming lists (KEP-3157,
//!   `sendInitialEvents`) are not used: a server without the WatchList feature never sends the
//!   bookmark that ends the initial events, and kube-rs would never report the list complete.
//! - The watcher emits `Init` *before* it sends the list request. [`run`] holds that back until
//!   the first object or the end of the list, so a list that fails is an [`Event::Error`]
//!   alone, not a `Relisting` that never completes.
//! - After a 410 Gone it relists (`Init`, `InitApply`…, `InitDone`) but sends no `Delete` for
//!   objects that vanished meanwhile: that is [`Event::Relisting`]'s contract. A watch *request*
//!   answered with HTTP 410 (rather than a 410 `ERROR` event in the stream, which is what the
//!   API server sends) leaves kube-rs retrying the same stale resourceVersion forever
//!   (kube-rs#1042); [`run`] restarts the watcher, which relists, instead.
//! - Errors are stream items; `default_backoff` spaces retries (0.8 s doubling to 30 s,
//!   jittered, reset after 120 s without errors). Without it a failing request spins.
//! - Bookmarks are requested but swallowed: the watcher uses them to advance its
//!   resourceVersion and yields nothing. So [`Event::Alive`] (at most one per second per
//!   resource) comes only with objects, and a quiet resource is silent however healthy its
//!   watch. What the consumer can rely on: an `Error` whenever a request fails; kube-rs ends a
//!   watch that has received nothing (not even a bookmark) for 295 s (the 290 s watch timeout
//!   plus 5 s) and re-watches from its resourceVersion, silently when that works; and the
//!   client's read timeout ([`READ_TIMEOUT`]) fails a request that a hung server never answers.
//!   So an API server that dies with a reset shows up as `Error`s within seconds, and one that
//!   hangs (or a silently dropped connection) within about ten minutes: the idle timeout, then
//!   the re-watch's read timeout. (kube-proxy is no faster against a hung server: client-go's
//!   HTTP/2 pings are answered by the connection, not the stuck handler.) The own Node is a
//!   heartbeat: the kubelet writes its status (`conditions[].lastHeartbeatTime`) at least every
//!   `nodeStatusReportFrequency` (5 min by default), so no `Alive` for the Node for much longer
//!   than that means this node's view is stale.
//! - ServiceCIDRs (`networking.k8s.io/v1`, GA in 1.33) may not be served at all. A 404 for them
//!   means "this cluster has none": [`run`] sends `Relisting` + `Synced` with nothing between,
//!   stops that watcher (no error loop) and probes again every
//!   [`WatchOptions::not_served_reprobe`], so a control plane upgraded in place is noticed.
//!   Any other ServiceCIDR error (a 403 when RBAC lacks `servicecidrs`) is retried like the rest,
//!   so its first `Synced` may never come: the consumer should not wait for it before its first
//!   sync.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::core::Status;
use kube::runtime::watcher::{self, DefaultBackoff};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use super::{error_chain, Event, Object, Resource, Update};

/// Label of a Service (mirrored onto its EndpointSlices) that another proxy implements.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Label the EndpointSlice controller puts on the slices of headless Services (and that users
/// may put on Services to keep proxies away).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// How long a list or watch request may go without receiving a byte. Longer than the 290 s
/// watch timeout, so a quiet but healthy watch is never cut; without it (kube-rs's default
/// is none) a list sent to an API server that accepted the connection and hung would wait
/// forever, with no error for anyone to see.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// How often a resource the API server does not serve (404) is probed again.
pub const NOT_SERVED_REPROBE: Duration = Duration::from_secs(600);

/// One RBAC rule the API source needs: verbs on one resource of one API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    /// The API group, `""` for the core group.
    pub group: &'static str,
    /// The resource as RBAC and the URL name it (plural, lower case).
    pub resource: &'static str,
    /// What is done with it.
    pub verbs: &'static [&'static str],
}

/// Everything [`run`] asks of the API server: `list` and `watch` of the four resources it
/// watches, which is all a kube-rs watcher does (it never gets, creates or patches; the Node
/// is listed with a field selector, not fetched by name). No Events are emitted. The
/// DaemonSet's ClusterRole grants exactly this (`tests/deploy.rs` checks), and `watch_api`,
/// the only way [`run`] opens an [`Api`], refuses in debug builds a resource missing here.
pub const API_ACCESS: [ApiAccess; 4] = [
    watched::<Service>(),
    watched::<EndpointSlice>(),
    watched::<Node>(),
    watched::<ServiceCIDR>(),
];

/// The rule a watcher of `K` needs.
const fn watched<K: k8s_openapi::Resource>() -> ApiAccess {
    ApiAccess {
        group: K::GROUP,
        resource: K::URL_PATH_SEGMENT,
        verbs: &["list", "watch"],
    }
}

/// `Api::all` for a resource [`run`] watches, checked against [`API_ACCESS`] so that a new
/// watcher cannot outgrow the RBAC rules shipped in `deploy/`.
fn watch_api<K>(client: Client) -> Api<K>
where
    K: k8s_openapi::Resource + kube::Resource,
    <K as kube::Resource>::DynamicType: Default,
{
    debug_assert!(
        API_ACCESS.contains(&watched::<K>()),
        "{} is watched but not in API_ACCESS",
        K::URL_PATH_SEGMENT
    );
    Api::all(client)
}

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--kubeconfig` could not be read or used.
    #[error("kubeconfig {}", path.display())]
    Kubeconfig {
        /// The file given.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: KubeconfigError,
    },
    /// `--master` is not a URL.
    #[error("--master {url:?} is not a URL")]
    Master {
        /// The value given.
        url: String,
        /// The parser's complaint.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Neither flag was given and this is not a pod with a service account.
    #[error("in-cluster configuration (neither --kubeconfig nor --master was given)")]
    InCluster(#[source] InClusterError),
    /// kube-rs refused the configuration (TLS material, authentication settings).
    #[error("create the API client")]
    Client(#[source] kube::Error),
}

/// The client configuration kube-proxy would use: the kubeconfig file when given, with
/// `--master` overriding its server; `--master` alone (no credentials, like `kubectl proxy`
/// or an insecure port); in-cluster (service account) with neither.
///
/// In-cluster configuration reaches the API server through `KUBERNETES_SERVICE_HOST`, the
/// `kubernetes` Service's ClusterIP, which only works while some proxy already programs it:
/// deploy with a kubeconfig (or `--master`) naming the real API server address, as kubeadm's
/// kube-proxy DaemonSet does. A kubeconfig's `tokenFile` is re-read by kube-rs, so bound
/// service-account tokens rotate. Plain `http://` servers work.
pub async fn config(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
) -> Result<kube::Config, Error> {
    let mut config = match (kubeconfig, master) {
        (Some(path), _) => {
            let kubeconfig_error = |source| Error::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        // The URL is set just below.
        (None, Some(_)) => kube::Config::new(Default::default()),
        (None, None) => kube::Config::incluster().map_err(Error::InCluster)?,
    };
    if let Some(master) = master {
        set_master(&mut config, master)?;
    }
    config.read_timeout = Some(READ_TIMEOUT);
    // Count the read timeout from when a request is written, not from when its pooled
    // connection went idle (kube-rs's note on `read_timeout`).
    config.reset_reader_on_write = true;
    Ok(config)
}

/// [`config`], then the client.
pub async fn client(kubeconfig: Option<&Path>, master: Option<&str>) -> Result<Client, Error> {
    let config = config(kubeconfig, master).await?;
    Client::try_from(config).map_err(Error::Client)
}

/// Points `config` at `--master`. Like client-go's `DefaultServerURL`, a value without a
/// scheme gets `https://` when the configuration carries TLS settings and `http://` otherwise.
fn set_master(config: &mut kube::Config, master: &str) -> Result<(), Error> {
    let url = if master.contains("://") {
        master.to_owned()
    } else if has_tls_settings(config) {
        format!("https://{master}")
    } else {
        format!("http://{master}")
    };
    let invalid = |source: Box<dyn std::error::Error + Send + Sync>| Error::Master {
        url: master.to_owned(),
        source,
    };
    // The field's type is the `http` crate's `Uri`, which kube-rs does not re-export.
    config.cluster_url = url.parse().map_err(|e| invalid(Box::new(e)))?;
    if config.cluster_url.host().is_none() {
        return Err(invalid("no host".into()));
    }
    Ok(())
}

/// client-go's `defaultTLS`: the configuration has a CA, a client certificate, a server name
/// or skips verification.
fn has_tls_settings(config: &kube::Config) -> bool {
    let auth = &config.auth_info;
    config.root_cert.is_some()
        || config.root_cert_file.is_some()
        || config.accept_invalid_certs
        || config.tls_server_name.is_some()
        || auth.client_certificate.is_some()
        || auth.client_certificate_data.is_some()
}

/// What [`run`] watches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// This node's name (`--hostname-override` or the hostname): only this Node is watched.
    pub node_name: String,
    /// `--service-proxy-name`: watch only the Services labelled for this proxy instead of
    /// those no proxy claims (side-by-side mode). `None` or empty is kube-proxy's default.
    pub service_proxy_name: Option<String>,
    /// How often a resource the API server does not serve is probed again
    /// ([`NOT_SERVED_REPROBE`] by [`WatchOptions::new`]).
    pub not_served_reprobe: Duration,
}

impl WatchOptions {
    /// Options for `node_name`, in kube-proxy's default mode.
    pub fn new(node_name: impl Into<String>) -> Self {
        WatchOptions {
            node_name: node_name.into(),
            service_proxy_name: None,
            not_served_reprobe: NOT_SERVED_REPROBE,
        }
    }
}

/// kube-proxy's label selector for Services and EndpointSlices (the EndpointSlice controller
/// copies a Service's labels onto its slices, so one selector serves both): skip what another
/// proxy claims, or with a `service_proxy_name` take only what is claimed for it, and skip
/// headless Services either way.
pub fn service_selector(service_proxy_name: Option<&str>) -> String {
    match service_proxy_name.filter(|name| !name.is_empty()) {
        None => format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"),
        Some(name) => format!("{SERVICE_PROXY_NAME_LABEL}={name},!{HEADLESS_LABEL}"),
    }
}

/// The watcher configuration every resource starts from: lists from the watch cache, in one
/// page (see the module docs for why both are needed), bookmarks on, the 290 s watch timeout.
pub fn list_config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config
}

/// Watches Services, EndpointSlices, this node's Node and ServiceCIDRs, sending every event on
/// `tx` as it arrives (a full channel holds the watchers back; nothing is buffered here).
/// Runs until the receiver is dropped; failures are [`Event::Error`]s and are retried.
pub async fn run(client: Client, options: WatchOptions, tx: Sender<Update>) {
    let selector = service_selector(options.service_proxy_name.as_deref());
    let base = list_config();
    let services = {
        let api = watch_api::<Service>(client.clone());
        let config = base.clone().labels(&selector);
        forward(Resource::Services, &tx, Object::service, move || {
            watcher::watcher(api.clone(), config.clone()).default_backoff()
        })
    };
    let slices = {
        let api = watch_api::<EndpointSlice>(client.clone());
        let config = base.clone().labels(&selector);
        forward(
            Resource::EndpointSlices,
            &tx,
            Object::endpoint_slice,
            move || watcher::watcher(api.clone(), config.clone()).default_backoff(),
        )
    };
    let node = {
        let api = watch_api::<Node>(client.clone());
        let config = base
            .clone()
            .fields(&format!("metadata.name={}", options.node_name));
        forward(Resource::Node, &tx, Object::node, move || {
            watcher::watcher(api.clone(), config.clone()).default_backoff()
        })
    };
    let cidrs = service_cidrs(client, base, options.not_served_reprobe, &tx);
    tokio::select! {
        () = tx.closed() => {}
        _ = async { tokio::join!(services, slices, node, cidrs) } => {}
    }
}

/// The ServiceCIDR watcher, which, unlike the others, may find its resource not served.
async fn service_cidrs(
    client: Client,
    config: watcher::Config,
    reprobe: Duration,
    tx: &Sender<Update>,
) {
    let api = watch_api::<ServiceCIDR>(client);
    let mut reported_absent = false;
    loop {
        let mut forwarder = Forwarder::new(Resource::ServiceCidrs, tx, Object::service_cidr);
        forwarder.not_found_is_absence = true;
        let (api, config) = (api.clone(), config.clone());
        let end = forwarder
            .run(move || watcher::watcher(api.clone(), config.clone()).default_backoff())
            .await;
        match end {
            End::Closed => return,
            End::NotServed => {
                // Announce "none" once, and again only if objects were sent since.
                if !reported_absent || forwarder.sent_state {
                    tracing::info!(
                        resource = %Resource::ServiceCidrs,
                        "the API server does not serve ServiceCIDRs (404); treating the cluster as having none"
                    );
                    for event in [Event::Relisting, Event::Synced] {
                        if forwarder.send(event).await.is_err() {
                            return;
                        }
                    }
                    reported_absent = true;
                }
                tokio::time::sleep(reprobe).await;
            }
        }
    }
}

/// Runs one resource's watcher, restarting it when kube-rs cannot recover by itself.
async fn forward<K, S>(
    resource: Resource,
    tx: &Sender<Update>,
    wrap: fn(K) -> Object,
    make: impl Fn() -> S,
) where
    K: kube::Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    // `not_found_is_absence` is off: this only ends when the receiver is gone.
    Forwarder::new(resource, tx, wrap).run(make).await;
}

/// Why [`Forwarder::run`] returned.
enum End {
    /// The receiver was dropped.
    Closed,
    /// The API server answered 404 for the resource (only with `not_found_is_absence`).
    NotServed,
}

/// The receiver was dropped.
struct Closed;

/// Maps one resource's watcher events to [`Update`]s.
struct Forwarder<'a, K> {
    resource: Resource,
    tx: &'a Sender<Update>,
    wrap: fn(K) -> Object,
    /// A 404 ends the run with [`End::NotServed`] instead of being retried.
    not_found_is_absence: bool,
    /// The watcher said `Init`, and nothing has been sent for that relist yet.
    relist_pending: bool,
    /// Something other than errors was sent (for the ServiceCIDR absence announcement).
    sent_state: bool,
    last_alive: Option<Instant>,
    /// Spaces restarts of the whole watcher (after an HTTP 410 on a watch request).
    restarts: DefaultBackoff,
}

impl<'a, K: kube::Resource> Forwarder<'a, K> {
    fn new(resource: Resource, tx: &'a Sender<Update>, wrap: fn(K) -> Object) -> Self {
        Forwarder {
            resource,
            tx,
            wrap,
            not_found_is_absence: false,
            relist_pending: false,
            sent_state: false,
            last_alive: None,
            restarts: DefaultBackoff::default(),
        }
    }

    async fn run<S>(&mut self, make: impl Fn() -> S) -> End
    where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    {
        loop {
            let mut stream = pin!(make());
            // A watcher stream never ends by itself; `None` is treated like a restart.
            while let Some(item) = stream.next().await {
                let step = match item {
                    Ok(event) => self.event(event).await.map(|()| Step::Continue),
                    Err(error) => self.error(error).await,
                };
                match step {
                    Ok(Step::Continue) => {}
                    Ok(Step::Restart) => break,
                    Ok(Step::NotServed) => return End::NotServed,
                    Err(Closed) => return End::Closed,
                }
            }
            self.relist_pending = false;
            let delay = self.restarts.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                () = self.tx.closed() => return End::Closed,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn event(&mut self, event: watcher::Event<K>) -> Result<(), Closed> {
        match event {
            watcher::Event::Init => {
                // Sent before the list request: wait for its first answer (see module docs).
                self.relist_pending = true;
                return Ok(());
            }
            watcher::Event::InitApply(object) => {
                self.flush_relist().await?;
                self.send(Event::Apply(self.object(object))).await?;
            }
            watcher::Event::InitDone => {
                self.flush_relist().await?;
                self.send(Event::Synced).await?;
            }
            watcher::Event::Apply(object) => {
                self.send(Event::Apply(self.object(object))).await?;
            }
            watcher::Event::Delete(object) => {
                let meta = object.meta();
                let event = Event::Delete {
                    namespace: meta.namespace.clone().unwrap_or_default(),
                    name: meta.name.clone().unwrap_or_default(),
                };
                self.send(event).await?;
            }
        }
        self.sent_state = true;
        let now = Instant::now();
        if self
            .last_alive
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            self.last_alive = Some(now);
            self.send(Event::Alive).await?;
        }
        Ok(())
    }

    async fn error(&mut self, error: watcher::Error) -> Result<Step, Closed> {
        // A failed list is retried from `Init`, which will be held back again.
        self.relist_pending = false;
        if self.not_found_is_absence && status_of(&error).is_some_and(|s| s.code == 404) {
            return Ok(Step::NotServed);
        }
        let message = describe(&error);
        tracing::debug!(resource = %self.resource, error = %message, "watch failed; retrying");
        self.send(Event::Error(message)).await?;
        Ok(match &error {
            watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410 => {
                Step::Restart
            }
            _ => Step::Continue,
        })
    }

    fn object(&self, object: K) -> Object {
        (self.wrap)(object).without_managed_fields()
    }

    async fn flush_relist(&mut self) -> Result<(), Closed> {
        if std::mem::take(&mut self.relist_pending) {
            self.send(Event::Relisting).await?;
        }
        Ok(())
    }

    async fn send(&self, event: Event) -> Result<(), Closed> {
        self.tx
            .send(Update::new(self.resource, event))
            .await
            .map_err(|_| Closed)
    }
}

/// What to do after a watcher error.
enum Step {
    Continue,
    /// Drop the watcher and start a new one (which relists).
    Restart,
    NotServed,
}

/// The API server's `Status`, when the error is one.
fn status_of(error: &watcher::Error) -> Option<&Status> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status),
        watcher::Error::WatchError(status) => Some(status),
        _ => None,
    }
}

/// A one-line description of a watcher error for [`Event::Error`]. kube-rs's own `Display`
/// of an API error includes the whole `Status` in debug form; this keeps code, reason and
/// message.
fn describe(error: &watcher::Error) -> String {
    let (what, client) = match error {
        watcher::Error::InitialListFailed(e) => ("list failed", e),
        watcher::Error::WatchStartFailed(e) => ("watch request failed", e),
        watcher::Error::WatchFailed(e) => ("watch stream failed", e),
        watcher::Error::WatchError(status) if status.code == 410 => {
            return format!("watch expired, relisting: {}", status_text(status))
        }
        watcher::Error::WatchError(status) => {
            return format!("watch error from the API server: {}", status_text(status))
        }
        other => return error_chain(other),
    };
    match client {
        kube::Error::Api(status) => format!("{what}: {}", status_text(status)),
        other => format!("{what}: {}", error_chain(other)),
    }
}

fn status_text(status: &Status) -> String {
    let mut text = status.code.to_string();
    for part in [&status.reason, &status.message] {
        if !part.is_empty() {
            text.push(' ');
            text.push_str(part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_kube_proxy() {
        assert_eq!(
            service_selector(None),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        assert_eq!(service_selector(Some("")), service_selector(None));
        assert_eq!(
            service_selector(Some("kube-nft")),
            "service.kubernetes.io/service-proxy-name=kube-nft,!service.kubernetes.io/headless"
        );
    }

    #[test]
    fn master_without_scheme_follows_client_go() {
        let url = |master, tls| {
            let mut config = kube::Config::new(Default::default());
            config.accept_invalid_certs = tls;
            set_master(&mut config, master).map(|()| config.cluster_url.to_string())
        };
        assert_eq!(
            url("10.0.0.1:6443", true).ok().as_deref(),
            Some("https://10.0.0.1:6443/")
        );
        assert_eq!(
            url("localhost:8080", false).ok().as_deref(),
            Some("http://localhost:8080/")
        );
        assert_eq!(
            url("http://127.0.0.1:8001", true).ok().as_deref(),
            Some("http://127.0.0.1:8001/")
        );
        assert!(matches!(url("http://", false), Err(Error::Master { .. })));
    }

    #[tokio::test]
    async fn master_alone_is_a_plain_client_without_credentials() {
        let config = match config(None, Some("http://127.0.0.1:8001")).await {
            Ok(config) => config,
            Err(e) => panic!("{}", error_chain(&e)),
        };
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:8001/");
        assert_eq!(config.read_timeout, Some(READ_TIMEOUT));
        assert!(config.auth_info.token.is_none() && config.auth_info.token_file.is_none());
    }

    fn named(name: &str) -> Service {
        let mut service = Service::default();
        service.metadata.name = Some(name.to_owned());
        service
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            Status::failure("injected", "Injected").with_code(code),
        ))
    }

    type Item = Result<watcher::Event<Service>, watcher::Error>;

    /// A scripted watcher: `items`, then nothing ever again (like a quiet watch).
    fn script(items: Vec<Item>) -> impl Stream<Item = Item> {
        futures::stream::iter(items).chain(futures::stream::pending())
    }

    fn text(update: Update) -> String {
        match update.event {
            Event::Apply(object) => format!("Apply {}", object.namespace_name().1),
            Event::Error(message) => format!("Error {message}"),
            other => format!("{other:?}"),
        }
    }

    /// Runs a forwarder over the scripted watchers (one per restart) for `period`, or until
    /// `until` updates other than `Alive` arrived. `Some(true)` when it ended as not served.
    async fn forwarded(
        period: Duration,
        until: usize,
        absence: bool,
        scripts: Vec<Vec<Item>>,
    ) -> (Option<bool>, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let scripts = std::sync::Mutex::new(scripts.into_iter());
        let make = || {
            let next = scripts.lock().ok().and_then(|mut s| s.next());
            script(next.unwrap_or_default())
        };
        let mut forwarder = Forwarder::new(Resource::Services, &tx, Object::service);
        forwarder.not_found_is_absence = absence;
        let mut seen = Vec::new();
        let end = {
            let collect = async {
                while seen.iter().filter(|s| *s != "Alive").count() < until {
                    match rx.recv().await {
                        Some(update) => seen.push(text(update)),
                        None => break,
                    }
                }
            };
            tokio::select! {
                end = forwarder.run(make) => Some(matches!(end, End::NotServed)),
                () = collect => None,
                () = tokio::time::sleep(period) => None,
            }
        };
        while let Ok(update) = rx.try_recv() {
            seen.push(text(update));
        }
        (end, seen)
    }

    #[tokio::test]
    async fn a_failed_list_is_an_error_alone_and_alive_follows_the_first_object() {
        let (end, seen) = forwarded(
            Duration::from_millis(200),
            usize::MAX,
            false,
            vec![vec![
                Ok(watcher::Event::Init),
                Err(watcher::Error::InitialListFailed(api_error(500))),
                Ok(watcher::Event::Init),
                Ok(watcher::Event::InitApply(named("a"))),
                Ok(watcher::Event::InitApply(named("b"))),
                Ok(watcher::Event::InitDone),
                Ok(watcher::Event::Delete(named("a"))),
            ]],
        )
        .await;
        assert_eq!(end, None, "still running");
        assert_eq!(
            seen,
            [
                "Error list failed: 500 Injected injected",
                "Relisting",
                "Apply a",
                "Alive",
                "Apply b",
                "Synced",
                "Delete { namespace: \"\", name: \"a\" }",
            ]
        );
    }

    #[tokio::test]
    async fn an_http_410_on_a_watch_request_restarts_the_watcher_which_relists() {
        // kube-rs would retry the same stale resourceVersion forever (kube-rs#1042).
        let (_, seen) = forwarded(
            Duration::from_secs(5),
            7,
            false,
            vec![
                vec![
                    Ok(watcher::Event::Init),
                    Ok(watcher::Event::InitApply(named("a"))),
                    Ok(watcher::Event::InitDone),
                    Err(watcher::Error::WatchStartFailed(api_error(410))),
                    Err(watcher::Error::WatchStartFailed(api_error(410))),
                ],
                vec![
                    Ok(watcher::Event::Init),
                    Ok(watcher::Event::InitApply(named("b"))),
                    Ok(watcher::Event::InitDone),
                ],
            ],
        )
        .await;
        let seen: Vec<_> = seen.into_iter().filter(|s| s != "Alive").collect();
        assert_eq!(
            seen,
            [
                "Relisting",
                "Apply a",
                "Synced",
                "Error watch request failed: 410 Injected injected",
                "Relisting",
                "Apply b",
                "Synced",
            ]
        );
    }

    #[tokio::test]
    async fn a_404_means_not_served_only_where_absence_is_expected() {
        let not_found = || {
            vec![vec![
                Ok(watcher::Event::Init),
                Err(watcher::Error::InitialListFailed(api_error(404))),
            ]]
        };
        let (end, seen) =
            forwarded(Duration::from_millis(200), usize::MAX, true, not_found()).await;
        assert_eq!(end, Some(true));
        assert!(seen.is_empty(), "{seen:?}");
        let (end, seen) =
            forwarded(Duration::from_millis(200), usize::MAX, false, not_found()).await;
        assert_eq!(end, None);
        assert_eq!(seen, ["Error list failed: 404 Injected injected"]);
    }

    #[test]
    fn api_errors_are_described_by_code_reason_and_message() {
        let status = Status::failure("too old resource version: 1 (5)", "Expired").with_code(410);
        let watch = watcher::Error::WatchError(Box::new(status.clone()));
        assert_eq!(
            describe(&watch),
            "watch expired, relisting: 410 Expired too old resource version: 1 (5)"
        );
        let list = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            Status::failure("forbidden", "Forbidden").with_code(403),
        )));
        assert_eq!(describe(&list), "list failed: 403 Forbidden forbidden");
        assert_eq!(status_of(&list).map(|s| s.code), Some(403));
    }
}
