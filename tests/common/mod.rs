//! Helpers the real-traffic test files share (`mod common;` in each): probe constructors,
//! views of the replies, the lab's cluster file and the live-update cluster. Not every file
//! uses every helper.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use kube_nft_lab::{Lab, Outcome, Probe, Proto, Reply};
use kube_nft_testkit::golden::repo_root;

/// Probes per balancing check: the chance that one of three equally likely endpoints is never
/// chosen in this many tries is 3·(2/3)^60 ≈ 10⁻¹⁰.
pub(crate) const DRAWS: usize = 60;

/// The endpoints of the lab cluster's `web` Service.
pub(crate) const WEB: [&str; 3] = ["web-a1", "web-b1", "web-b2"];

/// The lab cluster file.
pub(crate) fn cluster() -> PathBuf {
    repo_root().join("testdata/lab/cluster.yaml")
}

pub(crate) fn tcp(dst: &str) -> Probe {
    Probe::new(Proto::Tcp, dst.parse().expect("socket address"))
}

pub(crate) fn udp(dst: &str) -> Probe {
    Probe::new(Proto::Udp, dst.parse().expect("socket address"))
}

/// The set of endpoints (pod names) that answered.
pub(crate) fn hosts(replies: &[Reply]) -> BTreeSet<&str> {
    replies.iter().map(|r| r.host.as_str()).collect()
}

pub(crate) fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// The ports the endpoints were reached on.
pub(crate) fn ports(replies: &[Reply]) -> BTreeSet<u16> {
    replies.iter().map(|r| r.local.port()).collect()
}

/// The sources the endpoints saw.
pub(crate) fn sources(replies: &[Reply]) -> BTreeSet<IpAddr> {
    replies.iter().map(|r| r.peer.ip()).collect()
}

/// A cluster for the live-update test: Service `live` (172.30.1.1:80) with the endpoints
/// `live-<i>` for `i` in `endpoints` (pods 10.0.1.<10+i> on node-a for even i, 10.0.2.<10+i>
/// on node-b for odd i), plus `others` unrelated Services `other-<j>`, each with one endpoint.
pub(crate) fn live_cluster(endpoints: &[u8], others: &[u8]) -> String {
    let mut docs = vec![
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"},"spec":{"podCIDRs":["10.0.1.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.2"}]}}"#.to_owned(),
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-b"},"spec":{"podCIDRs":["10.0.2.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.3"}]}}"#.to_owned(),
    ];
    let service = |name: &str, ip: &str, eps: Vec<(String, String, &str)>| {
        let endpoints: Vec<String> = eps
            .iter()
            .map(|(pod, addr, node)| {
                format!(
                    r#"{{"addresses":["{addr}"],"nodeName":"{node}","conditions":{{"ready":true}},"targetRef":{{"kind":"Pod","name":"{pod}"}}}}"#
                )
            })
            .collect();
        vec![
            format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"namespace":"lab","name":"{name}"}},"spec":{{"clusterIP":"{ip}","selector":{{"app":"{name}"}},"ports":[{{"name":"http","port":80,"targetPort":8080}}]}}}}"#
            ),
            format!(
                r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"namespace":"lab","name":"{name}-x","labels":{{"kubernetes.io/service-name":"{name}"}}}},"addressType":"IPv4","endpoints":[{}],"ports":[{{"name":"http","port":8080}}]}}"#,
                endpoints.join(",")
            ),
        ]
    };
    let live_pod = |i: u8| {
        let (subnet, node) = if i.is_multiple_of(2) {
            (1, "node-a")
        } else {
            (2, "node-b")
        };
        (
            format!("live-{i}"),
            format!("10.0.{subnet}.{}", 10 + i),
            node,
        )
    };
    docs.extend(service(
        "live",
        "172.30.1.1",
        endpoints.iter().map(|&i| live_pod(i)).collect(),
    ));
    for &j in others {
        docs.extend(service(
            &format!("other-{j}"),
            &format!("172.30.2.{j}"),
            vec![(
                format!("other-{j}"),
                format!("10.0.1.{}", 100 + j),
                "node-a",
            )],
        ));
    }
    docs.join("\n---\n")
}

/// `n` probes from `from` that must all be answered.
pub(crate) fn replies(lab: &Lab, from: &str, probe: Probe, n: usize) -> Vec<Reply> {
    (0..n)
        .map(|i| match lab.probe(from, &probe) {
            Outcome::Reply(r) => r,
            other => panic!(
                "{from} -> {:?} {}: probe {i}: {other}",
                probe.proto, probe.dst
            ),
        })
        .collect()
}

/// Every reply saw a node's address as its source: the connection was masqueraded.
pub(crate) fn assert_masqueraded(lab: &Lab, replies: &[Reply], what: &str) {
    let seen = sources(replies);
    let topo = lab.topology();
    assert!(
        seen.iter().all(|a| topo.is_node_addr(*a)),
        "{what}: not masqueraded, the endpoint saw {seen:?}"
    );
}

/// The first address of lab host `host` of the family (`v4`) given: its default source.
pub(crate) fn host_addr(lab: &Lab, host: &str, v4: bool) -> IpAddr {
    let h = lab.topology().host(host).expect("host");
    h.addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == v4)
        .expect("an address of the family")
}
