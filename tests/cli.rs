//! The binary's behaviour as a command: exit codes, where input comes from (file, directory,
//! stdin), `--config` merging and what goes to stderr. These tests compare runs with each other
//! rather than asserting ruleset content, which the golden tests own.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const EXAMPLE: &str = "examples/cluster.yaml";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kube_nft(args: &[&str]) -> Run {
    kube_nft_with_stdin(args, "")
}

fn kube_nft_with_stdin(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kube-nft");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // The binary may exit before reading stdin (usage errors); a closed pipe is fine then.
    let _ = pipe.write_all(stdin.as_bytes());
    drop(pipe);
    let output = child.wait_with_output().expect("wait for kube-nft");
    Run {
        code: output.status.code().expect("kube-nft exited normally"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// Runs and asserts success, returning stdout.
fn ok(args: &[&str]) -> String {
    let run = kube_nft(args);
    assert_eq!(run.code, 0, "kube-nft {args:?} failed:\n{}", run.stderr);
    run.stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

const NODE_A: &[&str] = &[
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.0.0.0/8",
];

fn compile_example(extra: &[&str]) -> String {
    let mut args = vec!["compile", "--dry-run", "-f", EXAMPLE];
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn missing_input_file_exits_1_naming_it() {
    let run = kube_nft(&["compile", "--dry-run", "-f", "no/such/file.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(run.stderr.contains("no/such/file.yaml"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn yaml_syntax_error_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: [x\n",
    )
    .unwrap();
    let run = kube_nft(&["compile", "--dry-run", "-f", path_str(&file)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(run.stderr.contains(path_str(&file)), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--node-ip", "192.168.0.300"], "192.168.0.300"),
        (&["--cluster-cidr", "10.0.0.0/33"], "10.0.0.0/33"),
        (&["--cluster-cidr", "10.0.0.0/8,banana"], "banana"),
        (&["--nodeport-addresses", "everywhere"], "everywhere"),
        (&["--detect-local-mode", "nodecidr"], "nodecidr"),
        (&["--pod-bridge-interface", "eth:0"], "eth:0"),
        (
            &["--pod-interface-name-prefix", "a-name-too-long"],
            "longer than 14 bytes",
        ),
        // Checked once flags are merged, as kube-proxy's validation does.
        (
            &["--detect-local-mode", "BridgeInterface"],
            "--pod-bridge-interface",
        ),
    ];
    for (flag_and_value, bad) in cases {
        let mut args = vec!["compile", "--dry-run", "-f", EXAMPLE];
        args.extend_from_slice(flag_and_value);
        let run = kube_nft(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(flag_and_value[0]) && run.stderr.contains(bad),
            "{args:?}: the message names neither flag nor value: {}",
            run.stderr
        );
    }
}

/// `compile -f` (no `--dry-run`) programs the kernel, a second run changes nothing and says so,
/// `diff` exits 0 (equal), 1 (different) or 2 (error: a foreign rule in our table), `compile`
/// replaces a table someone edited, and `cleanup` removes only our tables, twice without error.
/// Runs in a throwaway network namespace (`unshare -n`), so the host's ruleset is never
/// touched; needs root.
#[test]
fn compile_diff_and_cleanup_program_the_kernel() {
    let bin = env!("CARGO_BIN_EXE_kube-nft");
    let a = format!("-f {EXAMPLE} --hostname-override node-a --cluster-cidr 10.0.0.0/8");
    let b = format!("-f {EXAMPLE} --hostname-override node-b --cluster-cidr 10.0.0.0/8");
    let script = format!(
        "set -e
        nft add table ip other
        '{bin}' compile {a} 2>&1 | tail -1 | cut -d' ' -f1
        '{bin}' compile {a} 2>&1 | tail -1
        nft list table ip kube-nft | grep -q 'dnat to'
        echo programmed: $(nft list tables | sort | tr '\\n' ' ')
        '{bin}' diff {a} 2>/dev/null && echo diff-same=$?
        '{bin}' diff {b} > /dev/null 2>&1 || echo diff-other=$?
        nft add rule ip kube-nft services counter
        '{bin}' diff {a} > /dev/null 2>&1 || echo diff-foreign=$?
        '{bin}' compile {a} 2>&1 | tail -1 | cut -d' ' -f1
        '{bin}' diff {a} 2>/dev/null && echo diff-repaired=$?
        '{bin}' cleanup
        '{bin}' cleanup
        echo cleaned: $(nft list tables | sort | tr '\\n' ' ')"
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run unshare");
    if !out.status.success() && std::env::var("CI").as_deref() != Ok("true") {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("unshare failed") || stderr.contains("Operation not permitted") {
            eprintln!("SKIPPED: needs root for a network namespace: {stderr}");
            return;
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "applied\n\
         no changes: the kernel already holds this ruleset\n\
         programmed: table ip kube-nft table ip other table ip6 kube-nft\n\
         diff-same=0\n\
         diff-other=1\n\
         diff-foreign=2\n\
         replaced\n\
         diff-repaired=0\n\
         cleaned: table ip other\n"
    );
}

#[test]
fn list_flags_accept_commas_and_repetition() {
    let commas = compile_example(&[
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.0.0.0/8,fd00::/48",
        "--nodeport-addresses",
        "primary,192.168.0.0/24",
    ]);
    let repeated = compile_example(&[
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--cluster-cidr",
        "fd00::/48",
        "--nodeport-addresses",
        "primary",
        "--nodeport-addresses",
        "192.168.0.0/24",
    ]);
    assert_eq!(commas, repeated);
}

#[test]
fn stdin_input_is_the_same_as_the_file() {
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE)).unwrap();
    let mut args = vec!["compile", "--dry-run", "-f", "-"];
    args.extend_from_slice(NODE_A);
    let run = kube_nft_with_stdin(&args, &text);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, compile_example(NODE_A));
}

#[test]
fn directory_input_reads_manifests_recursively_in_path_order() {
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("a/b")).unwrap();
    fs::write(dir.path().join("a/b/cluster.yml"), &text).unwrap();
    // Not a manifest extension: never read (it would be a syntax error).
    fs::write(dir.path().join("README.txt"), "{ not: [yaml\n").unwrap();
    let mut args = vec!["compile", "--dry-run", "-f", path_str(dir.path())];
    args.extend_from_slice(NODE_A);
    assert_eq!(ok(&args), compile_example(NODE_A));

    // Files are read in path order: the first broken one reported is the first by path, even
    // though it was written last and sits deeper.
    fs::write(dir.path().join("z.json"), "{\"kind\": ").unwrap();
    fs::write(dir.path().join("a/0-broken.yaml"), "kind: [Service\n").unwrap();
    let run = kube_nft(&args);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("0-broken.yaml"), "{}", run.stderr);
    assert!(!run.stderr.contains("z.json"), "{}", run.stderr);
}

#[test]
fn directory_without_manifests_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = kube_nft(&["compile", "--dry-run", "-f", path_str(dir.path())]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(path_str(dir.path())), "{}", run.stderr);
}

const CONFIG_HEADER: &str =
    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n";

#[test]
fn config_file_is_applied_and_explicit_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kube-proxy.yaml");
    fs::write(
        &config,
        format!("{CONFIG_HEADER}hostnameOverride: node-b\nclusterCIDR: 10.0.0.0/8\n"),
    )
    .unwrap();
    let config = path_str(&config);

    let from_file = compile_example(&["--config", config]);
    let flags_b = compile_example(&[
        "--hostname-override",
        "node-b",
        "--cluster-cidr",
        "10.0.0.0/8",
    ]);
    assert_eq!(from_file, flags_b, "the file acts like the same flags");

    let overridden = compile_example(&["--config", config, "--hostname-override", "node-a"]);
    assert_eq!(
        overridden,
        compile_example(NODE_A),
        "the flag wins over the file"
    );
    assert_ne!(
        overridden, from_file,
        "node-a and node-b get different rulesets"
    );
}

/// A kube-proxy file written for IPVS mode is accepted with a warning, and its scheduler is the
/// node default; `--scheduler` on the command line wins over it.
#[test]
fn an_ipvs_mode_config_file_is_mapped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kube-proxy.yaml");
    fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n\
         clusterCIDR: 10.0.0.0/8\nipvs:\n  scheduler: sh\n",
    )
    .unwrap();
    let args = [
        "compile",
        "--dry-run",
        "-f",
        EXAMPLE,
        "--hostname-override",
        "node-a",
        "--config",
        path_str(&config),
    ];
    let run = kube_nft(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "warning: {}: mode \"ipvs\" mapped to nftables",
            path_str(&config)
        )),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("jhash ip saddr"), "{}", run.stdout);
    // No rule picks at random (the maps' `typeof … numgen random …` only declares a type).
    let random = |l: &&str| l.starts_with("add rule") && l.contains("numgen random");
    assert!(!run.stdout.lines().any(|l| random(&l)), "{}", run.stdout);

    let mut flagged = args.to_vec();
    flagged.extend(["--scheduler", "round-robin"]);
    let run = kube_nft(&flagged);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("numgen inc"), "{}", run.stdout);
    assert!(!run.stdout.contains("jhash"), "{}", run.stdout);

    let run = kube_nft(&["compile", "--dry-run", "-f", EXAMPLE, "--scheduler", "rr"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown scheduler \"rr\""),
        "{}",
        run.stderr
    );
}

#[test]
fn unusable_config_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kube-proxy.yaml");
    fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: kernelspace\n",
    )
    .unwrap();
    let run = kube_nft(&[
        "compile",
        "--dry-run",
        "-f",
        EXAMPLE,
        "--config",
        path_str(&config),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(path_str(&config)), "{}", run.stderr);
    assert!(run.stderr.contains("nftables"), "{}", run.stderr);

    // An interface mode without its interface, from the file: the file's error.
    fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         detectLocalMode: InterfaceNamePrefix\n",
    )
    .unwrap();
    let run = kube_nft(&[
        "compile",
        "--dry-run",
        "-f",
        EXAMPLE,
        "--config",
        path_str(&config),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(path_str(&config)), "{}", run.stderr);
    assert!(
        run.stderr.contains("detectLocal.interfaceNamePrefix"),
        "{}",
        run.stderr
    );

    let missing = dir.path().join("missing.yaml");
    let run = kube_nft(&[
        "compile",
        "--dry-run",
        "-f",
        EXAMPLE,
        "--config",
        path_str(&missing),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(path_str(&missing)), "{}", run.stderr);
}

#[test]
fn warnings_go_to_stderr_with_the_warning_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kube-proxy.yaml");
    fs::write(&config, format!("{CONFIG_HEADER}futureKnob: true\n")).unwrap();
    // A Service whose ports are not a list cannot be read: a diagnostic, not a failure.
    let input = "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: default}\n\
                 spec: {ports: 80}\n---\napiVersion: v1\nkind: ConfigMap\n\
                 metadata: {name: settings, namespace: default}\n";
    let run = kube_nft_with_stdin(
        &[
            "compile",
            "--dry-run",
            "-f",
            "-",
            "--config",
            path_str(&config),
        ],
        input,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("warning: ") && line.contains("futureKnob")),
        "no warning about the unknown config field:\n{}",
        run.stderr
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("warning: ") && line.contains("default/bad")),
        "no warning about the unreadable Service:\n{}",
        run.stderr
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("note: skipped 1 objects of kind")
                && line.contains("ConfigMap")),
        "no note about the skipped ConfigMap:\n{}",
        run.stderr
    );
    assert!(
        !run.stdout.lines().any(|line| line.starts_with("warning: ")),
        "stdout carries only the script (where warnings are `# warning:` comments)"
    );
}

#[test]
fn trace_rejects_a_malformed_packet_as_usage_error() {
    let run = kube_nft(&["trace", "-f", EXAMPLE, "tcp to nowhere"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("tcp to nowhere"), "{}", run.stderr);
}

#[test]
fn trace_prints_a_trace() {
    let mut args = vec!["trace", "-f", EXAMPLE];
    args.extend_from_slice(NODE_A);
    args.push("tcp 192.0.2.2:40000 -> 172.30.3.80:80");
    let outside = ok(&args);
    assert!(!outside.trim().is_empty());
    // The default origin for a non-node source is `outside`.
    args.extend_from_slice(&["--from", "outside"]);
    assert_eq!(ok(&args), outside);
}

#[test]
fn help_explains_flags_and_exit_codes() {
    let help = ok(&["compile", "--help"]);
    for needle in [
        "--hostname-override",
        "--nodeport-addresses",
        "kube-proxy",
        "Exit status",
    ] {
        assert!(help.contains(needle), "compile --help lacks {needle:?}");
    }
}
