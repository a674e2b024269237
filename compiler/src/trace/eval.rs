//! The interpreter proper. A *branch* is one possible history of the packet (its probability,
//! current destination, mark and path); statements that depend on `numgen` fork it. Chains run
//! as `nft_do_chain` does: rules in order, the statements of a rule left to right until one
//! fails to match or issues a verdict; `jump` returns to the rule after the jumping one, `goto`
//! hands the caller's return point to the target, and falling off a chain is `return` (or the
//! `accept` policy for a base chain). Verdicts end only the current base chain, except `drop`
//! and `reject`, which end the packet; NAT statements are terminal like a verdict. Evaluation
//! is bounded ([`MAX_RULES`] rule evaluations per branch, [`MAX_DEPTH`] nested chains) so a
//! cyclic ruleset yields an error outcome instead of a hang. What does not depend on the
//! packet (each hook's base chains in order, whether a set may be searched by key) is worked
//! out once per table, in [`Prepared`], and shared by every trace through it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use crate::ir::{
    BaseChain, Chain, ChainKind, CmpOp, CtDir, ElemData, Expr, Family, FibAddr, Hook, NatTarget,
    Rule, Set, Stmt, Table, Value, Verdict,
};

use super::jhash::jhash_addr;
use super::lookup::{find, is_keyed, matches, Val};
use super::{Env, Fate, Origin, Outcome, Packet, Ratio};

/// Most rule evaluations one branch may make (a real trace makes a few dozen).
pub(super) const MAX_RULES: u32 = 10_000;
/// Most chains one branch may be nested in (jumps and gotos alike).
pub(super) const MAX_DEPTH: usize = 64;
/// Most distinct values one expression may enumerate (`numgen mod N` gives N).
const MAX_VALUES: usize = 1 << 16;

/// One possible history of the packet.
#[derive(Clone, Debug)]
struct Branch {
    probability: Ratio,
    daddr: IpAddr,
    dport: u16,
    /// `meta mark`: zero on arrival.
    mark: u32,
    dnat: Option<(IpAddr, u16)>,
    masquerade: bool,
    /// Host traffic to a local address that left through postrouting and came back in on
    /// `lo`: its input interface is `lo`, and the input hook's nat chains are skipped (the
    /// kernel made the connection's source binding in postrouting already).
    looped: bool,
    /// The table (index in [`Prepared::tables`]) of the chain being run: `jump` and `goto`
    /// stay in it, and its sets are the ones the rules name.
    table: usize,
    path: Vec<String>,
    rules: u32,
}

impl Branch {
    fn finish(self, fate: Fate) -> Outcome {
        Outcome {
            probability: self.probability,
            fate,
            path: self.path,
        }
    }
}

/// How a chain was left.
#[derive(Clone, Debug)]
enum Flow {
    /// `return` or the end of the chain (for a base chain: policy accept).
    Return,
    /// `accept`: ends this base chain only.
    Accept,
    /// A NAT statement: ends this base chain, and the NAT binding skips later nat chains of
    /// the same hook.
    Nat,
    Drop,
    Reject,
    Error(String),
}

/// How a rule was left.
#[derive(Clone, Debug)]
enum RuleFlow {
    /// A statement did not match, or the rule had no verdict: on to the next rule.
    Next,
    Return,
    Jump(String),
    Goto(String),
    End(Flow),
}

/// The values an expression can take (one part per concatenation member), with probabilities.
type Dist = Vec<(Ratio, Vec<Val>)>;

/// A family's tables made ready for tracing: built once, they serve any number of packets.
pub(super) struct Prepared<'a> {
    family: Family,
    /// The family's tables, in the ruleset's order (the main table first).
    tables: Vec<&'a Table>,
    /// Every base chain of the family with its table, in the order a hook runs them: ascending
    /// priority, at equal priority filter before nat, then by name and table, so the order
    /// never depends on anything but the ruleset. A hook runs those of its own, in this order.
    /// (Several tables' chains at one priority run in the order the kernel registered them;
    /// kube-nft's dispatch tables never hold the same frontend, so their order does not
    /// matter there.)
    base_chains: Vec<(BaseChain, usize, &'a Chain)>,
    /// Every set by table and name, each with whether it may be searched by key
    /// (`lookup::is_keyed`), decided the first time a trace looks it up: a single trace pays
    /// only for the sets it reads, and many traces pay once.
    sets: BTreeMap<(usize, &'a str), (&'a Set, OnceLock<bool>)>,
}

impl<'a> Prepared<'a> {
    /// `tables`: the tables of one family (at least one).
    pub(super) fn new(tables: Vec<&'a Table>) -> Prepared<'a> {
        let family = tables[0].family;
        let mut base_chains: Vec<_> = (tables.iter().enumerate())
            .flat_map(|(t, table)| {
                (table.chains.values()).filter_map(move |c| c.base.map(|b| (b, t, c)))
            })
            .collect();
        base_chains.sort_by(|(a, at, ac), (b, bt, bc)| {
            (a.priority, a.kind, &ac.name, at).cmp(&(b.priority, b.kind, &bc.name, bt))
        });
        let sets = (tables.iter().enumerate())
            .flat_map(|(t, table)| {
                (table.sets.iter())
                    .map(move |(name, set)| ((t, name.as_str()), (set, OnceLock::new())))
            })
            .collect();
        Prepared {
            family,
            tables,
            base_chains,
            sets,
        }
    }

    pub(super) fn family(&self) -> Family {
        self.family
    }

    /// How a chain of table `t` shows in a path: its name, after its table's for a table other
    /// than the family's first (`kube-nft-dispatch-2:services`).
    fn step(&self, t: usize, chain: &str) -> String {
        if t == 0 {
            chain.to_string()
        } else {
            format!("{}:{chain}", self.tables[t].name)
        }
    }
}

/// Runs the packet through the hooks it crosses, in `table` (the tables of the packet's
/// family, if any); the outcomes are unmerged, in branch order.
pub(super) fn run(table: Option<&Prepared>, env: &Env, packet: &Packet) -> Vec<Outcome> {
    let start = Branch {
        probability: Ratio::ONE,
        daddr: packet.daddr,
        dport: packet.dport,
        mark: 0,
        dnat: None,
        masquerade: false,
        looped: false,
        table: 0,
        path: Vec::new(),
        rules: 0,
    };
    let family = Family::of(packet.daddr);
    if Family::of(packet.saddr) != family {
        return vec![start.finish(Fate::Error(format!(
            "source {} and destination {} are of different families",
            packet.saddr, packet.daddr
        )))];
    }
    let Some(table) = table else {
        return vec![start.finish(accepted_fate())];
    };
    let interp = Interp {
        table,
        env,
        packet,
        family,
    };
    let mut done = Vec::new();
    let first = match packet.origin {
        Origin::Host => Hook::Output,
        Origin::Outside | Origin::LocalPod => Hook::Prerouting,
    };
    for b in interp.hook(vec![start], first, &mut done) {
        // The routing decision sees the destination after DNAT. Host traffic to a local address
        // still leaves through postrouting (on lo) before it comes back in through input; routed
        // traffic delivered locally never reaches postrouting.
        let rest: &[Hook] = match (packet.origin, env.is_local(b.daddr)) {
            (Origin::Host, true) => &[Hook::Postrouting, Hook::Input],
            (Origin::Host, false) => &[Hook::Postrouting],
            (_, true) => &[Hook::Input],
            (_, false) => &[Hook::Forward, Hook::Postrouting],
        };
        let mut live = vec![b];
        for &hook in rest {
            if hook == Hook::Input && packet.origin == Origin::Host {
                live.iter_mut().for_each(|b| b.looped = true);
            }
            live = interp.hook(live, hook, &mut done);
        }
        done.extend(live.into_iter().map(|b| {
            let fate = Fate::Accept {
                dnat: b.dnat,
                masquerade: b.masquerade,
            };
            b.finish(fate)
        }));
    }
    done
}

fn accepted_fate() -> Fate {
    Fate::Accept {
        dnat: None,
        masquerade: false,
    }
}

struct Interp<'a> {
    table: &'a Prepared<'a>,
    env: &'a Env,
    packet: &'a Packet,
    family: Family,
}

impl<'a> Interp<'a> {
    /// Runs every base chain of `hook` on each live branch; finished branches go to `done`.
    fn hook(&self, branches: Vec<Branch>, hook: Hook, done: &mut Vec<Outcome>) -> Vec<Branch> {
        let chains = (self.table.base_chains.iter()).filter(|(b, _, _)| b.hook == hook);
        // The flag: a NAT binding was made at this hook. The kernel then skips the remaining
        // nat chains of the hook (it runs them only while the connection has no binding).
        let mut live: Vec<(Branch, bool)> = branches.into_iter().map(|b| (b, false)).collect();
        for &(base, t, chain) in chains {
            let mut next = Vec::new();
            for (mut b, bound) in live {
                if base.kind == ChainKind::Nat && (bound || b.looped) {
                    next.push((b, bound));
                    continue;
                }
                b.table = t;
                for (b, flow) in self.chain(b, &chain.name, 0) {
                    match flow {
                        Flow::Return | Flow::Accept => next.push((b, bound)),
                        Flow::Nat => next.push((b, true)),
                        Flow::Drop => done.push(b.finish(Fate::Drop)),
                        Flow::Reject => done.push(b.finish(Fate::Reject)),
                        Flow::Error(e) => done.push(b.finish(Fate::Error(e))),
                    }
                }
            }
            live = next;
        }
        live.into_iter().map(|(b, _)| b).collect()
    }

    /// Runs chain `name` from its first rule; returns every branch with how it left.
    fn chain(&self, mut b: Branch, name: &str, depth: usize) -> Vec<(Branch, Flow)> {
        if depth >= MAX_DEPTH {
            let e = format!("more than {MAX_DEPTH} nested chains at {name} (a cycle?)");
            return vec![(b, Flow::Error(e))];
        }
        let Some(chain) = self.table.tables[b.table].chains.get(name) else {
            return vec![(b, Flow::Error(format!("no chain {name}")))];
        };
        let start = b.path.len();
        b.path.push(self.table.step(b.table, name));
        let mut out = Vec::new();
        // Pending (branch, next rule index); a stack, refilled in order so the first branch
        // of a fork is followed first.
        let mut work = vec![(b, 0usize)];
        while let Some((mut b, i)) = work.pop() {
            let Some(rule) = chain.rules.get(i) else {
                out.push((b, Flow::Return));
                continue;
            };
            b.rules += 1;
            if b.rules > MAX_RULES {
                let e = format!("more than {MAX_RULES} rule evaluations (a loop?)");
                out.push((b, Flow::Error(e)));
                continue;
            }
            let mut resume = Vec::new();
            for (b, flow) in self.rule(b, rule) {
                match flow {
                    RuleFlow::Next => resume.push((b, i + 1)),
                    RuleFlow::Return => out.push((b, Flow::Return)),
                    RuleFlow::End(flow) => out.push((b, flow)),
                    // The return point of a jump is the rule after the jumping one: the rest
                    // of the jumping rule is never evaluated.
                    RuleFlow::Jump(target) => {
                        for (b, flow) in self.chain(b, &target, depth + 1) {
                            match flow {
                                Flow::Return => resume.push((b, i + 1)),
                                flow => out.push((b, flow)),
                            }
                        }
                    }
                    // A goto pushes no return point: when the target returns, this chain
                    // returns too, to its own caller.
                    RuleFlow::Goto(target) => out.extend(self.chain(b, &target, depth + 1)),
                }
            }
            work.extend(resume.into_iter().rev());
        }
        // A chain that returned without doing anything is noise in the path.
        for (b, flow) in &mut out {
            if matches!(flow, Flow::Return) && b.path.len() == start + 1 {
                b.path.truncate(start);
            }
        }
        out
    }

    /// Evaluates one rule's statements left to right.
    fn rule(&self, b: Branch, rule: &Rule) -> Vec<(Branch, RuleFlow)> {
        let mut out = Vec::new();
        let mut b = b;
        for stmt in &rule.stmts {
            match self.stmt(b, stmt, &mut out) {
                Some(next) => b = next,
                None => return out,
            }
        }
        out.push((b, RuleFlow::Next));
        out
    }

    /// Evaluates one statement. Branches that leave the rule go to `out`; the branch that
    /// goes on to the next statement (if any) is returned.
    fn stmt(
        &self,
        mut b: Branch,
        stmt: &Stmt,
        out: &mut Vec<(Branch, RuleFlow)>,
    ) -> Option<Branch> {
        let fail = |b: Branch, e: String, out: &mut Vec<(Branch, RuleFlow)>| {
            out.push((b, RuleFlow::End(Flow::Error(e))));
            None
        };
        match stmt {
            Stmt::Match { left, op, right } => {
                let classified = self.classify(&b, left, |key| match key {
                    [v] => matches(v, right, true).map(|m| m == (*op == CmpOp::Eq)),
                    _ => Err(format!("a concatenation compared with {right:?}")),
                });
                self.filter(b, classified, out)
            }
            Stmt::Lookup { left, set, negate } => {
                let (set, keyed) = match self.set(&b, set) {
                    Ok(s) => s,
                    Err(e) => return fail(b, e, out),
                };
                let classified = self.classify(&b, left, |key| {
                    find(set, keyed, key).map(|hit| hit.is_some() != *negate)
                });
                self.filter(b, classified, out)
            }
            Stmt::Vmap { left, map } => {
                let (map, keyed) = match self.verdict_map(&b, map) {
                    Ok(m) => m,
                    Err(e) => return fail(b, e, out),
                };
                let groups = match self.classify(&b, left, |key| find(map, keyed, key)) {
                    Ok(g) => g,
                    Err(e) => return fail(b, e, out),
                };
                for (b, hit) in fan_out(b, groups, out) {
                    // A miss breaks the rule: evaluation continues with the next rule.
                    let flow = match hit.and_then(|i| map.elements[i].data.as_ref()) {
                        Some(ElemData::Verdict(v)) => verdict_flow(v),
                        _ => RuleFlow::Next,
                    };
                    out.push((b, flow));
                }
                None
            }
            Stmt::MarkOr(bits) => {
                b.mark |= bits;
                b.path.push(format!("mark {:#x}", b.mark));
                Some(b)
            }
            Stmt::MarkXor(bits) => {
                b.mark ^= bits;
                b.path.push(format!("mark {:#x}", b.mark));
                Some(b)
            }
            // Stateless trace: the set keeps only its static elements.
            Stmt::Update { set, .. } => {
                b.path.push(format!("update @{set}"));
                Some(b)
            }
            Stmt::Dnat(target) => {
                self.dnat(b, target, out);
                None
            }
            Stmt::Masquerade { .. } => {
                b.masquerade = true;
                b.path.push("masquerade".to_string());
                out.push((b, RuleFlow::End(Flow::Nat)));
                None
            }
            Stmt::Reject => {
                out.push((b, RuleFlow::End(Flow::Reject)));
                None
            }
            Stmt::Verdict(v) => {
                out.push((b, verdict_flow(v)));
                None
            }
        }
    }

    /// `meta l4proto P dnat to …`: a protocol mismatch fails the rule; a `numgen`/`jhash`
    /// index that has no entry in the anonymous map breaks it too.
    fn dnat(&self, b: Branch, target: &NatTarget, out: &mut Vec<(Branch, RuleFlow)>) {
        let (proto, groups) = match target {
            NatTarget::Addr { proto, addr, port } => {
                (*proto, Ok(vec![(Ratio::ONE, Some((*addr, *port)))]))
            }
            NatTarget::NumgenMap {
                proto,
                index,
                targets,
            } => {
                let groups = self.classify(&b, index, |key| match key {
                    [Val::Int(i)] => Ok(usize::try_from(*i)
                        .ok()
                        .and_then(|i| targets.get(i))
                        .copied()),
                    _ => Err(format!("dnat map index {index:?} is not a number")),
                });
                (*proto, groups)
            }
            // A data map: `addr . port` (the key names the protocol itself, `meta l4proto` is
            // part of it, so there is no protocol match to fail), or an address with a constant
            // port (`AddrMap`, ClientIP affinity: a stateless trace's map holds no client, its
            // elements come from the packet path, so it misses unless a test put one there). A
            // key without an element breaks the rule.
            NatTarget::Map { key, map, .. } | NatTarget::AddrMap { key, map, .. } => {
                let (proto, port) = match target {
                    NatTarget::AddrMap { proto, port, .. } => (*proto, Some(*port)),
                    _ => (self.packet.proto, None),
                };
                let (set, keyed) = match self.set(&b, map) {
                    Ok(set) => set,
                    Err(e) => {
                        out.push((b, RuleFlow::End(Flow::Error(e))));
                        return;
                    }
                };
                let groups = self.classify(&b, key, |k| {
                    let hit = find(set, keyed, k)?;
                    Ok(hit.and_then(|i| match &set.elements[i].data {
                        Some(ElemData::Values(v)) => match (&v[..], port) {
                            ([Value::Addr(addr), Value::Port(p)], None) => Some((*addr, *p)),
                            ([Value::Addr(addr)], Some(p)) => Some((*addr, p)),
                            _ => None,
                        },
                        _ => None,
                    }))
                });
                (proto, groups)
            }
        };
        if proto != self.packet.proto {
            out.push((b, RuleFlow::Next));
            return;
        }
        let groups = match groups {
            Ok(g) => g,
            Err(e) => {
                out.push((b, RuleFlow::End(Flow::Error(e))));
                return;
            }
        };
        for (mut b, to) in fan_out(b, groups, out) {
            let Some((addr, port)) = to else {
                out.push((b, RuleFlow::Next));
                continue;
            };
            if Family::of(addr) != self.family {
                let e = format!("dnat to {addr} in the {} table", self.family);
                out.push((b, RuleFlow::End(Flow::Error(e))));
                continue;
            }
            b.daddr = addr;
            b.dport = port;
            b.dnat = Some((addr, port));
            b.path.push(format!("dnat {}", SocketAddr::new(addr, port)));
            out.push((b, RuleFlow::End(Flow::Nat)));
        }
    }

    /// Splits a branch on a boolean condition: the failing part leaves the rule, the matching
    /// part (if any) goes on.
    fn filter(
        &self,
        b: Branch,
        classified: Result<Vec<(Ratio, bool)>, String>,
        out: &mut Vec<(Branch, RuleFlow)>,
    ) -> Option<Branch> {
        let groups = match classified {
            Ok(g) => g,
            Err(e) => {
                out.push((b, RuleFlow::End(Flow::Error(e))));
                return None;
            }
        };
        let mut go_on = None;
        for (b, hit) in fan_out(b, groups, out) {
            if hit {
                go_on = Some(b);
            } else {
                out.push((b, RuleFlow::Next));
            }
        }
        go_on
    }

    /// Evaluates `expr` and groups its possible values by `f`, summing probabilities; groups
    /// keep the order of their first value.
    fn classify<K: PartialEq>(
        &self,
        b: &Branch,
        expr: &Expr,
        f: impl Fn(&[Val]) -> Result<K, String>,
    ) -> Result<Vec<(Ratio, K)>, String> {
        let mut groups: Vec<(Ratio, K)> = Vec::new();
        for (p, key) in self.eval(b, expr)? {
            let k = f(&key)?;
            match groups.iter_mut().find(|g| g.1 == k) {
                Some(g) => g.0 = g.0.checked_add(p).ok_or_else(overflow)?,
                None => groups.push((p, k)),
            }
        }
        Ok(groups)
    }

    /// The possible values of `expr` on branch `b`.
    fn eval(&self, b: &Branch, expr: &Expr) -> Result<Dist, String> {
        let certain = |v: Val| Ok(vec![(Ratio::ONE, vec![v])]);
        match expr {
            Expr::Saddr(f) => certain(Val::Addr(self.addr(*f, self.packet.saddr)?)),
            Expr::Daddr(f) => certain(Val::Addr(self.addr(*f, b.daddr)?)),
            Expr::L4Proto => certain(Val::Proto(self.packet.proto)),
            Expr::Dport => certain(Val::Port(b.dport)),
            Expr::Sport => certain(Val::Port(self.packet.sport)),
            Expr::Mark => certain(Val::Int(b.mark)),
            Expr::MarkAnd(mask) => certain(Val::Int(b.mark & mask)),
            // The first packet of a connection.
            Expr::CtState => certain(Val::CtNew),
            // The DNAT status bit is set when a DNAT binding is made for the connection.
            Expr::CtStatus => certain(Val::CtStatus {
                dnat: b.dnat.is_some(),
            }),
            Expr::CtDirection => certain(Val::CtDir(CtDir::Original)),
            Expr::CtOriginalDaddr(f) => certain(Val::Addr(self.addr(*f, self.packet.daddr)?)),
            Expr::FibType(which) => {
                let addr = match which {
                    FibAddr::Saddr => self.packet.saddr,
                    FibAddr::Daddr => b.daddr,
                };
                certain(Val::Fib {
                    local: self.env.is_local(addr),
                })
            }
            Expr::Iifname if b.looped => certain(Val::Ifname("lo".to_owned())),
            Expr::Iifname => certain(Val::Ifname(self.env.iifname(self.packet.origin).to_owned())),
            // `random` is reciprocal_scale(prandom, N): uniform. `inc` is a round-robin
            // counter: uniform over a full cycle, which is what a first-packet trace can say.
            Expr::Numgen { modulus, .. } => {
                let n = usize::try_from(*modulus).unwrap_or(usize::MAX);
                if n == 0 || n > MAX_VALUES {
                    return Err(format!("numgen modulus {modulus} out of range"));
                }
                let p = Ratio::new(1, u64::from(*modulus));
                Ok((0..*modulus).map(|v| (p, vec![Val::Int(v)])).collect())
            }
            Expr::JhashSaddr {
                family,
                modulus,
                seed,
            } => {
                if *modulus == 0 {
                    return Err("jhash modulus 0".to_string());
                }
                let saddr = self.addr(*family, self.packet.saddr)?;
                certain(Val::Int(jhash_addr(saddr, *modulus, *seed)))
            }
            Expr::Concat(parts) => {
                let mut acc: Dist = vec![(Ratio::ONE, Vec::new())];
                for part in parts {
                    let values = self.eval(b, part)?;
                    if acc.len().saturating_mul(values.len()) > MAX_VALUES {
                        return Err("concatenation has too many possible values".to_string());
                    }
                    let mut next = Vec::with_capacity(acc.len() * values.len());
                    for (p, key) in &acc {
                        for (q, value) in &values {
                            let mut key = key.clone();
                            key.extend(value.iter().cloned());
                            next.push((p.checked_mul(*q).ok_or_else(overflow)?, key));
                        }
                    }
                    acc = next;
                }
                Ok(acc)
            }
        }
    }

    fn addr(&self, family: Family, addr: IpAddr) -> Result<IpAddr, String> {
        if family == self.family {
            Ok(addr)
        } else {
            Err(format!(
                "{family} address expression in the {} table",
                self.family
            ))
        }
    }

    /// The set `name`, with whether it may be searched by key.
    fn set(&self, b: &Branch, name: &str) -> Result<(&'a Set, bool), String> {
        let (set, keyed) =
            (self.table.sets.get(&(b.table, name))).ok_or_else(|| format!("no set @{name}"))?;
        Ok((set, *keyed.get_or_init(|| is_keyed(set))))
    }

    fn verdict_map(&self, b: &Branch, name: &str) -> Result<(&'a Set, bool), String> {
        let (map, keyed) = self.set(b, name)?;
        if map.data != [crate::ir::DataType::Verdict] {
            return Err(format!("@{name} is not a verdict map"));
        }
        Ok((map, keyed))
    }
}

fn overflow() -> String {
    "probability too fine for u64".to_string()
}

/// Gives each group its own copy of the branch, scaled by the group's probability; zero
/// groups vanish. If a product overflows, the whole branch ends in an error instead. The last
/// group takes the branch itself: most statements have one outcome, and a copy of the path
/// for each would be most of a trace's work.
fn fan_out<K>(
    b: Branch,
    groups: Vec<(Ratio, K)>,
    out: &mut Vec<(Branch, RuleFlow)>,
) -> Vec<(Branch, K)> {
    let mut scaled = Vec::with_capacity(groups.len());
    for (p, k) in groups.into_iter().filter(|g| !g.0.is_zero()) {
        let Some(probability) = b.probability.checked_mul(p) else {
            out.push((b, RuleFlow::End(Flow::Error(overflow()))));
            return Vec::new();
        };
        scaled.push((probability, k));
    }
    let mut forks = Vec::with_capacity(scaled.len());
    let last = scaled.pop();
    for (probability, k) in scaled {
        let mut fork = b.clone();
        fork.probability = probability;
        forks.push((fork, k));
    }
    if let Some((probability, k)) = last {
        let mut b = b;
        b.probability = probability;
        forks.push((b, k));
    }
    forks
}

fn verdict_flow(v: &Verdict) -> RuleFlow {
    match v {
        Verdict::Accept => RuleFlow::End(Flow::Accept),
        Verdict::Drop => RuleFlow::End(Flow::Drop),
        Verdict::Return => RuleFlow::Return,
        Verdict::Jump(c) => RuleFlow::Jump(c.clone()),
        Verdict::Goto(c) => RuleFlow::Goto(c.clone()),
    }
}
