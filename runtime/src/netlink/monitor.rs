//! Noticing when someone else changes our tables. Every nf_tables commit in a network namespace
//! is announced on the `NFNLGRP_NFTABLES` multicast group: inside the commit, with the commit
//! mutex held, the kernel sends one notification per changed object (NEWTABLE/DELTABLE,
//! NEWCHAIN/DELCHAIN, NEWRULE/DELRULE, NEWSET/DELSET, NEWSETELEM/DELSETELEM, objects,
//! flowtables; each names its table and family in attribute 1) and then one NEWGEN
//! (`nf_tables_commit`: `nft_commit_notify`, then `nf_tables_gen_notify`), so transactions never
//! interleave and a NEWGEN closes the transaction whose objects precede it. The NEWGEN carries
//! the new generation id (`NFTA_GEN_ID`, +1 per commit, skipping 0), the committing thread's
//! id in the initial pid namespace and its name (`NFTA_GEN_PROC_PID`/`_NAME`, from
//! `current`), and in its header the port id of the socket that sent the batch
//! (`NETLINK_CB(skb).portid`). The pid is a thread id that a containerised daemon cannot
//! compare with anything, so our own commits are recognised by port id instead
//! ([`socket::take_own_commit`]). Notifications are lost when the receive queue overflows: the
//! next read fails with ENOBUFS, what was queued before is still intact, and the kernel drops
//! everything until the queue has been read empty, so one stretch of unknown length is
//! missing. [`Tracker`] (sans-IO) turns the stream into committed transactions and judges the
//! damage of an overflow by generation ids: a missing NEWGEN shows as a gap, a commit whose
//! notifications may be cut short is marked incomplete, and when the queue has been read empty
//! a `GETGEN` tells whether any commit went unannounced. So an overflow that only cut our own
//! commit short costs nothing, while one that may hide a foreign change, or that swallowed a
//! NEWGEN (then nobody can tell whose commit it was), is reported as [`Event::Lost`], for the
//! daemon to read back rather than trust the stream. Subscribing has a price: the kernel builds
//! notifications only when someone listens, inside the commit, so a subscribed namespace commits
//! a 100k-element set in about 1.6 times the time. [`Monitor`] is the blocking driver, meant for
//! a dedicated thread.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use kube_nft_compiler::ir::Family;

use super::decode::{Attrs, NFTA_GEN_ID, NFT_MSG_NEWGEN};
use super::socket::{self, Received, Socket, Subscription};
use super::sys::*;

/// The receive buffer the monitor asks for (the kernel doubles it for its bookkeeping). It is
/// charged only for what is queued. A commit announces each set element in a message of its
/// own, in one burst at the end of the commit: 100k IPv4 elements are 6.4 MB in 1,726
/// datagrams, which an 8 MiB buffer already held with nobody reading; this one holds several
/// such commits.
pub const RECEIVE_BUFFER: usize = 32 << 20;

/// After an overflow, how long the queue must stay empty before the monitor asks the kernel
/// which generation it is at: the NEWGEN of the commit that overflowed the queue may still be
/// on its way (the kernel bumps the generation before it sends the notifications).
const SETTLE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// What a commit did

/// Who committed a transaction, as its NEWGEN tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committer {
    /// The netlink port id of the socket that sent the batch (the NEWGEN's `nlmsg_pid`).
    pub port_id: u32,
    /// `NFTA_GEN_PROC_PID`: the id of the committing thread (`task_pid_nr(current)`: the
    /// thread, not the process, and numbered in the initial pid namespace).
    pub pid: Option<u32>,
    /// `NFTA_GEN_PROC_NAME`: that thread's name (`comm`, at most 15 bytes), e.g. `nft`.
    pub name: Option<String>,
}

impl fmt::Display for Committer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, self.pid) {
            (Some(name), Some(pid)) => write!(f, "{name} (pid {pid})"),
            (None, Some(pid)) => write!(f, "pid {pid}"),
            (Some(name), None) => write!(f, "{name}"),
            (None, None) => write!(f, "netlink port {}", self.port_id),
        }
    }
}

/// How a transaction changed one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// The table was deleted (`nft delete table`, `nft flush ruleset`, a firewall reload that
    /// only cleans up).
    Deleted,
    /// The table was deleted and created again (`nft -f` of a script that starts with `delete
    /// table`, a firewall reload).
    Replaced,
    /// Only removals: rules, chains, sets or elements were deleted (`nft flush table`,
    /// `nft flush chain`, `nft delete rule`).
    Flushed,
    /// Anything else: something was added or changed (`nft add rule`, `nft add element`, …).
    Edited,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Deleted => "deleted",
            ChangeKind::Replaced => "replaced",
            ChangeKind::Flushed => "flushed",
            ChangeKind::Edited => "edited",
        }
    }
}

/// What one transaction did to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableChange {
    /// The table's family as the kernel numbers it (`NFPROTO_*`).
    pub nfproto: u8,
    /// The table's name.
    pub name: String,
    /// How it changed.
    pub kind: ChangeKind,
    /// Notifications of added or updated objects: tables, chains, rules, sets, set elements
    /// (the kernel announces each element in a message of its own), objects, flowtables.
    pub added: u32,
    /// Notifications of removed objects.
    pub removed: u32,
}

impl TableChange {
    /// The family, for `ip` and `ip6` tables.
    pub fn family(&self) -> Option<Family> {
        match self.nfproto {
            NFPROTO_IPV4 => Some(Family::Ip),
            NFPROTO_IPV6 => Some(Family::Ip6),
            _ => None,
        }
    }

    fn is_one_of(&self, tables: &[(Family, &str)]) -> bool {
        tables
            .iter()
            .any(|(family, name)| self.family() == Some(*family) && self.name == *name)
    }
}

impl fmt::Display for TableChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = match self.family() {
            Some(family) => family.keyword().to_owned(),
            None => format!("family {}", self.nfproto),
        };
        write!(f, "{family} {} {}", self.name, self.kind.as_str())
    }
}

/// One committed transaction, closed by its NEWGEN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The generation the commit produced.
    pub generation: u32,
    /// Who sent it.
    pub committer: Committer,
    /// Every table it touched, in order of family and name.
    pub tables: Vec<TableChange>,
    /// `false` when some of its notifications may have been lost to a queue overflow: then
    /// `tables` may miss tables it touched.
    pub complete: bool,
}

/// Why the monitor cannot vouch that it saw every commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Commits were never announced to us: the NEWGENs after generation `after` up to `seen`
    /// (exclusive when `seen` was announced, inclusive when it was only read back with GETGEN)
    /// were dropped in a receive queue overflow.
    Missed {
        /// The last generation seen before the loss (`None` if none was known yet).
        after: Option<u32>,
        /// The first generation seen after it.
        seen: u32,
    },
    /// A notification could not be parsed.
    Malformed(String),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Missed {
                after: Some(after),
                seen,
            } => write!(
                f,
                "nf_tables notifications lost between generations {after} and {seen} \
                 (receive queue overflow)"
            ),
            Lost::Missed { after: None, seen } => write!(
                f,
                "nf_tables notifications lost before generation {seen} (receive queue overflow)"
            ),
            Lost::Malformed(why) => write!(f, "malformed nf_tables notification: {why}"),
        }
    }
}

/// What the [`Tracker`] makes of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A transaction was committed.
    Commit(Commit),
    /// Notifications were lost.
    Lost(Lost),
}

// ---------------------------------------------------------------------------------------------
// The sans-IO tracker

/// Changes to one table seen so far in the transaction in progress.
#[derive(Clone, Debug, Default)]
struct Pending {
    /// The table was deleted, and (`Some(true)`) created again afterwards.
    deleted: Option<bool>,
    added: u32,
    removed: u32,
}

/// After an overflow: notifications may be missing until the first NEWGEN that arrives after
/// the queue was seen empty (the kernel resumes delivery only once it is empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suspect {
    No,
    Overrun { drained: bool },
}

/// The notification stream as committed transactions (sans-IO). Feed it every datagram in
/// order ([`Tracker::datagram`]), and tell it when the queue overflowed
/// ([`Tracker::overrun`]), when it was read empty ([`Tracker::drained`]), and, when
/// [`Tracker::needs_check`] asks, which generation the kernel is at ([`Tracker::checked`]).
#[derive(Clone, Debug)]
pub struct Tracker {
    /// The last generation announced (or read back).
    last: Option<u32>,
    /// Tables touched by the transaction in progress, by (`NFPROTO_*`, name).
    pending: BTreeMap<(u8, String), Pending>,
    /// No notification of the transaction in progress was lost.
    pending_complete: bool,
    suspect: Suspect,
}

/// The generation after `generation`: the kernel skips 0 when it wraps.
fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

/// Whether generation `a` is later than `b`, in wrapping order.
fn later(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// One nf_tables notification.
struct Notification<'a> {
    msg_type: u16,
    port: u32,
    nfproto: u8,
    attrs: &'a [u8],
}

/// Splits a datagram into its nf_tables notifications; other netlink messages are skipped.
fn notifications(datagram: &[u8]) -> Result<Vec<Notification<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let u32_at =
            |at: usize| u32::from_ne_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let len = u32_at(0) as usize;
        if len < 16 || len > rest.len() {
            return Err(format!(
                "message length {len} with {} bytes left",
                rest.len()
            ));
        }
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        if ty >> 8 == NFNL_SUBSYS_NFTABLES {
            if len < 20 {
                return Err(format!("nf_tables message of {len} bytes"));
            }
            out.push(Notification {
                msg_type: ty & 0xff,
                port: u32_at(12),
                nfproto: rest[16],
                attrs: &rest[20..len],
            });
        }
        rest = &rest[len.div_ceil(4).saturating_mul(4).min(rest.len())..];
    }
    Ok(out)
}

/// What a notification type does to its table: `Some(true)` adds or changes, `Some(false)`
/// removes, `None` is not an object change.
fn adds(msg_type: u16) -> Option<bool> {
    match msg_type {
        NFT_MSG_NEWTABLE | NFT_MSG_NEWCHAIN | NFT_MSG_NEWRULE | NFT_MSG_NEWSET
        | NFT_MSG_NEWSETELEM | NFT_MSG_NEWOBJ | NFT_MSG_NEWFLOWTABLE => Some(true),
        NFT_MSG_DELTABLE | NFT_MSG_DELCHAIN | NFT_MSG_DELRULE | NFT_MSG_DELSET
        | NFT_MSG_DELSETELEM | NFT_MSG_DELOBJ | NFT_MSG_DELFLOWTABLE => Some(false),
        NFT_MSG_DESTROYTABLE..=NFT_MSG_DESTROYFLOWTABLE => Some(false),
        _ => None,
    }
}

impl Tracker {
    /// A tracker that knows the kernel was at generation `baseline` when the subscription
    /// started (from a GETGEN after joining the group), if known.
    pub fn new(baseline: Option<u32>) -> Tracker {
        Tracker {
            last: baseline,
            pending: BTreeMap::new(),
            pending_complete: true,
            suspect: Suspect::No,
        }
    }

    /// The last generation announced or read back.
    pub fn last_generation(&self) -> Option<u32> {
        self.last
    }

    /// Reads one datagram of notifications; appends what completed to `out`.
    pub fn datagram(&mut self, bytes: &[u8], out: &mut Vec<Record>) {
        let messages = match notifications(bytes) {
            Ok(messages) => messages,
            Err(why) => {
                self.malformed(why, out);
                return;
            }
        };
        for msg in messages {
            if let Err(why) = self.notification(&msg, out) {
                self.malformed(why, out);
            }
        }
    }

    /// The receive queue overflowed: notifications were dropped from an unknown point on.
    pub fn overrun(&mut self) {
        self.suspect = Suspect::Overrun { drained: false };
        self.pending_complete = false;
    }

    /// The receive queue was read empty (a read found nothing): the kernel delivers again.
    pub fn drained(&mut self) {
        if let Suspect::Overrun { .. } = self.suspect {
            self.suspect = Suspect::Overrun { drained: true };
        }
    }

    /// After an overflow, once the queue was read empty and stayed so: the caller should ask
    /// the kernel for its generation (GETGEN) and pass it to [`Tracker::checked`], because the
    /// overflow may have swallowed the last NEWGENs, which nothing else would reveal.
    pub fn needs_check(&self) -> bool {
        self.suspect == Suspect::Overrun { drained: true }
    }

    /// Whether an overflow is still being judged: the caller should not sleep longer than a
    /// moment between reads, so that [`Tracker::needs_check`] comes true in time.
    pub fn unsettled(&self) -> bool {
        self.suspect != Suspect::No
    }

    /// Whether generation `generation` was announced (or is older than one that was).
    pub fn has_seen(&self, generation: u32) -> bool {
        self.last
            .is_some_and(|last| last == generation || later(last, generation))
    }

    /// The kernel is at generation `generation` (GETGEN, asked after [`Tracker::needs_check`]):
    /// any commit up to it that was not announced is reported lost, and the overflow is over.
    pub fn checked(&mut self, generation: u32, out: &mut Vec<Record>) {
        if !self.has_seen(generation) {
            out.push(Record::Lost(Lost::Missed {
                after: self.last,
                seen: generation,
            }));
            self.last = Some(generation);
        }
        self.suspect = Suspect::No;
        self.pending_complete = true;
    }

    fn malformed(&mut self, why: String, out: &mut Vec<Record>) {
        // The notification's table is unknown, so the transaction it belongs to is incomplete.
        self.pending_complete = false;
        out.push(Record::Lost(Lost::Malformed(why)));
    }

    fn notification(
        &mut self,
        msg: &Notification<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), String> {
        if msg.msg_type == NFT_MSG_NEWGEN {
            return self.generation(msg, out);
        }
        let Some(adds) = adds(msg.msg_type) else {
            // TRACE goes to another group; anything else is not an object change.
            return Ok(());
        };
        let attrs = Attrs::parse(msg.attrs).map_err(|e| e.to_string())?;
        // Attribute 1 is the table's name in every object message (NFTA_TABLE_NAME,
        // NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE,
        // NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
        let name = attrs
            .get(1)
            .ok_or_else(|| format!("message type {} without a table name", msg.msg_type))?;
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        let pending = self
            .pending
            .entry((msg.nfproto, String::from_utf8_lossy(name).into_owned()))
            .or_default();
        match (msg.msg_type, adds) {
            (NFT_MSG_NEWTABLE, _) if pending.deleted.is_some() => pending.deleted = Some(true),
            (NFT_MSG_DELTABLE | NFT_MSG_DESTROYTABLE, _) => pending.deleted = Some(false),
            (_, true) => pending.added += 1,
            (_, false) => pending.removed += 1,
        }
        Ok(())
    }

    fn generation(&mut self, msg: &Notification<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let attrs = Attrs::parse(msg.attrs).map_err(|e| e.to_string())?;
        let generation = attrs
            .be32(NFTA_GEN_ID)
            .map_err(|e| e.to_string())?
            .ok_or("NEWGEN without NFTA_GEN_ID")?;
        let pid = attrs.be32(NFTA_GEN_PROC_PID).map_err(|e| e.to_string())?;
        let name = attrs.get(NFTA_GEN_PROC_NAME).map(|v| {
            String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
        });

        match self.last {
            Some(last) if later(generation, next_generation(last)) => {
                out.push(Record::Lost(Lost::Missed {
                    after: Some(last),
                    seen: generation,
                }));
            }
            // Without a known generation, the NEWGENs lost in an overflow cannot be counted.
            None if self.suspect != Suspect::No => {
                out.push(Record::Lost(Lost::Missed {
                    after: None,
                    seen: generation,
                }));
            }
            _ => {}
        }
        if self.last.is_none_or(|last| later(generation, last)) {
            self.last = Some(generation);
        }

        let tables = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|((nfproto, name), p)| TableChange {
                nfproto,
                name,
                kind: match p.deleted {
                    Some(false) => ChangeKind::Deleted,
                    Some(true) => ChangeKind::Replaced,
                    None if p.added == 0 && p.removed > 0 => ChangeKind::Flushed,
                    None => ChangeKind::Edited,
                },
                added: p.added,
                removed: p.removed,
            })
            .collect();
        out.push(Record::Commit(Commit {
            generation,
            committer: Committer {
                port_id: msg.port,
                pid,
                name,
            },
            tables,
            complete: self.pending_complete,
        }));
        // This NEWGEN arrived after the queue was read empty, so whatever the overflow cut
        // short ends with it: transactions do not interleave.
        if self.suspect == (Suspect::Overrun { drained: true }) {
            self.suspect = Suspect::No;
        }
        self.pending_complete = self.suspect == Suspect::No;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The blocking monitor

/// A change to our tables that this process did not make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignChange {
    /// The generation the commit produced.
    pub generation: u32,
    /// Who committed it.
    pub committer: Committer,
    /// Which of our tables it touched and how. Empty only when `complete` is `false`.
    pub tables: Vec<TableChange>,
    /// `false` when notifications of this commit were lost: it may have touched our tables
    /// without `tables` showing it, so it is reported whatever it shows.
    pub complete: bool,
}

impl fmt::Display for ForeignChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changed the ruleset (generation {})",
            self.committer, self.generation
        )?;
        for (i, table) in self.tables.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{table}")?;
        }
        if !self.complete {
            f.write_str(" (notifications lost; it may have touched more)")?;
        }
        Ok(())
    }
}

/// What [`Monitor::next_foreign_change`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Someone else changed our tables.
    Foreign(ForeignChange),
    /// Notifications were lost: read the tables back instead of trusting the stream.
    Lost(Lost),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Foreign(change) => change.fmt(f),
            Event::Lost(lost) => lost.fmt(f),
        }
    }
}

/// Counts of what a [`Monitor`] has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commits sent by this process, skipped.
    pub own: u64,
    /// Foreign commits that touched none of the watched tables, skipped.
    pub ignored: u64,
    /// Foreign commits reported.
    pub foreign: u64,
    /// Losses reported.
    pub lost: u64,
}

/// The names of our tables with `dispatch_tables` dispatch tables (`--dispatch-tables`): the
/// main table and `kube-nft-dispatch-1` on.
pub fn our_table_names(dispatch_tables: u16) -> Vec<String> {
    (0..dispatch_tables.max(1))
        .map(kube_nft_compiler::ir::names::dispatch_table)
        .collect()
}

/// Each of `names` in both families: what [`Monitor::next_foreign_change`] watches.
pub fn in_both_families(names: &[String]) -> Vec<(Family, &str)> {
    [Family::Ip, Family::Ip6]
        .into_iter()
        .flat_map(|f| names.iter().map(move |n| (f, n.as_str())))
        .collect()
}

/// A subscription to nf_tables notifications in the network namespace it was opened in,
/// reporting only what matters to the daemon: foreign changes to our tables, and lost
/// notifications.
#[derive(Debug)]
pub struct Monitor {
    subscription: Subscription,
    /// For GETGEN, opened with the subscription so that it lives in the same namespace.
    control: Socket,
    tracker: Tracker,
    records: VecDeque<Record>,
    buf: Vec<u8>,
    /// Since when the queue has been empty, if it is.
    idle_since: Option<Instant>,
    /// After an overflow: the generation GETGEN reported, still to be announced, and until
    /// when to wait for its NEWGEN.
    awaiting: Option<(u32, Instant)>,
    stats: Stats,
}

impl Monitor {
    /// Subscribes in the calling thread's network namespace with a [`RECEIVE_BUFFER`]-byte
    /// receive buffer, then reads the current generation.
    pub fn open() -> Result<Monitor, socket::Error> {
        Monitor::with_receive_buffer(RECEIVE_BUFFER)
    }

    /// [`Monitor::open`] with another receive buffer size (tests provoke overflows with a
    /// small one).
    pub fn with_receive_buffer(bytes: usize) -> Result<Monitor, socket::Error> {
        let subscription = Subscription::open(bytes)?;
        let mut control = Socket::open()?;
        // Joined first, then asked: a commit in between is announced to us and is older than
        // or equal to the baseline, which the tracker accepts.
        let baseline = control.get_gen()?;
        Ok(Monitor {
            subscription,
            control,
            tracker: Tracker::new(Some(baseline)),
            records: VecDeque::new(),
            buf: Vec::new(),
            idle_since: None,
            awaiting: None,
            stats: Stats::default(),
        })
    }

    /// What this monitor has seen so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The last generation announced (or read back).
    pub fn generation(&self) -> Option<u32> {
        self.tracker.last_generation()
    }

    /// The receive buffer the kernel granted (see [`Subscription::receive_buffer`]).
    pub fn receive_buffer(&self) -> Result<usize, socket::Error> {
        self.subscription.receive_buffer()
    }

    /// Blocks up to `timeout` for the next committed transaction that touched one of `tables`
    /// (family, name) and was not sent by this process, or for a loss of notifications.
    /// `Ok(None)` when the timeout passed without either. Commits by this process (through
    /// [`Socket::transact`], on any thread) are recognised by the port id of their socket.
    pub fn next_foreign_change(
        &mut self,
        tables: &[(Family, &str)],
        timeout: Duration,
    ) -> Result<Option<Event>, socket::Error> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(record) = self.records.pop_front() {
                if let Some(event) = self.judge(record, tables) {
                    return Ok(Some(event));
                }
            }
            let now = Instant::now();
            if self.settle(now)? {
                continue;
            }
            if now >= deadline {
                return Ok(None);
            }
            // While an overflow is being judged, wake up in time to settle it.
            let mut wait = deadline - now;
            if self.tracker.unsettled() {
                wait = wait.min(SETTLE);
            }
            let received = self.subscription.receive(&mut self.buf, wait)?;
            self.receive(received);
        }
    }

    fn receive(&mut self, received: Received) {
        match received {
            Received::Datagram => {
                self.idle_since = None;
                let mut out = Vec::new();
                self.tracker.datagram(&self.buf, &mut out);
                self.records.extend(out);
            }
            Received::Overrun => {
                self.idle_since = None;
                self.awaiting = None;
                self.tracker.overrun();
            }
            Received::Idle => {
                self.tracker.drained();
                self.idle_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Settles an overflow once the queue has stayed empty for [`SETTLE`]: asks the kernel's
    /// generation and waits (once more) for NEWGENs up to it. Returns whether it produced
    /// records.
    fn settle(&mut self, now: Instant) -> Result<bool, socket::Error> {
        if !self.tracker.needs_check() {
            self.awaiting = None;
            return Ok(false);
        }
        if self
            .idle_since
            .is_none_or(|since| now.duration_since(since) < SETTLE)
        {
            return Ok(false);
        }
        let mut out = Vec::new();
        match self.awaiting {
            Some((generation, until)) if now >= until || self.tracker.has_seen(generation) => {
                self.awaiting = None;
                self.tracker.checked(generation, &mut out);
            }
            Some(_) => {}
            None => {
                let generation = self.control.get_gen()?;
                if self.tracker.has_seen(generation) {
                    self.tracker.checked(generation, &mut out);
                } else {
                    self.awaiting = Some((generation, now + SETTLE));
                }
            }
        }
        let produced = !out.is_empty();
        self.records.extend(out);
        Ok(produced)
    }

    fn judge(&mut self, record: Record, tables: &[(Family, &str)]) -> Option<Event> {
        match record {
            Record::Lost(lost) => {
                self.stats.lost += 1;
                Some(Event::Lost(lost))
            }
            Record::Commit(commit) => {
                let ours =
                    socket::take_own_commit(self.subscription.netns(), commit.committer.port_id);
                if ours {
                    self.stats.own += 1;
                    return None;
                }
                let touched: Vec<TableChange> = commit
                    .tables
                    .into_iter()
                    .filter(|t| t.is_one_of(tables))
                    .collect();
                if touched.is_empty() && commit.complete {
                    self.stats.ignored += 1;
                    return None;
                }
                self.stats.foreign += 1;
                Some(Event::Foreign(ForeignChange {
                    generation: commit.generation,
                    committer: commit.committer,
                    tables: touched,
                    complete: commit.complete,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded fixture of `testdata/netlink/monitor/`.
    fn fixture(name: &str) -> Vec<u8> {
        crate::netlink::fixture_bytes("monitor", name)
    }

    fn records(tracker: &mut Tracker, bytes: &[u8]) -> Vec<Record> {
        let mut out = Vec::new();
        tracker.datagram(bytes, &mut out);
        out
    }

    fn commit(record: &Record) -> &Commit {
        match record {
            Record::Commit(commit) => commit,
            Record::Lost(lost) => panic!("expected a commit, got {lost:?}"),
        }
    }

    /// (family, table, kind, added, removed) of each table a commit touched.
    fn summary(commit: &Commit) -> Vec<(u8, &str, ChangeKind, u32, u32)> {
        commit
            .tables
            .iter()
            .map(|t| (t.nfproto, t.name.as_str(), t.kind, t.added, t.removed))
            .collect()
    }

    const IP: u8 = NFPROTO_IPV4;
    const IP6: u8 = NFPROTO_IPV6;

    // Recorded kernel notifications (little-endian hosts only: attribute headers are in host
    // byte order).

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_add_rule_is_one_edit_by_nft() {
        let mut tracker = Tracker::new(None);
        let out = records(&mut tracker, &fixture("add-rule"));
        assert_eq!(out.len(), 1, "{out:?}");
        let commit = commit(&out[0]);
        assert_eq!(
            commit.committer,
            Committer {
                port_id: 1,
                pid: Some(0),
                name: Some("nft".into())
            }
        );
        assert_eq!(commit.generation, 1);
        assert!(commit.complete);
        assert_eq!(
            summary(commit),
            [(IP, "kube-nft", ChangeKind::Edited, 1, 0)]
        );
        assert_eq!(tracker.last_generation(), Some(1));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_element_additions_count_each_element() {
        // The kernel announces each element in a message of its own.
        let out = records(&mut Tracker::new(None), &fixture("add-element"));
        assert_eq!(
            summary(commit(&out[0])),
            [(IP, "kube-nft", ChangeKind::Edited, 2, 0)]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_flush_table_only_removes() {
        let out = records(&mut Tracker::new(None), &fixture("flush-table"));
        assert_eq!(
            summary(commit(&out[0])),
            [(IP, "kube-nft", ChangeKind::Flushed, 0, 2)]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_delete_table_deletes_it() {
        // DELRULE, DELCHAIN, DELTABLE, then NEWGEN.
        let out = records(&mut Tracker::new(None), &fixture("delete-table"));
        assert_eq!(
            summary(commit(&out[0])),
            [(IP, "kube-nft", ChangeKind::Deleted, 0, 2)]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_flush_ruleset_deletes_every_table() {
        let out = records(&mut Tracker::new(None), &fixture("flush-ruleset"));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            summary(commit(&out[0])),
            [
                (IP, "kube-nft", ChangeKind::Deleted, 0, 1),
                (IP, "other", ChangeKind::Deleted, 0, 0),
                (IP6, "kube-nft", ChangeKind::Deleted, 0, 0),
            ]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_commits_are_told_apart_and_filtered_by_family_and_name() {
        let out = records(
            &mut Tracker::new(Some(0)),
            &fixture("other-table-then-ours"),
        );
        let commits: Vec<&Commit> = out.iter().map(commit).collect();
        assert_eq!(
            commits
                .iter()
                .map(|c| (c.generation, c.committer.port_id))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 2), (3, 3)]
        );
        let ours = [(Family::Ip, "kube-nft"), (Family::Ip6, "kube-nft")];
        let touched: Vec<Vec<String>> = commits
            .iter()
            .map(|c| {
                c.tables
                    .iter()
                    .filter(|t| t.is_one_of(&ours))
                    .map(ToString::to_string)
                    .collect()
            })
            .collect();
        // `ip other` and `inet kube-nft` are not ours.
        let none: Vec<String> = Vec::new();
        assert_eq!(
            touched,
            [none.clone(), none, vec!["ip kube-nft edited".to_owned()]]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn every_recorded_fixture_decodes_without_loss() {
        for name in [
            "add-rule",
            "add-element",
            "flush-table",
            "delete-table",
            "flush-ruleset",
            "other-table-then-ours",
        ] {
            let bytes = fixture(name);
            // Byte by byte is not how datagrams come, but message by message is: the fixture
            // split at every message boundary decodes the same as in one piece.
            let mut whole = Tracker::new(Some(0));
            let expected = records(&mut whole, &bytes);
            let mut split = Tracker::new(Some(0));
            let mut got = Vec::new();
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
                let len = len.div_ceil(4) * 4;
                split.datagram(&rest[..len], &mut got);
                rest = &rest[len..];
            }
            assert_eq!(got, expected, "{name}");
            assert!(
                expected
                    .iter()
                    .all(|r| matches!(r, Record::Commit(c) if c.complete)),
                "{name}: {expected:?}"
            );
        }
    }

    // Synthetic streams, for what a kernel does not do on demand.

    fn message(msg_type: u16, nfproto: u8, port: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (ty, value) in attrs {
            body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&ty.to_ne_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((20 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&port.to_ne_bytes());
        msg.extend_from_slice(&[nfproto, 0, 0, 0]);
        msg.extend_from_slice(&body);
        msg
    }

    fn object(msg_type: u16, nfproto: u8, table: &str) -> Vec<u8> {
        let name = format!("{table}\0");
        message(msg_type, nfproto, 7, &[(1, name.as_bytes())])
    }

    fn newgen(generation: u32, port: u32) -> Vec<u8> {
        message(
            NFT_MSG_NEWGEN,
            0,
            port,
            &[
                (NFTA_GEN_ID, &generation.to_be_bytes()),
                (NFTA_GEN_PROC_PID, &4242u32.to_be_bytes()),
                (NFTA_GEN_PROC_NAME, b"iptables-nft\0"),
            ],
        )
    }

    fn generations(out: &[Record]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Record::Commit(c) if c.complete => format!("commit {}", c.generation),
                Record::Commit(c) => format!("incomplete commit {}", c.generation),
                Record::Lost(Lost::Missed { after, seen }) => {
                    format!("lost after {after:?} before {seen}")
                }
                Record::Lost(Lost::Malformed(_)) => "malformed".to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_table_deleted_and_created_again_is_replaced() {
        let mut bytes = object(NFT_MSG_NEWTABLE, IP, "t");
        bytes.extend(object(NFT_MSG_DELTABLE, IP, "t"));
        bytes.extend(object(NFT_MSG_NEWTABLE, IP, "t"));
        bytes.extend(object(NFT_MSG_NEWCHAIN, IP, "t"));
        bytes.extend(object(NFT_MSG_DESTROYTABLE, IP6, "t"));
        bytes.extend(object(NFT_MSG_TRACE, IP6, "ignored"));
        bytes.extend(newgen(5, 9));
        let out = records(&mut Tracker::new(Some(4)), &bytes);
        let commit = commit(&out[0]);
        assert_eq!(
            summary(commit),
            [
                (IP, "t", ChangeKind::Replaced, 2, 0),
                (IP6, "t", ChangeKind::Deleted, 0, 0)
            ]
        );
        assert_eq!(commit.committer.to_string(), "iptables-nft (pid 4242)");
    }

    #[test]
    fn missing_generations_are_reported() {
        let mut tracker = Tracker::new(Some(10));
        let mut bytes = newgen(11, 1);
        bytes.extend(newgen(13, 1));
        bytes.extend(newgen(14, 1));
        assert_eq!(
            generations(&records(&mut tracker, &bytes)),
            [
                "commit 11",
                "lost after Some(11) before 13",
                "commit 13",
                "commit 14"
            ]
        );
    }

    #[test]
    fn generations_wrap_past_zero() {
        let mut tracker = Tracker::new(Some(u32::MAX - 1));
        let mut bytes = newgen(u32::MAX, 1);
        bytes.extend(newgen(1, 1));
        bytes.extend(newgen(2, 1));
        assert_eq!(
            generations(&records(&mut tracker, &bytes)),
            [
                format!("commit {}", u32::MAX),
                "commit 1".to_owned(),
                "commit 2".to_owned()
            ]
        );
        assert!(tracker.has_seen(u32::MAX) && tracker.has_seen(2) && !tracker.has_seen(3));
    }

    #[test]
    fn commits_from_before_the_baseline_are_not_gaps() {
        // Joined at 10 but GETGEN answered 12: 11 and 12 arrive after the baseline.
        let mut tracker = Tracker::new(Some(12));
        let mut bytes = newgen(11, 1);
        bytes.extend(newgen(12, 1));
        bytes.extend(newgen(13, 1));
        assert_eq!(
            generations(&records(&mut tracker, &bytes)),
            ["commit 11", "commit 12", "commit 13"]
        );
        assert_eq!(tracker.last_generation(), Some(13));
    }

    #[test]
    fn an_overrun_marks_commits_incomplete_until_one_arrives_after_the_queue_drained() {
        let mut tracker = Tracker::new(Some(1));
        // Part of commit 2 was read, then the queue overflowed.
        let first = object(NFT_MSG_NEWSETELEM, IP, "kube-nft");
        assert!(records(&mut tracker, &first).is_empty());
        tracker.overrun();
        assert!(tracker.unsettled() && !tracker.needs_check());
        // What was still queued: the rest of commit 2 and all of commit 3.
        let mut queued = object(NFT_MSG_NEWSETELEM, IP, "kube-nft");
        queued.extend(newgen(2, 1));
        queued.extend(object(NFT_MSG_NEWRULE, IP, "other"));
        queued.extend(newgen(3, 2));
        let out = records(&mut tracker, &queued);
        assert_eq!(
            generations(&out),
            ["incomplete commit 2", "incomplete commit 3"]
        );
        // Read empty: the kernel delivers again, starting wherever it resumed.
        tracker.drained();
        assert!(tracker.needs_check());
        let mut after = object(NFT_MSG_NEWRULE, IP, "other");
        after.extend(newgen(4, 3));
        after.extend(newgen(5, 3));
        assert_eq!(
            generations(&records(&mut tracker, &after)),
            ["incomplete commit 4", "commit 5"]
        );
        assert!(!tracker.unsettled());
    }

    #[test]
    fn an_overrun_that_swallowed_the_last_newgen_is_found_by_the_check() {
        let mut tracker = Tracker::new(Some(1));
        assert!(records(&mut tracker, &newgen(2, 1))
            .iter()
            .all(|r| matches!(r, Record::Commit(c) if c.complete)));
        tracker.overrun();
        tracker.drained();
        assert!(tracker.needs_check());
        // The kernel is at 3, which was never announced.
        assert!(!tracker.has_seen(3));
        let mut out = Vec::new();
        tracker.checked(3, &mut out);
        assert_eq!(generations(&out), ["lost after Some(2) before 3"]);
        assert!(!tracker.unsettled());
        // And back to normal.
        assert_eq!(
            generations(&records(&mut tracker, &newgen(4, 1))),
            ["commit 4"]
        );
    }

    #[test]
    fn an_overrun_with_every_newgen_seen_settles_quietly() {
        let mut tracker = Tracker::new(Some(1));
        tracker.overrun();
        let out = records(&mut tracker, &newgen(2, 1));
        assert_eq!(generations(&out), ["incomplete commit 2"]);
        tracker.drained();
        let mut out = Vec::new();
        tracker.checked(2, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            generations(&records(&mut tracker, &newgen(3, 1))),
            ["commit 3"]
        );
    }

    #[test]
    fn an_overrun_without_a_known_generation_is_a_loss() {
        let mut tracker = Tracker::new(None);
        tracker.overrun();
        assert_eq!(
            generations(&records(&mut tracker, &newgen(7, 1))),
            ["lost after None before 7", "incomplete commit 7"]
        );
    }

    #[test]
    fn malformed_notifications_are_losses_not_panics() {
        let mut tracker = Tracker::new(Some(1));
        // A length beyond the datagram.
        let mut bad = newgen(2, 1);
        bad[0] = 0xff;
        assert_eq!(generations(&records(&mut tracker, &bad)), ["malformed"]);
        // An object without its table name, then a NEWGEN without its id.
        let mut bytes = message(NFT_MSG_NEWRULE, IP, 1, &[(2, b"chain\0")]);
        bytes.extend(message(NFT_MSG_NEWGEN, 0, 1, &[]));
        bytes.extend(newgen(2, 1));
        assert_eq!(
            generations(&records(&mut tracker, &bytes)),
            ["malformed", "malformed", "incomplete commit 2"]
        );
        // Truncated attributes and messages shorter than their headers.
        for len in 0..bytes.len() {
            let mut tracker = Tracker::new(Some(1));
            records(&mut tracker, &bytes[..len]);
        }
        let mut short = newgen(3, 1);
        short[0] = 16;
        assert_eq!(generations(&records(&mut tracker, &short)), ["malformed"]);
    }

    #[test]
    fn a_monitor_can_move_to_its_own_thread() {
        fn send<T: Send>() {}
        send::<Monitor>();
    }

    #[test]
    fn foreign_changes_read_well() {
        let change = ForeignChange {
            generation: 8,
            committer: Committer {
                port_id: 3,
                pid: Some(77),
                name: Some("nft".into()),
            },
            tables: vec![TableChange {
                nfproto: IP,
                name: "kube-nft".into(),
                kind: ChangeKind::Deleted,
                added: 0,
                removed: 3,
            }],
            complete: true,
        };
        assert_eq!(
            Event::Foreign(change.clone()).to_string(),
            "nft (pid 77) changed the ruleset (generation 8): ip kube-nft deleted"
        );
        let blind = ForeignChange {
            tables: Vec::new(),
            complete: false,
            ..change
        };
        assert_eq!(
            blind.to_string(),
            "nft (pid 77) changed the ruleset (generation 8) (notifications lost; it may have \
             touched more)"
        );
        assert_eq!(
            Event::Lost(Lost::Missed {
                after: Some(4),
                seen: 6
            })
            .to_string(),
            "nf_tables notifications lost between generations 4 and 6 (receive queue overflow)"
        );
    }
}
