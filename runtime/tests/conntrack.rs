//! Kernel tests of the conntrack reconciler and its ctnetlink layer, each in a throwaway network
//! namespace, with the `conntrack` binary (conntrack-tools) as the oracle that inserts and lists
//! entries: what the kernel filters in a dump (family, protocol, zone, mark) and that our
//! decoding of a dump lists exactly what `conntrack -L` lists; that a delete removes exactly
//! one entry (its zone, its id: a stale id or a second delete is `ENOENT`, and the entry of
//! another zone survives); that a reconcile pass deletes exactly the stale UDP/SCTP entries of
//! a mixed table and nothing else (TCP, unrelated flows, other nodes' NodePorts, un-NATed
//! entries of a Service without endpoints); and, with real packets through rules programmed
//! over netlink, that a UDP client with a fixed source port stays on a removed endpoint until
//! the reconcile and follows its Service right after, while an established TCP connection to
//! that endpoint and an unrelated UDP flow keep their entries. [`reconcile_at_100k_entries`]
//! measures a pass over a 100k-entry table (prints the numbers; bounds are loose). With root,
//! [`kernel_replies_match_the_recorded_fixtures`] also records dump replies of a few entries as
//! annotated fixtures under `runtime/testdata/netlink/conntrack/` (`UPDATE_FIXTURES=1
//! cargo test -p kube-nft-runtime --test conntrack` rewrites them), which the unit tests of
//! `netlink::conntrack` decode without a kernel. Needs root, `nft`, `ip` and `conntrack`;
//! prints `SKIPPED` where it cannot run, and fails under `CI=true`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_nft_compiler::conntrack::{Destinations, Stale, Targets, Tuple};
use kube_nft_compiler::ir::{Family, L4Proto};
use kube_nft_compiler::model::{load, Source};
use kube_nft_compiler::{compile, Config};
use kube_nft_runtime::apply;
use kube_nft_runtime::conntrack::{reconcile, reconcile_here};
use kube_nft_runtime::netlink::conntrack::{self as ct, DumpFilter, Entry, ZoneDirection};
use kube_nft_runtime::netlink::socket::{self, ConntrackSocket, Errno};
use kube_nft_testkit::netns::{can_run, in_netns, temp_path};

/// Bound on every wait for a reply in these tests.
const PATIENCE: Duration = Duration::from_secs(3);

/// `NLM_F_DUMP_FILTERED`: the kernel sets it on the replies of a dump it filtered.
const NLM_F_DUMP_FILTERED: u16 = 0x20;

/// Whether the kernel tests can run here, and `conntrack` is installed (fails under `CI=true`
/// when not).
fn runnable(test: &str) -> bool {
    if !can_run(test) {
        return false;
    }
    match Command::new("conntrack").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        other => {
            let why = format!("the conntrack binary (conntrack-tools) is missing: {other:?}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: CI=true but {why}");
            }
            eprintln!("\n*** SKIPPED: {test}: {why} ***\n");
            false
        }
    }
}

/// `conntrack ARGS` in the calling thread's namespace; panics with its stderr on failure.
fn conntrack(args: &[&str]) -> String {
    let out = Command::new("conntrack")
        .args(args)
        .output()
        .expect("run conntrack");
    assert!(
        out.status.success(),
        "conntrack {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `conntrack -I` with the arguments of one line.
fn insert(args: &str) {
    let mut all = vec!["-I"];
    all.extend(args.split_whitespace());
    conntrack(&all);
}

/// `ip ARGS` in the calling thread's namespace.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One entry as `conntrack -L -o save` prints it: protocol name, original and reply tuples,
/// zone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    proto: String,
    original: (IpAddr, u16, IpAddr, u16),
    reply: (IpAddr, u16, IpAddr, u16),
    zone: Option<u16>,
}

/// Every entry of both families, per the oracle.
fn listed() -> BTreeSet<Listed> {
    let mut out = BTreeSet::new();
    for family in ["ipv4", "ipv6"] {
        let text = conntrack(&["-L", "-f", family, "-o", "save"]);
        for line in text.lines().filter(|l| l.starts_with("-A")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let opt = |name: &str| {
                words
                    .iter()
                    .position(|w| *w == name)
                    .and_then(|i| words.get(i + 1))
                    .copied()
            };
            let addr = |name| opt(name).and_then(|v| v.parse().ok()).expect(name);
            let port = |name| opt(name).map_or(0, |v| v.parse().expect(name));
            out.insert(Listed {
                proto: opt("-p").expect("-p").to_owned(),
                original: (addr("-s"), port("--sport"), addr("-d"), port("--dport")),
                reply: (
                    addr("-r"),
                    port("--reply-port-src"),
                    addr("-q"),
                    port("--reply-port-dst"),
                ),
                zone: opt("-w").map(|z| z.parse().expect("zone")),
            });
        }
    }
    out
}

/// Our decoding of an entry, in the oracle's terms.
fn as_listed(e: &Entry) -> Listed {
    let proto = match e.flow.proto {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "other",
    };
    let t = |t: &Tuple| (t.src, t.src_port, t.dst, t.dst_port);
    Listed {
        proto: proto.to_owned(),
        original: t(&e.flow.original),
        reply: t(&e.flow.reply),
        zone: e
            .zone
            .filter(|z| z.direction == ZoneDirection::Both)
            .map(|z| z.id),
    }
}

/// One dump of ours: every entry, and the flags of each reply.
fn dump(family: Family, filter: &DumpFilter) -> Result<Vec<(Entry, u16)>, socket::Error> {
    let mut socket = ConntrackSocket::open()?;
    let mut out = Vec::new();
    socket.dump(
        &ct::dump_request(family, filter),
        Instant::now() + PATIENCE,
        |bytes| {
            let flags = u16::from_ne_bytes([bytes[6], bytes[7]]);
            out.push((ct::entry(bytes).expect("decode a dumped entry"), flags));
        },
    )?;
    Ok(out)
}

fn entries(family: Family, filter: &DumpFilter) -> Vec<Entry> {
    dump(family, filter)
        .expect("dump")
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

/// A mixed table: UDP, TCP and SCTP in IPv4, UDP in IPv6, UDP in zone 7 and with mark 0x4000.
const MIXED: &[&str] = &[
    "-p udp -s 10.0.0.5 -d 172.30.0.10 --sport 4000 --dport 53 -r 10.0.1.11 -q 10.0.0.5 \
     --reply-port-src 5353 --reply-port-dst 4000 -t 100 -u SEEN_REPLY",
    "-p tcp -s 10.0.0.5 -d 172.30.0.10 --sport 4001 --dport 80 -t 100 --state ESTABLISHED \
     -u SEEN_REPLY,ASSURED",
    "-p sctp -s 10.0.0.5 -d 172.30.0.10 --sport 4002 --dport 9 --orig-vtag 1 --reply-vtag 2 \
     --state ESTABLISHED -t 100",
    "-p udp -s fd00::5 -d fd00:30::10 --sport 4000 --dport 53 -t 100",
    "-p udp -s 10.0.0.5 -d 172.30.0.10 --sport 4003 --dport 53 -t 100 -w 7",
    "-p udp -s 10.0.0.5 -d 172.30.0.10 --sport 4004 --dport 53 -t 100 -m 16384",
];

#[test]
fn the_kernel_filters_dumps_by_family_protocol_zone_and_mark() {
    if !runnable("the_kernel_filters_dumps_by_family_protocol_zone_and_mark") {
        return;
    }
    in_netns(|_| {
        for args in MIXED {
            insert(args);
        }
        let ports = |family, filter: DumpFilter| -> Vec<u16> {
            let replies = dump(family, &filter).expect("dump");
            // Every reply of a filtered dump says so.
            assert!(
                replies
                    .iter()
                    .all(|(_, flags)| flags & NLM_F_DUMP_FILTERED != 0),
                "{filter:?}"
            );
            let mut ports: Vec<u16> = replies
                .iter()
                .map(|(e, _)| e.flow.original.src_port)
                .collect();
            ports.sort();
            ports
        };
        let udp = DumpFilter::proto(17);
        assert_eq!(ports(Family::Ip, udp), [4000, 4003, 4004]);
        assert_eq!(ports(Family::Ip6, udp), [4000]);
        assert_eq!(ports(Family::Ip, DumpFilter::proto(132)), [4002]);
        assert_eq!(ports(Family::Ip, DumpFilter::proto(6)), [4001]);
        assert_eq!(
            ports(Family::Ip, DumpFilter::default()),
            [4000, 4001, 4002, 4003, 4004]
        );
        let zone = DumpFilter {
            zone: Some(7),
            ..udp
        };
        assert_eq!(ports(Family::Ip, zone), [4003]);
        let mark = DumpFilter {
            mark: Some((0x4000, 0xffff_ffff)),
            ..DumpFilter::default()
        };
        assert_eq!(ports(Family::Ip, mark), [4004]);
        // Our decoding lists exactly what conntrack lists.
        let ours: BTreeSet<Listed> = [Family::Ip, Family::Ip6]
            .into_iter()
            .flat_map(|f| entries(f, &DumpFilter::default()))
            .map(|e| as_listed(&e))
            .collect();
        assert_eq!(ours, listed());
        assert_eq!(ours.len(), MIXED.len());
        // Zones and marks decode as set.
        let all = entries(Family::Ip, &udp);
        let zoned = all.iter().find(|e| e.flow.original.src_port == 4003);
        assert_eq!(zoned.and_then(|e| e.zone).map(|z| z.id), Some(7));
        let marked = all.iter().find(|e| e.flow.original.src_port == 4004);
        assert_eq!(marked.map(|e| e.mark), Some(0x4000));
    });
}

#[test]
fn a_protocol_filter_needs_a_family() {
    if !runnable("a_protocol_filter_needs_a_family") {
        return;
    }
    in_netns(|_| {
        insert(MIXED[0]);
        // CTA_FILTER with NFPROTO_UNSPEC: the kernel refuses it (`EOPNOTSUPP`), which is what
        // the reconciler falls back on; we never send it.
        let mut request = ct::dump_request(Family::Ip, &DumpFilter::proto(17));
        request[16] = 0;
        let mut socket = ConntrackSocket::open().expect("open");
        let err = socket
            .dump(&request, Instant::now() + PATIENCE, |_| {})
            .expect_err("the kernel refuses a tuple filter without a family");
        assert!(
            matches!(
                err,
                socket::Error::Conntrack {
                    errno: Errno(libc::EOPNOTSUPP),
                    ..
                }
            ),
            "{err:?}"
        );
    });
}

#[test]
fn deletes_are_exact_and_enoent_means_gone() {
    if !runnable("deletes_are_exact_and_enoent_means_gone") {
        return;
    }
    in_netns(|_| {
        let flow = "-p udp -s 10.0.0.5 -d 172.30.0.10 --sport 4000 --dport 53 -t 100";
        insert(flow);
        insert(&format!("{flow} -w 7"));
        insert("-p udp -s 10.0.0.6 -d 172.30.0.10 --sport 4000 --dport 53 -t 100 --orig-zone 9");
        insert("-p udp -s 10.0.0.7 -d 172.30.0.10 --sport 4000 --dport 53 -t 100 --reply-zone 9");
        let all = entries(Family::Ip, &DumpFilter::proto(17));
        assert_eq!(all.len(), 4);
        let find = |src: &str, zone: Option<u16>| -> Entry {
            all.iter()
                .find(|e| e.flow.original.src.to_string() == src && e.zone.map(|z| z.id) == zone)
                .cloned()
                .unwrap_or_else(|| panic!("{src} zone {zone:?} in {all:?}"))
        };
        let in_zone_7 = find("10.0.0.5", Some(7));
        let plain = find("10.0.0.5", None);
        let mut socket = ConntrackSocket::open().expect("open");
        let mut delete = |e: &Entry| socket.delete(&[ct::delete_request(e)]).expect("delete")[0];

        // A stale id: nothing is deleted.
        let mut wrong = in_zone_7.clone();
        wrong.id = wrong.id.map(|id| id ^ 1);
        assert_eq!(delete(&wrong), Some(Errno(libc::ENOENT)));
        assert_eq!(entries(Family::Ip, &DumpFilter::proto(17)).len(), 4);
        // The zone-7 entry goes, the same tuple in zone 0 stays; a second delete finds nothing.
        assert_eq!(delete(&in_zone_7), None);
        assert_eq!(delete(&in_zone_7), Some(Errno(libc::ENOENT)));
        let left = entries(Family::Ip, &DumpFilter::proto(17));
        assert_eq!(left.len(), 3);
        assert!(left.contains(&plain), "{left:?}");
        // Direction-only zones: the original one is looked up in its zone, the reply one in
        // the default zone.
        let orig = find("10.0.0.6", Some(9));
        assert_eq!(
            orig.zone.map(|z| z.direction),
            Some(ZoneDirection::Original)
        );
        assert_eq!(delete(&orig), None);
        let reply = find("10.0.0.7", Some(9));
        assert_eq!(reply.zone.map(|z| z.direction), Some(ZoneDirection::Reply));
        assert_eq!(delete(&reply), None);
        assert_eq!(
            entries(Family::Ip, &DumpFilter::proto(17)),
            vec![plain.clone()]
        );

        // A full batch, every other entry already gone: each answered in order.
        let mut lines = String::new();
        for i in 0..socket::CONNTRACK_DELETE_BATCH {
            lines.push_str(&format!(
                "-A -t 100 -u UNSET -s 10.1.{}.{} -d 172.30.0.10 -r 172.30.0.10 -q 10.1.{}.{} \
                 -p udp --sport 4000 --dport 53 --reply-port-src 53 --reply-port-dst 4000\n",
                i / 200,
                i % 200,
                i / 200,
                i % 200
            ));
        }
        let file = temp_path("batch.conntrack");
        std::fs::write(&file, lines).expect("write");
        conntrack(&["-R", file.to_str().expect("path")]);
        let _ = std::fs::remove_file(&file);
        let mut batch = entries(Family::Ip, &DumpFilter::proto(17));
        batch.retain(|e| e.flow.original.src.to_string().starts_with("10.1."));
        batch.sort_by_key(|e| e.flow.original.src);
        assert_eq!(batch.len(), socket::CONNTRACK_DELETE_BATCH);
        let mut socket = ConntrackSocket::open().expect("open");
        let odd: Vec<Vec<u8>> = batch
            .iter()
            .skip(1)
            .step_by(2)
            .map(ct::delete_request)
            .collect();
        assert!(socket
            .delete(&odd)
            .expect("delete")
            .iter()
            .all(Option::is_none));
        let all: Vec<Vec<u8>> = batch.iter().map(ct::delete_request).collect();
        let answers = socket.delete(&all).expect("delete");
        for (i, answer) in answers.iter().enumerate() {
            let want = if i % 2 == 1 {
                Some(Errno(libc::ENOENT))
            } else {
                None
            };
            assert_eq!(*answer, want, "delete {i}");
        }
        assert_eq!(entries(Family::Ip, &DumpFilter::proto(17)), vec![plain]);
    });
}

// ---------------------------------------------------------------------------------------------
// Reconcile

/// Loads cluster objects.
fn objects(docs: &[serde_json::Value]) -> kube_nft_compiler::model::Snapshot {
    let text = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string();
    load(&[Source {
        origin: "test".into(),
        text,
    }])
    .expect("objects load")
    .snapshot
}

/// node-a (192.168.0.2, fd00::2) and Services: `dns` (UDP 53 → 5353 and SCTP 9 → 9, TCP 80 →
/// 8080; dual-stack; NodePort 30053 for UDP) with endpoints `eps`, and `empty` (UDP, no
/// endpoints).
fn cluster(eps: &[&str]) -> kube_nft_compiler::model::Snapshot {
    use serde_json::json;
    let mut docs = vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"},
                                 {"type": "InternalIP", "address": "fd00::2"}]}}),
    ];
    let slice = |name: &str, family: &str, eps: Vec<&str>| {
        let endpoints: Vec<_> = eps
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": format!("{name}-{family}"),
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": family, "endpoints": endpoints,
            "ports": [{"name": "dns", "protocol": "UDP", "port": 5353},
                      {"name": "sctp", "protocol": "SCTP", "port": 9},
                      {"name": "http", "protocol": "TCP", "port": 8080}]})
    };
    docs.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": "dns"},
        "spec": {"type": "NodePort", "clusterIP": "172.30.0.10",
            "clusterIPs": ["172.30.0.10", "fd00:30::10"], "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack", "selector": {"app": "dns"},
            "ports": [
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353,
                 "nodePort": 30053},
                {"name": "sctp", "protocol": "SCTP", "port": 9, "targetPort": 9,
                 "nodePort": 30009},
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080,
                 "nodePort": 30080}]}}));
    docs.push(slice(
        "dns",
        "IPv4",
        eps.iter().copied().filter(|a| !a.contains(':')).collect(),
    ));
    docs.push(slice(
        "dns",
        "IPv6",
        eps.iter().copied().filter(|a| a.contains(':')).collect(),
    ));
    docs.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": "empty"},
        "spec": {"clusterIP": "172.30.0.20", "selector": {"app": "empty"},
            "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}]}}));
    docs.push(slice("empty", "IPv4", vec![]));
    objects(&docs)
}

fn config() -> Config {
    Config {
        hostname: Some("node-a".into()),
        ..Config::default()
    }
}

/// A UDP (or TCP, SCTP) entry from `client` to `to`, replied from `from`, in `conntrack -I`
/// terms.
fn entry_args(proto: &str, client: &str, to: &str, from: &str, extra: &str) -> String {
    let (c, t, f): (SocketAddr, SocketAddr, SocketAddr) = (
        client.parse().expect("client"),
        to.parse().expect("to"),
        from.parse().expect("from"),
    );
    let state = match proto {
        "tcp" => "--state ESTABLISHED",
        "sctp" => "--state ESTABLISHED --orig-vtag 1 --reply-vtag 2",
        _ => "",
    };
    format!(
        "-p {proto} -s {} -d {} --sport {} --dport {} -r {} -q {} --reply-port-src {} \
         --reply-port-dst {} -t 100 {state} {extra}",
        c.ip(),
        t.ip(),
        c.port(),
        t.port(),
        f.ip(),
        c.ip(),
        f.port(),
        c.port()
    )
}

#[test]
fn a_pass_deletes_exactly_the_stale_entries() {
    if !runnable("a_pass_deletes_exactly_the_stale_entries") {
        return;
    }
    in_netns(|_| {
        ip("link set lo up");
        ip("addr add 192.168.0.2/32 dev lo");
        ip("addr add fd00::2/128 dev lo nodad");
        // Endpoint 10.0.1.11 and fd00:10::11 remain; 10.0.1.12 was removed. The Service
        // `gone` (172.30.0.99) was ours and has been deleted.
        let compiled = compile(&cluster(&["10.0.1.11", "fd00:10::11"]), &config());
        apply::replace(&compiled.ruleset).expect("program");
        let mut destinations = Destinations::of_graph(&compiled.graph);
        let gone: BTreeSet<_> = kube_nft_compiler::conntrack::frontends_of(
            &compile(
                &objects(&[serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "ns", "name": "gone"},
                "spec": {"clusterIP": "172.30.0.99", "ports": [
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}]}})]),
                &config(),
            )
            .ruleset,
        );
        assert_eq!(gone.len(), 1);
        destinations.retire(gone);

        let keep = [
            entry_args(
                "udp",
                "10.9.0.1:4000",
                "172.30.0.10:53",
                "10.0.1.11:5353",
                "",
            ),
            entry_args(
                "udp",
                "10.9.0.2:4000",
                "192.168.0.2:30053",
                "10.0.1.11:5353",
                "",
            ),
            entry_args(
                "udp",
                "[2001:db8::1]:4000",
                "[fd00:30::10]:53",
                "[fd00:10::11]:5353",
                "",
            ),
            // TCP to the removed endpoint: never touched.
            entry_args(
                "tcp",
                "10.9.0.3:4000",
                "172.30.0.10:80",
                "10.0.1.12:8080",
                "",
            ),
            // Not to a Service: a pod directly, the outside world, another node's NodePort,
            // a local address outside the NodePort addresses, loopback.
            entry_args(
                "udp",
                "10.9.0.4:4000",
                "10.0.1.12:5353",
                "10.0.1.12:5353",
                "",
            ),
            entry_args("udp", "10.9.0.5:4000", "8.8.8.8:53", "8.8.8.8:53", ""),
            entry_args(
                "udp",
                "10.9.0.6:4000",
                "192.168.0.3:30053",
                "192.168.0.3:30053",
                "",
            ),
            entry_args(
                "udp",
                "10.9.0.7:4000",
                "127.0.0.1:30053",
                "10.0.1.12:5353",
                "",
            ),
            // Rejected while `empty` has no endpoints: nothing better to do with it.
            entry_args(
                "udp",
                "10.9.0.8:4000",
                "172.30.0.20:53",
                "172.30.0.20:53",
                "",
            ),
            // Un-NATed to the deleted Service's address: not ours any more, nothing to fix.
            entry_args(
                "udp",
                "10.9.0.9:4000",
                "172.30.0.99:53",
                "172.30.0.99:53",
                "",
            ),
        ];
        let delete = [
            (
                entry_args(
                    "udp",
                    "10.9.1.1:4000",
                    "172.30.0.10:53",
                    "10.0.1.12:5353",
                    "",
                ),
                Stale::EndpointGone,
            ),
            (
                entry_args(
                    "udp",
                    "10.9.1.2:4000",
                    "172.30.0.10:53",
                    "172.30.0.10:53",
                    "",
                ),
                Stale::NeverNatted,
            ),
            (
                entry_args(
                    "udp",
                    "10.9.1.3:4000",
                    "192.168.0.2:30053",
                    "10.0.1.12:5353",
                    "",
                ),
                Stale::EndpointGone,
            ),
            (
                entry_args(
                    "udp",
                    "[2001:db8::4]:4000",
                    "[fd00::2]:30053",
                    "[fd00:10::12]:5353",
                    "",
                ),
                Stale::EndpointGone,
            ),
            (
                entry_args("sctp", "10.9.1.5:4000", "172.30.0.10:9", "10.0.1.12:9", ""),
                Stale::EndpointGone,
            ),
            (
                entry_args(
                    "udp",
                    "10.9.1.6:4000",
                    "172.30.0.99:53",
                    "10.0.1.77:5353",
                    "",
                ),
                Stale::ServiceGone,
            ),
            (
                entry_args(
                    "udp",
                    "10.9.1.7:4000",
                    "172.30.0.10:53",
                    "10.0.1.12:5353",
                    "-w 7",
                ),
                Stale::EndpointGone,
            ),
        ];
        for args in keep.iter().chain(delete.iter().map(|(a, _)| a)) {
            insert(args);
        }
        let before = listed();
        assert_eq!(before.len(), keep.len() + delete.len());

        let report = reconcile_here(&destinations).expect("reconcile");
        eprintln!("{report}");
        let after = listed();
        let kept: BTreeSet<String> = after.iter().map(|l| format!("{:?}", l.original)).collect();
        for args in &keep {
            let client: IpAddr = args
                .split_whitespace()
                .nth(3)
                .expect("-s")
                .parse()
                .expect("ip");
            assert!(
                after.iter().any(|l| l.original.0 == client),
                "deleted what had to stay: {args}\n{kept:?}"
            );
        }
        assert_eq!(after.len(), keep.len(), "{after:#?}");
        assert_eq!(report.deleted(), delete.len());
        for reason in Stale::ALL {
            let want = delete.iter().filter(|(_, r)| *r == reason).count();
            assert_eq!(report.deleted_for(reason), want, "{reason}");
        }
        assert!(report.families.iter().all(|f| f.kernel_filtered));
        // UDP and SCTP only: the TCP entry was never even sent by the kernel.
        assert_eq!(report.examined(), keep.len() + delete.len() - 1);
        // A second pass finds nothing.
        let again = reconcile_here(&destinations).expect("reconcile");
        assert_eq!(again.deleted(), 0);
        // Nothing at all to reconcile: no dump.
        let nothing = reconcile(&Destinations::default(), &BTreeSet::new()).expect("reconcile");
        assert!(nothing.families.is_empty());
    });
}

// ---------------------------------------------------------------------------------------------
// Real packets

/// A UDP server answering every datagram with `name`, until `stop`.
fn udp_server(
    addr: &str,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let socket = UdpSocket::bind(addr).expect("bind the UDP server");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), peer);
            }
        }
    })
}

/// A TCP server that echoes `name` for each line on each connection, until `stop`.
fn tcp_server(
    addr: &str,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let listener = TcpListener::bind(addr).expect("bind the TCP server");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((conn, _)) = listener.accept() {
                conn.set_nonblocking(true).expect("nonblocking");
                conns.push(conn);
            }
            let mut buf = [0u8; 64];
            for conn in &mut conns {
                if let Ok(n) = conn.read(&mut buf) {
                    if n > 0 {
                        let _ = conn.write_all(name.as_bytes());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// One request on a connected UDP socket: who answered.
fn ask(socket: &UdpSocket) -> String {
    socket.send(b"?").expect("send");
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("an answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn ask_tcp(conn: &mut TcpStream) -> String {
    conn.write_all(b"?\n").expect("write");
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).expect("an answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The id of the entry whose original source is `src`.
fn id_of(src: SocketAddr) -> Option<u32> {
    [Family::Ip]
        .into_iter()
        .flat_map(|f| entries(f, &DumpFilter::default()))
        .find(|e| e.flow.original.source() == src)
        .and_then(|e| e.id)
}

#[test]
fn a_fixed_port_udp_client_follows_its_service_once_reconciled() {
    if !runnable("a_fixed_port_udp_client_follows_its_service_once_reconciled") {
        return;
    }
    in_netns(|_| {
        ip("link set lo up");
        for a in ["192.168.0.2", "10.0.1.11", "10.0.1.12"] {
            ip(&format!("addr add {a}/32 dev lo"));
        }
        // Service addresses need a route before nat-output can DNAT them.
        ip("route add 172.30.0.0/16 dev lo");
        let stop = Arc::new(AtomicBool::new(false));
        let servers = vec![
            udp_server("10.0.1.11:5353", "old", stop.clone()),
            udp_server("10.0.1.12:5353", "new", stop.clone()),
            tcp_server("10.0.1.11:8080", "old", stop.clone()),
        ];
        let old = compile(&cluster(&["10.0.1.11"]), &config());
        apply::replace(&old.ruleset).expect("program");

        let client = UdpSocket::bind("192.168.0.2:40000").expect("bind");
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        client.connect("172.30.0.10:53").expect("connect");
        assert_eq!(ask(&client), "old");
        let mut tcp =
            TcpStream::connect_timeout(&"172.30.0.10:80".parse().expect("addr"), PATIENCE)
                .expect("connect over TCP");
        tcp.set_read_timeout(Some(PATIENCE)).expect("timeout");
        assert_eq!(ask_tcp(&mut tcp), "old");
        let tcp_source = tcp.local_addr().expect("address");
        // An unrelated UDP flow, straight to a pod.
        let other = UdpSocket::bind("192.168.0.2:40001").expect("bind");
        other.set_read_timeout(Some(PATIENCE)).expect("timeout");
        other.connect("10.0.1.11:5353").expect("connect");
        assert_eq!(ask(&other), "old");
        let ids = |what| {
            let ids = [
                id_of("192.168.0.2:40000".parse().expect("addr")),
                id_of(tcp_source),
                id_of("192.168.0.2:40001".parse().expect("addr")),
            ];
            assert!(ids.iter().all(Option::is_some), "{what}: {ids:?}");
            ids
        };
        let first = ids("before");

        // The endpoint is removed (the pod still answers): the rules change, the flow does not.
        let new = compile(&cluster(&["10.0.1.12"]), &config());
        apply::replace(&new.ruleset).expect("program");
        for _ in 0..3 {
            assert_eq!(ask(&client), "old", "stuck on the old endpoint's entry");
        }
        let mut destinations = Destinations::of_graph(&new.graph);
        destinations.inherit(&Destinations::of_graph(&old.graph));
        let report = reconcile_here(&destinations).expect("reconcile");
        assert_eq!(report.deleted(), 1, "{report}");
        assert_eq!(report.deleted_for(Stale::EndpointGone), 1);
        assert_eq!(ask(&client), "new", "the next datagram is DNATed afresh");

        // The TCP connection and the unrelated flow kept their entries (and work).
        assert_eq!(ask_tcp(&mut tcp), "old");
        assert_eq!(ask(&other), "old");
        let second = ids("after");
        // (The Service flow's new entry may carry the old id: the kernel derives ids from the
        // entry's address and tuple, and the freed entry's memory is often reused at once.
        // That it was replaced shows in the answer from the new endpoint above.)
        assert_eq!(
            first[1..],
            second[1..],
            "TCP and the unrelated flow kept theirs"
        );

        // Scaled to zero: the entry goes and datagrams are refused; back to one endpoint:
        // answered again.
        let zero = compile(&cluster(&[]), &config());
        apply::replace(&zero.ruleset).expect("program");
        let report = reconcile_here(&Destinations::of_graph(&zero.graph)).expect("reconcile");
        assert_eq!(report.deleted(), 1, "{report}");
        // The output hook's reject drops the datagram inside `send`, which says so.
        let refused = client.send(b"?").expect_err("rejected");
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
        apply::replace(&new.ruleset).expect("program");
        let _ = reconcile_here(&Destinations::of_graph(&new.graph)).expect("reconcile");
        assert_eq!(ask(&client), "new");

        stop.store(true, Ordering::Relaxed);
        for server in servers {
            server.join().expect("server");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Scale

/// Loads `n` entries with `conntrack -R` (a batch over ctnetlink, ~1 s for 100k): `line(i)` is
/// the `-o save` line of entry `i`.
fn load_entries(n: usize, line: impl Fn(usize) -> String) {
    let path = temp_path("entries.conntrack");
    let mut text = String::with_capacity(n * 180);
    for i in 0..n {
        text.push_str(&line(i));
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write");
    conntrack(&["-R", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
}

/// Client address `i` in 10.64.0.0/10.
fn client(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
}

fn save_line(proto: &str, i: usize, dst: &str, dport: u16, from: &str, sport: u16) -> String {
    let state = if proto == "tcp" {
        " --state ESTABLISHED"
    } else {
        ""
    };
    format!(
        "-A -t 600 -u SEEN_REPLY -s {c} -d {dst} -r {from} -q {c} -p {proto} --sport 4000 \
         --dport {dport} --reply-port-src {sport} --reply-port-dst 4000{state}",
        c = client(i)
    )
}

/// A 100k-entry table, three ways: every entry UDP to a Service and serving (a pass judges
/// 100k and deletes nothing), 100k TCP entries with 1k UDP (the kernel's protocol filter leaves
/// only the walk), and 100k stale UDP entries (a pass deletes them all); plus the fixed cost of
/// one filtered dump of an empty table (the walk over the hash, shared by every namespace).
/// Meanwhile a UDP client times its round trips through the Service's DNAT, to see whether a
/// pass stalls the packet path: samples during a pass against samples while nothing runs.
/// Prints the numbers (run with `--release --nocapture` for meaningful ones).
#[test]
fn reconcile_at_100k_entries() {
    if !runnable("reconcile_at_100k_entries") {
        return;
    }
    const N: usize = 100_000;
    in_netns(|_| {
        ip("link set lo up");
        for a in ["192.168.0.2", "10.0.1.11"] {
            ip(&format!("addr add {a}/32 dev lo"));
        }
        ip("route add 172.30.0.0/16 dev lo");
        let stop = Arc::new(AtomicBool::new(false));
        let server = udp_server("10.0.1.11:5353", "a", stop.clone());
        let compiled = compile(&cluster(&["10.0.1.11"]), &config());
        apply::replace(&compiled.ruleset).expect("program");
        // The IPv4 UDP frontends only: one dump per pass.
        let mut destinations = Destinations::default();
        for (frontend, targets) in Destinations::of_graph(&compiled.graph).iter() {
            if let Targets::Current(set) = targets {
                if frontend.family() == Family::Ip && frontend.proto == L4Proto::Udp {
                    destinations.claim(*frontend, set.clone());
                }
            }
        }
        assert_eq!(
            destinations.protocols(Family::Ip),
            BTreeSet::from([L4Proto::Udp])
        );
        assert!(destinations.protocols(Family::Ip6).is_empty());
        let none = BTreeSet::new();

        // A client timing round trips through the DNAT, all along.
        let probe_stop = Arc::new(AtomicBool::new(false));
        let probe = {
            let stop = probe_stop.clone();
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("192.168.0.2:40000").expect("bind");
                socket
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                socket.connect("172.30.0.10:53").expect("connect");
                let mut rtts = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(600);
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let start = Instant::now();
                    // A reply in flight while the test flushes the table (`conntrack -F`)
                    // is lost: counted, not fatal.
                    let answered = socket.send(b"?").is_ok() && socket.recv(&mut buf).is_ok();
                    rtts.push((start, answered.then(|| start.elapsed())));
                    std::thread::sleep(Duration::from_micros(200));
                }
                rtts
            })
        };
        let mut passes: Vec<(Instant, Instant)> = Vec::new();
        let mut busy: Vec<(Instant, Instant)> = Vec::new();
        let mut pass = |destinations: &Destinations| {
            let start = Instant::now();
            let report = reconcile(destinations, &none).expect("reconcile");
            passes.push((start, Instant::now()));
            report
        };
        let mut load = |n, line: &dyn Fn(usize) -> String| {
            let start = Instant::now();
            load_entries(n, line);
            busy.push((start, Instant::now()));
            start.elapsed()
        };
        std::thread::sleep(Duration::from_millis(500));

        let mut rows: Vec<(&str, Duration, usize, usize)> = Vec::new();
        let walk = {
            let start = Instant::now();
            let n = dump(Family::Ip, &DumpFilter::proto(17))
                .expect("dump")
                .len();
            // The probe's own flow.
            assert!(n <= 1, "{n}");
            start.elapsed()
        };
        rows.push(("(nearly) empty: one dump", walk, 1, 0));

        let took = load(N, &|i| {
            save_line("udp", i, "172.30.0.10", 53, "10.0.1.11", 5353)
        });
        // The kernel's share: the same dump, messages counted but not decoded.
        let raw = {
            let mut socket = ConntrackSocket::open().expect("open");
            let start = Instant::now();
            let request = ct::dump_request(Family::Ip, &DumpFilter::proto(17));
            let n = socket
                .dump(&request, Instant::now() + PATIENCE, |_| {})
                .expect("dump");
            assert!(n > N);
            start.elapsed()
        };
        rows.push(("100k UDP: dump, no decode", raw, N, 0));
        let report = pass(&destinations);
        assert!(report.examined() > N, "the probe's flow too");
        assert_eq!(report.deleted(), 0);
        rows.push(("100k serving UDP", report.duration, report.examined(), 0));
        conntrack(&["-F"]);

        load(N, &|i| {
            save_line("tcp", i, "172.30.0.10", 80, "10.0.1.12", 8080)
        });
        load(1000, &|i| {
            save_line("udp", i, "172.30.0.10", 53, "10.0.1.11", 5353)
        });
        let report = pass(&destinations);
        assert_eq!(report.deleted(), 0);
        assert!(report.examined() < 1010, "the kernel filtered TCP out");
        rows.push(("100k TCP + 1k UDP", report.duration, report.examined(), 0));
        conntrack(&["-F"]);

        load(N, &|i| {
            save_line("udp", i, "172.30.0.10", 53, "10.0.1.12", 5353)
        });
        let report = pass(&destinations);
        assert_eq!(report.deleted(), N);
        rows.push((
            "100k stale UDP",
            report.duration,
            report.examined(),
            report.deleted(),
        ));
        std::thread::sleep(Duration::from_millis(300));
        probe_stop.store(true, Ordering::Relaxed);
        let rtts = probe.join().expect("probe");
        stop.store(true, Ordering::Relaxed);
        server.join().expect("server");

        eprintln!("conntrack -R of {N} entries: {took:?}");
        eprintln!(
            "{:<24} {:>10} {:>9} {:>9}",
            "table", "pass", "examined", "deleted"
        );
        for (name, took, examined, deleted) in &rows {
            eprintln!("{name:<24} {took:>10.1?} {examined:>9} {deleted:>9}");
        }
        let inside = |windows: &[(Instant, Instant)], at: Instant| {
            windows.iter().any(|(a, b)| at >= *a && at <= *b)
        };
        let mut during: Vec<Duration> = Vec::new();
        let mut quiet: Vec<Duration> = Vec::new();
        let mut lost_during = 0;
        for (at, rtt) in &rtts {
            match (rtt, inside(&passes, *at)) {
                (Some(rtt), true) => during.push(*rtt),
                (None, true) => lost_during += 1,
                (Some(rtt), false) if !inside(&busy, *at) => quiet.push(*rtt),
                _ => {}
            }
        }
        assert_eq!(lost_during, 0, "no datagram is lost to a pass");
        for (what, mut samples) in [("during a pass", during), ("while idle", quiet)] {
            samples.sort();
            if samples.is_empty() {
                continue;
            }
            let pct = |p: usize| samples[(samples.len() - 1) * p / 100];
            eprintln!(
                "UDP round trip through the DNAT {what}: {} samples, p50 {:?}, p99 {:?}, max {:?}",
                samples.len(),
                pct(50),
                pct(99),
                samples[samples.len() - 1]
            );
        }
        // Loose bounds for a debug build on a busy machine.
        for (name, took, _, _) in &rows {
            assert!(*took < Duration::from_secs(20), "{name}: {took:?}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Recorded fixtures

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/netlink/conntrack")
}

/// The recorded scenarios: name, family, the `conntrack -I` arguments of the one entry, and
/// the protocol the dump asks for.
const SCENARIOS: &[(&str, Family, &str, u8)] = &[
    (
        "udp-ipv4-dnat",
        Family::Ip,
        "-p udp -s 10.0.0.5 -d 172.30.0.10 --sport 4000 --dport 53 -r 10.0.1.11 -q 10.0.0.5 \
         --reply-port-src 5353 --reply-port-dst 4000 -t 100 -u SEEN_REPLY",
        17,
    ),
    (
        "udp-ipv4-unreplied",
        Family::Ip,
        "-p udp -s 10.0.0.5 -d 172.30.0.10 --sport 4001 --dport 53 -t 100",
        17,
    ),
    (
        "udp-ipv6-zone-mark",
        Family::Ip6,
        "-p udp -s fd00::5 -d fd00:30::10 --sport 4000 --dport 53 -r fd00:10::11 -q fd00::5 \
         --reply-port-src 5353 --reply-port-dst 4000 -t 100 -w 7 -m 16384",
        17,
    ),
    (
        "udp-ipv4-orig-zone",
        Family::Ip,
        "-p udp -s 10.0.0.6 -d 172.30.0.10 --sport 4000 --dport 53 -t 100 --orig-zone 9",
        17,
    ),
    (
        "sctp-ipv4",
        Family::Ip,
        "-p sctp -s 10.0.0.5 -d 172.30.0.10 --sport 4002 --dport 9 -r 10.0.1.11 -q 10.0.0.5 \
         --reply-port-src 9 --reply-port-dst 4002 --orig-vtag 1 --reply-vtag 2 \
         --state ESTABLISHED -t 100",
        132,
    ),
    (
        "tcp-ipv4-established",
        Family::Ip,
        "-p tcp -s 10.0.0.5 -d 172.30.0.10 --sport 4003 --dport 80 -r 10.0.1.11 -q 10.0.0.5 \
         --reply-port-src 8080 --reply-port-dst 4003 --state ESTABLISHED \
         -u SEEN_REPLY,ASSURED -t 100",
        6,
    ),
];

/// What an attribute is, for its annotation.
#[derive(Clone, Copy)]
enum Kind {
    Nest(Ctx),
    U8,
    Be16,
    Be32,
    Hex32,
    Status,
    Addr,
    /// Changes from run to run (ids, timeouts, counters, use counts): masked.
    Volatile(&'static str),
    Raw,
    /// A `u8` state with the names of its enum.
    State(&'static [&'static str]),
}

/// `enum tcp_conntrack` and `enum sctp_conntrack`.
const TCP_STATES: &[&str] = &[
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];
const SCTP_STATES: &[&str] = &[
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    Tuple,
    Ip,
    Proto,
    ProtoInfo,
    Tcp,
    Sctp,
    Synproxy,
    Other,
}

fn spec(ctx: Ctx, ty: u16) -> (&'static str, Kind) {
    use Kind::*;
    match (ctx, ty) {
        (Ctx::Top, 1) => ("CTA_TUPLE_ORIG", Nest(Ctx::Tuple)),
        (Ctx::Top, 2) => ("CTA_TUPLE_REPLY", Nest(Ctx::Tuple)),
        (Ctx::Top, 3) => ("CTA_STATUS", Status),
        (Ctx::Top, 4) => ("CTA_PROTOINFO", Nest(Ctx::ProtoInfo)),
        (Ctx::Top, 7) => ("CTA_TIMEOUT", Volatile("seconds left")),
        (Ctx::Top, 8) => ("CTA_MARK", Hex32),
        (Ctx::Top, 9) => ("CTA_COUNTERS_ORIG", Volatile("traffic counters")),
        (Ctx::Top, 10) => ("CTA_COUNTERS_REPLY", Volatile("traffic counters")),
        (Ctx::Top, 11) => ("CTA_USE", Volatile("reference count")),
        (Ctx::Top, 12) => ("CTA_ID", Volatile("the entry's id")),
        (Ctx::Top, 18) => ("CTA_ZONE", Be16),
        (Ctx::Top, 20) => ("CTA_TIMESTAMP", Volatile("timestamps")),
        (Ctx::Top, 24) => ("CTA_SYNPROXY", Nest(Ctx::Synproxy)),
        (Ctx::Top, 27) => ("CTA_TIMESTAMP_EVENT", Volatile("timestamp")),
        (Ctx::Tuple, 1) => ("CTA_TUPLE_IP", Nest(Ctx::Ip)),
        (Ctx::Tuple, 2) => ("CTA_TUPLE_PROTO", Nest(Ctx::Proto)),
        (Ctx::Tuple, 3) => ("CTA_TUPLE_ZONE", Be16),
        (Ctx::Ip, 1) => ("CTA_IP_V4_SRC", Addr),
        (Ctx::Ip, 2) => ("CTA_IP_V4_DST", Addr),
        (Ctx::Ip, 3) => ("CTA_IP_V6_SRC", Addr),
        (Ctx::Ip, 4) => ("CTA_IP_V6_DST", Addr),
        (Ctx::Proto, 1) => ("CTA_PROTO_NUM", U8),
        (Ctx::Proto, 2) => ("CTA_PROTO_SRC_PORT", Be16),
        (Ctx::Proto, 3) => ("CTA_PROTO_DST_PORT", Be16),
        (Ctx::ProtoInfo, 1) => ("CTA_PROTOINFO_TCP", Nest(Ctx::Tcp)),
        (Ctx::ProtoInfo, 3) => ("CTA_PROTOINFO_SCTP", Nest(Ctx::Sctp)),
        (Ctx::Tcp, 1) => ("CTA_PROTOINFO_TCP_STATE", State(TCP_STATES)),
        (Ctx::Tcp, 2) => ("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", U8),
        (Ctx::Tcp, 3) => ("CTA_PROTOINFO_TCP_WSCALE_REPLY", U8),
        (Ctx::Tcp, 4) => ("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", Raw),
        (Ctx::Tcp, 5) => ("CTA_PROTOINFO_TCP_FLAGS_REPLY", Raw),
        (Ctx::Sctp, 1) => ("CTA_PROTOINFO_SCTP_STATE", State(SCTP_STATES)),
        (Ctx::Sctp, 2) => ("CTA_PROTOINFO_SCTP_VTAG_ORIGINAL", Raw),
        (Ctx::Sctp, 3) => ("CTA_PROTOINFO_SCTP_VTAG_REPLY", Raw),
        (Ctx::Synproxy, 1) => ("CTA_SYNPROXY_ISN", Be32),
        (Ctx::Synproxy, 2) => ("CTA_SYNPROXY_ITS", Be32),
        (Ctx::Synproxy, 3) => ("CTA_SYNPROXY_TSOFF", Be32),
        _ => ("attribute", Kind::Nest(Ctx::Other)),
    }
}

/// Annotated hex, one line per header field and attribute, nests indented; volatile payloads
/// and the sequence number, port id and `res_id` written as `xx`.
fn annotate(msg: &[u8]) -> String {
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let xx = |n: usize| vec!["xx"; n].join(" ");
    let mut out = String::new();
    let len = u32::from_ne_bytes(msg[0..4].try_into().expect("4 bytes"));
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    let flags = u16::from_ne_bytes([msg[6], msg[7]]);
    out.push_str(&format!("{}  # nlmsg_len = {len}\n", hex(&msg[0..4])));
    out.push_str(&format!(
        "{}  # nlmsg_type = {ty:#06x} (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW)\n",
        hex(&msg[4..6])
    ));
    let names: Vec<&str> = [
        (0x2, "NLM_F_MULTI"),
        (NLM_F_DUMP_FILTERED, "NLM_F_DUMP_FILTERED"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect();
    out.push_str(&format!(
        "{}  # nlmsg_flags = {flags:#x} ({})\n",
        hex(&msg[6..8]),
        names.join(" | ")
    ));
    out.push_str(&format!("{}  # nlmsg_seq (masked)\n", xx(4)));
    out.push_str(&format!("{}  # nlmsg_pid (masked: our port id)\n", xx(4)));
    let family = if msg[16] == 2 {
        "NFPROTO_IPV4"
    } else {
        "NFPROTO_IPV6"
    };
    out.push_str(&format!(
        "{:02x}  # nfgen_family = {} ({family})\n",
        msg[16], msg[16]
    ));
    out.push_str(&format!("{:02x}  # version = {}\n", msg[17], msg[17]));
    out.push_str(&format!("{}  # res_id (masked)\n", xx(2)));
    attrs(&msg[20..], Ctx::Top, 0, &mut out);
    out
}

fn attrs(mut rest: &[u8], ctx: Ctx, depth: usize, out: &mut String) {
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    while rest.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let raw = u16::from_ne_bytes([rest[2], rest[3]]);
        assert!(alen >= 4 && alen <= rest.len(), "bad attribute");
        let padded = (alen.div_ceil(4) * 4).min(rest.len());
        let value = &rest[4..alen];
        let pad = &rest[alen..padded];
        let indent = "  ".repeat(depth);
        let nested = if raw & 0x8000 != 0 {
            " | NLA_F_NESTED"
        } else {
            ""
        };
        let (name, kind) = spec(ctx, raw & 0x3fff);
        let name = if name == "attribute" {
            format!("attribute {}", raw & 0x3fff)
        } else {
            name.to_owned()
        };
        let with_pad = |shown: String| {
            if pad.is_empty() {
                shown
            } else {
                format!("{shown} {}", hex(pad))
            }
        };
        let line = match kind {
            Kind::Nest(Ctx::Other) | Kind::Raw => {
                format!(
                    "{} {}  # {name} = {}",
                    hex(&rest[..4]),
                    with_pad(hex(value)),
                    hex(value)
                )
            }
            Kind::Nest(inner) => {
                out.push_str(&format!(
                    "{indent}{}  # {name}{nested} ({} bytes)\n",
                    hex(&rest[..4]),
                    alen - 4
                ));
                attrs(value, inner, depth + 1, out);
                rest = &rest[padded..];
                continue;
            }
            Kind::Volatile(why) => format!(
                "{} {}  # {name} (masked: {why})",
                hex(&rest[..4]),
                vec!["xx"; padded - 4].join(" ")
            ),
            Kind::State(names) => format!(
                "{} {}  # {name} = {} ({})",
                hex(&rest[..4]),
                with_pad(hex(value)),
                value[0],
                names.get(usize::from(value[0])).copied().unwrap_or("?")
            ),
            Kind::U8 => format!(
                "{} {}  # {name} = {}",
                hex(&rest[..4]),
                with_pad(hex(value)),
                value[0]
            ),
            Kind::Be16 => format!(
                "{} {}  # {name} = {}",
                hex(&rest[..4]),
                with_pad(hex(value)),
                u16::from_be_bytes([value[0], value[1]])
            ),
            Kind::Be32 | Kind::Hex32 | Kind::Status => {
                let v = u32::from_be_bytes(value.try_into().expect("4 bytes"));
                let shown = match kind {
                    Kind::Be32 => v.to_string(),
                    Kind::Hex32 => format!("{v:#x}"),
                    _ => format!("{v:#x} ({})", ct::Status(v)),
                };
                format!("{} {}  # {name} = {shown}", hex(&rest[..4]), hex(value))
            }
            Kind::Addr => {
                let addr: IpAddr = match value.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(value).expect("4 bytes")),
                    _ => IpAddr::from(<[u8; 16]>::try_from(value).expect("16 bytes")),
                };
                format!("{} {}  # {name} = {addr}", hex(&rest[..4]), hex(value))
            }
        };
        out.push_str(&indent);
        out.push_str(&line);
        out.push('\n');
        rest = &rest[padded..];
    }
}

fn fixture_text(name: &str, family: Family, args: &str, proto: u8, msg: &[u8]) -> String {
    format!(
        "# A conntrack dump reply (IPCTNL_MSG_CT_NEW) of scenario `{name}`, recorded at the socket.\n\
         # In a fresh network namespace: conntrack -I {}\n\
         # Then dumped with `dump_request({family:?}, DumpFilter::proto({proto}))`.\n\
         # Regenerate: UPDATE_FIXTURES=1 cargo test -p kube-nft-runtime --test conntrack\n\
         # Host byte order is little-endian. `xx` bytes are volatile, masked, and read as 00.\n{}",
        args.split_whitespace().collect::<Vec<_>>().join(" "),
        annotate(msg)
    )
}

#[test]
fn kernel_replies_match_the_recorded_fixtures() {
    if cfg!(target_endian = "big") {
        return;
    }
    if !runnable("kernel_replies_match_the_recorded_fixtures") {
        return;
    }
    let update = std::env::var("UPDATE_FIXTURES").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (name, family, args, proto) in SCENARIOS {
        let replies = in_netns(|_| {
            insert(args);
            let mut socket = ConntrackSocket::open().expect("open");
            let mut replies = Vec::new();
            socket
                .dump(
                    &ct::dump_request(*family, &DumpFilter::proto(*proto)),
                    Instant::now() + PATIENCE,
                    |bytes| replies.push(bytes.to_vec()),
                )
                .expect("dump");
            replies
        });
        assert_eq!(replies.len(), 1, "{name}: one entry");
        let text = fixture_text(name, *family, args, *proto, &replies[0]);
        let path = fixture_dir().join(format!("{name}.txt"));
        if update {
            std::fs::create_dir_all(fixture_dir()).expect("create the fixture directory");
            std::fs::write(&path, &text).expect("write the fixture");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == text => {}
            Ok(committed) => failures.push(format!(
                "{name}: the kernel's reply differs from {}:\n--- committed\n{committed}\n--- recorded\n{text}",
                path.display()
            )),
            Err(e) => failures.push(format!("{name}: {}: {e}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(re-record with UPDATE_FIXTURES=1)",
        failures.join("\n")
    );
}

/// The fixture files are exactly the scenarios (none left over from a renamed one).
#[test]
fn every_fixture_is_a_scenario() {
    let mut files: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("the fixture directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    files.sort();
    let mut names: Vec<String> = SCENARIOS.iter().map(|(n, ..)| format!("{n}.txt")).collect();
    names.sort();
    assert_eq!(files, names);
}
