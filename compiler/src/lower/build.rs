//! A small vocabulary for building IR by intent (`match_daddr`, `jump`, `add_element`) so the
//! lowering code reads like the rules it produces instead of like struct literals.

use std::net::IpAddr;

use crate::graph::LocalDetector;
use crate::ir::{
    BaseChain, Chain, CmpOp, ElemData, Element, Expr, Family, Set, Stmt, Table, Value, Verdict,
};

/// `ip daddr . meta l4proto . th dport`: the key of every address dispatch map.
pub(crate) fn addr_proto_port(family: Family) -> Expr {
    Expr::Concat(vec![Expr::Daddr(family), Expr::L4Proto, Expr::Dport])
}

/// `meta l4proto . th dport`: the key of the NodePort maps.
pub(crate) fn proto_port() -> Expr {
    Expr::Concat(vec![Expr::L4Proto, Expr::Dport])
}

pub(crate) fn match_eq(left: Expr, right: Value) -> Stmt {
    Stmt::Match {
        left,
        op: CmpOp::Eq,
        right,
    }
}

pub(crate) fn match_ne(left: Expr, right: Value) -> Stmt {
    Stmt::Match {
        left,
        op: CmpOp::Ne,
        right,
    }
}

pub(crate) fn match_daddr(addr: IpAddr) -> Stmt {
    match_eq(Expr::Daddr(Family::of(addr)), Value::Addr(addr))
}

/// kube-proxy's `IfLocal` (`local`) or `IfNotLocal` match for a local-traffic detector: the
/// source prefix for the address modes, `iifname` for the interface modes.
pub(crate) fn from_local_pod(detector: &LocalDetector, local: bool) -> Stmt {
    let (left, right) = match detector {
        LocalDetector::ClusterCidr(net) | LocalDetector::NodeCidr(net) => {
            (Expr::Saddr(Family::of_net(net)), Value::net(*net))
        }
        LocalDetector::Interface(name) => (Expr::Iifname, Value::Iface(name.clone())),
        LocalDetector::InterfacePrefix(prefix) => {
            (Expr::Iifname, Value::IfacePrefix(prefix.clone()))
        }
    };
    if local {
        match_eq(left, right)
    } else {
        match_ne(left, right)
    }
}

pub(crate) fn ct_state_new() -> Stmt {
    match_eq(Expr::CtState, Value::CtNew)
}

pub(crate) fn fib_saddr_local() -> Stmt {
    match_eq(Expr::FibType(crate::ir::FibAddr::Saddr), Value::FibLocal)
}

pub(crate) fn lookup(left: Expr, set: &str) -> Stmt {
    Stmt::Lookup {
        left,
        set: set.to_string(),
        negate: false,
    }
}

pub(crate) fn vmap(left: Expr, map: &str) -> Stmt {
    Stmt::Vmap {
        left,
        map: map.to_string(),
    }
}

pub(crate) fn jump(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.to_string()))
}

pub(crate) fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.to_string()))
}

/// A regular chain.
pub(crate) fn chain(name: &str) -> Chain {
    Chain {
        name: name.to_string(),
        base: None,
        comment: None,
        rules: Vec::new(),
    }
}

/// A base chain attached to a hook.
pub(crate) fn base_chain(name: &str, base: BaseChain) -> Chain {
    Chain {
        base: Some(base),
        ..chain(name)
    }
}

/// Inserts a chain; the caller guarantees names are unique (they are derived from unique
/// service port ids).
pub(crate) fn insert_chain(table: &mut Table, chain: Chain) {
    let previous = table.chains.insert(chain.name.clone(), chain);
    debug_assert!(previous.is_none(), "chain name collision");
}

/// Appends an element to a set or map that the skeleton declared. Sorting and duplicate
/// removal happen once, in `skeleton::finish`.
pub(crate) fn add_element(
    table: &mut Table,
    set: &str,
    key: Vec<Value>,
    data: Option<ElemData>,
    comment: Option<String>,
) {
    table
        .sets
        .get_mut(set)
        .unwrap_or_else(|| panic!("set {set} is declared by the skeleton"))
        .elements
        .push(Element { key, data, comment });
}

/// A plain set or map declaration with no elements.
pub(crate) fn set_decl(
    name: &str,
    key: Vec<crate::ir::DataType>,
    data: Vec<crate::ir::DataType>,
    comment: &str,
) -> Set {
    Set {
        comment: Some(comment.to_string()),
        ..Set::new(name, key, data)
    }
}
