//! Hand-built rulesets: the model's kernel answers, the text form, and the replacement paths
//! (header changes) that compiled rulesets rarely exercise.

use std::net::{IpAddr, Ipv4Addr};

use expect_test::expect;

use super::*;
use crate::ir::{
    priority, BaseChain, ChainKind, DataType, ElemData, Element, Expr, Family, Hook, L4Proto,
    NatTarget, Rule, Ruleset, Set, Stmt, Table, Value, Verdict,
};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn dispatch_key(last: u8) -> Vec<Value> {
    vec![
        Value::Addr(ip(last)),
        Value::Proto(L4Proto::Tcp),
        Value::Port(80),
    ]
}

fn goto(key: u8, chain: &str) -> Element {
    Element {
        key: dispatch_key(key),
        data: Some(ElemData::Verdict(Verdict::Goto(chain.into()))),
        comment: None,
    }
}

fn dnat(last: u8) -> Rule {
    Rule::new(vec![Stmt::Dnat(NatTarget::Addr {
        proto: L4Proto::Tcp,
        addr: ip(last),
        port: 8080,
    })])
}

fn chain(name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: None,
        comment: None,
        rules,
    }
}

/// A base chain dispatching through a verdict map to two service chains, and a lookup set used
/// by one of them.
fn sample() -> Ruleset {
    let mut t = Table::new(Family::Ip, "t");
    let key = Expr::Concat(vec![Expr::Daddr(Family::Ip), Expr::L4Proto, Expr::Dport]);
    let mut entry = chain(
        "entry",
        vec![Rule::new(vec![Stmt::Vmap {
            left: key,
            map: "dispatch".into(),
        }])],
    );
    entry.base = Some(BaseChain {
        kind: ChainKind::Nat,
        hook: Hook::Prerouting,
        priority: priority::DSTNAT,
    });
    let lookup = Rule::new(vec![
        Stmt::Lookup {
            left: Expr::Saddr(Family::Ip),
            set: "clients".into(),
            negate: false,
        },
        Stmt::Verdict(Verdict::Drop),
    ]);
    for c in [
        entry,
        chain("svc-a", vec![lookup, dnat(7)]),
        chain("svc-b", vec![dnat(8)]),
    ] {
        t.chains.insert(c.name.clone(), c);
    }
    let proto = DataType::InetProto;
    let port = DataType::InetService;
    let mut dispatch = Set::new(
        "dispatch",
        vec![DataType::Ipv4Addr, proto, port],
        vec![DataType::Verdict],
    );
    dispatch.elements = vec![goto(1, "svc-a"), goto(2, "svc-b")];
    let mut clients = Set::new("clients", vec![DataType::Ipv4Addr], vec![]);
    clients.elements = vec![Element {
        key: vec![Value::Addr(ip(99))],
        data: None,
        comment: None,
    }];
    t.sets.insert("dispatch".into(), dispatch);
    t.sets.insert("clients".into(), clients);
    Ruleset { tables: vec![t] }
}

fn table(r: &mut Ruleset) -> &mut Table {
    &mut r.tables[0]
}

fn op(verb: Verb, object: Object) -> Transaction {
    Transaction {
        ops: vec![Op {
            verb,
            family: Family::Ip,
            table: "t".into(),
            object,
        }],
    }
}

fn chain_op(verb: Verb, name: &str) -> Transaction {
    op(verb, Object::Chain(ChainHeader::of(&chain(name, vec![]))))
}

fn elements_op(verb: Verb, set: &str, elements: Vec<Element>) -> Transaction {
    let set = set.into();
    op(verb, Object::Elements { set, elements })
}

fn kind_of(ruleset: &Ruleset, tx: &Transaction) -> ErrorKind {
    let mut copy = ruleset.clone();
    let err = apply(&mut copy, tx).expect_err("must be refused");
    assert_eq!(&copy, ruleset, "a refused transaction changes nothing");
    err.kind
}

/// Plans `old → new`, applies the plan to `old` and checks the result is `new`.
fn round_trip(old: &Ruleset, new: &Ruleset) -> Transaction {
    let tx = plan(old, new);
    let mut got = old.clone();
    apply(&mut got, &tx).unwrap_or_else(|e| panic!("{e}\n{tx}"));
    assert_eq!(&got, new, "{tx}");
    assert_eq!(tx, plan(old, new), "deterministic");
    assert!(plan(new, new).is_empty());
    tx
}

#[test]
fn model_refuses_like_the_kernel() {
    let r = sample();
    // Referenced by the dispatch element, and by nothing once that is gone.
    assert_eq!(
        kind_of(&r, &chain_op(Verb::Delete, "svc-a")),
        ErrorKind::Busy
    );
    assert_eq!(
        kind_of(&r, &chain_op(Verb::Delete, "nope")),
        ErrorKind::NoEntry
    );
    assert_eq!(
        kind_of(&r, &chain_op(Verb::Flush, "nope")),
        ErrorKind::NoEntry
    );
    let clients = SetHeader::of(&r.tables[0].sets["clients"]);
    assert_eq!(
        kind_of(&r, &op(Verb::Delete, Object::Set(clients))),
        ErrorKind::Busy
    );
    // The same key with other data, a missing key, a verdict into a missing chain.
    let other = elements_op(Verb::Add, "dispatch", vec![goto(1, "svc-b")]);
    assert_eq!(kind_of(&r, &other), ErrorKind::Exists);
    let missing = elements_op(Verb::Delete, "dispatch", vec![goto(3, "svc-b")]);
    assert_eq!(kind_of(&r, &missing), ErrorKind::NoEntry);
    let dangling = elements_op(Verb::Add, "dispatch", vec![goto(3, "svc-c")]);
    assert_eq!(kind_of(&r, &dangling), ErrorKind::NoEntry);
    let to_base = elements_op(Verb::Add, "dispatch", vec![goto(3, "entry")]);
    assert_eq!(kind_of(&r, &to_base), ErrorKind::NotSupported);
    let bad_key = elements_op(Verb::Add, "clients", vec![goto(3, "svc-a")]);
    assert_eq!(kind_of(&r, &bad_key), ErrorKind::Invalid);
    // A rule into a missing chain, a lookup of a missing set.
    let jump = Rule::new(vec![Stmt::Verdict(Verdict::Jump("svc-c".into()))]);
    let rule = op(
        Verb::Add,
        Object::Rule {
            chain: "svc-b".into(),
            rule: jump,
        },
    );
    assert_eq!(kind_of(&r, &rule), ErrorKind::NoEntry);
    let mut no_set = r.tables[0].chains["svc-a"].rules[0].clone();
    no_set.stmts[0] = Stmt::Lookup {
        left: Expr::Saddr(Family::Ip),
        set: "gone".into(),
        negate: false,
    };
    let rule = op(
        Verb::Add,
        Object::Rule {
            chain: "svc-b".into(),
            rule: no_set,
        },
    );
    assert_eq!(kind_of(&r, &rule), ErrorKind::NoEntry);
    // A hook cannot change in place; a table must exist.
    let mut entry = ChainHeader::of(&r.tables[0].chains["entry"]);
    entry.base.as_mut().expect("base").priority = 0;
    assert_eq!(
        kind_of(&r, &op(Verb::Add, Object::Chain(entry))),
        ErrorKind::Exists
    );
    let mut other_table = chain_op(Verb::Add, "x");
    other_table.ops[0].table = "u".into();
    assert_eq!(kind_of(&r, &other_table), ErrorKind::NoEntry);
}

#[test]
fn model_accepts_idempotent_adds_and_releases_references() {
    let r = sample();
    let mut got = r.clone();
    // Identical element and existing chain: no-ops.
    let same = elements_op(Verb::Add, "dispatch", vec![goto(1, "svc-a")]);
    apply(&mut got, &same).expect("identical element");
    apply(&mut got, &chain_op(Verb::Add, "svc-a")).expect("existing chain");
    assert_eq!(got, r);
    // Once its element is gone, svc-a can be deleted, and with it its lookup of `clients`.
    let mut tx = elements_op(Verb::Delete, "dispatch", vec![goto(1, "svc-a")]);
    tx.ops.extend(chain_op(Verb::Delete, "svc-a").ops);
    let clients = SetHeader::of(&r.tables[0].sets["clients"]);
    tx.ops.extend(op(Verb::Delete, Object::Set(clients)).ops);
    apply(&mut got, &tx).expect("references released");
    assert!(!got.tables[0].chains.contains_key("svc-a"));
    assert!(!got.tables[0].sets.contains_key("clients"));
}

#[test]
fn error_names_the_operation() {
    let err = apply(&mut sample(), &chain_op(Verb::Delete, "svc-a")).expect_err("busy");
    expect![[
        r#"operation 0: EBUSY: delete ip t: chain svc-a is still entered by 1 rules or elements"#
    ]]
    .assert_eq(&err.to_string());
}

#[test]
fn text_form_is_one_nft_command_per_line() {
    let old = sample();
    let mut new = sample();
    let t = table(&mut new);
    t.chains.remove("svc-b");
    t.chains
        .insert("svc-c".into(), chain("svc-c", vec![dnat(9), dnat(10)]));
    t.sets.get_mut("dispatch").expect("map").elements = vec![goto(1, "svc-a"), goto(3, "svc-c")];
    t.chains.get_mut("svc-a").expect("chain").rules.pop();
    let tx = round_trip(&old, &new);
    expect![[r#"
        add chain ip t svc-c
        delete element ip t dispatch { 10.0.0.2 . tcp . 80 }
        flush chain ip t svc-a
        flush chain ip t svc-b
        delete chain ip t svc-b
        add rule ip t svc-a ip saddr @clients drop
        add rule ip t svc-c meta l4proto tcp dnat to 10.0.0.9:8080
        add rule ip t svc-c meta l4proto tcp dnat to 10.0.0.10:8080
        add element ip t dispatch { 10.0.0.3 . tcp . 80 : goto svc-c }
    "#]]
    .assert_eq(&tx.to_string());
    expect![
        "add chain 1, add rule 3, add element 1, flush chain 2, delete chain 1, delete element 1"
    ]
    .assert_eq(&tx.counts().to_string());
    assert_eq!(tx.len(), 9);
    assert_eq!(tx.counts().total(), tx.len());
}

#[test]
fn new_and_removed_tables() {
    let empty = Ruleset::default();
    let r = sample();
    let tx = round_trip(&empty, &r);
    expect![[r#"
        add table ip t
        add chain ip t entry { type nat hook prerouting priority -100; }
        add chain ip t svc-a
        add chain ip t svc-b
        add set ip t clients { type ipv4_addr; }
        add map ip t dispatch { type ipv4_addr . inet_proto . inet_service : verdict; }
        add rule ip t entry ip daddr . meta l4proto . th dport vmap @dispatch
        add rule ip t svc-a ip saddr @clients drop
        add rule ip t svc-a meta l4proto tcp dnat to 10.0.0.7:8080
        add rule ip t svc-b meta l4proto tcp dnat to 10.0.0.8:8080
        add element ip t clients { 10.0.0.99 }
        add element ip t dispatch { 10.0.0.1 . tcp . 80 : goto svc-a, 10.0.0.2 . tcp . 80 : goto svc-b }
    "#]]
    .assert_eq(&tx.to_string());
    let tx = round_trip(&r, &empty);
    expect![[r#"
        delete table ip t
    "#]]
    .assert_eq(&tx.to_string());
}

#[test]
fn table_comment_change_replaces_the_table() {
    let old = sample();
    let mut new = sample();
    table(&mut new).comment = Some("now with a comment".into());
    let tx = round_trip(&old, &new);
    assert_eq!(tx.ops[0].verb, Verb::Delete);
    assert_eq!(
        tx.ops[1].to_string(),
        "add table ip t { comment \"now with a comment\"; }"
    );
}

#[test]
fn base_chain_hook_change_recreates_the_chain() {
    let old = sample();
    let mut new = sample();
    let entry = table(&mut new).chains.get_mut("entry").expect("entry");
    entry.base.as_mut().expect("base").priority = priority::DSTNAT - 1;
    let tx = round_trip(&old, &new);
    expect![[r#"
        flush chain ip t entry
        delete chain ip t entry
        add chain ip t entry { type nat hook prerouting priority -101; }
        add rule ip t entry ip daddr . meta l4proto . th dport vmap @dispatch
    "#]]
    .assert_eq(&tx.to_string());
}

#[test]
fn set_type_change_rewrites_chains_that_use_it() {
    // svc-a's rules are unchanged, but they hold `clients`, which must be deleted to change its
    // flags: svc-a is flushed and refilled around the replacement.
    let old = sample();
    let mut new = sample();
    let clients = table(&mut new).sets.get_mut("clients").expect("set");
    clients.flags.interval = true;
    let tx = round_trip(&old, &new);
    expect![[r#"
        flush chain ip t svc-a
        delete set ip t clients
        add set ip t clients { type ipv4_addr; flags interval; }
        add rule ip t svc-a ip saddr @clients drop
        add rule ip t svc-a meta l4proto tcp dnat to 10.0.0.7:8080
        add element ip t clients { 10.0.0.99 }
    "#]]
    .assert_eq(&tx.to_string());
}

#[test]
fn chain_comment_change_moves_the_elements_that_enter_it() {
    let old = sample();
    let mut new = sample();
    table(&mut new)
        .chains
        .get_mut("svc-b")
        .expect("chain")
        .comment = Some("b".into());
    let tx = round_trip(&old, &new);
    expect![[r#"
        delete element ip t dispatch { 10.0.0.2 . tcp . 80 }
        flush chain ip t svc-b
        delete chain ip t svc-b
        add chain ip t svc-b { comment "b"; }
        add rule ip t svc-b meta l4proto tcp dnat to 10.0.0.8:8080
        add element ip t dispatch { 10.0.0.2 . tcp . 80 : goto svc-b }
    "#]]
    .assert_eq(&tx.to_string());
}

#[test]
fn element_comment_or_data_change_is_delete_then_add() {
    let old = sample();
    let mut new = sample();
    let dispatch = table(&mut new).sets.get_mut("dispatch").expect("map");
    dispatch.elements[0].comment = Some("ns/a:80".into());
    dispatch.elements[1] = goto(2, "svc-a");
    let tx = round_trip(&old, &new);
    expect![[r#"
        delete element ip t dispatch { 10.0.0.1 . tcp . 80, 10.0.0.2 . tcp . 80 }
        add element ip t dispatch { 10.0.0.1 . tcp . 80 comment "ns/a:80" : goto svc-a, 10.0.0.2 . tcp . 80 : goto svc-a }
    "#]]
    .assert_eq(&tx.to_string());
}

#[test]
fn sorted_element_diff_matches_the_map_diff() {
    let list = |keys: &[u8], chain: &str| keys.iter().map(|&k| goto(k, chain)).collect::<Vec<_>>();
    let cases = [
        (list(&[1, 2, 3], "a"), list(&[1, 2, 3], "a")),
        (list(&[1, 3, 5], "a"), list(&[2, 3, 4, 6], "a")),
        (list(&[], "a"), list(&[1, 2], "a")),
        (list(&[1, 2], "a"), list(&[], "a")),
        (list(&[1, 2, 3], "a"), list(&[1, 2, 3], "b")),
    ];
    for (old, new) in &cases {
        for refresh_key in [0u8, 2] {
            let refresh = |e: &Element| e.key == dispatch_key(refresh_key);
            assert_eq!(
                diff::diff_elements(old, new, refresh),
                diff::diff_unsorted_elements(old, new, refresh),
                "{old:?} -> {new:?}"
            );
        }
    }
}
