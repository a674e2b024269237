//! The only place in kube-nft that opens a socket: a `NETLINK_NETFILTER` socket that sends one
//! [`Transaction`] per `sendmsg` and reads the kernel's verdict on it. The kernel processes a
//! batch synchronously inside `sendmsg`, so by the time the call returns every reply is queued;
//! they are drained without blocking. A reply is an `NLMSG_ERROR` carrying either 0 (an ACK,
//! only requested for BATCH_END and only sent by kernels ≥ 6.10) or a negative errno for the
//! message whose sequence number it echoes. Errors are mapped back to the operation and object
//! through the transaction's seq table, with the extended ACK's message and attribute offset
//! when the kernel provides them. No error and no ACK means committed on older kernels. The
//! socket also reads state back: [`Socket::dump`] sends one `NLM_F_DUMP` request and blocks
//! until the kernel's `NLMSG_DONE`, and [`Socket::get_gen`] asks for the generation id. For the
//! change monitor it opens a [`Subscription`] to the `NFNLGRP_NFTABLES` multicast group, and
//! every transaction it sends is remembered by port id and network namespace until the monitor
//! has seen its NEWGEN ([`take_own_commit`]): the kernel names a committer by its socket's port
//! id, which, unlike its pid, reads the same inside and outside a container. For the conntrack
//! reconciler, a [`ConntrackSocket`] dumps the conntrack table (one datagram in memory at a
//! time, every wait bounded) and deletes entries in batches whose every message is answered,
//! and [`local_addresses`] lists the node's addresses over rtnetlink.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, SocketAddr};

use super::decode::{
    self, NFT_MSG_GETGEN, NFT_MSG_NEWGEN, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTI,
};
use super::encode::{OpKind, Transaction};
use super::sys::{
    NFNETLINK_V0, NFNL_SUBSYS_NFTABLES, NFPROTO_UNSPEC, NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS,
    NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_REQUEST,
};

/// Default socket buffers are ~208 KiB; `sendmsg` fails with EMSGSIZE for a batch larger than
/// the send buffer minus 32 bytes, so bigger batches raise it first.
const DEFAULT_BUFFER: usize = 200 * 1024;

/// Receive buffer for one reply datagram. With `NETLINK_CAP_ACK` an error echoes only the
/// failing message's header; without it (old kernels) the whole message, at most ~64 KiB.
const RECV_BUFFER: usize = 256 * 1024;

/// An errno from the kernel or a socket call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// ENOENT: a table, chain or set that the message refers to does not exist.
    pub fn is_not_found(self) -> bool {
        self.0 == libc::ENOENT
    }

    /// Transient conditions worth retrying the same transaction for (EAGAIN, EBUSY, EINTR,
    /// ENOBUFS, ENOMEM): the kernel was busy or short of memory, the request was fine.
    pub fn is_retryable(self) -> bool {
        matches!(
            self.0,
            libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::ENOBUFS | libc::ENOMEM
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

/// The kernel refused one message of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The failing message's sequence number.
    pub seq: u32,
    /// What the message did (`None` if the seq is not one of ours, which would be a kernel or
    /// encoder bug).
    pub op: Option<OpKind>,
    /// The object the message was about.
    pub object: String,
    /// The errno.
    pub errno: Errno,
    /// The extended ACK's message (`NLMSGERR_ATTR_MSG`), if the kernel sent one. nf_tables
    /// rarely does.
    pub message: Option<String>,
    /// The extended ACK's offset of the offending attribute within the failing message
    /// (`NLMSGERR_ATTR_OFFS`).
    pub offset: Option<u32>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Some(op) => write!(f, "{} {}: {}", op.verb(), self.object, self.errno)?,
            None => write!(f, "message seq {}: {}", self.seq, self.errno)?,
        }
        if let Some(message) = &self.message {
            write!(f, " ({message})")?;
        }
        if let Some(offset) = self.offset {
            write!(f, " [attribute at byte {offset}]")?;
        }
        Ok(())
    }
}

/// What happened to a transaction the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The kernel acknowledged BATCH_END (kernels ≥ 6.10). Older kernels stay silent on
    /// success, which is then inferred from the absence of errors.
    pub end_acked: bool,
}

/// Failures of the netlink socket and of transactions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// nf_tables is not available: no `NETLINK_NETFILTER` (nfnetlink) in this kernel, or the
    /// nf_tables subsystem refused the batch as unknown.
    #[error("nf_tables not available in this kernel")]
    NotAvailable {
        /// The errno that told.
        errno: Errno,
    },
    /// The kernel refused the batch with EPERM: the process lacks CAP_NET_ADMIN in the network
    /// namespace.
    #[error("CAP_NET_ADMIN missing: the kernel refused to change nftables")]
    PermissionDenied,
    /// Opening, binding or configuring the netlink socket failed.
    #[error("open netlink socket")]
    Open(#[source] io::Error),
    /// `sendmsg` failed; nothing was applied.
    #[error("send nf_tables transaction")]
    Send(#[source] io::Error),
    /// `sendmsg` sent only part of the batch; the kernel discards an incomplete batch.
    #[error("send nf_tables transaction: sent {sent} of {len} bytes")]
    ShortSend {
        /// Bytes sent.
        sent: usize,
        /// Bytes in the batch.
        len: usize,
    },
    /// Reading the kernel's replies failed.
    #[error("read nf_tables replies")]
    Receive(#[source] io::Error),
    /// The receive queue overflowed (ENOBUFS), so replies were lost: the transaction may or may
    /// not have committed. Re-read the kernel state and do not reuse the socket.
    #[error("nf_tables replies lost (receive queue overflow): outcome unknown")]
    OutcomeUnknown,
    /// A reply could not be parsed.
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
    /// The kernel refused a dump or get request (e.g. ENOENT for a table that does not exist).
    #[error("dump nf_tables message type {msg_type}: {errno}")]
    DumpFailed {
        /// The request's `NFT_MSG_GET*` type.
        msg_type: u16,
        /// The kernel's errno.
        errno: Errno,
    },
    /// The ruleset changed while the kernel was dumping it (`NLM_F_DUMP_INTR`), or replies were
    /// lost to a receive queue overflow (ENOBUFS): the dump may be inconsistent. Retry it.
    #[error("nf_tables changed during the dump")]
    DumpInterrupted,
    /// The kernel refused a conntrack (ctnetlink) request as a whole.
    #[error("conntrack {what}: {errno}")]
    Conntrack {
        /// What was asked (`dump`, `delete`).
        what: &'static str,
        /// The kernel's errno (`EOPNOTSUPP` or `EINVAL` for a filter it does not support).
        errno: Errno,
    },
    /// A bounded wait for the kernel's replies ran out.
    #[error("{what}: no end after {after:?}")]
    TimedOut {
        /// What was waited for.
        what: &'static str,
        /// How long it ran.
        after: Duration,
    },
    /// The kernel refused the transaction; nothing of it was applied (nf_tables transactions
    /// are atomic). `rejections` lists every failing message, in the order reported.
    #[error("{}", describe_rejections(.rejections))]
    Rejected {
        /// Every failing message; never empty.
        rejections: Vec<Rejection>,
    },
}

impl Error {
    /// The kernel's errno: of the first rejected message if it rejected a transaction, or of a
    /// refused dump (ENOENT: the table or set does not exist).
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Rejected { rejections } => rejections.first().map(|r| r.errno),
            Error::NotAvailable { errno }
            | Error::DumpFailed { errno, .. }
            | Error::Conntrack { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn describe_rejections(rejections: &[Rejection]) -> String {
    match rejections {
        [] => "nf_tables transaction rejected".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more errors)", rest.len()),
    }
}

/// A `NETLINK_NETFILTER` socket bound to an automatic port id, asking for capped ACKs (errors
/// echo only the failing message's header, not its whole body) and extended ACKs (error
/// strings and attribute offsets). Both are best effort: kernels without them still report
/// errors.
fn open_netfilter() -> Result<netlink_sys::Socket, Error> {
    let mut socket =
        netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(|err| match err.raw_os_error() {
            Some(errno @ (libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)) => Error::NotAvailable {
                errno: Errno(errno),
            },
            _ => Error::Open(err),
        })?;
    socket.bind_auto().map_err(Error::Open)?;
    let _ = socket.set_cap_ack(true);
    let _ = socket.set_ext_ack(true);
    Ok(socket)
}

/// A `NETLINK_NETFILTER` socket bound to an automatic port id.
pub struct Socket {
    socket: netlink_sys::Socket,
    /// Sequence number of the next dump or get request.
    next_seq: u32,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.socket.as_raw_fd())
            .finish()
    }
}

impl Socket {
    /// Opens and binds the socket (see [`open_netfilter`] for the ACK options).
    pub fn open() -> Result<Socket, Error> {
        let socket = open_netfilter()?;
        Ok(Socket {
            socket,
            next_seq: 1,
        })
    }

    /// Sends the transaction in one `sendmsg` and collects the kernel's answers.
    ///
    /// After [`Error::OutcomeUnknown`] the socket must not be reused: stale replies may still
    /// be queued.
    pub fn transact(&self, tx: &Transaction) -> Result<Committed, Error> {
        // Before the send: the kernel announces the commit inside `sendmsg`, so a monitor
        // thread may read the NEWGEN before this call returns.
        let ticket = self.announce_commit();
        let bytes = tx.bytes();
        if bytes.len() > DEFAULT_BUFFER {
            // SO_SNDBUFFORCE ignores net.core.wmem_max but needs CAP_NET_ADMIN. Without it
            // the kernel will refuse the batch with EPERM anyway, which is the clearer error.
            let _ = self.force_buffer(libc::SO_SNDBUFFORCE, bytes.len() + 64 * 1024);
        }
        // Room for one error per message in the worst case (each reply is its own skb of
        // roughly 1 KiB truesize).
        let replies = tx.ops().len().saturating_mul(1024);
        if replies > DEFAULT_BUFFER {
            let _ = self.force_buffer(libc::SO_RCVBUFFORCE, replies.min(64 << 20));
        }

        let kernel = SocketAddr::new(0, 0);
        let sent =
            self.socket
                .send_to(bytes, &kernel, 0)
                .map_err(|err| match err.raw_os_error() {
                    Some(libc::EPERM) => Error::PermissionDenied,
                    _ => Error::Send(err),
                })?;
        if sent != bytes.len() {
            return Err(Error::ShortSend {
                sent,
                len: bytes.len(),
            });
        }

        let mut rejections = Vec::new();
        let mut end_acked = false;
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(err) => match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => return Err(Error::OutcomeUnknown),
                    _ => return Err(Error::Receive(err)),
                },
            }
            for reply in parse_replies(&buf)? {
                match reply {
                    Reply::Ack { seq } => end_acked |= seq == tx.end_seq(),
                    Reply::Error {
                        seq,
                        errno,
                        message,
                        offset,
                    } => {
                        let op = tx.op(seq);
                        rejections.push(Rejection {
                            seq,
                            op: op.map(|o| o.kind),
                            object: op.map(|o| o.object.clone()).unwrap_or_default(),
                            errno,
                            message,
                            offset,
                        });
                    }
                }
            }
        }
        let outcome = classify(rejections).map(|()| Committed { end_acked });
        if outcome.is_ok() {
            ticket.keep();
        }
        outcome
    }

    /// Sends one `NLM_F_DUMP` request of nf_tables message type `msg_type` (an `NFT_MSG_GET*`
    /// number) for `family` (an `NFPROTO_*` number, 0 for all) with the given request
    /// attributes (filters such as `NFTA_RULE_TABLE`), and returns every reply message whole
    /// (`nlmsghdr` onwards), until `NLMSG_DONE`. Dump replies arrive in several datagrams, each
    /// holding as many messages as fit in the kernel's dump buffer; reading blocks until the
    /// kernel is done, which it always reports.
    pub fn dump(&mut self, msg_type: u16, family: u8, attrs: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        self.request(msg_type, NLM_F_DUMP, family, attrs)
    }

    /// `NFT_MSG_GETGEN`: the ruleset's generation id, which every commit (by anyone) changes.
    pub fn get_gen(&mut self) -> Result<u32, Error> {
        let replies = self.request(NFT_MSG_GETGEN, NLM_F_ACK, NFPROTO_UNSPEC, &[])?;
        for reply in &replies {
            let msg = decode::Message::parse(reply).map_err(|e| Error::Malformed(e.to_string()))?;
            if msg.msg_type == NFT_MSG_NEWGEN {
                return decode::generation(&msg).map_err(|e| Error::Malformed(e.to_string()));
            }
        }
        Err(Error::Malformed("GETGEN without a NEWGEN reply".into()))
    }

    /// One get or dump request; collects the nf_tables replies to it until `NLMSG_DONE` (dumps)
    /// or the ACK (`NLM_F_ACK` requests).
    fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        family: u8,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
        msg.extend_from_slice(attrs);
        let kernel = SocketAddr::new(0, 0);
        self.socket
            .send_to(&msg, &kernel, 0)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EPERM) => Error::PermissionDenied,
                _ => Error::Send(err),
            })?;

        let mut out = Vec::new();
        let mut interrupted = false;
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => {}
                Err(err) => match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => return Err(Error::DumpInterrupted),
                    _ => return Err(Error::Receive(err)),
                },
            }
            let mut at = 0;
            while at + 16 <= buf.len() {
                let malformed = || Error::Malformed("dump reply header".into());
                let len = u32_at(&buf, at).ok_or_else(malformed)? as usize;
                let ty = u16_at(&buf, at + 4).ok_or_else(malformed)?;
                let reply_flags = u16_at(&buf, at + 6).ok_or_else(malformed)?;
                let reply_seq = u32_at(&buf, at + 8).ok_or_else(malformed)?;
                if len < 16 || at + len > buf.len() {
                    return Err(malformed());
                }
                let reply = &buf[at..at + len];
                at += len.div_ceil(4) * 4;
                if reply_seq != seq {
                    // A late reply to an earlier request on this socket.
                    continue;
                }
                interrupted |= reply_flags & NLM_F_DUMP_INTR != 0;
                match ty {
                    NLMSG_DONE => return finish(out, interrupted),
                    NLMSG_ERROR => {
                        let error = u32_at(reply, 16).ok_or_else(malformed)? as i32;
                        if error == 0 {
                            return finish(out, interrupted);
                        }
                        return Err(Error::DumpFailed {
                            msg_type,
                            errno: Errno(error.wrapping_neg()),
                        });
                    }
                    _ if ty >> 8 == NFNL_SUBSYS_NFTABLES => out.push(reply.to_vec()),
                    _ => {}
                }
                // A non-multipart answer to a plain get without an ACK ends here.
                if flags & (NLM_F_DUMP | NLM_F_ACK) == 0 && reply_flags & NLM_F_MULTI == 0 {
                    return finish(out, interrupted);
                }
            }
        }
    }

    fn force_buffer(&self, option: libc::c_int, size: usize) -> io::Result<()> {
        let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX / 2);
        // SAFETY: `value` is a live c_int and the length passed is its size; the fd is open
        // for as long as `self.socket` is.
        let res = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if res < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Commits this process sent, for the change monitor

/// How long a commit this process sent stays remembered while no monitor has matched its
/// NEWGEN. A monitor matches it within milliseconds; entries only linger where no monitor runs
/// (the CLI) or where the NEWGEN was lost to a receive queue overflow, which the monitor
/// reports anyway.
const OWN_COMMIT_MEMORY: Duration = Duration::from_secs(60);

/// At most this many unmatched commits are remembered.
const OWN_COMMIT_ENTRIES: usize = 1024;

/// A transaction this process sent: from which netlink port, in which network namespace.
#[derive(Debug)]
struct SentCommit {
    id: u64,
    netns: Option<u64>,
    port: u32,
    at: Instant,
}

static SENT_COMMITS: Mutex<VecDeque<SentCommit>> = Mutex::new(VecDeque::new());
static NEXT_COMMIT_ID: AtomicU64 = AtomicU64::new(0);

fn sent_commits() -> MutexGuard<'static, VecDeque<SentCommit>> {
    // Nothing panics while holding the lock, and the queue is valid whatever happened.
    SENT_COMMITS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One transaction being sent. Unless [`CommitTicket::keep`] is called (the kernel accepted it),
/// dropping the ticket forgets it again: a rejected batch commits nothing and announces nothing.
#[derive(Debug)]
struct CommitTicket {
    id: Option<u64>,
}

impl CommitTicket {
    fn keep(mut self) {
        self.id = None;
    }
}

impl Drop for CommitTicket {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            sent_commits().retain(|c| c.id != id);
        }
    }
}

/// Whether the commit that the kernel announced with a NEWGEN from netlink port `port` in the
/// network namespace `netns` (see [`Subscription::netns`]) was sent by this process through a
/// [`Socket`]; a match is consumed, so each commit is matched once, oldest first.
///
/// The port id is the committer's identity because the NEWGEN's pid is not usable for this:
/// the kernel writes `task_pid_nr(current)`, the id of the committing *thread* in the initial
/// pid namespace, which a containerised daemon cannot compare with anything it knows. A port id
/// is unique among the open netlink sockets of a network namespace and is read back with
/// `getsockname`. A port can be reused once its socket is closed (the first socket of a
/// process gets its pid as seen in its own pid namespace), which is why a match is consumed:
/// a later commit from a reused port finds nothing left to match. An unknown namespace (`None`,
/// kernels before 5.14) matches any.
pub fn take_own_commit(netns: Option<u64>, port: u32) -> bool {
    let mut sent = sent_commits();
    let found = sent
        .iter()
        .position(|c| c.port == port && (c.netns.is_none() || netns.is_none() || c.netns == netns));
    found.and_then(|at| sent.remove(at)).is_some()
}

impl Socket {
    /// Remembers that this socket is about to send a transaction (see [`take_own_commit`]).
    fn announce_commit(&self) -> CommitTicket {
        let mut addr = SocketAddr::new(0, 0);
        if self.socket.get_address(&mut addr).is_err() {
            // Without a port id the commit cannot be recognised; the monitor will report it as
            // foreign, which costs a read-back and nothing else.
            return CommitTicket { id: None };
        }
        let id = NEXT_COMMIT_ID.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut sent = sent_commits();
        while sent.len() >= OWN_COMMIT_ENTRIES
            || sent
                .front()
                .is_some_and(|c| now.duration_since(c.at) > OWN_COMMIT_MEMORY)
        {
            sent.pop_front();
        }
        sent.push_back(SentCommit {
            id,
            netns: netns_cookie(self.socket.as_raw_fd()),
            port: addr.port_number(),
            at: now,
        });
        CommitTicket { id: Some(id) }
    }
}

/// The network namespace cookie of a socket (`SO_NETNS_COOKIE`, kernel ≥ 5.14): a number that
/// names the namespace for as long as the system runs, the same for every socket in it.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
))]
fn netns_cookie(fd: std::os::fd::RawFd) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are live locals of the sizes passed; the kernel writes at most
    // `len` bytes.
    let res = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            super::sys::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (res == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
)))]
fn netns_cookie(_fd: std::os::fd::RawFd) -> Option<u64> {
    None
}

// ---------------------------------------------------------------------------------------------
// The change monitor's socket

/// The largest notification datagram: the kernel packs notifications into skbs of at most
/// `NLMSG_GOODSIZE` (a page, at most 8 KiB); anything longer is reported as truncated.
const EVENT_BUFFER: usize = 64 * 1024;

/// What [`Subscription::receive`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// One datagram of notifications, now in the caller's buffer.
    Datagram,
    /// Nothing arrived within the timeout: the receive queue is empty.
    Idle,
    /// The receive queue overflowed (ENOBUFS) and the kernel dropped notifications, or a
    /// datagram did not fit the buffer. Everything still queued is intact and will be read
    /// next, but the kernel keeps dropping until the queue has been read empty.
    Overrun,
}

/// A `NETLINK_NETFILTER` socket subscribed to `NFNLGRP_NFTABLES`: it receives the notifications
/// of every nf_tables commit in its network namespace, by anyone. It never sends.
pub struct Subscription {
    socket: netlink_sys::Socket,
    port: u32,
    netns: Option<u64>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("fd", &self.socket.as_raw_fd())
            .field("port", &self.port)
            .finish()
    }
}

impl Subscription {
    /// Opens the socket in the calling thread's network namespace, joins the group, and asks
    /// for a receive buffer of `receive_buffer` bytes with `SO_RCVBUFFORCE` (CAP_NET_ADMIN; it
    /// ignores `net.core.rmem_max`), falling back to `SO_RCVBUF` (capped by `rmem_max`). The
    /// kernel charges the buffer only for what is queued, so a large one costs nothing while
    /// the reader keeps up.
    pub fn open(receive_buffer: usize) -> Result<Subscription, Error> {
        let mut socket = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(|err| {
            match err.raw_os_error() {
                Some(errno @ (libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)) => Error::NotAvailable {
                    errno: Errno(errno),
                },
                _ => Error::Open(err),
            }
        })?;
        let addr = socket.bind_auto().map_err(Error::Open)?;
        socket
            .add_membership(super::sys::NFNLGRP_NFTABLES)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EPERM) => Error::PermissionDenied,
                _ => Error::Open(err),
            })?;
        let fd = socket.as_raw_fd();
        set_receive_buffer(fd, receive_buffer).map_err(Error::Open)?;
        Ok(Subscription {
            netns: netns_cookie(fd),
            port: addr.port_number(),
            socket,
        })
    }

    /// This socket's port id.
    pub fn port_id(&self) -> u32 {
        self.port
    }

    /// The network namespace cookie of this socket, if the kernel tells (≥ 5.14).
    pub fn netns(&self) -> Option<u64> {
        self.netns
    }

    /// The receive buffer the kernel granted, in bytes (`SO_RCVBUF` reads back twice what was
    /// asked: the kernel doubles it for its bookkeeping).
    pub fn receive_buffer(&self) -> Result<usize, Error> {
        self.socket.get_rx_buf_sz().map_err(Error::Receive)
    }

    /// Waits up to `timeout` for one datagram and reads it into `buf` (cleared first).
    pub fn receive(&self, buf: &mut Vec<u8>, timeout: Duration) -> Result<Received, Error> {
        buf.clear();
        buf.reserve(EVENT_BUFFER);
        let mut pollfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // A sub-millisecond remainder must not turn into a busy loop of zero-timeout polls.
        let millis = if millis == 0 && !timeout.is_zero() {
            1
        } else {
            millis
        };
        // SAFETY: one live, initialised pollfd, and the count passed is 1.
        let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINTR) => Ok(Received::Idle),
                _ => Err(Error::Receive(err)),
            };
        }
        if ready == 0 {
            return Ok(Received::Idle);
        }
        // MSG_TRUNC: the length returned is the datagram's, even when it did not fit.
        match self.socket.recv(buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(len) if len > buf.len() => Ok(Received::Overrun),
            Ok(_) => Ok(Received::Datagram),
            Err(err) => match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(Received::Idle),
                Some(libc::ENOBUFS) => Ok(Received::Overrun),
                _ => Err(Error::Receive(err)),
            },
        }
    }
}

/// A receive buffer of `size` bytes: `SO_RCVBUFFORCE` ignores `net.core.rmem_max` but needs
/// CAP_NET_ADMIN; without it, `SO_RCVBUF` (capped by that sysctl).
fn set_receive_buffer(fd: std::os::fd::RawFd, size: usize) -> io::Result<()> {
    set_int_option(fd, libc::SO_RCVBUFFORCE, size)
        .or_else(|_| set_int_option(fd, libc::SO_RCVBUF, size))
}

/// `setsockopt(SOL_SOCKET, option, size)` for an int-valued option.
fn set_int_option(fd: std::os::fd::RawFd, option: libc::c_int, size: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX / 2);
    // SAFETY: `value` is a live c_int and the length passed is its size; the caller owns `fd`.
    let res = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The replies of a finished dump, unless the kernel flagged it as interrupted.
fn finish(replies: Vec<Vec<u8>>, interrupted: bool) -> Result<Vec<Vec<u8>>, Error> {
    if interrupted {
        Err(Error::DumpInterrupted)
    } else {
        Ok(replies)
    }
}

/// Turns the collected rejections into the most telling error.
fn classify(mut rejections: Vec<Rejection>) -> Result<(), Error> {
    if rejections.is_empty() {
        return Ok(());
    }
    rejections.sort_by_key(|r| r.seq);
    let first = &rejections[0];
    // nfnetlink checks CAP_NET_ADMIN for the whole batch and answers on BATCH_BEGIN; an
    // unknown subsystem (nf_tables not built or not loadable) is refused there too.
    if first.op == Some(OpKind::BatchBegin) {
        match first.errno.0 {
            libc::EPERM => return Err(Error::PermissionDenied),
            libc::EOPNOTSUPP | libc::ENOENT | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT => {
                return Err(Error::NotAvailable { errno: first.errno })
            }
            _ => {}
        }
    }
    Err(Error::Rejected { rejections })
}

/// One reply message.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// `NLMSG_ERROR` with error 0.
    Ack { seq: u32 },
    /// `NLMSG_ERROR` with a negative errno.
    Error {
        seq: u32,
        errno: Errno,
        message: Option<String>,
        offset: Option<u32>,
    },
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one datagram of replies: `nlmsghdr`s, of which only `NLMSG_ERROR` matters here.
/// Layout of an error: `nlmsghdr`, `struct nlmsgerr { int error; struct nlmsghdr msg; }`, the
/// rest of the failing message unless `NLM_F_CAPPED`, then extended ACK attributes if
/// `NLM_F_ACK_TLVS`.
fn parse_replies(buf: &[u8]) -> Result<Vec<Reply>, Error> {
    let malformed = |what: &str| Error::Malformed(what.to_owned());
    let mut replies = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(buf, at).ok_or_else(|| malformed("truncated header"))? as usize;
        let ty = u16_at(buf, at + 4).ok_or_else(|| malformed("truncated header"))?;
        let flags = u16_at(buf, at + 6).ok_or_else(|| malformed("truncated header"))?;
        if len < 16 || at + len > buf.len() {
            return Err(malformed("message length out of bounds"));
        }
        let msg = &buf[at..at + len];
        if ty == NLMSG_ERROR {
            let error = u32_at(msg, 16).ok_or_else(|| malformed("truncated nlmsgerr"))? as i32;
            // The echoed header of the message this reply is about.
            let orig_len = u32_at(msg, 20).ok_or_else(|| malformed("truncated nlmsgerr"))?;
            let seq = u32_at(msg, 28).ok_or_else(|| malformed("truncated nlmsgerr"))?;
            if error == 0 {
                replies.push(Reply::Ack { seq });
            } else {
                let mut message = None;
                let mut offset = None;
                if flags & NLM_F_ACK_TLVS != 0 {
                    let echoed = if flags & NLM_F_CAPPED != 0 {
                        16
                    } else {
                        (orig_len as usize).div_ceil(4) * 4
                    };
                    let mut tlv = 20 + echoed;
                    while tlv + 4 <= msg.len() {
                        let Some(alen) = u16_at(msg, tlv).map(usize::from) else {
                            break;
                        };
                        let atype = u16_at(msg, tlv + 2).unwrap_or(0) & 0x3fff;
                        if alen < 4 || tlv + alen > msg.len() {
                            break;
                        }
                        let value = &msg[tlv + 4..tlv + alen];
                        match atype {
                            NLMSGERR_ATTR_MSG => {
                                let text = value.split(|b| *b == 0).next().unwrap_or(&[]);
                                message = Some(String::from_utf8_lossy(text).into_owned());
                            }
                            NLMSGERR_ATTR_OFFS => offset = u32_at(value, 0),
                            _ => {}
                        }
                        tlv += alen.div_ceil(4) * 4;
                    }
                }
                replies.push(Reply::Error {
                    seq,
                    errno: Errno(error.wrapping_neg()),
                    message,
                    offset,
                });
            }
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(replies)
}

// ---------------------------------------------------------------------------------------------
// The conntrack table (ctnetlink) and the node's addresses (rtnetlink)

/// How many conntrack deletes go into one `sendmsg`. Each is answered with a capped ACK that
/// costs about 1 KiB of receive buffer (an skb's truesize), so a batch stays far inside the
/// buffer a [`ConntrackSocket`] asks for; and the kernel takes the ctnetlink mutex per message,
/// so a batch never holds anything for long.
pub const CONNTRACK_DELETE_BATCH: usize = 256;

/// The receive buffer a [`ConntrackSocket`] asks for with `SO_RCVBUFFORCE` (it falls back to
/// `SO_RCVBUF`, capped by `net.core.rmem_max`).
const CONNTRACK_RECEIVE_BUFFER: usize = 4 << 20;

/// Waits until `fd` is readable or `deadline` passes; `false` on timeout.
fn readable(fd: std::os::fd::RawFd, deadline: Instant) -> Result<bool, Error> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let millis = libc::c_int::try_from(left.as_millis())
            .unwrap_or(libc::c_int::MAX)
            .max(1);
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live, initialised pollfd, and the count passed is 1.
        let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if ready > 0 {
            return Ok(true);
        }
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::Receive(err));
            }
        }
    }
}

/// A `NETLINK_NETFILTER` socket for the conntrack table: dumps with bounded waits, and batches
/// of deletes, each answered. The messages themselves are [`super::conntrack`]'s; this sets
/// their sequence numbers.
pub struct ConntrackSocket {
    socket: netlink_sys::Socket,
    next_seq: u32,
}

impl fmt::Debug for ConntrackSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConntrackSocket")
            .field("fd", &self.socket.as_raw_fd())
            .finish()
    }
}

impl ConntrackSocket {
    /// Opens and binds the socket in the calling thread's network namespace, with capped and
    /// extended ACKs and a receive buffer for a batch of answers.
    pub fn open() -> Result<ConntrackSocket, Error> {
        let socket = open_netfilter()?;
        // Best effort: a smaller buffer only means fewer deletes answered per read.
        let _ = set_receive_buffer(socket.as_raw_fd(), CONNTRACK_RECEIVE_BUFFER);
        Ok(ConntrackSocket {
            socket,
            next_seq: 1,
        })
    }

    fn seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        let kernel = SocketAddr::new(0, 0);
        let sent =
            self.socket
                .send_to(bytes, &kernel, 0)
                .map_err(|err| match err.raw_os_error() {
                    Some(libc::EPERM) => Error::PermissionDenied,
                    _ => Error::Send(err),
                })?;
        if sent != bytes.len() {
            return Err(Error::ShortSend {
                sent,
                len: bytes.len(),
            });
        }
        Ok(())
    }

    /// Sends one dump request (a whole message, from [`super::conntrack::dump_request`]) and
    /// hands every reply message of the conntrack subsystem, whole, to `each`, until the
    /// kernel's `NLMSG_DONE`; returns how many there were. The kernel fills one reply buffer
    /// each time the previous one has been read, so memory stays at one datagram whatever the
    /// table's size. Gives up with [`Error::TimedOut`] at `deadline` (the kernel always
    /// finishes a dump; the bound is for a machine in trouble). After an error the socket
    /// may hold the rest of the dump: drop it.
    pub fn dump(
        &mut self,
        request: &[u8],
        deadline: Instant,
        mut each: impl FnMut(&[u8]),
    ) -> Result<usize, Error> {
        let seq = self.seq();
        let mut msg = request.to_vec();
        if msg.len() < 16 {
            return Err(Error::Malformed("conntrack dump request".into()));
        }
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        let started = Instant::now();
        self.send(&msg)?;
        let mut count = 0;
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
        loop {
            if !readable(self.socket.as_raw_fd(), deadline)? {
                return Err(Error::TimedOut {
                    what: "conntrack dump",
                    after: started.elapsed(),
                });
            }
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(err) => match err.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => return Err(Error::DumpInterrupted),
                    _ => return Err(Error::Receive(err)),
                },
            }
            let mut at = 0;
            while at + 16 <= buf.len() {
                let malformed = || Error::Malformed("conntrack dump reply header".into());
                let len = u32_at(&buf, at).ok_or_else(malformed)? as usize;
                let ty = u16_at(&buf, at + 4).ok_or_else(malformed)?;
                let reply_seq = u32_at(&buf, at + 8).ok_or_else(malformed)?;
                if len < 16 || at + len > buf.len() {
                    return Err(malformed());
                }
                let reply = &buf[at..at + len];
                at += len.div_ceil(4) * 4;
                if reply_seq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(count),
                    NLMSG_ERROR => {
                        let error = u32_at(reply, 16).ok_or_else(malformed)? as i32;
                        if error == 0 {
                            return Ok(count);
                        }
                        return Err(Error::Conntrack {
                            what: "dump",
                            errno: Errno(error.wrapping_neg()),
                        });
                    }
                    _ if ty >> 8 == super::conntrack::NFNL_SUBSYS_CTNETLINK => {
                        count += 1;
                        each(reply);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends delete requests (from [`super::conntrack::delete_request`], each asking for an
    /// ACK) in one `sendmsg` and returns each one's answer, in order: `None` when deleted, or
    /// the errno (`ENOENT`: already gone, or replaced by a newer entry with the same tuple).
    /// The kernel handles the messages one by one inside `sendmsg`, so every answer is queued
    /// when it returns. At most [`CONNTRACK_DELETE_BATCH`] requests per call.
    pub fn delete(&mut self, requests: &[Vec<u8>]) -> Result<Vec<Option<Errno>>, Error> {
        assert!(
            requests.len() <= CONNTRACK_DELETE_BATCH,
            "at most {CONNTRACK_DELETE_BATCH} deletes per batch"
        );
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.next_seq;
        let mut batch = Vec::with_capacity(requests.iter().map(Vec::len).sum());
        for request in requests {
            if request.len() < 16 {
                return Err(Error::Malformed("conntrack delete request".into()));
            }
            let seq = self.seq();
            let at = batch.len();
            batch.extend_from_slice(request);
            batch[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
        }
        self.send(&batch)?;
        let mut answers: Vec<Option<Option<Errno>>> = vec![None; requests.len()];
        let mut missing = requests.len();
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
        while missing > 0 {
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(err) => match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => return Err(Error::OutcomeUnknown),
                    _ => return Err(Error::Receive(err)),
                },
            }
            for reply in parse_replies(&buf)? {
                let (seq, answer) = match reply {
                    Reply::Ack { seq } => (seq, None),
                    Reply::Error { seq, errno, .. } => (seq, Some(errno)),
                };
                let index = seq.wrapping_sub(first) as usize;
                if let Some(slot @ None) = answers.get_mut(index) {
                    *slot = Some(answer);
                    missing -= 1;
                }
            }
        }
        if missing > 0 {
            return Err(Error::Malformed(format!(
                "{missing} of {} conntrack deletes unanswered",
                requests.len()
            )));
        }
        Ok(answers.into_iter().map(Option::unwrap_or_default).collect())
    }
}

// rtnetlink (linux/rtnetlink.h, linux/if_addr.h): what the node's addresses are.
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// The addresses on the calling thread's network namespace's interfaces, both families
/// (`RTM_GETADDR`): what the kernel's `fib daddr type local` counts as this node's, for
/// judging NodePort entries. For IPv4 the local address is `IFA_LOCAL` (`IFA_ADDRESS` is the
/// peer's on a point-to-point link); for IPv6, `IFA_ADDRESS`. Addresses made local only by a
/// `local` route (AnyIP) are not listed. Bounded by `deadline`.
pub fn local_addresses(deadline: Instant) -> Result<Vec<std::net::IpAddr>, Error> {
    let mut socket =
        netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).map_err(Error::Open)?;
    socket.bind_auto().map_err(Error::Open)?;
    let mut msg = Vec::with_capacity(24);
    msg.extend_from_slice(&24u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifaddrmsg: AF_UNSPEC (both families), prefix length, flags, scope, index.
    msg.extend_from_slice(&[0u8; 8]);
    socket
        .send_to(&msg, &SocketAddr::new(0, 0), 0)
        .map_err(Error::Send)?;
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
    loop {
        if !readable(socket.as_raw_fd(), deadline)? {
            return Err(Error::TimedOut {
                what: "address dump",
                after: started.elapsed(),
            });
        }
        buf.clear();
        match socket.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(err) => match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(Error::Receive(err)),
            },
        }
        let mut at = 0;
        while at + 16 <= buf.len() {
            let malformed = || Error::Malformed("address dump reply".into());
            let len = u32_at(&buf, at).ok_or_else(malformed)? as usize;
            let ty = u16_at(&buf, at + 4).ok_or_else(malformed)?;
            if len < 16 || at + len > buf.len() {
                return Err(malformed());
            }
            let reply = &buf[at..at + len];
            at += len.div_ceil(4) * 4;
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let error = u32_at(reply, 16).ok_or_else(malformed)? as i32;
                    return Err(Error::Receive(io::Error::from_raw_os_error(
                        error.wrapping_neg(),
                    )));
                }
                RTM_NEWADDR if reply.len() >= 24 => {
                    let family = i32::from(reply[16]);
                    let attrs = super::decode::Attrs::parse(&reply[24..])
                        .map_err(|e| Error::Malformed(e.to_string()))?;
                    let addr = match family {
                        libc::AF_INET => attrs
                            .get(IFA_LOCAL)
                            .or_else(|| attrs.get(IFA_ADDRESS))
                            .and_then(|v| <[u8; 4]>::try_from(v).ok())
                            .map(std::net::IpAddr::from),
                        libc::AF_INET6 => attrs
                            .get(IFA_ADDRESS)
                            .and_then(|v| <[u8; 16]>::try_from(v).ok())
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    out.extend(addr);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_reply(seq: u32, errno: i32, tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(-errno).to_ne_bytes());
        // Echoed header: len 64, type NEWCHAIN, seq.
        body.extend_from_slice(&64u32.to_ne_bytes());
        body.extend_from_slice(&0x0a03u16.to_ne_bytes());
        body.extend_from_slice(&0u16.to_ne_bytes());
        body.extend_from_slice(&seq.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        for (ty, value) in tlvs {
            body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&ty.to_ne_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        let flags = if tlvs.is_empty() {
            NLM_F_CAPPED
        } else {
            NLM_F_CAPPED | NLM_F_ACK_TLVS
        };
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn errors_and_acks_are_parsed_with_extended_ack() {
        let mut buf = error_reply(
            7,
            libc::ENOENT,
            &[(NLMSGERR_ATTR_OFFS, &44u32.to_ne_bytes())],
        );
        buf.extend(error_reply(9, 0, &[]));
        buf.extend(error_reply(
            8,
            libc::EINVAL,
            &[(NLMSGERR_ATTR_MSG, b"bad thing\0")],
        ));
        let replies = parse_replies(&buf).unwrap();
        assert_eq!(
            replies,
            [
                Reply::Error {
                    seq: 7,
                    errno: Errno(libc::ENOENT),
                    message: None,
                    offset: Some(44)
                },
                Reply::Ack { seq: 9 },
                Reply::Error {
                    seq: 8,
                    errno: Errno(libc::EINVAL),
                    message: Some("bad thing".into()),
                    offset: None
                },
            ]
        );
    }

    #[test]
    fn own_commits_are_matched_once_and_forgotten_when_rejected() {
        // Opening and binding a netfilter socket needs no privilege; nothing is sent.
        let socket = Socket::open().expect("open netlink socket");
        let mut addr = SocketAddr::new(0, 0);
        socket.socket.get_address(&mut addr).expect("getsockname");
        let port = addr.port_number();
        let netns = netns_cookie(socket.socket.as_raw_fd());

        // Accepted: matched once, from any thread, then gone.
        socket.announce_commit().keep();
        socket.announce_commit().keep();
        assert!(std::thread::scope(|s| s
            .spawn(|| take_own_commit(netns, port))
            .join()
            .unwrap()));
        assert!(take_own_commit(netns, port));
        assert!(!take_own_commit(netns, port));

        // Rejected (the ticket dropped without `keep`): never matched.
        drop(socket.announce_commit());
        assert!(!take_own_commit(netns, port));

        // Another namespace's socket with the same port is not ours.
        socket.announce_commit().keep();
        if let Some(cookie) = netns {
            assert!(!take_own_commit(Some(cookie ^ 1), port));
        }
        assert!(take_own_commit(None, port));
    }

    #[test]
    fn eperm_on_batch_begin_means_no_cap_net_admin() {
        let rejection = |op, errno| Rejection {
            seq: 1,
            op: Some(op),
            object: "nf_tables".into(),
            errno: Errno(errno),
            message: None,
            offset: None,
        };
        assert!(matches!(
            classify(vec![rejection(OpKind::BatchBegin, libc::EPERM)]),
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            classify(vec![rejection(OpKind::BatchBegin, libc::EOPNOTSUPP)]),
            Err(Error::NotAvailable { .. })
        ));
        let err = classify(vec![rejection(OpKind::AddChain, libc::ENOENT)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "add chain nf_tables: {}",
                io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
        assert!(err.errno().is_some_and(Errno::is_not_found));
        assert_eq!(classify(Vec::new()).ok(), Some(()));
    }
}
