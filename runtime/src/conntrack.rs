//! The stale-conntrack reconciler: compares the kernel's conntrack table with what the ruleset does
//! now and deletes the UDP and SCTP entries that would send a flow where the ruleset no longer
//! would (the judgement is the compiler's, [`Destinations::judge`]), so a client that keeps its
//! source port (a DNS resolver, a statsd or syslog sender) follows its Service instead of
//! blackholing on a DNAT to an endpoint that is gone. [`reconcile`] is one pass: per family and
//! protocol that has a frontend, one dump filtered by the kernel (family and protocol; the same
//! test is repeated in user space, for kernels that ignore the filter, and a kernel that refuses it
//! gets an unfiltered dump), each entry judged as it is decoded and only the stale ones kept, then
//! deletes by exact tuple, zone and id in batches of [`CONNTRACK_DELETE_BATCH`], each message
//! answered (`ENOENT`: gone already, fine). Nothing is flushed wholesale, TCP and entries that are
//! not to our frontends are never touched, and every wait is bounded. The kernel walks its whole
//! conntrack hash for each dump (shared by every network namespace, one bucket lock at a time;
//! ctnetlink never takes nf_tables' commit mutex, so syncs are not held up), so a pass costs a walk
//! per family and protocol (10-20 ms on the test machine, whatever the table holds) plus about 3 µs
//! per UDP entry, most of it the kernel's serialising, and 3-6 µs per delete: 0.3 s for 100k
//! entries, 0.6-0.9 s when all 100k are stale (release build, `runtime/tests/conntrack.rs`).
//! [`Reconciler`] runs passes on a thread of its own, after each sync that changed what it judges
//! (the daemon updates it after a delta that touched a Service with a UDP or SCTP port or with
//! affinity, and after full and repairing syncs; the latest state wins: updates that arrive
//! during a pass are coalesced into one next pass) and every period; it remembers frontends that
//! stopped being ours until a pass has seen them, and records kube-proxy's metrics. It never runs
//! on the sync thread.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kube_nft_compiler::conntrack::{AffinityMaps, Destinations, Stale, Verdict};
use kube_nft_compiler::ir::Family;
use tracing::{debug, error, info};

use crate::error_chain;
use crate::netlink::conntrack::{self as ct, DumpFilter, Entry};
use crate::netlink::socket::{self, ConntrackSocket, Errno, CONNTRACK_DELETE_BATCH};
use crate::serve::metrics::Metrics;

/// How long one dump may take before the pass gives up (the kernel always finishes; a dump of
/// 100k entries takes tens of milliseconds).
const DUMP_BOUND: Duration = Duration::from_secs(30);

/// How long listing the node's addresses may take.
const ADDRESSES_BOUND: Duration = Duration::from_secs(5);

/// After a failed pass, the next one comes this soon (doubling up to the period).
const RETRY_MIN: Duration = Duration::from_secs(1);

/// Failures of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening the conntrack socket, a dump or a delete failed.
    #[error("conntrack {what} ({family})")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// In which family.
        family: Family,
        /// Why.
        #[source]
        source: socket::Error,
    },
    /// The kernel sent a conntrack entry that does not decode.
    #[error("decode a conntrack entry ({family})")]
    Decode {
        /// In which family.
        family: Family,
        /// Why.
        #[source]
        source: crate::netlink::decode::Error,
    },
    /// Listing the node's addresses (for NodePort entries) failed.
    #[error("list the node's addresses")]
    Addresses(#[source] socket::Error),
    /// The ClientIP affinity sweep that follows the conntrack pass failed.
    #[error("sweep ClientIP affinity maps")]
    Affinity(#[source] crate::affinity::Error),
}

/// What one pass did in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyReport {
    /// The family.
    pub family: Family,
    /// Entries the kernel sent and that were judged (UDP and SCTP, after the kernel's filter).
    pub examined: usize,
    /// Entries deleted, by reason (in [`Stale::ALL`] order).
    pub deleted: [usize; 3],
    /// Stale entries that were gone by the time of their delete (`ENOENT`).
    pub gone: usize,
    /// Whether the kernel applied the protocol filter (`false`: it refused it and every
    /// entry of the family was dumped and filtered here).
    pub kernel_filtered: bool,
    /// Wall time of this family's dumps and deletes.
    pub duration: Duration,
}

impl FamilyReport {
    fn new(family: Family) -> FamilyReport {
        FamilyReport {
            family,
            examined: 0,
            deleted: [0; 3],
            gone: 0,
            kernel_filtered: true,
            duration: Duration::ZERO,
        }
    }

    /// Entries deleted, whatever the reason.
    pub fn total_deleted(&self) -> usize {
        self.deleted.iter().sum()
    }
}

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The families that had frontends, in order.
    pub families: Vec<FamilyReport>,
    /// Wall time of the pass.
    pub duration: Duration,
}

impl Report {
    /// Entries examined in every family.
    pub fn examined(&self) -> usize {
        self.families.iter().map(|f| f.examined).sum()
    }

    /// Entries deleted in every family.
    pub fn deleted(&self) -> usize {
        self.families.iter().map(FamilyReport::total_deleted).sum()
    }

    /// Entries deleted for `reason` in every family.
    pub fn deleted_for(&self, reason: Stale) -> usize {
        let i = Stale::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason");
        self.families.iter().map(|f| f.deleted[i]).sum()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "deleted {} stale UDP/SCTP conntrack entries",
            self.deleted()
        )?;
        let reasons: Vec<String> = Stale::ALL
            .iter()
            .map(|r| (r, self.deleted_for(*r)))
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        if !reasons.is_empty() {
            write!(f, " ({})", reasons.join(", "))?;
        }
        write!(f, " of {} examined in {:?}", self.examined(), self.duration)
    }
}

/// One pass in the calling thread's network namespace: dump the UDP and SCTP entries of each
/// family that has a frontend, delete the stale ones. `node_addresses` are the node's local
/// addresses (for NodePort entries; see [`socket::local_addresses`]). Nothing is dumped when
/// there is no frontend at all.
pub fn reconcile(
    destinations: &Destinations,
    node_addresses: &BTreeSet<IpAddr>,
) -> Result<Report, Error> {
    let started = Instant::now();
    let mut families = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let protocols = destinations.protocols(family);
        if protocols.is_empty() {
            continue;
        }
        let family_started = Instant::now();
        let mut report = FamilyReport::new(family);
        let netlink = |what, source| Error::Netlink {
            what,
            family,
            source,
        };
        let mut stale: Vec<(Entry, Stale)> = Vec::new();
        for proto in protocols {
            let filter = DumpFilter::proto(proto.number());
            let mut socket = ConntrackSocket::open().map_err(|e| netlink("open", e))?;
            let result = dump(
                &mut socket,
                family,
                &filter,
                &filter,
                destinations,
                node_addresses,
            );
            let (examined, found) = match result {
                // A kernel that refuses the filter: the whole family, filtered here.
                Err(DumpError::Netlink(socket::Error::Conntrack { errno, .. }))
                    if matches!(errno.0, libc::EOPNOTSUPP | libc::EINVAL) =>
                {
                    report.kernel_filtered = false;
                    let mut socket = ConntrackSocket::open().map_err(|e| netlink("open", e))?;
                    let family_only = DumpFilter::default();
                    dump(
                        &mut socket,
                        family,
                        &family_only,
                        &filter,
                        destinations,
                        node_addresses,
                    )
                }
                other => other,
            }
            .map_err(|e| e.in_family(family))?;
            report.examined += examined;
            stale.extend(found);
        }
        if !stale.is_empty() {
            let mut socket = ConntrackSocket::open().map_err(|e| netlink("open", e))?;
            for batch in stale.chunks(CONNTRACK_DELETE_BATCH) {
                let requests: Vec<Vec<u8>> =
                    batch.iter().map(|(e, _)| ct::delete_request(e)).collect();
                let answers = socket.delete(&requests).map_err(|e| netlink("delete", e))?;
                for ((entry, reason), answer) in batch.iter().zip(answers) {
                    match answer {
                        None => {
                            let i = Stale::ALL.iter().position(|r| r == reason).expect("reason");
                            report.deleted[i] += 1;
                            debug!(flow = %entry.flow, %reason, "deleted a stale conntrack entry");
                        }
                        Some(Errno(libc::ENOENT)) => report.gone += 1,
                        Some(errno) => {
                            return Err(netlink(
                                "delete",
                                socket::Error::Conntrack {
                                    what: "delete",
                                    errno,
                                },
                            ))
                        }
                    }
                }
            }
        }
        report.duration = family_started.elapsed();
        families.push(report);
    }
    Ok(Report {
        families,
        duration: started.elapsed(),
    })
}

/// [`reconcile`] with the node's addresses read from the kernel when a NodePort frontend needs
/// them.
pub fn reconcile_here(destinations: &Destinations) -> Result<Report, Error> {
    let addresses = if destinations.has_nodeports() {
        socket::local_addresses(Instant::now() + ADDRESSES_BOUND)
            .map_err(Error::Addresses)?
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    reconcile(destinations, &addresses)
}

/// Live DNATed connections, for `kube-nft show`: the entries of the conntrack table counted by
/// protocol, original destination (the Service address and port, or a NodePort on a local
/// address) and DNAT target (the reply source).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// `(IP protocol, original destination, DNAT target)` → counts.
    pub flows: std::collections::BTreeMap<(u8, std::net::SocketAddr, std::net::SocketAddr), Count>,
}

/// Connections of one [`Census`] key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Entries.
    pub conns: usize,
    /// Entries that never saw a reply (`IPS_SEEN_REPLY` clear): the backend got the first
    /// packet and has not answered (yet).
    pub unreplied: usize,
}

/// Counts the DNATed entries of the calling thread's namespace, both families, every protocol
/// (one unfiltered dump per family; a few microseconds per entry).
pub fn census() -> Result<Census, Error> {
    let mut out = Census::default();
    for family in [Family::Ip, Family::Ip6] {
        let netlink = |what, source| Error::Netlink {
            what,
            family,
            source,
        };
        let mut socket = ConntrackSocket::open().map_err(|e| netlink("open", e))?;
        let request = ct::dump_request(family, &DumpFilter::default());
        each_entry(&mut socket, &request, |entry| {
            let Some(target) = entry.flow.dnat_target() else {
                return;
            };
            let key = (entry.flow.proto, entry.flow.original.destination(), target);
            let count = out.flows.entry(key).or_default();
            count.conns += 1;
            if entry.status.0 & ct::Status::SEEN_REPLY == 0 {
                count.unreplied += 1;
            }
        })
        .map_err(|e| e.in_family(family))?;
    }
    Ok(out)
}

enum DumpError {
    Netlink(socket::Error),
    Decode(crate::netlink::decode::Error),
}

impl DumpError {
    /// The pass's error for a dump of `family`.
    fn in_family(self, family: Family) -> Error {
        match self {
            DumpError::Netlink(source) => Error::Netlink {
                what: "dump",
                family,
                source,
            },
            DumpError::Decode(source) => Error::Decode { family, source },
        }
    }
}

/// One dump, asking the kernel for `kernel` and keeping what passes `wanted`, judged as it
/// streams: how many entries were judged, and the stale ones.
fn dump(
    socket: &mut ConntrackSocket,
    family: Family,
    kernel: &DumpFilter,
    wanted: &DumpFilter,
    destinations: &Destinations,
    node_addresses: &BTreeSet<IpAddr>,
) -> Result<(usize, Vec<(Entry, Stale)>), DumpError> {
    let request = ct::dump_request(family, kernel);
    let mut stale = Vec::new();
    let mut examined = 0;
    each_entry(socket, &request, |entry| {
        // The kernel's filter again: a kernel that does not know it ignores it.
        if !wanted.matches(&entry) {
            return;
        }
        examined += 1;
        if let Verdict::Delete(reason) = destinations.judge(&entry.flow, node_addresses) {
            stale.push((entry, reason));
        }
    })?;
    Ok((examined, stale))
}

/// Runs one dump, handing each decoded entry to `f` as it streams; the first entry that does
/// not decode ends the dump's use (the rest is drained, not decoded) and is the error.
fn each_entry(
    socket: &mut ConntrackSocket,
    request: &[u8],
    mut f: impl FnMut(Entry),
) -> Result<(), DumpError> {
    let mut failure = None;
    socket
        .dump(request, Instant::now() + DUMP_BOUND, |bytes| {
            let new = (ct::NFNL_SUBSYS_CTNETLINK << 8) | ct::IPCTNL_MSG_CT_NEW;
            if failure.is_some() || ct::message_type(bytes) != Some(new) {
                return;
            }
            match ct::entry(bytes) {
                Ok(entry) => f(entry),
                Err(e) => failure = Some(e),
            }
        })
        .map_err(DumpError::Netlink)?;
    match failure {
        Some(e) => Err(DumpError::Decode(e)),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's reconciler thread

enum Command {
    Update(Destinations, AffinityMaps),
    Stop,
}

/// The reconciler thread of `kube-nft run`: a pass after each [`Reconciler::update`]
/// (coalesced: updates that arrive while a pass runs make one more pass, with the latest
/// state) and every `period`. It starts idle: nothing is reconciled before the first update,
/// that is before the first sync has programmed the ruleset. Frontends that leave the state
/// are kept as retired until a successful pass has seen them. Dropping it, or
/// [`Reconciler::stop`], ends the thread after the pass in progress.
#[derive(Debug)]
pub struct Reconciler {
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Reconciler {
    /// Starts the thread in the calling thread's network namespace (threads inherit it).
    pub fn spawn(period: Duration, metrics: Option<Metrics>) -> Reconciler {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("conntrack".into())
            .spawn(move || run(&rx, period, metrics.as_ref()))
            .expect("spawn the conntrack reconciler thread");
        Reconciler {
            tx,
            thread: Some(thread),
        }
    }

    /// The ruleset changed: reconcile against `destinations` and sweep `affinity` soon.
    pub fn update(&self, destinations: Destinations, affinity: AffinityMaps) {
        let _ = self.tx.send(Command::Update(destinations, affinity));
    }

    /// Stops the thread and waits for it (at most one pass).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The thread's loop. Every wait is bounded by the period (or the retry delay).
fn run(rx: &mpsc::Receiver<Command>, period: Duration, metrics: Option<&Metrics>) {
    let period = period.max(Duration::from_millis(100));
    let mut current: Option<(Destinations, AffinityMaps)> = None;
    // The affinity maps changed since the last successful sweep: a pass after a change sweeps
    // only those (a 50k-Service cluster has about a thousand maps, one dump each), the
    // periodic pass every map.
    let mut dirty = AffinityMaps::default();
    let mut changed = false;
    let mut due: Option<Instant> = None;
    let mut retry = RETRY_MIN;
    loop {
        let wait = due.map_or(period, |d| d.saturating_duration_since(Instant::now()));
        match rx.recv_timeout(wait) {
            Ok(Command::Update(next, affinity)) => {
                take(&mut current, &mut dirty, next, affinity);
                changed = true;
                // Coalesce whatever else is queued into the same pass.
                loop {
                    match rx.try_recv() {
                        Ok(Command::Update(next, affinity)) => {
                            take(&mut current, &mut dirty, next, affinity)
                        }
                        Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }
                due = Some(Instant::now());
            }
            Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let Some((destinations, affinity)) = current.as_mut() else {
            due = None;
            continue;
        };
        if due.is_some_and(|d| d > Instant::now()) {
            continue;
        }
        let pass = reconcile_here(destinations).and_then(|report| {
            let swept = if changed {
                crate::affinity::sweep(&affinity.only(&dirty))
            } else {
                crate::affinity::sweep(affinity)
            };
            Ok((report, swept.map_err(Error::Affinity)?))
        });
        match pass {
            Ok((report, swept)) => {
                dirty = AffinityMaps::default();
                changed = false;
                if swept.deleted > 0 {
                    info!(report = %swept, "swept ClientIP affinity");
                }
                destinations.forget_retired();
                retry = RETRY_MIN;
                due = Some(Instant::now() + period);
                if let Some(metrics) = metrics {
                    for family in &report.families {
                        let deleted = family.total_deleted();
                        metrics.observe_conntrack_reconcile(
                            family.family,
                            family.duration,
                            deleted,
                        );
                    }
                }
                if report.deleted() > 0 {
                    info!(%report, "reconciled conntrack");
                } else {
                    debug!(%report, "reconciled conntrack");
                }
            }
            Err(err) => {
                if let Some(metrics) = metrics {
                    metrics.conntrack_reconcile_failed();
                }
                error!(error = %error_chain(&err), retry = ?retry, "conntrack reconcile failed");
                due = Some(Instant::now() + retry);
                retry = (retry * 2).min(period);
            }
        }
    }
}

/// The latest state, remembering the frontends the previous ones had that it lacks, and
/// adding the affinity maps that changed to `dirty`.
fn take(
    current: &mut Option<(Destinations, AffinityMaps)>,
    dirty: &mut AffinityMaps,
    mut next: Destinations,
    affinity: AffinityMaps,
) {
    match current.as_ref() {
        Some((previous, before)) => {
            next.inherit(previous);
            dirty.extend(affinity.changed_since(before));
        }
        None => dirty.extend(affinity.clone()),
    }
    *current = Some((next, affinity));
}

#[cfg(test)]
mod tests {
    use super::*;

    use kube_nft_compiler::conntrack::{Address, Frontend, Targets};
    use kube_nft_compiler::graph::Backend;
    use kube_nft_compiler::ir::L4Proto;

    fn frontend(ip: &str) -> Frontend {
        Frontend {
            proto: L4Proto::Udp,
            address: Address::Ip(ip.parse().unwrap()),
            port: 53,
        }
    }

    fn state(ips: &[&str]) -> Destinations {
        let mut d = Destinations::default();
        for ip in ips {
            let endpoint = Backend {
                addr: "10.0.1.1".parse().unwrap(),
                port: 5353,
            };
            d.claim(frontend(ip), BTreeSet::from([endpoint]));
        }
        d
    }

    #[test]
    fn coalesced_updates_forget_nothing_before_a_pass() {
        let mut current = None;
        let mut dirty = AffinityMaps::default();
        let none = AffinityMaps::default;
        take(
            &mut current,
            &mut dirty,
            state(&["172.30.0.1", "172.30.0.2"]),
            none(),
        );
        // Two updates before the next pass: the first drops .1, the second drops .2 too.
        take(&mut current, &mut dirty, state(&["172.30.0.2"]), none());
        take(&mut current, &mut dirty, state(&["172.30.0.3"]), none());
        let d = &mut current.as_mut().unwrap().0;
        let retired: Vec<_> = d.retired().copied().collect();
        assert_eq!(retired, [frontend("172.30.0.1"), frontend("172.30.0.2")]);
        assert!(matches!(
            d.get(&frontend("172.30.0.3")),
            Some(Targets::Current(_))
        ));
        // A pass saw them: gone; the next update retires only what it drops itself.
        d.forget_retired();
        take(&mut current, &mut dirty, state(&[]), none());
        let d = &current.as_ref().unwrap().0;
        assert_eq!(
            d.retired().copied().collect::<Vec<_>>(),
            [frontend("172.30.0.3")]
        );
    }

    /// Affinity maps with the given endpoints each (IPv4 table).
    fn maps(maps: &[(&str, &[&str])]) -> AffinityMaps {
        use kube_nft_compiler::ir::{Chain, Expr, Rule, Stmt, Value};
        let mut out = AffinityMaps::default();
        for (name, endpoints) in maps {
            let mut chain = Chain {
                name: format!("service-{name}"),
                base: None,
                comment: None,
                rules: Vec::new(),
            };
            for endpoint in *endpoints {
                chain.rules.push(Rule::new(vec![Stmt::Update {
                    set: name.to_string(),
                    key: Expr::Saddr(Family::Ip),
                    data: Some(Value::Addr(endpoint.parse().unwrap())),
                }]));
            }
            out.add_chain(Family::Ip, "kube-nft", &chain);
        }
        out
    }

    #[test]
    fn a_pass_after_a_change_sweeps_only_the_maps_that_changed() {
        let mut current = None;
        let mut dirty = AffinityMaps::default();
        let first = maps(&[("a", &["10.0.1.1"]), ("b", &["10.0.1.2"])]);
        take(&mut current, &mut dirty, state(&[]), first.clone());
        assert_eq!(dirty, first, "the first state: every map");
        // The pass succeeded; then b loses its endpoint to another and c appears.
        dirty = AffinityMaps::default();
        let second = maps(&[
            ("a", &["10.0.1.1"]),
            ("b", &["10.0.1.3"]),
            ("c", &["10.0.1.4"]),
        ]);
        take(&mut current, &mut dirty, state(&[]), second.clone());
        let expected = maps(&[("b", &["10.0.1.3"]), ("c", &["10.0.1.4"])]);
        assert_eq!(dirty, expected);
        // Coalesced with a third state before the pass: b changes again, c goes.
        let third = maps(&[("a", &["10.0.1.1"]), ("b", &["10.0.1.5"])]);
        take(&mut current, &mut dirty, state(&[]), third.clone());
        // What the pass sweeps: the dirty maps that exist, with their latest endpoints.
        let swept = current.as_ref().unwrap().1.only(&dirty);
        assert_eq!(swept, maps(&[("b", &["10.0.1.5"])]));
    }

    #[test]
    fn a_report_says_what_was_deleted_and_why() {
        let mut v4 = FamilyReport::new(Family::Ip);
        v4.examined = 10;
        v4.deleted = [2, 0, 1];
        let mut v6 = FamilyReport::new(Family::Ip6);
        v6.examined = 5;
        v6.deleted = [1, 0, 0];
        let report = Report {
            families: vec![v4, v6],
            duration: Duration::from_millis(12),
        };
        assert_eq!(report.deleted(), 4);
        assert_eq!(report.deleted_for(Stale::EndpointGone), 3);
        assert_eq!(
            report.to_string(),
            "deleted 4 stale UDP/SCTP conntrack entries (3 endpoint gone, 1 never DNATed) \
             of 15 examined in 12ms"
        );
    }
}
