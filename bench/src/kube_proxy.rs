//! The comparison ruleset: the same synthetic cluster laid out the way upstream kube-proxy's
//! nftables mode lays it out (`shared/reference/kube-proxy-nftables.md` §1–2), written as the
//! `add …` command stream knftables feeds to `nft -f`. Per service port a `service-` chain whose
//! last rule is `numgen random mod K vmap { … }` (an anonymous verdict map per Service, the
//! construct that makes the kernel's commit quadratic), one `endpoint-` chain per endpoint with
//! the hairpin masquerade rule and the DNAT, `external-`/`local-` chains for NodePorts and
//! LoadBalancers, `firewall-` chains for source ranges, one affinity set per endpoint, and the
//! global `service-ips`, `service-nodeports`, `cluster-ips` and `no-endpoint-*` maps. Written
//! for this benchmark from the documented layout; it is not upstream's code and is only meant
//! to cost the kernel what upstream's ruleset costs it.

use std::fmt::Write as _;

use kube_nft_compiler::ir::names::hash8;
use kube_nft_testkit::synthetic::{Cluster, Kind};

/// Table name (upstream's).
const TABLE: &str = "ip kube-proxy";
/// Pod CIDR of the synthetic clusters (the local-traffic detector).
const CLUSTER_CIDR: &str = "10.0.0.0/8";
/// Primary IP of `node-0`.
const NODE_IP: &str = "192.168.0.1";

/// The whole ruleset as an nft script that replaces `ip kube-proxy` in one transaction.
pub(crate) fn script(cluster: &Cluster) -> String {
    let mut out = String::with_capacity(cluster.services.len() * 4096);
    skeleton(&mut out);
    for s in &cluster.services {
        let cip = s.cluster_ip;
        line(
            &mut out,
            format_args!("add element {TABLE} cluster-ips {{ {cip} }}"),
        );
        let local: Vec<_> = s.endpoints.iter().filter(|e| e.node == 0).collect();
        for (j, port) in s.ports.iter().enumerate() {
            let proto = port.protocol.to_ascii_lowercase();
            let body = format!("{}/{}/{proto}/p{j}", s.namespace, s.name);
            let hash = hash8(&body);
            let service = format!("service-{hash}-{body}");
            let external = format!("external-{hash}-{body}");
            let local_chain = format!("local-{hash}-{body}");
            let endpoint = |ip: &std::net::Ipv4Addr| {
                let ep_body = format!("{body}__{ip}/{}", port.target_port);
                (hash8(&ep_body), ep_body)
            };
            // One chain (and with affinity one set) per endpoint.
            for e in &s.endpoints {
                let (ep_hash, ep_body) = endpoint(&e.ip);
                let chain = format!("endpoint-{ep_hash}-{ep_body}");
                line(&mut out, format_args!("add chain {TABLE} {chain}"));
                line(
                    &mut out,
                    format_args!(
                        "add rule {TABLE} {chain} ip saddr {} jump mark-for-masquerade",
                        e.ip
                    ),
                );
                if s.affinity {
                    let set = format!("affinity-{ep_hash}-{ep_body}");
                    line(
                        &mut out,
                        format_args!(
                            "add set {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}"
                        ),
                    );
                    line(
                        &mut out,
                        format_args!("add rule {TABLE} {chain} update @{set} {{ ip saddr }}"),
                    );
                }
                line(
                    &mut out,
                    format_args!(
                        "add rule {TABLE} {chain} meta l4proto {proto} dnat to {}:{}",
                        e.ip, port.target_port
                    ),
                );
            }
            let dispatch =
                |out: &mut String, chain: &str, eps: &[&kube_nft_testkit::synthetic::Endpoint]| {
                    line(out, format_args!("add chain {TABLE} {chain}"));
                    if chain == service {
                        line(
                        out,
                        format_args!(
                            "add rule {TABLE} {chain} ip daddr {cip} {proto} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
                            port.port
                        ),
                    );
                    }
                    let mut vmap = String::new();
                    for (k, e) in eps.iter().enumerate() {
                        let (ep_hash, ep_body) = endpoint(&e.ip);
                        if s.affinity {
                            line(
                            out,
                            format_args!(
                                "add rule {TABLE} {chain} ip saddr @affinity-{ep_hash}-{ep_body} goto endpoint-{ep_hash}-{ep_body}"
                            ),
                        );
                        }
                        let sep = if k == 0 { "" } else { ", " };
                        let _ = write!(vmap, "{sep}{k} : goto endpoint-{ep_hash}-{ep_body}");
                    }
                    line(
                        out,
                        format_args!(
                            "add rule {TABLE} {chain} numgen random mod {} vmap {{ {vmap} }}",
                            eps.len()
                        ),
                    );
                };
            let all: Vec<_> = s.endpoints.iter().collect();
            dispatch(&mut out, &service, &all);
            line(
                &mut out,
                format_args!(
                    "add element {TABLE} service-ips {{ {cip} . {proto} . {} : goto {service} }}",
                    port.port
                ),
            );
            if s.kind == Kind::ClusterIp {
                continue;
            }
            line(&mut out, format_args!("add chain {TABLE} {external}"));
            if s.etp_local {
                line(
                    &mut out,
                    format_args!(
                        "add rule {TABLE} {external} ip saddr {CLUSTER_CIDR} goto {service}"
                    ),
                );
                line(
                    &mut out,
                    format_args!(
                        "add rule {TABLE} {external} fib saddr type local jump mark-for-masquerade"
                    ),
                );
                line(
                    &mut out,
                    format_args!("add rule {TABLE} {external} fib saddr type local goto {service}"),
                );
                if local.is_empty() {
                    // No local endpoint: other sources fall through to the drop elements.
                    line(
                        &mut out,
                        format_args!(
                            "add element {TABLE} no-endpoint-nodeports {{ {proto} . {} : drop }}",
                            port.node_port
                        ),
                    );
                    if let Some(lb) = s.lb_ip {
                        line(
                            &mut out,
                            format_args!(
                                "add element {TABLE} no-endpoint-services {{ {lb} . {proto} . {} : drop }}",
                                port.port
                            ),
                        );
                    }
                } else {
                    dispatch(&mut out, &local_chain, &local);
                    line(
                        &mut out,
                        format_args!("add rule {TABLE} {external} goto {local_chain}"),
                    );
                }
            } else {
                line(
                    &mut out,
                    format_args!("add rule {TABLE} {external} jump mark-for-masquerade"),
                );
                line(
                    &mut out,
                    format_args!("add rule {TABLE} {external} goto {service}"),
                );
            }
            line(
                &mut out,
                format_args!(
                    "add element {TABLE} service-nodeports {{ {proto} . {} : goto {external} }}",
                    port.node_port
                ),
            );
            if let Some(lb) = s.lb_ip {
                line(
                    &mut out,
                    format_args!(
                        "add element {TABLE} service-ips {{ {lb} . {proto} . {} : goto {external} }}",
                        port.port
                    ),
                );
                if !s.source_ranges.is_empty() {
                    let firewall = format!("firewall-{hash}-{body}");
                    line(&mut out, format_args!("add chain {TABLE} {firewall}"));
                    line(
                        &mut out,
                        format_args!(
                            "add rule {TABLE} {firewall} ip saddr != {{ {} }} drop",
                            s.source_ranges.join(", ")
                        ),
                    );
                    line(
                        &mut out,
                        format_args!(
                            "add element {TABLE} firewall-ips {{ {lb} . {proto} . {} : goto {firewall} }}",
                            port.port
                        ),
                    );
                }
            }
        }
    }
    out
}

/// Table, base chains, fixed chains and the global sets and maps (§1.2–1.5).
fn skeleton(out: &mut String) {
    let text = format!(
        "\
add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}
delete table {TABLE}
add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}
add chain {TABLE} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}
add chain {TABLE} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}
add chain {TABLE} filter-input {{ type filter hook input priority 0 ; }}
add chain {TABLE} filter-forward {{ type filter hook forward priority 0 ; }}
add chain {TABLE} filter-output {{ type filter hook output priority 0 ; }}
add chain {TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {TABLE} nat-output {{ type nat hook output priority -100 ; }}
add chain {TABLE} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {TABLE} mark-for-masquerade
add chain {TABLE} masquerading
add chain {TABLE} services
add chain {TABLE} service-endpoints-check
add chain {TABLE} nodeport-endpoints-check
add chain {TABLE} firewall-check
add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}
add chain {TABLE} cluster-ips-check
add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}
add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}
add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}
add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}
add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}
add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}
add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}
add rule {TABLE} filter-input ct state new jump nodeport-endpoints-check
add rule {TABLE} filter-input ct state new jump service-endpoints-check
add rule {TABLE} filter-forward ct state new jump service-endpoints-check
add rule {TABLE} filter-output ct state new jump service-endpoints-check
add rule {TABLE} filter-prerouting-pre-dnat ct state new jump firewall-check
add rule {TABLE} filter-output-pre-dnat ct state new jump firewall-check
add rule {TABLE} nat-output jump services
add rule {TABLE} nat-prerouting jump services
add rule {TABLE} nat-postrouting jump masquerading
add rule {TABLE} filter-forward ct state new jump cluster-ips-check
add rule {TABLE} filter-output ct state new jump cluster-ips-check
add rule {TABLE} mark-for-masquerade mark set mark or 0x4000
add rule {TABLE} masquerading mark and 0x4000 == 0 return
add rule {TABLE} masquerading mark set mark xor 0x4000
add rule {TABLE} masquerading masquerade fully-random
add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule {TABLE} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule {TABLE} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule {TABLE} reject-chain reject
add rule {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"
add rule {TABLE} cluster-ips-check ip daddr {{ 172.16.0.0/12 }} drop comment \"Drop traffic to unallocated ClusterIPs\"
add element {TABLE} nodeport-ips {{ {NODE_IP} }}
"
    );
    out.push_str(&text);
}

fn line(out: &mut String, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_nft_testkit::synthetic::{generate, SEED};

    #[test]
    fn one_chain_per_service_port_and_per_endpoint() {
        let cluster = generate(20, 3, SEED);
        let text = script(&cluster);
        let ports: usize = cluster.services.iter().map(|s| s.ports.len()).sum();
        // Per-Service and per-endpoint chain names have a `/` (the skeleton's do not).
        let count = |prefix: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with(&format!("add chain {TABLE} {prefix}")) && l.contains('/')
                })
                .count()
        };
        assert_eq!(count("service-"), ports);
        assert_eq!(count("endpoint-"), ports * 3);
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("numgen random mod"))
                .count(),
            count("service-") + count("local-")
        );
    }
}
