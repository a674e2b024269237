//! `kube-nft show` against a real kernel, each test in a throwaway network namespace: on an
//! empty node it says nothing is programmed; after `compile -f` of the small-cluster golden it
//! lists every Service port and way in with its backends and their shares (the table is an
//! expect-test snapshot, reviewed like a golden), the filters select rows, and the JSON output
//! has exactly the documented shape (typed below, unknown fields refused). Connections counted
//! from conntrack are tested with real packets in `tests/lab_conntrack.rs`. Needs root and
//! `ip`; under `CI=true` a machine that cannot run it fails.

use std::process::{Command, Output};

use expect_test::expect;
use kube_nft_testkit::golden::{case_args, repo_root};
use kube_nft_testkit::netns::{can_run, in_netns, Netns};
use serde::Deserialize;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nft");

fn kube_nft(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run kube-nft")
}

/// node-a's address on loopback, and the small-cluster golden programmed with `compile -f`.
fn program_small_cluster(ns: &Netns) {
    ns.local_address("192.168.0.2/32");
    let file = repo_root().join("testdata/compile/cluster/small-cluster.yaml");
    let text = std::fs::read_to_string(&file).expect("read the golden");
    let out = Command::new(BIN)
        .arg("compile")
        .arg("-f")
        .arg(&file)
        .args(case_args(&text))
        .output()
        .expect("run kube-nft compile -f");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kube-nft show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

#[test]
fn show_with_an_input_flags_drift() {
    if !can_run("show_with_an_input_flags_drift") {
        return;
    }
    in_netns(|ns| {
        program_small_cluster(ns);
        let golden = |case: &str| {
            let file = repo_root().join(format!("testdata/compile/{case}.yaml"));
            let args = case_args(&std::fs::read_to_string(&file).expect("read the golden"));
            (file.to_string_lossy().into_owned(), args)
        };
        let show_f = |case: &str| {
            let (file, args) = golden(case);
            let mut all = vec![
                "show".to_owned(),
                "-o".into(),
                "json".into(),
                "-f".into(),
                file,
            ];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let doc: Doc = serde_json::from_str(&stdout(&kube_nft(&all))).expect("JSON");
            doc.drift
        };
        // What is programmed: no drift. Another cluster: the operations that would fix it.
        assert_eq!(show_f("cluster/small-cluster"), None);
        let drift = show_f("schedulers/maglev").expect("drift against another cluster");
        assert!(drift.contains("delete") && drift.contains("add"), "{drift}");
        let (file, args) = golden("schedulers/maglev");
        let mut all = vec!["show".to_owned(), "-f".into(), file];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let table = stdout(&kube_nft(&all));
        assert!(table.contains("! drift: the kernel differs"), "{table}");
    });
}

#[test]
fn show_watch_redraws_every_interval_and_stops_after_count() {
    if !can_run("show_watch_redraws_every_interval_and_stops_after_count") {
        return;
    }
    in_netns(|ns| {
        program_small_cluster(ns);
        let started = std::time::Instant::now();
        let out = kube_nft(&[
            "show",
            "--watch",
            "--count",
            "3",
            "--interval",
            "200ms",
            "-n",
            "kube-system",
        ]);
        let elapsed = started.elapsed();
        let text = stdout(&out);
        // Three frames, each after clearing the screen, each a whole table with rates.
        let frames: Vec<&str> = text.split("\x1b[H\x1b[2J").skip(1).collect();
        assert_eq!(frames.len(), 3, "{text:?}");
        for frame in frames {
            assert!(frame.starts_with("SERVICE "), "{frame}");
            assert!(frame.contains("kube-system/kube-dns:dns"), "{frame}");
            assert!(!frame.contains("default/kubernetes"), "filtered: {frame}");
            assert!(frame.contains(" 0.0 "), "a rate, not '-': {frame}");
        }
        assert!(
            elapsed >= std::time::Duration::from_millis(600),
            "{elapsed:?}"
        );
    });
}

#[test]
fn show_on_an_empty_node_says_nothing_is_programmed() {
    if !can_run("show_on_an_empty_node_says_nothing_is_programmed") {
        return;
    }
    in_netns(|_| {
        let out = kube_nft(&["show"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not in this network namespace"), "{stderr}");
    });
}

#[test]
fn show_lists_every_service_port_and_way_in_with_its_backends() {
    if !can_run("show_lists_every_service_port_and_way_in_with_its_backends") {
        return;
    }
    in_netns(|ns| {
        program_small_cluster(ns);
        expect![[r#"
            SERVICE                       VIA           ADDRESS                 SCHED                 BACKEND           SHARE  CONNS  UNREPLIED  NEW/s  PACKETS  BYTES
            default/kubernetes:https      ClusterIP     tcp 172.30.0.1:443      random                192.168.0.2:6443    1/2      0          0    0.0        0     0B
                                                                                                      192.168.0.3:6443    1/2      0          0    0.0        0     0B
            kube-system/kube-dns:dns      ClusterIP     udp 172.30.0.10:53      random                10.0.1.2:53         1/2      0          0    0.0        0     0B
                                                                                                      10.0.2.2:53         1/2      0          0    0.0        0     0B
            kube-system/kube-dns:dns-tcp  ClusterIP     tcp 172.30.0.10:53      random                10.0.1.2:53         1/2      0          0    0.0        0     0B
                                                                                                      10.0.2.2:53         1/2      0          0    0.0        0     0B
            kube-system/kube-dns:metrics  ClusterIP     tcp 172.30.0.10:9153    random                10.0.1.2:9153       1/2      0          0    0.0        0     0B
                                                                                                      10.0.2.2:9153       1/2      0          0    0.0        0     0B
            monitoring/alertmanager:web   ClusterIP     tcp 172.30.20.15:9093                         (reject 1)
            monitoring/grafana:http       ClusterIP     tcp 172.30.20.14:3000   random                10.0.2.26:3000        1      0          0    0.0        0     0B
            monitoring/grafana:http       NodePort      tcp *:30300             random                10.0.2.26:3000        1      0          0    0.0        0     0B
            shop/cart:redis               ClusterIP     tcp 172.30.20.13:6379                         (drop 1)
            shop/checkout:http            ClusterIP     tcp 172.30.20.12:8080   source-hash+affinity  10.0.2.23:8080        1      0          0    0.0        0     0B
            shop/frontend:http            ClusterIP     tcp 172.30.20.10:80     random                10.0.1.20:8080      1/2      0          0    0.0        0     0B
                                                                                                      10.0.2.20:8080      1/2      0          0    0.0        0     0B
            shop/frontend:http            LoadBalancer  tcp 198.51.100.200:80   random                10.0.1.20:8080        1      0          0    0.0        0     0B
            shop/frontend:http            NodePort      tcp *:30200             random                10.0.1.20:8080        1      0          0    0.0        0     0B
            shop/frontend:https           ClusterIP     tcp 172.30.20.10:443    random                10.0.1.20:8443      1/2      0          0    0.0        0     0B
                                                                                                      10.0.2.20:8443      1/2      0          0    0.0        0     0B
            shop/frontend:https           LoadBalancer  tcp 198.51.100.200:443  random                10.0.1.20:8443        1      0          0    0.0        0     0B
            shop/frontend:https           NodePort      tcp *:30201             random                10.0.1.20:8443        1      0          0    0.0        0     0B
            shop/web:http                 ClusterIP     tcp 172.30.20.11:80     random                10.0.1.21:8080      1/3      0          0    0.0        0     0B
                                                                                                      10.0.2.21:8080      1/3      0          0    0.0        0     0B
                                                                                                      10.0.2.22:8080      1/3      0          0    0.0        0     0B
            ! monitoring/alertmanager:web tcp 172.30.20.15:9093: no backends
            ! shop/cart:redis tcp 172.30.20.13:6379: no backends
        "#]].assert_eq(&stdout(&kube_nft(&["show"])));
        // Filters: a namespace and a name; an address and port.
        expect![[r#"
            SERVICE                       VIA        ADDRESS               SCHED   BACKEND        SHARE  CONNS  UNREPLIED  NEW/s  PACKETS  BYTES
            kube-system/kube-dns:dns      ClusterIP  udp 172.30.0.10:53    random  10.0.1.2:53      1/2      0          0    0.0        0     0B
                                                                                   10.0.2.2:53      1/2      0          0    0.0        0     0B
            kube-system/kube-dns:dns-tcp  ClusterIP  tcp 172.30.0.10:53    random  10.0.1.2:53      1/2      0          0    0.0        0     0B
                                                                                   10.0.2.2:53      1/2      0          0    0.0        0     0B
            kube-system/kube-dns:metrics  ClusterIP  tcp 172.30.0.10:9153  random  10.0.1.2:9153    1/2      0          0    0.0        0     0B
                                                                                   10.0.2.2:9153    1/2      0          0    0.0        0     0B
        "#]].assert_eq(&stdout(&kube_nft(&[
            "show",
            "-n",
            "kube-system",
            "kube-dns",
        ])));
        expect![[r#"
            SERVICE                  VIA       ADDRESS      SCHED   BACKEND         SHARE  CONNS  UNREPLIED  NEW/s  PACKETS  BYTES
            monitoring/grafana:http  NodePort  tcp *:30300  random  10.0.2.26:3000      1      0          0    0.0        0     0B
        "#]].assert_eq(&stdout(&kube_nft(&[
            "show",
            "--address",
            "192.168.0.2:30300",
        ])));
        let bad = kube_nft(&["show", "--address", "10.0.0.1:http"]);
        assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    });
}

/// The documented JSON shape; `deny_unknown_fields` makes any change of it a test failure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    rows: Vec<JsonRow>,
    drift: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    service: String,
    via: String,
    protocol: String,
    address: Option<String>,
    port: u16,
    family: String,
    scheduler: String,
    backends: Vec<JsonBackend>,
    otherwise: Vec<JsonFate>,
    flags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBackend {
    address: String,
    port: u16,
    share: String,
    connections: u64,
    unreplied: u64,
    new_connections: u64,
    /// Null only with `--interval 0s`.
    new_per_second: Option<f64>,
    packets: u64,
    bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFate {
    fate: String,
    probability: String,
}

/// `a/b` or `1` as a fraction.
fn fraction(text: &str) -> (u64, u64) {
    match text.split_once('/') {
        Some((n, d)) => (
            n.parse().expect("numerator"),
            d.parse().expect("denominator"),
        ),
        None => (text.parse().expect("whole number"), 1),
    }
}

#[test]
fn show_json_has_the_documented_shape_and_shares_add_up() {
    if !can_run("show_json_has_the_documented_shape_and_shares_add_up") {
        return;
    }
    in_netns(|ns| {
        program_small_cluster(ns);
        let text = stdout(&kube_nft(&["show", "-o", "json"]));
        let doc: Doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert!(!doc.rows.is_empty());
        assert_eq!(doc.drift, None, "no -f, no drift check");
        for row in &doc.rows {
            assert!(
                ["ClusterIP", "ExternalIP", "LoadBalancer", "NodePort"].contains(&row.via.as_str()),
                "{row:?}"
            );
            assert!(
                ["tcp", "udp", "sctp"].contains(&row.protocol.as_str()),
                "{row:?}"
            );
            assert!(["IPv4", "IPv6"].contains(&row.family.as_str()), "{row:?}");
            assert_eq!(row.address.is_none(), row.via == "NodePort", "{row:?}");
            assert!(row.port > 0);
            // Every new connection goes somewhere: the backends' shares and the other fates
            // add up to one.
            let mut sum = (0u64, 1u64);
            for p in row
                .backends
                .iter()
                .map(|b| b.share.as_str())
                .chain(row.otherwise.iter().map(|o| o.probability.as_str()))
            {
                let (n, d) = fraction(p);
                sum = (sum.0 * d + n * sum.1, sum.1 * d);
            }
            assert_eq!(sum.0, sum.1, "{row:?}");
            assert_eq!(row.scheduler.is_empty(), row.backends.is_empty(), "{row:?}");
            assert_eq!(
                row.flags.iter().any(|f| f == "no backends"),
                row.backends.is_empty(),
                "{row:?}"
            );
            for b in &row.backends {
                assert!(b.address.parse::<std::net::IpAddr>().is_ok(), "{b:?}");
                assert!(
                    b.port > 0 && b.connections == 0 && b.unreplied == 0,
                    "{b:?}"
                );
                // No traffic: counters at zero, and a rate from two reads a second apart.
                assert_eq!(
                    (b.new_connections, b.packets, b.bytes, b.new_per_second),
                    (0, 0, 0, Some(0.0)),
                    "{b:?}"
                );
                assert!(!row.service.is_empty(), "{row:?}");
            }
            for o in &row.otherwise {
                assert!(
                    ["reject", "drop", "accept"].contains(&o.fate.as_str()),
                    "{o:?}"
                );
            }
        }
        // One read: no rate.
        let text = stdout(&kube_nft(&["show", "-o", "json", "--interval", "0s"]));
        let doc: Doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        let rates: Vec<Option<f64>> = (doc.rows.iter())
            .flat_map(|r| r.backends.iter().map(|b| b.new_per_second))
            .collect();
        assert!(
            !rates.is_empty() && rates.iter().all(Option::is_none),
            "{rates:?}"
        );
    });
}
