//! Throwaway network namespaces. [`in_netns`] runs a closure on a thread that called
//! `unshare(CLONE_NEWNET)`: the network namespace is per thread on Linux, so that thread's
//! netlink sockets, and the `nft` processes it spawns (children inherit the spawning thread's
//! namespaces), see only the new namespace, while the rest of the test process stays in the
//! host's. [`nft_in_fresh_netns`] and [`nft_listing_of`] run `nft` under `unshare -n`, in a
//! namespace that disappears with the process. All of it needs root; [`can_run`] is the one
//! policy where that is impossible.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::listing;

/// Why this environment cannot run kernel tests, if it cannot: they need root, `nft`,
/// `unshare -n` and (for the lab) `ip netns`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not root (effective uid {euid})"));
    }
    for (program, args) in [
        ("nft", &["--version"][..]),
        ("unshare", &["-n", "true"][..]),
        ("ip", &["netns", "list"][..]),
    ] {
        match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Some(format!(
                    "`{program} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => return Some(format!("cannot run {program}: {e}")),
        }
    }
    None
}

/// `true` when kernel tests can run; otherwise skips loudly (`*** SKIPPED: … ***` on stderr), or
/// fails under `CI=true` so that CI can never pass without having run them.
pub fn can_run(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI=true but kernel tests cannot run here: {reason}");
    }
    eprintln!("\n*** SKIPPED: {test}: {reason} ***\n");
    false
}

/// A network namespace owned by the current thread (see [`in_netns`]).
pub struct Netns;

impl Netns {
    /// Runs nft in this namespace; `Err` carries stderr.
    pub fn nft(&self, args: &[&str]) -> Result<String, String> {
        stdout_or_stderr(
            Command::new("nft")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run nft: {e}"))?,
        )
    }

    /// Runs `ip` (iproute2) in this namespace; `Err` carries stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        stdout_or_stderr(
            Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?,
        )
    }

    /// Brings loopback up and gives it `addr` (`192.168.0.2/32`): a node address for tests that
    /// need the kernel to count it as local.
    pub fn local_address(&self, addr: &str) {
        self.ip(&["link", "set", "lo", "up"])
            .unwrap_or_else(|e| panic!("ip link set lo up: {e}"));
        self.ip(&["addr", "add", addr, "dev", "lo"])
            .unwrap_or_else(|e| panic!("ip addr add {addr} dev lo: {e}"));
    }

    /// Loads an nft script from text.
    pub fn nft_load(&self, script: &str) -> Result<(), String> {
        let path = temp_path("script.nft");
        std::fs::write(&path, script).map_err(|e| e.to_string())?;
        let result = self.nft(&["-f", path_str(&path)]).map(|_| ());
        let _ = std::fs::remove_file(&path);
        result
    }

    /// `nft list ruleset`, as nft prints it.
    pub fn ruleset(&self) -> String {
        self.nft(&["list", "ruleset"])
            .unwrap_or_else(|e| panic!("nft list ruleset: {e}"))
    }

    /// `nft list ruleset`, normalised for order only (see [`listing::normalized`]).
    pub fn normalized_ruleset(&self) -> String {
        listing::normalized(&self.ruleset())
    }
}

/// Runs `f` on a new thread inside a fresh network namespace that disappears with the thread.
/// Checks that the thread, and the processes it spawns, really are in a new namespace.
pub fn in_netns<T: Send>(f: impl FnOnce(&Netns) -> T + Send) -> T {
    let host_ns = std::fs::read_link("/proc/thread-self/ns/net").expect("read own netns");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only changes this thread's namespace membership.
                let res = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    res,
                    0,
                    "unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                );
                let ns = std::fs::read_link("/proc/thread-self/ns/net").expect("read netns");
                assert_ne!(ns, host_ns, "still in the host's network namespace");
                // Children spawned from this thread must land in the new namespace too.
                let child = Command::new("readlink")
                    .arg("/proc/self/ns/net")
                    .output()
                    .expect("run readlink");
                let child_ns = String::from_utf8_lossy(&child.stdout).trim().to_owned();
                assert_eq!(Path::new(&child_ns), ns, "child process in another netns");
                f(&Netns)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `unshare -n nft ARGS FILE`, in a namespace that disappears with the process; `Err` carries
/// nft's stderr.
pub fn nft_in_fresh_netns(args: &[&str], file: &Path) -> Result<String, String> {
    stdout_or_stderr(
        Command::new("unshare")
            .arg("-n")
            .arg("nft")
            .args(args)
            .arg(file)
            .output()
            .map_err(|e| format!("cannot run unshare: {e}"))?,
    )
}

/// `nft -f FILE; nft list ruleset` in a throwaway namespace: the oracle for what a script loads.
pub fn nft_listing_of(script: &Path) -> Result<String, String> {
    stdout_or_stderr(
        Command::new("unshare")
            .args(["-n", "sh", "-c", "nft -f \"$1\" && nft list ruleset", "sh"])
            .arg(script)
            .output()
            .map_err(|e| format!("cannot run unshare: {e}"))?,
    )
}

fn stdout_or_stderr(out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A temporary file path unique to this process and thread.
pub fn temp_path(name: &str) -> PathBuf {
    let tid = std::thread::current().id();
    std::env::temp_dir().join(format!(
        "kube-nft-kernel-{}-{tid:?}-{name}",
        std::process::id()
    ))
}

/// `path` as UTF-8.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
