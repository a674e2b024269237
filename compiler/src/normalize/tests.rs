//! One test per normalization rule, each on a snapshot built from small JSON objects.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::normalize;
use crate::config::{LocalMode, NodePortAddress};
use crate::graph::{Backend, Graph, LocalDetector, Scheduler, Service, ServicePort};
use crate::ir::{Family, L4Proto};
use crate::model::Snapshot;
use crate::{Config, Diagnostic};

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object must deserialize")
}

/// A Service in namespace `ns`; `extra` is merged into the top level (metadata extras go in
/// `extra.metadata`, which replaces the default one).
fn svc(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn meta(name: &str, labels: Value, annotations: Value) -> Value {
    json!({"name": name, "namespace": "ns", "labels": labels, "annotations": annotations})
}

/// A ClusterIP Service with one TCP port 80 named `http`.
fn web() -> Value {
    svc(
        "web",
        json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
               "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
    )
}

/// An EndpointSlice of Service `service` with one `http`/8080 port.
fn slice(name: &str, service: &str, address_type: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn ep(addr: &str, conditions: Value) -> Value {
    json!({"addresses": [addr], "conditions": conditions})
}

fn snapshot(objects: Vec<Value>) -> Snapshot {
    let mut snap = Snapshot::default();
    for object in objects {
        match object["kind"].as_str() {
            Some("Service") => snap.services.push(from(object)),
            Some("EndpointSlice") => snap.endpoint_slices.push(from(object)),
            Some("Endpoints") => snap.endpoints.push(from(object)),
            Some("Node") => snap.nodes.push(from(object)),
            Some("ServiceCIDR") => snap.service_cidrs.push(from(object)),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    snap
}

fn node_config(hostname: &str) -> Config {
    Config {
        hostname: Some(hostname.to_owned()),
        ..Config::default()
    }
}

fn run(objects: Vec<Value>) -> (Graph, Vec<Diagnostic>) {
    normalize(&snapshot(objects), &Config::default())
}

fn run_with(objects: Vec<Value>, config: &Config) -> (Graph, Vec<Diagnostic>) {
    normalize(&snapshot(objects), config)
}

fn only_service(graph: &Graph) -> &Service {
    assert_eq!(graph.services.len(), 1, "{:#?}", graph.services);
    &graph.services[0]
}

fn only_port(graph: &Graph) -> &ServicePort {
    let service = only_service(graph);
    assert_eq!(service.ports.len(), 1, "{:#?}", service.ports);
    &service.ports[0]
}

fn backends(list: &[Backend]) -> Vec<String> {
    list.iter()
        .map(|b| match b.addr {
            IpAddr::V4(a) => format!("{a}:{}", b.port),
            IpAddr::V6(a) => format!("[{a}]:{}", b.port),
        })
        .collect()
}

fn ips(list: &[IpAddr]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// `field: message` of every diagnostic, for compact assertions.
fn fields(diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .map(|d| {
            format!(
                "{} {}/{} {}: {}",
                d.kind, d.namespace, d.name, d.field, d.message
            )
        })
        .collect()
}

/// A ClusterIP of its own for a Service named by one letter (`a` is 10.96.0.97), so that tests
/// with several Services do not share one (which is a diagnostic of its own).
fn own_ip(name: &str) -> String {
    format!("10.96.0.{}", name.bytes().next().unwrap_or(b'x'))
}

/// The diagnostics about objects of `kind` only.
fn of_kind(diags: &[Diagnostic], kind: &str) -> Vec<Diagnostic> {
    diags.iter().filter(|d| d.kind == kind).cloned().collect()
}

fn no_diags(diags: &[Diagnostic]) {
    assert!(diags.is_empty(), "{:#?}", fields(diags));
}

#[test]
fn basic_service_with_ready_endpoints() {
    let (graph, diags) = run(vec![
        web(),
        slice(
            "web-1",
            "web",
            "IPv4",
            json!([
                ep("10.0.0.2", json!({"ready": true})),
                ep("10.0.0.1", json!({}))
            ]),
        ),
    ]);
    no_diags(&diags);
    let service = only_service(&graph);
    assert_eq!(
        (service.namespace.as_str(), service.name.as_str()),
        ("ns", "web")
    );
    assert_eq!(ips(&service.cluster_ips), ["10.96.0.10"]);
    assert_eq!(service.scheduler, Scheduler::Random);
    assert_eq!(service.affinity_timeout, None);
    let port = &service.ports[0];
    assert_eq!(
        (port.name.as_str(), port.proto, port.port, port.node_port),
        ("http", L4Proto::Tcp, 80, None)
    );
    assert_eq!(backends(&port.cluster), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert!(port.local.is_empty(), "no hostname means nothing is local");
}

#[test]
fn terminating_fallback_uses_serving_terminating_only() {
    let (graph, diags) = run(vec![
        web(),
        slice(
            "web-1",
            "web",
            "IPv4",
            json!([
                ep(
                    "10.0.0.1",
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                ep(
                    "10.0.0.2",
                    json!({"ready": false, "serving": false, "terminating": true})
                ),
                ep(
                    "10.0.0.3",
                    json!({"ready": false, "serving": true, "terminating": false})
                ),
            ]),
        ),
    ]);
    no_diags(&diags);
    assert_eq!(backends(&only_port(&graph).cluster), ["10.0.0.1:8080"]);
}

#[test]
fn ready_endpoints_win_over_terminating_ones() {
    let (graph, _) = run(vec![
        web(),
        slice(
            "web-1",
            "web",
            "IPv4",
            json!([
                ep(
                    "10.0.0.1",
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                ep("10.0.0.2", json!({"ready": true})),
            ]),
        ),
    ]);
    assert_eq!(backends(&only_port(&graph).cluster), ["10.0.0.2:8080"]);
}

#[test]
fn non_serving_endpoints_are_never_used() {
    // `serving` defaults to `ready`, so a not-ready endpoint without `serving` is not serving.
    let (graph, _) = run(vec![
        web(),
        slice(
            "web-1",
            "web",
            "IPv4",
            json!([
                ep("10.0.0.1", json!({"ready": false, "terminating": true})),
                ep(
                    "10.0.0.2",
                    json!({"ready": false, "serving": false, "terminating": true})
                ),
            ]),
        ),
    ]);
    let port = only_port(&graph);
    assert!(port.cluster.is_empty() && port.local.is_empty(), "{port:?}");
}

fn zoned_node(zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": zone}},
           "status": {"addresses": [
               {"type": "Hostname", "address": "node-a"},
               {"type": "InternalIP", "address": "fd00::a"},
               {"type": "InternalIP", "address": "192.168.0.10"},
               {"type": "InternalIP", "address": "192.168.0.11"},
               {"type": "ExternalIP", "address": "203.0.113.1"}]}})
}

fn hinted(addr: &str, zones: &[&str], nodes: &[&str]) -> Value {
    let zones: Vec<Value> = zones.iter().map(|z| json!({"name": z})).collect();
    let nodes: Vec<Value> = nodes.iter().map(|n| json!({"name": n})).collect();
    let mut hints = json!({});
    if !zones.is_empty() {
        hints["forZones"] = json!(zones);
    }
    if !nodes.is_empty() {
        hints["forNodes"] = json!(nodes);
    }
    json!({"addresses": [addr], "conditions": {"ready": true}, "hints": hints})
}

#[test]
fn zone_hints_filter_cluster_endpoints() {
    let (graph, diags) = run_with(
        vec![
            zoned_node("zone-a"),
            web(),
            slice(
                "web-1",
                "web",
                "IPv4",
                json!([
                    hinted("10.0.0.1", &["zone-a"], &[]),
                    hinted("10.0.0.2", &["zone-b"], &[])
                ]),
            ),
        ],
        &node_config("node-a"),
    );
    no_diags(&diags);
    assert_eq!(backends(&only_port(&graph).cluster), ["10.0.0.1:8080"]);
}

#[test]
fn zone_hints_are_ignored_when_a_ready_endpoint_lacks_them() {
    let (graph, _) = run_with(
        vec![
            zoned_node("zone-a"),
            web(),
            slice(
                "web-1",
                "web",
                "IPv4",
                json!([
                    hinted("10.0.0.1", &["zone-a"], &[]),
                    hinted("10.0.0.2", &["zone-b"], &[]),
                    ep("10.0.0.3", json!({"ready": true})),
                ]),
            ),
        ],
        &node_config("node-a"),
    );
    assert_eq!(backends(&only_port(&graph).cluster).len(), 3);
}

#[test]
fn zone_hints_are_ignored_when_none_match_this_zone() {
    let (graph, _) = run_with(
        vec![
            zoned_node("zone-c"),
            web(),
            slice(
                "web-1",
                "web",
                "IPv4",
                json!([
                    hinted("10.0.0.1", &["zone-a"], &[]),
                    hinted("10.0.0.2", &["zone-b"], &[])
                ]),
            ),
        ],
        &node_config("node-a"),
    );
    assert_eq!(backends(&only_port(&graph).cluster).len(), 2);
}

#[test]
fn node_hints_take_precedence_over_zone_hints() {
    let (graph, _) = run_with(
        vec![
            zoned_node("zone-a"),
            web(),
            slice(
                "web-1",
                "web",
                "IPv4",
                json!([
                    hinted("10.0.0.1", &["zone-a"], &["node-b"]),
                    hinted("10.0.0.2", &["zone-a"], &["node-a"]),
                    hinted("10.0.0.3", &["zone-b"], &["node-c"]),
                ]),
            ),
        ],
        &node_config("node-a"),
    );
    assert_eq!(backends(&only_port(&graph).cluster), ["10.0.0.2:8080"]);
}

#[test]
fn local_endpoints_follow_node_name_with_terminating_fallback() {
    let endpoint = |addr: &str, node: &str, conditions: Value| json!({"addresses": [addr], "nodeName": node, "conditions": conditions});
    let (graph, _) = run_with(
        vec![
            web(),
            slice(
                "web-1",
                "web",
                "IPv4",
                json!([
                    endpoint(
                        "10.0.0.1",
                        "node-a",
                        json!({"ready": false, "serving": true, "terminating": true})
                    ),
                    endpoint("10.0.0.2", "node-b", json!({"ready": true})),
                ]),
            ),
        ],
        &node_config(" Node-A "),
    );
    assert_eq!(graph.node.name.as_deref(), Some("node-a"));
    let port = only_port(&graph);
    assert_eq!(backends(&port.cluster), ["10.0.0.2:8080"]);
    assert_eq!(backends(&port.local), ["10.0.0.1:8080"]);
}

fn legacy_endpoints(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Endpoints",
           "metadata": {"name": name, "namespace": "ns", "labels": labels},
           "subsets": [{
               "addresses": [{"ip": "10.0.1.1", "nodeName": "node-a"}],
               "notReadyAddresses": [{"ip": "10.0.1.2"}],
               "ports": [{"name": "http", "port": 9090}]}]})
}

fn selectorless() -> Value {
    svc(
        "ext",
        json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}),
    )
}

#[test]
fn endpoints_are_mirrored_for_selectorless_services() {
    let (graph, diags) = run_with(
        vec![
            zoned_node("zone-a"),
            selectorless(),
            legacy_endpoints("ext", json!({})),
        ],
        &node_config("node-a"),
    );
    no_diags(&diags);
    let port = only_port(&graph);
    assert_eq!(backends(&port.cluster), ["10.0.1.1:9090"]);
    assert_eq!(backends(&port.local), ["10.0.1.1:9090"]);
}

#[test]
fn endpoints_are_not_mirrored_with_a_selector_or_skip_mirror() {
    let with_selector = with(
        selectorless(),
        "spec",
        json!({"clusterIP": "10.96.0.20", "selector": {"app": "x"}, "ports": [{"name": "http", "port": 80}]}),
    );
    let (graph, _) = run(vec![with_selector, legacy_endpoints("ext", json!({}))]);
    assert!(only_port(&graph).cluster.is_empty());

    let skip = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
    let (graph, _) = run(vec![selectorless(), legacy_endpoints("ext", skip)]);
    assert!(only_port(&graph).cluster.is_empty());
}

#[test]
fn mirrored_and_sliced_copies_of_an_endpoint_merge() {
    let mut real = slice(
        "ext-1",
        "ext",
        "IPv4",
        json!([ep("10.0.1.1", json!({"ready": false}))]),
    );
    real["ports"] = json!([{"name": "http", "port": 9090}]);
    let (graph, _) = run(vec![
        selectorless(),
        legacy_endpoints("ext", json!({})),
        real,
    ]);
    assert_eq!(backends(&only_port(&graph).cluster), ["10.0.1.1:9090"]);
}

#[test]
fn fqdn_slices_are_skipped_with_one_diagnostic() {
    let (graph, diags) = run(vec![
        web(),
        slice(
            "web-1",
            "web",
            "FQDN",
            json!([ep("example.com", json!({})), ep("example.org", json!({}))]),
        ),
    ]);
    assert!(only_port(&graph).cluster.is_empty());
    assert_eq!(
        fields(&diags),
        [
            r#"EndpointSlice ns/web-1 addressType: address type "FQDN" is not supported; slice skipped"#
        ]
    );
}

#[test]
fn bad_endpoint_addresses_are_skipped() {
    let (graph, diags) = run(vec![
        web(),
        slice(
            "web-1",
            "web",
            "IPv4",
            json!([
                ep("fd00::1", json!({})),
                ep("127.0.0.1", json!({})),
                ep("not-an-ip", json!({})),
                ep("169.254.0.5", json!({})),
                ep("10.0.0.1", json!({})),
                {"addresses": []},
            ]),
        ),
    ]);
    assert_eq!(backends(&only_port(&graph).cluster), ["10.0.0.1:8080"]);
    assert_eq!(
        fields(&diags),
        [
            "EndpointSlice ns/web-1 endpoints[0].addresses[0]: fd00::1 is not an IPv4 address; endpoint skipped",
            "EndpointSlice ns/web-1 endpoints[1].addresses[0]: 127.0.0.1 is not a usable endpoint address (loopback); endpoint skipped",
            r#"EndpointSlice ns/web-1 endpoints[2].addresses[0]: invalid IP address "not-an-ip"; endpoint skipped"#,
            "EndpointSlice ns/web-1 endpoints[3].addresses[0]: 169.254.0.5 is not a usable endpoint address (link-local); endpoint skipped",
            "EndpointSlice ns/web-1 endpoints[5].addresses: no address; endpoint skipped",
        ]
    );
}

#[test]
fn service_ports_match_slice_ports_by_name_and_protocol() {
    let service = svc(
        "multi",
        json!({"clusterIP": "10.96.0.30", "selector": {"a": "b"}, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53},
            {"port": 9000}]}),
    );
    let mut s = slice(
        "multi-1",
        "multi",
        "IPv4",
        json!([ep("10.0.0.1", json!({}))]),
    );
    s["ports"] = json!([
        {"name": "dns", "port": 5353, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 5354},
        {"name": "", "port": 9001},
        {"name": "unused", "protocol": "TCP"}]);
    let (graph, diags) = run(vec![service, s]);
    assert_eq!(
        fields(&diags),
        ["EndpointSlice ns/multi-1 ports[3].port: no port number; slice port unused"]
    );
    let ports: Vec<(String, L4Proto, u16, Vec<String>)> = only_service(&graph)
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.proto, p.port, backends(&p.cluster)))
        .collect();
    assert_eq!(
        ports,
        [
            (
                "dns-tcp".to_owned(),
                L4Proto::Tcp,
                53,
                vec!["10.0.0.1:5354".to_owned()]
            ),
            (
                String::new(),
                L4Proto::Tcp,
                9000,
                vec!["10.0.0.1:9001".to_owned()]
            ),
            (
                "dns".to_owned(),
                L4Proto::Udp,
                53,
                vec!["10.0.0.1:5353".to_owned()]
            ),
        ]
    );
}

#[test]
fn dual_stack_service_uses_both_slice_families() {
    let service = svc(
        "dual",
        json!({"clusterIPs": ["fd00:96::10", "10.96.0.10"], "selector": {"a": "b"},
               "ports": [{"name": "http", "port": 80}]}),
    );
    let (graph, diags) = run(vec![
        service,
        slice(
            "dual-v4",
            "dual",
            "IPv4",
            json!([ep("10.0.0.1", json!({}))]),
        ),
        slice("dual-v6", "dual", "IPv6", json!([ep("fd00::1", json!({}))])),
    ]);
    no_diags(&diags);
    assert_eq!(
        ips(&only_service(&graph).cluster_ips),
        ["10.96.0.10", "fd00:96::10"]
    );
    assert_eq!(
        backends(&only_port(&graph).cluster),
        ["10.0.0.1:8080", "[fd00::1]:8080"]
    );
}

#[test]
fn second_cluster_ip_of_a_family_is_reported() {
    let service = svc(
        "two",
        json!({"clusterIPs": ["10.96.0.1", "10.96.0.2"], "ports": [{"port": 80}]}),
    );
    let (graph, diags) = run(vec![service]);
    assert_eq!(ips(&only_service(&graph).cluster_ips), ["10.96.0.1"]);
    assert_eq!(
        fields(&diags),
        ["Service ns/two spec.clusterIPs[1]: second ClusterIP of the same family; skipped"]
    );
}

#[test]
fn traffic_policy_flags() {
    let with_policies = |ty: &str, external_ips: Value| {
        svc(
            "p",
            json!({"type": ty, "clusterIP": "10.96.0.1", "externalIPs": external_ips,
                   "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                   "ports": [{"port": 80, "nodePort": 30080}]}),
        )
    };
    let (graph, _) = run(vec![with_policies("ClusterIP", json!([]))]);
    let service = only_service(&graph);
    assert!(
        !service.external_local,
        "a ClusterIP service is not externally reachable"
    );
    assert!(service.internal_local);
    assert_eq!(
        service.ports[0].node_port, None,
        "nodePort only for NodePort/LoadBalancer"
    );

    let (graph, _) = run(vec![with_policies("ClusterIP", json!(["203.0.113.5"]))]);
    assert!(only_service(&graph).external_local);

    let (graph, _) = run(vec![with_policies("NodePort", json!([]))]);
    let service = only_service(&graph);
    assert!(service.external_local);
    assert_eq!(service.ports[0].node_port, Some(30080));
}

#[test]
fn service_proxy_name_label_selects_services() {
    let labelled = |name: &str, proxy: &str| {
        with(
            svc(
                name,
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}),
            ),
            "metadata",
            meta(
                name,
                json!({"service.kubernetes.io/service-proxy-name": proxy}),
                json!({}),
            ),
        )
    };
    let plain = svc(
        "plain",
        json!({"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}),
    );
    let objects = || {
        vec![
            labelled("ours", "kube-nft"),
            labelled("theirs", "other"),
            plain.clone(),
        ]
    };

    let (graph, diags) = run(objects());
    no_diags(&diags);
    let names: Vec<&str> = graph.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["plain"]);

    let config = Config {
        service_proxy_name: Some("kube-nft".to_owned()),
        ..Config::default()
    };
    let (graph, _) = run_with(objects(), &config);
    let names: Vec<&str> = graph.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ours"]);
}

#[test]
fn headless_and_external_name_services_are_skipped_silently() {
    let (graph, diags) = run(vec![
        svc(
            "none",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
        svc(
            "none-list",
            json!({"clusterIPs": ["None"], "clusterIP": "None", "ports": [{"port": 80}]}),
        ),
        svc("empty", json!({"ports": [{"port": 80}]})),
        svc(
            "extname",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        with(
            svc(
                "label",
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}),
            ),
            "metadata",
            meta(
                "label",
                json!({"service.kubernetes.io/headless": ""}),
                json!({}),
            ),
        ),
    ]);
    no_diags(&diags);
    assert!(graph.services.is_empty(), "{:#?}", graph.services);
}

fn load_balancer(status: Value, spec_extra: Value) -> Value {
    let mut spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.1",
                          "ports": [{"port": 80, "nodePort": 30080}]});
    for (k, v) in spec_extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    with(svc("lb", spec), "status", json!({"loadBalancer": status}))
}

#[test]
fn load_balancer_ingress_ip_modes() {
    let (graph, diags) = run(vec![load_balancer(
        json!({"ingress": [
            {"ip": "203.0.113.10"},
            {"ip": "203.0.113.11", "ipMode": "VIP"},
            {"ip": "203.0.113.12", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"},
            {"ip": "bogus"}]}),
        json!({}),
    )]);
    assert_eq!(
        ips(&only_service(&graph).lb_ips),
        ["203.0.113.10", "203.0.113.11"]
    );
    // (No node IP either: the NodePort not served is a `Config` diagnostic.)
    assert_eq!(
        fields(&of_kind(&diags, "Service")),
        [r#"Service ns/lb status.loadBalancer.ingress[4].ip: invalid IP address "bogus"; skipped"#]
    );
}

#[test]
fn load_balancer_status_and_ranges_are_ignored_on_other_types() {
    let mut service = load_balancer(
        json!({"ingress": [{"ip": "203.0.113.10"}]}),
        json!({"loadBalancerSourceRanges": ["10.0.0.0/8"]}),
    );
    service["spec"]["type"] = json!("NodePort");
    let (graph, _) = run(vec![service]);
    let service = only_service(&graph);
    assert!(service.lb_ips.is_empty() && service.source_ranges.is_empty());
}

#[test]
fn source_ranges_are_trimmed_and_bare_ips_are_single_addresses() {
    let (graph, diags) = run(vec![load_balancer(
        json!({}),
        json!({"loadBalancerSourceRanges": [" 10.0.0.0/8 ", "192.0.2.7", "fd00::/64", "nope/1", "10.0.0.0/8"]}),
    )]);
    let ranges: Vec<String> = only_service(&graph)
        .source_ranges
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/64"]);
    assert_eq!(
        fields(&of_kind(&diags, "Service")),
        [r#"Service ns/lb spec.loadBalancerSourceRanges[3]: invalid CIDR "nope/1"; skipped"#]
    );
}

#[test]
fn unallocated_load_balancer_node_ports_are_none() {
    let service = load_balancer(
        json!({}),
        json!({"allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}, {"port": 81, "nodePort": 0}]}),
    );
    let (graph, diags) = run(vec![service]);
    no_diags(&diags);
    let node_ports: Vec<Option<u16>> = only_service(&graph)
        .ports
        .iter()
        .map(|p| p.node_port)
        .collect();
    assert_eq!(node_ports, [None, None]);
}

#[test]
fn leading_zero_ipv4_is_read_as_decimal_and_reported() {
    let (graph, diags) = run(vec![svc(
        "zeros",
        json!({"clusterIP": "172.30.0.041", "externalIPs": ["010.1.1.1"], "ports": [{"port": 80}]}),
    )]);
    let service = only_service(&graph);
    assert_eq!(ips(&service.cluster_ips), ["172.30.0.41"]);
    assert_eq!(ips(&service.external_ips), ["10.1.1.1"]);
    assert_eq!(
        fields(&diags),
        [
            "Service ns/zeros spec.clusterIP: leading zeros in IPv4 address; read as 172.30.0.41",
            "Service ns/zeros spec.externalIPs[0]: leading zeros in IPv4 address; read as 10.1.1.1",
        ]
    );
}

#[test]
fn service_without_a_valid_cluster_ip_is_skipped() {
    let (graph, diags) = run(vec![svc(
        "bad",
        json!({"clusterIPs": ["10.96.0.300"], "externalIPs": ["x", "203.0.113.1"], "ports": [{"port": 80}]}),
    )]);
    assert!(graph.services.is_empty());
    assert_eq!(
        fields(&diags),
        [
            r#"Service ns/bad spec.clusterIPs: no valid ClusterIP; Service skipped"#,
            r#"Service ns/bad spec.clusterIPs[0]: invalid IP address "10.96.0.300"; skipped"#,
        ]
    );
}

#[test]
fn invalid_ports_are_reported_and_skipped() {
    let (graph, diags) = run(vec![
        svc(
            "ports",
            json!({"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [
                {"name": "b", "port": 443},
                {"name": "a", "port": 80, "protocol": "UDP"},
                {"name": "icmp", "port": 1, "protocol": "ICMP"},
                {"name": "zero", "port": 0},
                {"name": "dup", "port": 443},
                {"name": "np", "port": 8443, "nodePort": 70000}]}),
        ),
        svc("noports", json!({"clusterIP": "10.96.0.2"})),
    ]);
    let ports: Vec<(String, L4Proto, u16, Option<u16>)> = only_service(&graph)
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.proto, p.port, p.node_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("b".to_owned(), L4Proto::Tcp, 443, None),
            ("np".to_owned(), L4Proto::Tcp, 8443, None),
            ("a".to_owned(), L4Proto::Udp, 80, None),
        ]
    );
    assert_eq!(
        fields(&diags),
        [
            "Service ns/noports spec.ports: Service has no ports; skipped",
            "Service ns/ports spec.ports[2].protocol: unsupported protocol \"ICMP\"; port skipped",
            "Service ns/ports spec.ports[3].port: port 0 is not in 1-65535; port skipped",
            "Service ns/ports spec.ports[4]: duplicate port 443/tcp; skipped",
            "Service ns/ports spec.ports[5].nodePort: nodePort 70000 is not in 1-65535; no NodePort",
        ]
    );
}

#[test]
fn scheduler_annotation() {
    let annotated = |name: &str, value: &str| {
        with(
            svc(
                name,
                json!({"clusterIP": own_ip(name), "ports": [{"port": 80}]}),
            ),
            "metadata",
            meta(name, json!({}), json!({"kube-nft.io/scheduler": value})),
        )
    };
    let (graph, diags) = run(vec![
        annotated("a", "round-robin"),
        annotated("b", "source-hash"),
        annotated("c", "random"),
        annotated("d", "weighted"),
        annotated("e", "maglev"),
    ]);
    let schedulers: Vec<Scheduler> = graph.services.iter().map(|s| s.scheduler).collect();
    assert_eq!(
        schedulers,
        [
            Scheduler::RoundRobin,
            Scheduler::SourceHash,
            Scheduler::Random,
            Scheduler::Random,
            Scheduler::Maglev
        ]
    );
    assert_eq!(
        fields(&diags),
        ["Service ns/d metadata.annotations[kube-nft.io/scheduler]: unknown scheduler \"weighted\" \
          (expected random, round-robin, source-hash or maglev); using random"]
    );
}

#[test]
fn session_affinity_timeout() {
    let affinity = |name: &str, config: Value| {
        svc(
            name,
            json!({"clusterIP": own_ip(name), "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": config}),
        )
    };
    let (graph, diags) = run(vec![
        affinity("a", json!({})),
        affinity("b", json!({"clientIP": {"timeoutSeconds": 60}})),
        affinity("c", json!({"clientIP": {"timeoutSeconds": 0}})),
        affinity("d", json!({"clientIP": {"timeoutSeconds": 86401}})),
    ]);
    let timeouts: Vec<Option<u32>> = graph.services.iter().map(|s| s.affinity_timeout).collect();
    assert_eq!(timeouts, [Some(10800), Some(60), Some(10800), Some(10800)]);
    assert_eq!(diags.len(), 2);
    assert!(
        diags[0].message.ends_with("using default 10800"),
        "{:?}",
        diags[0]
    );
}

#[test]
fn node_info_from_the_node_object() {
    let (graph, diags) = run_with(vec![zoned_node("zone-a")], &node_config("node-a"));
    no_diags(&diags);
    assert_eq!(graph.node.zone.as_deref(), Some("zone-a"));
    assert_eq!(ips(&graph.node.ips), ["192.168.0.10", "fd00::a"]);
    let nodeports: Vec<String> = graph
        .nodeport_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nodeports, ["192.168.0.10/32", "fd00::a/128"]);
}

#[test]
fn node_addresses_are_every_internal_and_external_ip() {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
                      "status": {"addresses": [
                          {"type": "Hostname", "address": "node-a"},
                          {"type": "ExternalIP", "address": "198.51.100.2"},
                          {"type": "InternalIP", "address": "192.168.1.2"},
                          {"type": "InternalIP", "address": "192.168.0.2"},
                          {"type": "ExternalIP", "address": "bogus"}]}});
    let config = Config {
        node_ips: vec!["10.9.9.9".parse().expect("ip")],
        ..node_config("node-a")
    };
    let (graph, diags) = run_with(vec![node], &config);
    assert_eq!(ips(&graph.node.ips), ["10.9.9.9"]);
    assert_eq!(
        ips(&graph.node.addresses),
        ["10.9.9.9", "192.168.0.2", "192.168.1.2", "198.51.100.2"]
    );
    assert_eq!(
        fields(&diags),
        ["Node /node-a status.addresses[4].address: invalid IP address; skipped"]
    );
}

#[test]
fn node_ips_from_config_win_and_missing_node_is_reported() {
    let config = Config {
        hostname: Some("ghost".to_owned()),
        node_ips: vec![
            "10.1.0.1".parse().expect("ip"),
            "10.1.0.2".parse().expect("ip"),
        ],
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![zoned_node("zone-a")], &config);
    assert_eq!(ips(&graph.node.ips), ["10.1.0.1"]);
    assert_eq!(graph.node.zone, None);
    assert_eq!(
        fields(&diags),
        [
            "Node /ghost metadata.name: no Node object with this name; zone unknown and node IPs \
          only from --node-ip"
        ]
    );
}

#[test]
fn nodeport_addresses_drop_loopback() {
    let config = Config {
        node_ips: vec!["127.0.0.1".parse().expect("ip")],
        nodeport_addresses: vec![
            NodePortAddress::Cidr("10.0.0.0/8".parse().expect("net")),
            NodePortAddress::Primary,
            NodePortAddress::Cidr("127.0.0.0/16".parse().expect("net")),
            NodePortAddress::Cidr("10.0.0.0/8".parse().expect("net")),
        ],
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![], &config);
    let nodeports: Vec<String> = graph
        .nodeport_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nodeports, ["10.0.0.0/8"]);
    assert_eq!(
        fields(&diags),
        [
            "Config /nodeport-addresses [1]: 127.0.0.1/32 is loopback, where NodePorts are not served; skipped",
            "Config /nodeport-addresses [2]: 127.0.0.0/16 is loopback, where NodePorts are not served; skipped",
        ]
    );
}

fn nodeport_nets(graph: &Graph) -> Vec<String> {
    graph
        .nodeport_addresses
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn cidr(text: &str) -> NodePortAddress {
    NodePortAddress::Cidr(text.parse().expect("net"))
}

/// A dual-stack NodePort Service, so that a family without NodePort addresses is noticed.
fn dual_stack_node_port() -> Value {
    svc(
        "np",
        json!({"type": "NodePort", "clusterIPs": ["10.96.0.7", "fd00:96::7"],
               "ports": [{"port": 80, "nodePort": 30080}]}),
    )
}

#[test]
fn a_family_named_only_by_loopback_serves_no_node_port() {
    // Whether a family matches every address is decided by what was written, not by what
    // survives filtering: IPv4 was named (by loopback only), IPv6 was not.
    let config = Config {
        nodeport_addresses: vec![cidr("127.0.0.0/8")],
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![dual_stack_node_port()], &config);
    assert_eq!(nodeport_nets(&graph), ["::/0"]);
    assert_eq!(
        fields(&diags),
        [
            "Config /nodeport-addresses IPv4: no IPv4 address of this node is selected (the IPv4 \
             entries are loopback, or `primary` and the node has no IPv4 address), so IPv4 \
             NodePorts are not served: ns/np 30080/tcp",
            "Config /nodeport-addresses [0]: 127.0.0.0/8 is loopback, where NodePorts are not \
             served; skipped; no other IPv4 entry, so no IPv4 address serves NodePorts",
        ]
    );

    let config = Config {
        nodeport_addresses: vec![cidr("::1/128")],
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![dual_stack_node_port()], &config);
    assert_eq!(nodeport_nets(&graph), ["0.0.0.0/0"]);
    assert_eq!(diags.len(), 2, "{:#?}", fields(&diags));
    assert!(diags[0]
        .message
        .contains("IPv6 NodePorts are not served: ns/np"));
}

#[test]
fn primary_names_both_families_even_without_an_address_of_one() {
    // node-a has an IPv4 InternalIP only: `primary` serves IPv4 on it and IPv6 nowhere.
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
                      "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}});
    let (graph, diags) = run_with(vec![node, dual_stack_node_port()], &node_config("node-a"));
    assert_eq!(nodeport_nets(&graph), ["192.168.0.10/32"]);
    assert_eq!(
        fields(&diags),
        [
            "Config /nodeport-addresses IPv6: no IPv6 address of this node is selected (the IPv6 \
          entries are loopback, or `primary` and the node has no IPv6 address), so IPv6 \
          NodePorts are not served: ns/np 30080/tcp"
        ]
    );
    // No node at all: no NodePort anywhere (never every address).
    let (graph, diags) = run(vec![dual_stack_node_port()]);
    assert_eq!(nodeport_nets(&graph), Vec::<String>::new());
    assert_eq!(diags.len(), 2, "{:#?}", fields(&diags));
    // Explicit CIDRs of one family leave the other family matching everything.
    let config = Config {
        nodeport_addresses: vec![cidr("192.168.0.0/16")],
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![dual_stack_node_port()], &config);
    assert_eq!(nodeport_nets(&graph), ["192.168.0.0/16", "::/0"]);
    no_diags(&diags);
}

fn pod_cidr_node(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}, "spec": spec})
}

fn detectors(graph: &Graph) -> Vec<String> {
    graph
        .local_detectors
        .iter()
        .map(|(family, d)| format!("{family} {d:?}"))
        .collect()
}

#[test]
fn cluster_cidr_detector_is_the_first_cluster_cidr_of_each_family() {
    let config = Config {
        cluster_cidrs: vec![
            "10.0.0.0/16".parse().expect("net"),
            "10.1.0.0/16".parse().expect("net"),
            "fd00:10::/64".parse().expect("net"),
        ],
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![], &config);
    no_diags(&diags);
    assert_eq!(
        detectors(&graph),
        [
            "ip ClusterCidr(10.0.0.0/16)",
            "ip6 ClusterCidr(fd00:10::/64)"
        ]
    );
    // No --cluster-cidr: no detector, silently (kube-proxy only logs it).
    let (graph, diags) = run(vec![]);
    no_diags(&diags);
    assert!(graph.local_detectors.is_empty());
}

#[test]
fn node_cidr_detector_is_the_first_pod_cidr_of_each_family() {
    let config = Config {
        detect_local_mode: LocalMode::NodeCidr,
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("net")],
        ..node_config("node-a")
    };
    let node = pod_cidr_node(json!({"podCIDR": "10.0.1.0/24",
        "podCIDRs": ["10.0.1.0/24", "fd00:10:1::/64", "10.0.9.0/24", "nope"]}));
    let (graph, diags) = run_with(vec![node], &config);
    assert_eq!(
        detectors(&graph),
        ["ip NodeCidr(10.0.1.0/24)", "ip6 NodeCidr(fd00:10:1::/64)"]
    );
    assert_eq!(
        fields(&diags),
        [r#"Node /node-a spec.podCIDRs[3]: invalid CIDR "nope"; skipped"#]
    );
    // The older single field when the list is empty; a single-stack node is no news.
    let node = pod_cidr_node(json!({"podCIDR": "010.0.1.0/24"}));
    let (graph, diags) = run_with(vec![node], &config);
    assert_eq!(detectors(&graph), ["ip NodeCidr(10.0.1.0/24)"]);
    assert_eq!(
        fields(&diags),
        ["Node /node-a spec.podCIDR: leading zeros in IPv4 prefix; read as 10.0.1.0/24"]
    );
    // None at all: no detector, and the operator is told what that means.
    let (graph, diags) = run_with(vec![pod_cidr_node(json!({}))], &config);
    assert!(graph.local_detectors.is_empty());
    assert_eq!(
        fields(&diags),
        ["Node /node-a spec.podCIDRs: no pod CIDR, which --detect-local-mode NodeCIDR needs: no \
          local-traffic detector, so ClusterIP traffic is not masqueraded for coming from \
          outside the pods, and pods reach externalTrafficPolicy: Local Services through local \
          endpoints only (as kube-proxy without a detector)"]
    );
}

#[test]
fn interface_detectors_serve_both_families() {
    let config = Config {
        detect_local_mode: LocalMode::BridgeInterface,
        pod_bridge_interface: Some("cbr0".into()),
        pod_interface_name_prefix: Some("unused".into()),
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![], &config);
    no_diags(&diags);
    assert_eq!(
        detectors(&graph),
        [r#"ip Interface("cbr0")"#, r#"ip6 Interface("cbr0")"#]
    );
    assert_eq!(
        graph.local_detector(Family::Ip6),
        Some(&LocalDetector::Interface("cbr0".into()))
    );
    let config = Config {
        detect_local_mode: LocalMode::InterfaceNamePrefix,
        pod_interface_name_prefix: Some("veth".into()),
        ..Config::default()
    };
    let (graph, _) = run_with(vec![], &config);
    assert_eq!(
        detectors(&graph),
        [
            r#"ip InterfacePrefix("veth")"#,
            r#"ip6 InterfacePrefix("veth")"#
        ]
    );
    // What `Config::check` refuses degrades here to no detector and a diagnostic.
    let config = Config {
        detect_local_mode: LocalMode::InterfaceNamePrefix,
        pod_interface_name_prefix: Some("ve th".into()),
        ..Config::default()
    };
    let (graph, diags) = run_with(vec![], &config);
    assert!(graph.local_detectors.is_empty());
    assert_eq!(diags.len(), 1);
    assert!(
        fields(&diags)[0].starts_with(
            r#"Config /detect-local-mode pod-interface-name-prefix: "ve th" contains ' ': no local-traffic detector"#
        ),
        "{:?}",
        fields(&diags)
    );
}

#[test]
fn only_the_first_of_several_endpoint_addresses_is_used_and_that_is_said() {
    let endpoint = json!({"addresses": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]});
    let (graph, diags) = run(vec![
        web(),
        slice("web-1", "web", "IPv4", json!([endpoint])),
    ]);
    assert_eq!(backends(&only_port(&graph).cluster), ["10.0.0.1:8080"]);
    assert_eq!(
        fields(&diags),
        ["EndpointSlice ns/web-1 endpoints[0].addresses: 3 addresses; only the first, 10.0.0.1, \
          is used (as kube-proxy does), the others get no traffic"]
    );
}

#[test]
fn an_endpoint_that_is_a_cluster_ip_is_reported_on_the_service_using_it() {
    let db = svc(
        "db",
        json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}),
    );
    let (graph, diags) = run(vec![
        web(),
        db,
        slice(
            "web-1",
            "web",
            "IPv4",
            json!([ep("10.96.0.20", json!({})), ep("10.0.0.1", json!({}))]),
        ),
    ]);
    // Programmed as written (kube-proxy does the same); only the diagnostic is new.
    assert_eq!(
        backends(&graph.services[1].ports[0].cluster),
        ["10.0.0.1:8080", "10.96.0.20:8080"]
    );
    assert_eq!(
        fields(&diags),
        [
            "Service ns/web endpoints: endpoint 10.96.0.20 is the ClusterIP of Service ns/db: a \
          connection is NATed once, so traffic sent to it is not balanced again but rejected \
          (cluster-ips-check), as with kube-proxy; list the pods' addresses"
        ]
    );
}

#[test]
fn health_check_node_port_only_where_kube_proxy_serves_one() {
    let with_hc = |name: &str, ty: &str, policy: &str| {
        svc(
            name,
            json!({"type": ty, "clusterIP": own_ip(name), "externalTrafficPolicy": policy,
                   "healthCheckNodePort": 32000, "ports": [{"port": 80, "nodePort": 30000 + u16::from(name.as_bytes()[0])}]}),
        )
    };
    let (_, diags) = run(vec![
        with_hc("a", "LoadBalancer", "Local"),
        with_hc("b", "LoadBalancer", "Cluster"),
        with_hc("c", "NodePort", "Local"),
    ]);
    assert_eq!(
        fields(&of_kind(&diags, "Service")),
        [
            "Service ns/b spec.healthCheckNodePort: 32000 is ignored, as by kube-proxy: a \
             health-check NodePort belongs to a LoadBalancer with externalTrafficPolicy Local, \
             and its externalTrafficPolicy is Cluster",
            "Service ns/c spec.healthCheckNodePort: 32000 is ignored, as by kube-proxy: a \
             health-check NodePort belongs to a LoadBalancer with externalTrafficPolicy Local, \
             and it is not of type LoadBalancer",
        ]
    );
}

/// A LoadBalancer with `externalTrafficPolicy: Local` named by one letter, dual-stack, with
/// `healthCheckNodePort: hc`.
fn local_lb(name: &str, hc: i64) -> Value {
    let n = name.bytes().next().unwrap_or(b'x');
    svc(
        name,
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
               "clusterIPs": [own_ip(name), format!("fd00:96::{n:x}")],
               "healthCheckNodePort": hc, "selector": {"app": name},
               "ports": [{"name": "http", "port": 80, "nodePort": 30000 + u16::from(n)}]}),
    )
}

fn on_node(addr: &str, node: &str, ready: bool, terminating: bool) -> Value {
    json!({"addresses": [addr], "nodeName": node,
           "conditions": {"ready": ready, "serving": true, "terminating": terminating}})
}

#[test]
fn health_check_counts_this_nodes_ready_endpoint_addresses() {
    let mut two_ports = slice(
        "a-2",
        "a",
        "IPv4",
        json!([on_node("10.0.1.1", "node-a", true, false)]),
    );
    two_ports["ports"] = json!([{"name": "http", "port": 8080}, {"name": "https", "port": 8443}]);
    let (graph, diags) = run_with(
        vec![
            local_lb("a", 32000),
            slice(
                "a-1",
                "a",
                "IPv4",
                json!([
                    on_node("10.0.1.1", "node-a", true, false),
                    // Serving but terminating: still gets Local traffic, but is not counted
                    // (kube-proxy's TestHealthCheckNodePortWhenTerminating).
                    on_node("10.0.1.2", "node-a", false, true),
                    on_node("10.0.2.1", "node-b", true, false),
                ]),
            ),
            // The same pod in a second slice, on two ports: one endpoint.
            two_ports,
            slice(
                "a-6",
                "a",
                "IPv6",
                json!([on_node("fd00:10:1::1", "node-a", true, false)]),
            ),
        ],
        &node_config("node-a"),
    );
    no_diags(&of_kind(&diags, "Service"));
    let service = only_service(&graph);
    assert_eq!(service.health_check_node_port, Some(32000));
    let addrs: Vec<IpAddr> = ["10.0.1.1", "fd00:10:1::1"]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
    assert_eq!(service.local_ready_endpoints, addrs);
    // The Local policy still falls back to the terminating endpoint when it is the only one;
    // the health check does not.
    let (graph, _) = run_with(
        vec![
            local_lb("a", 32000),
            slice(
                "a-1",
                "a",
                "IPv4",
                json!([on_node("10.0.1.2", "node-a", false, true)]),
            ),
        ],
        &node_config("node-a"),
    );
    let service = only_service(&graph);
    assert_eq!(service.ports[0].local.len(), 1);
    assert!(service.local_ready_endpoints.is_empty());
}

#[test]
fn a_health_check_node_port_out_of_range_is_reported() {
    let (graph, diags) = run(vec![local_lb("a", 70000)]);
    assert_eq!(only_service(&graph).health_check_node_port, None);
    assert_eq!(
        fields(&of_kind(&diags, "Service")),
        ["Service ns/a spec.healthCheckNodePort: 70000 is not in 1-65535; no health check is served"]
    );
}

#[test]
fn a_shared_health_check_node_port_goes_to_the_first_service() {
    let (graph, diags) = run(vec![local_lb("b", 32000), local_lb("a", 32000)]);
    assert!(graph
        .services
        .iter()
        .all(|s| s.health_check_node_port == Some(32000)));
    assert_eq!(
        fields(&of_kind(&diags, "Service")),
        [
            "Service ns/b spec.healthCheckNodePort: 32000 is also the health-check NodePort of \
             Service ns/a, which answers on it (the first in namespace/name order); this \
             Service's health is not served"
        ]
    );
}

#[test]
fn a_shared_external_address_goes_to_the_first_service_with_endpoints() {
    let shared = |name: &str| {
        svc(
            name,
            json!({"clusterIP": own_ip(name), "externalIPs": ["192.0.2.7"],
                   "ports": [{"name": "http", "port": 80}]}),
        )
    };
    let lb = with(
        svc(
            "c",
            json!({"type": "LoadBalancer", "clusterIP": own_ip("c"),
                   "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        ),
        "status",
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}),
    );
    // `a` has no endpoints, `b` and `c` have: `b` is the first that dispatches.
    let objects = vec![
        shared("a"),
        shared("b"),
        lb,
        slice("b-1", "b", "IPv4", json!([ep("10.0.0.1", json!({}))])),
        slice("c-1", "c", "IPv4", json!([ep("10.0.0.2", json!({}))])),
    ];
    let (_, diags) = run(objects.clone());
    assert_eq!(
        fields(&of_kind(&diags, "Service")),
        [
            "Service ns/a spec.externalIPs: 192.0.2.7 port 80/tcp (externalIP) is also claimed by \
             Service ns/b (externalIP), which gets the traffic: the first Service in \
             namespace/name order with endpoints for it. kube-proxy picks whichever it writes \
             last, which can change from one sync to the next",
            "Service ns/c status.loadBalancer.ingress: 192.0.2.7 port 80/tcp (LoadBalancer IP) is \
             also claimed by Service ns/b (externalIP), which gets the traffic: the first Service \
             in namespace/name order with endpoints for it. kube-proxy picks whichever it writes \
             last, which can change from one sync to the next",
        ]
    );
    // Without any endpoints, the first decides (its reject is what clients get).
    let (_, diags) = run(objects[..3].to_vec());
    let shared: Vec<String> = fields(&of_kind(&diags, "Service"));
    assert_eq!(shared.len(), 2);
    assert!(
        shared[0].contains(
            "claimed by Service ns/a (externalIP), which gets the traffic: no \
                            claimant has endpoints"
        ),
        "{shared:?}"
    );
    // Another port on the same address is no conflict.
    let other_port = with(
        shared_service_on_port("d", 443),
        "metadata",
        json!({"name": "d", "namespace": "ns"}),
    );
    let (_, diags) = run(vec![shared_service_on_port("a", 80), other_port]);
    assert_eq!(fields(&of_kind(&diags, "Service")), Vec::<String>::new());
}

#[test]
fn a_node_port_claimed_twice_is_reported_per_family() {
    let node_port = |name: &str| {
        svc(
            name,
            json!({"type": "NodePort", "clusterIP": own_ip(name),
                   "ports": [{"name": "http", "port": 80, "nodePort": 30500}]}),
        )
    };
    let (_, diags) = run(vec![node_port("a"), node_port("b")]);
    assert_eq!(
        fields(&of_kind(&diags, "Service")),
        [
            "Service ns/b spec.ports: IPv4 NodePort 30500/tcp (NodePort) is also claimed by \
          Service ns/a (NodePort), which gets the traffic: no claimant has endpoints; the first \
          in namespace/name order decides reject or drop. kube-proxy picks whichever it writes \
          last, which can change from one sync to the next"
        ]
    );
}

fn shared_service_on_port(name: &str, port: u16) -> Value {
    svc(
        name,
        json!({"clusterIP": own_ip(name), "externalIPs": ["192.0.2.7"],
               "ports": [{"name": "http", "port": port}]}),
    )
}

#[test]
fn service_cidrs_are_parsed_sorted_and_deduplicated() {
    let cidr = |name: &str, cidrs: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
               "metadata": {"name": name}, "spec": {"cidrs": cidrs}})
    };
    let (graph, diags) = run(vec![
        cidr("b", json!(["fd00:96::/112", "10.96.0.0/12"])),
        cidr("a", json!(["10.96.0.0/12", "10.96.0.1"])),
    ]);
    let cidrs: Vec<String> = graph
        .service_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cidrs, ["10.96.0.0/12", "fd00:96::/112"]);
    assert_eq!(
        fields(&diags),
        [r#"ServiceCIDR /a spec.cidrs[1]: invalid CIDR "10.96.0.1"; skipped"#]
    );
}

#[test]
fn services_are_sorted_and_duplicates_reported() {
    let plain = |name: &str| {
        svc(
            name,
            json!({"clusterIP": own_ip(name), "ports": [{"port": 80}]}),
        )
    };
    let (graph, diags) = run(vec![plain("b"), plain("a"), plain("b")]);
    let names: Vec<&str> = graph.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        fields(&diags),
        ["Service ns/b metadata.name: duplicate Service; later copy skipped"]
    );
}

#[test]
fn same_input_gives_the_same_output() {
    let objects = vec![
        zoned_node("zone-a"),
        web(),
        selectorless(),
        legacy_endpoints("ext", json!({})),
        slice(
            "web-1",
            "web",
            "IPv4",
            json!([ep("10.0.0.2", json!({})), ep("bad", json!({}))]),
        ),
    ];
    let first = run_with(objects.clone(), &node_config("node-a"));
    let mut reversed = objects;
    reversed.reverse();
    assert_eq!(first, run_with(reversed, &node_config("node-a")));
}
