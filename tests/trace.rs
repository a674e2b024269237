//! Packet traces over the golden clusters: what the compiled ruleset does to the first packet of
//! a connection, per Service feature, through `kube-nft trace` (the same binary and flags the
//! goldens use). Each expectation is a list of `probability  fate  [masquerade]` lines; the chain
//! path is left out so the assertions state behaviour, not layout. Expected outcomes follow
//! kube-proxy's nftables tests (`shared/reference/kube-proxy-nftables.md` §2 and §5).
//! Refresh with `UPDATE_EXPECT=1 cargo test --test trace` and review every change.

use std::path::{Path, PathBuf};
use std::process::Command;

use expect_test::{expect, Expect};
use kube_nft_testkit::golden::{case_args, repo_root};

/// Node-a's address in every golden cluster.
const NODE: &str = "192.168.0.2";

/// The `# args:` flags of a golden case.
fn args_of(case: &Path) -> Vec<String> {
    case_args(&std::fs::read_to_string(repo_root().join(case)).expect("read case"))
}

/// Traces `packet` (sent `from` outside, pod or host) through the ruleset of `case`.
fn trace(case: &str, from: &str, packet: &str) -> String {
    trace_with(case, &[], from, packet)
}

/// [`trace`] with more `kube-nft trace` flags after the case's own.
fn trace_with(case: &str, extra: &[&str], from: &str, packet: &str) -> String {
    // Drop the header line and the chain path of each outcome.
    (run_trace(case, extra, from, packet).lines())
        .skip(1)
        .map(|l| l.split("  via ").next().unwrap_or(l).trim().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `kube-nft trace`'s whole output for `packet` (sent `from`) through the ruleset of `case`.
fn run_trace(case: &str, extra: &[&str], from: &str, packet: &str) -> String {
    let case = PathBuf::from("testdata/compile").join(format!("{case}.yaml"));
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .current_dir(repo_root())
        .arg("trace")
        .arg("-f")
        .arg(&case)
        .args(args_of(&case))
        .args(extra)
        .args(["--from", from, packet])
        .output()
        .expect("run kube-nft trace");
    assert!(
        out.status.success(),
        "kube-nft trace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn check(case: &str, from: &str, packet: &str, expect: Expect) {
    expect.assert_eq(&trace(case, from, packet));
}

fn check_with(case: &str, extra: &[&str], from: &str, packet: &str, expect: Expect) {
    expect.assert_eq(&trace_with(case, extra, from, packet));
}

/// The first line `kube-nft trace` prints (packet and origin), `--from` left to its default.
fn trace_header(case: &str, extra: &[&str], packet: &str) -> String {
    let case = PathBuf::from("testdata/compile").join(format!("{case}.yaml"));
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .current_dir(repo_root())
        .arg("trace")
        .arg("-f")
        .arg(&case)
        .args(args_of(&case))
        .args(extra)
        .arg(packet)
        .output()
        .expect("run kube-nft trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    stdout.lines().next().unwrap_or_default().to_owned()
}

// --- 1. ClusterIP, protocols, ports ---------------------------------------------------------

#[test]
fn clusterip_from_pod_balances_evenly_without_masquerade() {
    check(
        "clusterip/tcp-basic",
        "pod",
        "tcp 10.0.1.99:40000 -> 172.30.0.10:80",
        expect![[r#"
            1/2  dnat 10.0.1.5:8080
            1/2  dnat 10.0.2.5:8080"#]],
    );
}

#[test]
fn clusterip_from_outside_the_cluster_network_is_masqueraded() {
    check(
        "clusterip/tcp-basic",
        "outside",
        "tcp 203.0.113.2:40000 -> 172.30.0.10:80",
        expect![[r#"
            1/2  dnat 10.0.1.5:8080  masquerade
            1/2  dnat 10.0.2.5:8080  masquerade"#]],
    );
}

#[test]
fn clusterip_from_the_node_is_masqueraded() {
    check(
        "clusterip/tcp-basic",
        "host",
        &format!("tcp {NODE}:40000 -> 172.30.0.10:80"),
        expect![[r#"
            1/2  dnat 10.0.1.5:8080  masquerade
            1/2  dnat 10.0.2.5:8080  masquerade"#]],
    );
}

#[test]
fn clusterip_unknown_port_is_rejected() {
    check(
        "clusterip/tcp-basic",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.0.10:81",
        expect!["1  reject"],
    );
}

#[test]
fn clusterip_wrong_protocol_is_rejected() {
    check(
        "clusterip/tcp-basic",
        "pod",
        "udp 10.0.1.5:40000 -> 172.30.0.10:80",
        expect!["1  reject"],
    );
}

#[test]
fn clusterip_wrong_protocol_is_rejected_from_the_node_too() {
    check(
        "clusterip/tcp-basic",
        "host",
        &format!("udp {NODE}:40000 -> 172.30.0.10:80"),
        expect!["1  reject"],
    );
}

#[test]
fn udp_service_maps_to_its_target_port() {
    check(
        "clusterip/udp",
        "pod",
        "udp 10.0.1.5:40000 -> 172.30.0.11:514",
        expect![[r#"
            1/2  dnat 10.0.1.11:5514
            1/2  dnat 10.0.2.11:5514"#]],
    );
}

#[test]
fn sctp_service() {
    check(
        "clusterip/sctp",
        "pod",
        "sctp 10.0.1.5:40000 -> 172.30.0.12:3868",
        expect![[r#"
            1/2  dnat 10.0.1.12:3868
            1/2  dnat 10.0.2.12:3868"#]],
    );
}

#[test]
fn same_port_on_tcp_and_udp_are_separate() {
    check(
        "clusterip/dns-tcp-and-udp",
        "pod",
        "udp 10.0.1.5:40000 -> 172.30.0.53:53",
        expect![[r#"
            1/2  dnat 10.0.1.53:53
            1/2  dnat 10.0.2.53:53"#]],
    );
    check(
        "clusterip/dns-tcp-and-udp",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.0.53:9153",
        expect![[r#"
            1/2  dnat 10.0.1.53:9153
            1/2  dnat 10.0.2.53:9153"#]],
    );
}

#[test]
fn another_services_port_on_this_clusterip_is_rejected() {
    check(
        "clusterip/dns-tcp-and-udp",
        "pod",
        "udp 10.0.1.5:40000 -> 172.30.0.53:9153",
        expect!["1  reject"],
    );
}

// --- 2. Endpoint choice -----------------------------------------------------------------------

#[test]
fn terminating_endpoints_serve_when_none_is_ready() {
    check(
        "endpoints/terminating-fallback",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.1.11:80",
        expect![[r#"
            1/2  dnat 10.0.1.30:8080
            1/2  dnat 10.0.2.30:8080"#]],
    );
}

#[test]
fn selectorless_service_uses_mirrored_legacy_endpoints() {
    check(
        "endpoints/legacy-endpoints-mirrored",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.13.10:5432",
        expect![[r#"
            1/2  dnat 192.168.50.10:5432
            1/2  dnat 192.168.50.11:5432"#]],
    );
}

#[test]
fn a_malformed_service_does_not_stop_the_good_one() {
    check(
        "degraded/service-type-error",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.16.15:80",
        expect![[r#"
            1/2  dnat 10.0.1.218:8080
            1/2  dnat 10.0.2.218:8080"#]],
    );
}

// --- 3. Schedulers ----------------------------------------------------------------------------

#[test]
fn source_hash_pins_a_client_to_one_endpoint() {
    check(
        "schedulers/source-hash",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.2.11:80",
        expect!["1  dnat 10.0.2.91:8080"],
    );
    // The source port does not matter, only the address.
    check(
        "schedulers/source-hash",
        "pod",
        "tcp 10.0.1.5:50000 -> 172.30.2.11:80",
        expect!["1  dnat 10.0.2.91:8080"],
    );
}

#[test]
fn maglev_pins_each_client_and_spreads_clients_evenly() {
    // The source port does not matter; 150 clients land on the three endpoints in about equal
    // numbers (the table gives each a third of its 1021 slots, the hash spreads clients over
    // the slots).
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for host in 0..150u32 {
        let client = format!(
            "10.{}.{}.{}",
            1 + host / 65536,
            (host / 256) % 256,
            host % 256
        );
        let a = trace(
            "schedulers/maglev",
            "outside",
            &format!("tcp {client}:40000 -> 172.30.2.11:80"),
        );
        let b = trace(
            "schedulers/maglev",
            "outside",
            &format!("tcp {client}:50000 -> 172.30.2.11:80"),
        );
        assert_eq!(a, b, "{client}: the source port moved the client");
        let target = a
            .strip_prefix("1  dnat ")
            .unwrap_or_else(|| panic!("client {client} is not pinned: {a}"));
        *counts
            .entry(
                target
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["10.0.1.90:8080", "10.0.2.90:8080", "10.0.2.91:8080"]
    );
    assert!(counts.values().all(|n| (30..=70).contains(n)), "{counts:?}");
}

#[test]
fn source_hash_spreads_different_clients() {
    // Each client is pinned to exactly one endpoint, and 30 clients reach all three.
    let mut chosen = std::collections::BTreeSet::new();
    for host in 1..=30 {
        let outcome = trace(
            "schedulers/source-hash",
            "pod",
            &format!("tcp 10.0.1.{host}:40000 -> 172.30.2.11:80"),
        );
        let target = outcome
            .strip_prefix("1  dnat ")
            .unwrap_or_else(|| panic!("client 10.0.1.{host} is not pinned: {outcome}"));
        chosen.insert(target.to_string());
    }
    assert_eq!(
        chosen.into_iter().collect::<Vec<_>>(),
        ["10.0.1.90:8080", "10.0.2.90:8080", "10.0.2.91:8080"]
    );
}

#[test]
fn round_robin_is_uniform_over_a_cycle() {
    check(
        "schedulers/round-robin",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.2.10:80",
        expect![[r#"
            1/3  dnat 10.0.1.90:8080
            1/3  dnat 10.0.2.90:8080
            1/3  dnat 10.0.2.91:8080"#]],
    );
}

// --- 4. No endpoints, ServiceCIDR ---------------------------------------------------------------

#[test]
fn service_without_endpoints_rejects() {
    check(
        "clusterip/no-endpoints-reject",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.0.15:80",
        expect!["1  reject"],
    );
}

#[test]
fn unallocated_ip_in_service_cidr_is_dropped() {
    check(
        "clusterip/no-endpoints-reject",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.0.99:80",
        expect!["1  drop"],
    );
}

#[test]
fn load_balancer_without_endpoints_rejects_on_every_address() {
    let seen: Vec<String> = [
        ("outside", "tcp 203.0.113.2:40000 -> 198.51.100.10:80"),
        ("outside", "tcp 203.0.113.2:40000 -> 192.168.99.10:80"),
        ("outside", "tcp 203.0.113.2:40000 -> 192.168.0.2:30080"),
        ("pod", "tcp 10.0.1.5:40000 -> 172.30.3.10:80"),
    ]
    .into_iter()
    .map(|(from, packet)| {
        let outcome = trace("loadbalancer/no-endpoints-reject", from, packet);
        format!("{packet} => {outcome}")
    })
    .collect();
    expect![[r#"
        tcp 203.0.113.2:40000 -> 198.51.100.10:80 => 1  reject
        tcp 203.0.113.2:40000 -> 192.168.99.10:80 => 1  reject
        tcp 203.0.113.2:40000 -> 192.168.0.2:30080 => 1  reject
        tcp 10.0.1.5:40000 -> 172.30.3.10:80 => 1  reject"#]]
    .assert_eq(&seen.join("\n"));
}

// --- 5. NodePort ----------------------------------------------------------------------------------

#[test]
fn nodeport_on_the_primary_node_ip_is_masqueraded() {
    check(
        "nodeport/default-primary-addresses",
        "outside",
        &format!("tcp 203.0.113.2:40000 -> {NODE}:30080"),
        expect![[r#"
            1/2  dnat 10.0.1.100:8080  masquerade
            1/2  dnat 10.0.2.100:8080  masquerade"#]],
    );
}

#[test]
fn nodeport_from_the_node_itself() {
    check(
        "nodeport/default-primary-addresses",
        "host",
        &format!("tcp {NODE}:40000 -> {NODE}:30080"),
        expect![[r#"
            1/2  dnat 10.0.1.100:8080  masquerade
            1/2  dnat 10.0.2.100:8080  masquerade"#]],
    );
}

#[test]
fn nodeport_on_localhost_is_not_served() {
    check(
        "nodeport/nodeport-addresses-match-all",
        "host",
        "tcp 127.0.0.1:40000 -> 127.0.0.1:30082",
        expect!["1  accept (not a service)"],
    );
}

#[test]
fn nodeport_family_named_only_by_loopback_is_served_nowhere() {
    // `--nodeport-addresses 127.0.0.0/8`: IPv4 NodePorts on no address (not on every one);
    // IPv6, not named, on every local address.
    check(
        "nodeport/loopback-only-ipv4",
        "outside",
        &format!("tcp 203.0.113.2:40000 -> {NODE}:30100"),
        expect!["1  accept (not a service)"],
    );
    check(
        "nodeport/loopback-only-ipv4",
        "host",
        "tcp 127.0.0.1:40000 -> 127.0.0.1:30100",
        expect!["1  accept (not a service)"],
    );
    check(
        "nodeport/loopback-only-ipv4",
        "outside",
        "tcp [2001:db8:1::9]:40000 -> [2001:db8::2]:30100",
        expect![[r#"
            1/2  dnat [fd00:10::1:dd]:8080  masquerade
            1/2  dnat [fd00:10::2:dd]:8080  masquerade"#]],
    );
    // The same with the families swapped: `--nodeport-addresses ::1/128`.
    check(
        "nodeport/loopback-only-ipv6",
        "outside",
        "tcp [2001:db8:1::9]:40000 -> [2001:db8::2]:30100",
        expect!["1  accept (not a service)"],
    );
    check(
        "nodeport/loopback-only-ipv6",
        "host",
        "tcp [::1]:40000 -> [::1]:30100",
        expect!["1  accept (not a service)"],
    );
    check(
        "nodeport/loopback-only-ipv6",
        "outside",
        &format!("tcp 203.0.113.2:40000 -> {NODE}:30100"),
        expect![[r#"
            1/2  dnat 10.0.1.221:8080  masquerade
            1/2  dnat 10.0.2.221:8080  masquerade"#]],
    );
}

#[test]
fn primary_serves_no_node_port_in_a_family_the_node_object_has_no_address_of() {
    // The machine holds 2001:db8::2 (`--local-ip`), but the Node object lists no IPv6
    // address: `primary` selects nothing in IPv6, so the NodePort is not ours there.
    check_with(
        "nodeport/primary-without-ipv6-node-ip",
        &["--local-ip", "2001:db8::2"],
        "outside",
        "tcp [2001:db8:1::9]:40000 -> [2001:db8::2]:30100",
        expect!["1  accept (not a service)"],
    );
    check(
        "nodeport/primary-without-ipv6-node-ip",
        "outside",
        &format!("tcp 203.0.113.2:40000 -> {NODE}:30100"),
        expect![[r#"
            1/2  dnat 10.0.1.221:8080  masquerade
            1/2  dnat 10.0.2.221:8080  masquerade"#]],
    );
    // And the other way round: an IPv6-only Node object.
    check_with(
        "nodeport/primary-without-ipv4-node-ip",
        &["--local-ip", NODE],
        "outside",
        &format!("tcp 203.0.113.2:40000 -> {NODE}:30100"),
        expect!["1  accept (not a service)"],
    );
    check(
        "nodeport/primary-without-ipv4-node-ip",
        "outside",
        "tcp [2001:db8:1::9]:40000 -> [2001:db8::2]:30100",
        expect![[r#"
            1/2  dnat [fd00:10::1:dd]:8080  masquerade
            1/2  dnat [fd00:10::2:dd]:8080  masquerade"#]],
    );
}

#[test]
fn nodeport_on_every_address_of_the_node_object_inside_nodeport_addresses() {
    // A secondary InternalIP inside --nodeport-addresses is local and serves the NodePort.
    check(
        "node/several-addresses",
        "outside",
        "tcp 203.0.113.2:40000 -> 192.168.1.2:30081",
        expect![[r#"
            1/2  dnat 10.0.1.101:8080  masquerade
            1/2  dnat 10.0.2.101:8080  masquerade"#]],
    );
    // The ExternalIP is local too, but outside the prefix.
    check(
        "node/several-addresses",
        "outside",
        "tcp 203.0.113.2:40000 -> 198.51.100.2:30081",
        expect!["1  accept (not a service)"],
    );
    // The node sending from a secondary address is `host` without --from.
    assert_eq!(
        trace_header(
            "node/several-addresses",
            &[],
            "tcp 192.168.1.2:40000 -> 172.30.4.11:80"
        ),
        "tcp 192.168.1.2:40000 -> 172.30.4.11:80 (from this host)"
    );
}

#[test]
fn local_ip_adds_an_address_the_node_object_does_not_list() {
    let packet = "tcp 203.0.113.2:40000 -> 192.168.7.7:30081";
    check(
        "nodeport/nodeport-addresses-cidr",
        "outside",
        packet,
        expect!["1  accept (not a service)"],
    );
    check_with(
        "nodeport/nodeport-addresses-cidr",
        &["--local-ip", "192.168.7.7"],
        "outside",
        packet,
        expect![[r#"
            1/2  dnat 10.0.1.101:8080  masquerade
            1/2  dnat 10.0.2.101:8080  masquerade"#]],
    );
}

#[test]
fn nodeport_on_a_foreign_address_is_not_a_service() {
    check(
        "nodeport/nodeport-addresses-cidr",
        "outside",
        "tcp 203.0.113.2:40000 -> 192.168.7.7:30081",
        expect!["1  accept (not a service)"],
    );
}

// --- 6. externalIPs, LoadBalancer, source ranges ------------------------------------------------

#[test]
fn external_ip_is_masqueraded_with_cluster_policy() {
    check(
        "externalip/external-ips",
        "outside",
        "tcp 203.0.113.2:40000 -> 192.168.99.11:80",
        expect![[r#"
            1/2  dnat 10.0.1.110:8080  masquerade
            1/2  dnat 10.0.2.110:8080  masquerade"#]],
    );
}

#[test]
fn load_balancer_allows_sources_in_range() {
    check(
        "loadbalancer/source-ranges",
        "outside",
        "tcp 203.0.113.2:40000 -> 198.51.100.30:80",
        expect![[r#"
            1/2  dnat 10.0.1.130:8080  masquerade
            1/2  dnat 10.0.2.130:8080  masquerade"#]],
    );
}

#[test]
fn load_balancer_drops_sources_out_of_range() {
    check(
        "loadbalancer/source-ranges",
        "outside",
        "tcp 203.0.113.200:40000 -> 198.51.100.30:80",
        expect!["1  drop"],
    );
}

#[test]
fn load_balancer_drops_pods_out_of_range() {
    check(
        "loadbalancer/source-ranges",
        "pod",
        "tcp 10.0.1.5:40000 -> 198.51.100.30:80",
        expect!["1  drop"],
    );
}

#[test]
fn nodeport_is_not_subject_to_source_ranges() {
    check(
        "loadbalancer/source-ranges",
        "outside",
        &format!("tcp 203.0.113.200:40000 -> {NODE}:30180"),
        expect![[r#"
            1/2  dnat 10.0.1.130:8080  masquerade
            1/2  dnat 10.0.2.130:8080  masquerade"#]],
    );
}

#[test]
fn node_in_range_reaches_the_load_balancer_ip() {
    check(
        "loadbalancer/source-range-contains-node-ip",
        "host",
        &format!("tcp {NODE}:40000 -> 198.51.100.40:80"),
        expect![[r#"
            1/2  dnat 10.0.1.140:8080  masquerade
            1/2  dnat 10.0.2.140:8080  masquerade"#]],
    );
}

#[test]
fn load_balancer_ip_may_reach_itself() {
    check(
        "loadbalancer/source-range-contains-node-ip",
        "host",
        "tcp 198.51.100.40:40000 -> 198.51.100.40:80",
        expect![[r#"
            1/2  dnat 10.0.1.140:8080  masquerade
            1/2  dnat 10.0.2.140:8080  masquerade"#]],
    );
}

#[test]
fn proxy_mode_ingress_ip_is_left_to_the_load_balancer() {
    check(
        "loadbalancer/ingress-ip-modes",
        "outside",
        "tcp 203.0.113.2:40000 -> 198.51.100.22:443",
        expect!["1  accept (not a service)"],
    );
}

// --- 7. Traffic policies ------------------------------------------------------------------------

#[test]
fn external_local_sends_outside_clients_to_local_endpoints_unmasqueraded() {
    check(
        "nodeport/local-policy-with-local-endpoint",
        "outside",
        &format!("tcp 203.0.113.2:40000 -> {NODE}:30084"),
        expect!["1  dnat 10.0.1.104:8080"],
    );
}

#[test]
fn external_local_short_circuits_pods_to_all_endpoints() {
    check(
        "nodeport/local-policy-with-local-endpoint",
        "pod",
        &format!("tcp 10.0.1.5:40000 -> {NODE}:30084"),
        expect![[r#"
            1/2  dnat 10.0.1.104:8080
            1/2  dnat 10.0.2.104:8080"#]],
    );
}

#[test]
fn external_local_short_circuits_the_node_with_masquerade() {
    check(
        "nodeport/local-policy-with-local-endpoint",
        "host",
        &format!("tcp {NODE}:40000 -> {NODE}:30084"),
        expect![[r#"
            1/2  dnat 10.0.1.104:8080  masquerade
            1/2  dnat 10.0.2.104:8080  masquerade"#]],
    );
}

#[test]
fn external_local_without_local_endpoints_drops_outside_clients() {
    check(
        "nodeport/local-policy-no-local-endpoints",
        "outside",
        &format!("tcp 203.0.113.2:40000 -> {NODE}:30085"),
        expect!["1  drop"],
    );
}

#[test]
fn external_local_without_local_endpoints_still_serves_pods() {
    check(
        "nodeport/local-policy-no-local-endpoints",
        "pod",
        &format!("tcp 10.0.1.5:40000 -> {NODE}:30085"),
        expect![[r#"
            1/2  dnat 10.0.2.105:8080
            1/2  dnat 10.0.2.106:8080"#]],
    );
}

#[test]
fn external_local_external_ip_preserves_the_client() {
    check(
        "externalip/local-policy",
        "outside",
        "tcp 203.0.113.2:40000 -> 192.168.99.12:80",
        expect!["1  dnat 10.0.1.111:8080"],
    );
}

#[test]
fn external_local_short_circuit_keeps_every_hairpin() {
    // A pod of node-b (inside --cluster-cidr, so "local" to the ClusterCIDR detector) reaching
    // an eTP=Local Service's external address through this node (in a cluster, a NodePort of
    // this node; this golden has an external IP) is short-circuited to every endpoint, itself
    // included: the way an endpoint elsewhere is DNATed back to itself here, so such a Service
    // keeps the pairs of all its endpoints.
    check(
        "externalip/local-policy",
        "pod",
        "tcp 10.0.2.111:40000 -> 192.168.99.12:80",
        expect![[r#"
            1/2  dnat 10.0.1.111:8080
            1/2  dnat 10.0.2.111:8080  masquerade"#]],
    );
}

#[test]
fn internal_local_uses_only_local_endpoints() {
    check(
        "traffic-policy/internal-local-with-local-endpoints",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.6.10:6379",
        expect![[r#"
            1/2  dnat 10.0.1.180:6379
            1/2  dnat 10.0.1.181:6379"#]],
    );
}

#[test]
fn internal_local_without_local_endpoints_drops() {
    check(
        "traffic-policy/internal-local-no-local-endpoints",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.6.11:6379",
        expect!["1  drop"],
    );
}

// --- 8. Affinity ----------------------------------------------------------------------------------

#[test]
fn affinity_first_connection_is_balanced() {
    check(
        "affinity/clientip-timeout-60",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.7.11:80",
        expect![[r#"
            1/3  dnat 10.0.1.191:8080
            1/3  dnat 10.0.2.191:8080
            1/3  dnat 10.0.2.192:8080"#]],
    );
}

// --- 9. Masquerade ----------------------------------------------------------------------------------

#[test]
fn without_cluster_cidr_clusterip_traffic_is_not_masqueraded() {
    check(
        "masquerade/no-cluster-cidr",
        "outside",
        "tcp 203.0.113.2:40000 -> 172.30.8.11:80",
        expect![[r#"
            1/2  dnat 10.0.1.201:8080
            1/2  dnat 10.0.2.201:8080"#]],
    );
}

#[test]
fn masquerade_all_masquerades_pods_too() {
    check(
        "masquerade/masquerade-all",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.8.12:80",
        expect![[r#"
            1/2  dnat 10.0.1.202:8080  masquerade
            1/2  dnat 10.0.2.202:8080  masquerade"#]],
    );
}

#[test]
fn hairpin_is_masqueraded_only_when_the_endpoint_reaches_itself() {
    check(
        "masquerade/hairpin",
        "pod",
        "tcp 10.0.1.203:40000 -> 172.30.8.13:80",
        expect![[r#"
            1/3  dnat 10.0.1.203:8080  masquerade
            1/3  dnat 10.0.2.203:8080
            1/3  dnat 10.0.3.203:8080"#]],
    );
    // An endpoint without a nodeName may run here: its pair is kept.
    check(
        "masquerade/hairpin",
        "pod",
        "tcp 10.0.3.203:40000 -> 172.30.8.13:80",
        expect![[r#"
            1/3  dnat 10.0.1.203:8080
            1/3  dnat 10.0.2.203:8080
            1/3  dnat 10.0.3.203:8080  masquerade"#]],
    );
    // node-b's endpoint sends to the ClusterIP through node-b's own proxy, never un-DNATed
    // through this node: no pair, so the packet this trace makes up is not masqueraded
    // (kube-proxy would; compiler/README.md, "Hairpin pairs").
    check(
        "masquerade/hairpin",
        "pod",
        "tcp 10.0.2.203:40000 -> 172.30.8.13:80",
        expect![[r#"
            1/3  dnat 10.0.1.203:8080
            1/3  dnat 10.0.2.203:8080
            1/3  dnat 10.0.3.203:8080"#]],
    );
}

// --- 9b. Local-traffic detection (--detect-local-mode) -------------------------------------------

/// The two endpoints of `shop/web` in the detect-local goldens, not masqueraded / masqueraded.
const BOTH: &str = "1/2  dnat 10.0.1.221:8080\n1/2  dnat 10.0.2.221:8080";
const BOTH_MASQUERADED: &str =
    "1/2  dnat 10.0.1.221:8080  masquerade\n1/2  dnat 10.0.2.221:8080  masquerade";

#[test]
fn node_cidr_trusts_only_this_nodes_pod_cidr() {
    let case = "masquerade/detect-node-cidr";
    // A pod of node-a (10.0.1.0/24) keeps its address; a pod of node-b routed through node-a
    // is inside --cluster-cidr but not node-a's podCIDR: masqueraded.
    assert_eq!(
        trace(case, "pod", "tcp 10.0.1.99:40000 -> 172.30.10.11:80"),
        BOTH
    );
    assert_eq!(
        trace(case, "outside", "tcp 10.0.2.99:40000 -> 172.30.10.11:80"),
        BOTH_MASQUERADED
    );
    assert_eq!(
        trace(
            case,
            "pod",
            "tcp [fd00:10::1:99]:40000 -> [fd00:10:96::b]:80"
        ),
        "1/2  dnat [fd00:10::1:dd]:8080\n1/2  dnat [fd00:10::2:dd]:8080"
    );
    // eTP Local: this node's pods short-circuit to every endpoint; node-b's pod is external
    // traffic and gets the local endpoint with its own address.
    assert_eq!(
        trace(case, "pod", "tcp 10.0.1.99:40000 -> 192.168.0.2:30100"),
        BOTH
    );
    check(
        case,
        "outside",
        "tcp 10.0.2.99:40000 -> 192.168.0.2:30100",
        expect!["1  dnat 10.0.1.221:8080"],
    );
}

#[test]
fn node_cidr_without_pod_cidrs_has_no_detector() {
    let case = "masquerade/detect-node-cidr-without-pod-cidr";
    // As kube-proxy without a detector: nothing is masqueraded for being "not from a pod"…
    assert_eq!(
        trace(case, "outside", "tcp 203.0.113.2:40000 -> 172.30.10.11:80"),
        BOTH
    );
    // …and pods reach the eTP Local NodePort through the local endpoint only.
    check(
        case,
        "pod",
        "tcp 10.0.1.99:40000 -> 192.168.0.2:30100",
        expect!["1  dnat 10.0.1.221:8080"],
    );
}

#[test]
fn interface_modes_trust_the_interface_not_the_address() {
    for case in [
        "masquerade/detect-bridge-interface",
        "masquerade/detect-interface-name-prefix",
        "config/detect-local-config",
    ] {
        // From a pod interface: kept, whatever the address.
        assert_eq!(
            trace(case, "pod", "tcp 10.0.1.99:40000 -> 172.30.10.11:80"),
            BOTH,
            "{case}"
        );
        assert_eq!(
            trace(case, "pod", "tcp 198.18.0.9:40000 -> 172.30.10.11:80"),
            BOTH,
            "{case}"
        );
        // A pod-range address arriving from elsewhere, and the node itself: masqueraded.
        assert_eq!(
            trace(case, "outside", "tcp 10.0.1.99:40000 -> 172.30.10.11:80"),
            BOTH_MASQUERADED,
            "{case}"
        );
        assert_eq!(
            trace(case, "host", "tcp 192.168.0.2:40000 -> 172.30.10.11:80"),
            BOTH_MASQUERADED,
            "{case}"
        );
        // Both families alike.
        assert_eq!(
            trace(case, "outside", "tcp [fd00:10::1:99]:40000 -> [fd00:10:96::b]:80"),
            "1/2  dnat [fd00:10::1:dd]:8080  masquerade\n1/2  dnat [fd00:10::2:dd]:8080  masquerade",
            "{case}"
        );
        // eTP Local: pods short-circuit to every endpoint, the outside gets the local one.
        assert_eq!(
            trace(case, "pod", "tcp 10.0.1.99:40000 -> 192.168.0.2:30100"),
            BOTH,
            "{case}"
        );
        assert_eq!(
            trace(case, "outside", "tcp 10.0.1.99:40000 -> 192.168.0.2:30100"),
            "1  dnat 10.0.1.221:8080",
            "{case}"
        );
    }
}

// --- 9c. Inputs kube-proxy programs as written, with a diagnostic --------------------------------

#[test]
fn only_the_first_address_of_an_endpoint_gets_traffic() {
    check(
        "degraded/endpoint-several-addresses",
        "pod",
        "tcp 10.0.1.99:40000 -> 172.30.20.10:80",
        expect![[r#"
            1/2  dnat 10.0.1.60:8080
            1/2  dnat 10.0.2.60:8080"#]],
    );
}

#[test]
fn an_endpoint_that_is_a_cluster_ip_is_rejected_after_dnat() {
    // The DNAT to 172.30.20.21 is final: cluster-ips-check rejects the ClusterIP destination.
    for (from, src) in [("pod", "10.0.1.99"), ("host", "192.168.0.2")] {
        let out = trace(
            "degraded/endpoint-is-a-cluster-ip",
            from,
            &format!("tcp {src}:40000 -> 172.30.20.20:80"),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{from}: {out}");
        assert!(
            lines[0].starts_with("1/2  dnat 10.0.2.70:80"),
            "{from}: {out}"
        );
        assert_eq!(lines[1], "1/2  reject", "{from}: {out}");
    }
    // The ClusterIP itself, asked directly, is served.
    check(
        "degraded/endpoint-is-a-cluster-ip",
        "pod",
        "tcp 10.0.1.99:40000 -> 172.30.20.21:80",
        expect!["1  dnat 10.0.1.70:8080"],
    );
}

#[test]
fn a_shared_external_ip_and_port_goes_to_the_first_service_with_endpoints() {
    // alpha (no endpoints) and gamma come before/after beta; beta gets port 80.
    check(
        "degraded/shared-external-ip",
        "outside",
        "tcp 203.0.113.2:40000 -> 198.51.100.40:80",
        expect![[r#"
            1/2  dnat 10.0.1.91:8080  masquerade
            1/2  dnat 10.0.2.91:8080  masquerade"#]],
    );
    // Port 443 of the same address is gamma's alone.
    check(
        "degraded/shared-external-ip",
        "outside",
        "tcp 203.0.113.2:40000 -> 198.51.100.40:443",
        expect!["1  dnat 10.0.1.92:8080  masquerade"],
    );
}

// --- 10. Skipped services ------------------------------------------------------------------------

#[test]
fn services_of_another_proxy_are_programmed_only_with_its_name() {
    check(
        "skipped/service-proxy-name-flag",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.9.14:15443",
        expect![[r#"
            1/2  dnat 10.0.1.215:15443
            1/2  dnat 10.0.2.215:15443"#]],
    );
}

// --- 11. IPv6 and dual-stack ------------------------------------------------------------------------

#[test]
fn ipv6_clusterip() {
    check(
        "dualstack/ipv6-single-stack",
        "pod",
        "tcp [fd00:10::1:5]:40000 -> [fd00:10:96::10]:80",
        expect![[r#"
            1/2  dnat [fd00:10::1:10]:8080
            1/2  dnat [fd00:10::2:10]:8080"#]],
    );
}

#[test]
fn dual_stack_service_answers_in_both_families() {
    check(
        "dualstack/dual-stack-clusterip",
        "pod",
        "tcp [fd00:10::1:5]:40000 -> [fd00:10:96::a]:80",
        expect![[r#"
            1/2  dnat [fd00:10::1:dc]:8080
            1/2  dnat [fd00:10::2:dc]:8080"#]],
    );
    check(
        "dualstack/dual-stack-clusterip",
        "outside",
        "tcp 203.0.113.2:40000 -> 172.30.10.10:80",
        expect![[r#"
            1/2  dnat 10.0.1.220:8080  masquerade
            1/2  dnat 10.0.2.220:8080  masquerade"#]],
    );
}

// --- 12. Topology ---------------------------------------------------------------------------------------

#[test]
fn zone_hints_keep_traffic_in_the_zone() {
    check(
        "topology/zone-hints",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.11.10:80",
        expect!["1  dnat 10.0.1.230:8080"],
    );
}

#[test]
fn a_ready_endpoint_without_hints_disables_topology() {
    check(
        "topology/zone-hints-missing-one",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.11.11:80",
        expect![[r#"
            1/3  dnat 10.0.1.231:8080
            1/3  dnat 10.0.2.231:8080
            1/3  dnat 10.0.3.231:8080"#]],
    );
}

#[test]
fn node_hints_keep_traffic_on_the_node() {
    check(
        "topology/node-hints",
        "pod",
        "tcp 10.0.1.5:40000 -> 172.30.11.14:80",
        expect!["1  dnat 10.0.1.235:8080"],
    );
}

// --- Live: the kernel's ruleset ------------------------------------------------------------

/// `kube-nft trace --live PACKET` in the calling thread's network namespace, as [`trace`]
/// prints it (header and chain paths dropped); `Err(stderr)` when it fails.
fn trace_live(from: &str, packet: &str) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .args(["trace", "--live", "--from", from, packet])
        .output()
        .expect("run kube-nft trace --live");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    Ok(stdout
        .lines()
        .skip(1)
        .map(|l| l.split("  via ").next().unwrap_or(l).trim().to_string())
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn a_live_trace_of_the_programmed_node_equals_the_compiled_trace() {
    use kube_nft_testkit::netns::{can_run, in_netns};
    if !can_run("a_live_trace_of_the_programmed_node_equals_the_compiled_trace") {
        return;
    }
    let case = "cluster/small-cluster";
    let packets = [
        ("pod", "udp 10.0.1.7:5353 -> 172.30.0.10:53"),
        ("outside", "tcp 192.0.2.2:40000 -> 172.30.0.10:53"),
        ("host", "tcp 192.168.0.2:40000 -> 172.30.20.11:80"),
        ("outside", "tcp 203.0.113.5:40000 -> 198.51.100.200:80"),
        ("outside", "tcp 192.0.2.9:40000 -> 198.51.100.200:80"),
        ("outside", "tcp 192.0.2.9:40000 -> 192.168.0.2:30200"),
        ("outside", "tcp 192.0.2.9:40000 -> 192.168.0.2:30300"),
        ("pod", "tcp 10.0.1.7:40000 -> 172.30.20.12:80"),
        ("pod", "tcp 10.0.1.7:40000 -> 172.30.20.13:80"),
        ("pod", "tcp 10.0.1.7:40000 -> 172.30.20.15:80"),
        ("pod", "tcp 10.0.1.7:40000 -> 172.30.99.99:80"),
    ];
    let compiled: Vec<String> = packets
        .iter()
        .map(|(from, packet)| trace(case, from, packet))
        .collect();
    in_netns(|ns| {
        // The Node's address, so the kernel's local addresses are the compiled trace's.
        ns.local_address(&format!("{NODE}/32"));
        let empty = trace_live("outside", packets[1].1).expect_err("nothing programmed yet");
        assert!(
            empty.contains("are not in this network namespace"),
            "{empty}"
        );

        let file = repo_root().join(format!("testdata/compile/{case}.yaml"));
        let program = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
            .arg("compile")
            .arg("-f")
            .arg(&file)
            .args(args_of(&file))
            .output()
            .expect("run kube-nft compile -f");
        assert!(
            program.status.success(),
            "{}",
            String::from_utf8_lossy(&program.stderr)
        );
        for ((from, packet), want) in packets.iter().zip(&compiled) {
            let live = trace_live(from, packet).unwrap_or_else(|e| panic!("{packet}: {e}"));
            assert_eq!(&live, want, "{from} {packet}");
        }
    });
}

/// The chain paths of `packet`'s outcomes (sent `from`) through the small-cluster golden.
fn paths(from: &str, packet: &str) -> Vec<String> {
    (run_trace("cluster/small-cluster", &[], from, packet).lines())
        .skip(1)
        .map(|l| l.split_once("  via ").map_or("", |(_, p)| p).to_string())
        .collect()
}

#[test]
fn backend_counters_count_a_connection_once_where_it_leaves_or_is_delivered() {
    // The kubernetes Service: one endpoint on this node's own address, one on node-b.
    let count = |path: &str, what: &str| path.matches(what).count();
    for (from, packet) in [
        ("pod", "tcp 10.0.1.9:40000 -> 172.30.0.1:443"),
        ("host", "tcp 192.168.0.2:40000 -> 172.30.0.1:443"),
    ] {
        let paths = paths(from, packet);
        assert_eq!(paths.len(), 2, "{paths:?}");
        for path in &paths {
            // One new connection and its first packet counted, whichever way it goes.
            assert_eq!(count(path, "update @backend-connections"), 1, "{path}");
            assert_eq!(count(path, "update @backend-traffic"), 1, "{path}");
            let local = path.contains("dnat 192.168.0.2:6443");
            // A pod's packet to the host is delivered: counted in the input hook. The host's
            // own packet to itself leaves through postrouting (counted there) and comes back
            // on `lo`, where neither input rule counts it again.
            let delivered = local && from == "pod";
            assert_eq!(path.contains("nat-input"), delivered, "{path}");
            assert_eq!(path.contains("filter-postrouting"), !delivered, "{path}");
        }
    }
}
