//! The manifests source against a real directory: the initial list, then only differences as
//! files are edited, added, deleted, broken and fixed, and the periodic rescan catching a
//! change inotify cannot see. Every wait is bounded.

use std::fs;
use std::path::Path;
use std::time::Duration;

use kube_nft_runtime::sources::manifests;
use kube_nft_runtime::sources::{Event, Object, Resource, Update};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// How long to wait for the first event of a change (debounce plus scan, with lots of slack).
const FIRST: Duration = Duration::from_secs(5);
/// How long the source must stay silent for a batch of events to count as complete.
const QUIET: Duration = Duration::from_millis(400);
/// No rescan during the test unless the test asks for one.
const NEVER: Duration = Duration::from_secs(3600);

const WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.0.1.5]
  conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
";

const NODE: &str = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}}
{"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
 "spec": {"cidrs": ["10.96.0.0/12"]}}
"#;

const LEGACY: &str = "\
apiVersion: v1
kind: Endpoints
metadata: {name: old, namespace: legacy}
subsets:
- addresses: [{ip: 10.0.9.9}]
  ports: [{port: 53, protocol: UDP}]
";

const DB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec:
  clusterIP: 10.96.0.20
  ports: [{port: 5432}]
";

struct Harness {
    dir: TempDir,
    rx: mpsc::Receiver<Update>,
    task: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Harness {
    fn start(files: &[(&str, &str)], rescan: Duration) -> Harness {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        Harness::start_in(dir, rescan)
    }

    fn start_in(dir: TempDir, rescan: Duration) -> Harness {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(manifests::run(dir.path().to_path_buf(), rescan, tx));
        Harness { dir, rx, task }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every update up to the fifth `Synced` (the initial list), summarized.
    async fn initial(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        let mut synced = 0;
        let deadline = Instant::now() + FIRST;
        while synced < Resource::ALL.len() {
            let update = match timeout(deadline - Instant::now(), self.rx.recv()).await {
                Ok(Some(update)) => update,
                other => panic!("initial list incomplete ({other:?}); so far {seen:#?}"),
            };
            synced += usize::from(update.event == Event::Synced);
            seen.push(summary(&update));
        }
        seen
    }

    /// The next batch of updates: the first within [`FIRST`], then until [`QUIET`].
    async fn changes(&mut self) -> Vec<Update> {
        let mut batch = Vec::new();
        match timeout(FIRST, self.rx.recv()).await {
            Ok(Some(update)) => batch.push(update),
            other => panic!("no update within {FIRST:?}: {other:?}"),
        }
        while let Ok(Some(update)) = timeout(QUIET, self.rx.recv()).await {
            batch.push(update);
        }
        batch
    }

    /// Asserts that nothing arrives for `period`.
    async fn silent_for(&mut self, period: Duration) {
        if let Ok(update) = timeout(period, self.rx.recv()).await {
            panic!("expected silence, got {update:?}");
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `resource Event namespace/name` (or the error message), for compact assertions.
fn summary(update: &Update) -> String {
    let what = match &update.event {
        Event::Relisting => "Relisting".to_owned(),
        Event::Synced => "Synced".to_owned(),
        Event::Alive => "Alive".to_owned(),
        Event::Apply(object) => {
            let (namespace, name) = object.namespace_name();
            format!("Apply {namespace}/{name}")
        }
        Event::Delete { namespace, name } => format!("Delete {namespace}/{name}"),
        Event::Error(message) => format!("Error {message}"),
    };
    format!("{} {what}", update.resource)
}

fn summaries(updates: &[Update]) -> Vec<String> {
    updates.iter().map(summary).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The initial list for [`WEB`] + [`NODE`] + [`LEGACY`]: relist markers for all five
/// resources, the objects in (resource, namespace, name) order, then five `Synced`.
fn initial_of_all() -> Vec<String> {
    strings(&[
        "services Relisting",
        "endpointslices Relisting",
        "endpoints Relisting",
        "nodes Relisting",
        "servicecidrs Relisting",
        "services Apply default/web",
        "endpointslices Apply default/web-1",
        "endpoints Apply legacy/old",
        "nodes Apply /node-a",
        "servicecidrs Apply /kubernetes",
        "services Synced",
        "endpointslices Synced",
        "endpoints Synced",
        "nodes Synced",
        "servicecidrs Synced",
    ])
}

fn slice_addresses(update: &Update) -> Vec<String> {
    let Event::Apply(Object::EndpointSlice(slice)) = &update.event else {
        panic!("not an EndpointSlice apply: {update:?}");
    };
    slice
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| e.addresses.clone())
        .collect()
}

#[tokio::test]
async fn initial_list_relists_every_resource_then_applies_then_syncs() {
    let mut h = Harness::start(
        &[
            ("web.yaml", WEB),
            ("nodes/node.json", NODE),
            ("legacy.yml", LEGACY),
            ("README.txt", "not a manifest"),
        ],
        NEVER,
    );
    assert_eq!(h.initial().await, initial_of_all());
    h.silent_for(QUIET).await;
}

#[tokio::test]
async fn empty_directory_still_syncs_every_resource() {
    let mut h = Harness::start(&[], NEVER);
    let initial = h.initial().await;
    assert_eq!(initial.len(), 10, "{initial:#?}");
    assert!(initial[..5].iter().all(|s| s.ends_with("Relisting")));
}

#[tokio::test]
async fn editing_an_endpoint_sends_one_apply_and_rewriting_the_same_text_sends_nothing() {
    let mut h = Harness::start(&[("web.yaml", WEB)], NEVER);
    h.initial().await;

    write(h.path(), "web.yaml", &WEB.replace("10.0.1.5", "10.0.1.6"));
    let batch = h.changes().await;
    assert_eq!(
        summaries(&batch),
        strings(&["endpointslices Apply default/web-1"])
    );
    assert_eq!(slice_addresses(&batch[0]), ["10.0.1.6"]);

    // Same text again (a `touch`-like save): the file is reread, nothing changed.
    write(h.path(), "web.yaml", &WEB.replace("10.0.1.5", "10.0.1.6"));
    h.silent_for(Duration::from_secs(1)).await;

    // Reformatting without a semantic change (flow style to block style) is no change either.
    let reformatted = WEB.replace("10.0.1.5", "10.0.1.6").replace(
        "  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]",
        "  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    protocol: TCP",
    );
    write(h.path(), "web.yaml", &reformatted);
    h.silent_for(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn adding_a_file_applies_its_objects_and_deleting_one_deletes_them() {
    let mut h = Harness::start(&[("web.yaml", WEB)], NEVER);
    h.initial().await;

    write(h.path(), "more/db.yaml", DB);
    write(h.path(), "more/node.json", NODE);
    let mut added = summaries(&h.changes().await);
    added.sort();
    assert_eq!(
        added,
        strings(&[
            "nodes Apply /node-a",
            "servicecidrs Apply /kubernetes",
            "services Apply data/db",
        ])
    );

    fs::remove_file(h.path().join("web.yaml")).unwrap_or_else(|e| panic!("rm: {e}"));
    assert_eq!(
        summaries(&h.changes().await),
        strings(&[
            "services Delete default/web",
            "endpointslices Delete default/web-1",
        ])
    );

    // A whole subdirectory going away deletes what its files held.
    fs::remove_dir_all(h.path().join("more")).unwrap_or_else(|e| panic!("rm -r: {e}"));
    let mut gone = summaries(&h.changes().await);
    gone.sort();
    assert_eq!(
        gone,
        strings(&[
            "nodes Delete /node-a",
            "servicecidrs Delete /kubernetes",
            "services Delete data/db",
        ])
    );
}

#[tokio::test]
async fn a_broken_file_keeps_its_objects_reports_once_and_resumes_when_fixed() {
    let mut h = Harness::start(&[("web.yaml", WEB), ("db.yaml", DB)], NEVER);
    h.initial().await;

    let broken = "apiVersion: v1\nkind: Service\nmetadata: {name: [\n";
    write(h.path(), "web.yaml", broken);
    let batch = h.changes().await;
    let file = h.path().join("web.yaml").display().to_string();
    // One error per resource the file held; no Delete.
    assert_eq!(batch.len(), 2, "{batch:#?}");
    let resources: Vec<_> = batch.iter().map(|u| u.resource).collect();
    assert_eq!(resources, [Resource::Services, Resource::EndpointSlices]);
    for update in &batch {
        let Event::Error(message) = &update.event else {
            panic!("expected an error: {update:?}");
        };
        // `FILE:LINE: message`.
        let rest = message
            .strip_prefix(&format!("{file}:"))
            .unwrap_or_else(|| panic!("error does not start with the file: {message}"));
        assert!(
            rest.starts_with(|c: char| c.is_ascii_digit()),
            "no line: {message}"
        );
    }

    // The other file still syncs while this one is broken.
    write(h.path(), "db.yaml", &DB.replace("5432", "5433"));
    assert_eq!(
        summaries(&h.changes().await),
        strings(&["services Apply data/db"])
    );

    // Another broken version with the same error is not reported again.
    write(h.path(), "web.yaml", broken);
    h.silent_for(Duration::from_secs(1)).await;

    // Fixed, with one change: only that change is sent.
    write(h.path(), "web.yaml", &WEB.replace("10.0.1.5", "10.0.1.7"));
    let batch = h.changes().await;
    assert_eq!(
        summaries(&batch),
        strings(&["endpointslices Apply default/web-1"])
    );
    assert_eq!(slice_addresses(&batch[0]), ["10.0.1.7"]);
}

#[tokio::test]
async fn a_file_broken_from_the_start_is_an_error_and_the_rest_syncs() {
    let mut h = Harness::start(&[("a.yaml", "kind: [\n"), ("web.yaml", WEB)], NEVER);
    let initial = h.initial().await;
    // It held nothing yet, so every resource hears of it, before the list.
    assert!(
        initial[..5]
            .iter()
            .all(|s| s.contains(" Error ") && s.contains("a.yaml:")),
        "{initial:#?}"
    );
    assert_eq!(
        initial[5..10],
        strings(&[
            "services Relisting",
            "endpointslices Relisting",
            "endpoints Relisting",
            "nodes Relisting",
            "servicecidrs Relisting",
        ])[..]
    );
    assert_eq!(
        initial[10..12],
        strings(&[
            "services Apply default/web",
            "endpointslices Apply default/web-1",
        ])[..]
    );
}

#[tokio::test]
async fn the_first_file_in_path_order_wins_a_duplicate() {
    let mut h = Harness::start(
        &[
            ("a.yaml", DB),
            ("b.yaml", &DB.replace("10.96.0.20", "10.96.0.99")),
        ],
        NEVER,
    );
    let initial = h.initial().await;
    assert_eq!(
        initial
            .iter()
            .filter(|s| s.contains("Apply"))
            .collect::<Vec<_>>(),
        ["services Apply data/db"]
    );

    // The winner goes away: the other copy takes over, as an update, not a delete.
    fs::remove_file(h.path().join("a.yaml")).unwrap_or_else(|e| panic!("rm: {e}"));
    let batch = h.changes().await;
    assert_eq!(summaries(&batch), strings(&["services Apply data/db"]));
    let Event::Apply(Object::Service(service)) = &batch[0].event else {
        panic!("{batch:?}");
    };
    let cluster_ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    assert_eq!(cluster_ip, Some("10.96.0.99"));
}

#[tokio::test]
async fn the_periodic_rescan_catches_a_change_inotify_cannot_see() {
    // A symlinked file whose target lives outside the tree: inotify watches the tree's
    // directories, so writing the target makes no event there (ConfigMap volumes and
    // config-management tools link files like this).
    let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    write(outside.path(), "web.yaml", WEB);
    let linked = || {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::os::unix::fs::symlink(outside.path().join("web.yaml"), dir.path().join("web.yaml"))
            .unwrap_or_else(|e| panic!("symlink: {e}"));
        dir
    };

    // With inotify alone the change is not seen; with a rescan it is.
    let mut blind = Harness::start_in(linked(), NEVER);
    blind.initial().await;
    let mut rescanning = Harness::start_in(linked(), Duration::from_millis(300));
    rescanning.initial().await;

    write(
        outside.path(),
        "web.yaml",
        &WEB.replace("10.0.1.5", "10.0.1.8"),
    );
    let batch = rescanning.changes().await;
    assert_eq!(
        summaries(&batch),
        strings(&["endpointslices Apply default/web-1"])
    );
    assert_eq!(slice_addresses(&batch[0]), ["10.0.1.8"]);
    blind.silent_for(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_source_stops_when_the_receiver_is_dropped() {
    let mut h = Harness::start(&[("web.yaml", WEB)], NEVER);
    h.initial().await;
    let (_, rx) = mpsc::channel(1);
    drop(std::mem::replace(&mut h.rx, rx));
    let task = std::mem::replace(&mut h.task, tokio::spawn(async {}));
    match timeout(Duration::from_secs(5), task).await {
        Ok(Ok(())) => {}
        other => panic!("the source did not stop: {other:?}"),
    }
}
