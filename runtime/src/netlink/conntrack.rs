//! The conntrack table over ctnetlink (`NFNL_SUBSYS_CTNETLINK`), sans-IO: [`dump_request`]
//! encodes an `IPCTNL_MSG_CT_GET` dump of one family, filtered in the kernel by protocol
//! (`CTA_FILTER` with `CTA_FILTER_F_CTA_PROTO_NUM` over a `CTA_TUPLE_ORIG` that carries only the
//! protocol number, kernel ≥ 5.8), zone (`CTA_ZONE`) and mark (`CTA_MARK`/`CTA_MARK_MASK`);
//! [`entry`] decodes each `IPCTNL_MSG_CT_NEW` reply into a typed [`Entry`] (both tuples, status,
//! zone, mark, id, timeout); [`delete_request`] encodes an `IPCTNL_MSG_CT_DELETE` of exactly one
//! entry. Kernel quirks this follows (net/netfilter/nf_conntrack_netlink.c): the filter flags
//! are a *host-order* `NLA_U32` (`nla_get_u32`), while every other integer is big-endian; the
//! filter needs a concrete family (IPv4 or IPv6, else `EOPNOTSUPP`) and matches ports only for
//! TCP and UDP, so SCTP is filtered by protocol alone; a dump walks the whole hash table, which
//! is shared by every network namespace, filling one reply buffer per `recvmsg` under
//! per-bucket locks, so a filter saves serialising and copying, not the walk. A delete looks the
//! entry up by its original tuple in its zone and, with `CTA_ID`, only deletes the entry that
//! id names (else `ENOENT`): a flow deleted and re-created in between, now DNATed afresh, is
//! left alone. A zone applied to one direction only (`CTA_TUPLE_ZONE`) is sent inside the
//! original tuple when it is the original direction's, and not at all when it is the reply's,
//! since the lookup is by the original tuple. Nothing here opens a socket; [`super::socket`]
//! sends these.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kube_nft_compiler::conntrack::{Flow, Tuple};
use kube_nft_compiler::ir::Family;

use super::attr::{nest_end, nest_start, pad, put, put_be32};
use super::decode::{Attrs, Error};
use super::sys::{NFNETLINK_V0, NFPROTO_IPV4, NFPROTO_IPV6, NLM_F_ACK, NLM_F_REQUEST};

/// `NFNL_SUBSYS_CTNETLINK` (linux/netfilter/nfnetlink.h).
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;

// enum cntl_msg_types (linux/netfilter/nfnetlink_conntrack.h)
/// `IPCTNL_MSG_CT_NEW`: what a dump answers with, one message per entry.
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
/// `IPCTNL_MSG_CT_GET`.
pub const IPCTNL_MSG_CT_GET: u16 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_MARK_MASK: u16 = 21;
const CTA_FILTER: u16 = 25;

// enum ctattr_tuple, ctattr_ip, ctattr_l4proto
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

// enum ctattr_filter, and the flag bits of net/netfilter/nf_internals.h (not exported in the
// UAPI headers, but ABI: libnetfilter_conntrack defines the same numbers).
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;

/// Size of `struct nlmsghdr` plus `struct nfgenmsg`.
const HEADERS: usize = 20;

/// Protocols whose tuples carry ports (`nf_ct_port_tuple_to_nlattr`): TCP, UDP, DCCP, SCTP,
/// UDP-Lite. The others (ICMP: id, type, code; GRE: keys) are kept without ports.
const PORTED: [u8; 5] = [6, 17, 33, 132, 136];

/// `enum ip_conntrack_status` (linux/netfilter/nf_conntrack_common.h): the entry's status
/// bits, as the kernel reports them in `CTA_STATUS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status(pub u32);

impl Status {
    /// `IPS_EXPECTED`: a related flow (an FTP data connection).
    pub const EXPECTED: u32 = 1 << 0;
    /// `IPS_SEEN_REPLY`: packets went both ways.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// `IPS_ASSURED`.
    pub const ASSURED: u32 = 1 << 2;
    /// `IPS_CONFIRMED`: in the table (every dumped entry).
    pub const CONFIRMED: u32 = 1 << 3;
    /// `IPS_SRC_NAT`.
    pub const SRC_NAT: u32 = 1 << 4;
    /// `IPS_DST_NAT`: the first packet was DNATed.
    pub const DST_NAT: u32 = 1 << 5;
    /// `IPS_DYING`: being deleted.
    pub const DYING: u32 = 1 << 9;
    /// `IPS_OFFLOAD`: in a flowtable; the kernel then omits the timeout.
    pub const OFFLOAD: u32 = 1 << 14;

    const NAMES: [(u32, &'static str); 8] = [
        (Status::EXPECTED, "EXPECTED"),
        (Status::SEEN_REPLY, "SEEN_REPLY"),
        (Status::ASSURED, "ASSURED"),
        (Status::CONFIRMED, "CONFIRMED"),
        (Status::SRC_NAT, "SRC_NAT"),
        (Status::DST_NAT, "DST_NAT"),
        (Status::DYING, "DYING"),
        (Status::OFFLOAD, "OFFLOAD"),
    ];

    /// Whether every bit of `bits` is set.
    pub fn contains(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = Status::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| (*name).to_owned())
            .collect();
        let known = Status::NAMES.iter().fold(0, |acc, (bit, _)| acc | bit);
        if self.0 & !known != 0 {
            names.push(format!("{:#x}", self.0 & !known));
        }
        if names.is_empty() {
            f.write_str("0")
        } else {
            f.write_str(&names.join("|"))
        }
    }
}

/// Which directions a conntrack zone applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZoneDirection {
    /// Both (`CTA_ZONE`; what `ct zone set` and `conntrack -w` make).
    Both,
    /// The original direction only (`CTA_TUPLE_ZONE` in the original tuple).
    Original,
    /// The reply direction only (`CTA_TUPLE_ZONE` in the reply tuple).
    Reply,
}

/// A conntrack zone other than the default 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zone {
    /// The zone id.
    pub id: u16,
    /// The directions it applies to.
    pub direction: ZoneDirection,
}

/// One conntrack entry, as a dump reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The family (`nfgen_family`).
    pub family: Family,
    /// Protocol and both tuples.
    pub flow: Flow,
    /// `CTA_STATUS`.
    pub status: Status,
    /// The zone, if not the default one.
    pub zone: Option<Zone>,
    /// `CTA_MARK` (0 when the kernel has no mark support).
    pub mark: u32,
    /// `CTA_ID`: the kernel's id of this entry (a hash of its address and tuple), stable
    /// for its lifetime.
    pub id: Option<u32>,
    /// `CTA_TIMEOUT`: seconds left (absent for offloaded entries).
    pub timeout: Option<u32>,
}

/// What a dump asks the kernel to filter on, besides the family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpFilter {
    /// Only entries of this IP protocol (`CTA_FILTER`, kernel ≥ 5.8).
    pub proto: Option<u8>,
    /// Only entries in this zone (`CTA_ZONE`, kernel ≥ 5.8 for dumps).
    pub zone: Option<u16>,
    /// Only entries whose mark, masked with the second value, equals the first (`CTA_MARK`,
    /// `CTA_MARK_MASK`).
    pub mark: Option<(u32, u32)>,
}

impl DumpFilter {
    /// Entries of one protocol.
    pub fn proto(proto: u8) -> DumpFilter {
        DumpFilter {
            proto: Some(proto),
            ..DumpFilter::default()
        }
    }

    /// Whether this asks for anything beyond the family.
    pub fn is_empty(&self) -> bool {
        *self == DumpFilter::default()
    }

    /// Whether `entry` passes this filter: the same test in user space, for kernels that
    /// ignore a filter they do not know.
    pub fn matches(&self, entry: &Entry) -> bool {
        let zone = entry.zone.map_or(0, |z| z.id);
        self.proto.is_none_or(|p| p == entry.flow.proto)
            && self.zone.is_none_or(|z| z == zone)
            && self.mark.is_none_or(|(v, m)| entry.mark & m == v)
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::Ip => NFPROTO_IPV4,
        Family::Ip6 => NFPROTO_IPV6,
    }
}

/// A message header (`nlmsghdr`, `nfgenmsg`) with sequence number and port id 0: the socket
/// sets the sequence number. The length is written by [`finish`].
fn header(msg_type: u16, flags: u16, family: Family) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[nfproto(family), NFNETLINK_V0, 0, 0]);
    buf
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    pad(&mut buf);
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// Closes a nest. Conntrack requests are a few hundred bytes, far below the 64 KiB a nest
/// can describe.
fn close(buf: &mut [u8], start: usize) {
    nest_end(buf, start).expect("a conntrack request is small");
}

fn put_be16(buf: &mut Vec<u8>, ty: u16, value: u16) {
    put(buf, ty, &value.to_be_bytes());
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP` for the entries of `family` that pass `filter`.
pub fn dump_request(family: Family, filter: &DumpFilter) -> Vec<u8> {
    let mut buf = header(IPCTNL_MSG_CT_GET, NLM_F_DUMP, family);
    if let Some((value, mask)) = filter.mark {
        put_be32(&mut buf, CTA_MARK, value);
        put_be32(&mut buf, CTA_MARK_MASK, mask);
    }
    if let Some(zone) = filter.zone {
        put_be16(&mut buf, CTA_ZONE, zone);
    }
    if let Some(proto) = filter.proto {
        // The tuple the filter compares against: only the protocol number is read, as the
        // flags ask.
        let orig = nest_start(&mut buf, CTA_TUPLE_ORIG);
        let proto_nest = nest_start(&mut buf, CTA_TUPLE_PROTO);
        put(&mut buf, CTA_PROTO_NUM, &[proto]);
        close(&mut buf, proto_nest);
        close(&mut buf, orig);
        let filter = nest_start(&mut buf, CTA_FILTER);
        // `nla_get_u32`: host byte order, unlike every other integer of ctnetlink.
        put(
            &mut buf,
            CTA_FILTER_ORIG_FLAGS,
            &CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes(),
        );
        close(&mut buf, filter);
    }
    finish(buf)
}

fn put_tuple(buf: &mut Vec<u8>, ty: u16, proto: u8, tuple: &Tuple, zone: Option<u16>) {
    let nest = nest_start(buf, ty);
    let ip = nest_start(buf, CTA_TUPLE_IP);
    match (tuple.src, tuple.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            put(buf, CTA_IP_V4_SRC, &src.octets());
            put(buf, CTA_IP_V4_DST, &dst.octets());
        }
        (src, dst) => {
            put(buf, CTA_IP_V6_SRC, &v6(src).octets());
            put(buf, CTA_IP_V6_DST, &v6(dst).octets());
        }
    }
    close(buf, ip);
    let l4 = nest_start(buf, CTA_TUPLE_PROTO);
    put(buf, CTA_PROTO_NUM, &[proto]);
    if PORTED.contains(&proto) {
        put_be16(buf, CTA_PROTO_SRC_PORT, tuple.src_port);
        put_be16(buf, CTA_PROTO_DST_PORT, tuple.dst_port);
    }
    close(buf, l4);
    if let Some(zone) = zone {
        put_be16(buf, CTA_TUPLE_ZONE, zone);
    }
    close(buf, nest);
}

fn v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// `IPCTNL_MSG_CT_DELETE` of exactly `entry`: its original tuple in its zone, and its id when
/// known. Asks for an ACK, so every delete in a batch is answered (0, or `ENOENT` when the
/// entry is already gone or was replaced).
pub fn delete_request(entry: &Entry) -> Vec<u8> {
    let mut buf = header(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, entry.family);
    let tuple_zone = match entry.zone {
        Some(Zone {
            id,
            direction: ZoneDirection::Original,
        }) => Some(id),
        _ => None,
    };
    put_tuple(
        &mut buf,
        CTA_TUPLE_ORIG,
        entry.flow.proto,
        &entry.flow.original,
        tuple_zone,
    );
    if let Some(Zone {
        id,
        direction: ZoneDirection::Both,
    }) = entry.zone
    {
        put_be16(&mut buf, CTA_ZONE, id);
    }
    if let Some(id) = entry.id {
        // The id is the kernel's own 32 bits, compared as stored (`(__force __be32)`).
        put(&mut buf, CTA_ID, &id.to_be_bytes());
    }
    finish(buf)
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn malformed(what: &'static str) -> Error {
    Error::Malformed(what)
}

fn missing(attribute: &'static str) -> Error {
    Error::Missing {
        object: "conntrack entry",
        attribute,
    }
}

/// The message type of a whole netlink message (`nlmsg_type`), if it is long enough.
pub fn message_type(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(4..6)?.try_into().ok()?))
}

/// Decodes one `IPCTNL_MSG_CT_NEW` message (a dump reply, whole: `nlmsghdr` onwards).
pub fn entry(bytes: &[u8]) -> Result<Entry, Error> {
    let len = bytes
        .get(0..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(malformed("message header"))?;
    if len < HEADERS || len > bytes.len() {
        return Err(malformed("message header"));
    }
    let ty = message_type(bytes).ok_or(malformed("message header"))?;
    if ty != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
        return Err(Error::UnexpectedMessage(ty));
    }
    let family = match bytes[16] {
        NFPROTO_IPV4 => Family::Ip,
        NFPROTO_IPV6 => Family::Ip6,
        other => return Err(Error::Family(other)),
    };
    let attrs = Attrs::parse(&bytes[HEADERS..len])?;
    let orig = attrs
        .nested(CTA_TUPLE_ORIG)?
        .ok_or(missing("CTA_TUPLE_ORIG"))?;
    let reply = attrs
        .nested(CTA_TUPLE_REPLY)?
        .ok_or(missing("CTA_TUPLE_REPLY"))?;
    let (proto, original, orig_zone) = tuple(&orig, family)?;
    let (reply_proto, reply, reply_zone) = tuple(&reply, family)?;
    if proto != reply_proto {
        return Err(malformed("tuples of different protocols"));
    }
    let zone = match (be16(&attrs, CTA_ZONE)?, orig_zone, reply_zone) {
        (Some(id), _, _) => Some(Zone {
            id,
            direction: ZoneDirection::Both,
        }),
        (None, Some(id), _) => Some(Zone {
            id,
            direction: ZoneDirection::Original,
        }),
        (None, None, Some(id)) => Some(Zone {
            id,
            direction: ZoneDirection::Reply,
        }),
        (None, None, None) => None,
    };
    Ok(Entry {
        family,
        flow: Flow {
            proto,
            original,
            reply,
        },
        status: Status(attrs.be32(CTA_STATUS)?.ok_or(missing("CTA_STATUS"))?),
        zone,
        mark: attrs.be32(CTA_MARK)?.unwrap_or(0),
        // Compared as stored: see `delete_request`.
        id: attrs.be32(CTA_ID)?,
        timeout: attrs.be32(CTA_TIMEOUT)?,
    })
}

fn be16(attrs: &Attrs<'_>, ty: u16) -> Result<Option<u16>, Error> {
    attrs
        .get(ty)
        .map(|v| {
            <[u8; 2]>::try_from(v)
                .map(u16::from_be_bytes)
                .map_err(|_| malformed("16-bit attribute"))
        })
        .transpose()
}

/// One `CTA_TUPLE_*` nest: protocol, addresses and ports, and a per-direction zone.
fn tuple(attrs: &Attrs<'_>, family: Family) -> Result<(u8, Tuple, Option<u16>), Error> {
    let ip = attrs.nested(CTA_TUPLE_IP)?.ok_or(missing("CTA_TUPLE_IP"))?;
    let (src, dst) = match family {
        Family::Ip => {
            let addr = |ty, name| -> Result<IpAddr, Error> {
                let v = ip.get(ty).ok_or(missing(name))?;
                let octets = <[u8; 4]>::try_from(v).map_err(|_| malformed(name))?;
                Ok(IpAddr::V4(Ipv4Addr::from(octets)))
            };
            (
                addr(CTA_IP_V4_SRC, "CTA_IP_V4_SRC")?,
                addr(CTA_IP_V4_DST, "CTA_IP_V4_DST")?,
            )
        }
        Family::Ip6 => {
            let addr = |ty, name| -> Result<IpAddr, Error> {
                let v = ip.get(ty).ok_or(missing(name))?;
                let octets = <[u8; 16]>::try_from(v).map_err(|_| malformed(name))?;
                Ok(IpAddr::V6(Ipv6Addr::from(octets)))
            };
            (
                addr(CTA_IP_V6_SRC, "CTA_IP_V6_SRC")?,
                addr(CTA_IP_V6_DST, "CTA_IP_V6_DST")?,
            )
        }
    };
    let l4 = attrs
        .nested(CTA_TUPLE_PROTO)?
        .ok_or(missing("CTA_TUPLE_PROTO"))?;
    let proto = match l4.get(CTA_PROTO_NUM) {
        Some([p]) => *p,
        Some(_) => return Err(malformed("CTA_PROTO_NUM")),
        None => return Err(missing("CTA_PROTO_NUM")),
    };
    let (src_port, dst_port) = if PORTED.contains(&proto) {
        (
            be16(&l4, CTA_PROTO_SRC_PORT)?.ok_or(missing("CTA_PROTO_SRC_PORT"))?,
            be16(&l4, CTA_PROTO_DST_PORT)?.ok_or(missing("CTA_PROTO_DST_PORT"))?,
        )
    } else {
        (0, 0)
    };
    let zone = be16(attrs, CTA_TUPLE_ZONE)?;
    Ok((
        proto,
        Tuple {
            src,
            dst,
            src_port,
            dst_port,
        },
        zone,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded fixture of `testdata/netlink/conntrack/`.
    fn fixture(name: &str) -> Vec<u8> {
        crate::netlink::fixture_bytes("conntrack", name)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn tuple(src: &str, dst: &str) -> Tuple {
        let src: std::net::SocketAddr = src.parse().unwrap();
        let dst: std::net::SocketAddr = dst.parse().unwrap();
        Tuple {
            src: src.ip(),
            dst: dst.ip(),
            src_port: src.port(),
            dst_port: dst.port(),
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_protocol_filtered_dump_request_is_encoded_as_the_kernel_reads_it() {
        let bytes = dump_request(Family::Ip, &DumpFilter::proto(17));
        assert_eq!(
            hex(&bytes),
            [
                "30 00 00 00", // nlmsg_len = 48
                "01 01",       // CTNETLINK << 8 | IPCTNL_MSG_CT_GET
                "01 03",       // NLM_F_REQUEST | NLM_F_DUMP
                "00 00 00 00 00 00 00 00",
                "02 00 00 00",             // NFPROTO_IPV4, NFNETLINK_V0, res_id
                "10 00 01 80",             // CTA_TUPLE_ORIG | NLA_F_NESTED
                "0c 00 02 80",             // CTA_TUPLE_PROTO | NLA_F_NESTED
                "05 00 01 00 11 00 00 00", // CTA_PROTO_NUM = 17, padded
                "0c 00 19 80",             // CTA_FILTER | NLA_F_NESTED
                "08 00 01 00 08 00 00 00", // CTA_FILTER_ORIG_FLAGS = PROTO_NUM, host order
            ]
            .join(" ")
        );
        // Zone and mark, IPv6, no protocol: no CTA_FILTER at all.
        let bytes = dump_request(
            Family::Ip6,
            &DumpFilter {
                proto: None,
                zone: Some(7),
                mark: Some((0x4000, 0xc000)),
            },
        );
        assert_eq!(
            hex(&bytes),
            [
                "2c 00 00 00",
                "01 01",
                "01 03",
                "00 00 00 00 00 00 00 00",
                "0a 00 00 00",             // NFPROTO_IPV6
                "08 00 08 00 00 00 40 00", // CTA_MARK, big-endian
                "08 00 15 00 00 00 c0 00", // CTA_MARK_MASK
                "06 00 12 00 00 07 00 00", // CTA_ZONE, big-endian u16
            ]
            .join(" ")
        );
        assert_eq!(
            hex(&dump_request(Family::Ip, &DumpFilter::default())[16..]),
            "02 00 00 00"
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_delete_names_one_entry_by_tuple_zone_and_id() {
        let entry = Entry {
            family: Family::Ip,
            flow: Flow {
                proto: 17,
                original: tuple("10.0.0.5:4000", "172.30.0.10:53"),
                reply: tuple("10.0.1.11:5353", "10.0.0.5:4000"),
            },
            status: Status(Status::CONFIRMED),
            zone: Some(Zone {
                id: 7,
                direction: ZoneDirection::Both,
            }),
            mark: 0,
            id: Some(0x1234_5678),
            timeout: Some(30),
        };
        assert_eq!(
            hex(&delete_request(&entry)),
            [
                "58 00 00 00", // nlmsg_len = 88
                "02 01",       // CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
                "05 00",       // NLM_F_REQUEST | NLM_F_ACK
                "00 00 00 00 00 00 00 00",
                "02 00 00 00",
                "34 00 01 80",             // CTA_TUPLE_ORIG
                "14 00 01 80",             // CTA_TUPLE_IP
                "08 00 01 00 0a 00 00 05", // CTA_IP_V4_SRC
                "08 00 02 00 ac 1e 00 0a", // CTA_IP_V4_DST
                "1c 00 02 80",             // CTA_TUPLE_PROTO
                "05 00 01 00 11 00 00 00", // CTA_PROTO_NUM
                "06 00 02 00 0f a0 00 00", // CTA_PROTO_SRC_PORT = 4000
                "06 00 03 00 00 35 00 00", // CTA_PROTO_DST_PORT = 53
                "06 00 12 00 00 07 00 00", // CTA_ZONE = 7
                "08 00 0c 00 12 34 56 78", // CTA_ID
            ]
            .join(" ")
        );
        // An original-direction zone goes into the tuple; a reply-direction one nowhere.
        let mut orig = entry.clone();
        orig.zone = Some(Zone {
            id: 7,
            direction: ZoneDirection::Original,
        });
        let bytes = delete_request(&orig);
        assert_eq!(&bytes[20..24], &[0x3c, 0, 1, 0x80], "CTA_TUPLE_ORIG grew");
        assert!(
            hex(&bytes).contains("06 00 03 00 00 07 00 00"),
            "CTA_TUPLE_ZONE"
        );
        let mut reply = entry.clone();
        reply.zone = Some(Zone {
            id: 7,
            direction: ZoneDirection::Reply,
        });
        reply.id = None;
        assert_eq!(delete_request(&reply).len(), 88 - 8 - 8);
        // IPv6 and SCTP.
        let v6 = Entry {
            family: Family::Ip6,
            flow: Flow {
                proto: 132,
                original: tuple("[fd00::5]:4000", "[fd00:30::10]:9"),
                reply: tuple("[fd00:10::11]:9", "[fd00::5]:4000"),
            },
            zone: None,
            id: None,
            ..entry
        };
        let bytes = delete_request(&v6);
        assert_eq!(bytes[16], NFPROTO_IPV6);
        assert!(
            hex(&bytes).contains("14 00 03 00 fd 00 00 00"),
            "CTA_IP_V6_SRC"
        );
        assert!(hex(&bytes).contains("05 00 01 00 84 00 00 00"), "SCTP");
    }

    #[test]
    fn filters_match_in_user_space_as_in_the_kernel() {
        let entry = Entry {
            family: Family::Ip,
            flow: Flow {
                proto: 17,
                original: tuple("10.0.0.5:4000", "172.30.0.10:53"),
                reply: tuple("10.0.1.11:5353", "10.0.0.5:4000"),
            },
            status: Status::default(),
            zone: None,
            mark: 0x4001,
            id: None,
            timeout: None,
        };
        assert!(DumpFilter::default().matches(&entry));
        assert!(DumpFilter::proto(17).matches(&entry));
        assert!(!DumpFilter::proto(6).matches(&entry));
        let zoned = |z| DumpFilter {
            zone: Some(z),
            ..DumpFilter::default()
        };
        assert!(zoned(0).matches(&entry));
        assert!(!zoned(7).matches(&entry));
        let marked = |v, m| DumpFilter {
            mark: Some((v, m)),
            ..DumpFilter::default()
        };
        assert!(marked(0x4000, 0x4000).matches(&entry));
        assert!(!marked(0x4000, 0xffff).matches(&entry));
        assert_eq!(
            Status(Status::CONFIRMED | Status::DST_NAT | 0x10000).to_string(),
            "CONFIRMED|DST_NAT|0x10000"
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = fixture("udp-ipv4-dnat");
        assert!(entry(&good).is_ok());
        for cut in [0, 3, 19, 20, 30, good.len() - 1] {
            let mut bytes = good[..cut].to_vec();
            if bytes.len() >= 4 {
                bytes[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            assert!(entry(&bytes).is_err(), "cut at {cut}");
        }
        let mut other = good.clone();
        other[4] = IPCTNL_MSG_CT_DELETE as u8;
        assert_eq!(
            entry(&other),
            Err(Error::UnexpectedMessage(
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
            ))
        );
    }

    /// What a recorded entry must decode to: fixture, family, flow as `proto src -> dst
    /// (DNAT to …)`, status bits, zone, mark.
    type Recorded = (
        &'static str,
        Family,
        &'static str,
        u32,
        Option<(u16, ZoneDirection)>,
        u32,
    );

    const RECORDED: &[Recorded] = &[
        (
            "udp-ipv4-dnat",
            Family::Ip,
            "udp 10.0.0.5:4000 -> 172.30.0.10:53 (DNAT to 10.0.1.11:5353)",
            Status::CONFIRMED | Status::SEEN_REPLY,
            None,
            0,
        ),
        (
            "udp-ipv4-unreplied",
            Family::Ip,
            "udp 10.0.0.5:4001 -> 172.30.0.10:53",
            Status::CONFIRMED,
            None,
            0,
        ),
        (
            "udp-ipv6-zone-mark",
            Family::Ip6,
            "udp [fd00::5]:4000 -> [fd00:30::10]:53 (DNAT to [fd00:10::11]:5353)",
            Status::CONFIRMED,
            Some((7, ZoneDirection::Both)),
            0x4000,
        ),
        (
            "udp-ipv4-orig-zone",
            Family::Ip,
            "udp 10.0.0.6:4000 -> 172.30.0.10:53",
            Status::CONFIRMED,
            Some((9, ZoneDirection::Original)),
            0,
        ),
        (
            "sctp-ipv4",
            Family::Ip,
            "sctp 10.0.0.5:4002 -> 172.30.0.10:9 (DNAT to 10.0.1.11:9)",
            Status::CONFIRMED,
            None,
            0,
        ),
        (
            "tcp-ipv4-established",
            Family::Ip,
            "tcp 10.0.0.5:4003 -> 172.30.0.10:80 (DNAT to 10.0.1.11:8080)",
            Status::CONFIRMED | Status::SEEN_REPLY | Status::ASSURED,
            None,
            0,
        ),
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_kernel_replies_decode_to_their_entries() {
        for (name, family, flow, status, zone, mark) in RECORDED {
            let bytes = fixture(name);
            let e = entry(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(e.family, *family, "{name}");
            assert_eq!(e.flow.to_string(), *flow, "{name}");
            // Only the bits the recorder asked for (the kernel may add ones of its own,
            // such as SRC_NAT_DONE, which are not part of what is checked).
            assert!(e.status.contains(*status), "{name}: {}", e.status);
            assert_eq!(
                e.zone,
                zone.map(|(id, direction)| Zone { id, direction }),
                "{name}"
            );
            assert_eq!(e.mark, *mark, "{name}");
            // Masked in the fixtures, present in every reply.
            assert_eq!(e.id, Some(0), "{name}");
            assert!(e.timeout.is_some(), "{name}");
            // The delete of a recorded entry looks the same entry up.
            let delete = delete_request(&e);
            assert_eq!(
                message_type(&delete),
                Some((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE)
            );
        }
    }
}
