//! Address and prefix parsing with kube-proxy's leniency. The API server has historically
//! accepted IPv4 octets with leading zeros (`172.30.0.041`), which Go's sloppy parser reads as
//! decimal; Rust's parser rejects them, so they are read here the Go way and reported, rather
//! than silently dropping a Service that kube-proxy would serve.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// A parsed address or prefix, and whether the text had to be read leniently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Parsed<T> {
    /// The value.
    pub(super) value: T,
    /// The text had leading zeros in an IPv4 octet and was read as decimal.
    pub(super) sloppy: bool,
}

/// Parses an IP address; IPv4 octets with leading zeros are read as decimal.
pub(super) fn parse_ip(text: &str) -> Option<Parsed<IpAddr>> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(Parsed {
            value: ip,
            sloppy: false,
        });
    }
    parse_v4_leading_zeros(text).map(|ip| Parsed {
        value: IpAddr::V4(ip),
        sloppy: true,
    })
}

/// Parses `addr/len`, clearing host bits as Go's `ParseCIDR` does. With `bare_ip`, an address
/// without `/len` is read as a single-address prefix (`/32` or `/128`).
pub(super) fn parse_cidr(text: &str, bare_ip: bool) -> Option<Parsed<IpNet>> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None if bare_ip => (text, None),
        None => return None,
    };
    let ip = parse_ip(addr)?;
    let max = match ip.value {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let len = match len {
        // Only plain decimal digits: `+8` or ` 8` are not prefix lengths.
        Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
            len.parse::<u8>().ok()?
        }
        Some(_) => return None,
        None => max,
    };
    let net = IpNet::new(ip.value, len).ok()?.trunc();
    Some(Parsed {
        value: net,
        sloppy: ip.sloppy,
    })
}

/// Dotted-quad IPv4 whose octets may carry leading zeros (`010` is ten, not octal eight).
fn parse_v4_leading_zeros(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = part.trim_start_matches('0');
        *octet = if digits.is_empty() {
            0
        } else {
            digits.parse::<u8>().ok()?
        };
    }
    match parts.next() {
        Some(_) => None,
        None => Some(Ipv4Addr::from(octets)),
    }
}

/// Why an address cannot be an endpoint: it would never reach a pod.
pub(super) fn unusable_endpoint(ip: IpAddr) -> Option<&'static str> {
    let kind = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_link_local() => "link-local",
        IpAddr::V4(v4) if v4.is_multicast() => "multicast",
        IpAddr::V4(v4) if v4.is_broadcast() => "broadcast",
        IpAddr::V4(v4) if v4.is_unspecified() => "unspecified",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        IpAddr::V6(v6) if v6.is_unicast_link_local() => "link-local",
        IpAddr::V6(v6) if v6.is_multicast() => "multicast",
        IpAddr::V6(v6) if v6.is_unspecified() => "unspecified",
        _ => return None,
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn leading_zero_octets_are_decimal() {
        assert_eq!(
            parse_ip("172.30.0.041"),
            Some(Parsed {
                value: ip("172.30.0.41"),
                sloppy: true
            })
        );
        assert_eq!(
            parse_ip("010.000.0.1").map(|p| p.value),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(parse_ip("10.0.0.1").map(|p| p.sloppy), Some(false));
        assert_eq!(parse_ip("10.0.0.256"), None);
        assert_eq!(parse_ip("10.0.0"), None);
        assert_eq!(parse_ip("10.0.0.1.1"), None);
        assert_eq!(parse_ip("10.0.0.+1"), None);
        assert_eq!(parse_ip("fd00::1").map(|p| p.value), Some(ip("fd00::1")));
    }

    #[test]
    fn cidrs_clear_host_bits_and_bare_ips_are_optional() {
        let net = |t: &str| t.parse::<IpNet>().expect("test prefix");
        assert_eq!(
            parse_cidr("10.1.2.3/8", false).map(|p| p.value),
            Some(net("10.0.0.0/8"))
        );
        assert_eq!(parse_cidr("10.1.2.3", false), None);
        assert_eq!(
            parse_cidr("10.1.2.3", true).map(|p| p.value),
            Some(net("10.1.2.3/32"))
        );
        assert_eq!(
            parse_cidr("fd00::1", true).map(|p| p.value),
            Some(net("fd00::1/128"))
        );
        assert_eq!(parse_cidr("10.0.0.0/33", false), None);
        assert_eq!(parse_cidr("10.0.0.0/", false), None);
        assert_eq!(
            parse_cidr("010.0.0.0/8", false).map(|p| p.sloppy),
            Some(true)
        );
    }

    #[test]
    fn unusable_endpoint_addresses() {
        assert_eq!(unusable_endpoint(ip("127.0.0.1")), Some("loopback"));
        assert_eq!(unusable_endpoint(ip("::1")), Some("loopback"));
        assert_eq!(unusable_endpoint(ip("169.254.1.1")), Some("link-local"));
        assert_eq!(unusable_endpoint(ip("fe80::1")), Some("link-local"));
        assert_eq!(unusable_endpoint(ip("224.0.0.1")), Some("multicast"));
        assert_eq!(unusable_endpoint(ip("0.0.0.0")), Some("unspecified"));
        assert_eq!(unusable_endpoint(ip("::")), Some("unspecified"));
        assert_eq!(unusable_endpoint(ip("10.1.2.3")), None);
    }
}
