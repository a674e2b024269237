//! `kube-nft show`: what this node does with each Service now. It reads kube-nft's tables back
//! from the kernel and the node's addresses (the compiler's `show::rows` turns them into one row
//! per service port and way in, with each backend's share of new connections), counts the live
//! DNATed connections in conntrack per frontend and backend, filters, and prints a table or JSON.
//! A NodePort's connections are those whose original destination is any local address with
//! that port. With `-f`, it also compiles the input for this node and flags drift: the
//! operations `compile -f` would apply to make the kernel match.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use kube_nft_compiler::ir::{Family, L4Proto};
use kube_nft_compiler::show::{self, Frontend, Row};
use kube_nft_compiler::trace::Env;
use kube_nft_runtime::conntrack::{self, Census, Count};

use kube_nft_compiler::plan::plan;

use super::{load_and_compile, print_stdout, read_node, UsageError};
use crate::cli::{InputArgs, ShowArgs, ShowFormat};

/// Runs `show`; exit 0.
pub(super) fn run(args: &ShowArgs) -> anyhow::Result<u8> {
    print_stdout(&text(args)?)?;
    Ok(0)
}

/// What `show` prints, for the calling thread's network namespace (`demo` calls it in the
/// lab's node).
pub(super) fn text(args: &ShowArgs) -> anyhow::Result<String> {
    let address = args
        .address
        .as_deref()
        .map(parse_address)
        .transpose()
        .map_err(UsageError)?;
    let (ruleset, local) = read_node()?;
    // Drift against a compiled input: the operations `compile -f` would apply.
    let drift = match &args.path {
        Some(path) => {
            let input = InputArgs { path: path.clone() };
            let compiled = load_and_compile(&input, &args.node)?;
            let tx = plan(&ruleset, &compiled.ruleset);
            (!tx.is_empty()).then(|| tx.counts().to_string())
        }
        None => None,
    };
    let env = Env::from_ruleset(&ruleset, local.clone());
    let census = by_target(&conntrack::census().context("count connections in conntrack")?);
    let local: BTreeSet<IpAddr> = local.into_iter().collect();
    let rows: Vec<Shown> = show::rows_where(&ruleset, &env, |f| wanted(args, address, &local, f))
        .into_iter()
        .map(|row| Shown::new(row, &census, &local))
        .collect();
    Ok(match args.output {
        ShowFormat::Table => {
            let mut text = table(&rows);
            if let Some(ops) = &drift {
                let _ = writeln!(
                    text,
                    "! drift: the kernel differs from what the input compiles to ({ops}; `kube-nft diff` lists them)"
                );
            }
            text
        }
        ShowFormat::Json => json(&rows, drift.as_deref()),
    })
}

/// `IP` or `IP:PORT` (`[IPv6]:PORT`).
fn parse_address(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("invalid --address {text:?}: expected IP or IP:PORT"))
}

fn wanted(
    args: &ShowArgs,
    address: Option<(IpAddr, Option<u16>)>,
    local: &BTreeSet<IpAddr>,
    f: &Frontend,
) -> bool {
    // `ns/name:port`.
    let (namespace, rest) = f.service.split_once('/').unwrap_or(("", &f.service));
    let name = rest.rsplit_once(':').map_or(rest, |(name, _)| name);
    if args.namespace.as_deref().is_some_and(|n| n != namespace) {
        return false;
    }
    if args.service.as_deref().is_some_and(|s| s != name) {
        return false;
    }
    match address {
        None => true,
        Some((ip, port)) => {
            let port_ok = port.is_none_or(|p| p == f.port);
            let ip_ok = match f.addr {
                Some(a) => a == ip,
                // A NodePort answers on the node's addresses of its family.
                None => Family::of(ip) == f.family && (ip.is_loopback() || local.contains(&ip)),
            };
            ip_ok && port_ok
        }
    }
}

/// The census by `(IP protocol, original destination port, DNAT target)`: each backend of a
/// row finds its few flows without a walk of the whole conntrack table.
type ByTarget = HashMap<(u8, u16, SocketAddr), Vec<(IpAddr, Count)>>;

fn by_target(census: &Census) -> ByTarget {
    let mut out = ByTarget::new();
    for ((proto, dst, target), count) in &census.flows {
        out.entry((*proto, dst.port(), *target))
            .or_default()
            .push((dst.ip(), *count));
    }
    out
}

/// A row with its live numbers.
struct Shown {
    row: Row,
    /// Per backend, in `row.backends` order.
    counts: Vec<Count>,
    /// What looks wrong.
    flags: Vec<String>,
}

impl Shown {
    fn new(row: Row, census: &ByTarget, local: &BTreeSet<IpAddr>) -> Shown {
        let f = &row.frontend;
        let proto = proto_number(f.proto);
        let counts: Vec<Count> = (row.backends.iter())
            .map(|b| {
                let target = SocketAddr::new(b.addr, b.port);
                let mut sum = Count::default();
                let flows = census
                    .get(&(proto, f.port, target))
                    .map_or(&[][..], Vec::as_slice);
                for (dst, c) in flows {
                    let reached = match f.addr {
                        Some(a) => *dst == a,
                        None => local.contains(dst) && Family::of(*dst) == f.family,
                    };
                    if reached {
                        sum.conns += c.conns;
                        sum.unreplied += c.unreplied;
                    }
                }
                sum
            })
            .collect();
        let mut flags = Vec::new();
        if row.backends.is_empty() {
            flags.push("no backends".to_owned());
        }
        for (b, c) in row.backends.iter().zip(&counts) {
            if c.conns > 0 && c.unreplied == c.conns {
                flags.push(format!(
                    "{} never replied to {} connections",
                    endpoint(b.addr, b.port),
                    c.conns
                ));
            }
        }
        Shown { row, counts, flags }
    }
}

fn proto_number(proto: L4Proto) -> u8 {
    match proto {
        L4Proto::Tcp => 6,
        L4Proto::Udp => 17,
        L4Proto::Sctp => 132,
    }
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// The table: one line per backend, the frontend's columns on its first line only.
fn table(rows: &[Shown]) -> String {
    let header = [
        "SERVICE",
        "VIA",
        "ADDRESS",
        "SCHED",
        "BACKEND",
        "SHARE",
        "CONNS",
        "UNREPLIED",
    ];
    let mut lines: Vec<[String; 8]> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for shown in rows {
        let f = &shown.row.frontend;
        let head = [
            if f.service.is_empty() {
                "-".to_owned()
            } else {
                f.service.clone()
            },
            f.via.as_str().to_owned(),
            f.address(),
            shown.row.scheduler.clone(),
        ];
        if shown.row.backends.is_empty() {
            let otherwise: Vec<String> = (shown.row.otherwise.iter())
                .map(|(fate, p)| format!("{fate} {p}"))
                .collect();
            let [a, b, c, d] = head.clone();
            lines.push([
                a,
                b,
                c,
                d,
                format!("({})", otherwise.join(", ")),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for (i, (b, c)) in shown.row.backends.iter().zip(&shown.counts).enumerate() {
            let lead = if i == 0 {
                head.clone()
            } else {
                Default::default()
            };
            let [a, bb, cc, d] = lead;
            lines.push([
                a,
                bb,
                cc,
                d,
                endpoint(b.addr, b.port),
                b.share.to_string(),
                c.conns.to_string(),
                c.unreplied.to_string(),
            ]);
        }
        for flag in &shown.flags {
            notes.push(format!("! {} {}: {flag}", f.service, f.address()));
        }
    }
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut put = |cells: &[&str]| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Numbers right-aligned, the rest left; no trailing spaces.
            if i >= 5 {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
            if i + 1 < cells.len() {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    put(&header);
    for line in &lines {
        let cells: Vec<&str> = line.iter().map(String::as_str).collect();
        put(&cells);
    }
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// `{"rows": [{"service", "via", "protocol", "address" (null for a NodePort), "port",
/// "family", "scheduler", "backends": [{"address", "port", "share", "connections",
/// "unreplied"}], "otherwise": [{"fate", "probability"}], "flags": [...]}], "drift": null or
/// the operations `compile -f` would apply, summed up}`; shares and probabilities are exact
/// fractions as strings (`"1/3"`).
fn json(rows: &[Shown], drift: Option<&str>) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|shown| {
            let f = &shown.row.frontend;
            let backends: Vec<serde_json::Value> = (shown.row.backends.iter())
                .zip(&shown.counts)
                .map(|(b, c)| {
                    serde_json::json!({
                        "address": b.addr.to_string(),
                        "port": b.port,
                        "share": b.share.to_string(),
                        "connections": c.conns,
                        "unreplied": c.unreplied,
                    })
                })
                .collect();
            let otherwise: Vec<serde_json::Value> = (shown.row.otherwise.iter())
                .map(|(fate, p)| serde_json::json!({"fate": fate, "probability": p.to_string()}))
                .collect();
            serde_json::json!({
                "service": f.service,
                "via": f.via.as_str(),
                "protocol": f.proto.to_string(),
                "address": f.addr.map(|a| a.to_string()),
                "port": f.port,
                "family": match f.family { Family::Ip => "IPv4", Family::Ip6 => "IPv6" },
                "scheduler": shown.row.scheduler,
                "backends": backends,
                "otherwise": otherwise,
                "flags": shown.flags,
            })
        })
        .collect();
    let mut text =
        serde_json::to_string_pretty(&serde_json::json!({ "rows": rows, "drift": drift }))
            .expect("JSON of strings and numbers");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_a_port() {
        assert_eq!(
            parse_address("10.96.0.10:53"),
            Ok(("10.96.0.10".parse().unwrap(), Some(53)))
        );
        assert_eq!(
            parse_address("[fd00::a]:53"),
            Ok(("fd00::a".parse().unwrap(), Some(53)))
        );
        assert_eq!(
            parse_address("fd00::a"),
            Ok(("fd00::a".parse().unwrap(), None))
        );
        assert!(parse_address("10.96.0.10:http").is_err());
    }

    #[test]
    fn via_names_are_kube_proxy_words() {
        use kube_nft_compiler::show::Via;
        assert_eq!(Via::ClusterIp.as_str(), "ClusterIP");
        assert_eq!(Via::NodePort.as_str(), "NodePort");
    }
}
