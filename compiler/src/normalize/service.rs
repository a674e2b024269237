//! One Service: whether it is ours, its addresses, ports and per-service knobs, with each port's
//! endpoints categorized by `endpoints`. Field defaults follow the API server's (protocol TCP,
//! type ClusterIP, affinity timeout 10800 s) so that a hand-written snapshot behaves like one
//! read back from a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service as K8sService, ServiceSpec};

use super::address::{parse_cidr, parse_ip};
use super::endpoints::{self, Slice};
use super::{Key, Obj};
use crate::config::{parse_scheduler, scheduler_name};
use crate::graph::{NodeInfo, Scheduler, Service, ServicePort};
use crate::ir::{Family, L4Proto};
use crate::{Config, Diagnostic};

/// Label naming the proxy that owns a Service (`--service-proxy-name`).
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a Service headless regardless of its ClusterIP.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// kube-nft's own annotation choosing the load-balancing scheduler.
const SCHEDULER_ANNOTATION: &str = "kube-nft.io/scheduler";
/// The API server's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The API server's upper bound for the affinity timeout (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86400;

/// `spec.type`, with the API default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl Type {
    fn has_node_ports(self) -> bool {
        matches!(self, Type::NodePort | Type::LoadBalancer)
    }
}

/// One Service as read from its object alone, before its endpoints are known: everything that
/// does not depend on the node or on other objects. The daemon keeps this compact form instead of
/// the Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceIn {
    // No namespace and name: the store's key has them.
    /// No `spec.selector`: its legacy Endpoints are mirrored into slices.
    pub(super) selectorless: bool,
    scheduler: Scheduler,
    affinity_timeout: Option<u32>,
    external_local: bool,
    internal_local: bool,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
    /// `(name, proto, port, node_port)`, sorted by (proto, port); empty when no port is valid.
    ports: Vec<(String, L4Proto, u16, Option<u16>)>,
    /// `spec.healthCheckNodePort` of a LoadBalancer with `externalTrafficPolicy: Local`.
    health_check_node_port: Option<u16>,
}

/// Reads one Service, or returns `None` when it is not ours or has nothing to program whatever
/// its endpoints (ExternalName, headless, no valid ClusterIP). A Service that returns `Some`
/// consumes its slices (and reports their problems) even when none of its ports is valid,
/// exactly as the whole-snapshot pipeline always did.
pub(super) fn read(
    svc: &K8sService,
    obj: &Obj,
    config: &Config,
    diags: &mut Vec<Diagnostic>,
) -> Option<ServiceIn> {
    if !is_ours(svc, config) {
        return None;
    }
    let spec = svc.spec.as_ref()?;
    let ty = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => Type::ClusterIP,
        Some("NodePort") => Type::NodePort,
        Some("LoadBalancer") => Type::LoadBalancer,
        Some("ExternalName") => return None,
        Some(other) => {
            diags.push(obj.diag(
                "spec.type",
                format!("unknown type {other:?}; treated as ClusterIP"),
            ));
            Type::ClusterIP
        }
    };
    if is_headless(spec) {
        return None;
    }
    if obj.name.is_empty() {
        diags.push(obj.diag("metadata.name", "Service has no name; skipped"));
        return None;
    }

    let cluster_ips = cluster_ips(spec, obj, diags);
    if cluster_ips.is_empty() {
        return None;
    }
    let external_ips = ip_list(
        spec.external_ips.as_deref().unwrap_or_default(),
        "spec.externalIPs",
        obj,
        diags,
    );
    let (lb_ips, source_ranges) = if ty == Type::LoadBalancer {
        (lb_ips(svc, obj, diags), source_ranges(spec, obj, diags))
    } else {
        (Vec::new(), Vec::new())
    };

    let externally_reachable = ty.has_node_ports() || !external_ips.is_empty();
    let external_local =
        spec.external_traffic_policy.as_deref() == Some("Local") && externally_reachable;
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    // kube-proxy reads healthCheckNodePort only where it serves the health check
    // (`apiservice.NeedsHealthCheck`): a LoadBalancer with externalTrafficPolicy Local.
    let mut health_check_node_port = None;
    if let Some(port) = spec.health_check_node_port.filter(|p| *p != 0) {
        if ty == Type::LoadBalancer && external_local {
            health_check_node_port = port_number(port);
            if health_check_node_port.is_none() {
                diags.push(obj.diag(
                    "spec.healthCheckNodePort",
                    format!("{port} is not in 1-65535; no health check is served"),
                ));
            }
        } else {
            let why = if ty == Type::LoadBalancer {
                "its externalTrafficPolicy is Cluster"
            } else {
                "it is not of type LoadBalancer"
            };
            diags.push(obj.diag(
                "spec.healthCheckNodePort",
                format!(
                    "{port} is ignored, as by kube-proxy: a health-check NodePort belongs to a \
                     LoadBalancer with externalTrafficPolicy Local, and {why}"
                ),
            ));
        }
    }
    let selectorless = spec.selector.as_ref().is_none_or(|s| s.is_empty());

    let ports = ports(spec, ty, obj, diags);
    // The per-service knobs are only read (and reported) for a Service that is programmed.
    let (scheduler, affinity_timeout) = if ports.is_empty() {
        if spec.ports.as_ref().is_none_or(Vec::is_empty) {
            diags.push(obj.diag("spec.ports", "Service has no ports; skipped"));
        }
        (Scheduler::Random, None)
    } else {
        (
            scheduler(svc, obj, config, diags),
            affinity_timeout(spec, obj, diags),
        )
    };

    Some(ServiceIn {
        selectorless,
        scheduler,
        affinity_timeout,
        external_local,
        internal_local,
        cluster_ips,
        external_ips,
        lb_ips,
        source_ranges,
        ports,
        health_check_node_port,
    })
}

/// The Service for this node: each port's endpoints categorized from the Service's slices.
/// `None` when no port is valid.
pub(super) fn assemble(
    key: &Key,
    svc: &ServiceIn,
    slices: &[&Slice],
    node: &NodeInfo,
) -> Option<Service> {
    if svc.ports.is_empty() {
        return None;
    }
    let ports = svc
        .ports
        .iter()
        .map(|(name, proto, port, node_port)| {
            let endpoints = endpoints::categorize(slices, name, *proto, node);
            ServicePort {
                name: name.clone(),
                proto: *proto,
                port: *port,
                node_port: *node_port,
                cluster: endpoints.cluster.into(),
                local: endpoints.local.into(),
                near: endpoints.near.into(),
            }
        })
        .collect();
    Some(Service {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        scheduler: svc.scheduler,
        affinity_timeout: svc.affinity_timeout,
        external_local: svc.external_local,
        internal_local: svc.internal_local,
        cluster_ips: svc.cluster_ips.clone(),
        external_ips: svc.external_ips.clone(),
        lb_ips: svc.lb_ips.clone(),
        source_ranges: svc.source_ranges.clone(),
        ports,
        health_check_node_port: svc.health_check_node_port,
        // Only a health check reads them; every other Service is spared the walk.
        local_ready_endpoints: if svc.health_check_node_port.is_some() {
            endpoints::local_ready(slices, node)
        } else {
            Vec::new()
        },
    })
}

/// `--service-proxy-name` selection and the headless label, read from labels only.
fn is_ours(svc: &K8sService, config: &Config) -> bool {
    let labels = svc.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    if label(HEADLESS_LABEL).is_some() {
        return false;
    }
    label(PROXY_NAME_LABEL) == config.service_proxy_name.as_deref()
}

fn is_headless(spec: &ServiceSpec) -> bool {
    let first = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .or(spec.cluster_ip.as_ref());
    matches!(first.map(String::as_str), None | Some("") | Some("None"))
}

/// `spec.clusterIPs` (or the older `spec.clusterIP`), at most one per family.
fn cluster_ips(spec: &ServiceSpec, obj: &Obj, diags: &mut Vec<Diagnostic>) -> Vec<IpAddr> {
    let (texts, field): (Vec<&String>, &str) = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => (ips.iter().collect(), "spec.clusterIPs"),
        _ => (spec.cluster_ip.iter().collect(), "spec.clusterIP"),
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, text) in texts.into_iter().enumerate() {
        let field = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_owned()
        };
        let Some(ip) = parse_one(text, &field, obj, diags) else {
            continue;
        };
        if ips.iter().any(|have| Family::of(*have) == Family::of(ip)) {
            diags.push(obj.diag(field, "second ClusterIP of the same family; skipped"));
            continue;
        }
        ips.push(ip);
    }
    ips.sort();
    if ips.is_empty() {
        diags.push(obj.diag(field, "no valid ClusterIP; Service skipped"));
    }
    ips
}

/// Parses one address, reporting lenient reads and skipping invalid ones.
fn parse_one(text: &str, field: &str, obj: &Obj, diags: &mut Vec<Diagnostic>) -> Option<IpAddr> {
    match parse_ip(text) {
        Some(ip) => {
            if ip.sloppy {
                diags.push(obj.diag(
                    field,
                    format!("leading zeros in IPv4 address; read as {}", ip.value),
                ));
            }
            Some(ip.value)
        }
        None => {
            diags.push(obj.diag(field, format!("invalid IP address {text:?}; skipped")));
            None
        }
    }
}

/// A list of addresses (`spec.externalIPs`), sorted and deduplicated.
fn ip_list(texts: &[String], field: &str, obj: &Obj, diags: &mut Vec<Diagnostic>) -> Vec<IpAddr> {
    let set: BTreeSet<IpAddr> = texts
        .iter()
        .enumerate()
        .filter_map(|(i, text)| parse_one(text, &format!("{field}[{i}]"), obj, diags))
        .collect();
    set.into_iter().collect()
}

/// Ingress IPs that the load balancer delivers with the VIP as destination (`ipMode` unset or
/// `VIP`). `Proxy` ones are left to the load balancer; hostname-only entries have no IP.
fn lb_ips(svc: &K8sService, obj: &Obj, diags: &mut Vec<Diagnostic>) -> Vec<IpAddr> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut set = BTreeSet::new();
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        let vip = matches!(entry.ip_mode.as_deref(), None | Some("VIP"));
        let Some(text) = entry.ip.as_deref().filter(|ip| vip && !ip.is_empty()) else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        set.extend(parse_one(text, &field, obj, diags));
    }
    set.into_iter().collect()
}

/// `spec.loadBalancerSourceRanges`: trimmed (validation once allowed padding); a bare address
/// is a single-address range.
fn source_ranges(spec: &ServiceSpec, obj: &Obj, diags: &mut Vec<Diagnostic>) -> Vec<IpNet> {
    let mut set = BTreeSet::new();
    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    for (i, text) in ranges.iter().enumerate() {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        match parse_cidr(text.trim(), true) {
            Some(net) => {
                if net.sloppy {
                    diags.push(obj.diag(
                        &field,
                        format!("leading zeros in IPv4 prefix; read as {}", net.value),
                    ));
                }
                set.insert(net.value);
            }
            None => diags.push(obj.diag(field, format!("invalid CIDR {text:?}; skipped"))),
        }
    }
    set.into_iter().collect()
}

/// Valid ports as `(name, proto, port, node_port)`, sorted by (proto, port), first of each
/// (proto, port) kept.
fn ports(
    spec: &ServiceSpec,
    ty: Type,
    obj: &Obj,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(String, L4Proto, u16, Option<u16>)> {
    let mut out: BTreeMap<(L4Proto, u16), (String, Option<u16>)> = BTreeMap::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let Some(proto) = protocol(
            p.protocol.as_deref(),
            &format!("spec.ports[{i}].protocol"),
            obj,
            diags,
        ) else {
            continue;
        };
        let Some(port) = port_number(p.port) else {
            diags.push(obj.diag(
                format!("spec.ports[{i}].port"),
                format!("port {} is not in 1-65535; port skipped", p.port),
            ));
            continue;
        };
        let node_port = match p.node_port {
            Some(n) if ty.has_node_ports() && n != 0 => match port_number(n) {
                Some(n) => Some(n),
                None => {
                    diags.push(obj.diag(
                        format!("spec.ports[{i}].nodePort"),
                        format!("nodePort {n} is not in 1-65535; no NodePort"),
                    ));
                    None
                }
            },
            _ => None,
        };
        if out.contains_key(&(proto, port)) {
            diags.push(obj.diag(
                format!("spec.ports[{i}]"),
                format!("duplicate port {port}/{proto}; skipped"),
            ));
            continue;
        }
        let name = p.name.clone().unwrap_or_default();
        out.insert((proto, port), (name, node_port));
    }
    out.into_iter()
        .map(|((proto, port), (name, node_port))| (name, proto, port, node_port))
        .collect()
}

/// A transport protocol with the API default (TCP); unsupported ones are reported.
pub(super) fn protocol(
    text: Option<&str>,
    field: &str,
    obj: &Obj,
    diags: &mut Vec<Diagnostic>,
) -> Option<L4Proto> {
    match text {
        None | Some("") | Some("TCP") => Some(L4Proto::Tcp),
        Some("UDP") => Some(L4Proto::Udp),
        Some("SCTP") => Some(L4Proto::Sctp),
        Some(other) => {
            diags.push(obj.diag(
                field,
                format!("unsupported protocol {other:?}; port skipped"),
            ));
            None
        }
    }
}

/// A port number in 1..=65535.
pub(super) fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|n| *n != 0)
}

/// The annotation's scheduler; without it (or with a value it cannot use) the node's
/// `--scheduler`, so that the annotation only ever overrides the node default.
fn scheduler(
    svc: &K8sService,
    obj: &Obj,
    config: &Config,
    diags: &mut Vec<Diagnostic>,
) -> Scheduler {
    let annotations = svc.metadata.annotations.as_ref();
    let Some(value) = annotations.and_then(|a| a.get(SCHEDULER_ANNOTATION)) else {
        return config.default_scheduler;
    };
    parse_scheduler(value).unwrap_or_else(|message| {
        diags.push(obj.diag(
            format!("metadata.annotations[{SCHEDULER_ANNOTATION}]"),
            format!(
                "{message}; using {}",
                scheduler_name(config.default_scheduler)
            ),
        ));
        config.default_scheduler
    })
}

fn affinity_timeout(spec: &ServiceSpec, obj: &Obj, diags: &mut Vec<Diagnostic>) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => return None,
        Some("ClientIP") => {}
        Some(other) => {
            diags.push(obj.diag(
                "spec.sessionAffinity",
                format!("unknown session affinity {other:?}; no affinity"),
            ));
            return None;
        }
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match timeout {
        None => Some(DEFAULT_AFFINITY_TIMEOUT),
        Some(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => u32::try_from(t).ok(),
        Some(t) => {
            diags.push(obj.diag(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!(
                    "timeout {t} is not in 1-{MAX_AFFINITY_TIMEOUT}; using default \
                     {DEFAULT_AFFINITY_TIMEOUT}"
                ),
            ));
            Some(DEFAULT_AFFINITY_TIMEOUT)
        }
    }
}
