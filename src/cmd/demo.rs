//! `kube-nft demo`: build the lab (`kube-nft-lab`) from a cluster file, program this node the
//! way `compile -f` does, take the lab's tour of every Service and print what the clients saw
//! as a table, then what `kube-nft show` says in the node (shares and the tour's connections).
//! The lab is dropped, and every namespace with it, before this returns.

use anyhow::Context;
use kube_nft_compiler::config::LocalMode;
use kube_nft_compiler::model::{self, Snapshot, Source};
use kube_nft_lab::demo::{tour, Row};
use kube_nft_lab::topology::{default_lan_clients, pod_client};
use kube_nft_lab::{Lab, Role, Topology};

use super::{compile::program, node_config, print_stdout, read_sources};
use crate::cli::{DemoArgs, ShowArgs, ShowFormat};

/// The bundled example, so the demo works from any directory.
const EXAMPLE: &str = include_str!("../../examples/cluster.yaml");

/// Runs `demo`.
pub(super) fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let sources = match &args.path {
        Some(path) => read_sources(path)?,
        None => vec![Source {
            origin: "examples/cluster.yaml (bundled)".into(),
            text: EXAMPLE.into(),
        }],
    };
    let loaded = model::load(&sources)?;
    let snapshot = loaded.snapshot;
    let mut config = node_config(&args.node)?;
    if config.hostname.is_none() {
        config.hostname = first_node(&snapshot);
    }
    let node = config
        .hostname
        .clone()
        .context("no --hostname-override and no Node object to choose this node from")?;
    // Without a pod range, this node's own podCIDRs tell its pods apart (kube-proxy's
    // NodeCIDR mode), which is what the lab's pod client uses.
    if config.cluster_cidrs.is_empty() && config.detect_local_mode == LocalMode::ClusterCidr {
        config.detect_local_mode = LocalMode::NodeCidr;
    }
    let compiled = kube_nft_compiler::compile(&snapshot, &config);
    for diagnostic in loaded.diagnostics.iter().chain(&compiled.diagnostics) {
        eprintln!("warning: {diagnostic}");
    }

    let mut clients = default_lan_clients();
    clients.extend(pod_client(&snapshot, &node));
    let topology = Topology::from_snapshot(&snapshot, &node, &clients);
    let started = std::time::Instant::now();
    let lab = Lab::build(topology).context("build the lab")?;
    let hosts = &lab.topology().hosts;
    // Endpoint pods serve; the pod client does not.
    let pods = hosts
        .iter()
        .filter(|h| matches!(h.role, Role::Pod { .. }) && !h.listen.is_empty())
        .count();
    let nodes = hosts
        .iter()
        .filter(|h| matches!(h.role, Role::ThisNode | Role::OtherNode))
        .count();
    eprintln!(
        "lab: {} network namespaces ({nodes} nodes, {pods} pods, {} clients, the LAN) built in {:.2?}",
        hosts.len() + 1,
        hosts.len() - nodes - pods,
        started.elapsed()
    );
    let summary = lab
        .run_in(&node, || program(compiled.ruleset.clone()))
        .context("enter this node's namespace")??;
    eprintln!("{node}: {summary}");
    let rows = tour(&lab, &compiled.graph);
    // What the node itself says after the tour: `kube-nft show` in its namespace, with the
    // tour's connections still in conntrack.
    let everything = ShowArgs {
        namespace: None,
        address: None,
        output: ShowFormat::Table,
        service: None,
        path: None,
        interval: std::time::Duration::from_secs(1),
        watch: false,
        count: None,
        node: args.node.clone(),
    };
    let shown = lab
        .run_in(&node, || super::show::text(&everything))
        .context("enter this node's namespace")??;
    drop(lab);
    print_stdout(&format!(
        "{}\n$ kube-nft show    # in {node}, after the tour\n{shown}",
        table(&rows)
    ))
}

/// The first Node by name.
fn first_node(snapshot: &Snapshot) -> Option<String> {
    snapshot
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .min()
}

/// The rows as an aligned text table.
fn table(rows: &[Row]) -> String {
    let header = [
        "SERVICE",
        "VIA",
        "TARGET",
        "FROM",
        "ANSWERED BY",
        "SOURCE SEEN",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let answered = if r.endpoints.is_empty() {
                "-".to_owned()
            } else {
                r.endpoints.join(", ")
            };
            let mut seen = r.sources.join(", ");
            if !r.failures.is_empty() {
                if !seen.is_empty() {
                    seen.push_str("; ");
                }
                seen.push_str(&r.failures.join(", "));
            }
            [
                r.service.clone(),
                r.via.to_owned(),
                r.target.clone(),
                r.from.clone(),
                answered,
                seen,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: Vec<&str>| {
        let last = cols.len() - 1;
        for (i, (cell, w)) in cols.iter().zip(widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
