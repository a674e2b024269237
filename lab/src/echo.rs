//! Echo servers, the lab's endpoints. Each listens on one address, protocol and port inside its
//! pod's namespace and answers every connection (TCP) or datagram (UDP) with one line,
//! `<host> <local addr:port> <peer addr:port>`: which endpoint answered, on which address and
//! port the packet arrived after DNAT, and the source address it arrived with (the client's,
//! or a node's when it was masqueraded). Servers poll a stop flag every [`TICK`], so a lab
//! tears down within that.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::topology::Proto;
use crate::{ns, Error};

/// How often an idle server checks its stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Running servers; they stop when this is dropped.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts one server per `(addr, proto, port)` inside `netns`, replying as `host`; returns
    /// once all of them are bound.
    pub(crate) fn start(
        netns: &str,
        host: &str,
        listeners: &[(IpAddr, Proto, u16)],
    ) -> Result<Servers, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Servers {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        for &(addr, proto, port) in listeners {
            let (netns, host, stop, ready) = (
                netns.to_owned(),
                host.to_owned(),
                stop.clone(),
                ready_tx.clone(),
            );
            servers.threads.push(std::thread::spawn(move || {
                let socket = ns::enter(&netns).and_then(|()| bind(addr, proto, port));
                let socket = match socket {
                    Ok(socket) => {
                        let _ = ready.send(Ok(()));
                        socket
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                match proto {
                    Proto::Tcp => serve_tcp(&socket, &host, &stop),
                    Proto::Udp => serve_udp(&socket, &host, &stop),
                }
            }));
        }
        // Each thread keeps its sender for life, so count the answers instead of waiting for
        // the channel to close.
        for _ in listeners {
            ready_rx
                .recv()
                .map_err(|_| Error::Server("a server thread died before binding".into()))??;
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn bind(addr: IpAddr, proto: Proto, port: u16) -> Result<Socket, Error> {
    let where_ = SocketAddr::new(addr, port);
    let fail = |e: std::io::Error| Error::Server(format!("{proto} {where_}: {e}"));
    let (ty, protocol) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(Domain::for_address(where_), ty, Some(protocol)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.bind(&SockAddr::from(where_)).map_err(fail)?;
    if proto == Proto::Tcp {
        socket.listen(128).map_err(fail)?;
    }
    // accept() and recv() honour SO_RCVTIMEO, which is how the loops notice the stop flag.
    socket.set_read_timeout(Some(TICK)).map_err(fail)?;
    Ok(socket)
}

/// The line a server answers with.
pub(crate) fn reply(host: &str, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> String {
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "?".to_owned(), |a| a.to_string());
    format!("{host} {} {}\n", show(local), show(peer))
}

fn serve_tcp(listener: &Socket, host: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((conn, peer)) = listener.accept() else {
            continue;
        };
        let local = conn.local_addr().ok().and_then(|a| a.as_socket());
        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = conn.send(reply(host, local, peer.as_socket()).as_bytes());
    }
}

fn serve_udp(socket: &Socket, host: &str, stop: &AtomicBool) {
    let local = socket.local_addr().ok().and_then(|a| a.as_socket());
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((_, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let _ = socket.send_to(reply(host, local, peer.as_socket()).as_bytes(), &peer);
    }
}
