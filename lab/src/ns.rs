//! Named network namespaces (`ip netns add`, so `/run/netns/NAME` exists) and the three ways the
//! lab acts inside one: `ip -n NAME -batch -` for links, addresses and routes; a thread that
//! `setns(2)`s into it for sockets and sysctls (the network namespace is per thread on Linux, and
//! a socket stays in the namespace it was created in, whatever its thread does later); and
//! `ip netns exec` for other programs. Every lab namespace is named `knl<pid>-…`, so namespaces
//! left behind by a killed test process can be recognised and removed by the next lab.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::Error;

/// Prefix of every lab namespace name.
pub(crate) const PREFIX: &str = "knl";

/// Creates the namespace `name`.
pub(crate) fn create(name: &str) -> Result<(), Error> {
    run(Command::new("ip").args(["netns", "add", name]), None)
}

/// Deletes the namespace `name` (its interfaces go with it); errors are ignored, this runs
/// during teardown.
pub(crate) fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "delete", name])
        .stderr(Stdio::null())
        .status();
}

/// Runs `ip -n NS -batch -` with `commands` (one `ip` command a line, without `ip`).
pub(crate) fn ip_batch(ns: &str, commands: &str) -> Result<(), Error> {
    run(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(commands),
    )
}

fn run(command: &mut Command, stdin: Option<&str>) -> Result<(), Error> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Command(format!("{what}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| Error::Command(format!("{what}: write stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Command(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let input = stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(Error::Command(format!(
            "{what}: {}{input}\n{}",
            out.status,
            stderr.trim()
        )))
    }
}

/// Moves the calling thread into the namespace `name`. Only ever call this on a thread of
/// the lab's own (see [`run_in`]): the thread never returns to the host's namespace.
pub(crate) fn enter(name: &str) -> Result<(), Error> {
    let path = Path::new("/run/netns").join(name);
    let file = File::open(&path).map_err(|e| Error::Netns(format!("{}: {e}", path.display())))?;
    // SAFETY: setns with a valid namespace fd only changes this thread's namespace membership.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::Netns(format!(
            "setns {name}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace `name` and waits for it.
pub(crate) fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(name)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes sysctls (`net/ipv4/ip_forward` style paths under `/proc/sys`) inside `name`. The
/// `/proc/sys/net` tree shows the namespace of the thread that opens a file, so a thread that
/// entered `name` sets them for `name` only.
pub(crate) fn sysctls(name: &str, values: &[(&str, &str)]) -> Result<(), Error> {
    run_in(name, || {
        for (key, value) in values {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value)
                .map_err(|e| Error::Netns(format!("{name}: write {}: {e}", path.display())))?;
        }
        Ok(())
    })?
}

/// Deletes lab namespaces whose owning process (the pid in the name) is gone: what a test
/// killed by a signal left behind.
pub(crate) fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete(&name);
        }
    }
}

/// Why the lab cannot run here, if it cannot: it needs root and iproute2's `ip netns`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "the lab needs root (network namespaces); effective uid is {euid}"
        ));
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip` (install iproute2): {e}")),
    }
}
