//! Kernel tests: the netlink encoder against the real nf_tables, each inside throwaway network
//! namespaces so the host's ruleset is never touched. The oracle is nft itself: for every golden
//! case, `nft -f case.nft` in one namespace and `apply::replace(compile(case.yaml))` in another
//! must give byte-identical `nft list ruleset` output, which proves that what kube-nft sends
//! decodes to exactly the rules the rendered script describes.
//!
//! Namespaces: the nft oracle runs as `unshare -n sh -c …`. The runtime side runs in a thread
//! that calls `unshare(CLONE_NEWNET)`: the network namespace is per thread on Linux, so that
//! thread's netlink sockets, and the `nft` processes it spawns (children inherit the spawning
//! thread's namespaces), see only the new namespace, while the rest of the test process stays in
//! the host's. Needs root; where that is impossible the tests print `SKIPPED`, except under
//! `CI=true`, where they fail.

use kube_nft_compiler::ir::{self, Family, Rule, Stmt, Verdict};
use kube_nft_compiler::plan::plan;
use kube_nft_runtime::netlink::encode::OpKind;
use kube_nft_runtime::netlink::socket;
use kube_nft_runtime::{apply, readback};
use kube_nft_testkit::error_chain as chain;
use kube_nft_testkit::every_form::every_form;
use kube_nft_testkit::golden::{self, compile_case};
use kube_nft_testkit::listing::{diff, normalized, sort_elements};
use kube_nft_testkit::netns::{can_run, in_netns, nft_listing_of, temp_path};

#[test]
fn every_golden_case_lists_exactly_like_nft_loading_its_script() {
    if !can_run("every_golden_case_lists_exactly_like_nft_loading_its_script") {
        return;
    }
    let cases = golden::cases();
    assert!(!cases.is_empty(), "no golden cases");
    let mut failures = Vec::new();
    for case in &cases {
        let shown = golden::shown(case);
        let script = case.with_extension("nft");
        let expected = match nft_listing_of(&script) {
            Ok(listing) => listing,
            Err(e) => {
                failures.push(format!("{shown}: nft -f failed: {e}"));
                continue;
            }
        };
        let ruleset = compile_case(case);
        let actual = in_netns(|ns| apply::replace(&ruleset).map(|_| ns.ruleset()));
        match actual {
            Ok(actual) if actual == expected => {}
            Ok(actual) if sort_elements(&actual) == sort_elements(&expected) => {}
            Ok(actual) => failures.push(format!("{shown}:\n{}", diff(&expected, &actual))),
            Err(e) => failures.push(format!("{shown}: apply failed: {}", chain(&e))),
        }
        // The `kube-nft compile -f` path on an empty node: read back (nothing), plan, apply
        // the plan; the result lists the same, and planning again against a fresh read-back
        // finds nothing to do.
        let incremental = in_netns(|ns| -> Result<(String, usize), String> {
            let empty = readback::read(&[Family::Ip, Family::Ip6]).map_err(|e| chain(&e))?;
            let tx = plan(&empty, &ruleset);
            apply::apply_plan(&empty, &tx).map_err(|e| chain(&e))?;
            let again = readback::read(&[Family::Ip, Family::Ip6]).map_err(|e| chain(&e))?;
            Ok((ns.ruleset(), plan(&again, &ruleset).len()))
        });
        match incremental {
            // Chains and sets are listed in creation order, which a plan does not share with a
            // whole-table load; compare blocks sorted (rule order inside a chain still counts).
            Ok((listing, 0)) if normalized(&listing) == normalized(&expected) => {}
            Ok((listing, 0)) => failures.push(format!(
                "{shown}: planned apply:\n{}",
                diff(&expected, &listing)
            )),
            Ok((_, left)) => failures.push(format!(
                "{shown}: {left} operations still planned after applying the plan"
            )),
            Err(e) => failures.push(format!("{shown}: planned apply failed: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}

fn small_cluster() -> ir::Ruleset {
    compile_case("testdata/compile/cluster/small-cluster.yaml")
}

#[test]
fn applying_twice_is_idempotent() {
    if !can_run("applying_twice_is_idempotent") {
        return;
    }
    let ruleset = small_cluster();
    in_netns(|ns| {
        let report = apply::replace(&ruleset).expect("first apply");
        // Kernels since 6.10 acknowledge BATCH_END; older ones stay silent on success.
        if kernel_at_least(6, 10) {
            assert!(report.end_acked, "{report:?}");
        }
        let first = ns.ruleset();
        assert!(first.contains("table ip kube-nft"), "{first}");
        apply::replace(&ruleset).expect("second apply");
        assert_eq!(ns.ruleset(), first);
    });
}

/// The small cluster with its dispatch over `n` tables per family.
fn small_cluster_over(n: u16) -> ir::Ruleset {
    let text = std::fs::read_to_string(
        golden::repo_root().join("testdata/compile/cluster/small-cluster.yaml"),
    )
    .expect("read case");
    let mut config = golden::case_config(&text);
    config.dispatch_tables = n;
    let loaded = kube_nft_compiler::model::load(&[kube_nft_compiler::model::Source {
        origin: "small-cluster.yaml".into(),
        text,
    }])
    .expect("load");
    kube_nft_compiler::compile(&loaded.snapshot, &config).ruleset
}

/// Our tables in the namespace, as `nft list tables` names them.
fn tables_listed(ns: &kube_nft_testkit::netns::Netns) -> Vec<String> {
    let out = ns.nft(&["list", "tables"]).expect("nft list tables");
    out.lines().map(str::to_owned).collect()
}

#[test]
fn dispatch_tables_come_and_go_with_the_setting() {
    if !can_run("dispatch_tables_come_and_go_with_the_setting") {
        return;
    }
    let (one, three) = (small_cluster_over(1), small_cluster_over(3));
    in_netns(|ns| {
        // A replacement deletes dispatch tables the new ruleset does not have.
        apply::replace(&three).expect("apply three");
        assert_eq!(
            tables_listed(ns),
            [
                "table ip kube-nft",
                "table ip kube-nft-dispatch-1",
                "table ip kube-nft-dispatch-2",
                "table ip6 kube-nft",
                "table ip6 kube-nft-dispatch-1",
                "table ip6 kube-nft-dispatch-2",
            ]
        );
        assert_eq!(
            readback::read(&[Family::Ip, Family::Ip6]).expect("read"),
            three
        );
        apply::replace(&one).expect("apply one");
        assert_eq!(
            tables_listed(ns),
            ["table ip kube-nft", "table ip6 kube-nft"]
        );
        // So does a plan against the read-back (`compile -f`, the daemon's full sync).
        apply::replace(&three).expect("apply three again");
        let kernel = readback::read(&[Family::Ip, Family::Ip6]).expect("read");
        let tx = plan(&kernel, &one);
        apply::apply_plan(&kernel, &tx).expect("plan three → one");
        assert_eq!(
            readback::read(&[Family::Ip, Family::Ip6]).expect("read"),
            one
        );
        let tx = plan(&one, &three);
        apply::apply_plan(&one, &tx).expect("plan one → three");
        assert_eq!(
            readback::read(&[Family::Ip, Family::Ip6]).expect("read"),
            three
        );
        // And a cleanup removes them all.
        apply::cleanup().expect("cleanup");
        assert_eq!(tables_listed(ns), Vec::<String>::new());
    });
}

#[test]
fn cleanup_removes_only_our_tables() {
    if !can_run("cleanup_removes_only_our_tables") {
        return;
    }
    let foreign = "add table ip other\n\
                   add chain ip other input { type filter hook input priority 0; }\n\
                   add rule ip other input tcp dport 22 accept\n\
                   add table inet fast\n\
                   add set inet fast peers { type ipv4_addr; elements = { 10.0.0.1 }; }\n\
                   add table ip6 kube-nft-other\n\
                   add table ip kube-nft-dispatch-01\n";
    // Flowtables need nf_flow_table, which not every kernel has (ENOENT without it).
    let flowtable = "add flowtable inet fast ft { hook ingress priority 0; devices = { lo }; }\n";
    let ruleset = small_cluster();
    in_netns(|ns| {
        // Absent tables are fine.
        apply::cleanup().expect("cleanup of nothing");
        assert_eq!(ns.ruleset(), "");
        ns.nft_load(foreign).expect("load foreign tables");
        if let Err(e) = ns.nft_load(flowtable) {
            eprintln!("note: no flowtable in the foreign tables, the kernel refuses it: {e}");
        }
        let before = ns.ruleset();
        apply::replace(&ruleset).expect("apply");
        assert!(ns.ruleset().contains("table ip kube-nft {"));
        let report = apply::cleanup().expect("cleanup");
        assert!(report.messages >= 6, "{report:?}");
        assert_eq!(ns.ruleset(), before);
        apply::cleanup().expect("second cleanup");
        assert_eq!(ns.ruleset(), before);
    });
}

#[test]
fn a_failed_transaction_names_the_object_and_changes_nothing() {
    if !can_run("a_failed_transaction_names_the_object_and_changes_nothing") {
        return;
    }
    let good = small_cluster();
    let mut bad = good.clone();
    let table = bad
        .tables
        .iter_mut()
        .find(|t| t.family == Family::Ip)
        .expect("ip table");
    table
        .chains
        .get_mut("services")
        .expect("services chain")
        .rules
        .push(Rule::new(vec![Stmt::Verdict(Verdict::Jump(
            "does-not-exist".into(),
        ))]));
    in_netns(|ns| {
        apply::replace(&good).expect("apply the good ruleset");
        let before = ns.ruleset();
        let err = apply::replace(&bad).expect_err("a jump to a missing chain must fail");
        let Some(socket::Error::Rejected { rejections }) = err.netlink() else {
            panic!("expected a rejection, got {err:?}");
        };
        let first = &rejections[0];
        assert_eq!(first.op, Some(OpKind::AddRule), "{first}");
        assert!(first.errno.is_not_found(), "{first}");
        let text = first.to_string();
        assert!(
            text.starts_with("add rule ip kube-nft services jump does-not-exist: "),
            "{text}"
        );
        assert_eq!(
            ns.ruleset(),
            before,
            "a failed transaction changed the ruleset"
        );
    });
}

#[test]
fn every_ir_form_lists_exactly_like_nft_loading_its_rendering() {
    if !can_run("every_ir_form_lists_exactly_like_nft_loading_its_rendering") {
        return;
    }
    let ruleset = ir::Ruleset {
        tables: vec![every_form(Family::Ip), every_form(Family::Ip6)],
    };
    if let Err(errors) = ir::verify(&ruleset) {
        panic!("the every-form ruleset fails ir::verify:\n{errors}");
    }
    let script = kube_nft_compiler::render::render_ruleset(&ruleset);
    let path = temp_path("every-form.nft");
    std::fs::write(&path, &script).expect("write script");
    let expected = nft_listing_of(&path);
    let _ = std::fs::remove_file(&path);
    let expected = expected.unwrap_or_else(|e| panic!("nft -f rejects the script: {e}\n{script}"));
    let actual = in_netns(|ns| {
        apply::replace(&ruleset).unwrap_or_else(|e| panic!("apply: {}", chain(&e)));
        ns.ruleset()
    });
    assert!(
        sort_elements(&actual) == sort_elements(&expected),
        "listings differ:\n{}\n--- nft:\n{expected}\n--- kube-nft:\n{actual}",
        diff(&expected, &actual)
    );
}

/// A batch far above the default socket buffers (~208 KiB) and the 64 KiB attribute limit goes
/// through as one transaction: SO_SNDBUFFORCE and element chunking, end to end.
#[test]
fn a_big_map_goes_in_one_transaction() {
    use ir::{Chain, DataType, ElemData, Element, L4Proto, Set, Value};

    if !can_run("a_big_map_goes_in_one_transaction") {
        return;
    }
    const N: u32 = 20_000;
    let mut table = ir::Table::new(Family::Ip, "kube-nft");
    table.chains.insert(
        "target".into(),
        Chain {
            name: "target".into(),
            base: None,
            comment: None,
            rules: vec![Rule::new(vec![Stmt::Verdict(Verdict::Accept)])],
        },
    );
    let mut map = Set::new(
        "service-ips",
        vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        vec![DataType::Verdict],
    );
    map.elements = (0..N)
        .map(|i| Element {
            key: vec![
                Value::Addr(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()),
                Value::Proto(L4Proto::Tcp),
                Value::Port(80),
            ],
            data: Some(ElemData::Verdict(Verdict::Goto("target".into()))),
            comment: None,
        })
        .collect();
    table.sets.insert(map.name.clone(), map);
    let ruleset = ir::Ruleset {
        tables: vec![table],
    };
    in_netns(|ns| {
        let report = apply::replace(&ruleset).unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert!(report.bytes > 512 * 1024, "{report:?}");
        // Replacing it again (delete + recreate) is one transaction too.
        apply::replace(&ruleset).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let listing = ns
            .nft(&["list", "map", "ip", "kube-nft", "service-ips"])
            .expect("list map");
        assert_eq!(listing.matches("goto target").count(), N as usize);
    });
}
