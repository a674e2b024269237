//! Per-backend counters, read from the kernel: the two sets the packet path fills
//! (`backend-connections`, one element per frontend address, backend and port, counting new
//! connections; `backend-traffic`, the same key, counting packets and bytes both ways; see
//! `compiler::lower::skeleton`). Elements appear with a connection's first packet and live
//! until an hour after their last one, so a counter counts since its pair last went quiet for
//! an hour. Two reads a known time apart give rates. Elements of other protocols (an ICMP
//! error of a DNATed connection is keyed by its checksum) are skipped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use kube_nft_compiler::ir::{names, Family, L4Proto};

use crate::netlink::decode::{self, Message};
use crate::netlink::socket::{self, Socket};
use crate::readback;

/// Failures of a read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The nf_tables socket could not be opened, or a dump failed.
    #[error("read the {set} counters of the {family} table")]
    Netlink {
        /// The table's family.
        family: Family,
        /// The set.
        set: &'static str,
        /// Why.
        #[source]
        source: socket::Error,
    },
    /// A dump message did not decode.
    #[error("decode the {set} counters of the {family} table")]
    Decode {
        /// The table's family.
        family: Family,
        /// The set.
        set: &'static str,
        /// Why.
        #[source]
        source: decode::Error,
    },
}

/// Which connections a counter counts: those whose first packet went to `frontend` and that
/// were DNATed to `backend`:`port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pair {
    /// The original destination (a ClusterIP, an external or LoadBalancer IP, or for a
    /// NodePort the node address the client used).
    pub frontend: IpAddr,
    /// The backend address.
    pub backend: IpAddr,
    /// Transport protocol.
    pub proto: L4Proto,
    /// The backend port.
    pub port: u16,
}

/// The counts of one [`Pair`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// New connections.
    pub connections: u64,
    /// Packets, both ways.
    pub packets: u64,
    /// Bytes, both ways (IP header included).
    pub bytes: u64,
}

/// One read of every counter.
#[derive(Clone, Debug)]
pub struct Counters {
    /// When the read started.
    pub at: Instant,
    /// Every pair with a live counter.
    pub pairs: HashMap<Pair, Counts>,
}

/// Reads both counter sets of both families in the calling thread's network namespace. A table
/// or set that does not exist (no kube-nft tables, or tables from before the counters) reads as
/// empty.
pub fn read() -> Result<Counters, Error> {
    let at = Instant::now();
    let mut pairs: HashMap<Pair, Counts> = HashMap::new();
    let mut socket = None;
    for family in [Family::Ip, Family::Ip6] {
        for set in [names::BACKEND_CONNECTIONS, names::BACKEND_TRAFFIC] {
            let netlink = |source| Error::Netlink {
                family,
                set,
                source,
            };
            let socket = match &mut socket {
                Some(socket) => socket,
                None => socket.insert(Socket::open().map_err(netlink)?),
            };
            let filter = decode::filter_attrs(names::TABLE, Some(set));
            let messages = match socket.dump(
                decode::NFT_MSG_GETSETELEM,
                readback::nfproto(family),
                &filter,
            ) {
                Ok(messages) => messages,
                Err(e) if e.errno().is_some_and(|e| e.is_not_found()) => continue,
                Err(e) => return Err(netlink(e)),
            };
            for bytes in messages {
                let decode_err = |source| Error::Decode {
                    family,
                    set,
                    source,
                };
                let msg = Message::parse(&bytes).map_err(decode_err)?;
                for element in decode::counted_elements(&msg).map_err(decode_err)? {
                    let Some(pair) = pair_of(&element.key, family) else {
                        continue;
                    };
                    let counts = pairs.entry(pair).or_default();
                    if set == names::BACKEND_CONNECTIONS {
                        counts.connections = element.packets;
                    } else {
                        counts.packets = element.packets;
                        counts.bytes = element.bytes;
                    }
                }
            }
        }
    }
    Ok(Counters { at, pairs })
}

/// `frontend . backend . proto . port`, each part in its own 4-byte-aligned field.
fn pair_of(key: &[u8], family: Family) -> Option<Pair> {
    let addr_len = match family {
        Family::Ip => 4,
        Family::Ip6 => 16,
    };
    if key.len() != 2 * addr_len + 8 {
        return None;
    }
    let addr = |bytes: &[u8]| -> Option<IpAddr> {
        Some(match family {
            Family::Ip => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
            Family::Ip6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        })
    };
    let rest = &key[2 * addr_len..];
    let proto = match rest[0] {
        6 => L4Proto::Tcp,
        17 => L4Proto::Udp,
        132 => L4Proto::Sctp,
        _ => return None,
    };
    Some(Pair {
        frontend: addr(&key[..addr_len])?,
        backend: addr(&key[addr_len..2 * addr_len])?,
        proto,
        port: u16::from_be_bytes([rest[4], rest[5]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_per_family_and_other_protocols_are_skipped() {
        let mut v4 = vec![10, 96, 0, 10, 10, 244, 1, 7, 6, 0, 0, 0, 0x1f, 0x90, 0, 0];
        assert_eq!(
            pair_of(&v4, Family::Ip),
            Some(Pair {
                frontend: "10.96.0.10".parse().unwrap(),
                backend: "10.244.1.7".parse().unwrap(),
                proto: L4Proto::Tcp,
                port: 8080,
            })
        );
        v4[8] = 1; // ICMP
        assert_eq!(pair_of(&v4, Family::Ip), None);
        assert_eq!(pair_of(&v4[..12], Family::Ip), None);

        let mut v6 = Vec::new();
        v6.extend("fd00::a".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend("fd00:1::7".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend([17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(
            pair_of(&v6, Family::Ip6),
            Some(Pair {
                frontend: "fd00::a".parse().unwrap(),
                backend: "fd00:1::7".parse().unwrap(),
                proto: L4Proto::Udp,
                port: 53,
            })
        );
    }
}
