//! Programming the kernel: [`replace`] swaps each of our tables for its new content in one
//! nf_tables transaction, [`apply_plan`] sends an incremental change (a `plan::Transaction`,
//! computed by the compiler from the last committed ruleset and the new one), and [`cleanup`]
//! removes our tables. Each is a single batch, so the kernel either applies everything or
//! nothing, and packets never see a half-built table, with one exception: a cold start (the
//! kernel holds none of our tables) larger than [`COLD_START_COST`] operations is split into
//! bounded transactions by [`plan_transactions`], because the kernel holds the namespace's
//! nf_tables commit mutex for the whole of a transaction (seconds at 10k Services). The hooks go
//! last: the base chains and their rules are the final transaction, so until everything they
//! lead to is committed no packet enters our chains, and a failure midway leaves an inert,
//! unhooked table that the next sync completes. None of this touches any table other than
//! kube-nft's own (`ip kube-nft`, `ip6 kube-nft`). Deciding *what* changes is `plan`'s job;
//! this module only encodes and sends it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube_nft_compiler::ir::{self, names, Family};
use kube_nft_compiler::plan::{self, Object, Verb};

use crate::netlink::encode::{self, Batch, Transaction};
use crate::netlink::socket;

/// The estimated kernel cost one transaction of a cold start may have, in units of one rule
/// (see [`cost`]). The kernel parses and commits a batch with the namespace's nf_tables commit
/// mutex held, at roughly 10–20 µs per rule or chain on a 2-vCPU VM (`performance-anchors.md`
/// §2.3 and `BENCHMARKS.md`); 5,000 units keep a transaction of the 50k-Service cold start
/// under about 0.1 s. The last transaction, which attaches the hooks, costs what the kernel's
/// validation of the whole jump graph costs, like any commit that adds a verdict to a table
/// that size: with the endpoints as map data, ≈45 ms at 50k Services.
pub const COLD_START_COST: usize = 5_000;

/// Elements per unit of cost: the kernel inserts an element into a large map in 2–3 µs.
const ELEMENTS_PER_UNIT: usize = 5;

/// What an applied change consisted of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// Transactions sent: 1, or more for a cold start split by [`plan_transactions`], or 0
    /// when there was nothing to do.
    pub transactions: usize,
    /// Netlink messages in the batches, BATCH_BEGIN and BATCH_END included.
    pub messages: usize,
    /// Size of the batches in bytes (each sent with one `sendmsg`).
    pub bytes: usize,
    /// The longest time one transaction took, from `sendmsg` until its replies were drained:
    /// how long the kernel held the nf_tables commit mutex, plus the reply round trip.
    pub longest_commit: Duration,
    /// The time of all transactions together, each from `sendmsg` until its replies were
    /// drained (a cold start encodes meanwhile; see [`apply_plan`]).
    pub committing: Duration,
    /// The kernel acknowledged every commit explicitly (kernels ≥ 6.10); otherwise success
    /// was inferred from the absence of errors.
    pub end_acked: bool,
}

impl ApplyReport {
    /// The report of a transaction that was not sent because it had nothing to do.
    const NOTHING_SENT: ApplyReport = ApplyReport {
        transactions: 0,
        messages: 0,
        bytes: 0,
        longest_commit: Duration::ZERO,
        committing: Duration::ZERO,
        end_acked: false,
    };

    /// Whether nothing was sent (an empty plan): no socket was opened, the kernel was not asked.
    pub fn nothing_sent(&self) -> bool {
        self.messages == 0
    }
}

/// Failures of [`replace`], [`apply_plan`] and [`cleanup`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ruleset contains something the encoder cannot express; nothing was sent, except
    /// in a split cold start, whose transactions before the one that failed to encode may be
    /// committed (inert, as after [`Error::Incomplete`]).
    #[error("encode ruleset")]
    Encode(#[from] encode::Error),
    /// The kernel (or the socket) refused the transaction; nothing of it was applied.
    #[error("apply nf_tables transaction")]
    Netlink(#[from] socket::Error),
    /// A cold start split into several transactions failed after the first: the earlier ones
    /// stay committed, as an inert table whose base chains (the hooks) do not exist yet, so
    /// no packet is affected. Read the kernel back and plan again to complete it.
    #[error("apply cold-start transaction {} of {total} (the {committed} before it are committed, not yet hooked)", .committed + 1)]
    Incomplete {
        /// Transactions committed before the failing one.
        committed: usize,
        /// Transactions of the apply (a split cold start, or a change's phases).
        total: usize,
        /// Why the failing one was refused.
        #[source]
        source: socket::Error,
    },
    /// Listing our tables before deleting them failed; nothing was sent.
    #[error("list our tables")]
    Tables(#[source] Box<crate::readback::Error>),
}

impl Error {
    /// The netlink error, if the failure came from the kernel or the socket.
    pub fn netlink(&self) -> Option<&socket::Error> {
        match self {
            Error::Netlink(err) | Error::Incomplete { source: err, .. } => Some(err),
            Error::Tables(e) => match &**e {
                crate::readback::Error::Netlink(err) => Some(err),
                _ => None,
            },
            Error::Encode(_) => None,
        }
    }
}

/// Builds the transaction [`replace`] sends: for every table of the ruleset, `add table` (so the
/// delete cannot fail when the table is absent), `delete table`, `add table` with its comment,
/// then the table's chains, sets, elements and rules. Our tables the ruleset does not have are
/// deleted too: the main table of a family it lacks (a node that went single-stack must not
/// keep stale DNAT rules) and those of `existing` (what the kernel holds, [`crate::readback::our_tables`]:
/// dispatch tables of a larger `--dispatch-tables`).
pub fn replace_transaction(
    ruleset: &ir::Ruleset,
    existing: &[(Family, String)],
) -> Result<Transaction, encode::Error> {
    let mut batch = Batch::new(first_seq());
    for (family, name) in with_main_tables(existing) {
        let kept = (ruleset.tables.iter()).any(|t| t.family == family && t.name == name);
        if !kept {
            remove_table(&mut batch, family, &name);
        }
    }
    for table in &ruleset.tables {
        remove_table(&mut batch, table.family, &table.name);
        batch.add_table(table.family, &table.name, table.comment.as_deref());
        batch.add_table_contents(table)?;
    }
    Ok(batch.finish())
}

/// Atomically replaces our tables with the ruleset's, in one transaction.
pub fn replace(ruleset: &ir::Ruleset) -> Result<ApplyReport, Error> {
    let tx = replace_transaction(ruleset, &our_tables()?)?;
    send(&[tx])
}

/// Builds the transaction [`apply_plan`] sends: the plan's operations in order, one or more
/// messages each (element operations are chunked under 64 KiB per message). `old` is the
/// ruleset the plan was computed from, i.e. what the kernel holds: element operations name
/// their set only, and the set's key type and flags come from there (or from an `add set`
/// earlier in the plan). Sets of `old` are referred to by name, sets the plan creates by name
/// and batch-local id.
pub fn plan_transaction(
    old: &ir::Ruleset,
    tx: &plan::Transaction,
) -> Result<Transaction, encode::Error> {
    let mut batch = Batch::new(first_seq());
    for table in &old.tables {
        batch.existing_table(table);
    }
    for op in tx.ops.iter().filter(|op| !op.is_empty()) {
        batch.add_plan_op(op)?;
    }
    Ok(batch.finish())
}

/// The transactions [`apply_plan`] sends: for a change, [`plan_transaction`]'s one, preceded by
/// one that creates the shared DNAT chains, maps and slots it adds and followed by one that
/// retires those it leaves, when there are any; for a cold start (`old` has no tables: the
/// kernel holds none of ours) whose estimated cost exceeds `max_cost`, transactions of at most
/// `max_cost` each (see [`cost`]; a
/// set's elements are split between transactions too, an operation costlier than `max_cost`
/// goes alone). The plan's order already declares every object before anything refers to it,
/// so each transaction only refers to objects committed before it or created in it; the base
/// chains and the rules in them are moved to the end, so the hooks are attached by the final
/// transaction, when everything they lead to exists.
pub fn plan_transactions(
    old: &ir::Ruleset,
    tx: &plan::Transaction,
    max_cost: usize,
) -> Result<Vec<Transaction>, encode::Error> {
    let mut out = Vec::new();
    split_transactions(old, tx, max_cost, |t| out.push(t))?;
    Ok(out)
}

/// [`plan_transactions`], handing each transaction to `emit` as soon as it is encoded.
fn split_transactions(
    old: &ir::Ruleset,
    tx: &plan::Transaction,
    max_cost: usize,
    mut emit: impl FnMut(Transaction),
) -> Result<(), encode::Error> {
    let all_sets = tx
        .ops
        .iter()
        .filter(|op| matches!(op.object, Object::Set(_)))
        .count();
    let total: usize = tx.ops.iter().map(|op| cost(op, all_sets)).sum();
    if !old.tables.is_empty() {
        // A change: the shared DNAT chains and slots it creates first, then the change, then
        // what it retires, so that no packet crossing a commit finds its path half there
        // (`plan::Transaction::phases`).
        for part in tx.phases() {
            if !part.is_empty() {
                emit(plan_transaction(old, &part)?);
            }
        }
        return Ok(());
    }
    if total <= max_cost {
        emit(plan_transaction(old, tx)?);
        return Ok(());
    }
    let base_chains: BTreeSet<(Family, &str, &str)> = tx
        .ops
        .iter()
        .filter_map(|op| match &op.object {
            Object::Chain(header) if op.verb == Verb::Add && header.base.is_some() => {
                Some((op.family, op.table.as_str(), header.name.as_str()))
            }
            _ => None,
        })
        .collect();
    let is_hook = |op: &&plan::Op| match &op.object {
        Object::Chain(header) => header.base.is_some(),
        Object::Rule { chain, .. } => {
            base_chains.contains(&(op.family, op.table.as_str(), chain.as_str()))
        }
        _ => false,
    };
    let (hooks, body): (Vec<&plan::Op>, Vec<&plan::Op>) =
        tx.ops.iter().filter(|op| !op.is_empty()).partition(is_hook);

    let mut batch = Batch::new(first_seq());
    let mut spent = 0;
    let mut sets = 0;
    let mut hooked = false;
    for op in body.into_iter().chain(hooks) {
        if !hooked && is_hook(&op) {
            // The hooks (a few base chains and their rules) get one transaction of their own,
            // whatever the budget: attaching them makes the kernel validate the whole jump
            // graph from every base chain, the one commit whose cost grows with the table.
            if spent > 0 {
                let (done, next) = batch.finish_and_continue();
                emit(done);
                (batch, spent) = (next, 0);
            }
            hooked = true;
        }
        if let Object::Elements { set, elements } = &op.object {
            // Elements are cheap and can go to different transactions.
            let mut rest = elements.as_slice();
            while !rest.is_empty() {
                if spent >= max_cost {
                    let (done, next) = batch.finish_and_continue();
                    emit(done);
                    (batch, spent) = (next, 0);
                }
                let take = ((max_cost - spent) * ELEMENTS_PER_UNIT)
                    .min(rest.len())
                    .max(1);
                batch.add_plan_op(&plan::Op {
                    verb: op.verb,
                    family: op.family,
                    table: op.table.clone(),
                    object: Object::Elements {
                        set: set.clone(),
                        elements: rest[..take].to_vec(),
                    },
                })?;
                spent += take.div_ceil(ELEMENTS_PER_UNIT);
                rest = &rest[take..];
            }
            continue;
        }
        let op_cost = cost(op, sets);
        if !hooked && spent > 0 && spent + op_cost > max_cost {
            let (done, next) = batch.finish_and_continue();
            emit(done);
            (batch, spent) = (next, 0);
        }
        batch.add_plan_op(op)?;
        spent += op_cost;
        sets += usize::from(matches!(op.object, Object::Set(_)));
    }
    emit(batch.finish());
    Ok(())
}

/// The estimated kernel cost of one operation of a cold start when the table holds `sets`
/// named sets, in units of one plain rule (about 10–17 µs here). The kernel finds a named set
/// by walking the table's list of sets and comparing names (`nft_set_lookup_global`, and
/// `nf_tables_newset` for the duplicate check), so creating a set, and less so adding a rule
/// that looks one up, costs in proportion to the sets that exist: with the 5,000 affinity sets
/// of a 10k-Service cluster, creating them was a third of the cold start's kernel time (perf,
/// kernel 6.18; about 80 ns per existing set). A chain counts one, elements one per
/// [`ELEMENTS_PER_UNIT`]. Calibrated on `kube-nft-bench` at 50k Services
/// (`KUBE_NFT_BENCH_DEBUG=1`): with 5,500 sets, a set cost ≈400 µs to create and an affinity
/// rule (a lookup and an update) ≈230 µs.
fn cost(op: &plan::Op, sets: usize) -> usize {
    match &op.object {
        Object::Set(_) => 1 + sets / 96,
        Object::Rule { rule, .. } => {
            let lookups = rule
                .stmts
                .iter()
                .filter(|stmt| {
                    matches!(
                        stmt,
                        ir::Stmt::Lookup { .. }
                            | ir::Stmt::Update { .. }
                            | ir::Stmt::Vmap { .. }
                            | ir::Stmt::Dnat(
                                ir::NatTarget::Map { .. } | ir::NatTarget::AddrMap { .. }
                            )
                    )
                })
                .count();
            1 + lookups * sets / 512
        }
        Object::Elements { elements, .. } => elements.len().div_ceil(ELEMENTS_PER_UNIT),
        _ => 1,
    }
}

/// Applies an incremental change: `tx` is `plan::plan(old, new)` and the kernel must hold
/// exactly `old` (see [`plan_transaction`]). It is one transaction, with the shared DNAT
/// chains, maps and slots it creates committed before it and those it retires after it (see
/// `plan::Transaction::phases`), except for a large cold start, which
/// [`plan_transactions`] splits at [`COLD_START_COST`] operations. An empty plan
/// sends nothing and returns a report whose [`nothing_sent`](ApplyReport::nothing_sent) is
/// true. If the kernel refuses any operation of a transaction, nothing of that transaction is
/// applied and the error names the operation and its object; the caller should then fall back
/// to [`replace`], as after any failed apply.
pub fn apply_plan(old: &ir::Ruleset, tx: &plan::Transaction) -> Result<ApplyReport, Error> {
    if tx.is_empty() {
        return Ok(ApplyReport::NOTHING_SENT);
    }
    if old.tables.is_empty() {
        return cold_start(old, tx);
    }
    let transactions = plan_transactions(old, tx, COLD_START_COST)?;
    match apply_transactions(&transactions) {
        // A change whose prepared shared chains and slots were committed and whose change the
        // kernel refused: take them out again, so that a refused change leaves the kernel as
        // it found it. (A refused retirement leaves the change applied with unreachable
        // leftovers, which the caller's read-back after any failure removes.)
        Err(Error::Incomplete {
            committed: 1,
            total,
            source,
        }) if !old.tables.is_empty() => {
            let [prepare, ..] = tx.phases();
            let mut mid = old.clone();
            if !prepare.is_empty() && plan::apply(&mut mid, &prepare).is_ok() {
                let undo = plan::plan(&mid, old);
                // Best effort: if this fails too, the caller's read-back repairs it.
                if let Ok(undo) = plan_transaction(&mid, &undo) {
                    let _ = send(&[undo]);
                }
            }
            Err(Error::Incomplete {
                committed: 1,
                total,
                source,
            })
        }
        other => other,
    }
}

/// A cold start ([`apply_plan`] when the kernel holds none of our tables), encoded on a second
/// thread while this one sends: the kernel's work happens in this thread's `sendmsg`, so on a
/// machine with two cores encoding transaction k + 1 overlaps committing transaction k (at 50k
/// Services the 43 transactions took 0.46 s to encode and 1.24 s to commit, one after the
/// other), and at most three encoded transactions exist at a time (being sent, waiting, being
/// encoded) instead of all of them. An
/// encoding failure after the first transaction leaves the earlier ones committed, inert as
/// after [`Error::Incomplete`].
fn cold_start(old: &ir::Ruleset, tx: &plan::Transaction) -> Result<ApplyReport, Error> {
    std::thread::scope(|scope| {
        let (sender, encoded) = std::sync::mpsc::sync_channel(1);
        let encoder = scope.spawn(move || {
            let mut total = 0;
            let result = split_transactions(old, tx, COLD_START_COST, |t| {
                total += 1;
                // After a refusal the receiver is gone: encode on only to count.
                let _ = sender.send(t);
            });
            result.map(|()| total)
        });
        // Consumed: if sending stops early, the receiver is dropped and the encoder's sends
        // fail instead of blocking.
        let sent = send_each(encoded);
        let total = encoder.join().expect("encoding does not panic")?;
        sent.map_err(|(committed, source)| send_error(committed, total, source))
    })
}

/// Sends transactions in order over one socket, stopping at the first the kernel refuses
/// ([`Error::Incomplete`] when earlier ones were committed).
pub fn apply_transactions(transactions: &[Transaction]) -> Result<ApplyReport, Error> {
    send(transactions)
}

/// Builds the transaction [`cleanup`] sends: deletes the main tables and `existing` (our
/// tables the kernel holds, [`crate::readback::our_tables`]).
pub fn cleanup_transaction(existing: &[(Family, String)]) -> Transaction {
    let mut batch = Batch::new(first_seq());
    for (family, name) in with_main_tables(existing) {
        remove_table(&mut batch, family, &name);
    }
    batch.finish()
}

/// Deletes our tables (`ip kube-nft`, `ip6 kube-nft` and any dispatch tables), in one
/// transaction. Absent tables are fine.
pub fn cleanup() -> Result<ApplyReport, Error> {
    send(&[cleanup_transaction(&our_tables()?)])
}

/// `existing` and the main table of each family, once each, in order.
fn with_main_tables(existing: &[(Family, String)]) -> BTreeSet<(Family, String)> {
    [Family::Ip, Family::Ip6]
        .into_iter()
        .map(|family| (family, names::TABLE.to_owned()))
        .chain(existing.iter().cloned())
        .collect()
}

fn our_tables() -> Result<Vec<(Family, String)>, Error> {
    crate::readback::our_tables().map_err(|e| Error::Tables(Box::new(e)))
}

/// `add table` + `delete table`: deletes the table whether or not it exists (`delete` alone
/// fails with ENOENT when it does not; `NFT_MSG_DESTROYTABLE` would need kernel 6.3).
fn remove_table(batch: &mut Batch, family: Family, name: &str) {
    batch.add_table(family, name, None);
    batch.delete_table(family, name);
}

fn send(transactions: &[Transaction]) -> Result<ApplyReport, Error> {
    send_each(transactions)
        .map_err(|(committed, source)| send_error(committed, transactions.len(), source))
}

/// The error of a failed send of `total` transactions after `committed` of them went in.
fn send_error(committed: usize, total: usize, source: socket::Error) -> Error {
    match committed {
        0 => Error::Netlink(source),
        committed => Error::Incomplete {
            committed,
            total,
            source,
        },
    }
}

/// Sends transactions in order over the kept socket, stopping at the first that fails: then
/// how many were committed before it, and why it failed.
fn send_each<T: std::borrow::Borrow<Transaction>>(
    transactions: impl IntoIterator<Item = T>,
) -> Result<ApplyReport, (usize, socket::Error)> {
    let socket = cached::take().map_err(|e| (0, e))?;
    let mut report = ApplyReport {
        end_acked: true,
        ..ApplyReport::NOTHING_SENT
    };
    for tx in transactions {
        let tx = tx.borrow();
        let started = Instant::now();
        let committed = socket
            .transact(tx)
            .map_err(|source| (report.transactions, source))?;
        let took = started.elapsed();
        report.longest_commit = report.longest_commit.max(took);
        report.committing += took;
        report.transactions += 1;
        report.messages += tx.ops().len();
        report.bytes += tx.bytes().len();
        report.end_acked &= committed.end_acked;
    }
    cached::keep(socket);
    Ok(report)
}

/// The nf_tables ruleset generation, asked over the socket [`send`] commits over (a fresh
/// socket closed right after a commit would wait for that commit's cleanup; see [`cached`]).
pub fn generation() -> Result<u32, socket::Error> {
    let mut socket = cached::take()?;
    let generation = socket.get_gen()?;
    cached::keep(socket);
    Ok(generation)
}

/// The socket [`send`] commits over, kept per thread between calls. Closing a nf_tables socket
/// right after a commit waits for that commit's deferred cleanup, an RCU grace period, with the
/// namespace's commit mutex held (the `NETLINK_URELEASE` notifier, `nft_rcv_nl_event`, flushes
/// the destroy work): measured 5–25 ms per daemon round at 50k Services, after the commit was
/// already visible. A socket is kept only after a transaction it fully answered, and only for
/// the network namespace it was opened in (a thread may enter another).
mod cached {
    use std::cell::RefCell;
    use std::os::unix::fs::MetadataExt;

    use crate::netlink::socket::{self, Socket};

    thread_local! {
        static KEPT: RefCell<Option<((u64, u64), Socket)>> = const { RefCell::new(None) };
    }

    /// The calling thread's network namespace (device and inode of its nsfs file).
    fn netns() -> Option<(u64, u64)> {
        let meta = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
        Some((meta.dev(), meta.ino()))
    }

    pub(super) fn take() -> Result<Socket, socket::Error> {
        let kept = KEPT.with(|k| k.borrow_mut().take());
        match (kept, netns()) {
            (Some((ns, socket)), Some(now)) if ns == now => Ok(socket),
            _ => Socket::open(),
        }
    }

    pub(super) fn keep(socket: Socket) {
        if let Some(ns) = netns() {
            KEPT.with(|k| *k.borrow_mut() = Some((ns, socket)));
        }
    }
}

/// A starting sequence number that differs between transactions, so replies to an earlier
/// transaction can never be mistaken for this one's (each transaction uses a fresh socket
/// anyway; this is belt and braces, and what nft does with the time of day).
fn first_seq() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32)
}
