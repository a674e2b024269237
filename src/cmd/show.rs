//! `kube-nft show`: what this node does with each Service now. It reads kube-nft's tables back
//! from the kernel and the node's addresses (the compiler's `show::rows` turns them into one row
//! per service port and way in, with each backend's share of new connections), counts the live
//! DNATed connections in conntrack per frontend and backend, reads the per-backend counters the
//! packet path keeps (new connections, packets, bytes) twice `--interval` apart for a rate of
//! new connections, filters, and prints a table or JSON (`--watch`: again every interval). A
//! NodePort's connections and counters are those whose original destination is any local
//! address with that port. The counters are keyed by frontend address, not port: two ports of
//! one address sent to the same backend port show the same numbers. With `-f`, it also
//! compiles the input for this node and flags drift: the operations `compile -f` would apply to
//! make the kernel match.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use kube_nft_compiler::ir::{Family, L4Proto};
use kube_nft_compiler::show::{self, Frontend, Row};
use kube_nft_compiler::trace::Env;
use kube_nft_runtime::conntrack::{self, Census, Count};
use kube_nft_runtime::counters::{self, Counters, Counts};

use kube_nft_compiler::plan::plan;

use super::{load_and_compile, print_stdout, read_node, UsageError};
use crate::cli::{InputArgs, ShowArgs, ShowFormat};

/// Runs `show`; exit 0.
pub(super) fn run(args: &ShowArgs) -> anyhow::Result<u8> {
    if !args.watch {
        print_stdout(&text(args)?)?;
        return Ok(0);
    }
    let mut previous = read_counters()?;
    let mut refreshes = 0;
    while args.count.is_none_or(|n| refreshes < n) {
        std::thread::sleep(args.interval);
        let (text, now) = frame(args, Some(&previous))?;
        // Clear the terminal and home the cursor, as `watch` does.
        print_stdout(&format!("\x1b[H\x1b[2J{text}"))?;
        previous = now;
        refreshes += 1;
    }
    Ok(0)
}

/// What `show` prints, for the calling thread's network namespace (`demo` calls it in the
/// lab's node): the counters are read, and again after `--interval` for rates.
pub(super) fn text(args: &ShowArgs) -> anyhow::Result<String> {
    let before = if args.interval.is_zero() {
        None
    } else {
        let before = read_counters()?;
        std::thread::sleep(args.interval);
        Some(before)
    };
    Ok(frame(args, before.as_ref())?.0)
}

fn read_counters() -> anyhow::Result<Counters> {
    counters::read().context("read the per-backend counters")
}

/// One picture of the node, with rates since `before`; the counters it read.
fn frame(args: &ShowArgs, before: Option<&Counters>) -> anyhow::Result<(String, Counters)> {
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
    let now = read_counters()?;
    let counted = Counted::new(&now, before);
    let local: BTreeSet<IpAddr> = local.into_iter().collect();
    let rows: Vec<Shown> = show::rows_where(&ruleset, &env, |f| wanted(args, address, &local, f))
        .into_iter()
        .map(|row| Shown::new(row, &census, &counted, &local))
        .collect();
    let text = match args.output {
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
    };
    Ok((text, now))
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

/// The counters by `(protocol, backend)`, each with its frontend address, its counts, and the
/// rate of new connections since the read before (if there was one).
struct Counted {
    by_backend: HashMap<(L4Proto, SocketAddr), Vec<Counter>>,
    rates: bool,
}

/// One frontend address's counts for a backend, and its rate of new connections.
type Counter = (IpAddr, Counts, Option<f64>);

impl Counted {
    fn new(now: &Counters, before: Option<&Counters>) -> Counted {
        let mut by_backend: HashMap<_, Vec<_>> = HashMap::new();
        for (pair, counts) in &now.pairs {
            let rate = before.map(|before| {
                let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
                // A counter smaller than before was recreated (it expired, or the tables
                // were): everything it holds is new.
                let earlier = before.pairs.get(pair).map_or(0, |c| c.connections);
                let new = counts
                    .connections
                    .checked_sub(earlier)
                    .unwrap_or(counts.connections);
                new as f64 / seconds
            });
            by_backend
                .entry((pair.proto, SocketAddr::new(pair.backend, pair.port)))
                .or_default()
                .push((pair.frontend, *counts, rate));
        }
        Counted {
            by_backend,
            rates: before.is_some(),
        }
    }
}

/// One backend's counters, summed over the frontend addresses of a row.
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    counts: Counts,
    /// New connections per second, when two reads were made.
    rate: Option<f64>,
}

/// A row with its live numbers.
struct Shown {
    row: Row,
    /// Per backend, in `row.backends` order.
    counts: Vec<Count>,
    /// Per backend, in `row.backends` order.
    traffic: Vec<Traffic>,
    /// What looks wrong.
    flags: Vec<String>,
}

impl Shown {
    fn new(row: Row, census: &ByTarget, counted: &Counted, local: &BTreeSet<IpAddr>) -> Shown {
        let f = &row.frontend;
        let proto = proto_number(f.proto);
        let reaches = |dst: &IpAddr| match f.addr {
            Some(a) => *dst == a,
            None => local.contains(dst) && Family::of(*dst) == f.family,
        };
        let traffic: Vec<Traffic> = (row.backends.iter())
            .map(|b| {
                let mut sum = Traffic {
                    counts: Counts::default(),
                    rate: counted.rates.then_some(0.0),
                };
                let pairs = counted
                    .by_backend
                    .get(&(f.proto, SocketAddr::new(b.addr, b.port)))
                    .map_or(&[][..], Vec::as_slice);
                for (frontend, counts, rate) in pairs {
                    if reaches(frontend) {
                        sum.counts.connections += counts.connections;
                        sum.counts.packets += counts.packets;
                        sum.counts.bytes += counts.bytes;
                        if let (Some(sum), Some(rate)) = (&mut sum.rate, rate) {
                            *sum += rate;
                        }
                    }
                }
                sum
            })
            .collect();
        let counts: Vec<Count> = (row.backends.iter())
            .map(|b| {
                let target = SocketAddr::new(b.addr, b.port);
                let mut sum = Count::default();
                let flows = census
                    .get(&(proto, f.port, target))
                    .map_or(&[][..], Vec::as_slice);
                for (dst, c) in flows {
                    if reaches(dst) {
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
        Shown {
            row,
            counts,
            traffic,
            flags,
        }
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
        "NEW/s",
        "PACKETS",
        "BYTES",
    ];
    let mut lines: Vec<[String; 11]> = Vec::new();
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
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        let numbers = shown.counts.iter().zip(&shown.traffic);
        for (i, (b, (c, t))) in shown.row.backends.iter().zip(numbers).enumerate() {
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
                t.rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
                t.counts.packets.to_string(),
                human_bytes(t.counts.bytes),
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

/// `1234B`, `98KiB`, `3.2MiB`: binary units, no decimals from 10 up, no space (a cell is one
/// word for `awk`).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// `{"rows": [{"service", "via", "protocol", "address" (null for a NodePort), "port",
/// "family", "scheduler", "backends": [{"address", "port", "share", "connections",
/// "unreplied", "new_connections", "new_per_second" (null without two reads), "packets",
/// "bytes"}], "otherwise": [{"fate", "probability"}], "flags": [...]}], "drift": null or the
/// operations `compile -f` would apply, summed up}`; shares and probabilities are exact
/// fractions as strings (`"1/3"`).
fn json(rows: &[Shown], drift: Option<&str>) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|shown| {
            let f = &shown.row.frontend;
            let backends: Vec<serde_json::Value> = (shown.row.backends.iter())
                .zip(shown.counts.iter().zip(&shown.traffic))
                .map(|(b, (c, t))| {
                    serde_json::json!({
                        "address": b.addr.to_string(),
                        "port": b.port,
                        "share": b.share.to_string(),
                        "connections": c.conns,
                        "unreplied": c.unreplied,
                        "new_connections": t.counts.connections,
                        "new_per_second": t.rate,
                        "packets": t.counts.packets,
                        "bytes": t.counts.bytes,
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
    fn byte_counts_read_like_ls_h() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(98 * 1024 + 100), "98KiB");
        assert_eq!(human_bytes(5 << 30), "5.0GiB");
    }

    #[test]
    fn via_names_are_kube_proxy_words() {
        use kube_nft_compiler::show::Via;
        assert_eq!(Via::ClusterIp.as_str(), "ClusterIP");
        assert_eq!(Via::NodePort.as_str(), "NodePort");
    }
}
