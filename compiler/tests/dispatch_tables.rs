//! `--dispatch-tables` changes where the Service dispatch lives, never what it does: every
//! golden case compiled with 2, 3 and 5 dispatch tables shows the same rows as with one (the
//! frontends, their backends and shares, what happens to the rest) and traces every frontend
//! to the same fates with the same probabilities, from outside, from a pod, from the node and
//! from the frontend's own first backend (hairpin). The tables themselves: each Service's
//! dispatch in the table its name hashes to, the filter side only in the main table, and no
//! frontend in two tables.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kube_nft_compiler::ir::{names, Family, Ruleset, Value};
use kube_nft_compiler::show;
use kube_nft_compiler::trace::{Env, Fate, Origin, Packet, Ratio, Tracer};
use kube_nft_compiler::{compile, model, Config};
use kube_nft_testkit::golden::{case_config, cases, repo_root, shown};

fn compile_with(case: &std::path::Path, tables: u16) -> (kube_nft_compiler::Compiled, Config) {
    let text = std::fs::read_to_string(repo_root().join(case)).expect("read case");
    let mut config = case_config(&text);
    config.dispatch_tables = tables;
    let loaded = model::load(&[model::Source {
        origin: case.display().to_string(),
        text,
    }])
    .expect("load case");
    (compile(&loaded.snapshot, &config), config)
}

/// Fates and their probabilities, paths aside (a chain of another table is named after it).
fn fates(tracer: &Tracer, packet: &Packet) -> Vec<(Fate, Ratio)> {
    let trace = tracer.trace(packet);
    (trace.outcomes.into_iter())
        .map(|o| (o.fate, o.probability))
        .collect()
}

#[test]
fn spreading_the_dispatch_over_tables_changes_no_behaviour() {
    let mut traced = 0;
    for case in cases() {
        let shown_case = shown(&case);
        let (one, _) = compile_with(&case, 1);
        let env = Env::from_graph(&one.graph);
        let rows = show::rows(&one.ruleset, &env);
        let tracer = Tracer::new(&one.ruleset, &env);
        for n in [2, 3, 5] {
            let (many, _) = compile_with(&case, n);
            assert_eq!(
                many.ruleset.tables.len(),
                2 * usize::from(n),
                "{shown_case}: {n} tables per family"
            );
            assert_eq!(
                show::rows(&many.ruleset, &env),
                rows,
                "{shown_case} with {n} dispatch tables"
            );
            let tracer_n = Tracer::new(&many.ruleset, &env);
            for row in &rows {
                let f = &row.frontend;
                let Some(daddr) = f.addr.or_else(|| {
                    (env.local_addrs.iter().copied())
                        .find(|a| Family::of(*a) == f.family && !a.is_loopback())
                }) else {
                    continue;
                };
                let (outside, pod): (IpAddr, IpAddr) = match f.family {
                    Family::Ip => (
                        Ipv4Addr::new(192, 0, 2, 1).into(),
                        Ipv4Addr::new(10, 0, 0, 77).into(),
                    ),
                    Family::Ip6 => (
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
                        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x77).into(),
                    ),
                };
                let node = (env.local_addrs.iter().copied())
                    .find(|a| Family::of(*a) == f.family)
                    .unwrap_or(outside);
                let mut sources = vec![
                    (outside, Origin::Outside),
                    (pod, Origin::LocalPod),
                    (node, Origin::Host),
                ];
                sources.extend(row.backends.first().map(|b| (b.addr, Origin::LocalPod)));
                for (saddr, origin) in sources {
                    let packet = Packet {
                        proto: f.proto,
                        saddr,
                        sport: 40000,
                        daddr,
                        dport: f.port,
                        origin,
                    };
                    assert_eq!(
                        fates(&tracer_n, &packet),
                        fates(&tracer, &packet),
                        "{shown_case} with {n} dispatch tables: {packet:?}"
                    );
                    traced += 1;
                }
            }
            check_placement(&shown_case, &many.ruleset, n);
        }
    }
    assert!(traced > 1000, "only {traced} packets traced");
}

/// Each dispatch element is in the table of its Service (named by the element's comment), the
/// filter side only in the main table, and no frontend in two tables.
fn check_placement(case: &str, ruleset: &Ruleset, n: u16) {
    let dispatch = [
        "service-ips",
        "service-nodeports",
        "external-local-ips",
        "external-local-nodeports",
    ];
    // The firewall's sets in shards, one pair per table (all in the main table).
    let shards = |name: &'static str| (0..n).map(move |i| format!("{name}-{i}"));
    let filter_side: Vec<String> = [
        "cluster-ips",
        "no-endpoint-services",
        "no-endpoint-nodeports",
    ]
    .into_iter()
    .map(String::from)
    .chain(shards("firewall-ips"))
    .chain(shards("firewall-allow"))
    .chain(["hairpin".to_owned()])
    .collect();
    let mut seen: BTreeMap<(Family, &str, &[Value]), &str> = BTreeMap::new();
    for table in &ruleset.tables {
        let main = table.name == names::TABLE;
        for name in &filter_side {
            assert_eq!(
                table.sets.contains_key(name),
                main,
                "{case}: {name} in {}",
                table.name
            );
        }
        if main {
            check_firewall_shards(case, table, n);
        }
        for name in dispatch {
            for e in &table.sets[name].elements {
                if let Some(previous) = seen.insert((table.family, name, &e.key), &table.name) {
                    panic!(
                        "{case}: {name} {:?} in {previous} and {}",
                        e.key, table.name
                    );
                }
                // `ns/name:port …`: the Service's table.
                let label = e
                    .comment
                    .as_deref()
                    .expect("dispatch elements name their port");
                let (namespace, rest) = label.split_once('/').expect("ns/name");
                let service = rest.split(':').next().expect("name");
                let t = kube_nft_compiler::lower::dispatch_table_of(namespace, service, n);
                assert_eq!(
                    table.name,
                    names::dispatch_table(t),
                    "{case}: {label} in {}",
                    table.name
                );
            }
        }
    }
}

/// Each firewall frontend is in one shard's `firewall-ips-<i>`, and every range allowed for it
/// is in the same shard's `firewall-allow-<i>`.
fn check_firewall_shards(case: &str, table: &kube_nft_compiler::ir::Table, n: u16) {
    let mut shard_of: BTreeMap<&[Value], u16> = BTreeMap::new();
    for i in 0..n {
        for e in &table.sets[&format!("firewall-ips-{i}")].elements {
            if let Some(other) = shard_of.insert(&e.key, i) {
                panic!(
                    "{case}: firewall frontend {:?} in shards {other} and {i}",
                    e.key
                );
            }
        }
    }
    for i in 0..n {
        for e in &table.sets[&format!("firewall-allow-{i}")].elements {
            assert_eq!(
                shard_of.get(&e.key[..3]),
                Some(&i),
                "{case}: allowed range {:?} in shard {i}",
                e.key
            );
        }
    }
}
