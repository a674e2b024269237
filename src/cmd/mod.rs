//! Subcommands and the plumbing they share: reading inputs (file, directory or stdin), building
//! the node [`Config`] from `--config` and flags, compiling, and printing diagnostics to stderr.
//! Errors are `anyhow`; a [`UsageError`] in the chain makes the exit code 2, any other error 1.

mod cleanup;
mod compile;
mod demo;
#[cfg(test)]
mod deploy_tests;
mod diff;
mod run;
mod show;
mod trace;

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use kube_nft_compiler::config::{
    normalize_hostname, parse_kube_proxy_configuration, KubeProxyConfiguration,
};
use kube_nft_compiler::model::{self, Source};
use kube_nft_compiler::{Compiled, Config};
use kube_nft_runtime::sources::manifests::manifest_files;

use crate::cli::{Cli, Command, InputArgs, NodeArgs};

/// The whole program: parses the command line, runs the subcommand, prints an error as
/// `error: …` with its causes, and turns the outcome into the exit code. Both binaries'
/// `main` (`kube-nft`, and `kube-nft-static` of the container image) is this.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Runs the subcommand; `Ok` carries the exit code.
pub(crate) fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Compile(args) => compile::run(&args),
        Command::Trace(args) => trace::run(&args).map(|()| 0),
        Command::Diff(args) => diff::run(&args),
        Command::Cleanup => cleanup::run(),
        Command::Show(args) => show::run(&args),
        Command::Demo(args) => demo::run(&args).map(|()| 0),
        Command::Run(args) => run::run(&args),
    }
}

/// The exit code for an error: 2 for usage errors, 1 for everything else.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|cause| cause.is::<UsageError>()) {
        2
    } else {
        1
    }
}

/// The command line asks for something impossible (clap's own usage errors exit 2 before we
/// run; this is for the checks clap cannot express).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds the node config: defaults, then the `--config` file, then explicit flags (flags win).
fn node_config(node: &NodeArgs) -> anyhow::Result<Config> {
    node_config_and_file(node).map(|(config, _)| config)
}

/// [`node_config`], and the `--config` file as read (for the daemon's own settings).
fn node_config_and_file(
    node: &NodeArgs,
) -> anyhow::Result<(Config, Option<KubeProxyConfiguration>)> {
    let mut config = Config::default();
    let mut read = None;
    if let Some(path) = &node.config {
        let text = fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        let (file, warnings) = parse_kube_proxy_configuration(&text)
            .with_context(|| format!("config file {}", path.display()))?;
        for warning in warnings {
            eprintln!("warning: {}: {warning}", path.display());
        }
        file.apply_to(&mut config);
        read = Some(file);
    }
    if let Some(name) = &node.hostname_override {
        match normalize_hostname(name) {
            Some(name) => config.hostname = Some(name),
            None => bail!(UsageError(
                "invalid value '' for '--hostname-override <NAME>': the node name is empty".into()
            )),
        }
    }
    if !node.node_ip.is_empty() {
        config.node_ips = node.node_ip.clone();
    }
    if !node.cluster_cidr.is_empty() {
        config.cluster_cidrs = node.cluster_cidr.clone();
    }
    if !node.nodeport_addresses.is_empty() {
        config.nodeport_addresses = node.nodeport_addresses.clone();
    }
    if node.masquerade_all {
        config.masquerade_all = true;
    }
    if let Some(name) = &node.service_proxy_name {
        config.service_proxy_name = Some(name.clone());
    }
    if let Some(mode) = node.detect_local_mode {
        config.detect_local_mode = mode;
    }
    if let Some(name) = &node.pod_bridge_interface {
        config.pod_bridge_interface = Some(name.clone());
    }
    if let Some(prefix) = &node.pod_interface_name_prefix {
        config.pod_interface_name_prefix = Some(prefix.clone());
    }
    if let Some(scheduler) = node.scheduler {
        config.default_scheduler = scheduler;
    }
    if let Some(n) = node.dispatch_tables {
        config.dispatch_tables = n;
    }
    // What kube-proxy refuses to start with: a usage error when the flags chose the mode or
    // the interface, else the config file's.
    if let Err(message) = config.check() {
        let flags = node.detect_local_mode.is_some()
            || node.pod_bridge_interface.is_some()
            || node.pod_interface_name_prefix.is_some();
        match &node.config {
            Some(path) if !flags => bail!("config file {}: {message}", path.display()),
            _ => bail!(UsageError(message)),
        }
    }
    Ok((config, read))
}

/// Reads, loads and compiles the input for the node, printing every diagnostic and skipped
/// kind to stderr. Diagnostics from loading come first in `Compiled::diagnostics`, so the
/// rendered script carries them too.
fn load_and_compile(input: &InputArgs, node: &NodeArgs) -> anyhow::Result<Compiled> {
    let config = node_config(node)?;
    let sources = read_sources(&input.path)?;
    // Each object goes into the compact store as it is read: a 50k-Service file is never
    // held as Kubernetes objects (or as a JSON tree) all at once.
    let mut inputs = kube_nft_compiler::normalize::Inputs::new(&config);
    let loaded = model::load_each(&sources, |object| inputs.add(&object))?;
    drop(sources);
    let mut compiled = kube_nft_compiler::compile_inputs(inputs);
    compiled.diagnostics.splice(0..0, loaded.diagnostics);
    for diagnostic in &compiled.diagnostics {
        eprintln!("warning: {diagnostic}");
    }
    for (kind, count) in &loaded.skipped {
        eprintln!("note: skipped {count} objects of kind {kind} (not used by kube-nft)");
    }
    Ok(compiled)
}

/// kube-nft's tables read back from this network namespace's kernel, and the node's addresses
/// (`trace --live`, `show`); an error when the tables are absent.
fn read_node() -> anyhow::Result<(kube_nft_compiler::ir::Ruleset, Vec<std::net::IpAddr>)> {
    use kube_nft_compiler::ir::Family;
    let ruleset = kube_nft_runtime::readback::read(&[Family::Ip, Family::Ip6])
        .context("read kube-nft's tables from the kernel")?;
    if ruleset.tables.is_empty() {
        bail!("kube-nft's tables (ip kube-nft, ip6 kube-nft) are not in this network namespace: nothing is programmed here (is kube-nft running on this node?)");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let addresses = kube_nft_runtime::netlink::socket::local_addresses(deadline)
        .context("list this node's addresses")?;
    Ok((ruleset, addresses))
}

/// Reads `-f PATH`: stdin for `-`, every `*.yaml`, `*.yml` and `*.json` file below a
/// directory in path order, or one file.
fn read_sources(path: &Path) -> anyhow::Result<Vec<Source>> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("read standard input")?;
        return Ok(vec![Source {
            origin: "<stdin>".into(),
            text,
        }]);
    }
    let metadata = fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
    let files = if metadata.is_dir() {
        // The daemon's `--manifests` walk: the same files in the same order.
        let files = manifest_files(path)?;
        if files.is_empty() {
            bail!(
                "no *.yaml, *.yml or *.json files under directory {}",
                path.display()
            );
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|file| {
            let text =
                fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            Ok(Source {
                origin: file.display().to_string(),
                text,
            })
        })
        .collect()
}

/// Writes command output to stdout. A closed pipe (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(err).context("write to standard output")
        }
        _ => Ok(()),
    }
}
