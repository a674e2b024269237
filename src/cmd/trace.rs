//! `kube-nft trace`: compile, or with `--live` read kube-nft's tables back from the kernel, then
//! follow one packet through the ruleset with the compiler's interpreter and print the trace.
//! The live trace takes the node's addresses from the kernel too, and its pod interface from
//! the ruleset's own `meta iifname` matches, so it answers "where does this packet go on this
//! node right now" without any input file.

use kube_nft_compiler::ir::Ruleset;
use kube_nft_compiler::trace::{self, Env, Origin, Packet};

use super::{load_and_compile, print_stdout, read_node, UsageError};
use crate::cli::{InputArgs, PacketOrigin, TraceArgs};

/// Runs `trace`.
pub(super) fn run(args: &TraceArgs) -> anyhow::Result<()> {
    // Parse the packet before reading any input: a typo is a usage error, whatever the files.
    let packet: Packet = args
        .packet
        .parse()
        .map_err(|err| UsageError(format!("invalid packet {:?}: {err}", args.packet)))?;
    let (ruleset, mut env) = match &args.path {
        Some(path) if !args.live => {
            let input = InputArgs { path: path.clone() };
            let compiled = load_and_compile(&input, &args.node)?;
            let env = Env::from_graph(&compiled.graph);
            (compiled.ruleset, env)
        }
        _ => live()?,
    };
    env.local_addrs.extend(&args.local_ip);
    env.local_addrs.sort();
    env.local_addrs.dedup();
    let origin = match args.from {
        Some(PacketOrigin::Outside) => Origin::Outside,
        Some(PacketOrigin::Pod) => Origin::LocalPod,
        Some(PacketOrigin::Host) => Origin::Host,
        // Only this host sends from its own (or a loopback) address.
        None if env.is_local(packet.saddr) => Origin::Host,
        None => Origin::Outside,
    };
    let packet = packet.with_origin(origin);
    let trace = trace::trace(&ruleset, &env, &packet);
    print_stdout(&trace.to_string())
}

/// Our tables and the node, from the kernel.
fn live() -> anyhow::Result<(Ruleset, Env)> {
    let (ruleset, addresses) = read_node()?;
    let env = Env::from_ruleset(&ruleset, addresses);
    Ok((ruleset, env))
}
