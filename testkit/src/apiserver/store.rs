//! The objects, the resourceVersion counter and the event history, shaped like etcd behind the
//! API server's watch cache: one global counter (every write takes the next integer, whatever
//! its kind), a window of retained changes a watch can resume from, and compaction, after which
//! resuming from an older resourceVersion is "410 Gone". Open watches are registered here so
//! that a change is queued to them under the same lock that gives it its resourceVersion:
//! a watch sees, in order, exactly the changes after the point it started from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::resources::{self, RESOURCES};
use super::Error;

/// `(namespace, name)`; the namespace is `""` for cluster-scoped kinds. The map order is the
/// order lists are served in.
pub(crate) type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as the watch cache keeps it.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) resource: usize,
    pub(crate) rv: u64,
    pub(crate) kind: ChangeKind,
    /// The new object; for a deletion, the last state with the deletion's resourceVersion.
    pub(crate) object: Arc<Value>,
    /// The object before a modification: a watch with a selector needs it to turn a change
    /// that moves an object out of (into) its selection into DELETED (ADDED).
    pub(crate) previous: Option<Arc<Value>>,
}

/// What an open watch is sent.
#[derive(Debug)]
pub(crate) enum WatchMsg {
    Change(Arc<Change>),
    /// End the stream abruptly.
    Drop,
}

#[derive(Debug)]
struct Watcher {
    resource: usize,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

/// Where a watch starts.
pub(crate) enum WatchFrom {
    /// Synthetic ADDED events for the current objects first (resourceVersion "" or "0", or
    /// `sendInitialEvents=true`).
    Current,
    /// The changes after this resourceVersion.
    After(u64),
}

/// A watch that has started: what to send first, and the live feed.
pub(crate) struct Started {
    pub(crate) id: u64,
    pub(crate) backlog: Vec<Arc<Change>>,
    /// The resourceVersion the backlog brings the watcher to.
    pub(crate) rv: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<WatchMsg>,
}

/// A watch from before the retained window: the resourceVersions it asked for and the oldest
/// still available.
pub(crate) struct Gone {
    pub(crate) requested: u64,
    pub(crate) oldest: u64,
}

/// One page of a list.
pub(crate) struct Page {
    pub(crate) items: Vec<Arc<Value>>,
    /// The key of the last item, when more matching items follow.
    pub(crate) more: Option<Key>,
    pub(crate) remaining: usize,
}

#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    objects: Vec<BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    /// A watch may resume from this resourceVersion or a later one; older ones are Gone.
    oldest: u64,
    watchers: BTreeMap<u64, Watcher>,
    next_watcher: u64,
    hidden: Vec<bool>,
    /// Seeds `metadata.uid` so two servers in one test never share uids.
    uid_seed: u32,
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// `metadata.namespace` ("" for none) and `metadata.name`.
pub(crate) fn key_of(object: &Value) -> Key {
    (
        meta_str(object, "namespace").unwrap_or_default().to_owned(),
        meta_str(object, "name").unwrap_or_default().to_owned(),
    )
}

fn metadata_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    object.get_mut("metadata")?.as_object_mut()
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = metadata_mut(object) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// Seconds since the epoch (jiff's own clock needs a feature k8s-openapi does not enable).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix_now())
        .unwrap_or_default()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Store {
    pub(crate) fn new(uid_seed: u32) -> Store {
        Store {
            // etcd's first revision; lists of an empty store still carry a resourceVersion,
            // which clients (kube-rs) insist on.
            rv: 1,
            objects: vec![BTreeMap::new(); RESOURCES.len()],
            history: VecDeque::new(),
            oldest: 1,
            watchers: BTreeMap::new(),
            next_watcher: 0,
            hidden: vec![false; RESOURCES.len()],
            uid_seed,
        }
    }

    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn hidden(&self) -> &[bool] {
        &self.hidden
    }

    pub(crate) fn set_hidden(&mut self, resource: usize, hidden: bool) {
        self.hidden[resource] = hidden;
        if hidden {
            // The API went away: its watches end, as when an aggregated API disappears.
            self.drop_watches(Some(resource));
        }
    }

    pub(crate) fn open_watches(&self) -> usize {
        self.watchers.len()
    }

    pub(crate) fn get(&self, resource: usize, key: &Key) -> Option<Arc<Value>> {
        self.objects[resource].get(key).cloned()
    }

    pub(crate) fn objects(&self, resource: usize) -> Vec<Value> {
        self.objects[resource]
            .values()
            .map(|o| Value::clone(o))
            .collect()
    }

    /// Creates or updates; returns the object's resourceVersion. An update that changes
    /// nothing is a no-op without a new resourceVersion or event, as in the real API server.
    pub(crate) fn apply(&mut self, mut object: Value) -> Result<u64, Error> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let resource =
            resources::by_kind(api_version, &kind).ok_or_else(|| Error::UnknownKind {
                api_version: api_version.to_owned(),
                kind: kind.clone(),
            })?;
        let r = &RESOURCES[resource];
        let Some(meta) = metadata_mut(&mut object) else {
            return Err(Error::InvalidObject(format!(
                "{kind} without a metadata object"
            )));
        };
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(Error::InvalidObject(format!(
                "{kind} without metadata.name"
            )));
        }
        if r.namespaced {
            let ns = meta.get("namespace").and_then(Value::as_str);
            if ns.is_none_or(str::is_empty) {
                meta.insert("namespace".into(), Value::String("default".into()));
            }
        } else {
            meta.remove("namespace");
        }
        let key = key_of(&object);
        let old = self.objects[resource].get(&key).cloned();
        let next = self.rv + 1;
        let meta = metadata_mut(&mut object).expect("checked above");
        // Server-owned fields: kept from the stored object, generated on create.
        for field in ["uid", "creationTimestamp"] {
            let kept = old.as_deref().and_then(|o| o.get("metadata")?.get(field));
            match kept {
                Some(v) => {
                    meta.insert(field.into(), v.clone());
                }
                None if !meta.contains_key(field) => {
                    let v = if field == "uid" {
                        format!("{:08x}-0000-4000-8000-{next:012x}", self.uid_seed)
                    } else {
                        now_rfc3339()
                    };
                    meta.insert(field.into(), Value::String(v));
                }
                None => {}
            }
        }
        if let Some(old) = &old {
            let old_rv = meta_str(old, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(self.rv);
            set_rv(&mut object, old_rv);
            if **old == object {
                return Ok(old_rv);
            }
        }
        self.rv = next;
        set_rv(&mut object, next);
        let object = Arc::new(object);
        self.objects[resource].insert(key, object.clone());
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            resource,
            rv: next,
            kind,
            object,
            previous: old,
        });
        Ok(next)
    }

    /// Deletes; `notify: false` neither tells open watches nor keeps the change in history.
    pub(crate) fn delete(
        &mut self,
        resource: usize,
        key: &Key,
        notify: bool,
    ) -> Result<u64, Error> {
        let Some(old) = self.objects[resource].remove(key) else {
            return Err(Error::NotFound {
                kind: RESOURCES[resource].kind.to_owned(),
                namespace: key.0.clone(),
                name: key.1.clone(),
            });
        };
        self.rv += 1;
        if notify {
            let mut last = Value::clone(&old);
            set_rv(&mut last, self.rv);
            self.record(Change {
                resource,
                rv: self.rv,
                kind: ChangeKind::Deleted,
                object: Arc::new(last),
                previous: None,
            });
        }
        Ok(self.rv)
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.watchers.retain(|_, w| {
            w.resource != change.resource || w.tx.send(WatchMsg::Change(change.clone())).is_ok()
        });
        self.history.push_back(change);
    }

    /// Forgets the history: watches and continue tokens from before now are Gone. Compaction
    /// takes a resourceVersion of its own (as if something else were written), so that even
    /// the latest resourceVersion a client holds is now too old.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.oldest = self.rv;
    }

    /// Whether a list snapshot (a continue token) taken at `rv` can still be continued.
    pub(crate) fn is_compacted(&self, rv: u64) -> bool {
        rv < self.oldest
    }

    /// Ends every open watch (of one resource, or all) abruptly.
    pub(crate) fn drop_watches(&mut self, resource: Option<usize>) {
        self.watchers.retain(|_, w| {
            let keep = resource.is_some_and(|r| r != w.resource);
            if !keep {
                let _ = w.tx.send(WatchMsg::Drop);
            }
            keep
        });
    }

    pub(crate) fn unregister(&mut self, id: u64) {
        self.watchers.remove(&id);
    }

    /// Registers a watch; its backlog is the current objects (as ADDED) or the retained
    /// changes after `from`.
    pub(crate) fn watch(&mut self, resource: usize, from: WatchFrom) -> Result<Started, Gone> {
        let backlog = match from {
            WatchFrom::Current => self.objects[resource]
                .values()
                .map(|o| {
                    Arc::new(Change {
                        resource,
                        rv: meta_str(o, "resourceVersion")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(self.rv),
                        kind: ChangeKind::Added,
                        object: o.clone(),
                        previous: None,
                    })
                })
                .collect(),
            WatchFrom::After(rv) if rv < self.oldest => {
                return Err(Gone {
                    requested: rv,
                    oldest: self.oldest,
                })
            }
            WatchFrom::After(rv) => self
                .history
                .iter()
                .filter(|c| c.resource == resource && c.rv > rv)
                .cloned()
                .collect(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_watcher;
        self.next_watcher += 1;
        self.watchers.insert(id, Watcher { resource, tx });
        Ok(Started {
            id,
            backlog,
            rv: self.rv,
            rx,
        })
    }

    /// The matching objects after `after` (exclusive), at most `limit` of them.
    pub(crate) fn page(
        &self,
        resource: usize,
        after: Option<&Key>,
        limit: Option<usize>,
        mut select: impl FnMut(&Value) -> bool,
    ) -> Page {
        use std::ops::Bound;
        let range = match after {
            Some(k) => (Bound::Excluded(k.clone()), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let matching = self.objects[resource]
            .range(range)
            .filter(|(_, o)| select(o));
        let limit = limit.unwrap_or(usize::MAX);
        let (mut items, mut last, mut remaining) = (Vec::new(), None, 0);
        for (k, o) in matching {
            if items.len() < limit {
                items.push(o.clone());
                last = Some(k);
            } else {
                remaining += 1;
            }
        }
        let more = if remaining > 0 { last.cloned() } else { None };
        Page {
            items,
            more,
            remaining,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(name: &str, port: u16) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"ports": [{"port": port}]}})
    }

    #[test]
    fn apply_fills_server_fields_and_skips_no_ops() {
        let mut store = Store::new(7);
        assert_eq!(store.apply(svc("a", 80)), Ok(2));
        let a = store.get(0, &("default".into(), "a".into())).unwrap();
        assert_eq!(a["metadata"]["namespace"], "default");
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert_eq!(a["metadata"]["uid"], "00000007-0000-4000-8000-000000000002");
        assert!(a["metadata"]["creationTimestamp"].is_string());
        // The same object again: nothing happens.
        assert_eq!(store.apply(svc("a", 80)), Ok(2));
        assert_eq!(store.rv(), 2);
        // A change keeps uid and creationTimestamp.
        assert_eq!(store.apply(svc("a", 81)), Ok(3));
        let b = store.get(0, &("default".into(), "a".into())).unwrap();
        assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
        assert_eq!(
            b["metadata"]["creationTimestamp"],
            a["metadata"]["creationTimestamp"]
        );
        assert_eq!(store.history.len(), 2);
        assert_eq!(store.history[1].kind, ChangeKind::Modified);
        assert!(store.history[1].previous.is_some());
    }

    #[test]
    fn apply_rejects_what_it_cannot_store() {
        let mut store = Store::new(0);
        let unknown = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        assert!(matches!(
            store.apply(unknown),
            Err(Error::UnknownKind { .. })
        ));
        let nameless = json!({"apiVersion": "v1", "kind": "Node", "metadata": {}});
        assert!(matches!(
            store.apply(nameless),
            Err(Error::InvalidObject(_))
        ));
        let no_meta = json!({"apiVersion": "v1", "kind": "Node"});
        assert!(matches!(store.apply(no_meta), Err(Error::InvalidObject(_))));
        // A namespace on a cluster-scoped object is dropped.
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "namespace": "x"}});
        store.apply(node).unwrap();
        assert!(store.get(2, &(String::new(), "n".into())).is_some());
        assert_eq!(store.rv(), 2);
    }

    #[test]
    fn deletes_compaction_and_watch_windows() {
        let mut store = Store::new(0);
        store.apply(svc("a", 80)).unwrap();
        store.apply(svc("b", 80)).unwrap();
        let key = ("default".to_owned(), "a".to_owned());
        assert_eq!(store.delete(0, &key, true), Ok(4));
        assert!(matches!(
            store.delete(0, &key, true),
            Err(Error::NotFound { .. })
        ));
        let deleted = store.history.back().unwrap();
        assert_eq!(deleted.kind, ChangeKind::Deleted);
        assert_eq!(deleted.object["metadata"]["resourceVersion"], "4");

        let started = store.watch(0, WatchFrom::After(2)).ok().unwrap();
        let rvs: Vec<u64> = started.backlog.iter().map(|c| c.rv).collect();
        assert_eq!(rvs, [3, 4]);
        assert_eq!(store.open_watches(), 1);
        store.compact();
        assert_eq!(store.rv(), 5);
        assert!(store.watch(0, WatchFrom::After(4)).is_err());
        assert!(store.is_compacted(4) && !store.is_compacted(5));
        let current = store.watch(0, WatchFrom::Current).ok().unwrap();
        assert_eq!(current.backlog.len(), 1);
        assert_eq!(current.backlog[0].object["metadata"]["name"], "b");
        store.drop_watches(None);
        assert_eq!(store.open_watches(), 0);
    }

    #[test]
    fn pages() {
        let mut store = Store::new(0);
        for name in ["d", "a", "c", "b"] {
            store.apply(svc(name, 80)).unwrap();
        }
        let names = |p: &Page| -> Vec<String> {
            p.items
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let first = store.page(0, None, Some(3), |o| o["metadata"]["name"] != "b");
        assert_eq!(
            (names(&first), first.remaining),
            (vec!["a".into(), "c".into(), "d".into()], 0)
        );
        assert_eq!(first.more, None);
        let first = store.page(0, None, Some(2), |_| true);
        assert_eq!(
            (names(&first), first.remaining),
            (vec!["a".into(), "b".into()], 2)
        );
        let rest = store.page(0, first.more.as_ref(), Some(2), |_| true);
        assert_eq!(
            (names(&rest), rest.more),
            (vec!["c".into(), "d".into()], None)
        );
    }
}
