//! The measurements of one cluster size, each in a fresh network namespace that is emptied
//! again before it is left (so the kernel's deferred namespace teardown does not run into the
//! next measurement): compile, cold apply over netlink, `nft -f` of our own script, the
//! `kube-nft` binary end to end, incremental changes and the read-back of the whole table.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kube_nft_compiler::ir::{Family, Ruleset};
use kube_nft_compiler::model::Snapshot;
use kube_nft_compiler::plan::{plan, Object};
use kube_nft_compiler::{compile, render};
use kube_nft_runtime::{apply, readback};
use kube_nft_testkit::netns::in_netns;
use kube_nft_testkit::synthetic::{self, Cluster, Kind, Mix};

use crate::child::{self, Outcome, Usage};

/// Counts of the compiled ruleset, over both tables.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IrSize {
    pub(crate) chains: usize,
    pub(crate) rules: usize,
    pub(crate) sets: usize,
    pub(crate) elements: usize,
}

impl IrSize {
    pub(crate) fn of(ruleset: &Ruleset) -> IrSize {
        let mut size = IrSize::default();
        for table in &ruleset.tables {
            size.chains += table.chains.len();
            size.rules += table.chains.values().map(|c| c.rules.len()).sum::<usize>();
            size.sets += table.sets.len();
            size.elements += table.sets.values().map(|s| s.elements.len()).sum::<usize>();
        }
        size
    }
}

/// A cold start through the runtime, as `kube-nft compile -f` does it on an empty kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cold {
    /// Read-back of the (empty) kernel, plan, encode and every commit.
    pub(crate) total: Duration,
    /// Encoding of all transactions.
    pub(crate) encode: Duration,
    /// Sum of the commits (`sendmsg` until the replies are drained).
    pub(crate) commit: Duration,
    pub(crate) report: apply::ApplyReport,
}

/// One kind of incremental change, applied back and forth.
#[derive(Clone, Debug)]
pub(crate) struct Incremental {
    pub(crate) name: &'static str,
    /// Operations of the plan (`plan::Transaction::len`), its summary, messages and bytes.
    pub(crate) ops: usize,
    pub(crate) summary: String,
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    /// Change to committed transaction given the new IR: plan + encode + commit.
    pub(crate) samples: Vec<Duration>,
    /// The plans alone.
    pub(crate) plans: Vec<Duration>,
    /// The commits alone.
    pub(crate) commits: Vec<Duration>,
}

/// Everything measured for one size.
#[derive(Clone, Debug)]
pub(crate) struct SizeResult {
    pub(crate) n: usize,
    pub(crate) mix: Mix,
    pub(crate) ir: IrSize,
    pub(crate) json_bytes: usize,
    pub(crate) script_bytes: usize,
    /// JSON text → snapshot (`model::load`).
    pub(crate) load: Duration,
    /// Snapshot → verified IR (`compiler::compile`), best of the runs.
    pub(crate) compile: Duration,
    /// `kube-nft compile --dry-run -f`: load, compile and render, as a child process.
    pub(crate) dry_run: Usage,
    pub(crate) cold: Cold,
    /// The same cold start as one single transaction (for comparison), if measured.
    pub(crate) cold_single: Option<Cold>,
    /// `nft -f` of our `--dry-run` script into an empty namespace.
    pub(crate) nft_ours: Outcome,
    /// `kube-nft compile -f` into an empty namespace: load, compile, read-back, plan, apply.
    pub(crate) compile_f: Usage,
    /// Read-back of both tables, and read-back plus plan against the compiled IR.
    pub(crate) readback: Duration,
    pub(crate) readback_diff: Duration,
    pub(crate) incremental: Vec<Incremental>,
}

/// What the runs need from the command line.
pub(crate) struct Options<'a> {
    pub(crate) endpoints: usize,
    pub(crate) reps: usize,
    pub(crate) kube_nft: &'a Path,
    pub(crate) work: &'a Path,
    pub(crate) single_transaction: bool,
    /// When to give up on `nft -f` of our own script.
    pub(crate) nft_deadline: Duration,
}

/// A part of [`measure`], for profiling one thing at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// Compile, then a cold start.
    Cold,
    /// Compile, a cold start (not profiled away), then the incremental changes.
    Incremental,
    /// Compile, a cold start, then the read-back and diff of the whole table.
    Readback,
}

/// Runs one part of [`measure`] alone.
pub(crate) fn profile(n: usize, part: Part, opts: &Options<'_>) -> anyhow::Result<()> {
    let cluster = synthetic::generate(n, opts.endpoints, synthetic::SEED);
    let snapshot = cluster.snapshot();
    let desired = compile(&snapshot, &synthetic::config()).ruleset;
    in_netns(|_| {
        let cold = cold_start(&desired, apply::COLD_START_COST)?;
        progress(
            n,
            format_args!(
                "cold start {:.2?}, longest commit {:.2?}",
                cold.total, cold.report.longest_commit
            ),
        );
        if part == Part::Readback {
            let (read, diff) = read_back(&desired)?;
            progress(
                n,
                format_args!("read-back {read:.2?}, read-back + diff {diff:.2?}"),
            );
        }
        if part == Part::Incremental {
            for i in incremental(&cluster, &snapshot, &desired, opts, reps_at(n, opts))? {
                progress(
                    n,
                    format_args!(
                        "{}: p50 {:.2?}, plan p50 {:.2?}, commit p50 {:.2?}",
                        i.name,
                        crate::report::percentile(&i.samples, 50),
                        crate::report::percentile(&i.plans, 50),
                        crate::report::percentile(&i.commits, 50)
                    ),
                );
            }
        }
        apply::cleanup().context("clean up")?;
        anyhow::Ok(())
    })
}

/// Measures one size.
pub(crate) fn measure(n: usize, opts: &Options<'_>) -> anyhow::Result<SizeResult> {
    let cluster = synthetic::generate(n, opts.endpoints, synthetic::SEED);
    let json = cluster.to_json();
    let json_path = opts.work.join(format!("cluster-{n}.json"));
    std::fs::write(&json_path, &json).context("write cluster JSON")?;
    let json_bytes = json.len();
    drop(json);

    let started = Instant::now();
    let snapshot = cluster.snapshot();
    let load = started.elapsed();
    let config = synthetic::config();
    let runs = if n <= 10_000 { 3 } else { 1 };
    let mut compile_best = Duration::MAX;
    let mut compiled = None;
    for _ in 0..runs {
        let started = Instant::now();
        let c = compile(&snapshot, &config);
        compile_best = compile_best.min(started.elapsed());
        compiled = Some(c);
    }
    let compiled = compiled.expect("at least one run");
    if !compiled.diagnostics.is_empty() {
        bail!(
            "synthetic cluster compiles with diagnostics: {:?}",
            compiled.diagnostics[0]
        );
    }
    let desired = compiled.ruleset;
    let ir = IrSize::of(&desired);
    progress(n, format_args!("compiled in {compile_best:.2?}: {ir:?}"));

    let script_path = opts.work.join(format!("kube-nft-{n}.nft"));
    let dry_run = child::run_to_end(
        &opts.kube_nft.to_string_lossy(),
        &kube_nft_args(&["compile", "--dry-run", "-f"], &json_path),
        Some(&script_path),
    )?;
    let script_bytes = std::fs::metadata(&script_path)?.len() as usize;
    progress(n, format_args!("compile --dry-run {:.2?}", dry_run.wall));

    let cold_single = if opts.single_transaction {
        let cold = in_netns(|_| cold_start(&desired, usize::MAX))?;
        progress(
            n,
            format_args!("cold start, one transaction: {:.2?}", cold.total),
        );
        Some(cold)
    } else {
        None
    };

    let (cold, readback, readback_diff, incremental) = in_netns(|_| {
        let cold = cold_start(&desired, apply::COLD_START_COST)?;
        progress(
            n,
            format_args!(
                "cold start {:.2?} in {} transactions",
                cold.total, cold.report.transactions
            ),
        );
        let (readback, readback_diff) = read_back(&desired)?;
        let incremental = incremental(&cluster, &snapshot, &desired, opts, reps_at(n, opts))?;
        apply::cleanup().context("clean up")?;
        anyhow::Ok((cold, readback, readback_diff, incremental))
    })?;

    let nft_ours = nft_load(&script_path, opts.nft_deadline)?;
    progress(n, format_args!("nft -f of our script {nft_ours:?}"));

    let compile_f = in_netns(|_| {
        let usage = child::run_to_end(
            &opts.kube_nft.to_string_lossy(),
            &kube_nft_args(&["compile", "-f"], &json_path),
            None,
        );
        apply::cleanup().context("clean up")?;
        usage
    })?;
    progress(
        n,
        format_args!("kube-nft compile -f {:.2?}", compile_f.wall),
    );
    let _ = std::fs::remove_file(&json_path);
    let _ = std::fs::remove_file(&script_path);

    Ok(SizeResult {
        n,
        mix: cluster.mix(),
        ir,
        json_bytes,
        script_bytes,
        load,
        compile: compile_best,
        dry_run,
        cold,
        cold_single,
        nft_ours,
        compile_f,
        readback,
        readback_diff,
        incremental,
    })
}

/// Our `nft -f` script and our netlink cold start at size `n`, for the kube-proxy comparison
/// at sizes the main table does not have.
pub(crate) fn ours_light(n: usize, opts: &Options<'_>) -> anyhow::Result<(Outcome, Cold)> {
    let cluster = synthetic::generate(n, opts.endpoints, synthetic::SEED);
    let compiled = compile(&cluster.snapshot(), &synthetic::config());
    let script_path = opts.work.join(format!("kube-nft-{n}.nft"));
    std::fs::write(&script_path, render::render(&compiled))?;
    let nft = nft_load(&script_path, opts.nft_deadline)?;
    let _ = std::fs::remove_file(&script_path);
    let cold = in_netns(|_| {
        let cold = cold_start(&compiled.ruleset, apply::COLD_START_COST);
        apply::cleanup().context("clean up")?;
        cold
    })?;
    Ok((nft, cold))
}

/// `kube-nft SUBCOMMAND… PATH` with the node flags of the synthetic clusters.
/// `nft -f SCRIPT` as a child process in a fresh network namespace, killed after `deadline`.
fn nft_load(script: &Path, deadline: Duration) -> anyhow::Result<Outcome> {
    in_netns(|_| {
        let args = ["-f".into(), script.to_path_buf().into()];
        let outcome = child::run("nft", &args, None, Some(deadline));
        apply::cleanup().context("clean up")?;
        outcome
    })
}

fn kube_nft_args(subcommand: &[&str], path: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = subcommand.iter().map(OsString::from).collect();
    args.push(path.into());
    args.extend(synthetic::NODE_FLAGS.iter().map(OsString::from));
    args
}

/// What `compile -f` does on an empty kernel: read back, plan, split, encode, commit.
fn cold_start(desired: &Ruleset, max_ops: usize) -> anyhow::Result<Cold> {
    let started = Instant::now();
    let current = readback::read(&[Family::Ip, Family::Ip6])?;
    if !current.tables.is_empty() {
        bail!("the namespace is not empty");
    }
    let tx = plan(&current, desired);
    let report = if max_ops == apply::COLD_START_COST {
        // As `compile -f` and the daemon do: encoded on a second thread while sent.
        apply::apply_plan(&current, &tx)?
    } else {
        apply::apply_transactions(&apply::plan_transactions(&current, &tx, max_ops)?)?
    };
    let total = started.elapsed();
    let commit = report.committing;
    // Encoding alone, for the breakdown (in `apply_plan` it overlaps the commits).
    let encode_started = Instant::now();
    let transactions = apply::plan_transactions(&current, &tx, max_ops)?;
    let encode = encode_started.elapsed();
    if std::env::var_os("KUBE_NFT_BENCH_DEBUG").is_some() {
        apply::cleanup()?;
        for (i, t) in transactions.iter().enumerate() {
            let started = Instant::now();
            apply::apply_transactions(std::slice::from_ref(t))?;
            let took = started.elapsed();
            let kinds: std::collections::BTreeMap<String, usize> =
                t.ops().iter().fold(Default::default(), |mut m, op| {
                    *m.entry(format!("{:?}", op.kind)).or_default() += 1;
                    m
                });
            eprintln!("  tx {i}: {took:.2?} {} bytes {kinds:?}", t.bytes().len());
        }
    }
    Ok(Cold {
        total,
        encode,
        commit,
        report,
    })
}

/// Read-back of the whole table, then read-back plus plan, which must find nothing to do.
fn read_back(desired: &Ruleset) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let _ = readback::read(&[Family::Ip, Family::Ip6])?;
    let read = started.elapsed();
    let started = Instant::now();
    let current = readback::read(&[Family::Ip, Family::Ip6])?;
    let tx = plan(&current, desired);
    let diff = started.elapsed();
    if !tx.is_empty() {
        bail!(
            "read-back differs from the applied ruleset: {}",
            tx.counts()
        );
    }
    Ok((read, diff))
}

/// The incremental changes, each applied `reps` times forth (`name`) and back (its inverse),
/// against the previous IR as a daemon does (no read-back).
fn incremental(
    cluster: &Cluster,
    snapshot: &Snapshot,
    base: &Ruleset,
    opts: &Options<'_>,
    reps: usize,
) -> anyhow::Result<Vec<Incremental>> {
    let config = synthetic::config();
    let middle = cluster.services.len() / 2;
    let mut out = Vec::new();

    // One more endpoint for a plain ClusterIP Service.
    let k = (middle..cluster.services.len())
        .chain(0..middle)
        .find(|&i| {
            let s = &cluster.services[i];
            s.kind == Kind::ClusterIp && !s.affinity && s.ports.len() == 1
        })
        .context("no plain ClusterIP Service")?;
    let mut changed = cluster.clone();
    let endpoint = changed.new_endpoint();
    changed.services[k].endpoints.push(endpoint);
    let mut next = snapshot.clone();
    let mut one = synthetic::snapshot_of(changed.manifests_of(k).to_vec());
    next.endpoint_slices[k] = one.endpoint_slices.remove(0);
    let with_endpoint = compile(&next, &config).ruleset;
    let (added, removed) = back_and_forth(
        ("endpoint added", "endpoint removed"),
        base,
        &with_endpoint,
        reps,
    )?;
    out.extend([added, removed]);

    // One more Service (with `m` endpoints, drawn like the others).
    let mut changed = cluster.clone();
    let k = changed.push_service(opts.endpoints);
    let mut next = snapshot.clone();
    let mut one = synthetic::snapshot_of(changed.manifests_of(k).to_vec());
    next.services.push(one.services.remove(0));
    next.endpoint_slices.push(one.endpoint_slices.remove(0));
    let with_service = compile(&next, &config).ruleset;
    let (added, removed) = back_and_forth(
        ("Service added", "Service removed"),
        base,
        &with_service,
        reps,
    )?;
    out.extend([added, removed]);

    // Set data only: a LoadBalancer's source ranges change (firewall-allow elements).
    if let Some(k) = cluster
        .services
        .iter()
        .position(|s| !s.source_ranges.is_empty())
    {
        let mut changed = cluster.clone();
        changed.services[k].source_ranges[1] = "203.0.113.0/24".into();
        let mut next = snapshot.clone();
        let mut one = synthetic::snapshot_of(changed.manifests_of(k).to_vec());
        next.services[k] = one.services.remove(0);
        let with_ranges = compile(&next, &config).ruleset;
        let tx = plan(base, &with_ranges);
        if tx
            .ops
            .iter()
            .any(|op| !matches!(op.object, Object::Elements { .. }))
        {
            bail!("a source-range change is not data only: {}", tx.counts());
        }
        let (changed, _) = back_and_forth(
            (
                "source range changed (set data only)",
                "source range restored",
            ),
            base,
            &with_ranges,
            reps,
        )?;
        out.push(changed);
    }
    Ok(out)
}

/// Applies `base → next` and `next → base` alternately, `reps` times each; the kernel holds
/// `base` before and after.
fn back_and_forth(
    names: (&'static str, &'static str),
    base: &Ruleset,
    next: &Ruleset,
    reps: usize,
) -> anyhow::Result<(Incremental, Incremental)> {
    let mut forth = empty(names.0);
    let mut back = empty(names.1);
    for _ in 0..reps {
        step(&mut forth, base, next)?;
        step(&mut back, next, base)?;
    }
    Ok((forth, back))
}

fn empty(name: &'static str) -> Incremental {
    Incremental {
        name,
        ops: 0,
        summary: String::new(),
        messages: 0,
        bytes: 0,
        samples: Vec::new(),
        plans: Vec::new(),
        commits: Vec::new(),
    }
}

fn step(into: &mut Incremental, old: &Ruleset, new: &Ruleset) -> anyhow::Result<()> {
    let started = Instant::now();
    let tx = plan(old, new);
    into.plans.push(started.elapsed());
    let report = apply::apply_plan(old, &tx)?;
    into.samples.push(started.elapsed());
    into.commits.push(report.longest_commit);
    // A change is one transaction, or up to three when it creates or retires shared DNAT
    // chains and maps (prepare, switch, retire: `plan::Transaction::phases`).
    if report.transactions > 3 {
        bail!("{}: {} transactions", into.name, report.transactions);
    }
    into.ops = tx.len();
    into.summary = tx.counts().to_string();
    into.messages = report.messages;
    into.bytes = report.bytes;
    Ok(())
}

/// Repetitions of each incremental change at size `n`: a third above 10k Services, where each
/// plan diffs a ruleset of hundreds of thousands of rules.
pub(crate) fn reps_at(n: usize, opts: &Options<'_>) -> usize {
    if n > 10_000 {
        opts.reps.div_ceil(3)
    } else {
        opts.reps
    }
}

pub(crate) fn progress(n: usize, args: std::fmt::Arguments<'_>) {
    eprintln!("[{n}] {args}");
}
