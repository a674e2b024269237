//! Which Service ports a per-backend counter belongs to, decided without IO, for the daemon's
//! opt-in per-Service metrics. The packet path counts per `frontend . backend . proto . backend
//! port`, where the frontend is the connection's original destination address (a ClusterIP, an
//! externalIP or LoadBalancer IP, or for a NodePort whichever node address the client used) and
//! the key has no frontend port, so a counter names no Service by itself. [`BackendIndex`]
//! maps each `(protocol, backend address:port)` of the programmed Services to the Service ports
//! that DNAT there (their Cluster and Local endpoint lists), with each Service's addresses and
//! whether the port has a NodePort; [`BackendIndex::attribute`] then gives a counter to every
//! Service port whose addresses contain its frontend and whose endpoints contain its backend.
//! A frontend that is no Service's address is a NodePort's traffic when it lies in the NodePort
//! addresses of its family, and belongs to every Service port with a NodePort and that backend.
//! Because the key has no frontend port, one counter can belong to several Service ports: two
//! ports of one Service (or of two Services sharing an address) sending to the same backend
//! port, or two NodePort Services with a common backend; it is counted under each of them. A
//! counter that matches nothing (a backend that left, a Service deleted since) belongs to none.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::graph::{Graph, Service};
use crate::ir::L4Proto;

/// One Service port as the per-Service metrics label it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortLabel {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The port's name (empty when unnamed).
    pub port_name: String,
    /// The port's protocol.
    pub proto: L4Proto,
}

/// A Service port in the index: its label, its Service (an index into
/// [`BackendIndex::addresses`]) and whether it has a NodePort.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Port {
    label: PortLabel,
    service: u32,
    node_port: bool,
}

/// The backends of the programmed Services, by protocol and backend address and port, with the
/// Service ports that send there. Built after each committed sync; see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendIndex {
    /// The graph's NodePort addresses (a zero-length prefix: every address of the family).
    nodeport_addresses: Vec<IpNet>,
    /// Per Service, its ClusterIPs, externalIPs and LoadBalancer IPs, sorted and distinct.
    addresses: Vec<Box<[IpAddr]>>,
    ports: Vec<Port>,
    /// `(protocol, backend)` → indexes into `ports`, in Service order.
    by_backend: HashMap<(L4Proto, SocketAddr), Vec<u32>>,
    /// Every address of every Service: a frontend among them is never a NodePort's.
    service_addresses: HashSet<IpAddr>,
}

impl BackendIndex {
    /// The index of a compiled graph (what `compile` programs).
    pub fn of_graph(graph: &Graph) -> BackendIndex {
        BackendIndex::from_services(&graph.nodeport_addresses, &graph.services)
    }

    /// The index of `services`, programmed with NodePorts on `nodeport_addresses` (the graph's).
    pub fn from_services<'a>(
        nodeport_addresses: &[IpNet],
        services: impl IntoIterator<Item = &'a Service>,
    ) -> BackendIndex {
        let mut index = BackendIndex {
            nodeport_addresses: nodeport_addresses.to_vec(),
            ..BackendIndex::default()
        };
        for svc in services {
            let service = index.addresses.len() as u32;
            let mut addresses: Vec<IpAddr> = (svc.cluster_ips.iter())
                .chain(&svc.external_ips)
                .chain(&svc.lb_ips)
                .copied()
                .collect();
            addresses.sort();
            addresses.dedup();
            index.service_addresses.extend(&addresses);
            index.addresses.push(addresses.into_boxed_slice());
            for port in &svc.ports {
                let at = index.ports.len() as u32;
                index.ports.push(Port {
                    label: PortLabel {
                        namespace: svc.namespace.clone(),
                        service: svc.name.clone(),
                        port_name: port.name.clone(),
                        proto: port.proto,
                    },
                    service,
                    node_port: port.node_port.is_some(),
                });
                // Whichever list a traffic policy picks, the DNAT goes to one of these (the
                // Local list is a subset of the endpoints, but topology hints can leave a local
                // endpoint out of the Cluster list).
                let mut backends: Vec<_> = port.cluster.iter().chain(port.local.iter()).collect();
                backends.sort();
                backends.dedup();
                for backend in backends {
                    let addr = SocketAddr::new(backend.addr, backend.port);
                    index
                        .by_backend
                        .entry((port.proto, addr))
                        .or_default()
                        .push(at);
                }
            }
        }
        index
    }

    /// The Service ports a counter of `frontend` → `backend` over `proto` belongs to, in
    /// (namespace, name, port) order; none when it matches nothing. See the module doc.
    pub fn attribute(
        &self,
        frontend: IpAddr,
        proto: L4Proto,
        backend: SocketAddr,
    ) -> impl Iterator<Item = &PortLabel> + '_ {
        let candidates = (self.by_backend.get(&(proto, backend))).map_or(&[][..], Vec::as_slice);
        // The NodePort match of the ruleset is a local address inside the NodePort addresses,
        // never a Service address (those are dispatched first).
        let via_node_port = !candidates.is_empty()
            && !self.service_addresses.contains(&frontend)
            && self
                .nodeport_addresses
                .iter()
                .any(|n| n.contains(&frontend));
        candidates
            .iter()
            .map(|&i| &self.ports[i as usize])
            .filter(move |port| {
                if via_node_port {
                    port.node_port
                } else {
                    let addresses = &self.addresses[port.service as usize];
                    addresses.binary_search(&frontend).is_ok()
                }
            })
            .map(|port| &port.label)
    }

    /// Whether no Service port has a backend.
    pub fn is_empty(&self) -> bool {
        self.by_backend.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::{json, Value};

    use crate::test_support::{node, snapshot_of};
    use crate::{compile, Config};

    /// A Service `ns/name` with `spec`, and one ready slice of `addresses` (of the family of the
    /// first) with `ports` (`name`, target port, protocol).
    fn service(
        name: &str,
        spec: Value,
        addresses: &[&str],
        ports: &[(&str, u16, &str)],
    ) -> [Value; 2] {
        let ipv6 = addresses.first().is_some_and(|a| a.contains(':'));
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
            .collect();
        [
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "ns", "name": name}, "spec": spec}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": "ns", "name": format!("{name}-x"),
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": if ipv6 { "IPv6" } else { "IPv4" },
                "endpoints": endpoints, "ports": ports}),
        ]
    }

    /// `web`: ClusterIP 10.96.0.10, externalIP 198.51.100.20, NodePort 30080 for `http`
    /// (80 → 8080/TCP), and `alt` (8000 → 8080/TCP, same backend port), `dns` (53 → 5353/UDP),
    /// on 10.0.1.11 and 10.0.2.11. `other`: ClusterIP 10.96.0.11, `http` (80 → 8080/TCP) on
    /// 10.0.1.11, no NodePort. `web6`: ClusterIP fd00:96::10, unnamed 80 → 8080/TCP on
    /// fd00:10::11.
    fn index() -> BackendIndex {
        let mut docs = vec![node()];
        docs.extend(service(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                "externalIPs": ["198.51.100.20"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
                     "nodePort": 30080},
                    {"name": "alt", "port": 8000, "targetPort": 8080, "protocol": "TCP",
                     "nodePort": 30081},
                    {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP",
                     "nodePort": 30053}]}),
            &["10.0.1.11", "10.0.2.11"],
            &[
                ("http", 8080, "TCP"),
                ("alt", 8080, "TCP"),
                ("dns", 5353, "UDP"),
            ],
        ));
        docs.extend(service(
            "other",
            json!({"clusterIP": "10.96.0.11",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}),
            &["10.0.1.11"],
            &[("http", 8080, "TCP")],
        ));
        docs.extend(service(
            "web6",
            json!({"clusterIP": "fd00:96::10", "ipFamilies": ["IPv6"],
                "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}),
            &["fd00:10::11"],
            &[("", 8080, "TCP")],
        ));
        let config = Config {
            hostname: Some("node-a".into()),
            ..Config::default()
        };
        let compiled = compile(&snapshot_of(docs), &config);
        assert!(
            compiled.diagnostics.is_empty(),
            "{:?}",
            compiled.diagnostics
        );
        BackendIndex::of_graph(&compiled.graph)
    }

    /// `ns/service/port_name/proto` of every Service port a counter belongs to.
    fn owners(index: &BackendIndex, frontend: &str, proto: L4Proto, backend: &str) -> Vec<String> {
        index
            .attribute(frontend.parse().unwrap(), proto, backend.parse().unwrap())
            .map(|l| format!("{}/{}/{}/{}", l.namespace, l.service, l.port_name, l.proto))
            .collect()
    }

    #[test]
    fn a_cluster_ip_counter_belongs_to_the_ports_of_that_service_only() {
        let index = index();
        // 10.0.1.11:8080 serves web (http, alt) and other (http); the frontend tells which.
        assert_eq!(
            owners(&index, "10.96.0.11", L4Proto::Tcp, "10.0.1.11:8080"),
            ["ns/other/http/tcp"]
        );
        assert_eq!(
            owners(&index, "10.96.0.10", L4Proto::Udp, "10.0.2.11:5353"),
            ["ns/web/dns/udp"]
        );
        // The protocol is part of the backend.
        assert!(owners(&index, "10.96.0.10", L4Proto::Udp, "10.0.2.11:8080").is_empty());
    }

    #[test]
    fn a_backend_serving_two_ports_of_one_address_counts_under_both() {
        // http (80) and alt (8000) both send to 8080: the key has no frontend port.
        assert_eq!(
            owners(&index(), "10.96.0.10", L4Proto::Tcp, "10.0.1.11:8080"),
            ["ns/web/http/tcp", "ns/web/alt/tcp"]
        );
    }

    #[test]
    fn an_external_ip_counter_belongs_to_its_service() {
        assert_eq!(
            owners(&index(), "198.51.100.20", L4Proto::Tcp, "10.0.2.11:8080"),
            ["ns/web/http/tcp", "ns/web/alt/tcp"]
        );
    }

    #[test]
    fn a_node_address_frontend_is_node_port_traffic() {
        let index = index();
        // `other` has the backend too, but no NodePort.
        assert_eq!(
            owners(&index, "192.168.0.2", L4Proto::Tcp, "10.0.1.11:8080"),
            ["ns/web/http/tcp", "ns/web/alt/tcp"]
        );
        assert_eq!(
            owners(&index, "192.168.0.2", L4Proto::Udp, "10.0.1.11:5353"),
            ["ns/web/dns/udp"]
        );
        // Outside the NodePort addresses (the primary IPs here): nobody's.
        assert!(owners(&index, "192.168.0.99", L4Proto::Tcp, "10.0.1.11:8080").is_empty());
    }

    #[test]
    fn a_service_address_that_does_not_send_there_is_not_a_node_port() {
        // `other`'s ClusterIP with a backend only `web` has: not `web`'s NodePort traffic.
        assert!(owners(&index(), "10.96.0.11", L4Proto::Tcp, "10.0.2.11:8080").is_empty());
    }

    #[test]
    fn unknown_backends_and_ports_belong_to_nobody() {
        let index = index();
        assert!(owners(&index, "10.96.0.10", L4Proto::Tcp, "10.0.9.9:8080").is_empty());
        assert!(owners(&index, "10.96.0.10", L4Proto::Tcp, "10.0.1.11:9090").is_empty());
        assert!(owners(&index, "192.168.0.2", L4Proto::Tcp, "10.0.9.9:8080").is_empty());
        assert!(BackendIndex::default().is_empty());
        assert!(!index.is_empty());
    }

    #[test]
    fn ipv6_counters_are_attributed_like_ipv4() {
        let index = index();
        assert_eq!(
            owners(&index, "fd00:96::10", L4Proto::Tcp, "[fd00:10::11]:8080"),
            ["ns/web6//tcp"]
        );
        // web6 has no NodePort.
        assert!(owners(&index, "fd00::2", L4Proto::Tcp, "[fd00:10::11]:8080").is_empty());
        // An IPv4 frontend never matches an IPv6 Service.
        assert!(owners(&index, "10.96.0.10", L4Proto::Tcp, "[fd00:10::11]:8080").is_empty());
    }
}
