//! Synthetic clusters for benchmarks and scale tests: `N` Services with exactly `M` ready
//! endpoints each, in a fixed, realistic mix drawn from a seeded generator (no clock, no
//! randomness from the environment: the same `(n, m, seed)` always gives the same cluster).
//!
//! The mix, per Service: 70 % ClusterIP, 20 % NodePort, 10 % LoadBalancer (with an ingress IP;
//! a third of them with `loadBalancerSourceRanges`); a third of the NodePort and LoadBalancer
//! Services have `externalTrafficPolicy: Local`; 1 % have ClientIP session affinity. Ports: 80 %
//! one TCP port, 10 % one UDP port, 10 % DNS-like (53/UDP and 53/TCP). Endpoints are spread
//! uniformly over [`NODES`] nodes, of which this node (`node-0`) is one, so about one endpoint
//! in a hundred is local and most eTP=Local Services have no local endpoint at all, as on a
//! real node of a big cluster.
//!
//! Addresses never collide: Service `i` has ClusterIP `172.16.0.0 + i + 1` (ServiceCIDR
//! 172.16.0.0/12), LoadBalancer ingress IPs count up from 100.64.0.1, and endpoint `e` of the
//! whole cluster has pod IP `10.0.0.0 + e + 1` (cluster CIDR 10.0.0.0/8). NodePorts are
//! allocated in order from 30000, which needs a widened `--service-node-port-range`
//! (30000-65535) beyond about 2,700 node ports, as any cluster of that size would.
//!
//! [`Cluster::manifests_of`] gives one Service's manifests again, so a benchmark can change one
//! Service (add an endpoint, say) and load only that object instead of the whole cluster.

use std::net::Ipv4Addr;

use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::model::{load, Snapshot, Source};
use kube_nft_compiler::{compile, Config};
use serde_json::{json, Value};

/// Number of nodes endpoints are spread over; `node-0` is the node the ruleset is for.
pub const NODES: u32 = 100;

/// The seed the benchmark uses.
pub const SEED: u64 = 0x6b75_6265_2d6e_6674;

/// First NodePort handed out.
const FIRST_NODE_PORT: u32 = 30000;

/// A Service's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One Service port: protocol (`TCP`, `UDP`), port, target port and node port (0 = none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub protocol: &'static str,
    pub port: u16,
    pub target_port: u16,
    pub node_port: u16,
}

/// One endpoint: pod IP and node index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub node: u32,
}

/// One Service with one EndpointSlice, named `ns<i % 100>/svc<i>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: Kind,
    pub cluster_ip: Ipv4Addr,
    /// LoadBalancer ingress IP (LoadBalancer Services only).
    pub lb_ip: Option<Ipv4Addr>,
    pub ports: Vec<Port>,
    pub etp_local: bool,
    pub affinity: bool,
    pub source_ranges: Vec<String>,
    pub endpoints: Vec<Endpoint>,
}

/// A generated cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub services: Vec<Service>,
    /// Endpoints handed out so far (the next pod IP is `10.0.0.0 + next_endpoint + 1`).
    next_endpoint: u32,
    next_node_port: u32,
    next_lb_ip: u32,
    rng: SplitMix64,
}

/// How many Services of each feature a cluster has (a Service can count in several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    pub services: usize,
    pub ports: usize,
    pub endpoints: usize,
    pub cluster_ip: usize,
    pub node_port: usize,
    pub load_balancer: usize,
    pub source_ranges: usize,
    pub etp_local: usize,
    pub affinity: usize,
    /// Services with at least one UDP port.
    pub udp: usize,
    /// Endpoints on this node.
    pub local_endpoints: usize,
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, seedable and good enough to pick a mix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// `n` Services with `m` endpoints each, in the mix described in the module doc.
pub fn generate(n: usize, m: usize, seed: u64) -> Cluster {
    let mut cluster = Cluster {
        services: Vec::with_capacity(n),
        next_endpoint: 0,
        next_node_port: FIRST_NODE_PORT,
        next_lb_ip: 0,
        rng: SplitMix64(seed),
    };
    for _ in 0..n {
        cluster.push_service(m);
    }
    cluster
}

impl Cluster {
    /// Appends one more Service with `m` endpoints, drawn like the others; returns its index.
    pub fn push_service(&mut self, m: usize) -> usize {
        let i = self.services.len();
        let kind = match self.rng.below(100) {
            0..70 => Kind::ClusterIp,
            70..90 => Kind::NodePort,
            _ => Kind::LoadBalancer,
        };
        let external = kind != Kind::ClusterIp;
        let ports = match self.rng.below(10) {
            0..8 => vec![("TCP", [80, 443, 8080, 9090][self.rng.below(4) as usize])],
            8 => vec![("UDP", 514)],
            _ => vec![("UDP", 53), ("TCP", 53)],
        };
        let ports = ports
            .into_iter()
            .map(|(protocol, port)| Port {
                protocol,
                port,
                target_port: if port == 53 { 5353 } else { 8000 + port % 1000 },
                node_port: if external { self.node_port() } else { 0 },
            })
            .collect();
        let etp_local = external && self.rng.below(3) == 0;
        // Rare in practice, and costly: one named set per endpoint (kube-proxy's layout), and
        // the kernel finds named sets by walking a list, so the share drives a quadratic term
        // of the cold start (see BENCHMARKS.md).
        let affinity = self.rng.below(100) == 0;
        let lb_ip = (kind == Kind::LoadBalancer).then(|| {
            self.next_lb_ip += 1;
            Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + self.next_lb_ip)
        });
        let source_ranges = if kind == Kind::LoadBalancer && self.rng.below(3) == 0 {
            vec![
                format!("192.0.2.{}/32", self.rng.below(250) + 1),
                "198.51.100.0/24".to_owned(),
            ]
        } else {
            Vec::new()
        };
        let endpoints = (0..m).map(|_| self.new_endpoint()).collect();
        self.services.push(Service {
            namespace: format!("ns{}", i % 100),
            name: format!("svc{i}"),
            kind,
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i as u32 + 1),
            lb_ip,
            ports,
            etp_local,
            affinity,
            source_ranges,
            endpoints,
        });
        i
    }

    /// A new endpoint with a fresh pod IP on a random node.
    pub fn new_endpoint(&mut self) -> Endpoint {
        self.next_endpoint += 1;
        Endpoint {
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + self.next_endpoint),
            node: self.rng.below(NODES),
        }
    }

    fn node_port(&mut self) -> u16 {
        let port = self.next_node_port;
        self.next_node_port += 1;
        u16::try_from(port).expect("more NodePorts than 30000-65535 holds")
    }

    /// Counts of each feature.
    pub fn mix(&self) -> Mix {
        let mut mix = Mix {
            services: self.services.len(),
            ..Mix::default()
        };
        for s in &self.services {
            mix.ports += s.ports.len();
            mix.endpoints += s.endpoints.len();
            match s.kind {
                Kind::ClusterIp => mix.cluster_ip += 1,
                Kind::NodePort => mix.node_port += 1,
                Kind::LoadBalancer => mix.load_balancer += 1,
            }
            mix.source_ranges += usize::from(!s.source_ranges.is_empty());
            mix.etp_local += usize::from(s.etp_local);
            mix.affinity += usize::from(s.affinity);
            mix.udp += usize::from(s.ports.iter().any(|p| p.protocol == "UDP"));
            mix.local_endpoints += s.endpoints.iter().filter(|e| e.node == 0).count();
        }
        mix
    }

    /// The manifests: the nodes first, then each Service followed by its EndpointSlice.
    pub fn manifests(&self) -> Vec<Value> {
        let mut docs: Vec<Value> = (0..NODES).map(node).collect();
        for i in 0..self.services.len() {
            docs.extend(self.manifests_of(i));
        }
        docs
    }

    /// Service `i` and its EndpointSlice.
    pub fn manifests_of(&self, i: usize) -> [Value; 2] {
        let s = &self.services[i];
        let ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let mut port = json!({"name": format!("p{j}"), "protocol": p.protocol,
                    "port": p.port, "targetPort": p.target_port});
                if p.node_port != 0 {
                    port["nodePort"] = json!(p.node_port);
                }
                port
            })
            .collect();
        let mut spec = json!({
            "type": match s.kind {
                Kind::ClusterIp => "ClusterIP",
                Kind::NodePort => "NodePort",
                Kind::LoadBalancer => "LoadBalancer",
            },
            "clusterIP": s.cluster_ip.to_string(),
            "ipFamilies": ["IPv4"],
            "ports": ports,
            "selector": {"app": s.name},
        });
        if s.kind != Kind::ClusterIp {
            spec["externalTrafficPolicy"] = json!(if s.etp_local { "Local" } else { "Cluster" });
        }
        if s.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        if !s.source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = json!(s.source_ranges);
        }
        let mut service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": s.namespace, "name": s.name},
            "spec": spec,
        });
        if let Some(ip) = s.lb_ip {
            service["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}});
        }
        let endpoints: Vec<Value> = s
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.ip.to_string()],
                    "nodeName": format!("node-{}", e.node),
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                })
            })
            .collect();
        let slice_ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, p)| json!({"name": format!("p{j}"), "protocol": p.protocol, "port": p.target_port}))
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": s.namespace, "name": format!("{}-abcde", s.name),
                "labels": {"kubernetes.io/service-name": s.name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": slice_ports,
        });
        [service, slice]
    }

    /// The whole cluster as one JSON `List` document, what `kube-nft compile -f` reads.
    pub fn to_json(&self) -> String {
        list_json(self.manifests())
    }

    /// The snapshot of the cluster; panics if it does not load without diagnostics.
    pub fn snapshot(&self) -> Snapshot {
        snapshot_of(self.manifests())
    }

    /// The compiled ruleset, with [`config`].
    pub fn ruleset(&self) -> Ruleset {
        compile(&self.snapshot(), &config()).ruleset
    }
}

/// A snapshot of just these manifests (for instance one Service from
/// [`Cluster::manifests_of`], to splice into a bigger snapshot; `cluster::snapshot` uses it
/// too); panics if they do not load without diagnostics.
pub fn snapshot_of(docs: Vec<Value>) -> Snapshot {
    let loaded = load(&[Source {
        origin: "synthetic".into(),
        text: list_json(docs),
    }])
    .expect("synthetic manifests load");
    assert!(
        loaded.diagnostics.is_empty(),
        "synthetic manifests are valid: {:?}",
        loaded.diagnostics
    );
    loaded.snapshot
}

fn list_json(items: Vec<Value>) -> String {
    serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .expect("serialize JSON")
}

/// Node `k`, InternalIP `192.168.<k / 250>.<k % 250 + 1>`.
fn node(k: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{k}"),
            "labels": {"topology.kubernetes.io/zone": format!("zone-{}", k % 3)}},
        "status": {"addresses": [{"type": "InternalIP",
            "address": format!("192.168.{}.{}", k / 250, k % 250 + 1)}]}
    })
}

/// The node config synthetic clusters are compiled with: `node-0`, cluster CIDR 10.0.0.0/8.
pub fn config() -> Config {
    Config {
        hostname: Some("node-0".into()),
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..Config::default()
    }
}

/// The `kube-nft` flags equivalent to [`config`].
pub const NODE_FLAGS: [&str; 4] = [
    "--hostname-override",
    "node-0",
    "--cluster-cidr",
    "10.0.0.0/8",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_realistic_deterministic_and_compiles_cleanly() {
        let cluster = generate(600, 10, SEED);
        assert_eq!(cluster, generate(600, 10, SEED));
        assert_ne!(cluster, generate(600, 10, SEED + 1));
        let mix = cluster.mix();
        assert_eq!((mix.services, mix.endpoints), (600, 6000));
        let share = |count: usize| count * 100 / mix.services;
        assert!((60..80).contains(&share(mix.cluster_ip)), "{mix:?}");
        assert!((12..28).contains(&share(mix.node_port)), "{mix:?}");
        assert!((5..15).contains(&share(mix.load_balancer)), "{mix:?}");
        assert!(mix.affinity > 0 && share(mix.affinity) < 3, "{mix:?}");
        assert!((12..28).contains(&share(mix.udp)), "{mix:?}");
        assert!(mix.etp_local > 0 && mix.source_ranges > 0, "{mix:?}");
        assert!(mix.local_endpoints > 0, "{mix:?}");

        let compiled = compile(&cluster.snapshot(), &config());
        assert!(
            compiled.diagnostics.is_empty(),
            "{:?}",
            compiled.diagnostics
        );
        let table = compiled.ruleset.tables.first().expect("ip table");
        let dispatched = table.sets["service-ips"].elements.iter().filter(|e| {
            matches!(
                &e.data,
                Some(kube_nft_compiler::ir::ElemData::Verdict(
                    kube_nft_compiler::ir::Verdict::Goto(chain)
                )) if chain != "reject-chain"
            )
        });
        assert!(dispatched.count() >= 600, "every Service has endpoints");
    }

    #[test]
    fn one_service_reloads_on_its_own() {
        let cluster = generate(3, 2, SEED);
        let mut one = snapshot_of(cluster.manifests_of(1).to_vec());
        let whole = cluster.snapshot();
        assert_eq!(one.services.remove(0), whole.services[1]);
        assert_eq!(one.endpoint_slices.remove(0), whole.endpoint_slices[1]);
    }
}
