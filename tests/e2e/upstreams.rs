//! Upstreams with real nodes: `pass_host`, a route's `timeout`, retries
//! past a closed port and a node that resets, `chash` by header (the same
//! key on the same node; a removed node moves only its keys),
//! `least_conn` with a slow node, passive and active health checks (a
//! node taken out and put back, `extplug_upstream_node_healthy`), every
//! node down, a reload that keeps or removes a checked upstream, and an
//! upstream object from a real etcd.

use crate::support::conf::{config, demo};
use crate::support::http::{get, send, Got, ProxyProc};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a change may take to show before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// A node that says who it is (`x-node`), records each request's `Host`,
/// answers traffic with `status` after `delay_ms`, and `/health` with
/// `health`.
struct Node {
    addr: SocketAddr,
    s: Arc<Shared>,
}

/// What a [`Node`] answers, and what it saw.
#[derive(Default)]
struct Shared {
    status: AtomicU16,
    health: AtomicU16,
    delay_ms: AtomicU64,
    /// Traffic requests (not probes) served.
    hits: AtomicUsize,
    /// Probes of `/health` received.
    probes: AtomicUsize,
    hosts: Mutex<Vec<String>>,
}

impl Shared {
    async fn answer(
        &self,
        addr: SocketAddr,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let host = req
            .headers()
            .get("host")
            .map(|h| h.to_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        let _ = req.into_body().collect().await;
        let code = if path == "/health" {
            self.probes.fetch_add(1, Ordering::SeqCst);
            self.health.load(Ordering::SeqCst)
        } else {
            self.hits.fetch_add(1, Ordering::SeqCst);
            self.hosts.lock().unwrap().push(host);
            let ms = self.delay_ms.load(Ordering::SeqCst);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            self.status.load(Ordering::SeqCst)
        };
        http::Response::builder()
            .status(code)
            .header("x-node", addr.to_string())
            .body(Full::new(Bytes::from("ok")))
            .unwrap()
    }
}

impl Node {
    async fn start() -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::new(Shared::default());
        s.status.store(200, Ordering::SeqCst);
        s.health.store(200, Ordering::SeqCst);
        let shared = s.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(shared.answer(addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Node { addr, s }
    }

    fn hits(&self) -> usize {
        self.s.hits.load(Ordering::SeqCst)
    }
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A node that accepts, reads the request, and closes without answering.
async fn resetting_node() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            });
        }
    });
    addr
}

/// One catch-all route to `nodes` with `fields` merged into its upstream.
fn upstream_route(nodes: &[SocketAddr], fields: Value) -> Value {
    let mut upstream = json!({
        "type": "roundrobin",
        "nodes": nodes.iter().map(|a| (a.to_string(), json!(1))).collect::<serde_json::Map<_, _>>(),
    });
    for (k, v) in fields.as_object().unwrap() {
        upstream[k] = v.clone();
    }
    json!({"id": "r", "uri": "/*", "upstream": upstream})
}

fn proxy_with(routes: Value) -> ProxyProc {
    let mut c = config(demo(), json!({}), routes);
    c["ext-plugin"]["standby"] = json!(false);
    c["admin"] = json!({"listen": "127.0.0.1:0"});
    ProxyProc::start(&c)
}

/// The node that answered.
fn node_of(got: &Got) -> String {
    got.header("x-node").unwrap_or("none").to_owned()
}

/// The value of the metric line starting with `series`.
pub(crate) async fn metric(p: &ProxyProc, series: &str) -> Option<f64> {
    get(&format!("http://{}/metrics", p.admin.unwrap()))
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Waits until the metric `series` is `want` (panics after [`WAIT`]).
pub(crate) async fn metric_is(p: &ProxyProc, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = metric(p, series).await;
        if now == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now:?}, not {want}; log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /x` answers `status` within `limit`.
async fn answers_within(p: &ProxyProc, status: u16, limit: Duration) {
    let started = Instant::now();
    let got = get(&p.url("/x")).await;
    assert_eq!(got.status, status, "{}", got.text());
    assert!(started.elapsed() < limit, "{:?}", started.elapsed());
}

fn healthy_series(upstream: &str, node: SocketAddr) -> String {
    format!("extplug_upstream_node_healthy{{node=\"{node}\",upstream=\"{upstream}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_host_node_and_rewrite_set_the_host_the_node_gets() {
    let node = Node::start().await;
    let p = proxy_with(json!([
        {"id": "n", "uri": "/node", "upstream": {"nodes": {node.addr.to_string(): 1}, "pass_host": "node"}},
        {"id": "w", "uri": "/rewrite", "upstream": {"nodes": {node.addr.to_string(): 1},
            "pass_host": "rewrite", "upstream_host": "api.internal"}},
        {"id": "p", "uri": "/pass", "upstream": {"nodes": {node.addr.to_string(): 1}}},
    ]));
    for path in ["/node", "/rewrite", "/pass"] {
        let got = send("GET", &p.url(path), &[("host", "client.example")], "").await;
        assert_eq!(got.status, 200, "{path}");
    }
    let hosts = node.s.hosts.lock().unwrap().clone();
    assert_eq!(
        hosts,
        vec![
            node.addr.to_string(),
            "api.internal".into(),
            "client.example".into()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_overrides_the_upstream_s() {
    let node = Node::start().await;
    node.s.delay_ms.store(3000, Ordering::SeqCst);
    let mut route = upstream_route(
        &[node.addr],
        json!({"timeout": {"connect": 5, "send": 5, "read": 30}}),
    );
    route["timeout"] = json!({"read": 0.3});
    let p = proxy_with(json!([route]));
    answers_within(&p, 504, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_past_a_closed_port_and_a_node_that_resets() {
    let good = Node::start().await;
    let dead = closed_port();
    let reset = resetting_node().await;
    let p = proxy_with(json!([upstream_route(
        &[good.addr, dead, reset],
        json!({})
    )]));
    for i in 0..30 {
        let got = get(&p.url(&format!("/x{i}"))).await;
        assert_eq!(
            got.status,
            200,
            "GET {i}: {}; log:\n{}",
            got.text(),
            p.log()
        );
        assert_eq!(node_of(&got), good.addr.to_string());
    }
    // A PUT (idempotent) with a body goes again; a POST that reached the
    // resetting node does not (it may have acted on it): some fail.
    let puts: Vec<u16> = futures::future::join_all((0..12).map(|_| {
        let url = p.url("/put");
        async move { send("PUT", &url, &[], "body").await }
    }))
    .await
    .iter()
    .map(|g| g.status)
    .collect();
    assert!(puts.iter().all(|&s| s == 200), "{puts:?}");
    let mut posts = Vec::new();
    for _ in 0..12 {
        posts.push(send("POST", &p.url("/post"), &[], "body").await.status);
    }
    assert!(posts.contains(&200), "{posts:?}");
    assert!(
        posts.contains(&502),
        "a POST the node reset is not sent again: {posts:?}"
    );
    assert!(p.log().contains("retrying on another node"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_zero_and_every_node_down() {
    let good = Node::start().await;
    let dead = closed_port();
    let p = proxy_with(json!([upstream_route(
        &[good.addr, dead],
        json!({"retries": 0})
    ),]));
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(get(&p.url("/x")).await.status);
        }
        v
    };
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );
    drop(p);
    let p = proxy_with(json!([upstream_route(
        &[closed_port(), closed_port()],
        json!({})
    )]));
    answers_within(&p, 502, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chash_by_header_keeps_a_key_on_its_node_and_a_removed_node_moves_only_its_keys() {
    let nodes = [
        Node::start().await,
        Node::start().await,
        Node::start().await,
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let fields = json!({"type": "chash", "hash_on": "header", "key": "x-user"});
    let owners = |p: ProxyProc| async move {
        let mut owners = Vec::new();
        for k in 0..40 {
            let user = format!("user-{k}");
            let got = send("GET", &p.url("/x"), &[("x-user", &user)], "").await;
            assert_eq!(got.status, 200);
            owners.push(node_of(&got));
        }
        owners
    };
    let p = proxy_with(json!([upstream_route(&addrs, fields.clone())]));
    // The same key, 50 times: one node.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let got = send("GET", &p.url("/x"), &[("x-user", "alice")], "").await;
        seen.insert(node_of(&got));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let before = owners(p).await;
    let used: std::collections::HashSet<_> = before.iter().collect();
    assert_eq!(used.len(), 3, "40 keys over 3 nodes: {before:?}");
    let removed = addrs[1].to_string();
    let after = owners(proxy_with(json!([upstream_route(
        &[addrs[0], addrs[2]],
        fields
    )])))
    .await;
    for (k, (was, now)) in before.iter().zip(&after).enumerate() {
        if *was != removed {
            assert_eq!(was, now, "user-{k} moved off a node that stayed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_little_to_a_slow_node() {
    let slow = Node::start().await;
    let fast = Node::start().await;
    slow.s.delay_ms.store(1500, Ordering::SeqCst);
    let p = proxy_with(json!([upstream_route(
        &[slow.addr, fast.addr],
        json!({"type": "least_conn"})
    )]));
    let mut calls = Vec::new();
    for _ in 0..20 {
        let url = p.url("/x");
        calls.push(tokio::spawn(async move { get(&url).await.status }));
        // Spaced, so that each pick sees the ones before in flight.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert!(slow.hits() <= 2, "the slow node got {} of 20", slow.hits());
    assert_eq!(slow.hits() + fast.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_check_takes_a_failing_node_out_and_the_active_one_puts_it_back() {
    let good = Node::start().await;
    let bad = Node::start().await;
    bad.s.status.store(500, Ordering::SeqCst);
    let checks = json!({
        "active": {"http_path": "/health", "healthy": {"interval": 1, "successes": 1},
                   "unhealthy": {"interval": 1}},
        "passive": {"unhealthy": {"http_statuses": [500], "http_failures": 2}},
    });
    // The probes say healthy while traffic fails: only the passive check
    // can take the node out, and the probes bring it back.
    bad.s.health.store(200, Ordering::SeqCst);
    let p = proxy_with(json!([upstream_route(
        &[good.addr, bad.addr],
        json!({"checks": checks, "retries": 0})
    )]));
    let series = healthy_series("routes/r", bad.addr);
    metric_is(&p, &series, 1.0).await;
    let mut failures = 0;
    for _ in 0..10 {
        if get(&p.url("/x")).await.status == 500 {
            failures += 1;
        }
    }
    assert!(failures >= 2, "{failures}");
    p.wait_log("upstream node unhealthy", 1);
    // Healthy again by the probes; the node is used once more.
    bad.s.status.store(200, Ordering::SeqCst);
    metric_is(&p, &series, 1.0).await;
    p.wait_log("upstream node healthy again", 1);
    let before = bad.hits();
    for _ in 0..6 {
        assert_eq!(get(&p.url("/x")).await.status, 200);
    }
    assert!(bad.hits() > before, "the node is back in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_check_keeps_traffic_off_a_node_whose_probe_fails() {
    let good = Node::start().await;
    let bad = Node::start().await;
    bad.s.health.store(503, Ordering::SeqCst);
    let checks = json!({"active": {"http_path": "/health", "unhealthy": {"http_failures": 1}}});
    let p = proxy_with(json!([upstream_route(
        &[good.addr, bad.addr],
        json!({"checks": checks})
    )]));
    metric_is(&p, &healthy_series("routes/r", bad.addr), 0.0).await;
    metric_is(&p, &healthy_series("routes/r", good.addr), 1.0).await;
    let before = bad.hits();
    for _ in 0..20 {
        let got = get(&p.url("/x")).await;
        assert_eq!(node_of(&got), good.addr.to_string());
    }
    assert_eq!(bad.hits(), before);
    // Every node unhealthy: they are all tried rather than none.
    good.s.health.store(503, Ordering::SeqCst);
    metric_is(&p, &healthy_series("routes/r", good.addr), 0.0).await;
    assert_eq!(get(&p.url("/x")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_kept_upstream_s_health_and_stops_a_removed_one_s_checker() {
    let good = Node::start().await;
    let bad = Node::start().await;
    bad.s.health.store(503, Ordering::SeqCst);
    let checks = json!({"active": {"http_path": "/health", "unhealthy": {"http_failures": 1}}});
    let checked = upstream_route(&[good.addr, bad.addr], json!({"checks": checks}));
    let other = |body: &str| {
        json!({"id": "o", "uri": "/other", "upstream": {"nodes": {good.addr.to_string(): 1}},
               "desc": body})
    };
    let p = proxy_with(json!([checked.clone(), other("a")]));
    let series = healthy_series("routes/r", bad.addr);
    metric_is(&p, &series, 0.0).await;
    // A reload that changes another route keeps this upstream's state:
    // the node stays out, with no new probe needed.
    bad.s.health.store(200, Ordering::SeqCst);
    let path = p.dir.path().join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["routes"] = json!([checked, other("b")]);
    std::fs::write(&path, c.to_string()).unwrap();
    p.signal(Signal::SIGHUP);
    p.wait_log("configuration reloaded", 1);
    assert_eq!(
        metric(&p, &series).await,
        Some(0.0),
        "kept unhealthy over the reload"
    );
    // A reload without the upstream stops its probes and its series.
    c["routes"] = json!([other("c")]);
    std::fs::write(&path, c.to_string()).unwrap();
    p.signal(Signal::SIGHUP);
    p.wait_log("configuration reloaded", 2);
    let deadline = Instant::now() + WAIT;
    while metric(&p, &series).await.is_some() {
        assert!(Instant::now() < deadline, "the series stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probes = bad.s.probes.load(Ordering::SeqCst);
    // Three probe intervals: a checker still running would probe again.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        bad.s.probes.load(Ordering::SeqCst),
        probes,
        "the checker stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_values_are_refused_with_the_field_named() {
    for (fields, field) in [
        (json!({"type": "chash"}), "upstream.key"),
        (json!({"pass_host": "rewrite"}), "upstream.upstream_host"),
        (json!({"retries": -1}), "retries"),
        (json!({"checks": {"passive": {}}}), "upstream.checks"),
        (json!({"checks": {"active": {"timeouts": 3}}}), "timeouts"),
    ] {
        let c = config(
            demo(),
            json!({}),
            json!([upstream_route(&[closed_port()], fields)]),
        );
        let out = crate::support::extplug_exits(&["check", "--offline"], &c, "warn");
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(field), "{field}: {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_object_from_etcd_retries_and_balances_by_header() {
    use crate::support::etcd::Etcd;
    let etcd = Etcd::start();
    let good = Node::start().await;
    let p = ProxyProc::start(&json!({
        "listen": "127.0.0.1:0",
        "ext-plugin": {"cmd": demo(), "standby": false, "stop_grace_ms": 500},
        "etcd": {"endpoints": [etcd.url()], "prefix": "/apisix", "timeout_ms": 2000},
    }));
    etcd.put(
        "/apisix/upstreams/u1",
        &json!({"type": "chash", "hash_on": "header", "key": "x-user", "retries": 1,
                "nodes": {good.addr.to_string(): 1, closed_port().to_string(): 1},
                "pass_host": "rewrite", "upstream_host": "from.etcd"}),
    );
    etcd.put(
        "/apisix/routes/1",
        &json!({"uri": "/e", "upstream_id": "u1"}),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let got = send("GET", &p.url("/e"), &[("x-user", "a")], "").await;
        if got.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} {}; log:\n{}",
            got.status,
            got.text(),
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in 0..20 {
        let got = send("GET", &p.url("/e"), &[("x-user", &format!("u{k}"))], "").await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert!(good
        .s
        .hosts
        .lock()
        .unwrap()
        .iter()
        .all(|h| h == "from.etcd"));
}
