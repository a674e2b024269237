//! The two HTTP servers of `kube-nft run`, answering like kube-proxy's so that nothing probing
//! a node notices the swap. The healthz server (`--healthz-bind-address`, 0.0.0.0:10256) serves
//! `/healthz` (probed by cloud load balancers) and `/livez` (for kubelet) from [`ProxyHealth`],
//! counting answers in `kubeproxy_proxy_{healthz,livez}_total{code}`. The metrics server
//! (`--metrics-bind-address`, 127.0.0.1:10249) serves `/metrics`, an apiserver-style `/healthz`
//! ("ok", the ping check only, as kube-proxy installs it there), `/proxyMode` (what
//! `curl localhost:10249/proxyMode` scripts check) and `/configz`. Both answer any method on
//! exact paths, like Go's `ServeMux` with these patterns, and Go's plain-text 404 elsewhere.
//! The caller binds the listeners (so the flags, `--bind-address-hard-fail` and tests on port 0
//! stay its business) and passes a shutdown future; the clock is read here and nowhere else.

use std::future::{Future, IntoFuture};
use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;

use super::health::{ProxyHealth, Timestamp};
use super::metrics::{self, Metrics, ProbeCode};

/// How long requests in flight may take to finish once shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The mode `/proxyMode` reports.
pub const PROXY_MODE: &str = "nftables";

/// The name kube-proxy registers its configuration under in `/configz`; see
/// [`configz_document`].
pub const CONFIGZ_NAME: &str = "kubeproxy.config.k8s.io";

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// A server stopped with an error (its listener failed).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server's accept loop or connection handling failed.
    #[error("{server} server failed")]
    Io {
        /// `healthz`, `metrics` or `health-check`.
        server: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The `/configz` body kube-proxy serves: component-base's `configz` writes a JSON object of
/// every registered configuration by name, and kube-proxy registers one, so tools read
/// `.["kubeproxy.config.k8s.io"]`.
pub fn configz_document(config: serde_json::Value) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert(CONFIGZ_NAME.to_owned(), config);
    serde_json::Value::Object(doc).to_string()
}

#[derive(Clone)]
struct HealthzState {
    health: ProxyHealth,
    metrics: Metrics,
}

/// Serves `/healthz` and `/livez` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve_healthz<F>(
    listener: TcpListener,
    health: ProxyHealth,
    metrics: Metrics,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!(%addr, "serving /healthz and /livez");
    }
    let app = Router::new()
        .route("/healthz", any(healthz))
        .route("/livez", any(livez))
        .fallback(not_found)
        .with_state(HealthzState { health, metrics });
    run("healthz", listener, app, shutdown).await
}

#[derive(Clone)]
struct MetricsState {
    metrics: Metrics,
    configz: std::sync::Arc<str>,
}

/// Serves `/metrics`, `/healthz`, `/proxyMode` and `/configz` on `listener` until `shutdown`
/// completes, then as [`serve_healthz`]. `configz` is the `/configz` body, served verbatim as JSON (kube-proxy's shape is
/// [`configz_document`]).
pub async fn serve_metrics<F>(
    listener: TcpListener,
    metrics: Metrics,
    configz: String,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!(%addr, "serving /metrics, /healthz, /proxyMode and /configz");
    }
    let app = Router::new()
        .route("/metrics", any(scrape))
        .route("/healthz", any(ping))
        .route("/healthz/ping", any(ping))
        .route("/proxyMode", any(proxy_mode))
        .route("/configz", any(config_document))
        .fallback(not_found)
        .with_state(MetricsState {
            metrics,
            configz: configz.into(),
        });
    run("metrics", listener, app, shutdown).await
}

/// Serves `app` until `shutdown` completes, then lets the requests in flight finish for at
/// most [`SHUTDOWN_GRACE`]. The bound matters because hyper's graceful shutdown waits for
/// every connection that has started a request, and a client that sent half a request line
/// (or a stalled scraper) would otherwise hold the daemon's exit up; connections still open
/// then are left to end with the process, as kube-proxy's are.
pub(super) async fn run<F>(
    server: &'static str,
    listener: TcpListener,
    app: Router,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (fired, was_fired) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = fired.send(());
    };
    let serving = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .into_future();
    let grace = async {
        match was_fired.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            // The signal future is only dropped once serving returned.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = serving => result.map_err(|source| ServeError::Io { server, source }),
        () = grace => {
            tracing::debug!(server, "requests still open after the shutdown grace, leaving them");
            Ok(())
        }
    }
}

pub(super) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

async fn healthz(State(state): State<HealthzState>) -> Response {
    healthz_at(&state.health, &state.metrics, Timestamp::now())
}

async fn livez(State(state): State<HealthzState>) -> Response {
    livez_at(&state.health, &state.metrics, Timestamp::now())
}

/// `/healthz` at `now`: the status, the counter, the JSON.
fn healthz_at(health: &ProxyHealth, metrics: &Metrics, now: Timestamp) -> Response {
    let status = health.health(now);
    let code = status.healthz_code();
    if let Some(counter) = metrics.proxy_healthz.get(ProbeCode::of(code)) {
        counter.inc();
    }
    response(status_code(code), JSON, status.healthz_body())
}

/// `/livez` at `now`.
fn livez_at(health: &ProxyHealth, metrics: &Metrics, now: Timestamp) -> Response {
    let status = health.health(now);
    let code = status.livez_code();
    if let Some(counter) = metrics.proxy_livez.get(ProbeCode::of(code)) {
        counter.inc();
    }
    response(status_code(code), JSON, status.livez_body())
}

async fn scrape(State(state): State<MetricsState>) -> Response {
    match state.metrics.exposition().await {
        Ok(text) => response(StatusCode::OK, metrics::CONTENT_TYPE, text),
        // promhttp's `HTTPErrorOnError`, which kube-proxy's handler uses: a 500 naming the
        // error rather than a partial scrape.
        Err(e) => {
            tracing::warn!(error = %e, "encoding metrics failed");
            response(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("An error has occurred while serving metrics:\n\n{e}\n"),
            )
        }
    }
}

/// The apiserver-style health check kube-proxy installs on the metrics port
/// (`healthz.InstallHandler` with only the `ping` check): always "ok"; `?verbose` lists the
/// checks like the apiserver does.
async fn ping(RawQuery(query): RawQuery) -> Response {
    let verbose = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("verbose"))
    });
    let body = if verbose {
        "[+]ping ok\nhealthz check passed\n"
    } else {
        "ok"
    };
    response(StatusCode::OK, TEXT, body)
}

async fn proxy_mode() -> Response {
    response(StatusCode::OK, TEXT, PROXY_MODE)
}

async fn config_document(State(state): State<MetricsState>) -> Response {
    response(StatusCode::OK, JSON, state.configz.to_string())
}

/// Go's `http.NotFound`.
async fn not_found() -> Response {
    response(StatusCode::NOT_FOUND, TEXT, "404 page not found\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_nft_compiler::ir::Family;
    use std::time::{Duration, Instant, UNIX_EPOCH};

    fn counter(metrics: &Labelled, code: ProbeCode) -> u64 {
        metrics.get(code).map_or(0, |c| c.get())
    }

    type Labelled = metrics::Labelled<ProbeCode, prometheus_client::metrics::counter::Counter>;

    #[test]
    fn answers_are_counted_by_code() {
        let t0 = Timestamp::new(UNIX_EPOCH + Duration::from_secs(1_000), Instant::now());
        let at = |s: u64| {
            Timestamp::new(
                t0.wall + Duration::from_secs(s),
                t0.mono + Duration::from_secs(s),
            )
        };
        let health = ProxyHealth::new(Duration::from_secs(30), &[Family::Ip], t0);
        let metrics = Metrics::new(&[Family::Ip], "v");
        health.set_node_eligible(true);

        // Not synced yet: healthz 503, livez 200.
        assert_eq!(healthz_at(&health, &metrics, at(1)).status(), 503);
        assert_eq!(livez_at(&health, &metrics, at(1)).status(), 200);
        health.updated(at(2));
        assert_eq!(healthz_at(&health, &metrics, at(3)).status(), 200);
        assert_eq!(healthz_at(&health, &metrics, at(3)).status(), 200);
        health.set_node_eligible(false);
        assert_eq!(healthz_at(&health, &metrics, at(4)).status(), 503);
        assert_eq!(livez_at(&health, &metrics, at(4)).status(), 200);
        health.queued(at(5));
        assert_eq!(livez_at(&health, &metrics, at(65)).status(), 503);

        assert_eq!(counter(&metrics.proxy_healthz, ProbeCode::Ok), 2);
        assert_eq!(counter(&metrics.proxy_healthz, ProbeCode::Unavailable), 2);
        assert_eq!(counter(&metrics.proxy_livez, ProbeCode::Ok), 2);
        assert_eq!(counter(&metrics.proxy_livez, ProbeCode::Unavailable), 1);
    }

    #[test]
    fn health_responses_carry_kube_proxys_headers() {
        let t0 = Timestamp::now();
        let health = ProxyHealth::new(Duration::from_secs(30), &[Family::Ip], t0);
        let metrics = Metrics::new(&[Family::Ip], "v");
        for response in [
            healthz_at(&health, &metrics, t0),
            livez_at(&health, &metrics, t0),
        ] {
            let headers = response.headers();
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert_eq!(headers["x-content-type-options"], "nosniff");
        }
    }

    #[test]
    fn configz_wraps_the_config_under_kube_proxys_name() {
        let doc = configz_document(serde_json::json!({"mode": "nftables"}));
        assert_eq!(doc, r#"{"kubeproxy.config.k8s.io":{"mode":"nftables"}}"#);
    }
}
