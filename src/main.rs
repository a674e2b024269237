//! The `kube-nft` binary: parse the command line, run the subcommand, turn the outcome into an
//! exit code ([`cmd::main`]). It holds no policy: everything a test would want to call lives in
//! the `kube-nft-compiler` crate; `cmd` only reads files and prints.

mod alloc;
mod cli;
mod cmd;

fn main() -> std::process::ExitCode {
    alloc::tune();
    cmd::main()
}
