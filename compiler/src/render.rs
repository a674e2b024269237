//! IR → nft script: the only text form of a ruleset, printed by `compile --dry-run`, stored in
//! the golden files and loadable with `nft -f`. The script is flat, one object per line, in the
//! style of knftables' `Dump()`: diagnostics first as `# warning: …` comments (`render` only),
//! then for each table (in ruleset order, `ip` before `ip6`) the three lines
//! `add table` / `delete table` / `add table { … }`, then every chain (base chains, then regular
//! chains, each group in name order), every set and map (name order), every rule (chain name
//! order, rules in evaluation order) and every element (set name order, elements as stored, one
//! per line). Declaring all chains and sets before any rule or element means every reference
//! (`jump`/`goto` targets, `@set` in rules, verdicts in map elements) is declared before use.
//! `nft -f` runs the whole file as one transaction, so the table is atomically replaced: the
//! leading `add table` makes the `delete table` succeed when the table does not exist yet
//! (`delete` alone fails with ENOENT), and nothing outside our own tables is touched.
//!
//! Statements are written the way nft 1.0.6 accepts them and as close as possible to what
//! `nft list ruleset` prints, so a golden file reads like the kernel's view. Known differences:
//! priorities stay numeric (nft prints `dstnat`/`filter`/`srcnat`), set timeouts stay in seconds
//! (nft prints `3h`) and the chain policy is omitted (always nft's default, `accept`). This
//! module renders, it does not check: run `ir::verify` first.

use std::fmt::{self, Display, Formatter};

use crate::ir::{
    CmpOp, CtDir, DataType, ElemData, Element, Expr, Family, FibAddr, NatTarget, NumgenMode, Rule,
    Ruleset, Set, SetFlags, Stmt, Table, Value, Verdict,
};
use crate::Compiled;

/// The longest comment nft accepts, in bytes: nft 1.0.6 rejects anything longer with
/// "comment too long, 128 characters maximum allowed" (`NFTNL_UDATA_COMMENT_MAXLEN`), on tables,
/// chains, sets, rules and elements alike. Checked with `nft -c`: 128 bytes load, 129 do not.
pub const MAX_COMMENT_BYTES: usize = 128;

/// Renders a compile result: one `# warning: …` line per diagnostic, then the ruleset script.
pub fn render(compiled: &Compiled) -> String {
    let mut out = String::new();
    for diagnostic in &compiled.diagnostics {
        // A diagnostic message may quote user input; a newline in it would end the comment and
        // turn the rest into (broken) nft syntax.
        let text = diagnostic.to_string().replace(['\n', '\r'], " ");
        out.push_str("# warning: ");
        out.push_str(&text);
        out.push('\n');
    }
    out.push_str(&render_ruleset(&compiled.ruleset));
    out
}

/// Renders a ruleset as a flat `nft -f` script that atomically replaces our tables.
pub fn render_ruleset(ruleset: &Ruleset) -> String {
    Script(ruleset).to_string()
}

/// Renders one rule's statements and comment as they follow `add rule FAMILY TABLE CHAIN`
/// (e.g. `ip daddr @cluster-ips jump services comment "…"`), for messages and traces.
pub fn render_rule(rule: &Rule) -> String {
    RuleText(rule).to_string()
}

/// Makes a string safe inside nft's double quotes. nft strings have no escapes at all (`"` ends
/// the string whatever precedes it), so `"` becomes `'`; line breaks would split our
/// one-object-per-line script, so they become spaces; and the result is cut to
/// [`MAX_COMMENT_BYTES`] on a character boundary.
pub fn sanitize_comment(comment: &str) -> String {
    let mut out = String::with_capacity(comment.len().min(MAX_COMMENT_BYTES));
    for c in comment.chars() {
        let c = match c {
            '"' => '\'',
            '\n' | '\r' => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > MAX_COMMENT_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// A whole ruleset.
struct Script<'a>(&'a Ruleset);

impl Display for Script<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for table in &self.0.tables {
            write_table(f, table)?;
        }
        Ok(())
    }
}

fn write_table(f: &mut Formatter<'_>, table: &Table) -> fmt::Result {
    let t = format!("{} {}", table.family, table.name);
    writeln!(f, "add table {t}")?;
    writeln!(f, "delete table {t}")?;
    match &table.comment {
        Some(c) => writeln!(f, "add table {t} {{ comment {}; }}", Quoted(c))?,
        None => writeln!(f, "add table {t}")?,
    }

    let base = table.chains.values().filter(|c| c.base.is_some());
    let regular = table.chains.values().filter(|c| c.base.is_none());
    for chain in base.chain(regular) {
        write!(f, "add chain {t} {}", chain.name)?;
        let mut body = Vec::new();
        if let Some(b) = &chain.base {
            body.push(format!(
                "type {} hook {} priority {};",
                b.kind.keyword(),
                b.hook.keyword(),
                b.priority
            ));
        }
        if let Some(c) = &chain.comment {
            body.push(format!("comment {};", Quoted(c)));
        }
        if !body.is_empty() {
            write!(f, " {{ {} }}", body.join(" "))?;
        }
        writeln!(f)?;
    }

    for set in table.sets.values() {
        let kind = if set.is_map() { "map" } else { "set" };
        writeln!(
            f,
            "add {kind} {t} {} {{ {} }}",
            set.name,
            SetBody(set, table.family)
        )?;
    }

    for chain in table.chains.values() {
        for rule in &chain.rules {
            writeln!(f, "add rule {t} {} {}", chain.name, RuleText(rule))?;
        }
    }

    for set in table.sets.values() {
        for element in &set.elements {
            writeln!(
                f,
                "add element {t} {} {{ {} }}",
                set.name,
                ElementText { set, element }
            )?;
        }
    }
    Ok(())
}

/// `type K . K : D; size N; flags …; timeout Ns; counter; comment "…";` (or `typeof …` for sets
/// that need it).
struct SetBody<'a>(&'a Set, Family);

impl Display for SetBody<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let set = self.0;
        if set.needs_typeof() {
            write!(f, "typeof {}", Typeof(&set.key, self.1))?;
            if set.is_map() {
                write!(f, " : {}", Typeof(&set.data, self.1))?;
            }
        } else {
            write!(f, "type {}", Types(&set.key))?;
            if set.is_map() {
                write!(f, " : {}", Types(&set.data))?;
            }
        }
        f.write_str(";")?;
        if let Some(size) = set.size {
            write!(f, " size {size};")?;
        }
        let SetFlags {
            interval,
            dynamic,
            timeout,
        } = set.flags;
        let flags: Vec<&str> = [
            (interval, "interval"),
            (dynamic, "dynamic"),
            (timeout, "timeout"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if !flags.is_empty() {
            write!(f, " flags {};", flags.join(","))?;
        }
        if let Some(secs) = set.timeout {
            write!(f, " timeout {secs}s;")?;
        }
        if set.counter {
            f.write_str(" counter;")?;
        }
        if let Some(c) = &set.comment {
            write!(f, " comment {};", Quoted(c))?;
        }
        Ok(())
    }
}

/// The canonical `typeof` expressions of data types, joined with ` . ` (see
/// [`crate::ir::typeof_expr`]).
struct Typeof<'a>(&'a [DataType], Family);

impl Display for Typeof<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, ty) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            match crate::ir::typeof_expr(*ty, self.1) {
                Some(expr) => write!(f, "{}", ExprText(&expr))?,
                None => f.write_str(ty.keyword())?,
            }
        }
        Ok(())
    }
}

/// Data types joined with ` . `.
struct Types<'a>(&'a [DataType]);

impl Display for Types<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, ty) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            f.write_str(ty.keyword())?;
        }
        Ok(())
    }
}

/// `KEY [comment "…"] [: DATA]`, the part between the braces of `add element`.
struct ElementText<'a> {
    set: &'a Set,
    element: &'a Element,
}

impl Display for ElementText<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Element { key, data, comment } = self.element;
        write_values(f, key, &self.set.key)?;
        if let Some(c) = comment {
            // nft wants the element comment between the key and the `:`, not after the data.
            write!(f, " comment {}", Quoted(c))?;
        }
        match data {
            Some(ElemData::Verdict(v)) => write!(f, " : {}", VerdictText(v)),
            Some(ElemData::Values(values)) => {
                f.write_str(" : ")?;
                write_values(f, values, &self.set.data)
            }
            None => Ok(()),
        }
    }
}

/// Values joined with ` . `, each formatted for its (positional) data type.
fn write_values(f: &mut Formatter<'_>, values: &[Value], types: &[DataType]) -> fmt::Result {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(" . ")?;
        }
        let hex = types.get(i) == Some(&DataType::Mark);
        write!(f, "{}", ValueText { value, hex })?;
    }
    Ok(())
}

/// A rule's statements and comment.
struct RuleText<'a>(&'a Rule);

impl Display for RuleText<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, stmt) in self.0.stmts.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}", StmtText(stmt))?;
        }
        if let Some(c) = &self.0.comment {
            write!(f, " comment {}", Quoted(c))?;
        }
        Ok(())
    }
}

struct StmtText<'a>(&'a Stmt);

impl Display for StmtText<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            Stmt::Match { left, op, right } => {
                let hex = matches!(left, Expr::Mark | Expr::MarkAnd(_));
                let value = ValueText { value: right, hex };
                match (op, left) {
                    // After a binary operation nft needs the relation spelled out: without it,
                    // `meta mark & 0x4000 0` is a syntax error. nft also prints it this way.
                    (CmpOp::Eq, Expr::MarkAnd(_)) => write!(f, "{} == {value}", ExprText(left)),
                    (CmpOp::Eq, _) => write!(f, "{} {value}", ExprText(left)),
                    (CmpOp::Ne, _) => write!(f, "{} != {value}", ExprText(left)),
                }
            }
            Stmt::Lookup { left, set, negate } => {
                let op = if *negate { "!= " } else { "" };
                write!(f, "{} {op}@{set}", ExprText(left))
            }
            Stmt::Vmap { left, map } => write!(f, "{} vmap @{map}", ExprText(left)),
            Stmt::MarkOr(bits) => write!(f, "meta mark set meta mark | {bits:#010x}"),
            Stmt::MarkXor(bits) => write!(f, "meta mark set meta mark ^ {bits:#010x}"),
            Stmt::Update {
                set,
                key,
                data: None,
            } => write!(f, "update @{set} {{ {} }}", ExprText(key)),
            Stmt::Update {
                set,
                key,
                data: Some(data),
            } => {
                let data = ValueText {
                    value: data,
                    hex: false,
                };
                write!(f, "update @{set} {{ {} : {data} }}", ExprText(key))
            }
            Stmt::Dnat(target) => write!(f, "{}", NatText(target)),
            Stmt::Masquerade { fully_random } => {
                f.write_str("masquerade")?;
                if *fully_random {
                    f.write_str(" fully-random")?;
                }
                Ok(())
            }
            Stmt::Reject => f.write_str("reject"),
            Stmt::Verdict(v) => write!(f, "{}", VerdictText(v)),
        }
    }
}

struct NatText<'a>(&'a NatTarget);

impl Display for NatText<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            // A port in a NAT target needs a preceding transport protocol match, hence the
            // `meta l4proto`; an IPv6 address needs brackets so its colons are not read as the
            // port separator.
            NatTarget::Addr { proto, addr, port } => {
                write!(f, "meta l4proto {proto} dnat to ")?;
                match addr {
                    std::net::IpAddr::V4(a) => write!(f, "{a}:{port}"),
                    std::net::IpAddr::V6(a) => write!(f, "[{a}]:{port}"),
                }
            }
            // With a concatenated `addr . port` map, nft needs the family after `dnat` to know
            // how to split the data (`dnat ip to …`); inside the map IPv6 addresses need no
            // brackets because ` . ` separates the parts.
            NatTarget::NumgenMap {
                proto,
                index,
                targets,
            } => {
                let family = match targets.first() {
                    Some((std::net::IpAddr::V6(_), _)) => "ip6",
                    _ => "ip",
                };
                write!(
                    f,
                    "meta l4proto {proto} dnat {family} to {} map {{ ",
                    ExprText(index)
                )?;
                for (i, (addr, port)) in targets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{i} : {addr} . {port}")?;
                }
                f.write_str(" }")
            }
            NatTarget::Map { family, key, map } => {
                write!(f, "dnat {family} to {} map @{map}", ExprText(key))
            }
            // The spaces around `:` matter: nft 1.0.6 lists this as `@map:port` and then reads
            // `map:port` back as the map's name.
            NatTarget::AddrMap {
                proto,
                key,
                map,
                port,
            } => write!(
                f,
                "meta l4proto {proto} dnat to {} map @{map} : {port}",
                ExprText(key)
            ),
        }
    }
}

struct ExprText<'a>(&'a Expr);

impl Display for ExprText<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            Expr::Saddr(family) => write!(f, "{family} saddr"),
            Expr::Daddr(family) => write!(f, "{family} daddr"),
            Expr::L4Proto => f.write_str("meta l4proto"),
            Expr::Dport => f.write_str("th dport"),
            Expr::Sport => f.write_str("th sport"),
            Expr::Mark => f.write_str("meta mark"),
            Expr::MarkAnd(mask) => write!(f, "meta mark & {mask:#010x}"),
            Expr::CtState => f.write_str("ct state"),
            Expr::CtStatus => f.write_str("ct status"),
            Expr::CtDirection => f.write_str("ct direction"),
            Expr::CtOriginalDaddr(family) => write!(f, "ct original {family} daddr"),
            Expr::FibType(FibAddr::Saddr) => f.write_str("fib saddr type"),
            Expr::FibType(FibAddr::Daddr) => f.write_str("fib daddr type"),
            Expr::Iifname => f.write_str("iifname"),
            Expr::Numgen { mode, modulus } => {
                let mode = match mode {
                    NumgenMode::Random => "random",
                    NumgenMode::Inc => "inc",
                };
                write!(f, "numgen {mode} mod {modulus}")
            }
            // nft prints the seed in hex without padding (`seed 0x0`).
            Expr::JhashSaddr {
                family,
                modulus,
                seed,
            } => write!(f, "jhash {family} saddr mod {modulus} seed {seed:#x}"),
            Expr::Concat(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" . ")?;
                    }
                    write!(f, "{}", ExprText(part))?;
                }
                Ok(())
            }
        }
    }
}

/// A constant. Marks are hex and zero-padded to 8 digits (`0x00004000`), as nft prints them;
/// every other number is decimal.
struct ValueText<'a> {
    value: &'a Value,
    hex: bool,
}

impl Display for ValueText<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.value {
            Value::Addr(addr) => write!(f, "{addr}"),
            // nft silently clears host bits (`10.0.0.1/8` loads as `10.0.0.0/8`); print the
            // canonical form so the script reads like `nft list`. The verifier flags host bits.
            Value::Prefix(net) => write!(f, "{}", net.trunc()),
            Value::Proto(proto) => f.write_str(proto.keyword()),
            Value::Port(port) => write!(f, "{port}"),
            Value::Int(n) if self.hex => write!(f, "{n:#010x}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::FibLocal => f.write_str("local"),
            Value::CtNew => f.write_str("new"),
            Value::CtDnat => f.write_str("dnat"),
            Value::CtDir(CtDir::Original) => f.write_str("original"),
            Value::CtDir(CtDir::Reply) => f.write_str("reply"),
            // Names are checked by `ir::ifname_problem` (the verifier), so they need no escaping.
            Value::Iface(name) => write!(f, "\"{name}\""),
            Value::IfacePrefix(prefix) => write!(f, "\"{prefix}*\""),
        }
    }
}

struct VerdictText<'a>(&'a Verdict);

impl Display for VerdictText<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
            Verdict::Goto(chain) => write!(f, "goto {chain}"),
        }
    }
}

/// A comment in double quotes, made safe by [`sanitize_comment`].
struct Quoted<'a>(&'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", sanitize_comment(self.0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use expect_test::{expect, Expect};

    use super::*;
    use crate::diag::Diagnostic;
    use crate::graph::Graph;
    use crate::ir::{
        priority, BaseChain, Chain, ChainKind, Family, Hook, L4Proto, NatTarget, NumgenMode,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn check_stmt(stmt: Stmt, expect: Expect) {
        expect.assert_eq(&render_rule(&Rule::new(vec![stmt])));
    }

    fn m(left: Expr, op: CmpOp, right: Value) -> Stmt {
        Stmt::Match { left, op, right }
    }

    fn service_key(family: Family) -> Expr {
        Expr::Concat(vec![Expr::Daddr(family), Expr::L4Proto, Expr::Dport])
    }

    #[test]
    fn address_matches() {
        let v4 = Family::Ip;
        let v6 = Family::Ip6;
        let net4 = Value::Prefix("10.0.0.0/8".parse().unwrap());
        check_stmt(
            m(Expr::Saddr(v4), CmpOp::Eq, net4.clone()),
            expect!["ip saddr 10.0.0.0/8"],
        );
        check_stmt(
            m(Expr::Saddr(v4), CmpOp::Ne, net4),
            expect!["ip saddr != 10.0.0.0/8"],
        );
        check_stmt(
            m(Expr::Daddr(v4), CmpOp::Eq, Value::Addr(ip("172.30.0.41"))),
            expect!["ip daddr 172.30.0.41"],
        );
        check_stmt(
            m(Expr::Daddr(v6), CmpOp::Eq, Value::Addr(ip("fd00:0:0::1"))),
            expect!["ip6 daddr fd00::1"],
        );
        check_stmt(
            m(
                Expr::Saddr(v6),
                CmpOp::Ne,
                Value::Prefix("fd00::/64".parse().unwrap()),
            ),
            expect!["ip6 saddr != fd00::/64"],
        );
        // Host bits are cleared, as nft itself does.
        check_stmt(
            m(
                Expr::Saddr(v4),
                CmpOp::Eq,
                Value::Prefix("10.1.2.3/16".parse().unwrap()),
            ),
            expect!["ip saddr 10.1.0.0/16"],
        );
    }

    #[test]
    fn keyword_and_number_matches() {
        check_stmt(
            m(Expr::L4Proto, CmpOp::Eq, Value::Proto(L4Proto::Tcp)),
            expect!["meta l4proto tcp"],
        );
        check_stmt(
            m(Expr::L4Proto, CmpOp::Ne, Value::Proto(L4Proto::Sctp)),
            expect!["meta l4proto != sctp"],
        );
        check_stmt(
            m(Expr::Dport, CmpOp::Eq, Value::Port(80)),
            expect!["th dport 80"],
        );
        check_stmt(
            m(Expr::CtState, CmpOp::Eq, Value::CtNew),
            expect!["ct state new"],
        );
        check_stmt(
            m(Expr::CtStatus, CmpOp::Eq, Value::CtDnat),
            expect!["ct status dnat"],
        );
        check_stmt(
            m(Expr::FibType(FibAddr::Saddr), CmpOp::Eq, Value::FibLocal),
            expect!["fib saddr type local"],
        );
        check_stmt(
            m(Expr::FibType(FibAddr::Daddr), CmpOp::Ne, Value::FibLocal),
            expect!["fib daddr type != local"],
        );
        check_stmt(
            m(Expr::Iifname, CmpOp::Eq, Value::Iface("cni0".into())),
            expect![[r#"iifname "cni0""#]],
        );
        check_stmt(
            m(Expr::Iifname, CmpOp::Ne, Value::IfacePrefix("veth".into())),
            expect![[r#"iifname != "veth*""#]],
        );
    }

    #[test]
    fn load_balancing_matches() {
        let random = Expr::Numgen {
            mode: NumgenMode::Random,
            modulus: 3,
        };
        let inc = Expr::Numgen {
            mode: NumgenMode::Inc,
            modulus: 3,
        };
        check_stmt(
            m(random, CmpOp::Eq, Value::Int(0)),
            expect!["numgen random mod 3 0"],
        );
        check_stmt(
            m(inc, CmpOp::Ne, Value::Int(2)),
            expect!["numgen inc mod 3 != 2"],
        );
        let jhash4 = Expr::JhashSaddr {
            family: Family::Ip,
            modulus: 3,
            seed: 0,
        };
        let jhash6 = Expr::JhashSaddr {
            family: Family::Ip6,
            modulus: 2,
            seed: 0xdead_beef,
        };
        check_stmt(
            m(jhash4, CmpOp::Eq, Value::Int(0)),
            expect!["jhash ip saddr mod 3 seed 0x0 0"],
        );
        check_stmt(
            m(jhash6, CmpOp::Eq, Value::Int(1)),
            expect!["jhash ip6 saddr mod 2 seed 0xdeadbeef 1"],
        );
    }

    #[test]
    fn mark_statements() {
        check_stmt(
            m(Expr::MarkAnd(0x4000), CmpOp::Eq, Value::Int(0)),
            expect!["meta mark & 0x00004000 == 0x00000000"],
        );
        check_stmt(
            m(Expr::MarkAnd(0x4000), CmpOp::Ne, Value::Int(0)),
            expect!["meta mark & 0x00004000 != 0x00000000"],
        );
        check_stmt(
            m(Expr::Mark, CmpOp::Eq, Value::Int(0x4000)),
            expect!["meta mark 0x00004000"],
        );
        check_stmt(
            Stmt::MarkOr(0x4000),
            expect!["meta mark set meta mark | 0x00004000"],
        );
        check_stmt(
            Stmt::MarkXor(0x4000),
            expect!["meta mark set meta mark ^ 0x00004000"],
        );
    }

    #[test]
    fn set_references() {
        check_stmt(
            Stmt::Lookup {
                left: Expr::Daddr(Family::Ip),
                set: "cluster-ips".into(),
                negate: false,
            },
            expect!["ip daddr @cluster-ips"],
        );
        let Expr::Concat(mut parts) = service_key(Family::Ip6) else {
            unreachable!()
        };
        parts.push(Expr::Saddr(Family::Ip6));
        check_stmt(
            Stmt::Lookup {
                left: Expr::Concat(parts),
                set: "firewall-allow".into(),
                negate: true,
            },
            expect!["ip6 daddr . meta l4proto . th dport . ip6 saddr != @firewall-allow"],
        );
        check_stmt(
            Stmt::Vmap {
                left: service_key(Family::Ip),
                map: "service-ips".into(),
            },
            expect!["ip daddr . meta l4proto . th dport vmap @service-ips"],
        );
        check_stmt(
            Stmt::Update {
                set: "aff-x".into(),
                key: Expr::Saddr(Family::Ip),
                data: None,
            },
            expect!["update @aff-x { ip saddr }"],
        );
    }

    #[test]
    fn nat_and_terminal_statements() {
        let dnat = |addr: &str, port| {
            Stmt::Dnat(NatTarget::Addr {
                proto: L4Proto::Tcp,
                addr: ip(addr),
                port,
            })
        };
        check_stmt(
            dnat("10.0.0.1", 8080),
            expect!["meta l4proto tcp dnat to 10.0.0.1:8080"],
        );
        check_stmt(
            dnat("fd00::1", 8080),
            expect!["meta l4proto tcp dnat to [fd00::1]:8080"],
        );
        check_stmt(
            Stmt::Dnat(NatTarget::NumgenMap {
                proto: L4Proto::Udp,
                index: Expr::Numgen { mode: NumgenMode::Random, modulus: 2 },
                targets: vec![(ip("10.0.0.1"), 8080), (ip("10.0.0.2"), 80)],
            }),
            expect!["meta l4proto udp dnat ip to numgen random mod 2 map { 0 : 10.0.0.1 . 8080, 1 : 10.0.0.2 . 80 }"],
        );
        check_stmt(
            Stmt::Dnat(NatTarget::NumgenMap {
                proto: L4Proto::Sctp,
                index: Expr::JhashSaddr { family: Family::Ip6, modulus: 2, seed: 1 },
                targets: vec![(ip("fd00::1"), 80), (ip("fd00::2"), 81)],
            }),
            expect!["meta l4proto sctp dnat ip6 to jhash ip6 saddr mod 2 seed 0x1 map { 0 : fd00::1 . 80, 1 : fd00::2 . 81 }"],
        );
        check_stmt(
            Stmt::Masquerade { fully_random: true },
            expect!["masquerade fully-random"],
        );
        check_stmt(
            Stmt::Masquerade {
                fully_random: false,
            },
            expect!["masquerade"],
        );
        check_stmt(Stmt::Reject, expect!["reject"]);
        check_stmt(Stmt::Verdict(Verdict::Accept), expect!["accept"]);
        check_stmt(Stmt::Verdict(Verdict::Drop), expect!["drop"]);
        check_stmt(Stmt::Verdict(Verdict::Return), expect!["return"]);
        check_stmt(
            Stmt::Verdict(Verdict::Jump("services".into())),
            expect!["jump services"],
        );
        check_stmt(
            Stmt::Verdict(Verdict::Goto("services".into())),
            expect!["goto services"],
        );
    }

    #[test]
    fn rules_join_statements_and_end_with_the_comment() {
        let rule = Rule::new(vec![
            m(Expr::CtState, CmpOp::Eq, Value::CtNew),
            Stmt::Verdict(Verdict::Accept),
        ])
        .with_comment("say \"hi\"\nthere");
        expect![[r#"ct state new accept comment "say 'hi' there""#]].assert_eq(&render_rule(&rule));
    }

    #[test]
    fn comments_are_capped_at_the_nft_limit_on_a_char_boundary() {
        assert_eq!(sanitize_comment(&"a".repeat(200)).len(), MAX_COMMENT_BYTES);
        // 127 ASCII bytes leave room for one more byte, not for a two-byte 'é'.
        let s = format!("{}é", "a".repeat(127));
        assert_eq!(sanitize_comment(&s), "a".repeat(127));
        assert_eq!(sanitize_comment("ns1/svc1:http"), "ns1/svc1:http");
    }

    fn chain(name: &str, base: Option<BaseChain>, rules: Vec<Rule>) -> (String, Chain) {
        let chain = Chain {
            name: name.into(),
            base,
            comment: None,
            rules,
        };
        (name.into(), chain)
    }

    fn set(name: &str, key: Vec<DataType>, data: Vec<DataType>, elements: Vec<Element>) -> Set {
        Set {
            elements,
            ..Set::new(name, key, data)
        }
    }

    fn tiny_table(family: Family, vip: &str, backend: &str) -> Table {
        let mut table = Table::new(family, "kube-nft");
        table.comment = Some("rules for kube-nft".into());
        let nat = |hook, priority| {
            Some(BaseChain {
                kind: ChainKind::Nat,
                hook,
                priority,
            })
        };
        let mut chains = BTreeMap::from([
            chain(
                "nat-prerouting",
                nat(Hook::Prerouting, priority::DSTNAT),
                vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump(
                    "services".into(),
                ))])],
            ),
            chain(
                "nat-postrouting",
                nat(Hook::Postrouting, priority::SRCNAT),
                vec![Rule::new(vec![
                    m(Expr::MarkAnd(0x4000), CmpOp::Ne, Value::Int(0)),
                    Stmt::Masquerade { fully_random: true },
                ])],
            ),
            chain(
                "services",
                None,
                vec![Rule::new(vec![Stmt::Vmap {
                    left: service_key(family),
                    map: "service-ips".into(),
                }])],
            ),
            chain(
                "service-A-ns1/web/tcp/80",
                None,
                vec![Rule::new(vec![Stmt::Dnat(NatTarget::Addr {
                    proto: L4Proto::Tcp,
                    addr: ip(backend),
                    port: 8080,
                })])
                .with_comment("ns1/web:http")],
            ),
        ]);
        chains.get_mut("services").unwrap().comment = Some("dispatch on service IP".into());
        table.chains = chains;
        let mut affinity = set("aff-x", vec![family.addr_type()], vec![], vec![]);
        affinity.flags = SetFlags {
            interval: false,
            dynamic: true,
            timeout: true,
        };
        affinity.timeout = Some(10800);
        let mut nodeport_ips = set(
            "nodeport-ips",
            vec![family.addr_type()],
            vec![],
            vec![Element {
                key: vec![Value::Prefix(family.loopback())],
                data: None,
                comment: None,
            }],
        );
        nodeport_ips.flags.interval = true;
        nodeport_ips.comment = Some("node addresses".into());
        let service_ips = set(
            "service-ips",
            vec![
                family.addr_type(),
                DataType::InetProto,
                DataType::InetService,
            ],
            vec![DataType::Verdict],
            vec![Element {
                key: vec![
                    Value::Addr(ip(vip)),
                    Value::Proto(L4Proto::Tcp),
                    Value::Port(80),
                ],
                data: Some(ElemData::Verdict(Verdict::Goto(
                    "service-A-ns1/web/tcp/80".into(),
                ))),
                comment: Some("ns1/web:http".into()),
            }],
        );
        let marks = set(
            "marks",
            vec![DataType::Mark],
            vec![DataType::Mark],
            vec![Element {
                key: vec![Value::Int(1)],
                data: Some(ElemData::Values(vec![Value::Int(0x4000)])),
                comment: None,
            }],
        );
        for s in [affinity, nodeport_ips, service_ips, marks] {
            table.sets.insert(s.name.clone(), s);
        }
        table
    }

    #[test]
    fn whole_ruleset_in_declaration_order() {
        let ruleset = Ruleset {
            tables: vec![
                tiny_table(Family::Ip, "172.30.0.41", "10.180.0.1"),
                tiny_table(Family::Ip6, "fd00:30::41", "fd00:180::1"),
            ],
        };
        let compiled = Compiled {
            ruleset,
            graph: Graph::default(),
            diagnostics: vec![Diagnostic::new(
                "Service",
                "ns1",
                "web",
                "spec.ports[1].port",
                "port 0 is invalid; port skipped",
            )],
        };
        expect![[r#"
            # warning: Service ns1/web: spec.ports[1].port: port 0 is invalid; port skipped
            add table ip kube-nft
            delete table ip kube-nft
            add table ip kube-nft { comment "rules for kube-nft"; }
            add chain ip kube-nft nat-postrouting { type nat hook postrouting priority 100; }
            add chain ip kube-nft nat-prerouting { type nat hook prerouting priority -100; }
            add chain ip kube-nft service-A-ns1/web/tcp/80
            add chain ip kube-nft services { comment "dispatch on service IP"; }
            add set ip kube-nft aff-x { type ipv4_addr; flags dynamic,timeout; timeout 10800s; }
            add map ip kube-nft marks { type mark : mark; }
            add set ip kube-nft nodeport-ips { type ipv4_addr; flags interval; comment "node addresses"; }
            add map ip kube-nft service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
            add rule ip kube-nft nat-postrouting meta mark & 0x00004000 != 0x00000000 masquerade fully-random
            add rule ip kube-nft nat-prerouting jump services
            add rule ip kube-nft service-A-ns1/web/tcp/80 meta l4proto tcp dnat to 10.180.0.1:8080 comment "ns1/web:http"
            add rule ip kube-nft services ip daddr . meta l4proto . th dport vmap @service-ips
            add element ip kube-nft marks { 0x00000001 : 0x00004000 }
            add element ip kube-nft nodeport-ips { 127.0.0.0/8 }
            add element ip kube-nft service-ips { 172.30.0.41 . tcp . 80 comment "ns1/web:http" : goto service-A-ns1/web/tcp/80 }
            add table ip6 kube-nft
            delete table ip6 kube-nft
            add table ip6 kube-nft { comment "rules for kube-nft"; }
            add chain ip6 kube-nft nat-postrouting { type nat hook postrouting priority 100; }
            add chain ip6 kube-nft nat-prerouting { type nat hook prerouting priority -100; }
            add chain ip6 kube-nft service-A-ns1/web/tcp/80
            add chain ip6 kube-nft services { comment "dispatch on service IP"; }
            add set ip6 kube-nft aff-x { type ipv6_addr; flags dynamic,timeout; timeout 10800s; }
            add map ip6 kube-nft marks { type mark : mark; }
            add set ip6 kube-nft nodeport-ips { type ipv6_addr; flags interval; comment "node addresses"; }
            add map ip6 kube-nft service-ips { type ipv6_addr . inet_proto . inet_service : verdict; }
            add rule ip6 kube-nft nat-postrouting meta mark & 0x00004000 != 0x00000000 masquerade fully-random
            add rule ip6 kube-nft nat-prerouting jump services
            add rule ip6 kube-nft service-A-ns1/web/tcp/80 meta l4proto tcp dnat to [fd00:180::1]:8080 comment "ns1/web:http"
            add rule ip6 kube-nft services ip6 daddr . meta l4proto . th dport vmap @service-ips
            add element ip6 kube-nft marks { 0x00000001 : 0x00004000 }
            add element ip6 kube-nft nodeport-ips { ::1/128 }
            add element ip6 kube-nft service-ips { fd00:30::41 . tcp . 80 comment "ns1/web:http" : goto service-A-ns1/web/tcp/80 }
        "#]]
        .assert_eq(&render(&compiled));
    }

    #[test]
    fn base_chain_comment_and_empty_ruleset() {
        let mut table = Table::new(Family::Ip, "t");
        let (name, mut c) = chain(
            "filter-input",
            Some(BaseChain {
                kind: ChainKind::Filter,
                hook: Hook::Input,
                priority: priority::FILTER,
            }),
            vec![],
        );
        c.comment = Some("firewall".into());
        table.chains.insert(name, c);
        expect![[r#"
            add table ip t
            delete table ip t
            add table ip t
            add chain ip t filter-input { type filter hook input priority 0; comment "firewall"; }
        "#]]
        .assert_eq(&render_ruleset(&Ruleset {
            tables: vec![table],
        }));
        assert_eq!(render_ruleset(&Ruleset::default()), "");
    }
}
