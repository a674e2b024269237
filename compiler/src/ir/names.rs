//! Names of every kernel object the compiler creates. All name construction lives here so the
//! rules for legal, unique and readable names are in one place.
//!
//! nft identifiers are `[a-zA-Z_][a-zA-Z0-9/\-_.]*` and the kernel caps chain and set names at
//! 256 bytes including the NUL (`NFT_CHAIN_MAXNAMELEN`, `NFT_NAME_MAXLEN`). Per-service names are
//! `<prefix>-<HASH>-<ns>/<name>/<proto>/<port>` (kube-proxy's scheme, so operators recognise
//! them): `HASH` is the first 8 characters of base32(SHA-256(body)) over the *untruncated*
//! body, so two bodies that truncate to the same text still get different names. Namespace and
//! Service names are DNS labels (`[a-z0-9-]`), ports are numbers, and an IPv6 address has its `:`
//! replaced by `.` (`:` is not legal in an identifier).

use sha2::{Digest, Sha256};

use super::L4Proto;

/// Longest body we keep: 255 usable bytes, minus the longest prefix (`affinity-`, 9) and the
/// hash with its separator (9), with room to spare.
const MAX_BODY: usize = 230;

/// The table name, the same in both families.
pub const TABLE: &str = "kube-nft";

/// The prefix of the further dispatch tables (`--dispatch-tables` above 1): `kube-nft-dispatch-1`
/// and on; the main table [`TABLE`] is part 0.
const DISPATCH_TABLE_PREFIX: &str = "kube-nft-dispatch-";

/// The name of part `i` of the Service dispatch: [`TABLE`] for 0, `kube-nft-dispatch-<i>` after.
pub fn dispatch_table(i: u16) -> String {
    if i == 0 {
        TABLE.to_owned()
    } else {
        format!("{DISPATCH_TABLE_PREFIX}{i}")
    }
}

/// Whether a table of this name is one of ours: [`TABLE`] or a dispatch table (what read-back,
/// cleanup and the monitor of foreign changes look at; nothing else is ever touched).
pub fn is_ours(table: &str) -> bool {
    table == TABLE
        || table.strip_prefix(DISPATCH_TABLE_PREFIX).is_some_and(|i| {
            !i.is_empty() && !i.starts_with('0') && i.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The words after a service port's label in the comment of an element keyed by an
/// externalIP (kube-proxy's iptables mode writes the same).
pub const EXTERNAL_IP_COMMENT: &str = "external IP";
/// The same for a LoadBalancer IP.
pub const LOADBALANCER_IP_COMMENT: &str = "loadbalancer IP";

/// `frontend . backend . proto . port`, filled from the packet path: new connections.
pub const BACKEND_CONNECTIONS: &str = "backend-connections";
/// `frontend . backend . proto . port`, filled from the packet path: packets and bytes.
pub const BACKEND_TRAFFIC: &str = "backend-traffic";
/// Seconds a backend counter lives after its last packet (or new connection).
pub const BACKEND_COUNTER_TIMEOUT: u32 = 3600;

/// Identifies one service port: `ns/name/proto/port`.
#[derive(Clone, Copy, Debug)]
pub struct ServicePortId<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Service name.
    pub name: &'a str,
    /// Protocol.
    pub proto: L4Proto,
    /// Service port number.
    pub port: u16,
}

impl ServicePortId<'_> {
    /// `ns/name/proto/port`.
    pub fn body(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace, self.name, self.proto, self.port
        )
    }
}

/// Chain holding the Cluster-policy endpoint list of a service port.
pub fn service_chain(id: &ServicePortId<'_>) -> String {
    hashed("service", &id.body())
}

/// Chain holding the node-local endpoint list of a service port.
pub fn local_chain(id: &ServicePortId<'_>) -> String {
    hashed("local", &id.body())
}

/// Chain for traffic arriving at a NodePort, externalIP or LoadBalancer IP.
pub fn external_chain(id: &ServicePortId<'_>) -> String {
    hashed("external", &id.body())
}

/// Whether `name` is one of a service port's own chains (`service-`, `local-`, `external-`
/// followed by a hash). Such a chain may legitimately be unreachable: when two Services claim
/// one address and port, the dispatch element goes to one of them and the other's entry chain
/// stays in the table, unused, until the claim is resolved.
pub fn is_service_port_chain(name: &str) -> bool {
    ["service-", "local-", "external-"].iter().any(|prefix| {
        name.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() > 9
                && rest.as_bytes()[8] == b'-'
                && rest[..8].bytes().all(|b| b.is_ascii_alphanumeric())
        })
    })
}

/// The way into a shared DNAT chain (see [`dnat_chain`]): which frontends lead there and which
/// endpoint list it picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DnatEntry {
    /// A ClusterIP, picking from the Cluster list (`clusterip-…`).
    ClusterIp,
    /// A ClusterIP with `internalTrafficPolicy: Local`, picking from the local list
    /// (`clusterip-local-…`).
    ClusterIpLocal,
    /// An externalIP or LoadBalancer IP (`external-…`) or a NodePort (`nodeport-…`) with
    /// `externalTrafficPolicy: Cluster`.
    External {
        /// A NodePort rather than an address.
        nodeport: bool,
    },
    /// The same with `externalTrafficPolicy: Local`, for traffic from this node (its pods and
    /// itself), which still goes to every endpoint (`external-from-node-…`,
    /// `nodeport-from-node-…`).
    ExternalFromNode {
        /// A NodePort rather than an address.
        nodeport: bool,
    },
    /// The same with `externalTrafficPolicy: Local`, for clients elsewhere: the local list
    /// (`external-local-…`, `nodeport-local-…`).
    ExternalLocal {
        /// A NodePort rather than an address.
        nodeport: bool,
    },
}

impl DnatEntry {
    /// The name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            DnatEntry::ClusterIp => "clusterip",
            DnatEntry::ClusterIpLocal => "clusterip-local",
            DnatEntry::External { nodeport: false } => "external",
            DnatEntry::External { nodeport: true } => "nodeport",
            DnatEntry::ExternalFromNode { nodeport: false } => "external-from-node",
            DnatEntry::ExternalFromNode { nodeport: true } => "nodeport-from-node",
            DnatEntry::ExternalLocal { nodeport: false } => "external-local",
            DnatEntry::ExternalLocal { nodeport: true } => "nodeport-local",
        }
    }
}

/// The scheduler words of shared DNAT chain names.
const DNAT_SCHEDULERS: [&str; 3] = ["random", "source-hash", "maglev"];

/// A shared DNAT chain: `<entry>-<scheduler>-<K>`, e.g. `clusterip-random-3`. Every service port
/// entered the same way, balanced by the same scheduler over K endpoints uses the same chain; the
/// endpoints themselves are map data (see `lower`).
pub fn dnat_chain(entry: DnatEntry, scheduler: &str, endpoints: usize) -> String {
    debug_assert!(DNAT_SCHEDULERS.contains(&scheduler));
    format!("{}-{scheduler}-{endpoints}", entry.prefix())
}

/// Whether `name` is a shared DNAT chain ([`dnat_chain`]). Like a service port chain it may be
/// unreachable: its only user lost a shared address to another Service.
pub fn is_dnat_chain(name: &str) -> bool {
    let Some((head, count)) = name.rsplit_once('-') else {
        return false;
    };
    !count.is_empty()
        && count.bytes().all(|b| b.is_ascii_digit())
        && DNAT_SCHEDULERS.iter().any(|s| {
            head.strip_suffix(s)
                .and_then(|entry| entry.strip_suffix('-'))
                .is_some_and(|entry| {
                    [
                        "clusterip",
                        "clusterip-local",
                        "external",
                        "nodeport",
                        "external-from-node",
                        "nodeport-from-node",
                        "external-local",
                        "nodeport-local",
                    ]
                    .contains(&entry)
                })
        })
}

/// The ClientIP affinity map of one of a service port's endpoint lists (`local`: the
/// node-local one) for the endpoints listening on `target_port`: client address → endpoint
/// address. One map per list and target port (almost always one per list), never one per
/// endpoint: every rule naming a set makes the kernel search the table's sets by name.
pub fn affinity_map(id: &ServicePortId<'_>, local: bool, target_port: u16) -> String {
    let list = if local { "local" } else { "cluster" };
    hashed("affinity", &format!("{}__{list}/{target_port}", id.body()))
}

/// `prefix-HASH-body`, with the body truncated (ending in `...`) if needed.
fn hashed(prefix: &str, body: &str) -> String {
    let hash = hash8(body);
    let shown = if body.len() > MAX_BODY {
        // Bodies are ASCII (DNS labels, digits, `.`/`/`), so byte slicing is on a char boundary.
        format!("{}...", &body[..MAX_BODY - 3])
    } else {
        body.to_string()
    };
    format!("{prefix}-{hash}-{shown}")
}

/// First 8 characters of the RFC 4648 base32 encoding of SHA-256(text).
pub fn hash8(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    // 8 base32 characters are 40 bits: the first 5 bytes.
    let mut bits: u64 = 0;
    for b in &digest[..5] {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..8)
        .map(|i| ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// Whether `name` is a legal nft identifier within the kernel's length limit.
pub fn is_legal(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() < 256
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_tables_are_named_from_the_main_one() {
        assert_eq!(dispatch_table(0), "kube-nft");
        assert_eq!(dispatch_table(3), "kube-nft-dispatch-3");
        for i in [0, 1, 9, 64] {
            assert!(is_ours(&dispatch_table(i)), "{i}");
        }
        for other in [
            "kube-proxy",
            "kube-nft-dispatch-",
            "kube-nft-dispatch-03",
            "kube-nft-x",
        ] {
            assert!(!is_ours(other), "{other}");
        }
    }

    #[test]
    fn hash_matches_kube_proxy_vectors() {
        // Vectors from kube-proxy's naming tests, recomputed independently.
        assert_eq!(hash8("testing/service/tcp/http"), "P4ZYZVCF");
        assert_eq!(hash8("testing/service/tcp/https"), "LZBRENCP");
        assert_eq!(hash8("testing/service/tcp/http__10.180.0.1/80"), "JO2XBXZR");
        assert_eq!(hash8("ns1/svc1/tcp/p80"), "ULMVA6XW");
        assert_eq!(hash8("ns1/svc1/tcp/p80__10.180.0.1/80"), "5OJB2KTY");
    }

    #[test]
    fn names_are_legal_and_truncated() {
        let long = "a".repeat(63);
        let id = ServicePortId {
            namespace: &long,
            name: &long,
            proto: L4Proto::Sctp,
            port: 65535,
        };
        let a = affinity_map(&id, true, 65535);
        assert!(is_legal(&a), "{a}");
        assert_ne!(a, affinity_map(&id, false, 65535));
        assert_ne!(a, affinity_map(&id, true, 65534));
        // Two different ports that truncate identically keep distinct names.
        let long_ns = "n".repeat(200);
        let id1 = ServicePortId {
            namespace: &long_ns,
            name: &long,
            proto: L4Proto::Tcp,
            port: 1,
        };
        let id2 = ServicePortId { port: 2, ..id1 };
        let (c1, c2) = (service_chain(&id1), service_chain(&id2));
        assert!(c1.ends_with("..."));
        assert_ne!(c1, c2);
        assert!(is_legal(&c1));
        assert!(!is_legal("9abc"));
        assert!(!is_legal("a:b"));
    }
}
