//! The report: the machine it ran on, the exact command, and markdown tables (one column per
//! cluster size). [`write_into`] replaces only the generated part of BENCHMARKS.md, between
//! [`BEGIN`] and [`END`], so the hand-written analysis around it survives a refresh; the
//! daemon's table sits inside it between [`DAEMON_BEGIN`] and [`DAEMON_END`], so that
//! [`write_daemon_into`] can refresh it alone (`--daemon-only --write`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::child::{Outcome, Usage};
use crate::daemon::DaemonResult;
use crate::sync::{Cold, SizeResult};

pub(crate) const BEGIN: &str =
    "<!-- kube-nft-bench: begin (generated; edit outside these markers) -->";
pub(crate) const END: &str = "<!-- kube-nft-bench: end -->";
pub(crate) const DAEMON_BEGIN: &str = "<!-- kube-nft-bench: daemon begin -->";
pub(crate) const DAEMON_END: &str = "<!-- kube-nft-bench: daemon end -->";

/// What the machine is.
pub(crate) struct Machine {
    cpus: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
    nft: String,
    commit: String,
    command: String,
}

impl Machine {
    pub(crate) fn probe(command: &str) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        let mem_kib: u64 = field(&read("/proc/meminfo"), "MemTotal")
            .trim_end_matches(" kB")
            .parse()
            .unwrap_or(0);
        let output = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let workspace = workspace.to_str().unwrap_or(".");
        let mut commit = output("git", &["-C", workspace, "rev-parse", "--short", "HEAD"]);
        if output(
            "git",
            &[
                "-C",
                workspace,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
        )
        .lines()
        // The benchmark's own sources and report do not change what is measured.
        .filter_map(|l| l.split_whitespace().last())
        .any(|path| !path.starts_with("bench/") && path != "BENCHMARKS.md")
        {
            commit.push_str(" (with uncommitted changes)");
        }
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: field(&cpuinfo, "model name"),
            memory: format!("{:.1} GiB", mem_kib as f64 / (1024.0 * 1024.0)),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            nft: output("nft", &["--version"]),
            commit,
            command: command.to_owned(),
        }
    }
}

/// The kube-proxy-shaped run of one size.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KubeProxy {
    Ran(Usage),
    TimedOut { after: Duration },
    Skipped { projected: Duration },
}

pub(crate) struct KubeProxyRow {
    pub(crate) n: usize,
    pub(crate) outcome: KubeProxy,
    pub(crate) ours_nft: Outcome,
    pub(crate) ours_cold: Cold,
}

/// The whole generated part; `daemon` is [`render_daemon`]'s section (or empty).
#[allow(clippy::too_many_arguments)]
pub(crate) fn render(
    machine: &Machine,
    m: usize,
    reps: usize,
    results: &[SizeResult],
    kube_proxy: &[KubeProxyRow],
    budget: Duration,
    dataplane: &str,
    daemon: &str,
) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "{BEGIN}\n");
    let _ = writeln!(
        w,
        "Machine: {} × {}, {} RAM, kernel {}, {}; kube-nft {}.  ",
        machine.cpus,
        machine.cpu_model,
        machine.memory,
        machine.kernel,
        machine.nft,
        machine.commit
    );
    let _ = writeln!(w, "Command: `{}`  ", machine.command);
    let _ = writeln!(
        w,
        "Clusters: `testkit::synthetic` (seeded), N Services × {m} endpoints. Single run; \
         incremental rows are {reps} repetitions each way ({} above 10k Services).\n",
        reps.div_ceil(3)
    );

    // Main table.
    let _ = write!(w, "| Services × {m} endpoints |");
    for r in results {
        let _ = write!(w, " {} |", thousands(r.n));
    }
    let _ = write!(w, "\n|---|");
    for _ in results {
        let _ = write!(w, "---:|");
    }
    let _ = writeln!(w);
    let mut row = |label: &str, cell: &dyn Fn(&SizeResult) -> String| {
        let _ = write!(w, "| {label} |");
        for r in results {
            let _ = write!(w, " {} |", cell(r));
        }
        let _ = writeln!(w);
    };
    row("service ports / endpoints", &|r| {
        format!(
            "{} / {}",
            thousands(r.mix.ports),
            thousands(r.mix.endpoints)
        )
    });
    row("IR: chains / rules / set elements", &|r| {
        format!(
            "{} / {} / {}",
            thousands(r.ir.chains),
            thousands(r.ir.rules),
            thousands(r.ir.elements)
        )
    });
    row("load: JSON → snapshot", &|r| {
        format!("{} ({})", dur(r.load), bytes(r.json_bytes))
    });
    row("**compile: snapshot → IR**", &|r| {
        format!("**{}**", dur(r.compile))
    });
    row("`kube-nft compile --dry-run`: wall / peak RSS", &|r| {
        format!(
            "{} / {}",
            dur(r.dry_run.wall),
            bytes(r.dry_run.max_rss as usize)
        )
    });
    row(
        "**cold apply, netlink** (read-back, plan, encode, commit)",
        &|r| format!("**{}**", dur(r.cold.total)),
    );
    row("… encode (overlapping the commits) / commits", &|r| {
        format!("{} / {}", dur(r.cold.encode), dur(r.cold.commit))
    });
    row("… transactions / longest commit", &|r| {
        format!(
            "{} / {}",
            r.cold.report.transactions,
            dur(r.cold.report.longest_commit)
        )
    });
    row("… messages / bytes", &|r| {
        format!(
            "{} / {}",
            thousands(r.cold.report.messages),
            bytes(r.cold.report.bytes)
        )
    });
    if results.iter().any(|r| r.cold_single.is_some()) {
        row(
            "cold apply as one transaction: total / commit",
            &|r| match &r.cold_single {
                Some(c) => format!("{} / {}", dur(c.total), dur(c.report.longest_commit)),
                None => "–".into(),
            },
        );
    }
    row(
        "**`nft -f` of our `--dry-run` script**: wall / peak RSS",
        &|r| match r.nft_ours {
            Outcome::Finished(u) => format!(
                "**{}** / {} ({} script)",
                dur(u.wall),
                bytes(u.max_rss as usize),
                bytes(r.script_bytes)
            ),
            Outcome::TimedOut(after) => format!("killed after {}", dur(after)),
        },
    );
    row(
        "**ratio `nft -f` / netlink cold apply**",
        &|r| match r.nft_ours {
            Outcome::Finished(u) => format!("**{}**", ratio(u.wall, r.cold.total)),
            Outcome::TimedOut(after) => format!("> {}", ratio(after, r.cold.total)),
        },
    );
    row(
        "**`kube-nft compile -f`** (cold, end to end): wall / peak RSS",
        &|r| {
            format!(
                "{} / **{}**",
                dur(r.compile_f.wall),
                bytes(r.compile_f.max_rss as usize)
            )
        },
    );
    let names: Vec<&'static str> = results
        .first()
        .map(|r| r.incremental.iter().map(|i| i.name).collect())
        .unwrap_or_default();
    for (index, name) in names.iter().enumerate() {
        let pick = move |r: &SizeResult| r.incremental.get(index).cloned();
        row(
            &format!("**{name}**: plan → committed, p50 / p99 (commit p99)"),
            &|r| match pick(r) {
                Some(i) => format!(
                    "**{} / {}** ({})",
                    dur(percentile(&i.samples, 50)),
                    dur(percentile(&i.samples, 99)),
                    dur(percentile(&i.commits, 99))
                ),
                None => "–".into(),
            },
        );
        row(
            &format!("… {name}: operations / messages / bytes"),
            &|r| match pick(r) {
                Some(i) => format!("{} / {} / {}", i.ops, i.messages, bytes(i.bytes)),
                None => "–".into(),
            },
        );
    }
    row("read-back of the whole table", &|r| dur(r.readback));
    row("**read-back + diff** against the compiled IR", &|r| {
        format!("**{}**", dur(r.readback_diff))
    });
    let _ = writeln!(w);

    if !kube_proxy.is_empty() {
        let _ = writeln!(
            w,
            "Cold start against a kube-proxy-shaped ruleset for the same cluster (one chain per \
             Service and per endpoint, a `numgen … vmap {{ … }}` per Service), loaded with \
             `nft -f` into an empty namespace:\n"
        );
        let _ = writeln!(
            w,
            "| Services × {m} | kube-proxy-shaped `nft -f`: wall / peak RSS | kube-nft script `nft -f` | kube-nft netlink cold apply | kube-proxy-shaped / kube-nft netlink |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for k in kube_proxy {
            let (kp, ratio_cell) = match k.outcome {
                KubeProxy::Ran(u) => (
                    format!("{} / {}", dur(u.wall), bytes(u.max_rss as usize)),
                    format!("**{}**", ratio(u.wall, k.ours_cold.total)),
                ),
                KubeProxy::TimedOut { after } => (
                    format!("not finished: killed after {}", dur(after)),
                    format!("> {}", ratio(after, k.ours_cold.total)),
                ),
                KubeProxy::Skipped { projected } => (
                    format!(
                        "not run (projected {} > {} budget; cost grows quadratically)",
                        dur(projected),
                        dur(budget)
                    ),
                    "–".into(),
                ),
            };
            let _ = writeln!(
                w,
                "| {} | {kp} | {} | {} | {ratio_cell} |",
                thousands(k.n),
                match k.ours_nft {
                    Outcome::Finished(u) => dur(u.wall),
                    Outcome::TimedOut(after) => format!("> {}", dur(after)),
                },
                dur(k.ours_cold.total)
            );
        }
        let _ = writeln!(w);
    }

    if let Some(r) = results.last() {
        let mix = r.mix;
        let pct =
            |count: usize| format!("{:.1}", count as f64 * 100.0 / mix.services.max(1) as f64);
        let _ = writeln!(
            w,
            "Mix at {} Services: {} % ClusterIP, {} % NodePort, {} % LoadBalancer ({} % with source \
             ranges), {} % eTP=Local, {} % ClientIP affinity, {} % with a UDP port; {} of {} \
             endpoints on this node.\n",
            thousands(mix.services),
            pct(mix.cluster_ip),
            pct(mix.node_port),
            pct(mix.load_balancer),
            pct(mix.source_ranges),
            pct(mix.etp_local),
            pct(mix.affinity),
            pct(mix.udp),
            thousands(mix.local_endpoints),
            thousands(mix.endpoints)
        );
    }
    w.push_str(dataplane);
    if !daemon.is_empty() {
        w.push_str(daemon);
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "{END}");
    out
}

/// The daemon's table, between [`DAEMON_BEGIN`] and [`DAEMON_END`]; empty without results.
pub(crate) fn render_daemon(
    machine: &Machine,
    m: usize,
    dispatch_tables: u16,
    results: &[DaemonResult],
) -> String {
    if results.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "{DAEMON_BEGIN}\n");
    let counts = |r: &DaemonResult, name: &str| {
        r.series
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.samples.len())
    };
    let first = &results[0];
    let _ = writeln!(
        w,
        "The node daemon, `kube-nft run` (release build), against a fake API server \
         (`kube-nft-testkit`, plain-http list/watch on 127.0.0.1) holding the cluster, in a \
         throwaway network namespace; each change is timed from just before its write into the \
         API server to the NEWGEN of the daemon's last commit for it (a change is up to three \
         transactions: shared chains created, the change, what it leaves retired), seen by an \
         nf_tables monitor in the same namespace. {} endpoint changes and {} of each Service change per size, spaced \
         beyond `--min-sync-period 1s` (kube-proxy's default), with `--sync-period 1h` so that no \
         periodic read-back overlaps them; p99 of that few samples is their maximum. {}kube-nft {} \
         on {} × {}; command `{}`.\n",
        counts(first, "endpoint changed"),
        counts(first, "Service added"),
        if dispatch_tables > 1 {
            format!("The daemon runs with `--dispatch-tables {dispatch_tables}` at every size. ")
        } else {
            String::new()
        },
        machine.commit,
        machine.cpus,
        machine.cpu_model,
        machine.command
    );
    let _ = write!(w, "| `kube-nft run`, Services × {m} endpoints |");
    for r in results {
        let _ = write!(w, " {} |", thousands(r.n));
    }
    let _ = write!(w, "\n|---|");
    for _ in results {
        let _ = write!(w, "---:|");
    }
    let _ = writeln!(w);
    let mut row = |label: &str, cell: &dyn Fn(&DaemonResult) -> String| {
        let _ = write!(w, "| {label} |");
        for r in results {
            let _ = write!(w, " {} |", cell(r));
        }
        let _ = writeln!(w);
    };
    row("1-minute load average when the size started", &|r| {
        format!("{:.1}", r.load_average)
    });
    row(
        "API objects (Services, EndpointSlices, Nodes) / written in",
        &|r| format!("{} / {}", thousands(r.objects), dur(r.fill)),
    );
    row(
        "**start → initial sync committed** (list, decode, compile, cold apply)",
        &|r| format!("**{}**", dur(r.start)),
    );
    row(
        "… the initial sync round (daemon log) / its transactions / CPU from start",
        &|r| {
            format!(
                "{} / {} / {}",
                dur(r.start_round),
                r.start_transactions,
                dur(r.start_cpu)
            )
        },
    );
    row("**RSS after the initial sync** (peak so far)", &|r| {
        format!(
            "**{}** ({})",
            bytes(r.after_start.rss as usize),
            bytes(r.after_start.peak as usize)
        )
    });
    let names: Vec<&'static str> = first.series.iter().map(|s| s.name).collect();
    for name in &names {
        row(
            &format!(
                "**{name}**: write → committed, p50 / p99 (the daemon's sync round p50 / p99)"
            ),
            &|r| match r.series.iter().find(|s| s.name == *name) {
                Some(s) if !s.samples.is_empty() => format!(
                    "**{} / {}** ({} / {})",
                    dur(percentile(&s.samples, 50)),
                    dur(percentile(&s.samples, 99)),
                    dur(percentile(&s.rounds, 50)),
                    dur(percentile(&s.rounds, 99))
                ),
                _ => "–".into(),
            },
        );
    }
    row(
        &format!("**CPU per change**: {}", names.join(" / ")),
        &|r| {
            r.series
                .iter()
                .map(|s| dur(s.cpu.div_f64(s.samples.len().max(1) as f64)))
                .collect::<Vec<_>>()
                .join(" / ")
        },
    );
    row("idle CPU (nothing changing), per second", &|r| {
        dur(r.idle_cpu_per_s)
    });
    row("**RSS after the changes** (peak)", &|r| {
        format!(
            "**{}** ({})",
            bytes(r.after_changes.rss as usize),
            bytes(r.after_changes.peak as usize)
        )
    });
    row(
        "check: changes / commits seen; stray commits; kernel = compile of the final cluster",
        &|r| {
            let (changes, commits) = r.changes_and_commits();
            let mut cell = format!(
                "{changes} / {commits}; {}; {}",
                r.stray_commits,
                if r.verified { "yes" } else { "**no**" }
            );
            if r.lost > 0 {
                cell.push_str(&format!("; {} monitor losses", r.lost));
            }
            cell
        },
    );
    let _ = writeln!(w, "\n{DAEMON_END}");
    out
}

/// Replaces the daemon's section inside the generated part of `path` (or adds it at the end
/// of the generated part).
pub(crate) fn write_daemon_into(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let section = section.trim_end();
    let text = match (old.find(DAEMON_BEGIN), old.find(DAEMON_END)) {
        (Some(begin), Some(end)) if begin < end => {
            let after = &old[end + DAEMON_END.len()..];
            format!("{}{section}{after}", &old[..begin])
        }
        _ => match old.find(END) {
            Some(end) => format!("{}\n\n{section}\n\n{}", old[..end].trim_end(), &old[end..]),
            None => anyhow::bail!(
                "{} has no generated part to put the daemon's table in; run the whole \
                 benchmark with --write first",
                path.display()
            ),
        },
    };
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Replaces the generated part of `path` (or appends it, or creates the file).
pub(crate) fn write_into(path: &Path, generated: &str) -> anyhow::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("read {}", path.display())),
    };
    let text = match (old.find(BEGIN), old.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            let after = &old[end + END.len()..];
            format!("{}{}{}", &old[..begin], generated.trim_end(), after)
        }
        _ if old.is_empty() => format!("# Benchmarks\n\n{generated}"),
        _ => format!("{}\n{generated}", old.trim_end()),
    };
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Nearest-rank percentile.
pub(crate) fn percentile(samples: &[Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn bytes(n: usize) -> String {
    let n = n as f64;
    if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else if n < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.0} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", n / (1024.0 * 1024.0 * 1024.0))
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = (1..=30).map(ms).collect();
        assert_eq!(percentile(&samples, 50), ms(15));
        assert_eq!(percentile(&samples, 99), ms(30));
        assert_eq!(percentile(&[ms(7)], 99), ms(7));
    }

    #[test]
    fn generated_part_is_replaced_and_the_rest_kept() {
        let path = std::env::temp_dir().join(format!("kube-nft-bench-{}.md", std::process::id()));
        std::fs::write(
            &path,
            format!("# B\n\nintro\n\n{BEGIN}\nold\n{END}\n\nanalysis\n"),
        )
        .unwrap();
        write_into(&path, &format!("{BEGIN}\nnew\n{END}\n")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            text,
            format!("# B\n\nintro\n\n{BEGIN}\nnew\n{END}\n\nanalysis\n")
        );
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn the_daemon_section_is_added_then_replaced_alone() {
        let path =
            std::env::temp_dir().join(format!("kube-nft-bench-daemon-{}.md", std::process::id()));
        std::fs::write(
            &path,
            format!("intro\n\n{BEGIN}\nsync\n{END}\n\nanalysis\n"),
        )
        .unwrap();
        write_daemon_into(&path, &format!("{DAEMON_BEGIN}\nfirst\n{DAEMON_END}\n")).unwrap();
        let added = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            added,
            format!(
                "intro\n\n{BEGIN}\nsync\n\n{DAEMON_BEGIN}\nfirst\n{DAEMON_END}\n\n{END}\n\nanalysis\n"
            )
        );
        write_daemon_into(&path, &format!("{DAEMON_BEGIN}\nsecond\n{DAEMON_END}\n")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, added.replace("first", "second"));
    }
}
