//! `show::rows` over every golden case (compiled with its `# args:` flags, on the node the
//! compiler saw): each row accounts for all new connections (its backends' shares and what
//! happens to the rest add up to exactly 1); behind a shared source-hash or Maglev chain the
//! shares are the frontend's slots per endpoint over the chain's slot count, as counted here
//! from the chain's map; and a LoadBalancer address with `loadBalancerSourceRanges` is traced
//! from a client the ranges allow, so it is DNATed, not dropped.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kube_nft_compiler::ir::{names, ElemData, Family, L4Proto, Table, Value};
use kube_nft_compiler::show::{self, Backend, Frontend, Row};
use kube_nft_compiler::trace::{Env, Ratio};
use kube_nft_testkit::golden::{cases, compiled_case, shown};

/// The set of (LoadBalancer address, protocol, port, allowed source) `lower` writes.
const FIREWALL_ALLOW: &str = "firewall-allow";

fn total(row: &Row) -> Option<Ratio> {
    let shares = row.backends.iter().map(|b| b.share);
    let rest = row.otherwise.iter().map(|o| o.1);
    shares.chain(rest).try_fold(Ratio::ZERO, Ratio::checked_add)
}

/// The frontend's slots per endpoint over K in the maps of `table`'s shared source-hash and
/// Maglev chains (named `…-<scheduler>-<K>`), if it has any.
fn slot_shares(table: &Table, f: &Frontend) -> Option<Vec<Backend>> {
    let head: Vec<Value> = match f.addr {
        Some(a) => vec![Value::Addr(a), Value::Proto(f.proto), Value::Port(f.port)],
        None => vec![Value::Proto(f.proto), Value::Port(f.port)],
    };
    let hashed = (table.sets.iter()).filter(|(name, _)| {
        names::is_dnat_chain(name) && (name.contains("-source-hash-") || name.contains("-maglev-"))
    });
    for (name, map) in hashed {
        let k: u64 = name.rsplit_once('-')?.1.parse().ok()?;
        let mut slots: BTreeMap<(IpAddr, u16), u64> = BTreeMap::new();
        for e in map
            .elements
            .iter()
            .filter(|e| e.key.len() == head.len() + 1)
        {
            if let (true, Some(ElemData::Values(v))) = (e.key.starts_with(&head), &e.data) {
                if let [Value::Addr(a), Value::Port(p)] = v[..] {
                    *slots.entry((a, p)).or_default() += 1;
                }
            }
        }
        if !slots.is_empty() {
            let share = |((addr, port), n)| Backend {
                addr,
                port,
                share: Ratio::new(n, k),
            };
            return Some(slots.into_iter().map(share).collect());
        }
    }
    None
}

#[test]
fn every_row_accounts_for_all_new_connections() {
    let (mut hashed, mut ranged) = (0, 0);
    for case in cases() {
        let compiled = compiled_case(&case);
        let env = Env::from_graph(&compiled.graph);
        // The frontends `loadBalancerSourceRanges` guard: the head of a `firewall-allow` key.
        let guarded: Vec<(Family, Value, L4Proto, u16)> = (compiled.ruleset.tables.iter())
            .flat_map(|t| t.sets.get(FIREWALL_ALLOW).map(|s| (t.family, s)))
            .flat_map(|(family, s)| s.elements.iter().map(move |e| (family, e)))
            .filter_map(|(family, e)| match e.key[..] {
                [ref addr, Value::Proto(p), Value::Port(port), _] => {
                    Some((family, addr.clone(), p, port))
                }
                _ => None,
            })
            .collect();
        for row in show::rows(&compiled.ruleset, &env) {
            let case = shown(&case);
            if row.frontend.addr.is_none() && row.otherwise.is_empty() && row.backends.is_empty() {
                // A NodePort on a node without an address of the family: not traced.
                continue;
            }
            assert_eq!(total(&row), Some(Ratio::ONE), "{case}: {row:?}");
            let table = compiled
                .ruleset
                .table(row.frontend.family)
                .expect("its table");
            if let Some(shares) = slot_shares(table, &row.frontend) {
                hashed += 1;
                assert_eq!(row.backends, shares, "{case}: {row:?}");
            }
            let f = &row.frontend;
            let key = |a| (f.family, Value::Addr(a), f.proto, f.port);
            if f.addr.is_some_and(|a| guarded.contains(&key(a))) {
                ranged += 1;
                assert!(!row.backends.is_empty(), "{case}: {row:?}");
                let dropped = row.otherwise.iter().any(|(what, _)| what == "drop");
                assert!(!dropped, "{case}: {row:?}");
            }
        }
    }
    assert!(
        hashed >= 4 && ranged >= 4,
        "{hashed} hashed rows, {ranged} ranged"
    );
}

#[test]
fn every_address_row_says_which_way_in_it_is() {
    use kube_nft_compiler::show::Via;
    let mut seen = BTreeMap::new();
    for case in cases() {
        let compiled = compiled_case(&case);
        let env = Env::from_graph(&compiled.graph);
        for row in show::rows(&compiled.ruleset, &env) {
            let f = &row.frontend;
            let Some(addr) = f.addr else {
                assert_eq!(f.via, Via::NodePort, "{}: {f:?}", shown(&case));
                continue;
            };
            // The Service the row names, and what that address is to it.
            let svc = (compiled.graph.services.iter())
                .find(|s| {
                    f.service
                        .starts_with(&format!("{}/{}:", s.namespace, s.name))
                })
                .unwrap_or_else(|| panic!("{}: no Service for {f:?}", shown(&case)));
            let want = if svc.cluster_ips.contains(&addr) {
                Via::ClusterIp
            } else if svc.external_ips.contains(&addr) {
                Via::ExternalIp
            } else {
                assert!(svc.lb_ips.contains(&addr), "{}: {f:?}", shown(&case));
                Via::LoadBalancer
            };
            assert_eq!(f.via, want, "{}: {f:?}", shown(&case));
            // The Service's name is the label alone, without the way-in words.
            assert!(!f.service.ends_with(" IP"), "{}: {f:?}", shown(&case));
            *seen.entry(want).or_insert(0) += 1;
        }
    }
    // The goldens have each way in.
    assert_eq!(seen.len(), 3, "{seen:?}");
}
