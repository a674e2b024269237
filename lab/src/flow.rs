//! Long-lived clients, for what outlives one probe: a [`UdpFlow`] is a UDP client with a fixed
//! source address and port (a DNS resolver, a statsd or syslog sender) that sends a datagram
//! every interval and records which endpoint answered and when, so a test sees the moment a
//! flow moves (or that it never does: only the first datagram of a conntrack entry is NATed);
//! a [`StreamServer`] answers every line of every TCP connection with the echo servers' line
//! and keeps the connection open, and a [`StreamClient`] holds one such connection, so a test
//! can check that an established connection keeps working across changes. Sockets are created
//! inside their host's namespace and used from ordinary threads (a socket stays in the
//! namespace it was created in). Every wait is bounded, and dropping any of them stops its
//! thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::probe::{self, Outcome};
use crate::{echo, Error, Lab};

/// The longest a flow or a stream server runs, whatever the test does.
pub const MAX_RUN: Duration = Duration::from_secs(300);

/// One datagram of a [`UdpFlow`]: when it was sent and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When it was sent.
    pub sent: Instant,
    /// The answer (the echo server's line), a refusal, or nothing within the interval.
    pub outcome: Outcome,
}

/// A UDP client with a fixed source sending one datagram per interval (see the module
/// documentation). Stops when dropped, or after [`MAX_RUN`].
#[derive(Debug)]
pub struct UdpFlow {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpFlow {
    /// Every sample so far, in order.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the client and returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.halt();
    }
}

fn udp_loop(socket: &Socket, interval: Duration, samples: &Mutex<Vec<Sample>>, stop: &AtomicBool) {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
        let sent = Instant::now();
        let outcome = match socket.send(b"flow\n") {
            Err(e) => failure(&e),
            Ok(_) => {
                let _ = socket.set_read_timeout(Some(interval));
                match (&*socket).read(&mut buf) {
                    Ok(n) => probe::parse(&String::from_utf8_lossy(&buf[..n])),
                    Err(e) => failure(&e),
                }
            }
        };
        samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Sample { sent, outcome });
        let next = sent + interval;
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
}

fn failure(e: &std::io::Error) -> Outcome {
    match e.raw_os_error() {
        // A reject answers with an ICMP error (ECONNREFUSED on the next call), or, for the
        // host's own datagrams, drops them inside `send` (EPERM).
        Some(libc::ECONNREFUSED | libc::EPERM) => Outcome::Refused,
        _ if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Outcome::Timeout,
        _ => Outcome::Failed(e.to_string()),
    }
}

/// A TCP server answering every line on every connection with `<host> <local> <peer>`, and
/// keeping connections open. Stops when dropped, or after [`MAX_RUN`].
#[derive(Debug)]
pub struct StreamServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stream_loop(listener: &TcpListener, host: &str, stop: &AtomicBool) {
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
        if let Ok((conn, _)) = listener.accept() {
            if conn.set_nonblocking(true).is_ok() {
                conns.push(conn);
            }
        }
        conns.retain_mut(|conn| match conn.read(&mut buf) {
            Ok(0) => false,
            Ok(_) => {
                let line = echo::reply(host, conn.local_addr().ok(), conn.peer_addr().ok());
                conn.write_all(line.as_bytes()).is_ok()
            }
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One open TCP connection from a host of the lab.
#[derive(Debug)]
pub struct StreamClient {
    stream: TcpStream,
}

impl StreamClient {
    /// Sends one line and reads the server's answer (bounded by the probe timeout).
    pub fn ask(&mut self) -> Outcome {
        if let Err(e) = self.stream.write_all(b"ask\n") {
            return failure(&e);
        }
        let mut buf = [0u8; 512];
        match self.stream.read(&mut buf) {
            Ok(0) => Outcome::Failed("connection closed".into()),
            Ok(n) => probe::parse(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => failure(&e),
        }
    }

    /// The connection's local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }
}

impl Lab {
    /// Starts a [`UdpFlow`] from host `from`, bound to `src` (a fixed address and port),
    /// to `dst`, one datagram every `interval`.
    pub fn udp_flow(
        &self,
        from: &str,
        src: SocketAddr,
        dst: SocketAddr,
        interval: Duration,
    ) -> Result<UdpFlow, Error> {
        let socket = self
            .run_in(from, || -> std::io::Result<Socket> {
                let socket =
                    Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP))?;
                socket.set_reuse_address(true)?;
                socket.bind(&SockAddr::from(src))?;
                socket.connect(&SockAddr::from(dst))?;
                Ok(socket)
            })?
            .map_err(|e| Error::Probe(format!("UDP flow {src} -> {dst} from {from}: {e}")))?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || udp_loop(&socket, interval, &samples, &stop))
        };
        Ok(UdpFlow {
            samples,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts a [`StreamServer`] on `addr` in host `host`'s namespace, answering as `host`.
    pub fn stream_server(&self, host: &str, addr: SocketAddr) -> Result<StreamServer, Error> {
        let listener = self
            .run_in(host, || -> std::io::Result<TcpListener> {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })?
            .map_err(|e| Error::Server(format!("stream server {addr} on {host}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, host) = (stop.clone(), host.to_owned());
            std::thread::spawn(move || stream_loop(&listener, &host, &stop))
        };
        Ok(StreamServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Opens a [`StreamClient`] connection from host `from` to `dst`.
    pub fn stream_client(&self, from: &str, dst: SocketAddr) -> Result<StreamClient, Error> {
        let stream = self
            .run_in(from, || -> std::io::Result<TcpStream> {
                let stream = TcpStream::connect_timeout(&dst, probe::DEFAULT_TIMEOUT)?;
                stream.set_read_timeout(Some(probe::DEFAULT_TIMEOUT))?;
                stream.set_write_timeout(Some(probe::DEFAULT_TIMEOUT))?;
                Ok(stream)
            })?
            .map_err(|e| Error::Probe(format!("connect {dst} from {from}: {e}")))?;
        Ok(StreamClient { stream })
    }
}
