//! Recorded kernel replies as annotated fixtures. The recorder applies a golden case with
//! `apply::replace` in a throwaway network namespace, dumps it back (tables, chains, sets,
//! elements, rules) with `Socket::dump`, and writes every reply message to
//! `runtime/testdata/netlink/<case>/<NNN>-<kind>-<object>.txt` as a hex dump with one line per
//! header field and attribute, each named after the kernel UAPI. This kernel has no nlmon
//! device, so the replies are recorded at the socket. Volatile bytes (sequence numbers, port ids,
//! generation ids, handles, use counts, set ids) are written as `xx`, read back as zero, and
//! anonymous set names are renumbered in order of appearance, so the fixtures are the same on
//! every run. Without a kernel, [`fixtures_decode_to_the_compiled_ir`] parses the fixtures back
//! and checks that `netlink::decode` turns each message into exactly the case's compiled IR,
//! object by object: a decoder change that breaks on real kernel replies fails here even where
//! there are no network namespaces. With root, [`kernel_replies_match_the_recorded_fixtures`]
//! records again and compares with the committed fixtures, so a kernel or encoder change that
//! alters the replies is noticed (it prints `SKIPPED` where it cannot run, and fails under
//! `CI=true`). `UPDATE_FIXTURES=1 cargo test -p kube-nft-runtime --test fixtures` re-records.
//! Attribute headers are host byte order, so the fixtures are little-endian and only checked on
//! little-endian targets.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kube_nft_compiler::ir::{self, Family};
use kube_nft_runtime::netlink::decode::{self, AnonMaps, Message};
use kube_nft_runtime::netlink::socket::Socket;
use kube_nft_runtime::{apply, readback};
use kube_nft_testkit::golden::compile_case;
use kube_nft_testkit::netns::{can_run, in_netns, unavailable};

/// The recorded cases: fixture directory and golden case. Together they have base and regular
/// chains, plain and concatenated sets, interval sets of both backends, verdict maps, comments
/// and most statement forms, in both families.
const CASES: [(&str, &str); 2] = [
    (
        "clusterip-tcp-basic",
        "testdata/compile/clusterip/tcp-basic.yaml",
    ),
    (
        "loadbalancer-source-ranges",
        "testdata/compile/loadbalancer/source-ranges.yaml",
    ),
];

// Message types (`enum nf_tables_msg_types`): the dump requests and their replies.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

// ---------------------------------------------------------------------------------------------
// Fixture directories

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/netlink")
        .join(case)
}

// ---------------------------------------------------------------------------------------------
// Recording

/// One reply message, masked and normalised, with its fixture file name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    file: String,
    bytes: Vec<u8>,
}

/// Applies `case` in a fresh namespace and dumps it back the way `readback::read_table` does
/// (same requests, same order), masking each reply.
fn record(case: &str) -> Vec<Recorded> {
    let ruleset = compile_case(case);
    let dumps = in_netns(|_| {
        apply::replace(&ruleset).unwrap_or_else(|e| panic!("apply {case}: {e:?}"));
        let mut socket = Socket::open().expect("open socket");
        let mut dumps: Vec<(String, Vec<u8>)> = Vec::new();
        let dump = |socket: &mut Socket, ty, nfproto, attrs: &[u8]| {
            socket
                .dump(ty, nfproto, attrs)
                .unwrap_or_else(|e| panic!("dump type {ty} of {case}: {e:?}"))
        };
        for table in &ruleset.tables {
            let (family, nfproto) = match table.family {
                Family::Ip => ("ip", 2),
                Family::Ip6 => ("ip6", 10),
            };
            let filter = filter_attrs(&table.name, None);
            for bytes in dump(&mut socket, NFT_MSG_GETTABLE, nfproto, &[]) {
                let msg = Message::parse(&bytes).expect("parse table");
                if decode::table(&msg).expect("decode table").name == table.name {
                    dumps.push((format!("table-{family}-{}", table.name), bytes));
                }
            }
            for bytes in dump(&mut socket, NFT_MSG_GETCHAIN, nfproto, &filter) {
                let msg = Message::parse(&bytes).expect("parse chain");
                let chain = decode::chain(&msg).expect("decode chain").chain.name;
                dumps.push((format!("chain-{family}-{chain}"), bytes));
            }
            let mut sets = Vec::new();
            for bytes in dump(&mut socket, NFT_MSG_GETSET, nfproto, &filter) {
                let msg = Message::parse(&bytes).expect("parse set");
                let set = decode::set(&msg).expect("decode set").set;
                dumps.push((format!("set-{family}-{}", set.name), bytes));
                sets.push(set);
            }
            // Elements of dynamic sets are packet-path state, which readback does not read.
            for set in sets.iter().filter(|s| !s.flags.dynamic) {
                let filter = filter_attrs(&table.name, Some(&set.name));
                for bytes in dump(&mut socket, NFT_MSG_GETSETELEM, nfproto, &filter) {
                    dumps.push((format!("setelem-{family}-{}", set.name), bytes));
                }
            }
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for bytes in dump(&mut socket, NFT_MSG_GETRULE, nfproto, &filter) {
                let msg = Message::parse(&bytes).expect("parse rule");
                let chain = decode::rule(&msg, &AnonMaps::new())
                    .expect("decode rule")
                    .chain;
                let index = counts.entry(chain.clone()).or_default();
                dumps.push((format!("rule-{family}-{chain}-{index}"), bytes));
                *index += 1;
            }
        }
        dumps
    });
    let mut names = Names::default();
    dumps
        .into_iter()
        .enumerate()
        .map(|(i, (object, mut bytes))| {
            walk(&mut bytes, &mut names).unwrap_or_else(|e| panic!("{case} {object}: {e}"));
            Recorded {
                file: format!("{i:03}-{}.txt", sanitise(&object)),
                bytes,
            }
        })
        .collect()
}

/// `NFTA_*_TABLE` (attribute 1 of every object) and `NFTA_SET_ELEM_LIST_SET` dump filters.
fn filter_attrs(table: &str, set: Option<&str>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut put = |ty: u16, value: &str| {
        let len = 4 + value.len() + 1;
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(0);
        buf.resize(buf.len().div_ceil(4) * 4, 0);
    };
    put(1, table);
    if let Some(set) = set {
        put(NFTA_SET_ELEM_LIST_SET, set);
    }
    buf
}

/// A file name part: chain names contain `/`.
fn sanitise(object: &str) -> String {
    object
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' => c,
            _ => '_',
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The annotator: walks a message, masks and normalises it in place, and names every field

/// One fixture line: the bytes it shows, the part of them that is masked, and the annotation.
struct Line {
    depth: usize,
    bytes: Range<usize>,
    masked: Range<usize>,
    note: String,
}

/// Anonymous set names (`__map7`, `__set0`) renumbered in order of appearance, keeping their
/// width so that no attribute length changes. The kernel picks the lowest free number per
/// table, which depends on what existed before.
#[derive(Default)]
struct Names(BTreeMap<Vec<u8>, Vec<u8>>);

impl Names {
    fn normalise(&mut self, value: &mut [u8]) {
        let text = value.split(|b| *b == 0).next().unwrap_or(&[]).to_vec();
        let Some(digits) = text
            .strip_prefix(b"__map")
            .or_else(|| text.strip_prefix(b"__set"))
        else {
            return;
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return;
        }
        let next = self.0.len();
        let replacement = self
            .0
            .entry(text.clone())
            .or_insert_with(|| {
                let mut name = text[..5].to_vec();
                name.extend(format!("{next:0width$}", width = digits.len()).bytes());
                name
            })
            .clone();
        if replacement.len() == text.len() {
            value[..text.len()].copy_from_slice(&replacement);
        }
    }
}

/// What an attribute holds, for its annotation.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    /// A set name, normalised (see [`Names`]).
    SetName,
    Be32(Fmt),
    /// A 64-bit duration in milliseconds (timeouts).
    Be64Ms,
    U8,
    /// Raw bytes (constants), shown with their likely readings.
    Value,
    /// nft's user data TLVs, with the names of the object's entry types.
    Udata(&'static [&'static str]),
    Nested(Ctx),
    /// Assigned by the kernel or counting live references: masked in fixtures.
    Volatile(&'static str),
}

/// How a 32-bit value reads.
#[derive(Clone, Copy)]
enum Fmt {
    Dec,
    Hex,
    Reg,
    Hook,
    Priority,
    Verdict,
    SetFlags,
    ElemFlags,
    TypeId,
    Ms,
    Enum(&'static [&'static str]),
}

/// Where an attribute is: which enum its type number belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Table,
    Chain,
    Hook,
    Set,
    SetDesc,
    SetConcat,
    SetField,
    ElemList,
    Elems,
    Elem,
    Data,
    Verdict,
    Rule,
    Exprs,
    Expr,
    ExprData(Ex),
}

/// The expression types kube-nft writes, plus `Other` for the rest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ex {
    Payload,
    Meta,
    Cmp,
    Bitwise,
    Byteorder,
    Ct,
    Fib,
    Numgen,
    Hash,
    Lookup,
    Dynset,
    Immediate,
    Nat,
    Masq,
    Reject,
    Counter,
    Other,
}

impl Ex {
    fn of(name: &str) -> Ex {
        match name {
            "payload" => Ex::Payload,
            "meta" => Ex::Meta,
            "cmp" => Ex::Cmp,
            "bitwise" => Ex::Bitwise,
            "byteorder" => Ex::Byteorder,
            "ct" => Ex::Ct,
            "fib" => Ex::Fib,
            "numgen" => Ex::Numgen,
            "hash" => Ex::Hash,
            "lookup" => Ex::Lookup,
            "dynset" => Ex::Dynset,
            "immediate" => Ex::Immediate,
            "nat" => Ex::Nat,
            "masq" => Ex::Masq,
            "reject" => Ex::Reject,
            "counter" => Ex::Counter,
            _ => Ex::Other,
        }
    }
}

const META_KEYS: &[&str] = &[
    "NFT_META_LEN",
    "NFT_META_PROTOCOL",
    "NFT_META_PRIORITY",
    "NFT_META_MARK",
    "NFT_META_IIF",
    "NFT_META_OIF",
    "NFT_META_IIFNAME",
    "NFT_META_OIFNAME",
    "NFT_META_IIFTYPE",
    "NFT_META_OIFTYPE",
    "NFT_META_SKUID",
    "NFT_META_SKGID",
    "NFT_META_NFTRACE",
    "NFT_META_RTCLASSID",
    "NFT_META_SECMARK",
    "NFT_META_NFPROTO",
    "NFT_META_L4PROTO",
];
const CT_KEYS: &[&str] = &["NFT_CT_STATE", "NFT_CT_DIRECTION", "NFT_CT_STATUS"];
const PAYLOAD_BASES: &[&str] = &[
    "NFT_PAYLOAD_LL_HEADER",
    "NFT_PAYLOAD_NETWORK_HEADER",
    "NFT_PAYLOAD_TRANSPORT_HEADER",
    "NFT_PAYLOAD_INNER_HEADER",
];
const CMP_OPS: &[&str] = &[
    "NFT_CMP_EQ",
    "NFT_CMP_NEQ",
    "NFT_CMP_LT",
    "NFT_CMP_LTE",
    "NFT_CMP_GT",
    "NFT_CMP_GTE",
];
const NFPROTOS: &[&str] = &[
    "NFPROTO_UNSPEC",
    "NFPROTO_INET",
    "NFPROTO_IPV4",
    "NFPROTO_ARP",
    "?",
    "NFPROTO_NETDEV",
    "?",
    "NFPROTO_BRIDGE",
    "?",
    "?",
    "NFPROTO_IPV6",
];
const TABLE_UDATA: &[&str] = &["comment"];
const SET_UDATA: &[&str] = &[
    "key byteorder",
    "data byteorder",
    "merge adjacent",
    "key typeof",
    "data typeof",
    "expr",
    "data interval",
    "comment",
];
const ELEM_UDATA: &[&str] = &["comment", "flags"];

/// The name and kind of attribute `ty` in `ctx`.
fn spec(ctx: Ctx, ty: u16) -> Option<(&'static str, Kind)> {
    use Fmt::*;
    use Kind::*;
    let data = Nested(Ctx::Data);
    Some(match (ctx, ty) {
        (Ctx::Table, 1) => ("NFTA_TABLE_NAME", Str),
        (Ctx::Table, 2) => ("NFTA_TABLE_FLAGS", Be32(Hex)),
        (Ctx::Table, 3) => ("NFTA_TABLE_USE", Volatile("number of chains and sets")),
        (Ctx::Table, 4) => ("NFTA_TABLE_HANDLE", Volatile("kernel-assigned handle")),
        (Ctx::Table, 6) => ("NFTA_TABLE_USERDATA", Udata(TABLE_UDATA)),
        (Ctx::Table, 7) => ("NFTA_TABLE_OWNER", Volatile("owner's port id")),
        (Ctx::Chain, 1) => ("NFTA_CHAIN_TABLE", Str),
        (Ctx::Chain, 2) => ("NFTA_CHAIN_HANDLE", Volatile("kernel-assigned handle")),
        (Ctx::Chain, 3) => ("NFTA_CHAIN_NAME", Str),
        (Ctx::Chain, 4) => ("NFTA_CHAIN_HOOK", Nested(Ctx::Hook)),
        (Ctx::Chain, 5) => ("NFTA_CHAIN_POLICY", Be32(Verdict)),
        (Ctx::Chain, 6) => ("NFTA_CHAIN_USE", Volatile("number of references")),
        (Ctx::Chain, 7) => ("NFTA_CHAIN_TYPE", Str),
        (Ctx::Chain, 10) => ("NFTA_CHAIN_FLAGS", Be32(Enum(&["0", "NFT_CHAIN_BASE"]))),
        (Ctx::Chain, 11) => ("NFTA_CHAIN_ID", Volatile("transaction id")),
        (Ctx::Chain, 12) => ("NFTA_CHAIN_USERDATA", Udata(TABLE_UDATA)),
        (Ctx::Hook, 1) => ("NFTA_HOOK_HOOKNUM", Be32(Hook)),
        (Ctx::Hook, 2) => ("NFTA_HOOK_PRIORITY", Be32(Priority)),
        (Ctx::Hook, 3) => ("NFTA_HOOK_DEV", Str),
        (Ctx::Set, 1) => ("NFTA_SET_TABLE", Str),
        (Ctx::Set, 2) => ("NFTA_SET_NAME", SetName),
        (Ctx::Set, 3) => ("NFTA_SET_FLAGS", Be32(SetFlags)),
        (Ctx::Set, 4) => ("NFTA_SET_KEY_TYPE", Be32(TypeId)),
        (Ctx::Set, 5) => ("NFTA_SET_KEY_LEN", Be32(Dec)),
        (Ctx::Set, 6) => ("NFTA_SET_DATA_TYPE", Be32(TypeId)),
        (Ctx::Set, 7) => ("NFTA_SET_DATA_LEN", Be32(Dec)),
        (Ctx::Set, 8) => ("NFTA_SET_POLICY", Be32(Enum(&["performance", "memory"]))),
        (Ctx::Set, 9) => ("NFTA_SET_DESC", Nested(Ctx::SetDesc)),
        (Ctx::Set, 10) => ("NFTA_SET_ID", Volatile("transaction id")),
        (Ctx::Set, 11) => ("NFTA_SET_TIMEOUT", Be64Ms),
        (Ctx::Set, 12) => ("NFTA_SET_GC_INTERVAL", Be32(Ms)),
        (Ctx::Set, 13) => ("NFTA_SET_USERDATA", Udata(SET_UDATA)),
        (Ctx::Set, 15) => ("NFTA_SET_OBJ_TYPE", Be32(Dec)),
        (Ctx::Set, 16) => ("NFTA_SET_HANDLE", Volatile("kernel-assigned handle")),
        // Newer kernels name the set backend here; this one prints a kernel address, which
        // KASLR moves on every boot.
        (Ctx::Set, 19) => ("NFTA_SET_TYPE", Volatile("set backend, a kernel address")),
        (Ctx::Set, 20) => ("NFTA_SET_COUNT", Be32(Dec)),
        (Ctx::SetDesc, 1) => ("NFTA_SET_DESC_SIZE", Be32(Dec)),
        (Ctx::SetDesc, 2) => ("NFTA_SET_DESC_CONCAT", Nested(Ctx::SetConcat)),
        (Ctx::SetConcat, 1) => ("NFTA_LIST_ELEM", Nested(Ctx::SetField)),
        (Ctx::SetField, 1) => ("NFTA_SET_FIELD_LEN", Be32(Dec)),
        (Ctx::ElemList, 1) => ("NFTA_SET_ELEM_LIST_TABLE", Str),
        (Ctx::ElemList, 2) => ("NFTA_SET_ELEM_LIST_SET", SetName),
        (Ctx::ElemList, 3) => ("NFTA_SET_ELEM_LIST_ELEMENTS", Nested(Ctx::Elems)),
        (Ctx::ElemList, 4) => ("NFTA_SET_ELEM_LIST_SET_ID", Volatile("transaction id")),
        (Ctx::Elems, 1) => ("NFTA_LIST_ELEM", Nested(Ctx::Elem)),
        (Ctx::Elem, 1) => ("NFTA_SET_ELEM_KEY", data),
        (Ctx::Elem, 2) => ("NFTA_SET_ELEM_DATA", data),
        (Ctx::Elem, 3) => ("NFTA_SET_ELEM_FLAGS", Be32(ElemFlags)),
        (Ctx::Elem, 4) => ("NFTA_SET_ELEM_TIMEOUT", Be64Ms),
        (Ctx::Elem, 5) => ("NFTA_SET_ELEM_EXPIRATION", Volatile("time left")),
        (Ctx::Elem, 6) => ("NFTA_SET_ELEM_USERDATA", Udata(ELEM_UDATA)),
        (Ctx::Elem, 10) => ("NFTA_SET_ELEM_KEY_END", data),
        (Ctx::Data, 1) => ("NFTA_DATA_VALUE", Value),
        (Ctx::Data, 2) => ("NFTA_DATA_VERDICT", Nested(Ctx::Verdict)),
        (Ctx::Verdict, 1) => ("NFTA_VERDICT_CODE", Be32(Verdict)),
        (Ctx::Verdict, 2) => ("NFTA_VERDICT_CHAIN", Str),
        (Ctx::Verdict, 3) => ("NFTA_VERDICT_CHAIN_ID", Volatile("transaction id")),
        (Ctx::Rule, 1) => ("NFTA_RULE_TABLE", Str),
        (Ctx::Rule, 2) => ("NFTA_RULE_CHAIN", Str),
        (Ctx::Rule, 3) => ("NFTA_RULE_HANDLE", Volatile("kernel-assigned handle")),
        (Ctx::Rule, 4) => ("NFTA_RULE_EXPRESSIONS", Nested(Ctx::Exprs)),
        (Ctx::Rule, 6) => (
            "NFTA_RULE_POSITION",
            Volatile("handle of the previous rule"),
        ),
        (Ctx::Rule, 7) => ("NFTA_RULE_USERDATA", Udata(TABLE_UDATA)),
        (Ctx::Rule, 9) => ("NFTA_RULE_ID", Volatile("transaction id")),
        (Ctx::Exprs, 1) => ("NFTA_LIST_ELEM", Nested(Ctx::Expr)),
        (Ctx::Expr, 1) => ("NFTA_EXPR_NAME", Str),
        (Ctx::ExprData(ex), ty) => return expr_spec(ex, ty),
        _ => return None,
    })
}

/// The attributes of one expression type (`enum nft_<expr>_attributes`).
fn expr_spec(ex: Ex, ty: u16) -> Option<(&'static str, Kind)> {
    use Fmt::*;
    use Kind::*;
    let reg = Be32(Reg);
    let data = Nested(Ctx::Data);
    Some(match (ex, ty) {
        (Ex::Payload, 1) => ("NFTA_PAYLOAD_DREG", reg),
        (Ex::Payload, 2) => ("NFTA_PAYLOAD_BASE", Be32(Enum(PAYLOAD_BASES))),
        (Ex::Payload, 3) => ("NFTA_PAYLOAD_OFFSET", Be32(Dec)),
        (Ex::Payload, 4) => ("NFTA_PAYLOAD_LEN", Be32(Dec)),
        (Ex::Payload, 5) => ("NFTA_PAYLOAD_SREG", reg),
        (Ex::Meta, 1) => ("NFTA_META_DREG", reg),
        (Ex::Meta, 2) => ("NFTA_META_KEY", Be32(Enum(META_KEYS))),
        (Ex::Meta, 3) => ("NFTA_META_SREG", reg),
        (Ex::Cmp, 1) => ("NFTA_CMP_SREG", reg),
        (Ex::Cmp, 2) => ("NFTA_CMP_OP", Be32(Enum(CMP_OPS))),
        (Ex::Cmp, 3) => ("NFTA_CMP_DATA", data),
        (Ex::Bitwise, 1) => ("NFTA_BITWISE_SREG", reg),
        (Ex::Bitwise, 2) => ("NFTA_BITWISE_DREG", reg),
        (Ex::Bitwise, 3) => ("NFTA_BITWISE_LEN", Be32(Dec)),
        (Ex::Bitwise, 4) => ("NFTA_BITWISE_MASK", data),
        (Ex::Bitwise, 5) => ("NFTA_BITWISE_XOR", data),
        (Ex::Bitwise, 6) => (
            "NFTA_BITWISE_OP",
            Be32(Enum(&[
                "NFT_BITWISE_BOOL",
                "NFT_BITWISE_LSHIFT",
                "NFT_BITWISE_RSHIFT",
            ])),
        ),
        (Ex::Bitwise, 7) => ("NFTA_BITWISE_DATA", data),
        (Ex::Byteorder, 1) => ("NFTA_BYTEORDER_SREG", reg),
        (Ex::Byteorder, 2) => ("NFTA_BYTEORDER_DREG", reg),
        (Ex::Byteorder, 3) => (
            "NFTA_BYTEORDER_OP",
            Be32(Enum(&["NFT_BYTEORDER_NTOH", "NFT_BYTEORDER_HTON"])),
        ),
        (Ex::Byteorder, 4) => ("NFTA_BYTEORDER_LEN", Be32(Dec)),
        (Ex::Byteorder, 5) => ("NFTA_BYTEORDER_SIZE", Be32(Dec)),
        (Ex::Ct, 1) => ("NFTA_CT_DREG", reg),
        (Ex::Ct, 2) => ("NFTA_CT_KEY", Be32(Enum(CT_KEYS))),
        (Ex::Ct, 3) => ("NFTA_CT_DIRECTION", U8),
        (Ex::Ct, 4) => ("NFTA_CT_SREG", reg),
        (Ex::Fib, 1) => ("NFTA_FIB_DREG", reg),
        (Ex::Fib, 2) => (
            "NFTA_FIB_RESULT",
            Be32(Enum(&[
                "NFT_FIB_RESULT_UNSPEC",
                "NFT_FIB_RESULT_OIF",
                "NFT_FIB_RESULT_OIFNAME",
                "NFT_FIB_RESULT_ADDRTYPE",
            ])),
        ),
        (Ex::Fib, 3) => ("NFTA_FIB_FLAGS", Be32(Hex)),
        (Ex::Numgen, 1) => ("NFTA_NG_DREG", reg),
        (Ex::Numgen, 2) => ("NFTA_NG_MODULUS", Be32(Dec)),
        (Ex::Numgen, 3) => (
            "NFTA_NG_TYPE",
            Be32(Enum(&["NFT_NG_INCREMENTAL", "NFT_NG_RANDOM"])),
        ),
        (Ex::Numgen, 4) => ("NFTA_NG_OFFSET", Be32(Dec)),
        (Ex::Hash, 1) => ("NFTA_HASH_SREG", reg),
        (Ex::Hash, 2) => ("NFTA_HASH_DREG", reg),
        (Ex::Hash, 3) => ("NFTA_HASH_LEN", Be32(Dec)),
        (Ex::Hash, 4) => ("NFTA_HASH_MODULUS", Be32(Dec)),
        (Ex::Hash, 5) => ("NFTA_HASH_SEED", Be32(Hex)),
        (Ex::Hash, 6) => ("NFTA_HASH_OFFSET", Be32(Dec)),
        (Ex::Hash, 7) => (
            "NFTA_HASH_TYPE",
            Be32(Enum(&["NFT_HASH_JENKINS", "NFT_HASH_SYM"])),
        ),
        (Ex::Lookup, 1) => ("NFTA_LOOKUP_SET", SetName),
        (Ex::Lookup, 2) => ("NFTA_LOOKUP_SREG", reg),
        (Ex::Lookup, 3) => ("NFTA_LOOKUP_DREG", reg),
        (Ex::Lookup, 4) => ("NFTA_LOOKUP_SET_ID", Volatile("transaction id")),
        (Ex::Lookup, 5) => ("NFTA_LOOKUP_FLAGS", Be32(Enum(&["0", "NFT_LOOKUP_F_INV"]))),
        (Ex::Dynset, 1) => ("NFTA_DYNSET_SET_NAME", SetName),
        (Ex::Dynset, 2) => ("NFTA_DYNSET_SET_ID", Volatile("transaction id")),
        (Ex::Dynset, 3) => (
            "NFTA_DYNSET_OP",
            Be32(Enum(&[
                "NFT_DYNSET_OP_ADD",
                "NFT_DYNSET_OP_UPDATE",
                "NFT_DYNSET_OP_DELETE",
            ])),
        ),
        (Ex::Dynset, 4) => ("NFTA_DYNSET_SREG_KEY", reg),
        (Ex::Dynset, 5) => ("NFTA_DYNSET_SREG_DATA", reg),
        (Ex::Dynset, 6) => ("NFTA_DYNSET_TIMEOUT", Be64Ms),
        (Ex::Dynset, 9) => ("NFTA_DYNSET_FLAGS", Be32(Hex)),
        (Ex::Immediate, 1) => ("NFTA_IMMEDIATE_DREG", reg),
        (Ex::Immediate, 2) => ("NFTA_IMMEDIATE_DATA", data),
        (Ex::Nat, 1) => (
            "NFTA_NAT_TYPE",
            Be32(Enum(&["NFT_NAT_SNAT", "NFT_NAT_DNAT"])),
        ),
        (Ex::Nat, 2) => ("NFTA_NAT_FAMILY", Be32(Enum(NFPROTOS))),
        (Ex::Nat, 3) => ("NFTA_NAT_REG_ADDR_MIN", reg),
        (Ex::Nat, 4) => ("NFTA_NAT_REG_ADDR_MAX", reg),
        (Ex::Nat, 5) => ("NFTA_NAT_REG_PROTO_MIN", reg),
        (Ex::Nat, 6) => ("NFTA_NAT_REG_PROTO_MAX", reg),
        (Ex::Nat, 7) => ("NFTA_NAT_FLAGS", Be32(Hex)),
        (Ex::Masq, 1) => ("NFTA_MASQ_FLAGS", Be32(Hex)),
        (Ex::Masq, 2) => ("NFTA_MASQ_REG_PROTO_MIN", reg),
        (Ex::Masq, 3) => ("NFTA_MASQ_REG_PROTO_MAX", reg),
        (Ex::Reject, 1) => (
            "NFTA_REJECT_TYPE",
            Be32(Enum(&[
                "NFT_REJECT_ICMP_UNREACH",
                "NFT_REJECT_TCP_RST",
                "NFT_REJECT_ICMPX_UNREACH",
            ])),
        ),
        (Ex::Reject, 2) => ("NFTA_REJECT_ICMP_CODE", U8),
        (Ex::Counter, 1) => ("NFTA_COUNTER_BYTES", Volatile("traffic counter")),
        (Ex::Counter, 2) => ("NFTA_COUNTER_PACKETS", Volatile("traffic counter")),
        _ => return None,
    })
}

/// What a 32-bit value means.
fn meaning(fmt: Fmt, v: u32) -> String {
    let named = |names: &[&str]| names.get(v as usize).map(|n| format!("{v} ({n})"));
    let text = match fmt {
        Fmt::Dec => None,
        Fmt::Hex | Fmt::TypeId if v == 0xffff_ff00 => Some(format!("{v:#x} (NFT_DATA_VERDICT)")),
        Fmt::Hex => Some(format!("{v:#x}")),
        Fmt::TypeId => {
            // nft's type ids, six bits per concatenated part, first part highest.
            const TYPES: &[(u32, &str)] = &[
                (5, "mark"),
                (7, "ipv4_addr"),
                (8, "ipv6_addr"),
                (12, "inet_proto"),
                (13, "inet_service"),
                (14, "ct_state"),
                (17, "ct_status"),
                (44, "fib_addrtype"),
            ];
            let mut parts = Vec::new();
            let mut rest = v;
            while rest != 0 {
                let id = rest & 0x3f;
                let name = TYPES.iter().find(|(i, _)| *i == id).map(|(_, n)| *n);
                parts.push(name.map_or(format!("type {id}"), str::to_owned));
                rest >>= 6;
            }
            parts.reverse();
            Some(format!("{v:#x} ({})", parts.join(" . ")))
        }
        Fmt::Reg => Some(match v {
            0 => "0 (NFT_REG_VERDICT)".to_owned(),
            1..=4 => format!("{v} (NFT_REG_{v})"),
            8..=23 => format!("{v} (NFT_REG32_{:02})", v - 8),
            _ => format!("{v}"),
        }),
        Fmt::Hook => named(&[
            "NF_INET_PRE_ROUTING",
            "NF_INET_LOCAL_IN",
            "NF_INET_FORWARD",
            "NF_INET_LOCAL_OUT",
            "NF_INET_POST_ROUTING",
        ]),
        Fmt::Priority => Some(format!("{}", v as i32)),
        Fmt::Verdict => Some(match v as i32 {
            0 => "0 (NF_DROP)".to_owned(),
            1 => "1 (NF_ACCEPT)".to_owned(),
            -1 => "-1 (NFT_CONTINUE)".to_owned(),
            -2 => "-2 (NFT_BREAK)".to_owned(),
            -3 => "-3 (NFT_JUMP)".to_owned(),
            -4 => "-4 (NFT_GOTO)".to_owned(),
            -5 => "-5 (NFT_RETURN)".to_owned(),
            other => format!("{other}"),
        }),
        Fmt::SetFlags => {
            const FLAGS: &[&str] = &[
                "ANONYMOUS",
                "CONSTANT",
                "INTERVAL",
                "MAP",
                "TIMEOUT",
                "EVAL",
                "OBJECT",
                "CONCAT",
                "EXPR",
            ];
            let set: Vec<_> = FLAGS
                .iter()
                .enumerate()
                .filter(|(i, _)| v & (1 << i) != 0)
                .map(|(_, f)| format!("NFT_SET_{f}"))
                .collect();
            Some(format!("{v:#x} ({})", set.join(" | ")))
        }
        Fmt::ElemFlags => Some(match v {
            0 => "0".to_owned(),
            1 => "0x1 (NFT_SET_ELEM_INTERVAL_END)".to_owned(),
            _ => format!("{v:#x}"),
        }),
        Fmt::Ms => Some(format!("{v} ms")),
        Fmt::Enum(names) => named(names),
    };
    text.unwrap_or_else(|| format!("{v}"))
}

/// The likely readings of a constant: its width decides which ones are plausible.
fn value_note(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let reading = match bytes.len() {
        1 => format!(" (u8 {})", bytes[0]),
        2 => format!(" (be16 {})", u16::from_be_bytes([bytes[0], bytes[1]])),
        4 => {
            let a = <[u8; 4]>::try_from(bytes).expect("4 bytes");
            format!(
                " ({} or host u32 {:#x})",
                Ipv4Addr::from(a),
                u32::from_le_bytes(a)
            )
        }
        16 => format!(
            " ({})",
            Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))
        ),
        _ => String::new(),
    };
    format!("{}{reading}", hex.join(""))
}

/// nft's user data TLVs, one `name = value` per entry.
fn udata_note(blob: &[u8], names: &[&str]) -> String {
    let mut parts = Vec::new();
    let mut rest = blob;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let Some(value) = rest.get(2..2 + len) else {
            break;
        };
        let name = names
            .get(usize::from(ty))
            .map_or(format!("type {ty}"), |n| (*n).to_owned());
        let text = value.strip_suffix(&[0]).unwrap_or(value);
        if !text.is_empty() && text.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            parts.push(format!("{name} = {:?}", String::from_utf8_lossy(text)));
        } else {
            let hex: Vec<String> = value.iter().map(|b| format!("{b:02x}")).collect();
            parts.push(format!("{name} = {}", hex.join("")));
        }
        rest = &rest[2 + len..];
    }
    format!("nft user data [{}]", parts.join(", "))
}

fn ne16(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn ne32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The `nlmsg_flags` a dump reply can carry (linux/netlink.h).
fn flag_names(flags: u16) -> String {
    const NAMES: [(u16, &str); 4] = [
        (0x2, "NLM_F_MULTI"),
        (0x10, "NLM_F_DUMP_INTR"),
        (0x400, "NLM_F_CREATE"),
        (0x800, "NLM_F_APPEND"),
    ];
    let names: Vec<_> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(" | "))
    }
}

/// Masks and normalises `msg` in place and returns its lines.
fn walk(msg: &mut [u8], names: &mut Names) -> Result<Vec<Line>, String> {
    if msg.len() < 20 || ne32(msg, 0) as usize != msg.len() {
        return Err(format!("message of {} bytes with a bad header", msg.len()));
    }
    let ty = ne16(msg, 4);
    let (subsys, op) = (ty >> 8, ty & 0xff);
    let (op_name, ctx) = match op {
        NFT_MSG_NEWTABLE => ("NFT_MSG_NEWTABLE", Ctx::Table),
        NFT_MSG_NEWCHAIN => ("NFT_MSG_NEWCHAIN", Ctx::Chain),
        NFT_MSG_NEWSET => ("NFT_MSG_NEWSET", Ctx::Set),
        NFT_MSG_NEWSETELEM => ("NFT_MSG_NEWSETELEM", Ctx::ElemList),
        NFT_MSG_NEWRULE => ("NFT_MSG_NEWRULE", Ctx::Rule),
        _ => return Err(format!("unexpected message type {ty:#06x}")),
    };
    if subsys != NFNL_SUBSYS_NFTABLES {
        return Err(format!("message type {ty:#06x} is not nf_tables"));
    }
    let flags = ne16(msg, 6);
    let line = |bytes: Range<usize>, masked: Range<usize>, note: String| Line {
        depth: 0,
        bytes,
        masked,
        note,
    };
    let mut lines = vec![
        line(0..4, 0..0, format!("nlmsg_len = {}", msg.len())),
        line(
            4..6,
            0..0,
            format!("nlmsg_type = {ty:#06x} (NFNL_SUBSYS_NFTABLES << 8 | {op_name})"),
        ),
        line(
            6..8,
            0..0,
            format!("nlmsg_flags = {flags:#x}{}", flag_names(flags)),
        ),
        line(
            8..12,
            8..12,
            "nlmsg_seq (masked: request's sequence number)".into(),
        ),
        line(
            12..16,
            12..16,
            "nlmsg_pid (masked: our socket's port id)".into(),
        ),
        line(
            16..17,
            0..0,
            format!(
                "nfgen_family = {}",
                meaning(Fmt::Enum(NFPROTOS), msg[16].into())
            ),
        ),
        line(
            17..18,
            0..0,
            format!("version = {} (NFNETLINK_V0)", msg[17]),
        ),
        line(
            18..20,
            18..20,
            "res_id (masked: ruleset generation id)".into(),
        ),
    ];
    let len = msg.len();
    if ctx == Ctx::ElemList {
        sort_elements(msg)?;
    }
    attrs(msg, 20..len, ctx, 0, names, &mut lines)?;
    for l in &lines {
        msg[l.masked.clone()].fill(0);
    }
    Ok(lines)
}

/// Sorts the elements of a `NEWSETELEM` message by their bytes. Hash sets list elements in
/// the order of a hash with a random per-set seed, so the kernel's order changes from run to
/// run; the decoder does not depend on it.
fn sort_elements(msg: &mut [u8]) -> Result<(), String> {
    let chunks = |bytes: &[u8], range: Range<usize>| -> Result<Vec<Range<usize>>, String> {
        let mut out = Vec::new();
        let mut at = range.start;
        while at + 4 <= range.end {
            let len = usize::from(ne16(bytes, at));
            if len < 4 || at + len > range.end {
                return Err(format!("attribute at byte {at} has length {len}"));
            }
            let end = ((at + len).div_ceil(4) * 4).min(range.end);
            out.push(at..end);
            at = end;
        }
        Ok(out)
    };
    let len = msg.len();
    for top in chunks(msg, 20..len)? {
        if ne16(msg, top.start + 2) & 0x3fff != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        let inner = top.start + 4..top.start + usize::from(ne16(msg, top.start));
        let mut elems: Vec<Vec<u8>> = chunks(msg, inner.clone())?
            .into_iter()
            .map(|r| msg[r].to_vec())
            .collect();
        elems.sort();
        msg[inner.start..inner.start + elems.iter().map(Vec::len).sum::<usize>()]
            .copy_from_slice(&elems.concat());
    }
    Ok(())
}

/// The attributes in `range`, one line each, nests followed by their members one level deeper.
fn attrs(
    msg: &mut [u8],
    range: Range<usize>,
    ctx: Ctx,
    depth: usize,
    names: &mut Names,
    lines: &mut Vec<Line>,
) -> Result<(), String> {
    let mut at = range.start;
    let mut expr = Ex::Other;
    while at + 4 <= range.end {
        let len = usize::from(ne16(msg, at));
        let raw = ne16(msg, at + 2);
        let ty = raw & 0x3fff;
        if len < 4 || at + len > range.end {
            return Err(format!("attribute at byte {at} has length {len}"));
        }
        // The attribute's line includes its padding.
        let end = ((at + len).div_ceil(4) * 4).min(range.end);
        let payload = at + 4..at + len;
        let value = &msg[payload.clone()];
        let (name, kind) = match (ctx, ty) {
            (Ctx::Expr, 2) => ("NFTA_EXPR_DATA", Kind::Nested(Ctx::ExprData(expr))),
            _ => spec(ctx, ty).unwrap_or(("", Kind::Value)),
        };
        let name = if name.is_empty() {
            format!("attr {ty}")
        } else {
            name.to_owned()
        };
        let nested = if raw & 0x8000 != 0 {
            " | NLA_F_NESTED"
        } else {
            ""
        };
        let be32 = || <[u8; 4]>::try_from(value).map(u32::from_be_bytes);
        let mut masked = 0..0;
        let note = match kind {
            Kind::Str | Kind::SetName => {
                if matches!(kind, Kind::SetName) {
                    names.normalise(&mut msg[payload.clone()]);
                }
                let value = &msg[payload.clone()];
                let text = value.strip_suffix(&[0]).unwrap_or(value);
                if ctx == Ctx::Expr && ty == 1 {
                    expr = Ex::of(&String::from_utf8_lossy(text));
                }
                format!("{name} = {:?}", String::from_utf8_lossy(text))
            }
            Kind::Be32(fmt) => match be32() {
                Ok(v) => format!("{name} = {}", meaning(fmt, v)),
                Err(_) => format!("{name} = {} (not 32 bits)", value_note(value)),
            },
            Kind::Be64Ms => match <[u8; 8]>::try_from(value) {
                Ok(v) => format!("{name} = {} ms", u64::from_be_bytes(v)),
                Err(_) => format!("{name} = {} (not 64 bits)", value_note(value)),
            },
            Kind::U8 => format!("{name} = {}", value.first().copied().unwrap_or(0)),
            Kind::Value => format!("{name} = {}", value_note(value)),
            Kind::Udata(types) => format!("{name} = {}", udata_note(value, types)),
            Kind::Volatile(why) => {
                masked = payload.clone();
                format!("{name} (masked: {why})")
            }
            Kind::Nested(inner) => {
                lines.push(Line {
                    depth,
                    bytes: at..at + 4,
                    masked: 0..0,
                    note: format!("{name}{nested} ({} bytes)", len - 4),
                });
                attrs(msg, payload.clone(), inner, depth + 1, names, lines)?;
                if end > at + len {
                    lines.push(Line {
                        depth,
                        bytes: at + len..end,
                        masked: 0..0,
                        note: "padding".into(),
                    });
                }
                at = end;
                continue;
            }
        };
        lines.push(Line {
            depth,
            bytes: at..end,
            masked,
            note,
        });
        at = end;
    }
    if at != range.end {
        return Err(format!("{} trailing bytes at byte {at}", range.end - at));
    }
    Ok(())
}

/// The fixture text of one message.
fn annotate(rec: &Recorded, case: &str) -> String {
    let mut bytes = rec.bytes.clone();
    let lines =
        walk(&mut bytes, &mut Names::default()).unwrap_or_else(|e| panic!("{}: {e}", rec.file));
    let mut out = format!(
        "# One nf_tables dump reply, recorded at the socket after `apply::replace` of {case}.\n\
         # Regenerate: UPDATE_FIXTURES=1 cargo test -p kube-nft-runtime --test fixtures\n\
         # Host byte order is little-endian. `xx` bytes are volatile, masked, and read as 00.\n"
    );
    for line in lines {
        let hex: Vec<String> = line
            .bytes
            .clone()
            .map(|i| {
                if line.masked.contains(&i) {
                    "xx".to_owned()
                } else {
                    format!("{:02x}", bytes[i])
                }
            })
            .collect();
        out.push_str(&format!(
            "{}{}  # {}\n",
            "  ".repeat(line.depth),
            hex.join(" "),
            line.note
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fixture files

/// The message in a fixture's text: hex byte pairs, `xx` for masked bytes (read as zero),
/// everything from `#` to the end of a line ignored.
fn parse_fixture(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let data = line.split('#').next().unwrap_or_default();
        for token in data.split_whitespace() {
            let byte = match token {
                "xx" => 0,
                _ if token.len() == 2 => u8::from_str_radix(token, 16)
                    .map_err(|_| format!("line {}: bad byte {token:?}", n + 1))?,
                _ => return Err(format!("line {}: bad byte {token:?}", n + 1)),
            };
            bytes.push(byte);
        }
    }
    if bytes.len() < 20 || ne32(&bytes, 0) as usize != bytes.len() {
        return Err(format!(
            "{} bytes, but nlmsg_len says otherwise",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// A case's committed fixtures, in file name order (which is dump order).
fn load(case: &str) -> Vec<Recorded> {
    let dir = fixture_dir(case);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (record with UPDATE_FIXTURES=1)",
                dir.display()
            )
        })
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read fixture");
            let bytes = parse_fixture(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Recorded {
                file: path
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into(),
                bytes,
            }
        })
        .collect()
}

/// Under `UPDATE_FIXTURES=1`, records every case once (for all tests of this run) and rewrites
/// its directory, so both tests then see the new fixtures.
fn fixtures_ready() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var("UPDATE_FIXTURES").is_ok_and(|v| v == "1") {
            if let Some(reason) = unavailable() {
                panic!("UPDATE_FIXTURES=1 needs root and network namespaces: {reason}");
            }
            for (case, source) in CASES {
                let dir = fixture_dir(case);
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("create fixture directory");
                for rec in record(source) {
                    std::fs::write(dir.join(&rec.file), annotate(&rec, source))
                        .expect("write fixture");
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Decoding the fixtures

/// The value of the top-level string attribute `ty` of a message.
fn top_string(msg: &[u8], ty: u16) -> Option<String> {
    let mut at = 20;
    while at + 4 <= msg.len() {
        let len = usize::from(ne16(msg, at));
        if len < 4 || at + len > msg.len() {
            return None;
        }
        if ne16(msg, at + 2) & 0x3fff == ty {
            let value = &msg[at + 4..at + len];
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        at += len.div_ceil(4) * 4;
    }
    None
}

/// Decodes every recorded message of a case and checks it against the case's compiled IR, one
/// object at a time, then checks that the objects together are the whole compiled ruleset.
fn check_decodes(recs: &[Recorded], expected: &ir::Ruleset) -> Result<(), String> {
    let mut got = ir::Ruleset::default();
    let mut raw: BTreeMap<(Family, String), Vec<decode::RawElement>> = BTreeMap::new();
    // The compiler never makes anonymous sets for these cases (numgen DNAT is one rule per
    // endpoint), so rules have no anonymous maps to fold in.
    let anon = AnonMaps::new();
    for rec in recs {
        let fail = |what: String| format!("{}: {what}", rec.file);
        let msg = Message::parse(&rec.bytes).map_err(|e| fail(e.to_string()))?;
        let family = msg.ir_family().map_err(|e| fail(e.to_string()))?;
        let want = expected
            .table(family)
            .ok_or_else(|| fail(format!("no {family} table in the compiled ruleset")))?;
        let table = |got: &mut ir::Ruleset| -> Result<usize, String> {
            got.tables
                .iter()
                .position(|t| t.family == family)
                .ok_or_else(|| fail("object before its table".into()))
        };
        match msg.msg_type {
            NFT_MSG_NEWTABLE => {
                let decoded = decode::table(&msg).map_err(|e| fail(e.to_string()))?;
                let mut header = want.clone();
                header.chains.clear();
                header.sets.clear();
                if decoded != header {
                    return Err(fail(format!("table {decoded:?}\nexpected {header:?}")));
                }
                got.tables.push(decoded);
            }
            NFT_MSG_NEWCHAIN => {
                let decoded = decode::chain(&msg).map_err(|e| fail(e.to_string()))?;
                let mut chain = want
                    .chains
                    .get(&decoded.chain.name)
                    .cloned()
                    .ok_or_else(|| fail(format!("chain {} not compiled", decoded.chain.name)))?;
                chain.rules.clear();
                if decoded.table != want.name || decoded.chain != chain {
                    return Err(fail(format!("chain {decoded:?}\nexpected {chain:?}")));
                }
                let t = table(&mut got)?;
                got.tables[t]
                    .chains
                    .insert(chain.name.clone(), decoded.chain);
            }
            NFT_MSG_NEWSET => {
                let decoded = decode::set(&msg).map_err(|e| fail(e.to_string()))?;
                let mut set = want
                    .sets
                    .get(&decoded.set.name)
                    .cloned()
                    .ok_or_else(|| fail(format!("set {} not compiled", decoded.set.name)))?;
                set.elements.clear();
                if decoded.table != want.name || decoded.anonymous || decoded.set != set {
                    return Err(fail(format!("set {decoded:?}\nexpected {set:?}")));
                }
                let t = table(&mut got)?;
                got.tables[t].sets.insert(set.name.clone(), decoded.set);
            }
            NFT_MSG_NEWSETELEM => {
                let name = top_string(&rec.bytes, NFTA_SET_ELEM_LIST_SET)
                    .ok_or_else(|| fail("no NFTA_SET_ELEM_LIST_SET".into()))?;
                let t = table(&mut got)?;
                let set = got.tables[t]
                    .sets
                    .get(&name)
                    .ok_or_else(|| fail(format!("elements before set {name}")))?;
                let elements = decode::raw_elements(&msg, set).map_err(|e| fail(e.to_string()))?;
                raw.entry((family, name)).or_default().extend(elements);
            }
            NFT_MSG_NEWRULE => {
                let decoded = decode::rule(&msg, &anon).map_err(|e| fail(e.to_string()))?;
                let t = table(&mut got)?;
                let chain = got.tables[t]
                    .chains
                    .get_mut(&decoded.chain)
                    .ok_or_else(|| fail(format!("rule before chain {}", decoded.chain)))?;
                let index = chain.rules.len();
                let rule = decoded.body.map_err(|e| fail(e.to_string()))?;
                let wanted = want.chains[&decoded.chain].rules.get(index);
                if decoded.table != want.name || wanted != Some(&rule) {
                    return Err(fail(format!(
                        "rule {index} of {}: {rule:?}\nexpected {wanted:?}",
                        decoded.chain
                    )));
                }
                chain.rules.push(rule);
            }
            other => return Err(fail(format!("unexpected message type {other}"))),
        }
    }
    for ((family, name), raw) in raw {
        let table = got
            .tables
            .iter_mut()
            .find(|t| t.family == family)
            .expect("table seen");
        let set = table.sets.get_mut(&name).expect("set seen");
        set.elements = decode::elements(set, raw).map_err(|e| format!("set {name}: {e}"))?;
        let wanted = &expected.table(family).expect("table").sets[&name].elements;
        if &set.elements != wanted {
            return Err(format!(
                "elements of {family} set {name}: {:?}\nexpected {wanted:?}",
                set.elements
            ));
        }
    }
    if &got != expected {
        return Err(format!(
            "the fixtures do not hold the whole ruleset: decoded {} tables, chains {:?}, sets {:?}",
            got.tables.len(),
            got.tables
                .iter()
                .map(|t| t.chains.len())
                .collect::<Vec<_>>(),
            got.tables.iter().map(|t| t.sets.len()).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
#[cfg(target_endian = "little")]
fn fixtures_decode_to_the_compiled_ir() {
    fixtures_ready();
    for (case, source) in CASES {
        let recs = load(case);
        let kinds = ["table", "chain", "set", "setelem", "rule"];
        for kind in kinds {
            assert!(
                recs.iter().any(|r| r.file.contains(&format!("-{kind}-"))),
                "{case}: no {kind} fixture"
            );
        }
        let expected = readback::canonical(&compile_case(source));
        if let Err(e) = check_decodes(&recs, &expected) {
            panic!("{case}/{e}");
        }
    }
}

#[test]
#[cfg(target_endian = "little")]
fn kernel_replies_match_the_recorded_fixtures() {
    if !can_run("kernel_replies_match_the_recorded_fixtures") {
        return;
    }
    fixtures_ready();
    for (case, source) in CASES {
        let fresh = record(source);
        let committed = load(case);
        let names = |recs: &[Recorded]| recs.iter().map(|r| r.file.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&fresh),
            names(&committed),
            "{case}: the kernel now replies with other messages; \
             re-record with UPDATE_FIXTURES=1 if that is intended"
        );
        for (f, c) in fresh.iter().zip(&committed) {
            if f.bytes != c.bytes {
                panic!(
                    "{case}/{}: the kernel's reply changed; re-record with UPDATE_FIXTURES=1 \
                     if that is intended.\nnow:\n{}\ncommitted:\n{}",
                    f.file,
                    annotate(f, source),
                    annotate(c, source)
                );
            }
        }
    }
}

#[test]
fn fixture_text_ignores_comments_and_reads_masked_bytes_as_zero() {
    let text = "# a header comment\n\
                1c 00 00 00  # nlmsg_len = 28\n\
                06 0a 02 00\n\
                xx xx xx xx  # nlmsg_seq\n\
                xx xx xx xx\n\
                02 00 xx xx\n\
                  08 00 01 00 61 62 00 00  # NFTA_RULE_TABLE = \"ab\" (indented: nested)\n";
    let bytes = parse_fixture(text).expect("parse");
    assert_eq!(bytes.len(), 28);
    assert_eq!(&bytes[8..16], &[0; 8]);
    assert_eq!(&bytes[18..20], &[0, 0]);
    assert_eq!(top_string(&bytes, 1).as_deref(), Some("ab"));
    assert!(parse_fixture("18 00 00 00 zz").is_err());
    assert!(
        parse_fixture("19 00 00 00 06 0a 02 00 00 00 00 00 00 00 00 00 02 00 00 00").is_err(),
        "nlmsg_len must match the bytes"
    );
}

#[test]
#[cfg(target_endian = "little")]
fn annotation_masks_volatile_fields_and_renumbers_anonymous_sets() {
    // A NEWRULE with a handle and a lookup of an anonymous set, built by hand.
    let attr = |ty: u16, value: &[u8]| {
        let mut buf = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(value);
        buf.resize(buf.len().div_ceil(4) * 4, 0);
        buf
    };
    let mut data = attr(1, b"__map7\0");
    data.extend(attr(2, &8u32.to_be_bytes()));
    let mut expr = attr(1, b"lookup\0");
    expr.extend(attr(2 | 0x8000, &data));
    let mut body = attr(1, b"kube-nft\0");
    body.extend(attr(2, b"services\0"));
    body.extend(attr(3, &42u64.to_be_bytes()));
    body.extend(attr(4 | 0x8000, &attr(1 | 0x8000, &expr)));
    let mut msg = ((20 + body.len()) as u32).to_ne_bytes().to_vec();
    msg.extend_from_slice(&0x0a06u16.to_ne_bytes());
    msg.extend_from_slice(&2u16.to_ne_bytes());
    msg.extend_from_slice(&77u32.to_ne_bytes());
    msg.extend_from_slice(&1234u32.to_ne_bytes());
    msg.extend_from_slice(&[2, 0, 0x12, 0x34]);
    msg.extend(body);

    let rec = Recorded {
        file: "000-rule-ip-services-0.txt".into(),
        bytes: msg.clone(),
    };
    let text = annotate(&rec, "test");
    assert!(text.contains("xx xx xx xx  # nlmsg_seq"), "{text}");
    assert!(
        text.contains("0c 00 03 00 xx xx xx xx xx xx xx xx  # NFTA_RULE_HANDLE (masked"),
        "{text}"
    );
    assert!(
        text.contains("  # NFTA_EXPR_DATA | NLA_F_NESTED (20 bytes)"),
        "{text}"
    );
    assert!(
        text.contains("      0b 00 01 00 5f 5f 6d 61 70 30 00 00  # NFTA_LOOKUP_SET = \"__map0\""),
        "{text}"
    );
    assert!(
        text.contains("# NFTA_LOOKUP_SREG = 8 (NFT_REG32_00)"),
        "{text}"
    );

    let parsed = parse_fixture(&text).expect("parse");
    let mut masked = msg;
    walk(&mut masked, &mut Names::default()).expect("walk");
    assert_eq!(parsed, masked, "the text holds exactly the masked message");
    assert_eq!(&parsed[8..16], &[0; 8]);
    assert_eq!(top_string(&parsed, 2).as_deref(), Some("services"));
}
