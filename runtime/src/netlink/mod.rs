//! nf_tables over netlink, in pure Rust: [`encode`] turns `ir` objects into the bytes of one
//! transaction (sans-IO, unit-testable without a kernel), [`socket`] sends a transaction in one
//! `sendmsg` and maps the kernel's answers back to the objects that failed. [`conntrack`] encodes
//! and decodes the messages of the conntrack table (ctnetlink) the same way. `socket` is the only module in kube-nft that
//! opens a socket.

mod attr;
pub mod conntrack;
pub mod decode;
pub mod encode;
pub mod monitor;
mod rule;
pub mod socket;
mod sys;

/// The bytes of a recorded kernel reply under `testdata/netlink/<dir>/<name>.txt`, for unit
/// tests: hex byte pairs, `xx` for masked bytes (read as zero), `#` to the end of the line a
/// comment.
#[cfg(test)]
pub(crate) fn fixture_bytes(dir: &str, name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/netlink")
        .join(dir)
        .join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .flat_map(|line| {
            line.split('#')
                .next()
                .unwrap_or_default()
                .split_whitespace()
        })
        .map(|byte| match byte {
            "xx" => 0,
            hex => u8::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{name}: {hex:?}: {e}")),
        })
        .collect()
}
