//! The IR verifier: checks a [`Ruleset`] for everything that would make nft or the kernel refuse
//! it, or that would load but can never do what the compiler meant (a rule in a chain nothing
//! jumps to, a match that can never be true). It runs after every `lower` (Cranelift's
//! `verify_if` habit), so a violation is a compiler bug, never bad cluster data. It collects
//! every violation rather than stopping at the first, and reports them in a fixed order: table
//! list, then per table its names and base chains, sets and elements, rules, and finally the
//! jump graph. Rule, statement and element numbers are 0-based indexes into the IR's `Vec`s.
//!
//! What the kernel checks only at commit time is checked here too, because `nft -c` does not
//! catch it (tested on nft 1.0.6, kernel 6.x): jump loops and chains more than
//! [`MAX_JUMP_DEPTH`] jumps below a base chain both fail the real load with EMLINK
//! ("Too many links"). The verifier does not check kernel feature availability beyond the one
//! rule kube-proxy also follows: `reject` only in filter input/forward/output, because kernels
//! before 5.9 refuse it in prerouting.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;

use super::{
    ifname_problem, names, ChainKind, CtDir, DataType, ElemData, Element, Expr, Family, Hook,
    NatTarget, Ruleset, Set, Stmt, Table, Value, Verdict,
};

/// The deepest a chain may sit below its base chain, counted in jumps (a `goto` or a verdict
/// map counts as a jump too). The kernel's jump stack holds 16 levels (`NFT_JUMP_STACK_SIZE`)
/// including the base chain; 16 jumps fail the commit with EMLINK.
pub const MAX_JUMP_DEPTH: usize = 15;

/// One violation: which object is wrong and why.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{table}: {object}: {message}")]
pub struct VerifyError {
    /// The table, as `FAMILY NAME` (`ip kube-nft`).
    pub table: String,
    /// The object within the table: `table`, `chain services`, `chain services rule 2`,
    /// `map service-ips`, `map service-ips element 3`.
    pub object: String,
    /// What is wrong; statement-level problems start with `statement N:`.
    pub message: String,
}

/// Every violation found in a ruleset, in a deterministic order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for VerifyErrors {}

/// Checks the ruleset and returns every violation found.
pub fn verify(ruleset: &Ruleset) -> Result<(), VerifyErrors> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut previous: Option<(Family, &str)> = None;
    for table in &ruleset.tables {
        let id = (table.family, table.name.as_str());
        let label = format!("{} {}", table.family, table.name);
        if !seen.insert(id) {
            errors.push(error(&label, "table", "table appears more than once"));
        } else if previous.is_some_and(|p| p > id) {
            errors.push(error(
                &label,
                "table",
                "tables are not in family order (ip before ip6)",
            ));
        }
        previous = Some(id);
        TableCheck {
            table,
            label,
            errors: &mut errors,
        }
        .run();
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(errors))
    }
}

fn error(table: &str, object: &str, message: impl Into<String>) -> VerifyError {
    VerifyError {
        table: table.to_string(),
        object: object.to_string(),
        message: message.into(),
    }
}

/// A `(type, hook)` pair a chain can be entered from.
type Context = (ChainKind, Hook);

struct TableCheck<'a, 'e> {
    table: &'a Table,
    label: String,
    errors: &'e mut Vec<VerifyError>,
}

impl<'a> TableCheck<'a, '_> {
    fn err(&mut self, object: &str, message: impl Into<String>) {
        self.errors.push(error(&self.label, object, message));
    }

    fn run(&mut self) {
        self.check_names_and_base_chains();
        for set in self.table.sets.values() {
            self.check_set(set);
        }
        for (name, chain) in &self.table.chains {
            for (rule_idx, rule) in chain.rules.iter().enumerate() {
                let object = format!("chain {} rule {rule_idx}", name);
                self.check_rule(&object, &rule.stmts);
            }
        }
        self.check_graph();
    }

    fn check_names_and_base_chains(&mut self) {
        let table = self.table;
        if !names::is_legal(&table.name) {
            self.err("table", format!("illegal name {:?}", table.name));
        }
        // Chains and sets live in separate namespaces in nft, and the BTreeMaps make each
        // unique by key, so uniqueness reduces to the key agreeing with the object's own name.
        for (key, chain) in &table.chains {
            let object = format!("chain {key}");
            if *key != chain.name {
                self.err(
                    &object,
                    format!("stored under {key:?} but named {:?}", chain.name),
                );
            }
            if !names::is_legal(key) {
                self.err(&object, format!("illegal name {key:?}"));
            }
            if let Some(base) = chain.base {
                // The kernel's nat chain type registers prerouting, input, output and
                // postrouting only; a nat forward chain fails with EOPNOTSUPP.
                if base.kind == ChainKind::Nat && base.hook == Hook::Forward {
                    self.err(&object, "nat chains cannot hook forward");
                }
            }
        }
        for (key, set) in &table.sets {
            let object = format!("{} {key}", set_kind(set));
            if *key != set.name {
                self.err(
                    &object,
                    format!("stored under {key:?} but named {:?}", set.name),
                );
            }
            if !names::is_legal(key) {
                self.err(&object, format!("illegal name {key:?}"));
            }
        }
    }

    fn check_set(&mut self, set: &Set) {
        let object = format!("{} {}", set_kind(set), set.name);
        if set.key.is_empty() {
            self.err(&object, "no key type");
        }
        for ty in &set.key {
            if *ty == DataType::Verdict {
                self.err(&object, "a verdict cannot be a key");
            }
        }
        if set.needs_typeof() {
            // `type integer` has no width, so nft refuses it; such a set is declared with the
            // canonical `typeof` expressions (`ir::typeof_expr`), which every part must have.
            let family = self.table.family;
            for ty in set.key.iter().chain(&set.data) {
                if crate::ir::typeof_expr(*ty, family).is_none() {
                    self.err(
                        &object,
                        format!(
                            "{} has no `typeof` expression (needed with an integer key)",
                            ty.keyword()
                        ),
                    );
                }
            }
        }
        if set.data.contains(&DataType::Verdict) && set.data.len() > 1 {
            self.err(&object, "verdict data cannot be concatenated");
        }
        if set.data.contains(&DataType::Integer) {
            self.err(&object, "integer data needs `typeof`; not supported");
        }
        for ty in set.key.iter().chain(&set.data) {
            if let Some(family) = addr_family(*ty) {
                if family != self.table.family {
                    self.err(
                        &object,
                        format!("{} in an {} table", ty.keyword(), self.table.family),
                    );
                }
            }
        }

        // Formatted only for an element with a problem: a set may hold a million elements.
        let element = |idx: usize| format!("{object} element {idx}");
        for (idx, first) in duplicate_keys(&set.elements) {
            self.err(
                &element(idx),
                format!("duplicate key (first at element {first})"),
            );
        }
        for (idx, elem) in set.elements.iter().enumerate() {
            if let Err(message) = values_fit(&elem.key, &set.key, set.flags.interval) {
                self.err(&element(idx), format!("key {message}"));
            }
            match (&elem.data, set.is_map()) {
                (None, false) => {}
                (None, true) => self.err(&element(idx), "map element has no data"),
                (Some(_), false) => self.err(&element(idx), "set element has data"),
                (Some(ElemData::Verdict(v)), true) => {
                    if set.data != [DataType::Verdict] {
                        self.err(
                            &element(idx),
                            "verdict data in a map whose data is not verdict",
                        );
                    } else if let Some(message) = self.verdict_fault("", v) {
                        self.err(&element(idx), message);
                    }
                }
                (Some(ElemData::Values(values)), true) => {
                    if let Err(message) = values_fit(values, &set.data, false) {
                        self.err(&element(idx), format!("data {message}"));
                    }
                }
            }
        }
        if set.flags.interval {
            self.check_overlaps(set);
        }
    }

    /// Interval sets refuse overlapping keys ("conflicting intervals specified" from nft for
    /// one address part, EEXIST from the kernel for concatenations). Keys are grouped by their
    /// non-address parts, which are always exact; within a group, a single address part is
    /// swept in sorted order and several are compared pairwise.
    fn check_overlaps(&mut self, set: &Set) {
        type Ranges = Vec<(u128, u128)>;
        let mut groups: BTreeMap<Vec<&Value>, Vec<(Ranges, usize)>> = BTreeMap::new();
        for (idx, element) in set.elements.iter().enumerate() {
            let mut exact = Vec::new();
            let mut ranges = Vec::new();
            for value in &element.key {
                match range_of(value) {
                    Some(r) => ranges.push(r),
                    None => exact.push(value),
                }
            }
            groups.entry(exact).or_default().push((ranges, idx));
        }
        let mut overlaps = Vec::new();
        for mut members in groups.into_values() {
            if members.first().is_some_and(|(r, _)| r.len() == 1) {
                members.sort();
                let mut widest: Option<(u128, usize)> = None;
                for (ranges, idx) in &members {
                    let (lo, hi) = ranges[0];
                    if let Some((end, other)) = widest {
                        if lo <= end && set.elements[other].key != set.elements[*idx].key {
                            overlaps.push((*idx, other));
                        }
                    }
                    if widest.is_none_or(|(end, _)| hi > end) {
                        widest = Some((hi, *idx));
                    }
                }
            } else {
                for (i, (a, a_idx)) in members.iter().enumerate() {
                    for (b, b_idx) in &members[i + 1..] {
                        let all_meet = a.iter().zip(b).all(|(x, y)| x.0 <= y.1 && y.0 <= x.1);
                        if all_meet && set.elements[*a_idx].key != set.elements[*b_idx].key {
                            overlaps.push((*a_idx.max(b_idx), *a_idx.min(b_idx)));
                        }
                    }
                }
            }
        }
        overlaps.sort();
        for (idx, other) in overlaps {
            let object = format!("{} {} element {idx}", set_kind(set), set.name);
            self.err(
                &object,
                format!("key overlaps element {other} in an interval set"),
            );
        }
    }

    fn check_rule(&mut self, object: &str, stmts: &[Stmt]) {
        if stmts.is_empty() {
            // `add rule … comment "x"` without a statement is a syntax error in nft.
            self.err(object, "rule has no statements");
        }
        let mut terminal = None;
        for (idx, stmt) in stmts.iter().enumerate() {
            if let Some(t) = terminal {
                // nft refuses "Statement after terminal statement has no effect".
                self.err(
                    object,
                    format!("statement {idx}: follows terminal statement {t}"),
                );
                break;
            }
            let at = format!("statement {idx}: ");
            self.check_stmt(object, &at, stmt);
            if matches!(
                stmt,
                Stmt::Verdict(_) | Stmt::Dnat(_) | Stmt::Masquerade { .. } | Stmt::Reject
            ) {
                terminal = Some(idx);
            }
        }
    }

    fn check_stmt(&mut self, object: &str, at: &str, stmt: &Stmt) {
        match stmt {
            Stmt::Match { left, op: _, right } => {
                self.check_expr(object, at, left);
                if let Err(message) = match_fits(left, right) {
                    self.err(object, format!("{at}{message}"));
                }
            }
            Stmt::Lookup { left, set, .. } => {
                self.check_expr(object, at, left);
                match self.table.sets.get(set) {
                    None => self.err(object, format!("{at}set @{set} does not exist")),
                    // A verdict map may be tested for a key (`key @map`: the kernel's lookup
                    // without a destination register, for named maps; nft 1.0.6 lists it so).
                    Some(s) if s.is_map() && s.data != [DataType::Verdict] => {
                        self.err(object, format!("{at}@{set} is a map; a lookup needs a set"));
                    }
                    Some(s) => self.check_key(object, at, left, s),
                }
            }
            Stmt::Vmap { left, map } => {
                self.check_expr(object, at, left);
                match self.table.sets.get(map) {
                    None => self.err(object, format!("{at}map @{map} does not exist")),
                    Some(s) if s.data != [DataType::Verdict] => {
                        self.err(object, format!("{at}@{map} is not a verdict map"));
                    }
                    Some(s) => self.check_key(object, at, left, s),
                }
            }
            Stmt::Update { set, key, data } => {
                self.check_expr(object, at, key);
                match self.table.sets.get(set) {
                    None => self.err(object, format!("{at}set @{set} does not exist")),
                    Some(s) => {
                        if !s.flags.dynamic {
                            // The kernel only lets the packet path add to sets created with
                            // NFT_SET_EVAL (`flags dynamic`).
                            self.err(object, format!("{at}@{set} is not dynamic"));
                        }
                        match data {
                            None if s.is_map() => self.err(
                                object,
                                format!("{at}@{set} is a map; update needs the data"),
                            ),
                            Some(_) if !s.is_map() => {
                                self.err(object, format!("{at}@{set} is a set; update has data"))
                            }
                            Some(v) => {
                                if let Err(e) = values_fit(std::slice::from_ref(v), &s.data, false)
                                {
                                    self.err(object, format!("{at}update data: {e}"));
                                }
                            }
                            None => {}
                        }
                        self.check_key(object, at, key, s);
                    }
                }
            }
            Stmt::Dnat(target) => self.check_nat(object, at, target),
            Stmt::Verdict(v) => self.check_verdict(object, at, v),
            Stmt::MarkOr(_) | Stmt::MarkXor(_) | Stmt::Masquerade { .. } | Stmt::Reject => {}
        }
    }

    /// Family and modulus checks that hold wherever an expression appears.
    fn check_expr(&mut self, object: &str, at: &str, expr: &Expr) {
        let family = self.table.family;
        match expr {
            Expr::Saddr(f) | Expr::Daddr(f) if *f != family => {
                self.err(object, format!("{at}{f} address in an {family} table"));
            }
            Expr::Numgen { modulus: 0, .. } => {
                self.err(object, format!("{at}numgen modulus must be at least 1"));
            }
            Expr::JhashSaddr {
                family: f, modulus, ..
            } => {
                if *f != family {
                    self.err(
                        object,
                        format!("{at}jhash of an {f} address in an {family} table"),
                    );
                }
                if *modulus == 0 {
                    self.err(object, format!("{at}jhash modulus must be at least 1"));
                }
            }
            Expr::Concat(parts) => {
                for part in parts {
                    if matches!(part, Expr::Concat(_)) {
                        self.err(object, format!("{at}nested concatenation"));
                    } else {
                        self.check_expr(object, at, part);
                    }
                }
            }
            _ => {}
        }
    }

    fn check_key(&mut self, object: &str, at: &str, key: &Expr, set: &Set) {
        let types = key.data_types();
        let name = &set.name;
        if types != set.key {
            self.err(
                object,
                format!(
                    "{at}key is {} but @{name} has {}",
                    types_text(&types),
                    types_text(&set.key)
                ),
            );
        }
    }

    fn check_nat(&mut self, object: &str, at: &str, target: &NatTarget) {
        let family = self.table.family;
        match target {
            NatTarget::Addr { addr, .. } => {
                if Family::of(*addr) != family {
                    self.err(object, format!("{at}dnat to {addr} in an {family} table"));
                }
            }
            NatTarget::Map {
                family: f,
                key,
                map,
            } => {
                self.check_expr(object, at, key);
                if *f != family {
                    self.err(object, format!("{at}dnat {f} to in an {family} table"));
                }
                match self.table.sets.get(map) {
                    None => self.err(object, format!("{at}map @{map} does not exist")),
                    Some(s) if s.data != [family.addr_type(), DataType::InetService] => {
                        self.err(
                            object,
                            format!("{at}@{map} does not map to an address and a port"),
                        );
                    }
                    Some(s) => self.check_key(object, at, key, s),
                }
            }
            NatTarget::AddrMap { key, map, .. } => {
                self.check_expr(object, at, key);
                match self.table.sets.get(map) {
                    None => self.err(object, format!("{at}map @{map} does not exist")),
                    Some(s) if s.data != [family.addr_type()] => {
                        self.err(object, format!("{at}@{map} does not map to an address"));
                    }
                    Some(s) => self.check_key(object, at, key, s),
                }
            }
            NatTarget::NumgenMap { index, targets, .. } => {
                self.check_expr(object, at, index);
                if targets.is_empty() {
                    self.err(object, format!("{at}dnat map has no targets"));
                }
                match index {
                    Expr::Numgen { modulus, .. } | Expr::JhashSaddr { modulus, .. } => {
                        if *modulus as usize != targets.len() {
                            self.err(
                                object,
                                format!(
                                    "{at}index modulus {modulus} does not match {} targets",
                                    targets.len()
                                ),
                            );
                        }
                    }
                    _ => self.err(
                        object,
                        format!("{at}dnat map index must be numgen or jhash"),
                    ),
                }
                for (addr, _) in targets {
                    if Family::of(*addr) != family {
                        self.err(object, format!("{at}dnat to {addr} in an {family} table"));
                    }
                }
            }
        }
    }

    fn check_verdict(&mut self, object: &str, at: &str, verdict: &Verdict) {
        if let Some(message) = self.verdict_fault(at, verdict) {
            self.err(object, message);
        }
    }

    /// What is wrong with a jump or goto, if anything.
    fn verdict_fault(&self, at: &str, verdict: &Verdict) -> Option<String> {
        let (verb, target) = match verdict {
            Verdict::Jump(c) => ("jump", c),
            Verdict::Goto(c) => ("goto", c),
            _ => return None,
        };
        match self.table.chains.get(target) {
            None => Some(format!("{at}{verb} target {target} does not exist")),
            // The kernel refuses to enter a base chain from a rule (EOPNOTSUPP).
            Some(c) if c.base.is_some() => {
                Some(format!("{at}{verb} target {target} is a base chain"))
            }
            Some(_) => None,
        }
    }

    /// Reachability, the chain contexts NAT and reject need, loops and jump depth.
    fn check_graph(&mut self) {
        let table = self.table;
        let edges = self.jump_edges();

        let mut contexts: BTreeMap<&str, BTreeSet<Context>> = BTreeMap::new();
        for (name, chain) in &table.chains {
            let Some(base) = chain.base else { continue };
            let context = (base.kind, base.hook);
            let mut todo = vec![name.as_str()];
            while let Some(name) = todo.pop() {
                if contexts.entry(name).or_default().insert(context) {
                    todo.extend(edges.get(name).into_iter().flatten().copied());
                }
            }
        }

        for (name, chain) in &table.chains {
            let Some(reached) = contexts.get(name.as_str()) else {
                // A service port's chain whose dispatch element went to another Service
                // claiming the same address and port is unused, not wrong (normalize reports
                // the claim); every other chain must be reachable.
                // A further dispatch table's `mark-for-masquerade` waits for the shared chains
                // that jump to it, which come and go with its Services.
                let idle_mark = name == "mark-for-masquerade" && table.name != names::TABLE;
                if !crate::ir::names::is_service_port_chain(name)
                    && !crate::ir::names::is_dnat_chain(name)
                    && !idle_mark
                {
                    self.err(
                        &format!("chain {}", name),
                        "not reachable from any base chain",
                    );
                }
                continue;
            };
            for (rule_idx, rule) in chain.rules.iter().enumerate() {
                for (idx, stmt) in rule.stmts.iter().enumerate() {
                    let (what, allowed): (&str, &[Context]) = match stmt {
                        Stmt::Dnat(_) => (
                            "dnat",
                            &[
                                (ChainKind::Nat, Hook::Prerouting),
                                (ChainKind::Nat, Hook::Output),
                            ],
                        ),
                        Stmt::Masquerade { .. } => {
                            ("masquerade", &[(ChainKind::Nat, Hook::Postrouting)])
                        }
                        Stmt::Reject => (
                            "reject",
                            &[
                                (ChainKind::Filter, Hook::Input),
                                (ChainKind::Filter, Hook::Forward),
                                (ChainKind::Filter, Hook::Output),
                            ],
                        ),
                        _ => continue,
                    };
                    let bad: Vec<String> = reached
                        .iter()
                        .filter(|c| !allowed.contains(c))
                        .map(|(kind, hook)| format!("{} {}", kind.keyword(), hook.keyword()))
                        .collect();
                    if !bad.is_empty() {
                        self.err(
                            &format!("chain {} rule {rule_idx}", name),
                            format!(
                                "statement {idx}: {what} in a chain reached from {}",
                                bad.join(", ")
                            ),
                        );
                    }
                }
            }
        }

        if !self.check_loops(&edges) {
            self.check_depth(&edges);
        }
    }

    /// Chain → chains it enters, through verdicts in its rules and through the elements of the
    /// verdict maps its rules look up. Only existing regular chains (the rest are errors
    /// already); sorted and deduplicated.
    fn jump_edges(&self) -> BTreeMap<&'a str, Vec<&'a str>> {
        let table = self.table;
        let mut edges = BTreeMap::new();
        for (name, chain) in &table.chains {
            let mut targets = BTreeSet::new();
            for stmt in chain.rules.iter().flat_map(|r| &r.stmts) {
                match stmt {
                    Stmt::Verdict(v) => targets.extend(v.target()),
                    Stmt::Vmap { map, .. } => {
                        for element in table.sets.get(map).into_iter().flat_map(|s| &s.elements) {
                            if let Some(ElemData::Verdict(v)) = &element.data {
                                targets.extend(v.target());
                            }
                        }
                    }
                    _ => {}
                }
            }
            targets.retain(|t| table.chains.get(*t).is_some_and(|c| c.base.is_none()));
            edges.insert(name.as_str(), targets.into_iter().collect());
        }
        edges
    }

    /// Reports every jump loop (one per back edge of a depth-first walk in name order); the
    /// kernel's commit-time validation fails a loop with EMLINK. Returns whether any was found.
    fn check_loops(&mut self, edges: &BTreeMap<&'a str, Vec<&'a str>>) -> bool {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Active,
            Done,
        }
        let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
        let mut loops = Vec::new();
        for &start in edges.keys() {
            if marks.contains_key(start) {
                continue;
            }
            // Iterative DFS: (chain, index of the next edge to follow).
            let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
            marks.insert(start, Mark::Active);
            while let Some((node, next)) = stack.last_mut() {
                let node = *node;
                let Some(&target) = edges[node].get(*next) else {
                    marks.insert(node, Mark::Done);
                    stack.pop();
                    continue;
                };
                *next += 1;
                match marks.get(target) {
                    None => {
                        marks.insert(target, Mark::Active);
                        stack.push((target, 0));
                    }
                    Some(Mark::Active) => {
                        let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                        let mut path: Vec<&str> = stack[from..].iter().map(|(n, _)| *n).collect();
                        path.push(target);
                        loops.push((node, path.join(" -> ")));
                    }
                    Some(Mark::Done) => {}
                }
            }
        }
        let found = !loops.is_empty();
        for (node, path) in loops {
            self.err(&format!("chain {node}"), format!("jump loop {path}"));
        }
        found
    }

    /// Reports base chains whose deepest path is longer than [`MAX_JUMP_DEPTH`] jumps. Only
    /// called on a loop-free graph.
    fn check_depth(&mut self, edges: &BTreeMap<&'a str, Vec<&'a str>>) {
        // Height of each chain: the longest jump path below it. Computed in post-order with an
        // explicit stack, each chain once.
        let mut height: BTreeMap<&str, usize> = BTreeMap::new();
        for &start in edges.keys() {
            let mut stack = vec![(start, false)];
            while let Some((node, expanded)) = stack.pop() {
                if height.contains_key(node) {
                    continue;
                }
                if expanded {
                    let h = edges[node]
                        .iter()
                        .map(|t| height.get(t).map_or(0, |h| h + 1))
                        .max()
                        .unwrap_or(0);
                    height.insert(node, h);
                } else {
                    stack.push((node, true));
                    stack.extend(edges[node].iter().map(|t| (*t, false)));
                }
            }
        }
        for (name, _) in self.table.chains.iter().filter(|(_, c)| c.base.is_some()) {
            let h = height.get(name.as_str()).copied().unwrap_or(0);
            if h > MAX_JUMP_DEPTH {
                self.err(
                    &format!("chain {}", name),
                    format!("jumps {h} chains deep; the kernel allows {MAX_JUMP_DEPTH}"),
                );
            }
        }
    }
}

fn set_kind(set: &Set) -> &'static str {
    if set.is_map() {
        "map"
    } else {
        "set"
    }
}

fn addr_family(ty: DataType) -> Option<Family> {
    match ty {
        DataType::Ipv4Addr => Some(Family::Ip),
        DataType::Ipv6Addr => Some(Family::Ip6),
        _ => None,
    }
}

fn types_text(types: &[DataType]) -> String {
    let parts: Vec<&str> = types.iter().map(|t| t.keyword()).collect();
    parts.join(" . ")
}

fn value_text(value: &Value) -> String {
    match value {
        Value::Addr(a) => a.to_string(),
        Value::Prefix(n) => n.to_string(),
        Value::Proto(p) => p.keyword().to_string(),
        Value::Port(p) => p.to_string(),
        Value::Int(n) => n.to_string(),
        Value::FibLocal => "local".to_string(),
        Value::CtNew => "new".to_string(),
        Value::CtDnat => "dnat".to_string(),
        Value::CtDir(CtDir::Original) => "original".to_string(),
        Value::CtDir(CtDir::Reply) => "reply".to_string(),
        Value::Iface(name) => format!("{name:?}"),
        Value::IfacePrefix(prefix) => format!("\"{prefix}*\""),
    }
}

/// The inclusive numeric range an address or prefix covers; `None` for non-address values.
fn range_of(value: &Value) -> Option<(u128, u128)> {
    let as_u128 = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    match value {
        Value::Addr(a) => Some((as_u128(*a), as_u128(*a))),
        Value::Prefix(n) => Some((as_u128(n.network()), as_u128(n.broadcast()))),
        _ => None,
    }
}

/// Whether `values` fit `types` positionally: `Err` says which part does not and why.
/// `(index, index of the first element with the same key)` for every element whose key an
/// earlier element already has. Lowering sorts elements by key, so this is one pass comparing
/// neighbours; elements in any other order are indexed instead.
fn duplicate_keys(elements: &[Element]) -> Vec<(usize, usize)> {
    let mut duplicates = Vec::new();
    if elements.windows(2).all(|w| w[0].key <= w[1].key) {
        let mut first = 0;
        for idx in 1..elements.len() {
            if elements[idx].key == elements[first].key {
                duplicates.push((idx, first));
            } else {
                first = idx;
            }
        }
    } else {
        let mut first_seen: BTreeMap<&Vec<Value>, usize> = BTreeMap::new();
        for (idx, element) in elements.iter().enumerate() {
            match first_seen.entry(&element.key) {
                Entry::Occupied(first) => duplicates.push((idx, *first.get())),
                Entry::Vacant(slot) => {
                    slot.insert(idx);
                }
            }
        }
    }
    duplicates
}

fn values_fit(values: &[Value], types: &[DataType], interval: bool) -> Result<(), String> {
    if values.len() != types.len() {
        let parts = |n: usize| {
            if n == 1 {
                "1 part".to_string()
            } else {
                format!("{n} parts")
            }
        };
        return Err(format!(
            "has {} but the type {} has {}",
            parts(values.len()),
            types_text(types),
            parts(types.len())
        ));
    }
    for (i, (value, ty)) in values.iter().zip(types).enumerate() {
        value_fits(value, *ty, interval).map_err(|m| format!("part {i}: {m}"))?;
    }
    Ok(())
}

/// Whether one value is of type `ty`; prefixes only where intervals are allowed.
fn value_fits(value: &Value, ty: DataType, interval: bool) -> Result<(), String> {
    let fits = match (ty, value) {
        (DataType::Ifname, Value::Iface(name)) => {
            if let Some(problem) = ifname_problem(name, false) {
                return Err(format!("interface name {name:?} {problem}"));
            }
            true
        }
        (DataType::Ifname, Value::IfacePrefix(prefix)) => {
            if let Some(problem) = ifname_problem(prefix, true) {
                return Err(format!("interface name prefix {prefix:?} {problem}"));
            }
            true
        }
        (DataType::Ipv4Addr, Value::Prefix(net @ IpNet::V4(_)))
        | (DataType::Ipv6Addr, Value::Prefix(net @ IpNet::V6(_))) => {
            if !interval {
                return Err(format!("prefix {net} needs flags interval"));
            }
            if net.trunc() != *net {
                // nft clears them silently; the IR should already be canonical.
                return Err(format!("prefix {net} has host bits set"));
            }
            if net.prefix_len() == net.max_prefix_len() {
                // Encodes exactly like the address and reads back as one (`Value::net`).
                return Err(format!(
                    "full-length prefix {net} must be written as an address"
                ));
            }
            true
        }
        _ => ty.holds(value),
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not of type {}",
            value_text(value),
            ty.keyword()
        ))
    }
}

/// Whether a match can be true: the value has the expression's type and is in its range.
fn match_fits(left: &Expr, right: &Value) -> Result<(), String> {
    let types = left.data_types();
    let [ty] = types.as_slice() else {
        return Err("a match compares one expression, not a concatenation".to_string());
    };
    value_fits(right, *ty, true)?;
    match (left, right) {
        (Expr::Numgen { modulus, .. } | Expr::JhashSaddr { modulus, .. }, Value::Int(n))
            if n >= modulus =>
        {
            Err(format!("{n} is never produced by mod {modulus}"))
        }
        (Expr::MarkAnd(mask), Value::Int(n)) if n & !mask != 0 => {
            Err(format!("{n:#010x} has bits outside the mask {mask:#010x}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use expect_test::{expect, Expect};

    use super::*;
    use crate::ir::{
        priority, BaseChain, Chain, CmpOp, Element, L4Proto, NumgenMode, Rule, SetFlags,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn chain(table: &mut Table, name: &str, base: Option<BaseChain>, rules: Vec<Vec<Stmt>>) {
        let rules = rules.into_iter().map(Rule::new).collect();
        let chain = Chain {
            name: name.into(),
            base,
            comment: None,
            rules,
        };
        table.chains.insert(name.into(), chain);
    }

    fn base(kind: ChainKind, hook: Hook, priority: i32) -> Option<BaseChain> {
        Some(BaseChain {
            kind,
            hook,
            priority,
        })
    }

    fn add_set<'t>(
        table: &'t mut Table,
        name: &str,
        key: Vec<DataType>,
        data: Vec<DataType>,
    ) -> &'t mut Set {
        let set = Set::new(name, key, data);
        table.sets.insert(name.into(), set);
        table.sets.get_mut(name).unwrap()
    }

    fn elem(key: Vec<Value>, data: Option<ElemData>) -> Element {
        Element {
            key,
            data,
            comment: None,
        }
    }

    fn goto(c: &str) -> Option<ElemData> {
        Some(ElemData::Verdict(Verdict::Goto(c.into())))
    }

    fn jump(c: &str) -> Stmt {
        Stmt::Verdict(Verdict::Jump(c.into()))
    }

    fn service_key() -> Expr {
        Expr::Concat(vec![Expr::Daddr(Family::Ip), Expr::L4Proto, Expr::Dport])
    }

    fn service_types() -> Vec<DataType> {
        vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ]
    }

    fn service_elem(vip: &str, target: &str) -> Element {
        let key = vec![
            Value::Addr(ip(vip)),
            Value::Proto(L4Proto::Tcp),
            Value::Port(80),
        ];
        elem(key, goto(target))
    }

    fn dnat(addr: &str) -> Stmt {
        Stmt::Dnat(NatTarget::Addr {
            proto: L4Proto::Tcp,
            addr: ip(addr),
            port: 80,
        })
    }

    /// A small table shaped like the compiler's output, which passes.
    fn good() -> Table {
        let mut t = Table::new(Family::Ip, "kube-nft");
        chain(
            &mut t,
            "nat-prerouting",
            base(ChainKind::Nat, Hook::Prerouting, priority::DSTNAT),
            vec![vec![jump("services")]],
        );
        chain(
            &mut t,
            "nat-output",
            base(ChainKind::Nat, Hook::Output, priority::DSTNAT),
            vec![vec![jump("services")]],
        );
        chain(
            &mut t,
            "nat-postrouting",
            base(ChainKind::Nat, Hook::Postrouting, priority::SRCNAT),
            vec![vec![Stmt::Masquerade { fully_random: true }]],
        );
        chain(
            &mut t,
            "filter-input",
            base(ChainKind::Filter, Hook::Input, priority::FILTER),
            vec![vec![Stmt::Vmap {
                left: service_key(),
                map: "no-endpoints".into(),
            }]],
        );
        chain(
            &mut t,
            "services",
            None,
            vec![vec![Stmt::Vmap {
                left: service_key(),
                map: "service-ips".into(),
            }]],
        );
        chain(
            &mut t,
            "service-a",
            None,
            vec![
                vec![
                    Stmt::Lookup {
                        left: Expr::Saddr(Family::Ip),
                        set: "affinity-a".into(),
                        negate: false,
                    },
                    Stmt::Verdict(Verdict::Goto("endpoint-1".into())),
                ],
                vec![
                    Stmt::Update {
                        set: "affinity-a".into(),
                        key: Expr::Saddr(Family::Ip),
                        data: None,
                    },
                    jump("endpoint-1"),
                ],
            ],
        );
        chain(&mut t, "endpoint-1", None, vec![vec![dnat("10.0.0.1")]]);
        chain(&mut t, "reject-services", None, vec![vec![Stmt::Reject]]);
        add_set(
            &mut t,
            "service-ips",
            service_types(),
            vec![DataType::Verdict],
        )
        .elements
        .push(service_elem("172.30.0.1", "service-a"));
        add_set(
            &mut t,
            "no-endpoints",
            service_types(),
            vec![DataType::Verdict],
        )
        .elements
        .push(service_elem("172.30.0.2", "reject-services"));
        let affinity = add_set(&mut t, "affinity-a", vec![DataType::Ipv4Addr], vec![]);
        affinity.flags = SetFlags {
            interval: false,
            dynamic: true,
            timeout: true,
        };
        affinity.timeout = Some(10800);
        let nodeports = add_set(&mut t, "nodeport-ips", vec![DataType::Ipv4Addr], vec![]);
        nodeports.flags.interval = true;
        nodeports.elements = vec![
            elem(vec![Value::Prefix("10.0.0.0/24".parse().unwrap())], None),
            elem(vec![Value::Addr(ip("10.0.1.0"))], None),
        ];
        t
    }

    fn check(mutate: impl FnOnce(&mut Table), expect: Expect) {
        let mut table = good();
        mutate(&mut table);
        let ruleset = Ruleset {
            tables: vec![table],
        };
        let actual = match verify(&ruleset) {
            Ok(()) => "ok\n".to_string(),
            Err(errors) => errors.to_string(),
        };
        expect.assert_eq(&actual);
    }

    fn rule(t: &mut Table, chain: &str, stmts: Vec<Stmt>) {
        t.chains
            .get_mut(chain)
            .unwrap()
            .rules
            .push(Rule::new(stmts));
    }

    fn set_mut<'t>(t: &'t mut Table, name: &str) -> &'t mut Set {
        t.sets.get_mut(name).unwrap()
    }

    #[test]
    fn good_ruleset_passes() {
        check(
            |_| {},
            expect![[r#"
            ok
        "#]],
        );
    }

    #[test]
    fn tables_are_unique_and_in_family_order() {
        let v6 = Table::new(Family::Ip6, "kube-nft");
        let ruleset = Ruleset {
            tables: vec![v6.clone(), good(), good()],
        };
        expect![[r#"
            ip kube-nft: table: tables are not in family order (ip before ip6)
            ip kube-nft: table: table appears more than once
        "#]]
        .assert_eq(&verify(&ruleset).unwrap_err().to_string());
    }

    #[test]
    fn names_are_legal_and_match_their_keys() {
        check(
            |t| {
                t.name = "9lives".into();
                let mut c = t.chains.remove("endpoint-1").unwrap();
                c.name = "endpoint:1".into();
                t.chains.insert("endpoint:1".into(), c.clone());
                t.chains.insert("endpoint-1".into(), c);
                let mut s = t.sets.remove("nodeport-ips").unwrap();
                s.name = "other".into();
                t.sets.insert("nodeport-ips".into(), s);
            },
            expect![[r#"
                ip 9lives: table: illegal name "9lives"
                ip 9lives: chain endpoint-1: stored under "endpoint-1" but named "endpoint:1"
                ip 9lives: chain endpoint:1: illegal name "endpoint:1"
                ip 9lives: set nodeport-ips: stored under "nodeport-ips" but named "other"
                ip 9lives: chain endpoint:1: not reachable from any base chain
            "#]],
        );
    }

    #[test]
    fn nat_base_chains_cannot_hook_forward() {
        check(
            |t| {
                chain(
                    t,
                    "nat-forward",
                    base(ChainKind::Nat, Hook::Forward, 0),
                    vec![],
                )
            },
            expect![[r#"
                ip kube-nft: chain nat-forward: nat chains cannot hook forward
            "#]],
        );
    }

    #[test]
    fn set_declarations() {
        check(
            |t| {
                // An integer key is declared with `typeof`, which every part needs.
                add_set(t, "ints", vec![DataType::Integer], vec![]);
                add_set(
                    t,
                    "int-mark",
                    vec![DataType::Integer, DataType::Mark],
                    vec![],
                );
                add_set(
                    t,
                    "int-verdict",
                    vec![DataType::Ipv4Addr, DataType::Integer],
                    vec![DataType::Verdict],
                );
                add_set(t, "verdicts", vec![DataType::Verdict], vec![]);
                add_set(
                    t,
                    "two-verdicts",
                    vec![DataType::Mark],
                    vec![DataType::Verdict, DataType::Verdict],
                );
                add_set(t, "int-data", vec![DataType::Mark], vec![DataType::Integer]);
                add_set(t, "v6", vec![DataType::Ipv6Addr], vec![]);
                add_set(t, "keyless", vec![], vec![]);
            },
            expect![[r#"
                ip kube-nft: map int-data: integer data needs `typeof`; not supported
                ip kube-nft: set int-mark: mark has no `typeof` expression (needed with an integer key)
                ip kube-nft: map int-verdict: verdict has no `typeof` expression (needed with an integer key)
                ip kube-nft: set keyless: no key type
                ip kube-nft: map two-verdicts: verdict data cannot be concatenated
                ip kube-nft: set v6: ipv6_addr in an ip table
                ip kube-nft: set verdicts: a verdict cannot be a key
            "#]],
        );
    }

    #[test]
    fn element_shapes_match_the_set_types() {
        check(
            |t| {
                set_mut(t, "service-ips").elements = vec![
                    elem(vec![Value::Addr(ip("172.30.0.1"))], goto("service-a")),
                    elem(
                        vec![
                            Value::Addr(ip("fd00::1")),
                            Value::Proto(L4Proto::Tcp),
                            Value::Port(80),
                        ],
                        goto("service-a"),
                    ),
                    elem(
                        vec![
                            Value::Prefix("172.30.0.0/24".parse().unwrap()),
                            Value::Proto(L4Proto::Tcp),
                            Value::Port(80),
                        ],
                        goto("service-a"),
                    ),
                    elem(
                        vec![
                            Value::Addr(ip("172.30.0.4")),
                            Value::Port(80),
                            Value::Proto(L4Proto::Tcp),
                        ],
                        goto("service-a"),
                    ),
                    elem(
                        vec![
                            Value::Addr(ip("172.30.0.5")),
                            Value::Proto(L4Proto::Tcp),
                            Value::Port(80),
                        ],
                        None,
                    ),
                    elem(
                        vec![
                            Value::Addr(ip("172.30.0.6")),
                            Value::Proto(L4Proto::Tcp),
                            Value::Port(80),
                        ],
                        Some(ElemData::Values(vec![Value::Int(1)])),
                    ),
                ];
                set_mut(t, "nodeport-ips").elements.push(elem(
                    vec![Value::Prefix("10.1.0.1/16".parse().unwrap())],
                    None,
                ));
                set_mut(t, "affinity-a")
                    .elements
                    .push(elem(vec![Value::Addr(ip("10.9.9.9"))], goto("service-a")));
                let endpoints = add_set(
                    t,
                    "endpoints",
                    vec![DataType::Ipv4Addr],
                    vec![DataType::Ipv4Addr, DataType::InetService],
                );
                endpoints.elements = vec![
                    elem(
                        vec![Value::Addr(ip("10.0.0.1"))],
                        Some(ElemData::Values(vec![Value::Addr(ip("10.0.0.2"))])),
                    ),
                    elem(vec![Value::Addr(ip("10.0.0.2"))], goto("service-a")),
                ];
            },
            expect![[r#"
                ip kube-nft: set affinity-a element 0: set element has data
                ip kube-nft: map endpoints element 0: data has 1 part but the type ipv4_addr . inet_service has 2 parts
                ip kube-nft: map endpoints element 1: verdict data in a map whose data is not verdict
                ip kube-nft: set nodeport-ips element 2: key part 0: prefix 10.1.0.1/16 has host bits set
                ip kube-nft: map service-ips element 0: key has 1 part but the type ipv4_addr . inet_proto . inet_service has 3 parts
                ip kube-nft: map service-ips element 1: key part 0: `fd00::1` is not of type ipv4_addr
                ip kube-nft: map service-ips element 2: key part 0: prefix 172.30.0.0/24 needs flags interval
                ip kube-nft: map service-ips element 3: key part 1: `80` is not of type inet_proto
                ip kube-nft: map service-ips element 4: map element has no data
                ip kube-nft: map service-ips element 5: data part 0: `1` is not of type verdict
            "#]],
        );
    }

    #[test]
    fn element_keys_are_unique() {
        check(
            |t| {
                let elements = &mut set_mut(t, "service-ips").elements;
                elements.push(service_elem("172.30.0.1", "service-a"));
                elements.push(service_elem("172.30.0.1", "endpoint-1"));
            },
            expect![[r#"
                ip kube-nft: map service-ips element 1: duplicate key (first at element 0)
                ip kube-nft: map service-ips element 2: duplicate key (first at element 0)
            "#]],
        );
    }

    #[test]
    fn interval_elements_do_not_overlap() {
        check(
            |t| {
                set_mut(t, "nodeport-ips").elements.extend([
                    elem(vec![Value::Prefix("10.0.0.128/25".parse().unwrap())], None),
                    elem(vec![Value::Addr(ip("10.0.1.0"))], None),
                    elem(vec![Value::Addr(ip("10.0.2.0"))], None),
                ]);
                let fw_types = vec![
                    DataType::Ipv4Addr,
                    DataType::InetService,
                    DataType::Ipv4Addr,
                ];
                let fw = add_set(t, "firewall", fw_types, vec![]);
                fw.flags.interval = true;
                let fw_elem = |d: &str, port, s: &str| {
                    elem(
                        vec![
                            Value::Prefix(d.parse().unwrap()),
                            Value::Port(port),
                            Value::Prefix(s.parse().unwrap()),
                        ],
                        None,
                    )
                };
                fw.elements = vec![
                    fw_elem("1.1.1.0/24", 80, "10.0.0.0/8"),
                    fw_elem("1.1.1.0/24", 443, "10.1.0.0/16"),
                    fw_elem("1.1.2.0/24", 80, "10.1.0.0/16"),
                    fw_elem("1.1.1.0/25", 80, "10.1.0.0/16"),
                ];
            },
            expect![[r#"
                ip kube-nft: set firewall element 3: key overlaps element 0 in an interval set
                ip kube-nft: set nodeport-ips element 3: duplicate key (first at element 1)
                ip kube-nft: set nodeport-ips element 2: key overlaps element 0 in an interval set
            "#]],
        );
    }

    #[test]
    fn verdicts_in_elements_target_existing_regular_chains() {
        check(
            |t| {
                let elements = &mut set_mut(t, "service-ips").elements;
                elements.push(service_elem("172.30.0.8", "nowhere"));
                elements.push(service_elem("172.30.0.9", "nat-output"));
            },
            expect![[r#"
                ip kube-nft: map service-ips element 1: goto target nowhere does not exist
                ip kube-nft: map service-ips element 2: goto target nat-output is a base chain
            "#]],
        );
    }

    #[test]
    fn rules_have_statements_and_nothing_after_a_terminal_one() {
        check(
            |t| {
                rule(t, "services", vec![]);
                rule(
                    t,
                    "services",
                    vec![
                        Stmt::Verdict(Verdict::Accept),
                        Stmt::MarkOr(1),
                        Stmt::MarkOr(2),
                    ],
                );
            },
            expect![[r#"
                ip kube-nft: chain services rule 1: rule has no statements
                ip kube-nft: chain services rule 2: statement 1: follows terminal statement 0
            "#]],
        );
    }

    #[test]
    fn match_values_fit_their_expression() {
        let m = |left, right| Stmt::Match {
            left,
            op: CmpOp::Eq,
            right,
        };
        check(
            |t| {
                rule(
                    t,
                    "services",
                    vec![
                        m(Expr::Daddr(Family::Ip), Value::Addr(ip("fd00::1"))),
                        m(Expr::Dport, Value::Proto(L4Proto::Tcp)),
                        m(service_key(), Value::Port(80)),
                        m(
                            Expr::Numgen {
                                mode: NumgenMode::Random,
                                modulus: 2,
                            },
                            Value::Int(2),
                        ),
                        m(Expr::MarkAnd(0x4000), Value::Int(0x4001)),
                        m(
                            Expr::Saddr(Family::Ip),
                            Value::Prefix("10.0.0.1/8".parse().unwrap()),
                        ),
                        m(Expr::CtState, Value::CtDnat),
                        m(Expr::Iifname, Value::Iface("".into())),
                        // The longest name and prefix there are: no error.
                        m(Expr::Iifname, Value::Iface("exactly-15-byte".into())),
                        m(Expr::Iifname, Value::IfacePrefix("exactly-14-byt".into())),
                        m(Expr::Iifname, Value::IfacePrefix("a-name-too-long".into())),
                        m(Expr::Iifname, Value::Iface("eth 0".into())),
                        m(Expr::Iifname, Value::IfacePrefix("veth*".into())),
                        m(Expr::Iifname, Value::Iface("\"".into())),
                        m(Expr::Dport, Value::Iface("eth0".into())),
                    ],
                );
            },
            expect![[r#"
                ip kube-nft: chain services rule 1: statement 0: `fd00::1` is not of type ipv4_addr
                ip kube-nft: chain services rule 1: statement 1: `tcp` is not of type inet_service
                ip kube-nft: chain services rule 1: statement 2: a match compares one expression, not a concatenation
                ip kube-nft: chain services rule 1: statement 3: 2 is never produced by mod 2
                ip kube-nft: chain services rule 1: statement 4: 0x00004001 has bits outside the mask 0x00004000
                ip kube-nft: chain services rule 1: statement 5: prefix 10.0.0.1/8 has host bits set
                ip kube-nft: chain services rule 1: statement 6: `dnat` is not of type ct_state
                ip kube-nft: chain services rule 1: statement 7: interface name "" is empty
                ip kube-nft: chain services rule 1: statement 10: interface name prefix "a-name-too-long" is longer than 14 bytes
                ip kube-nft: chain services rule 1: statement 11: interface name "eth 0" contains ' '
                ip kube-nft: chain services rule 1: statement 12: interface name prefix "veth*" contains '*'
                ip kube-nft: chain services rule 1: statement 13: interface name "\"" contains '"'
                ip kube-nft: chain services rule 1: statement 14: `"eth0"` is not of type inet_service
            "#]],
        );
    }

    #[test]
    fn lookups_need_an_existing_plain_set_of_the_key_type() {
        let lookup = |left, set: &str| Stmt::Lookup {
            left,
            set: set.into(),
            negate: false,
        };
        check(
            |t| {
                add_set(
                    t,
                    "endpoints-of-a",
                    service_types(),
                    vec![DataType::Ipv4Addr, DataType::InetService],
                );
                rule(
                    t,
                    "services",
                    vec![
                        lookup(Expr::Daddr(Family::Ip), "missing"),
                        lookup(service_key(), "endpoints-of-a"),
                        // A verdict map tested for a key is fine.
                        lookup(service_key(), "service-ips"),
                        lookup(Expr::Dport, "nodeport-ips"),
                        lookup(
                            Expr::Numgen {
                                mode: NumgenMode::Inc,
                                modulus: 2,
                            },
                            "nodeport-ips",
                        ),
                    ],
                );
            },
            expect![[r#"
                ip kube-nft: chain services rule 1: statement 0: set @missing does not exist
                ip kube-nft: chain services rule 1: statement 1: @endpoints-of-a is a map; a lookup needs a set
                ip kube-nft: chain services rule 1: statement 3: key is inet_service but @nodeport-ips has ipv4_addr
                ip kube-nft: chain services rule 1: statement 4: key is integer but @nodeport-ips has ipv4_addr
            "#]],
        );
    }

    #[test]
    fn vmaps_need_an_existing_verdict_map_of_the_key_type() {
        let vmap = |left, map: &str| Stmt::Vmap {
            left,
            map: map.into(),
        };
        check(
            |t| {
                add_set(
                    t,
                    "endpoints",
                    vec![DataType::Ipv4Addr],
                    vec![DataType::Ipv4Addr],
                );
                rule(
                    t,
                    "services",
                    vec![
                        vmap(service_key(), "missing"),
                        vmap(Expr::Daddr(Family::Ip), "endpoints"),
                        vmap(Expr::Daddr(Family::Ip), "nodeport-ips"),
                        vmap(Expr::Daddr(Family::Ip), "service-ips"),
                    ],
                );
            },
            expect![[r#"
                ip kube-nft: chain services rule 1: statement 0: map @missing does not exist
                ip kube-nft: chain services rule 1: statement 1: @endpoints is not a verdict map
                ip kube-nft: chain services rule 1: statement 2: @nodeport-ips is not a verdict map
                ip kube-nft: chain services rule 1: statement 3: key is ipv4_addr but @service-ips has ipv4_addr . inet_proto . inet_service
            "#]],
        );
    }

    #[test]
    fn updates_need_an_existing_dynamic_set_and_data_exactly_for_a_map() {
        let update = |set: &str, data: Option<&str>| Stmt::Update {
            set: set.into(),
            key: Expr::Saddr(Family::Ip),
            data: data.map(|a| Value::Addr(ip(a))),
        };
        let addr_map = |map: &str| {
            Stmt::Dnat(NatTarget::AddrMap {
                proto: L4Proto::Tcp,
                key: Expr::Saddr(Family::Ip),
                map: map.into(),
                port: 8080,
            })
        };
        check(
            |t| {
                let clients = add_set(
                    t,
                    "affinity-m",
                    vec![DataType::Ipv4Addr],
                    vec![DataType::Ipv4Addr],
                );
                clients.flags.dynamic = true;
                clients.flags.timeout = true;
                rule(
                    t,
                    "service-a",
                    vec![
                        update("missing", None),
                        update("service-ips", None),
                        update("nodeport-ips", None),
                        update("affinity-m", None),
                        update("affinity-a", Some("10.0.0.1")),
                        update("affinity-m", Some("fd00::1")),
                        update("affinity-m", Some("10.0.0.1")),
                    ],
                );
                for map in ["missing", "service-ips", "affinity-m"] {
                    rule(t, "service-a", vec![addr_map(map)]);
                }
            },
            expect![[r#"
                ip kube-nft: chain service-a rule 2: statement 0: set @missing does not exist
                ip kube-nft: chain service-a rule 2: statement 1: @service-ips is not dynamic
                ip kube-nft: chain service-a rule 2: statement 1: @service-ips is a map; update needs the data
                ip kube-nft: chain service-a rule 2: statement 1: key is ipv4_addr but @service-ips has ipv4_addr . inet_proto . inet_service
                ip kube-nft: chain service-a rule 2: statement 2: @nodeport-ips is not dynamic
                ip kube-nft: chain service-a rule 2: statement 3: @affinity-m is a map; update needs the data
                ip kube-nft: chain service-a rule 2: statement 4: @affinity-a is a set; update has data
                ip kube-nft: chain service-a rule 2: statement 5: update data: part 0: `fd00::1` is not of type ipv4_addr
                ip kube-nft: chain service-a rule 3: statement 0: map @missing does not exist
                ip kube-nft: chain service-a rule 4: statement 0: @service-ips does not map to an address
            "#]],
        );
    }

    #[test]
    fn dnat_targets_are_consistent() {
        let numgen = |modulus| Expr::Numgen {
            mode: NumgenMode::Random,
            modulus,
        };
        let map = |index, targets: Vec<(IpAddr, u16)>| {
            Stmt::Dnat(NatTarget::NumgenMap {
                proto: L4Proto::Tcp,
                index,
                targets,
            })
        };
        check(
            |t| {
                let rules = &mut t.chains.get_mut("endpoint-1").unwrap().rules;
                rules.push(Rule::new(vec![dnat("fd00::1")]));
                rules.push(Rule::new(vec![map(numgen(0), vec![])]));
                rules.push(Rule::new(vec![map(
                    numgen(3),
                    vec![(ip("10.0.0.1"), 80), (ip("fd00::2"), 80)],
                )]));
                rules.push(Rule::new(vec![map(Expr::Mark, vec![(ip("10.0.0.1"), 80)])]));
                let jhash = Expr::JhashSaddr {
                    family: Family::Ip6,
                    modulus: 1,
                    seed: 0,
                };
                rules.push(Rule::new(vec![map(jhash, vec![(ip("10.0.0.1"), 80)])]));
            },
            expect![[r#"
                ip kube-nft: chain endpoint-1 rule 1: statement 0: dnat to fd00::1 in an ip table
                ip kube-nft: chain endpoint-1 rule 2: statement 0: numgen modulus must be at least 1
                ip kube-nft: chain endpoint-1 rule 2: statement 0: dnat map has no targets
                ip kube-nft: chain endpoint-1 rule 3: statement 0: index modulus 3 does not match 2 targets
                ip kube-nft: chain endpoint-1 rule 3: statement 0: dnat to fd00::2 in an ip table
                ip kube-nft: chain endpoint-1 rule 4: statement 0: dnat map index must be numgen or jhash
                ip kube-nft: chain endpoint-1 rule 5: statement 0: jhash of an ip6 address in an ip table
            "#]],
        );
    }

    #[test]
    fn expressions_match_the_table_family() {
        check(
            |t| {
                let key = Expr::Concat(vec![
                    Expr::Saddr(Family::Ip6),
                    Expr::Concat(vec![Expr::Dport]),
                ]);
                rule(
                    t,
                    "services",
                    vec![Stmt::Update {
                        set: "affinity-a".into(),
                        key,
                        data: None,
                    }],
                );
            },
            expect![[r#"
                ip kube-nft: chain services rule 1: statement 0: ip6 address in an ip table
                ip kube-nft: chain services rule 1: statement 0: nested concatenation
                ip kube-nft: chain services rule 1: statement 0: key is ipv6_addr . inet_service but @affinity-a has ipv4_addr
            "#]],
        );
    }

    #[test]
    fn jumps_target_existing_regular_chains() {
        check(
            |t| {
                rule(t, "services", vec![jump("nowhere")]);
                rule(
                    t,
                    "services",
                    vec![Stmt::Verdict(Verdict::Goto("nat-output".into()))],
                );
            },
            expect![[r#"
                ip kube-nft: chain services rule 1: statement 0: jump target nowhere does not exist
                ip kube-nft: chain services rule 2: statement 0: goto target nat-output is a base chain
            "#]],
        );
    }

    #[test]
    fn every_regular_chain_is_reachable() {
        check(
            |t| {
                chain(t, "orphan", None, vec![vec![jump("orphan-child")]]);
                chain(t, "orphan-child", None, vec![]);
                // Only referenced from a map that no rule looks up.
                add_set(
                    t,
                    "unused-map",
                    vec![DataType::Ipv4Addr],
                    vec![DataType::Verdict],
                )
                .elements
                .push(elem(vec![Value::Addr(ip("10.0.0.1"))], goto("also-orphan")));
                chain(t, "also-orphan", None, vec![]);
            },
            expect![[r#"
                ip kube-nft: chain also-orphan: not reachable from any base chain
                ip kube-nft: chain orphan: not reachable from any base chain
                ip kube-nft: chain orphan-child: not reachable from any base chain
            "#]],
        );
    }

    #[test]
    fn nat_and_reject_only_where_the_kernel_allows_them() {
        check(
            |t| {
                // endpoint-1 (dnat) becomes reachable from filter input and nat postrouting.
                rule(t, "filter-input", vec![jump("endpoint-1")]);
                rule(t, "nat-postrouting", vec![jump("endpoint-1")]);
                rule(
                    t,
                    "nat-prerouting",
                    vec![Stmt::Masquerade {
                        fully_random: false,
                    }],
                );
                rule(t, "nat-output", vec![jump("reject-services")]);
            },
            expect![[r#"
                ip kube-nft: chain endpoint-1 rule 0: statement 0: dnat in a chain reached from filter input, nat postrouting
                ip kube-nft: chain nat-prerouting rule 1: statement 0: masquerade in a chain reached from nat prerouting
                ip kube-nft: chain reject-services rule 0: statement 0: reject in a chain reached from nat output
            "#]],
        );
    }

    #[test]
    fn jump_loops_are_refused() {
        check(
            |t| {
                rule(t, "endpoint-1", vec![jump("service-a")]);
                chain(t, "self", None, vec![vec![jump("self")]]);
                rule(t, "services", vec![jump("self")]);
            },
            expect![[r#"
                ip kube-nft: chain service-a: jump loop endpoint-1 -> service-a -> endpoint-1
                ip kube-nft: chain self: jump loop self -> self
            "#]],
        );
    }

    #[test]
    fn jumps_stay_within_the_kernel_stack() {
        let depth = |n: usize| {
            move |t: &mut Table| {
                rule(t, "filter-input", vec![jump("deep-1")]);
                for i in 1..=n {
                    let rules = if i < n {
                        vec![vec![jump(&format!("deep-{}", i + 1))]]
                    } else {
                        vec![]
                    };
                    chain(t, &format!("deep-{i}"), None, rules);
                }
            }
        };
        check(
            depth(MAX_JUMP_DEPTH),
            expect![[r#"
            ok
        "#]],
        );
        check(
            depth(MAX_JUMP_DEPTH + 1),
            expect![[r#"
            ip kube-nft: chain filter-input: jumps 16 chains deep; the kernel allows 15
        "#]],
        );
    }
}
