//! A set element packed into one byte string, for the daemon's warm compiler, which keeps
//! every Service's elements in global sets for the lifetime of the process (about 125k at 50k
//! Services). As an [`Element`] a ClusterIP dispatch element is some 260 bytes in five heap
//! allocations (the key's values, the verdict's chain name, the comment); packed it is one
//! allocation of about 50 bytes. Packing is lossless ([`Packed::unpack`] gives back an equal
//! element) and deterministic, so equal elements pack to equal bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{CtDir, ElemData, Element, L4Proto, Value, Verdict};

/// A packed [`Element`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Packed(Box<[u8]>);

// Value tags.
const ADDR4: u8 = 0;
const ADDR6: u8 = 1;
const PREFIX4: u8 = 2;
const PREFIX6: u8 = 3;
const PROTO: u8 = 4;
const PORT: u8 = 5;
const INT: u8 = 6;
const FIB_LOCAL: u8 = 7;
const CT_NEW: u8 = 8;
const CT_DNAT: u8 = 9;
const CT_DIR: u8 = 10;
const IFACE: u8 = 11;
const IFACE_PREFIX: u8 = 12;

// Data tags.
const NO_DATA: u8 = 0;
const ACCEPT: u8 = 1;
const DROP: u8 = 2;
const RETURN: u8 = 3;
const JUMP: u8 = 4;
const GOTO: u8 = 5;
const VALUES: u8 = 6;

impl Packed {
    /// Packs `element`.
    pub fn pack(element: &Element) -> Packed {
        let mut out = Vec::with_capacity(48);
        put_values(&mut out, &element.key);
        match &element.data {
            None => out.push(NO_DATA),
            Some(ElemData::Verdict(verdict)) => match verdict {
                Verdict::Accept => out.push(ACCEPT),
                Verdict::Drop => out.push(DROP),
                Verdict::Return => out.push(RETURN),
                Verdict::Jump(chain) => {
                    out.push(JUMP);
                    put_str(&mut out, chain);
                }
                Verdict::Goto(chain) => {
                    out.push(GOTO);
                    put_str(&mut out, chain);
                }
            },
            Some(ElemData::Values(values)) => {
                out.push(VALUES);
                put_values(&mut out, values);
            }
        }
        match &element.comment {
            None => out.push(0),
            Some(comment) => {
                out.push(1);
                put_str(&mut out, comment);
            }
        }
        Packed(out.into_boxed_slice())
    }

    /// The element back.
    pub fn unpack(&self) -> Element {
        let mut r = Reader(&self.0);
        let key = r.values();
        let data = match r.u8() {
            NO_DATA => None,
            ACCEPT => Some(ElemData::Verdict(Verdict::Accept)),
            DROP => Some(ElemData::Verdict(Verdict::Drop)),
            RETURN => Some(ElemData::Verdict(Verdict::Return)),
            JUMP => Some(ElemData::Verdict(Verdict::Jump(r.string()))),
            GOTO => Some(ElemData::Verdict(Verdict::Goto(r.string()))),
            VALUES => Some(ElemData::Values(r.values())),
            tag => unreachable!("packed element data tag {tag}"),
        };
        let comment = (r.u8() == 1).then(|| r.string());
        Element { key, data, comment }
    }

    /// Only the key, without building the rest.
    pub fn key(&self) -> Vec<Value> {
        Reader(&self.0).values()
    }
}

fn put_values(out: &mut Vec<u8>, values: &[Value]) {
    out.push(u8::try_from(values.len()).expect("at most 255 key or data parts"));
    for value in values {
        match value {
            Value::Addr(IpAddr::V4(a)) => {
                out.push(ADDR4);
                out.extend_from_slice(&a.octets());
            }
            Value::Addr(IpAddr::V6(a)) => {
                out.push(ADDR6);
                out.extend_from_slice(&a.octets());
            }
            Value::Prefix(IpNet::V4(n)) => {
                out.push(PREFIX4);
                out.extend_from_slice(&n.addr().octets());
                out.push(n.prefix_len());
            }
            Value::Prefix(IpNet::V6(n)) => {
                out.push(PREFIX6);
                out.extend_from_slice(&n.addr().octets());
                out.push(n.prefix_len());
            }
            Value::Proto(proto) => {
                out.push(PROTO);
                out.push(match proto {
                    L4Proto::Tcp => 0,
                    L4Proto::Udp => 1,
                    L4Proto::Sctp => 2,
                });
            }
            Value::Port(port) => {
                out.push(PORT);
                out.extend_from_slice(&port.to_le_bytes());
            }
            Value::Int(n) => {
                out.push(INT);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Value::FibLocal => out.push(FIB_LOCAL),
            Value::CtNew => out.push(CT_NEW),
            Value::CtDnat => out.push(CT_DNAT),
            Value::CtDir(dir) => {
                out.push(CT_DIR);
                out.push(match dir {
                    CtDir::Original => 0,
                    CtDir::Reply => 1,
                });
            }
            Value::Iface(name) => {
                out.push(IFACE);
                put_str(out, name);
            }
            Value::IfacePrefix(prefix) => {
                out.push(IFACE_PREFIX);
                put_str(out, prefix);
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("names and comments are short");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads what `Packed::pack` wrote; the bytes are ours, so a malformed string is a bug.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split at N")
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn string(&mut self) -> String {
        let len = usize::from(u16::from_le_bytes(self.take::<2>()));
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(head.to_vec()).expect("packed from a str")
    }

    fn values(&mut self) -> Vec<Value> {
        let n = usize::from(self.u8());
        (0..n).map(|_| self.value()).collect()
    }

    fn value(&mut self) -> Value {
        match self.u8() {
            ADDR4 => Value::Addr(Ipv4Addr::from(self.take::<4>()).into()),
            ADDR6 => Value::Addr(Ipv6Addr::from(self.take::<16>()).into()),
            PREFIX4 => {
                let addr = Ipv4Addr::from(self.take::<4>());
                let len = self.u8();
                Value::Prefix(
                    Ipv4Net::new(addr, len)
                        .expect("packed a valid prefix")
                        .into(),
                )
            }
            PREFIX6 => {
                let addr = Ipv6Addr::from(self.take::<16>());
                let len = self.u8();
                Value::Prefix(
                    Ipv6Net::new(addr, len)
                        .expect("packed a valid prefix")
                        .into(),
                )
            }
            PROTO => Value::Proto(match self.u8() {
                0 => L4Proto::Tcp,
                1 => L4Proto::Udp,
                _ => L4Proto::Sctp,
            }),
            PORT => Value::Port(u16::from_le_bytes(self.take::<2>())),
            INT => Value::Int(u32::from_le_bytes(self.take::<4>())),
            FIB_LOCAL => Value::FibLocal,
            CT_NEW => Value::CtNew,
            CT_DNAT => Value::CtDnat,
            CT_DIR => Value::CtDir(match self.u8() {
                0 => CtDir::Original,
                _ => CtDir::Reply,
            }),
            IFACE => Value::Iface(self.string()),
            IFACE_PREFIX => Value::IfacePrefix(self.string()),
            tag => unreachable!("packed value tag {tag}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(key: Vec<Value>, data: Option<ElemData>, comment: Option<&str>) -> Element {
        Element {
            key,
            data,
            comment: comment.map(str::to_string),
        }
    }

    #[test]
    fn every_kind_of_value_data_and_comment_comes_back_equal() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let all_values = vec![
            Value::Addr(v4),
            Value::Addr(v6),
            Value::Prefix("10.1.0.0/16".parse().unwrap()),
            Value::Prefix("fd00:1::/64".parse().unwrap()),
            Value::Proto(L4Proto::Tcp),
            Value::Proto(L4Proto::Udp),
            Value::Proto(L4Proto::Sctp),
            Value::Port(65535),
            Value::Int(u32::MAX),
            Value::FibLocal,
            Value::CtNew,
            Value::CtDnat,
            Value::CtDir(CtDir::Original),
            Value::CtDir(CtDir::Reply),
            Value::Iface("cni0".into()),
            Value::IfacePrefix("veth".into()),
        ];
        let datas = [
            None,
            Some(ElemData::Verdict(Verdict::Accept)),
            Some(ElemData::Verdict(Verdict::Drop)),
            Some(ElemData::Verdict(Verdict::Return)),
            Some(ElemData::Verdict(Verdict::Jump("reject-chain".into()))),
            Some(ElemData::Verdict(Verdict::Goto(
                "clusterip-random-3".into(),
            ))),
            Some(ElemData::Values(vec![Value::Addr(v6), Value::Port(8080)])),
            Some(ElemData::Values(all_values.clone())),
        ];
        for data in datas {
            for comment in [None, Some(""), Some("shop/web:http external IP")] {
                let e = element(all_values.clone(), data.clone(), comment);
                let packed = Packed::pack(&e);
                assert_eq!(packed.unpack(), e);
                assert_eq!(packed.key(), e.key);
            }
        }
        let empty = element(Vec::new(), None, None);
        assert_eq!(Packed::pack(&empty).unpack(), empty);
    }

    #[test]
    fn a_dispatch_element_packs_small() {
        let e = element(
            vec![
                Value::Addr("172.30.0.14".parse().unwrap()),
                Value::Proto(L4Proto::Tcp),
                Value::Port(80),
            ],
            Some(ElemData::Verdict(Verdict::Goto(
                "clusterip-random-3".into(),
            ))),
            Some("shop/web:http"),
        );
        let packed = Packed::pack(&e);
        // 1 + (1 + 4) + (1 + 1) + (1 + 2) key, 1 + 2 + 18 verdict, 1 + 2 + 13 comment.
        assert_eq!(packed.0.len(), 48);
        assert_eq!(packed.unpack(), e);
    }
}
