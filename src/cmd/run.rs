//! `kube-nft run`: the node daemon. This file only turns flags and the `--config` file into
//! `runtime::daemon::Options` (flags win over the file, defaults are kube-proxy's), sets up
//! logging, and runs the daemon on a tokio runtime until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use kube_nft_runtime::daemon::{self, Options, Source};
use kube_nft_runtime::serve::addr::{
    parse_bind_address, DEFAULT_HEALTHZ_BIND_ADDRESS, DEFAULT_METRICS_BIND_ADDRESS, HEALTHZ_PORT,
    METRICS_PORT,
};
use tracing_subscriber::EnvFilter;

use super::{node_config_and_file, UsageError};
use crate::cli::{LogFormat, RunArgs};

/// kube-proxy's `--min-sync-period` default.
const MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// kube-proxy's `--sync-period` default.
const SYNC_PERIOD: Duration = Duration::from_secs(30);
/// `--watch-silence-timeout`'s default: more than twice the kubelet's 5-minute Node status
/// report interval.
const WATCH_SILENCE: Duration = Duration::from_secs(11 * 60);
/// Full rescan of `--manifests`, behind inotify.
const MANIFESTS_RESCAN: Duration = Duration::from_secs(30);

/// Runs the daemon until a signal; `Ok` carries the exit code.
pub(super) fn run(args: &RunArgs) -> anyhow::Result<u8> {
    init_logging(args.log_format, args.verbosity);
    let (mut config, file) = node_config_and_file(&args.node)?;
    let settings = file.map(|f| f.daemon).unwrap_or_default();
    if config.hostname.is_none() {
        config.hostname = Some(os_hostname()?);
    }
    let node_name = config.hostname.clone().expect("set above");

    let source = match &args.manifests {
        Some(dir) => Source::Manifests {
            dir: dir.clone(),
            rescan: MANIFESTS_RESCAN,
        },
        None => Source::Api {
            kubeconfig: args
                .kubeconfig
                .clone()
                .or_else(|| settings.kubeconfig.as_ref().map(PathBuf::from)),
            master: args.master.clone(),
        },
    };
    let min_sync_period = args
        .min_sync_period
        .or(settings.min_sync_period)
        .unwrap_or(MIN_SYNC_PERIOD);
    let sync_period = args
        .sync_period
        .or(settings.sync_period)
        .unwrap_or(SYNC_PERIOD);
    if sync_period.is_zero() {
        bail!(UsageError("--sync-period must be greater than 0".into()));
    }
    let bind = |flag: &str, value: &str, port| {
        parse_bind_address(value, port)
            .map_err(|err| UsageError(format!("invalid value '{value}' for '{flag}': {err}")))
    };
    let healthz_text = args
        .healthz_bind_address
        .clone()
        .or(settings.healthz_bind_address)
        .unwrap_or_else(|| DEFAULT_HEALTHZ_BIND_ADDRESS.to_owned());
    let metrics_text = args
        .metrics_bind_address
        .clone()
        .or(settings.metrics_bind_address)
        .unwrap_or_else(|| DEFAULT_METRICS_BIND_ADDRESS.to_owned());
    let healthz = bind("--healthz-bind-address", &healthz_text, HEALTHZ_PORT)?;
    let metrics = bind("--metrics-bind-address", &metrics_text, METRICS_PORT)?;

    let configz = serde_json::json!({
        "kubeproxy.config.k8s.io": {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "hostnameOverride": node_name,
            "clusterCIDR": config.cluster_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "nodePortAddresses": config.nodeport_addresses.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            "syncPeriod": format!("{}s", sync_period.as_secs_f64()),
            "minSyncPeriod": format!("{}s", min_sync_period.as_secs_f64()),
            "healthzBindAddress": healthz_text,
            "metricsBindAddress": metrics_text,
            "nftables": {"masqueradeAll": config.masquerade_all, "masqueradeBit": config.masquerade_bit},
        }
    })
    .to_string();

    // A folder of manifests has no heartbeat.
    let watch_silence = match (&source, args.watch_silence_timeout) {
        (Source::Manifests { .. }, _) => None,
        (_, Some(d)) if d.is_zero() => None,
        (_, d) => Some(d.unwrap_or(WATCH_SILENCE)),
    };
    let options = Options {
        config,
        node_name,
        source,
        min_sync_period,
        sync_period,
        healthz,
        metrics,
        configz,
        watch_silence,
        metrics_per_service: args.metrics_per_service,
        release_memory: crate::alloc::release,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        daemon::run(options, shutdown_signal())
            .await
            .context("kube-nft run")
    })?;
    Ok(0)
}

/// Completes on SIGTERM (what the kubelet sends) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot handle SIGTERM; only SIGINT stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// kube-proxy's default node name: the OS hostname, lower-cased.
fn os_hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("read the hostname (use --hostname-override)")?;
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        bail!(UsageError(
            "the hostname is empty; use --hostname-override".into()
        ));
    }
    Ok(name)
}

/// Logs to stderr as text or JSON; `-v` maps onto levels as kube-proxy's klog verbosity does
/// roughly (0-1 info, 2-3 debug, 4+ trace), `RUST_LOG` wins when set.
fn init_logging(format: LogFormat, verbosity: u8) {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,kube_nft={level},kube_nft_runtime={level},kube_nft_compiler={level}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
