//! (old IR, new IR) → [`Transaction`]: the ordered operations that turn a kernel holding exactly
//! `old` into one holding exactly `new` when sent as one nftables transaction, in knftables'
//! verbs (`add`, `flush`, `delete`). The runtime diffs against what it last committed and never
//! lists the kernel on the hot path, so [`plan`] is the whole partial sync; [`apply`] is the
//! matching in-memory model of the kernel's semantics (ENOENT, EEXIST, EBUSY), used to prove
//! plans correct and as the fake kernel of runtime tests. Rules have no identity without kernel
//! handles, so a chain whose rules changed is flushed and refilled (kube-proxy's approach; the
//! layout keeps such chains small), while set and map elements are diffed by key. The order of
//! the phases and why it is safe is documented on [`plan`]; [`Transaction`]'s `Display` prints
//! one operation per line in `nft -f` syntax.

mod apply;
mod diff;
#[cfg(test)]
mod tests;
mod text;

use std::collections::BTreeMap;
use std::fmt;

use crate::ir::{BaseChain, Chain, DataType, Element, Family, Rule, Set, SetFlags, Stmt};

pub use apply::{apply, ErrorKind, PlanError};
pub use diff::{plan, plan_owned};

/// An ordered list of operations, meant to be sent as one nftables transaction (one netlink
/// batch), so the kernel goes from the old ruleset to the new one atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Operations in the order they must be applied.
    pub ops: Vec<Op>,
}

impl Transaction {
    /// The number of individual operations: every rule and every element counts one, as does
    /// every table, chain and set operation.
    pub fn len(&self) -> usize {
        self.ops.iter().map(Op::len).sum()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.iter().all(Op::is_empty)
    }

    /// Splits this transaction into three to be committed in order: `prepare` (shared DNAT
    /// chains and maps it creates, with their rules, and slots it adds to shared maps under new
    /// keys), `switch` (everything else: the dispatch elements that now lead there, in-place
    /// slot changes, all other objects) and `retire` (slots deleted from shared maps under keys
    /// not re-added, and shared chains and maps deleted). Parts may be empty; a transaction
    /// that creates or deletes a table is all `switch`, and so are new slots when no shared
    /// chain or map is created (below).
    ///
    /// Why: a packet that crosses a commit can see both generations. nf_tables picks a chain's
    /// rules by the generation current when the packet entered the hook, but a set lookup reads
    /// the current generation each time (`nft_rhash_lookup`, kernel 6.x). A new connection
    /// that took the old dispatch element into, say, `clusterip-random-2` and looks that
    /// chain's map up after the commit would miss slots the commit deleted, leave un-NATed and
    /// be rejected as a ClusterIP packet to no endpoint (`tests/lab.rs`, updates under live
    /// traffic, saw it once); one that read the new dispatch element would enter a chain whose
    /// rules did not exist in its generation. With the new paths committed before any dispatch
    /// element leads to them, and the old ones retired after none does, every path either
    /// generation can take is whole at every commit; between the commits the table holds
    /// unreachable extra objects only.
    pub fn phases(&self) -> [Transaction; 3] {
        use std::collections::BTreeSet;
        // Creating or deleting a table (a cold start, a cleanup) has no old or new paths to
        // keep whole: one phase.
        if (self.ops.iter()).any(|op| matches!(op.object, Object::Table { .. })) {
            let whole = Transaction {
                ops: self.ops.clone(),
            };
            return [Transaction::default(), whole, Transaction::default()];
        }
        let shared = |name: &str| crate::ir::names::is_dnat_chain(name);
        type Id<'a> = (Family, &'a str, &'a str);
        type Key<'a> = (Id<'a>, &'a [crate::ir::Value]);
        let (mut added_sets, mut deleted_sets) = (BTreeSet::<Id<'_>>::new(), BTreeSet::new());
        let (mut added_chains, mut deleted_chains) = (BTreeSet::<Id<'_>>::new(), BTreeSet::new());
        let (mut added_keys, mut deleted_keys) = (BTreeSet::<Key<'_>>::new(), BTreeSet::new());
        for op in &self.ops {
            let table = op.table.as_str();
            match (&op.object, op.verb) {
                (Object::Set(h), Verb::Add) => {
                    added_sets.insert((op.family, table, h.name.as_str()));
                }
                (Object::Set(h), Verb::Delete) => {
                    deleted_sets.insert((op.family, table, h.name.as_str()));
                }
                (Object::Chain(h), Verb::Add) => {
                    added_chains.insert((op.family, table, h.name.as_str()));
                }
                (Object::Chain(h), Verb::Delete) => {
                    deleted_chains.insert((op.family, table, h.name.as_str()));
                }
                (Object::Elements { set, elements }, verb) if shared(set) => {
                    let keys = match verb {
                        Verb::Add => &mut added_keys,
                        _ => &mut deleted_keys,
                    };
                    for e in elements {
                        keys.insert(((op.family, table, set.as_str()), &e.key[..]));
                    }
                }
                _ => {}
            }
        }
        let [mut prepare, mut switch, mut retire] = [Vec::new(), Vec::new(), Vec::new()];
        for op in &self.ops {
            fn named<'a>(op: &'a Op, name: &'a str) -> (Family, &'a str, &'a str) {
                (op.family, op.table.as_str(), name)
            }
            let created_chain = |name: &str| {
                shared(name)
                    && added_chains.contains(&named(op, name))
                    && !deleted_chains.contains(&named(op, name))
            };
            match (&op.object, op.verb) {
                (Object::Set(h), Verb::Add)
                    if shared(&h.name) && !deleted_sets.contains(&named(op, &h.name)) =>
                {
                    prepare.push(op.clone());
                }
                (Object::Chain(h), Verb::Add) if created_chain(&h.name) => {
                    prepare.push(op.clone());
                }
                (Object::Rule { chain, .. }, Verb::Add) if created_chain(chain) => {
                    prepare.push(op.clone());
                }
                (Object::Elements { set, elements }, verb) if shared(set) => {
                    let (moved, kept): (Vec<_>, Vec<_>) = elements.iter().cloned().partition(|e| {
                        let key = (named(op, set), &e.key[..]);
                        match verb {
                            Verb::Add => !deleted_keys.contains(&key),
                            _ => !added_keys.contains(&key),
                        }
                    });
                    let to = match verb {
                        Verb::Add => &mut prepare,
                        _ => &mut retire,
                    };
                    for (list, to) in [(moved, to), (kept, &mut switch)] {
                        if !list.is_empty() {
                            to.push(Op {
                                object: Object::Elements {
                                    set: set.clone(),
                                    elements: list,
                                },
                                ..op.clone()
                            });
                        }
                    }
                }
                (Object::Chain(h), Verb::Flush | Verb::Delete)
                    if shared(&h.name)
                        && deleted_chains.contains(&named(op, &h.name))
                        && !added_chains.contains(&named(op, &h.name)) =>
                {
                    retire.push(op.clone());
                }
                (Object::Set(h), Verb::Delete)
                    if shared(&h.name) && !added_sets.contains(&named(op, &h.name)) =>
                {
                    retire.push(op.clone());
                }
                _ => switch.push(op.clone()),
            }
        }
        // Slots alone (no chain or map created) need no commit of their own: a packet that
        // reads the new dispatch element reads in the new generation from then on, where the
        // slots committed with it are, and walks a chain that existed in its own. One commit
        // fewer: the kernel's work after a commit (the acknowledgement comes after it) is paid
        // once per transaction.
        if prepare
            .iter()
            .all(|op| matches!(op.object, Object::Elements { .. }))
        {
            prepare.append(&mut switch);
            switch = prepare;
            prepare = Vec::new();
        }
        [prepare, switch, retire].map(|ops| Transaction { ops })
    }

    /// How many operations of each verb and object kind (elements counted one by one).
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for op in &self.ops {
            let n = op.len();
            if n > 0 {
                *counts.0.entry((op.verb, op.object.kind())).or_insert(0) += n;
            }
        }
        counts
    }
}

/// One operation on one object of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// What to do.
    pub verb: Verb,
    /// The table family.
    pub family: Family,
    /// The table name.
    pub table: String,
    /// The object operated on.
    pub object: Object,
}

impl Op {
    /// Individual operations in this one: the number of elements of an [`Object::Elements`],
    /// otherwise 1.
    pub fn len(&self) -> usize {
        match &self.object {
            Object::Elements { elements, .. } => elements.len(),
            _ => 1,
        }
    }

    /// Whether this op does nothing (an [`Object::Elements`] without elements).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An nftables verb (knftables' names). `add` of a table, chain or set that already exists
/// with the same definition is a no-op in nftables; of an element with the same key and data,
/// too. `flush` empties a chain (or set); `delete` removes the object and fails if it is missing
/// or still referenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// `add`.
    Add,
    /// `flush`.
    Flush,
    /// `delete`.
    Delete,
}

impl Verb {
    /// nft keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Verb::Add => "add",
            Verb::Flush => "flush",
            Verb::Delete => "delete",
        }
    }
}

/// The object of an [`Op`]. Chains and sets are named by their headers (without rules or
/// elements), which `add` needs and `flush`/`delete` carry for the record; rules and elements
/// are separate operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// The table itself (named by the op).
    Table {
        /// Table comment.
        comment: Option<String>,
    },
    /// A chain, without its rules.
    Chain(ChainHeader),
    /// A set or map, without its elements.
    Set(SetHeader),
    /// One rule, appended at the end of `chain` (only `add`: rules have no identity here).
    Rule {
        /// The chain the rule belongs to.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// Elements of one set or map. A `delete` needs only the keys; the data and comment are
    /// those of the element being removed.
    Elements {
        /// Set or map name.
        set: String,
        /// The elements, in key order.
        elements: Vec<Element>,
    },
}

impl Object {
    /// What kind of object this is.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Table { .. } => Kind::Table,
            Object::Chain(_) => Kind::Chain,
            Object::Set(_) => Kind::Set,
            Object::Rule { .. } => Kind::Rule,
            Object::Elements { .. } => Kind::Element,
        }
    }
}

/// A chain's definition without its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHeader {
    /// Chain name.
    pub name: String,
    /// Hook attachment of a base chain.
    pub base: Option<BaseChain>,
    /// Chain comment.
    pub comment: Option<String>,
}

impl ChainHeader {
    /// The header of a chain.
    pub fn of(chain: &Chain) -> ChainHeader {
        ChainHeader {
            name: chain.name.clone(),
            base: chain.base,
            comment: chain.comment.clone(),
        }
    }

    /// An empty chain with this header.
    pub fn to_chain(&self) -> Chain {
        Chain {
            name: self.name.clone(),
            base: self.base,
            comment: self.comment.clone(),
            rules: Vec::new(),
        }
    }
}

/// A set's or map's definition without its elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetHeader {
    /// Set name.
    pub name: String,
    /// Key type.
    pub key: Vec<DataType>,
    /// Map data type, empty for a plain set.
    pub data: Vec<DataType>,
    /// Set flags.
    pub flags: SetFlags,
    /// Default element timeout in seconds.
    pub timeout: Option<u32>,
    /// The most elements the set holds.
    pub size: Option<u32>,
    /// Per-element counters.
    pub counter: bool,
    /// Set comment.
    pub comment: Option<String>,
}

impl SetHeader {
    /// The header of a set.
    pub fn of(set: &Set) -> SetHeader {
        SetHeader {
            name: set.name.clone(),
            key: set.key.clone(),
            data: set.data.clone(),
            flags: set.flags,
            timeout: set.timeout,
            size: set.size,
            counter: set.counter,
            comment: set.comment.clone(),
        }
    }

    /// An empty set with this header.
    pub fn to_set(&self) -> Set {
        Set {
            name: self.name.clone(),
            key: self.key.clone(),
            data: self.data.clone(),
            flags: self.flags,
            timeout: self.timeout,
            size: self.size,
            counter: self.counter,
            comment: self.comment.clone(),
            elements: Vec::new(),
        }
    }

    /// Whether this is a map.
    pub fn is_map(&self) -> bool {
        !self.data.is_empty()
    }
}

/// The kind of an [`Object`], for [`Counts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A table.
    Table,
    /// A chain.
    Chain,
    /// A set or map.
    Set,
    /// A rule.
    Rule,
    /// A set or map element.
    Element,
}

impl Kind {
    /// nft keyword (`set` also stands for maps).
    pub fn keyword(self) -> &'static str {
        match self {
            Kind::Table => "table",
            Kind::Chain => "chain",
            Kind::Set => "set",
            Kind::Rule => "rule",
            Kind::Element => "element",
        }
    }
}

/// Operation counts by verb and object kind; prints as `add chain 1, add rule 4, …` in verb then
/// kind order, leaving out zeros (`nothing` when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(BTreeMap<(Verb, Kind), usize>);

impl Counts {
    /// The count for one verb and kind.
    pub fn get(&self, verb: Verb, kind: Kind) -> usize {
        self.0.get(&(verb, kind)).copied().unwrap_or(0)
    }

    /// The sum of all counts (equals [`Transaction::len`]).
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("nothing");
        }
        for (i, ((verb, kind), n)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {} {n}", verb.keyword(), kind.keyword())?;
        }
        Ok(())
    }
}

/// The chains a rule enters (`jump`/`goto` targets).
fn rule_chains(rule: &Rule) -> impl Iterator<Item = &str> {
    rule.stmts.iter().filter_map(|stmt| match stmt {
        Stmt::Verdict(v) => v.target(),
        _ => None,
    })
}

/// The named sets and maps a rule uses (lookups, verdict maps, updates, DNAT maps).
fn rule_sets(rule: &Rule) -> impl Iterator<Item = &str> {
    use crate::ir::NatTarget;
    rule.stmts.iter().filter_map(|stmt| match stmt {
        Stmt::Lookup { set, .. } | Stmt::Update { set, .. } => Some(set.as_str()),
        Stmt::Vmap { map, .. }
        | Stmt::Dnat(NatTarget::Map { map, .. } | NatTarget::AddrMap { map, .. }) => {
            Some(map.as_str())
        }
        _ => None,
    })
}

/// The chain an element's verdict enters, if any.
fn element_chain(element: &Element) -> Option<&str> {
    match &element.data {
        Some(crate::ir::ElemData::Verdict(v)) => v.target(),
        _ => None,
    }
}
