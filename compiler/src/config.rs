//! Node context: which node we are, its addresses, and kube-proxy's knobs that change the
//! ruleset. Flag names and meanings follow kube-proxy (`--hostname-override`, `--node-ip`,
//! `--cluster-cidr`, `--nodeport-addresses`, `--masquerade-all`, `--service-proxy-name`).

use std::net::IpAddr;

use ipnet::IpNet;

/// Everything about the node that shapes the ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's name (`--hostname-override`): selects local endpoints, zone and node IPs.
    pub hostname: Option<String>,
    /// `--node-ip`; empty means the Node object's InternalIP addresses.
    pub node_ips: Vec<IpAddr>,
    /// `--cluster-cidr`: pod CIDRs; traffic from outside them is "not from a local pod"
    /// (kube-proxy's ClusterCIDR local detector; the first CIDR of each family is used).
    pub cluster_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`; empty means `[Primary]`.
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// `--masquerade-all`: masquerade every connection to a ClusterIP.
    pub masquerade_all: bool,
    /// Packet mark bit used to request masquerade (kube-proxy default 14, mark 0x4000).
    pub masquerade_bit: u8,
    /// `--service-proxy-name`: only Services labelled `service.kubernetes.io/service-proxy-name`
    /// with this value are ours; `None` means only Services without that label.
    pub service_proxy_name: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hostname: None,
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            nodeport_addresses: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            service_proxy_name: None,
        }
    }
}

impl Config {
    /// The masquerade mark (`1 << masquerade_bit`).
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}

/// One entry of `--nodeport-addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    /// `primary`: the node's primary IPs.
    Primary,
    /// A CIDR: local addresses inside it.
    Cidr(IpNet),
}
