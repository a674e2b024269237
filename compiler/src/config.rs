//! Node context: which node we are, its addresses, and kube-proxy's knobs that change the
//! ruleset. Flag names and meanings follow kube-proxy (`--hostname-override`, `--node-ip`,
//! `--cluster-cidr`, `--nodeport-addresses`, `--masquerade-all`, `--service-proxy-name`,
//! `--detect-local-mode`, `--pod-bridge-interface`, `--pod-interface-name-prefix`), and so does
//! [`KubeProxyConfiguration`], the subset of kube-proxy's config file that kube-nft reads. A
//! file written for kube-proxy's iptables or IPVS mode is read as kube-proxy would read it in
//! that mode (its per-mode fields, IPVS's scheduler as the node's default scheduler) and the
//! mode is reported as mapped to nftables, so an existing ConfigMap carries over as it is.
//! Parsing is here, not in the binary, so it is unit-tested; reading files is the binary's job.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::graph::Scheduler;

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
    /// `--detect-local-mode`: how traffic from this node's pods is told apart from the rest.
    pub detect_local_mode: LocalMode,
    /// `--pod-bridge-interface`: the bridge pods hang off (for [`LocalMode::BridgeInterface`]).
    pub pod_bridge_interface: Option<String>,
    /// `--pod-interface-name-prefix`: what pods' host-side interfaces are named like (for
    /// [`LocalMode::InterfaceNamePrefix`]).
    pub pod_interface_name_prefix: Option<String>,
    /// `--scheduler` (or an IPVS-mode file's `ipvs.scheduler`): how a Service without the
    /// `kube-nft.io/scheduler` annotation spreads new connections over its endpoints.
    pub default_scheduler: Scheduler,
    /// `--dispatch-tables`: how many tables per family the Service dispatch is spread over
    /// (1 to [`MAX_DISPATCH_TABLES`]; see `compiler/README.md`, "Dispatch tables"). The kernel
    /// validates the jump graph of a table after every change that adds a verdict, so a change
    /// costs in proportion to the dispatch elements of its table, not of the cluster.
    pub dispatch_tables: u16,
}

/// The most tables the Service dispatch may be spread over, per family.
pub const MAX_DISPATCH_TABLES: u16 = 64;

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
            detect_local_mode: LocalMode::ClusterCidr,
            pod_bridge_interface: None,
            pod_interface_name_prefix: None,
            default_scheduler: Scheduler::Random,
            dispatch_tables: 1,
        }
    }
}

impl Config {
    /// The masquerade mark (`1 << masquerade_bit`).
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }

    /// What kube-proxy's validation refuses at startup, once flags and file are merged: an
    /// interface mode without its interface name (or with one the kernel cannot have). The
    /// compiler itself copes (no detector, and a diagnostic), but a proxy should not start so.
    pub fn check(&self) -> Result<(), String> {
        let (flag, field, value) = match self.detect_local_mode {
            LocalMode::BridgeInterface => (
                "--pod-bridge-interface",
                "detectLocal.bridgeInterface",
                &self.pod_bridge_interface,
            ),
            LocalMode::InterfaceNamePrefix => (
                "--pod-interface-name-prefix",
                "detectLocal.interfaceNamePrefix",
                &self.pod_interface_name_prefix,
            ),
            LocalMode::ClusterCidr | LocalMode::NodeCidr => return Ok(()),
        };
        let mode = self.detect_local_mode;
        match value {
            None => Err(format!(
                "--detect-local-mode {mode} needs {flag} ({field} in a config file)"
            )),
            Some(name) => {
                let prefix = mode == LocalMode::InterfaceNamePrefix;
                match crate::ir::ifname_problem(name, prefix) {
                    Some(problem) => Err(format!("{flag} {name:?}: {problem}")),
                    None => Ok(()),
                }
            }
        }
    }
}

/// kube-proxy's local-traffic detectors (`--detect-local-mode`, `detectLocalMode`): what makes
/// a packet "from a pod on this node". ClusterIP traffic that is not is masqueraded, and pods
/// reaching an `externalTrafficPolicy: Local` Service's external address are sent to every
/// endpoint instead of only the local ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocalMode {
    /// `ClusterCIDR` (the default): the source is in the family's first `--cluster-cidr`.
    #[default]
    ClusterCidr,
    /// `NodeCIDR`: the source is in the family's first `spec.podCIDRs` entry of this Node.
    NodeCidr,
    /// `BridgeInterface`: the packet arrives on `--pod-bridge-interface` (`iifname "cbr0"`).
    BridgeInterface,
    /// `InterfaceNamePrefix`: the packet arrives on an interface whose name starts with
    /// `--pod-interface-name-prefix` (`iifname "veth*"`).
    InterfaceNamePrefix,
}

impl LocalMode {
    /// kube-proxy's spelling, as the flag and the config file take it.
    pub fn name(self) -> &'static str {
        match self {
            LocalMode::ClusterCidr => "ClusterCIDR",
            LocalMode::NodeCidr => "NodeCIDR",
            LocalMode::BridgeInterface => "BridgeInterface",
            LocalMode::InterfaceNamePrefix => "InterfaceNamePrefix",
        }
    }
}

impl std::fmt::Display for LocalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LocalMode {
    type Err = String;

    /// kube-proxy's names, case-sensitive as kube-proxy compares them; blank means the default
    /// (`ClusterCIDR`), as in kube-proxy.
    fn from_str(text: &str) -> Result<LocalMode, String> {
        let all = [
            LocalMode::ClusterCidr,
            LocalMode::NodeCidr,
            LocalMode::BridgeInterface,
            LocalMode::InterfaceNamePrefix,
        ];
        if text.trim().is_empty() {
            return Ok(LocalMode::ClusterCidr);
        }
        all.into_iter().find(|m| m.name() == text).ok_or_else(|| {
            format!(
                "unknown mode {text:?} (expected ClusterCIDR, NodeCIDR, BridgeInterface or \
                 InterfaceNamePrefix)"
            )
        })
    }
}

/// A scheduler's name, as `--scheduler` and the `kube-nft.io/scheduler` annotation spell it.
pub fn scheduler_name(scheduler: Scheduler) -> &'static str {
    match scheduler {
        Scheduler::Random => "random",
        Scheduler::RoundRobin => "round-robin",
        Scheduler::SourceHash => "source-hash",
        Scheduler::Maglev => "maglev",
    }
}

/// Parses `--scheduler` or a `kube-nft.io/scheduler` annotation (exact names).
pub fn parse_scheduler(text: &str) -> Result<Scheduler, String> {
    [
        Scheduler::Random,
        Scheduler::RoundRobin,
        Scheduler::SourceHash,
        Scheduler::Maglev,
    ]
    .into_iter()
    .find(|s| scheduler_name(*s) == text)
    .ok_or_else(|| {
        format!("unknown scheduler {text:?} (expected random, round-robin, source-hash or maglev)")
    })
}

/// Parses `--pod-bridge-interface`: a name the kernel accepts for an interface.
pub fn parse_interface_name(text: &str) -> Result<String, String> {
    match crate::ir::ifname_problem(text, false) {
        Some(problem) => Err(format!("interface name {text:?} {problem}")),
        None => Ok(text.to_owned()),
    }
}

/// Parses `--pod-interface-name-prefix`: the start of an interface name (at most 14 bytes, as
/// nft's `"prefix*"` takes it).
pub fn parse_interface_prefix(text: &str) -> Result<String, String> {
    match crate::ir::ifname_problem(text, true) {
        Some(problem) => Err(format!("interface name prefix {text:?} {problem}")),
        None => Ok(text.to_owned()),
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

impl FromStr for NodePortAddress {
    type Err = String;

    /// Parses one `--nodeport-addresses` entry: `primary` or a CIDR (host bits are cleared, as
    /// Go's `net.ParseCIDR` does).
    fn from_str(text: &str) -> Result<NodePortAddress, String> {
        let text = text.trim();
        if text == "primary" {
            return Ok(NodePortAddress::Primary);
        }
        parse_cidr(text)
            .map(NodePortAddress::Cidr)
            .map_err(|err| format!("{err} (expected a CIDR or `primary`)"))
    }
}

/// Parses a CIDR such as `10.0.0.0/8`, clearing host bits (`10.1.2.3/8` means `10.0.0.0/8`, as
/// with Go's `net.ParseCIDR`). A bare address without a prefix length is rejected.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    IpNet::from_str(text)
        .map(|net| net.trunc())
        .map_err(|_| format!("invalid CIDR {text:?}"))
}

/// kube-proxy's node-name rule: trimmed and lower-cased; an empty name means "not set".
pub fn normalize_hostname(name: &str) -> Option<String> {
    let name = name.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The `apiVersion` kube-nft reads `KubeProxyConfiguration` files in.
pub const KUBE_PROXY_CONFIG_API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// The part of a kube-proxy `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`) file
/// that shapes the ruleset, validated. Every field is `None`/empty when the file does not set it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeProxyConfiguration {
    /// `hostnameOverride`, normalized with [`normalize_hostname`].
    pub hostname_override: Option<String>,
    /// `bindAddress` when it is a specific address: kube-proxy's override of the primary node IP.
    pub bind_address: Option<IpAddr>,
    /// `clusterCIDR`, split at commas.
    pub cluster_cidrs: Vec<IpNet>,
    /// `nodePortAddresses`.
    pub node_port_addresses: Vec<NodePortAddress>,
    /// `nftables.masqueradeAll`, or the top-level `masqueradeAll` (either one set means set).
    pub masquerade_all: Option<bool>,
    /// `nftables.masqueradeBit`.
    pub masquerade_bit: Option<u8>,
    /// `detectLocalMode` (blank: not set).
    pub detect_local_mode: Option<LocalMode>,
    /// `detectLocal.bridgeInterface` (blank: not set).
    pub bridge_interface: Option<String>,
    /// `detectLocal.interfaceNamePrefix` (blank: not set).
    pub interface_name_prefix: Option<String>,
    /// `ipvs.scheduler` of a file in IPVS mode, mapped (`rr` and IPVS's default, empty, to
    /// round-robin, `sh` to source-hash, anything else to random).
    pub default_scheduler: Option<Scheduler>,
    /// The daemon's settings (`kube-nft run`); they do not shape the ruleset.
    pub daemon: DaemonSettings,
}

/// The fields of a `KubeProxyConfiguration` that only the daemon reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonSettings {
    /// `syncPeriod` (or the older `nftables.syncPeriod`).
    pub sync_period: Option<Duration>,
    /// `minSyncPeriod` (or the older `nftables.minSyncPeriod`).
    pub min_sync_period: Option<Duration>,
    /// `healthzBindAddress`, as written (the daemon parses it).
    pub healthz_bind_address: Option<String>,
    /// `metricsBindAddress`, as written.
    pub metrics_bind_address: Option<String>,
    /// `clientConnection.kubeconfig`.
    pub kubeconfig: Option<String>,
}

impl KubeProxyConfiguration {
    /// Overwrites the fields of `config` that the file sets. The binary applies the file first
    /// and explicit command-line flags after it, so flags win.
    pub fn apply_to(&self, config: &mut Config) {
        if let Some(name) = &self.hostname_override {
            config.hostname = Some(name.clone());
        }
        if let Some(ip) = self.bind_address {
            config.node_ips = vec![ip];
        }
        if !self.cluster_cidrs.is_empty() {
            config.cluster_cidrs = self.cluster_cidrs.clone();
        }
        if !self.node_port_addresses.is_empty() {
            config.nodeport_addresses = self.node_port_addresses.clone();
        }
        if let Some(all) = self.masquerade_all {
            config.masquerade_all = all;
        }
        if let Some(bit) = self.masquerade_bit {
            config.masquerade_bit = bit;
        }
        if let Some(mode) = self.detect_local_mode {
            config.detect_local_mode = mode;
        }
        if let Some(name) = &self.bridge_interface {
            config.pod_bridge_interface = Some(name.clone());
        }
        if let Some(prefix) = &self.interface_name_prefix {
            config.pod_interface_name_prefix = Some(prefix.clone());
        }
        if let Some(scheduler) = self.default_scheduler {
            config.default_scheduler = scheduler;
        }
    }
}

/// Why a `KubeProxyConfiguration` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML, or a field has the wrong type.
    #[error("invalid KubeProxyConfiguration: {message}")]
    Syntax {
        /// The YAML parser's message, with its line and column.
        message: String,
    },
    /// `apiVersion`/`kind` is missing or not the one kube-nft reads.
    #[error(
        "expected apiVersion {KUBE_PROXY_CONFIG_API_VERSION} and kind KubeProxyConfiguration, \
         found apiVersion {api_version:?} and kind {kind:?}"
    )]
    Kind {
        /// The file's `apiVersion`.
        api_version: String,
        /// The file's `kind`.
        kind: String,
    },
    /// `mode` is not a Linux mode of kube-proxy (`nftables`, `iptables`, `ipvs` or empty).
    #[error(
        "mode {0:?} is not supported: kube-nft is an nftables proxy; set `mode: nftables` (a \
         file written for kube-proxy's iptables or ipvs mode is read too) or leave it empty"
    )]
    Mode(String),
    /// A field has a value of the right type but an invalid one.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON path of the field (`nodePortAddresses[1]`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Every top-level field of `KubeProxyConfiguration` v1alpha1. kube-nft reads only a few of
/// them; the others are known (so not warned about) and ignored.
const KNOWN_TOP_LEVEL_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "featureGates",
    "clientConnection",
    "logging",
    "hostnameOverride",
    "bindAddress",
    "healthzBindAddress",
    "metricsBindAddress",
    "bindAddressHardFail",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "mode",
    "iptables",
    "ipvs",
    "nftables",
    "winkernel",
    "detectLocalMode",
    "detectLocal",
    "clusterCIDR",
    "nodePortAddresses",
    "oomScoreAdj",
    "conntrack",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
    "masqueradeAll",
    "syncPeriod",
    "minSyncPeriod",
];

/// Every field of v1alpha1's `DetectLocalConfiguration`.
const KNOWN_DETECT_LOCAL_FIELDS: &[&str] = &["bridgeInterface", "interfaceNamePrefix"];

/// Every field of v1alpha1's `KubeProxyNFTablesConfiguration`.
const KNOWN_NFTABLES_FIELDS: &[&str] = &[
    "masqueradeBit",
    "masqueradeAll",
    "syncPeriod",
    "minSyncPeriod",
];

/// The file as serde sees it: the fields kube-nft reads, unvalidated; others are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawKubeProxyConfiguration {
    api_version: String,
    kind: String,
    mode: String,
    hostname_override: String,
    bind_address: String,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: String,
    node_port_addresses: Option<Vec<String>>,
    masquerade_all: Option<bool>,
    nftables: RawPerModeConfiguration,
    iptables: RawPerModeConfiguration,
    ipvs: RawPerModeConfiguration,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    client_connection: RawClientConnection,
    detect_local_mode: String,
    detect_local: RawDetectLocalConfiguration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawDetectLocalConfiguration {
    bridge_interface: String,
    interface_name_prefix: String,
}

/// `nftables`, `iptables` or `ipvs`: the fields kube-proxy reads from the section of its mode
/// (`ipvs` has no masquerade fields and `scheduler` only exists there; absent is empty).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawPerModeConfiguration {
    masquerade_bit: Option<i64>,
    masquerade_all: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    scheduler: String,
}

/// kube-proxy's Linux modes, as `mode` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Nftables,
    Iptables,
    Ipvs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawClientConnection {
    kubeconfig: Option<String>,
}

/// Parses a `KubeProxyConfiguration` file.
///
/// Like kube-proxy, decoding is strict first: unknown fields are not an error, but they are
/// listed in one returned warning and the rest of the file is used. A file for kube-proxy's
/// `iptables` or `ipvs` mode is read as that mode would read it, with a warning that the mode
/// is mapped to nftables. Any other problem (YAML syntax, a wrong type, an invalid CIDR, a mode
/// kube-proxy does not have on Linux) is an error.
pub fn parse_kube_proxy_configuration(
    text: &str,
) -> Result<(KubeProxyConfiguration, Vec<String>), ConfigError> {
    let raw: RawKubeProxyConfiguration = serde_saphyr::from_str(text).map_err(syntax_error)?;
    // A second, schema-less pass finds the fields the typed pass silently ignored.
    let tree: serde_json::Value = serde_saphyr::from_str(text).map_err(syntax_error)?;
    let unknown = unknown_fields(&tree);
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        warnings.push(format!(
            "unknown fields ignored (decoded leniently, as kube-proxy does): {}",
            unknown.join(", ")
        ));
    }

    if raw.api_version != KUBE_PROXY_CONFIG_API_VERSION || raw.kind != "KubeProxyConfiguration" {
        return Err(ConfigError::Kind {
            api_version: raw.api_version,
            kind: raw.kind,
        });
    }
    let mode = match raw.mode.as_str() {
        "" | "nftables" => Mode::Nftables,
        "iptables" => Mode::Iptables,
        "ipvs" => Mode::Ipvs,
        _ => return Err(ConfigError::Mode(raw.mode)),
    };
    // As kube-proxy's v1alpha1 conversion: both iptables-based modes masquerade with the
    // `iptables` fields, and each mode syncs with the periods of its own section.
    let (masquerading, masquerading_name, periods, periods_name) = match mode {
        Mode::Nftables => (&raw.nftables, "nftables", &raw.nftables, "nftables"),
        Mode::Iptables => (&raw.iptables, "iptables", &raw.iptables, "iptables"),
        Mode::Ipvs => (&raw.iptables, "iptables", &raw.ipvs, "ipvs"),
    };
    if mode != Mode::Nftables {
        let mut warning = format!(
            "mode {:?} mapped to nftables: kube-nft programs nftables and reads this file as \
             kube-proxy's {} mode would (masqueradeAll and masqueradeBit from `{masquerading_name}`, \
             syncPeriod and minSyncPeriod from `{periods_name}`)",
            raw.mode, raw.mode
        );
        if raw.node_port_addresses.as_ref().is_none_or(Vec::is_empty) {
            warning.push_str(
                "; NodePorts are served on the node's primary IPs only, as in kube-proxy's \
                 nftables mode, not on every local address (set nodePortAddresses to choose)",
            );
        }
        warnings.push(warning);
    }
    let default_scheduler = ipvs_scheduler(mode, raw.ipvs.scheduler.trim(), &mut warnings);
    warnings.extend(conntrack_warning(&tree));

    let invalid = |field: String, message: String| ConfigError::Invalid { field, message };

    let bind_address = match raw.bind_address.trim() {
        "" => None,
        text => {
            let ip = IpAddr::from_str(text).map_err(|_| {
                invalid("bindAddress".into(), format!("invalid IP address {text:?}"))
            })?;
            // `0.0.0.0` and `::` are kube-proxy's default: no override.
            (!ip.is_unspecified()).then_some(ip)
        }
    };
    let cluster_cidrs = raw
        .cluster_cidr
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_cidr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| invalid("clusterCIDR".into(), message))?;
    let node_port_addresses = raw
        .node_port_addresses
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(idx, entry)| {
            NodePortAddress::from_str(entry)
                .map_err(|message| invalid(format!("nodePortAddresses[{idx}]"), message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let masquerade_bit = masquerading
        .masquerade_bit
        .map(|bit| {
            u8::try_from(bit)
                .ok()
                .filter(|bit| *bit <= 31)
                .ok_or_else(|| {
                    invalid(
                        format!("{masquerading_name}.masqueradeBit"),
                        format!("{bit} is not in the range 0..=31"),
                    )
                })
        })
        .transpose()?;
    let masquerade_all = match (raw.masquerade_all, masquerading.masquerade_all) {
        (None, None) => None,
        (top, nft) => Some(top.unwrap_or(false) || nft.unwrap_or(false)),
    };
    let detect_local_mode = match raw.detect_local_mode.trim() {
        "" => None,
        text => Some(
            LocalMode::from_str(text)
                .map_err(|message| invalid("detectLocalMode".into(), message))?,
        ),
    };
    // Names are checked where they are used (`Config::check`): kube-proxy ignores the one its
    // mode does not need.
    let non_blank = |text: String| (!text.trim().is_empty()).then_some(text);

    // kube-proxy 1.31 moved the periods to the top level; the per-mode fields still work. Zero
    // is "unset" to kube-proxy's defaulting (30s, 1s), and kubeadm writes `0s` into every
    // section it does not use; only IPVS keeps a zero minSyncPeriod (sync on every change).
    let period = |top: &Option<String>, section: &Option<String>, field: &str, keep_zero: bool| {
        for (text, name) in [
            (top, field.to_owned()),
            (section, format!("{periods_name}.{field}")),
        ] {
            let Some(text) = text else { continue };
            let value = parse_go_duration(text).map_err(|message| invalid(name, message))?;
            if keep_zero || !value.is_zero() {
                return Ok(Some(value));
            }
        }
        Ok(None)
    };
    let non_empty = |text: &Option<String>| text.clone().filter(|t| !t.trim().is_empty());
    let daemon = DaemonSettings {
        sync_period: period(&raw.sync_period, &periods.sync_period, "syncPeriod", false)?,
        min_sync_period: period(
            &raw.min_sync_period,
            &periods.min_sync_period,
            "minSyncPeriod",
            mode == Mode::Ipvs,
        )?,
        healthz_bind_address: non_empty(&raw.healthz_bind_address),
        metrics_bind_address: non_empty(&raw.metrics_bind_address),
        kubeconfig: non_empty(&raw.client_connection.kubeconfig),
    };

    let config = KubeProxyConfiguration {
        hostname_override: normalize_hostname(&raw.hostname_override),
        bind_address,
        cluster_cidrs,
        node_port_addresses,
        masquerade_all,
        masquerade_bit,
        daemon,
        detect_local_mode,
        bridge_interface: non_blank(raw.detect_local.bridge_interface),
        interface_name_prefix: non_blank(raw.detect_local.interface_name_prefix),
        default_scheduler,
    };
    Ok((config, warnings))
}

/// The `conntrack` fields a file sets (not null, zero or false): kube-proxy writes them into the
/// node's sysctls at start, kube-nft writes no sysctl, so they are named rather than silently
/// dropped. (kubeadm writes every one of them as null or zero.)
fn conntrack_warning(tree: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let set: Vec<String> = tree
        .get("conntrack")?
        .as_object()?
        .iter()
        .filter(|(_, value)| match value {
            Value::Null => false,
            Value::Bool(on) => *on,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(text) => parse_go_duration(text).map_or(true, |d| !d.is_zero()),
            _ => true,
        })
        .map(|(field, _)| format!("conntrack.{field}"))
        .collect();
    (!set.is_empty()).then(|| {
        format!(
            "{} not applied: kube-nft writes no conntrack sysctls (nf_conntrack_max, \
             nf_conntrack_tcp_*, nf_conntrack_udp_*); set them on the node",
            set.join(", ")
        )
    })
}

/// `ipvs.scheduler` as the node's default scheduler, read only in IPVS mode as kube-proxy
/// does: `rr` (and empty, IPVS mode's default) is round-robin, `sh` source-hash, and the other
/// IPVS schedulers, which weigh connection counts or hash other fields, have no equivalent.
fn ipvs_scheduler(mode: Mode, name: &str, warnings: &mut Vec<String>) -> Option<Scheduler> {
    if mode != Mode::Ipvs {
        if !name.is_empty() {
            warnings.push(format!(
                "ipvs.scheduler {name:?} ignored: kube-proxy reads it only in mode ipvs \
                 (kube-nft's node default is --scheduler)"
            ));
        }
        return None;
    }
    Some(match name {
        "" | "rr" => Scheduler::RoundRobin,
        "sh" => Scheduler::SourceHash,
        // IPVS's mh is Maglev hashing too (of the source address by default).
        "mh" => Scheduler::Maglev,
        other => {
            warnings.push(format!(
                "ipvs.scheduler {other:?} has no kube-nft equivalent; Services without a \
                 kube-nft.io/scheduler annotation use random (source-hash is the closest to mh)"
            ));
            Scheduler::Random
        }
    })
}

/// Parses a Go `time.Duration` string as Kubernetes config files write them (`30s`, `1m0s`,
/// `1h30m`, `250ms`, `1.5s`; units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`). Negative durations
/// are refused.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("invalid duration {text:?} (expected e.g. 30s, 1m0s, 500ms)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

fn syntax_error(err: serde_saphyr::Error) -> ConfigError {
    // The plain message: the snippet rendering is multi-line and repeats the file.
    ConfigError::Syntax {
        message: err.without_snippet().to_string(),
    }
}

/// JSON paths of the fields of `tree` that v1alpha1 does not define (top level, `nftables`
/// and `detectLocal`), in file order.
fn unknown_fields(tree: &serde_json::Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let Some(top) = tree.as_object() else {
        return unknown;
    };
    for (key, value) in top {
        if !KNOWN_TOP_LEVEL_FIELDS.contains(&key.as_str()) {
            unknown.push(key.clone());
        } else if let Some(known) = match key.as_str() {
            "nftables" => Some(KNOWN_NFTABLES_FIELDS),
            "detectLocal" => Some(KNOWN_DETECT_LOCAL_FIELDS),
            _ => None,
        } {
            for nested in value.as_object().into_iter().flat_map(|map| map.keys()) {
                if !known.contains(&nested.as_str()) {
                    unknown.push(format!("{key}.{nested}"));
                }
            }
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(KubeProxyConfiguration, Vec<String>), ConfigError> {
        parse_kube_proxy_configuration(text)
    }

    const HEADER: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    #[test]
    fn reads_the_fields_that_shape_the_ruleset() {
        let text = format!(
            "{HEADER}mode: nftables\nhostnameOverride: ' Node-A '\nbindAddress: 192.168.0.2\n\
             clusterCIDR: 10.0.0.0/8, fd00::/48\nnodePortAddresses: [primary, 192.168.0.0/24]\n\
             nftables:\n  masqueradeAll: true\n  masqueradeBit: 13\n  syncPeriod: 30s\n\
             iptables:\n  masqueradeAll: false\nconntrack:\n  maxPerCore: 0\n"
        );
        let (file, warnings) = parse(&text).unwrap();
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(
            file,
            KubeProxyConfiguration {
                hostname_override: Some("node-a".into()),
                bind_address: Some("192.168.0.2".parse().unwrap()),
                cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/48".parse().unwrap()],
                node_port_addresses: vec![
                    NodePortAddress::Primary,
                    NodePortAddress::Cidr("192.168.0.0/24".parse().unwrap()),
                ],
                masquerade_all: Some(true),
                masquerade_bit: Some(13),
                daemon: DaemonSettings {
                    sync_period: Some(Duration::from_secs(30)),
                    ..DaemonSettings::default()
                },
                detect_local_mode: None,
                bridge_interface: None,
                interface_name_prefix: None,
                default_scheduler: None,
            }
        );
    }

    #[test]
    fn reads_the_daemon_settings() {
        let text = format!(
            "{HEADER}syncPeriod: 1m0s\nminSyncPeriod: 250ms\nhealthzBindAddress: 0.0.0.0:10256\n\
             metricsBindAddress: ''\nclientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n\
             nftables:\n  syncPeriod: 5s\n"
        );
        let (file, warnings) = parse(&text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            file.daemon,
            DaemonSettings {
                sync_period: Some(Duration::from_secs(60)),
                min_sync_period: Some(Duration::from_millis(250)),
                healthz_bind_address: Some("0.0.0.0:10256".into()),
                metrics_bind_address: None,
                kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
            }
        );
        let err = parse(&format!("{HEADER}nftables:\n  minSyncPeriod: soon\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nftables.minSyncPeriod: invalid duration \"soon\" (expected e.g. 30s, 1m0s, 500ms)"
        );
    }

    #[test]
    fn reads_the_local_traffic_detector() {
        let text = format!(
            "{HEADER}detectLocalMode: BridgeInterface\ndetectLocal:\n  bridgeInterface: cbr0\n  \
             interfaceNamePrefix: ''\n  clusterCIDRs: [10.0.0.0/8]\n"
        );
        let (file, warnings) = parse(&text).unwrap();
        assert_eq!(file.detect_local_mode, Some(LocalMode::BridgeInterface));
        assert_eq!(file.bridge_interface.as_deref(), Some("cbr0"));
        assert_eq!(file.interface_name_prefix, None);
        // v1alpha2's detectLocal.clusterCIDRs is not a v1alpha1 field.
        assert_eq!(
            warnings,
            [
                "unknown fields ignored (decoded leniently, as kube-proxy does): \
              detectLocal.clusterCIDRs"
            ]
        );
        let mut config = Config::default();
        file.apply_to(&mut config);
        assert_eq!(config.detect_local_mode, LocalMode::BridgeInterface);
        assert_eq!(config.check(), Ok(()));

        // Blank is the default; kube-proxy's names are case-sensitive.
        let (file, _) = parse(&format!("{HEADER}detectLocalMode: ''\n")).unwrap();
        assert_eq!(file.detect_local_mode, None);
        let err = parse(&format!("{HEADER}detectLocalMode: nodecidr\n")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("detectLocalMode: unknown mode \"nodecidr\""),
            "{err}"
        );
    }

    #[test]
    fn go_durations() {
        for (text, ms) in [
            ("30s", 30_000),
            ("1m0s", 60_000),
            ("1h30m", 5_400_000),
            ("1.5s", 1500),
            ("250ms", 250),
            ("0", 0),
        ] {
            assert_eq!(
                parse_go_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in ["", "10", "5x", "-1s", "s"] {
            assert!(parse_go_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn interface_modes_need_a_valid_interface_name() {
        let mode = |detect_local_mode, bridge: Option<&str>, prefix: Option<&str>| Config {
            detect_local_mode,
            pod_bridge_interface: bridge.map(str::to_owned),
            pod_interface_name_prefix: prefix.map(str::to_owned),
            ..Config::default()
        };
        assert_eq!(
            mode(LocalMode::BridgeInterface, None, Some("veth")).check(),
            Err(
                "--detect-local-mode BridgeInterface needs --pod-bridge-interface \
                 (detectLocal.bridgeInterface in a config file)"
                    .into()
            )
        );
        assert_eq!(
            mode(
                LocalMode::InterfaceNamePrefix,
                None,
                Some("a-name-too-long")
            )
            .check(),
            Err("--pod-interface-name-prefix \"a-name-too-long\": is longer than 14 bytes".into())
        );
        // The name the mode does not use is not looked at, as in kube-proxy.
        assert_eq!(
            mode(LocalMode::NodeCidr, Some("bad name"), None).check(),
            Ok(())
        );
        assert_eq!("NodeCIDR".parse(), Ok(LocalMode::NodeCidr));
        assert_eq!(" ".parse(), Ok(LocalMode::ClusterCidr));
        assert!(parse_interface_name("cni0").is_ok());
        assert_eq!(
            parse_interface_name("eth:0"),
            Err("interface name \"eth:0\" contains ':'".into())
        );
        assert!(parse_interface_prefix("veth").is_ok());
    }

    #[test]
    fn applies_only_what_the_file_sets() {
        let (file, _) = parse(&format!("{HEADER}clusterCIDR: 10.0.0.0/8\n")).unwrap();
        let mut config = Config {
            hostname: Some("keep".into()),
            ..Config::default()
        };
        file.apply_to(&mut config);
        assert_eq!(
            config,
            Config {
                hostname: Some("keep".into()),
                cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                ..Config::default()
            }
        );
    }

    #[test]
    fn bind_address_overrides_node_ip_unless_unspecified() {
        let (file, _) = parse(&format!("{HEADER}bindAddress: 0.0.0.0\n")).unwrap();
        assert_eq!(file.bind_address, None);
        let (file, _) = parse(&format!("{HEADER}bindAddress: fd00::2\n")).unwrap();
        let mut config = Config::default();
        file.apply_to(&mut config);
        assert_eq!(config.node_ips, vec!["fd00::2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn top_level_masquerade_all_is_accepted() {
        let (file, _) = parse(&format!("{HEADER}masqueradeAll: true\n")).unwrap();
        assert_eq!(file.masquerade_all, Some(true));
        let (file, _) = parse(HEADER).unwrap();
        assert_eq!(file.masquerade_all, None);
    }

    #[test]
    fn unknown_fields_are_one_warning_and_the_rest_is_used() {
        let text = format!(
            "{HEADER}hostnameOverride: node-a\nfrobnicate: 1\nnftables:\n  masqueradeBit: 3\n  \
             bogus: x\n"
        );
        let (file, warnings) = parse(&text).unwrap();
        assert_eq!(file.hostname_override.as_deref(), Some("node-a"));
        assert_eq!(file.masquerade_bit, Some(3));
        assert_eq!(
            warnings,
            vec![
                "unknown fields ignored (decoded leniently, as kube-proxy does): frobnicate, \
                 nftables.bogus"
                    .to_string()
            ]
        );
    }

    #[test]
    fn rejects_other_modes_and_kinds() {
        let err = parse(&format!("{HEADER}mode: kernelspace\n")).unwrap_err();
        assert!(
            matches!(err, ConfigError::Mode(ref mode) if mode == "kernelspace"),
            "{err}"
        );
        assert!(err.to_string().contains("mode: nftables"), "{err}");

        let err = parse("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(matches!(err, ConfigError::Kind { .. }), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (
                "clusterCIDR: 10.0.0.0/8,nope\n",
                "clusterCIDR: invalid CIDR \"nope\"",
            ),
            (
                "nodePortAddresses: [primary, all]\n",
                "nodePortAddresses[1]: invalid CIDR \"all\"",
            ),
            (
                "bindAddress: localhost\n",
                "bindAddress: invalid IP address \"localhost\"",
            ),
            (
                "nftables: {masqueradeBit: 32}\n",
                "nftables.masqueradeBit: 32 is not in the range",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(&format!("{HEADER}{body}")).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{body}: {err}");
        }
    }

    /// What kubeadm writes into the `kube-proxy` ConfigMap: every section, zero values where
    /// kube-proxy's defaulting fills in the real ones.
    const KUBEADM: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: \"\"
  burst: 0
  contentType: \"\"
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: \"\"
  interfaceNamePrefix: \"\"
detectLocalMode: \"\"
enableProfiling: false
healthzBindAddress: \"\"
hostnameOverride: \"\"
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: \"\"
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: \"0\"
  verbosity: 0
metricsBindAddress: \"\"
mode: MODE
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: \"\"
showHiddenMetricsForVersion: \"\"
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: \"\"
  rootHnsEndpointName: \"\"
  sourceVip: \"\"
";

    fn kubeadm(mode: &str, edit: &[(&str, &str)]) -> String {
        let mut text = KUBEADM.replace("mode: MODE", &format!("mode: {mode}"));
        for (from, to) in edit {
            assert!(text.contains(from), "{from}");
            text = text.replacen(from, to, 1);
        }
        text
    }

    #[test]
    fn a_kubeadm_config_map_is_read_with_kube_proxys_defaults() {
        for mode in ["\"\"", "nftables"] {
            let (file, warnings) = parse(&kubeadm(mode, &[])).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            // `0s` periods are kube-proxy's "unset", not a zero period.
            assert_eq!(
                file.daemon,
                DaemonSettings {
                    kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
                    ..DaemonSettings::default()
                }
            );
            assert_eq!(file.masquerade_all, Some(false));
            assert_eq!(file.default_scheduler, None);
        }
    }

    #[test]
    fn iptables_mode_is_mapped_and_read_from_the_iptables_section() {
        let text = kubeadm(
            "iptables",
            &[
                (
                    "  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s",
                    "  masqueradeAll: true\n  masqueradeBit: 13\n  minSyncPeriod: 0s\n  syncPeriod: 10s",
                ),
            ],
        );
        let (file, warnings) = parse(&text).unwrap();
        assert_eq!(
            warnings,
            [
                "mode \"iptables\" mapped to nftables: kube-nft programs nftables and reads this \
                 file as kube-proxy's iptables mode would (masqueradeAll and masqueradeBit from \
                 `iptables`, syncPeriod and minSyncPeriod from `iptables`); NodePorts are served \
                 on the node's primary IPs only, as in kube-proxy's nftables mode, not on every \
                 local address (set nodePortAddresses to choose)"
            ]
        );
        assert_eq!(file.masquerade_all, Some(true));
        assert_eq!(file.masquerade_bit, Some(13));
        // iptables.minSyncPeriod 0s is kube-proxy's default, 1s.
        assert_eq!(file.daemon.sync_period, Some(Duration::from_secs(10)));
        assert_eq!(file.daemon.min_sync_period, None);
        assert_eq!(file.default_scheduler, None);
        let mut config = Config::default();
        file.apply_to(&mut config);
        assert!(config.masquerade_all);
        assert_eq!(config.masquerade_mark(), 0x2000);

        // With nodePortAddresses set, the NodePort note is not needed.
        let (_, warnings) = parse(&kubeadm(
            "iptables",
            &[("nodePortAddresses: null", "nodePortAddresses: [0.0.0.0/0]")],
        ))
        .unwrap();
        assert!(!warnings[0].contains("NodePorts"), "{warnings:?}");
        let err = parse(&kubeadm(
            "iptables",
            &[("  masqueradeBit: null", "  masqueradeBit: 40")],
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("iptables.masqueradeBit: 40 is not in the range"),
            "{err}"
        );
    }

    #[test]
    fn ipvs_mode_maps_its_scheduler_to_the_node_default() {
        let cases = [
            ("\"\"", Scheduler::RoundRobin, false),
            ("rr", Scheduler::RoundRobin, false),
            ("sh", Scheduler::SourceHash, false),
            ("lc", Scheduler::Random, true),
            ("mh", Scheduler::Maglev, false),
        ];
        for (name, expected, warned) in cases {
            let text = kubeadm(
                "ipvs",
                &[
                    ("  scheduler: \"\"", &format!("  scheduler: {name}")),
                    ("  masqueradeAll: false", "  masqueradeAll: true"),
                ],
            );
            let (file, warnings) = parse(&text).unwrap();
            assert_eq!(file.default_scheduler, Some(expected), "{name}");
            assert!(
                warnings[0].starts_with(
                    "mode \"ipvs\" mapped to nftables: kube-nft programs nftables and reads \
                     this file as kube-proxy's ipvs mode would (masqueradeAll and masqueradeBit \
                     from `iptables`, syncPeriod and minSyncPeriod from `ipvs`)"
                ),
                "{warnings:?}"
            );
            assert_eq!(
                warnings.len(),
                1 + usize::from(warned),
                "{name}: {warnings:?}"
            );
            if warned {
                assert_eq!(
                    warnings[1],
                    format!(
                        "ipvs.scheduler {name:?} has no kube-nft equivalent; Services without a \
                         kube-nft.io/scheduler annotation use random (source-hash is the \
                         closest to mh)"
                    )
                );
            }
            // IPVS masquerades with the iptables section, as kube-proxy does.
            assert_eq!(file.masquerade_all, Some(true), "{name}");
            let mut config = Config::default();
            file.apply_to(&mut config);
            assert_eq!(config.default_scheduler, expected, "{name}");
        }
        // ipvs.minSyncPeriod: 0s is a real zero (kube-proxy does not default it).
        let (file, _) = parse(&kubeadm(
            "ipvs",
            &[(
                "  strictARP: false\n  syncPeriod: 0s",
                "  strictARP: false\n  syncPeriod: 5s",
            )],
        ))
        .unwrap();
        assert_eq!(file.daemon.sync_period, Some(Duration::from_secs(5)));
        assert_eq!(file.daemon.min_sync_period, Some(Duration::ZERO));
    }

    #[test]
    fn ipvs_scheduler_outside_ipvs_mode_is_ignored_with_a_warning() {
        let text = kubeadm("nftables", &[("  scheduler: \"\"", "  scheduler: sh")]);
        let (file, warnings) = parse(&text).unwrap();
        assert_eq!(file.default_scheduler, None);
        assert_eq!(
            warnings,
            [
                "ipvs.scheduler \"sh\" ignored: kube-proxy reads it only in mode ipvs (kube-nft's \
              node default is --scheduler)"
            ]
        );
    }

    #[test]
    fn conntrack_settings_are_named_not_dropped_silently() {
        let text = kubeadm(
            "nftables",
            &[
                ("  maxPerCore: null", "  maxPerCore: 0"),
                ("  tcpBeLiberal: false", "  tcpBeLiberal: true"),
                ("  udpTimeout: 0s", "  udpTimeout: 30s"),
            ],
        );
        let (_, warnings) = parse(&text).unwrap();
        assert_eq!(
            warnings,
            [
                "conntrack.tcpBeLiberal, conntrack.udpTimeout not applied: kube-nft writes no \
              conntrack sysctls (nf_conntrack_max, nf_conntrack_tcp_*, nf_conntrack_udp_*); set \
              them on the node"
            ]
        );
    }

    #[test]
    fn scheduler_names() {
        for scheduler in [
            Scheduler::Random,
            Scheduler::RoundRobin,
            Scheduler::SourceHash,
            Scheduler::Maglev,
        ] {
            assert_eq!(parse_scheduler(scheduler_name(scheduler)), Ok(scheduler));
        }
        assert_eq!(
            parse_scheduler("rr"),
            Err(
                "unknown scheduler \"rr\" (expected random, round-robin, source-hash or maglev)"
                    .to_owned()
            )
        );
        assert_eq!(Config::default().default_scheduler, Scheduler::Random);
    }

    #[test]
    fn syntax_and_type_errors_are_errors() {
        assert!(matches!(
            parse("a: [1, 2\n"),
            Err(ConfigError::Syntax { .. })
        ));
        let err = parse(&format!("{HEADER}nftables:\n  masqueradeAll: [1]\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn node_port_address_and_cidr_parsing() {
        assert_eq!("primary".parse(), Ok(NodePortAddress::Primary));
        assert_eq!(
            " 10.1.2.3/8".parse(),
            Ok(NodePortAddress::Cidr("10.0.0.0/8".parse().unwrap()))
        );
        assert!(parse_cidr("10.0.0.1").is_err());
        assert_eq!(normalize_hostname("  "), None);
        assert_eq!(normalize_hostname(" Node-A\n"), Some("node-a".into()));
    }
}
