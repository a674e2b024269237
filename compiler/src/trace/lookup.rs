//! What a key finds in a set or map: the evaluated values ([`Val`]), how one compares with a
//! constant ([`matches`]), and [`find`], which returns the first element whose key matches. A
//! set is searched by binary search when [`is_keyed`] holds for it, by a linear scan
//! otherwise. `lower` and the kernel read-back both sort elements by key, but a hand-built
//! ruleset need not, and an `interval` set matches addresses inside prefixes, which no key
//! order finds; the scan keeps answering those, and the search gives the scan's answer
//! wherever it is used (see [`exact_key`]), so the choice only changes the cost: at 50,000
//! synthetic Services `show` traces 77,000 frontends through maps of up to 544,000 elements.

use std::net::IpAddr;

use crate::ir::{CtDir, DataType, L4Proto, Set, Value};

/// A value an expression part evaluated to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Val {
    Addr(IpAddr),
    Proto(L4Proto),
    Port(u16),
    Int(u32),
    Fib { local: bool },
    CtNew,
    CtStatus { dnat: bool },
    CtDir(CtDir),
    Ifname(String),
}

/// Whether `set` may be searched by key: not an `interval` set, and every element's key has
/// one exact-match part per key type (an address, not a prefix; an interface name, not a
/// prefix of one) and is strictly greater than the one before. Linear in the elements, so a
/// tracer asks once per set.
pub(super) fn is_keyed(set: &Set) -> bool {
    let typed = |key: &[Value]| {
        key.len() == set.key.len() && key.iter().zip(&set.key).all(|(v, ty)| ty.holds(v))
    };
    !set.flags.interval
        && set.elements.iter().all(|e| typed(&e.key))
        && set.elements.windows(2).all(|w| w[0].key < w[1].key)
}

/// What an evaluated key is, as a key of a set of types `types` whose parts are all
/// exact constants ([`DataType::holds`]).
#[derive(Debug, PartialEq, Eq)]
enum Exact {
    /// The one element key it matches, if the set holds it.
    Key(Vec<Value>),
    /// It matches no such key (`fib … type` of a non-local address, `ct status` without DNAT).
    Miss,
    /// A part [`matches`] would refuse or treat otherwise: only the scan says what happens.
    Unknown,
}

/// The key an element of a keyed set needs to match `key`. Part by part, [`matches`] of a
/// value with a constant of the part's type is equality with the constant given here (a port
/// is an integer in an `integer` part, as `matches` compares them), or false for every
/// constant of that type ([`Exact::Miss`]).
fn exact_key(types: &[DataType], key: &[Val]) -> Exact {
    let mut exact = Vec::with_capacity(key.len());
    let mut miss = false;
    for (v, ty) in key.iter().zip(types) {
        let value = match (v, ty) {
            (Val::Addr(a), DataType::Ipv4Addr | DataType::Ipv6Addr) => Value::Addr(*a),
            (Val::Proto(p), DataType::InetProto) => Value::Proto(*p),
            (Val::Port(p), DataType::InetService) => Value::Port(*p),
            (Val::Port(p), DataType::Mark | DataType::Integer) => Value::Int(u32::from(*p)),
            (Val::Int(i), DataType::Mark | DataType::Integer) => Value::Int(*i),
            (Val::Fib { local: true }, DataType::FibAddrType) => Value::FibLocal,
            (Val::CtNew, DataType::CtState) => Value::CtNew,
            (Val::CtStatus { dnat: true }, DataType::CtStatus) => Value::CtDnat,
            (Val::CtDir(d), DataType::CtDir) => Value::CtDir(*d),
            (Val::Ifname(name), DataType::Ifname) => Value::Iface(name.clone()),
            (Val::Fib { local: false }, DataType::FibAddrType)
            | (Val::CtStatus { dnat: false }, DataType::CtStatus) => {
                // Keep converting: should a later part be one the search cannot decide,
                // the scan answers.
                miss = true;
                continue;
            }
            _ => return Exact::Unknown,
        };
        exact.push(value);
    }
    match miss {
        true => Exact::Miss,
        false => Exact::Key(exact),
    }
}

/// The first element of `set` whose key matches `key` part by part: exact, or for an
/// `interval` set also an address inside a prefix part. `keyed` is [`is_keyed`] of the set.
pub(super) fn find(set: &Set, keyed: bool, key: &[Val]) -> Result<Option<usize>, String> {
    if set.key.len() != key.len() {
        return Err(format!(
            "a {}-part key looked up in @{} with {} key parts",
            key.len(),
            set.name,
            set.key.len()
        ));
    }
    if keyed {
        // Every element key is of exact parts and they are strictly sorted, so the first
        // match is the only one, and the scan would have met no part it cannot compare.
        match exact_key(&set.key, key) {
            Exact::Key(exact) => {
                let found = set.elements.binary_search_by(|e| e.key[..].cmp(&exact[..]));
                return Ok(found.ok());
            }
            Exact::Miss => return Ok(None),
            Exact::Unknown => {}
        }
    }
    scan(set, key)
}

/// [`find`] by walking every element in order.
fn scan(set: &Set, key: &[Val]) -> Result<Option<usize>, String> {
    for (i, element) in set.elements.iter().enumerate() {
        let mut hit = element.key.len() == key.len();
        for (v, k) in key.iter().zip(&element.key) {
            hit = hit && matches(v, k, set.flags.interval)?;
        }
        if hit {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Whether an evaluated value equals a constant; a prefix contains an address only where
/// prefixes are allowed (matches, and `interval` sets).
pub(super) fn matches(v: &Val, k: &Value, prefixes: bool) -> Result<bool, String> {
    Ok(match (v, k) {
        (Val::Addr(a), Value::Addr(x)) => a == x,
        (Val::Addr(a), Value::Prefix(net)) => prefixes && net.contains(a),
        (Val::Proto(p), Value::Proto(q)) => p == q,
        (Val::Port(p), Value::Port(q)) => p == q,
        (Val::Port(p), Value::Int(q)) => u32::from(*p) == *q,
        (Val::Int(i), Value::Int(j)) => i == j,
        (Val::Fib { local }, Value::FibLocal) => *local,
        (Val::CtNew, Value::CtNew) => true,
        (Val::CtStatus { dnat }, Value::CtDnat) => *dnat,
        (Val::CtDir(d), Value::CtDir(x)) => d == x,
        (Val::Ifname(name), Value::Iface(x)) => name == x,
        (Val::Ifname(name), Value::IfacePrefix(prefix)) => name.starts_with(prefix.as_str()),
        (v, k) => return Err(format!("cannot compare {v:?} with {k:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ir::{Element, SetFlags};

    fn set(key: Vec<DataType>, keys: Vec<Vec<Value>>) -> Set {
        Set {
            name: "s".to_owned(),
            key,
            data: Vec::new(),
            flags: SetFlags::default(),
            timeout: None,
            size: None,
            counter: false,
            comment: None,
            elements: (keys.into_iter())
                .map(|key| Element {
                    key,
                    data: None,
                    comment: None,
                })
                .collect(),
        }
    }

    /// What `find` answers, having checked that the scan answers the same; whether the set
    /// was searched.
    fn both(set: &Set, key: &[Val]) -> (Result<Option<usize>, String>, bool) {
        let keyed = is_keyed(set);
        let found = find(set, keyed, key);
        assert_eq!(
            found,
            find(set, false, key),
            "keyed={keyed} {key:?} in {set:?}"
        );
        (found, keyed)
    }

    #[test]
    fn a_port_finds_an_integer_part_as_the_scan_does() {
        let ints = set(
            vec![DataType::Integer],
            vec![vec![Value::Int(1)], vec![Value::Int(80)]],
        );
        assert_eq!(both(&ints, &[Val::Port(80)]), (Ok(Some(1)), true));
        assert_eq!(both(&ints, &[Val::Port(81)]), (Ok(None), true));
        assert_eq!(both(&ints, &[Val::Int(1)]), (Ok(Some(0)), true));
    }

    #[test]
    fn a_false_flag_part_misses_and_a_refused_part_still_errs() {
        let s = set(
            vec![DataType::FibAddrType, DataType::InetService],
            vec![vec![Value::FibLocal, Value::Port(80)]],
        );
        let hit = [Val::Fib { local: true }, Val::Port(80)];
        assert_eq!(both(&s, &hit), (Ok(Some(0)), true));
        let miss = [Val::Fib { local: false }, Val::Port(80)];
        assert_eq!(both(&s, &miss), (Ok(None), true));
        // The scan compares a second part only after the first matched.
        let refused = [Val::Fib { local: false }, Val::Int(80)];
        assert_eq!(both(&s, &refused), (Ok(None), true));
        let refused = [Val::Fib { local: true }, Val::Int(80)];
        assert!(both(&s, &refused).0.is_err());
    }

    #[test]
    fn unsorted_duplicate_and_prefix_keys_are_scanned() {
        let unsorted = set(
            vec![DataType::InetService],
            vec![vec![Value::Port(443)], vec![Value::Port(80)]],
        );
        assert_eq!(both(&unsorted, &[Val::Port(80)]), (Ok(Some(1)), false));
        let duplicate = set(
            vec![DataType::InetService],
            vec![vec![Value::Port(80)], vec![Value::Port(80)]],
        );
        assert_eq!(both(&duplicate, &[Val::Port(80)]), (Ok(Some(0)), false));
        let names = set(
            vec![DataType::Ifname],
            vec![
                vec![Value::Iface("cni0".to_owned())],
                vec![Value::IfacePrefix("veth".to_owned())],
            ],
        );
        let veth = [Val::Ifname("veth12".to_owned())];
        assert_eq!(both(&names, &veth), (Ok(Some(1)), false));
        let mut interval = set(
            vec![DataType::Ipv4Addr],
            vec![vec![Value::Addr("10.0.0.1".parse().unwrap())]],
        );
        interval.flags.interval = true;
        let addr = [Val::Addr("10.0.0.1".parse().unwrap())];
        assert_eq!(both(&interval, &addr), (Ok(Some(0)), false));
    }

    #[test]
    fn a_key_of_the_wrong_length_or_type_errs_as_before() {
        let s = set(vec![DataType::InetService], vec![vec![Value::Port(80)]]);
        assert!(both(&s, &[Val::Port(80), Val::Port(80)]).0.is_err());
        assert!(both(&s, &[Val::Int(80)]).0.is_err());
        let empty = set(vec![DataType::InetService], Vec::new());
        assert_eq!(both(&empty, &[Val::Int(80)]), (Ok(None), true));
    }
}
