//! The command line: argument structs only (clap derive), no behaviour. Node flags keep
//! kube-proxy's names so DaemonSet arguments carry over; their help says which kube-proxy flag
//! or `KubeProxyConfiguration` field each one mirrors. Values are validated here by clap, so a
//! bad IP or CIDR is a usage error (exit 2) that names the flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use kube_nft_compiler::config::{self, LocalMode, NodePortAddress};
use kube_nft_compiler::graph::Scheduler;

/// The exit codes, shown at the end of every `--help`.
macro_rules! exit_codes {
    () => {
        "\
Exit status:
  0  success
  1  the input or --config file cannot be read or parsed
  1  the kernel refused the change (nothing was changed)
  2  usage error (unknown flag, invalid flag value)"
    };
}

/// A Kubernetes Service proxy with a pure nftables data plane.
#[derive(Debug, Parser)]
#[command(
    name = "kube-nft",
    version,
    about,
    long_about = "A Kubernetes Service proxy (kube-proxy replacement) with a pure nftables data \
                  plane. It compiles Services, EndpointSlices and the local Node into one \
                  nftables table.",
    after_help = exit_codes!()
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Compile cluster objects into the nftables ruleset for one node.
    #[command(after_long_help = concat!("\
Examples:
  # Print the ruleset node-a would get, from a `kubectl get -o yaml` dump:
  kubectl get svc,endpointslices,nodes -A -o yaml > cluster.yaml
  kube-nft compile --dry-run -f cluster.yaml --hostname-override node-a --cluster-cidr 10.0.0.0/8

  # Every *.yaml, *.yml and *.json file below a directory, in path order:
  kube-nft compile --dry-run -f manifests/ --config kube-proxy-config.yaml

Diagnostics about individual objects go to stderr as `warning:` lines (and into the script as \
`# warning:` comments); the object is skipped or degraded and the rest is compiled.

", exit_codes!()))]
    Compile(CompileArgs),
    /// Compile, then follow one packet through the ruleset and print what happens to it; or,
    /// with `--live`, follow it through the ruleset this node holds now.
    #[command(after_long_help = concat!("\
Examples:
  # A client outside the cluster connects to a ClusterIP through node-a:
  kube-nft trace -f examples/cluster.yaml --hostname-override node-a \\
      --cluster-cidr 10.0.0.0/8 'tcp 192.0.2.2:40000 -> 172.30.0.10:53'

  # The same from a pod on node-a:
  kube-nft trace -f examples/cluster.yaml --hostname-override node-a \\
      --cluster-cidr 10.0.0.0/8 --from pod 'udp 10.0.1.7:5353 -> 172.30.0.10:53'

  # Where does this packet go on this node right now (needs root; reads the kernel):
  sudo kube-nft trace --live 'tcp 192.0.2.2:40000 -> 172.30.0.10:53'

", exit_codes!()))]
    Trace(TraceArgs),
    /// Compare the compiled ruleset with what the kernel holds in kube-nft's tables.
    ///
    /// Prints the operations `compile -f` would apply; exit 0 when equal, 1 when different,
    /// 2 on error.
    Diff(DiffArgs),
    /// Delete kube-nft's tables (`ip kube-nft`, `ip6 kube-nft`) and nothing else.
    ///
    /// Absent tables are not an error, so it can run any number of times.
    #[command(after_long_help = exit_codes!())]
    Cleanup,
    /// Show what this node does with each Service now: every Service port and way in, read
    /// from kube-nft's tables in the kernel, with the backends new connections go to, each
    /// one's share, and its live connections from conntrack. Needs root.
    ///
    /// SHARE is the share of new connections from a client outside the cluster (of the hash
    /// space, for source hashing), exactly as `trace` computes it. CONNS counts conntrack
    /// entries DNATed to the backend through that address; UNREPLIED those that never saw a
    /// reply. Rows are flagged when a Service has no backend, or a backend has connections
    /// and none of them was ever answered.
    #[command(after_long_help = "\
Examples:
  sudo kube-nft show
  sudo kube-nft show -n kube-system kube-dns
  sudo kube-nft show --address 10.96.0.10:53 -o json
  # Is this node programmed as the cluster dump says it should be?
  sudo kube-nft show -f cluster.yaml --hostname-override node-a

Exit status:
  0  success
  1  kube-nft's tables are not in this network namespace, or the kernel could not be read
  2  usage error")]
    Show(ShowArgs),
    /// Build a throwaway lab of network namespaces from a cluster file, program it, send
    /// traffic to every Service and print what each client saw. Needs root and iproute2.
    ///
    /// Every pod, node and client of the cluster becomes a network namespace (joined by veth
    /// and a bridge in a namespace of its own); endpoints run small TCP/UDP servers that answer
    /// with their name and the source address they saw. This node is programmed exactly as
    /// `kube-nft compile -f` does it, then each ClusterIP, NodePort, externalIP and
    /// LoadBalancer address is probed from a pod, from a client outside the cluster and from a
    /// client outside `loadBalancerSourceRanges`. Everything is torn down afterwards; nothing
    /// outside the lab's own namespaces is touched.
    #[command(after_long_help = concat!("\
Examples:
  # The bundled example cluster (examples/cluster.yaml), as node-a:
  sudo kube-nft demo

  # Your own dump, as node worker-1:
  sudo kube-nft demo -f cluster.yaml --hostname-override worker-1 --cluster-cidr 10.244.0.0/16

", exit_codes!()))]
    Demo(DemoArgs),
    /// Run on a node in place of kube-proxy: watch the API server (or a folder of manifests)
    /// and keep the kernel's kube-nft tables in sync, one transaction per change.
    ///
    /// Nothing is programmed before Services, EndpointSlices and this Node have each been
    /// listed once. Bursts of changes are coalesced (at most one sync per --min-sync-period);
    /// every --sync-period the kernel is read back and any difference repaired, and a change to
    /// our tables by someone else (`nft flush ruleset`, a firewall reload) is repaired at once.
    /// On SIGTERM or SIGINT the daemon exits and the rules stay, so traffic keeps flowing; a
    /// restarted daemon adopts them and sends only the difference. `kube-nft cleanup` removes
    /// them. Only one daemon may run per network namespace.
    #[command(after_long_help = concat!("\
Examples:
  # On a node, with kube-proxy's kubeconfig and config file:
  kube-nft run --kubeconfig /var/lib/kube-proxy/kubeconfig.conf \\
      --config /var/lib/kube-proxy/config.conf --hostname-override \"$NODE_NAME\"

  # Without a cluster, from a folder of manifests (re-read when a file changes):
  kube-nft run --manifests ./cluster/ --hostname-override node-a --cluster-cidr 10.0.0.0/8

Endpoints: /healthz and /livez on --healthz-bind-address (kube-proxy's JSON bodies: 503 until \
the first sync, and when a change has waited longer than 2 x --sync-period; /healthz also \
while the Node is being deleted or drained by the cluster autoscaler); /metrics, /proxyMode \
and /configz on --metrics-bind-address, with kube-proxy's metric names.

", exit_codes!()))]
    Run(RunArgs),
}

/// `kube-nft run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Path to a kubeconfig file for the API server (kube-proxy `--kubeconfig` /
    /// `clientConnection.kubeconfig`). Plain `http://` servers work too.
    ///
    /// Without --kubeconfig, --master and --manifests: the in-cluster service account. In a
    /// DaemonSet prefer a kubeconfig that names the API server's real address: the
    /// `kubernetes` Service ClusterIP only works once kube-nft has programmed it.
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// The API server's address; overrides the kubeconfig's server (kube-proxy `--master`).
    #[arg(long, value_name = "URL", conflicts_with = "manifests")]
    pub(crate) master: Option<String>,
    /// Read objects from a folder instead of the API server: every *.yaml, *.yml and *.json
    /// file below it (as `compile -f DIR`), re-read when one changes (inotify, plus a full
    /// rescan every 30 s). A file that fails to parse keeps its previous objects.
    #[arg(long, value_name = "DIR")]
    pub(crate) manifests: Option<PathBuf>,
    /// The minimum interval between syncs: a burst of changes is applied together, an
    /// isolated change at once (kube-proxy `--min-sync-period` / `minSyncPeriod`). Go
    /// duration syntax. [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) min_sync_period: Option<Duration>,
    /// How often the kernel is read back and repaired if anything differs; health fails when
    /// a change waits longer than twice this (kube-proxy `--sync-period` / `syncPeriod`).
    /// [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) sync_period: Option<Duration>,
    /// Where /healthz and /livez listen, `IP:port` or an IP for port 10256; empty disables
    /// (kube-proxy `--healthz-bind-address` / `healthzBindAddress`). [default: 0.0.0.0:10256]
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) healthz_bind_address: Option<String>,
    /// Where /metrics, /proxyMode and /configz listen, `IP:port` or an IP for port 10249;
    /// empty disables (kube-proxy `--metrics-bind-address` / `metricsBindAddress`).
    /// [default: 127.0.0.1:10249]
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) metrics_bind_address: Option<String>,
    /// kube-nft only: how long the watch of this Node may stay silent before health counts it
    /// as a failure (the kubelet updates its Node at least every 5 minutes, so a longer silence
    /// means a hung watch and a stale view; /livez then fails after 2 x --sync-period more and
    /// the kubelet restarts the daemon). `0s` disables. [default: 11m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) watch_silence_timeout: Option<Duration>,
    /// kube-nft only: /metrics also exposes, per Service port and backend (`IP:PORT`), the new
    /// connections, packets and bytes the packet path counted
    /// (`kube_nft_service_backend_{new_connections,packets,bytes}_total{namespace, service,
    /// port_name, protocol, backend}`), read from the kernel at each scrape. Off by default:
    /// the series grow with Services x backends. The counters are keyed by frontend address
    /// and backend, not by Service port, so two ports of one address sending to the same
    /// backend port are each counted with the traffic of both, and NodePort traffic counts
    /// under every NodePort Service with that backend. A flag only: the --config file is
    /// kube-proxy's KubeProxyConfiguration, which has no such field.
    #[arg(long)]
    pub(crate) metrics_per_service: bool,
    /// Log format on stderr: `text` (one line per event) or `json` (one object per line, for
    /// log pipelines). kube-proxy `--logging-format`.
    #[arg(long, alias = "logging-format", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// Log verbosity as kube-proxy's `-v`: 0-1 info, 2-3 debug, 4+ trace. `RUST_LOG`, when
    /// set, wins.
    #[arg(short = 'v', long = "v", value_name = "LEVEL", default_value_t = 0)]
    pub(crate) verbosity: u8,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    config::parse_go_duration(text)
}

/// `kube-nft demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Cluster objects, as for `compile -f`. Default: the bundled `examples/cluster.yaml`.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub(crate) path: Option<PathBuf>,
    /// Node options as for `compile`. Without `--hostname-override` the first Node (by name)
    /// is this node; without `--cluster-cidr` (and another `--detect-local-mode`) the mode is
    /// `NodeCIDR`: this node's `podCIDRs` are its pods.
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

/// `kube-nft compile`.
#[derive(Debug, Args)]
pub(crate) struct CompileArgs {
    /// Print the ruleset as an nft script instead of programming the kernel.
    ///
    /// Without it, the ruleset is programmed into the current network namespace in one
    /// netlink transaction that atomically replaces kube-nft's tables (needs CAP_NET_ADMIN).
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) input: InputArgs,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

/// `kube-nft diff`.
#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    #[command(flatten)]
    pub(crate) input: InputArgs,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

/// `kube-nft show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Only Services of this namespace.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub(crate) namespace: Option<String>,
    /// Only rows reaching this address (`IP` or `IP:PORT`; a NodePort matches each of this
    /// node's addresses).
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) address: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ShowFormat::Table)]
    pub(crate) output: ShowFormat,
    /// Only this Service (its name; with `-n` in that namespace only).
    #[arg(value_name = "SERVICE")]
    pub(crate) service: Option<String>,
    /// Also compile this cluster (as `compile -f`, with the node flags) and flag drift: what
    /// the kernel holds that the input does not compile to, or the reverse (`kube-nft diff`
    /// lists the operations).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub(crate) path: Option<PathBuf>,
    /// Time between the two reads of the per-backend counters that give NEW/s, and between
    /// refreshes with `--watch`; `0s` reads once and shows no rate. Go duration syntax.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub(crate) interval: Duration,
    /// Refresh every `--interval` until interrupted, rates from one refresh to the next.
    #[arg(short = 'w', long)]
    pub(crate) watch: bool,
    /// With `--watch`: stop after this many refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub(crate) count: Option<u64>,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

/// `kube-nft show -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShowFormat {
    /// Aligned columns, one line per backend.
    Table,
    /// One JSON document: `{"rows": [...]}` (see the README for the schema).
    Json,
}

/// `kube-nft trace`.
#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The cluster to compile (as `compile -f`): a file, a directory or `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "live"
    )]
    pub(crate) path: Option<PathBuf>,
    /// Trace through the ruleset in this network namespace's kernel (kube-nft's tables read
    /// back over netlink) instead of compiling one; the node's addresses are the kernel's too.
    /// Needs no input file; node options are ignored.
    #[arg(long, conflicts_with = "path")]
    pub(crate) live: bool,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    /// Where the packet comes from.
    ///
    /// Default: `host` when the source address is one of the node's own addresses (see
    /// `--local-ip`) or loopback, else `outside`.
    #[arg(long, value_enum, value_name = "ORIGIN")]
    pub(crate) from: Option<PacketOrigin>,
    /// Another address of this node (comma-separated or repeated): the tracer's `fib … type
    /// local` is true for it, as the kernel's is for every address the node holds.
    ///
    /// Every InternalIP and ExternalIP of the Node object and `--node-ip` already count; this
    /// adds the ones the Node object does not list (a secondary address inside
    /// `--nodeport-addresses`, say).
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub(crate) local_ip: Vec<IpAddr>,
    /// The packet: `PROTO SRC:PORT -> DST:PORT`, e.g. 'tcp 192.0.2.2:40000 -> 10.96.0.10:80'
    /// (IPv6 addresses in brackets: '[2001:db8::2]:40000').
    #[arg(value_name = "PACKET")]
    pub(crate) packet: String,
}

/// Where a traced packet enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PacketOrigin {
    /// Arrives on a node interface from another machine (prerouting).
    Outside,
    /// Sent by a pod on this node (prerouting, on a pod interface; give it a pod's address).
    Pod,
    /// Sent by a process in the host network namespace (output).
    Host,
}

/// Where the cluster objects come from.
#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// A file, a directory (every *.yaml, *.yml and *.json file below it, recursively, in path
    /// order, skipping names that start with `.`) or `-` for stdin.
    ///
    /// Files hold Services, EndpointSlices, Endpoints, Nodes and ServiceCIDRs as YAML or JSON,
    /// several documents per file and `kind: List` (what `kubectl get -o yaml` prints) allowed.
    /// Other kinds are skipped with a note.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub(crate) path: PathBuf,
}

/// The node the ruleset is for, with kube-proxy's flag names.
///
/// With `--config`, the file is applied first and flags given on the command line win over it.
/// (kube-proxy itself ignores most flags when `--config` is set; kube-nft lets explicit flags
/// override the file so one config can serve many nodes.)
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Node options (as kube-proxy)")]
pub(crate) struct NodeArgs {
    /// Name of this node; selects its Node object, local endpoints and zone.
    ///
    /// kube-proxy `--hostname-override` / `hostnameOverride`. Trimmed and lower-cased.
    #[arg(long, value_name = "NAME")]
    pub(crate) hostname_override: Option<String>,
    /// Primary node IPs, at most one per family (comma-separated or repeated).
    ///
    /// Default: the Node object's InternalIP addresses. Like kubelet's `--node-ip` and
    /// kube-proxy's `--bind-address` / `bindAddress` (its primary-IP override).
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub(crate) node_ip: Vec<IpAddr>,
    /// Pod CIDRs of the cluster (comma-separated or repeated): traffic from them is from pods.
    ///
    /// kube-proxy `--cluster-cidr` / `clusterCIDR` (the ClusterCIDR local-traffic detector).
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub(crate) cluster_cidr: Vec<IpNet>,
    /// Addresses NodePorts are reachable on: CIDRs and/or `primary` (comma-separated or
    /// repeated).
    ///
    /// Default: `primary`, the node's primary IPs. kube-proxy `--nodeport-addresses` /
    /// `nodePortAddresses` (nftables mode).
    #[arg(long, value_name = "CIDR|primary", value_delimiter = ',', value_parser = parse_node_port_address)]
    pub(crate) nodeport_addresses: Vec<NodePortAddress>,
    /// Masquerade (SNAT) every connection to a ClusterIP.
    ///
    /// kube-proxy `--masquerade-all` / `nftables.masqueradeAll`.
    #[arg(long)]
    pub(crate) masquerade_all: bool,
    /// How traffic from this node's pods is recognised: `ClusterCIDR`, `NodeCIDR`,
    /// `BridgeInterface` or `InterfaceNamePrefix`.
    ///
    /// Default `ClusterCIDR` (the source is in `--cluster-cidr`). `NodeCIDR`: in this Node's
    /// `spec.podCIDRs`. `BridgeInterface`: it arrives on `--pod-bridge-interface`.
    /// `InterfaceNamePrefix`: on an interface named `--pod-interface-name-prefix`*. ClusterIP
    /// traffic that is not from a pod is masqueraded; a family without a detector (no CIDR of
    /// it) masquerades none. kube-proxy `--detect-local-mode` / `detectLocalMode`.
    #[arg(long, value_name = "MODE", value_parser = parse_local_mode)]
    pub(crate) detect_local_mode: Option<LocalMode>,
    /// The bridge pods hang off, for `--detect-local-mode BridgeInterface` (e.g. `cbr0`).
    ///
    /// kube-proxy `--pod-bridge-interface` / `detectLocal.bridgeInterface`.
    #[arg(long, value_name = "NAME", value_parser = parse_interface_name)]
    pub(crate) pod_bridge_interface: Option<String>,
    /// The name prefix of pods' host-side interfaces, for `--detect-local-mode
    /// InterfaceNamePrefix` (e.g. `veth`, `cali`).
    ///
    /// kube-proxy `--pod-interface-name-prefix` / `detectLocal.interfaceNamePrefix`.
    #[arg(long, value_name = "PREFIX", value_parser = parse_interface_prefix)]
    pub(crate) pod_interface_name_prefix: Option<String>,
    /// Only handle Services labelled `service.kubernetes.io/service-proxy-name=NAME`.
    ///
    /// Without it, only Services without that label are handled, as kube-proxy does.
    #[arg(long, value_name = "NAME")]
    pub(crate) service_proxy_name: Option<String>,
    /// kube-nft only: how Services spread new connections over their endpoints unless their
    /// `kube-nft.io/scheduler` annotation says otherwise: `random`, `round-robin`,
    /// `source-hash` (the client address picks the endpoint) or `maglev` (consistent hashing
    /// of the client address: removing an endpoint moves only its clients).
    ///
    /// An IPVS-mode `--config` file's `ipvs.scheduler` sets it too (`rr`: round-robin, `sh`:
    /// source-hash, `mh`: maglev). [default: random]
    #[arg(long, value_name = "SCHEDULER", value_parser = parse_scheduler)]
    pub(crate) scheduler: Option<Scheduler>,
    /// kube-nft only: spread the Service dispatch over this many tables per family (1 to 64).
    ///
    /// The kernel checks a table's whole jump graph after every change that adds a verdict (a
    /// Service added, a port's endpoint count changed), in time proportional to the table's
    /// dispatch elements: about 35 ms at 50k Services in one table. Each further table,
    /// `kube-nft-dispatch-<i>`, takes the Services whose name hashes to it, so such a change
    /// costs about 1/N of that. [default: 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=config::MAX_DISPATCH_TABLES as i64))]
    pub(crate) dispatch_tables: Option<u16>,
    /// A kube-proxy `KubeProxyConfiguration` file (kubeproxy.config.k8s.io/v1alpha1).
    ///
    /// Read: hostnameOverride, bindAddress, clusterCIDR, nodePortAddresses,
    /// nftables.masqueradeAll, nftables.masqueradeBit, detectLocalMode,
    /// detectLocal.bridgeInterface, detectLocal.interfaceNamePrefix, mode (`nftables` or empty;
    /// a file for kube-proxy's `iptables` or `ipvs` mode is read as that mode reads it, with a
    /// warning, and IPVS's ipvs.scheduler becomes --scheduler); for `run` also syncPeriod,
    /// minSyncPeriod (or the mode's section), healthzBindAddress, metricsBindAddress and
    /// clientConnection.kubeconfig.
    /// Unknown fields are ignored with a warning. Flags on the command line win over the file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    config::parse_cidr(text)
}

fn parse_node_port_address(text: &str) -> Result<NodePortAddress, String> {
    text.parse()
}

fn parse_local_mode(text: &str) -> Result<LocalMode, String> {
    text.parse()
}

fn parse_interface_name(text: &str) -> Result<String, String> {
    config::parse_interface_name(text)
}

fn parse_interface_prefix(text: &str) -> Result<String, String> {
    config::parse_interface_prefix(text)
}

fn parse_scheduler(text: &str) -> Result<Scheduler, String> {
    config::parse_scheduler(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
