//! An in-memory model of how the kernel applies a transaction: the fake kernel for plan tests
//! and runtime tests (knftables' fake plays the same role). It keeps nftables' reference
//! counting — a rule's `jump`/`goto` and a verdict map element hold their chain, a rule's
//! lookup, `vmap` or `update` holds its set — and answers like the kernel: a missing object is
//! ENOENT, deleting a referenced one EBUSY, adding an existing element with other data or a
//! chain or set with another definition EEXIST. Like the kernel, it applies all or nothing.
//! Not modelled: loop detection, type checks beyond key and data arity, interval overlaps.

use std::collections::BTreeMap;
use std::fmt;

use super::{
    element_chain, rule_chains, rule_sets, ChainHeader, Object, Op, SetHeader, Transaction, Verb,
};
use crate::ir::{Chain, Element, Family, Rule, Ruleset, Set, Table, Value};

/// Applies `tx` to `ruleset` as the kernel would apply one transaction: either every operation
/// succeeds and `ruleset` is the result, or the first failure is returned and `ruleset` is left
/// unchanged.
pub fn apply(ruleset: &mut Ruleset, tx: &Transaction) -> Result<(), PlanError> {
    let mut kernel = Kernel::load(ruleset);
    for (index, op) in tx.ops.iter().enumerate() {
        kernel.apply(op).map_err(|(kind, message)| PlanError {
            index,
            kind,
            message: format!(
                "{} {} {}: {message}",
                op.verb.keyword(),
                op.family,
                op.table
            ),
        })?;
    }
    *ruleset = kernel.into_ruleset();
    Ok(())
}

/// Why a transaction was refused: the operation at fault and the kernel error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("operation {index}: {}: {message}", kind.name())]
pub struct PlanError {
    /// Index of the failing operation in [`Transaction::ops`].
    pub index: usize,
    /// The error the kernel would return.
    pub kind: ErrorKind,
    /// What was wrong, naming the object.
    pub message: String,
}

/// The kernel errors the model reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// ENOENT: the object (or its table, or something it references) does not exist.
    NoEntry,
    /// EEXIST: the object exists with a different definition or data.
    Exists,
    /// EBUSY: the object is still referenced by a rule or an element.
    Busy,
    /// EINVAL: a key or data of the wrong arity.
    Invalid,
    /// EOPNOTSUPP: not expressible (deleting a rule without a handle, jumping to a base chain).
    NotSupported,
}

impl ErrorKind {
    /// The errno name (`ENOENT`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NoEntry => "ENOENT",
            ErrorKind::Exists => "EEXIST",
            ErrorKind::Busy => "EBUSY",
            ErrorKind::Invalid => "EINVAL",
            ErrorKind::NotSupported => "EOPNOTSUPP",
        }
    }

    /// The Linux errno value.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NoEntry => 2,
            ErrorKind::Exists => 17,
            ErrorKind::Busy => 16,
            ErrorKind::Invalid => 22,
            ErrorKind::NotSupported => 95,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

type Failure = (ErrorKind, String);

/// The model's state: tables with use counts, elements indexed by key.
struct Kernel {
    tables: BTreeMap<(Family, String), KTable>,
}

struct KTable {
    comment: Option<String>,
    chains: BTreeMap<String, Chain>,
    sets: BTreeMap<String, KSet>,
    /// References to each chain from rules and verdict map elements.
    chain_use: BTreeMap<String, usize>,
    /// References to each set from rules.
    set_use: BTreeMap<String, usize>,
}

struct KSet {
    header: SetHeader,
    elements: BTreeMap<Vec<Value>, Element>,
}

impl Kernel {
    fn load(ruleset: &Ruleset) -> Kernel {
        let mut tables = BTreeMap::new();
        for table in &ruleset.tables {
            let mut k = KTable::new(table.comment.clone());
            for (name, chain) in &table.chains {
                for rule in &chain.rules {
                    k.hold_rule(rule);
                }
                k.chains.insert(name.clone(), chain.clone());
            }
            for (name, set) in &table.sets {
                let mut kset = KSet {
                    header: SetHeader::of(set),
                    elements: BTreeMap::new(),
                };
                for element in &set.elements {
                    hold_element(&mut k.chain_use, element);
                    kset.elements.insert(element.key.clone(), element.clone());
                }
                k.sets.insert(name.clone(), kset);
            }
            tables.insert((table.family, table.name.clone()), k);
        }
        Kernel { tables }
    }

    fn into_ruleset(self) -> Ruleset {
        let tables = self
            .tables
            .into_iter()
            .map(|((family, name), k)| Table {
                family,
                name,
                comment: k.comment,
                chains: k.chains,
                sets: k
                    .sets
                    .into_iter()
                    .map(|(name, kset)| {
                        let set = Set {
                            elements: kset.elements.into_values().collect(),
                            ..kset.header.to_set()
                        };
                        (name, set)
                    })
                    .collect(),
            })
            .collect();
        Ruleset { tables }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Failure> {
        let key = (op.family, op.table.clone());
        if let Object::Table { comment } = &op.object {
            return match op.verb {
                // An existing table is left alone: nftables does not update its comment.
                Verb::Add => {
                    self.tables
                        .entry(key)
                        .or_insert_with(|| KTable::new(comment.clone()));
                    Ok(())
                }
                Verb::Delete => match self.tables.remove(&key) {
                    Some(_) => Ok(()),
                    None => Err((ErrorKind::NoEntry, "table does not exist".into())),
                },
                Verb::Flush => Err((
                    ErrorKind::NotSupported,
                    "flush table is not modelled".into(),
                )),
            };
        }
        let table = self
            .tables
            .get_mut(&key)
            .ok_or_else(|| (ErrorKind::NoEntry, "table does not exist".to_string()))?;
        match (&op.object, op.verb) {
            (Object::Chain(h), Verb::Add) => table.add_chain(h),
            (Object::Chain(h), Verb::Flush) => table.flush_chain(&h.name),
            (Object::Chain(h), Verb::Delete) => table.delete_chain(&h.name),
            (Object::Set(h), Verb::Add) => table.add_set(h),
            (Object::Set(h), Verb::Flush) => table.flush_set(&h.name),
            (Object::Set(h), Verb::Delete) => table.delete_set(&h.name),
            (Object::Rule { chain, rule }, Verb::Add) => table.add_rule(chain, rule),
            (Object::Rule { chain, .. }, _) => Err((
                ErrorKind::NotSupported,
                format!("rule in chain {chain}: rules can only be added (no handles)"),
            )),
            (Object::Elements { set, elements }, Verb::Add) => table.add_elements(set, elements),
            (Object::Elements { set, elements }, Verb::Delete) => {
                table.delete_elements(set, elements)
            }
            (Object::Elements { set, .. }, Verb::Flush) => Err((
                ErrorKind::NotSupported,
                format!("element of {set}: flush applies to sets, not elements"),
            )),
            (Object::Table { .. }, _) => unreachable!("handled above"),
        }
    }
}

impl KTable {
    fn new(comment: Option<String>) -> KTable {
        KTable {
            comment,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            chain_use: BTreeMap::new(),
            set_use: BTreeMap::new(),
        }
    }

    fn add_chain(&mut self, h: &ChainHeader) -> Result<(), Failure> {
        match self.chains.get(&h.name) {
            // An existing chain is kept (its comment too); its hook cannot change.
            Some(existing) if existing.base != h.base => Err((
                ErrorKind::Exists,
                format!(
                    "chain {} exists with another hook, type or priority",
                    h.name
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.chains.insert(h.name.clone(), h.to_chain());
                Ok(())
            }
        }
    }

    fn flush_chain(&mut self, name: &str) -> Result<(), Failure> {
        let chain = self.chains.get_mut(name).ok_or_else(|| no_chain(name))?;
        let rules = std::mem::take(&mut chain.rules);
        for rule in &rules {
            self.release_rule(rule);
        }
        Ok(())
    }

    fn delete_chain(&mut self, name: &str) -> Result<(), Failure> {
        if !self.chains.contains_key(name) {
            return Err(no_chain(name));
        }
        let users = self.chain_use.get(name).copied().unwrap_or(0);
        if users > 0 {
            return Err((
                ErrorKind::Busy,
                format!("chain {name} is still entered by {users} rules or elements"),
            ));
        }
        // Like the kernel, deleting a chain deletes its rules.
        self.flush_chain(name)?;
        self.chains.remove(name);
        Ok(())
    }

    fn add_rule(&mut self, chain: &str, rule: &Rule) -> Result<(), Failure> {
        if !self.chains.contains_key(chain) {
            return Err(no_chain(chain));
        }
        for target in rule_chains(rule) {
            self.check_target(target)?;
        }
        for set in rule_sets(rule) {
            if !self.sets.contains_key(set) {
                return Err(no_set(set));
            }
        }
        self.hold_rule(rule);
        self.chains
            .get_mut(chain)
            .expect("checked above")
            .rules
            .push(rule.clone());
        Ok(())
    }

    fn add_set(&mut self, h: &SetHeader) -> Result<(), Failure> {
        match self.sets.get(&h.name) {
            // The comment is not compared (nor updated), as in the kernel.
            Some(existing)
                if (
                    &existing.header.key,
                    &existing.header.data,
                    existing.header.flags,
                ) != (&h.key, &h.data, h.flags)
                    || existing.header.timeout != h.timeout =>
            {
                Err((
                    ErrorKind::Exists,
                    format!("set {} exists with another type, flags or timeout", h.name),
                ))
            }
            Some(_) => Ok(()),
            None => {
                let kset = KSet {
                    header: h.clone(),
                    elements: BTreeMap::new(),
                };
                self.sets.insert(h.name.clone(), kset);
                Ok(())
            }
        }
    }

    fn flush_set(&mut self, name: &str) -> Result<(), Failure> {
        let set = self.sets.get_mut(name).ok_or_else(|| no_set(name))?;
        for element in std::mem::take(&mut set.elements).values() {
            release_element(&mut self.chain_use, element);
        }
        Ok(())
    }

    fn delete_set(&mut self, name: &str) -> Result<(), Failure> {
        if !self.sets.contains_key(name) {
            return Err(no_set(name));
        }
        let users = self.set_use.get(name).copied().unwrap_or(0);
        if users > 0 {
            return Err((
                ErrorKind::Busy,
                format!("set {name} is still used by {users} rules"),
            ));
        }
        self.flush_set(name)?;
        self.sets.remove(name);
        Ok(())
    }

    fn add_elements(&mut self, name: &str, elements: &[Element]) -> Result<(), Failure> {
        let set = self.sets.get(name).ok_or_else(|| no_set(name))?;
        let is_map = set.header.is_map();
        let key_len = set.header.key.len();
        for element in elements {
            if element.key.len() != key_len || element.data.is_some() != is_map {
                return Err((
                    ErrorKind::Invalid,
                    format!("element of {name}: key or data does not match the set's type"),
                ));
            }
            if let Some(target) = element_chain(element) {
                self.check_target(target)?;
            }
            let set = self.sets.get_mut(name).expect("checked above");
            match set.elements.get(&element.key) {
                // Same key and data: a no-op that keeps the old comment, as in the kernel.
                Some(existing) if existing.data == element.data => {}
                Some(_) => {
                    return Err((
                        ErrorKind::Exists,
                        format!("element of {name}: the key exists with other data"),
                    ))
                }
                None => {
                    set.elements.insert(element.key.clone(), element.clone());
                    hold_element(&mut self.chain_use, element);
                }
            }
        }
        Ok(())
    }

    fn delete_elements(&mut self, name: &str, elements: &[Element]) -> Result<(), Failure> {
        let set = self.sets.get_mut(name).ok_or_else(|| no_set(name))?;
        for element in elements {
            match set.elements.remove(&element.key) {
                Some(removed) => release_element(&mut self.chain_use, &removed),
                None => {
                    return Err((
                        ErrorKind::NoEntry,
                        format!("element of {name}: no such key"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// A `jump`/`goto` target must exist and must not be a base chain.
    fn check_target(&self, target: &str) -> Result<(), Failure> {
        match self.chains.get(target) {
            None => Err(no_chain(target)),
            Some(c) if c.base.is_some() => Err((
                ErrorKind::NotSupported,
                format!("chain {target} is a base chain and cannot be jumped to"),
            )),
            Some(_) => Ok(()),
        }
    }

    fn hold_rule(&mut self, rule: &Rule) {
        for chain in rule_chains(rule) {
            *self.chain_use.entry(chain.to_string()).or_insert(0) += 1;
        }
        for set in rule_sets(rule) {
            *self.set_use.entry(set.to_string()).or_insert(0) += 1;
        }
    }

    fn release_rule(&mut self, rule: &Rule) {
        for chain in rule_chains(rule) {
            release(&mut self.chain_use, chain);
        }
        for set in rule_sets(rule) {
            release(&mut self.set_use, set);
        }
    }
}

fn hold_element(chain_use: &mut BTreeMap<String, usize>, element: &Element) {
    if let Some(chain) = element_chain(element) {
        *chain_use.entry(chain.to_string()).or_insert(0) += 1;
    }
}

fn release_element(chain_use: &mut BTreeMap<String, usize>, element: &Element) {
    if let Some(chain) = element_chain(element) {
        release(chain_use, chain);
    }
}

fn release(uses: &mut BTreeMap<String, usize>, name: &str) {
    if let Some(n) = uses.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            uses.remove(name);
        }
    }
}

fn no_chain(name: &str) -> Failure {
    (ErrorKind::NoEntry, format!("chain {name} does not exist"))
}

fn no_set(name: &str) -> Failure {
    (ErrorKind::NoEntry, format!("set {name} does not exist"))
}
