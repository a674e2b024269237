//! `kube-nft demo`'s tour: after the lab is built and this node programmed, send a few
//! connections to every way each Service can be reached (ClusterIP from a pod and from outside,
//! NodePort, externalIP, LoadBalancer from an allowed and from a refused source) and summarise
//! what the clients saw: which endpoints answered and whether the source address arrived
//! intact or masqueraded. The printing is the binary's; the rows are data.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kube_nft_compiler::graph::Graph;
use kube_nft_compiler::ir::L4Proto;

use crate::probe::{Outcome, Probe};
use crate::topology::Proto;
use crate::Lab;

/// Connections per row.
pub const ATTEMPTS: usize = 4;

/// How long a demo probe waits: a drop costs this once per row.
const TIMEOUT: Duration = Duration::from_secs(1);

/// One line of the demo's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `namespace/name`.
    pub service: String,
    /// How it was reached: `ClusterIP`, `NodePort`, `externalIP`, `LoadBalancer`.
    pub via: &'static str,
    /// The address it was reached at (`proto addr:port`).
    pub target: String,
    /// The client's host name.
    pub from: String,
    /// Endpoints that answered, by host name, in order of first answer.
    pub endpoints: Vec<String>,
    /// Source addresses the endpoints saw, with whose they are.
    pub sources: Vec<String>,
    /// Failures: `refused`, `timed out`, …, with counts.
    pub failures: Vec<String>,
}

/// Probes every Service of `graph` in `lab` and returns one row per (address, client).
pub fn tour(lab: &Lab, graph: &Graph) -> Vec<Row> {
    let topo = lab.topology();
    let present = |name: &str| topo.host(name).is_some();
    let mut rows = Vec::new();
    for svc in &graph.services {
        for port in &svc.ports {
            let proto = match port.proto {
                L4Proto::Tcp => Proto::Tcp,
                L4Proto::Udp => Proto::Udp,
                L4Proto::Sctp => continue,
            };
            let mut targets: Vec<(&'static str, IpAddr, u16, Vec<&str>)> = Vec::new();
            for &ip in &svc.cluster_ips {
                targets.push(("ClusterIP", ip, port.port, vec!["pod-client", "client"]));
            }
            if let Some(node_port) = port.node_port {
                for &ip in &graph.node.ips {
                    targets.push(("NodePort", ip, node_port, vec!["client"]));
                }
            }
            for &ip in &svc.external_ips {
                targets.push(("externalIP", ip, port.port, vec!["client"]));
            }
            for &ip in &svc.lb_ips {
                targets.push(("LoadBalancer", ip, port.port, vec!["client", "stranger"]));
            }
            for (via, ip, dst_port, clients) in targets {
                for from in clients.into_iter().filter(|c| present(c)) {
                    let dst = SocketAddr::new(ip, dst_port);
                    rows.push(row(lab, &svc_name(svc), via, from, proto, dst));
                }
            }
        }
    }
    rows
}

fn svc_name(svc: &kube_nft_compiler::graph::Service) -> String {
    format!("{}/{}", svc.namespace, svc.name)
}

fn row(
    lab: &Lab,
    service: &str,
    via: &'static str,
    from: &str,
    proto: Proto,
    dst: SocketAddr,
) -> Row {
    let topo = lab.topology();
    let mut row = Row {
        service: service.to_owned(),
        via,
        target: format!("{proto} {dst}"),
        from: from.to_owned(),
        endpoints: Vec::new(),
        sources: Vec::new(),
        failures: Vec::new(),
    };
    let mut failures: Vec<(String, usize)> = Vec::new();
    let mut sources = BTreeSet::new();
    for _ in 0..ATTEMPTS {
        let outcome = lab.probe(from, &Probe::new(proto, dst).timeout(TIMEOUT));
        match &outcome {
            Outcome::Reply(r) => {
                if !row.endpoints.contains(&r.host) {
                    row.endpoints.push(r.host.clone());
                }
                let src = r.peer.ip();
                if sources.insert(src) {
                    let whose = if topo.is_node_addr(src) {
                        format!("{} (masqueraded)", topo.name_of(src))
                    } else {
                        format!("{} (client's own)", topo.name_of(src))
                    };
                    row.sources.push(format!("{src} = {whose}"));
                }
            }
            other => {
                let text = other.to_string();
                match failures.iter_mut().find(|(t, _)| *t == text) {
                    Some((_, n)) => *n += 1,
                    None => failures.push((text, 1)),
                }
                // A drop costs a whole timeout: once is enough to show it.
                if *other == Outcome::Timeout {
                    break;
                }
            }
        }
    }
    row.failures = failures
        .into_iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect();
    row
}
