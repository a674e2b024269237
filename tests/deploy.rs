//! `deploy/` and the container image, checked against the code: every manifest (as written
//! and as `kubectl kustomize` renders the base and each overlay) deserializes into its
//! k8s-openapi type without losing a field; the ClusterRole grants exactly the API access the
//! daemon's watchers use (`sources::kube::API_ACCESS`, itself checked against real requests in
//! `runtime/tests/sources_kube.rs`); the DaemonSet keeps the invariants a node proxy needs; the
//! Grafana dashboard only queries metrics the daemon exports. Its arguments are checked against
//! the binary's own clap definition in `src/cmd/deploy_tests.rs`.
//!
//! The image test builds `Containerfile` for real with podman (a `FROM scratch` image, nothing
//! pulled) around the statically linked binary (`cargo rustc --bin kube-nft-static`, which
//! reuses the dependencies this test run already compiled), runs `--help` and
//! `compile --dry-run` from the image, and runs the image's binary as a daemon with exactly the
//! DaemonSet's capabilities in a throwaway network namespace. It needs root, podman, setpriv
//! and unshare: without them it prints SKIPPED, and under `CI=true` it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube_nft_compiler::ir::Family;
use kube_nft_runtime::serve::metrics::Metrics;
use kube_nft_runtime::sources::kube::API_ACCESS;
use kube_nft_testkit::daemon::{http_get, loopback_up, metric, wait_until, Daemon};
use kube_nft_testkit::netns::{in_netns, unavailable};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every directory `kubectl kustomize` renders: the entry point, the base and each overlay.
const KUSTOMIZATIONS: &[&str] = &[
    "deploy",
    "deploy/base",
    "deploy/overlays/side-by-side",
    "deploy/overlays/dual-stack",
    "deploy/overlays/kubeadm",
    "deploy/overlays/prometheus",
];

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// Under `CI=true` a test that cannot run fails; elsewhere it says SKIPPED and passes.
fn skip(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI=true but it cannot run here: {reason}");
    }
    eprintln!("\n*** SKIPPED: {test}: {reason} ***\n");
}

/// The YAML documents of `text`, as JSON values (nulls from empty documents dropped).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{origin}: {e}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `doc` as `T`, and back: equal to the original, so no field was misspelt, misplaced or of
/// the wrong type (k8s-openapi would drop an unknown field silently).
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: {} {e}", doc["kind"]));
    let back = serde_json::to_value(&object).expect("serialize");
    assert_eq!(
        &back, doc,
        "{origin}: {} does not survive a round trip through its k8s-openapi type",
        doc["kind"]
    );
    object
}

/// Checks one manifest by kind; returns its kind.
fn check_manifest(doc: &Value, origin: &str) -> String {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    match kind.as_str() {
        "ServiceAccount" => drop(typed::<ServiceAccount>(doc, origin)),
        "ClusterRole" => drop(typed::<ClusterRole>(doc, origin)),
        "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc, origin)),
        "ConfigMap" => drop(typed::<ConfigMap>(doc, origin)),
        "DaemonSet" => drop(typed::<DaemonSet>(doc, origin)),
        "Service" => drop(typed::<Service>(doc, origin)),
        // A CRD of the Prometheus Operator, which k8s-openapi does not have.
        "ServiceMonitor" => {
            assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1", "{origin}");
            let endpoint = &doc["spec"]["endpoints"][0];
            assert_eq!(endpoint["port"], "metrics", "{origin}");
            assert_eq!(endpoint["path"], "/metrics", "{origin}");
        }
        "Kustomization" | "Component" => {}
        other => panic!("{origin}: unexpected kind {other:?}"),
    }
    kind
}

/// Every `*.yaml` below `deploy/`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn every_manifest_deserializes_into_its_type() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    let mut kinds = BTreeSet::new();
    for file in &files {
        let origin = file
            .strip_prefix(root())
            .unwrap_or(file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(file).expect("read manifest");
        for doc in documents(&text, &origin) {
            let kind = check_manifest(&doc, &origin);
            if kind == "Kustomization" || kind == "Component" {
                // What a kustomization names exists (kubectl is not needed for that much).
                for list in ["resources", "components"] {
                    for entry in doc[list].as_array().into_iter().flatten() {
                        let path = file
                            .parent()
                            .expect("dir")
                            .join(entry.as_str().expect("path"));
                        assert!(path.exists(), "{origin}: {} does not exist", path.display());
                    }
                }
            }
            kinds.insert(kind);
        }
    }
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(kind), "no {kind} under deploy/");
    }
}

/// `kubectl kustomize DIR`, or `None` (skipped) without kubectl.
fn kustomize(dir: &str) -> Option<String> {
    let output = match Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(root())
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            skip("kubectl kustomize", &format!("cannot run kubectl: {e}"));
            return None;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("utf-8"))
}

#[test]
fn every_kustomization_renders_into_typed_objects_in_kube_system() {
    for dir in KUSTOMIZATIONS {
        let Some(text) = kustomize(dir) else { return };
        let docs = documents(&text, dir);
        let mut daemonsets = 0;
        for doc in &docs {
            let kind = check_manifest(doc, dir);
            let namespaced = !matches!(kind.as_str(), "ClusterRole" | "ClusterRoleBinding");
            if namespaced {
                assert_eq!(doc["metadata"]["namespace"], "kube-system", "{dir}: {kind}");
            }
            if kind == "DaemonSet" {
                daemonsets += 1;
                daemonset_invariants(&typed(doc, dir), dir);
            }
        }
        assert_eq!(daemonsets, 1, "{dir}");
        let rbac = |kind: &str| docs.iter().filter(|d| d["kind"] == kind).count();
        assert_eq!(
            (
                rbac("ServiceAccount"),
                rbac("ClusterRole"),
                rbac("ClusterRoleBinding")
            ),
            (1, 1, 1),
            "{dir}"
        );
    }
}

/// What a node proxy's DaemonSet must keep, whatever the overlay.
fn daemonset_invariants(ds: &DaemonSet, origin: &str) {
    let spec = &ds.spec;
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{origin}");
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
        "{origin}"
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "{origin}");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "{origin}"
    );
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"), "{origin}");
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{origin}: must tolerate every taint"
    );
    assert_eq!(pod.containers.len(), 1, "{origin}");
    let container = &pod.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_ne!(security.privileged, Some(true), "{origin}: privileged");
    assert_eq!(security.allow_privilege_escalation, Some(false), "{origin}");
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "{origin}"
    );
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_owned()][..]),
        "{origin}"
    );
    let node_name = container
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"), "{origin}");
    let args = container.args.as_deref().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--hostname-override=$(NODE_NAME)"),
        "{origin}: {args:?}"
    );
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/livez")
    );
    assert_eq!(
        probe_path(&container.startup_probe).as_deref(),
        Some("/livez")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/healthz")
    );
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("resource requests");
    assert!(
        requests.contains_key("cpu") && requests.contains_key("memory"),
        "{origin}"
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("kube-nft"),
        "{origin}"
    );
}

#[test]
fn the_cluster_role_grants_exactly_what_the_watchers_use() {
    let text = std::fs::read_to_string(root().join("deploy/base/clusterrole.yaml")).expect("read");
    let docs = documents(&text, "clusterrole.yaml");
    let role: ClusterRole = typed(&docs[0], "clusterrole.yaml");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        granted.insert((group.clone(), resource.clone(), verb.clone())),
                        "granted twice: {group}/{resource} {verb}"
                    );
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = API_ACCESS
        .iter()
        .flat_map(|access| {
            access.verbs.iter().map(|verb| {
                (
                    access.group.to_owned(),
                    access.resource.to_owned(),
                    (*verb).to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(granted, used);

    let text =
        std::fs::read_to_string(root().join("deploy/base/clusterrolebinding.yaml")).expect("read");
    let binding: ClusterRoleBinding =
        typed(&documents(&text, "binding")[0], "clusterrolebinding.yaml");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str()),
        ("ServiceAccount", "kube-nft")
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some("kube-system"));
}

/// Metric names the dashboard's queries use, without `_bucket`/`_sum`/`_count`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let prefixed = rest.starts_with("kubeproxy_") || rest.starts_with("kube_nft_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if prefixed && boundary {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.push(base.to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let exposition = Metrics::new(&[Family::Ip, Family::Ip6], "test")
        .encode()
        .expect("encode metrics");
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/extras/grafana-dashboard.json"))
            .expect("read dashboard"),
    )
    .expect("dashboard JSON");
    let mut queried = 0;
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let exprs = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .chain(
            variables
                .iter()
                .filter_map(|v| v["definition"].as_str().map(str::to_owned)),
        );
    for expr in exprs {
        for name in metric_names(&expr) {
            // Counters are exported as `name_total`; the TYPE line names the family.
            let family = name.strip_suffix("_total").unwrap_or(&name);
            assert!(
                exported.contains(name.as_str()) || exported.contains(family),
                "the dashboard queries {name}, which the daemon does not export"
            );
            queried += 1;
        }
    }
    assert!(queried > 10, "{queried}");
}

// ---------------------------------------------------------------------------------------------
// The container image.

/// Why the image test cannot run here, if it cannot: the kernel tests' needs (root, network
/// namespaces) plus podman and setpriv.
fn image_unavailable() -> Option<String> {
    if let Some(reason) = unavailable() {
        return Some(reason);
    }
    for program in ["podman", "setpriv"] {
        match Command::new(program).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            _ => return Some(format!("{program} is not installed")),
        }
    }
    None
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Builds `kube-nft-static` with the profile of this test run (so the dependencies are the
/// ones already compiled) and returns its path.
fn static_binary() -> PathBuf {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(root()).args([
        "rustc",
        "--bin",
        "kube-nft-static",
        "--features",
        "static-bin",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    // The image needs no debug info; stripping it at link time also makes the link faster.
    command.args([
        "--",
        "-C",
        "target-feature=+crt-static",
        "-C",
        "strip=debuginfo",
    ]);
    let output = run(command.stderr(Stdio::inherit()));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "kube-nft-static")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no kube-nft-static executable")
}

/// Whether the ELF executable at `path` names a dynamic loader (a `PT_INTERP` program header):
/// a static binary, static-pie included, has none.
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).expect("read binary");
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == 3
    })
}

/// `podman run --network none IMAGE ARGS` with `stdin`; `None` when this machine's container
/// runtime cannot start containers at all (crun refusing to set rlimits in a sandbox).
fn podman_run(image: &str, args: &[&str], stdin: &[u8]) -> Option<Output> {
    use std::io::Write;
    let mut child = Command::new("podman")
        .args(["run", "--rm", "-i", "--network", "none", image])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podman run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let output = child.wait_with_output().expect("podman run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    (!stderr.contains("OCI permission denied")).then_some(output)
}

/// `chroot MOUNT /kube-nft ARGS`: the binary run from the image's own root.
fn chroot_run(mount: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("chroot")
        .arg(mount)
        .arg("/kube-nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chroot");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("chroot")
}

#[test]
fn the_image_builds_from_scratch_and_runs() {
    if let Some(reason) = image_unavailable() {
        return skip("the_image_builds_from_scratch_and_runs", &reason);
    }
    let started = Instant::now();
    let binary = static_binary();
    let built = started.elapsed();
    assert!(
        !has_interpreter(&binary),
        "{} is not static",
        binary.display()
    );

    // The context is a directory with the binary alone, as Containerfile expects.
    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&binary, context.path().join("kube-nft")).expect("copy binary");
    let image = format!("localhost/kube-nft-test:{}", std::process::id());
    run(Command::new("podman")
        .args([
            "build",
            "--pull=never",
            "--layers=false",
            "--quiet",
            "-t",
            &image,
            "-f",
        ])
        .arg(root().join("Containerfile"))
        .arg(context.path()));
    let _cleanup = RemoveImage(image.clone());
    let size =
        run(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &image]));
    let size: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .expect("size");
    let layers = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        &image,
    ]));
    assert_eq!(
        String::from_utf8_lossy(&layers.stdout).trim(),
        "1",
        "FROM scratch + one COPY"
    );

    let cluster = std::fs::read(root().join("examples/cluster.yaml")).expect("example");
    let compile = [
        "compile",
        "--dry-run",
        "-f",
        "-",
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.0.0.0/8",
    ];
    let expected = run(Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .args(compile)
        .stdin(std::fs::File::open(root().join("examples/cluster.yaml")).expect("open")))
    .stdout;

    let (how, help, script) = match podman_run(&image, &["--help"], b"") {
        Some(help) => {
            let script = podman_run(&image, &compile, &cluster).expect("podman run");
            ("podman run --network none", help, script)
        }
        None => {
            let mount = MountedImage::new(&image);
            let help = chroot_run(&mount.path, &["--help"], b"");
            let script = chroot_run(&mount.path, &compile, &cluster);
            ("podman image mount + chroot", help, script)
        }
    };
    assert!(help.status.success(), "{how} --help: {help:?}");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: kube-nft <COMMAND>"),
        "{how} --help printed {}",
        String::from_utf8_lossy(&help.stdout)
    );
    assert!(
        script.status.success(),
        "{how} compile: {}",
        String::from_utf8_lossy(&script.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&script.stdout),
        String::from_utf8_lossy(&expected),
        "the image's compile --dry-run differs from the host binary's"
    );

    daemon_with_the_daemonsets_capabilities(&image);
    eprintln!(
        "image {image}: {size} bytes ({:.1} MiB); static binary built in {built:?}, whole test {:?}; ran with {how}",
        size as f64 / 1048576.0,
        started.elapsed()
    );
}

/// The image's binary as `kube-nft run`, with only the capabilities the DaemonSet grants
/// (`setpriv` keeps them in the bounding set, so root's are exactly those), in a fresh network
/// namespace: it must program the tables (/livez turns 200 after the first sync), run a
/// conntrack reconcile pass without an error and serve its endpoints.
fn daemon_with_the_daemonsets_capabilities(image: &str) {
    let text = std::fs::read_to_string(root().join("deploy/base/daemonset.yaml")).expect("read");
    let ds: DaemonSet = typed(&documents(&text, "daemonset.yaml")[0], "daemonset.yaml");
    let pod = ds.spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");

    let mount = MountedImage::new(image);
    let manifests = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        root().join("examples/cluster.yaml"),
        manifests.path().join("cluster.yaml"),
    )
    .expect("copy example");
    let dir = manifests.path().to_str().expect("utf-8").to_owned();
    in_netns(|_| {
        loopback_up();
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--bounding-set={bounding}"))
            .arg("--")
            .arg(mount.path.join("kube-nft"));
        let mut daemon = Daemon::spawn_with(
            command,
            &[
                "--manifests",
                &dir,
                "--hostname-override",
                "node-a",
                "--cluster-cidr",
                "10.0.0.0/8",
                "--healthz-bind-address",
                "127.0.0.1:10256",
                "--metrics-bind-address",
                "127.0.0.1:10249",
            ],
        );
        let healthz = "127.0.0.1:10256".parse().expect("addr");
        let metrics = "127.0.0.1:10249".parse().expect("addr");
        let live = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            http_get(healthz, "/livez").is_ok_and(|r| r.status == 200)
        });
        assert!(live.is_some(), "no sync with {bounding}: {}", daemon.log());
        let passes =
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"}";
        let reconciled = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            http_get(metrics, "/metrics")
                .is_ok_and(|r| metric(&r.body, passes).is_some_and(|n| n >= 1.0))
        });
        assert!(reconciled.is_some(), "no conntrack pass: {}", daemon.log());
        let scrape = http_get(metrics, "/metrics").expect("metrics").body;
        assert_eq!(
            metric(&scrape, "kube_nft_conntrack_reconcile_errors_total"),
            Some(0.0),
            "conntrack errors with {bounding}: {}",
            daemon.log()
        );
        let log = daemon.log();
        assert!(
            !log.contains("Operation not permitted") && !log.contains("EPERM"),
            "{log}"
        );
        daemon.terminate();
    });
}

/// Removes the test image, also when the test panics.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// `podman image mount`, unmounted on drop.
struct MountedImage {
    image: String,
    path: PathBuf,
}

impl MountedImage {
    fn new(image: &str) -> MountedImage {
        let output = run(Command::new("podman").args(["image", "mount", image]));
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        assert!(path.join("kube-nft").exists(), "{}", path.display());
        MountedImage {
            image: image.to_owned(),
            path,
        }
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["image", "unmount", &self.image])
            .output();
    }
}
