//! Child processes measured from the outside: wall time and the peak RSS the kernel accounted
//! to the child (`ru_maxrss` from `wait4`).
//!
//! The peak RSS needs a detour. Linux records a process's high-water RSS when it calls
//! `execve`, and a child that was forked (or vforked, as `std::process` does) from a big
//! process starts out with the parent's pages mapped, so its `ru_maxrss` is at least the
//! parent's RSS: children of a benchmark holding a 50k-Service ruleset would all "use"
//! gigabytes. So the benchmark re-executes itself as a small helper ([`HELPER`]), which spawns
//! the real program, waits for it with `wait4` and writes its wall time and `ru_maxrss` to a
//! file; the helper's own image is a few MiB. The helper and the program run in their own
//! process group, which a deadline kills as a whole. A child spawned from a thread inside a
//! network namespace runs in that namespace (see `testkit::netns`).

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The first argument that makes `kube-nft-bench` the measuring helper:
/// `kube-nft-bench __measure RESULT_FILE PROGRAM ARGS…`.
pub(crate) const HELPER: &str = "__measure";

/// What a finished child cost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    /// Spawn to exit, measured by the helper.
    pub(crate) wall: Duration,
    /// Peak resident set size, in bytes.
    pub(crate) max_rss: u64,
}

/// How a measured child ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    /// Exit status 0.
    Finished(Usage),
    /// Killed after the deadline.
    TimedOut(Duration),
}

/// Runs `program args` through the helper with stdout to `stdout` (or /dev/null), killing it
/// after `deadline`. Fails when it exits unsuccessfully, with its stderr.
pub(crate) fn run(
    program: &str,
    args: &[OsString],
    stdout: Option<&Path>,
    deadline: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let tag = format!(
        "kube-nft-bench-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let stderr_path = std::env::temp_dir().join(format!("{tag}-stderr"));
    let result_path = std::env::temp_dir().join(format!("{tag}-usage"));
    let out = match stdout {
        Some(path) => Stdio::from(File::create(path).context("create stdout file")?),
        None => Stdio::null(),
    };
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().context("locate kube-nft-bench")?)
        .arg(HELPER)
        .arg(&result_path)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::from(File::create(&stderr_path)?))
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawn {program}"))?;
    let pgid = child.id() as libc::pid_t;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if deadline.is_some_and(|d| started.elapsed() > d) && !timed_out {
            timed_out = true;
            // SAFETY: kill has no memory preconditions; the group is the helper's own (its pid
            // is unreaped, so the id cannot have been reused) and holds only what it spawned.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    let usage = std::fs::read_to_string(&result_path).unwrap_or_default();
    let _ = std::fs::remove_file(&result_path);
    if timed_out {
        return Ok(Outcome::TimedOut(started.elapsed()));
    }
    if !status.success() {
        bail!("{program} failed ({status}): {}", stderr.trim());
    }
    let mut fields = usage.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(nanos)), Some(Ok(kib))) => Ok(Outcome::Finished(Usage {
            wall: Duration::from_nanos(nanos),
            max_rss: kib * 1024,
        })),
        _ => bail!("{program}: the measuring helper wrote no usage"),
    }
}

/// Like [`run`] without a deadline, for children that must finish.
pub(crate) fn run_to_end(
    program: &str,
    args: &[OsString],
    stdout: Option<&Path>,
) -> anyhow::Result<Usage> {
    match run(program, args, stdout, None)? {
        Outcome::Finished(usage) => Ok(usage),
        Outcome::TimedOut(_) => bail!("{program} timed out without a deadline"),
    }
}

/// The helper's `main`: `RESULT_FILE PROGRAM ARGS…`. Runs the program with this process's
/// stdio, writes `WALL_NANOS MAX_RSS_KIB` to the result file and exits like the program.
pub(crate) fn helper(mut args: impl Iterator<Item = OsString>) -> ExitCode {
    let (Some(result), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: kube-nft-bench {HELPER} RESULT_FILE PROGRAM [ARGS…]");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let child = match Command::new(&program).args(args).spawn() {
        Ok(child) => child,
        Err(err) => {
            eprintln!("cannot run {}: {err}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid out-pointers; `pid` is our unreaped child.
        let res = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if res == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            eprintln!("wait4: {}", std::io::Error::last_os_error());
            return ExitCode::from(1);
        }
    }
    let wall = started.elapsed();
    // ru_maxrss is in KiB on Linux.
    let line = format!("{} {}\n", wall.as_nanos(), usage.ru_maxrss);
    if let Err(err) = std::fs::write(&result, line) {
        eprintln!("write {}: {err}", result.to_string_lossy());
        return ExitCode::from(1);
    }
    drop(child);
    if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else {
        ExitCode::from(128 + libc::WTERMSIG(status) as u8)
    }
}
