//! The local-traffic detector of each family, as kube-proxy's `GetLocalTrafficDetectors`
//! builds it (`pkg/proxy/util/localdetector.go`): `ClusterCIDR` and `NodeCIDR` match the source
//! against the first prefix of the family (from `--cluster-cidr` or this Node's `podCIDRs`), so
//! a family without one has no detector; the two interface modes match `iifname` and serve both
//! families alike. Without a detector kube-proxy makes no decision based on "from a pod": no
//! ClusterIP masquerade rule (unless `--masquerade-all`) and no pod short-circuit for
//! `externalTrafficPolicy: Local`; so does kube-nft.

use crate::config::LocalMode;
use crate::graph::{LocalDetector, NodeInfo};
use crate::ir::{ifname_problem, Family};
use crate::{Config, Diagnostic};

/// What a family loses without a detector, for diagnostics.
const WITHOUT: &str = "ClusterIP traffic is not masqueraded for coming from outside the pods, \
                       and pods reach externalTrafficPolicy: Local Services through local \
                       endpoints only (as kube-proxy without a detector)";

/// The detector of each family that gets one, in family order.
pub(super) fn local_detectors(
    node: &NodeInfo,
    config: &Config,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Family, LocalDetector)> {
    let families = [Family::Ip, Family::Ip6];
    let first_of = |nets: &[ipnet::IpNet], family| {
        nets.iter()
            .copied()
            .find(|net| Family::of_net(net) == family)
    };
    match config.detect_local_mode {
        LocalMode::ClusterCidr => families
            .into_iter()
            .filter_map(|f| {
                Some((
                    f,
                    LocalDetector::ClusterCidr(first_of(&config.cluster_cidrs, f)?),
                ))
            })
            .collect(),
        LocalMode::NodeCidr => {
            let detectors: Vec<_> = families
                .into_iter()
                .filter_map(|f| Some((f, LocalDetector::NodeCidr(first_of(&node.pod_cidrs, f)?))))
                .collect();
            // A single-stack cluster gives nodes pod CIDRs of one family only; that is no news.
            // A node with none at all (not allocated yet, or no Node object) is: kube-proxy waits
            // for the allocation, a compile cannot.
            if detectors.is_empty() {
                diags.push(Diagnostic::new(
                    "Node",
                    "",
                    node.name.clone().unwrap_or_default(),
                    "spec.podCIDRs",
                    format!(
                        "no pod CIDR, which --detect-local-mode NodeCIDR needs: no local-traffic \
                         detector, so {WITHOUT}"
                    ),
                ));
            }
            detectors
        }
        LocalMode::BridgeInterface | LocalMode::InterfaceNamePrefix => {
            let prefix = config.detect_local_mode == LocalMode::InterfaceNamePrefix;
            let (flag, name) = if prefix {
                (
                    "pod-interface-name-prefix",
                    &config.pod_interface_name_prefix,
                )
            } else {
                ("pod-bridge-interface", &config.pod_bridge_interface)
            };
            let problem = match name {
                None => Some(format!(
                    "not set, which --detect-local-mode {} needs",
                    config.detect_local_mode
                )),
                Some(name) => ifname_problem(name, prefix).map(|p| format!("{name:?} {p}")),
            };
            if let Some(problem) = problem {
                diags.push(Diagnostic::new(
                    "Config",
                    "",
                    "detect-local-mode",
                    flag,
                    format!("{problem}: no local-traffic detector, so {WITHOUT}"),
                ));
                return Vec::new();
            }
            let name = name.clone().unwrap_or_default();
            let detector = if prefix {
                LocalDetector::InterfacePrefix(name)
            } else {
                LocalDetector::Interface(name)
            };
            families
                .into_iter()
                .map(|f| (f, detector.clone()))
                .collect()
        }
    }
}
