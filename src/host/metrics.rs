//! The host's metrics, recorded through the plain functions here and
//! exposed by the admin listener's `GET /metrics` in the Prometheus text
//! format ([`render`]).
//!
//! One process-wide registry (the `prometheus` crate's): every part of the
//! host records into it without carrying a handle around. Label values are
//! bounded: a route label is the route's id (never the request path), a
//! runner label a runner's name, the others come from fixed lists.
//!
//! The hot path (one request, one runner call) looks a label set up in a
//! hash map under a read lock and allocates nothing once the series exists;
//! holders of a fixed label set keep a resolved handle instead
//! ([`RunnerHandles`]).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

/// How a runner call ended: the `result` label of
/// `extplug_runner_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The runner answered.
    Ok,
    /// No answer within the call timeout.
    Timeout,
    /// The runner's socket could not be connected to.
    Connect,
    /// The runner answered with an ERROR frame, or refused the chain.
    Refused,
    /// The answer did not follow the protocol.
    Malformed,
    /// The connection broke during the call.
    Broken,
    /// The runner was down: the call was not attempted.
    Down,
}

impl CallResult {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Timeout => "timeout",
            CallResult::Connect => "connect",
            CallResult::Refused => "refused",
            CallResult::Malformed => "malformed",
            CallResult::Broken => "broken",
            CallResult::Down => "down",
        }
    }
}

/// The header drop reasons, as the proxy's header filter names them
/// (`DropReason::name`): their series exist (at 0) from the start.
const DROP_REASONS: [&str; 6] = [
    "framing",
    "hop_by_hop",
    "connection_listed",
    "invalid_name",
    "invalid_value",
    "protected",
];

/// Request durations: 1 ms to 30 s (a runner call timeout is seconds).
const REQUEST_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Runner call durations: 50 µs (a local call) to 10 s.
const CALL_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0, 10.0,
];

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    runner_calls: IntCounterVec,
    runner_call_duration: HistogramVec,
    degraded: IntCounterVec,
    conf_prepared: IntCounterVec,
    runner_restarts: IntCounterVec,
    runner_up: IntGaugeVec,
    runner_connections: IntGaugeVec,
    upstream_node_healthy: IntGaugeVec,
    config_reloads: IntCounterVec,
    headers_dropped: IntCounterVec,
    config_errors: IntCounterVec,
    ssl_expiry: IntGaugeVec,
    tls_handshakes: IntCounterVec,
    etcd_up: IntGauge,
    routes_skipped: IntGauge,
    /// `etcd_up` and `routes_skipped` are in the registry.
    etcd_registered: std::sync::Once,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

// The names and label sets are constants: registering them cannot fail, so
// the `expect`s above cannot fire.
static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let m = Metrics {
        requests: counter(
            &r,
            "extplug_requests_total",
            "Client requests answered, by route id and status.",
            &["route", "status"],
        ),
        request_duration: histogram(
            &r,
            "extplug_request_duration_seconds",
            "Time from a request's arrival until its answer's head is ready, by route id.",
            &["route"],
            &REQUEST_BUCKETS,
        ),
        runner_calls: counter(
            &r,
            "extplug_runner_calls_total",
            "Runner calls of a route phase, by runner, phase and result.",
            &["runner", "phase", "result"],
        ),
        runner_call_duration: histogram(
            &r,
            "extplug_runner_call_duration_seconds",
            "Time of a route phase's runner calls (token and EXTRA_INFO included), by runner and phase.",
            &["runner", "phase"],
            &CALL_BUCKETS,
        ),
        degraded: counter(
            &r,
            "extplug_degraded_total",
            "Requests that went on without their plugins after a failed runner call (allow_degradation).",
            &["route", "phase"],
        ),
        conf_prepared: counter(
            &r,
            "extplug_conf_prepared_total",
            "Chains prepared by a runner (PREPARE_CONF answered with a token), by runner and its wire.",
            &["runner", "protocol"],
        ),
        runner_restarts: counter(
            &r,
            "extplug_runner_restarts_total",
            "Runner processes replaced, by runner, its wire and cause.",
            &["runner", "protocol", "cause"],
        ),
        runner_up: gauge(
            &r,
            "extplug_runner_up",
            "1 while the runner accepts calls, else 0; by runner and its wire (capnp, apisix).",
            &["runner", "protocol"],
        ),
        runner_connections: gauge(
            &r,
            "extplug_runner_connections",
            "Open connections to the runner, by runner and its wire.",
            &["runner", "protocol"],
        ),
        upstream_node_healthy: gauge(
            &r,
            "extplug_upstream_node_healthy",
            "1 while the health checks of an upstream (with `checks`) deem the node healthy, else 0.",
            &["upstream", "node"],
        ),
        config_reloads: counter(
            &r,
            "extplug_config_reloads_total",
            "Configuration reloads, by result (ok, error).",
            &["result"],
        ),
        headers_dropped: counter(
            &r,
            "extplug_headers_dropped_total",
            "Plugin-supplied headers the proxy dropped, by reason.",
            &["reason"],
        ),
        config_errors: counter(
            &r,
            "extplug_config_errors_total",
            "Objects from etcd skipped as not valid, by kind (route, upstream, service, ssl, chain: the runner refused it); each error once, when it appears.",
            &["kind"],
        ),
        ssl_expiry: {
            let g = IntGaugeVec::new(
                Opts::new(
                    "extplug_ssl_certificate_expiry_seconds",
                    "When each certificate being served expires (its SSL object's id), as Unix time in seconds.",
                ),
                &["id"],
            )
            .expect("a valid metric");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        },
        tls_handshakes: counter(
            &r,
            "extplug_tls_handshakes_total",
            "TLS handshakes on the TLS listener, by result (ok; failed: refused or broken, an unknown name included; timeout).",
            &["result"],
        ),
        // Registered by the etcd source when it starts (`etcd_source`): a
        // node without etcd shows no etcd series.
        etcd_up: IntGauge::new(
            "extplug_etcd_up",
            "1 while the routes' etcd source is connected and watched, else 0 (the last routes keep serving).",
        )
        .expect("a valid metric"),
        routes_skipped: IntGauge::new(
            "extplug_routes_skipped",
            "Objects from etcd left out of the route table being served (see `extplug routes`).",
        )
        .expect("a valid metric"),
        etcd_registered: std::sync::Once::new(),
        registry: r,
    };
    // What a Prometheus user expects of any process: resident memory, open
    // descriptors and their limit, CPU seconds, threads, start time.
    m.registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
    for result in ["ok", "failed", "timeout"] {
        m.tls_handshakes.with_label_values(&[result]);
    }
    for kind in ["route", "upstream", "service", "chain", "ssl"] {
        m.config_errors.with_label_values(&[kind]);
    }
    // Series that dashboards expect at 0 before anything happens.
    for reason in DROP_REASONS {
        m.headers_dropped.with_label_values(&[reason]);
    }
    for result in ["ok", "error"] {
        m.config_reloads.with_label_values(&[result]);
    }
    m
});

/// Counts an answered client request and its duration. `route` is the
/// route's id, empty for a request refused before routing (400, 404).
pub fn request(route: &str, status: http::StatusCode, secs: f64) {
    let m = &*METRICS;
    m.requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    m.request_duration.with_label_values(&[route]).observe(secs);
}

/// Counts a route phase's runner call (`phase` as in the configuration,
/// e.g. `ext-plugin-pre-req`) and its duration.
pub fn runner_call(runner: &str, phase: &str, result: CallResult, secs: f64) {
    let m = &*METRICS;
    m.runner_calls
        .with_label_values(&[runner, phase, result.name()])
        .inc();
    m.runner_call_duration
        .with_label_values(&[runner, phase])
        .observe(secs);
}

/// Counts a request that went on without its plugins (degradation).
pub fn degraded(route: &str, phase: &str) {
    METRICS.degraded.with_label_values(&[route, phase]).inc();
}

/// Counts a runner process replaced, with why (`exited`, `unresponsive`,
/// `start_failed`, `upgrade`, ...: a short fixed word, never a message);
/// `protocol` is the runner's wire (`capnp`, `apisix`).
pub fn runner_restart(runner: &str, protocol: &str, cause: &str) {
    METRICS
        .runner_restarts
        .with_label_values(&[runner, protocol, cause])
        .inc();
}

/// A new id for a supervisor's say in `extplug_runner_up` ([`runner_up`]).
pub fn supervisor_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The supervisors of each runner name that are up. A reload that replaces
/// a runner has two supervisors of one name for a while (the new one
/// serving, the old one draining): the old one stopping must not set the
/// gauge to 0 under the new one, so the gauge is 1 while any is up.
/// (A reload that changes a runner's `protocol` leaves the old wire's
/// series at 0 beside the new one's.)
static UP: LazyLock<Mutex<HashMap<RunnerSeries, HashSet<u64>>>> = LazyLock::new(Default::default);

/// A runner's series in `extplug_runner_up`: its name and its wire.
type RunnerSeries = (String, &'static str);

/// Sets whether supervisor `supervisor` (from [`supervisor_id`]) of
/// `runner`, which speaks `protocol`, accepts calls; `extplug_runner_up`
/// is 1 while any supervisor of that name and wire does.
pub fn runner_up(runner: &str, protocol: &'static str, supervisor: u64, up: bool) {
    // A poisoned lock only means a panic elsewhere while it was held; the
    // set itself is always whole.
    let mut all = UP.lock().unwrap_or_else(|e| e.into_inner());
    let ups = all.entry((runner.to_owned(), protocol)).or_default();
    if up {
        ups.insert(supervisor);
    } else {
        ups.remove(&supervisor);
    }
    METRICS
        .runner_up
        .with_label_values(&[runner, protocol])
        .set(i64::from(!ups.is_empty()));
}

/// The health states of each `(upstream, node)` in use: a reload that
/// changes an upstream has an old and a new state of one name for a while,
/// and the old one going must not remove the new one's series.
static NODES: LazyLock<Mutex<HashMap<(String, String), usize>>> = LazyLock::new(Default::default);

/// A health state for `node` of `upstream` begins (healthy): its series
/// is 1.
pub fn upstream_node_added(upstream: &str, node: &str) {
    let mut all = NODES.lock().unwrap_or_else(|e| e.into_inner());
    *all.entry((upstream.to_owned(), node.to_owned()))
        .or_insert(0) += 1;
    METRICS
        .upstream_node_healthy
        .with_label_values(&[upstream, node])
        .set(1);
}

/// Sets whether `node` of `upstream` is healthy.
pub fn upstream_node_healthy(upstream: &str, node: &str, healthy: bool) {
    METRICS
        .upstream_node_healthy
        .with_label_values(&[upstream, node])
        .set(i64::from(healthy));
}

/// A health state for `node` of `upstream` ends; the series goes with the
/// last one.
pub fn upstream_node_removed(upstream: &str, node: &str) {
    let mut all = NODES.lock().unwrap_or_else(|e| e.into_inner());
    let key = (upstream.to_owned(), node.to_owned());
    let Some(n) = all.get_mut(&key) else {
        return;
    };
    *n -= 1;
    if *n == 0 {
        all.remove(&key);
        let _ = METRICS
            .upstream_node_healthy
            .remove_label_values(&[upstream, node]);
    }
}

/// Counts a configuration reload, good (`ok`) or refused (`error`).
pub fn config_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    METRICS.config_reloads.with_label_values(&[result]).inc();
}

/// Counts an object from etcd skipped as not valid (`kind`: route,
/// upstream, service, chain).
pub fn config_error(kind: &str) {
    METRICS.config_errors.with_label_values(&[kind]).inc();
}

/// The certificates being served now: `(id, expiry as Unix time)`; the
/// series of certificates no longer served go.
pub fn ssl_certificates<'a>(certs: impl IntoIterator<Item = (&'a str, i64)>) {
    let g = &METRICS.ssl_expiry;
    g.reset();
    for (id, not_after) in certs {
        g.with_label_values(&[id]).set(not_after);
    }
}

/// Counts a TLS handshake by result: `ok`, `failed` or `timeout`.
pub fn tls_handshake(result: &str) {
    METRICS.tls_handshakes.with_label_values(&[result]).inc();
}

/// The etcd source's series, put in the registry on first use.
fn etcd_metrics() -> &'static Metrics {
    let m = &*METRICS;
    m.etcd_registered.call_once(|| {
        for g in [&m.etcd_up, &m.routes_skipped] {
            m.registry
                .register(Box::new(g.clone()))
                .expect("registered once");
        }
    });
    m
}

/// Whether the routes' etcd source is connected and watched. The first
/// call (the source's start) makes the etcd series appear.
pub fn etcd_up(up: bool) {
    etcd_metrics().etcd_up.set(i64::from(up));
}

/// How many objects from etcd the table being served left out.
pub fn routes_skipped(n: usize) {
    etcd_metrics().routes_skipped.set(n as i64);
}

/// Counts a plugin-supplied header dropped for `reason` (see
/// [`crate::host::proxy::headers::DropReason::name`]).
pub fn header_dropped(reason: &str) {
    METRICS.headers_dropped.with_label_values(&[reason]).inc();
}

/// A route's series resolved once, for the hot path: the duration
/// histogram, the `200` counter (other statuses are looked up), and per
/// phase the runner call series (`ok` and the duration; failures are looked
/// up).
#[derive(Clone)]
pub struct RouteHandles {
    route: String,
    duration: prometheus::Histogram,
    /// The `200` series, made by the first `200` (a route that never
    /// answers one shows no such series).
    ok: std::sync::OnceLock<IntCounter>,
    phases: [Option<PhaseHandles>; 3],
}

#[derive(Clone)]
struct PhaseHandles {
    runner: String,
    phase: &'static str,
    /// The `ok` series, made by the first answered call.
    ok: std::sync::OnceLock<IntCounter>,
    duration: prometheus::Histogram,
}

impl RouteHandles {
    /// The handles of `route`, whose phases run on the runners named by
    /// `phases` (pre-req, post-req, post-resp; `None`: no such phase).
    pub fn new(route: &str, phases: [Option<&str>; 3]) -> Self {
        let m = &*METRICS;
        let names = [
            "ext-plugin-pre-req",
            "ext-plugin-post-req",
            "ext-plugin-post-resp",
        ];
        let mut handles: [Option<PhaseHandles>; 3] = [None, None, None];
        for ((slot, runner), phase) in handles.iter_mut().zip(phases).zip(names) {
            *slot = runner.map(|runner| PhaseHandles {
                runner: runner.to_owned(),
                phase,
                ok: std::sync::OnceLock::new(),
                duration: m.runner_call_duration.with_label_values(&[runner, phase]),
            });
        }
        RouteHandles {
            route: route.to_owned(),
            duration: m.request_duration.with_label_values(&[route]),
            ok: std::sync::OnceLock::new(),
            phases: handles,
        }
    }

    /// [`request`] for this route.
    pub fn request(&self, status: http::StatusCode, secs: f64) {
        if status == http::StatusCode::OK {
            self.ok
                .get_or_init(|| {
                    METRICS
                        .requests
                        .with_label_values(&[self.route.as_str(), "200"])
                })
                .inc();
        } else {
            METRICS
                .requests
                .with_label_values(&[self.route.as_str(), status.as_str()])
                .inc();
        }
        self.duration.observe(secs);
    }

    /// [`runner_call`] for this route's phase `index` (0 pre-req, 1
    /// post-req, 2 post-resp); nothing for a phase the route does not have.
    pub fn runner_call(&self, index: usize, result: CallResult, secs: f64) {
        let Some(Some(p)) = self.phases.get(index) else {
            return;
        };
        if result == CallResult::Ok {
            p.ok.get_or_init(|| {
                METRICS
                    .runner_calls
                    .with_label_values(&[p.runner.as_str(), p.phase, "ok"])
            })
            .inc();
            p.duration.observe(secs);
        } else {
            runner_call(&p.runner, p.phase, result, secs);
        }
    }
}

/// A runner's series resolved once (no lookup per connection or chain).
#[derive(Clone)]
pub struct RunnerHandles {
    connections: IntGauge,
    conf_prepared: IntCounter,
}

impl RunnerHandles {
    /// The handles of the series of `runner`, which speaks `protocol`
    /// (`capnp`, `apisix`); its `runner_up` series is created too (0
    /// until the runner is ready), so that it shows before any event.
    pub fn new(runner: &str, protocol: &str) -> Self {
        let m = &*METRICS;
        m.runner_up.with_label_values(&[runner, protocol]);
        RunnerHandles {
            connections: m.runner_connections.with_label_values(&[runner, protocol]),
            conf_prepared: m.conf_prepared.with_label_values(&[runner, protocol]),
        }
    }

    /// An opened connection, counted until the returned guard is dropped.
    pub fn connection(&self) -> ConnectionCount {
        self.connections.inc();
        ConnectionCount(self.connections.clone())
    }

    /// Counts a prepared chain.
    pub fn conf_prepared(&self) {
        self.conf_prepared.inc();
    }
}

/// One open runner connection in `extplug_runner_connections`: the gauge
/// goes down when this is dropped, however the connection ends.
pub struct ConnectionCount(IntGauge);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric in the Prometheus text exposition format.
///
/// # Errors
/// The encoder failed (it does not on valid metrics); the message says why.
pub fn render() -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut out)
        .map_err(|e| format!("cannot encode the metrics: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_show_in_the_text() {
        request("unit-route", http::StatusCode::CREATED, 0.002);
        runner_call(
            "unit-runner",
            "ext-plugin-pre-req",
            CallResult::Timeout,
            0.5,
        );
        let handles = RunnerHandles::new("unit-runner", "capnp");
        let open = handles.connection();
        let text = String::from_utf8(render().unwrap()).unwrap();
        assert!(
            text.contains(r#"extplug_requests_total{route="unit-route",status="201"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"extplug_runner_calls_total{phase="ext-plugin-pre-req",result="timeout",runner="unit-runner"} 1"#
        ));
        assert!(
            text.contains(r#"extplug_runner_connections{protocol="capnp",runner="unit-runner"} 1"#)
        );
        assert!(text.contains(r#"extplug_headers_dropped_total{reason="framing"} 0"#));
        drop(open);
        let text = String::from_utf8(render().unwrap()).unwrap();
        assert!(
            text.contains(r#"extplug_runner_connections{protocol="capnp",runner="unit-runner"} 0"#)
        );
    }
}
