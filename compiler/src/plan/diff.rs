//! The planner: compares two rulesets table by table (keyed by family and name) and emits each
//! table's operations in seven phases, so that every reference is removed before what it
//! references is deleted and every object is declared before anything references it.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    element_chain, rule_chains, rule_sets, ChainHeader, Object, Op, SetHeader, Transaction, Verb,
};
use crate::ir::{Element, Family, Ruleset, Set, Table, Value};

/// The operations that turn `old` into `new`, in the order they must be applied within one
/// transaction. Deterministic: the same inputs always give the same operations in the same
/// order (tables, chains and sets in name order, rules in chain order, elements in key order).
///
/// A table only in `old` is deleted (recursively, one op); a table only in `new` is added with
/// everything in it; a table whose comment changed is deleted and re-added, because nftables
/// cannot update a table comment. In a table present in both, each chain and set is classified:
///
/// * **added** or **removed**: present on one side only;
/// * **replaced**: the header differs (a base chain's hook, type or priority, a set's key,
///   data, flags or timeout, or any comment). nftables cannot change these in place, so the
///   object is deleted and recreated with all its rules or elements (kube-proxy does the same
///   for base chains). Deleting it requires that nothing references it any more, so every chain
///   whose old rules reference a replaced chain or set is **rewritten** too, even when its
///   rules are unchanged, and every element whose verdict enters a replaced chain is deleted and
///   re-added;
/// * **rewritten**: the header is the same and the rules differ. Rules have no identity without
///   kernel handles, so the chain is flushed and all its new rules added;
/// * elements of a set kept as is are diffed by key: removed keys are deleted, new keys added,
///   and a key whose data or comment changed is deleted and re-added (nftables refuses to add a
///   key that exists with other data, and silently keeps the old comment).
///
/// The phases, per table:
///
/// 1. add added chains and sets (declarations only, so any order of later references works);
/// 2. delete removed elements (and the old version of changed ones) from kept sets;
/// 3. flush removed, replaced and rewritten chains: afterwards no removed or replaced object
///    is referenced by a rule;
/// 4. delete removed and replaced sets, then removed and replaced chains. Sets go first because
///    deleting a verdict map releases the chains its elements enter; every other reference to
///    these objects went in phases 2 and 3, so no delete meets EBUSY;
/// 5. add replaced chains and sets again with their new headers;
/// 6. add all rules of added, replaced and rewritten chains;
/// 7. add new and changed elements, and all elements of added and replaced sets.
pub fn plan(old: &Ruleset, new: &Ruleset) -> Transaction {
    let old_tables = by_key(old);
    let new_tables = by_key(new);
    let keys: BTreeSet<_> = old_tables
        .keys()
        .chain(new_tables.keys())
        .copied()
        .collect();
    let mut tx = Transaction::default();
    for key in keys {
        match (old_tables.get(&key), new_tables.get(&key)) {
            (Some(o), None) => {
                let comment = o.comment.clone();
                Emit::new(&mut tx, o).push(Verb::Delete, Object::Table { comment });
            }
            (None, Some(n)) => create_table(&mut tx, n),
            (Some(o), Some(n)) if o.comment != n.comment => {
                let comment = o.comment.clone();
                Emit::new(&mut tx, o).push(Verb::Delete, Object::Table { comment });
                create_table(&mut tx, n);
            }
            (Some(o), Some(n)) => diff_table(&mut tx, o, n),
            (None, None) => unreachable!("key comes from one of the two maps"),
        }
    }
    tx
}

/// [`plan`], taking `new` by value: the elements of a table `old` lacks (a cold start: about a
/// million at 50k Services) move into the transaction instead of being copied, so it never
/// exists twice. The result equals `plan(old, &new)`.
pub fn plan_owned(old: &Ruleset, mut new: Ruleset) -> Transaction {
    let old_tables = by_key(old);
    let keys: BTreeSet<(Family, String)> = (old.tables.iter())
        .chain(&new.tables)
        .map(|t| (t.family, t.name.clone()))
        .collect();
    let mut tx = Transaction::default();
    for (family, name) in keys {
        let o = old_tables.get(&(family, name.as_str())).copied();
        let n = (new.tables.iter_mut()).find(|t| t.family == family && t.name == name);
        match (o, n) {
            (None, Some(n)) => {
                // Step 7 of a creation adds every set's elements, in set name order.
                let elements: Vec<(String, Vec<Element>)> = (n.sets.iter_mut())
                    .map(|(set, s)| (set.clone(), std::mem::take(&mut s.elements)))
                    .collect();
                create_table(&mut tx, n);
                let mut emit = Emit::new(&mut tx, n);
                for (set, elements) in elements {
                    emit.elements(Verb::Add, &set, elements);
                }
            }
            (Some(o), None) => {
                let comment = o.comment.clone();
                Emit::new(&mut tx, o).push(Verb::Delete, Object::Table { comment });
            }
            (Some(o), Some(n)) if o.comment != n.comment => {
                let comment = o.comment.clone();
                Emit::new(&mut tx, o).push(Verb::Delete, Object::Table { comment });
                create_table(&mut tx, n);
            }
            (Some(o), Some(n)) => diff_table(&mut tx, o, n),
            (None, None) => unreachable!("key comes from one of the two rulesets"),
        }
    }
    tx
}

fn by_key(ruleset: &Ruleset) -> BTreeMap<(Family, &str), &Table> {
    ruleset
        .tables
        .iter()
        .map(|t| ((t.family, t.name.as_str()), t))
        .collect()
}

/// `add table` and then everything in it, as a diff against the empty table.
fn create_table(tx: &mut Transaction, new: &Table) {
    let comment = new.comment.clone();
    Emit::new(tx, new).push(Verb::Add, Object::Table { comment });
    let mut empty = Table::new(new.family, new.name.clone());
    empty.comment = new.comment.clone();
    diff_table(tx, &empty, new);
}

/// Appends operations on one table.
struct Emit<'a> {
    tx: &'a mut Transaction,
    family: Family,
    table: String,
}

impl<'a> Emit<'a> {
    fn new(tx: &'a mut Transaction, table: &Table) -> Emit<'a> {
        Emit {
            tx,
            family: table.family,
            table: table.name.clone(),
        }
    }

    fn push(&mut self, verb: Verb, object: Object) {
        self.tx.ops.push(Op {
            verb,
            family: self.family,
            table: self.table.clone(),
            object,
        });
    }

    fn elements(&mut self, verb: Verb, set: &str, elements: Vec<Element>) {
        if !elements.is_empty() {
            let set = set.to_string();
            self.push(verb, Object::Elements { set, elements });
        }
    }
}

/// How a chain or set present in the old or new table is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Only in the new table.
    Added,
    /// Only in the old table.
    Removed,
    /// In both, with a different header: deleted and recreated.
    Replaced,
    /// A chain in both with the same header whose rules must be flushed and added again.
    Rewritten,
    /// In both with the same header; a set's elements are diffed by key.
    Kept,
}

fn diff_table(tx: &mut Transaction, old: &Table, new: &Table) {
    let mut sets: BTreeMap<&str, Change> = BTreeMap::new();
    for (name, o) in &old.sets {
        let change = match new.sets.get(name) {
            None => Change::Removed,
            Some(n) if !same_set_header(o, n) => Change::Replaced,
            Some(_) => Change::Kept,
        };
        sets.insert(name, change);
    }
    for name in new.sets.keys() {
        sets.entry(name).or_insert(Change::Added);
    }

    let mut chains: BTreeMap<&str, Change> = BTreeMap::new();
    for (name, o) in &old.chains {
        let change = match new.chains.get(name) {
            None => Change::Removed,
            Some(n) if o.name != n.name || o.base != n.base || o.comment != n.comment => {
                Change::Replaced
            }
            Some(n) if o.rules != n.rules => Change::Rewritten,
            Some(_) => Change::Kept,
        };
        chains.insert(name, change);
    }
    for name in new.chains.keys() {
        chains.entry(name).or_insert(Change::Added);
    }

    // A kept chain whose old rules reference a replaced chain or set must let go of it.
    let replaced_chains: BTreeSet<&str> = names(&chains, Change::Replaced).collect();
    let replaced_sets: BTreeSet<&str> = names(&sets, Change::Replaced).collect();
    let any_replaced = !replaced_chains.is_empty() || !replaced_sets.is_empty();
    for (name, chain) in old.chains.iter().filter(|_| any_replaced) {
        let change = chains.get_mut(name.as_str()).expect("classified");
        if *change == Change::Kept
            && chain.rules.iter().any(|rule| {
                rule_chains(rule).any(|c| replaced_chains.contains(c))
                    || rule_sets(rule).any(|s| replaced_sets.contains(s))
            })
        {
            *change = Change::Rewritten;
        }
    }

    // Element diffs of kept sets: (deletes, adds) per set.
    let mut element_diffs: BTreeMap<&str, (Vec<Element>, Vec<Element>)> = BTreeMap::new();
    for name in names(&sets, Change::Kept) {
        let diff = diff_elements(&old.sets[name].elements, &new.sets[name].elements, |e| {
            element_chain(e).is_some_and(|c| replaced_chains.contains(c))
        });
        element_diffs.insert(name, diff);
    }

    let mut emit = Emit::new(tx, new);
    // 1. Declarations.
    for name in names(&chains, Change::Added) {
        emit.push(Verb::Add, Object::Chain(ChainHeader::of(&new.chains[name])));
    }
    for name in names(&sets, Change::Added) {
        emit.push(Verb::Add, Object::Set(SetHeader::of(&new.sets[name])));
    }
    // 2. Elements that go away.
    for (name, (deletes, _)) in &mut element_diffs {
        emit.elements(Verb::Delete, name, std::mem::take(deletes));
    }
    // 3. Drop every rule reference to something that goes away.
    for (name, change) in &chains {
        if matches!(
            change,
            Change::Removed | Change::Replaced | Change::Rewritten
        ) {
            emit.push(
                Verb::Flush,
                Object::Chain(ChainHeader::of(&old.chains[*name])),
            );
        }
    }
    // 4. Deletes: sets first (a verdict map holds references to chains).
    for (name, change) in &sets {
        if matches!(change, Change::Removed | Change::Replaced) {
            emit.push(Verb::Delete, Object::Set(SetHeader::of(&old.sets[*name])));
        }
    }
    for (name, change) in &chains {
        if matches!(change, Change::Removed | Change::Replaced) {
            emit.push(
                Verb::Delete,
                Object::Chain(ChainHeader::of(&old.chains[*name])),
            );
        }
    }
    // 5. Replaced objects come back with their new headers.
    for name in names(&chains, Change::Replaced) {
        emit.push(Verb::Add, Object::Chain(ChainHeader::of(&new.chains[name])));
    }
    for name in names(&sets, Change::Replaced) {
        emit.push(Verb::Add, Object::Set(SetHeader::of(&new.sets[name])));
    }
    // 6. Rules.
    for (name, change) in &chains {
        if matches!(change, Change::Added | Change::Replaced | Change::Rewritten) {
            for rule in &new.chains[*name].rules {
                let chain = name.to_string();
                emit.push(
                    Verb::Add,
                    Object::Rule {
                        chain,
                        rule: rule.clone(),
                    },
                );
            }
        }
    }
    // 7. Elements.
    for (name, change) in &sets {
        match change {
            Change::Added | Change::Replaced => {
                emit.elements(Verb::Add, name, new.sets[*name].elements.clone());
            }
            Change::Kept => {
                let adds = element_diffs
                    .get_mut(name)
                    .map(|(_, adds)| std::mem::take(adds));
                emit.elements(Verb::Add, name, adds.unwrap_or_default());
            }
            Change::Removed | Change::Rewritten => {}
        }
    }
}

/// `SetHeader::of(a) == SetHeader::of(b)` without cloning two headers per set on every plan.
fn same_set_header(a: &Set, b: &Set) -> bool {
    let Set {
        name,
        key,
        data,
        flags,
        timeout,
        size,
        counter,
        comment,
        elements: _,
    } = a;
    *name == b.name
        && *key == b.key
        && *data == b.data
        && *flags == b.flags
        && *timeout == b.timeout
        && *size == b.size
        && *counter == b.counter
        && *comment == b.comment
}

fn names<'m, 'n>(
    changes: &'m BTreeMap<&'n str, Change>,
    which: Change,
) -> impl Iterator<Item = &'n str> + 'm {
    changes
        .iter()
        .filter(move |(_, c)| **c == which)
        .map(|(name, _)| *name)
}

/// Elements to delete and to add, each in key order. `refresh` marks an element that must be
/// deleted and re-added even when unchanged (its verdict enters a replaced chain).
///
/// Both lists are normally sorted by key already (`lower` sorts, and so does the read-back),
/// and a sync usually changes a handful of elements of a set with up to a few hundred thousand
/// (a shared chain's map has one per slot): then one merge pass finds the difference, about
/// ten times faster than building two key maps, which dominated a one-endpoint plan at 10k
/// Services.
/// Lists that are not strictly sorted (hand-built rulesets) take the map path.
pub(super) fn diff_elements(
    old: &[Element],
    new: &[Element],
    refresh: impl Fn(&Element) -> bool,
) -> (Vec<Element>, Vec<Element>) {
    let sorted = |elements: &[Element]| elements.windows(2).all(|w| w[0].key < w[1].key);
    if !(sorted(old) && sorted(new)) {
        return diff_unsorted_elements(old, new, refresh);
    }
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => deletes.extend(o.by_ref().cloned()),
            (None, Some(_)) => adds.extend(n.by_ref().cloned()),
            (Some(oe), Some(ne)) => match oe.key.cmp(&ne.key) {
                std::cmp::Ordering::Less => deletes.push(o.next().cloned().expect("peeked")),
                std::cmp::Ordering::Greater => adds.push(n.next().cloned().expect("peeked")),
                std::cmp::Ordering::Equal => {
                    let (oe, ne) = (o.next().expect("peeked"), n.next().expect("peeked"));
                    if oe != ne || refresh(oe) {
                        deletes.push(oe.clone());
                        adds.push(ne.clone());
                    }
                }
            },
        }
    }
    (deletes, adds)
}

/// [`diff_elements`] for lists in any order (the last element of a duplicated key wins).
pub(super) fn diff_unsorted_elements(
    old: &[Element],
    new: &[Element],
    refresh: impl Fn(&Element) -> bool,
) -> (Vec<Element>, Vec<Element>) {
    let old: BTreeMap<&[Value], &Element> = old.iter().map(|e| (e.key.as_slice(), e)).collect();
    let new: BTreeMap<&[Value], &Element> = new.iter().map(|e| (e.key.as_slice(), e)).collect();
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    for (key, o) in &old {
        match new.get(key) {
            Some(n) if n == o && !refresh(o) => {}
            _ => deletes.push((*o).clone()),
        }
    }
    for (key, n) in &new {
        match old.get(key) {
            Some(o) if n == o && !refresh(o) => {}
            _ => adds.push((*n).clone()),
        }
    }
    (deletes, adds)
}
