//! `kube-nft trace`: compile, then follow one packet through the ruleset with the compiler's
//! interpreter and print the trace.

use kube_nft_compiler::trace::{self, Env, Origin, Packet};

use super::{load_and_compile, print_stdout, UsageError};
use crate::cli::{PacketOrigin, TraceArgs};

/// Runs `trace`.
pub(super) fn run(args: &TraceArgs) -> anyhow::Result<()> {
    // Parse the packet before reading any input: a typo is a usage error, whatever the files.
    let packet: Packet = args
        .packet
        .parse()
        .map_err(|err| UsageError(format!("invalid packet {:?}: {err}", args.packet)))?;
    let compiled = load_and_compile(&args.input, &args.node)?;
    let mut env = Env::from_graph(&compiled.graph);
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
    let trace = trace::trace(&compiled.ruleset, &env, &packet);
    print_stdout(&trace.to_string())
}
