//! Sans-IO encoder: builds the bytes of one nf_tables transaction from `ir` objects. A
//! [`Batch`] starts with `NFNL_MSG_BATCH_BEGIN`, takes table, chain, set, element and rule
//! messages in the order the caller adds them, and [`Batch::finish`] closes it with
//! `NFNL_MSG_BATCH_END` into a [`Transaction`]: one contiguous buffer, meant for exactly one
//! `sendmsg` (the kernel processes a batch per skb; a batch split across sends is aborted).
//!
//! The same batch carries incremental changes: [`Batch::add_plan_op`] encodes one operation of
//! a compiler `plan` (adds, deletes, chain and set flushes, element adds and key-only element
//! deletes). Sets the kernel already holds are announced with [`Batch::existing_table`] and
//! referred to by name; sets created in the batch by name and `NFTA_SET_ID`.
//!
//! Every message gets its own sequence number, and the transaction remembers which operation
//! and which object each number stands for, so a kernel error can be reported as "add chain ip
//! kube-nft services: No such file or directory" instead of "seq 17: ENOENT". Only BATCH_END
//! asks for an ACK (`NLM_F_ACK`): errors are reported whatever the flags, and per-message ACKs
//! overflow the socket's receive queue (ENOBUFS) on big batches although the batch commits.
//!
//! The encoding follows what nft 1.0.6 sends for the same statement (`nft --debug=netlink,mnl`),
//! including nft's user data (comments, set key byte order), so that `nft list` prints objects
//! loaded by kube-nft exactly like objects loaded from the rendered script. It does no IO; see
//! `netlink::socket` for sending.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kube_nft_compiler::ir::{
    self, BaseChain, CtDir, DataType, ElemData, Element, Family, Hook, Value, Verdict,
};
use kube_nft_compiler::plan::{self, Object, Verb};
use kube_nft_compiler::render::{render_rule, sanitize_comment};

use super::attr::{self, Udata};
use super::rule;
use super::sys::*;

/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

// The delete messages of `enum nf_tables_msg_types`, which only incremental transactions send.
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_DELSETELEM: u16 = 14;

/// The largest NEWSETELEM message, in bytes. The element list is one nested attribute whose
/// `nla_len` is a `u16`, so a list over 64 KiB cannot be described at all (the kernel then
/// misparses it; rustables hit ENOENT at ~4,200 IPv4 elements). Keeping the whole message under
/// the limit keeps the nest under it too.
pub const MAX_SETELEM_MESSAGE: usize = u16::MAX as usize;

/// What a message in the batch does, for error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `NFNL_MSG_BATCH_BEGIN`.
    BatchBegin,
    /// `NFNL_MSG_BATCH_END`.
    BatchEnd,
    /// `NFT_MSG_NEWTABLE`.
    AddTable,
    /// `NFT_MSG_DELTABLE`.
    DeleteTable,
    /// `NFT_MSG_NEWCHAIN`.
    AddChain,
    /// `NFT_MSG_DELRULE` naming only the chain: removes every rule of the chain.
    FlushChain,
    /// `NFT_MSG_DELCHAIN`.
    DeleteChain,
    /// `NFT_MSG_NEWSET` (named or anonymous).
    AddSet,
    /// `NFT_MSG_DELSET`.
    DeleteSet,
    /// `NFT_MSG_DELSETELEM` without an element list: removes every element of the set.
    FlushSet,
    /// `NFT_MSG_NEWSETELEM`: one chunk of a set's elements.
    AddElements,
    /// `NFT_MSG_DELSETELEM`: one chunk of keys to remove from a set.
    DeleteElements,
    /// `NFT_MSG_NEWRULE`.
    AddRule,
}

impl OpKind {
    /// The operation in nft's words (`add table`, `delete table`, …).
    pub fn verb(self) -> &'static str {
        match self {
            OpKind::BatchBegin => "begin batch",
            OpKind::BatchEnd => "commit batch",
            OpKind::AddTable => "add table",
            OpKind::DeleteTable => "delete table",
            OpKind::AddChain => "add chain",
            OpKind::FlushChain => "flush chain",
            OpKind::DeleteChain => "delete chain",
            OpKind::AddSet => "add set",
            OpKind::DeleteSet => "delete set",
            OpKind::FlushSet => "flush set",
            OpKind::AddElements => "add elements to set",
            OpKind::DeleteElements => "delete elements from set",
            OpKind::AddRule => "add rule",
        }
    }
}

/// One message of a transaction: its sequence number, what it does and to which object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The message's `nlmsg_seq`.
    pub seq: u32,
    /// The operation.
    pub kind: OpKind,
    /// The object, in nft's words: `ip kube-nft services`, or for a rule its chain and text.
    pub object: String,
}

/// A finished batch: the bytes to send in one `sendmsg`, and the seq → operation table.
#[derive(Clone, Debug)]
pub struct Transaction {
    bytes: Vec<u8>,
    ops: Vec<Op>,
}

impl Transaction {
    /// The whole batch, BATCH_BEGIN … BATCH_END.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Every message in order, BATCH_BEGIN first and BATCH_END last.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The operation a sequence number stands for.
    pub fn op(&self, seq: u32) -> Option<&Op> {
        let first = self.ops.first()?.seq;
        self.ops.get(seq.wrapping_sub(first) as usize)
    }

    /// The sequence number of BATCH_END, the only message that asks for an ACK.
    pub fn end_seq(&self) -> u32 {
        self.ops.last().map_or(0, |op| op.seq)
    }
}

/// An IR object that cannot be encoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cannot encode {object}")]
pub struct Error {
    /// The object (`set ip kube-nft x`, `rule in chain ip kube-nft y: …`).
    pub object: String,
    /// What is wrong with it.
    #[source]
    pub kind: ErrorKind,
}

/// Why an object cannot be encoded. `ir::verify` rules all of these out for compiler output;
/// the encoder still checks instead of panicking, because the runtime must never panic.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A constant does not fit the data type it is used as (e.g. a port as an address, an IPv6
    /// address in an `ip` table, a prefix in a set without `flags interval`).
    #[error("{value} is not a valid {ty}")]
    Value {
        /// The constant, as the IR debug-prints it.
        value: String,
        /// The data type it had to be.
        ty: &'static str,
    },
    /// A statement shape that nft itself cannot express and the encoder does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A message or nested attribute would exceed the 64 KiB netlink attribute limit.
    #[error("encoded message is larger than 64 KiB")]
    TooLarge,
    /// Elements name a set that neither the kernel holds (as far as the batch was told, see
    /// [`Batch::existing_table`]) nor the batch created: its key type is unknown, so its keys
    /// cannot be encoded.
    #[error("set {0} is neither in the kernel nor created earlier in the batch")]
    UnknownSet(String),
}

/// What the batch knows about a set it created or was told exists, so rules and elements can
/// refer to a set created in the batch by `NFTA_SET_ID` (needed while the set exists only inside
/// the uncommitted transaction) and so lookups know whether the set is an interval
/// concatenation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SetInfo {
    /// The batch-local set id of a set created in this batch; `None` for a set the kernel
    /// already holds, which is referred to by name only.
    pub(crate) id: Option<u32>,
    /// `flags interval` with a concatenated key (pipapo): host-order key parts need a byteorder
    /// conversion in lookups, as nft emits.
    pub(crate) interval_concat: bool,
}

/// Builder of one nf_tables transaction. See the module docs.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    ops: Vec<Op>,
    next_seq: u32,
    next_set_id: u32,
    sets: BTreeMap<(Family, String, String), SetInfo>,
    /// Key and data types of the same sets, which element messages need (a plan's element
    /// operation names its set only).
    schemas: BTreeMap<(Family, String, String), SetSchema>,
}

/// What encoding a set's elements depends on.
#[derive(Clone, Debug)]
struct SetSchema {
    key: Vec<DataType>,
    data: Vec<DataType>,
    interval: bool,
}

impl SetSchema {
    fn of(set: &ir::Set) -> SetSchema {
        SetSchema {
            key: set.key.clone(),
            data: set.data.clone(),
            interval: set.flags.interval,
        }
    }
}

impl Batch {
    /// Starts a batch whose first message (BATCH_BEGIN) has sequence number `first_seq`.
    pub fn new(first_seq: u32) -> Batch {
        let mut batch = Batch {
            buf: Vec::new(),
            ops: Vec::new(),
            next_seq: first_seq,
            next_set_id: 1,
            sets: BTreeMap::new(),
            schemas: BTreeMap::new(),
        };
        let start = batch.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            OpKind::BatchBegin,
            "nf_tables".into(),
        );
        batch.end(start);
        batch
    }

    /// Closes the batch with BATCH_END, the only message that requests an ACK. Kernels before
    /// 6.10 do not answer it; later ones do once the batch committed.
    pub fn finish(mut self) -> Transaction {
        let start = self.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST | NLM_F_ACK,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            OpKind::BatchEnd,
            "nf_tables".into(),
        );
        self.end(start);
        Transaction {
            bytes: self.buf,
            ops: self.ops,
        }
    }

    /// Closes this batch like [`finish`](Batch::finish) and starts the next one, for a change
    /// sent as several transactions in order. The next batch knows every set this one knew, but
    /// refers to them by name only: by the time it is sent this batch has committed, and an
    /// `NFTA_SET_ID` only resolves within the batch that created the set.
    pub fn finish_and_continue(self) -> (Transaction, Batch) {
        let mut next = Batch::new(self.next_seq.wrapping_add(1));
        next.sets = self
            .sets
            .iter()
            .map(|(key, info)| (key.clone(), SetInfo { id: None, ..*info }))
            .collect();
        next.schemas = self.schemas.clone();
        (self.finish(), next)
    }

    /// Number of messages so far, BATCH_BEGIN included.
    pub fn message_count(&self) -> usize {
        self.ops.len()
    }

    /// `NFT_MSG_NEWTABLE`: creates the table, or keeps it as it is when it exists (no
    /// `NLM_F_EXCL`). A comment goes into the table's user data, where nft reads it.
    pub fn add_table(&mut self, family: Family, name: &str, comment: Option<&str>) {
        let start = self.begin_nft(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            family,
            OpKind::AddTable,
            format!("{family} {name}"),
        );
        attr::put_strz(&mut self.buf, NFTA_TABLE_NAME, name);
        attr::put_be32(&mut self.buf, NFTA_TABLE_FLAGS, 0);
        if let Some(comment) = comment {
            let mut udata = Udata::default();
            udata.put_strz(UDATA_TABLE_COMMENT, &sanitize_comment(comment));
            attr::put(&mut self.buf, NFTA_TABLE_USERDATA, udata.bytes());
        }
        self.end(start);
    }

    /// `NFT_MSG_DELTABLE`: deletes the table and everything in it. Fails with ENOENT when the
    /// table does not exist, so callers put an [`add_table`](Batch::add_table) before it.
    pub fn delete_table(&mut self, family: Family, name: &str) {
        let start = self.begin_nft(
            NFT_MSG_DELTABLE,
            0,
            family,
            OpKind::DeleteTable,
            format!("{family} {name}"),
        );
        attr::put_strz(&mut self.buf, NFTA_TABLE_NAME, name);
        self.end(start);
        // Sets of a deleted table can no longer be referred to at all.
        self.sets
            .retain(|(f, t, _), _| !(*f == family && t.as_str() == name));
        self.schemas
            .retain(|(f, t, _), _| !(*f == family && t.as_str() == name));
    }

    /// `NFT_MSG_NEWCHAIN` for a chain without its rules. Base chains get their hook, priority,
    /// type and an explicit `policy accept` (nft's default, which nft itself leaves implicit).
    pub fn add_chain(&mut self, family: Family, table: &str, chain: &ir::Chain) {
        let start = self.begin_nft(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            family,
            OpKind::AddChain,
            format!("{family} {table} {}", chain.name),
        );
        attr::put_strz(&mut self.buf, NFTA_CHAIN_TABLE, table);
        attr::put_strz(&mut self.buf, NFTA_CHAIN_NAME, &chain.name);
        if let Some(BaseChain {
            kind,
            hook,
            priority,
        }) = chain.base
        {
            attr::put_strz(&mut self.buf, NFTA_CHAIN_TYPE, kind.keyword());
            let nest = attr::nest_start(&mut self.buf, NFTA_CHAIN_HOOK);
            attr::put_be32(&mut self.buf, NFTA_HOOK_HOOKNUM, hook_number(hook));
            attr::put_be32(&mut self.buf, NFTA_HOOK_PRIORITY, priority as u32);
            close_small_nest(&mut self.buf, nest);
            attr::put_be32(&mut self.buf, NFTA_CHAIN_POLICY, NF_ACCEPT);
        }
        if let Some(comment) = &chain.comment {
            let mut udata = Udata::default();
            udata.put_strz(UDATA_CHAIN_COMMENT, &sanitize_comment(comment));
            attr::put(&mut self.buf, NFTA_CHAIN_USERDATA, udata.bytes());
        }
        self.end(start);
    }

    /// `NFT_MSG_NEWSET` for a named set or map, without its elements. The set gets a batch-local
    /// `NFTA_SET_ID` (mandatory: without it NEWSET fails with EINVAL) that later elements and
    /// rules in the same batch use to find it.
    pub fn add_set(&mut self, family: Family, table: &str, set: &ir::Set) -> Result<(), Error> {
        let object = format!("set {family} {table} {}", set.name);
        let fail = |kind| Error {
            object: object.clone(),
            kind,
        };
        let key = KeyShape::of(&set.key).map_err(fail)?;
        let data = if set.is_map() {
            Some(DataShape::of(&set.data).map_err(fail)?)
        } else {
            None
        };
        let interval_concat = set.flags.interval && set.key.len() > 1;
        let mut flags = 0;
        if set.flags.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if interval_concat {
            flags |= NFT_SET_CONCAT;
        }
        if data.is_some() {
            flags |= NFT_SET_MAP;
        }
        if set.flags.timeout {
            flags |= NFT_SET_TIMEOUT;
        }
        if set.flags.dynamic {
            flags |= NFT_SET_EVAL;
        }
        let id = self.take_set_id();
        let start = self.begin_nft(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            family,
            OpKind::AddSet,
            format!("{family} {table} {}", set.name),
        );
        let buf = &mut self.buf;
        attr::put_strz(buf, NFTA_SET_TABLE, table);
        attr::put_strz(buf, NFTA_SET_NAME, &set.name);
        attr::put_be32(buf, NFTA_SET_FLAGS, flags);
        attr::put_be32(buf, NFTA_SET_KEY_TYPE, key.type_id);
        attr::put_be32(buf, NFTA_SET_KEY_LEN, key.len);
        if let Some(data) = &data {
            attr::put_be32(buf, NFTA_SET_DATA_TYPE, data.type_id);
            attr::put_be32(buf, NFTA_SET_DATA_LEN, data.len);
        }
        attr::put_be32(buf, NFTA_SET_ID, id);
        if let Some(secs) = set.timeout {
            attr::put_be64(buf, NFTA_SET_TIMEOUT, u64::from(secs) * 1000);
        }
        if interval_concat || set.size.is_some() {
            let desc = attr::nest_start(buf, NFTA_SET_DESC);
            if let Some(size) = set.size {
                attr::put_be32(buf, NFTA_SET_DESC_SIZE, size);
            }
            if interval_concat {
                // The pipapo backend needs the length of every field of the concatenation.
                let concat = attr::nest_start(buf, NFTA_SET_DESC_CONCAT);
                for ty in &set.key {
                    let field = attr::nest_start(buf, NFTA_LIST_ELEM);
                    attr::put_be32(buf, NFTA_SET_FIELD_LEN, type_len(*ty));
                    close_small_nest(buf, field);
                }
                close_small_nest(buf, concat);
            }
            close_small_nest(buf, desc);
        }
        if set.counter {
            // The template every element's counter is cloned from, zeroed; the packet path's
            // `update` and lookups then count into the element they find or add.
            let expr = attr::nest_start(buf, NFTA_SET_EXPR);
            attr::put_strz(buf, NFTA_EXPR_NAME, "counter");
            close_small_nest(buf, expr);
        }
        let mut udata = set_udata(&key, data.as_ref(), set.comment.as_deref());
        if set.needs_typeof() {
            udata = typeof_set_udata(set, family).map_err(fail)?;
        }
        attr::put(buf, NFTA_SET_USERDATA, udata.bytes());
        self.end(start);
        self.remember_set(family, table, set, Some(id));
        Ok(())
    }

    /// `NFT_MSG_NEWSETELEM` messages for all elements of `set`, split so that no message
    /// exceeds [`MAX_SETELEM_MESSAGE`]. Does nothing for a set without elements.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &ir::Set,
    ) -> Result<(), Error> {
        let object = format!("elements of set {family} {table} {}", set.name);
        let encoded =
            encode_elements(&SetSchema::of(set), &set.elements).map_err(|kind| Error {
                object: object.clone(),
                kind,
            })?;
        let id = self
            .set_info(family, table, &set.name)
            .and_then(|info| info.id);
        let message = ElementMessage::Add;
        self.put_element_chunks(family, table, &set.name, id, message, &encoded)
            .map_err(|kind| Error { object, kind })
    }

    /// `NFT_MSG_NEWRULE`, appended at the end of the chain (`NLM_F_APPEND`; without it the
    /// kernel inserts at the head). A `dnat … to numgen … map { … }` first creates its anonymous
    /// constant map (`__map%d`) with its elements, as nft does.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        rule: &ir::Rule,
    ) -> Result<(), Error> {
        let object = format!("{family} {table} {chain} {}", render_rule(rule));
        let fail = |kind| Error {
            object: format!("rule {object}"),
            kind,
        };
        let mut anon_maps = Vec::new();
        for stmt in &rule.stmts {
            if let ir::Stmt::Dnat(ir::NatTarget::NumgenMap { targets, .. }) = stmt {
                let id = self.add_numgen_map(family, table, targets).map_err(fail)?;
                anon_maps.push(id);
            }
        }
        let start = self.begin_nft(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            family,
            OpKind::AddRule,
            object.clone(),
        );
        attr::put_strz(&mut self.buf, NFTA_RULE_TABLE, table);
        attr::put_strz(&mut self.buf, NFTA_RULE_CHAIN, chain);
        let ctx = rule::Context {
            family,
            sets: &self.sets,
            table,
            anon_maps: &anon_maps,
        };
        let result = rule::put_expressions(&mut self.buf, &ctx, &rule.stmts);
        if let Err(kind) = result {
            self.abandon(start);
            return Err(fail(kind));
        }
        if let Some(comment) = &rule.comment {
            let mut udata = Udata::default();
            udata.put_strz(UDATA_RULE_COMMENT, &sanitize_comment(comment));
            attr::put(&mut self.buf, NFTA_RULE_USERDATA, udata.bytes());
        }
        self.end(start);
        Ok(())
    }

    /// Everything inside one table, in the order nft needs and `nft list` shows: chains (base
    /// chains, then regular chains, each by name, as `render` writes them; listing order is
    /// creation order), sets by name, their elements, then the rules. Chains and sets come
    /// before anything that refers to them.
    pub fn add_table_contents(&mut self, table: &ir::Table) -> Result<(), Error> {
        let (family, name) = (table.family, table.name.as_str());
        let base = table.chains.values().filter(|c| c.base.is_some());
        let regular = table.chains.values().filter(|c| c.base.is_none());
        for chain in base.chain(regular) {
            self.add_chain(family, name, chain);
        }
        for set in table.sets.values() {
            self.add_set(family, name, set)?;
        }
        for set in table.sets.values() {
            self.add_elements(family, name, set)?;
        }
        for chain in table.chains.values() {
            for rule in &chain.rules {
                self.add_rule(family, name, &chain.name, rule)?;
            }
        }
        Ok(())
    }

    /// Records that the kernel already holds `table` as it is (committed before this batch), so
    /// that element operations on its sets know their key types and rules refer to its sets by
    /// name alone (an `NFTA_SET_ID` only finds sets created in the same batch). Sends nothing;
    /// an incremental transaction calls this with the ruleset its plan started from.
    pub fn existing_table(&mut self, table: &ir::Table) {
        for set in table.sets.values() {
            self.remember_set(table.family, &table.name, set, None);
        }
    }

    /// `NFT_MSG_DELRULE` naming only the table and chain: the kernel deletes every rule of the
    /// chain (`flush chain`). Anonymous sets bound to those rules (numgen DNAT maps) go with
    /// them.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        let object = format!("{family} {table} {chain}");
        let start = self.begin_nft(NFT_MSG_DELRULE, 0, family, OpKind::FlushChain, object);
        attr::put_strz(&mut self.buf, NFTA_RULE_TABLE, table);
        attr::put_strz(&mut self.buf, NFTA_RULE_CHAIN, chain);
        self.end(start);
    }

    /// `NFT_MSG_DELCHAIN`. The kernel refuses (EBUSY) while a rule or a verdict map element
    /// still jumps to the chain; the chain's own rules go with it.
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) {
        let object = format!("{family} {table} {chain}");
        let start = self.begin_nft(NFT_MSG_DELCHAIN, 0, family, OpKind::DeleteChain, object);
        attr::put_strz(&mut self.buf, NFTA_CHAIN_TABLE, table);
        attr::put_strz(&mut self.buf, NFTA_CHAIN_NAME, chain);
        self.end(start);
    }

    /// `NFT_MSG_DELSET`, for a set or map with all its elements. The kernel refuses (EBUSY)
    /// while a rule still uses the set. Later messages of the batch no longer find it, until a
    /// new set of the same name is added (with a new id).
    pub fn delete_set(&mut self, family: Family, table: &str, set: &str) {
        let object = format!("{family} {table} {set}");
        let start = self.begin_nft(NFT_MSG_DELSET, 0, family, OpKind::DeleteSet, object);
        attr::put_strz(&mut self.buf, NFTA_SET_TABLE, table);
        attr::put_strz(&mut self.buf, NFTA_SET_NAME, set);
        self.end(start);
        let key = (family, table.to_owned(), set.to_owned());
        self.sets.remove(&key);
        self.schemas.remove(&key);
    }

    /// `NFT_MSG_DELSETELEM` without an element list: the kernel removes every element.
    pub fn flush_set(&mut self, family: Family, table: &str, set: &str) {
        let id = self.set_info(family, table, set).and_then(|info| info.id);
        let object = format!("{family} {table} {set}");
        let start = self.begin_nft(NFT_MSG_DELSETELEM, 0, family, OpKind::FlushSet, object);
        attr::put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, table);
        attr::put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_SET, set);
        if let Some(id) = id {
            attr::put_be32(&mut self.buf, NFTA_SET_ELEM_LIST_SET_ID, id);
        }
        self.end(start);
    }

    /// `NFT_MSG_NEWSETELEM` messages adding `elements` to the set named `set`, which the batch
    /// created or was told exists ([`existing_table`](Batch::existing_table)); chunked like
    /// [`add_elements`](Batch::add_elements).
    pub fn add_set_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
    ) -> Result<(), Error> {
        self.put_named_set_elements(family, table, set, elements, ElementMessage::Add)
    }

    /// `NFT_MSG_DELSETELEM` messages removing the elements with these keys (their data and
    /// comments are ignored) from the set named `set`, chunked under [`MAX_SETELEM_MESSAGE`].
    pub fn delete_set_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
    ) -> Result<(), Error> {
        self.put_named_set_elements(family, table, set, elements, ElementMessage::Delete)
    }

    fn put_named_set_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
        message: ElementMessage,
    ) -> Result<(), Error> {
        let object = format!("elements of set {family} {table} {set}");
        let fail = |kind| Error {
            object: object.clone(),
            kind,
        };
        let key = (family, table.to_owned(), set.to_owned());
        let schema = self
            .schemas
            .get(&key)
            .ok_or_else(|| fail(ErrorKind::UnknownSet(format!("{family} {table} {set}"))))?;
        let encoded = match message {
            ElementMessage::Add => encode_elements(schema, elements),
            ElementMessage::Delete => encode_element_keys(schema, elements),
        }
        .map_err(fail)?;
        let id = self.sets.get(&key).and_then(|info| info.id);
        self.put_element_chunks(family, table, set, id, message, &encoded)
            .map_err(fail)
    }

    /// The messages of one operation of a plan (`kube_nft_compiler::plan::Op`), in knftables'
    /// verbs: `add`/`delete` of tables, chains, sets, rules (add only: a rule has no identity
    /// without its kernel handle) and elements, `flush` of chains and sets. Chains and sets are
    /// declared without their rules or elements, which are separate operations.
    pub fn add_plan_op(&mut self, op: &plan::Op) -> Result<(), Error> {
        let (family, table) = (op.family, op.table.as_str());
        match (op.verb, &op.object) {
            (Verb::Add, Object::Table { comment }) => {
                self.add_table(family, table, comment.as_deref())
            }
            (Verb::Delete, Object::Table { .. }) => self.delete_table(family, table),
            (Verb::Add, Object::Chain(header)) => self.add_chain(family, table, &header.to_chain()),
            (Verb::Flush, Object::Chain(header)) => self.flush_chain(family, table, &header.name),
            (Verb::Delete, Object::Chain(header)) => self.delete_chain(family, table, &header.name),
            (Verb::Add, Object::Set(header)) => self.add_set(family, table, &header.to_set())?,
            (Verb::Flush, Object::Set(header)) => self.flush_set(family, table, &header.name),
            (Verb::Delete, Object::Set(header)) => self.delete_set(family, table, &header.name),
            (Verb::Add, Object::Rule { chain, rule }) => {
                self.add_rule(family, table, chain, rule)?
            }
            (Verb::Add, Object::Elements { set, elements }) => {
                self.add_set_elements(family, table, set, elements)?
            }
            (Verb::Delete, Object::Elements { set, elements }) => {
                self.delete_set_elements(family, table, set, elements)?
            }
            (verb @ (Verb::Flush | Verb::Delete), object) => {
                let kind = object.kind().keyword();
                return Err(Error {
                    object: format!("{} {kind} in table {family} {table}", verb.keyword()),
                    kind: ErrorKind::Unsupported(format!(
                        "{} of a {kind} (nf_tables needs a rule handle, or has no such operation)",
                        verb.keyword()
                    )),
                });
            }
        }
        Ok(())
    }

    fn remember_set(&mut self, family: Family, table: &str, set: &ir::Set, id: Option<u32>) {
        let key = (family, table.to_owned(), set.name.clone());
        let interval_concat = set.flags.interval && set.key.len() > 1;
        self.sets.insert(
            key.clone(),
            SetInfo {
                id,
                interval_concat,
            },
        );
        self.schemas.insert(key, SetSchema::of(set));
    }

    /// The batch's knowledge of a set it created.
    pub(crate) fn set_info(&self, family: Family, table: &str, set: &str) -> Option<SetInfo> {
        self.sets
            .get(&(family, table.to_owned(), set.to_owned()))
            .copied()
    }

    /// Creates the anonymous `integer : addr . port` map of a numgen DNAT and fills it.
    fn add_numgen_map(
        &mut self,
        family: Family,
        table: &str,
        targets: &[(IpAddr, u16)],
    ) -> Result<u32, ErrorKind> {
        let addr_type = family.addr_type();
        let data = DataShape::of(&[addr_type, DataType::InetService])?;
        let id = self.take_set_id();
        // The kernel replaces `%d` with the first free number (`__map0`, `__map1`, …); the
        // rule and the elements find the set through its id.
        let name = "__map%d";
        let start = self.begin_nft(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            family,
            OpKind::AddSet,
            format!("{family} {table} {name} (anonymous map of a numgen dnat)"),
        );
        let buf = &mut self.buf;
        attr::put_strz(buf, NFTA_SET_TABLE, table);
        attr::put_strz(buf, NFTA_SET_NAME, name);
        attr::put_be32(
            buf,
            NFTA_SET_FLAGS,
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP,
        );
        attr::put_be32(buf, NFTA_SET_KEY_TYPE, type_id(DataType::Integer));
        attr::put_be32(buf, NFTA_SET_KEY_LEN, 4);
        attr::put_be32(buf, NFTA_SET_DATA_TYPE, data.type_id);
        attr::put_be32(buf, NFTA_SET_DATA_LEN, data.len);
        attr::put_be32(buf, NFTA_SET_ID, id);
        let desc = attr::nest_start(buf, NFTA_SET_DESC);
        attr::put_be32(buf, NFTA_SET_DESC_SIZE, targets.len() as u32);
        close_small_nest(buf, desc);
        let key = KeyShape::of(&[DataType::Integer])?;
        let udata = set_udata(&key, Some(&data), None);
        attr::put(buf, NFTA_SET_USERDATA, udata.bytes());
        self.end(start);

        let mut encoded = Vec::with_capacity(targets.len());
        for (index, (addr, port)) in targets.iter().enumerate() {
            let element = Element {
                key: vec![Value::Int(index as u32)],
                data: Some(ElemData::Values(vec![
                    Value::Addr(*addr),
                    Value::Port(*port),
                ])),
                comment: None,
            };
            let data_types = [addr_type, DataType::InetService];
            put_plain_element(&mut encoded, &element, &[DataType::Integer], &data_types)?;
        }
        self.put_element_chunks(family, table, name, Some(id), ElementMessage::Add, &encoded)?;
        Ok(id)
    }

    /// Packs encoded elements (`NFTA_LIST_ELEM` nests) into as few NEWSETELEM (or DELSETELEM)
    /// messages as fit.
    fn put_element_chunks(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        id: Option<u32>,
        message: ElementMessage,
        elements: &[Vec<u8>],
    ) -> Result<(), ErrorKind> {
        let (msg, flags, kind) = match message {
            ElementMessage::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE, OpKind::AddElements),
            ElementMessage::Delete => (NFT_MSG_DELSETELEM, 0, OpKind::DeleteElements),
        };
        let mut rest = elements;
        let mut first_index = 0;
        while !rest.is_empty() {
            let start = self.begin_nft(msg, flags, family, kind, String::new());
            attr::put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, table);
            attr::put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_SET, set);
            if let Some(id) = id {
                attr::put_be32(&mut self.buf, NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            let nest = attr::nest_start(&mut self.buf, NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut taken = 0;
            for element in rest {
                let used = self.buf.len() - start;
                if used + element.len() > MAX_SETELEM_MESSAGE && taken > 0 {
                    break;
                }
                self.buf.extend_from_slice(element);
                taken += 1;
            }
            if self.buf.len() - start > MAX_SETELEM_MESSAGE {
                self.abandon(start);
                return Err(ErrorKind::TooLarge);
            }
            if attr::nest_end(&mut self.buf, nest).is_err() {
                self.abandon(start);
                return Err(ErrorKind::TooLarge);
            }
            self.end(start);
            if let Some(op) = self.ops.last_mut() {
                op.object = format!(
                    "{family} {table} {set} (elements {} to {} of {})",
                    first_index + 1,
                    first_index + taken,
                    elements.len()
                );
            }
            first_index += taken;
            rest = &rest[taken..];
        }
        Ok(())
    }

    fn take_set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    /// Starts an nf_tables object message for `family`.
    fn begin_nft(
        &mut self,
        msg: u16,
        flags: u16,
        family: Family,
        kind: OpKind,
        object: String,
    ) -> usize {
        let nfproto = match family {
            Family::Ip => NFPROTO_IPV4,
            Family::Ip6 => NFPROTO_IPV6,
        };
        self.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            nfproto,
            0,
            kind,
            object,
        )
    }

    /// Writes `nlmsghdr` (length patched in [`end`](Batch::end)) and `nfgenmsg`, and records the
    /// operation under the message's sequence number.
    fn begin(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        kind: OpKind,
        object: String,
    ) -> usize {
        let start = self.buf.len();
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        // Port id 0: the kernel fills in the sender's.
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg: family, version, res_id (big endian; the subsystem for batches).
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.ops.push(Op { seq, kind, object });
        start
    }

    /// Patches the message length. Message lengths are `u32`; only nests are limited.
    fn end(&mut self, start: usize) {
        attr::pad(&mut self.buf);
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        debug_assert!(self.buf.len() - start >= NLMSG_HDRLEN);
    }

    /// Drops a half-written message and its sequence number.
    fn abandon(&mut self, start: usize) {
        self.buf.truncate(start);
        if let Some(op) = self.ops.pop() {
            self.next_seq = op.seq;
        }
    }
}

/// Closes a nest that holds a handful of small attributes and so cannot exceed 64 KiB.
fn close_small_nest(buf: &mut [u8], start: usize) {
    // A few dozen bytes at most; the length always fits.
    let _ = attr::nest_end(buf, start);
}

/// `NF_INET_*` hook number.
fn hook_number(hook: Hook) -> u32 {
    match hook {
        Hook::Prerouting => NF_INET_PRE_ROUTING,
        Hook::Input => NF_INET_LOCAL_IN,
        Hook::Forward => NF_INET_FORWARD,
        Hook::Output => NF_INET_LOCAL_OUT,
        Hook::Postrouting => NF_INET_POST_ROUTING,
    }
}

/// nft's numeric id of a data type (`enum datatypes` in nft's datatype.h), stored in the set so
/// that `nft list` knows how to print keys and data.
pub(crate) fn type_id(ty: DataType) -> u32 {
    match ty {
        DataType::Verdict => 1,
        DataType::Integer => 4,
        DataType::Ipv4Addr => 7,
        DataType::Ipv6Addr => 8,
        DataType::InetProto => 12,
        DataType::InetService => 13,
        DataType::Mark => 19,
        DataType::CtState => 26,
        DataType::CtDir => 27,
        DataType::CtStatus => 28,
        DataType::FibAddrType => 38,
        DataType::Ifname => 41,
    }
}

/// Bytes a value of the type occupies in a register or set key (before padding to 4).
pub(crate) fn type_len(ty: DataType) -> u32 {
    match ty {
        DataType::Ipv4Addr => 4,
        DataType::Ipv6Addr => 16,
        DataType::InetProto | DataType::CtDir => 1,
        DataType::InetService => 2,
        DataType::Mark
        | DataType::CtState
        | DataType::CtStatus
        | DataType::FibAddrType
        | DataType::Integer => 4,
        DataType::Ifname => IFNAMSIZ,
        DataType::Verdict => 0,
    }
}

/// The size of an interface name (`ifname`, `meta iifname`), terminating zero included.
pub(crate) const IFNAMSIZ: u32 = 16;

/// nft's byte order of a data type, written to set user data: `nft list` byte-swaps keys of
/// host-order types before printing them (without it a numgen map prints `16777216` for `1`).
fn type_byteorder(ty: DataType) -> u32 {
    match ty {
        DataType::Ipv4Addr | DataType::Ipv6Addr | DataType::InetService => BYTEORDER_BIG_ENDIAN,
        DataType::Mark
        | DataType::CtState
        | DataType::CtStatus
        | DataType::FibAddrType
        | DataType::Ifname
        | DataType::Integer => BYTEORDER_HOST_ENDIAN,
        // A single byte has no order; nft leaves it invalid, as for verdicts.
        DataType::InetProto | DataType::CtDir | DataType::Verdict => BYTEORDER_INVALID,
    }
}

/// Rounds up to the 4-byte register size; every part of a concatenation starts in its own
/// 32-bit register.
pub(crate) fn padded(len: u32) -> u32 {
    len.div_ceil(4) * 4
}

/// A set key's type id, length and byte order.
struct KeyShape {
    type_id: u32,
    len: u32,
    byteorder: u32,
    concat: bool,
}

impl KeyShape {
    fn of(types: &[DataType]) -> Result<KeyShape, ErrorKind> {
        match types {
            [] => Err(ErrorKind::Unsupported("a set key without a type".into())),
            [ty] if *ty == DataType::Verdict => {
                Err(ErrorKind::Unsupported("verdict as a set key type".into()))
            }
            [ty] => Ok(KeyShape {
                type_id: type_id(*ty),
                len: type_len(*ty),
                byteorder: type_byteorder(*ty),
                concat: false,
            }),
            types => {
                if types.contains(&DataType::Verdict) {
                    return Err(ErrorKind::Unsupported(
                        "verdict inside a concatenation".into(),
                    ));
                }
                // nft's concatenated type id: 6 bits per part, first part highest.
                let type_id = types.iter().fold(0, |acc, ty| (acc << 6) | type_id(*ty));
                let len = types.iter().map(|ty| padded(type_len(*ty))).sum();
                Ok(KeyShape {
                    type_id,
                    len,
                    byteorder: BYTEORDER_INVALID,
                    concat: true,
                })
            }
        }
    }
}

/// A map's data type id, length and byte order.
struct DataShape {
    type_id: u32,
    len: u32,
    byteorder: u32,
    concat: bool,
}

impl DataShape {
    fn of(types: &[DataType]) -> Result<DataShape, ErrorKind> {
        if types == [DataType::Verdict] {
            return Ok(DataShape {
                type_id: NFT_DATA_VERDICT,
                len: 0,
                byteorder: BYTEORDER_INVALID,
                concat: false,
            });
        }
        let key = KeyShape::of(types)?;
        Ok(DataShape {
            type_id: key.type_id,
            len: key.len,
            byteorder: key.byteorder,
            concat: key.concat,
        })
    }
}

/// The set user data nft 1.0.6 writes: key byte order, data byte order (maps), a `typeof`
/// record for concatenations (an empty concatenation expression, which tells nft to fall back
/// to the declared types), `DATA_INTERVAL` 0 for maps, then the comment.
fn set_udata(key: &KeyShape, data: Option<&DataShape>, comment: Option<&str>) -> Udata {
    let mut udata = Udata::default();
    udata.put_u32(UDATA_SET_KEYBYTEORDER, key.byteorder);
    if let Some(data) = data {
        udata.put_u32(UDATA_SET_DATABYTEORDER, data.byteorder);
    }
    let mut concat_typeof = Udata::default();
    concat_typeof
        .put_u32(UDATA_SET_TYPEOF_EXPR, NFT_EXPR_CONCAT)
        .put(UDATA_SET_TYPEOF_DATA, &[]);
    if key.concat {
        udata.put_nest(UDATA_SET_KEY_TYPEOF, &concat_typeof);
    }
    if let Some(data) = data {
        if data.concat {
            udata.put_nest(UDATA_SET_DATA_TYPEOF, &concat_typeof);
        }
        udata.put_u32(UDATA_SET_DATA_INTERVAL, 0);
    }
    if let Some(comment) = comment {
        udata.put_strz(UDATA_SET_COMMENT, &sanitize_comment(comment));
    }
    udata
}

/// The set user data nft 1.0.6 writes for a set declared with `typeof` (a key with an integer
/// part, see `ir::typeof_expr`): both byte orders invalid, then the key's and the data's
/// expressions, from which `nft list` prints `typeof ip daddr . … : ip daddr . th dport`,
/// `DATA_INTERVAL` 0 and the comment.
fn typeof_set_udata(set: &ir::Set, family: Family) -> Result<Udata, ErrorKind> {
    let mut udata = Udata::default();
    udata.put_u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_INVALID);
    if set.is_map() {
        udata.put_u32(UDATA_SET_DATABYTEORDER, BYTEORDER_INVALID);
    }
    udata.put_nest(UDATA_SET_KEY_TYPEOF, &typeof_udata(&set.key, family)?);
    if set.is_map() {
        udata.put_nest(UDATA_SET_DATA_TYPEOF, &typeof_udata(&set.data, family)?);
        udata.put_u32(UDATA_SET_DATA_INTERVAL, 0);
    }
    if let Some(comment) = &set.comment {
        udata.put_strz(UDATA_SET_COMMENT, &sanitize_comment(comment));
    }
    Ok(udata)
}

/// nft's `typeof` record of the canonical expressions of `types`: a concatenation of them, or
/// the one expression. Each expression is its nft expression type and that type's own record:
/// payload (type 7) its protocol description and header field template ids, meta (9) its key,
/// numgen (23) its type, modulus and offset. The ids are nft 1.0.6's (`proto_desc_id`,
/// `ip_hdr_fields` …), read from the records nft writes for the same declaration.
fn typeof_udata(types: &[DataType], family: Family) -> Result<Udata, ErrorKind> {
    const EXPR_PAYLOAD: u32 = 7;
    const EXPR_META: u32 = 9;
    const EXPR_NUMGEN: u32 = 23;
    let one = |ty: DataType| -> Result<Udata, ErrorKind> {
        let mut data = Udata::default();
        let expr = match (ty, family) {
            // PROTO_DESC_IP / IPHDR_DADDR, PROTO_DESC_IP6 / IP6HDR_DADDR, PROTO_DESC_TH /
            // THDR_DPORT.
            (DataType::Ipv4Addr, Family::Ip) => {
                data.put_u32(0, 12).put_u32(1, 12);
                EXPR_PAYLOAD
            }
            (DataType::Ipv6Addr, Family::Ip6) => {
                data.put_u32(0, 13).put_u32(1, 9);
                EXPR_PAYLOAD
            }
            (DataType::InetService, _) => {
                data.put_u32(0, 11).put_u32(1, 2);
                EXPR_PAYLOAD
            }
            (DataType::InetProto, _) => {
                data.put_u32(0, NFT_META_L4PROTO);
                EXPR_META
            }
            (DataType::Integer, _) => {
                data.put_u32(0, NFT_NG_RANDOM)
                    .put_u32(1, ir::SLOT_TYPEOF_MODULUS)
                    .put_u32(2, 0);
                EXPR_NUMGEN
            }
            _ => {
                return Err(ErrorKind::Unsupported(format!(
                    "{} in a typeof declaration of an {family} set",
                    ty.keyword()
                )))
            }
        };
        let mut record = Udata::default();
        record
            .put_u32(UDATA_SET_TYPEOF_EXPR, expr)
            .put_nest(UDATA_SET_TYPEOF_DATA, &data);
        Ok(record)
    };
    if let [ty] = types {
        return one(*ty);
    }
    let mut parts = Udata::default();
    for (i, ty) in types.iter().enumerate() {
        parts.put_nest(i as u8, &one(*ty)?);
    }
    let mut record = Udata::default();
    record
        .put_u32(UDATA_SET_TYPEOF_EXPR, NFT_EXPR_CONCAT)
        .put_nest(UDATA_SET_TYPEOF_DATA, &parts);
    Ok(record)
}

/// The bytes of a constant of type `ty`, exactly `type_len(ty)` long, in the byte order the
/// kernel compares them in: network order for addresses and ports, host order for marks,
/// conntrack bits, fib types and integers (what `meta`, `ct`, `fib` and `numgen` load).
pub(crate) fn value_bytes(value: &Value, ty: DataType) -> Result<Vec<u8>, ErrorKind> {
    let bytes = match (ty, value) {
        (DataType::Ipv4Addr, Value::Addr(IpAddr::V4(a))) => a.octets().to_vec(),
        (DataType::Ipv6Addr, Value::Addr(IpAddr::V6(a))) => a.octets().to_vec(),
        (DataType::InetProto, Value::Proto(p)) => vec![p.number()],
        (DataType::InetService, Value::Port(p)) => p.to_be_bytes().to_vec(),
        (DataType::Mark | DataType::Integer, Value::Int(n)) => n.to_ne_bytes().to_vec(),
        // RTN_LOCAL.
        (DataType::FibAddrType, Value::FibLocal) => 2u32.to_ne_bytes().to_vec(),
        // NF_CT_STATE_BIT(IP_CT_NEW).
        (DataType::CtState, Value::CtNew) => 8u32.to_ne_bytes().to_vec(),
        // IPS_DST_NAT.
        (DataType::CtStatus, Value::CtDnat) => 0x20u32.to_ne_bytes().to_vec(),
        (DataType::CtDir, Value::CtDir(CtDir::Original)) => vec![0],
        (DataType::CtDir, Value::CtDir(CtDir::Reply)) => vec![1],
        // The whole name, zero-padded to IFNAMSIZ: equality with the name, not a prefix.
        (DataType::Ifname, Value::Iface(name)) if name.len() < IFNAMSIZ as usize => {
            let mut bytes = name.as_bytes().to_vec();
            bytes.resize(IFNAMSIZ as usize, 0);
            bytes
        }
        _ => {
            return Err(ErrorKind::Value {
                value: format!("{value:?}"),
                ty: ty.keyword(),
            })
        }
    };
    Ok(bytes)
}

/// Concatenated value bytes: each part padded to 4 bytes; a single part is not padded.
fn concat_bytes(values: &[Value], types: &[DataType]) -> Result<Vec<u8>, ErrorKind> {
    if values.len() != types.len() {
        return Err(ErrorKind::Value {
            value: format!("{values:?}"),
            ty: "value list of the set's arity",
        });
    }
    if let ([value], [ty]) = (values, types) {
        return value_bytes(value, *ty);
    }
    let mut out = Vec::new();
    for (value, ty) in values.iter().zip(types) {
        out.extend(range_part(value, *ty)?.0);
        attr::pad(&mut out);
    }
    Ok(out)
}

/// The first and last value a key part covers: an address covers itself, a prefix its whole
/// range (for interval sets); everything else is a single value.
fn range_part(value: &Value, ty: DataType) -> Result<(Vec<u8>, Vec<u8>), ErrorKind> {
    match (ty, value) {
        (DataType::Ipv4Addr, Value::Prefix(ipnet::IpNet::V4(net))) => Ok((
            net.network().octets().to_vec(),
            net.broadcast().octets().to_vec(),
        )),
        (DataType::Ipv6Addr, Value::Prefix(ipnet::IpNet::V6(net))) => Ok((
            net.network().octets().to_vec(),
            net.broadcast().octets().to_vec(),
        )),
        _ => {
            let bytes = value_bytes(value, ty)?;
            Ok((bytes.clone(), bytes))
        }
    }
}

/// The value right after `bytes` read as a big-endian number, or `None` when `bytes` is the
/// largest value (all ones): then the interval is open-ended.
fn successor(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for byte in out.iter_mut().rev() {
        if *byte == 0xff {
            *byte = 0;
        } else {
            *byte += 1;
            return Some(out);
        }
    }
    None
}

/// Elements of a set with this schema as encoded `NFTA_LIST_ELEM` nests.
fn encode_elements(schema: &SetSchema, elements: &[Element]) -> Result<Vec<Vec<u8>>, ErrorKind> {
    let SetSchema {
        key,
        data,
        interval,
    } = schema;
    let mut out = Vec::with_capacity(elements.len());
    for element in elements {
        if *interval && key.len() == 1 {
            put_interval_element(&mut out, element, key[0], data)?;
        } else if *interval {
            put_concat_interval_element(&mut out, element, key, data)?;
        } else {
            put_plain_element(&mut out, element, key, data)?;
        }
    }
    Ok(out)
}

/// The keys of elements to delete, as encoded `NFTA_LIST_ELEM` nests. The kernel finds an
/// element by its key alone (data and user data are not compared), so a delete carries only the
/// key, laid out as the add laid it out: the start and the `INTERVAL_END`-flagged end of a
/// single-field interval (rbtree), the key and `KEY_END` of a concatenated one (pipapo).
fn encode_element_keys(
    schema: &SetSchema,
    elements: &[Element],
) -> Result<Vec<Vec<u8>>, ErrorKind> {
    let mut out = Vec::with_capacity(elements.len());
    let mut put = |flags: Option<u32>, key: &[u8], key_end: Option<&[u8]>| {
        let mut buf = Vec::new();
        let elem = attr::nest_start(&mut buf, NFTA_LIST_ELEM);
        if let Some(flags) = flags {
            attr::put_be32(&mut buf, NFTA_SET_ELEM_FLAGS, flags);
        }
        put_data_value(&mut buf, NFTA_SET_ELEM_KEY, key);
        if let Some(key_end) = key_end {
            put_data_value(&mut buf, NFTA_SET_ELEM_KEY_END, key_end);
        }
        close_small_nest(&mut buf, elem);
        out.push(buf);
    };
    for element in elements {
        let arity_error = || ErrorKind::Value {
            value: format!("{:?}", element.key),
            ty: "key of the set's arity",
        };
        if element.key.len() != schema.key.len() {
            return Err(arity_error());
        }
        match (
            schema.interval,
            element.key.as_slice(),
            schema.key.as_slice(),
        ) {
            (true, [value], [ty]) => {
                let (first, last) = range_part(value, *ty)?;
                put(None, &first, None);
                if let Some(end) = successor(&last) {
                    put(Some(NFT_SET_ELEM_INTERVAL_END), &end, None);
                }
            }
            (true, values, types) => {
                let (mut first, mut last) = (Vec::new(), Vec::new());
                for (value, ty) in values.iter().zip(types) {
                    let (a, b) = range_part(value, *ty)?;
                    first.extend(a);
                    attr::pad(&mut first);
                    last.extend(b);
                    attr::pad(&mut last);
                }
                put(None, &first, Some(&last));
            }
            (false, values, types) => put(None, &concat_bytes(values, types)?, None),
        }
    }
    Ok(out)
}

/// Whether element messages add or delete.
#[derive(Clone, Copy, Debug)]
enum ElementMessage {
    Add,
    Delete,
}

/// Element data (`NFTA_SET_ELEM_DATA`) and user data (comment, interval flags).
fn put_element_tail(
    buf: &mut Vec<u8>,
    element: &Element,
    data_types: &[DataType],
    open_interval: bool,
) -> Result<(), ErrorKind> {
    match &element.data {
        Some(ElemData::Verdict(verdict)) => {
            let nest = attr::nest_start(buf, NFTA_SET_ELEM_DATA);
            put_verdict(buf, verdict);
            close_small_nest(buf, nest);
        }
        Some(ElemData::Values(values)) => {
            let bytes = concat_bytes(values, data_types)?;
            let nest = attr::nest_start(buf, NFTA_SET_ELEM_DATA);
            attr::put(buf, NFTA_DATA_VALUE, &bytes);
            close_small_nest(buf, nest);
        }
        None => {}
    }
    let mut udata = Udata::default();
    if let Some(comment) = &element.comment {
        udata.put_strz(UDATA_SET_ELEM_COMMENT, &sanitize_comment(comment));
    }
    if open_interval {
        // Without this nft prints `::/0` as `::` (it cannot tell an open interval from a
        // single value).
        udata.put_u32(UDATA_SET_ELEM_FLAGS, UDATA_SET_ELEM_F_INTERVAL_OPEN);
    }
    if !udata.is_empty() {
        attr::put(buf, NFTA_SET_ELEM_USERDATA, udata.bytes());
    }
    Ok(())
}

/// An element of a set without intervals: key, data, user data.
fn put_plain_element(
    out: &mut Vec<Vec<u8>>,
    element: &Element,
    key_types: &[DataType],
    data_types: &[DataType],
) -> Result<(), ErrorKind> {
    let key = concat_bytes(&element.key, key_types)?;
    let mut buf = Vec::new();
    let elem = attr::nest_start(&mut buf, NFTA_LIST_ELEM);
    put_data_value(&mut buf, NFTA_SET_ELEM_KEY, &key);
    put_element_tail(&mut buf, element, data_types, false)?;
    attr::nest_end(&mut buf, elem).map_err(|_| ErrorKind::TooLarge)?;
    out.push(buf);
    Ok(())
}

/// An element of a single-field interval set (rbtree backend): nft 1.0.6 sends the start and,
/// as a separate element flagged `NFT_SET_ELEM_INTERVAL_END`, the first value after the range.
/// A range that reaches the top of the key space has no end element (its start carries nft's
/// "open interval" user data flag instead).
fn put_interval_element(
    out: &mut Vec<Vec<u8>>,
    element: &Element,
    key_type: DataType,
    data_types: &[DataType],
) -> Result<(), ErrorKind> {
    let [value] = element.key.as_slice() else {
        return Err(ErrorKind::Value {
            value: format!("{:?}", element.key),
            ty: key_type.keyword(),
        });
    };
    let (first, last) = range_part(value, key_type)?;
    let end = successor(&last);
    let mut buf = Vec::new();
    let elem = attr::nest_start(&mut buf, NFTA_LIST_ELEM);
    put_data_value(&mut buf, NFTA_SET_ELEM_KEY, &first);
    put_element_tail(&mut buf, element, data_types, end.is_none())?;
    attr::nest_end(&mut buf, elem).map_err(|_| ErrorKind::TooLarge)?;
    out.push(buf);
    if let Some(end) = end {
        let mut buf = Vec::new();
        let elem = attr::nest_start(&mut buf, NFTA_LIST_ELEM);
        attr::put_be32(&mut buf, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        put_data_value(&mut buf, NFTA_SET_ELEM_KEY, &end);
        attr::nest_end(&mut buf, elem).map_err(|_| ErrorKind::TooLarge)?;
        out.push(buf);
    }
    Ok(())
}

/// An element of a concatenated interval set (pipapo backend): one element whose key holds
/// every field's first value and whose `NFTA_SET_ELEM_KEY_END` holds every field's last value
/// (inclusive), as nft 1.0.6 sends it.
fn put_concat_interval_element(
    out: &mut Vec<Vec<u8>>,
    element: &Element,
    key_types: &[DataType],
    data_types: &[DataType],
) -> Result<(), ErrorKind> {
    if element.key.len() != key_types.len() {
        return Err(ErrorKind::Value {
            value: format!("{:?}", element.key),
            ty: "key of the set's arity",
        });
    }
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for (value, ty) in element.key.iter().zip(key_types) {
        let (a, b) = range_part(value, *ty)?;
        first.extend(a);
        attr::pad(&mut first);
        last.extend(b);
        attr::pad(&mut last);
    }
    let mut buf = Vec::new();
    let elem = attr::nest_start(&mut buf, NFTA_LIST_ELEM);
    put_data_value(&mut buf, NFTA_SET_ELEM_KEY, &first);
    put_data_value(&mut buf, NFTA_SET_ELEM_KEY_END, &last);
    put_element_tail(&mut buf, element, data_types, false)?;
    attr::nest_end(&mut buf, elem).map_err(|_| ErrorKind::TooLarge)?;
    out.push(buf);
    Ok(())
}

/// `ty { NFTA_DATA_VALUE bytes }`: how keys, compared constants and immediates are carried.
pub(crate) fn put_data_value(buf: &mut Vec<u8>, ty: u16, bytes: &[u8]) {
    let nest = attr::nest_start(buf, ty);
    attr::put(buf, NFTA_DATA_VALUE, bytes);
    close_small_nest(buf, nest);
}

/// `NFTA_DATA_VERDICT { code, chain }`, inside a data attribute the caller opened.
pub(crate) fn put_verdict(buf: &mut Vec<u8>, verdict: &Verdict) {
    let (code, chain) = match verdict {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
        Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
    };
    let nest = attr::nest_start(buf, NFTA_DATA_VERDICT);
    attr::put_be32(buf, NFTA_VERDICT_CODE, code);
    if let Some(chain) = chain {
        attr::put_strz(buf, NFTA_VERDICT_CHAIN, chain);
    }
    close_small_nest(buf, nest);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube_nft_compiler::ir::{
        BaseChain, Chain, ChainKind, Hook, L4Proto, NatTarget, Rule, Set, Stmt, Table,
    };

    use super::*;

    /// One message of an encoded batch.
    #[derive(Debug)]
    struct Msg {
        ty: u16,
        flags: u16,
        seq: u32,
        /// Everything after `nlmsghdr` and `nfgenmsg`: the attributes.
        attrs: Vec<u8>,
    }

    fn messages(bytes: &[u8]) -> Vec<Msg> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let word = |i: usize| u32::from_ne_bytes(bytes[at + i..at + i + 4].try_into().unwrap());
            let half = |i: usize| u16::from_ne_bytes(bytes[at + i..at + i + 2].try_into().unwrap());
            let len = word(0) as usize;
            assert!(
                len >= 20 && len.is_multiple_of(4),
                "bad message length {len}"
            );
            out.push(Msg {
                ty: half(4),
                flags: half(6),
                seq: word(8),
                attrs: bytes[at + 20..at + len].to_vec(),
            });
            at += len;
        }
        assert_eq!(at, bytes.len());
        out
    }

    fn tiny_table() -> Table {
        let mut table = Table::new(Family::Ip, "kube-nft");
        table.comment = Some("rules for kube-nft".into());
        let chain = |name: &str, base, rules| Chain {
            name: name.into(),
            base,
            comment: None,
            rules,
        };
        table.chains = BTreeMap::from([
            (
                "nat-prerouting".to_owned(),
                chain(
                    "nat-prerouting",
                    Some(BaseChain {
                        kind: ChainKind::Nat,
                        hook: Hook::Prerouting,
                        priority: -100,
                    }),
                    vec![Rule::new(vec![Stmt::Vmap {
                        left: ir::Expr::Daddr(Family::Ip),
                        map: "vips".into(),
                    }])],
                ),
            ),
            ("ep".to_owned(), chain("ep", None, vec![ep_rule()])),
        ]);
        let mut vips = Set::new("vips", vec![DataType::Ipv4Addr], vec![DataType::Verdict]);
        vips.elements = vec![Element {
            key: vec![Value::Addr("172.30.0.1".parse().unwrap())],
            data: Some(ElemData::Verdict(Verdict::Goto("ep".into()))),
            comment: None,
        }];
        table.sets.insert("vips".into(), vips);
        table
    }

    fn ep_rule() -> Rule {
        Rule::new(vec![Stmt::Dnat(NatTarget::Addr {
            proto: L4Proto::Tcp,
            addr: "10.180.0.1".parse().unwrap(),
            port: 8080,
        })])
        .with_comment("ns1/web:http")
    }

    const MSG: u16 = NFNL_SUBSYS_NFTABLES << 8;

    #[test]
    fn a_tiny_ruleset_is_one_batch_in_declaration_order_and_only_end_asks_for_an_ack() {
        let mut batch = Batch::new(100);
        batch.add_table(Family::Ip, "kube-nft", None);
        batch.delete_table(Family::Ip, "kube-nft");
        let table = tiny_table();
        batch.add_table(Family::Ip, "kube-nft", table.comment.as_deref());
        batch.add_table_contents(&table).unwrap();
        let tx = batch.finish();
        let msgs = messages(tx.bytes());
        let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                MSG | NFT_MSG_NEWTABLE,
                MSG | NFT_MSG_DELTABLE,
                MSG | NFT_MSG_NEWTABLE,
                MSG | NFT_MSG_NEWCHAIN, // nat-prerouting: base chains first
                MSG | NFT_MSG_NEWCHAIN, // ep
                MSG | NFT_MSG_NEWSET,
                MSG | NFT_MSG_NEWSETELEM,
                MSG | NFT_MSG_NEWRULE, // ep
                MSG | NFT_MSG_NEWRULE, // nat-prerouting
                NFNL_MSG_BATCH_END,
            ]
        );
        let seqs: Vec<u32> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (100..111).collect::<Vec<_>>());
        for msg in &msgs {
            assert_ne!(msg.flags & NLM_F_REQUEST, 0);
            let acked = msg.flags & NLM_F_ACK != 0;
            assert_eq!(acked, msg.ty == NFNL_MSG_BATCH_END, "{msg:?}");
        }
        // Rules are appended, never inserted at the head.
        for msg in msgs.iter().filter(|m| m.ty == MSG | NFT_MSG_NEWRULE) {
            assert_ne!(msg.flags & NLM_F_APPEND, 0);
        }
        assert_eq!(tx.end_seq(), 110);
    }

    #[test]
    fn every_seq_maps_to_its_operation_and_object() {
        let mut batch = Batch::new(u32::MAX - 1);
        let table = tiny_table();
        batch.add_table(Family::Ip, "kube-nft", None);
        batch.add_table_contents(&table).unwrap();
        let tx = batch.finish();
        let described: Vec<(u32, OpKind, String)> = tx
            .ops()
            .iter()
            .map(|op| {
                assert_eq!(tx.op(op.seq), Some(op));
                (op.seq, op.kind, op.object.clone())
            })
            .collect();
        // Sequence numbers wrap around like the kernel's u32.
        assert_eq!(
            described,
            [
                (u32::MAX - 1, OpKind::BatchBegin, "nf_tables".into()),
                (u32::MAX, OpKind::AddTable, "ip kube-nft".into()),
                (0, OpKind::AddChain, "ip kube-nft nat-prerouting".into()),
                (1, OpKind::AddChain, "ip kube-nft ep".into()),
                (2, OpKind::AddSet, "ip kube-nft vips".into()),
                (3, OpKind::AddElements, "ip kube-nft vips (elements 1 to 1 of 1)".into()),
                (
                    4,
                    OpKind::AddRule,
                    "ip kube-nft ep meta l4proto tcp dnat to 10.180.0.1:8080 comment \"ns1/web:http\""
                        .into()
                ),
                (5, OpKind::AddRule, "ip kube-nft nat-prerouting ip daddr vmap @vips".into()),
                (6, OpKind::BatchEnd, "nf_tables".into()),
            ]
        );
        assert_eq!(tx.op(7), None);
    }

    #[test]
    fn a_5000_element_map_is_split_into_messages_under_64_kib() {
        let mut set = Set::new(
            "service-ips",
            vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ],
            vec![DataType::Verdict],
        );
        set.elements = (0..5000u32)
            .map(|i| Element {
                key: vec![
                    Value::Addr(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()),
                    Value::Proto(L4Proto::Tcp),
                    Value::Port(80),
                ],
                data: Some(ElemData::Verdict(Verdict::Goto(format!("service-{i:05}")))),
                comment: Some(format!("ns/svc-{i}:http")),
            })
            .collect();
        let mut batch = Batch::new(1);
        batch.add_table(Family::Ip, "kube-nft", None);
        batch.add_set(Family::Ip, "kube-nft", &set).unwrap();
        batch.add_elements(Family::Ip, "kube-nft", &set).unwrap();
        let tx = batch.finish();
        let chunks: Vec<Msg> = messages(tx.bytes())
            .into_iter()
            .filter(|m| m.ty == MSG | NFT_MSG_NEWSETELEM)
            .collect();
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(
                chunk.attrs.len() + 20 <= MAX_SETELEM_MESSAGE,
                "{}",
                chunk.attrs.len()
            );
        }
        // The chunks cover the elements in order, without gaps or overlaps.
        let mut next = 1;
        for op in tx.ops().iter().filter(|op| op.kind == OpKind::AddElements) {
            let prefix = format!("ip kube-nft service-ips (elements {next} to ");
            let rest = op
                .object
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{op:?}"));
            let last: usize = rest.split(' ').next().unwrap().parse().unwrap();
            next = last + 1;
        }
        assert_eq!(next, 5001);
    }

    /// The rule's attributes byte for byte as nft 1.0.6 sends `add rule ip t ep meta l4proto tcp
    /// dnat to 10.180.0.1:8080 comment "ns1/web:http"` (captured with `nft --debug=mnl`, table
    /// `t`): table, chain, then `meta load l4proto => reg 1; cmp eq reg 1 0x06; immediate reg 1
    /// 10.180.0.1; immediate reg 2 8080; nat dnat ip addr_min reg 1 proto_min reg 2 flags 0x2`
    /// and the comment as rule user data.
    #[test]
    fn a_dnat_rule_encodes_like_nft() {
        let nft = "06000100740000000700020065700000e400048024000180090001006d65746100000000\
                   14000280080002000000001008000100000000012c00018008000100636d700020000280\
                   080001000000000108000200000000000c00038005000100060000002c0001800e000100\
                   696d6d6564696174650000001800028008000100000000010c000280080001000ab40001\
                   2c0001800e000100696d6d6564696174650000001800028008000100000000020c000280\
                   060001001f90000038000180080001006e6174002c000280080001000000000108000200\
                   0000000208000300000000010800050000000002080007000000000213000700000d6e73\
                   312f7765623a687474700000";
        let mut batch = Batch::new(1);
        batch.add_rule(Family::Ip, "t", "ep", &ep_rule()).unwrap();
        let tx = batch.finish();
        let msgs = messages(tx.bytes());
        let hex: String = msgs[1].attrs.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, nft.replace(char::is_whitespace, ""));
    }

    /// Top-level attributes of a message (or of a nest's payload) as (type, payload), with the
    /// NESTED flag cleared.
    fn attributes(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 4 {
            let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
            let ty = u16::from_ne_bytes([bytes[2], bytes[3]]) & !NLA_F_NESTED;
            out.push((ty, bytes[4..len].to_vec()));
            bytes = &bytes[len.div_ceil(4) * 4..];
        }
        out
    }

    fn types(attrs: &[(u16, Vec<u8>)]) -> Vec<u16> {
        attrs.iter().map(|(ty, _)| *ty).collect()
    }

    fn plan_op(verb: Verb, object: Object) -> plan::Op {
        plan::Op {
            verb,
            family: Family::Ip,
            table: "kube-nft".into(),
            object,
        }
    }

    #[test]
    fn plan_ops_refer_to_kernel_sets_by_name_and_to_sets_of_the_batch_by_id_too() {
        let table = tiny_table();
        let vips = &table.sets["vips"];
        let elements = |set: &str| Object::Elements {
            set: set.into(),
            elements: vips.elements.clone(),
        };
        let mut batch = Batch::new(1);
        batch.existing_table(&table);
        for (verb, object) in [
            (Verb::Delete, elements("vips")),
            (
                Verb::Flush,
                Object::Chain(plan::ChainHeader::of(&table.chains["ep"])),
            ),
            (Verb::Delete, Object::Set(plan::SetHeader::of(vips))),
            (Verb::Add, Object::Set(plan::SetHeader::of(vips))),
            (Verb::Add, elements("vips")),
        ] {
            batch.add_plan_op(&plan_op(verb, object)).unwrap();
        }
        let tx = batch.finish();
        let msgs = messages(tx.bytes());
        let kinds: Vec<OpKind> = tx.ops().iter().map(|op| op.kind).collect();
        assert_eq!(
            kinds,
            [
                OpKind::BatchBegin,
                OpKind::DeleteElements,
                OpKind::FlushChain,
                OpKind::DeleteSet,
                OpKind::AddSet,
                OpKind::AddElements,
                OpKind::BatchEnd,
            ]
        );
        // The set the kernel holds: name only. The delete carries the key alone.
        let delete = attributes(&msgs[1].attrs);
        assert_eq!(msgs[1].ty, MSG | NFT_MSG_DELSETELEM);
        assert_eq!(
            types(&delete),
            [
                NFTA_SET_ELEM_LIST_TABLE,
                NFTA_SET_ELEM_LIST_SET,
                NFTA_SET_ELEM_LIST_ELEMENTS
            ]
        );
        let listed = attributes(&delete[2].1);
        assert_eq!(types(&attributes(&listed[0].1)), [NFTA_SET_ELEM_KEY]);
        // Flushing a chain is DELRULE with the table and chain and nothing else.
        assert_eq!(msgs[2].ty, MSG | NFT_MSG_DELRULE);
        assert_eq!(
            types(&attributes(&msgs[2].attrs)),
            [NFTA_RULE_TABLE, NFTA_RULE_CHAIN]
        );
        assert_eq!(msgs[3].ty, MSG | NFT_MSG_DELSET);
        // The set recreated in this batch: name and id, with key, data and comment.
        let add = attributes(&msgs[5].attrs);
        assert_eq!(
            types(&add),
            [
                NFTA_SET_ELEM_LIST_TABLE,
                NFTA_SET_ELEM_LIST_SET,
                NFTA_SET_ELEM_LIST_SET_ID,
                NFTA_SET_ELEM_LIST_ELEMENTS
            ]
        );
        let listed = attributes(&add[3].1);
        assert_eq!(
            types(&attributes(&listed[0].1)),
            [NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA]
        );
    }

    #[test]
    fn interval_deletes_carry_the_keys_the_add_laid_out() {
        let v4 = |s: &str| Value::Prefix(s.parse().unwrap());
        let element = |key| Element {
            key,
            data: None,
            comment: Some("ignored on delete".into()),
        };
        let mut ranges = Set::new("ranges", vec![DataType::Ipv4Addr], vec![]);
        ranges.flags.interval = true;
        let mut allow = Set::new(
            "allow",
            vec![DataType::Ipv4Addr, DataType::Ipv4Addr],
            vec![],
        );
        allow.flags.interval = true;
        let mut table = Table::new(Family::Ip, "kube-nft");
        table.sets.insert("ranges".into(), ranges);
        table.sets.insert("allow".into(), allow);
        let mut batch = Batch::new(1);
        batch.existing_table(&table);
        let closed_and_open = [
            element(vec![v4("10.0.0.0/8")]),
            element(vec![v4("255.255.255.0/24")]),
        ];
        batch
            .delete_set_elements(Family::Ip, "kube-nft", "ranges", &closed_and_open)
            .unwrap();
        let concat = [element(vec![v4("198.51.100.1/32"), v4("192.168.0.0/16")])];
        batch
            .delete_set_elements(Family::Ip, "kube-nft", "allow", &concat)
            .unwrap();
        let tx = batch.finish();
        let msgs = messages(tx.bytes());
        let listed = |msg: &Msg| -> Vec<Vec<(u16, Vec<u8>)>> {
            let list = attributes(&msg.attrs).pop().unwrap().1;
            attributes(&list)
                .iter()
                .map(|(_, e)| attributes(e))
                .collect()
        };
        let key = |bytes: &[u8]| attributes(bytes)[0].1.clone();
        // 10.0.0.0/8 is its start and, flagged INTERVAL_END, 11.0.0.0; the open-ended
        // 255.255.255.0/24 has no end element.
        let rbtree = listed(&msgs[1]);
        assert_eq!(rbtree.len(), 3);
        assert_eq!(types(&rbtree[0]), [NFTA_SET_ELEM_KEY]);
        assert_eq!(key(&rbtree[0][0].1), [10, 0, 0, 0]);
        assert_eq!(types(&rbtree[1]), [NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY]);
        assert_eq!(key(&rbtree[1][1].1), [11, 0, 0, 0]);
        assert_eq!(key(&rbtree[2][0].1), [255, 255, 255, 0]);
        // A concatenation is one element with the first and last value of every field.
        let pipapo = listed(&msgs[2]);
        assert_eq!(
            types(&pipapo[0]),
            [NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END]
        );
        assert_eq!(key(&pipapo[0][0].1), [198, 51, 100, 1, 192, 168, 0, 0]);
        assert_eq!(key(&pipapo[0][1].1), [198, 51, 100, 1, 192, 168, 255, 255]);
    }

    #[test]
    fn plan_ops_nf_tables_cannot_express_are_errors() {
        let mut batch = Batch::new(1);
        let rule = Object::Rule {
            chain: "ep".into(),
            rule: ep_rule(),
        };
        let err = batch.add_plan_op(&plan_op(Verb::Delete, rule)).unwrap_err();
        assert_eq!(err.object, "delete rule in table ip kube-nft");
        assert!(matches!(err.kind, ErrorKind::Unsupported(_)), "{err:?}");
        assert_eq!(batch.message_count(), 1);
    }

    #[test]
    fn invalid_constants_are_errors_not_panics() {
        let mut set = Set::new("ports", vec![DataType::InetService], vec![]);
        set.elements = vec![Element {
            key: vec![Value::Addr("10.0.0.1".parse().unwrap())],
            data: None,
            comment: None,
        }];
        let mut batch = Batch::new(1);
        let err = batch.add_elements(Family::Ip, "t", &set).unwrap_err();
        assert_eq!(err.object, "elements of set ip t ports");
        assert!(matches!(
            err.kind,
            ErrorKind::Value {
                ty: "inet_service",
                ..
            }
        ));
        // A failed rule leaves no half-written message behind.
        let before = batch.message_count();
        let rule = Rule::new(vec![Stmt::Match {
            left: ir::Expr::Dport,
            op: ir::CmpOp::Eq,
            right: Value::CtNew,
        }]);
        assert!(batch.add_rule(Family::Ip, "t", "c", &rule).is_err());
        assert_eq!(batch.message_count(), before);
        let tx = batch.finish();
        assert_eq!(messages(tx.bytes()).len(), before + 1);
    }
}
