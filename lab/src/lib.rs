//! A real-traffic lab for kube-nft: network namespaces joined by veth, echo servers on every
//! endpoint address, and clients that report which endpoint answered and which source address
//! it saw. [`topology`] derives the hosts from cluster objects (pure); [`Lab::build`] creates
//! them on this machine and [`Lab`]'s `Drop` removes every namespace again, also when a test
//! panics. Nothing is linked to the host's namespace: the lab's LAN is a bridge inside a
//! namespace of its own.
//!
//! The wiring, per family:
//!
//! ```text
//!  client, stranger ─┐                        ┌─ pod ── (veth) ── this node
//!  other nodes ──────┼── LAN bridge (own ns) ─┤
//!  this node ────────┘                        └─ pod ── (veth) ── other node
//! ```
//!
//! Every address is a /32 (/128) with host routes, so any address plan a cluster file uses
//! works: LAN hosts reach each other directly, clients and other nodes route everything else
//! through this node, this node routes other nodes' pods through them, and pods use their
//! node as default gateway (169.254.1.1 and fe80::1 on the node's side of each pod veth, as
//! Calico does). With [`Topology::pod_bridge`], this node's pod veths are ports of that bridge
//! instead, and the gateway addresses and pod routes are on the bridge (the `bridge` CNI
//! plugin's shape): routed pod traffic then arrives on the bridge, as `iifname` sees it.

pub mod demo;
mod echo;
pub mod flow;
mod ns;
pub mod probe;
pub mod topology;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;

pub use ns::unavailable;
pub use probe::{Outcome, Probe, Reply};
pub use topology::{ClientSpec, Host, Proto, Role, Topology};

/// Why the lab could not be built or used.
#[derive(Debug, Error)]
pub enum Error {
    /// An `ip` command failed.
    #[error("lab setup: {0}")]
    Command(String),
    /// Entering a namespace or writing its sysctls failed.
    #[error("lab namespace: {0}")]
    Netns(String),
    /// An echo server could not bind.
    #[error("lab echo server: {0}")]
    Server(String),
    /// A client's connection failed where it had to succeed.
    #[error("lab probe: {0}")]
    Probe(String),
    /// No such host in the lab.
    #[error("no host {0:?} in the lab")]
    NoHost(String),
}

/// A built lab. Dropping it stops the servers and deletes every namespace.
pub struct Lab {
    topology: Topology,
    /// Namespace of each host, index-aligned with `topology.hosts`.
    netns: Vec<String>,
    /// The LAN bridge's namespace.
    switch: String,
    servers: Vec<echo::Servers>,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Creates the namespaces, links, addresses, routes and servers of `topology`.
    pub fn build(topology: Topology) -> Result<Lab, Error> {
        if let Some(why) = unavailable() {
            return Err(Error::Netns(why));
        }
        ns::sweep_stale();
        let prefix = format!(
            "{}{}-{}",
            ns::PREFIX,
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            netns: Vec::new(),
            switch: format!("{prefix}-lan"),
            servers: Vec::new(),
            topology,
        };
        // From here on, Drop cleans up whatever was created, also on error.
        ns::create(&lab.switch)?;
        for i in 0..lab.topology.hosts.len() {
            let name = format!("{prefix}-h{i}");
            ns::create(&name)?;
            lab.netns.push(name);
        }
        lab.wire()?;
        for (i, host) in lab.topology.hosts.iter().enumerate() {
            let listeners: Vec<(IpAddr, Proto, u16)> = host
                .addrs
                .iter()
                .flat_map(|&a| host.listen.iter().map(move |&(p, port)| (a, p, port)))
                .collect();
            if !listeners.is_empty() {
                let servers = echo::Servers::start(&lab.netns[i], &host.name, &listeners)?;
                lab.servers.push(servers);
            }
        }
        Ok(lab)
    }

    /// Sysctls, links, addresses and routes.
    fn wire(&self) -> Result<(), Error> {
        let hosts = &self.topology.hosts;
        // DAD would hold IPv6 addresses "tentative" for a second or more; rp_filter is off so
        // the host routes decide, whatever the host machine's default is.
        let common = [
            ("net/ipv6/conf/all/accept_dad", "0"),
            ("net/ipv6/conf/default/accept_dad", "0"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
        ];
        // Nodes route. A node that forwards a packet back out of the LAN port it came in on
        // (a client's packet to a Service address that is not DNATed, such as a ClusterIP
        // without endpoints) would also send an ICMP redirect, and the redirect uses up the
        // per-peer ICMP rate-limit token the `reject` needs for its port-unreachable: the
        // client would see a timeout where kube-nft rejects. Real nodes rarely route out of
        // their ingress port; the lab's do, so redirects are off.
        let router = [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/conf/all/send_redirects", "0"),
            ("net/ipv4/conf/default/send_redirects", "0"),
            // The per-peer ICMP rate limit (one error a second after a burst of six) would
            // turn a test's seventh rejected probe into a timeout; the lab checks rules, not
            // the kernel's flood protection.
            ("net/ipv4/icmp_ratelimit", "0"),
            ("net/ipv6/icmp/ratelimit", "0"),
        ];
        for (i, host) in hosts.iter().enumerate() {
            let mut values = common.to_vec();
            if matches!(host.role, Role::ThisNode | Role::OtherNode) {
                values.extend(router);
            }
            ns::sysctls(&self.netns[i], &values)?;
        }
        ns::ip_batch(
            &self.switch,
            "link add br0 type bridge\nlink set br0 up\nlink set lo up\n",
        )?;

        let this = &hosts[0];
        let mut batches: Vec<String> = vec![String::from("link set lo up\n"); hosts.len()];
        let bridge = self.topology.pod_bridge.as_deref();
        if let Some(bridge) = bridge {
            let _ = writeln!(batches[0], "link add {bridge} type bridge");
            let _ = writeln!(
                batches[0],
                "addr add 169.254.1.1/32 dev {bridge} scope link"
            );
            let _ = writeln!(batches[0], "addr add fe80::1/64 dev {bridge} nodad");
            let _ = writeln!(batches[0], "link set {bridge} up");
        }
        let mut switch = String::new();
        let mut pods_of: Vec<usize> = vec![0; hosts.len()];
        for (i, host) in hosts.iter().enumerate() {
            // Its own end of its link is `eth0`, whatever it is; the routes depend on the role.
            let mut b = String::new();
            for a in &host.addrs {
                let _ = writeln!(b, "addr add {a}/{} dev eth0{}", full(*a), nodad(*a));
            }
            let _ = writeln!(b, "link set eth0 up");
            match host.role {
                Role::Pod { node: Some(node) } => {
                    // A veth to its node: `eth0` here, `v<n>` on the node.
                    let port = format!("v{}", pods_of[node]);
                    pods_of[node] += 1;
                    ns::ip_batch(
                        &self.netns[node],
                        &format!(
                            "link add {port} type veth peer name eth0 netns {}\n",
                            self.netns[i]
                        ),
                    )?;
                    let nb = &mut batches[node];
                    // This node's pods on the bridge: the veth is a port, the bridge routes.
                    // Hairpin mode, as the bridge CNI plugin sets it: with br_netfilter, a DNAT
                    // back to a pod on the same bridge is bridged out of the port the packet
                    // came in on (a pod reaching itself through its Service).
                    let dev = match bridge.filter(|_| node == 0) {
                        Some(bridge) => {
                            let _ = writeln!(nb, "link set {port} master {bridge} up");
                            let _ = writeln!(nb, "link set {port} type bridge_slave hairpin on");
                            bridge.to_owned()
                        }
                        None => {
                            let _ = writeln!(nb, "addr add 169.254.1.1/32 dev {port} scope link");
                            let _ = writeln!(nb, "addr add fe80::1/64 dev {port} nodad");
                            let _ = writeln!(nb, "link set {port} up");
                            port
                        }
                    };
                    for a in &host.addrs {
                        let _ = writeln!(nb, "route add {a} dev {dev}");
                    }
                    let _ = writeln!(b, "route add 169.254.1.1 dev eth0 scope link");
                    let _ = writeln!(b, "route add 0.0.0.0/0 via 169.254.1.1 dev eth0");
                    let _ = writeln!(b, "route add ::/0 via fe80::1 dev eth0");
                }
                _ => {
                    // On the LAN: `eth0` here, `p<i>` on the bridge.
                    ns::ip_batch(
                        &self.netns[i],
                        &format!(
                            "link add eth0 type veth peer name p{i} netns {}\n",
                            self.switch
                        ),
                    )?;
                    let _ = writeln!(switch, "link set p{i} master br0 up");
                    // Direct host routes to every other LAN host.
                    for other in hosts.iter().filter(|o| o.on_lan() && o.name != host.name) {
                        for a in other.addrs.iter().filter(|a| host.addr_like(**a).is_some()) {
                            let _ = writeln!(b, "route add {a} dev eth0");
                        }
                    }
                    if host.role == Role::ThisNode {
                        // Other nodes' pods through their node; anything else out of the LAN
                        // port (the address still needs a route before nat-output can DNAT it).
                        for pod in hosts {
                            let Role::Pod { node: Some(n) } = pod.role else {
                                continue;
                            };
                            if n == 0 {
                                continue;
                            }
                            for a in &pod.addrs {
                                if let Some(via) = hosts[n].addr_like(*a) {
                                    let _ = writeln!(b, "route add {a} via {via} dev eth0 onlink");
                                }
                            }
                        }
                        let _ = writeln!(b, "route add 0.0.0.0/0 dev eth0");
                        let _ = writeln!(b, "route add ::/0 dev eth0");
                    } else {
                        // Everything else through this node.
                        for a in &this.addrs {
                            if host.addr_like(*a).is_some() {
                                let _ =
                                    writeln!(b, "route add {} via {a} dev eth0 onlink", any(*a));
                            }
                        }
                    }
                }
            }
            batches[i].push_str(&b);
        }
        ns::ip_batch(&self.switch, &switch)?;
        for (i, batch) in batches.iter().enumerate() {
            ns::ip_batch(&self.netns[i], batch)?;
        }
        Ok(())
    }

    /// The hosts.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The network namespace (`/run/netns/NAME`) of host `name`.
    pub fn netns(&self, host: &str) -> Result<&str, Error> {
        let i = self
            .topology
            .hosts
            .iter()
            .position(|h| h.name == host)
            .ok_or_else(|| Error::NoHost(host.to_owned()))?;
        Ok(&self.netns[i])
    }

    /// The namespace of the node kube-nft programs.
    pub fn this_node_netns(&self) -> &str {
        &self.netns[0]
    }

    /// Runs `f` on a thread inside host `name`'s namespace: sockets it opens, netlink included,
    /// live there.
    pub fn run_in<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        ns::run_in(self.netns(host)?, f)
    }

    /// `ip netns exec NETNS program`: a command to run inside host `name`'s namespace.
    pub fn command(
        &self,
        host: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, Error> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.netns(host)?])
            .arg(program);
        Ok(command)
    }

    /// Times `n` new TCP connections from host `from` to `dst` (see the data-plane benchmark):
    /// each duration is one connection setup, SYN to SYN-ACK.
    pub fn connect_times(
        &self,
        from: &str,
        dst: std::net::SocketAddr,
        n: usize,
    ) -> Result<Vec<std::time::Duration>, Error> {
        self.run_in(from, || probe::connect_times(dst, n))?
            .map_err(|e| Error::Probe(format!("connect to {dst} from {from}: {e}")))
    }

    /// Sends one probe from host `from`.
    pub fn probe(&self, from: &str, probe: &Probe) -> Outcome {
        match self.run_in(from, || probe::run(probe)) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Servers first: their sockets keep the namespaces alive.
        self.servers.clear();
        for name in self.netns.iter().chain([&self.switch]) {
            ns::delete(name);
        }
    }
}

fn full(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// The default route's prefix of `a`'s family.
fn any(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    }
}

fn nodad(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        ""
    } else {
        " nodad"
    }
}
