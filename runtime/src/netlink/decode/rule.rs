//! Rule bodies back to statements: parses `NFTA_RULE_EXPRESSIONS` into typed expressions, then
//! recognises exactly the expression sequences `encode`'s rule module emits (which are also the
//! ones nft 1.0.6 emits for the rendered script) and maps each back to its `ir::Stmt`. Every
//! statement starts loading at register 1, which is how statement boundaries are found. A
//! sequence that matches no form is [`Unrecognised`], with the position and a short dump of
//! the expressions, so the caller can name the foreign rule instead of guessing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use kube_nft_compiler::ir::{
    self, CmpOp, DataType, Expr, Family, FibAddr, NatTarget, NumgenMode, Stmt, Value, Verdict,
};

use super::super::encode::{padded, type_len, IFNAMSIZ};
use super::super::sys::*;
use super::{required, udata_comment, value_of, verdict_of, Attrs, Error, Message};
use super::{NFTA_RULE_HANDLE, NF_NAT_RANGE_MAP_IPS};

/// The anonymous `integer : addr . port` maps of a table (`__map0`, …), by kernel name, as the
/// targets of the numgen DNATs that look them up (index `i` is entry `i`).
pub type AnonMaps = BTreeMap<String, Vec<(IpAddr, u16)>>;

/// A rule whose expressions match no statement form kube-nft writes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at expression {at} of [{expressions}]")]
pub struct Unrecognised {
    /// Index of the first expression that could not be placed.
    pub at: usize,
    /// What was expected there.
    pub reason: String,
    /// The rule's expressions, one short form each (`meta`, `cmp`, …).
    pub expressions: String,
}

/// A `NEWRULE` message: where the rule is, and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRule {
    /// The table's name.
    pub table: String,
    /// The chain's name.
    pub chain: String,
    /// The kernel's handle of the rule (0 if absent).
    pub handle: u64,
    /// The rule, or why its expressions are not one of kube-nft's forms.
    pub body: Result<ir::Rule, Unrecognised>,
}

/// Decodes a `NEWRULE` message of a table of `family`. Malformed messages are errors;
/// well-formed rules that kube-nft would not write are `Ok` with an `Err` body.
pub fn rule(msg: &Message<'_>, anon_maps: &AnonMaps) -> Result<DecodedRule, Error> {
    msg.expect(NFT_MSG_NEWRULE)?;
    let family = msg.ir_family()?;
    let attrs = msg.attrs()?;
    let table = required(attrs.strz(NFTA_RULE_TABLE)?, "rule", "NFTA_RULE_TABLE")?;
    let chain = required(attrs.strz(NFTA_RULE_CHAIN)?, "rule", "NFTA_RULE_CHAIN")?;
    let handle = attrs.be64(NFTA_RULE_HANDLE)?.unwrap_or(0);
    let mut exprs = Vec::new();
    if let Some(list) = attrs.nested(NFTA_RULE_EXPRESSIONS)? {
        for (ty, bytes) in list.iter() {
            if ty == NFTA_LIST_ELEM {
                exprs.push(Ex::parse(&Attrs::parse(bytes)?)?);
            }
        }
    }
    let comment = udata_comment(attrs.get(NFTA_RULE_USERDATA), UDATA_RULE_COMMENT)?;
    let mut cursor = Cursor {
        exprs: &exprs,
        at: 0,
        family,
        anon_maps,
    };
    let body = cursor.stmts().map(|stmts| ir::Rule { stmts, comment });
    Ok(DecodedRule {
        table,
        chain,
        handle,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Expressions

/// One expression with the attributes kube-nft's forms use. Registers are normalised to 32-bit
/// slots (`NFT_REG32_*`; the kernel dumps `NFT_REG_1..4` for slots that start a 16-byte
/// register), with 0 for the verdict register.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ex {
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Meta {
        key: u32,
        dreg: Option<u32>,
        sreg: Option<u32>,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        op: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: u32,
        len: u32,
        size: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
        /// `IP_CT_DIR_*` of a tuple field (`ct original ip daddr`), none for the others.
        direction: Option<u8>,
    },
    Fib {
        dreg: u32,
        result: u32,
        flags: u32,
    },
    Numgen {
        dreg: u32,
        modulus: u32,
        ty: u32,
        offset: u32,
    },
    Hash {
        sreg: u32,
        dreg: u32,
        len: u32,
        modulus: u32,
        seed: Option<u32>,
        offset: u32,
        ty: u32,
    },
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        flags: u32,
    },
    Dynset {
        set: String,
        op: u32,
        sreg_key: u32,
        /// A map's data register.
        sreg_data: Option<u32>,
        /// Anything beyond `update @set { key : data }`: a timeout, flags or expressions
        /// (`NFTA_DYNSET_*` type and value).
        extra: Option<(u16, Vec<u8>)>,
    },
    Immediate {
        dreg: u32,
        data: Imm,
    },
    Nat {
        ty: u32,
        family: u32,
        addr: Option<(u32, u32)>,
        proto: Option<(u32, u32)>,
        flags: u32,
    },
    Masq {
        flags: u32,
        regs: bool,
    },
    Reject {
        ty: u32,
        code: Option<u8>,
    },
    Other(String),
}

/// Immediate data.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Imm {
    Value(Vec<u8>),
    Verdict(Verdict),
}

// Attribute numbers the encoder never sends but the kernel dumps.
const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;
const NFTA_DYNSET_TIMEOUT: u16 = 6;
const NFTA_DYNSET_EXPR: u16 = 7;
const NFTA_DYNSET_FLAGS: u16 = 9;
const NFTA_DYNSET_EXPRESSIONS: u16 = 10;

/// A register number as a 32-bit slot.
fn slot(reg: u32) -> Result<u32, Error> {
    match reg {
        NFT_REG_VERDICT => Ok(0),
        1..=4 => Ok(NFT_REG32_00 + (reg - NFT_REG_1) * 4),
        8..=23 => Ok(reg),
        _ => Err(Error::Malformed("register number")),
    }
}

impl Ex {
    fn parse(elem: &Attrs<'_>) -> Result<Ex, Error> {
        let name = required(elem.strz(NFTA_EXPR_NAME)?, "expression", "NFTA_EXPR_NAME")?;
        let a = elem.nested(NFTA_EXPR_DATA)?.unwrap_or_default();
        let u = |ty| -> Result<u32, Error> { Ok(a.be32(ty)?.unwrap_or(0)) };
        let r = |ty| -> Result<u32, Error> { slot(u(ty)?) };
        let opt_r = |ty| -> Result<Option<u32>, Error> { a.be32(ty)?.map(slot).transpose() };
        let value = |ty| -> Result<Vec<u8>, Error> {
            Ok(super::data_value(&a, ty)?.unwrap_or_default().to_vec())
        };
        Ok(match name.as_str() {
            "payload" => Ex::Payload {
                dreg: r(NFTA_PAYLOAD_DREG)?,
                base: u(NFTA_PAYLOAD_BASE)?,
                offset: u(NFTA_PAYLOAD_OFFSET)?,
                len: u(NFTA_PAYLOAD_LEN)?,
            },
            "meta" => Ex::Meta {
                key: u(NFTA_META_KEY)?,
                dreg: opt_r(NFTA_META_DREG)?,
                sreg: opt_r(NFTA_META_SREG)?,
            },
            "cmp" => Ex::Cmp {
                sreg: r(NFTA_CMP_SREG)?,
                op: u(NFTA_CMP_OP)?,
                data: value(NFTA_CMP_DATA)?,
            },
            "bitwise" => Ex::Bitwise {
                sreg: r(NFTA_BITWISE_SREG)?,
                dreg: r(NFTA_BITWISE_DREG)?,
                op: u(NFTA_BITWISE_OP)?,
                mask: value(NFTA_BITWISE_MASK)?,
                xor: value(NFTA_BITWISE_XOR)?,
            },
            "byteorder" => Ex::Byteorder {
                sreg: r(NFTA_BYTEORDER_SREG)?,
                dreg: r(NFTA_BYTEORDER_DREG)?,
                op: u(NFTA_BYTEORDER_OP)?,
                len: u(NFTA_BYTEORDER_LEN)?,
                size: u(NFTA_BYTEORDER_SIZE)?,
            },
            "ct" => Ex::Ct {
                key: u(NFTA_CT_KEY)?,
                dreg: r(NFTA_CT_DREG)?,
                direction: a
                    .get(NFTA_CT_DIRECTION)
                    .map(|d| d.first().copied().unwrap_or(u8::MAX)),
            },
            "fib" => Ex::Fib {
                dreg: r(NFTA_FIB_DREG)?,
                result: u(NFTA_FIB_RESULT)?,
                flags: u(NFTA_FIB_FLAGS)?,
            },
            "numgen" => Ex::Numgen {
                dreg: r(NFTA_NG_DREG)?,
                modulus: u(NFTA_NG_MODULUS)?,
                ty: u(NFTA_NG_TYPE)?,
                offset: u(NFTA_NG_OFFSET)?,
            },
            "hash" => Ex::Hash {
                sreg: r(NFTA_HASH_SREG)?,
                dreg: r(NFTA_HASH_DREG)?,
                len: u(NFTA_HASH_LEN)?,
                modulus: u(NFTA_HASH_MODULUS)?,
                seed: a.be32(NFTA_HASH_SEED)?,
                offset: u(NFTA_HASH_OFFSET)?,
                ty: u(NFTA_HASH_TYPE)?,
            },
            "lookup" => Ex::Lookup {
                set: required(a.strz(NFTA_LOOKUP_SET)?, "lookup", "NFTA_LOOKUP_SET")?,
                sreg: r(NFTA_LOOKUP_SREG)?,
                dreg: opt_r(NFTA_LOOKUP_DREG)?,
                flags: u(NFTA_LOOKUP_FLAGS)?,
            },
            "dynset" => Ex::Dynset {
                set: required(
                    a.strz(NFTA_DYNSET_SET_NAME)?,
                    "dynset",
                    "NFTA_DYNSET_SET_NAME",
                )?,
                op: u(NFTA_DYNSET_OP)?,
                sreg_key: r(NFTA_DYNSET_SREG_KEY)?,
                sreg_data: opt_r(NFTA_DYNSET_SREG_DATA)?,
                // The kernel always dumps the timeout (0: the set's default) and the flags.
                extra: a
                    .iter()
                    .find(|(ty, value)| match *ty {
                        NFTA_DYNSET_EXPR | NFTA_DYNSET_EXPRESSIONS => true,
                        NFTA_DYNSET_TIMEOUT | NFTA_DYNSET_FLAGS => value.iter().any(|b| *b != 0),
                        _ => false,
                    })
                    .map(|(ty, value)| (ty, value.to_vec())),
            },
            "immediate" => {
                let dreg = r(NFTA_IMMEDIATE_DREG)?;
                let data = required(
                    a.nested(NFTA_IMMEDIATE_DATA)?,
                    "immediate",
                    "NFTA_IMMEDIATE_DATA",
                )?;
                let data = match (data.get(NFTA_DATA_VALUE), data.nested(NFTA_DATA_VERDICT)?) {
                    (Some(bytes), _) => Imm::Value(bytes.to_vec()),
                    (None, Some(verdict)) => Imm::Verdict(verdict_of(&verdict)?),
                    (None, None) => {
                        return Err(Error::Missing {
                            object: "immediate",
                            attribute: "NFTA_DATA_VALUE",
                        })
                    }
                };
                Ex::Immediate { dreg, data }
            }
            "nat" => {
                let pair = |min, max| -> Result<Option<(u32, u32)>, Error> {
                    let Some(min) = opt_r(min)? else {
                        return Ok(None);
                    };
                    Ok(Some((min, opt_r(max)?.unwrap_or(min))))
                };
                Ex::Nat {
                    ty: u(NFTA_NAT_TYPE)?,
                    family: u(NFTA_NAT_FAMILY)?,
                    addr: pair(NFTA_NAT_REG_ADDR_MIN, NFTA_NAT_REG_ADDR_MAX)?,
                    proto: pair(NFTA_NAT_REG_PROTO_MIN, NFTA_NAT_REG_PROTO_MAX)?,
                    flags: u(NFTA_NAT_FLAGS)?,
                }
            }
            "masq" => Ex::Masq {
                flags: u(NFTA_MASQ_FLAGS)?,
                regs: a.get(NFTA_MASQ_REG_PROTO_MIN).is_some(),
            },
            "reject" => Ex::Reject {
                ty: u(NFTA_REJECT_TYPE)?,
                code: a
                    .get(NFTA_REJECT_ICMP_CODE)
                    .and_then(|c| c.first().copied()),
            },
            _ => Ex::Other(name),
        })
    }

    fn short(&self) -> String {
        match self {
            Ex::Payload {
                dreg, offset, len, ..
            } => format!("payload {len}b@{offset}=>r{dreg}"),
            Ex::Meta { key, dreg, sreg } => match (dreg, sreg) {
                (Some(d), _) => format!("meta {key}=>r{d}"),
                (_, Some(s)) => format!("meta set {key}<=r{s}"),
                _ => format!("meta {key}"),
            },
            Ex::Cmp { sreg, op, data } => format!("cmp{op} r{sreg} {data:02x?}"),
            Ex::Lookup { set, .. } => format!("lookup @{set}"),
            Ex::Dynset { set, extra, .. } => format!("dynset @{set} {extra:?}"),
            Ex::Immediate { dreg, data } => format!("immediate r{dreg} {data:?}"),
            Ex::Other(name) => name.clone(),
            other => format!("{other:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_lowercase(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statement forms

/// The first register slot; every statement loads its operand there.
const BASE: u32 = NFT_REG32_00;

struct Cursor<'a> {
    exprs: &'a [Ex],
    at: usize,
    family: Family,
    anon_maps: &'a AnonMaps,
}

/// Why a form did not match, before the expression listing is attached.
struct Miss(String);

type Try<T> = Result<T, Miss>;

fn miss<T>(reason: impl fmt::Display) -> Try<T> {
    Err(Miss(reason.to_string()))
}

impl<'a> Cursor<'a> {
    fn stmts(&mut self) -> Result<Vec<Stmt>, Unrecognised> {
        let mut stmts = Vec::new();
        while self.at < self.exprs.len() {
            let start = self.at;
            match self.stmt() {
                Ok(stmt) => stmts.push(stmt),
                Err(Miss(reason)) => {
                    return Err(Unrecognised {
                        at: self.at.max(start),
                        reason,
                        expressions: self
                            .exprs
                            .iter()
                            .map(Ex::short)
                            .collect::<Vec<_>>()
                            .join("; "),
                    })
                }
            }
        }
        Ok(stmts)
    }

    fn peek(&self, ahead: usize) -> Option<&'a Ex> {
        self.exprs.get(self.at + ahead)
    }

    fn next(&mut self) -> Try<&'a Ex> {
        let ex = self.peek(0);
        self.at += 1;
        ex.map_or_else(|| miss("end of rule"), Ok)
    }

    fn stmt(&mut self) -> Try<Stmt> {
        match self.peek(0) {
            Some(Ex::Immediate {
                dreg: 0,
                data: Imm::Verdict(verdict),
            }) => {
                self.at += 1;
                return Ok(Stmt::Verdict(verdict.clone()));
            }
            Some(Ex::Masq { flags, regs: false })
                if flags & !NF_NAT_RANGE_PROTO_RANDOM_FULLY == 0 =>
            {
                self.at += 1;
                return Ok(Stmt::Masquerade {
                    fully_random: *flags != 0,
                });
            }
            Some(Ex::Reject {
                ty: NFT_REJECT_ICMP_UNREACH,
                code: Some(code),
            }) if *code == self.port_unreachable() => {
                self.at += 1;
                return Ok(Stmt::Reject);
            }
            _ => {}
        }
        if let Some(stmt) = self.mark_set() {
            return Ok(stmt);
        }
        if let Some(stmt) = self.dnat() {
            return Ok(stmt);
        }
        self.load_and_use()
    }

    fn port_unreachable(&self) -> u8 {
        match self.family {
            Family::Ip => ICMP_PORT_UNREACH,
            Family::Ip6 => ICMPV6_PORT_UNREACH,
        }
    }

    /// `meta mark set meta mark | bits` / `^ bits`: load, `(mark & mask) ^ xor`, store.
    fn mark_set(&mut self) -> Option<Stmt> {
        let (
            Some(Ex::Meta {
                key: NFT_META_MARK,
                dreg: Some(BASE),
                sreg: None,
            }),
            Some(Ex::Bitwise {
                sreg: BASE,
                dreg: BASE,
                op: NFT_BITWISE_BOOL,
                mask,
                xor,
            }),
            Some(Ex::Meta {
                key: NFT_META_MARK,
                dreg: None,
                sreg: Some(BASE),
            }),
        ) = (self.peek(0), self.peek(1), self.peek(2))
        else {
            return None;
        };
        let mask = u32::from_ne_bytes(<[u8; 4]>::try_from(mask.as_slice()).ok()?);
        let xor = u32::from_ne_bytes(<[u8; 4]>::try_from(xor.as_slice()).ok()?);
        let stmt = if mask == u32::MAX {
            Stmt::MarkXor(xor)
        } else if mask == !xor {
            Stmt::MarkOr(xor)
        } else {
            return None;
        };
        self.at += 3;
        Some(stmt)
    }

    /// `meta l4proto P` followed by a DNAT: to one address and port (two immediates), or to a
    /// numgen-indexed anonymous map whose data lands in register 1 onwards.
    fn dnat(&mut self) -> Option<Stmt> {
        let start = self.at;
        let stmt = self.try_dnat();
        if stmt.is_none() {
            self.at = start;
        }
        stmt
    }

    fn try_dnat(&mut self) -> Option<Stmt> {
        let Ok(Ex::Meta {
            key: NFT_META_L4PROTO,
            dreg: Some(BASE),
            sreg: None,
        }) = self.next()
        else {
            return None;
        };
        let Ok(Ex::Cmp {
            sreg: BASE,
            op: NFT_CMP_EQ,
            data,
        }) = self.next()
        else {
            return None;
        };
        let Ok(Value::Proto(proto)) = value_of(data, DataType::InetProto) else {
            return None;
        };
        let addr_type = self.family.addr_type();
        let port_slot = BASE + padded(type_len(addr_type)) / 4;
        let target = match self.peek(0)? {
            Ex::Immediate {
                dreg: BASE,
                data: Imm::Value(addr),
            } => {
                let Some(Ex::Immediate {
                    dreg,
                    data: Imm::Value(port),
                }) = self.peek(1)
                else {
                    return None;
                };
                if *dreg != BASE + 4 {
                    return None;
                }
                let Ok(Value::Addr(addr)) = value_of(addr, addr_type) else {
                    return None;
                };
                let Ok(Value::Port(port)) = value_of(port, DataType::InetService) else {
                    return None;
                };
                self.at += 2;
                self.nat(BASE + 4)?;
                NatTarget::Addr { proto, addr, port }
            }
            _ => {
                let (key, _) = self.load(BASE).ok()?;
                let Ok(Ex::Lookup {
                    set,
                    sreg: BASE,
                    dreg: Some(BASE),
                    flags: 0,
                }) = self.next()
                else {
                    return None;
                };
                match self.anon_maps.get(set) {
                    Some(targets) => {
                        if !matches!(key, Expr::Numgen { .. } | Expr::JhashSaddr { .. }) {
                            return None;
                        }
                        let targets = targets.clone();
                        self.nat(port_slot)?;
                        NatTarget::NumgenMap {
                            proto,
                            index: key,
                            targets,
                        }
                    }
                    // A named map of addresses, the port an immediate after it.
                    None => {
                        let Ok(Ex::Immediate {
                            dreg,
                            data: Imm::Value(port),
                        }) = self.next()
                        else {
                            return None;
                        };
                        let Ok(Value::Port(port)) = value_of(port, DataType::InetService) else {
                            return None;
                        };
                        if *dreg != BASE + 4 {
                            return None;
                        }
                        self.nat(BASE + 4)?;
                        NatTarget::AddrMap {
                            proto,
                            key,
                            map: set.clone(),
                            port,
                        }
                    }
                }
            }
        };
        Some(Stmt::Dnat(target))
    }

    /// A DNAT of this family with the address in register 1 and the port in `port_slot`.
    /// The kernel adds `MAP_IPS` and `PROTO_SPECIFIED` to the flags itself.
    fn nat(&mut self, port_slot: u32) -> Option<()> {
        let Ok(Ex::Nat {
            ty: NFT_NAT_DNAT,
            family,
            addr: Some((BASE, BASE)),
            proto: Some((proto_min, proto_max)),
            flags,
        }) = self.next()
        else {
            return None;
        };
        let nfproto = match self.family {
            Family::Ip => NFPROTO_IPV4,
            Family::Ip6 => NFPROTO_IPV6,
        };
        let ok = *family == u32::from(nfproto)
            && *proto_min == port_slot
            && *proto_max == port_slot
            && flags & !(NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED) == 0;
        ok.then_some(())
    }

    /// A statement that loads its operand into register 1 onwards and then compares it, looks
    /// it up, or adds it to a set.
    fn load_and_use(&mut self) -> Try<Stmt> {
        let mut parts = Vec::new();
        let mut at = BASE;
        loop {
            let before = self.at;
            match self.load(at) {
                Ok((expr, len)) => {
                    // A concatenated interval set converts `meta l4proto` to big endian.
                    if let Some(Ex::Byteorder {
                        sreg,
                        dreg,
                        op: NFT_BYTEORDER_HTON,
                        len: 1,
                        size: 2,
                    }) = self.peek(0)
                    {
                        if *sreg == at && *dreg == at && expr == Expr::L4Proto {
                            self.at += 1;
                        }
                    }
                    parts.push((expr, len));
                    at += padded(len) / 4;
                }
                Err(miss) if parts.is_empty() => return Err(miss),
                Err(_) => {
                    self.at = before;
                    break;
                }
            }
        }
        let left = if parts.len() == 1 {
            parts[0].0.clone()
        } else {
            Expr::Concat(parts.iter().map(|(e, _)| e.clone()).collect())
        };
        match self.next()? {
            Ex::Lookup {
                set,
                sreg: BASE,
                dreg: None,
                flags,
            } if flags & !NFT_LOOKUP_F_INV == 0 => Ok(Stmt::Lookup {
                left,
                set: set.clone(),
                negate: *flags != 0,
            }),
            Ex::Lookup {
                set,
                sreg: BASE,
                dreg: Some(0),
                flags: 0,
            } => Ok(Stmt::Vmap {
                left,
                map: set.clone(),
            }),
            // `dnat ip to KEY map @MAP`: the map's `addr . port` lands in register 1 onwards.
            Ex::Lookup {
                set,
                sreg: BASE,
                dreg: Some(BASE),
                flags: 0,
            } => {
                let port_slot = BASE + padded(type_len(self.family.addr_type())) / 4;
                match self.nat(port_slot) {
                    Some(()) => Ok(Stmt::Dnat(NatTarget::Map {
                        family: self.family,
                        key: left,
                        map: set.clone(),
                    })),
                    None => miss("a dnat after a data map lookup"),
                }
            }
            Ex::Dynset {
                set,
                op: NFT_DYNSET_OP_UPDATE,
                sreg_key: BASE,
                sreg_data: None,
                extra: None,
            } => Ok(Stmt::Update {
                set: set.clone(),
                key: left,
                data: None,
            }),
            // `update @map { key : address }`: the address an immediate in the next 128-bit
            // register.
            Ex::Immediate {
                dreg,
                data: Imm::Value(bytes),
            } if *dreg == BASE + 4 => {
                let Ok(Value::Addr(addr)) = value_of(bytes, self.family.addr_type()) else {
                    return miss("an update's data that is not an address");
                };
                match self.next()? {
                    Ex::Dynset {
                        set,
                        op: NFT_DYNSET_OP_UPDATE,
                        sreg_key: BASE,
                        sreg_data: Some(data),
                        extra: None,
                    } if *data == BASE + 4 => Ok(Stmt::Update {
                        set: set.clone(),
                        key: left,
                        data: Some(Value::Addr(addr)),
                    }),
                    _ => miss("an update of a map after its data"),
                }
            }
            _ if parts.len() > 1 => {
                self.at -= 1;
                miss("a lookup of the concatenation")
            }
            _ => {
                self.at -= 1;
                let (left, len) = parts.swap_remove(0);
                self.compare(left, len)
            }
        }
    }

    /// `left op constant`, after `left` was loaded (`len` bytes).
    fn compare(&mut self, left: Expr, len: u32) -> Try<Stmt> {
        let cmp = |ex: &Ex| match ex {
            Ex::Cmp {
                sreg: BASE,
                op,
                data,
            } => {
                let op = match *op {
                    NFT_CMP_EQ => CmpOp::Eq,
                    NFT_CMP_NEQ => CmpOp::Ne,
                    _ => return None,
                };
                Some((op, data.clone()))
            }
            _ => None,
        };
        let bitwise = |ex: &Ex| match ex {
            Ex::Bitwise {
                sreg: BASE,
                dreg: BASE,
                op: NFT_BITWISE_BOOL,
                mask,
                xor,
            } if xor.iter().all(|b| *b == 0) && mask.len() == xor.len() => Some(mask.clone()),
            _ => None,
        };
        let expected = |what: &str| Miss(format!("{what} after loading {left:?}"));
        match &left {
            Expr::Saddr(family) | Expr::Daddr(family) => {
                let full = type_len(family.addr_type());
                let next = self.next()?;
                let (op, network, prefix) = if let Some(mask) = bitwise(next) {
                    // Unaligned prefix: load, mask, compare.
                    let (op, data) = cmp(self.next()?).ok_or_else(|| expected("cmp"))?;
                    let prefix = prefix_len(&mask).ok_or_else(|| expected("prefix mask"))?;
                    (op, data, prefix)
                } else {
                    let (op, data) = cmp(next).ok_or_else(|| expected("cmp"))?;
                    (op, data, len * 8)
                };
                if network.len() != len as usize {
                    return miss(format!("{}-byte constant for {left:?}", network.len()));
                }
                let mut bytes = network;
                bytes.resize(full as usize, 0);
                let Ok(Value::Addr(addr)) = value_of(&bytes, family.addr_type()) else {
                    return miss("address constant");
                };
                let right = if prefix == full * 8 {
                    Value::Addr(addr)
                } else {
                    let net = IpNet::new(addr, prefix as u8).map_err(|e| Miss(e.to_string()))?;
                    if net.network() != addr {
                        return miss(format!("prefix {net} with host bits"));
                    }
                    Value::Prefix(net)
                };
                Ok(Stmt::Match { left, op, right })
            }
            // `ct state new` tests the bit, `ct state != new` compares the whole value.
            Expr::CtState | Expr::CtStatus => {
                let ty = left.data_types()[0];
                let next = self.next()?;
                if let Some(bits) = bitwise(next) {
                    match cmp(self.next()?) {
                        Some((CmpOp::Ne, zero)) if zero == [0; 4] => {
                            let right = value_of(&bits, ty).map_err(|e| Miss(e.to_string()))?;
                            Ok(Stmt::Match {
                                left,
                                op: CmpOp::Eq,
                                right,
                            })
                        }
                        _ => miss("conntrack bit test"),
                    }
                } else {
                    match cmp(next) {
                        Some((CmpOp::Ne, bits)) => {
                            let right = value_of(&bits, ty).map_err(|e| Miss(e.to_string()))?;
                            Ok(Stmt::Match {
                                left,
                                op: CmpOp::Ne,
                                right,
                            })
                        }
                        _ => miss("conntrack comparison"),
                    }
                }
            }
            // Fewer bytes than a whole name, none of them zero: a prefix (`iifname "veth*"`).
            Expr::Iifname => {
                let (op, data) = cmp(self.next()?).ok_or_else(|| expected("cmp"))?;
                let right = if data.len() < len as usize {
                    match String::from_utf8(data) {
                        Ok(prefix) if !prefix.is_empty() && !prefix.contains('\0') => {
                            Value::IfacePrefix(prefix)
                        }
                        _ => return miss("interface name prefix"),
                    }
                } else {
                    value_of(&data, DataType::Ifname).map_err(|e| Miss(e.to_string()))?
                };
                Ok(Stmt::Match { left, op, right })
            }
            _ => {
                let ty = left.data_types()[0];
                let (op, data) = cmp(self.next()?).ok_or_else(|| expected("cmp"))?;
                let right = value_of(&data, ty).map_err(|e| Miss(e.to_string()))?;
                Ok(Stmt::Match { left, op, right })
            }
        }
    }

    /// One operand loaded into `slot`: the expression and its length in bytes. Address loads
    /// shorter than the address are the byte-aligned prefix matches.
    fn load(&mut self, slot: u32) -> Try<(Expr, u32)> {
        let start = self.at;
        let result = self.try_load(slot);
        if result.is_err() {
            self.at = start;
        }
        result
    }

    fn try_load(&mut self, slot: u32) -> Try<(Expr, u32)> {
        let family = self.family;
        let full = type_len(family.addr_type());
        let (saddr, daddr) = match family {
            Family::Ip => (12, 16),
            Family::Ip6 => (8, 24),
        };
        match self.next()? {
            Ex::Payload {
                dreg,
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset,
                len,
            } if *dreg == slot && (1..=full).contains(len) => {
                let expr = match *offset {
                    o if o == saddr => Expr::Saddr(family),
                    o if o == daddr => Expr::Daddr(family),
                    _ => return miss(format!("network header payload at offset {offset}")),
                };
                Ok((expr, *len))
            }
            Ex::Payload {
                dreg,
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 2,
                len: 2,
            } if *dreg == slot => Ok((Expr::Dport, 2)),
            Ex::Payload {
                dreg,
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 0,
                len: 2,
            } if *dreg == slot => Ok((Expr::Sport, 2)),
            // `jhash ip saddr`: the address goes to the next 16-byte register, then is hashed.
            Ex::Payload {
                dreg,
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset,
                len,
            } if *dreg > slot && *offset == saddr && *len == full => match self.next()? {
                // The hashed address sits in any register past the hash's own: nft takes the
                // next free 16-byte one, which depends on what the rule loaded before.
                Ex::Hash {
                    sreg,
                    dreg: hash_dreg,
                    len: hashed,
                    modulus,
                    seed: Some(seed),
                    offset: 0,
                    ty: NFT_HASH_JENKINS,
                } if sreg == dreg && *hash_dreg == slot && *hashed == full => Ok((
                    Expr::JhashSaddr {
                        family,
                        modulus: *modulus,
                        seed: *seed,
                    },
                    4,
                )),
                _ => miss("jhash of the source address"),
            },
            Ex::Meta {
                key: NFT_META_L4PROTO,
                dreg: Some(dreg),
                sreg: None,
            } if *dreg == slot => Ok((Expr::L4Proto, 1)),
            Ex::Meta {
                key: NFT_META_IIFNAME,
                dreg: Some(dreg),
                sreg: None,
            } if *dreg == slot => Ok((Expr::Iifname, IFNAMSIZ)),
            Ex::Meta {
                key: NFT_META_MARK,
                dreg: Some(dreg),
                sreg: None,
            } if *dreg == slot => {
                // `meta mark & mask`: a 4-byte and-mask (xor 0) applied in place.
                if let Some(Ex::Bitwise {
                    sreg,
                    dreg,
                    op: NFT_BITWISE_BOOL,
                    mask,
                    xor,
                }) = self.peek(0)
                {
                    if *sreg == slot && *dreg == slot && xor.as_slice() == [0; 4] {
                        if let Ok(mask) = <[u8; 4]>::try_from(mask.as_slice()) {
                            self.at += 1;
                            return Ok((Expr::MarkAnd(u32::from_ne_bytes(mask)), 4));
                        }
                    }
                }
                Ok((Expr::Mark, 4))
            }
            Ex::Ct {
                key,
                dreg,
                direction: None,
            } if *dreg == slot && (*key == NFT_CT_STATE || *key == NFT_CT_STATUS) => {
                let expr = if *key == NFT_CT_STATE {
                    Expr::CtState
                } else {
                    Expr::CtStatus
                };
                Ok((expr, 4))
            }
            Ex::Ct {
                key: NFT_CT_DIRECTION,
                dreg,
                direction: None,
            } if *dreg == slot => Ok((Expr::CtDirection, 1)),
            Ex::Ct {
                key,
                dreg,
                direction: Some(IP_CT_DIR_ORIGINAL),
            } if *dreg == slot
                && *key
                    == match family {
                        Family::Ip => NFT_CT_DST_IP,
                        Family::Ip6 => NFT_CT_DST_IP6,
                    } =>
            {
                Ok((Expr::CtOriginalDaddr(family), full))
            }
            Ex::Fib {
                dreg,
                result: NFT_FIB_RESULT_ADDRTYPE,
                flags,
            } if *dreg == slot => match *flags {
                NFTA_FIB_F_SADDR => Ok((Expr::FibType(FibAddr::Saddr), 4)),
                NFTA_FIB_F_DADDR => Ok((Expr::FibType(FibAddr::Daddr), 4)),
                _ => miss(format!("fib flags {flags:#x}")),
            },
            Ex::Numgen {
                dreg,
                modulus,
                ty,
                offset: 0,
            } if *dreg == slot => {
                let mode = match *ty {
                    NFT_NG_RANDOM => NumgenMode::Random,
                    NFT_NG_INCREMENTAL => NumgenMode::Inc,
                    _ => return miss(format!("numgen type {ty}")),
                };
                Ok((
                    Expr::Numgen {
                        mode,
                        modulus: *modulus,
                    },
                    4,
                ))
            }
            _ => {
                self.at -= 1;
                miss(format!("a load into register {slot}"))
            }
        }
    }
}

/// The length of a contiguous network mask, or `None` if it is not one.
fn prefix_len(mask: &[u8]) -> Option<u32> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let expected: Vec<u8> = (0..mask.len() as u32)
        .map(|i| {
            let bits = ones.saturating_sub(i * 8).min(8);
            (0xffu16 << (8 - bits)) as u8
        })
        .collect();
    (expected == mask).then_some(ones)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_prefixes_only_when_contiguous() {
        assert_eq!(prefix_len(&[0xff, 0xf0, 0, 0]), Some(12));
        assert_eq!(prefix_len(&[0, 0, 0, 0]), Some(0));
        assert_eq!(prefix_len(&[0xff; 4]), Some(32));
        assert_eq!(prefix_len(&[0xff, 0x0f, 0, 0]), None);
        assert_eq!(prefix_len(&[0xf0, 0xff, 0, 0]), None);
    }

    #[test]
    fn registers_normalise_to_32_bit_slots() {
        assert_eq!(slot(NFT_REG_1).ok(), Some(8));
        assert_eq!(slot(2).ok(), Some(12));
        assert_eq!(slot(13).ok(), Some(13));
        assert_eq!(slot(0).ok(), Some(0));
        assert!(slot(99).is_err());
    }
}
