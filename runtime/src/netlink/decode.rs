//! Sans-IO decoder, the inverse of [`encode`](super::encode): turns the `NEWTABLE`, `NEWCHAIN`,
//! `NEWSET`, `NEWSETELEM` and `NEWRULE` messages of an nf_tables dump back into `ir` objects.
//! It recognises exactly what kube-nft (or nft loading a rendered script) writes; anything else
//! is a typed error, never a panic and never a silent approximation, because the read-back IR is
//! compared with the compiled IR to detect drift and an approximation would hide it. Rule bodies
//! (expression lists) are decoded in [`rule`]. Assembling the objects of a table, and talking to
//! the kernel, is `readback`'s job.

mod rule;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use kube_nft_compiler::ir::{
    self, BaseChain, ChainKind, CtDir, DataType, ElemData, Element, Family, Hook, L4Proto,
    SetFlags, Value, Verdict,
};

use super::encode::{padded, type_id, type_len};
use super::sys::*;

pub use rule::{rule, AnonMaps, DecodedRule, Unrecognised};

// Message types and flags only the read side uses (`enum nf_tables_msg_types`,
// linux/netlink.h, `enum nft_gen_attributes`).
pub(crate) const NFT_MSG_GETTABLE: u16 = 1;
pub(crate) const NFT_MSG_GETCHAIN: u16 = 4;
pub(crate) const NFT_MSG_GETRULE: u16 = 7;
pub(crate) const NFT_MSG_GETSET: u16 = 10;
pub(crate) const NFT_MSG_GETSETELEM: u16 = 13;
pub(crate) const NFT_MSG_NEWGEN: u16 = 15;
pub(crate) const NFT_MSG_GETGEN: u16 = 16;
pub(crate) const NLM_F_MULTI: u16 = 0x2;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NFTA_GEN_ID: u16 = 1;
pub(crate) const NFTA_RULE_HANDLE: u16 = 3;
/// `NF_NAT_RANGE_MAP_IPS`: the kernel sets it itself when a NAT expression has an address.
pub(crate) const NF_NAT_RANGE_MAP_IPS: u32 = 0x1;

/// Size of `struct nlmsghdr` plus `struct nfgenmsg`.
const HEADERS: usize = 16 + 4;

/// A message the decoder cannot turn into IR.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A message or attribute is shorter than its header says, or than its type requires.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A message lacks an attribute the kernel always sends for this object.
    #[error("{object} without {attribute}")]
    Missing {
        /// The object (`table`, `chain`, `set`, `element`, `rule`).
        object: &'static str,
        /// The attribute's C name.
        attribute: &'static str,
    },
    /// A message of a type this decoder was not asked for.
    #[error("unexpected message type {0}")]
    UnexpectedMessage(u16),
    /// A table family other than `ip` and `ip6`.
    #[error("unsupported family {0}")]
    Family(u8),
    /// A set's key or data type id that is not one of the types the IR has.
    #[error("unknown data type id {0:#x}")]
    DataType(u32),
    /// A constant that has no IR value of its type (e.g. protocol 1 as `inet_proto`).
    #[error("{bytes:02x?} is not a {ty} the IR can express")]
    Value {
        /// The type it was decoded as.
        ty: &'static str,
        /// The raw bytes.
        bytes: Vec<u8>,
    },
    /// A string (name, comment) that is not UTF-8.
    #[error("non-UTF-8 {0}")]
    Utf8(&'static str),
    /// A valid nf_tables object that kube-nft never creates and the IR cannot express (a base
    /// chain with `policy drop`, a set flag, an element range that is not a prefix, …).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Shorthand for a malformed-message error.
fn malformed(what: &'static str) -> Error {
    Error::Malformed(what)
}

// ---------------------------------------------------------------------------------------------
// Messages and attributes

/// One nf_tables message: `nlmsghdr`, `nfgenmsg`, attributes.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The nf_tables message type (`NFT_MSG_*`, without the subsystem byte).
    pub msg_type: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nfgen_family` (`NFPROTO_*`).
    pub family: u8,
    /// The attributes.
    attrs: &'a [u8],
}

impl<'a> Message<'a> {
    /// Splits one whole message (as [`Socket::dump`](super::socket::Socket::dump) returns
    /// them).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, Error> {
        let len = u32_ne(bytes.get(0..4)).ok_or(malformed("message header"))? as usize;
        if len < HEADERS || len > bytes.len() {
            return Err(malformed("message header"));
        }
        let ty = u16::from_ne_bytes([bytes[4], bytes[5]]);
        Ok(Message {
            msg_type: ty & 0xff,
            flags: u16::from_ne_bytes([bytes[6], bytes[7]]),
            family: bytes[16],
            attrs: &bytes[HEADERS..len],
        })
    }

    /// The table family, for `ip` and `ip6` messages.
    pub fn ir_family(&self) -> Result<Family, Error> {
        match self.family {
            NFPROTO_IPV4 => Ok(Family::Ip),
            NFPROTO_IPV6 => Ok(Family::Ip6),
            other => Err(Error::Family(other)),
        }
    }

    fn attrs(&self) -> Result<Attrs<'a>, Error> {
        Attrs::parse(self.attrs)
    }

    fn expect(&self, msg_type: u16) -> Result<(), Error> {
        if self.msg_type == msg_type {
            Ok(())
        } else {
            Err(Error::UnexpectedMessage(self.msg_type))
        }
    }
}

fn u32_ne(bytes: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes?.try_into().ok()?))
}

/// The attributes at one nesting level, in order. Attribute headers are host order; the
/// `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` bits are masked off the type.
#[derive(Clone, Debug, Default)]
pub(crate) struct Attrs<'a>(Vec<(u16, &'a [u8])>);

impl<'a> Attrs<'a> {
    pub(crate) fn parse(mut bytes: &'a [u8]) -> Result<Attrs<'a>, Error> {
        let mut out = Vec::new();
        while bytes.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
            let ty = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
            if len < 4 || len > bytes.len() {
                return Err(malformed("attribute"));
            }
            out.push((ty, &bytes[4..len]));
            bytes = &bytes[padded(len as u32).min(bytes.len() as u32) as usize..];
        }
        Ok(Attrs(out))
    }

    /// The payload of the attribute of type `ty`, if present.
    pub(crate) fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.0.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
    }

    /// Every attribute, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        self.0.iter().copied()
    }

    pub(crate) fn be32(&self, ty: u16) -> Result<Option<u32>, Error> {
        self.get(ty)
            .map(|v| {
                <[u8; 4]>::try_from(v)
                    .map(u32::from_be_bytes)
                    .map_err(|_| malformed("32-bit attribute"))
            })
            .transpose()
    }

    pub(crate) fn be64(&self, ty: u16) -> Result<Option<u64>, Error> {
        self.get(ty)
            .map(|v| {
                <[u8; 8]>::try_from(v)
                    .map(u64::from_be_bytes)
                    .map_err(|_| malformed("64-bit attribute"))
            })
            .transpose()
    }

    pub(crate) fn strz(&self, ty: u16) -> Result<Option<String>, Error> {
        self.get(ty).map(strz).transpose()
    }

    pub(crate) fn nested(&self, ty: u16) -> Result<Option<Attrs<'a>>, Error> {
        self.get(ty).map(Attrs::parse).transpose()
    }
}

/// A NUL-terminated string attribute (the kernel always includes the NUL).
fn strz(bytes: &[u8]) -> Result<String, Error> {
    let text = bytes.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8(text.to_vec()).map_err(|_| Error::Utf8("name"))
}

fn required<T>(
    value: Option<T>,
    object: &'static str,
    attribute: &'static str,
) -> Result<T, Error> {
    value.ok_or(Error::Missing { object, attribute })
}

/// nft's user data TLVs (`{ u8 type, u8 len, value }`, unpadded): the entry of type `ty`.
fn udata_get(blob: &[u8], ty: u8) -> Result<Option<&[u8]>, Error> {
    let mut rest = blob;
    while rest.len() >= 2 {
        let (t, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len).ok_or(malformed("user data"))?;
        if t == ty {
            return Ok(Some(value));
        }
        rest = &rest[2 + len..];
    }
    Ok(None)
}

/// The comment in a user data blob (stored with its NUL, as nft writes it).
fn udata_comment(blob: Option<&[u8]>, ty: u8) -> Result<Option<String>, Error> {
    let Some(blob) = blob else {
        return Ok(None);
    };
    udata_get(blob, ty)?
        .map(|v| {
            let text = v.strip_suffix(&[0]).unwrap_or(v);
            String::from_utf8(text.to_vec()).map_err(|_| Error::Utf8("comment"))
        })
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// Tables and chains

/// A `NEWTABLE` message: an empty `ir::Table` (chains and sets come in their own messages).
pub fn table(msg: &Message<'_>) -> Result<ir::Table, Error> {
    msg.expect(NFT_MSG_NEWTABLE)?;
    let attrs = msg.attrs()?;
    let name = required(attrs.strz(NFTA_TABLE_NAME)?, "table", "NFTA_TABLE_NAME")?;
    let mut table = ir::Table::new(msg.ir_family()?, name);
    table.comment = udata_comment(attrs.get(NFTA_TABLE_USERDATA), UDATA_TABLE_COMMENT)?;
    Ok(table)
}

/// A chain and the table it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedChain {
    /// The table's name.
    pub table: String,
    /// The chain, without rules.
    pub chain: ir::Chain,
}

/// A `NEWCHAIN` message: the chain without its rules.
pub fn chain(msg: &Message<'_>) -> Result<DecodedChain, Error> {
    msg.expect(NFT_MSG_NEWCHAIN)?;
    let attrs = msg.attrs()?;
    let table = required(attrs.strz(NFTA_CHAIN_TABLE)?, "chain", "NFTA_CHAIN_TABLE")?;
    let name = required(attrs.strz(NFTA_CHAIN_NAME)?, "chain", "NFTA_CHAIN_NAME")?;
    let base = match attrs.nested(NFTA_CHAIN_HOOK)? {
        None => None,
        Some(hook) => {
            let number = required(hook.be32(NFTA_HOOK_HOOKNUM)?, "chain", "NFTA_HOOK_HOOKNUM")?;
            let priority = required(
                hook.be32(NFTA_HOOK_PRIORITY)?,
                "chain",
                "NFTA_HOOK_PRIORITY",
            )?;
            let kind = match required(attrs.strz(NFTA_CHAIN_TYPE)?, "chain", "NFTA_CHAIN_TYPE")?
                .as_str()
            {
                "filter" => ChainKind::Filter,
                "nat" => ChainKind::Nat,
                other => return Err(Error::Unsupported(format!("chain type {other}"))),
            };
            // The IR's base chains always have nft's default policy.
            if let Some(policy) = attrs.be32(NFTA_CHAIN_POLICY)? {
                if policy != NF_ACCEPT {
                    return Err(Error::Unsupported(format!("base chain policy {policy}")));
                }
            }
            Some(BaseChain {
                kind,
                hook: hook_of(number)?,
                priority: priority as i32,
            })
        }
    };
    let comment = udata_comment(attrs.get(NFTA_CHAIN_USERDATA), UDATA_CHAIN_COMMENT)?;
    Ok(DecodedChain {
        table,
        chain: ir::Chain {
            name,
            base,
            comment,
            rules: Vec::new(),
        },
    })
}

fn hook_of(number: u32) -> Result<Hook, Error> {
    Ok(match number {
        NF_INET_PRE_ROUTING => Hook::Prerouting,
        NF_INET_LOCAL_IN => Hook::Input,
        NF_INET_FORWARD => Hook::Forward,
        NF_INET_LOCAL_OUT => Hook::Output,
        NF_INET_POST_ROUTING => Hook::Postrouting,
        other => return Err(Error::Unsupported(format!("hook {other}"))),
    })
}

// ---------------------------------------------------------------------------------------------
// Sets

/// A set or map and the table it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedSet {
    /// The table's name.
    pub table: String,
    /// The set, without elements. Anonymous sets keep their kernel name (`__map0`).
    pub set: ir::Set,
    /// An anonymous constant set (`NFT_SET_ANONYMOUS`): part of a rule, not a named set of
    /// the table. kube-nft creates them only for numgen DNAT maps.
    pub anonymous: bool,
}

/// A `NEWSET` message: the set without elements. Key and data types come from
/// `NFTA_SET_KEY_TYPE` / `NFTA_SET_DATA_TYPE`, which hold nft's type ids (concatenations: six
/// bits per part, first part highest), checked against the key and data lengths.
pub fn set(msg: &Message<'_>) -> Result<DecodedSet, Error> {
    msg.expect(NFT_MSG_NEWSET)?;
    let attrs = msg.attrs()?;
    let table = required(attrs.strz(NFTA_SET_TABLE)?, "set", "NFTA_SET_TABLE")?;
    let name = required(attrs.strz(NFTA_SET_NAME)?, "set", "NFTA_SET_NAME")?;
    let flags = attrs.be32(NFTA_SET_FLAGS)?.unwrap_or(0);
    let key_type = required(attrs.be32(NFTA_SET_KEY_TYPE)?, "set", "NFTA_SET_KEY_TYPE")?;
    let key_len = required(attrs.be32(NFTA_SET_KEY_LEN)?, "set", "NFTA_SET_KEY_LEN")?;
    let key = types_of(key_type, key_len)?;
    let data = if flags & NFT_SET_MAP != 0 {
        let ty = required(attrs.be32(NFTA_SET_DATA_TYPE)?, "map", "NFTA_SET_DATA_TYPE")?;
        if ty == NFT_DATA_VERDICT {
            vec![DataType::Verdict]
        } else {
            let len = required(attrs.be32(NFTA_SET_DATA_LEN)?, "map", "NFTA_SET_DATA_LEN")?;
            types_of(ty, len)?
        }
    } else {
        Vec::new()
    };
    let anonymous = flags & NFT_SET_ANONYMOUS != 0;
    let known = NFT_SET_INTERVAL | NFT_SET_CONCAT | NFT_SET_MAP | NFT_SET_TIMEOUT | NFT_SET_EVAL;
    let allowed = if anonymous {
        known | NFT_SET_ANONYMOUS | NFT_SET_CONSTANT
    } else {
        known
    };
    if flags & !allowed != 0 {
        return Err(Error::Unsupported(format!("set flags {flags:#x}")));
    }
    let timeout = match attrs.be64(NFTA_SET_TIMEOUT)? {
        None | Some(0) => None,
        Some(ms) if ms % 1000 == 0 => Some(
            u32::try_from(ms / 1000)
                .map_err(|_| Error::Unsupported(format!("set timeout {ms} ms")))?,
        ),
        Some(ms) => return Err(Error::Unsupported(format!("set timeout {ms} ms"))),
    };
    let comment = udata_comment(attrs.get(NFTA_SET_USERDATA), UDATA_SET_COMMENT)?;
    let size = match attrs.nested(NFTA_SET_DESC)? {
        Some(desc) => desc.be32(NFTA_SET_DESC_SIZE)?,
        None => None,
    };
    // A set an `update` fills gets this size from the kernel when it declares none
    // (`nft_dynset_init`); kube-nft declares none (a declared size is also the hash table's
    // initial bucket count), so it reads back as none.
    let size = size.filter(|s| !(flags & NFT_SET_EVAL != 0 && *s == DYNSET_DEFAULT_SIZE));
    // The one per-element expression kube-nft declares is a counter; anything else (a
    // `limit`, several expressions in `NFTA_SET_EXPRESSIONS`) is not ours.
    let counter = match attrs.nested(NFTA_SET_EXPR)? {
        None => false,
        Some(expr) => match expr.strz(NFTA_EXPR_NAME)?.as_deref() {
            Some("counter") => true,
            other => {
                return Err(Error::Unsupported(format!(
                    "set expression {}",
                    other.unwrap_or("without a name")
                )))
            }
        },
    };
    if attrs.get(NFTA_SET_EXPRESSIONS).is_some() {
        return Err(Error::Unsupported("set expressions list".into()));
    }
    Ok(DecodedSet {
        table,
        set: ir::Set {
            name,
            key,
            data,
            flags: SetFlags {
                interval: flags & NFT_SET_INTERVAL != 0,
                dynamic: flags & NFT_SET_EVAL != 0,
                timeout: flags & NFT_SET_TIMEOUT != 0,
            },
            timeout,
            size,
            counter,
            comment,
            elements: Vec::new(),
        },
        anonymous,
    })
}

/// Every IR data type that can be a key or data part.
const TYPES: [DataType; 10] = [
    DataType::Ipv4Addr,
    DataType::Ipv6Addr,
    DataType::InetProto,
    DataType::InetService,
    DataType::Mark,
    DataType::CtState,
    DataType::CtStatus,
    DataType::FibAddrType,
    DataType::Ifname,
    DataType::Integer,
];

/// Splits nft's (possibly concatenated) type id into its parts. No type id is 0, so the parts
/// are the non-zero 6-bit groups; the lengths must add up to `len` (padded per part when there
/// is more than one).
fn types_of(id: u32, len: u32) -> Result<Vec<DataType>, Error> {
    let mut parts = Vec::new();
    let mut rest = id;
    while rest != 0 {
        let part = rest & 0x3f;
        let ty = TYPES
            .iter()
            .find(|t| type_id(**t) == part)
            .ok_or(Error::DataType(id))?;
        parts.push(*ty);
        rest >>= 6;
    }
    parts.reverse();
    let expected: u32 = match parts.as_slice() {
        [] => return Err(Error::DataType(id)),
        [one] => type_len(*one),
        many => many.iter().map(|t| padded(type_len(*t))).sum(),
    };
    if expected != len {
        return Err(Error::Unsupported(format!(
            "type {id:#x} with length {len} (expected {expected})"
        )));
    }
    Ok(parts)
}

// ---------------------------------------------------------------------------------------------
// Elements

/// One element as the kernel lists it, before interval assembly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawElement {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    interval_end: bool,
    data: Option<ElemData>,
    comment: Option<String>,
}

/// The elements of one `NEWSETELEM` message, for [`elements`] to assemble once every message of
/// the set has been read (an interval's start and end may be in different messages).
pub fn raw_elements(msg: &Message<'_>, set: &ir::Set) -> Result<Vec<RawElement>, Error> {
    let mut out = Vec::new();
    for elem in element_attrs(msg)? {
        let flags = elem.be32(NFTA_SET_ELEM_FLAGS)?.unwrap_or(0);
        let key = data_value(&elem, NFTA_SET_ELEM_KEY)?;
        let key = required(key, "element", "NFTA_SET_ELEM_KEY")?;
        let key_end = data_value(&elem, NFTA_SET_ELEM_KEY_END)?;
        let data = match elem.nested(NFTA_SET_ELEM_DATA)? {
            None => None,
            Some(data) if set.data == [DataType::Verdict] => {
                let verdict = data.nested(NFTA_DATA_VERDICT)?;
                Some(ElemData::Verdict(verdict_of(&required(
                    verdict,
                    "element",
                    "NFTA_DATA_VERDICT",
                )?)?))
            }
            Some(data) => {
                let bytes = required(data.get(NFTA_DATA_VALUE), "element", "NFTA_DATA_VALUE")?;
                Some(ElemData::Values(values_of(bytes, &set.data)?))
            }
        };
        // Element timeouts and expirations are left alone: only dynamic sets have them, and
        // their elements are runtime state that `readback` does not read.
        let comment = udata_comment(elem.get(NFTA_SET_ELEM_USERDATA), UDATA_SET_ELEM_COMMENT)?;
        out.push(RawElement {
            key: key.to_vec(),
            key_end: key_end.map(<[u8]>::to_vec),
            interval_end: flags & NFT_SET_ELEM_INTERVAL_END != 0,
            data,
            comment,
        });
    }
    Ok(out)
}

/// The size the kernel gives a dynamic set without one when an `update` binds it.
const DYNSET_DEFAULT_SIZE: u32 = 0xffff;

/// An element of a set declared with `counter`: its key bytes as the kernel holds them (each
/// part padded to 4 bytes) and its counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedElement {
    /// The key, `NFTA_SET_ELEM_KEY`'s value.
    pub key: Vec<u8>,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

/// The elements of one `NFT_MSG_NEWSETELEM` dump message with their counters; an element
/// without a counter expression is left out.
pub fn counted_elements(msg: &Message<'_>) -> Result<Vec<CountedElement>, Error> {
    let mut out = Vec::new();
    for elem in element_attrs(msg)? {
        let key = required(
            data_value(&elem, NFTA_SET_ELEM_KEY)?,
            "element",
            "NFTA_SET_ELEM_KEY",
        )?;
        let Some(expr) = elem.nested(NFTA_SET_ELEM_EXPR)? else {
            continue;
        };
        if expr.strz(NFTA_EXPR_NAME)?.as_deref() != Some("counter") {
            continue;
        }
        let data = required(expr.nested(NFTA_EXPR_DATA)?, "counter", "NFTA_EXPR_DATA")?;
        out.push(CountedElement {
            key: key.to_vec(),
            packets: data.be64(NFTA_COUNTER_PACKETS)?.unwrap_or(0),
            bytes: data.be64(NFTA_COUNTER_BYTES)?.unwrap_or(0),
        });
    }
    Ok(out)
}

/// The attributes of each element of one `NFT_MSG_NEWSETELEM` message.
fn element_attrs<'a>(msg: &Message<'a>) -> Result<Vec<Attrs<'a>>, Error> {
    msg.expect(NFT_MSG_NEWSETELEM)?;
    let attrs = msg.attrs()?;
    let Some(list) = attrs.nested(NFTA_SET_ELEM_LIST_ELEMENTS)? else {
        return Ok(Vec::new());
    };
    (list.iter())
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .map(|(_, bytes)| Attrs::parse(bytes))
        .collect()
}

/// `ty { NFTA_DATA_VALUE bytes }`.
fn data_value<'a>(attrs: &Attrs<'a>, ty: u16) -> Result<Option<&'a [u8]>, Error> {
    match attrs.nested(ty)? {
        None => Ok(None),
        Some(data) => Ok(Some(required(
            data.get(NFTA_DATA_VALUE),
            "data",
            "NFTA_DATA_VALUE",
        )?)),
    }
}

/// `NFTA_DATA_VERDICT { code, chain }`.
pub(crate) fn verdict_of(attrs: &Attrs<'_>) -> Result<Verdict, Error> {
    let code = required(
        attrs.be32(NFTA_VERDICT_CODE)?,
        "verdict",
        "NFTA_VERDICT_CODE",
    )?;
    let chain = || -> Result<String, Error> {
        required(
            attrs.strz(NFTA_VERDICT_CHAIN)?,
            "verdict",
            "NFTA_VERDICT_CHAIN",
        )
    };
    Ok(match code {
        NF_ACCEPT => Verdict::Accept,
        NF_DROP => Verdict::Drop,
        NFT_RETURN => Verdict::Return,
        NFT_JUMP => Verdict::Jump(chain()?),
        NFT_GOTO => Verdict::Goto(chain()?),
        other => return Err(Error::Unsupported(format!("verdict code {other:#x}"))),
    })
}

/// Assembles a set's elements, sorted by key like the compiler sorts them.
///
/// Single-field interval sets (the rbtree backend) list every range as two elements, its start
/// and, flagged `NFT_SET_ELEM_INTERVAL_END`, the first value after it; a range open to the top
/// of the key space has no end. Concatenated interval sets (pipapo) carry the inclusive last
/// value in `NFTA_SET_ELEM_KEY_END`. A range becomes an address when it covers one value and a
/// prefix when it is one; anything else has no IR form.
pub fn elements(set: &ir::Set, mut raw: Vec<RawElement>) -> Result<Vec<Element>, Error> {
    let mut out = Vec::with_capacity(raw.len());
    if set.flags.interval && set.key.len() == 1 && raw.iter().all(|e| e.key_end.is_none()) {
        // Ends sort before starts at the same key, so adjacent ranges pair up correctly.
        raw.sort_by(|a, b| (&a.key, !a.interval_end).cmp(&(&b.key, !b.interval_end)));
        let ty = set.key[0];
        for (i, elem) in raw.iter().enumerate() {
            if elem.interval_end {
                // Ends are consumed with their start. An unpaired end (older nft versions
                // open an interval set with an end at zero) carries nothing.
                continue;
            }
            let last = match raw.get(i + 1) {
                Some(next) if next.interval_end => predecessor(&next.key)
                    .ok_or_else(|| Error::Unsupported("empty interval".into()))?,
                _ => vec![0xff; elem.key.len()],
            };
            out.push(Element {
                key: vec![range_value(&elem.key, &last, ty)?],
                data: elem.data.clone(),
                comment: elem.comment.clone(),
            });
        }
    } else {
        for elem in raw {
            if elem.interval_end {
                return Err(Error::Unsupported(
                    "interval end element in a set without intervals".into(),
                ));
            }
            let key = match &elem.key_end {
                Some(end) if set.flags.interval => {
                    let firsts = split_parts(&elem.key, &set.key)?;
                    let lasts = split_parts(end, &set.key)?;
                    firsts
                        .iter()
                        .zip(&lasts)
                        .zip(&set.key)
                        .map(|((a, b), ty)| range_value(a, b, *ty))
                        .collect::<Result<Vec<_>, _>>()?
                }
                Some(_) => {
                    return Err(Error::Unsupported(
                        "key end in a set without intervals".into(),
                    ))
                }
                None => values_of(&elem.key, &set.key)?,
            };
            out.push(Element {
                key,
                data: elem.data,
                comment: elem.comment,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// The value before `bytes` as a big-endian number, or `None` for zero.
fn predecessor(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for byte in out.iter_mut().rev() {
        if *byte == 0 {
            *byte = 0xff;
        } else {
            *byte -= 1;
            return Some(out);
        }
    }
    None
}

/// The parts of a concatenated value: each padded to 4 bytes; a single part is not padded.
fn split_parts<'a>(bytes: &'a [u8], types: &[DataType]) -> Result<Vec<&'a [u8]>, Error> {
    if let [ty] = types {
        if bytes.len() != type_len(*ty) as usize {
            return Err(malformed("value length"));
        }
        return Ok(vec![bytes]);
    }
    let mut parts = Vec::with_capacity(types.len());
    let mut at = 0;
    for ty in types {
        let len = type_len(*ty) as usize;
        parts.push(bytes.get(at..at + len).ok_or(malformed("concatenation"))?);
        at += padded(len as u32) as usize;
    }
    if at != bytes.len() {
        return Err(malformed("concatenation length"));
    }
    Ok(parts)
}

/// A key or data value of the given types.
fn values_of(bytes: &[u8], types: &[DataType]) -> Result<Vec<Value>, Error> {
    split_parts(bytes, types)?
        .into_iter()
        .zip(types)
        .map(|(part, ty)| value_of(part, *ty))
        .collect()
}

/// The inclusive range `first..=last` of one key part: the value itself when it covers one
/// value, a prefix when it is one (addresses only).
fn range_value(first: &[u8], last: &[u8], ty: DataType) -> Result<Value, Error> {
    if first == last {
        return value_of(first, ty);
    }
    if matches!(ty, DataType::Ipv4Addr | DataType::Ipv6Addr) && first.len() == last.len() {
        // A prefix: the differing bits are all the low bits, zero in `first` and one in `last`.
        let bits = first.len() * 8;
        let bit = |bytes: &[u8], i: usize| bytes[i / 8] & (0x80 >> (i % 8)) != 0;
        let prefix = (0..bits)
            .find(|&i| bit(first, i) != bit(last, i))
            .unwrap_or(bits);
        if (prefix..bits).all(|i| !bit(first, i) && bit(last, i)) {
            let addr = value_of(first, ty)?;
            if let Value::Addr(addr) = addr {
                if let Ok(net) = IpNet::new(addr, prefix as u8) {
                    return Ok(Value::Prefix(net));
                }
            }
        }
    }
    Err(Error::Unsupported(format!(
        "range {first:02x?}-{last:02x?} of {} is not a prefix",
        ty.keyword()
    )))
}

/// One constant of type `ty`, in the byte order [`value_bytes`](super::encode::value_bytes)
/// writes it.
pub(crate) fn value_of(bytes: &[u8], ty: DataType) -> Result<Value, Error> {
    let bad = || Error::Value {
        ty: ty.keyword(),
        bytes: bytes.to_vec(),
    };
    let host32 = || {
        <[u8; 4]>::try_from(bytes)
            .map(u32::from_ne_bytes)
            .map_err(|_| bad())
    };
    Ok(match ty {
        DataType::Ipv4Addr => Value::Addr(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| bad())?,
        ))),
        DataType::Ipv6Addr => Value::Addr(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| bad())?,
        ))),
        DataType::InetProto => Value::Proto(match bytes {
            [6] => L4Proto::Tcp,
            [17] => L4Proto::Udp,
            [132] => L4Proto::Sctp,
            _ => return Err(bad()),
        }),
        DataType::InetService => Value::Port(u16::from_be_bytes(
            <[u8; 2]>::try_from(bytes).map_err(|_| bad())?,
        )),
        DataType::Mark | DataType::Integer => Value::Int(host32()?),
        DataType::FibAddrType if host32()? == 2 => Value::FibLocal,
        DataType::CtState if host32()? == 8 => Value::CtNew,
        DataType::CtStatus if host32()? == 0x20 => Value::CtDnat,
        DataType::CtDir => match bytes {
            [0] => Value::CtDir(CtDir::Original),
            [1] => Value::CtDir(CtDir::Reply),
            _ => return Err(bad()),
        },
        // A whole interface name: IFNAMSIZ bytes, the name then zeros (at least one).
        DataType::Ifname if bytes.len() == super::encode::IFNAMSIZ as usize => {
            let end = bytes.iter().position(|b| *b == 0).ok_or_else(bad)?;
            if bytes[end..].iter().any(|b| *b != 0) {
                return Err(bad());
            }
            Value::Iface(String::from_utf8(bytes[..end].to_vec()).map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    })
}

/// `NFT_MSG_NEWGEN`: the ruleset generation id.
pub fn generation(msg: &Message<'_>) -> Result<u32, Error> {
    msg.expect(NFT_MSG_NEWGEN)?;
    required(msg.attrs()?.be32(NFTA_GEN_ID)?, "generation", "NFTA_GEN_ID")
}

/// Request attributes: `NFTA_*_TABLE` filters for dumps, and with `object` the set whose
/// elements (`NFTA_SET_ELEM_LIST_SET`) or the chain whose rules (`NFTA_RULE_CHAIN`) to dump.
pub(crate) fn filter_attrs(table: &str, object: Option<&str>) -> Vec<u8> {
    let mut buf = Vec::new();
    // NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_SET_TABLE, NFTA_RULE_TABLE and
    // NFTA_SET_ELEM_LIST_TABLE are all attribute 1; NFTA_SET_ELEM_LIST_SET and NFTA_RULE_CHAIN
    // are both attribute 2.
    super::attr::put_strz(&mut buf, 1, table);
    if let Some(object) = object {
        super::attr::put_strz(&mut buf, NFTA_SET_ELEM_LIST_SET, object);
    }
    buf
}
