//! Clients: one connection (TCP) or one request datagram (UDP) from a host of the lab, and what
//! came of it. A reply says which endpoint answered and with which source address the request
//! reached it; `Refused` is the fast failure a `reject` produces (TCP and UDP both see the ICMP
//! port-unreachable as `ECONNREFUSED`); `Timeout` is what a `drop` produces. Every wait is
//! bounded by the probe's timeout.

use std::fmt;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::topology::Proto;

/// Timeout of a probe that is expected to succeed: long enough for a loaded CI machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Timeout of a probe that is expected to be dropped.
pub const DROP_TIMEOUT: Duration = Duration::from_millis(700);

/// One connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where to (a Service address and port, before DNAT).
    pub dst: SocketAddr,
    /// Source address to bind, `None` for the routing table's choice.
    pub src: Option<IpAddr>,
    /// Bound on connect plus reply.
    pub timeout: Duration,
}

impl Probe {
    /// A probe with the default timeout and source.
    pub fn new(proto: Proto, dst: SocketAddr) -> Probe {
        Probe {
            proto,
            dst,
            src: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same probe from source address `src`.
    pub fn from_addr(self, src: IpAddr) -> Probe {
        Probe {
            src: Some(src),
            ..self
        }
    }

    /// The same probe with another timeout.
    pub fn timeout(self, timeout: Duration) -> Probe {
        Probe { timeout, ..self }
    }
}

/// What a server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The host that answered (pod or node name).
    pub host: String,
    /// The address and port the request arrived on (the endpoint, after DNAT).
    pub local: SocketAddr,
    /// The source the request arrived from (the client, or a node after masquerade).
    pub peer: SocketAddr,
}

/// What came of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A server answered.
    Reply(Reply),
    /// `ECONNREFUSED`: a reject (or nothing listening).
    Refused,
    /// No answer within the timeout: a drop.
    Timeout,
    /// Anything else (unreachable, malformed reply, …).
    Failed(String),
}

impl Outcome {
    /// The reply, if there was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Reply(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Reply(r) => write!(f, "{} at {} saw {}", r.host, r.local, r.peer.ip()),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Timeout => f.write_str("timed out"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Runs `probe` from the calling thread's network namespace.
pub(crate) fn run(probe: &Probe) -> Outcome {
    match attempt(probe) {
        Ok(text) => parse(&text),
        Err(e) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Outcome::Refused,
            _ if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Outcome::Timeout
            }
            _ => Outcome::Failed(e.to_string()),
        },
    }
}

fn attempt(probe: &Probe) -> std::io::Result<String> {
    let deadline = Instant::now() + probe.timeout;
    let (ty, protocol) = match probe.proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(Domain::for_address(probe.dst), ty, Some(protocol))?;
    if let Some(src) = probe.src {
        socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    let dst = SockAddr::from(probe.dst);
    match probe.proto {
        Proto::Tcp => socket.connect_timeout(&dst, probe.timeout)?,
        Proto::Udp => {
            socket.connect(&dst)?;
            socket.send(b"hello\n")?;
        }
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    socket.set_read_timeout(Some(left))?;
    let mut socket = socket;
    let mut text = String::new();
    match probe.proto {
        // The server writes one line and closes.
        Proto::Tcp => {
            socket.read_to_string(&mut text)?;
        }
        Proto::Udp => {
            let mut buf = [0u8; 512];
            let n = socket.read(&mut buf)?;
            text = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    Ok(text)
}

/// Times `n` TCP connection setups to `dst` from the calling thread's namespace, one after the
/// other: each a new connection (so its first packet crosses the NAT chains), timed from
/// `connect` to its return (SYN to SYN-ACK), then closed with a reset so neither conntrack nor
/// TIME_WAIT sockets pile up. The first failure ends the run.
pub(crate) fn connect_times(dst: SocketAddr, n: usize) -> std::io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    let target = SockAddr::from(dst);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_linger(Some(Duration::ZERO))?;
        let start = Instant::now();
        socket.connect_timeout(&target, DEFAULT_TIMEOUT)?;
        times.push(start.elapsed());
    }
    Ok(times)
}

pub(crate) fn parse(text: &str) -> Outcome {
    let mut words = text.split_whitespace();
    let (Some(host), Some(local), Some(peer)) = (words.next(), words.next(), words.next()) else {
        return Outcome::Failed(format!("malformed reply {text:?}"));
    };
    match (local.parse(), peer.parse()) {
        (Ok(local), Ok(peer)) => Outcome::Reply(Reply {
            host: host.to_owned(),
            local,
            peer,
        }),
        _ => Outcome::Failed(format!("malformed reply {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_line() {
        assert_eq!(
            parse("web-1 [fd00::5]:8080 [2001:db8::1]:4000\n"),
            Outcome::Reply(Reply {
                host: "web-1".into(),
                local: "[fd00::5]:8080".parse().unwrap(),
                peer: "[2001:db8::1]:4000".parse().unwrap(),
            })
        );
        assert!(matches!(parse("web-1 nonsense"), Outcome::Failed(_)));
    }
}
