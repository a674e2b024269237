//! `show` over a synthetic node, without root: the synthetic cluster (1,000 Services × 10
//! endpoints unless `KUBE_NFT_SHOW_SERVICES` / `KUBE_NFT_SHOW_ENDPOINTS` say otherwise) is
//! compiled for node-0 and every frontend is traced as `kube-nft show` does for a live node
//! (`Env::from_ruleset` with the node's addresses and loopback); every ClusterIP row must have
//! backends. It also prints the time of each phase and a fingerprint of the rows, so two builds
//! can be compared for identical output; for what it costs at scale, run
//! `KUBE_NFT_SHOW_SERVICES=50000 cargo test --release -p kube-nft-compiler --test show_scale
//! -- --nocapture` (it asserts nothing about time).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::time::Instant;

use kube_nft_compiler::show;
use kube_nft_compiler::trace::Env;
use kube_nft_testkit::synthetic;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

#[test]
fn show_rows_of_a_synthetic_node() {
    let n = env_or("KUBE_NFT_SHOW_SERVICES", 1_000);
    let m = env_or("KUBE_NFT_SHOW_ENDPOINTS", 10);

    let start = Instant::now();
    let cluster = synthetic::generate(n, m, synthetic::SEED);
    let snapshot = cluster.snapshot();
    let generated = start.elapsed();

    let start = Instant::now();
    let ruleset = kube_nft_compiler::compile(&snapshot, &synthetic::config()).ruleset;
    let compiled = start.elapsed();
    let elements: usize = (ruleset.tables.iter())
        .flat_map(|t| t.sets.values())
        .map(|s| s.elements.len())
        .sum();
    let largest = (ruleset.tables.iter())
        .flat_map(|t| t.sets.values())
        .map(|s| s.elements.len())
        .max()
        .unwrap_or(0);

    // node-0's InternalIP (see `synthetic`), as the kernel lists it, with loopback.
    let local: Vec<IpAddr> = ["192.168.0.1", "127.0.0.1", "::1"]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    let env = Env::from_ruleset(&ruleset, local);

    let start = Instant::now();
    let rows = show::rows(&ruleset, &env);
    let traced = start.elapsed();

    let mut hasher = DefaultHasher::new();
    format!("{rows:?}").hash(&mut hasher);
    println!(
        "{n} Services x {m} endpoints: {} elements (largest set {largest}); generate {generated:.2?}, \
         compile {compiled:.2?}, show::rows {traced:.2?} for {} rows ({:.1} µs/row); rows fingerprint {:016x}",
        elements,
        rows.len(),
        traced.as_secs_f64() * 1e6 / rows.len().max(1) as f64,
        hasher.finish(),
    );

    // Every Service has endpoints, so every frontend of a ClusterIP DNATs somewhere.
    assert!(rows.len() >= n, "{} rows for {n} Services", rows.len());
    let cluster_ip_rows = rows
        .iter()
        .filter(|r| r.frontend.via == show::Via::ClusterIp);
    for row in cluster_ip_rows {
        assert!(!row.backends.is_empty(), "{row:?}");
    }
}
