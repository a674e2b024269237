//! kube-proxy's per-Service health checks (`pkg/proxy/healthcheck/service_health.go`): a cloud
//! load balancer (or MetalLB, kube-vip) in front of a LoadBalancer Service with
//! `externalTrafficPolicy: Local` asks every node on `spec.healthCheckNodePort` whether it has
//! endpoints of that Service, and sends traffic only to nodes that answer 200, since a node
//! without one drops the Service's external traffic. [`ServiceHealth`] owns one HTTP listener
//! per health-check port per address it binds, opens, updates and closes them from what the
//! compiler says ([`HealthCheck`]), and answers every path and method as kube-proxy does:
//! 200 when the Service has a local ready endpoint and the proxy is healthy, else 503, with the
//! JSON body `{"service": {"namespace", "name"}, "localEndpoints": N, "serviceProxyHealthy":
//! bool}` byte for byte as kube-proxy prints it, and its headers. The daemon calls
//! [`ServiceHealth::update`] only after a sync round committed, so the counts are those of the
//! rules in the kernel, not of changes still pending. `serviceProxyHealthy` is read at request
//! time from [`ProxyHealth`]: the proxy's own health, synced and nothing overdue, without node
//! eligibility, as kube-proxy's `Health().Healthy` (eligibility is for `/healthz`, which load
//! balancers of `externalTrafficPolicy: Cluster` Services probe). Addresses follow kube-proxy:
//! the NodePort addresses ([`listen_addresses`]), one listener per family, each counting that
//! family's endpoints (kube-proxy runs a proxier, and a health server, per family). A port that
//! cannot be bound (taken by another process) is logged, counted in
//! `kube_nft_health_check_ports_unbound` and tried again at the next update, never fatal;
//! kube-proxy records a `FailedToStartServiceHealthcheck` event and retries likewise.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::header::{HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use ipnet::IpNet;
use kube_nft_compiler::incremental::HealthCheck;
use kube_nft_compiler::ir::Family;
use kube_nft_compiler::normalize::Key;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::health::{ProxyHealth, Timestamp};
use super::http::{response, run};
use super::metrics::Metrics;

/// The header kube-proxy adds with the local endpoint count, for load balancers that weigh
/// nodes by it.
pub const ENDPOINT_WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

/// Pending connections per listener (a probe is one short connection).
const BACKLOG: i32 = 128;

/// What one listener answers for: the Service and its local ready endpoints in the listener's
/// family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The Service.
    pub service: Key,
    /// kube-proxy's `localEndpoints`.
    pub local_endpoints: usize,
}

/// The health check's status: 200 with a local endpoint and a healthy proxy, else 503.
pub fn status(local_endpoints: usize, proxy_healthy: bool) -> u16 {
    if local_endpoints > 0 && proxy_healthy {
        200
    } else {
        503
    }
}

/// The health check's body, as kube-proxy writes it: its pretty-printed template with tabs,
/// without a final newline, the names quoted (Go's `%q`, which for the DNS names Kubernetes
/// allows is the JSON string), e.g.
/// `{\n\t"service": {\n\t\t"namespace": "ns",\n\t\t"name": "web"\n\t},\n\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}`.
pub fn body(service: &Key, local_endpoints: usize, proxy_healthy: bool) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\
         \"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&service.namespace),
        quote(&service.name),
    )
}

/// The whole answer: status, kube-proxy's three headers, body.
pub fn respond(answer: &Answer, proxy_healthy: bool) -> Response {
    let code = status(answer.local_endpoints, proxy_healthy);
    let mut response = response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        "application/json",
        body(&answer.service, answer.local_endpoints, proxy_healthy),
    );
    response.headers_mut().insert(
        HeaderName::from_static(ENDPOINT_WEIGHT_HEADER),
        HeaderValue::from(answer.local_endpoints),
    );
    response
}

/// The addresses to listen on for the NodePort addresses `nodeport_addresses` (the compiler's
/// `Graph::nodeport_addresses`), kube-proxy's choice per family: a family served on every
/// address (a zero-length prefix, kube-proxy's "match all") gets its wildcard (`0.0.0.0`,
/// `::`); otherwise every address of this host's interfaces inside a prefix, which for the
/// default `primary` is the node IP. Loopback addresses are left out (NodePorts are not served
/// there) and so are IPv6 link-local ones (they cannot be bound without a scope). When the
/// interfaces cannot be listed, the families with prefixes fall back to their wildcard, as
/// kube-proxy does. A family with no prefix (NodePorts not served) gets nothing.
pub fn listen_addresses(nodeport_addresses: &[IpNet]) -> Vec<IpAddr> {
    let all = |family| {
        nodeport_addresses
            .iter()
            .any(|net| Family::of_net(net) == family && net.prefix_len() == 0)
    };
    let needs_interfaces = nodeport_addresses.iter().any(|net| net.prefix_len() != 0);
    let interfaces = if needs_interfaces {
        match interface_addresses() {
            Ok(addrs) => Some(addrs),
            Err(err) => {
                warn!(error = %err, "cannot list this host's addresses; health-check ports listen on every address");
                None
            }
        }
    } else {
        Some(Vec::new())
    };
    let mut out = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let wildcard = match family {
            Family::Ip => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::Ip6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let prefixes: Vec<&IpNet> = nodeport_addresses
            .iter()
            .filter(|net| Family::of_net(net) == family)
            .collect();
        if prefixes.is_empty() {
            continue;
        }
        match &interfaces {
            _ if all(family) => out.push(wildcard),
            None => out.push(wildcard),
            Some(addrs) => out.extend(addrs.iter().copied().filter(|addr| {
                Family::of(*addr) == family
                    && bindable(*addr)
                    && prefixes.iter().any(|net| net.contains(addr))
            })),
        }
    }
    out
}

/// Not loopback and not IPv6 link-local.
fn bindable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !a.is_loopback(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
    }
}

/// Every address of this host's interfaces (in the calling thread's network namespace), sorted
/// and distinct: Go's `net.InterfaceAddrs`, which kube-proxy's `GetNodeIPs` filters.
pub fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs only writes the list head through the pointer it is given; the list
    // is freed below with freeifaddrs, and only read until then.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut node = head;
    while !node.is_null() {
        // SAFETY: `node` is an element of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*node };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null `ifa_addr` points to a socket address whose `sa_family` says
            // which structure it is; only AF_INET and AF_INET6 ones are read, as theirs.
            let addr = unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                }
            };
            out.extend(addr);
        }
        node = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// One open listener; dropping it closes it (the listening socket at once, then its
/// connections, as `http.Server.Close` does in kube-proxy: a load balancer's keep-alive
/// connection must not go on reading a stale answer).
#[derive(Debug)]
struct Listener {
    answer: Arc<Mutex<Answer>>,
    _close: oneshot::Sender<()>,
}

/// The health-check listeners of the node. Must be created inside a tokio runtime, whose
/// handle it keeps (the listeners are served there, whichever thread calls
/// [`ServiceHealth::update`]). Dropping it closes every listener.
#[derive(Debug)]
pub struct ServiceHealth {
    runtime: Handle,
    health: ProxyHealth,
    metrics: Metrics,
    listeners: BTreeMap<SocketAddr, Listener>,
    /// Listeners that could not be bound at the last update, with why (logged when new or
    /// when the reason changes, not at every retry).
    unbound: BTreeMap<SocketAddr, String>,
}

impl ServiceHealth {
    /// No listeners yet. `health` is read at request time for `serviceProxyHealthy`; `metrics`
    /// gets `kube_nft_health_check_ports_unbound`.
    pub fn new(health: ProxyHealth, metrics: Metrics) -> ServiceHealth {
        ServiceHealth {
            runtime: Handle::current(),
            health,
            metrics,
            listeners: BTreeMap::new(),
            unbound: BTreeMap::new(),
        }
    }

    /// [`ServiceHealth::update_at`] the [`listen_addresses`] of `nodeport_addresses` (the
    /// host's interfaces are listed only when there is a port to serve).
    pub fn update(&mut self, ports: &BTreeMap<u16, HealthCheck>, nodeport_addresses: &[IpNet]) {
        let addresses = if ports.is_empty() {
            Vec::new()
        } else {
            listen_addresses(nodeport_addresses)
        };
        self.update_at(ports, &addresses);
    }

    /// Makes the listeners those of `ports` on `addresses` (the port of a Service in a family
    /// listens on that family's addresses, counting that family's endpoints): opens the new
    /// ones, closes those no longer wanted (kube-proxy's `http.Server.Close`: the listener and
    /// any connection on it), updates what the others answer in place, and tries again the
    /// ones that could not be bound before.
    pub fn update_at(&mut self, ports: &BTreeMap<u16, HealthCheck>, addresses: &[IpAddr]) {
        let mut wanted: BTreeMap<SocketAddr, Answer> = BTreeMap::new();
        for (&port, check) in ports {
            for &addr in addresses {
                let Some(&local_endpoints) = check.local_endpoints.get(&Family::of(addr)) else {
                    continue;
                };
                let answer = Answer {
                    service: check.service.clone(),
                    local_endpoints,
                };
                wanted.insert(SocketAddr::new(addr, port), answer);
            }
        }

        let gone: Vec<SocketAddr> = self
            .listeners
            .keys()
            .filter(|addr| !wanted.contains_key(addr))
            .copied()
            .collect();
        for addr in gone {
            if let Some(listener) = self.listeners.remove(&addr) {
                let service = lock(&listener.answer).service.clone();
                debug!(%addr, %service, "closing health check");
            }
        }

        let mut unbound = BTreeMap::new();
        for (addr, answer) in wanted {
            if let Some(listener) = self.listeners.get(&addr) {
                let mut current = lock(&listener.answer);
                if *current != answer {
                    debug!(%addr, service = %answer.service, local_endpoints = answer.local_endpoints, "health check updated");
                    *current = answer;
                }
                continue;
            }
            match self.open(addr, answer.clone()) {
                Ok(listener) => {
                    if self.unbound.contains_key(&addr) {
                        info!(%addr, service = %answer.service, "health check port bound at last");
                    } else {
                        debug!(%addr, service = %answer.service, local_endpoints = answer.local_endpoints, "opening health check");
                    }
                    self.listeners.insert(addr, listener);
                }
                Err(err) => {
                    let why = err.to_string();
                    if self.unbound.get(&addr) != Some(&why) {
                        warn!(%addr, service = %answer.service, error = %why, "cannot listen on a health-check node port; load balancers will see this node as down for the Service until it can (retried at every sync)");
                    }
                    unbound.insert(addr, why);
                }
            }
        }
        self.unbound = unbound;
        self.metrics
            .health_check_ports_unbound
            .set(i64::try_from(self.unbound.len()).unwrap_or(i64::MAX));
    }

    /// The addresses listened on, with what each answers.
    pub fn listening(&self) -> BTreeMap<SocketAddr, Answer> {
        self.listeners
            .iter()
            .map(|(addr, l)| (*addr, lock(&l.answer).clone()))
            .collect()
    }

    /// The addresses that could not be bound at the last update, with why.
    pub fn unbound(&self) -> &BTreeMap<SocketAddr, String> {
        &self.unbound
    }

    /// Closes every listener.
    pub fn close_all(&mut self) {
        self.listeners.clear();
        self.unbound.clear();
        self.metrics.health_check_ports_unbound.set(0);
    }

    fn open(&self, addr: SocketAddr, answer: Answer) -> io::Result<Listener> {
        let _runtime = self.runtime.enter();
        let listener = listen(addr)?;
        let answer = Arc::new(Mutex::new(answer));
        let state = Shared {
            answer: answer.clone(),
            health: self.health.clone(),
        };
        // Every path and method, as kube-proxy's handler is the server's only one.
        let app = Router::new().fallback(check).with_state(state);
        let (close, closed) = oneshot::channel::<()>();
        // Fires when the sender is dropped: the `Listener` is gone.
        let shutdown = async move {
            let _ = closed.await;
        };
        self.runtime.spawn(async move {
            if let Err(err) = run("health-check", listener, app, shutdown).await {
                warn!(%addr, error = %err, "health check listener failed");
            }
        });
        Ok(Listener {
            answer,
            _close: close,
        })
    }
}

/// A bound, listening, non-blocking socket on `addr`, registered with the current runtime.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]` must not also take the port's IPv4 side: that family has its own listener,
        // with its own count.
        socket.set_only_v6(true)?;
    }
    // As Go's listeners (kube-proxy's): a port closed a moment ago can be bound again while
    // its last connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[derive(Clone)]
struct Shared {
    answer: Arc<Mutex<Answer>>,
    health: ProxyHealth,
}

async fn check(State(state): State<Shared>) -> Response {
    let answer = lock(&state.answer).clone();
    let proxy_healthy = state.health.health(Timestamp::now()).proxy_healthy();
    respond(&answer, proxy_healthy)
}

fn lock(answer: &Mutex<Answer>) -> std::sync::MutexGuard<'_, Answer> {
    // Plain data replaced in one assignment: a panic elsewhere cannot have left it half-written.
    answer.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::CONTENT_TYPE;

    fn web() -> Key {
        Key::new("shop", "web")
    }

    #[test]
    fn the_body_is_byte_for_byte_kube_proxys() {
        assert_eq!(
            body(&web(), 2, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\
             \"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&body(&web(), 0, false)).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"service": {"namespace": "shop", "name": "web"},
                               "localEndpoints": 0, "serviceProxyHealthy": false})
        );
    }

    #[test]
    fn only_local_endpoints_and_a_healthy_proxy_make_200() {
        assert_eq!(status(1, true), 200);
        assert_eq!(status(3, true), 200);
        assert_eq!(status(0, true), 503);
        assert_eq!(status(1, false), 503);
        assert_eq!(status(0, false), 503);
    }

    #[test]
    fn answers_carry_kube_proxys_headers() {
        let answer = Answer {
            service: web(),
            local_endpoints: 3,
        };
        let response = respond(&answer, true);
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers[ENDPOINT_WEIGHT_HEADER], "3");
        let answer = Answer {
            local_endpoints: 0,
            ..answer
        };
        let response = respond(&answer, true);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[ENDPOINT_WEIGHT_HEADER], "0");
    }

    #[test]
    fn match_all_families_listen_on_their_wildcard() {
        let nets: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        assert_eq!(
            listen_addresses(&nets),
            ["0.0.0.0".parse::<IpAddr>().unwrap(), "::".parse().unwrap()]
        );
        // A family without prefix serves no NodePort, so no health check either.
        assert_eq!(
            listen_addresses(&nets[1..]),
            ["::".parse::<IpAddr>().unwrap()]
        );
        assert!(listen_addresses(&[]).is_empty());
    }

    #[test]
    fn prefixes_select_interface_addresses_without_loopback() {
        let interfaces = interface_addresses().expect("getifaddrs");
        // Whatever this machine has: only addresses inside the prefixes, never loopback.
        let nets: Vec<IpNet> = vec!["0.0.0.0/1".parse().unwrap(), "128.0.0.0/1".parse().unwrap()];
        let got = listen_addresses(&nets);
        let expected: Vec<IpAddr> = interfaces
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() && !a.is_loopback())
            .collect();
        assert_eq!(got, expected);
        assert!(!bindable("fe80::1".parse().unwrap()));
        assert!(!bindable("::1".parse().unwrap()));
        assert!(bindable("2001:db8::1".parse().unwrap()));
    }
}
