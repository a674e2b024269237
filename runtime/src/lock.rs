//! One kube-nft per network namespace. Two daemons programming the same tables would undo each
//! other's commits forever, so the daemon first binds an abstract unix socket named
//! [`NAME`]: abstract names live in the network namespace (not the filesystem), the kernel
//! refuses a second bind with EADDRINUSE, and it frees the name when the socket closes, which
//! happens when the holder exits however it exits, SIGKILL and panics included, so there is no
//! stale lock file to clean up. The holder keeps the socket listening and a small thread answers
//! each connection with one line saying who holds it (pid, since when, version, and what the
//! caller passed, e.g. the node name); a second process that finds the name taken connects,
//! reads that line and fails with an error naming the first. The socket is close-on-exec, so
//! child processes never inherit the lock. Dropping an [`InstanceLock`] stops the thread and
//! releases the name before `drop` returns.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The abstract socket name (`@kube-nft` in `ss -xl`), without its leading NUL byte.
pub const NAME: &str = "kube-nft";

/// How long a process that finds the name taken waits for the holder to identify itself.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a bind is retried when the name is taken but nobody answers on it: the holder may
/// be between `bind` and `listen`, or closing.
const BIND_ATTEMPTS: usize = 5;

/// The longest identity line read from a holder.
const MAX_LINE: u64 = 1024;

/// Who holds the lock, as its identity line says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    /// The holder's process id, in its own pid namespace.
    pub pid: Option<u32>,
    /// When it took the lock, in seconds since the Unix epoch.
    pub since: Option<u64>,
    /// Its kube-nft version.
    pub version: Option<String>,
    /// What it passed to [`acquire`] (e.g. its node name).
    pub identity: Option<String>,
}

impl Holder {
    /// Parses an identity line: `kube-nft pid=… since=… version=… identity=…`. Unknown or
    /// missing fields are left out; `identity` runs to the end of the line.
    pub fn parse(line: &str) -> Holder {
        let mut holder = Holder::default();
        let line = line.trim_end_matches(['\r', '\n']);
        let (fields, identity) = match line.split_once(" identity=") {
            Some((fields, identity)) => (fields, Some(identity.to_owned())),
            None => (line, None),
        };
        holder.identity = identity.filter(|i| !i.is_empty());
        for field in fields.split(' ') {
            match field.split_once('=') {
                Some(("pid", v)) => holder.pid = v.parse().ok(),
                Some(("since", v)) => holder.since = v.parse().ok(),
                Some(("version", v)) => holder.version = Some(v.to_owned()),
                _ => {}
            }
        }
        holder
    }

    /// The identity line for this holder, newline-terminated.
    pub fn line(&self) -> String {
        let mut line = String::from("kube-nft");
        if let Some(pid) = self.pid {
            line.push_str(&format!(" pid={pid}"));
        }
        if let Some(since) = self.since {
            line.push_str(&format!(" since={since}"));
        }
        if let Some(version) = &self.version {
            line.push_str(&format!(" version={version}"));
        }
        if let Some(identity) = &self.identity {
            line.push_str(" identity=");
            line.push_str(identity);
        }
        line.push('\n');
        line
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if let Some(since) = self.since {
            parts.push(format!("running since {}", rfc3339(since)));
        }
        if let Some(version) = &self.version {
            parts.push(format!("version {version}"));
        }
        if let Some(identity) = &self.identity {
            parts.push(identity.clone());
        }
        if parts.is_empty() {
            f.write_str("unidentified")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another kube-nft holds it and said who it is.
    #[error("another kube-nft ({holder}) already programs this network namespace")]
    Held {
        /// What the holder said about itself.
        holder: Holder,
    },
    /// The name is taken but the holder did not identify itself (it hangs, or it is not
    /// kube-nft).
    #[error(
        "another process holds @{name} in this network namespace (it did not identify itself: \
         {reason}); is another kube-nft running?"
    )]
    Unidentified {
        /// The abstract socket name.
        name: String,
        /// What went wrong asking it.
        reason: String,
    },
    /// The socket could not be created.
    #[error("create the instance lock socket @{name}")]
    Socket {
        /// The abstract socket name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The held lock: while it lives, no other process in this network namespace can take it.
#[derive(Debug)]
pub struct InstanceLock {
    name: String,
    holder: Holder,
    /// Closing this end wakes the answering thread, which then exits and closes the listener.
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl InstanceLock {
    /// The abstract socket name held.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this process tells whoever asks.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            // The thread only polls, accepts and writes; it does not panic, and if it did
            // there would be nothing to do about it here.
            let _ = thread.join();
        }
    }
}

/// Takes the lock of the calling thread's network namespace ([`NAME`]); `identity` is added to
/// the line that a second process will read (the node name, say).
pub fn acquire(identity: &str) -> Result<InstanceLock, LockError> {
    acquire_named(NAME, identity)
}

/// [`acquire`] under another abstract name.
pub fn acquire_named(name: &str, identity: &str) -> Result<InstanceLock, LockError> {
    let socket_error = |source| LockError::Socket {
        name: name.to_owned(),
        source,
    };
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(socket_error)?;
    let holder = Holder {
        pid: Some(std::process::id()),
        since: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        // One line: a newline would end the identity early.
        identity: Some(identity.replace(['\n', '\r'], " ")).filter(|i| !i.is_empty()),
    };
    let mut last = String::new();
    for attempt in 0..BIND_ATTEMPTS {
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => return start(name, listener, holder).map_err(socket_error),
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => match probe(&addr) {
                Ok(line) => {
                    return Err(LockError::Held {
                        holder: Holder::parse(&line),
                    })
                }
                // Nobody listening, or the listener closed with our connection still in its
                // backlog: the holder is starting or going away. Try again. (The second is
                // also what a holder's last copy of the listener looks like when a child
                // process forked between its `bind` and `exec` held it a moment longer.)
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    last = err.to_string();
                    std::thread::sleep(Duration::from_millis(10 << attempt));
                }
                Err(err) => {
                    return Err(LockError::Unidentified {
                        name: name.to_owned(),
                        reason: err.to_string(),
                    })
                }
            },
            Err(err) => return Err(socket_error(err)),
        }
    }
    Err(LockError::Unidentified {
        name: name.to_owned(),
        reason: last,
    })
}

/// Asks the holder of `addr` who it is.
fn probe(addr: &SocketAddr) -> io::Result<String> {
    let stream = UnixStream::connect_addr(addr)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut line = String::new();
    stream.take(MAX_LINE).read_to_string(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without a word",
        ));
    }
    Ok(line)
}

fn start(name: &str, listener: UnixListener, holder: Holder) -> io::Result<InstanceLock> {
    // Non-blocking, so that a client that connects and vanishes before `accept` cannot block
    // the thread.
    listener.set_nonblocking(true)?;
    let (wake, woken) = UnixStream::pair()?;
    let line = holder.line();
    let thread = std::thread::Builder::new()
        .name("kube-nft-lock".into())
        .spawn(move || answer(listener, woken, line))?;
    Ok(InstanceLock {
        name: name.to_owned(),
        holder,
        wake: Some(wake),
        thread: Some(thread),
    })
}

/// The answering thread: one identity line per connection, until `woken` becomes readable
/// (its other end was closed).
fn answer(listener: UnixListener, woken: UnixStream, line: String) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: woken.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two live, initialised pollfds, and the count passed is 2.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // poll on two valid descriptors does not fail otherwise. Should it, the lock stays
            // held, unanswered, until the blocking read sees the other end close on drop.
            let _ = (&woken).read(&mut [0u8; 1]);
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            while let Ok((mut stream, _)) = listener.accept() {
                // A client that does not read cannot hold the thread up: the line is far
                // smaller than a socket buffer, and the timeout bounds the rest.
                let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = stream.write_all(line.as_bytes());
            }
        }
    }
}

/// `seconds` since the Unix epoch as RFC 3339 UTC (`2026-01-31T12:00:00Z`).
pub fn rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian; Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_lines_round_trip() {
        let holder = Holder {
            pid: Some(1234),
            since: Some(1_767_225_600),
            version: Some("0.1.0".into()),
            identity: Some("node a".into()),
        };
        assert_eq!(
            holder.line(),
            "kube-nft pid=1234 since=1767225600 version=0.1.0 identity=node a\n"
        );
        assert_eq!(Holder::parse(&holder.line()), holder);
        assert_eq!(
            LockError::Held { holder }.to_string(),
            "another kube-nft (pid 1234, running since 2026-01-01T00:00:00Z, version 0.1.0, \
             node a) already programs this network namespace"
        );
        assert_eq!(Holder::parse("something else\n"), Holder::default());
        assert_eq!(Holder::default().to_string(), "unidentified");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
