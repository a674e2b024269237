//! The engine's decisions over the compiler's kernel model (`plan::apply`, which refuses
//! dangling references as the kernel does), with refusals injected: nothing is programmed
//! from a partial initial list, deltas and full syncs end where `compile` does, a refused
//! delta is followed by a full sync from a read-back, and a Service whose rules the kernel
//! refuses is set aside while every other Service is programmed.

use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::plan::{self, Transaction};
use kube_nft_compiler::{compile, Config};
use kube_nft_testkit::cluster::{config, manifests, uniform, Scheduler, Svc};
use kube_nft_testkit::synthetic::snapshot_of;
use serde_json::Value;

use super::kernel::Kernel;
use super::{Engine, SyncKind};
use crate::apply::{self, ApplyReport};
use crate::netlink::socket::{self, Errno, Rejection};
use crate::readback;
use crate::sources::{Event, Object, Resource, Update};

/// The kernel model, refusing any operation on a chain whose name contains `refuse`.
#[derive(Default)]
struct Model {
    ruleset: Ruleset,
    refuse: Option<String>,
    /// The errno of a refusal: EINVAL (the default) is permanent, ENOMEM transient.
    errno: Option<i32>,
    generation: u32,
    applied: usize,
    /// Someone else flushes the ruleset right after our next commit (a commit of theirs
    /// between ours and anything we ask afterwards).
    interloper: bool,
    reads: usize,
}

impl Model {
    fn refusal(&self, tx: &Transaction) -> Option<apply::Error> {
        let needle = self.refuse.as_deref()?;
        let op = tx.ops.iter().find(|op| match &op.object {
            plan::Object::Chain(c) => c.name.contains(needle),
            plan::Object::Rule { chain, .. } => chain.contains(needle),
            _ => false,
        })?;
        let chain = match &op.object {
            plan::Object::Chain(c) => c.name.clone(),
            plan::Object::Rule { chain, .. } => chain.clone(),
            _ => unreachable!("filtered above"),
        };
        Some(apply::Error::Netlink(socket::Error::Rejected {
            rejections: vec![Rejection {
                seq: 7,
                op: None,
                object: format!("{} {} {chain}", op.family, op.table),
                errno: Errno(self.errno.unwrap_or(libc::EINVAL)),
                message: None,
                offset: None,
            }],
        }))
    }
}

impl Kernel for Model {
    fn read(&mut self) -> Result<Ruleset, readback::Error> {
        self.reads += 1;
        Ok(readback::canonical(&self.ruleset))
    }

    fn apply(&mut self, _base: &Ruleset, tx: &Transaction) -> Result<ApplyReport, apply::Error> {
        if let Some(err) = self.refusal(tx) {
            return Err(err);
        }
        plan::apply(&mut self.ruleset, tx).expect("the model accepts the plan");
        self.generation += 1;
        self.applied += 1;
        if std::mem::take(&mut self.interloper) {
            self.ruleset = Ruleset::default();
            self.generation += 1;
        }
        Ok(ApplyReport {
            transactions: 1,
            messages: tx.len() + 2,
            bytes: 0,
            longest_commit: std::time::Duration::ZERO,
            committing: std::time::Duration::ZERO,
            end_acked: true,
        })
    }

    fn replace(&mut self, desired: &Ruleset) -> Result<ApplyReport, apply::Error> {
        let tx = plan::plan(&self.ruleset, desired);
        self.apply(&Ruleset::default(), &tx)
    }

    fn generation(&mut self) -> Option<u32> {
        Some(self.generation)
    }
}

const REQUIRED: [Resource; 3] = [Resource::Services, Resource::EndpointSlices, Resource::Node];

fn engine() -> Engine<Model> {
    Engine::with_kernel(Model::default(), &config(), REQUIRED)
}

fn object(doc: &Value) -> (Resource, Object) {
    fn from<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        serde_json::from_value(v.clone()).expect("valid object")
    }
    match doc["kind"].as_str() {
        Some("Service") => (Resource::Services, Object::service(from(doc))),
        Some("EndpointSlice") => (Resource::EndpointSlices, Object::endpoint_slice(from(doc))),
        Some("Node") => (Resource::Node, Object::node(from(doc))),
        other => panic!("unexpected kind {other:?}"),
    }
}

fn apply(engine: &mut Engine<Model>, doc: &Value) {
    let (resource, object) = object(doc);
    engine.update(Update {
        resource,
        event: Event::Apply(object),
    });
}

fn event(engine: &mut Engine<Model>, resource: Resource, event: Event) {
    engine.update(Update { resource, event });
}

/// The initial lists of a cluster, every resource relisted and synced.
fn initial(engine: &mut Engine<Model>, services: &[Svc]) {
    for resource in REQUIRED {
        event(engine, resource, Event::Relisting);
    }
    for doc in manifests(services) {
        apply(engine, &doc);
    }
    for resource in REQUIRED {
        event(engine, resource, Event::Synced);
    }
}

fn expected(services: &[Svc], config: &Config) -> Ruleset {
    readback::canonical(&compile(&snapshot_of(manifests(services)), config).ruleset)
}

fn kernel(engine: &Engine<Model>) -> Ruleset {
    readback::canonical(&engine.kernel.ruleset)
}

/// `assert_eq!` for rulesets that prints their nft scripts' differing lines, not two dumps.
#[track_caller]
fn same(got: &Ruleset, want: &Ruleset) {
    if got != want {
        let text = |r: &Ruleset| {
            let compiled = kube_nft_compiler::Compiled {
                ruleset: r.clone(),
                graph: Default::default(),
                diagnostics: Vec::new(),
            };
            kube_nft_compiler::render::render(&compiled)
        };
        let (g, w) = (text(got), text(want));
        let missing: Vec<_> = w.lines().filter(|l| !g.contains(l)).collect();
        let extra: Vec<_> = g.lines().filter(|l| !w.contains(l)).collect();
        panic!(
            "rulesets differ\nmissing:\n{}\nextra:\n{}",
            missing.join("\n"),
            extra.join("\n")
        );
    }
}

#[test]
fn nothing_is_programmed_before_every_initial_list_is_complete() {
    let mut e = engine();
    let services = uniform(3);
    for resource in REQUIRED {
        event(&mut e, resource, Event::Relisting);
    }
    for doc in manifests(&services) {
        apply(&mut e, &doc);
        assert!(
            e.sync().is_none(),
            "a partial initial list is never programmed"
        );
    }
    event(&mut e, Resource::Services, Event::Synced);
    assert!(
        e.sync().is_none(),
        "Services listed, slices and Node not yet"
    );
    event(&mut e, Resource::EndpointSlices, Event::Synced);
    assert!(e.sync().is_none(), "the Node is not listed yet");
    event(&mut e, Resource::Node, Event::Synced);
    let outcome = e.sync().expect("initialized").expect("synced");
    assert_eq!(outcome.kind, SyncKind::Full);
    same(&kernel(&e), &expected(&services, &config()));
    assert_eq!(e.kernel.applied, 1, "one transaction");
}

#[test]
fn changes_go_out_as_deltas_and_end_where_compile_does() {
    let mut e = engine();
    let mut services = uniform(4);
    initial(&mut e, &services);
    e.sync().expect("initialized").expect("synced");

    services[2].endpoints.pop();
    for doc in manifests(&services) {
        apply(&mut e, &doc);
    }
    let outcome = e.sync().expect("initialized").expect("synced");
    assert_eq!(outcome.kind, SyncKind::Partial);
    assert_eq!(outcome.services, 1, "only svc2's slice changed");
    assert!(outcome.sent());
    same(&kernel(&e), &expected(&services, &config()));

    // Nothing changed: nothing sent.
    let outcome = e.sync().expect("initialized").expect("synced");
    assert!(!outcome.sent());
}

#[test]
fn a_commit_by_someone_else_right_after_ours_is_verified() {
    let mut e = engine();
    let mut services = uniform(4);
    initial(&mut e, &services);
    // Someone flushes the ruleset right after the first sync and right after a delta: both
    // times the next verification must read back (the flush's event asks for it) and repair.
    e.kernel.interloper = true;
    e.sync().expect("initialized").expect("synced");
    assert_eq!(e.kernel.ruleset, Ruleset::default(), "flushed");
    e.verify_next();
    let outcome = e.sync().expect("initialized").expect("verified");
    assert_eq!(outcome.kind, SyncKind::Verify);
    assert!(outcome.sent(), "the flush is repaired");
    same(&kernel(&e), &expected(&services, &config()));

    services[2].endpoints.pop();
    for doc in manifests(&services) {
        apply(&mut e, &doc);
    }
    e.kernel.interloper = true;
    let outcome = e.sync().expect("initialized").expect("synced");
    assert_eq!(outcome.kind, SyncKind::Partial);
    e.verify_next();
    let outcome = e.sync().expect("initialized").expect("verified");
    assert!(outcome.sent(), "the flush after the delta is repaired");
    same(&kernel(&e), &expected(&services, &config()));

    // With nobody else committing, a verification reads nothing back and sends nothing.
    let reads = e.kernel.reads;
    e.verify_next();
    let outcome = e.sync().expect("initialized").expect("verified");
    assert_eq!(outcome.kind, SyncKind::Verify);
    assert!(!outcome.sent());
    assert_eq!(
        e.kernel.reads, reads,
        "the generation is still ours: no read-back"
    );
}

#[test]
fn a_refused_delta_is_followed_by_a_full_sync() {
    let mut e = engine();
    let mut services = uniform(4);
    // Round robin keeps chains named after the Service, which the model can refuse (a Service
    // balanced by the shared chains owns only map elements).
    services[1].scheduler = Scheduler::RoundRobin;
    initial(&mut e, &services);
    e.sync().expect("initialized").expect("synced");

    e.kernel.refuse = Some("ns/svc1/".into());
    e.kernel.errno = Some(libc::ENOMEM);
    services[1].endpoints.pop();
    for doc in manifests(&services) {
        apply(&mut e, &doc);
    }
    assert!(
        e.sync().expect("initialized").is_err(),
        "the delta is refused"
    );
    // The kernel accepts again (a transient refusal): the next round reads back and converges.
    e.kernel.refuse = None;
    let outcome = e.sync().expect("initialized").expect("synced");
    assert_eq!(outcome.kind, SyncKind::Full);
    same(&kernel(&e), &expected(&services, &config()));
}

#[test]
fn a_service_the_kernel_refuses_is_set_aside_and_the_rest_programmed() {
    let mut e = engine();
    let mut services = uniform(4);
    // Only a Service with chains of its own can be named by a refusal (see above).
    services[2].scheduler = Scheduler::RoundRobin;
    e.kernel.refuse = Some("ns/svc2/".into());
    initial(&mut e, &services);
    let outcome = e
        .sync()
        .expect("initialized")
        .expect("the others are programmed");
    assert_eq!(outcome.kind, SyncKind::Full);
    let diagnostics = e.diagnostics();
    let refused: Vec<_> = diagnostics
        .iter()
        .filter(|d| d.message.contains("kernel refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{diagnostics:?}");
    assert_eq!(
        (refused[0].namespace.as_str(), refused[0].name.as_str()),
        ("ns", "svc2")
    );
    // Everything but svc2 is programmed: exactly what compile makes of the objects without
    // svc2's.
    let without: Vec<Value> = manifests(&services)
        .into_iter()
        .filter(|d| {
            d["metadata"]["name"] != "svc2"
                && d["metadata"]["labels"]["kubernetes.io/service-name"] != "svc2"
        })
        .collect();
    let others = readback::canonical(&compile(&snapshot_of(without), &config()).ruleset);
    same(&kernel(&e), &others);

    // The Service changes (here: the kernel no longer refuses and its slice is updated):
    // it gets another chance and is programmed.
    e.kernel.refuse = None;
    let mut fixed = services.clone();
    fixed[2].endpoints.pop();
    for doc in manifests(&fixed) {
        apply(&mut e, &doc);
    }
    e.sync().expect("initialized").expect("synced");
    assert!(!e
        .diagnostics()
        .iter()
        .any(|d| d.message.contains("kernel refused")));
    same(&kernel(&e), &expected(&fixed, &config()));
}

#[test]
fn a_relist_deletes_what_it_no_longer_contains() {
    let mut e = engine();
    let services = uniform(3);
    initial(&mut e, &services);
    e.sync().expect("initialized").expect("synced");
    // The watch expired and the relist misses svc2 (deleted meanwhile, no Delete event).
    for resource in [Resource::Services, Resource::EndpointSlices] {
        event(&mut e, resource, Event::Relisting);
    }
    for doc in manifests(&services[..2]) {
        if doc["kind"] != "Node" {
            apply(&mut e, &doc);
        }
    }
    for resource in [Resource::Services, Resource::EndpointSlices] {
        event(&mut e, resource, Event::Synced);
    }
    e.sync().expect("initialized").expect("synced");
    same(&kernel(&e), &expected(&services[..2], &config()));
}
