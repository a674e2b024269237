//! Programming the kernel: [`replace`] swaps each of our tables for its new content in one
//! nf_tables transaction, [`apply_plan`] sends an incremental change (a `plan::Transaction`,
//! computed by the compiler from the last committed ruleset and the new one), and [`cleanup`]
//! removes our tables. All are single batches, so the kernel either applies everything or
//! nothing, and packets never see a half-built table. None touches any table other than
//! kube-nft's own (`ip kube-nft`, `ip6 kube-nft`). Deciding *what* changes is `plan`'s job;
//! this module only encodes and sends it.

use kube_nft_compiler::ir::{self, names, Family};
use kube_nft_compiler::plan;

use crate::netlink::encode::{self, Batch, Transaction};
use crate::netlink::socket::{self, Socket};

/// What an applied transaction consisted of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// Netlink messages in the batch, BATCH_BEGIN and BATCH_END included.
    pub messages: usize,
    /// Size of the batch in bytes (sent with one `sendmsg`).
    pub bytes: usize,
    /// The kernel acknowledged the commit explicitly (kernels ≥ 6.10); otherwise success was
    /// inferred from the absence of errors.
    pub end_acked: bool,
}

impl ApplyReport {
    /// The report of a transaction that was not sent because it had nothing to do.
    const NOTHING_SENT: ApplyReport = ApplyReport {
        messages: 0,
        bytes: 0,
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
    /// The ruleset contains something the encoder cannot express; nothing was sent.
    #[error("encode ruleset")]
    Encode(#[from] encode::Error),
    /// The kernel (or the socket) refused the transaction; nothing of it was applied.
    #[error("apply nf_tables transaction")]
    Netlink(#[from] socket::Error),
}

impl Error {
    /// The netlink error, if the failure came from the kernel or the socket.
    pub fn netlink(&self) -> Option<&socket::Error> {
        match self {
            Error::Netlink(err) => Some(err),
            Error::Encode(_) => None,
        }
    }
}

/// Builds the transaction [`replace`] sends: for every table of the ruleset, `add table` (so the
/// delete cannot fail when the table is absent), `delete table`, `add table` with its comment,
/// then the table's chains, sets, elements and rules. Our table of a family the ruleset does not
/// have is deleted too (a node that went single-stack must not keep stale DNAT rules).
pub fn replace_transaction(ruleset: &ir::Ruleset) -> Result<Transaction, encode::Error> {
    let mut batch = Batch::new(first_seq());
    for family in [Family::Ip, Family::Ip6] {
        if ruleset.table(family).is_none() {
            remove_table(&mut batch, family, names::TABLE);
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
    let tx = replace_transaction(ruleset)?;
    Ok(send(&tx)?)
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

/// Applies an incremental change in one transaction: `tx` is `plan::plan(old, new)` and the
/// kernel must hold exactly `old` (see [`plan_transaction`]). An empty plan sends nothing and
/// returns a report whose [`nothing_sent`](ApplyReport::nothing_sent) is true. If the kernel
/// refuses any operation, nothing of the plan is applied and the error names the operation and
/// its object; the caller should then fall back to [`replace`], as after any failed apply.
pub fn apply_plan(old: &ir::Ruleset, tx: &plan::Transaction) -> Result<ApplyReport, Error> {
    if tx.is_empty() {
        return Ok(ApplyReport::NOTHING_SENT);
    }
    let tx = plan_transaction(old, tx)?;
    Ok(send(&tx)?)
}

/// Builds the transaction [`cleanup`] sends.
pub fn cleanup_transaction() -> Transaction {
    let mut batch = Batch::new(first_seq());
    for family in [Family::Ip, Family::Ip6] {
        remove_table(&mut batch, family, names::TABLE);
    }
    batch.finish()
}

/// Deletes `ip kube-nft` and `ip6 kube-nft`, in one transaction. Absent tables are fine.
pub fn cleanup() -> Result<ApplyReport, Error> {
    Ok(send(&cleanup_transaction())?)
}

/// `add table` + `delete table`: deletes the table whether or not it exists (`delete` alone
/// fails with ENOENT when it does not; `NFT_MSG_DESTROYTABLE` would need kernel 6.3).
fn remove_table(batch: &mut Batch, family: Family, name: &str) {
    batch.add_table(family, name, None);
    batch.delete_table(family, name);
}

fn send(tx: &Transaction) -> Result<ApplyReport, socket::Error> {
    let socket = Socket::open()?;
    let committed = socket.transact(tx)?;
    Ok(ApplyReport {
        messages: tx.ops().len(),
        bytes: tx.bytes().len(),
        end_acked: committed.end_acked,
    })
}

/// A starting sequence number that differs between transactions, so replies to an earlier
/// transaction can never be mistaken for this one's (each transaction uses a fresh socket
/// anyway; this is belt and braces, and what nft does with the time of day).
fn first_seq() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32)
}
