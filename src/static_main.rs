//! `kube-nft-static`: the `kube-nft` program again (the same modules and [`cmd::main`]) as a
//! second binary target, for the container image. Only `--features static-bin` builds it, with
//! `cargo rustc --bin kube-nft-static --features static-bin -- -C target-feature=+crt-static`:
//! `cargo rustc` passes those flags to this crate alone, so the binary is linked statically
//! against glibc from the dependencies a plain `cargo build` (or `cargo test`) already compiled,
//! in seconds, and without relinking the `kube-nft` that tests run meanwhile. A separate target
//! (`--target x86_64-unknown-linux-musl`, or `RUSTFLAGS` with `--target`) would rebuild every
//! dependency first. See `Containerfile`.

mod alloc;
mod cli;
mod cmd;

fn main() -> std::process::ExitCode {
    alloc::tune();
    cmd::main()
}
