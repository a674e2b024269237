//! The `kube-nft` binary: parse the command line, run the subcommand, turn the outcome into an
//! exit code. It holds no policy: everything a test would want to call lives in the
//! `kube-nft-compiler` crate; `cmd` only reads files and prints.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
