//! Server-side printing: the `meta.k8s.io/v1` Table kubectl asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,…` when it prints columns
//! (`kubectl get services`, without `-o json`). kubectl has no client-side printers for
//! built-in kinds any more, so without this it could only print names. The columns mimic the
//! real ones closely enough to read; every row carries the whole object, which kubectl uses
//! for the NAMESPACE column of `-A`, `--show-labels` and `-L`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::resources::RESOURCES;

fn column(name: &str, format: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": name, "priority": priority})
}

fn str_at<'a>(object: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut at = object;
    for p in path {
        at = at.get(p)?;
    }
    at.as_str()
}

fn items<'a>(object: &'a Value, path: &[&str]) -> &'a [Value] {
    let mut at = object;
    for p in path {
        match at.get(p) {
            Some(v) => at = v,
            None => return &[],
        }
    }
    at.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// `a,b,c + 2 more...`, or `none` for an empty list.
fn first_three(all: Vec<String>, none: &str) -> String {
    if all.is_empty() {
        return none.to_owned();
    }
    let shown = all[..all.len().min(3)].join(",");
    if all.len() > 3 {
        format!("{shown} + {} more...", all.len() - 3)
    } else {
        shown
    }
}

/// kubectl's short ages: `42s`, `5m`, `3h`, `2d`.
fn age(object: &Value) -> String {
    let Some(created) = str_at(object, &["metadata", "creationTimestamp"])
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    else {
        return "<unknown>".to_owned();
    };
    let secs = (super::store::unix_now() - created.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn service_cells(o: &Value) -> Vec<String> {
    let kind = str_at(o, &["spec", "type"]).unwrap_or("ClusterIP");
    let cluster_ip = str_at(o, &["spec", "clusterIP"]).unwrap_or("<none>");
    let mut external: Vec<String> = items(o, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| {
            i.get("ip")
                .or(i.get("hostname"))?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    external.extend(
        items(o, &["spec", "externalIPs"])
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned)),
    );
    let external = match (external.is_empty(), kind) {
        (true, "LoadBalancer") => "<pending>".to_owned(),
        (true, "ExternalName") => str_at(o, &["spec", "externalName"])
            .unwrap_or("<none>")
            .to_owned(),
        (true, _) => "<none>".to_owned(),
        (false, _) => external.join(","),
    };
    let ports: Vec<String> = items(o, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = p.get("port").map(Value::to_string).unwrap_or_default();
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort") {
                Some(n) => format!("{port}:{n}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let selector = o
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".to_owned());
    vec![
        kind.to_owned(),
        cluster_ip.to_owned(),
        external,
        if ports.is_empty() {
            "<none>".to_owned()
        } else {
            ports.join(",")
        },
        age(o),
        selector,
    ]
}

fn endpoints_cells(o: &Value) -> Vec<String> {
    let mut all = Vec::new();
    for subset in items(o, &["subsets"]) {
        for address in items(subset, &["addresses"]) {
            for port in items(subset, &["ports"]) {
                let ip = str_at(address, &["ip"]).unwrap_or_default();
                let port = port.get("port").map(Value::to_string).unwrap_or_default();
                all.push(format!("{ip}:{port}"));
            }
        }
    }
    vec![first_three(all, "<none>"), age(o)]
}

fn node_cells(o: &Value) -> Vec<String> {
    let ready = items(o, &["status", "conditions"])
        .iter()
        .any(|c| str_at(c, &["type"]) == Some("Ready") && str_at(c, &["status"]) == Some("True"));
    let mut status = if ready { "Ready" } else { "NotReady" }.to_owned();
    if o.get("spec").and_then(|s| s.get("unschedulable")) == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = o
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let version = str_at(o, &["status", "nodeInfo", "kubeletVersion"]).unwrap_or_default();
    vec![
        status,
        if roles.is_empty() {
            "<none>".to_owned()
        } else {
            roles.join(",")
        },
        age(o),
        version.to_owned(),
    ]
}

fn endpoint_slice_cells(o: &Value) -> Vec<String> {
    let ports: Vec<String> = items(o, &["ports"])
        .iter()
        .filter_map(|p| p.get("port").map(Value::to_string))
        .collect();
    let addresses: Vec<String> = items(o, &["endpoints"])
        .iter()
        .flat_map(|e| items(e, &["addresses"]))
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    vec![
        str_at(o, &["addressType"]).unwrap_or_default().to_owned(),
        if ports.is_empty() {
            "<unset>".to_owned()
        } else {
            ports.join(",")
        },
        first_three(addresses, "<unset>"),
        age(o),
    ]
}

fn service_cidr_cells(o: &Value) -> Vec<String> {
    let cidrs: Vec<String> = items(o, &["spec", "cidrs"])
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    vec![cidrs.join(","), age(o)]
}

/// The cells after the name, for one object.
type Cells = fn(&Value) -> Vec<String>;

/// A Table of these objects of `resource`, without list metadata.
pub(crate) fn table(resource: usize, objects: &[Arc<Value>]) -> Value {
    let kind = RESOURCES[resource].kind;
    let (columns, cells): (Vec<Value>, Cells) = match kind {
        "Service" => (
            vec![
                column("Type", "", 0),
                column("Cluster-IP", "", 0),
                column("External-IP", "", 0),
                column("Port(s)", "", 0),
                column("Age", "", 0),
                column("Selector", "", 1),
            ],
            service_cells,
        ),
        "Endpoints" => (
            vec![column("Endpoints", "", 0), column("Age", "", 0)],
            endpoints_cells,
        ),
        "Node" => (
            vec![
                column("Status", "", 0),
                column("Roles", "", 0),
                column("Age", "", 0),
                column("Version", "", 0),
            ],
            node_cells,
        ),
        "EndpointSlice" => (
            vec![
                column("AddressType", "", 0),
                column("Ports", "", 0),
                column("Endpoints", "", 0),
                column("Age", "", 0),
            ],
            endpoint_slice_cells,
        ),
        _ => (
            vec![column("CIDRs", "", 0), column("Age", "", 0)],
            service_cidr_cells,
        ),
    };
    let mut definitions = vec![column("Name", "name", 0)];
    definitions.extend(columns);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let name = str_at(o, &["metadata", "name"]).unwrap_or_default();
            let mut row = vec![Value::String(name.to_owned())];
            row.extend(cells(o).into_iter().map(Value::String));
            json!({"cells": row, "object": **o})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}
