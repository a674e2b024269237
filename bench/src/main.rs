//! `kube-nft-bench`: what it costs kube-nft to program a cluster of N Services × M endpoints,
//! side by side with `nft -f` of the same ruleset and with `nft -f` of a kube-proxy-shaped
//! ruleset for the same cluster. Every measurement runs in a throwaway network namespace (never
//! the host's ruleset) and needs root. It prints a markdown report; `--write BENCHMARKS.md`
//! also replaces the generated part of that file (between its markers), keeping the
//! hand-written analysis around it.
//!
//! Run it with `cargo run --release -p kube-nft-bench -- --write BENCHMARKS.md`; under
//! `cargo run` it builds the `kube-nft` binary it measures first. `--daemon-only --write
//! BENCHMARKS.md` measures the node daemon alone and replaces only its table.

mod child;
mod daemon;
mod dataplane;
mod kube_proxy;
mod report;
mod sync;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use kube_nft_testkit::netns::{in_netns, unavailable};
use kube_nft_testkit::synthetic;

use crate::child::Outcome;

/// Benchmark kube-nft's sync cost (needs root; uses throwaway network namespaces).
#[derive(Debug, Parser)]
#[command(name = "kube-nft-bench")]
struct Args {
    /// Cluster sizes (number of Services), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000, 30000, 50000])]
    sizes: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Sizes for the kube-proxy-shaped ruleset (`0`: none).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 3000, 10000])]
    kube_proxy_sizes: Vec<usize>,
    /// Skip a kube-proxy-shaped size whose run is projected (quadratically from the previous
    /// size) to take longer than this many seconds, and kill a run at 1.5 times this.
    #[arg(long, default_value_t = 180)]
    kube_proxy_budget: u64,
    /// Kill `nft -f` of kube-nft's own script after this many seconds.
    #[arg(long, default_value_t = 300)]
    nft_deadline: u64,
    /// Repetitions of each incremental change (each way).
    #[arg(long, default_value_t = 30)]
    reps: usize,
    /// Also measure each cold start as one single transaction, for comparison.
    #[arg(long)]
    single_transaction: bool,
    /// Run only one part for the first size, for profiling (`perf record -g -- kube-nft-bench
    /// --sizes 10000 --only cold`); prints progress only.
    #[arg(long, value_enum)]
    only: Option<sync::Part>,
    /// Data plane: sizes at which new-connection latency through the lab is measured with
    /// kube-nft's ruleset loaded (`0`: none).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 10000, 30000, 50000])]
    dataplane_sizes: Vec<usize>,
    /// Data plane: sizes (among `--dataplane-sizes`) also measured with the kube-proxy-shaped
    /// ruleset loaded instead.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 3000])]
    dataplane_kube_proxy_sizes: Vec<usize>,
    /// Measure only the data plane and print its table (does not write the report).
    #[arg(long)]
    dataplane_only: bool,
    /// Data plane: connections measured per row.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Daemon: sizes at which `kube-nft run` is measured against a fake API server (`0`:
    /// none).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000, 50000])]
    daemon_sizes: Vec<usize>,
    /// Daemon: endpoint changes per size.
    #[arg(long, default_value_t = 50)]
    daemon_endpoint_changes: usize,
    /// Daemon: changes per size of each kind of Service change (port changed, Service added).
    #[arg(long, default_value_t = 20)]
    daemon_service_changes: usize,
    /// Measure only the daemon and print its table; with `--write`, replace only that table in
    /// the file.
    #[arg(long, conflicts_with_all = ["dataplane_only", "only"])]
    daemon_only: bool,
    /// Write the report into this file (replacing the part between its markers).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Daemon: `--dispatch-tables` of `kube-nft run` (the Service dispatch spread over this
    /// many tables per family); data plane: above 1, also measured with that many tables.
    #[arg(long, default_value_t = 1)]
    dispatch_tables: u16,
    /// The kube-nft binary (default: next to this one, built first under `cargo run`).
    #[arg(long, value_name = "PATH")]
    kube_nft: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|first| first == child::HELPER) {
        return child::helper(argv);
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(reason) = unavailable() {
        bail!("kube-nft-bench needs root, nft and unshare: {reason}");
    }
    let kube_nft = match &args.kube_nft {
        Some(path) => path.clone(),
        None => sibling_kube_nft()?,
    };
    let work = std::env::temp_dir().join(format!("kube-nft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run(&args, &kube_nft, &work);
    let _ = std::fs::remove_dir_all(&work);
    let (text, daemon_only) = match result? {
        Generated::Whole(text) => (text, false),
        Generated::Daemon(text) => (text, true),
        Generated::Printed => {
            if args.write.is_some() {
                eprintln!("--write ignored: this mode does not produce the report");
            }
            return Ok(());
        }
    };
    print!("{text}");
    if let Some(path) = &args.write {
        if daemon_only {
            report::write_daemon_into(path, &text)?;
        } else {
            report::write_into(path, &text)?;
        }
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// What a run produced.
enum Generated {
    /// The whole generated part of the report.
    Whole(String),
    /// The daemon's section alone.
    Daemon(String),
    /// Nothing to write (already printed, or progress only).
    Printed,
}

fn run(args: &Args, kube_nft: &Path, work: &Path) -> anyhow::Result<Generated> {
    let opts = sync::Options {
        endpoints: args.endpoints,
        reps: args.reps,
        kube_nft,
        work,
        single_transaction: args.single_transaction,
        nft_deadline: Duration::from_secs(args.nft_deadline),
    };
    let daemon_opts = daemon::Options {
        endpoints: args.endpoints,
        endpoint_changes: args.daemon_endpoint_changes,
        service_changes: args.daemon_service_changes,
        kube_nft,
        work,
        dispatch_tables: args.dispatch_tables,
    };
    let mut daemon_sizes = args.daemon_sizes.clone();
    daemon_sizes.retain(|&n| n > 0);
    daemon_sizes.sort_unstable();
    if args.daemon_only {
        // Probed first: the commit is the one of the binary measured.
        let machine = report::Machine::probe(&command_line());
        let rows = daemon::measure(&daemon_sizes, &daemon_opts).context("daemon")?;
        return Ok(Generated::Daemon(report::render_daemon(
            &machine,
            args.endpoints,
            args.dispatch_tables,
            &rows,
        )));
    }
    if args.dataplane_only {
        let rows = dataplane::measure(
            &args.dataplane_sizes,
            &args.dataplane_kube_proxy_sizes,
            args.endpoints,
            args.connections,
            args.dispatch_tables,
            kube_nft,
            work,
        )?;
        print!("{}", dataplane::table(&rows));
        return Ok(Generated::Printed);
    }
    if let Some(part) = args.only {
        let n = *args.sizes.first().context("no size")?;
        sync::profile(n, part, &opts)?;
        return Ok(Generated::Printed);
    }
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    let mut results = Vec::new();
    for &n in &sizes {
        results.push(sync::measure(n, &opts).with_context(|| format!("size {n}"))?);
    }
    let mut kube_proxy = Vec::new();
    let mut kp_sizes = args.kube_proxy_sizes.clone();
    kp_sizes.retain(|&n| n > 0);
    kp_sizes.sort_unstable();
    let budget = Duration::from_secs(args.kube_proxy_budget);
    let mut last: Option<(usize, Duration)> = None;
    for &n in &kp_sizes {
        let ours = match results.iter().find(|r| r.n == n) {
            Some(r) => (r.nft_ours, r.cold),
            None => sync::ours_light(n, &opts)?,
        };
        let outcome = match last {
            Some((n0, t0)) if t0.mul_f64((n as f64 / n0 as f64).powi(2)) > budget => {
                let projected = t0.mul_f64((n as f64 / n0 as f64).powi(2));
                report::KubeProxy::Skipped { projected }
            }
            _ => kube_proxy_run(n, args.endpoints, budget.mul_f64(1.5), work)?,
        };
        if let report::KubeProxy::Ran(usage) = &outcome {
            last = Some((n, usage.wall));
        }
        kube_proxy.push(report::KubeProxyRow {
            n,
            outcome,
            ours_nft: ours.0,
            ours_cold: ours.1,
        });
    }
    let mut dp_sizes = args.dataplane_sizes.clone();
    dp_sizes.retain(|&n| n > 0);
    dp_sizes.sort_unstable();
    let latency = dataplane::measure(
        &dp_sizes,
        &args.dataplane_kube_proxy_sizes,
        args.endpoints,
        args.connections,
        args.dispatch_tables,
        kube_nft,
        work,
    )
    .context("data plane")?;
    let daemon = daemon::measure(&daemon_sizes, &daemon_opts).context("daemon")?;
    let machine = report::Machine::probe(&command_line());
    Ok(Generated::Whole(report::render(
        &machine,
        args.endpoints,
        args.reps,
        &results,
        &kube_proxy,
        budget,
        &dataplane::table(&latency),
        &report::render_daemon(&machine, args.endpoints, args.dispatch_tables, &daemon),
    )))
}

/// `nft -f` of the kube-proxy-shaped script in a fresh namespace, killed after `deadline`.
fn kube_proxy_run(
    n: usize,
    m: usize,
    deadline: Duration,
    work: &Path,
) -> anyhow::Result<report::KubeProxy> {
    let cluster = synthetic::generate(n, m, synthetic::SEED);
    let path = work.join(format!("kube-proxy-{n}.nft"));
    std::fs::write(&path, kube_proxy::script(&cluster))?;
    drop(cluster);
    let outcome = in_netns(|ns| {
        let outcome = child::run(
            "nft",
            &["-f".into(), path.clone().into()],
            None,
            Some(deadline),
        );
        let _ = ns.nft(&["delete", "table", "ip", "kube-proxy"]);
        outcome
    })?;
    let _ = std::fs::remove_file(&path);
    Ok(match outcome {
        Outcome::Finished(usage) => {
            sync::progress(
                n,
                format_args!("kube-proxy-shaped nft -f {:.2?}", usage.wall),
            );
            report::KubeProxy::Ran(usage)
        }
        Outcome::TimedOut(after) => report::KubeProxy::TimedOut { after },
    })
}

/// The `kube-nft` binary beside this one. Under `cargo run` (which sets `CARGO`), it is built
/// first with the same profile, so one command builds and runs everything.
fn sibling_kube_nft() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate kube-nft-bench")?;
    let dir = exe.parent().context("kube-nft-bench has no directory")?;
    if let Ok(cargo) = std::env::var("CARGO") {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("workspace root")?;
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace)
            .args(["build", "--quiet", "-p", "kube-nft", "--bin", "kube-nft"]);
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().context("run cargo build")?;
        if !status.success() {
            bail!("cargo build -p kube-nft failed");
        }
    }
    let path = dir.join("kube-nft");
    if !path.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release) or pass --kube-nft",
            path.display()
        );
    }
    Ok(path)
}

/// How this run was started, for the report.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("CARGO").is_some() {
        format!(
            "cargo run --release -p kube-nft-bench -- {}",
            args.join(" ")
        )
    } else {
        let exe = std::env::args().next().unwrap_or_default();
        format!("{exe} {}", args.join(" "))
    }
    .trim_end()
    .to_owned()
}
