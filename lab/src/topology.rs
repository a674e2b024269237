//! The lab's shape, derived from cluster objects without touching the machine: which hosts
//! exist (this node, the other nodes, one host per endpoint pod, the clients), which addresses
//! each holds and which ports its echo servers listen on. [`Topology::from_snapshot`] places
//! every endpoint where its `nodeName` says: pods of this node hang off this node, pods of
//! another node off that node (which routes them), endpoints without a node (an API server on
//! the LAN, say) sit on the LAN themselves, and an endpoint whose address is a node's IP is
//! served by that node (host-network pods). Building it is [`crate::Lab::build`]'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Node;
use kube_nft_compiler::model::Snapshot;

/// A transport protocol the lab's servers and clients speak. SCTP endpoints get no server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP: the server writes one line and closes.
    Tcp,
    /// UDP: the server answers each datagram with one line.
    Udp,
}

impl Proto {
    /// Kubernetes' spelling (`TCP`, `UDP`); anything else (SCTP) is `None`.
    pub fn from_kubernetes(protocol: Option<&str>) -> Option<Proto> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// What a host is in the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node kube-nft programs (`--hostname-override`).
    ThisNode,
    /// Another node: a router for its own pods, with no rules of ours.
    OtherNode,
    /// An endpoint's pod (or a client pod), behind the node at this index of
    /// [`Topology::hosts`]; `None` puts it on the LAN.
    Pod {
        /// Index of its node in [`Topology::hosts`].
        node: Option<usize>,
    },
    /// A machine on the LAN outside the cluster.
    Client,
}

/// One network namespace of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Name used in reports and by [`crate::Lab::host`]: the node name, the pod name
    /// (`targetRef`, else `endpoint-<address>`) or the client name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Its addresses (both families where it has them).
    pub addrs: Vec<IpAddr>,
    /// `(protocol, port)` pairs its echo servers listen on, on every address of the port's family.
    pub listen: BTreeSet<(Proto, u16)>,
}

impl Host {
    /// Its first address of the same family as `like`.
    pub fn addr_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == like.is_ipv4())
    }

    /// Whether it sits on the LAN (nodes, clients, endpoints without a node).
    pub fn on_lan(&self) -> bool {
        !matches!(self.role, Role::Pod { node: Some(_) })
    }
}

/// A client to add to the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    /// Its name.
    pub name: String,
    /// Its addresses; the first of each family is its default source.
    pub addrs: Vec<IpAddr>,
    /// `None`: a machine on the LAN; `Some(node)`: a pod (not an endpoint) on that node.
    pub pod_on: Option<String>,
}

/// The hosts of a lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Every host; nodes come first, this node at index 0.
    pub hosts: Vec<Host>,
    /// `Some(name)`: this node's pods hang off a bridge of that name (as with the `bridge` CNI
    /// plugin, for `--detect-local-mode BridgeInterface`) instead of one routed veth each.
    pub pod_bridge: Option<String>,
}

/// Addresses of the default LAN clients: `client` (ten addresses per family, for source-hash
/// checks) in 203.0.113.0/24 and 2001:db8:1::/64, and `stranger` in 192.0.2.0/24 and
/// 2001:db8:2::/64 (the examples allow 203.0.113.0/24 in `loadBalancerSourceRanges`).
pub fn default_lan_clients() -> Vec<ClientSpec> {
    let client = (10..20)
        .map(|h| IpAddr::V4(Ipv4Addr::new(203, 0, 113, h)))
        .chain((0x10..0x20).map(|h| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, h))))
        .collect();
    vec![
        ClientSpec {
            name: "client".into(),
            addrs: client,
            pod_on: None,
        },
        ClientSpec {
            name: "stranger".into(),
            addrs: vec![
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10)),
            ],
            pod_on: None,
        },
    ]
}

/// A client pod named `pod-client` on `node`, at host 250 of each of the node's pod CIDRs
/// (none when the Node object has none).
pub fn pod_client(snapshot: &Snapshot, node: &str) -> Option<ClientSpec> {
    let addrs: Vec<IpAddr> = pod_cidrs(snapshot, node)
        .iter()
        .filter_map(|c| host_250(c))
        .collect();
    (!addrs.is_empty()).then(|| ClientSpec {
        name: "pod-client".into(),
        addrs,
        pod_on: Some(node.to_owned()),
    })
}

/// Node `node`'s `spec.podCIDRs` (or the older single `spec.podCIDR`), as written.
pub fn pod_cidrs(snapshot: &Snapshot, node: &str) -> Vec<String> {
    let Some(spec) = snapshot
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
        .and_then(|n| n.spec.as_ref())
    else {
        return Vec::new();
    };
    match &spec.pod_cidrs {
        Some(cidrs) if !cidrs.is_empty() => cidrs.clone(),
        _ => spec.pod_cidr.iter().cloned().collect(),
    }
}

/// Host number 250 (0xfa) of a CIDR written `addr/len`.
fn host_250(cidr: &str) -> Option<IpAddr> {
    let (addr, _) = cidr.split_once('/')?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            let [x, y, z, _] = a.octets();
            Some(IpAddr::V4(Ipv4Addr::new(x, y, z, 250)))
        }
        IpAddr::V6(a) => {
            let mut s = a.segments();
            s[7] = 0xfa;
            Some(IpAddr::V6(Ipv6Addr::from(s)))
        }
    }
}

/// One endpoint address as the objects describe it.
struct Endpoint {
    pod: String,
    addr: IpAddr,
    node: Option<String>,
    ports: Vec<(Proto, u16)>,
}

impl Topology {
    /// The lab for `snapshot` as seen from `this_node`, plus `clients`.
    ///
    /// Nodes keep their InternalIPs; a node without an address of a family the lab needs gets
    /// one from 192.168.255.0/24 or fd00:ffff::/64 (LAN routing needs it; kube-nft's NodePort
    /// rules then match it through `fib daddr type local`).
    pub fn from_snapshot(snapshot: &Snapshot, this_node: &str, clients: &[ClientSpec]) -> Topology {
        let endpoints = endpoints(snapshot);
        let mut node_names: Vec<String> = vec![this_node.to_owned()];
        let mut others: BTreeSet<String> = snapshot
            .nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        others.extend(endpoints.iter().filter_map(|e| e.node.clone()));
        others.extend(clients.iter().filter_map(|c| c.pod_on.clone()));
        others.remove(this_node);
        node_names.extend(others);

        let mut hosts: Vec<Host> = node_names
            .iter()
            .enumerate()
            .map(|(i, name)| Host {
                name: name.clone(),
                role: if i == 0 {
                    Role::ThisNode
                } else {
                    Role::OtherNode
                },
                addrs: snapshot
                    .nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(name))
                    .map(internal_ips)
                    .unwrap_or_default(),
                listen: BTreeSet::new(),
            })
            .collect();
        let node_index = |name: &str| node_names.iter().position(|n| n == name);

        // Every family something in the lab uses: nodes need an address of each to route it.
        let mut families: BTreeSet<bool> = endpoints.iter().map(|e| e.addr.is_ipv4()).collect();
        families.extend(
            clients
                .iter()
                .flat_map(|c| c.addrs.iter().map(|a| a.is_ipv4())),
        );
        for (i, host) in hosts.iter_mut().enumerate() {
            for v4 in &families {
                if !host.addrs.iter().any(|a| a.is_ipv4() == *v4) {
                    let n = u8::try_from(i + 1).unwrap_or(u8::MAX);
                    host.addrs.push(if *v4 {
                        IpAddr::V4(Ipv4Addr::new(192, 168, 255, n))
                    } else {
                        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, n.into()))
                    });
                }
            }
        }

        let mut taken: BTreeSet<IpAddr> = hosts.iter().flat_map(|h| h.addrs.clone()).collect();
        let mut pods: BTreeMap<String, usize> = BTreeMap::new();
        for e in endpoints {
            // A host-network endpoint: the node itself serves it.
            if let Some(node) = hosts.iter_mut().find(|h| h.addrs.contains(&e.addr)) {
                node.listen.extend(e.ports);
                continue;
            }
            let index = match pods.get(&e.pod) {
                Some(&i) => i,
                None => {
                    hosts.push(Host {
                        name: e.pod.clone(),
                        role: Role::Pod {
                            node: e.node.as_deref().and_then(node_index),
                        },
                        addrs: Vec::new(),
                        listen: BTreeSet::new(),
                    });
                    pods.insert(e.pod.clone(), hosts.len() - 1);
                    hosts.len() - 1
                }
            };
            let pod = &mut hosts[index];
            if taken.insert(e.addr) {
                pod.addrs.push(e.addr);
            }
            if pod.addrs.contains(&e.addr) {
                pod.listen.extend(e.ports);
            }
        }
        for c in clients {
            hosts.push(Host {
                name: c.name.clone(),
                role: match &c.pod_on {
                    None => Role::Client,
                    Some(node) => Role::Pod {
                        node: node_index(node),
                    },
                },
                addrs: c
                    .addrs
                    .iter()
                    .copied()
                    .filter(|a| taken.insert(*a))
                    .collect(),
                listen: BTreeSet::new(),
            });
        }
        hosts.retain(|h| !h.addrs.is_empty());
        Topology {
            hosts,
            pod_bridge: None,
        }
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The host that holds `addr`.
    pub fn host_of(&self, addr: IpAddr) -> Option<&Host> {
        self.hosts.iter().find(|h| h.addrs.contains(&addr))
    }

    /// The name of the host that holds `addr`, or the address itself.
    pub fn name_of(&self, addr: IpAddr) -> String {
        self.host_of(addr)
            .map_or_else(|| addr.to_string(), |h| h.name.clone())
    }

    /// Whether `addr` belongs to a node (what a masqueraded source looks like).
    pub fn is_node_addr(&self, addr: IpAddr) -> bool {
        self.host_of(addr)
            .is_some_and(|h| matches!(h.role, Role::ThisNode | Role::OtherNode))
    }
}

/// A Node's InternalIP addresses.
fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Every endpoint address in EndpointSlices and legacy Endpoints, ready or not (a server
/// behind a non-ready endpoint makes a wrong choice visible instead of a timeout).
fn endpoints(snapshot: &Snapshot) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in &snapshot.endpoint_slices {
        let ports: Vec<(Proto, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| served(p.protocol.as_deref(), p.port))
            .collect();
        for ep in slice.endpoints.iter().flatten() {
            for addr in &ep.addresses {
                let Ok(addr) = addr.parse() else { continue };
                out.push(Endpoint {
                    pod: pod_name(ep.target_ref.as_ref().and_then(|r| r.name.as_deref()), addr),
                    addr,
                    node: ep.node_name.clone(),
                    ports: ports.clone(),
                });
            }
        }
    }
    for endpoints in &snapshot.endpoints {
        for subset in endpoints.subsets.iter().flatten() {
            let ports: Vec<(Proto, u16)> = subset
                .ports
                .iter()
                .flatten()
                .filter_map(|p| served(p.protocol.as_deref(), Some(p.port)))
                .collect();
            let addresses = subset.addresses.iter().flatten();
            for a in addresses.chain(subset.not_ready_addresses.iter().flatten()) {
                let Ok(addr) = a.ip.parse() else { continue };
                out.push(Endpoint {
                    pod: pod_name(a.target_ref.as_ref().and_then(|r| r.name.as_deref()), addr),
                    addr,
                    node: a.node_name.clone(),
                    ports: ports.clone(),
                });
            }
        }
    }
    out
}

/// A port the lab serves: its protocol (TCP when absent) and number, if the lab can serve it.
fn served(protocol: Option<&str>, port: Option<i32>) -> Option<(Proto, u16)> {
    Some((
        Proto::from_kubernetes(protocol)?,
        u16::try_from(port?).ok()?,
    ))
}

fn pod_name(target: Option<&str>, addr: IpAddr) -> String {
    target.map_or_else(|| format!("endpoint-{addr}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use kube_nft_compiler::model::{load, Source};

    use super::*;

    fn example() -> Snapshot {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/cluster.yaml"
        ))
        .expect("read example");
        load(&[Source {
            origin: "example".into(),
            text,
        }])
        .expect("example loads")
        .snapshot
    }

    #[test]
    fn example_places_every_endpoint_on_its_node() {
        let snapshot = example();
        let mut clients = default_lan_clients();
        clients.extend(pod_client(&snapshot, "node-a"));
        let topo = Topology::from_snapshot(&snapshot, "node-a", &clients);
        assert_eq!(topo.hosts[0].name, "node-a");
        assert_eq!(topo.hosts[0].role, Role::ThisNode);
        assert_eq!(topo.hosts[1].name, "node-b");
        let web_local = topo.host("web-7f9d8c6b5-5gq8x").expect("local web pod");
        assert_eq!(web_local.role, Role::Pod { node: Some(0) });
        assert!(web_local.listen.contains(&(Proto::Tcp, 8080)));
        let web_remote = topo.host("web-7f9d8c6b5-j4nwz").expect("remote web pod");
        assert_eq!(web_remote.role, Role::Pod { node: Some(1) });
        // The API server endpoint has no node: it is a machine on the LAN.
        let api = topo
            .host_of("192.168.0.10".parse().unwrap())
            .expect("apiserver");
        assert_eq!(api.role, Role::Pod { node: None });
        assert!(api.on_lan());
        let pod_client = topo.host("pod-client").expect("pod client");
        assert_eq!(
            pod_client.addrs,
            vec!["10.0.1.250".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(pod_client.role, Role::Pod { node: Some(0) });
        // IPv6 clients exist, so every node got an IPv6 LAN address.
        assert!(topo.hosts[0].addrs.iter().any(IpAddr::is_ipv6));
        assert!(topo.is_node_addr("192.168.0.3".parse().unwrap()));
        assert!(!topo.is_node_addr("10.0.1.250".parse().unwrap()));
    }

    #[test]
    fn kube_dns_pods_serve_tcp_and_udp() {
        let topo = Topology::from_snapshot(&example(), "node-a", &[]);
        let dns = topo
            .hosts
            .iter()
            .find(|h| h.name.starts_with("coredns"))
            .expect("a coredns pod");
        assert!(dns.listen.contains(&(Proto::Udp, 53)));
        assert!(dns.listen.contains(&(Proto::Tcp, 53)));
    }
}
