//! What the compiler's unit tests build their clusters from: a snapshot of JSON documents (as
//! a `List`, through the real loader) and `node-a`, the node most of them compile for.

use serde_json::{json, Value};

use crate::model::{load, Snapshot, Source};

/// The snapshot of `docs`; the loader must accept them without a diagnostic.
pub(crate) fn snapshot_of(docs: Vec<Value>) -> Snapshot {
    let text = json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string();
    let loaded = load(&[Source {
        origin: "test".into(),
        text,
    }])
    .unwrap();
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    loaded.snapshot
}

/// `node-a`: 192.168.0.2 and fd00::2, NodePorts on its primary IPs.
pub(crate) fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"},
                                 {"type": "InternalIP", "address": "fd00::2"}]}})
}
