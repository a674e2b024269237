//! Rule bodies: `ir::Stmt`s as nf_tables expression lists (`NFTA_RULE_EXPRESSIONS`), with the
//! registers, operand sizes and byte orders nft 1.0.6 uses for the same statement, so that
//! `nft list` reconstructs the same text. Every statement loads its operand into register 1 (a
//! concatenation spreads over consecutive 32-bit registers, one or more per part), then
//! compares, looks up or acts on it. Sans-IO, like the rest of `encode`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kube_nft_compiler::ir::{
    CmpOp, Expr, Family, FibAddr, NatTarget, NumgenMode, Stmt, Value, Verdict,
};

use super::attr;
use super::encode::{padded, put_data_value, put_verdict, value_bytes, ErrorKind, SetInfo};
use super::sys::*;

/// What the expressions of one rule may refer to.
pub(crate) struct Context<'a> {
    /// The table's family: payload offsets, NAT family and the reject code depend on it.
    pub(crate) family: Family,
    /// The table the rule is in.
    pub(crate) table: &'a str,
    /// Sets created earlier in the batch.
    pub(crate) sets: &'a BTreeMap<(Family, String, String), SetInfo>,
    /// Ids of the anonymous maps created for this rule's numgen DNATs, in statement order.
    pub(crate) anon_maps: &'a [u32],
}

impl Context<'_> {
    fn set(&self, name: &str) -> Option<SetInfo> {
        self.sets
            .get(&(self.family, self.table.to_owned(), name.to_owned()))
            .copied()
    }
}

/// The first 32-bit register; statements start loading here (it is also `NFT_REG_1`).
const BASE: u32 = NFT_REG32_00;

/// The register number to put on the wire for a 32-bit register slot. The kernel accepts both
/// numberings and dumps a slot that starts a 16-byte register under the 16-byte name
/// (`NFT_REG_1` for `NFT_REG32_00`, `NFT_REG_2` for `NFT_REG32_04`, …); nft does the same.
fn reg(slot: u32) -> u32 {
    let index = slot - NFT_REG32_00;
    if index.is_multiple_of(4) {
        NFT_REG_1 + index / 4
    } else {
        slot
    }
}

/// Writes the whole `NFTA_RULE_EXPRESSIONS` list for the statements.
pub(crate) fn put_expressions(
    buf: &mut Vec<u8>,
    ctx: &Context<'_>,
    stmts: &[Stmt],
) -> Result<(), ErrorKind> {
    let list = attr::nest_start(buf, NFTA_RULE_EXPRESSIONS);
    let mut anon_maps = ctx.anon_maps.iter();
    for stmt in stmts {
        put_stmt(buf, ctx, stmt, &mut anon_maps)?;
    }
    attr::nest_end(buf, list).map_err(|_| ErrorKind::TooLarge)
}

fn put_stmt(
    buf: &mut Vec<u8>,
    ctx: &Context<'_>,
    stmt: &Stmt,
    anon_maps: &mut std::slice::Iter<'_, u32>,
) -> Result<(), ErrorKind> {
    match stmt {
        Stmt::Match { left, op, right } => put_match(buf, ctx, left, *op, right),
        Stmt::Lookup { left, set, negate } => {
            let info = ctx.set(set);
            let interval_concat = info.is_some_and(|i| i.interval_concat);
            load(buf, ctx, left, BASE, interval_concat)?;
            let flags = if *negate { NFT_LOOKUP_F_INV } else { 0 };
            lookup(buf, set, info.and_then(|i| i.id), None, flags);
            Ok(())
        }
        Stmt::Vmap { left, map } => {
            let info = ctx.set(map);
            let interval_concat = info.is_some_and(|i| i.interval_concat);
            load(buf, ctx, left, BASE, interval_concat)?;
            lookup(buf, map, info.and_then(|i| i.id), Some(NFT_REG_VERDICT), 0);
            Ok(())
        }
        // `meta mark set meta mark | bits` is `(mark & ~bits) ^ bits`; `^ bits` is
        // `(mark & 0xffffffff) ^ bits`: nft expresses both with one mask-and-xor bitwise.
        Stmt::MarkOr(bits) => {
            mark_set(buf, !bits, *bits);
            Ok(())
        }
        Stmt::MarkXor(bits) => {
            mark_set(buf, u32::MAX, *bits);
            Ok(())
        }
        // nft: the key in register 1 onwards, a map's data (a constant) in the next 128-bit
        // register, which is free because a key of this kind is at most one address long.
        Stmt::Update { set, key, data } => {
            load(buf, ctx, key, BASE, false)?;
            if let Some(data) = data {
                let bytes = match data {
                    Value::Addr(addr) if Family::of(*addr) == ctx.family => addr_octets(*addr),
                    other => {
                        return Err(ErrorKind::Unsupported(format!(
                            "update data {other:?} (only an address of the table's family)"
                        )))
                    }
                };
                immediate_value(buf, reg(BASE + 4), &bytes);
            }
            let id = ctx.set(set).and_then(|i| i.id);
            expr(buf, "dynset", |buf| {
                attr::put_strz(buf, NFTA_DYNSET_SET_NAME, set);
                if let Some(id) = id {
                    attr::put_be32(buf, NFTA_DYNSET_SET_ID, id);
                }
                attr::put_be32(buf, NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
                attr::put_be32(buf, NFTA_DYNSET_SREG_KEY, reg(BASE));
                if data.is_some() {
                    attr::put_be32(buf, NFTA_DYNSET_SREG_DATA, reg(BASE + 4));
                }
            });
            Ok(())
        }
        Stmt::Dnat(NatTarget::Addr { proto, addr, port }) => {
            if Family::of(*addr) != ctx.family {
                return Err(wrong_family(&Value::Addr(*addr), ctx.family));
            }
            match_l4proto(buf, proto.number());
            // Address in register 1, port in register 2, each an immediate.
            let addr_bytes = addr_octets(*addr);
            immediate_value(buf, reg(BASE), &addr_bytes);
            nat_to_port(buf, ctx.family, *port);
            Ok(())
        }
        Stmt::Dnat(NatTarget::NumgenMap {
            proto,
            index,
            targets,
        }) => {
            if let Some((addr, _)) = targets.iter().find(|(a, _)| Family::of(*a) != ctx.family) {
                return Err(wrong_family(&Value::Addr(*addr), ctx.family));
            }
            let Some(id) = anon_maps.next() else {
                return Err(ErrorKind::Unsupported(
                    "numgen dnat without its anonymous map".into(),
                ));
            };
            match_l4proto(buf, proto.number());
            load(buf, ctx, index, BASE, false)?;
            // The map's data `addr . port` lands in register 1 onwards: the address in the
            // first 4 (IPv4) or 16 (IPv6) bytes, the port in the next 32-bit register.
            lookup(buf, "__map%d", Some(*id), Some(reg(BASE)), 0);
            let addr_len = ctx.family.addr_type();
            let port_slot = BASE + padded(super::encode::type_len(addr_len)) / 4;
            // nft sends no NAT flags here; the kernel sets PROTO_SPECIFIED itself when a
            // proto register is given.
            nat(buf, ctx.family, reg(BASE), reg(port_slot), 0);
            Ok(())
        }
        // nft: the key into register 1 onwards, `lookup … dreg 1` puts `addr . port` there, the
        // port in the 32-bit register after the address.
        Stmt::Dnat(NatTarget::Map { key, map, .. }) => {
            let id = ctx.set(map).and_then(|i| i.id);
            load(buf, ctx, key, BASE, false)?;
            lookup(buf, map, id, Some(reg(BASE)), 0);
            let addr_len = ctx.family.addr_type();
            let port_slot = BASE + padded(super::encode::type_len(addr_len)) / 4;
            nat(buf, ctx.family, reg(BASE), reg(port_slot), 0);
            Ok(())
        }
        // nft: `lookup … dreg 1` puts the address in register 1, the port is an immediate in the
        // next 128-bit register.
        Stmt::Dnat(NatTarget::AddrMap {
            proto,
            key,
            map,
            port,
        }) => {
            let id = ctx.set(map).and_then(|i| i.id);
            match_l4proto(buf, proto.number());
            load(buf, ctx, key, BASE, false)?;
            lookup(buf, map, id, Some(reg(BASE)), 0);
            nat_to_port(buf, ctx.family, *port);
            Ok(())
        }
        Stmt::Masquerade { fully_random } => {
            expr(buf, "masq", |buf| {
                if *fully_random {
                    attr::put_be32(buf, NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY);
                }
            });
            Ok(())
        }
        Stmt::Reject => {
            // `reject` in an ip/ip6 table is an ICMP(v6) port unreachable. The ICMPX codes of
            // the inet family mean something else here (ICMPX 1 lists as host-unreachable).
            let code = match ctx.family {
                Family::Ip => ICMP_PORT_UNREACH,
                Family::Ip6 => ICMPV6_PORT_UNREACH,
            };
            expr(buf, "reject", |buf| {
                attr::put_be32(buf, NFTA_REJECT_TYPE, NFT_REJECT_ICMP_UNREACH);
                attr::put(buf, NFTA_REJECT_ICMP_CODE, &[code]);
            });
            Ok(())
        }
        Stmt::Verdict(verdict) => {
            immediate_verdict(buf, verdict);
            Ok(())
        }
    }
}

/// `left op right`.
fn put_match(
    buf: &mut Vec<u8>,
    ctx: &Context<'_>,
    left: &Expr,
    op: CmpOp,
    right: &Value,
) -> Result<(), ErrorKind> {
    let cmp_op = match op {
        CmpOp::Eq => NFT_CMP_EQ,
        CmpOp::Ne => NFT_CMP_NEQ,
    };
    match (left, right) {
        (Expr::Saddr(family) | Expr::Daddr(family), Value::Prefix(net)) => {
            if Family::of_net(net) != *family || *family != ctx.family {
                return Err(wrong_family(right, ctx.family));
            }
            let offset = addr_offset(left, *family);
            let full = net.max_prefix_len();
            let prefix = net.prefix_len();
            let network = addr_octets(net.network());
            if prefix == full {
                payload(
                    buf,
                    BASE,
                    NFT_PAYLOAD_NETWORK_HEADER,
                    offset,
                    u32::from(full / 8),
                );
                cmp(buf, BASE, cmp_op, &network);
            } else if prefix > 0 && prefix % 8 == 0 {
                // Byte-aligned prefix: nft loads and compares only the prefix bytes.
                let bytes = u32::from(prefix / 8);
                payload(buf, BASE, NFT_PAYLOAD_NETWORK_HEADER, offset, bytes);
                cmp(buf, BASE, cmp_op, &network[..bytes as usize]);
            } else {
                let len = u32::from(full / 8);
                payload(buf, BASE, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
                let mask = addr_octets(net.netmask());
                bitwise(buf, BASE, &mask, &vec![0; mask.len()]);
                cmp(buf, BASE, cmp_op, &network);
            }
            Ok(())
        }
        // A conntrack bit: `ct state new` tests the bit (`& 8 != 0`); `ct state != new`
        // compares the whole value, as nft 1.0.6 encodes them.
        (Expr::CtState | Expr::CtStatus, _) => {
            let ty = left.data_types()[0];
            let bits = value_bytes(right, ty)?;
            load(buf, ctx, left, BASE, false)?;
            match op {
                CmpOp::Eq => {
                    bitwise(buf, BASE, &bits, &[0; 4]);
                    cmp(buf, BASE, NFT_CMP_NEQ, &[0; 4]);
                }
                CmpOp::Ne => cmp(buf, BASE, NFT_CMP_NEQ, &bits),
            }
            Ok(())
        }
        // `iifname "veth*"`: nft compares only the prefix's bytes (no terminating zero), so
        // any name that starts with them matches; a whole name is compared zero-padded.
        (Expr::Iifname, Value::IfacePrefix(prefix)) => {
            load(buf, ctx, left, BASE, false)?;
            cmp(buf, BASE, cmp_op, prefix.as_bytes());
            Ok(())
        }
        (Expr::Concat(_), _) => Err(ErrorKind::Unsupported(
            "comparing a concatenation with a constant".into(),
        )),
        _ => {
            let types = left.data_types();
            let ty = types[0];
            let value = value_bytes(right, ty)?;
            load(buf, ctx, left, BASE, false)?;
            cmp(buf, BASE, cmp_op, &value);
            Ok(())
        }
    }
}

/// Loads `expr` into the registers starting at `slot`; returns the loaded length in bytes.
/// `interval_concat`: the value is a key into a concatenated interval set, whose fields the
/// kernel compares as big-endian numbers, so host-order parts get a byteorder conversion (nft
/// emits it for `meta l4proto`; on one byte it changes nothing, but nft's listing expects it).
fn load(
    buf: &mut Vec<u8>,
    ctx: &Context<'_>,
    source: &Expr,
    slot: u32,
    interval_concat: bool,
) -> Result<u32, ErrorKind> {
    let len = match source {
        Expr::Saddr(family) | Expr::Daddr(family) => {
            if *family != ctx.family {
                return Err(ErrorKind::Unsupported(format!(
                    "{family} address in a {} table",
                    ctx.family
                )));
            }
            let len = super::encode::type_len(family.addr_type());
            payload(
                buf,
                slot,
                NFT_PAYLOAD_NETWORK_HEADER,
                addr_offset(source, *family),
                len,
            );
            len
        }
        Expr::L4Proto => {
            meta(buf, slot, NFT_META_L4PROTO);
            1
        }
        // `th dport`: the destination port sits at offset 2 of the TCP, UDP and SCTP headers.
        Expr::Dport => {
            payload(buf, slot, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            2
        }
        Expr::Sport => {
            payload(buf, slot, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2);
            2
        }
        Expr::Mark => {
            meta(buf, slot, NFT_META_MARK);
            4
        }
        Expr::MarkAnd(mask) => {
            meta(buf, slot, NFT_META_MARK);
            bitwise(buf, slot, &mask.to_ne_bytes(), &[0; 4]);
            4
        }
        Expr::Iifname => {
            meta(buf, slot, NFT_META_IIFNAME);
            super::encode::IFNAMSIZ
        }
        Expr::CtState | Expr::CtStatus => {
            let key = if *source == Expr::CtState {
                NFT_CT_STATE
            } else {
                NFT_CT_STATUS
            };
            expr_ct(buf, slot, key, None);
            4
        }
        // One byte, `IP_CT_DIR_ORIGINAL` (0) or `IP_CT_DIR_REPLY` (1).
        Expr::CtDirection => {
            expr_ct(buf, slot, NFT_CT_DIRECTION, None);
            1
        }
        Expr::CtOriginalDaddr(family) => {
            if *family != ctx.family {
                return Err(ErrorKind::Unsupported(format!(
                    "{family} address in a {} table",
                    ctx.family
                )));
            }
            let key = match family {
                Family::Ip => NFT_CT_DST_IP,
                Family::Ip6 => NFT_CT_DST_IP6,
            };
            expr_ct(buf, slot, key, Some(IP_CT_DIR_ORIGINAL));
            super::encode::type_len(family.addr_type())
        }
        Expr::FibType(addr) => {
            let flags = match addr {
                FibAddr::Saddr => NFTA_FIB_F_SADDR,
                FibAddr::Daddr => NFTA_FIB_F_DADDR,
            };
            expr(buf, "fib", |buf| {
                attr::put_be32(buf, NFTA_FIB_DREG, reg(slot));
                attr::put_be32(buf, NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                attr::put_be32(buf, NFTA_FIB_FLAGS, flags);
            });
            4
        }
        Expr::Numgen { mode, modulus } => {
            let ty = match mode {
                NumgenMode::Random => NFT_NG_RANDOM,
                NumgenMode::Inc => NFT_NG_INCREMENTAL,
            };
            expr(buf, "numgen", |buf| {
                attr::put_be32(buf, NFTA_NG_DREG, reg(slot));
                attr::put_be32(buf, NFTA_NG_MODULUS, *modulus);
                attr::put_be32(buf, NFTA_NG_TYPE, ty);
                attr::put_be32(buf, NFTA_NG_OFFSET, 0);
            });
            4
        }
        // nft loads the hashed address into the next 16-byte register and hashes it into this
        // one.
        Expr::JhashSaddr {
            family,
            modulus,
            seed,
        } => {
            if *family != ctx.family {
                return Err(ErrorKind::Unsupported(format!(
                    "jhash of a {family} address in a {} table",
                    ctx.family
                )));
            }
            // The first whole 16-byte register past this one's, as nft allocates it
            // (register 2 for a hash alone, register 3 after `ip daddr . meta l4proto . th
            // dport`).
            let source = (slot + 4).next_multiple_of(4);
            let len = super::encode::type_len(family.addr_type());
            payload(
                buf,
                source,
                NFT_PAYLOAD_NETWORK_HEADER,
                addr_offset(&Expr::Saddr(*family), *family),
                len,
            );
            expr(buf, "hash", |buf| {
                attr::put_be32(buf, NFTA_HASH_SREG, reg(source));
                attr::put_be32(buf, NFTA_HASH_DREG, reg(slot));
                attr::put_be32(buf, NFTA_HASH_LEN, len);
                attr::put_be32(buf, NFTA_HASH_MODULUS, *modulus);
                attr::put_be32(buf, NFTA_HASH_SEED, *seed);
                attr::put_be32(buf, NFTA_HASH_OFFSET, 0);
                attr::put_be32(buf, NFTA_HASH_TYPE, NFT_HASH_JENKINS);
            });
            4
        }
        Expr::Concat(parts) => {
            let mut at = slot;
            for part in parts {
                if matches!(part, Expr::Concat(_)) {
                    return Err(ErrorKind::Unsupported("nested concatenation".into()));
                }
                let len = load(buf, ctx, part, at, false)?;
                if interval_concat && *part == Expr::L4Proto {
                    expr(buf, "byteorder", |buf| {
                        attr::put_be32(buf, NFTA_BYTEORDER_SREG, reg(at));
                        attr::put_be32(buf, NFTA_BYTEORDER_DREG, reg(at));
                        attr::put_be32(buf, NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON);
                        attr::put_be32(buf, NFTA_BYTEORDER_LEN, len);
                        attr::put_be32(buf, NFTA_BYTEORDER_SIZE, 2);
                    });
                }
                at += padded(len) / 4;
            }
            if at > NFT_REG32_00 + 16 {
                return Err(ErrorKind::Unsupported(
                    "a concatenation longer than the 64 bytes of registers".into(),
                ));
            }
            (at - slot) * 4
        }
    };
    Ok(len)
}

/// Offset of `ip saddr` / `ip daddr` / `ip6 saddr` / `ip6 daddr` in the network header.
fn addr_offset(expr: &Expr, family: Family) -> u32 {
    let daddr = matches!(expr, Expr::Daddr(_));
    match (family, daddr) {
        (Family::Ip, false) => 12,
        (Family::Ip, true) => 16,
        (Family::Ip6, false) => 8,
        (Family::Ip6, true) => 24,
    }
}

/// The DNAT to the address in register 1 and the constant `port`, an immediate in the next
/// 128-bit register (how nft writes `dnat to ADDR:PORT` and `dnat to KEY map @m : PORT`).
fn nat_to_port(buf: &mut Vec<u8>, family: Family, port: u16) {
    immediate_value(buf, reg(BASE + 4), &port.to_be_bytes());
    nat(
        buf,
        family,
        reg(BASE),
        reg(BASE + 4),
        NF_NAT_RANGE_PROTO_SPECIFIED,
    );
}

fn addr_octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn wrong_family(value: &Value, family: Family) -> ErrorKind {
    ErrorKind::Value {
        value: format!("{value:?}"),
        ty: family.addr_type().keyword(),
    }
}

/// `meta l4proto P` (the transport match nft requires before a port in a NAT target).
fn match_l4proto(buf: &mut Vec<u8>, number: u8) {
    meta(buf, BASE, NFT_META_L4PROTO);
    cmp(buf, BASE, NFT_CMP_EQ, &[number]);
}

/// `meta mark set (meta mark & mask) ^ xor`.
fn mark_set(buf: &mut Vec<u8>, mask: u32, xor: u32) {
    meta(buf, BASE, NFT_META_MARK);
    bitwise(buf, BASE, &mask.to_ne_bytes(), &xor.to_ne_bytes());
    expr(buf, "meta", |buf| {
        attr::put_be32(buf, NFTA_META_KEY, NFT_META_MARK);
        attr::put_be32(buf, NFTA_META_SREG, reg(BASE));
    });
}

/// One expression: `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { … } }`. An expression
/// holds a dozen small attributes, far below the 64 KiB nest limit.
fn expr(buf: &mut Vec<u8>, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
    let elem = attr::nest_start(buf, NFTA_LIST_ELEM);
    attr::put_strz(buf, NFTA_EXPR_NAME, name);
    let data = attr::nest_start(buf, NFTA_EXPR_DATA);
    body(buf);
    let _ = attr::nest_end(buf, data);
    let _ = attr::nest_end(buf, elem);
}

fn payload(buf: &mut Vec<u8>, slot: u32, base: u32, offset: u32, len: u32) {
    expr(buf, "payload", |buf| {
        attr::put_be32(buf, NFTA_PAYLOAD_DREG, reg(slot));
        attr::put_be32(buf, NFTA_PAYLOAD_BASE, base);
        attr::put_be32(buf, NFTA_PAYLOAD_OFFSET, offset);
        attr::put_be32(buf, NFTA_PAYLOAD_LEN, len);
    });
}

fn meta(buf: &mut Vec<u8>, slot: u32, key: u32) {
    expr(buf, "meta", |buf| {
        attr::put_be32(buf, NFTA_META_KEY, key);
        attr::put_be32(buf, NFTA_META_DREG, reg(slot));
    });
}

/// `ct KEY`, or with a direction `ct original|reply KEY` (a tuple field of that direction).
fn expr_ct(buf: &mut Vec<u8>, slot: u32, key: u32, direction: Option<u8>) {
    expr(buf, "ct", |buf| {
        attr::put_be32(buf, NFTA_CT_KEY, key);
        attr::put_be32(buf, NFTA_CT_DREG, reg(slot));
        if let Some(direction) = direction {
            attr::put(buf, NFTA_CT_DIRECTION, &[direction]);
        }
    });
}

/// `reg = (reg & mask) ^ xor`, in place.
fn bitwise(buf: &mut Vec<u8>, slot: u32, mask: &[u8], xor: &[u8]) {
    expr(buf, "bitwise", |buf| {
        attr::put_be32(buf, NFTA_BITWISE_SREG, reg(slot));
        attr::put_be32(buf, NFTA_BITWISE_DREG, reg(slot));
        attr::put_be32(buf, NFTA_BITWISE_OP, NFT_BITWISE_BOOL);
        attr::put_be32(buf, NFTA_BITWISE_LEN, mask.len() as u32);
        put_data_value(buf, NFTA_BITWISE_MASK, mask);
        put_data_value(buf, NFTA_BITWISE_XOR, xor);
    });
}

fn cmp(buf: &mut Vec<u8>, slot: u32, op: u32, data: &[u8]) {
    expr(buf, "cmp", |buf| {
        attr::put_be32(buf, NFTA_CMP_SREG, reg(slot));
        attr::put_be32(buf, NFTA_CMP_OP, op);
        put_data_value(buf, NFTA_CMP_DATA, data);
    });
}

fn lookup(buf: &mut Vec<u8>, set: &str, id: Option<u32>, dreg: Option<u32>, flags: u32) {
    expr(buf, "lookup", |buf| {
        attr::put_strz(buf, NFTA_LOOKUP_SET, set);
        attr::put_be32(buf, NFTA_LOOKUP_SREG, reg(BASE));
        if let Some(dreg) = dreg {
            attr::put_be32(buf, NFTA_LOOKUP_DREG, dreg);
        }
        if let Some(id) = id {
            attr::put_be32(buf, NFTA_LOOKUP_SET_ID, id);
        }
        if flags != 0 {
            attr::put_be32(buf, NFTA_LOOKUP_FLAGS, flags);
        }
    });
}

fn immediate_value(buf: &mut Vec<u8>, dreg: u32, data: &[u8]) {
    expr(buf, "immediate", |buf| {
        attr::put_be32(buf, NFTA_IMMEDIATE_DREG, dreg);
        put_data_value(buf, NFTA_IMMEDIATE_DATA, data);
    });
}

fn immediate_verdict(buf: &mut Vec<u8>, verdict: &Verdict) {
    expr(buf, "immediate", |buf| {
        attr::put_be32(buf, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        let data = attr::nest_start(buf, NFTA_IMMEDIATE_DATA);
        put_verdict(buf, verdict);
        let _ = attr::nest_end(buf, data);
    });
}

fn nat(buf: &mut Vec<u8>, family: Family, addr_reg: u32, proto_reg: u32, flags: u32) {
    let nfproto = match family {
        Family::Ip => u32::from(NFPROTO_IPV4),
        Family::Ip6 => u32::from(NFPROTO_IPV6),
    };
    expr(buf, "nat", |buf| {
        attr::put_be32(buf, NFTA_NAT_TYPE, NFT_NAT_DNAT);
        attr::put_be32(buf, NFTA_NAT_FAMILY, nfproto);
        attr::put_be32(buf, NFTA_NAT_REG_ADDR_MIN, addr_reg);
        attr::put_be32(buf, NFTA_NAT_REG_PROTO_MIN, proto_reg);
        if flags != 0 {
            attr::put_be32(buf, NFTA_NAT_FLAGS, flags);
        }
    });
}
