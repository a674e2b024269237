//! A folder of manifests as a source, for running without a cluster and for tests: every
//! `*.yaml`, `*.yml` and `*.json` file below a directory ([`manifest_files`], the same rules as
//! `compile -f DIR`), each parsed by `model::load`. [`run`] sends the initial state the way the
//! API source sends a list (`Relisting` for all five resources, the objects, `Synced` for all
//! five), then only differences: it watches the tree with inotify (through `notify`) and lets a
//! burst of events settle for [`DEBOUNCE`] (editors write a file in several steps: truncate,
//! write, rename), and rescans everything every `rescan` period anyway, because inotify can miss
//! changes (overlay and network filesystems, a full event queue, a symlinked file whose target
//! lives outside the tree). A scan woken by inotify rereads the files whose size, times or
//! inode changed; the periodic one rereads every file. Only a file whose text changed is
//! parsed again, a change is an object whose serialized form differs, and an object no file
//! holds any more is deleted.
//!
//! A file that does not parse keeps the objects it had (a half-saved file must not withdraw
//! its Services) and is reported once per distinct error as [`Event::Error`]; the other files
//! still sync. An object defined twice (same kind, namespace and name) is taken from the first
//! file in path order, and the duplicate is logged. Objects that do not fit their schema are
//! logged (tracing, warn) with their file and skipped, as `compile` does.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube_nft_compiler::model::{self, Source};
use notify::{EventKindMask, RecursiveMode, Watcher};
use tokio::sync::mpsc::Sender;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{error_chain, Event, Object, Resource, Update};

/// How long the tree must be quiet after a change before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest a steady stream of changes can delay a read.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// The shortest rescan period [`run`] accepts (a shorter one is raised to it).
pub const MIN_RESCAN: Duration = Duration::from_millis(100);

/// A manifest tree that could not be read or watched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory could not be listed.
    #[error("read directory {}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is not UTF-8 text.
    #[error("read {}: not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// inotify could not be set up for the tree; only the periodic rescan sees changes.
    #[error("watch {} for changes", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
}

/// Whether `path` names a manifest: `*.yaml`, `*.yml` or `*.json`.
pub fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|ext| ext.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every manifest file below `dir`, in path order (the order in which duplicates are
/// resolved). Symlinked directories are not followed (no cycles); symlinked files are. Entries
/// whose name starts with `.` are skipped: editors' swap files, and a ConfigMap volume's
/// `..data` and `..2024_…` directories, which hold a second copy of every file. An empty tree
/// is not an error here: a caller that needs files says so.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    collect(dir, true, &mut files)?;
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, root: bool, files: &mut Vec<PathBuf>) -> Result<(), Error> {
    let read_dir_error = |source| Error::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        // A subdirectory removed between being listed and being read is simply gone.
        Err(e) if !root && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        result => result.map_err(read_dir_error)?,
    };
    for entry in entries {
        let entry = entry.map_err(read_dir_error)?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_dir_error(e)),
        };
        if file_type.is_dir() {
            collect(&path, false, files)?;
        } else if is_manifest(&path) && path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

/// Sends the objects of the manifests below `dir` on `tx`, then every change to them, until
/// the receiver is dropped. `rescan` is the period of the full rescan that backs up inotify
/// (at least [`MIN_RESCAN`]). Reading and parsing run on tokio's blocking pool.
pub async fn run(dir: PathBuf, rescan: Duration, tx: Sender<Update>) {
    let rescan = rescan.max(MIN_RESCAN);
    let wake = Arc::new(Wake::default());
    let mut scanner = Scanner::new(dir, wake.clone());
    let mut full = true;
    let mut next_full = deadline(rescan);
    loop {
        let sink = tx.clone();
        let job = tokio::task::spawn_blocking(move || {
            let result = scanner.scan(full, &sink);
            (scanner, result)
        });
        let result;
        (scanner, result) = match job.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return, // the runtime is shutting down
        };
        if result.is_err() {
            return; // the receiver is gone
        }
        tokio::select! {
            () = tx.closed() => return,
            () = wake.changed.notified() => {
                let settle_by = Instant::now() + MAX_DEBOUNCE;
                while Instant::now() < settle_by
                    && tokio::time::timeout(DEBOUNCE, wake.changed.notified()).await.is_ok()
                {}
                full = wake.rescan.swap(false, Ordering::Relaxed);
            }
            () = tokio::time::sleep_until(next_full) => {
                full = true;
                next_full = deadline(rescan);
            }
        }
    }
}

fn deadline(after: Duration) -> Instant {
    let now = Instant::now();
    // A huge period (a way to say "never") must not overflow.
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// What the inotify thread tells the scan loop.
#[derive(Default)]
struct Wake {
    /// Something changed in the tree.
    changed: Notify,
    /// inotify lost events (queue overflow) or failed: the next scan rereads everything.
    rescan: AtomicBool,
}

/// `(kind, namespace, name)`: what makes two objects the same object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    resource: Resource,
    namespace: String,
    name: String,
}

impl Key {
    fn of(object: &Object) -> Self {
        let (namespace, name) = object.namespace_name();
        Key {
            resource: object.resource(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// One object of one file, with the fingerprint changes are detected by.
struct Entry {
    key: Key,
    fingerprint: u64,
    object: Object,
}

/// What a file's metadata looked like when it was last read: a non-full scan rereads only
/// files whose stamp changed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// One manifest file as last read.
#[derive(Default)]
struct FileState {
    /// The metadata at the last read; `None` until a read succeeds.
    stamp: Option<Stamp>,
    /// Hash of the text last read, whether it parsed or not.
    text_hash: Option<u64>,
    /// The objects of the last text that parsed, in file order.
    objects: Vec<Entry>,
    /// The error last reported for this file (each distinct one is reported once).
    error: Option<String>,
}

/// A key defined in two files: `(key, the file that wins, the one that loses)`.
type Duplicate = (Key, PathBuf, PathBuf);

/// The notify watcher and the identity of the directory it watches.
struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    dir: (u64, u64),
}

/// The state of the manifests source between scans (blocking code; [`run`] moves it to the
/// blocking pool and back).
struct Scanner {
    dir: PathBuf,
    wake: Arc<Wake>,
    watch: Option<DirWatch>,
    watch_error: Option<String>,
    files: BTreeMap<PathBuf, FileState>,
    /// What the consumer holds: every object sent, by key, with its fingerprint.
    sent: BTreeMap<Key, u64>,
    duplicates: BTreeSet<Duplicate>,
    /// The initial Relisting … Synced was sent.
    synced: bool,
    dir_error: Option<String>,
}

/// The receiver was dropped.
struct Closed;

fn send(tx: &Sender<Update>, resource: Resource, event: Event) -> Result<(), Closed> {
    tx.blocking_send(Update::new(resource, event))
        .map_err(|_| Closed)
}

impl Scanner {
    fn new(dir: PathBuf, wake: Arc<Wake>) -> Self {
        Scanner {
            dir,
            wake,
            watch: None,
            watch_error: None,
            files: BTreeMap::new(),
            sent: BTreeMap::new(),
            duplicates: BTreeSet::new(),
            synced: false,
            dir_error: None,
        }
    }

    /// Reads what changed (everything when `full`) and sends the differences.
    fn scan(&mut self, full: bool, tx: &Sender<Update>) -> Result<(), Closed> {
        // Watch before reading, so a change made during the walk is not missed.
        self.ensure_watch();
        let paths = match manifest_files(&self.dir) {
            Ok(paths) => paths,
            Err(e) => {
                // Keep everything: a directory that cannot be read says nothing about the
                // objects in it. Every resource's view is stale, so each hears of it.
                let message = error_chain(&e);
                if self.dir_error.as_ref() != Some(&message) {
                    for resource in Resource::ALL {
                        send(tx, resource, Event::Error(message.clone()))?;
                    }
                    self.dir_error = Some(message);
                }
                return Ok(());
            }
        };
        self.dir_error = None;
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        self.files.retain(|path, _| present.contains(path));
        for path in &paths {
            self.refresh(path, full, tx)?;
        }
        self.publish(tx)
    }

    /// Rereads one file if it changed.
    fn refresh(&mut self, path: &Path, full: bool, tx: &Sender<Update>) -> Result<(), Closed> {
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.files.remove(path);
                return Ok(());
            }
            Err(source) => {
                let error = Error::Read {
                    path: path.to_path_buf(),
                    source,
                };
                return self.file_error(path, &error_chain(&error), tx);
            }
        };
        let stamp = Stamp::of(&meta);
        let state = self.files.entry(path.to_path_buf()).or_default();
        if !full && state.stamp == Some(stamp) {
            return Ok(());
        }
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.files.remove(path);
                return Ok(());
            }
            Err(source) => {
                let error = Error::Read {
                    path: path.to_path_buf(),
                    source,
                };
                return self.file_error(path, &error_chain(&error), tx);
            }
        };
        let hash = hash_of(&bytes);
        state.stamp = Some(stamp);
        if state.text_hash == Some(hash) {
            return Ok(());
        }
        state.text_hash = Some(hash);
        let Ok(text) = String::from_utf8(bytes) else {
            let error = Error::NotText {
                path: path.to_path_buf(),
            };
            return self.file_error(path, &error.to_string(), tx);
        };
        let origin = path.display().to_string();
        match model::load(&[Source {
            origin: origin.clone(),
            text,
        }]) {
            Ok(loaded) => {
                for diagnostic in &loaded.diagnostics {
                    tracing::warn!(file = %origin, "{diagnostic}");
                }
                for (kind, count) in &loaded.skipped {
                    tracing::debug!(file = %origin, kind, count, "skipped objects of a kind kube-nft does not use");
                }
                state.objects = entries(loaded.snapshot);
                if state.error.take().is_some() {
                    tracing::info!(file = %origin, "manifest file parses again");
                }
                Ok(())
            }
            Err(e) => self.file_error(path, &e.to_string(), tx),
        }
    }

    /// Reports a file that could not be read or parsed, once per distinct error. Its objects
    /// stay. The error goes to the resources the file held objects of (to all of them when it
    /// never parsed: it could hold anything).
    fn file_error(
        &mut self,
        path: &Path,
        message: &str,
        tx: &Sender<Update>,
    ) -> Result<(), Closed> {
        let state = self.files.entry(path.to_path_buf()).or_default();
        if state.error.as_deref() == Some(message) {
            return Ok(());
        }
        state.error = Some(message.to_owned());
        let held: BTreeSet<Resource> = state.objects.iter().map(|e| e.key.resource).collect();
        let resources: Vec<Resource> = if held.is_empty() {
            Resource::ALL.to_vec()
        } else {
            held.into_iter().collect()
        };
        for resource in resources {
            send(tx, resource, Event::Error(message.to_owned()))?;
        }
        Ok(())
    }

    /// Merges all files (first in path order wins) and sends what differs from what the
    /// consumer holds; the first time, the whole initial list.
    fn publish(&mut self, tx: &Sender<Update>) -> Result<(), Closed> {
        let mut world: BTreeMap<&Key, &Entry> = BTreeMap::new();
        let mut owner: BTreeMap<&Key, &PathBuf> = BTreeMap::new();
        let mut duplicates = BTreeSet::new();
        for (path, state) in &self.files {
            for entry in &state.objects {
                match owner.entry(&entry.key) {
                    MapEntry::Vacant(slot) => {
                        slot.insert(path);
                        world.insert(&entry.key, entry);
                    }
                    MapEntry::Occupied(first) => {
                        duplicates.insert((
                            entry.key.clone(),
                            (*first.get()).clone(),
                            path.clone(),
                        ));
                    }
                }
            }
        }
        for (key, winner, loser) in duplicates.difference(&self.duplicates) {
            let what = if key.namespace.is_empty() {
                format!("{} {}", key.resource, key.name)
            } else {
                format!("{} {}/{}", key.resource, key.namespace, key.name)
            };
            if winner == loser {
                tracing::warn!(file = %loser.display(), "{what} is defined twice; the first wins");
            } else {
                tracing::warn!(
                    file = %loser.display(),
                    "{what} is also defined in {}, which comes first and wins; this copy is ignored",
                    winner.display()
                );
            }
        }
        self.duplicates = duplicates;

        if !self.synced {
            for resource in Resource::ALL {
                send(tx, resource, Event::Relisting)?;
            }
        } else {
            let gone: Vec<Key> = self
                .sent
                .keys()
                .filter(|key| !world.contains_key(key))
                .cloned()
                .collect();
            for key in gone {
                self.sent.remove(&key);
                let event = Event::Delete {
                    namespace: key.namespace,
                    name: key.name,
                };
                send(tx, key.resource, event)?;
            }
        }
        for (key, entry) in &world {
            if self.sent.get(*key) != Some(&entry.fingerprint) {
                self.sent.insert((*key).clone(), entry.fingerprint);
                send(tx, key.resource, Event::Apply(entry.object.clone()))?;
            }
        }
        if !self.synced {
            for resource in Resource::ALL {
                send(tx, resource, Event::Synced)?;
            }
            self.synced = true;
        }
        Ok(())
    }

    /// Sets up inotify on the directory, again if the directory was replaced (its identity
    /// changed) or the last attempt failed. A failure is logged once per distinct error: the
    /// periodic rescan still sees every change, only later.
    fn ensure_watch(&mut self) {
        let identity = fs::metadata(&self.dir).ok().map(|m| (m.dev(), m.ino()));
        if self.watch.as_ref().map(|w| w.dir) == identity && identity.is_some() {
            return;
        }
        self.watch = None;
        let Some(identity) = identity else {
            return; // the walk reports the missing directory
        };
        match self.watcher() {
            Ok(watcher) => {
                self.watch = Some(DirWatch {
                    _watcher: watcher,
                    dir: identity,
                });
                self.watch_error = None;
            }
            Err(source) => {
                let error = Error::Watch {
                    path: self.dir.clone(),
                    source,
                };
                let message = error_chain(&error);
                if self.watch_error.as_ref() != Some(&message) {
                    tracing::warn!("{message}; relying on the periodic rescan");
                    self.watch_error = Some(message);
                }
            }
        }
    }

    fn watcher(&self) -> Result<notify::RecommendedWatcher, notify::Error> {
        let wake = self.wake.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            if event.as_ref().map_or(true, notify::Event::need_rescan) {
                wake.rescan.store(true, Ordering::Relaxed);
            }
            wake.changed.notify_one();
        };
        // No open/read events: our own reads would wake us up again. Symlinked directories
        // are not followed, like the walk. Close-after-write is kept: it marks the end of a
        // write, which is when the file is worth reading.
        let config = notify::Config::default()
            .with_event_kinds(EventKindMask::CORE | EventKindMask::ACCESS_CLOSE)
            .with_follow_symlinks(false);
        let mut watcher = notify::RecommendedWatcher::new(handler, config)?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        Ok(watcher)
    }
}

/// The objects of one parsed file, each with its fingerprint (a hash of its JSON form).
fn entries(snapshot: model::Snapshot) -> Vec<Entry> {
    let model::Snapshot {
        services,
        endpoint_slices,
        endpoints,
        nodes,
        service_cidrs,
    } = snapshot;
    let objects = (services.into_iter().map(Object::service))
        .chain(endpoint_slices.into_iter().map(Object::endpoint_slice))
        .chain(endpoints.into_iter().map(Object::endpoints))
        .chain(nodes.into_iter().map(Object::node))
        .chain(service_cidrs.into_iter().map(Object::service_cidr));
    objects
        .map(|object| {
            let object = object.without_managed_fields();
            Entry {
                key: Key::of(&object),
                fingerprint: hash_of(&json(&object)),
                object,
            }
        })
        .collect()
}

fn json(object: &Object) -> Vec<u8> {
    // Serializing k8s-openapi types does not fail; an empty fingerprint input if it ever did
    // only means a change could be missed until the next one.
    match object {
        Object::Service(o) => serde_json::to_vec(o),
        Object::EndpointSlice(o) => serde_json::to_vec(o),
        Object::Endpoints(o) => serde_json::to_vec(o),
        Object::Node(o) => serde_json::to_vec(o),
        Object::ServiceCidr(o) => serde_json::to_vec(o),
    }
    .unwrap_or_default()
}

fn hash_of(bytes: &[u8]) -> u64 {
    // `DefaultHasher::new()` has fixed keys: stable within the process, which is all a
    // change detector needs.
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_manifests_in_path_order_and_skips_symlinked_directories() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let dir = tmp.path();
        let sub = dir.join("b");
        fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("mkdir: {e}"));
        for file in ["z.yaml", "a.json", "notes.txt", "b/c.yml"] {
            fs::write(dir.join(file), "").unwrap_or_else(|e| panic!("write {file}: {e}"));
        }
        std::os::unix::fs::symlink(&sub, dir.join("link"))
            .unwrap_or_else(|e| panic!("symlink: {e}"));
        let files = manifest_files(dir).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let names: Vec<_> = files
            .iter()
            .map(|f| {
                f.strip_prefix(dir)
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            names,
            [
                PathBuf::from("a.json"),
                PathBuf::from("b/c.yml"),
                PathBuf::from("z.yaml")
            ]
        );
        let missing = manifest_files(&dir.join("nope"));
        assert!(matches!(missing, Err(Error::ReadDir { .. })));
    }
}
