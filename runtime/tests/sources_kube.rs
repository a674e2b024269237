//! The API source against `kube_nft_testkit::apiserver`, a fake API server speaking the real
//! list/watch protocol over plain http: kube-proxy's selectors, the initial lists, changes
//! after sync, a deletion missed during an outage (410 → relist), ServiceCIDRs not served, an
//! unreachable server at start, and `--service-proxy-name`. Every wait is bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use kube_nft_runtime::sources::kube::{self as source, WatchOptions};
use kube_nft_runtime::sources::{Event, Object, Resource, Update};
use kube_nft_testkit::apiserver::FakeApiServer;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// The resources the API source watches (legacy Endpoints are manifests-only).
const WATCHED: [Resource; 4] = [
    Resource::Services,
    Resource::EndpointSlices,
    Resource::Node,
    Resource::ServiceCidrs,
];

const CIDR_API: (&str, &str) = ("networking.k8s.io/v1", "ServiceCIDR");

fn service(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn slice(name: &str, service: &str, address: &str, extra_labels: Value) -> Value {
    let mut labels = json!({"kubernetes.io/service-name": service});
    if let (Some(labels), Some(extra)) = (labels.as_object_mut(), extra_labels.as_object()) {
        labels.extend(extra.clone());
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn service_cidr() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/12"]},
    })
}

/// A cluster with one Service (and slice) for every selector case and two nodes.
fn populate(server: &FakeApiServer) {
    let objects = [
        service("web", json!({})),
        slice("web-1", "web", "10.0.1.5", json!({})),
        service(
            "other",
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ),
        slice(
            "other-1",
            "other",
            "10.0.2.5",
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ),
        service("headless", json!({"service.kubernetes.io/headless": ""})),
        slice(
            "headless-1",
            "headless",
            "10.0.3.5",
            json!({"service.kubernetes.io/headless": ""}),
        ),
        service(
            "mine",
            json!({"service.kubernetes.io/service-proxy-name": "kube-nft"}),
        ),
        slice(
            "mine-1",
            "mine",
            "10.0.4.5",
            json!({"service.kubernetes.io/service-proxy-name": "kube-nft"}),
        ),
        node("node-a"),
        node("node-b"),
        service_cidr(),
    ];
    for object in objects {
        if let Err(e) = server.apply(object) {
            panic!("apply: {e}");
        }
    }
}

struct Harness {
    server: FakeApiServer,
    _kubeconfig: TempDir,
    rx: mpsc::Receiver<Update>,
    task: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_server() -> FakeApiServer {
    FakeApiServer::start_local().unwrap_or_else(|e| panic!("fake API server: {e}"))
}

impl Harness {
    /// Starts the source against `server` through a plain-http kubeconfig.
    async fn start(server: FakeApiServer, options: WatchOptions) -> Harness {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&path)
            .unwrap_or_else(|e| panic!("write kubeconfig: {e}"));
        let client = match source::client(Some(&path), None).await {
            Ok(client) => client,
            Err(e) => panic!("client: {e:?}"),
        };
        Harness::with_client(server, dir, client, options)
    }

    fn with_client(
        server: FakeApiServer,
        dir: TempDir,
        client: kube::Client,
        options: WatchOptions,
    ) -> Harness {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(source::run(client, options, tx));
        Harness {
            server,
            _kubeconfig: dir,
            rx,
            task,
        }
    }

    /// Collects updates until `done` holds for what was collected, or panics after `within`.
    async fn until(&mut self, within: Duration, done: impl Fn(&[Update]) -> bool) -> Vec<Update> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while !done(&seen) {
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.rx.recv(),
            )
            .await
            {
                Ok(Some(update)) => seen.push(update),
                Ok(None) => panic!("the source stopped; got {:#?}", summaries(&seen)),
                Err(_) => panic!("timed out after {within:?}; got {:#?}", summaries(&seen)),
            }
        }
        seen
    }

    /// Until every watched resource has reported `Synced` (once more than before).
    async fn synced(&mut self) -> Vec<Update> {
        self.until(Duration::from_secs(10), |seen| {
            WATCHED.iter().all(|r| {
                seen.iter()
                    .any(|u| u.resource == *r && u.event == Event::Synced)
            })
        })
        .await
    }

    /// Asserts that nothing but `Alive` arrives for `period`.
    async fn silent_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Ok(Some(update)) = timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.rx.recv(),
        )
        .await
        {
            assert_eq!(update.event, Event::Alive, "expected silence: {update:?}");
        }
    }
}

/// `Event namespace/name` (or the message), without `Alive`s.
fn summaries(updates: &[Update]) -> Vec<String> {
    updates
        .iter()
        .filter(|u| u.event != Event::Alive)
        .map(|u| format!("{} {}", u.resource, what(&u.event)))
        .collect()
}

fn what(event: &Event) -> String {
    match event {
        Event::Relisting => "Relisting".to_owned(),
        Event::Synced => "Synced".to_owned(),
        Event::Alive => "Alive".to_owned(),
        Event::Apply(object) => {
            let (namespace, name) = object.namespace_name();
            format!("Apply {namespace}/{name}")
        }
        Event::Delete { namespace, name } => format!("Delete {namespace}/{name}"),
        Event::Error(message) => format!("Error {message}"),
    }
}

/// One resource's events, without `Alive`s.
fn of(updates: &[Update], resource: Resource) -> Vec<String> {
    updates
        .iter()
        .filter(|u| u.resource == resource && u.event != Event::Alive)
        .map(|u| what(&u.event))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn requests_for(server: &FakeApiServer, path: &str) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.split('?').next() == Some(&format!("GET {path}")))
        .collect()
}

#[tokio::test]
async fn initial_lists_honour_kube_proxys_selectors() {
    let server = start_server();
    populate(&server);
    let mut h = Harness::start(server, WatchOptions::new("node-a")).await;
    let initial = h.synced().await;

    // Not delivered: the Services (and slices) another proxy claims, the headless ones, the
    // one claimed for `kube-nft` (this run has no --service-proxy-name), and node-b.
    assert_eq!(
        of(&initial, Resource::Services),
        ["Relisting", "Apply default/web", "Synced"]
    );
    assert_eq!(
        of(&initial, Resource::EndpointSlices),
        ["Relisting", "Apply default/web-1", "Synced"]
    );
    assert_eq!(
        of(&initial, Resource::Node),
        ["Relisting", "Apply /node-a", "Synced"]
    );
    assert_eq!(
        of(&initial, Resource::ServiceCidrs),
        ["Relisting", "Apply /kubernetes", "Synced"]
    );
    assert!(of(&initial, Resource::Endpoints).is_empty());

    // managedFields never reach the consumer, whatever the server sent.
    for update in &initial {
        if let Event::Apply(object) = &update.event {
            assert_eq!(object.metadata().managed_fields, None);
        }
    }

    // The requests: kube-proxy's selectors, from the watch cache (resourceVersion=0), and
    // watches that ask for bookmarks.
    let services = requests_for(&h.server, "/api/v1/services");
    let selector = "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless";
    assert!(
        services.iter().all(|r| r.contains(selector)),
        "{services:#?}"
    );
    // kube-core drops resourceVersion=0 from a list with a limit: no limit may be sent.
    let lists: Vec<_> = services.iter().filter(|r| !r.contains("watch=")).collect();
    assert!(!lists.is_empty());
    assert!(
        lists.iter().all(
            |r| r.contains("resourceVersion=0&resourceVersionMatch=NotOlderThan")
                && !r.contains("limit=")
        ),
        "{lists:#?}"
    );
    let nodes = requests_for(&h.server, "/api/v1/nodes");
    assert!(
        nodes
            .iter()
            .all(|r| r.contains("fieldSelector=metadata.name%3Dnode-a")),
        "{nodes:#?}"
    );
    // The watches start once the lists are done; wait for them before checking.
    assert!(h
        .server
        .wait_until(Duration::from_secs(5), |s| s.open_watches() == 4));
    let slices = requests_for(&h.server, "/apis/discovery.k8s.io/v1/endpointslices");
    assert!(
        slices
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{slices:#?}"
    );
}

#[tokio::test]
async fn changes_after_sync_are_applies_and_deletes_and_bookmarks_stay_silent() {
    let server = start_server();
    populate(&server);
    let mut h = Harness::start(server, WatchOptions::new("node-a")).await;
    h.synced().await;
    assert!(h
        .server
        .wait_until(Duration::from_secs(5), |s| s.open_watches() == 4));

    // The fake sends a bookmark on every watch every second; kube-rs consumes them and yields
    // nothing, so a quiet cluster is silent (no `Alive` either).
    h.silent_for(Duration::from_millis(2500)).await;

    let modified = slice("web-1", "web", "10.0.1.6", json!({}));
    h.server.apply(modified).unwrap_or_else(|e| panic!("{e}"));
    let batch = h
        .until(Duration::from_secs(5), |seen| {
            seen.iter().any(|u| matches!(u.event, Event::Apply(_)))
        })
        .await;
    let Some(Event::Apply(Object::EndpointSlice(applied))) = batch.last().map(|u| &u.event) else {
        panic!("{batch:?}");
    };
    let addresses: Vec<_> = applied
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| e.addresses.clone())
        .collect();
    assert_eq!(addresses, ["10.0.1.6"]);
    // An event is proof of life: it is followed by `Alive` (rate-limited per resource).
    let alive = h
        .until(Duration::from_secs(1), |seen| !seen.is_empty())
        .await;
    assert_eq!(
        alive,
        [Update {
            resource: Resource::EndpointSlices,
            event: Event::Alive
        }]
    );

    h.server
        .delete("v1", "Service", Some("default"), "web")
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = h
        .until(Duration::from_secs(5), |seen| !summaries(seen).is_empty())
        .await;
    assert_eq!(summaries(&batch), ["services Delete default/web"]);

    // A Service that becomes claimed by another proxy leaves the selection: a Delete.
    h.server
        .apply(service("web2", json!({})))
        .unwrap_or_else(|e| panic!("{e}"));
    h.until(Duration::from_secs(5), |seen| !summaries(seen).is_empty())
        .await;
    h.server
        .apply(service(
            "web2",
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = h
        .until(Duration::from_secs(5), |seen| !summaries(seen).is_empty())
        .await;
    assert_eq!(summaries(&batch), ["services Delete default/web2"]);

    // Other nodes and other proxies' objects change unseen.
    h.server
        .apply(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-b", "labels": {"x": "y"}}}))
        .unwrap_or_else(|e| panic!("{e}"));
    h.server
        .apply(slice(
            "other-1",
            "other",
            "10.0.2.6",
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    // A cut watch resumes from its resourceVersion: no relist, no error that matters.
    h.server.drop_watches();
    h.silent_for_except_errors(Duration::from_secs(2)).await;

    h.server
        .delete(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("default"),
            "web-1",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = h
        .until(Duration::from_secs(5), |seen| {
            seen.iter().any(|u| matches!(u.event, Event::Delete { .. }))
        })
        .await;
    assert_eq!(
        summaries(&batch)
            .into_iter()
            .filter(|s| !s.contains(" Error "))
            .collect::<Vec<_>>(),
        ["endpointslices Delete default/web-1"]
    );
}

impl Harness {
    /// Like [`Harness::silent_for`], but tolerates `Error`s (a cut watch may report one
    /// before it resumes).
    async fn silent_for_except_errors(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Ok(Some(update)) = timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.rx.recv(),
        )
        .await
        {
            assert!(
                matches!(update.event, Event::Alive | Event::Error(_)),
                "expected silence: {update:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_deletion_missed_during_an_outage_shows_up_as_a_relist_without_it() {
    let server = start_server();
    populate(&server);
    server
        .apply(service("db", json!({})))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = Harness::start(server, WatchOptions::new("node-a")).await;
    let initial = h.synced().await;
    assert_eq!(
        of(&initial, Resource::Services),
        [
            "Relisting",
            "Apply default/db",
            "Apply default/web",
            "Synced"
        ]
    );
    assert!(h
        .server
        .wait_until(Duration::from_secs(5), |s| s.open_watches() == 4));

    // The DELETED event is never sent and the history is compacted: the resumed watch gets a
    // 410, and kube-rs relists. No Delete comes; the relist simply does not mention web.
    h.server
        .delete_missed("v1", "Service", Some("default"), "web")
        .unwrap_or_else(|e| panic!("{e}"));
    h.server.drop_watches();
    let batch = h
        .until(Duration::from_secs(10), |seen| {
            seen.iter()
                .any(|u| u.resource == Resource::Services && u.event == Event::Synced)
        })
        .await;
    let services = of(&batch, Resource::Services);
    let relist = services
        .iter()
        .position(|s| s == "Relisting")
        .unwrap_or_else(|| panic!("no relist: {services:#?}"));
    assert!(
        services[..relist].iter().all(|s| s.starts_with("Error ")),
        "{services:#?}"
    );
    assert!(
        services[..relist].iter().any(|s| s.contains("410")),
        "the 410 is reported: {services:#?}"
    );
    assert_eq!(
        services[relist..],
        strings(&["Relisting", "Apply default/db", "Synced"])[..]
    );
    assert!(!summaries(&batch).iter().any(|s| s.contains("Delete")));
}

#[tokio::test]
async fn servicecidrs_not_served_sync_empty_once_without_an_error_loop() {
    let server = start_server();
    populate(&server);
    server
        .set_kind_missing(CIDR_API.0, CIDR_API.1, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = Harness::start(server, WatchOptions::new("node-a")).await;
    let initial = h.synced().await;
    assert_eq!(
        of(&initial, Resource::ServiceCidrs),
        ["Relisting", "Synced"]
    );
    assert_eq!(of(&initial, Resource::Services).len(), 3);

    // One list request, then nothing: no error loop.
    h.silent_for(Duration::from_secs(3)).await;
    let cidrs = requests_for(&h.server, "/apis/networking.k8s.io/v1/servicecidrs");
    assert_eq!(cidrs.len(), 1, "{cidrs:#?}");
}

#[tokio::test]
async fn servicecidrs_are_probed_again_and_picked_up_when_served() {
    let server = start_server();
    populate(&server);
    server
        .set_kind_missing(CIDR_API.0, CIDR_API.1, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut options = WatchOptions::new("node-a");
    options.not_served_reprobe = Duration::from_millis(300);
    let mut h = Harness::start(server, options).await;
    let initial = h.synced().await;
    assert_eq!(
        of(&initial, Resource::ServiceCidrs),
        ["Relisting", "Synced"]
    );

    // Probes that find nothing again say nothing again.
    h.silent_for(Duration::from_secs(1)).await;
    let probes = requests_for(&h.server, "/apis/networking.k8s.io/v1/servicecidrs").len();
    assert!((2..=6).contains(&probes), "{probes} probes in ~1.3 s");

    // The API appears (a control plane upgraded in place): a normal list.
    h.server
        .set_kind_missing(CIDR_API.0, CIDR_API.1, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = h
        .until(Duration::from_secs(5), |seen| {
            seen.iter()
                .any(|u| u.resource == Resource::ServiceCidrs && u.event == Event::Synced)
        })
        .await;
    assert_eq!(
        of(&batch, Resource::ServiceCidrs),
        ["Relisting", "Apply /kubernetes", "Synced"]
    );

    // And disappears again: an empty relist, so the consumer drops what it had.
    h.server
        .set_kind_missing(CIDR_API.0, CIDR_API.1, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = h
        .until(Duration::from_secs(10), |seen| {
            seen.iter()
                .any(|u| u.resource == Resource::ServiceCidrs && u.event == Event::Synced)
        })
        .await;
    let cidrs = of(&batch, Resource::ServiceCidrs);
    let non_errors: Vec<_> = cidrs.iter().filter(|s| !s.starts_with("Error ")).collect();
    assert_eq!(non_errors, ["Relisting", "Synced"], "{cidrs:#?}");
}

#[tokio::test]
async fn unreachable_at_start_reports_errors_then_converges() {
    let server = start_server();
    populate(&server);
    server.set_unreachable(true);
    let mut h = Harness::start(server, WatchOptions::new("node-a")).await;

    // Every watcher reports its failed list, and nothing else: no relist that never ends.
    let errors = h
        .until(Duration::from_secs(10), |seen| {
            WATCHED.iter().all(|r| {
                seen.iter()
                    .any(|u| u.resource == *r && matches!(u.event, Event::Error(_)))
            })
        })
        .await;
    assert!(
        errors
            .iter()
            .all(|u| matches!(&u.event, Event::Error(m) if m.starts_with("list failed: "))),
        "{:#?}",
        summaries(&errors)
    );

    h.server.set_unreachable(false);
    let converged = h.synced().await;
    let mut by_resource = BTreeMap::new();
    for resource in WATCHED {
        let events: Vec<String> = of(&converged, resource)
            .into_iter()
            .filter(|s| !s.starts_with("Error "))
            .collect();
        by_resource.insert(resource, events);
    }
    assert_eq!(
        by_resource[&Resource::Services],
        ["Relisting", "Apply default/web", "Synced"]
    );
    assert_eq!(
        by_resource[&Resource::ServiceCidrs],
        ["Relisting", "Apply /kubernetes", "Synced"]
    );
}

#[tokio::test]
async fn service_proxy_name_selects_the_services_claimed_for_this_proxy() {
    let server = start_server();
    populate(&server);
    // Through `--master` alone this time (no kubeconfig: no credentials).
    let client = match source::client(None, Some(&server.url())).await {
        Ok(client) => client,
        Err(e) => panic!("client: {e:?}"),
    };
    let mut options = WatchOptions::new("node-a");
    options.service_proxy_name = Some("kube-nft".to_owned());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut h = Harness::with_client(server, dir, client, options);
    let initial = h.synced().await;
    assert_eq!(
        of(&initial, Resource::Services),
        ["Relisting", "Apply default/mine", "Synced"]
    );
    assert_eq!(
        of(&initial, Resource::EndpointSlices),
        ["Relisting", "Apply default/mine-1", "Synced"]
    );
    let services = requests_for(&h.server, "/api/v1/services");
    assert!(
        services.iter().all(|r| r.contains(
            "labelSelector=service.kubernetes.io%2Fservice-proxy-name%3Dkube-nft%2C%21service.kubernetes.io%2Fheadless"
        )),
        "{services:#?}"
    );
}

#[tokio::test]
async fn master_overrides_the_kubeconfig_server() {
    let server = start_server();
    populate(&server);
    // A kubeconfig naming a port nothing listens on, and --master naming the real server.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("kubeconfig");
    let kubeconfig = server
        .kubeconfig()
        .replace(&server.url(), &format!("http://{dead}"));
    std::fs::write(&path, kubeconfig).unwrap_or_else(|e| panic!("write: {e}"));
    let client = match source::client(Some(&path), Some(&server.url())).await {
        Ok(client) => client,
        Err(e) => panic!("client: {e:?}"),
    };
    let mut h = Harness::with_client(server, dir, client, WatchOptions::new("node-a"));
    let initial = h.synced().await;
    assert_eq!(
        of(&initial, Resource::Node),
        ["Relisting", "Apply /node-a", "Synced"]
    );
}

/// `API_ACCESS` (the RBAC rules `deploy/` grants) is checked against what kube-rs really
/// sends: every request of a run through lists, watches and a change is a verb on a resource
/// listed there, and every listed rule is used.
#[tokio::test]
async fn every_request_is_covered_by_api_access() {
    let server = start_server();
    populate(&server);
    let mut h = Harness::start(server, WatchOptions::new("node-a")).await;
    h.synced().await;
    if let Err(e) = h.server.apply(service("late", json!({}))) {
        panic!("apply: {e}");
    }
    h.until(Duration::from_secs(10), |seen| {
        of(seen, Resource::Services).contains(&"Apply default/late".to_owned())
    })
    .await;

    let mut used = std::collections::BTreeSet::new();
    for request in h.server.requests() {
        let (method, target) = request.split_once(' ').unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        // `/api/v1/<resource>` or `/apis/<group>/<version>/<resource>`, cluster-wide.
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, resource) = match parts.as_slice() {
            ["api", _, resource] => ("", *resource),
            ["apis", group, _, resource] => (*group, *resource),
            _ => panic!("unexpected request {request}"),
        };
        let watch = query.split('&').any(|pair| pair == "watch=true");
        let verb = match (method, watch) {
            ("GET", true) => "watch",
            ("GET", false) => "list",
            _ => panic!("unexpected method in {request}"),
        };
        let rule = source::API_ACCESS
            .iter()
            .find(|rule| rule.group == group && rule.resource == resource)
            .unwrap_or_else(|| panic!("{request}: {group}/{resource} is not in API_ACCESS"));
        assert!(rule.verbs.contains(&verb), "{request}: {verb} not granted");
        used.insert((rule.group, rule.resource, verb));
    }
    for rule in source::API_ACCESS {
        for verb in rule.verbs {
            assert!(
                used.contains(&(rule.group, rule.resource, *verb)),
                "{}/{} {verb} is granted but never used",
                rule.group,
                rule.resource
            );
        }
    }
}
