//! The compiler kept warm between syncs, for the daemon: objects go into a compact
//! [`Inputs`] store as they arrive, and [`Incremental::sync`] re-assembles and re-lowers only
//! the Services an update touched, then plans only their objects. Each Service's contribution
//! to a family's table is kept as a fragment (its chains, its own sets, its elements in the
//! global sets and maps); a global element whose key several Services (or the skeleton) claim
//! belongs to the first claimant in `lower`'s order, so the materialized [`Incremental::ruleset`]
//! is exactly what [`crate::compile`] makes of the same objects. The plan of a sync is computed
//! between two small *partial* rulesets (the touched fragments before and after, plus the
//! before/after winners of every touched element key), so its cost is proportional to the
//! change, not to the cluster. A change of the node-wide part (the Node's addresses, NodePort
//! addresses, ServiceCIDRs) rebuilds everything and asks the caller for a full sync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::graph::{Backend, Graph};
use crate::ir::packed::Packed;
use crate::ir::{ElemData, Element, Family, Ruleset, Table, Value};
use crate::lower::{self, Fragment};
use crate::normalize::{Inputs, Key};
use crate::plan::{self, Transaction};
use crate::{Config, Diagnostic};

/// The families, in table order; index `f` of the per-family arrays below.
const FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];

/// Who put an element into a global set. The skeleton sorts before every Service, and Services
/// in (namespace, name) order, which is the order in which `lower` pushes elements and hence
/// the order in which its duplicate removal keeps the first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Skeleton,
    Service(Arc<Key>),
}

/// The owners of one ownership slot, in `lower`'s order ([`Owner`]'s). Almost every slot has
/// one (two Services on one address make more), so one is held inline: a vector per slot
/// cost a heap allocation for each global element. The list is boxed so that the whole is 16
/// bytes.
#[derive(Clone, Debug)]
enum Owners {
    One(Owner),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Owner>>),
}

impl Owners {
    fn iter(&self) -> std::slice::Iter<'_, Owner> {
        match self {
            Owners::One(owner) => std::slice::from_ref(owner).iter(),
            Owners::Many(owners) => owners.iter(),
        }
    }

    /// Adds `owner` in order (after an equal one).
    fn insert(&mut self, owner: Owner) {
        match self {
            Owners::One(one) => {
                let mut list = vec![one.clone()];
                let at = list.partition_point(|o| *o <= owner);
                list.insert(at, owner);
                *self = Owners::Many(Box::new(list));
            }
            Owners::Many(list) => {
                let at = list.partition_point(|o| *o <= owner);
                list.insert(at, owner);
            }
        }
    }

    /// Removes the Service `key`; whether no owner is left.
    fn remove_service(&mut self, key: &Key) -> bool {
        let of_key = |o: &Owner| matches!(o, Owner::Service(k) if **k == *key);
        match self {
            Owners::One(one) => of_key(one),
            Owners::Many(list) => {
                list.retain(|o| !of_key(o));
                match list.len() {
                    0 => true,
                    1 => {
                        *self = Owners::One(list.pop().expect("one owner"));
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

/// A global element's identity: family index, set index (see [`Incremental::set_names`]), key.
type ElemId = (u8, u16, Vec<crate::ir::Value>);

/// The ownership index's key: a hash of the family index, the global set index and the element
/// key. Keeping a hash instead of a copy of every key saves about a hundred bytes per element;
/// two elements that collide (of any sets) share an owner list, and [`Incremental::winner`]
/// skips owners that do not hold the exact key in that set, so a collision costs a lookup,
/// never a wrong answer.
type OwnerSlot = u64;

fn slot(f: usize, s: u16, key: &[crate::ir::Value]) -> OwnerSlot {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same on every run, so behaviour is deterministic.
    let mut hasher = std::hash::DefaultHasher::new();
    (f as u8, s).hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

/// One Service as lowered, per family.
#[derive(Debug)]
struct Lowered {
    key: Arc<Key>,
    /// The Service as assembled for this node (for the checks across Services).
    service: Option<crate::graph::Service>,
    fragments: [Stored; 2],
    /// The shared chains of `fragments` with their maps (without elements), until
    /// [`Incremental::install`] registers them.
    /// Boxed, as it is empty for the Service's whole installed life.
    shared: Option<Box<[SharedOfFamily; 2]>>,
    diags: Vec<Diagnostic>,
    /// Service ports with a Local policy and no local endpoint: (external, internal).
    no_local: (u32, u32),
}

/// A [`Fragment`] with its elements in global sets and in shared DNAT maps keyed by set index,
/// and the shared DNAT chains (and their maps) it enters by name only: their one copy is in
/// [`Incremental::shared`].
#[derive(Debug, Default)]
struct Stored {
    chains: Box<[crate::ir::Chain]>,
    shared: Box<[String]>,
    sets: Box<[crate::ir::Set]>,
    /// Packed (see [`Packed`]): one allocation of about 50 bytes each instead of five.
    elements: Box<[(u16, Packed)]>,
    /// The elements in shared maps, one group per frontend.
    slots: Box<[SlotGroup]>,
    /// The `hairpin` set's elements, `e . e`, by endpoint address (only the endpoints a DNATed
    /// packet can come from; see `lower::service::add_hairpin_pairs`), kept as 17 bytes each
    /// instead of an IR element with a heap-allocated key (about 170 bytes).
    hairpins: Box<[IpAddr]>,
}

impl Stored {
    /// The slots this fragment claims in the ownership index (family `f`): each element in a
    /// global set, and each slot group by its frontend (see [`SlotGroup`]). Hairpin pairs are
    /// counted instead ([`HairpinCounts`]).
    fn owned_slots(&self, f: usize) -> impl Iterator<Item = OwnerSlot> + '_ {
        (self
            .elements
            .iter()
            .map(move |(s, e)| slot(f, *s, &e.key())))
        .chain(self.slots.iter().map(move |g| slot(f, g.set, &g.frontend)))
    }

    /// Whether this fragment holds the global element `key` of set `s` (hairpin pairs aside).
    fn element(&self, s: u16, key: &[Value]) -> Option<Element> {
        (self.elements.iter())
            .find(|(set, e)| *set == s && e.key() == *key)
            .map(|(_, e)| e.unpack())
    }
}

/// How many installed Services hold each endpoint's hairpin pair `e . e`: every claimant of a
/// pair makes the same element, so a count says all there is to say about who owns it, in 8
/// bytes per IPv4 endpoint (the pairs were half a million slots at 50k Services before they
/// were limited to the endpoints that can hairpin here, and in the ownership index cost 24
/// bytes each and doubled its table).
#[derive(Debug, Default)]
struct HairpinCounts {
    v4: HashMap<std::net::Ipv4Addr, u32>,
    v6: HashMap<std::net::Ipv6Addr, u32>,
}

impl HairpinCounts {
    fn add(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => *self.v4.entry(a).or_default() += 1,
            IpAddr::V6(a) => *self.v6.entry(a).or_default() += 1,
        }
    }

    fn remove(&mut self, addr: IpAddr) {
        fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) {
            if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        match addr {
            IpAddr::V4(a) => dec(&mut self.v4, a),
            IpAddr::V6(a) => dec(&mut self.v6, a),
        }
    }

    fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.contains_key(&a),
            IpAddr::V6(a) => self.v6.contains_key(&a),
        }
    }
}

/// The `hairpin` set's element of endpoint `addr`: `addr . addr`.
fn hairpin_element(addr: IpAddr) -> Element {
    Element {
        key: vec![Value::Addr(addr), Value::Addr(addr)],
        data: None,
        comment: None,
    }
}

/// A frontend's K slots in a shared chain's map, `frontend . i : endpoint_i`, kept as one
/// record: at 50k Services the slots are most of the ruleset's elements (1.4 million), and
/// the frontends of a port share one endpoint list. Every map belongs to one shared chain and
/// so to one K, so of several Services claiming a frontend in a map the first claims every
/// slot, which is what per-key ownership would give: the group is the ownership unit.
/// The endpoints are kept as addresses and ports (20 bytes each, instead of two IR values of
/// 32), in the same allocation as the Service port's list where they are all of it.
#[derive(Debug)]
struct SlotGroup {
    set: u16,
    frontend: Box<[Value]>,
    endpoints: Arc<[Backend]>,
}

impl SlotGroup {
    fn element(&self, i: usize) -> Option<Element> {
        let Backend { addr, port } = *self.endpoints.get(i)?;
        let mut key = Vec::with_capacity(self.frontend.len() + 1);
        key.extend_from_slice(&self.frontend);
        key.push(Value::Int(i as u32));
        Some(Element {
            key,
            data: Some(ElemData::Values(vec![Value::Addr(addr), Value::Port(port)])),
            comment: None,
        })
    }

    fn elements(&self) -> impl Iterator<Item = Element> + '_ {
        (0..self.endpoints.len()).filter_map(|i| self.element(i))
    }
}

/// The shared DNAT chains (with their maps, no elements) a Service enters in one family.
type SharedOfFamily = Vec<(crate::ir::Chain, crate::ir::Set)>;

/// A shared DNAT chain, its map (no elements) and how many installed Services enter it.
type SharedChain = (usize, crate::ir::Chain, crate::ir::Set);

/// Each dispatch table number's position among a family's `n` tables, which are in name order
/// (`kube-nft`, then `kube-nft-dispatch-1`, `-10`, `-11`, `-2`, …).
fn table_positions(n: u16) -> Vec<usize> {
    let mut by_name: Vec<(String, u16)> = (0..n)
        .map(|t| (crate::ir::names::dispatch_table(t), t))
        .collect();
    by_name.sort();
    let mut positions = vec![0; usize::from(n)];
    for (position, (_, t)) in by_name.into_iter().enumerate() {
        positions[usize::from(t)] = position;
    }
    positions
}

/// The outcome of [`Incremental::sync`].
#[derive(Debug)]
pub enum Sync {
    /// Nothing to do.
    Unchanged,
    /// The operations that take a kernel holding the previous desired state to the new one.
    /// `base` holds the (partial) tables the operations refer to, with every set they touch
    /// declared: what an encoder needs to know about existing sets.
    Delta {
        /// The partial ruleset the transaction was planned from.
        base: Ruleset,
        /// The operations, to be sent as one transaction.
        transaction: Transaction,
        /// Services whose desired state was recomputed.
        services: usize,
    },
    /// The node-wide part changed (or this is the first sync): the whole ruleset must be
    /// planned against what the kernel holds.
    Full,
}

/// One health-check NodePort: whose it is and what it reports (see
/// [`Incremental::health_check_ports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The Service.
    pub service: Key,
    /// Per family the Service has a ClusterIP in: the distinct addresses of this node's ready
    /// endpoints of that family (kube-proxy's `localEndpoints`).
    pub local_endpoints: BTreeMap<Family, usize>,
}

/// The warm compiler: inputs, the node-wide context, and every Service's lowered fragments.
#[derive(Debug)]
pub struct Incremental {
    config: Config,
    inputs: Inputs,
    context: Graph,
    context_diags: Vec<Diagnostic>,
    /// Per family: the skeleton with its own elements (sorted), and an empty copy of its global
    /// sets to lower Services into.
    skeletons: [Table; 2],
    scratch: [Table; 2],
    /// Per family, the skeletons of the further dispatch tables (`--dispatch-tables`), by
    /// table number from 1.
    dispatch_skeletons: [Vec<Table>; 2],
    /// `--dispatch-tables`, and each table number's position among a family's tables, which
    /// are in name order (`kube-nft`, `kube-nft-dispatch-1`, `-10`, `-11`, `-2`, …).
    dispatch_tables: u16,
    table_position: Vec<usize>,
    /// Per family, the names of the sets Services add elements to, indexed by the `u16` of an
    /// [`ElemId`]: the skeleton's global sets first, then every shared DNAT map seen so far
    /// (append-only until the skeleton is rebuilt, which re-lowers every Service).
    set_names: [Vec<String>; 2],
    set_index: [HashMap<String, u16>; 2],
    /// Boxed: a `Lowered` is about 600 bytes, and a B-tree keeps its values in nodes that are
    /// on average a third empty.
    services: BTreeMap<Key, Box<Lowered>>,
    owners: HashMap<OwnerSlot, Owners>,
    /// Per family, the installed Services' hairpin pairs.
    hairpins: [HairpinCounts; 2],
    /// Per family, the shared DNAT chains (`clusterip-random-3`) and their maps (declarations
    /// only; the elements belong to the Services) by dispatch table and name, with the number
    /// of installed Services that enter each: a chain and its map exist in a table while that
    /// count is above zero.
    shared: [HashMap<(u16, String), SharedChain>; 2],
    /// The sum of every Service's `no_local`.
    no_local: (usize, usize),
    /// Services with a health-check node port, and Services with a UDP or SCTP port: what
    /// [`Incremental::health_check_ports`] and [`Incremental::udp_destinations`] read after
    /// every round, kept so that they need not walk every Service.
    with_health_check: BTreeSet<Key>,
    with_udp: BTreeSet<Key>,
    /// Services with ClientIP affinity: what [`Incremental::affinity_maps`] reads.
    with_affinity: BTreeSet<Key>,
    /// Whether what [`Incremental::udp_destinations`] and [`Incremental::affinity_maps`] return
    /// may have changed since [`Incremental::take_conntrack_changed`] last said so: a Service
    /// with a UDP or SCTP port or with affinity was installed or removed, or every Service was.
    conntrack_changed: bool,
    /// The next sync must be [`Sync::Full`].
    full: bool,
    /// ... after re-lowering every Service (first sync, or the node-wide part changed).
    rebuild: bool,
    /// Services the kernel refused, with why: not programmed until their objects change.
    quarantined: BTreeMap<Key, String>,
    /// Services to recompute at the next sync for reasons of our own (a quarantine).
    requeued: BTreeSet<Key>,
    /// The Services the last sync recomputed.
    last_changed: Vec<Key>,
}

impl Incremental {
    /// An empty compiler for the node described by `config`; the first [`Incremental::sync`]
    /// is a full one.
    pub fn new(config: &Config) -> Incremental {
        let inputs = Inputs::new(config);
        let (context, context_diags) = inputs.context();
        let mut this = Incremental {
            config: config.clone(),
            inputs,
            context,
            context_diags,
            skeletons: [Table::new(Family::Ip, ""), Table::new(Family::Ip6, "")],
            scratch: [Table::new(Family::Ip, ""), Table::new(Family::Ip6, "")],
            dispatch_skeletons: Default::default(),
            dispatch_tables: config.dispatch_tables.max(1),
            table_position: table_positions(config.dispatch_tables.max(1)),
            set_names: [Vec::new(), Vec::new()],
            set_index: Default::default(),
            services: BTreeMap::new(),
            owners: HashMap::new(),
            hairpins: Default::default(),
            shared: Default::default(),
            no_local: (0, 0),
            with_health_check: BTreeSet::new(),
            with_udp: BTreeSet::new(),
            with_affinity: BTreeSet::new(),
            conntrack_changed: true,
            full: true,
            rebuild: true,
            quarantined: BTreeMap::new(),
            requeued: BTreeSet::new(),
            last_changed: Vec::new(),
        };
        this.rebuild_skeletons();
        this
    }

    /// The object store, to apply updates to.
    pub fn inputs_mut(&mut self) -> &mut Inputs {
        &mut self.inputs
    }

    /// The object store.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// The node-wide part of the graph the current state was lowered for.
    pub fn context(&self) -> &Graph {
        &self.context
    }

    /// Makes the next [`Incremental::sync`] a full one (after a refused transaction, or to
    /// verify the kernel).
    pub fn force_full(&mut self) {
        self.full = true;
    }

    /// Brings the desired state up to date with the inputs and says what the kernel needs.
    pub fn sync(&mut self) -> Sync {
        let mut changes = self.inputs.take_changes();
        // A new version of a refused Service's objects gets another chance.
        for key in &changes.services {
            self.quarantined.remove(key);
        }
        changes.services.append(&mut self.requeued);
        self.last_changed = changes.services.iter().cloned().collect();
        if changes.context {
            let (context, diags) = self.inputs.context();
            self.context_diags = diags;
            if context != self.context {
                self.context = context;
                self.rebuild_skeletons();
                self.rebuild = true;
            }
        }
        if self.rebuild {
            self.rebuild = false;
            self.full = false;
            self.rebuild_services();
            return Sync::Full;
        }
        if self.full {
            // The kernel may be anywhere (a refused transaction, drift): bring every changed
            // Service up to date, then let the caller plan the whole ruleset.
            self.full = false;
            self.update(&changes.services);
            return Sync::Full;
        }
        if changes.services.is_empty() {
            return Sync::Unchanged;
        }
        let (base, next) = self.update(&changes.services);
        let transaction = plan::plan(&base, &next);
        if transaction.is_empty() {
            return Sync::Unchanged;
        }
        Sync::Delta {
            base,
            transaction,
            services: changes.services.len(),
        }
    }

    fn rebuild_skeletons(&mut self) {
        for (f, family) in FAMILIES.into_iter().enumerate() {
            let ctx = lower::family_ctx(&self.context, &self.config, family);
            let mut skeleton = lower::skeleton_table(&ctx);
            for set in skeleton.sets.values_mut() {
                set.elements.sort_by(|a, b| a.key.cmp(&b.key));
                set.elements.dedup_by(|a, b| a.key == b.key);
            }
            self.scratch[f] = lower::scratch_table(&skeleton);
            self.dispatch_skeletons[f] = (1..self.dispatch_tables)
                .map(|i| {
                    let mut table = lower::dispatch_skeleton_table(&ctx, i);
                    for set in table.sets.values_mut() {
                        set.elements.sort_by(|a, b| a.key.cmp(&b.key));
                        set.elements.dedup_by(|a, b| a.key == b.key);
                    }
                    table
                })
                .collect();
            self.set_names[f] = skeleton.sets.keys().cloned().collect();
            self.set_index[f] = (self.set_names[f].iter().enumerate())
                .map(|(i, name)| (name.clone(), i as u16))
                .collect();
            self.skeletons[f] = skeleton;
        }
    }

    /// Re-lowers every Service for the current context and rebuilds the ownership index.
    fn rebuild_services(&mut self) {
        self.services.clear();
        self.owners.clear();
        self.hairpins = Default::default();
        self.shared = Default::default();
        self.no_local = (0, 0);
        self.with_health_check.clear();
        self.with_udp.clear();
        self.with_affinity.clear();
        self.conntrack_changed = true;
        for (f, skeleton) in self.skeletons.iter().enumerate() {
            for (s, set) in skeleton.sets.values().enumerate() {
                for element in &set.elements {
                    let owners = self.owners.entry(slot(f, s as u16, &element.key));
                    owners
                        .and_modify(|o| o.insert(Owner::Skeleton))
                        .or_insert(Owners::One(Owner::Skeleton));
                }
            }
        }
        let keys: Vec<Key> = self.inputs.service_keys().cloned().collect();
        for key in keys {
            if let Some(lowered) = self.lower(&key) {
                self.install(lowered);
            }
        }
    }

    /// Assembles and lowers one Service; `None` when it has nothing to program and no
    /// diagnostics to keep.
    fn lower(&mut self, key: &Key) -> Option<Box<Lowered>> {
        let (mut service, mut diags) = self.inputs.service(key, &self.context);
        if let Some(reason) = self.quarantined.get(key) {
            service = None;
            diags.push(Diagnostic::new(
                "Service",
                &key.namespace,
                &key.name,
                "",
                format!(
                    "the kernel refused this Service's rules ({reason}); not programmed until \
                     its objects change"
                ),
            ));
        }
        if service.is_none() && diags.is_empty() {
            return None;
        }
        let mut fragments: [Stored; 2] = Default::default();
        let mut shared: [SharedOfFamily; 2] = Default::default();
        let mut no_local = (0, 0);
        if let Some(service) = &service {
            let reachable = !service.external_ips.is_empty() || !service.lb_ips.is_empty();
            for port in service.ports.iter().filter(|p| p.local.is_empty()) {
                let external = reachable || port.node_port.is_some();
                no_local.0 += u32::from(service.external_local && external);
                no_local.1 += u32::from(service.internal_local);
            }
            for (f, family) in FAMILIES.into_iter().enumerate() {
                let ctx = lower::family_ctx(&self.context, &self.config, family);
                let fragment =
                    lower::lower_service(&self.skeletons[f], &mut self.scratch[f], &ctx, service);
                (fragments[f], shared[f]) = self.store(f, fragment, service);
            }
        }
        Some(Box::new(Lowered {
            key: Arc::new(key.clone()),
            service,
            fragments,
            shared: Some(Box::new(shared)),
            diags,
            no_local,
        }))
    }

    /// Splits a fragment into what a Service keeps (its chains and sets, its elements by set
    /// index) and the shared chains and maps it enters, whose elements become the Service's.
    fn store(
        &mut self,
        f: usize,
        fragment: Fragment,
        service: &crate::graph::Service,
    ) -> (Stored, Vec<(crate::ir::Chain, crate::ir::Set)>) {
        let is_shared = |name: &str| crate::ir::names::is_dnat_chain(name);
        let hairpin = self.hairpin_index(f);
        let mut elements: Vec<(u16, Packed)> = Vec::new();
        let mut hairpins = Vec::new();
        for (set, element) in fragment.elements {
            let index = self.set_index[f][&set];
            match (&element.key[..], &element.data, &element.comment) {
                ([Value::Addr(a), Value::Addr(b)], None, None) if index == hairpin && a == b => {
                    hairpins.push(*a);
                }
                _ => elements.push((index, Packed::pack(&element))),
            }
        }
        let (shared_sets, sets): (Vec<_>, Vec<_>) =
            fragment.sets.into_iter().partition(|s| is_shared(&s.name));
        let mut maps = BTreeMap::new();
        // (set, frontend, endpoints), in the order lower pushed them: a frontend's slots are
        // consecutive and in slot order.
        type Group = (u16, Vec<Value>, Vec<Backend>);
        let mut groups: Vec<Group> = Vec::new();
        for mut map in shared_sets {
            let index = self.index_of(f, &map.name);
            for mut element in map.elements.drain(..) {
                let slot_value = element.key.pop();
                // `lower::service` writes every slot as `frontend . i : address . port`.
                let endpoint = match (element.data.as_ref(), slot_value) {
                    (Some(ElemData::Values(v)), Some(Value::Int(i))) => match v[..] {
                        [Value::Addr(addr), Value::Port(port)] => (i, Backend { addr, port }),
                        _ => unreachable!("a shared map's slot data: {v:?}"),
                    },
                    other => unreachable!("a shared map's slot: {other:?}"),
                };
                match groups.last_mut() {
                    Some((set, frontend, list)) if *set == index && *frontend == element.key => {
                        debug_assert_eq!(endpoint.0 as usize, list.len());
                        list.push(endpoint.1);
                    }
                    _ => groups.push((index, element.key, vec![endpoint.1])),
                }
            }
            maps.insert(map.name.clone(), map);
        }
        let mut slots: Vec<SlotGroup> = Vec::with_capacity(groups.len());
        for (set, frontend, list) in groups {
            // The frontends of a port pick from the same list, usually the port's own (when
            // the Service has one family): keep one copy.
            let ports = service.ports.iter().flat_map(|p| [&p.cluster, &p.local]);
            let endpoints = match (slots.iter().map(|g| &g.endpoints))
                .chain(ports)
                .find(|l| ***l == *list)
            {
                Some(same) => same.clone(),
                None => Arc::from(list),
            };
            slots.push(SlotGroup {
                set,
                frontend: frontend.into(),
                endpoints,
            });
        }
        let (shared, chains): (Vec<_>, Vec<_>) = fragment
            .chains
            .into_iter()
            .partition(|c| is_shared(&c.name));
        let shared: Vec<_> = shared
            .into_iter()
            .map(|chain| {
                let map = maps
                    .remove(&chain.name)
                    .expect("a shared chain has its map");
                (chain, map)
            })
            .collect();
        let stored = Stored {
            chains: chains.into(),
            shared: shared.iter().map(|(c, _)| c.name.clone()).collect(),
            sets: sets.into(),
            elements: elements.into(),
            slots: slots.into(),
            hairpins: hairpins.into(),
        };
        (stored, shared)
    }

    /// The index of the `hairpin` set in family `f` (a skeleton set, always registered).
    fn hairpin_index(&self, f: usize) -> u16 {
        self.set_index[f][crate::lower::HAIRPIN]
    }

    /// The index of a set name, registering a shared map's name the first time.
    fn index_of(&mut self, f: usize, name: &str) -> u16 {
        if let Some(index) = self.set_index[f].get(name) {
            return *index;
        }
        let index = u16::try_from(self.set_names[f].len()).expect("fewer than 65536 sets");
        self.set_names[f].push(name.to_string());
        self.set_index[f].insert(name.to_string(), index);
        index
    }

    fn install(&mut self, mut lowered: Box<Lowered>) {
        let t = self.table_of(&lowered.key);
        let shared = lowered.shared.take().map_or_else(Default::default, |s| *s);
        for (f, shared) in shared.into_iter().enumerate() {
            for (chain, map) in shared {
                let entry = self.shared[f].entry((t, chain.name.clone()));
                entry.or_insert((0, chain, map)).0 += 1;
            }
        }
        self.no_local.0 += lowered.no_local.0 as usize;
        self.no_local.1 += lowered.no_local.1 as usize;
        if let Some(service) = &lowered.service {
            if service.health_check_node_port.is_some() {
                self.with_health_check.insert((*lowered.key).clone());
            }
            if service
                .ports
                .iter()
                .any(|p| crate::conntrack::reconciled(p.proto))
            {
                self.with_udp.insert((*lowered.key).clone());
                self.conntrack_changed = true;
            }
            if service.affinity_timeout.is_some() {
                self.with_affinity.insert((*lowered.key).clone());
                self.conntrack_changed = true;
            }
        }
        for (f, stored) in lowered.fragments.iter().enumerate() {
            for addr in &stored.hairpins {
                self.hairpins[f].add(*addr);
            }
            for id in stored.owned_slots(f) {
                let owner = Owner::Service(lowered.key.clone());
                match self.owners.entry(id) {
                    std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().insert(owner),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(Owners::One(owner));
                    }
                }
            }
        }
        self.services.insert((*lowered.key).clone(), lowered);
    }

    fn uninstall(&mut self, key: &Key) -> Option<Box<Lowered>> {
        let lowered = self.services.remove(key)?;
        let t = self.table_of(key);
        self.no_local.0 -= lowered.no_local.0 as usize;
        self.no_local.1 -= lowered.no_local.1 as usize;
        self.with_health_check.remove(key);
        // Bitwise: both sets must forget the key.
        if self.with_udp.remove(key) | self.with_affinity.remove(key) {
            self.conntrack_changed = true;
        }
        for (f, stored) in lowered.fragments.iter().enumerate() {
            for name in &stored.shared {
                let id = (t, name.clone());
                if let Some(entry) = self.shared[f].get_mut(&id) {
                    entry.0 -= 1;
                    if entry.0 == 0 {
                        self.shared[f].remove(&id);
                    }
                }
            }
            for addr in &stored.hairpins {
                self.hairpins[f].remove(*addr);
            }
            for id in stored.owned_slots(f) {
                if let Some(owners) = self.owners.get_mut(&id) {
                    if owners.remove_service(key) {
                        self.owners.remove(&id);
                    }
                }
            }
        }
        Some(lowered)
    }

    /// The element that wins `id` now, if any, with the dispatch table it goes in: the first
    /// owner (in `lower`'s order) that holds exactly this key. A Service's elements in the
    /// dispatch maps and its slots go in its table, everything else in the main one.
    fn winner(&self, id: &ElemId) -> Option<(u16, Element)> {
        let (f, s, key) = id;
        let (fi, si) = (*f as usize, usize::from(*s));
        if si >= self.skeletons[fi].sets.len() {
            // A shared map's slot: owned by frontend (see `SlotGroup`).
            let (frontend, i) = key.split_at(key.len().checked_sub(1)?);
            let [Value::Int(i)] = i else { return None };
            return self
                .owners
                .get(&slot(fi, *s, frontend))?
                .iter()
                .find_map(|owner| {
                    let Owner::Service(service) = owner else {
                        return None;
                    };
                    let stored = &self.services.get(service)?.fragments[fi];
                    let group =
                        (stored.slots.iter()).find(|g| g.set == *s && *g.frontend == *frontend)?;
                    Some((self.table_of(service), group.element(*i as usize)?))
                });
        }
        let name = &self.set_names[fi][si];
        let dispatch = lower::is_dispatch_set(name);
        let owned = (self.owners.get(&slot(fi, *s, key)).into_iter())
            .flat_map(|owners| owners.iter())
            .find_map(|owner| match owner {
                Owner::Skeleton => self.skeletons[fi]
                    .sets
                    .get(name)?
                    .elements
                    .iter()
                    .find(|e| e.key == *key)
                    .map(|e| (0, e.clone())),
                Owner::Service(service) => {
                    let element = self.services.get(service)?.fragments[fi].element(*s, key)?;
                    let t = if dispatch { self.table_of(service) } else { 0 };
                    Some((t, element))
                }
            });
        if owned.is_some() || *s != self.hairpin_index(fi) {
            return owned;
        }
        match key[..] {
            [Value::Addr(a), Value::Addr(b)] if a == b && self.hairpins[fi].contains(a) => {
                Some((0, hairpin_element(a)))
            }
            _ => None,
        }
    }

    /// Whether the Service `key` is the first owner (in `lower`'s order) that holds the global
    /// element `element` of set `s`, or the slot group of frontend `element` of shared map `s`,
    /// in family `f`.
    fn claims(&self, f: usize, s: u16, element: &[Value], key: &Key) -> bool {
        let slots = usize::from(s) >= self.skeletons[f].sets.len();
        let first = (self.owners.get(&slot(f, s, element)).into_iter())
            .flat_map(Owners::iter)
            .find(|owner| match owner {
                Owner::Skeleton => !slots,
                Owner::Service(service) => self.services.get(service).is_some_and(|l| {
                    let stored = &l.fragments[f];
                    match slots {
                        true => {
                            (stored.slots.iter()).any(|g| g.set == s && *g.frontend == *element)
                        }
                        false => stored.element(s, element).is_some(),
                    }
                }),
            });
        matches!(first, Some(Owner::Service(service)) if **service == *key)
    }

    /// The dispatch table (number) of the Service `key`.
    fn table_of(&self, key: &Key) -> u16 {
        if self.dispatch_tables == 1 {
            return 0;
        }
        lower::dispatch_table_of(&key.namespace, &key.name, self.dispatch_tables)
    }

    /// The index in a partial or whole ruleset of family `f`'s dispatch table `t`.
    fn table_index(&self, f: usize, t: u16) -> usize {
        f * usize::from(self.dispatch_tables) + self.table_position[usize::from(t)]
    }

    /// Family `f`'s tables that declare the skeleton set `name`, by number: the main table,
    /// and for a dispatch map or `nodeport-ips` every dispatch table.
    fn tables_with_set(&self, f: usize, name: &str) -> Vec<u16> {
        let further = (self.dispatch_skeletons[f].iter().zip(1u16..))
            .filter(|(table, _)| table.sets.contains_key(name))
            .map(|(_, t)| t);
        std::iter::once(0).chain(further).collect()
    }

    /// Re-lowers the given Services and returns the partial rulesets before and after.
    fn update(&mut self, keys: &BTreeSet<Key>) -> (Ruleset, Ruleset) {
        let mut before = self.partial();
        let mut after = self.partial();
        let mut touched: BTreeSet<ElemId> = BTreeSet::new();
        // (family, dispatch table, name) of the shared chains the touched Services enter.
        let mut touched_chains: BTreeSet<(usize, u16, String)> = BTreeSet::new();
        let mut fresh = Vec::new();
        for key in keys {
            let new = self.lower(key);
            let t = self.table_of(key);
            for (lowered, side) in [
                (self.services.get(key), &mut before),
                (new.as_ref(), &mut after),
            ] {
                let Some(lowered) = lowered else { continue };
                for (f, stored) in lowered.fragments.iter().enumerate() {
                    let table = &mut side.tables[self.table_index(f, t)];
                    for chain in &stored.chains {
                        table.chains.insert(chain.name.clone(), chain.clone());
                    }
                    for set in &stored.sets {
                        table.sets.insert(set.name.clone(), set.clone());
                    }
                    for (s, element) in &stored.elements {
                        touched.insert((f as u8, *s, element.key()));
                    }
                    let hairpin = self.hairpin_index(f);
                    for addr in &stored.hairpins {
                        touched.insert((f as u8, hairpin, hairpin_element(*addr).key));
                    }
                    for group in &stored.slots {
                        for element in group.elements() {
                            touched.insert((f as u8, group.set, element.key));
                        }
                    }
                    for name in &stored.shared {
                        touched_chains.insert((f, t, name.clone()));
                    }
                }
            }
            fresh.push((key.clone(), new));
        }
        // With several dispatch tables, a frontend's slots may change hands to a Service of
        // another table, whose shared chain and map that table has, untouched: both sides
        // must declare them there (a chain only one side has would be added or deleted).
        let mut claimed_in = self.slot_owner_chains(&touched);
        self.fill_shared(&mut before, &touched_chains);
        self.fill_shared(&mut before, &claimed_in);
        self.fill(&mut before, &touched);
        for (key, new) in fresh {
            self.uninstall(&key);
            if let Some(new) = new {
                self.install(new);
            }
        }
        // The chains of the owners after, which the touched Services do not enter: untouched,
        // they existed before as they do now.
        let now = self.slot_owner_chains(&touched);
        let late: BTreeSet<_> = (now.iter())
            .filter(|c| !claimed_in.contains(*c) && !touched_chains.contains(*c))
            .cloned()
            .collect();
        self.fill_shared(&mut before, &late);
        claimed_in.extend(now);
        self.fill_shared(&mut after, &touched_chains);
        self.fill_shared(&mut after, &claimed_in);
        self.fill(&mut after, &touched);
        (before, after)
    }

    /// The shared chains, by (family, dispatch table, name), of every Service owning one of the
    /// touched slots' frontends: where those slots may go. Empty with one dispatch table.
    fn slot_owner_chains(&self, touched: &BTreeSet<ElemId>) -> BTreeSet<(usize, u16, String)> {
        let mut out = BTreeSet::new();
        if self.dispatch_tables == 1 {
            return out;
        }
        let mut seen = std::collections::HashSet::new();
        for (f, s, key) in touched {
            let (fi, si) = (usize::from(*f), usize::from(*s));
            if si < self.skeletons[fi].sets.len() || key.is_empty() {
                continue;
            }
            let frontend = &key[..key.len() - 1];
            let id = slot(fi, *s, frontend);
            if !seen.insert(id) {
                continue;
            }
            for owner in self.owners.get(&id).into_iter().flat_map(Owners::iter) {
                if let Owner::Service(service) = owner {
                    let name = self.set_names[fi][si].clone();
                    out.insert((fi, self.table_of(service), name));
                }
            }
        }
        out
    }

    /// Adds the touched shared chains and their (empty) maps that exist now: some installed
    /// Service of their table enters them.
    fn fill_shared(&self, partial: &mut Ruleset, touched: &BTreeSet<(usize, u16, String)>) {
        for (f, t, name) in touched {
            if let Some((_, chain, map)) = self.shared[*f].get(&(*t, name.clone())) {
                let table = &mut partial.tables[self.table_index(*f, *t)];
                table.chains.insert(name.clone(), chain.clone());
                table
                    .sets
                    .entry(name.clone())
                    .or_insert_with(|| map.clone());
            }
        }
    }

    /// Every table (both families, a family's in name order) with the skeleton's identity and
    /// no contents.
    fn partial(&self) -> Ruleset {
        let tables = (self.family_tables().into_iter())
            .map(|skeleton| {
                let mut table = Table::new(skeleton.family, skeleton.name.clone());
                table.comment = skeleton.comment.clone();
                table
            })
            .collect();
        Ruleset { tables }
    }

    /// The skeletons of every table, in ruleset order: by family, then by name.
    fn family_tables(&self) -> Vec<&Table> {
        let mut out = Vec::new();
        for f in 0..FAMILIES.len() {
            let mut tables: Vec<&Table> = std::iter::once(&self.skeletons[f])
                .chain(&self.dispatch_skeletons[f])
                .collect();
            tables.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(tables);
        }
        out
    }

    /// Adds the current winner of every touched element (and the header of its global set in
    /// every table that has it, also when there is none, so both sides of a plan declare the
    /// same sets). A shared map is declared by [`Incremental::fill_shared`] where it exists;
    /// where it does not, it has no elements either.
    fn fill(&self, partial: &mut Ruleset, touched: &BTreeSet<ElemId>) {
        let mut declared: Option<(u8, u16)> = None;
        for id in touched {
            let (f, s, _) = id;
            let fi = usize::from(*f);
            let name = &self.set_names[fi][usize::from(*s)];
            let winner = self.winner(id);
            if let Some(global) = self.skeletons[fi].sets.get(name) {
                if declared != Some((*f, *s)) {
                    declared = Some((*f, *s));
                    for t in self.tables_with_set(fi, name) {
                        let table = &mut partial.tables[self.table_index(fi, t)];
                        table.sets.entry(name.clone()).or_insert_with(|| {
                            let mut set = global.clone();
                            set.elements.clear();
                            set
                        });
                    }
                }
            }
            let Some((t, element)) = winner else { continue };
            let table = &mut partial.tables[self.table_index(fi, t)];
            // `touched` is ordered by key within a set, so elements stay sorted.
            if let Some(set) = table.sets.get_mut(name) {
                set.elements.push(element);
            }
        }
    }

    /// The whole desired ruleset, exactly as [`crate::compile`] would lower the same inputs.
    pub fn ruleset(&self) -> Ruleset {
        let mut tables: Vec<Table> = self.family_tables().into_iter().cloned().collect();
        // With several dispatch tables, a frontend two Services claim belongs to the first,
        // in whichever table (`lower`'s `Placer`); in one table `dedup_by` below does that.
        let several = self.dispatch_tables > 1;
        for f in 0..FAMILIES.len() {
            for ((t, name), (_, chain, map)) in &self.shared[f] {
                let table = &mut tables[self.table_index(f, *t)];
                table.chains.insert(name.clone(), chain.clone());
                table.sets.insert(name.clone(), map.clone());
            }
            let main = self.table_index(f, 0);
            for (key, lowered) in &self.services {
                let own = self.table_index(f, self.table_of(key));
                let stored = &lowered.fragments[f];
                for chain in &stored.chains {
                    tables[own].chains.insert(chain.name.clone(), chain.clone());
                }
                for set in &stored.sets {
                    tables[own].sets.insert(set.name.clone(), set.clone());
                }
                for (s, element) in &stored.elements {
                    let name = &self.set_names[f][usize::from(*s)];
                    let to = if lower::is_dispatch_set(name) {
                        if several && !self.claims(f, *s, &element.key(), key) {
                            continue;
                        }
                        own
                    } else {
                        main
                    };
                    let set = tables[to].sets.get_mut(name).expect("global set");
                    set.elements.push(element.unpack());
                }
                for group in &stored.slots {
                    if several && !self.claims(f, group.set, &group.frontend, key) {
                        continue;
                    }
                    let name = &self.set_names[f][usize::from(group.set)];
                    let set = tables[own].sets.get_mut(name).expect("shared map");
                    set.elements.extend(group.elements());
                }
                if !stored.hairpins.is_empty() {
                    let set =
                        (tables[main].sets.get_mut(crate::lower::HAIRPIN)).expect("global set");
                    set.elements
                        .extend(stored.hairpins.iter().map(|a| hairpin_element(*a)));
                }
            }
        }
        for table in &mut tables {
            for set in table.sets.values_mut() {
                set.elements.sort_by(|a, b| a.key.cmp(&b.key));
                set.elements.dedup_by(|a, b| a.key == b.key);
            }
        }
        Ruleset { tables }
    }

    /// The Service that owns the chain or set `object` names (as an encoder error or a kernel
    /// rejection describes it: `ip kube-nft service-…-ns/name/tcp/80 …`), if any.
    pub fn owner_of(&self, object: &str) -> Option<Key> {
        let words: Vec<&str> = object.split_whitespace().collect();
        self.services.iter().find_map(|(key, lowered)| {
            let owns = lowered.fragments.iter().any(|stored| {
                stored
                    .chains
                    .iter()
                    .any(|c| words.contains(&c.name.as_str()))
                    || stored.sets.iter().any(|s| words.contains(&s.name.as_str()))
            });
            owns.then(|| key.clone())
        })
    }

    /// The health-check NodePorts to serve, by port: every programmed LoadBalancer with
    /// `externalTrafficPolicy: Local` and a `spec.healthCheckNodePort`, with its local ready
    /// endpoints per family it has a ClusterIP in (kube-proxy runs one proxier, and so one
    /// health server, per family, and a Service exists in a family through its ClusterIP). A
    /// port claimed twice goes to the first Service in namespace/name order (the other gets a
    /// diagnostic from the checks across Services). A Service the kernel refused is not
    /// programmed, so it has none. O(Services).
    pub fn health_check_ports(&self) -> BTreeMap<u16, HealthCheck> {
        let mut ports = BTreeMap::new();
        for key in &self.with_health_check {
            let Some(service) = self.services.get(key).and_then(|l| l.service.as_ref()) else {
                continue;
            };
            let Some(port) = service.health_check_node_port else {
                continue;
            };
            ports.entry(port).or_insert_with(|| HealthCheck {
                service: key.clone(),
                local_endpoints: service
                    .cluster_ips
                    .iter()
                    .map(|ip| {
                        let family = Family::of(*ip);
                        let local = service.local_ready_endpoints.iter();
                        (family, local.filter(|a| Family::of(**a) == family).count())
                    })
                    .collect(),
            });
        }
        ports
    }

    /// Stops programming a Service the kernel refused (until its objects change): the next
    /// sync removes it and reports why as a diagnostic of the Service.
    pub fn quarantine(&mut self, key: &Key, reason: impl Into<String>) {
        self.quarantined.insert(key.clone(), reason.into());
        self.requeued.insert(key.clone());
    }

    /// Service ports with a Local traffic policy and no local endpoint, `(external, internal)`
    /// (kube-proxy's `sync_proxy_rules_no_local_endpoints_total` gauges).
    pub fn no_local_endpoints(&self) -> (usize, usize) {
        self.no_local
    }

    /// Whether [`Incremental::udp_destinations`] or [`Incremental::affinity_maps`] may differ
    /// from what they returned when this last said `true` (or ever, the first time): a sync
    /// that touched only Services without a UDP or SCTP port and without affinity changes
    /// neither, and a daemon need not rebuild them (O(those Services)) nor have the conntrack
    /// reconciler judge the same state again. Resets the answer.
    pub fn take_conntrack_changed(&mut self) -> bool {
        std::mem::take(&mut self.conntrack_changed)
    }

    /// The UDP and SCTP frontends of every programmed Service, with the endpoints the ruleset
    /// can DNAT each to: what the conntrack reconciler judges entries against (SCTP included,
    /// despite the name). Equal to [`crate::conntrack::Destinations::of_graph`] of what
    /// [`crate::compile`] makes of the same objects. O(Services).
    pub fn udp_destinations(&self) -> crate::conntrack::Destinations {
        crate::conntrack::Destinations::from_services(
            &self.context.nodeport_addresses,
            (self.with_udp.iter())
                .filter_map(|key| self.services.get(key))
                .filter_map(|l| l.service.as_ref()),
        )
    }

    /// The ClientIP affinity maps of the programmed Services with the endpoints each may hold:
    /// what the reconciler sweeps. Equal to [`crate::conntrack::AffinityMaps::of_ruleset`] of
    /// [`Incremental::ruleset`]. O(Services with affinity).
    pub fn affinity_maps(&self) -> crate::conntrack::AffinityMaps {
        let mut out = crate::conntrack::AffinityMaps::default();
        for key in &self.with_affinity {
            let Some(lowered) = self.services.get(key) else {
                continue;
            };
            let table = crate::ir::names::dispatch_table(self.table_of(key));
            for (stored, family) in lowered.fragments.iter().zip([Family::Ip, Family::Ip6]) {
                for chain in &stored.chains {
                    out.add_chain(family, &table, chain);
                }
            }
        }
        out
    }

    /// The backends of the programmed Services with the Service ports that send to each: what
    /// the per-Service metrics attribute counters with. Equal to
    /// [`crate::attribution::BackendIndex::of_graph`] of what [`crate::compile`] makes of the
    /// same objects (a Service the kernel refused is not programmed, so it has none).
    /// O(Service ports × endpoints).
    pub fn backend_index(&self) -> crate::attribution::BackendIndex {
        crate::attribution::BackendIndex::from_services(
            &self.context.nodeport_addresses,
            (self.services.values()).filter_map(|l| l.service.as_ref()),
        )
    }

    /// Every current diagnostic, sorted and deduplicated, including the checks across
    /// Services (shared addresses, endpoints that are ClusterIPs): what `compile` reports for
    /// the same objects. O(Services); see [`Incremental::changed_diagnostics`] for a sync's own.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut diags = self.context_diags.clone();
        for lowered in self.services.values() {
            diags.extend(lowered.diags.iter().cloned());
        }
        let services: Vec<&crate::graph::Service> = self
            .services
            .values()
            .filter_map(|l| l.service.as_ref())
            .collect();
        diags.extend(crate::normalize::cross_checks(&self.context, &services));
        diags.sort();
        diags.dedup();
        diags
    }

    /// The diagnostics of the Services the last sync recomputed (their objects and slices;
    /// not the checks across Services, which [`Incremental::diagnostics`] runs).
    pub fn changed_diagnostics(&self) -> Vec<Diagnostic> {
        let mut diags: Vec<Diagnostic> = self
            .last_changed
            .iter()
            .filter_map(|key| self.services.get(key))
            .flat_map(|l| l.diags.iter().cloned())
            .collect();
        diags.sort();
        diags.dedup();
        diags
    }

    /// The diagnostics of one Service (its object and the slices it consumed).
    pub fn service_diagnostics(&self, key: &Key) -> &[Diagnostic] {
        self.services
            .get(key)
            .map(|l| l.diags.as_slice())
            .unwrap_or_default()
    }
}
