//! Compile goldens through the binary: every `testdata/compile/**/*.yaml` case is compiled with
//! `kube-nft compile --dry-run -f <case> <args>` and stdout must equal the `.nft` file beside
//! it. A case's leading `# args: <flags>` comment lines (whitespace-separated, concatenated)
//! give the node flags. Refresh with `UPDATE_EXPECT=1 cargo test --workspace` and review the
//! diff like code.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use kube_nft_testkit::golden::{self, case_args, repo_root};

/// Runs every case; reports each mismatching case, then fails if there was any.
#[test]
fn compile_goldens() {
    let cases = cases();
    assert!(
        !cases.is_empty(),
        "no golden cases under {}",
        repo_root().join("testdata/compile").display()
    );
    let mut failed = Vec::new();
    for case in &cases {
        let stdout = compile(case);
        let expected = repo_root().join(case).with_extension("nft");
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            expect_test::expect_file![expected].assert_eq(&stdout);
        }));
        if result.is_err() {
            failed.push(case.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} golden cases differ (run `UPDATE_EXPECT=1 cargo test --workspace` to \
         refresh, then review the diff):\n  {}",
        failed.len(),
        cases.len(),
        failed.join("\n  ")
    );
}

/// The same input always renders to the same bytes.
#[test]
fn output_is_deterministic() {
    let mut inputs = cases();
    inputs.push(PathBuf::from("examples/cluster.yaml"));
    for case in &inputs {
        let first = compile(case);
        let second = compile(case);
        assert!(
            first == second,
            "{}: two runs gave different output",
            case.display()
        );
    }
}

/// The golden cases, relative to the repository root (so paths printed in diagnostics do not
/// depend on where the repository is checked out), sorted.
fn cases() -> Vec<PathBuf> {
    let root = repo_root();
    golden::cases()
        .into_iter()
        .map(|case| {
            case.strip_prefix(&root)
                .expect("case is below the root")
                .to_path_buf()
        })
        .collect()
}

/// Compiles one case with the binary; it must succeed.
fn compile(case: &Path) -> String {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join(case))
        .unwrap_or_else(|err| panic!("read {}: {err}", case.display()));
    let output = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .current_dir(&root)
        .args(["compile", "--dry-run", "-f"])
        .arg(case)
        .args(case_args(&text))
        .output()
        .expect("run kube-nft");
    assert!(
        output.status.success(),
        "{}: kube-nft exited with {}:\n{}",
        case.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

#[test]
fn args_lines_are_concatenated() {
    let text =
        "# A case.\n# args: --hostname-override node-a\n# args:  --cluster-cidr 10.0.0.0/8\n\
                apiVersion: v1\n# args: --masquerade-all\n";
    assert_eq!(
        case_args(text),
        [
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.0.0.0/8"
        ]
    );
}
