//! The sync engine: source updates in, kernel transactions out. Updates are folded into the
//! warm compiler ([`Incremental`]) as they arrive (each object converted to its compact form
//! and dropped); nothing is programmed until Services, EndpointSlices and the Node have each
//! completed their first list (kube-proxy's `isInitialized`). A sync then sends the delta of
//! the Services that changed, planned against the last committed state without reading the
//! kernel; the first sync, a node-wide change, a refused transaction and the periodic
//! verification instead read our tables back and plan the whole ruleset against them, which is
//! also how a restarted daemon adopts what the kernel holds and sends nothing when it is
//! already right. Blocking (netlink) and synchronous: the daemon runs it off the async runtime.
//! When and how often it runs is [`runner`]'s business.

pub mod kernel;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube_nft_compiler::incremental::{HealthCheck, Incremental, Sync};
use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::normalize::{Key, Kind};
use kube_nft_compiler::plan::{self, Counts};
use kube_nft_compiler::{Config, Diagnostic};

use crate::apply::{self, ApplyReport};
use crate::netlink::socket;
use crate::readback;
use crate::sources::{Event, Object, Resource, Update};
use kernel::{Kernel, Netlink};

/// The annotation the EndpointSlice controller sets to the time of the change a slice
/// reflects; kube-proxy's network programming latency starts there.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// At most this many trigger times are kept between syncs.
const MAX_TRIGGERS: usize = 4096;
/// At most this many Services are set aside in one round for the kernel refusing them.
const MAX_ISOLATIONS: usize = 8;

/// Failures of a sync round. The round can be retried; the engine makes the next one full.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading our tables back failed.
    #[error("read back the kube-nft tables")]
    Readback(#[from] readback::Error),
    /// The kernel refused the transaction (nothing of it was applied).
    #[error("apply {kind} sync ({counts})")]
    Apply {
        /// Which kind of sync.
        kind: SyncKind,
        /// What the transaction held.
        counts: Counts,
        /// Why.
        #[source]
        source: apply::Error,
    },
}

/// How a round reconciled the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// The delta of the changed Services, planned against the last committed state.
    Partial,
    /// The whole ruleset planned against a read-back of the kernel.
    Full,
    /// A periodic full sync (read-back and compare); anything it sends is a drift repair.
    Verify,
}

impl std::fmt::Display for SyncKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncKind::Partial => "partial",
            SyncKind::Full => "full",
            SyncKind::Verify => "verify",
        })
    }
}

/// What a successful round did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// How it reconciled.
    pub kind: SyncKind,
    /// The operations sent, by verb and object kind (`nothing` when the kernel was right).
    pub counts: Counts,
    /// The kernel side of it (zero transactions when nothing was sent).
    pub report: ApplyReport,
    /// Services whose desired state was recomputed (partial syncs).
    pub services: usize,
    /// Wall time of the round.
    pub elapsed: Duration,
    /// Trigger times of the EndpointSlice changes this round programmed.
    pub triggers: Vec<SystemTime>,
    /// Services with a Local traffic policy and no local endpoint: `(external, internal)`.
    pub no_local_endpoints: (usize, usize),
}

impl Outcome {
    /// Whether the kernel was changed.
    pub fn sent(&self) -> bool {
        self.report.transactions > 0
    }
}

/// What folding one update changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// A Service event.
    pub service_change: bool,
    /// An EndpointSlice (or legacy Endpoints) event.
    pub endpoint_change: bool,
    /// The Node changed (eligibility may have too).
    pub node_change: bool,
    /// A resource completed its first list.
    pub first_synced: Option<Resource>,
    /// A relist completed and deleted this many objects it no longer contained.
    pub swept: usize,
}

/// The engine: the warm compiler plus what the kernel was last told.
pub struct Engine<K: Kernel = Netlink> {
    kernel: K,
    compiler: Incremental,
    /// Resources whose first list must complete before anything is programmed.
    required: BTreeSet<Resource>,
    synced: BTreeSet<Resource>,
    node: Option<Node>,
    triggers: Vec<SystemTime>,
    verify_next: bool,
    /// The nf_tables generation after our last commit or verification, when no one else
    /// committed in between: while the kernel still reports it, nothing in this namespace's
    /// nftables changed since, and a verification needs no read-back.
    verified_gen: Option<u32>,
    /// UDP and SCTP frontends found in our tables when they were read back (what was ours,
    /// also before a restart), until [`Engine::conntrack_destinations`] hands them on.
    kernel_frontends: BTreeSet<kube_nft_compiler::conntrack::Frontend>,
}

impl Engine<Netlink> {
    /// An engine programming the calling thread's network namespace for the node described by
    /// `config`. `required` are the resources whose initial list gates the first sync.
    pub fn new(config: &Config, required: impl IntoIterator<Item = Resource>) -> Engine {
        Engine::with_kernel(Netlink, config, required)
    }
}

impl<K: Kernel> Engine<K> {
    /// [`Engine::new`] over another kernel.
    pub fn with_kernel(
        kernel: K,
        config: &Config,
        required: impl IntoIterator<Item = Resource>,
    ) -> Engine<K> {
        Engine {
            kernel,
            compiler: Incremental::new(config),
            required: required.into_iter().collect(),
            synced: BTreeSet::new(),
            node: None,
            triggers: Vec::new(),
            verify_next: false,
            verified_gen: None,
            kernel_frontends: BTreeSet::new(),
        }
    }

    /// Whether every required resource has completed its first list.
    pub fn initialized(&self) -> bool {
        self.required.is_subset(&self.synced)
    }

    /// The Node as last received (for its eligibility in `/healthz`).
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Folds one update into the desired state.
    pub fn update(&mut self, update: Update) -> Effect {
        let mut effect = Effect::default();
        let kind = kind_of(update.resource);
        let inputs = self.compiler.inputs_mut();
        match update.event {
            Event::Relisting => inputs.begin_relist(kind),
            Event::Apply(object) => match object {
                Object::Service(svc) => {
                    inputs.apply_service(&svc);
                    effect.service_change = true;
                }
                Object::EndpointSlice(slice) => {
                    let trigger = slice
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(TRIGGER_TIME))
                        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
                    if let Some(t) = trigger {
                        if self.triggers.len() < MAX_TRIGGERS {
                            self.triggers.push(SystemTime::from(t));
                        }
                    }
                    inputs.apply_slice(&slice);
                    effect.endpoint_change = true;
                }
                Object::Endpoints(eps) => {
                    inputs.apply_endpoints(&eps);
                    effect.endpoint_change = true;
                }
                Object::Node(node) => {
                    inputs.apply_node(&node);
                    // Only our Node reaches the store; keep it for health.
                    if inputs.config().hostname.as_deref() == node.metadata.name.as_deref() {
                        self.node = Some(*node);
                        effect.node_change = true;
                    }
                }
                Object::ServiceCidr(cidr) => inputs.apply_service_cidr(&cidr),
            },
            Event::Delete { namespace, name } => {
                if kind == Kind::Node && self.node_name() == Some(name.as_str()) {
                    self.node = None;
                    effect.node_change = true;
                }
                let inputs = self.compiler.inputs_mut();
                inputs.delete(kind, &Key::new(namespace, name));
                effect.service_change = kind == Kind::Service;
                effect.endpoint_change = matches!(kind, Kind::EndpointSlice | Kind::Endpoints);
            }
            Event::Synced => {
                effect.swept = inputs.end_relist(kind);
                if self.synced.insert(update.resource) {
                    effect.first_synced = Some(update.resource);
                }
            }
            Event::Alive | Event::Error(_) => {}
        }
        effect
    }

    fn node_name(&self) -> Option<&str> {
        self.node.as_ref().and_then(|n| n.metadata.name.as_deref())
    }

    /// Makes the next round a verification: read back, compare, repair.
    pub fn verify_next(&mut self) {
        self.verify_next = true;
    }

    /// Every current diagnostic, the checks across Services included (O(Services)).
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        self.compiler.diagnostics()
    }

    /// The diagnostics of the Services the last round recomputed.
    pub fn changed_diagnostics(&self) -> Vec<Diagnostic> {
        self.compiler.changed_diagnostics()
    }

    /// What the conntrack reconciler judges entries against: the desired state's UDP and SCTP
    /// frontends, plus, as retired, those our tables held when last read back and the desired
    /// state no longer has (Services deleted while no daemon ran, or since the last read).
    pub fn conntrack_destinations(&mut self) -> kube_nft_compiler::conntrack::Destinations {
        let mut destinations = self.compiler.udp_destinations();
        destinations.retire(std::mem::take(&mut self.kernel_frontends));
        destinations
    }

    /// Whether [`Engine::conntrack_destinations`] or [`Engine::affinity_maps`] may have
    /// changed since this last said so; see `Incremental::take_conntrack_changed`.
    pub fn take_conntrack_changed(&mut self) -> bool {
        self.compiler.take_conntrack_changed()
    }

    /// The ClientIP affinity maps of the desired state, for the reconciler's sweep.
    pub fn affinity_maps(&self) -> kube_nft_compiler::conntrack::AffinityMaps {
        self.compiler.affinity_maps()
    }

    /// The backends of the desired state (after a successful round, the committed one) with
    /// the Service ports that send to each, for the per-Service metrics. O(Service ports ×
    /// endpoints).
    pub fn backend_index(&self) -> kube_nft_compiler::attribution::BackendIndex {
        self.compiler.backend_index()
    }

    /// The whole desired ruleset.
    pub fn desired(&self) -> Ruleset {
        self.compiler.ruleset()
    }

    /// The health-check NodePorts of the desired state (after a successful round, the
    /// committed one), by port.
    pub fn health_check_ports(&self) -> BTreeMap<u16, HealthCheck> {
        self.compiler.health_check_ports()
    }

    /// The NodePort addresses the desired state was compiled for (zero-length prefix: every
    /// address of the family).
    pub fn nodeport_addresses(&self) -> &[IpNet] {
        &self.compiler.context().nodeport_addresses
    }

    /// One sync round. `None` while not initialized (nothing is programmed before every
    /// required resource has been listed once).
    pub fn sync(&mut self) -> Option<Result<Outcome, Error>> {
        if !self.initialized() {
            return None;
        }
        let start = Instant::now();
        let requested = std::mem::take(&mut self.verify_next);
        let mut verify = requested;
        // Asked before anything is read or sent: with the number of our commits, it tells
        // whether anyone else committed during the round (see `verified_gen` below).
        let before = self.kernel.generation();
        let unchanged_since_verified = before.is_some() && self.verified_gen == before;
        if verify && unchanged_since_verified {
            // No commit by anyone since we last knew the kernel to be right: a read-back
            // would find exactly that. Pending changes still go out as a delta.
            verify = false;
        }
        if verify {
            self.compiler.force_full();
        }
        // Whether the kernel matched the desired state before this round's commits: known
        // after a read-back (it is the base of the plan), and before a delta only if nobody
        // committed since the kernel was last known right.
        let mut known_right = unchanged_since_verified;
        let result = match self.compiler.sync() {
            Sync::Unchanged => Ok(self.outcome(SyncKind::Partial, Counts::default(), None, 0)),
            Sync::Delta {
                base,
                transaction,
                services,
            } => match self.kernel.apply(&base, &transaction) {
                Ok(report) => Ok(self.outcome(
                    SyncKind::Partial,
                    transaction.counts(),
                    Some(report),
                    services,
                )),
                Err(source) => {
                    // The kernel holds the state before this delta; the compiler has moved on.
                    // Only a read-back can tell what to send now. A Service named by the
                    // refusal is set aside first, so the retry can succeed for the others.
                    self.isolate(&source);
                    self.compiler.force_full();
                    Err(Error::Apply {
                        kind: SyncKind::Partial,
                        counts: transaction.counts(),
                        source,
                    })
                }
            },
            Sync::Full => {
                let kind = if verify {
                    SyncKind::Verify
                } else {
                    SyncKind::Full
                };
                known_right = true;
                self.converge(kind)
            }
        };
        // The generation is trusted only if it moved by exactly our commits since `before`: a
        // generation read after the round alone would also cover a commit by someone else
        // between ours and the read (an `nft flush ruleset` right after our first sync), and
        // the verification that commit's event asks for would then be skipped.
        self.verified_gen = match (&result, before) {
            (Ok(outcome), Some(before)) if known_right => {
                let ours = u32::try_from(outcome.report.transactions).unwrap_or(u32::MAX);
                let after = self.kernel.generation();
                after.filter(|&after| after == before.wrapping_add(ours))
            }
            _ => None,
        };
        Some(result.map(|mut outcome| {
            if requested && !outcome.sent() {
                outcome.kind = SyncKind::Verify;
            }
            outcome.elapsed = start.elapsed();
            outcome
        }))
    }

    /// Reads our tables back and applies whatever makes them the desired ruleset. When the
    /// kernel refuses the transaction and names a chain or set of one Service, that Service is
    /// set aside (reported, not programmed until its objects change) and the rest is tried
    /// again, at most [`MAX_ISOLATIONS`] times: one bad Service must not keep the others out.
    fn converge(&mut self, kind: SyncKind) -> Result<Outcome, Error> {
        let mut attempts = 0;
        loop {
            match self.converge_once(kind) {
                Err(Error::Apply { source, .. })
                    if attempts < MAX_ISOLATIONS && self.isolate(&source) =>
                {
                    attempts += 1;
                    // Fold the quarantine into the desired state before trying again.
                    self.compiler.force_full();
                    let _ = self.compiler.sync();
                }
                other => return other,
            }
        }
    }

    /// Sets aside the Services a permanent refusal names; whether there was any.
    fn isolate(&mut self, error: &apply::Error) -> bool {
        let Some(socket::Error::Rejected { rejections }) = error.netlink() else {
            return false;
        };
        let mut any = false;
        // A transient refusal (ENOMEM, EBUSY, …) says nothing about the Service.
        for rejection in rejections.iter().filter(|r| !r.errno.is_retryable()) {
            if let Some(key) = self.compiler.owner_of(&rejection.object) {
                tracing::error!(
                    service = %key,
                    rejection = %rejection,
                    "the kernel refused a Service's rules; programming the others without it"
                );
                self.compiler.quarantine(&key, rejection.to_string());
                any = true;
            }
        }
        any
    }

    fn converge_once(&mut self, kind: SyncKind) -> Result<Outcome, Error> {
        let desired = self.compiler.ruleset();
        let (counts, result) = match self.kernel.read() {
            Ok(current) => {
                self.kernel_frontends
                    .extend(kube_nft_compiler::conntrack::frontends_of(&current));
                // By value: on a cold start every element moves into the transaction
                // instead of existing twice (about a million at 50k Services).
                let tx = plan::plan_owned(&current, desired);
                if tx.is_empty() {
                    return Ok(self.outcome(kind, tx.counts(), None, 0));
                }
                (tx.counts(), self.kernel.apply(&current, &tx))
            }
            // Someone put rules we did not write into our tables: planning against them is
            // impossible, so replace both tables in one atomic transaction.
            Err(readback::Error::UnrecognisedRule { .. }) => {
                let counts = plan::plan(&Ruleset::default(), &desired).counts();
                (counts, self.kernel.replace(&desired))
            }
            Err(err) => {
                self.compiler.force_full();
                return Err(err.into());
            }
        };
        match result {
            Ok(report) => Ok(self.outcome(kind, counts, Some(report), 0)),
            Err(source) => {
                // Nothing of the transaction was applied; the next round reads back again.
                self.compiler.force_full();
                Err(Error::Apply {
                    kind,
                    counts,
                    source,
                })
            }
        }
    }

    fn outcome(
        &mut self,
        kind: SyncKind,
        counts: Counts,
        report: Option<ApplyReport>,
        services: usize,
    ) -> Outcome {
        Outcome {
            kind,
            counts,
            report: report.unwrap_or(ApplyReport {
                transactions: 0,
                messages: 0,
                bytes: 0,
                longest_commit: Duration::ZERO,
                committing: Duration::ZERO,
                end_acked: false,
            }),
            services,
            elapsed: Duration::ZERO,
            triggers: std::mem::take(&mut self.triggers),
            no_local_endpoints: self.compiler.no_local_endpoints(),
        }
    }
}

/// The compiler's name for a source's resource.
fn kind_of(resource: Resource) -> Kind {
    match resource {
        Resource::Services => Kind::Service,
        Resource::EndpointSlices => Kind::EndpointSlice,
        Resource::Endpoints => Kind::Endpoints,
        Resource::Node => Kind::Node,
        Resource::ServiceCidrs => Kind::ServiceCidr,
    }
}

#[cfg(test)]
mod tests;
