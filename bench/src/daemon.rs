//! The node daemon, `kube-nft run`, measured from the outside. For each size, in a throwaway
//! network namespace: the fake API server of `kube-nft-testkit` (plain-http list/watch on
//! 127.0.0.1 inside the namespace, served from this process) holds the synthetic cluster of N
//! Services × M endpoints, and the release `kube-nft run` binary is started against it through
//! a kubeconfig, as a child process in the namespace. Measured:
//!
//! - start: spawn to the initial full sync committed (the daemon's `synced kind=full` log
//!   line), the sync round alone (the duration it logs), and the CPU the daemon used up to then;
//! - RSS (`VmRSS`, and the peak `VmHWM`) after the initial sync and after the changes;
//! - event-to-commit latency: the time from just before a write into the fake API server to the
//!   commit of the last transaction the daemon makes of it (up to three: shared chains
//!   prepared, the change, leftovers retired), which an nf_tables monitor in the same
//!   namespace sees as a NEWGEN (the monitor reports commits of other processes, so every
//!   commit to our tables it reports is the daemon's; it subscribes after the initial sync,
//!   whose commits it would slow down). It includes the watch delivery over
//!   HTTP, the decoding, the daemon's queueing and its sync round; the sync round alone comes
//!   from the daemon's log. Three kinds: one endpoint of a random Service replaced (its
//!   EndpointSlice rewritten), a random Service's port changed, and a new Service added (its
//!   EndpointSlice is written first, a quiet period before, so the measured write is the
//!   Service alone);
//! - CPU per change: the daemon's utime + stime (`/proc/PID/stat`) over each series, divided by
//!   the number of changes (quiet time between changes included; the idle rate is measured
//!   and reported on its own).
//!
//! Changes are spaced by more than `--min-sync-period` (kube-proxy's default, 1 s), so the
//! rate limit never delays one; `--sync-period 1h` keeps the periodic verification (a
//! read-back of the whole table) out of the measurements. At the end the kernel is read back
//! and must equal what `compile` makes of the final cluster. Every wait is bounded; the
//! daemon, the monitor and the server are stopped and the namespace emptied on the way out.

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kube_nft_compiler::ir::Family;
use kube_nft_compiler::plan::plan;
use kube_nft_runtime::netlink::monitor::{self, Event, Monitor};
use kube_nft_runtime::{apply, readback};
use kube_nft_testkit::apiserver::FakeApiServer;
use kube_nft_testkit::daemon::loopback_up;
use kube_nft_testkit::netns::in_netns;
use kube_nft_testkit::synthetic::{self, Cluster};
use serde_json::Value;

use crate::sync::progress;

/// `--min-sync-period` of the daemon: kube-proxy's default.
const MIN_SYNC_PERIOD: &str = "1s";
/// Quiet time after a change's commit before the next change: beyond the rate limit, so that
/// every change is synced at once, and long enough for a straggling second commit to show.
const GAP: Duration = Duration::from_millis(1250);
/// `--sync-period`: long, so that no periodic verification overlaps a measurement.
const SYNC_PERIOD: &str = "1h";
/// After the initial sync, before anything is measured (later first-list events may still
/// request a round, which the rate limit holds for up to a second).
const SETTLE: Duration = Duration::from_secs(2);
/// The window in which the idle CPU rate is measured (CPU time is counted in 10 ms ticks).
const IDLE: Duration = Duration::from_secs(10);
/// Seed of the choices of Services to change.
const CHANGE_SEED: u64 = 0x6461_656d_6f6e;

/// What the runs need from the command line.
pub(crate) struct Options<'a> {
    pub(crate) endpoints: usize,
    /// Endpoint changes per size.
    pub(crate) endpoint_changes: usize,
    /// Changes per size of each Service kind (port changed, Service added).
    pub(crate) service_changes: usize,
    pub(crate) kube_nft: &'a Path,
    pub(crate) work: &'a Path,
    /// `--dispatch-tables` of the daemon.
    pub(crate) dispatch_tables: u16,
}

/// Resident memory of the daemon, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Memory {
    /// `VmRSS`.
    pub(crate) rss: u64,
    /// `VmHWM`: the peak so far.
    pub(crate) peak: u64,
}

/// One series of changes of one kind.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    pub(crate) name: &'static str,
    /// Write into the API server → first commit of the daemon after it.
    pub(crate) samples: Vec<Duration>,
    /// The daemon's sync rounds that sent something during the series (`duration_ms` of its
    /// `synced` log lines).
    pub(crate) rounds: Vec<Duration>,
    /// Commits seen during the series (one per change when each change is one transaction).
    pub(crate) commits: usize,
    /// The daemon's CPU over the series, quiet time between changes included.
    pub(crate) cpu: Duration,
}

/// Everything measured for one size.
#[derive(Clone, Debug)]
pub(crate) struct DaemonResult {
    pub(crate) n: usize,
    /// Objects put into the fake API server, and how long that took.
    pub(crate) objects: usize,
    pub(crate) fill: Duration,
    /// 1-minute load average when the size started.
    pub(crate) load_average: f64,
    /// Spawn → the initial full sync logged.
    pub(crate) start: Duration,
    /// The initial sync round itself (daemon log) and its transactions.
    pub(crate) start_round: Duration,
    pub(crate) start_transactions: u64,
    /// The daemon's CPU from its start through the initial sync.
    pub(crate) start_cpu: Duration,
    pub(crate) after_start: Memory,
    /// CPU per second of wall time while nothing changes.
    pub(crate) idle_cpu_per_s: Duration,
    pub(crate) series: Vec<Series>,
    pub(crate) after_changes: Memory,
    /// Commits nobody asked for: after the initial sync settled, outside a change's window.
    pub(crate) stray_commits: usize,
    /// Losses the monitor reported (each may hide commits).
    pub(crate) lost: usize,
    /// The kernel read back after the changes equals `compile` of the final cluster.
    pub(crate) verified: bool,
}

impl DaemonResult {
    /// Changes made, and commits seen during them.
    pub(crate) fn changes_and_commits(&self) -> (usize, usize) {
        self.series.iter().fold((0, 0), |(changes, commits), s| {
            (changes + s.samples.len(), commits + s.commits)
        })
    }
}

/// Measures every size in `sizes`.
pub(crate) fn measure(sizes: &[usize], opts: &Options<'_>) -> anyhow::Result<Vec<DaemonResult>> {
    let mut out = Vec::new();
    for &n in sizes {
        out.push(measure_size(n, opts).with_context(|| format!("daemon at {n} Services"))?);
    }
    Ok(out)
}

fn measure_size(n: usize, opts: &Options<'_>) -> anyhow::Result<DaemonResult> {
    let load_average = load_average();
    let started = Instant::now();
    let mut cluster = synthetic::generate(n, opts.endpoints, synthetic::SEED);
    let manifests = cluster.manifests();
    let objects = manifests.len();
    progress(
        n,
        format_args!(
            "daemon: generated {objects} objects in {:.2?} (load average {load_average:.2})",
            started.elapsed()
        ),
    );
    let kubeconfig = opts.work.join(format!("daemon-{n}.kubeconfig"));
    let log = opts.work.join(format!("daemon-{n}.log"));
    let result = in_netns(|_| {
        loopback_up();
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the fake API server")?;
        let server = FakeApiServer::start(listener).context("start the fake API server")?;
        // The real API server sends a bookmark about once a minute; the fake one's default is
        // a second, which would be idle work for the daemon that no cluster gives it.
        server.set_bookmark_interval(Duration::from_secs(60));
        let started = Instant::now();
        for doc in manifests {
            server.apply(doc).context("fill the fake API server")?;
        }
        let fill = started.elapsed();
        progress(
            n,
            format_args!("daemon: fake API server filled in {fill:.2?}"),
        );
        server
            .write_kubeconfig(&kubeconfig)
            .context("write the kubeconfig")?;
        let mut run = Run::start(n, opts, &kubeconfig, &log, &server)?;
        let outcome = run.measure(&mut cluster, opts);
        let memory = run.daemon.memory();
        let exit = run.daemon.terminate();
        drop(run);
        let (mut result, memory) = match (outcome, memory) {
            (Ok(result), Ok(memory)) => (result, memory),
            (Err(err), _) | (_, Err(err)) => {
                let _ = apply::cleanup();
                return Err(err);
            }
        };
        result.after_changes = memory;
        result.fill = fill;
        result.objects = objects;
        result.load_average = load_average;
        if let Ok(status) = &exit {
            if !status.success() {
                progress(n, format_args!("daemon: exited with {status} on SIGTERM"));
            }
        }
        let verified = verify(&cluster, opts.dispatch_tables);
        apply::cleanup().context("clean up")?;
        drop(server);
        result.verified = verified?;
        anyhow::Ok(result)
    });
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&log);
    result
}

/// The kernel must hold what `compile` makes of the final cluster.
fn verify(cluster: &Cluster, dispatch_tables: u16) -> anyhow::Result<bool> {
    let config = kube_nft_compiler::Config {
        dispatch_tables,
        ..synthetic::config()
    };
    let compiled = kube_nft_compiler::compile(&cluster.snapshot(), &config);
    let expected = readback::canonical(&compiled.ruleset);
    let current = readback::read(&[Family::Ip, Family::Ip6]).context("read back")?;
    if current == expected {
        return Ok(true);
    }
    bail!(
        "the kernel does not hold the compiled final cluster; the difference is {}",
        plan(&current, &expected).counts()
    )
}

/// One daemon under measurement, with the API server it watches and a monitor of its commits.
struct Run<'a> {
    n: usize,
    daemon: Daemon,
    log: Log,
    server: &'a FakeApiServer,
    commits: Commits,
    stray: usize,
    lost: usize,
    start: Duration,
    start_round: Duration,
    start_transactions: u64,
    start_cpu: Duration,
}

impl<'a> Run<'a> {
    /// Starts the daemon and waits for its initial full sync.
    fn start(
        n: usize,
        opts: &Options<'_>,
        kubeconfig: &Path,
        log_path: &Path,
        server: &'a FakeApiServer,
    ) -> anyhow::Result<Run<'a>> {
        let spawned = Instant::now();
        let mut daemon = Daemon::spawn(opts, kubeconfig, log_path)?;
        let mut log = Log::new(log_path);
        let deadline = spawned + start_timeout(n);
        let first = loop {
            if let Some(round) = log.rounds()?.into_iter().find(|r| r.kind == "full") {
                break round;
            }
            if let Some(status) = daemon.exited() {
                bail!("kube-nft run exited ({status}):\n{}", log.tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "no initial sync within {:?}:\n{}",
                    start_timeout(n),
                    log.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let start = spawned.elapsed();
        let start_cpu = daemon.cpu()?;
        progress(
            n,
            format_args!(
                "daemon (pid {}): initial sync after {start:.2?} (round {:.2?}, {} transactions, \
                 CPU {start_cpu:.2?})",
                daemon.pid(),
                first.duration,
                first.transactions
            ),
        );
        // Watch the daemon's commits only from now on: an extra listener makes every commit
        // pay for one more copy of its notifications, and the cold start is not measured here.
        let commits = Commits::open()?;
        Ok(Run {
            n,
            daemon,
            log,
            server,
            commits,
            stray: 0,
            lost: 0,
            start,
            start_round: first.duration,
            start_transactions: first.transactions,
            start_cpu,
        })
    }

    fn measure(
        &mut self,
        cluster: &mut Cluster,
        opts: &Options<'_>,
    ) -> anyhow::Result<DaemonResult> {
        let n = self.n;
        std::thread::sleep(SETTLE);
        self.quiet();
        let after_start = self.daemon.memory()?;
        let cpu = self.daemon.cpu()?;
        std::thread::sleep(IDLE);
        let idle_cpu_per_s = (self.daemon.cpu()? - cpu).div_f64(IDLE.as_secs_f64());
        self.quiet();
        self.log.rounds()?;

        let mut rng = CHANGE_SEED;
        let original = cluster.services.len();
        let mut series = Vec::new();

        let mut s = self.series("endpoint changed")?;
        for _ in 0..opts.endpoint_changes {
            let i = pick(&mut rng, original);
            let j = pick(&mut rng, cluster.services[i].endpoints.len());
            cluster.services[i].endpoints[j] = cluster.new_endpoint();
            let [_, slice] = cluster.manifests_of(i);
            self.change(&mut s, slice)?;
        }
        series.push(self.finish(s)?);

        let mut s = self.series("Service port changed")?;
        for _ in 0..opts.service_changes {
            let i = pick(&mut rng, original);
            let port = &mut cluster.services[i].ports[0].port;
            *port = port.checked_add(1).unwrap_or(1);
            let [service, _] = cluster.manifests_of(i);
            self.change(&mut s, service)?;
        }
        series.push(self.finish(s)?);

        let mut s = self.series("Service added")?;
        for _ in 0..opts.service_changes {
            let k = cluster.push_service(opts.endpoints);
            let [service, slice] = cluster.manifests_of(k);
            // The EndpointSlice first: a slice without its Service programs nothing, and the
            // quiet period after it lets the rate limit expire.
            self.server.apply(slice).context("add an EndpointSlice")?;
            std::thread::sleep(GAP);
            self.change(&mut s, service)?;
        }
        series.push(self.finish(s)?);

        for s in &series {
            progress(
                n,
                format_args!(
                    "daemon: {}: p50 {:.2?}, p99 {:.2?}, round p50 {:.2?}, CPU per change {:.2?}",
                    s.name,
                    crate::report::percentile(&s.samples, 50),
                    crate::report::percentile(&s.samples, 99),
                    crate::report::percentile(&s.rounds, 50),
                    s.cpu / s.samples.len().max(1) as u32
                ),
            );
        }
        Ok(DaemonResult {
            n,
            objects: 0,
            fill: Duration::ZERO,
            load_average: 0.0,
            start: self.start,
            start_round: self.start_round,
            start_transactions: self.start_transactions,
            start_cpu: self.start_cpu,
            after_start,
            idle_cpu_per_s,
            series,
            after_changes: Memory::default(),
            stray_commits: self.stray,
            lost: self.lost,
            verified: false,
        })
    }

    /// A new series; its CPU count starts now.
    fn series(&mut self, name: &'static str) -> anyhow::Result<Series> {
        Ok(Series {
            name,
            samples: Vec::new(),
            rounds: Vec::new(),
            commits: 0,
            // The daemon's CPU time at the start, until `finish` makes it the difference.
            cpu: self.daemon.cpu()?,
        })
    }

    fn finish(&mut self, mut s: Series) -> anyhow::Result<Series> {
        s.cpu = self.daemon.cpu()?.saturating_sub(s.cpu);
        Ok(s)
    }

    /// Counts (and forgets) commits and losses that arrived while nothing was measured.
    fn quiet(&mut self) {
        for seen in self.commits.drain() {
            match seen {
                Seen::Commit(_) => self.stray += 1,
                Seen::Lost(_) => self.lost += 1,
            }
        }
    }

    /// Writes `object`, waits for the daemon's commit, then for the quiet gap.
    fn change(&mut self, s: &mut Series, object: Value) -> anyhow::Result<()> {
        self.quiet();
        let before = Instant::now();
        self.server
            .apply(object)
            .context("write into the fake API server")?;
        let deadline = before + commit_timeout(self.n);
        let committed = loop {
            match self
                .commits
                .next(deadline.saturating_duration_since(Instant::now()))
            {
                Some(Seen::Commit(at)) => break at,
                Some(Seen::Lost(why)) => {
                    self.lost += 1;
                    progress(self.n, format_args!("daemon: monitor: {why}"));
                }
                None => {
                    if let Some(status) = self.daemon.exited() {
                        bail!("kube-nft run exited ({status}):\n{}", self.log.tail());
                    }
                    bail!(
                        "{}: no commit within {:?} of the write:\n{}",
                        s.name,
                        commit_timeout(self.n),
                        self.log.tail()
                    );
                }
            }
        };
        s.commits += 1;
        std::thread::sleep(GAP);
        // A change is committed as up to three transactions sent back to back (the shared
        // chains and slots it prepares, the change, what it retires: `plan::Transaction::
        // phases`); it is in effect at the last of them that arrives in the gap.
        let mut last = committed;
        for seen in self.commits.drain() {
            match seen {
                Seen::Commit(at) => {
                    s.commits += 1;
                    last = last.max(at);
                }
                Seen::Lost(_) => self.lost += 1,
            }
        }
        s.samples.push(last.saturating_duration_since(before));
        s.rounds
            .extend(self.log.rounds()?.into_iter().map(|r| r.duration));
        Ok(())
    }
}

/// How long the initial sync may take: generous, a cold start at 50k took 14 s in the sync
/// table and the daemon lists and decodes the cluster first.
fn start_timeout(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(6 * n as u64)
}

/// How long one change may take to be committed.
fn commit_timeout(n: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_micros(400 * n as u64)
}

/// Uniform in `0..len` (splitmix64 step).
fn pick(state: &mut u64, len: usize) -> usize {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % len.max(1) as u64) as usize
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// The daemon process

/// `kube-nft run` as a child process of the calling thread's network namespace; killed on drop.
struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn spawn(opts: &Options<'_>, kubeconfig: &Path, log: &Path) -> anyhow::Result<Daemon> {
        let file = std::fs::File::create(log).context("create the daemon log")?;
        let mut command = Command::new(opts.kube_nft);
        command
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(synthetic::NODE_FLAGS)
            .args(["--dispatch-tables", &opts.dispatch_tables.to_string()])
            .args([
                "--min-sync-period",
                MIN_SYNC_PERIOD,
                "--sync-period",
                SYNC_PERIOD,
                "--healthz-bind-address",
                "",
                "--metrics-bind-address",
                "127.0.0.1:10249",
                "--log-format",
                "json",
            ])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("start {} run", opts.kube_nft.display()))?;
        let daemon = Daemon { child: Some(child) };
        // Never let it program the host: it must be in this thread's namespace.
        let ours = std::fs::read_link("/proc/thread-self/ns/net")?;
        let its = std::fs::read_link(format!("/proc/{}/ns/net", daemon.pid()))?;
        if ours != its {
            bail!("kube-nft run started outside the benchmark's network namespace");
        }
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// utime + stime of the whole process (exited threads included).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(fields.get(i).context("short stat")?.parse::<u64>()?)
        };
        let total = ticks(11)? + ticks(12)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(Duration::from_secs_f64(total as f64 / hz))
    }

    fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = |key: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .with_context(|| format!("no {key} in /proc/PID/status"))?;
            let value = line[key.len()..].trim().trim_end_matches(" kB").trim();
            Ok(value.parse::<u64>()? * 1024)
        };
        Ok(Memory {
            rss: kib("VmRSS:")?,
            peak: kib("VmHWM:")?,
        })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("no daemon");
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        Ok(child.wait()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's log

/// A `synced` line of the daemon's JSON log.
struct Round {
    kind: String,
    duration: Duration,
    transactions: u64,
}

/// The daemon's log, read as it grows.
struct Log {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Log {
    fn new(path: &Path) -> Log {
        Log {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The `synced` lines logged since the last call.
    fn rounds(&mut self) -> anyhow::Result<Vec<Round>> {
        let mut file = std::fs::File::open(&self.path).context("open the daemon log")?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        self.offset += file.read_to_string(&mut text)? as u64;
        self.partial.push_str(&text);
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(Vec::new());
        };
        let complete: String = self.partial.drain(..=end).collect();
        let mut rounds = Vec::new();
        for line in complete.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let fields = &entry["fields"];
            if fields["message"] == "synced" {
                rounds.push(Round {
                    kind: fields["kind"].as_str().unwrap_or_default().to_owned(),
                    duration: logged_duration(fields).unwrap_or_default(),
                    transactions: fields["transactions"].as_u64().unwrap_or_default(),
                });
            } else if entry["level"] == "ERROR" || entry["level"] == "WARN" {
                eprintln!("  kube-nft run: {line}");
            }
        }
        Ok(rounds)
    }

    /// The last lines, for errors.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The round's duration from its log fields: `duration` as Rust's `Debug` prints a
/// `Duration` (`12.3ms`, `1.5s`), or `duration_ms` as a number.
fn logged_duration(fields: &Value) -> Option<Duration> {
    if let Some(ms) = fields["duration_ms"].as_f64() {
        return Some(Duration::from_secs_f64(ms / 1e3));
    }
    let text = fields["duration"].as_str()?;
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

// ---------------------------------------------------------------------------------------------
// The daemon's commits

/// What the monitor thread reports.
enum Seen {
    /// A commit to our tables, by another process (the daemon), received at this instant.
    Commit(Instant),
    /// Notifications were lost.
    Lost(String),
}

/// An nf_tables monitor on a thread of its own, opened in the calling thread's network
/// namespace, timestamping every commit to the kube-nft tables as its NEWGEN arrives.
struct Commits {
    rx: mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Commits {
    fn open() -> anyhow::Result<Commits> {
        let mut monitor = Monitor::open().context("subscribe to nf_tables events")?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Any of ours: the main table and every dispatch table the daemon may use.
            let names = monitor::our_table_names(kube_nft_compiler::config::MAX_DISPATCH_TABLES);
            let tables = monitor::in_both_families(&names);
            while !flag.load(Ordering::Relaxed) {
                let seen = match monitor.next_foreign_change(&tables, Duration::from_millis(100)) {
                    Ok(Some(Event::Foreign(_))) => Seen::Commit(Instant::now()),
                    Ok(Some(Event::Lost(lost))) => Seen::Lost(lost.to_string()),
                    Ok(None) => continue,
                    Err(err) => Seen::Lost(format!("monitor failed: {err}")),
                };
                let failed = matches!(&seen, Seen::Lost(why) if why.starts_with("monitor failed"));
                if tx.send(seen).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Commits {
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The next report within `timeout`.
    fn next(&self, timeout: Duration) -> Option<Seen> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Everything reported so far.
    fn drain(&self) -> Vec<Seen> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Commits {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_durations_parse_in_both_forms() {
        let ms = |v: f64| Some(Duration::from_secs_f64(v / 1e3));
        let of = |v: Value| logged_duration(&v);
        assert_eq!(of(serde_json::json!({"duration": "12.5ms"})), ms(12.5));
        assert_eq!(of(serde_json::json!({"duration": "1.5s"})), ms(1500.0));
        assert_eq!(of(serde_json::json!({"duration": "250µs"})), ms(0.25));
        assert_eq!(of(serde_json::json!({"duration_ms": 7.0})), ms(7.0));
        assert_eq!(of(serde_json::json!({"duration": "soon"})), None);
    }
}
