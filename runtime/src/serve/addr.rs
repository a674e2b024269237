//! kube-proxy's `--healthz-bind-address` and `--metrics-bind-address` values: an `IP:port`
//! (`0.0.0.0:10256`, `[::]:10256`), an IP alone meaning the default port (v1alpha1 defaulting
//! appends it, `AppendPortIfNeeded`), or the empty string, which disables the server. kube-proxy
//! parses the flag with `IPPortVar` (an IP, else Go's `net.SplitHostPort` with an IP host), so
//! `:10256` with no host is rejected rather than meaning every address, and an unbracketed IPv6
//! address is taken as an IP without a port (`::1:80` is the address `::1:80`). Two
//! differences, both stricter: IPv4 with leading zeros (Go's `ParseIPSloppy` accepts `010.0.0.1`)
//! and port 0 (validation wants 1–65535) are errors.

use std::net::{IpAddr, SocketAddr};

/// kube-proxy's healthz port.
pub const HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's metrics port.
pub const METRICS_PORT: u16 = 10249;
/// `--healthz-bind-address`'s default.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
/// `--metrics-bind-address`'s default: loopback, as metrics are not meant for the network.
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";

/// A bind address that is neither empty, an IP, nor `IP:port`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BindAddressError {
    /// Not `ip` or `ip:port` (kube-proxy's wording).
    #[error("{value:?} is not in a valid format (ip or ip:port): {reason}")]
    Format {
        /// The flag value.
        value: String,
        /// What `net.SplitHostPort` would say.
        reason: &'static str,
    },
    /// The host part is not an IP address (a host name, or empty as in `:10256`).
    #[error("{host:?} is not a valid IP address")]
    Ip {
        /// The host part.
        host: String,
    },
    /// The port is not a number in 1–65535.
    #[error("{port:?} is not a valid port (1-65535)")]
    Port {
        /// The port part.
        port: String,
    },
}

/// Parses a bind-address flag value: `Ok(None)` for the empty string (the server is
/// disabled), else the socket address, with `default_port` if the value is an IP alone.
pub fn parse_bind_address(
    value: &str,
    default_port: u16,
) -> Result<Option<SocketAddr>, BindAddressError> {
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, default_port)));
    }
    let (host, port) = split_host_port(value).map_err(|reason| BindAddressError::Format {
        value: value.to_owned(),
        reason,
    })?;
    let ip = host.parse::<IpAddr>().map_err(|_| BindAddressError::Ip {
        host: host.to_owned(),
    })?;
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => {
            return Err(BindAddressError::Port {
                port: port.to_owned(),
            })
        }
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Go's `net.SplitHostPort`: `host:port` or `[host]:port`, the error being Go's reason.
fn split_host_port(value: &str) -> Result<(&str, &str), &'static str> {
    let colon = value.rfind(':').ok_or("missing port in address")?;
    let (host, rest_start) = if let Some(bracketed) = value.strip_prefix('[') {
        let end = bracketed.find(']').ok_or("missing ']' in address")? + 1;
        if end + 1 == value.len() {
            return Err("missing port in address");
        }
        if end + 1 != colon {
            return Err(if value.as_bytes().get(end + 1) == Some(&b':') {
                "too many colons in address"
            } else {
                "missing port in address"
            });
        }
        (&value[1..end], end + 1)
    } else {
        let host = &value[..colon];
        if host.contains(':') {
            return Err("too many colons in address");
        }
        (host, 0)
    };
    let after_open = if rest_start == 0 { 0 } else { 1 };
    if value[after_open..].contains('[') {
        return Err("unexpected '[' in address");
    }
    if value[rest_start..].contains(']') {
        return Err("unexpected ']' in address");
    }
    Ok((host, &value[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str, default_port: u16) -> Option<String> {
        parse_bind_address(value, default_port)
            .unwrap_or_else(|e| panic!("{value}: {e}"))
            .map(|a| a.to_string())
    }

    #[test]
    fn the_defaults_parse_to_themselves() {
        assert_eq!(
            ok(DEFAULT_HEALTHZ_BIND_ADDRESS, HEALTHZ_PORT).as_deref(),
            Some("0.0.0.0:10256")
        );
        assert_eq!(
            ok(DEFAULT_METRICS_BIND_ADDRESS, METRICS_PORT).as_deref(),
            Some("127.0.0.1:10249")
        );
    }

    #[test]
    fn accepted_forms() {
        let cases = [
            ("", None),
            ("0.0.0.0:10256", Some("0.0.0.0:10256")),
            ("10.0.0.1:8080", Some("10.0.0.1:8080")),
            ("[::]:10256", Some("[::]:10256")),
            ("[fd00::1]:9", Some("[fd00::1]:9")),
            // An IP alone takes the default port (AppendPortIfNeeded).
            ("127.0.0.1", Some("127.0.0.1:10256")),
            ("::", Some("[::]:10256")),
            ("fd00::1", Some("[fd00::1]:10256")),
            // Parsed as an IP first, so this is the IPv6 address ::1:80, not port 80.
            ("::1:80", Some("[::1:80]:10256")),
            // Go's SplitHostPort accepts a bracketed IPv4 host.
            ("[10.0.0.1]:80", Some("10.0.0.1:80")),
        ];
        for (value, want) in cases {
            assert_eq!(ok(value, HEALTHZ_PORT).as_deref(), want, "{value:?}");
        }
    }

    #[test]
    fn rejected_forms() {
        let format = |value: &str, reason: &'static str| BindAddressError::Format {
            value: value.to_owned(),
            reason,
        };
        let ip = |host: &str| BindAddressError::Ip {
            host: host.to_owned(),
        };
        let port = |port: &str| BindAddressError::Port {
            port: port.to_owned(),
        };
        let cases = [
            // kube-proxy's IPPortVar wants an IP host: `:port` does not mean "all addresses".
            (":10256", ip("")),
            ("localhost:10256", ip("localhost")),
            ("localhost", format("localhost", "missing port in address")),
            ("[::1]", format("[::1]", "missing port in address")),
            ("[::1", format("[::1", "missing ']' in address")),
            ("[::1]x:80", format("[::1]x:80", "missing port in address")),
            (
                "[::1]:80:81",
                format("[::1]:80:81", "too many colons in address"),
            ),
            ("a:b:80", format("a:b:80", "too many colons in address")),
            (
                "1.2.3.4]:80",
                format("1.2.3.4]:80", "unexpected ']' in address"),
            ),
            ("010.0.0.1:80", ip("010.0.0.1")),
            ("0.0.0.0:", port("")),
            ("0.0.0.0:0", port("0")),
            ("0.0.0.0:65536", port("65536")),
            ("0.0.0.0:+80", port("+80")),
            ("0.0.0.0:http", port("http")),
        ];
        for (value, want) in cases {
            assert_eq!(
                parse_bind_address(value, HEALTHZ_PORT),
                Err(want),
                "{value:?}"
            );
        }
    }
}
