//! The golden cases: `testdata/compile/**/*.yaml`, each compiled with the node config its
//! leading `# args:` lines give, built like the binary builds it.

use std::path::{Path, PathBuf};

use kube_nft_compiler::config::{
    normalize_hostname, parse_cidr, parse_kube_proxy_configuration, parse_scheduler,
    NodePortAddress,
};
use kube_nft_compiler::ir;
use kube_nft_compiler::model::{self, Source};
use kube_nft_compiler::Config;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// The files under `dir` (recursively) whose name ends in `.ext`, sorted. Fails if `dir`, or a
/// directory below it, cannot be read.
pub fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read directory {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, ext, out);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, ext, &mut files);
    files.sort();
    files
}

/// Every golden case (`testdata/compile/**/*.yaml`), sorted.
pub fn cases() -> Vec<PathBuf> {
    files_under(&repo_root().join("testdata/compile"), "yaml")
}

/// `case` relative to the workspace root, for messages.
pub fn shown(case: &Path) -> String {
    case.strip_prefix(repo_root())
        .unwrap_or(case)
        .display()
        .to_string()
}

/// The CLI flags of a case: its leading `# args:` comment lines, split on whitespace and
/// concatenated (the golden and trace tests pass them to the binary as they are).
pub fn case_args(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("# args:"))
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect()
}

/// The node config from a case's [`case_args`], built like the binary does: the `--config`
/// file first, then the flags.
pub fn case_config(text: &str) -> Config {
    let args = case_args(text);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let value = |i: usize| *args.get(i + 1).expect("flag value");
    let mut file = None;
    let mut flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "--config" => {
                file = Some(value(i));
                i += 2;
            }
            "--masquerade-all" => {
                flags.push(("--masquerade-all", ""));
                i += 1;
            }
            flag => {
                flags.push((flag, value(i)));
                i += 2;
            }
        }
    }
    let mut config = Config::default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(repo_root().join(path)).expect("read --config file");
        let (file, _warnings) = parse_kube_proxy_configuration(&text).expect("parse --config");
        file.apply_to(&mut config);
    }
    let list = |v: &str| v.split(',').map(str::to_owned).collect::<Vec<_>>();
    for (flag, v) in flags {
        match flag {
            "--hostname-override" => config.hostname = normalize_hostname(v),
            "--node-ip" => {
                config.node_ips = list(v).iter().map(|s| s.parse().expect("IP")).collect()
            }
            "--cluster-cidr" => {
                config.cluster_cidrs = list(v)
                    .iter()
                    .map(|s| parse_cidr(s).expect("CIDR"))
                    .collect()
            }
            "--nodeport-addresses" => {
                config.nodeport_addresses = list(v)
                    .iter()
                    .map(|s| s.parse::<NodePortAddress>().expect("nodeport address"))
                    .collect()
            }
            "--masquerade-all" => config.masquerade_all = true,
            "--service-proxy-name" => config.service_proxy_name = Some(v.to_owned()),
            "--detect-local-mode" => {
                config.detect_local_mode = v.parse().expect("detect-local-mode")
            }
            "--pod-bridge-interface" => config.pod_bridge_interface = Some(v.to_owned()),
            "--pod-interface-name-prefix" => config.pod_interface_name_prefix = Some(v.to_owned()),
            "--scheduler" => config.default_scheduler = parse_scheduler(v).expect("scheduler"),
            "--dispatch-tables" => config.dispatch_tables = v.parse().expect("dispatch tables"),
            other => panic!("case uses flag {other}, which this test does not parse yet"),
        }
    }
    config
}

/// A golden case's ruleset compiled with its [`case_config`]. `case` is absolute or relative to
/// the workspace root.
pub fn compile_case(case: impl AsRef<Path>) -> ir::Ruleset {
    compiled_case(case).ruleset
}

/// [`compile_case`] with everything `compile` returns (the graph too).
pub fn compiled_case(case: impl AsRef<Path>) -> kube_nft_compiler::Compiled {
    let path = repo_root().join(case);
    let text = std::fs::read_to_string(&path).expect("read case");
    let config = case_config(&text);
    let loaded = model::load(&[Source {
        origin: path.display().to_string(),
        text,
    }])
    .expect("load case");
    kube_nft_compiler::compile(&loaded.snapshot, &config)
}
