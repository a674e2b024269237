//! The typed nftables IR: tables, chains, rules built from typed expressions, sets, maps and
//! elements. It is what `lower` produces and what `render`, `trace` and (later) the netlink
//! encoder consume. It carries no Kubernetes types and no serde derives; every collection is
//! ordered (`BTreeMap` by name, or a `Vec` whose order is part of the meaning, such as rules in
//! a chain), so the same IR always renders to the same bytes.

pub mod names;
pub mod packed;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

pub use verify::{verify, VerifyError, VerifyErrors};

/// An IP family, which is also the nftables table family (`ip` or `ip6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `table ip`: IPv4.
    Ip,
    /// `table ip6`: IPv6.
    Ip6,
}

impl Family {
    /// The keyword nft uses for the table family and for address payloads (`ip saddr`).
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ip,
            IpAddr::V6(_) => Family::Ip6,
        }
    }

    /// The family of a prefix.
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ip,
            IpNet::V6(_) => Family::Ip6,
        }
    }

    /// The address data type of this family (`ipv4_addr` / `ipv6_addr`).
    pub fn addr_type(self) -> DataType {
        match self {
            Family::Ip => DataType::Ipv4Addr,
            Family::Ip6 => DataType::Ipv6Addr,
        }
    }

    /// `IPv4` / `IPv6`, as Kubernetes names the families (messages, diagnostics).
    pub fn ip_name(self) -> &'static str {
        match self {
            Family::Ip => "IPv4",
            Family::Ip6 => "IPv6",
        }
    }

    /// The loopback prefix of this family, excluded from NodePort matching.
    pub fn loopback(self) -> IpNet {
        match self {
            Family::Ip => IpNet::new(Ipv4Addr::new(127, 0, 0, 0).into(), 8).expect("valid prefix"),
            Family::Ip6 => IpNet::new(Ipv6Addr::LOCALHOST.into(), 128).expect("valid prefix"),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// The whole desired state: one private table per family that has anything to program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Tables in family order (`ip` before `ip6`).
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The table of one family, if present.
    pub fn table(&self, family: Family) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }
}

/// One nftables table and everything in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// `ip` or `ip6`.
    pub family: Family,
    /// The table name (`kube-nft`).
    pub name: String,
    /// Table comment.
    pub comment: Option<String>,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    /// An empty table.
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table {
            family,
            name: name.into(),
            comment: None,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }
}

/// A chain; base chains carry their hook, type and priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Chain name.
    pub name: String,
    /// `Some` for a base chain attached to a netfilter hook.
    pub base: Option<BaseChain>,
    /// Chain comment.
    pub comment: Option<String>,
    /// Rules in evaluation order.
    pub rules: Vec<Rule>,
}

/// Hook attachment of a base chain. The policy is always `accept` (nft's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub kind: ChainKind,
    /// The netfilter hook.
    pub hook: Hook,
    /// Numeric priority (`dstnat` is -100, `filter` 0, `srcnat` 100).
    pub priority: i32,
}

/// Chain type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChainKind {
    /// `type filter`.
    Filter,
    /// `type nat`.
    Nat,
}

impl ChainKind {
    /// nft keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        }
    }
}

/// Netfilter hooks used by this project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// Packets arriving on an interface, before routing.
    Prerouting,
    /// Packets routed to this host.
    Input,
    /// Packets routed through this host.
    Forward,
    /// Packets generated by this host.
    Output,
    /// Packets leaving, after routing.
    Postrouting,
}

impl Hook {
    /// nft keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// Well-known numeric priorities (nft's symbolic names).
pub mod priority {
    /// `dstnat`: where DNAT happens in prerouting/output.
    pub const DSTNAT: i32 = -100;
    /// `filter`.
    pub const FILTER: i32 = 0;
    /// `srcnat`: where masquerade happens in postrouting.
    pub const SRCNAT: i32 = 100;
}

/// One rule: statements evaluated left to right; a match that fails ends the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Statements in order.
    pub stmts: Vec<Stmt>,
    /// Rule comment.
    pub comment: Option<String>,
}

impl Rule {
    /// A rule without a comment.
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        Rule {
            stmts,
            comment: None,
        }
    }

    /// The same rule with a comment.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

/// A statement: a match, a lookup, an action or a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `left op right`, e.g. `ip daddr 10.0.0.1`, `ip saddr != 10.0.0.0/8`, `ct state new`,
    /// `numgen random mod 3 0`, `meta mark & 0x4000 == 0`.
    Match {
        /// The expression evaluated on the packet.
        left: Expr,
        /// Equal or not equal.
        op: CmpOp,
        /// A constant (address, prefix, number, keyword).
        right: Value,
    },
    /// Membership in a named set: `left @set` or `left != @set`.
    Lookup {
        /// The key expression (may be a concatenation).
        left: Expr,
        /// Set name.
        set: String,
        /// `!=`: matches when the key is *not* in the set.
        negate: bool,
    },
    /// `left vmap @map`: look up a verdict; a miss continues with the next rule.
    Vmap {
        /// The key expression.
        left: Expr,
        /// Name of a map whose data is `verdict`.
        map: String,
    },
    /// `meta mark set meta mark | bits`.
    MarkOr(u32),
    /// `meta mark set meta mark ^ bits`.
    MarkXor(u32),
    /// `update @set { key }` or `update @map { key : data }`: add the key (with its data) or,
    /// when present, refresh its timeout. The kernel never rewrites an existing element's data.
    Update {
        /// Set or map name (dynamic, with timeout).
        set: String,
        /// The key expression.
        key: Expr,
        /// The constant data of a map's new element (`None` for a set).
        data: Option<Value>,
    },
    /// `dnat to ...`: terminal, like every NAT statement.
    Dnat(NatTarget),
    /// `masquerade fully-random`: terminal.
    Masquerade {
        /// Randomise the source port fully (`fully-random`).
        fully_random: bool,
    },
    /// `reject`: ICMP port-unreachable (also for TCP), terminal.
    Reject,
    /// A verdict: `accept`, `drop`, `return`, `jump c`, `goto c`.
    Verdict(Verdict),
}

/// Comparison operator of a [`Stmt::Match`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `==` (rendered implicitly).
    Eq,
    /// `!=`.
    Ne,
}

/// Where a DNAT sends the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatTarget {
    /// `meta l4proto P dnat to ADDR:PORT` (one fixed endpoint). The protocol is part of the
    /// target because nft only accepts a port mapping after a transport protocol match.
    Addr {
        /// Transport protocol matched before the DNAT.
        proto: L4Proto,
        /// Endpoint address.
        addr: IpAddr,
        /// Endpoint port.
        port: u16,
    },
    /// `meta l4proto P dnat ip to numgen random mod N map { 0 : a . p, ... }`: one anonymous map
    /// per rule, used only for endpoint lists too long for a cascade (see `lower`).
    NumgenMap {
        /// Transport protocol matched before the DNAT.
        proto: L4Proto,
        /// The index expression (`numgen ...` or `jhash ...`).
        index: Expr,
        /// `index : addr . port`, indexes `0..N` in order.
        targets: Vec<(IpAddr, u16)>,
    },
    /// `dnat ip to KEY map @MAP`: the endpoint address and port looked up in a named data map
    /// (`… : addr . port`) by a key computed from the packet, typically the frontend
    /// (`ip daddr . meta l4proto . th dport`) and a slot (`numgen random mod K`). A key that is
    /// not in the map ends the rule without a DNAT. The key names the transport protocol, so
    /// the port needs no `meta l4proto` match before it.
    Map {
        /// The family of the address (`dnat ip to` / `dnat ip6 to`), the table's.
        family: Family,
        /// The lookup key (usually a concatenation).
        key: Expr,
        /// A map whose data is `addr . inet_service` of the table's family.
        map: String,
    },
    /// `meta l4proto P dnat to KEY map @MAP : PORT`: the endpoint address looked up in a named
    /// map whose data is one address of the table's family, the port a constant. A key that is
    /// not in the map ends the rule without a DNAT. ClientIP affinity uses it: the map is the
    /// service port's client → endpoint memory, filled from the packet path (see `lower`).
    AddrMap {
        /// Transport protocol matched before the DNAT (a port mapping needs one).
        proto: L4Proto,
        /// The lookup key.
        key: Expr,
        /// A map whose data is an address of the table's family.
        map: String,
        /// Endpoint port.
        port: u16,
    },
}

/// A verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

impl Verdict {
    /// The chain this verdict enters, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// An expression evaluated on the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `ip saddr` / `ip6 saddr`.
    Saddr(Family),
    /// `ip daddr` / `ip6 daddr`.
    Daddr(Family),
    /// `meta l4proto`.
    L4Proto,
    /// `th dport`.
    Dport,
    /// `th sport`.
    Sport,
    /// `meta mark`.
    Mark,
    /// `meta mark & mask`.
    MarkAnd(u32),
    /// `ct state`.
    CtState,
    /// `ct status`.
    CtStatus,
    /// `ct direction`: whether the packet goes the way the connection's first packet went
    /// (`original`) or back (`reply`).
    CtDirection,
    /// `ct original ip daddr` / `ct original ip6 daddr`: the destination of the connection's
    /// first packet as it arrived, before any DNAT (a Service's frontend address).
    CtOriginalDaddr(Family),
    /// `fib saddr type` / `fib daddr type`.
    FibType(FibAddr),
    /// `meta iifname`: the name of the interface the packet came in on (empty in the output
    /// hook, where a packet has no input interface).
    Iifname,
    /// `numgen random mod N` / `numgen inc mod N`.
    Numgen {
        /// random or inc.
        mode: NumgenMode,
        /// The modulus N (at least 1).
        modulus: u32,
    },
    /// `jhash ip saddr mod N seed S`.
    JhashSaddr {
        /// Family of the hashed address.
        family: Family,
        /// The modulus N.
        modulus: u32,
        /// The hash seed.
        seed: u32,
    },
    /// `a . b . c`: a concatenation (used as a set or map key).
    Concat(Vec<Expr>),
}

impl Expr {
    /// The nft data type this expression produces (concatenations give one entry per part).
    pub fn data_types(&self) -> Vec<DataType> {
        match self {
            Expr::Saddr(f) | Expr::Daddr(f) | Expr::CtOriginalDaddr(f) => vec![f.addr_type()],
            Expr::L4Proto => vec![DataType::InetProto],
            Expr::Dport | Expr::Sport => vec![DataType::InetService],
            Expr::Mark | Expr::MarkAnd(_) => vec![DataType::Mark],
            Expr::CtState => vec![DataType::CtState],
            Expr::CtStatus => vec![DataType::CtStatus],
            Expr::CtDirection => vec![DataType::CtDir],
            Expr::FibType(_) => vec![DataType::FibAddrType],
            Expr::Iifname => vec![DataType::Ifname],
            Expr::Numgen { .. } | Expr::JhashSaddr { .. } => vec![DataType::Integer],
            Expr::Concat(parts) => parts.iter().flat_map(|p| p.data_types()).collect(),
        }
    }
}

/// Which address `fib` looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FibAddr {
    /// `fib saddr type`.
    Saddr,
    /// `fib daddr type`.
    Daddr,
}

/// A conntrack direction (`ct direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtDir {
    /// `original`: the way the connection's first packet went.
    Original,
    /// `reply`: back.
    Reply,
}

/// `numgen` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumgenMode {
    /// `numgen random`: uniform.
    Random,
    /// `numgen inc`: a per-expression counter (round robin).
    Inc,
}

/// Transport protocols a Service can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl L4Proto {
    /// nft keyword (lowercase, as nft prints it).
    pub fn keyword(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// A constant in a match, a set key or map data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// An address.
    Addr(IpAddr),
    /// A prefix (`10.0.0.0/8`); in sets only with `flags interval`.
    Prefix(IpNet),
    /// A transport protocol.
    Proto(L4Proto),
    /// A port.
    Port(u16),
    /// A plain number (numgen index, mark value).
    Int(u32),
    /// `fib ... type local`.
    FibLocal,
    /// `ct state new`.
    CtNew,
    /// `ct status dnat`.
    CtDnat,
    /// `ct direction original` / `ct direction reply`.
    CtDir(CtDir),
    /// An interface name, `"cni0"`: equal to the whole name.
    Iface(String),
    /// An interface name prefix, `"veth*"`: the name starts with it (nft compares only the
    /// prefix's bytes).
    IfacePrefix(String),
}

impl Value {
    /// A prefix as nft and the kernel see it: a full-length prefix (`/32`, `/128`) is just an
    /// address (both encode to the same bytes and read back as the address), anything else
    /// a prefix with its host bits cleared.
    pub fn net(net: IpNet) -> Value {
        if net.prefix_len() == net.max_prefix_len() {
            Value::Addr(net.addr())
        } else {
            Value::Prefix(net.trunc())
        }
    }
}

/// The type of a set key part or map data part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`.
    InetProto,
    /// `inet_service`.
    InetService,
    /// `mark`.
    Mark,
    /// `ct_state`.
    CtState,
    /// `ct_status`.
    CtStatus,
    /// `ct_dir`.
    CtDir,
    /// `fib_addrtype`.
    FibAddrType,
    /// `ifname`: an interface name, `IFNAMSIZ` (16) bytes padded with zeros.
    Ifname,
    /// `integer` (numgen and jhash results).
    Integer,
    /// `verdict` (map data only).
    Verdict,
}

impl DataType {
    /// Whether `value` is one exact constant of this type: an address of the type's family, a
    /// protocol, a port, a number, a conntrack or fib constant, a whole interface name. A
    /// prefix or an interface-name prefix is not (each matches a range).
    pub fn holds(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (DataType::Ipv4Addr, Value::Addr(IpAddr::V4(_)))
                | (DataType::Ipv6Addr, Value::Addr(IpAddr::V6(_)))
                | (DataType::InetProto, Value::Proto(_))
                | (DataType::InetService, Value::Port(_))
                | (DataType::Mark | DataType::Integer, Value::Int(_))
                | (DataType::CtState, Value::CtNew)
                | (DataType::CtStatus, Value::CtDnat)
                | (DataType::CtDir, Value::CtDir(_))
                | (DataType::FibAddrType, Value::FibLocal)
                | (DataType::Ifname, Value::Iface(_))
        )
    }

    /// nft type keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetProto => "inet_proto",
            DataType::InetService => "inet_service",
            DataType::Mark => "mark",
            DataType::CtState => "ct_state",
            DataType::CtStatus => "ct_status",
            DataType::CtDir => "ct_dir",
            DataType::FibAddrType => "fib_addrtype",
            DataType::Ifname => "ifname",
            DataType::Integer => "integer",
            DataType::Verdict => "verdict",
        }
    }
}

/// The longest interface name the kernel accepts (`IFNAMSIZ` 16, less the terminating zero).
pub const IFNAME_MAX: usize = 15;

/// The longest `iifname "prefix*"` prefix nft accepts: it counts the `*` and the terminating
/// zero against the 16 bytes of an interface name.
pub const IFNAME_PREFIX_MAX: usize = 14;

/// Why `name` cannot be an interface name (or, with `prefix`, the start of one): the kernel's
/// `dev_valid_name` rules (not empty, not `.` or `..`, no `/`, `:` or whitespace, at most
/// [`IFNAME_MAX`] bytes), plus what the nft script cannot carry inside its quotes (`"`, `\`) and
/// `*`, which nft reads as the wildcard.
pub fn ifname_problem(name: &str, prefix: bool) -> Option<String> {
    let max = if prefix {
        IFNAME_PREFIX_MAX
    } else {
        IFNAME_MAX
    };
    let bad = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | ':' | '"' | '\\' | '*'));
    if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > max {
        Some(format!("is longer than {max} bytes"))
    } else if !prefix && (name == "." || name == "..") {
        Some(format!("{name:?} is not an interface name"))
    } else {
        bad.map(|c| format!("contains {c:?}"))
    }
}

/// A named set, or a map when `data` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// Set name.
    pub name: String,
    /// Key type; more than one part is a concatenation.
    pub key: Vec<DataType>,
    /// Map data type (`[Verdict]` for a verdict map), or empty for a plain set.
    pub data: Vec<DataType>,
    /// Set flags.
    pub flags: SetFlags,
    /// Default element timeout in seconds (`timeout` sets only).
    pub timeout: Option<u32>,
    /// The most elements the set holds (`size N`); the packet path adds no element past it.
    pub size: Option<u32>,
    /// Every element carries a counter (`counter`) that each lookup or `update` matching it
    /// increments with the packet.
    pub counter: bool,
    /// Set comment.
    pub comment: Option<String>,
    /// Elements, sorted by key; keys are unique.
    pub elements: Vec<Element>,
}

/// The expression nft's `typeof` declaration names for a key or data part of this type.
///
/// nft 1.0.6 refuses `type integer` inside a concatenation (an integer has no fixed width), so a
/// set whose key holds a `numgen` or `jhash` slot must be declared with `typeof`; its parts then
/// are expressions, and nft reads the widths from them. Every such set in this project is keyed
/// by a frontend (`ip daddr . meta l4proto . th dport`, or `meta l4proto . th dport` for a
/// NodePort) and a slot, with `addr . port` data, so one canonical expression per type serves
/// them all: it only declares the type, the rules that use the set may compute the parts in any
/// way (`numgen random mod 3`, `jhash ip saddr mod 3 seed 0x0`). [`SLOT_TYPEOF_MODULUS`] is
/// the modulus the declaration prints.
pub fn typeof_expr(ty: DataType, family: Family) -> Option<Expr> {
    Some(match ty {
        DataType::Ipv4Addr | DataType::Ipv6Addr => Expr::Daddr(family),
        DataType::InetProto => Expr::L4Proto,
        DataType::InetService => Expr::Dport,
        DataType::Integer => Expr::Numgen {
            mode: NumgenMode::Random,
            modulus: SLOT_TYPEOF_MODULUS,
        },
        _ => return None,
    })
}

/// The modulus of the `numgen` in a `typeof` declaration (see [`typeof_expr`]); it declares a
/// 32-bit integer and bounds nothing.
pub const SLOT_TYPEOF_MODULUS: u32 = 65536;

impl Set {
    /// A set (`data` empty) or map with no flags, timeout, comment or elements.
    pub fn new(name: impl Into<String>, key: Vec<DataType>, data: Vec<DataType>) -> Set {
        Set {
            name: name.into(),
            key,
            data,
            flags: SetFlags::default(),
            timeout: None,
            size: None,
            counter: false,
            comment: None,
            elements: Vec::new(),
        }
    }

    /// Whether this is a map (has data).
    pub fn is_map(&self) -> bool {
        !self.data.is_empty()
    }

    /// Whether nft must declare this set with `typeof` (see [`typeof_expr`]): its key holds an
    /// integer.
    pub fn needs_typeof(&self) -> bool {
        self.key.contains(&DataType::Integer)
    }
}

/// Set flags (`flags interval`, `flags dynamic,timeout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetFlags {
    /// Keys may be prefixes or ranges.
    pub interval: bool,
    /// Elements are added from the packet path (`update @set`).
    pub dynamic: bool,
    /// Elements expire.
    pub timeout: bool,
}

/// One set or map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    /// Key parts (one per key type).
    pub key: Vec<Value>,
    /// Map data (verdict or values); `None` for plain sets.
    pub data: Option<ElemData>,
    /// Element comment, e.g. `ns/svc:port`.
    pub comment: Option<String>,
}

/// The data of a map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ElemData {
    /// Verdict map data.
    Verdict(Verdict),
    /// Data map values (one per data type).
    Values(Vec<Value>),
}
