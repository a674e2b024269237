//! Data plane: does the first packet of a connection get slower as the cluster grows? For each
//! size, a synthetic cluster of N Services × M endpoints is loaded into node-0 of a lab
//! (`kube-nft-lab`: network namespaces, real TCP servers on the endpoints), and a client on the
//! LAN opens new connections, one after another, to one ClusterIP Service of it. Each
//! connection's setup (SYN to SYN-ACK, as `connect` returns) crosses node-0's NAT chains on its
//! first packet, so the time includes the rule lookup: a layout whose lookups grow with N shows
//! it here. The same lab then gets the kube-proxy-shaped ruleset of the same cluster (loaded
//! with `nft -f`, after `kube-nft cleanup`) where that size is affordable, so both layouts are
//! measured on the same namespaces, veths and servers.
//!
//! The lab only holds the probed Service's pods and their nodes (N × M pod namespaces would be
//! absurd); the other Services exist only as rules, which is all the first packet sees.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use kube_nft_compiler::model::{load, Source};
use kube_nft_lab::topology::default_lan_clients;
use kube_nft_lab::{Lab, Topology};
use kube_nft_testkit::synthetic::{self, Cluster, Kind};
use serde_json::Value;

use crate::kube_proxy;
use crate::report::percentile;

/// Connections before the measured ones (ARP/ND, caches).
const WARMUP: usize = 100;

/// One row of the data-plane table.
#[derive(Clone, Debug)]
pub(crate) struct Latency {
    /// `kube-nft`, `kube-nft, counters off` or `kube-proxy-shaped`.
    pub(crate) ruleset: String,
    /// Services loaded.
    pub(crate) services: usize,
    /// Connections measured.
    pub(crate) connections: usize,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

/// Measures `connections` new connections at each size in `sizes` for kube-nft (also with the
/// Service dispatch over `dispatch_tables` tables per family, when above 1), and at each size
/// also in `kube_proxy_sizes` for the kube-proxy-shaped ruleset.
pub(crate) fn measure(
    sizes: &[usize],
    kube_proxy_sizes: &[usize],
    endpoints: usize,
    connections: usize,
    dispatch_tables: u16,
    kube_nft: &Path,
    work: &Path,
) -> anyhow::Result<Vec<Latency>> {
    let mut rows = Vec::new();
    for &n in sizes {
        let cluster = synthetic::generate(n, endpoints, synthetic::SEED);
        let target = probed_service(&cluster).context("no ClusterIP TCP Service to probe")?;
        let lab = lab_for(&cluster, target)?;
        let dst = SocketAddr::new(
            IpAddr::V4(cluster.services[target].cluster_ip),
            cluster.services[target].ports[0].port,
        );

        let file = work.join(format!("dataplane-{n}.json"));
        program(&lab, kube_nft, &file, &cluster, &[])?;
        rows.push(sample(&lab, "kube-nft", n, dst, connections)?);

        // The same ruleset without the per-backend counters: the counting rules flushed (the
        // `ct status dnat` jumps into the emptied chain stay), so the difference is what the
        // counters cost a connection: one element added at the NAT hook, and the first two
        // packets (SYN, SYN-ACK) each updating one counter, as every later packet would.
        nft_f(
            &lab,
            &work.join(format!("dataplane-counters-off-{n}.nft")),
            "flush chain ip kube-nft backend-stats\n\
             flush chain ip kube-nft nat-input\n\
             flush chain ip kube-nft nat-postrouting\n\
             add rule ip kube-nft nat-postrouting jump masquerading\n",
        )
        .with_context(|| format!("turn the counters off ({n} Services)"))?;
        rows.push(sample(&lab, "kube-nft, counters off", n, dst, connections)?);

        if dispatch_tables > 1 {
            // The probed Service's table is whichever its name hashes to; the connection
            // passes the nat chains of the tables before it at its priority.
            let tables = dispatch_tables.to_string();
            program(
                &lab,
                kube_nft,
                &file,
                &cluster,
                &["--dispatch-tables", &tables],
            )?;
            let what = format!("kube-nft, {tables} dispatch tables");
            rows.push(sample(&lab, &what, n, dst, connections)?);
        }

        if kube_proxy_sizes.contains(&n) {
            let cleanup = lab.command("node-0", kube_nft)?.arg("cleanup").output()?;
            if !cleanup.status.success() {
                bail!(
                    "kube-nft cleanup: {}",
                    String::from_utf8_lossy(&cleanup.stderr)
                );
            }
            nft_f(
                &lab,
                &work.join(format!("dataplane-kube-proxy-{n}.nft")),
                &kube_proxy::script(&cluster),
            )
            .with_context(|| format!("load the kube-proxy-shaped ruleset ({n} Services)"))?;
            rows.push(sample(&lab, "kube-proxy-shaped", n, dst, connections)?);
        }
        eprintln!("dataplane: {n} Services done");
    }
    Ok(rows)
}

/// `kube-nft compile -f` of `cluster` (written to `file`, removed after) in node-0, with the
/// synthetic node flags and `extra`.
fn program(
    lab: &Lab,
    kube_nft: &Path,
    file: &Path,
    cluster: &Cluster,
    extra: &[&str],
) -> anyhow::Result<()> {
    std::fs::write(file, cluster.to_json())?;
    let out = lab
        .command("node-0", kube_nft)?
        .arg("compile")
        .arg("-f")
        .arg(file)
        .args(synthetic::NODE_FLAGS)
        .args(extra)
        .output();
    let _ = std::fs::remove_file(file);
    let out = out?;
    if !out.status.success() {
        bail!(
            "kube-nft compile -f {} ({} Services): {}",
            extra.join(" "),
            cluster.services.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `nft -f` of `text` (written to `script`, removed after) in node-0.
fn nft_f(lab: &Lab, script: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(script, text)?;
    let out = lab.command("node-0", "nft")?.arg("-f").arg(script).output();
    let _ = std::fs::remove_file(script);
    let out = out?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The ClusterIP Service probed: the last single-port TCP ClusterIP Service without affinity
/// (last, so a layout that walks Services in order pays the most for it).
fn probed_service(cluster: &Cluster) -> Option<usize> {
    cluster.services.iter().rposition(|s| {
        s.kind == Kind::ClusterIp
            && !s.affinity
            && s.ports.len() == 1
            && s.ports[0].protocol == "TCP"
            && !s.endpoints.is_empty()
    })
}

/// A lab with node-0 (this node), the nodes the probed Service's endpoints live on, its pods,
/// and the default LAN clients.
fn lab_for(cluster: &Cluster, target: usize) -> anyhow::Result<Lab> {
    let service = &cluster.services[target];
    let nodes: BTreeSet<String> = std::iter::once(0)
        .chain(service.endpoints.iter().map(|e| e.node))
        .map(|k| format!("node-{k}"))
        .collect();
    let mut items: Vec<Value> = cluster
        .manifests()
        .into_iter()
        .filter(|d| {
            d["kind"] == "Node"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|name| nodes.contains(name))
        })
        .collect();
    items.extend(cluster.manifests_of(target));
    let text = serde_json::to_string(&serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": items
    }))?;
    let snapshot = load(&[Source {
        origin: "dataplane".into(),
        text,
    }])?
    .snapshot;
    let topology = Topology::from_snapshot(&snapshot, "node-0", &default_lan_clients());
    Ok(Lab::build(topology)?)
}

fn sample(
    lab: &Lab,
    ruleset: &str,
    services: usize,
    dst: SocketAddr,
    connections: usize,
) -> anyhow::Result<Latency> {
    let mut times = lab.connect_times("client", dst, WARMUP + connections)?;
    times.drain(..WARMUP);
    Ok(Latency {
        ruleset: ruleset.to_owned(),
        services,
        connections,
        p50: percentile(&times, 50),
        p99: percentile(&times, 99),
    })
}

/// The data-plane table (markdown), empty without rows.
pub(crate) fn table(rows: &[Latency]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nData plane: new TCP connections from a LAN client to one ClusterIP Service through \
         the lab (`kube-nft-lab`), one after another, each timed from `connect` to its return \
         (SYN to SYN-ACK through node-0's NAT chains and back):\n\n\
         | Services loaded | ruleset | connections | p50 | p99 |\n|---:|---|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.services,
            r.ruleset,
            r.connections,
            micros(r.p50),
            micros(r.p99)
        ));
    }
    out.push('\n');
    out
}

/// Microseconds, the unit connection setup lives in.
fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}
