//! A fake Kubernetes API server for tests: it speaks the real HTTP list/watch protocol over
//! plain `http://`, so the code under test talks to it through an ordinary kubeconfig, with
//! kube-rs's `watcher` or `kubectl`, and tests drive it synchronously from plain `#[test]`
//! functions. It serves Services, Endpoints, Nodes, EndpointSlices and ServiceCIDRs (read-only
//! over HTTP: objects change through [`FakeApiServer::apply`] and [`FakeApiServer::delete`]),
//! with one etcd-like resourceVersion counter, selectors, paging, watch resumption, bookmarks,
//! streaming lists, discovery and kubectl's Tables, and it injects the failures kube-proxy
//! has been bitten by: an unreachable server, cut watches, compaction (410 Gone), a deletion
//! that no watch ever sees, slow responses, an API that is not served, error statuses.
//! `server` is the protocol and its quirks, `store` the objects and history, `selector` the
//! selectors, `resources` discovery and `table` kubectl's columns.

mod resources;
mod selector;
mod server;
mod store;
mod table;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use server::{lock, Shared};
use store::Store;

/// What the test-side calls reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not one of the kinds served (`v1` Service, Endpoints, Node; `discovery.k8s.io/v1`
    /// EndpointSlice; `networking.k8s.io/v1` ServiceCIDR).
    #[error("{api_version:?} {kind:?} is not a kind the fake API server serves")]
    UnknownKind { api_version: String, kind: String },
    /// The object cannot be stored (no metadata object, no name).
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// Deleting something that is not there.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
}

/// A fake API server on its own thread and Tokio runtime; dropping it stops the server and
/// closes every connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

/// The bookmark interval until [`FakeApiServer::set_bookmark_interval`] changes it (the real
/// API server sends one about every minute; tests want them sooner).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

impl FakeApiServer {
    /// Serves on a listener the caller bound. The listener may belong to another network
    /// namespace than the server thread: a socket stays in the namespace it was created in, so
    /// a test binds `127.0.0.1:0` inside its namespace and the server accepts there.
    pub fn start(listener: TcpListener) -> io::Result<FakeApiServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (epoch, _) = tokio::sync::watch::channel(0);
        let uid_seed = (std::process::id() << 16) ^ u32::from(addr.port());
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(uid_seed)),
            requests: Mutex::new(Vec::new()),
            latency: Mutex::new(Duration::ZERO),
            bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
            failing: Mutex::new(None),
            unreachable: Default::default(),
            epoch,
            address: addr.to_string(),
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let server = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("fake-apiserver-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(server::serve(listener, server, shutdown_rx));
                // Dropping the runtime drops every connection task, closing its socket.
                drop(runtime);
            })?;
        Ok(FakeApiServer {
            shared,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Serves on `127.0.0.1:<free port>` in the calling thread's network namespace.
    pub fn start_local() -> io::Result<FakeApiServer> {
        FakeApiServer::start(TcpListener::bind("127.0.0.1:0")?)
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (cluster, user without credentials, context `fake`, namespace `default`)
    /// for [`url`](Self::url). It is JSON, which every kubeconfig reader accepts as YAML.
    pub fn kubeconfig(&self) -> String {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{
                "name": "fake",
                "context": {"cluster": "fake", "user": "fake", "namespace": "default"},
            }],
            "current-context": "fake",
            "preferences": {},
        });
        format!("{config:#}\n")
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Creates or updates an object (identified by apiVersion, kind, namespace and name; a
    /// namespaced object without a namespace goes to `default`) and returns its
    /// resourceVersion. A change takes the next resourceVersion and reaches matching watches
    /// as ADDED or MODIFIED; `uid` and `creationTimestamp` are filled in when missing and kept
    /// across updates. As in the real API server, an update that changes nothing is a no-op:
    /// no new resourceVersion, no event.
    pub fn apply(&self, object: Value) -> Result<String, Error> {
        lock(&self.shared.store)
            .apply(object)
            .map(|rv| rv.to_string())
    }

    fn key(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(usize, store::Key), Error> {
        let resource = resources::by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        })?;
        let namespace = if resources::RESOURCES[resource].namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        Ok((resource, (namespace.to_owned(), name.to_owned())))
    }

    /// Deletes an object: watches get DELETED with its last state at the deletion's
    /// resourceVersion, which is returned. `namespace` is ignored for cluster-scoped kinds and
    /// defaults to `default` for namespaced ones.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<String, Error> {
        let (resource, key) = Self::key(api_version, kind, namespace, name)?;
        let rv = lock(&self.shared.store).delete(resource, &key, true)?;
        Ok(rv.to_string())
    }

    /// Deletes an object as if it happened while every watch of its kind was disconnected:
    /// those watches are cut, the DELETED event is never sent, and the history is compacted so
    /// that resuming from any resourceVersion before the deletion gets 410 Gone. A correct
    /// client relists and must notice the object is gone from the list (the missed-delete bug
    /// class: kube-proxy #28674, cilium #48050).
    pub fn delete_missed(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<String, Error> {
        let (resource, key) = Self::key(api_version, kind, namespace, name)?;
        let mut store = lock(&self.shared.store);
        let rv = store.delete(resource, &key, false)?;
        // Cut first: a watch that stayed open could receive a bookmark past the deletion and
        // resume without ever noticing.
        store.drop_watches(Some(resource));
        store.compact();
        Ok(rv.to_string())
    }

    /// Forgets the event history (etcd compaction, or a watch cache that rolled over): a watch
    /// from an older resourceVersion gets an ERROR event with a 410 Expired Status, and a list
    /// `continue` token from before gets HTTP 410.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (resource, key) = Self::key(api_version, kind, namespace, name).ok()?;
        lock(&self.shared.store)
            .get(resource, &key)
            .map(|o| Value::clone(&o))
    }

    /// Every stored object of a kind, ordered by namespace and name.
    pub fn objects(&self, api_version: &str, kind: &str) -> Result<Vec<Value>, Error> {
        let (resource, _) = Self::key(api_version, kind, None, "")?;
        Ok(lock(&self.shared.store).objects(resource))
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> String {
        lock(&self.shared.store).rv().to_string()
    }

    /// `true`: "the API server is down": every open connection (watches included) is closed
    /// and new ones are accepted and closed at once. `false`: serve again.
    pub fn set_unreachable(&self, on: bool) {
        self.shared.unreachable.store(on, Ordering::SeqCst);
        if on {
            self.shared.kill_connections();
        }
    }

    /// Cuts every open watch mid-stream (the connection closes without the final chunk); a
    /// client resumes from the last resourceVersion it saw.
    pub fn drop_watches(&self) {
        lock(&self.shared.store).drop_watches(None);
    }

    /// Delays every response by `delay` (a slow or overloaded API server).
    pub fn set_latency(&self, delay: Duration) {
        *lock(&self.shared.latency) = delay;
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (for watches started
    /// from now on); [`DEFAULT_BOOKMARK_INTERVAL`] until set.
    pub fn set_bookmark_interval(&self, every: Duration) {
        *lock(&self.shared.bookmark_interval) = every.max(Duration::from_millis(1));
    }

    /// Answers every request with this HTTP status and a matching Status body (429 with
    /// `Retry-After: 1`, 500, 503, 504…), or serves normally again with `None`.
    pub fn set_failing(&self, code: Option<u16>) {
        *lock(&self.shared.failing) = code.and_then(|c| hyper::StatusCode::from_u16(c).ok());
    }

    /// Stops (or resumes) serving a kind, as when its API is not enabled (ServiceCIDR before
    /// Kubernetes 1.33): its paths are 404, it leaves discovery (with its group when nothing
    /// else in the group is served), and its open watches end. Stored objects are kept.
    pub fn set_kind_missing(
        &self,
        api_version: &str,
        kind: &str,
        missing: bool,
    ) -> Result<(), Error> {
        let (resource, _) = Self::key(api_version, kind, None, "")?;
        lock(&self.shared.store).set_hidden(resource, missing);
        Ok(())
    }

    /// Every request so far as `METHOD path?query`, the query as sent (percent-encoded).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// How many watch streams are open.
    pub fn open_watches(&self) -> usize {
        lock(&self.shared.store).open_watches()
    }

    /// Waits until `condition` holds, polling every 10 ms; `false` after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&FakeApiServer) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
