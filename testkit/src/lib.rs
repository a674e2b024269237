//! Test helpers shared by the test suites of kube-nft's crates (a dev-dependency only).
//!
//! [`daemon`]: `kube-nft run` as a child process with its log captured, bounded waits, and a
//! minimal HTTP GET for its health and metrics endpoints.
//!
//! [`netns`]: running closures and `nft` in throwaway network namespaces, so the host's ruleset
//! is never touched, and the one policy for environments where that is impossible: print
//! `SKIPPED` loudly, except under `CI=true`, where the test fails.
//!
//! [`listing`]: normalising `nft list ruleset` output for comparison (element order, chain and
//! set block order) and line diffs for failure messages.
//!
//! [`golden`]: the golden cases under `testdata/compile`: finding them, the node config from
//! their `# args:` lines, and compiling them.
//!
//! [`cluster`]: generated clusters (Services, EndpointSlices and a Node as JSON manifests), their
//! snapshots and rulesets, and proptest strategies for random ones.
//!
//! [`every_form`]: a table with every statement, expression, set and element form the IR has.
//!
//! [`synthetic`]: seeded clusters of N Services × M endpoints in a realistic mix, for the
//! benchmark (`bench/`) and scale tests.
//!
//! [`apiserver`]: a fake Kubernetes API server speaking the real HTTP list/watch protocol (for
//! kube-rs and kubectl), with fault injection.

pub mod apiserver;
pub mod cluster;
pub mod daemon;
pub mod every_form;
pub mod golden;
pub mod listing;
pub mod netns;
pub mod synthetic;

/// The error and its sources, `: `-joined.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
