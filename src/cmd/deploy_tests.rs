//! The DaemonSets of `deploy/` start this binary with arguments its own clap definition accepts
//! and a `--config` file its own loader reads: every kustomization as `kubectl kustomize`
//! renders it (without kubectl, the base as written), with the mounted ConfigMaps' files
//! written where the DaemonSet mounts them (kubeadm's `kube-proxy` ConfigMap, which the kubeadm
//! overlay mounts, from `testdata/deploy/`). The probes must ask the port the health server
//! listens on, and the kubeconfig must name a real address, never the in-cluster ClusterIP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_nft_compiler::config::parse_kube_proxy_configuration;
use kube_nft_runtime::serve::addr::{
    parse_bind_address, DEFAULT_HEALTHZ_BIND_ADDRESS, DEFAULT_METRICS_BIND_ADDRESS, HEALTHZ_PORT,
    METRICS_PORT,
};
use serde_json::Value;

use super::node_config_and_file;
use crate::cli::{Cli, Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every kustomization that deploys kube-nft.
const DEPLOYMENTS: &[&str] = &[
    "deploy",
    "deploy/overlays/side-by-side",
    "deploy/overlays/dual-stack",
    "deploy/overlays/kubeadm",
    "deploy/overlays/prometheus",
];

fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{origin}: {e}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `kubectl kustomize DIR`; without kubectl the base's own files (and a note), or a failure
/// under `CI=true`.
fn rendered(dir: &str) -> Option<Vec<Value>> {
    match Process::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(ROOT)
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize {dir}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(documents(&String::from_utf8_lossy(&out.stdout), dir))
        }
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but kubectl cannot run: {e}");
            }
            eprintln!(
                "\n*** SKIPPED: kubectl kustomize {dir}: {e}; checking deploy/base only ***\n"
            );
            (dir == "deploy").then(|| {
                ["configmap.yaml", "daemonset.yaml"]
                    .iter()
                    .flat_map(|file| {
                        let path = Path::new(ROOT).join("deploy/base").join(file);
                        let text = std::fs::read_to_string(&path).expect("read manifest");
                        documents(&text, file)
                    })
                    .collect()
            })
        }
    }
}

fn probe_port(probe: Option<&Probe>) -> Option<IntOrString> {
    probe?.http_get.as_ref().map(|get| get.port.clone())
}

#[test]
fn daemonset_arguments_are_accepted_by_the_binary() {
    for dir in DEPLOYMENTS {
        let Some(docs) = rendered(dir) else { continue };
        let mut config_maps: BTreeMap<String, ConfigMap> = BTreeMap::new();
        let kubeadm = std::fs::read_to_string(
            Path::new(ROOT).join("testdata/deploy/kubeadm-kube-proxy.yaml"),
        )
        .expect("read the kubeadm ConfigMap");
        for doc in documents(&kubeadm, "kubeadm")
            .into_iter()
            .chain(docs.iter().cloned())
        {
            if doc["kind"] == "ConfigMap" {
                let map: ConfigMap = serde_json::from_value(doc).expect("ConfigMap");
                config_maps.insert(map.metadata.name.clone().unwrap_or_default(), map);
            }
        }
        let ds: DaemonSet = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .map(|d| serde_json::from_value(d.clone()).expect("DaemonSet"))
            .unwrap_or_else(|| panic!("{dir}: no DaemonSet"));
        let pod = ds.spec.template.spec.expect("pod spec");
        let container = &pod.containers[0];

        // The kubelet expands `$(VAR)` from the container's env; stand-ins for the downward API.
        let expand = |arg: &String| {
            arg.replace("$(NODE_NAME)", "node-a")
                .replace("$(NODE_IP)", "192.0.2.10")
        };
        let argv: Vec<String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .map(expand)
            .collect();
        assert_eq!(
            argv.first().map(String::as_str),
            Some("/kube-nft"),
            "{dir}: the image's binary"
        );
        assert!(
            !argv.iter().any(|a| a.contains("$(")),
            "{dir}: unexpanded {argv:?}"
        );
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{dir}: {argv:?}: {e}"));
        let Command::Run(mut run) = cli.command else {
            panic!("{dir}: {argv:?} is not `run`")
        };

        // The mounted ConfigMaps' files, below a temporary root.
        let fs_root = tempfile::tempdir().expect("tempdir");
        let local = |path: &Path| fs_root.path().join(path.strip_prefix("/").unwrap_or(path));
        let volumes = pod.volumes.as_deref().unwrap_or_default();
        for mount in container.volume_mounts.as_deref().unwrap_or_default() {
            let volume = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .unwrap_or_else(|| panic!("{dir}: no volume {}", mount.name));
            let Some(source) = &volume.config_map else {
                continue;
            };
            let map = config_maps
                .get(&source.name)
                .unwrap_or_else(|| panic!("{dir}: no ConfigMap {}", source.name));
            let target = local(Path::new(&mount.mount_path));
            std::fs::create_dir_all(&target).expect("mkdir");
            for (key, value) in map.data.iter().flatten() {
                std::fs::write(target.join(key), value).expect("write");
            }
        }

        let config_path = run
            .node
            .config
            .clone()
            .unwrap_or_else(|| panic!("{dir}: no --config"));
        run.node.config = Some(local(&config_path));
        let text = std::fs::read_to_string(local(&config_path)).unwrap_or_else(|e| {
            panic!(
                "{dir}: --config {} is not mounted: {e}",
                config_path.display()
            )
        });
        let (file, warnings) =
            parse_kube_proxy_configuration(&text).unwrap_or_else(|e| panic!("{dir}: {e}"));
        if *dir == "deploy/overlays/kubeadm" {
            // kubeadm's iptables-mode file is read with the mode mapped, and says so.
            assert!(
                warnings[0].starts_with("mode \"iptables\" mapped to nftables"),
                "{warnings:?}"
            );
        } else {
            assert!(warnings.is_empty(), "{dir}: {warnings:?}");
        }
        let (config, _) =
            node_config_and_file(&run.node).unwrap_or_else(|e| panic!("{dir}: {e:#}"));
        assert_eq!(config.hostname.as_deref(), Some("node-a"), "{dir}");
        assert!(!config.cluster_cidrs.is_empty(), "{dir}: no pod CIDR");
        match *dir {
            "deploy/overlays/side-by-side" => {
                assert_eq!(config.service_proxy_name.as_deref(), Some("kube-nft"))
            }
            "deploy/overlays/dual-stack" => {
                let families: std::collections::BTreeSet<bool> = config
                    .cluster_cidrs
                    .iter()
                    .map(|c| c.addr().is_ipv4())
                    .collect();
                assert_eq!(families.len(), 2, "{dir}: {:?}", config.cluster_cidrs);
            }
            _ => assert_eq!(config.service_proxy_name, None, "{dir}"),
        }

        // The kubeconfig is mounted and names the API server by a real address.
        let kubeconfig = run
            .kubeconfig
            .clone()
            .or_else(|| file.daemon.kubeconfig.as_ref().map(PathBuf::from))
            .unwrap_or_else(|| panic!("{dir}: no kubeconfig"));
        let text = std::fs::read_to_string(local(&kubeconfig))
            .unwrap_or_else(|e| panic!("{dir}: {} is not mounted: {e}", kubeconfig.display()));
        let kubeconfig = &documents(&text, "kubeconfig")[0];
        let server = kubeconfig["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap_or_default();
        assert!(server.starts_with("https://"), "{dir}: {server}");
        assert!(!server.contains("kubernetes.default"), "{dir}: {server}");
        assert_eq!(
            kubeconfig["users"][0]["user"]["tokenFile"],
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "{dir}"
        );

        // The bind addresses parse, and every probe asks the health server's port.
        let settings = &file.daemon;
        let healthz = run
            .healthz_bind_address
            .clone()
            .or(settings.healthz_bind_address.clone())
            .unwrap_or_else(|| DEFAULT_HEALTHZ_BIND_ADDRESS.to_owned());
        let healthz = parse_bind_address(&healthz, HEALTHZ_PORT)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .expect("health server enabled");
        let metrics = run
            .metrics_bind_address
            .clone()
            .or(settings.metrics_bind_address.clone())
            .unwrap_or_else(|| DEFAULT_METRICS_BIND_ADDRESS.to_owned());
        parse_bind_address(&metrics, METRICS_PORT).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let port = Some(IntOrString::Int(i32::from(healthz.port())));
        for probe in [
            &container.startup_probe,
            &container.liveness_probe,
            &container.readiness_probe,
        ] {
            assert_eq!(probe_port(probe.as_ref()), port, "{dir}");
        }
    }
}
