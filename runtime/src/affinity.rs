//! The stale-affinity sweep: deletes the elements of our ClientIP affinity maps that remember an
//! endpoint the ruleset no longer offers. A map (`affinity-…`, client address → endpoint address)
//! is filled by the packet path, and the kernel never rewrites an existing element's data, so a
//! client whose endpoint left the list would be DNATed to it until the element times out
//! (`timeoutSeconds`, three hours by default). kube-proxy has the same state in one set per
//! endpoint and loses it when it deletes the endpoint's set; we keep one map per endpoint list
//! (the kernel looks sets up by name, one walk per rule naming one, so thousands of per-endpoint
//! sets make loading quadratic) and delete only the elements of endpoints that left, so every
//! other client keeps its endpoint. [`sweep`] is one pass: per map that
//! [`AffinityMaps`](kube_nft_compiler::conntrack::AffinityMaps) lists, one element dump, then
//! one transaction deleting the stale ones. An element that expires between the dump and the
//! delete makes the kernel refuse the whole transaction (`ENOENT`); the map is then read and
//! swept again, a bounded number of times. It runs after each committed change, on the conntrack
//! reconciler's thread (and after `compile`), never on the sync thread: until it has run, a
//! client of a removed endpoint still goes there, the same window UDP conntrack entries have.

use std::time::{Duration, Instant};

use kube_nft_compiler::conntrack::AffinityMaps;
use kube_nft_compiler::ir::{self, ElemData, Family, Value};
use kube_nft_compiler::plan::{self, Object, Op, Verb};

use crate::apply;
use crate::netlink::socket::{self, Socket};
use crate::readback;

/// How many times one map is read and swept when elements expire under the sweep.
const ATTEMPTS: usize = 3;

/// Failures of a sweep.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The nf_tables socket could not be opened.
    #[error("open an nf_tables socket")]
    Open(#[source] socket::Error),
    /// Reading a map's elements failed.
    #[error("read affinity map {family} {map}")]
    Read {
        /// The table's family.
        family: Family,
        /// The map.
        map: String,
        /// Why.
        #[source]
        source: Box<readback::Error>,
    },
    /// The kernel refused the deletes.
    #[error("delete stale elements of affinity map {family} {map}")]
    Delete {
        /// The table's family.
        family: Family,
        /// The map.
        map: String,
        /// Why.
        #[source]
        source: Box<apply::Error>,
    },
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Maps read.
    pub maps: usize,
    /// Elements read (clients with affinity).
    pub examined: usize,
    /// Elements deleted (clients whose endpoint is gone).
    pub deleted: usize,
    /// Wall time of the sweep.
    pub duration: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "deleted {} stale ClientIP affinity entries of {} in {} maps in {:?}",
            self.deleted, self.examined, self.maps, self.duration
        )
    }
}

/// One sweep of `maps` in the calling thread's network namespace. A map the kernel does not
/// have (not committed yet, or already deleted with its Service) is skipped.
pub fn sweep(maps: &AffinityMaps) -> Result<Report, Error> {
    let started = Instant::now();
    let mut report = Report::default();
    if maps.is_empty() {
        return Ok(report);
    }
    let mut socket = Socket::open().map_err(Error::Open)?;
    for (family, table, name, endpoints) in maps.iter() {
        let header = header(family, name);
        report.maps += 1;
        for attempt in 1..=ATTEMPTS {
            let read_err = |source| Error::Read {
                family,
                map: name.to_owned(),
                source: Box::new(source),
            };
            let elements = match readback::read_elements(&mut socket, family, table, &header) {
                Ok(elements) => elements,
                Err(readback::Error::Netlink(e)) if e.errno().is_some_and(|e| e.is_not_found()) => {
                    break
                }
                Err(e) => return Err(read_err(e)),
            };
            if attempt == 1 {
                report.examined += elements.len();
            }
            let stale: Vec<ir::Element> = elements
                .into_iter()
                .filter(|e| match &e.data {
                    Some(ElemData::Values(v)) => match v[..] {
                        [Value::Addr(addr)] => !endpoints.contains(&addr),
                        _ => true,
                    },
                    _ => true,
                })
                .collect();
            if stale.is_empty() {
                break;
            }
            let count = stale.len();
            match delete(family, table, &header, stale) {
                Ok(()) => {
                    report.deleted += count;
                    break;
                }
                Err(e)
                    if attempt < ATTEMPTS
                        && e.netlink()
                            .and_then(socket::Error::errno)
                            .is_some_and(|e| e.is_not_found()) => {}
                Err(source) => {
                    return Err(Error::Delete {
                        family,
                        map: name.to_owned(),
                        source: Box::new(source),
                    })
                }
            }
        }
    }
    report.duration = started.elapsed();
    Ok(report)
}

/// An affinity map's header as `lower` declares it (the timeout does not matter for reading
/// and deleting elements).
fn header(family: Family, name: &str) -> ir::Set {
    let mut set = ir::Set::new(name, vec![family.addr_type()], vec![family.addr_type()]);
    set.flags.dynamic = true;
    set.flags.timeout = true;
    set
}

/// One transaction deleting `stale` from the map.
fn delete(
    family: Family,
    table_name: &str,
    header: &ir::Set,
    stale: Vec<ir::Element>,
) -> Result<(), apply::Error> {
    let mut table = ir::Table::new(family, table_name);
    table.sets.insert(header.name.clone(), header.clone());
    let old = ir::Ruleset {
        tables: vec![table],
    };
    let tx = plan::Transaction {
        ops: vec![Op {
            verb: Verb::Delete,
            family,
            table: table_name.to_owned(),
            object: Object::Elements {
                set: header.name.clone(),
                elements: stale,
            },
        }],
    };
    apply::apply_plan(&old, &tx).map(|_| ())
}
