//! The kinds the fake API server serves and the discovery documents that advertise them
//! (`/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, `/version`). kubectl resolves
//! `services`, `svc` or `endpointslices` to a path only through discovery, so these must list
//! every resource with its kind, scope, verbs and short names. kubectl asks for aggregated
//! discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,…,
//! application/json`); answering with the legacy documents and `Content-Type: application/json`
//! makes client-go fall back to the per-group requests, which is all we implement.

use serde_json::{json, Value};

/// One served resource (a kind and its REST collection).
#[derive(Debug)]
pub(crate) struct Resource {
    /// `""` for the core group.
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) kind: &'static str,
    /// The path segment: `services`.
    pub(crate) plural: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) short_names: &'static [&'static str],
}

/// Everything served, in discovery order. Indexes into this table identify a resource.
pub(crate) const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
    },
    Resource {
        group: "networking.k8s.io",
        version: "v1",
        kind: "ServiceCIDR",
        plural: "servicecidrs",
        singular: "servicecidr",
        namespaced: false,
        short_names: &[],
    },
];

/// The version `/version` reports.
pub(crate) const SERVER_MINOR: &str = "33";

impl Resource {
    /// `v1` or `discovery.k8s.io/v1`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The fields a `fieldSelector` may name: every kind has the metadata ones; the others are
    /// those the real API server registers for the kind.
    pub(crate) fn field_labels(&self) -> &'static [&'static str] {
        match self.kind {
            "Service" => &[
                "metadata.name",
                "metadata.namespace",
                "spec.clusterIP",
                "spec.type",
            ],
            "Node" => &["metadata.name", "metadata.namespace", "spec.unschedulable"],
            _ => &["metadata.name", "metadata.namespace"],
        }
    }
}

/// The index of the resource with this `apiVersion` and `kind`.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

/// The index of the resource at `<group>/<version>/<plural>`.
pub(crate) fn by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": SERVER_MINOR,
        "gitVersion": format!("v1.{SERVER_MINOR}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the legacy core group's versions.
pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

fn group_version(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

/// The named groups that still serve something, `(group, version)`, given which resources are
/// hidden. A group whose every resource is hidden disappears, as when its API is not enabled.
fn served_groups(hidden: &[bool]) -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for (i, r) in RESOURCES.iter().enumerate() {
        if !r.group.is_empty() && !hidden[i] && !groups.contains(&(r.group, r.version)) {
            groups.push((r.group, r.version));
        }
    }
    groups
}

/// `/apis/<group>` (an APIGroup), or `None` when nothing in that group is served.
pub(crate) fn api_group(group: &str, hidden: &[bool]) -> Option<Value> {
    let version = served_groups(hidden)
        .into_iter()
        .find(|(g, _)| *g == group)?
        .1;
    let v = group_version(group, version);
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [v.clone()],
        "preferredVersion": v,
    }))
}

/// `/apis`.
pub(crate) fn api_group_list(hidden: &[bool]) -> Value {
    let groups: Vec<Value> = served_groups(hidden)
        .into_iter()
        .filter_map(|(group, _)| api_group(group, hidden))
        .map(|mut g| {
            if let Some(g) = g.as_object_mut() {
                g.remove("kind");
                g.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/<group>/<version>`, or `None` when that group version serves nothing.
pub(crate) fn api_resource_list(group: &str, version: &str, hidden: &[bool]) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .enumerate()
        .filter(|(i, r)| r.group == group && r.version == version && !hidden[*i])
        .map(|(_, r)| {
            json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                // Read-only: objects change through the test's `apply`, never through HTTP.
                "verbs": ["get", "list", "watch"],
                "shortNames": r.short_names,
            })
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}
