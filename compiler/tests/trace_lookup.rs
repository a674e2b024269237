//! The tracer searches the elements of a set sorted by key and walks those of any other set;
//! the two must never disagree. Every golden case (`testdata/compile/**/*.yaml`, compiled
//! with its `# args:` flags) is traced as compiled (sorted sets: searched) and as two
//! rewrites that keep each set's meaning but not its order, so every lookup is a walk: each
//! set with its first element repeated at the end (the first match stays first), and each
//! non-interval set reversed (its keys are unique, so an exact match finds the same element).
//! The packets: every frontend a set key names (and a port next to it), every address a map
//! sends to, from outside, from pods (of the cluster CIDR, and the endpoints themselves), from
//! the node and from the clients `loadBalancerSourceRanges` allow, entering from every origin.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kube_nft_compiler::ir::{ElemData, Family, L4Proto, Ruleset, Value};
use kube_nft_compiler::trace::{trace, Env, Origin, Packet, Tracer};
use kube_nft_testkit::golden::{cases, compiled_case, shown};

const ORIGINS: [Origin; 3] = [Origin::Outside, Origin::LocalPod, Origin::Host];
const PROTOS: [L4Proto; 3] = [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// Each set with its first element again at the end: no longer strictly sorted.
fn repeated(ruleset: &Ruleset) -> Ruleset {
    let mut out = ruleset.clone();
    for set in out.tables.iter_mut().flat_map(|t| t.sets.values_mut()) {
        if let Some(first) = set.elements.first().cloned() {
            set.elements.push(first);
        }
    }
    out
}

/// Each non-interval set in reverse key order.
fn reversed(ruleset: &Ruleset) -> Ruleset {
    let mut out = ruleset.clone();
    for set in out.tables.iter_mut().flat_map(|t| t.sets.values_mut()) {
        if !set.flags.interval {
            set.elements.reverse();
        }
    }
    out
}

/// The packets worth tracing through `ruleset` on node `env`.
fn packets(ruleset: &Ruleset, env: &Env) -> Vec<Packet> {
    let mut dests: BTreeSet<(IpAddr, L4Proto, u16)> = BTreeSet::new();
    let mut sources: BTreeSet<IpAddr> = BTreeSet::new();
    sources.extend([ip("192.0.2.1"), ip("2001:db8:ff::1")]);
    sources.extend([ip("10.1.2.3"), ip("fd00:10::7")]);
    sources.extend(env.local_addrs.iter().copied());
    for table in &ruleset.tables {
        let locals: Vec<IpAddr> = (env.local_addrs.iter().copied())
            .chain([ip("127.0.0.1"), ip("::1")])
            .filter(|a| Family::of(*a) == table.family)
            .collect();
        let mut endpoints = 0;
        for element in table.sets.values().flat_map(|s| &s.elements) {
            match element.key[..] {
                [Value::Addr(a), Value::Proto(p), Value::Port(port), ..] => {
                    dests.extend([(a, p, port), (a, p, port.wrapping_add(1))]);
                    if let [_, _, _, Value::Addr(client)] = element.key[..] {
                        sources.insert(client);
                    }
                    if let [_, _, _, Value::Prefix(net)] = element.key[..] {
                        sources.extend(net.hosts().next());
                    }
                }
                [Value::Proto(p), Value::Port(port), ..] => {
                    dests.extend(locals.iter().map(|a| (*a, p, port)));
                }
                _ => {}
            }
            if let Some(ElemData::Values(v)) = &element.data {
                if let [Value::Addr(a), Value::Port(port)] = v[..] {
                    dests.extend(PROTOS.map(|p| (a, p, port)));
                    // A few endpoints as clients (hairpin), not all: maglev maps are large.
                    if endpoints < 3 && sources.insert(a) {
                        endpoints += 1;
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for &(daddr, proto, dport) in &dests {
        let family = Family::of(daddr);
        for &saddr in sources.iter().filter(|s| Family::of(**s) == family) {
            for origin in ORIGINS {
                out.push(Packet {
                    proto,
                    saddr,
                    sport: 40000,
                    daddr,
                    dport,
                    origin,
                });
            }
        }
    }
    out
}

#[test]
fn searched_and_walked_lookups_trace_every_golden_case_alike() {
    let mut traced = 0;
    let mut found = 0;
    for case in cases() {
        let compiled = compiled_case(&case);
        let env = Env::from_graph(&compiled.graph);
        let (repeated, reversed) = (repeated(&compiled.ruleset), reversed(&compiled.ruleset));
        let tracer = Tracer::new(&compiled.ruleset, &env);
        let walked = [Tracer::new(&repeated, &env), Tracer::new(&reversed, &env)];
        for packet in packets(&compiled.ruleset, &env) {
            let searched = tracer.trace(&packet);
            assert_eq!(
                searched,
                trace(&compiled.ruleset, &env, &packet),
                "{}: {packet} ({})",
                shown(&case),
                packet.origin
            );
            for walked in &walked {
                assert_eq!(
                    searched,
                    walked.trace(&packet),
                    "{}: {packet} ({})",
                    shown(&case),
                    packet.origin
                );
            }
            traced += 1;
            found += usize::from(!searched.targets().is_empty());
        }
    }
    // The packets reach Services, not just miss them.
    assert!(
        traced > 10_000 && found > traced / 10,
        "{found} of {traced}"
    );
}
