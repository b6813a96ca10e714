//! An upstream's run-time state ([`UpstreamState`]): which node a request
//! goes to (`roundrobin`, `chash`, `least_conn`, `ewma`), each node's
//! requests in flight and latency, and each node's health (passive
//! reports, and the active checker's task). Routes naming one upstream
//! share its state; a reload that keeps an upstream as it was keeps its
//! state (health included), and the active checker stops with the last
//! proxy that uses it.

use super::connector::connector;
use super::health::{NodeHealth, Report};
use super::ring::Ring;
use crate::host::config::{
    ActiveCheck, Balancer, HealthChecks, HealthRules, Upstream, UpstreamTls,
};
use crate::host::metrics;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The decay time of `ewma`'s latency average (APISIX's 10 s).
const EWMA_DECAY: f64 = 10.0;

/// One node's run-time state.
struct NodeState {
    addr: String,
    weight: u32,
    /// Read on every pick, without the lock.
    healthy: AtomicBool,
    health: Mutex<NodeHealth>,
    /// Requests sent to it whose answer's head has not come yet.
    in_flight: AtomicUsize,
    /// `ewma`'s `(average latency in ms, when it was last updated)`.
    ewma: Mutex<(f64, Instant)>,
}

/// An upstream's shared run-time state.
pub(super) struct UpstreamState {
    /// The upstream's name (`upstreams/<id>`, `routes/<id>`...).
    name: String,
    /// What the state was made for: a reload keeps the state only for an
    /// upstream with the same nodes, balancer and checks.
    nodes_conf: Vec<(String, u32)>,
    balancer: Balancer,
    checks: Option<HealthChecks>,
    schedule: Vec<usize>,
    nodes: Vec<NodeState>,
    /// Round robin's position (and least_conn's tie-breaker).
    next: AtomicUsize,
    ring: Option<Ring>,
    /// xorshift state for `ewma`'s two random picks.
    random: AtomicU64,
    /// The active checker, stopped when the state goes.
    checker: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for UpstreamState {
    fn drop(&mut self) {
        if let Some(task) = self
            .checker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        if self.checks.is_some() {
            for node in &self.nodes {
                metrics::upstream_node_removed(&self.name, &node.addr);
            }
        }
    }
}

/// A request in flight to a node: counted until dropped.
pub(super) struct InFlight<'a> {
    node: &'a NodeState,
    started: Instant,
}

impl InFlight<'_> {
    /// The answer's head came: its latency feeds `ewma`'s average.
    pub(super) fn answered(&self) {
        let now = Instant::now();
        let ms = now.duration_since(self.started).as_secs_f64() * 1000.0;
        let mut ewma = self.node.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.duration_since(ewma.1).as_secs_f64();
        let w = (-elapsed / EWMA_DECAY).exp();
        *ewma = (ewma.0 * w + ms * (1.0 - w), now);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamState {
    /// The state of `upstream`: every node healthy, and its active checker
    /// started (when it has one and a runtime is at hand).
    pub(super) fn new(upstream: &Upstream) -> Arc<UpstreamState> {
        let now = Instant::now();
        let nodes = upstream
            .nodes
            .iter()
            .map(|(addr, weight)| NodeState {
                addr: addr.clone(),
                weight: *weight,
                healthy: AtomicBool::new(true),
                health: Mutex::new(NodeHealth::default()),
                in_flight: AtomicUsize::new(0),
                ewma: Mutex::new((0.0, now)),
            })
            .collect();
        let state = Arc::new(UpstreamState {
            name: upstream.name.clone(),
            nodes_conf: upstream.nodes.clone(),
            balancer: upstream.balancer.clone(),
            checks: upstream.checks.clone(),
            schedule: upstream.schedule.clone(),
            nodes,
            next: AtomicUsize::new(0),
            ring: matches!(upstream.balancer, Balancer::Chash(_))
                .then(|| Ring::new(&upstream.nodes)),
            random: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id())),
            checker: Mutex::new(None),
        });
        if let Some(checks) = &upstream.checks {
            for node in &state.nodes {
                metrics::upstream_node_added(&state.name, &node.addr);
            }
            if let (Some(active), Ok(rt)) =
                (checks.active.clone(), tokio::runtime::Handle::try_current())
            {
                let task = rt.spawn(run_checker(Arc::downgrade(&state), active));
                *state.checker.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(task.abort_handle());
            }
        }
        state
    }

    /// Whether this state can serve `upstream` (a reload kept it as it was).
    pub(super) fn fits(&self, upstream: &Upstream) -> bool {
        self.name == upstream.name
            && self.nodes_conf == upstream.nodes
            && self.balancer == upstream.balancer
            && self.checks == upstream.checks
    }

    /// The number of nodes.
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether picks need a hash key (`chash`).
    pub(super) fn hashes(&self) -> bool {
        self.ring.is_some()
    }

    /// The node for a request (`key`: chash's), among those not `tried`:
    /// a healthy one, or, when none of them is healthy, any (APISIX tries
    /// them all rather than answer without trying). `None` once every
    /// node was tried.
    pub(super) fn pick(&self, key: Option<&[u8]>, tried: &[bool]) -> Option<usize> {
        let untried = |i: usize| !tried.get(i).copied().unwrap_or(false);
        let healthy = |i: usize| untried(i) && self.nodes[i].healthy.load(Ordering::Relaxed);
        if (0..self.nodes.len()).any(healthy) {
            self.pick_among(key, &healthy)
        } else if (0..self.nodes.len()).any(untried) {
            self.pick_among(key, &untried)
        } else {
            None
        }
    }

    fn pick_among(&self, key: Option<&[u8]>, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.nodes.len();
        match &self.balancer {
            Balancer::RoundRobin => {
                // The cursor moves past the entries skipped (unhealthy or
                // tried) as well as the one taken, so that the next
                // request goes on from there: the skipped nodes' share
                // spreads over the others by their weights, rather than
                // all going to the node after them in the schedule.
                let len = self.schedule.len();
                let mut chosen = None;
                let _ = self
                    .next
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cursor| {
                        chosen = None;
                        let step = (0..len).find(|&i| ok(self.schedule[(cursor + i) % len]))?;
                        chosen = Some(self.schedule[(cursor + step) % len]);
                        Some(cursor.wrapping_add(step + 1))
                    });
                chosen
            }
            Balancer::Chash(_) => self
                .ring
                .as_ref()
                .and_then(|ring| ring.walk(key.unwrap_or_default()).find(|&i| ok(i))),
            Balancer::LeastConn => {
                // Fewest in flight for the weight: (in_flight + 1) / weight,
                // compared pairwise without division (a u64 count times a
                // u32 weight fits a u128); ties go round.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let load = |i: usize| {
                    let node = &self.nodes[i];
                    (
                        node.in_flight.load(Ordering::Relaxed) as u128 + 1,
                        u128::from(node.weight.max(1)),
                    )
                };
                (0..n)
                    .map(|i| start.wrapping_add(i) % n)
                    .filter(|&i| ok(i))
                    .reduce(|best, i| {
                        let ((lb, wb), (li, wi)) = (load(best), load(i));
                        if li * wb < lb * wi {
                            i
                        } else {
                            best
                        }
                    })
            }
            Balancer::Ewma => {
                let candidates: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let r = self.random_u64();
                        let a = candidates[(r % len as u64) as usize];
                        let mut b = candidates[((r >> 32) % len as u64) as usize];
                        if a == b {
                            b = candidates
                                [(candidates.iter().position(|&c| c == a).unwrap_or(0) + 1) % len];
                        }
                        Some(if self.score(a) <= self.score(b) { a } else { b })
                    }
                }
            }
        }
    }

    /// `ewma`'s score: the decayed latency average times the requests in
    /// flight (plus one).
    fn score(&self, i: usize) -> f64 {
        let node = &self.nodes[i];
        let (avg, at) = *node.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let w = (-at.elapsed().as_secs_f64() / EWMA_DECAY).exp();
        avg * w * (node.in_flight.load(Ordering::Relaxed) as f64 + 1.0)
    }

    fn random_u64(&self) -> u64 {
        let mut x = self.random.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.store(x, Ordering::Relaxed);
        x
    }

    /// Counts a request to node `index` as in flight until the guard goes.
    pub(super) fn start(&self, index: usize) -> InFlight<'_> {
        let node = &self.nodes[index];
        node.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            node,
            started: Instant::now(),
        }
    }

    /// What a real request said about node `index` (the passive check).
    pub(super) fn passive(&self, index: usize, report: Report) {
        if let Some(passive) = self.checks.as_ref().and_then(|c| c.passive.as_ref()) {
            self.report(index, report, &passive.rules, "passive");
        }
    }

    /// The status a real request got from node `index` (the passive check).
    pub(super) fn passive_status(&self, index: usize, status: u16) {
        if let Some(passive) = self.checks.as_ref().and_then(|c| c.passive.as_ref()) {
            if let Some(report) = Report::of_status(status, &passive.rules) {
                self.report(index, report, &passive.rules, "passive");
            }
        }
    }

    fn report(&self, index: usize, report: Report, rules: &HealthRules, check: &str) {
        let node = &self.nodes[index];
        let changed = node
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(report, rules);
        let Some(healthy) = changed else {
            return;
        };
        node.healthy.store(healthy, Ordering::Relaxed);
        metrics::upstream_node_healthy(&self.name, &node.addr, healthy);
        if healthy {
            info!(upstream = %self.name, node = %node.addr, check, "upstream node healthy again");
        } else {
            warn!(upstream = %self.name, node = %node.addr, check, cause = ?report, "upstream node unhealthy: not used while another node is healthy");
        }
    }
}

/// The active checker of one upstream: probes each node at its interval
/// (the healthy or the unhealthy one), `concurrency` at a time; ends when
/// the state is gone.
async fn run_checker(state: Weak<UpstreamState>, check: ActiveCheck) {
    use futures::StreamExt;
    let n = match state.upgrade() {
        Some(s) => s.len(),
        None => return,
    };
    let https = check.tls.as_ref().map(|tls| https_prober(tls, &check));
    let mut due = vec![Instant::now(); n];
    loop {
        let now = Instant::now();
        let Some(st) = state.upgrade() else {
            return;
        };
        let ready: Vec<(usize, String)> = (0..n)
            .filter(|&i| due[i] <= now)
            .map(|i| (i, st.nodes[i].addr.clone()))
            .collect();
        let (check_ref, https_ref) = (&check, https.as_ref());
        let results: Vec<(usize, Option<Report>)> = futures::stream::iter(ready)
            .map(|(i, addr)| async move { (i, probe(&addr, check_ref, https_ref).await) })
            .buffer_unordered(check.concurrency)
            .collect()
            .await;
        for (i, report) in results {
            if let Some(report) = report {
                st.report(i, report, &check.rules, "active");
            }
            let interval = if st.nodes[i].healthy.load(Ordering::Relaxed) {
                check.healthy_interval
            } else {
                check.unhealthy_interval
            };
            due[i] = Instant::now() + interval;
        }
        drop(st);
        let next = due.iter().min().copied().unwrap_or_else(Instant::now);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// The client of `https` probes: TLS as the check says, no pooling (each
/// probe is a new connection, as a clear-text one), SNI from `host` when
/// set, else the node's host.
type HttpsProber = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn https_prober(tls: &UpstreamTls, check: &ActiveCheck) -> HttpsProber {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(check.timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector(Some(tls), check.host.as_deref(), http))
}

/// The probe request: `http_path` with `Host` (the check's `host`, else
/// the node's address) and `req_headers`; `Connection: close`.
fn probe_request(check: &ActiveCheck, target: &str, uri: http::Uri) -> http::Request<Empty<Bytes>> {
    let mut req = http::Request::new(Empty::new());
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    let host = check.host.as_deref().unwrap_or(target);
    if let Ok(v) = http::HeaderValue::from_str(host) {
        headers.insert(http::header::HOST, v);
    }
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("extplug-health-check"),
    );
    for (name, value) in &check.req_headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    req
}

/// One probe of the node at `addr` (over `https` when given): `None` for
/// an answer whose status is in neither list.
async fn probe(addr: &str, check: &ActiveCheck, https: Option<&HttpsProber>) -> Option<Report> {
    let target = match check.port {
        Some(port) => match addr.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{port}"),
            None => addr.to_owned(),
        },
        None => addr.to_owned(),
    };
    let attempt = async {
        if let Some(client) = https {
            let uri = format!("https://{target}{}", check.http_path)
                .parse()
                .ok()?;
            return match client.request(probe_request(check, &target, uri)).await {
                Ok(resp) => Report::of_status(resp.status().as_u16(), &check.rules),
                Err(_) => Some(Report::TcpFailure),
            };
        }
        let Ok(stream) = tokio::net::TcpStream::connect(&target).await else {
            return Some(Report::TcpFailure);
        };
        if !check.http {
            return Some(Report::Success);
        }
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
        else {
            return Some(Report::TcpFailure);
        };
        // Ends when the answer is in and the sender is dropped (the probe
        // asks the node to close).
        tokio::spawn(conn);
        let uri = check.http_path.parse().unwrap_or_default();
        match sender
            .send_request(probe_request(check, &target, uri))
            .await
        {
            Ok(resp) => Report::of_status(resp.status().as_u16(), &check.rules),
            Err(_) => Some(Report::TcpFailure),
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(report) => report,
        Err(_) => Some(Report::Timeout),
    }
}

/// The states of one configuration's upstreams, by name: routes naming one
/// upstream share its state, and a reload takes the previous
/// configuration's state of an upstream it keeps as it was.
#[derive(Default)]
pub(super) struct States {
    by_name: std::collections::HashMap<String, Arc<UpstreamState>>,
}

impl States {
    /// The state for `upstream`: this configuration's, else `previous`'s
    /// if it fits, else a new one.
    pub(super) fn get(
        &mut self,
        upstream: &Upstream,
        mut previous: impl Iterator<Item = Arc<UpstreamState>>,
    ) -> Arc<UpstreamState> {
        if let Some(s) = self
            .by_name
            .get(&upstream.name)
            .filter(|s| s.fits(upstream))
        {
            return s.clone();
        }
        let state = previous
            .find(|s| s.fits(upstream))
            .unwrap_or_else(|| UpstreamState::new(upstream));
        self.by_name.insert(upstream.name.clone(), state.clone());
        state
    }
}

/// How long a whole retry sequence may still start tries, from `started`.
pub(super) fn within(started: Instant, limit: Option<Duration>) -> bool {
    limit.is_none_or(|l| started.elapsed() < l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::Config;

    fn upstream(kind: &str) -> Upstream {
        upstream_of(kind, &[1, 1, 1])
    }

    /// An upstream of `weights.len()` nodes, `127.0.0.1:1`... in order.
    fn upstream_of(kind: &str, weights: &[u32]) -> Upstream {
        let nodes = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!(r#"{{"host":"127.0.0.1","port":{},"weight":{w}}}"#, i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let text = format!(
            r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[{{"id":"r","uri":"/a","upstream":{{
                "type":"{kind}","key":"uri",
                "nodes":[{nodes}],
                "checks":{{"active":{{}},"passive":{{}}}}}}}}]}}"#
        );
        Config::parse(&text).unwrap().routes.remove(0).upstream
    }

    /// How many of `picks` picks went to each node.
    fn shares(state: &UpstreamState, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; state.len()];
        for _ in 0..picks {
            counts[state.pick(None, &[]).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_spreads_an_unhealthy_nodes_share_by_weight() {
        let state = UpstreamState::new(&upstream("roundrobin"));
        state.passive(1, Report::TcpFailure);
        state.passive(1, Report::TcpFailure);
        let counts = shares(&state, 1000);
        assert_eq!(counts[1], 0);
        for i in [0, 2] {
            assert!((450..=550).contains(&counts[i]), "{counts:?}");
        }
        let state = UpstreamState::new(&upstream_of("roundrobin", &[3, 1, 1]));
        state.passive(2, Report::TcpFailure);
        state.passive(2, Report::TcpFailure);
        let counts = shares(&state, 1000);
        assert!((700..=800).contains(&counts[0]), "{counts:?}");
        assert!((200..=300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn least_conn_weighs_many_heavy_nodes_without_overflow() {
        // 40 nodes of weight 100: the product of the others' weights
        // would overflow a u128.
        let mut weights = vec![100; 40];
        weights[7] = 300;
        let state = UpstreamState::new(&upstream_of("least_conn", &weights));
        let busy: Vec<_> = (0..40)
            .filter(|&i| i != 7)
            .map(|i| state.start(i))
            .collect();
        // Elsewhere (1 + 1) / 100 = 6/300: node 7, weight 300, is below
        // that with up to 4 in flight ((4 + 1)/300), so it takes five
        // picks in a row.
        let mut held = Vec::new();
        for _ in 0..5 {
            let i = state.pick(None, &[]).unwrap();
            assert_eq!(i, 7);
            held.push(state.start(i));
        }
        // With 6 in flight (7/300 above 6/300), another node.
        held.push(state.start(7));
        assert_ne!(state.pick(None, &[]).unwrap(), 7);
        drop((busy, held));
    }

    #[test]
    fn unhealthy_and_tried_nodes_are_skipped_and_all_unhealthy_means_all_tried() {
        for kind in ["roundrobin", "chash", "least_conn", "ewma"] {
            // No runtime here: no active checker; the passive reports
            // decide.
            let state = UpstreamState::new(&upstream(kind));
            let none = [false; 3];
            state.passive(0, Report::TcpFailure);
            state.passive(0, Report::TcpFailure);
            for _ in 0..20 {
                assert_ne!(state.pick(Some(b"k"), &none), Some(0), "{kind}");
            }
            let picked = state.pick(Some(b"k"), &none).unwrap();
            let mut tried = [false; 3];
            tried[picked] = true;
            let other = state.pick(Some(b"k"), &tried).unwrap();
            assert!(other != picked && other != 0, "{kind}: {other}");
            for node in [1, 2] {
                state.passive(node, Report::TcpFailure);
                state.passive(node, Report::TcpFailure);
            }
            // Every node unhealthy: they are all tried, each once.
            let mut tried = [false; 3];
            for _ in 0..3 {
                let i = state.pick(Some(b"k"), &tried).unwrap();
                assert!(!tried[i], "{kind}");
                tried[i] = true;
            }
            assert_eq!(state.pick(Some(b"k"), &tried), None, "{kind}");
        }
    }
}
