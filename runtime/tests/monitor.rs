//! Kernel tests of `netlink::monitor`, each in a throwaway network namespace: our own commits
//! (through `apply`) are never reported; `nft` changing our tables is, within well under a
//! second of the command returning, with the committer's name and pid; changes to other tables
//! are not; a receive queue overflow that may hide a commit is reported as lost. The monitor
//! runs on its own thread, as in the daemon, and every wait is bounded. The kernel facts the
//! monitor relies on (order of notifications, who a NEWGEN names) are checked here too. With
//! root, [`kernel_notifications_match_the_recorded_fixtures`] also records the notifications of
//! a few `nft` commands as annotated fixtures under `runtime/testdata/netlink/monitor/`
//! (`UPDATE_FIXTURES=1` rewrites them), which the monitor's unit tests decode without a kernel.
//! Needs root; prints `SKIPPED` where it cannot run, and fails under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kube_nft_compiler::ir::{self, DataType, Element, Family, Set, Table, Value};
use kube_nft_runtime::apply;
use kube_nft_runtime::netlink::monitor::{
    ChangeKind, Event, ForeignChange, Lost, Monitor, Record, Stats, Tracker,
};
use kube_nft_runtime::netlink::socket::{Received, Socket, Subscription};
use kube_nft_testkit::golden::compile_case;
use kube_nft_testkit::netns::{can_run, in_netns, Netns};

/// Our tables, as the daemon watches them.
const OURS: &[(Family, &str)] = &[(Family::Ip, "kube-nft"), (Family::Ip6, "kube-nft")];

/// How long a test waits for an event that must come.
const PATIENCE: Duration = Duration::from_secs(5);

/// How long a test waits to be sure that nothing is reported.
const QUIET: Duration = Duration::from_millis(400);

/// The brief's bound: a foreign change is noticed within this of the command returning.
const LATENCY_BOUND: Duration = Duration::from_millis(1000);

fn small_cluster() -> ir::Ruleset {
    compile_case("testdata/compile/cluster/small-cluster.yaml")
}

// ---------------------------------------------------------------------------------------------
// A monitor on its own thread

/// A [`Monitor`] running on a thread of the current network namespace (threads inherit the
/// namespace of the thread that spawns them), forwarding every event with the time it was
/// received. Dropping it stops the thread.
struct Watch {
    events: mpsc::Receiver<(Event, Instant)>,
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<(Stats, Vec<Event>)>>,
}

impl Watch {
    fn start() -> Watch {
        Watch::with_receive_buffer(kube_nft_runtime::netlink::monitor::RECEIVE_BUFFER)
    }

    fn with_receive_buffer(bytes: usize) -> Watch {
        let (events_tx, events) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut monitor = Monitor::with_receive_buffer(bytes).expect("open monitor");
            ready_tx.send(()).expect("report ready");
            loop {
                match stop_rx.try_recv() {
                    Err(mpsc::TryRecvError::Empty) => {}
                    _ => {
                        // Catch up with the kernel's generation first: a debug build on a
                        // busy machine takes a while to read the 100k notifications of a
                        // large commit.
                        let target = Socket::open()
                            .and_then(|mut s| s.get_gen())
                            .expect("GETGEN");
                        let mut late = Vec::new();
                        let deadline = Instant::now() + PATIENCE;
                        while monitor.generation() < Some(target) && Instant::now() < deadline {
                            match monitor.next_foreign_change(OURS, Duration::from_millis(100)) {
                                Ok(Some(event)) => late.push(event),
                                Ok(None) => {}
                                Err(e) => panic!("monitor: {e}"),
                            }
                        }
                        return (monitor.stats(), late);
                    }
                }
                match monitor.next_foreign_change(OURS, Duration::from_millis(50)) {
                    Ok(Some(event)) => {
                        let _ = events_tx.send((event, Instant::now()));
                    }
                    Ok(None) => {}
                    Err(e) => panic!("monitor: {e}"),
                }
            }
        });
        ready
            .recv_timeout(PATIENCE)
            .expect("monitor thread did not start");
        Watch {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// The next event, if one comes within `timeout`.
    fn next(&self, timeout: Duration) -> Option<(Event, Instant)> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next event, which must be a foreign change.
    fn foreign(&self, what: &str) -> (ForeignChange, Instant) {
        match self.next(PATIENCE) {
            Some((Event::Foreign(change), at)) => (change, at),
            Some((other, _)) => panic!("{what}: expected a foreign change, got {other:?}"),
            None => panic!("{what}: nothing reported within {PATIENCE:?}"),
        }
    }

    /// Asserts that nothing is reported for a while.
    fn quiet(&self, what: &str) {
        if let Some((event, _)) = self.next(QUIET) {
            panic!("{what}: unexpected event: {event}");
        }
    }

    /// Stops the thread once it has read everything queued; what the monitor saw. Nothing
    /// may be reported after what the test waited for.
    fn stop(mut self) -> Stats {
        let _ = self.stop.send(());
        let (stats, late) = self
            .thread
            .take()
            .expect("running")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let mut late: Vec<String> = late.iter().map(ToString::to_string).collect();
        late.extend(self.events.try_iter().map(|(event, _)| event.to_string()));
        assert!(late.is_empty(), "reported late: {late:?}");
        stats
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `nft ARGS` in the current namespace; its pid and when it returned.
fn nft(args: &[&str]) -> (u32, Instant) {
    let child = Command::new("nft")
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for nft");
    let returned = Instant::now();
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, returned)
}

/// How long after `returned` the event arrived (negative: before the command returned, which
/// is the rule, since the kernel notifies inside the commit).
fn latency(returned: Instant, at: Instant) -> String {
    if at >= returned {
        format!("+{:.2} ms", at.duration_since(returned).as_secs_f64() * 1e3)
    } else {
        format!("-{:.2} ms", returned.duration_since(at).as_secs_f64() * 1e3)
    }
}

fn assert_prompt(what: &str, returned: Instant, at: Instant) {
    eprintln!(
        "{what}: reported {} relative to nft returning",
        latency(returned, at)
    );
    assert!(
        at < returned + LATENCY_BOUND,
        "{what}: reported {} after the command returned",
        latency(returned, at)
    );
}

/// Applies `ruleset` with the runtime, as the daemon does.
fn apply_ours(ruleset: &ir::Ruleset) {
    apply::replace(ruleset).unwrap_or_else(|e| panic!("apply: {e:?}"));
}

// ---------------------------------------------------------------------------------------------
// Our own commits

#[test]
fn own_commits_are_not_reported() {
    if !can_run("own_commits_are_not_reported") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        let watch = Watch::start();
        apply_ours(&ruleset);
        apply_ours(&ruleset);
        // From another thread too: the kernel names that thread, not the process, so only the
        // socket's port id can tell it is ours.
        std::thread::scope(|s| {
            s.spawn(|| apply_ours(&ruleset));
        });
        apply::cleanup().expect("cleanup");
        watch.quiet("own commits");
        let stats = watch.stop();
        assert_eq!(
            stats,
            Stats {
                own: 4,
                ..Stats::default()
            }
        );
    });
}

#[test]
fn a_rejected_own_transaction_leaves_nothing_to_mistake() {
    if !can_run("a_rejected_own_transaction_leaves_nothing_to_mistake") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        let watch = Watch::start();
        apply_ours(&ruleset);
        // Deleting a chain that does not exist fails: nothing is committed or announced.
        let mut ghost = ruleset.clone();
        ghost.tables[0].chains.insert(
            "ghost".into(),
            ir::Chain {
                name: "ghost".into(),
                base: None,
                comment: None,
                rules: Vec::new(),
            },
        );
        let tx = apply::plan_transaction(&ghost, &kube_nft_compiler::plan::plan(&ghost, &ruleset))
            .expect("encode");
        assert!(
            apply::apply_transactions(&[tx]).is_err(),
            "delete of a missing chain"
        );
        // A foreign commit right after is still foreign.
        let (pid, returned) = nft(&["add", "rule", "ip", "kube-nft", "firewall-check", "counter"]);
        let (change, at) = watch.foreign("nft add rule after a failed own commit");
        assert_eq!(change.committer.pid, Some(pid));
        assert_prompt("nft add rule", returned, at);
        assert_eq!(watch.stop().own, 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Foreign commits

#[test]
fn nft_add_rule_in_our_table_is_reported_as_edited() {
    if !can_run("nft_add_rule_in_our_table_is_reported_as_edited") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        let watch = Watch::start();
        apply_ours(&ruleset);
        let (pid, returned) = nft(&["add", "rule", "ip", "kube-nft", "firewall-check", "counter"]);
        let (change, at) = watch.foreign("nft add rule");
        assert_prompt("nft add rule", returned, at);
        assert_eq!(change.committer.name.as_deref(), Some("nft"));
        assert_eq!(change.committer.pid, Some(pid));
        assert!(change.complete);
        assert_eq!(change.tables.len(), 1, "{change:?}");
        let table = &change.tables[0];
        assert_eq!(
            (table.family(), table.name.as_str(), table.kind),
            (Some(Family::Ip), "kube-nft", ChangeKind::Edited)
        );
        assert_eq!((table.added, table.removed), (1, 0));
        eprintln!("{change}");
        watch.quiet("after nft add rule");
    });
}

#[test]
fn nft_flush_ruleset_is_reported_as_deleted() {
    if !can_run("nft_flush_ruleset_is_reported_as_deleted") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        apply_ours(&ruleset);
        nft(&["add", "table", "ip", "other"]);
        let watch = Watch::start();
        let (pid, returned) = nft(&["flush", "ruleset"]);
        let (change, at) = watch.foreign("nft flush ruleset");
        assert_prompt("nft flush ruleset", returned, at);
        assert_eq!(change.committer.pid, Some(pid));
        assert!(change.complete);
        let tables: Vec<(Option<Family>, &str, ChangeKind)> = change
            .tables
            .iter()
            .map(|t| (t.family(), t.name.as_str(), t.kind))
            .collect();
        // Only ours: `ip other` went too, but is none of our business.
        let expected: Vec<(Option<Family>, &str, ChangeKind)> = ruleset
            .tables
            .iter()
            .map(|t| (Some(t.family), "kube-nft", ChangeKind::Deleted))
            .collect();
        assert_eq!(tables, expected);
        eprintln!("{change}");
        watch.quiet("after nft flush ruleset");
    });
}

#[test]
fn nft_delete_table_is_reported_as_deleted() {
    if !can_run("nft_delete_table_is_reported_as_deleted") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        let watch = Watch::start();
        apply_ours(&ruleset);
        let (_, returned) = nft(&["delete", "table", "ip", "kube-nft"]);
        let (change, at) = watch.foreign("nft delete table");
        assert_prompt("nft delete table", returned, at);
        let tables: Vec<(Option<Family>, &str, ChangeKind)> = change
            .tables
            .iter()
            .map(|t| (t.family(), t.name.as_str(), t.kind))
            .collect();
        assert_eq!(
            tables,
            [(Some(Family::Ip), "kube-nft", ChangeKind::Deleted)]
        );
        eprintln!("{change}");
        // Putting it back is ours again.
        apply_ours(&ruleset);
        watch.quiet("after re-applying");
        assert_eq!(watch.stop().own, 2);
    });
}

#[test]
fn nft_flush_table_is_reported_as_flushed() {
    if !can_run("nft_flush_table_is_reported_as_flushed") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        let watch = Watch::start();
        apply_ours(&ruleset);
        let (_, returned) = nft(&["flush", "table", "ip", "kube-nft"]);
        let (change, at) = watch.foreign("nft flush table");
        assert_prompt("nft flush table", returned, at);
        assert_eq!(change.tables.len(), 1, "{change:?}");
        assert_eq!(change.tables[0].kind, ChangeKind::Flushed);
        assert!(change.tables[0].removed > 0);
        eprintln!("{change}");
    });
}

#[test]
fn changes_to_other_tables_are_ignored() {
    if !can_run("changes_to_other_tables_are_ignored") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        let watch = Watch::start();
        apply_ours(&ruleset);
        nft(&["add", "table", "ip", "other"]);
        nft(&["add", "chain", "ip", "other", "c"]);
        nft(&["add", "rule", "ip", "other", "c", "counter"]);
        // Same name, other family: not ours either.
        nft(&["add", "table", "inet", "kube-nft"]);
        nft(&["delete", "table", "ip", "other"]);
        watch.quiet("changes to other tables");
        // Still listening: a change to ours after them is reported.
        let (_, returned) = nft(&["add", "rule", "ip", "kube-nft", "firewall-check", "counter"]);
        let (_, at) = watch.foreign("nft add rule after the others");
        assert_prompt("nft add rule after the others", returned, at);
        let stats = watch.stop();
        assert_eq!(
            stats,
            Stats {
                own: 1,
                ignored: 5,
                foreign: 1,
                lost: 0
            }
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Overflows

/// An nft script that fills `ip kube-nft` with a set of `n` elements.
fn big_set_script(n: usize) -> String {
    let mut script = String::from(
        "add table ip kube-nft\nadd set ip kube-nft big { type ipv4_addr; }\nadd element ip kube-nft big { ",
    );
    for i in 0..n {
        if i > 0 {
            script.push_str(", ");
        }
        script.push_str(&format!(
            "10.{}.{}.{}",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        ));
    }
    script.push_str(" }\n");
    script
}

#[test]
fn an_overflow_that_hides_a_commit_is_reported_as_lost() {
    if !can_run("an_overflow_that_hides_a_commit_is_reported_as_lost") {
        return;
    }
    in_netns(|ns| {
        // A tiny buffer, and nobody reading while nft commits: the kernel drops the end of the
        // burst, NEWGEN included, so the commit is unattributable.
        let mut monitor = Monitor::with_receive_buffer(4096).expect("open monitor");
        ns.nft_load(&with_chain(&big_set_script(20_000)))
            .expect("nft -f");
        let started = Instant::now();
        let event = monitor
            .next_foreign_change(OURS, PATIENCE)
            .expect("monitor")
            .expect("nothing reported");
        eprintln!("{event} ({:?} after reading started)", started.elapsed());
        assert!(
            matches!(event, Event::Lost(Lost::Missed { .. })),
            "expected a loss, got {event:?}"
        );
        // Settled: the next change is reported normally, and nothing else is pending.
        nft(&["add", "rule", "ip", "kube-nft", "c", "counter"]);
        let event = monitor
            .next_foreign_change(OURS, PATIENCE)
            .expect("monitor");
        assert!(
            matches!(&event, Some(Event::Foreign(change)) if change.complete
                && change.tables.len() == 1
                && change.tables[0].kind == ChangeKind::Edited),
            "{event:?}"
        );
        assert_eq!(
            monitor.next_foreign_change(OURS, QUIET).expect("monitor"),
            None
        );
    });
}

/// Appends a chain to `script`, so that `nft add rule … c` has somewhere to go.
fn with_chain(script: &str) -> String {
    format!("{script}add chain ip kube-nft c\n")
}

#[test]
fn a_large_own_commit_is_not_reported() {
    if !can_run("a_large_own_commit_is_not_reported") {
        return;
    }
    // 100k elements in one set, committed by us while the monitor thread reads: the kernel
    // announces each element, and the default buffer absorbs the burst.
    let mut table = Table::new(Family::Ip, "kube-nft");
    let mut set = Set::new("big", vec![DataType::Ipv4Addr], Vec::new());
    set.elements = (0..100_000u32)
        .map(|i| Element {
            key: vec![Value::Addr(
                std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
            )],
            data: None,
            comment: None,
        })
        .collect();
    table.sets.insert(set.name.clone(), set);
    let ruleset = ir::Ruleset {
        tables: vec![table],
    };
    in_netns(|_| {
        let started = Instant::now();
        apply_ours(&ruleset);
        let unwatched = started.elapsed();
        apply::cleanup().expect("cleanup");

        let watch = Watch::start();
        let started = Instant::now();
        apply_ours(&ruleset);
        let watched = started.elapsed();
        eprintln!(
            "100k-element commit: {:.0} ms unwatched, {:.0} ms with the monitor subscribed",
            unwatched.as_secs_f64() * 1e3,
            watched.as_secs_f64() * 1e3
        );
        watch.quiet("a large own commit");
        let stats = watch.stop();
        assert_eq!(
            stats,
            Stats {
                own: 1,
                ..Stats::default()
            }
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Kernel facts

/// Reads every notification until the queue stays empty for `QUIET`.
fn drain(subscription: &Subscription) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match subscription.receive(&mut buf, QUIET).expect("receive") {
            Received::Datagram => all.extend_from_slice(&buf),
            Received::Idle => break,
            Received::Overrun => panic!("overrun"),
        }
    }
    all
}

/// The thread id the kernel knows this thread by (the initial pid namespace is ours here).
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[test]
fn newgen_names_the_committing_thread_and_socket_after_the_objects() {
    if !can_run("newgen_names_the_committing_thread_and_socket_after_the_objects") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|_| {
        let subscription = Subscription::open(1 << 20).expect("subscribe");
        let before = Socket::open().expect("open").get_gen().expect("GETGEN");
        // Commit from a second thread, so that its thread id differs from the process id.
        let tid = std::thread::scope(|s| {
            s.spawn(|| {
                apply_ours(&ruleset);
                gettid()
            })
            .join()
            .expect("apply thread")
        });
        assert_ne!(tid, std::process::id());
        let bytes = drain(&subscription);
        let mut records = Vec::new();
        let mut tracker = Tracker::new(Some(before));
        tracker.datagram(&bytes, &mut records);
        // One transaction: every object message first, then one NEWGEN closing it.
        let [Record::Commit(commit)] = records.as_slice() else {
            panic!("expected one commit, got {records:?}");
        };
        assert_eq!(commit.generation, before.wrapping_add(1));
        assert!(commit.complete);
        // The pid is the committing thread's, the name that thread's name (truncated to 15
        // bytes, the kernel's TASK_COMM_LEN), and the header names the sending socket.
        assert_eq!(commit.committer.pid, Some(tid));
        assert_ne!(commit.committer.port_id, subscription.port_id());
        // `replace` re-creates each of our tables (add, delete, add) in one transaction.
        let tables: Vec<(Option<Family>, &str, ChangeKind)> = commit
            .tables
            .iter()
            .map(|t| (t.family(), t.name.as_str(), t.kind))
            .collect();
        let expected: Vec<(Option<Family>, &str, ChangeKind)> = ruleset
            .tables
            .iter()
            .map(|t| (Some(t.family), "kube-nft", ChangeKind::Replaced))
            .collect();
        assert_eq!(tables, expected);
        eprintln!("{commit:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// Recorded fixtures

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/netlink/monitor")
}

/// The recorded scenarios: name, nft script run before recording (not recorded), and the nft
/// commands whose notifications are recorded.
const SCENARIOS: &[(&str, &str, &[&[&str]])] = &[
    (
        "add-rule",
        "add table ip kube-nft\nadd chain ip kube-nft services\n",
        &[&["add", "rule", "ip", "kube-nft", "services", "counter"]],
    ),
    (
        "add-element",
        "add table ip kube-nft\nadd set ip kube-nft ips { type ipv4_addr; }\n",
        &[&[
            "add",
            "element",
            "ip",
            "kube-nft",
            "ips",
            "{ 10.0.0.1, 10.0.0.2 }",
        ]],
    ),
    (
        "flush-table",
        "add table ip kube-nft\nadd chain ip kube-nft services\n\
         add rule ip kube-nft services counter\nadd rule ip kube-nft services accept\n",
        &[&["flush", "table", "ip", "kube-nft"]],
    ),
    (
        "delete-table",
        "add table ip kube-nft\nadd chain ip kube-nft services\n\
         add rule ip kube-nft services counter\n",
        &[&["delete", "table", "ip", "kube-nft"]],
    ),
    (
        "flush-ruleset",
        "add table ip kube-nft\nadd chain ip kube-nft services\nadd table ip6 kube-nft\n\
         add table ip other\n",
        &[&["flush", "ruleset"]],
    ),
    (
        "other-table-then-ours",
        "add table ip kube-nft\nadd chain ip kube-nft services\n",
        &[
            &["add", "table", "ip", "other"],
            &["add", "table", "inet", "kube-nft"],
            &["add", "chain", "ip", "kube-nft", "extra"],
        ],
    ),
];

/// Records one scenario in a fresh namespace: the notifications of its commands, masked.
fn record(ns: &Netns, setup: &str, commands: &[&[&str]]) -> Vec<Vec<u8>> {
    ns.nft_load(setup).expect("setup");
    let subscription = Subscription::open(1 << 20).expect("subscribe");
    for args in commands {
        nft(args);
    }
    let bytes = drain(&subscription);
    split_messages(&bytes)
}

/// The whole messages of a stream of datagrams.
fn split_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        assert!(len >= 16 && len <= rest.len(), "bad message length {len}");
        out.push(rest[..len].to_vec());
        rest = &rest[len.div_ceil(4) * 4..];
    }
    out
}

const MSG_NAMES: &[&str] = &[
    "NFT_MSG_NEWTABLE",
    "NFT_MSG_GETTABLE",
    "NFT_MSG_DELTABLE",
    "NFT_MSG_NEWCHAIN",
    "NFT_MSG_GETCHAIN",
    "NFT_MSG_DELCHAIN",
    "NFT_MSG_NEWRULE",
    "NFT_MSG_GETRULE",
    "NFT_MSG_DELRULE",
    "NFT_MSG_NEWSET",
    "NFT_MSG_GETSET",
    "NFT_MSG_DELSET",
    "NFT_MSG_NEWSETELEM",
    "NFT_MSG_GETSETELEM",
    "NFT_MSG_DELSETELEM",
    "NFT_MSG_NEWGEN",
];

/// Writes one message as annotated hex: header fields, `nfgenmsg`, and each top-level
/// attribute. Only what the monitor reads is kept as recorded (attribute 1, the table name, of
/// object messages; the NEWGEN attributes); the payload of every other attribute, the
/// sequence number, the generation in `res_id`, and the pid are masked as `xx`, because they
/// change from run to run (handles, counters, kernel addresses). Port ids and generation ids
/// are renumbered in order of appearance, keeping their size.
fn annotate(msg: &[u8], ports: &mut Vec<u32>, gens: &mut Vec<u32>) -> String {
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let masked = |n: usize| vec!["xx"; n].join(" ");
    let renumber = |seen: &mut Vec<u32>, v: u32| -> u32 {
        let at = seen.iter().position(|s| *s == v).unwrap_or_else(|| {
            seen.push(v);
            seen.len() - 1
        });
        at as u32 + 1
    };
    let mut out = String::new();
    let len = msg.len() as u32;
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    let flags = u16::from_ne_bytes([msg[6], msg[7]]);
    let port = u32::from_ne_bytes(msg[12..16].try_into().expect("4 bytes"));
    let name = MSG_NAMES
        .get(usize::from(ty & 0xff))
        .copied()
        .unwrap_or("NFT_MSG_?");
    out.push_str(&format!(
        "{}  # nlmsg_len = {len}\n",
        hex(&len.to_ne_bytes())
    ));
    out.push_str(&format!(
        "{}  # nlmsg_type = {ty:#06x} ({name})\n",
        hex(&ty.to_ne_bytes())
    ));
    out.push_str(&format!(
        "{}  # nlmsg_flags = {flags:#x}\n",
        hex(&flags.to_ne_bytes())
    ));
    out.push_str(&format!(
        "{}  # nlmsg_seq (masked: committer's sequence number)\n",
        masked(4)
    ));
    let port = renumber(ports, port);
    out.push_str(&format!(
        "{}  # nlmsg_pid = committer's port id (renumbered: {port})\n",
        hex(&port.to_ne_bytes())
    ));
    let family = match msg[16] {
        0 => "NFPROTO_UNSPEC",
        1 => "NFPROTO_INET",
        2 => "NFPROTO_IPV4",
        10 => "NFPROTO_IPV6",
        _ => "?",
    };
    out.push_str(&format!(
        "{:02x}  # nfgen_family = {} ({family})\n",
        msg[16], msg[16]
    ));
    out.push_str(&format!("{:02x}  # version = {}\n", msg[17], msg[17]));
    out.push_str(&format!(
        "{}  # res_id (masked: generation id)\n",
        masked(2)
    ));
    let newgen = ty & 0xff == 15;
    let mut rest = &msg[20..];
    while rest.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let atype = u16::from_ne_bytes([rest[2], rest[3]]);
        assert!(alen >= 4 && alen <= rest.len(), "bad attribute");
        let padded = alen.div_ceil(4) * 4;
        let header = hex(&rest[..4]);
        let value = &rest[4..alen];
        let pad = &rest[alen..padded.min(rest.len())];
        let pad_hex = if pad.is_empty() {
            String::new()
        } else {
            format!(" {}", hex(pad))
        };
        let line = match (newgen, atype & 0x3fff) {
            (true, 1) => {
                let generation = u32::from_be_bytes(value.try_into().expect("4 bytes"));
                let generation = renumber(gens, generation);
                format!(
                    "{header} {}  # NFTA_GEN_ID (renumbered: {generation})",
                    hex(&generation.to_be_bytes())
                )
            }
            (true, 2) => format!("{header} {}  # NFTA_GEN_PROC_PID (masked)", masked(4)),
            (true, 3) => format!(
                "{header} {}{pad_hex}  # NFTA_GEN_PROC_NAME = {:?}",
                hex(value),
                String::from_utf8_lossy(value.split(|b| *b == 0).next().unwrap_or_default())
            ),
            (false, 1) => format!(
                "{header} {}{pad_hex}  # table name = {:?}",
                hex(value),
                String::from_utf8_lossy(value.split(|b| *b == 0).next().unwrap_or_default())
            ),
            (_, other) => format!(
                "{header} {}  # attribute {other} (masked: not read by the monitor)",
                masked(padded - 4)
            ),
        };
        out.push_str(&line);
        out.push('\n');
        rest = &rest[padded.min(rest.len())..];
    }
    out
}

/// One fixture file: a header, then every message of the scenario.
fn fixture_text(name: &str, setup: &str, commands: &[&[&str]], messages: &[Vec<u8>]) -> String {
    let mut text = format!(
        "# nf_tables notifications of scenario `{name}`, recorded on an NFNLGRP_NFTABLES subscription.\n\
         # Set up first (not recorded):\n"
    );
    for line in setup.lines() {
        text.push_str(&format!("#   {line}\n"));
    }
    text.push_str("# Recorded:\n");
    for args in commands {
        text.push_str(&format!("#   nft {}\n", args.join(" ")));
    }
    text.push_str(
        "# Regenerate: UPDATE_FIXTURES=1 cargo test -p kube-nft-runtime --test monitor\n\
         # Host byte order is little-endian. `xx` bytes are volatile, masked, and read as 00.\n",
    );
    let (mut ports, mut gens) = (Vec::new(), Vec::new());
    for (i, msg) in messages.iter().enumerate() {
        text.push_str(&format!("# message {i}\n"));
        text.push_str(&annotate(msg, &mut ports, &mut gens));
    }
    text
}

#[test]
fn kernel_notifications_match_the_recorded_fixtures() {
    if cfg!(target_endian = "big") {
        return;
    }
    if !can_run("kernel_notifications_match_the_recorded_fixtures") {
        return;
    }
    let update = std::env::var("UPDATE_FIXTURES").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (name, setup, commands) in SCENARIOS {
        let messages = in_netns(|ns| record(ns, setup, commands));
        let text = fixture_text(name, setup, commands, &messages);
        let path = fixture_dir().join(format!("{name}.txt"));
        if update {
            std::fs::create_dir_all(fixture_dir()).expect("create fixture dir");
            std::fs::write(&path, &text).expect("write fixture");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == text => {}
            Ok(committed) => failures.push(format!(
                "{name}: the kernel's notifications differ from {}:\n--- committed\n{committed}\n--- recorded\n{text}",
                path.display()
            )),
            Err(e) => failures.push(format!("{name}: {}: {e}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(re-record with UPDATE_FIXTURES=1)",
        failures.join("\n")
    );
}
