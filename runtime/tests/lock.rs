//! Tests of the single-instance lock (`runtime::lock`), each in throwaway network namespaces,
//! because the lock is the abstract socket `@kube-nft` of the namespace: the first acquire
//! wins, a second one (in this process or another) fails naming the first, the name is free
//! again as soon as the holder drops the lock or is killed (a holder closing under the probe is
//! waited for), and two namespaces hold one each.
//! The other process is this test binary run again as [`lock_holder_child`]. Needs root (for
//! `unshare`); prints `SKIPPED` where it cannot run, and fails under `CI=true`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Barrier};
use std::time::Duration;

use kube_nft_runtime::lock::{self, LockError};
use kube_nft_testkit::netns::{can_run, in_netns};

/// Set for the child process that holds the lock in [`a_lock_held_by_another_process_names_it_and_dies_with_it`].
const CHILD: &str = "KUBE_NFT_LOCK_TEST_CHILD";

/// How long the test waits for the child to take the lock.
const PATIENCE: Duration = Duration::from_secs(10);

fn held_by(err: LockError) -> lock::Holder {
    match err {
        LockError::Held { holder } => holder,
        other => panic!("expected the lock to be held, got {other:?}"),
    }
}

#[test]
fn a_second_acquire_names_the_first_until_it_is_dropped() {
    if !can_run("a_second_acquire_names_the_first_until_it_is_dropped") {
        return;
    }
    in_netns(|_| {
        let first = lock::acquire("node-a").expect("first acquire");
        assert_eq!(first.name(), lock::NAME);
        let err = lock::acquire("node-b").expect_err("second acquire");
        let message = err.to_string();
        eprintln!("{message}");
        assert!(
            message.starts_with(&format!(
                "another kube-nft (pid {}, running since ",
                std::process::id()
            )),
            "{message}"
        );
        assert!(
            message.ends_with(&format!(
                ", version {}, node-a) already programs this network namespace",
                env!("CARGO_PKG_VERSION")
            )),
            "{message}"
        );
        let holder = held_by(err);
        assert_eq!(&holder, first.holder());
        drop(first);
        // Released when drop returns.
        let again = lock::acquire("node-c").expect("acquire after drop");
        assert_eq!(again.holder().identity.as_deref(), Some("node-c"));
    });
}

/// A holder whose listener closes with the prober's connection still unaccepted (a holder going
/// away; in this test binary also a child process, forked by another test between its `fork`
/// and `exec`, keeping a copy of a dropped lock's listener for a moment): the prober's read is
/// reset, and the acquire tries again instead of failing.
#[test]
fn a_holder_that_goes_away_under_the_probe_is_waited_for() {
    if !can_run("a_holder_that_goes_away_under_the_probe_is_waited_for") {
        return;
    }
    in_netns(|_| {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::io::AsRawFd;
        use std::os::unix::net::{SocketAddr, UnixListener};

        let addr = SocketAddr::from_abstract_name(lock::NAME.as_bytes()).expect("address");
        let listener = UnixListener::bind_addr(&addr).expect("bind");
        let going = std::thread::spawn(move || {
            // Until a connection is pending (the prober's), then close without accepting it.
            let mut fd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live, initialised pollfd; the timeout bounds the wait.
            let ready = unsafe { libc::poll(&mut fd, 1, 10_000) };
            assert_eq!(ready, 1, "no prober connected");
            drop(listener);
        });
        let taken = lock::acquire("node-a");
        going.join().expect("the listener thread");
        let taken = taken.expect("acquired once the holder went away");
        assert_eq!(taken.holder().identity.as_deref(), Some("node-a"));
    });
}

#[test]
fn two_namespaces_hold_a_lock_each() {
    if !can_run("two_namespaces_hold_a_lock_each") {
        return;
    }
    let both = Barrier::new(2);
    std::thread::scope(|s| {
        for node in ["node-a", "node-b"] {
            let both = &both;
            s.spawn(move || {
                in_netns(|_| {
                    let held = lock::acquire(node).expect("acquire in a namespace of its own");
                    // Both hold theirs at the same time.
                    both.wait();
                    assert_eq!(held.holder().identity.as_deref(), Some(node));
                    both.wait();
                });
            });
        }
    });
}

#[test]
fn a_lock_held_by_another_process_names_it_and_dies_with_it() {
    if !can_run("a_lock_held_by_another_process_names_it_and_dies_with_it") {
        return;
    }
    in_netns(|_| {
        // This test binary again, running only `lock_holder_child`, in this namespace (a child
        // inherits the namespace of the thread that spawns it).
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "lock_holder_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the holder");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, holding) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest prints `test lock_holder_child ... ` first, on the same line.
                if let Some((_, pid)) = line.split_once("HOLDING ") {
                    let _ = tx.send(pid.trim().to_owned());
                }
            }
        });
        let reported = holding.recv_timeout(PATIENCE);
        if reported.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not take the lock within {PATIENCE:?}");
        }
        assert_eq!(reported.ok(), Some(child.id().to_string()));

        let err = lock::acquire("parent").expect_err("acquire while the child holds it");
        eprintln!("{err}");
        let holder = held_by(err);
        assert_eq!(holder.pid, Some(child.id()));
        assert_eq!(holder.identity.as_deref(), Some("child"));

        // SIGKILL: no destructor runs, the kernel closes the socket and frees the name.
        child.kill().expect("kill the holder");
        child.wait().expect("reap the holder");
        let mine = lock::acquire("parent").expect("acquire after the holder was killed");
        assert_eq!(mine.holder().pid, Some(std::process::id()));
    });
}

/// Not a test of its own: the lock holder that
/// [`a_lock_held_by_another_process_names_it_and_dies_with_it`] runs in a child process. It
/// takes the lock, says so, and holds it until its standard input closes (or 30 s pass).
#[test]
fn lock_holder_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let held = lock::acquire("child").expect("child acquire");
    println!("HOLDING {}", std::process::id());
    let (done, closed) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lines().count();
        let _ = done.send(());
    });
    let _ = closed.recv_timeout(Duration::from_secs(30));
    drop(held);
}
