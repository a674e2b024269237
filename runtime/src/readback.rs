//! Reading our tables back from the kernel into an `ir::Ruleset` that compares equal to the
//! compiler's output when the kernel holds exactly what kube-nft applied: tables, chains and
//! sets by name, elements sorted by key (as `lower` sorts them), rules in kernel order. It
//! dumps one family's table, chains, sets, elements and rules over one socket, decodes them
//! with `netlink::decode`, and folds each numgen DNAT's anonymous map back into its rule. It
//! reads only our tables (`kube-nft` and its dispatch tables `kube-nft-dispatch-<i>`,
//! `names::is_ours`, in each family); other tables are never decoded.
//!
//! Elements of dynamic sets (`update @set`, the session-affinity sets) are left out: the packet
//! path adds them (client addresses with expiry timers), so they are runtime state, not
//! configuration, and would make every comparison with the compiled IR fail once traffic flows.
//! The compiled IR never has elements in them either.
//!
//! A full-length prefix (`::1/128`) and the address itself encode to the same bytes and read
//! back as the address; the IR therefore only has the address form (`ir::Value::net`, enforced
//! by the verifier). [`canonical`] drops dynamic-set elements for comparison.

use kube_nft_compiler::ir::{self, names, DataType, ElemData, Family, Value};

use crate::netlink::decode::{self, AnonMaps, Message, Unrecognised};
use crate::netlink::socket::{self, Socket};

/// How often [`read`] retries when a commit happened during the read.
const ATTEMPTS: usize = 5;

/// Failures of [`read`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket or a dump request failed.
    #[error("read nf_tables state")]
    Netlink(#[from] socket::Error),
    /// The kernel listed an object the decoder cannot turn into IR.
    #[error("decode {object}")]
    Decode {
        /// The object, in nft's words (`set ip kube-nft services`).
        object: String,
        /// What is wrong with it.
        #[source]
        source: decode::Error,
    },
    /// A rule in one of our chains is not one kube-nft writes: someone else added or changed
    /// it, or it comes from a newer kube-nft.
    #[error("foreign or unrecognised rule in chain {family} {table} {chain} rule {index}")]
    UnrecognisedRule {
        /// The table's family.
        family: Family,
        /// The table's name.
        table: String,
        /// The chain's name.
        chain: String,
        /// The rule's position in the chain, from 0.
        index: usize,
        /// Where its expressions stopped matching.
        #[source]
        source: Unrecognised,
    },
    /// Every attempt saw a commit (by anyone) between its first and last dump.
    #[error("nf_tables ruleset kept changing during {ATTEMPTS} read attempts")]
    Unstable,
}

/// Reads our tables of the given families (`kube-nft` and any dispatch tables, in each) in
/// family order, a family's tables by name; absent tables are absent from the result. The
/// read is consistent: it is retried when the generation id changed between its start and its
/// end.
pub fn read(families: &[Family]) -> Result<ir::Ruleset, Error> {
    let mut socket = Socket::open()?;
    for _ in 0..ATTEMPTS {
        let before = socket.get_gen()?;
        let mut tables = Vec::new();
        let mut interrupted = false;
        'families: for family in [Family::Ip, Family::Ip6] {
            if !families.contains(&family) {
                continue;
            }
            let read = list_tables(&mut socket, family).and_then(|headers| {
                let ours = headers.into_iter().filter(|t| names::is_ours(&t.name));
                ours.map(|header| read_contents(&mut socket, header))
                    .collect::<Result<Vec<_>, _>>()
            });
            match read {
                Ok(mut read) => {
                    read.sort_by(|a, b| a.name.cmp(&b.name));
                    tables.extend(read);
                }
                Err(Error::Netlink(socket::Error::DumpInterrupted)) => {
                    interrupted = true;
                    break 'families;
                }
                Err(err) => return Err(err),
            }
        }
        if !interrupted && socket.get_gen()? == before {
            return Ok(ir::Ruleset { tables });
        }
    }
    Err(Error::Unstable)
}

/// Our tables the kernel holds (`names::is_ours`), by family and name: what a cleanup or a
/// replacement deletes, dispatch tables a smaller `--dispatch-tables` left behind included.
pub fn our_tables() -> Result<Vec<(Family, String)>, Error> {
    let mut socket = Socket::open()?;
    let mut ours = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let tables = list_tables(&mut socket, family)?;
        ours.extend(
            (tables.into_iter())
                .filter(|t| names::is_ours(&t.name))
                .map(|t| (family, t.name)),
        );
    }
    Ok(ours)
}

/// The tables of `family` (name and comment only).
fn list_tables(socket: &mut Socket, family: Family) -> Result<Vec<ir::Table>, Error> {
    let decode_err = |source| Error::Decode {
        object: format!("table {family}"),
        source,
    };
    // Dumps of tables are not filtered by name; the list of tables is short.
    let mut tables = Vec::new();
    for bytes in socket.dump(decode::NFT_MSG_GETTABLE, nfproto(family), &[])? {
        let msg = Message::parse(&bytes).map_err(decode_err)?;
        let decoded = decode::table(&msg).map_err(decode_err)?;
        if decoded.family == family {
            tables.push(decoded);
        }
    }
    Ok(tables)
}

/// Reads one table, or `None` if it does not exist. Not retried on concurrent commits; see
/// [`read`].
pub fn read_table(
    socket: &mut Socket,
    family: Family,
    name: &str,
) -> Result<Option<ir::Table>, Error> {
    let header = list_tables(socket, family)?
        .into_iter()
        .find(|t| t.name == name);
    header.map(|h| read_contents(socket, h)).transpose()
}

/// Reads the chains, sets, elements and rules of the table `table` (as listed).
fn read_contents(socket: &mut Socket, mut table: ir::Table) -> Result<ir::Table, Error> {
    let family = table.family;
    let name = table.name.clone();
    let name = name.as_str();
    let nfproto = nfproto(family);
    let object = |what: &str| format!("{what} {family} {name}");
    let decode_err = |object: String| move |source| Error::Decode { object, source };
    let filter = decode::filter_attrs(name, None);

    for bytes in socket.dump(decode::NFT_MSG_GETCHAIN, nfproto, &filter)? {
        let msg = Message::parse(&bytes).map_err(decode_err(object("chain in")))?;
        let decoded = decode::chain(&msg).map_err(decode_err(object("chain in")))?;
        if decoded.table == name {
            table
                .chains
                .insert(decoded.chain.name.clone(), decoded.chain);
        }
    }

    let mut anonymous = Vec::new();
    for bytes in socket.dump(decode::NFT_MSG_GETSET, nfproto, &filter)? {
        let msg = Message::parse(&bytes).map_err(decode_err(object("set in")))?;
        let decoded = decode::set(&msg).map_err(decode_err(object("set in")))?;
        if decoded.table != name {
            continue;
        }
        let mut set = decoded.set;
        if !set.flags.dynamic {
            set.elements = read_elements(socket, family, name, &set)?;
        }
        if decoded.anonymous {
            anonymous.push(set);
        } else {
            table.sets.insert(set.name.clone(), set);
        }
    }
    let anon_maps = numgen_maps(family, &anonymous);

    // Rules are dumped chain by chain. The kernel resumes a dump once per reply datagram
    // (~32 KiB) and resumes a whole-table rule dump by walking the table from its first rule,
    // skipping what it already sent, so one dump of R rules costs O(R^2) (`perf`:
    // `__nf_tables_dump_rules`, 90 s for the 650k rules of a 50k-Service table). A dump
    // filtered by chain finds the chain in the table's chain hash table and fits in one
    // datagram: one round trip per chain, linear overall.
    let chains: Vec<String> = table.chains.keys().cloned().collect();
    for chain_name in chains {
        let filter = decode::filter_attrs(name, Some(&chain_name));
        let mut index = 0;
        for bytes in socket.dump(decode::NFT_MSG_GETRULE, nfproto, &filter)? {
            let msg = Message::parse(&bytes).map_err(decode_err(object("rule in")))?;
            let decoded = decode::rule(&msg, &anon_maps).map_err(decode_err(object("rule in")))?;
            if decoded.table != name || decoded.chain != chain_name {
                continue;
            }
            let rule = decoded.body.map_err(|source| Error::UnrecognisedRule {
                family,
                table: name.to_owned(),
                chain: decoded.chain.clone(),
                index,
                source,
            })?;
            index += 1;
            let chain = table
                .chains
                .get_mut(&chain_name)
                .expect("the chain came from this table's chain list");
            chain.rules.push(rule);
        }
    }
    Ok(table)
}

/// The elements of `set` (its header as the kernel has it: name, key and data types, flags) in
/// table `family` `table`, sorted by key. A set that does not exist is a netlink error whose
/// errno [`is_not_found`](socket::Errno::is_not_found).
pub(crate) fn read_elements(
    socket: &mut Socket,
    family: Family,
    table: &str,
    set: &ir::Set,
) -> Result<Vec<ir::Element>, Error> {
    let what = format!("elements of set {family} {table} {}", set.name);
    let decode_err = |source| Error::Decode {
        object: what.clone(),
        source,
    };
    let filter = decode::filter_attrs(table, Some(&set.name));
    let mut raw = Vec::new();
    for bytes in socket.dump(decode::NFT_MSG_GETSETELEM, nfproto(family), &filter)? {
        let msg = Message::parse(&bytes).map_err(decode_err)?;
        raw.extend(decode::raw_elements(&msg, set).map_err(decode_err)?);
    }
    decode::elements(set, raw).map_err(decode_err)
}

/// `ruleset` in the form [`read`] returns it: elements of dynamic sets removed (they are
/// packet-path state, see the module doc) and elements sorted by key (the kernel's listing
/// order is not insertion order; the compiler already sorts, hand-built rulesets may not).
pub fn canonical(ruleset: &ir::Ruleset) -> ir::Ruleset {
    let mut ruleset = ruleset.clone();
    for table in &mut ruleset.tables {
        for set in table.sets.values_mut() {
            if set.flags.dynamic {
                set.elements.clear();
            }
            set.elements.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }
    ruleset
}

/// The anonymous `integer : addr . port` maps that can be numgen DNAT targets: indexes `0..N`
/// in order. Other anonymous sets are not kube-nft's; rules using them stay unrecognised.
fn numgen_maps(family: Family, sets: &[ir::Set]) -> AnonMaps {
    let mut maps = AnonMaps::new();
    'sets: for set in sets {
        if set.key != [DataType::Integer] || set.data != [family.addr_type(), DataType::InetService]
        {
            continue;
        }
        let mut targets = Vec::with_capacity(set.elements.len());
        for (i, element) in set.elements.iter().enumerate() {
            match (element.key.as_slice(), &element.data) {
                ([Value::Int(index)], Some(ElemData::Values(values))) if *index as usize == i => {
                    match values.as_slice() {
                        [Value::Addr(addr), Value::Port(port)] => targets.push((*addr, *port)),
                        _ => continue 'sets,
                    }
                }
                _ => continue 'sets,
            }
        }
        maps.insert(set.name.clone(), targets);
    }
    maps
}

pub(crate) fn nfproto(family: Family) -> u8 {
    match family {
        Family::Ip => 2,
        Family::Ip6 => 10,
    }
}
