//! Round trips through our own encoder: every IR form, encoded into a batch, decodes back to
//! itself. The batch stands in for a kernel dump; the only kernel behaviour simulated is the
//! naming of anonymous maps (`__map%d` becomes `__map0`, …), which the rule finds by name.

use std::collections::BTreeMap;

use kube_nft_compiler::ir::{self, DataType, Family};
use kube_nft_testkit::every_form;

use super::super::encode::Batch;
use super::super::sys::*;
use super::*;

/// The nf_tables messages of a transaction, BATCH_BEGIN and BATCH_END left out.
fn messages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
        if ty >> 8 == NFNL_SUBSYS_NFTABLES {
            out.push(&bytes[at..at + len]);
        }
        at += len;
    }
    out
}

/// Decodes the messages of a batch that creates whole tables, the way `readback` assembles a
/// dump: tables, chains, sets with their elements, then rules.
fn decode_batch(bytes: &[u8]) -> ir::Ruleset {
    let mut tables: Vec<ir::Table> = Vec::new();
    let mut sets: BTreeMap<(Family, String), (ir::Set, bool, Vec<RawElement>)> = BTreeMap::new();
    let mut anon_maps = AnonMaps::new();
    let mut anon_count = 0;
    for bytes in messages(bytes) {
        let msg = Message::parse(bytes).unwrap();
        let family = msg.ir_family().unwrap();
        match msg.msg_type {
            NFT_MSG_NEWTABLE => tables.push(table(&msg).unwrap()),
            NFT_MSG_NEWCHAIN => {
                let decoded = chain(&msg).unwrap();
                let table = tables
                    .iter_mut()
                    .rev()
                    .find(|t| t.family == family)
                    .unwrap();
                assert_eq!(decoded.table, table.name);
                table
                    .chains
                    .insert(decoded.chain.name.clone(), decoded.chain);
            }
            NFT_MSG_NEWSET => {
                let mut decoded = set(&msg).unwrap();
                if decoded.anonymous {
                    // The kernel's naming of `__map%d`.
                    decoded.set.name = format!("__map{anon_count}");
                    anon_count += 1;
                }
                let key = (family, decoded.set.name.clone());
                sets.insert(key, (decoded.set, decoded.anonymous, Vec::new()));
            }
            NFT_MSG_NEWSETELEM => {
                let attrs = msg.attrs().unwrap();
                let mut name = attrs.strz(NFTA_SET_ELEM_LIST_SET).unwrap().unwrap();
                if name == "__map%d" {
                    name = format!("__map{}", anon_count - 1);
                }
                let (set, _, raw) = sets.get_mut(&(family, name)).unwrap();
                raw.extend(raw_elements(&msg, set).unwrap());
            }
            NFT_MSG_NEWRULE => {
                // Anonymous maps are complete once their rule comes.
                for ((_, name), (set, anonymous, raw)) in &sets {
                    if *anonymous && !anon_maps.contains_key(name) {
                        let elements = elements(set, raw.clone()).unwrap();
                        let targets = elements
                            .iter()
                            .map(|e| match e.data.as_ref().unwrap() {
                                ElemData::Values(v) => match v.as_slice() {
                                    [Value::Addr(a), Value::Port(p)] => (*a, *p),
                                    other => panic!("{other:?}"),
                                },
                                other => panic!("{other:?}"),
                            })
                            .collect();
                        anon_maps.insert(name.clone(), targets);
                    }
                }
                // The encoder names the map `__map%d` and finds it by id; the kernel lists the
                // real name. This rule's map is the latest one.
                let mut maps = anon_maps.clone();
                if anon_count > 0 {
                    let latest = anon_maps[&format!("__map{}", anon_count - 1)].clone();
                    maps.insert("__map%d".into(), latest);
                }
                let decoded = rule(&msg, &maps).unwrap();
                let body = decoded
                    .body
                    .unwrap_or_else(|e| panic!("{}: {e}", decoded.chain));
                let table = tables
                    .iter_mut()
                    .rev()
                    .find(|t| t.family == family)
                    .unwrap();
                table
                    .chains
                    .get_mut(&decoded.chain)
                    .unwrap()
                    .rules
                    .push(body);
            }
            other => panic!("unexpected message {other}"),
        }
    }
    for ((family, _), (mut set, anonymous, raw)) in sets {
        if anonymous {
            continue;
        }
        set.elements = elements(&set, raw).unwrap();
        let table = tables.iter_mut().find(|t| t.family == family).unwrap();
        table.sets.insert(set.name.clone(), set);
    }
    ir::Ruleset { tables }
}

#[test]
fn every_ir_form_decodes_to_itself() {
    let ruleset = every_form::every_form_ruleset();
    let mut batch = Batch::new(1);
    for table in &ruleset.tables {
        batch.add_table(table.family, &table.name, table.comment.as_deref());
        batch.add_table_contents(table).unwrap();
    }
    let tx = batch.finish();
    let decoded = decode_batch(tx.bytes());
    assert_eq!(decoded.tables.len(), 2);
    let canonical = crate::readback::canonical(&ruleset);
    for (expected, actual) in canonical.tables.iter().zip(&decoded.tables) {
        for (name, chain) in &expected.chains {
            assert_eq!(Some(chain), actual.chains.get(name), "chain {name}");
        }
        for (name, set) in &expected.sets {
            assert_eq!(Some(set), actual.sets.get(name), "set {name}");
        }
        assert_eq!(expected, actual);
    }
}

#[test]
fn set_types_split_into_parts_and_check_lengths() {
    let concat = (7 << 12) | (12 << 6) | 13;
    assert_eq!(
        types_of(concat, 12),
        Ok(vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService
        ])
    );
    assert!(types_of(concat, 7).is_err());
    assert_eq!(types_of(13, 2), Ok(vec![DataType::InetService]));
    assert_eq!(types_of(63, 4), Err(Error::DataType(63)));
}

#[test]
fn interval_elements_pair_starts_with_ends() {
    let mut set = ir::Set::new("s", vec![DataType::Ipv4Addr], vec![]);
    set.flags.interval = true;
    let raw = |key: [u8; 4], end: bool| RawElement {
        key: key.to_vec(),
        key_end: None,
        interval_end: end,
        data: None,
        comment: None,
    };
    // As an rbtree dump lists them (descending), with an unpaired leading end at zero.
    let listed = vec![
        raw([192, 169, 0, 0], true),
        raw([192, 168, 0, 0], false),
        raw([10, 0, 0, 4], true),
        raw([10, 0, 0, 2], true),
        raw([10, 0, 0, 1], false),
        raw([10, 0, 0, 2], false),
        raw([0, 0, 0, 0], true),
    ];
    let keys: Vec<String> = elements(&set, listed)
        .unwrap()
        .iter()
        .map(|e| format!("{:?}", e.key))
        .collect();
    assert_eq!(
        keys,
        [
            "[Addr(10.0.0.1)]",
            "[Prefix(10.0.0.2/31)]",
            "[Prefix(192.168.0.0/16)]"
        ]
    );
    // 10.0.0.2 to 10.0.0.255 is a range but not a prefix.
    let listed = vec![raw([10, 0, 0, 2], false), raw([10, 0, 1, 0], true)];
    assert!(matches!(elements(&set, listed), Err(Error::Unsupported(_))));
}
