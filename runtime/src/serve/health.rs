//! kube-proxy's `ProxyHealthServer` (`pkg/proxy/healthcheck/proxy_health.go`) as a pure state
//! machine: the sync loop reports [`ProxyHealth::queued`] when a change arrives and
//! [`ProxyHealth::updated`] when a transaction committed, the Node watch reports
//! [`ProxyHealth::set_node_eligible`], and [`ProxyHealth::health`] turns that into the
//! [`Status`] behind `/healthz` (what cloud load balancers probe for `externalTrafficPolicy:
//! Cluster` Services, so a draining node drops out) and `/livez` (what kubelet should probe).
//! Time is always passed in ([`Timestamp`]: wall clock for the JSON, monotonic clock for the
//! timeout, as Go's `time.Time` carries both), so the semantics are tested without sleeping;
//! only the HTTP layer reads the clock. One state covers both families because kube-nft syncs
//! them in one transaction, but the JSON keeps kube-proxy's per-family `status` map. One
//! deliberate difference from kube-proxy, which reports healthy from startup: `/healthz` is 503
//! until the first successful sync (kubernetes#83263 asks for it; a load balancer should not
//! send traffic to a node whose rules are not programmed), while `/livez` treats "never synced"
//! as a change pending since startup, so kubelet restarts a daemon that cannot sync within the
//! health timeout but not one that is merely starting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use kube_nft_compiler::ir::Family;
use serde::Serialize;

use super::metrics::ip_family;

/// The taint the Cluster Autoscaler puts on a node before deleting it (KEP-3836). Any effect
/// counts, as in kube-proxy.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Go's zero `time.Time` as `encoding/json` prints it: what kube-proxy reports as
/// `lastUpdated` before anything was synced.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One reading of the clock: the wall clock (printed in the JSON bodies) and the monotonic
/// clock (used for the timeout, so a wall-clock step does not make the proxy unhealthy, as
/// Go's `time.Time.Sub` uses the monotonic reading).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// Wall-clock time.
    pub wall: SystemTime,
    /// Monotonic time.
    pub mono: Instant,
}

impl Timestamp {
    /// Reads both clocks. The only clock read in this module; the pure parts take a
    /// `Timestamp` argument.
    pub fn now() -> Timestamp {
        Timestamp {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// A timestamp from explicit readings (tests, replays).
    pub fn new(wall: SystemTime, mono: Instant) -> Timestamp {
        Timestamp { wall, mono }
    }
}

/// Whether a Node may receive load-balancer traffic for `externalTrafficPolicy: Cluster`
/// Services: false once it has a `deletionTimestamp` or carries the
/// [`TO_BE_DELETED_TAINT`] taint with any effect (kube-proxy's `NodeEligible`).
pub fn node_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let tainted = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    !tainted
}

/// The proxy's health, shared between the sync loop (writer) and the HTTP servers (readers).
/// Cloning is cheap and every clone sees the same state; every method is synchronous and
/// holds the lock only to copy a few words, so the sync loop may call it from anywhere.
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    health_timeout: Duration,
    families: Vec<Family>,
    started: Timestamp,
    last_updated: Option<Timestamp>,
    oldest_pending: Option<Timestamp>,
    node_eligible: bool,
    /// Since when a watch that should have been heard from has been silent.
    silent_since: Option<Timestamp>,
}

impl ProxyHealth {
    /// A proxy that has not synced yet, for the given families (reported in the JSON
    /// `status` map in `IPv4`, `IPv6` order), with kube-proxy's `healthTimeout` of
    /// `2 × sync_period` (60 s at the default 30 s). The node starts out not eligible, as in
    /// kube-proxy since v1.33 (an unknown Node is not eligible): the daemon reports the Node
    /// with [`ProxyHealth::sync_node`] or [`ProxyHealth::set_node_eligible`].
    pub fn new(sync_period: Duration, families: &[Family], started: Timestamp) -> ProxyHealth {
        let mut families = families.to_vec();
        families.sort();
        families.dedup();
        ProxyHealth {
            state: Arc::new(Mutex::new(State {
                health_timeout: sync_period.saturating_mul(2),
                families,
                started,
                last_updated: None,
                oldest_pending: None,
                node_eligible: false,
                silent_since: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data updated in single assignments, so a panic elsewhere while
        // the lock was held cannot have left it half-written: use it as it is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// kube-proxy's `QueuedUpdate`: a Service, EndpointSlice or Node change arrived that the
    /// kernel does not reflect yet. Only the oldest pending change counts, so a steady stream
    /// of changes that never gets synced still times out.
    pub fn queued(&self, now: Timestamp) {
        let mut state = self.lock();
        if state.oldest_pending.is_none() {
            state.oldest_pending = Some(now);
        }
    }

    /// kube-proxy's `Updated`: a sync committed, so the kernel reflects every change queued
    /// before it started. Clears the pending change and records `now` as the last update.
    pub fn updated(&self, now: Timestamp) {
        let mut state = self.lock();
        state.oldest_pending = None;
        state.last_updated = Some(now);
    }

    /// Records whether the node is eligible for load-balancer traffic (see [`node_eligible`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// Records the Node as the watch last saw it; `None` (not seen yet, or deleted) is not
    /// eligible, as in kube-proxy.
    pub fn sync_node(&self, node: Option<&Node>) {
        self.set_node_eligible(node.is_some_and(node_eligible));
    }

    /// A watch that is expected to deliver something regularly (the Node's, which the kubelet
    /// updates at least every 5 minutes) has been silent since `since` (`None`: heard again).
    /// Like a change that waits, it counts against health once it lasts the health timeout: a
    /// hung watch leaves the rules stale without any error, and restarting the proxy (what a
    /// failing `/livez` makes the kubelet do) re-establishes it. kube-proxy has no such check.
    pub fn set_watch_silent(&self, since: Option<Timestamp>) {
        self.lock().silent_since = since;
    }

    /// `2 × syncPeriod`.
    pub fn health_timeout(&self) -> Duration {
        self.lock().health_timeout
    }

    /// The health at `now`.
    pub fn health(&self, now: Timestamp) -> Status {
        let state = self.lock();
        // Before the first sync, starting up counts as a change pending since startup (or
        // since an earlier queued change, should the caller have passed one).
        let pending_since = match (state.last_updated, state.oldest_pending) {
            (Some(_), pending) => pending,
            (None, Some(pending)) if pending.mono < state.started.mono => Some(pending),
            (None, _) => Some(state.started),
        };
        // kube-proxy: unhealthy once `currentTime.Sub(oldestPending) >= healthTimeout`.
        let overdue = pending_since
            .into_iter()
            .chain(state.silent_since)
            .any(|since| now.mono.saturating_duration_since(since.mono) >= state.health_timeout);
        Status {
            current_time: now.wall,
            last_updated: state.last_updated.map(|t| t.wall),
            pending_since: pending_since.map(|t| t.wall),
            synced: state.last_updated.is_some(),
            overdue,
            node_eligible: state.node_eligible,
            families: state.families.clone(),
        }
    }
}

/// The health at one instant, and the two responses made from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The instant this status is for.
    pub current_time: SystemTime,
    /// The last successful sync, if any.
    pub last_updated: Option<SystemTime>,
    /// The oldest change not yet synced (startup, before the first sync).
    pub pending_since: Option<SystemTime>,
    /// At least one sync succeeded.
    pub synced: bool,
    /// A change has been pending for at least the health timeout.
    pub overdue: bool,
    /// The Node is known and neither deleted nor tainted for deletion.
    pub node_eligible: bool,
    /// The families reported in the `status` map.
    pub families: Vec<Family>,
}

/// The JSON body, field for field and in the order of kube-proxy's `ProxyHealth` struct
/// (Go's `encoding/json` writes struct fields in declaration order, map keys sorted).
#[derive(Serialize)]
struct Body {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    #[serde(rename = "currentTime")]
    current_time: String,
    #[serde(rename = "nodeEligible", skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyBody>,
}

#[derive(Serialize)]
struct FamilyBody {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    healthy: bool,
}

impl Status {
    /// `/livez`: no change has been pending for the health timeout. Node eligibility does not
    /// matter: a node being drained must not get its proxy restarted.
    pub fn livez_ok(&self) -> bool {
        !self.overdue
    }

    /// `/healthz`: synced at least once, nothing overdue, and the node eligible.
    pub fn healthz_ok(&self) -> bool {
        self.synced && !self.overdue && self.node_eligible
    }

    /// The proxy's own health, without node eligibility: synced and nothing overdue. kube-proxy's
    /// `Health().Healthy`, the `healthy` field of `/healthz` and the `serviceProxyHealthy` of
    /// the per-Service health checks.
    pub fn proxy_healthy(&self) -> bool {
        self.synced && !self.overdue
    }

    /// 200 or 503, for `/healthz`.
    pub fn healthz_code(&self) -> u16 {
        code(self.healthz_ok())
    }

    /// 200 or 503, for `/livez`.
    pub fn livez_code(&self) -> u16 {
        code(self.livez_ok())
    }

    /// The `/healthz` body, e.g.
    /// `{"lastUpdated":"…","currentTime":"…","nodeEligible":true,"healthy":true,"status":{"IPv4":{"lastUpdated":"…","healthy":true}}}`.
    /// `healthy` is the proxy's own health as `/healthz` judges it (synced and nothing
    /// overdue), without node eligibility, like kube-proxy's `healthy` field.
    pub fn healthz_body(&self) -> String {
        self.body(
            self.proxy_healthy(),
            self.healthz_ok(),
            Some(self.node_eligible),
        )
    }

    /// The `/livez` body: as `/healthz` without `nodeEligible`.
    pub fn livez_body(&self) -> String {
        self.body(!self.overdue, self.livez_ok(), None)
    }

    fn body(&self, healthy: bool, ok: bool, node_eligible: Option<bool>) -> String {
        let last_updated = self
            .last_updated
            .map_or_else(|| GO_ZERO_TIME.to_owned(), go_time);
        // kube-proxy's `status` map holds the families that have synced at least once.
        let status = if self.synced {
            self.families
                .iter()
                .map(|&family| {
                    let body = FamilyBody {
                        last_updated: last_updated.clone(),
                        healthy,
                    };
                    (ip_family(family), body)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let body = Body {
            // Older kube-proxy reported the last sync-loop run here even when nothing changed;
            // to stay compatible, kube-proxy reports "now" whenever it answers 200.
            last_updated: if ok {
                go_time(self.current_time)
            } else {
                last_updated
            },
            current_time: go_time(self.current_time),
            node_eligible,
            healthy,
            status,
        };
        // Serializing strings, bools and a string-keyed map cannot fail (serde_json fails only
        // on non-string map keys or a failing `Serialize` impl); kube-proxy ignores the error
        // of `json.Marshal` here too.
        serde_json::to_string(&body).unwrap_or_default()
    }
}

fn code(ok: bool) -> u16 {
    if ok {
        200
    } else {
        503
    }
}

/// A time as Go's `time.Time.MarshalJSON` prints it in UTC: RFC 3339 with the fraction of a
/// second to nanoseconds, trailing zeros (and an empty fraction) dropped, e.g.
/// `2024-02-29T12:34:56.5Z`.
pub fn go_time(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is in 1..=31 and month in 1..=12 by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use serde_json::Value;

    const SYNC_PERIOD: Duration = Duration::from_secs(30);
    const DUAL: &[Family] = &[Family::Ip6, Family::Ip];

    /// A fixed origin: 2024-02-29T12:00:00Z on the wall clock.
    fn origin() -> Timestamp {
        Timestamp::new(
            UNIX_EPOCH + Duration::from_secs(1_709_208_000),
            Instant::now(),
        )
    }

    fn at(origin: Timestamp, secs: f64) -> Timestamp {
        let d = Duration::from_secs_f64(secs);
        Timestamp::new(origin.wall + d, origin.mono + d)
    }

    fn json(body: &str) -> Value {
        serde_json::from_str(body).expect("body is JSON")
    }

    fn eligible_proxy(t0: Timestamp) -> ProxyHealth {
        let health = ProxyHealth::new(SYNC_PERIOD, DUAL, t0);
        health.set_node_eligible(true);
        health
    }

    #[test]
    fn health_timeout_is_twice_the_sync_period() {
        let health = ProxyHealth::new(SYNC_PERIOD, DUAL, origin());
        assert_eq!(health.health_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn starting_up_is_503_on_healthz_until_the_first_sync() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        let status = health.health(at(t0, 1.0));
        assert!(!status.synced);
        assert_eq!(status.healthz_code(), 503);
        // Within the health timeout, starting up is alive.
        assert_eq!(status.livez_code(), 200);

        let body = json(&status.healthz_body());
        assert_eq!(body["lastUpdated"], GO_ZERO_TIME);
        assert_eq!(body["currentTime"], "2024-02-29T12:00:01Z");
        assert_eq!(body["nodeEligible"], true);
        assert_eq!(body["healthy"], false);
        // Like kube-proxy, families appear in `status` once they have synced.
        assert!(body.get("status").is_none());

        let body = json(&status.livez_body());
        assert_eq!(
            body["lastUpdated"], "2024-02-29T12:00:01Z",
            "200 reports now"
        );
        assert_eq!(body["healthy"], true);
        assert!(body.get("nodeEligible").is_none());
    }

    #[test]
    fn never_syncing_fails_livez_after_the_health_timeout() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        assert_eq!(health.health(at(t0, 59.999)).livez_code(), 200);
        let status = health.health(at(t0, 60.0));
        assert_eq!(status.livez_code(), 503);
        assert_eq!(status.healthz_code(), 503);
        assert_eq!(status.pending_since, Some(t0.wall));
        let body = json(&status.livez_body());
        assert_eq!(body["healthy"], false);
        assert_eq!(body["lastUpdated"], GO_ZERO_TIME);
    }

    #[test]
    fn the_first_sync_makes_both_200() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        health.queued(at(t0, 0.5));
        health.updated(at(t0, 2.25));
        let status = health.health(at(t0, 3.0));
        assert_eq!((status.healthz_code(), status.livez_code()), (200, 200));
        assert_eq!(status.last_updated, Some(at(t0, 2.25).wall));
        assert_eq!(status.pending_since, None);

        let body = json(&status.healthz_body());
        assert_eq!(
            body["lastUpdated"], "2024-02-29T12:00:03Z",
            "200 reports now"
        );
        assert_eq!(body["currentTime"], "2024-02-29T12:00:03Z");
        assert_eq!(body["nodeEligible"], true);
        assert_eq!(body["healthy"], true);
        for family in ["IPv4", "IPv6"] {
            assert_eq!(
                body["status"][family]["lastUpdated"],
                "2024-02-29T12:00:02.25Z"
            );
            assert_eq!(body["status"][family]["healthy"], true);
        }
        assert_eq!(body["status"].as_object().map(|m| m.len()), Some(2));
    }

    #[test]
    fn the_body_is_byte_for_byte_kube_proxys() {
        let t0 = origin();
        let health = ProxyHealth::new(SYNC_PERIOD, &[Family::Ip], t0);
        health.set_node_eligible(true);
        health.updated(at(t0, 1.5));
        let status = health.health(at(t0, 2.0));
        assert_eq!(
            status.healthz_body(),
            "{\"lastUpdated\":\"2024-02-29T12:00:02Z\",\"currentTime\":\"2024-02-29T12:00:02Z\",\
             \"nodeEligible\":true,\"healthy\":true,\
             \"status\":{\"IPv4\":{\"lastUpdated\":\"2024-02-29T12:00:01.5Z\",\"healthy\":true}}}"
        );
        assert_eq!(
            status.livez_body(),
            "{\"lastUpdated\":\"2024-02-29T12:00:02Z\",\"currentTime\":\"2024-02-29T12:00:02Z\",\
             \"healthy\":true,\
             \"status\":{\"IPv4\":{\"lastUpdated\":\"2024-02-29T12:00:01.5Z\",\"healthy\":true}}}"
        );
    }

    #[test]
    fn a_change_pending_less_than_the_timeout_is_healthy() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        health.updated(at(t0, 1.0));
        health.queued(at(t0, 10.0));
        let status = health.health(at(t0, 69.999));
        assert_eq!((status.healthz_code(), status.livez_code()), (200, 200));
        assert_eq!(status.pending_since, Some(at(t0, 10.0).wall));
    }

    #[test]
    fn a_change_pending_for_the_timeout_is_unhealthy_until_synced() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        health.updated(at(t0, 1.0));
        health.queued(at(t0, 10.0));
        let status = health.health(at(t0, 70.0));
        assert_eq!((status.healthz_code(), status.livez_code()), (503, 503));
        let body = json(&status.healthz_body());
        // A 503 reports the real last update, not now.
        assert_eq!(body["lastUpdated"], "2024-02-29T12:00:01Z");
        assert_eq!(body["currentTime"], "2024-02-29T12:01:10Z");
        assert_eq!(body["healthy"], false);
        assert_eq!(body["nodeEligible"], true);
        assert_eq!(body["status"]["IPv4"]["healthy"], false);
        assert_eq!(
            body["status"]["IPv4"]["lastUpdated"],
            "2024-02-29T12:00:01Z"
        );

        health.updated(at(t0, 71.0));
        let status = health.health(at(t0, 71.0));
        assert_eq!((status.healthz_code(), status.livez_code()), (200, 200));
    }

    #[test]
    fn a_silent_watch_is_unhealthy_after_the_timeout_whatever_the_syncs() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        health.updated(at(t0, 1.0));
        health.set_watch_silent(Some(at(t0, 5.0)));
        assert_eq!(health.health(at(t0, 60.0)).livez_code(), 200);
        // Syncs keep succeeding (nothing changes), but the view may be stale.
        health.updated(at(t0, 64.0));
        let status = health.health(at(t0, 65.0));
        assert_eq!((status.healthz_code(), status.livez_code()), (503, 503));
        health.set_watch_silent(None);
        assert_eq!(health.health(at(t0, 66.0)).livez_code(), 200);
    }

    #[test]
    fn only_the_oldest_queued_change_counts() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        health.updated(at(t0, 1.0));
        health.queued(at(t0, 10.0));
        // A steady stream of later changes does not push the deadline back.
        for s in 11..70 {
            health.queued(at(t0, f64::from(s)));
        }
        assert_eq!(health.health(at(t0, 70.0)).livez_code(), 503);
    }

    #[test]
    fn a_sync_clears_only_what_was_queued_before_it() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        health.queued(at(t0, 1.0));
        health.updated(at(t0, 2.0));
        health.queued(at(t0, 3.0));
        assert_eq!(health.health(at(t0, 62.999)).livez_code(), 200);
        assert_eq!(health.health(at(t0, 63.0)).livez_code(), 503);
    }

    #[test]
    fn an_ineligible_node_fails_healthz_but_not_livez() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        health.updated(at(t0, 1.0));
        health.set_node_eligible(false);
        let status = health.health(at(t0, 2.0));
        assert_eq!((status.healthz_code(), status.livez_code()), (503, 200));
        let body = json(&status.healthz_body());
        assert_eq!(body["nodeEligible"], false);
        // The proxy itself is healthy; only the node is not eligible.
        assert_eq!(body["healthy"], true);
        assert_eq!(
            body["lastUpdated"], "2024-02-29T12:00:01Z",
            "503 reports the sync"
        );
        let body = json(&status.livez_body());
        assert_eq!(
            body["lastUpdated"], "2024-02-29T12:00:02Z",
            "200 reports now"
        );
        assert!(body.get("nodeEligible").is_none());

        health.set_node_eligible(true);
        assert_eq!(health.health(at(t0, 3.0)).healthz_code(), 200);
    }

    #[test]
    fn the_node_starts_unknown_and_so_not_eligible() {
        let t0 = origin();
        let health = ProxyHealth::new(SYNC_PERIOD, DUAL, t0);
        health.updated(at(t0, 1.0));
        assert_eq!(health.health(at(t0, 2.0)).healthz_code(), 503);
        health.sync_node(Some(&Node::default()));
        assert_eq!(health.health(at(t0, 2.0)).healthz_code(), 200);
        health.sync_node(None);
        assert_eq!(health.health(at(t0, 2.0)).healthz_code(), 503);
    }

    #[test]
    fn clones_share_the_state() {
        let t0 = origin();
        let health = eligible_proxy(t0);
        let writer = health.clone();
        writer.updated(at(t0, 1.0));
        assert!(health.health(at(t0, 2.0)).synced);
    }

    #[test]
    fn node_eligibility_follows_deletion_and_the_autoscaler_taint() {
        let taint = |key: &str, effect: &str| Taint {
            key: key.to_owned(),
            effect: effect.to_owned(),
            ..Taint::default()
        };
        let with_taints = |taints: Vec<Taint>| Node {
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            }),
            ..Node::default()
        };
        assert!(node_eligible(&Node::default()));
        assert!(node_eligible(&with_taints(vec![])));
        assert!(node_eligible(&with_taints(vec![taint(
            "node.kubernetes.io/unschedulable",
            "NoSchedule"
        )])));
        assert!(!node_eligible(&with_taints(vec![
            taint("a", "NoSchedule"),
            taint(TO_BE_DELETED_TAINT, "NoSchedule"),
        ])));
        // Any effect counts.
        assert!(!node_eligible(&with_taints(vec![taint(
            TO_BE_DELETED_TAINT,
            "PreferNoSchedule"
        )])));

        let mut deleted = Node::default();
        let when: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
            serde_json::from_value(Value::from("2024-02-29T12:00:00Z")).expect("a time");
        deleted.metadata.deletion_timestamp = Some(when);
        assert!(!node_eligible(&deleted));
    }

    #[test]
    fn go_time_matches_gos_rfc3339nano() {
        let t = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(go_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(go_time(t(1_709_208_000, 0)), "2024-02-29T12:00:00Z");
        assert_eq!(
            go_time(t(1_709_208_000, 123_456_789)),
            "2024-02-29T12:00:00.123456789Z"
        );
        assert_eq!(
            go_time(t(1_709_208_000, 120_000_000)),
            "2024-02-29T12:00:00.12Z"
        );
        assert_eq!(
            go_time(t(1_709_208_000, 1)),
            "2024-02-29T12:00:00.000000001Z"
        );
        assert_eq!(go_time(t(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(go_time(t(253_402_300_799, 0)), "9999-12-31T23:59:59Z");
        assert_eq!(
            go_time(UNIX_EPOCH - Duration::new(1, 500_000_000)),
            "1969-12-31T23:59:58.5Z"
        );
        assert_eq!(
            go_time(UNIX_EPOCH - Duration::from_secs(62_135_596_800)),
            GO_ZERO_TIME
        );
    }
}
