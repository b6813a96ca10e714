//! Routes from etcd, with a real etcd (Debian's `etcd-server`), two real
//! `extplug proxy` nodes watching it with the example runner, and a real
//! upstream: routes put with `etcdctl` in APISIX's format are served by
//! both, changed, deleted; `upstream_id` and `service_id` resolve; a bad
//! route is skipped while the others serve; etcd killed, both keep
//! serving; etcd back with changes made meanwhile (compaction included),
//! both follow; a node is not ready before its first read; a file reload
//! keeps the routes from etcd; `extplug routes` lists what would be served
//! and why not. Every wait is bounded; etcd is killed and its data removed
//! even when a test fails.

use crate::support::conf::{demo, phase};
use crate::support::etcd::{free_port, Etcd};
use crate::support::http::{get, send, Got, ProxyProc, Upstream};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a change may take to show on a proxy before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A proxy node whose routes come from `etcd`, with the admin listener.
pub(crate) fn node(etcd: &Etcd) -> ProxyProc {
    let mut runner = json!({"cmd": demo(), "standby": false, "start_timeout_ms": 10000});
    runner["stop_grace_ms"] = json!(500);
    ProxyProc::start(&json!({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "ext-plugin": runner,
        "etcd": {"endpoints": [etcd.url()], "prefix": "/apisix", "timeout_ms": 2000},
    }))
}

/// A route answered by the `say` plugin with `body`.
fn say_route(uri: &str, body: &str) -> Value {
    json!({
        "uri": uri,
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}},
        "plugins": {"ext-plugin-pre-req": phase(&[("say", json!({"body": body}))])},
        "create_time": 1700000000,
        "update_time": 1700000000,
    })
}

/// Polls `path` on `node` until `ok` takes the answer; panics with the
/// last answer and the node's log after [`WAIT`].
pub(crate) async fn until(node: &ProxyProc, path: &str, what: &str, ok: impl Fn(&Got) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = get(&node.url(path)).await;
        if ok(&got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: GET {path} still gives {} {:?}; log:\n{}",
            got.status,
            got.text(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `path` answers 200 with `body` on every node.
async fn serves(nodes: &[&ProxyProc], path: &str, body: &str) {
    for n in nodes {
        until(n, path, &format!("{path} answering {body:?}"), |g| {
            g.status == 200 && g.text() == body
        })
        .await;
    }
}

/// Waits until `path` answers 404 on every node.
async fn not_found(nodes: &[&ProxyProc], path: &str) {
    for n in nodes {
        until(n, path, &format!("{path} answering 404"), |g| {
            g.status == 404
        })
        .await;
    }
}

/// The node's admin answer to `GET path`.
async fn admin(node: &ProxyProc, path: &str) -> Got {
    get(&format!(
        "http://{}{path}",
        node.admin.expect("admin listener")
    ))
    .await
}

/// The value of the metric line starting with `series` (name and labels).
async fn metric(node: &ProxyProc, series: &str) -> Option<f64> {
    admin(node, "/metrics")
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Waits until the metric `series` is `want` on `node`.
async fn metric_is(node: &ProxyProc, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = metric(node, series).await;
        if now == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now:?}, not {want}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_put_in_etcd_are_served_by_both_nodes_changed_and_deleted() {
    let etcd = Etcd::start();
    let up = Upstream::start().await;
    let (a, b) = (node(&etcd), node(&etcd));
    let both = [&a, &b];
    for n in both {
        metric_is(n, "extplug_etcd_up", 1.0).await;
        let ready = admin(n, "/readyz").await;
        assert_eq!(ready.status, 200, "{}", ready.text());
    }
    not_found(&both, "/hello").await;

    // Put, change, as an operator with etcdctl.
    etcd.put("/apisix/routes/1", &say_route("/hello", "v1"));
    serves(&both, "/hello", "v1").await;
    etcd.put("/apisix/routes/1", &say_route("/hello", "v2"));
    serves(&both, "/hello", "v2").await;

    // An upstream by id, with a chain that rewrites the request.
    etcd.put(
        "/apisix/upstreams/u1",
        &json!({"id": "u1", "type": "roundrobin", "nodes": {up.addr.to_string(): 1}}),
    );
    etcd.put(
        "/apisix/routes/2",
        &json!({"id": "2", "uri": "/up", "upstream_id": "u1",
                "plugins": {"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers": {"x-from-etcd": "yes"}}))])}}),
    );
    serves(&both, "/up", "upstream says hi").await;
    assert_eq!(up.last().header("x-from-etcd"), Some("yes"));

    // A service: its upstream and plugins, unless the route has its own.
    etcd.put(
        "/apisix/services/s1",
        &json!({"upstream_id": "u1", "plugins": {"ext-plugin-pre-req": phase(&[("say", json!({"body": "from the service"}))])}}),
    );
    etcd.put(
        "/apisix/routes/3",
        &json!({"uri": "/svc", "service_id": "s1"}),
    );
    etcd.put(
        "/apisix/routes/4",
        &json!({"uri": "/svc-own", "service_id": "s1",
                "plugins": {"ext-plugin-pre-req": phase(&[("say", json!({"body": "the route's own"}))])}}),
    );
    serves(&both, "/svc", "from the service").await;
    serves(&both, "/svc-own", "the route's own").await;

    // A route whose upstream does not exist yet: served once it does.
    etcd.put(
        "/apisix/routes/5",
        &json!({"uri": "/later", "upstream_id": "u2"}),
    );
    etcd.put(
        "/apisix/routes/6",
        &say_route("/after-5", "written after 5"),
    );
    serves(&both, "/after-5", "written after 5").await;
    not_found(&both, "/later").await;
    etcd.put(
        "/apisix/upstreams/u2",
        &json!({"nodes": {up.addr.to_string(): 1}}),
    );
    serves(&both, "/later", "upstream says hi").await;

    // Bad routes are skipped, counted, and the others keep serving.
    let chain_errors = metric(&a, "extplug_config_errors_total{kind=\"chain\"}").await;
    etcd.put_text("/apisix/routes/7", "{not json");
    etcd.put(
        "/apisix/routes/8",
        &json!({"uri": "/refused", "upstream_id": "u1",
                "plugins": {"ext-plugin-pre-req": phase(&[("no-such-plugin", json!({}))])}}),
    );
    etcd.put("/apisix/routes/9", &say_route("/after-bad", "still here"));
    serves(&both, "/after-bad", "still here").await;
    serves(&both, "/hello", "v2").await;
    not_found(&both, "/refused").await;
    assert_eq!(
        metric(&a, "extplug_config_errors_total{kind=\"chain\"}").await,
        chain_errors.map(|n| n + 1.0)
    );
    assert!(metric(&a, "extplug_config_errors_total{kind=\"route\"}").await >= Some(1.0));
    assert!(
        a.log().contains("/apisix/routes/8") && a.log().contains("no-such-plugin"),
        "the skipped route's key and the runner's reason are logged:\n{}",
        a.log()
    );

    // Deleted: 404 on both.
    etcd.delete("/apisix/routes/1");
    not_found(&both, "/hello").await;
    serves(&both, "/after-bad", "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_both_keep_serving_and_follow_it_when_back() {
    let mut etcd = Etcd::start();
    let (a, b) = (node(&etcd), node(&etcd));
    let both = [&a, &b];
    etcd.put("/apisix/routes/1", &say_route("/hello", "v1"));
    serves(&both, "/hello", "v1").await;

    // Killed: the last table keeps serving, and the nodes stay ready.
    etcd.kill();
    for n in both {
        metric_is(n, "extplug_etcd_up", 0.0).await;
        let ready = admin(n, "/readyz").await;
        assert_eq!(ready.status, 200, "{}", ready.text());
    }
    serves(&both, "/hello", "v1").await;

    // A change made while the nodes cannot see it: etcd back on another
    // port, written there, stopped; then back where the nodes look.
    let hidden = free_port();
    etcd.run_on(hidden);
    etcd.put_on(hidden, "/apisix/routes/1", &say_route("/hello", "v2"));
    etcd.kill();
    serves(&both, "/hello", "v1").await;
    etcd.restart();
    serves(&both, "/hello", "v2").await;
    for n in both {
        metric_is(n, "extplug_etcd_up", 1.0).await;
    }

    // The same, with the history compacted past what the nodes saw: the
    // watch cannot resume, and they read everything again.
    etcd.kill();
    for n in both {
        metric_is(n, "extplug_etcd_up", 0.0).await;
    }
    etcd.run_on(hidden);
    etcd.put_on(hidden, "/apisix/routes/1", &say_route("/hello", "v3"));
    let revision = etcd.put_on(hidden, "/apisix/routes/2", &say_route("/new", "new"));
    etcd.ctl_on(hidden, &["compact", &revision.to_string(), "--physical"]);
    etcd.kill();
    etcd.restart();
    serves(&both, "/hello", "v3").await;
    serves(&both, "/new", "new").await;
    for n in both {
        assert!(
            n.log().contains("compacted"),
            "the node read everything again after the compaction:\n{}",
            n.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_not_ready_until_the_first_load_from_etcd() {
    // etcd's port is chosen, but nothing listens there yet.
    let port = free_port();
    let unreachable = json!({"endpoints": [format!("http://127.0.0.1:{port}")]});
    let mut runner = json!({"cmd": demo(), "standby": false});
    runner["stop_grace_ms"] = json!(500);
    let n = ProxyProc::start(&json!({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "ext-plugin": runner,
        "etcd": {"endpoints": unreachable["endpoints"], "timeout_ms": 1000},
    }));
    let ready = admin(&n, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("etcd"), "{}", ready.text());
    assert_eq!(get(&n.url("/hello")).await.status, 404);
    assert_eq!(metric(&n, "extplug_etcd_up").await, Some(0.0));

    let etcd = Etcd::start_on(port);
    etcd.put("/apisix/routes/1", &say_route("/hello", "at last"));
    serves(&[&n], "/hello", "at last").await;
    let ready = admin(&n, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extplug_routes_lists_what_would_be_served_and_why_not() {
    let etcd = Etcd::start();
    etcd.put("/apisix/routes/1", &say_route("/hello", "hi"));
    etcd.put(
        "/apisix/routes/2",
        &json!({"uri": "/refused", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                "plugins": {"ext-plugin-pre-req": phase(&[("no-such-plugin", json!({}))])}}),
    );
    etcd.put(
        "/apisix/routes/3",
        &json!({"uri": "/x", "upstream_id": "missing"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let write = |c: &Value| std::fs::write(&config, c.to_string()).unwrap();
    write(&json!({
        "ext-plugin": {"cmd": demo(), "standby": false},
        "etcd": {"endpoints": [etcd.url()]},
    }));
    let routes = |offline: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_extplug"));
        cmd.args(["routes", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn");
        if offline {
            cmd.arg("--offline");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = routes(false);
    assert_eq!(code, Some(1), "some skipped: exit 1\n{out}\n{err}");
    assert!(
        out.contains("served 1 uris=/hello methods=* upstream=127.0.0.1:1=1 phases=ext-plugin-pre-req[say]@default"),
        "{out}"
    );
    assert!(
        out.contains(
            "skipped /apisix/routes/2 (chain): ext-plugin-pre-req: the runner refused the chain"
        ) && out.contains("no-such-plugin"),
        "{out}"
    );
    assert!(
        out.contains("skipped /apisix/routes/3 (route): `upstream_id` \"missing\": there is no upstream at `/apisix/upstreams/missing`"),
        "{out}"
    );
    assert!(out.contains("1 served, 2 skipped, from etcd"), "{out}");
    // Offline, the runner is not asked: the chain is not checked.
    let (code, out, _) = routes(true);
    assert_eq!(code, Some(1));
    assert!(out.contains("2 served, 1 skipped"), "{out}");

    etcd.delete("/apisix/routes/2");
    etcd.delete("/apisix/routes/3");
    let (code, out, err) = routes(false);
    assert_eq!(code, Some(0), "all served: exit 0\n{out}\n{err}");
    assert!(out.contains("1 served, 0 skipped"), "{out}");

    // A file's routes, the same way.
    write(&json!({
        "ext-plugin": {"cmd": demo(), "standby": false},
        "routes": [{"id": "f", "uri": "/f", "upstream": {"nodes": {"127.0.0.1:1": 1}}}],
    }));
    let (code, out, err) = routes(false);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("served f uris=/f") && out.contains("1 served, 0 skipped, from "),
        "{out}"
    );

    // etcd unreachable: the source cannot be read, exit 2.
    drop(etcd);
    write(&json!({
        "ext-plugin": {"cmd": demo()},
        "etcd": {"endpoints": [format!("http://127.0.0.1:{}", free_port())], "timeout_ms": 500},
    }));
    let (code, _, err) = routes(false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("etcd http://127.0.0.1:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_file_keeps_the_routes_from_etcd() {
    let etcd = Etcd::start();
    let n = node(&etcd);
    etcd.put("/apisix/routes/1", &say_route("/hello", "v1"));
    serves(&[&n], "/hello", "v1").await;
    let reload = || async {
        let url = format!("http://{}/reload", n.admin.unwrap());
        crate::support::http::send("POST", &url, &[], "").await
    };
    let got = reload().await;
    assert_eq!(got.status, 200, "{}", got.text());
    serves(&[&n], "/hello", "v1").await;

    // The source itself changes only by restart.
    let path = n.dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["etcd"]["prefix"] = json!("/other");
    std::fs::write(&path, config.to_string()).unwrap();
    let got = reload().await;
    assert_ne!(got.status, 200);
    assert!(got.text().contains("`etcd` changed"), "{}", got.text());
    serves(&[&n], "/hello", "v1").await;

    // And the watch goes on.
    etcd.put("/apisix/routes/1", &say_route("/hello", "v2"));
    serves(&[&n], "/hello", "v2").await;
}

/// A proxy node as [`node`], with `etcd`'s extra settings (`user`, ...).
fn node_with(etcd: &Etcd, extra: Value) -> ProxyProc {
    let mut runner = json!({"cmd": demo(), "standby": false, "start_timeout_ms": 10000});
    runner["stop_grace_ms"] = json!(500);
    let mut conf = json!({"endpoints": [etcd.url()], "prefix": "/apisix", "timeout_ms": 2000});
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    ProxyProc::start(&json!({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "ext-plugin": runner,
        "etcd": conf,
    }))
}

/// An etcd client of the test's own, for what `etcdctl` cannot do quickly
/// (hundreds of puts) or at all (a value larger than an argument).
async fn client(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("connecting to the test's etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_as_apisix_stores_them_and_an_upstream_deleted_under_its_routes() {
    let etcd = Etcd::start();
    let up = Upstream::start().await;
    let n = node(&etcd);
    // What APISIX's Admin API writes: defaults filled in (`priority` of
    // each node, `hash_on`, `scheme`, `pass_host`, `allow_degradation`,
    // the route's `priority` and `status`), bookkeeping fields.
    etcd.put(
        "/apisix/upstreams/1",
        &json!({"id": "1", "create_time": 1700000000, "update_time": 1700000000,
                "name": "echo", "desc": "the test's upstream", "labels": {"env": "test"},
                "type": "roundrobin", "scheme": "http", "pass_host": "pass", "hash_on": "vars",
                "nodes": [{"host": "127.0.0.1", "port": up.addr.port(), "weight": 1, "priority": 0}]}),
    );
    etcd.put(
        "/apisix/routes/1",
        &json!({"id": "1", "create_time": 1700000000, "update_time": 1700000001,
                "name": "r1", "desc": "d", "labels": {"env": "test"},
                "uri": "/apisix", "methods": ["GET"], "priority": 0, "status": 1, "upstream_id": "1",
                "plugins": {"ext-plugin-pre-req": {
                    "conf": [{"name": "rewrite", "value": json!({"headers": {"x-from-etcd": "apisix"}}).to_string()}],
                    "allow_degradation": false, "_meta": {"disable": false}}}}),
    );
    serves(&[&n], "/apisix", "upstream says hi").await;
    assert_eq!(up.last().header("x-from-etcd"), Some("apisix"));

    // A phase filter APISIX would apply is not ignored: the route is
    // skipped, with its key and the field.
    etcd.put(
        "/apisix/routes/2",
        &json!({"uri": "/filtered", "upstream_id": "1",
                "plugins": {"ext-plugin-pre-req": {
                    "conf": [{"name": "say", "value": json!({"body": "everyone"}).to_string()}],
                    "_meta": {"filter": [["arg_x", "==", "1"]]}}}}),
    );
    etcd.put("/apisix/routes/3", &say_route("/after-2", "after 2"));
    serves(&[&n], "/after-2", "after 2").await;
    not_found(&[&n], "/filtered").await;
    assert!(
        n.log().contains("/apisix/routes/2") && n.log().contains("unknown field `filter`"),
        "{}",
        n.log()
    );

    // Keys that are not a route: another prefix that starts the same, a
    // path below an id, an empty id, another kind; a unicode id is one.
    for key in [
        "/apisix2/routes/1",
        "/apisix/routes/../x",
        "/apisix/routes/1/x",
        "/apisix/routes/",
        "/apisix/plugins/x",
        "/apisixroutes/1",
    ] {
        etcd.put(key, &say_route("/not-a-route", key));
    }
    etcd.put("/apisix/routes/ü", &say_route("/unicode", "ü"));
    serves(&[&n], "/unicode", "ü").await;
    not_found(&[&n], "/not-a-route").await;
    serves(&[&n], "/apisix", "upstream says hi").await;

    // The upstream deleted while a route uses it: the route is no longer
    // served, with the reason; the others still are.
    etcd.delete("/apisix/upstreams/1");
    not_found(&[&n], "/apisix").await;
    serves(&[&n], "/after-2", "after 2").await;
    assert!(
        n.log()
            .contains("there is no upstream at `/apisix/upstreams/1`"),
        "{}",
        n.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_larger_than_a_grpc_message_in_all_are_read_and_watched() {
    let etcd = Etcd::start();
    let early = node(&etcd);
    // Four routes of 1.2 MB each (etcd takes up to 1.5 MiB a request):
    // 4.8 MB in all, above gRPC's default message limit of 4 MiB.
    let mut c = client(&etcd).await;
    for i in 0..4 {
        let mut route = say_route(&format!("/big{i}"), &format!("big {i}"));
        route["desc"] = json!("x".repeat(1_200_000));
        c.put(format!("/apisix/routes/big{i}"), route.to_string(), None)
            .await
            .unwrap();
    }
    let late = node(&etcd);
    for i in 0..4 {
        serves(&[&early, &late], &format!("/big{i}"), &format!("big {i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_puts_and_a_flapping_route_end_as_etcd_does() {
    let etcd = Etcd::start();
    let (a, b) = (node(&etcd), node(&etcd));
    let both = [&a, &b];
    etcd.put("/apisix/routes/first", &say_route("/first", "first"));
    serves(&both, "/first", "first").await;
    // Hundreds of writes as fast as one client makes them, each its own
    // revision: routes added, one flapping, some deleted again.
    let mut c = client(&etcd).await;
    let puts = 300;
    for i in 0..puts {
        let route = say_route(&format!("/s{i}"), &format!("s{i}"));
        c.put(format!("/apisix/routes/s{i}"), route.to_string(), None)
            .await
            .unwrap();
        let flap = say_route("/flap", &format!("v{i}"));
        c.put("/apisix/routes/flap", flap.to_string(), None)
            .await
            .unwrap();
    }
    for i in 0..50 {
        c.delete(format!("/apisix/routes/s{i}"), None)
            .await
            .unwrap();
    }
    serves(&both, "/flap", &format!("v{}", puts - 1)).await;
    for i in [50, 123, puts - 1] {
        serves(&both, &format!("/s{i}"), &format!("s{i}")).await;
    }
    for i in [0, 49] {
        not_found(&both, &format!("/s{i}")).await;
    }
    serves(&both, "/first", "first").await;
    for n in both {
        let applied = n.log().matches("routes from etcd applied").count();
        eprintln!("{applied} tables applied for {} writes", 2 * puts + 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_authentication_user_and_password() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("s3cret");
    let n = node_with(&etcd, json!({"user": "root", "password": "s3cret"}));
    let wrong = node_with(&etcd, json!({"user": "root", "password": "wrong"}));
    etcd.put("/apisix/routes/1", &say_route("/hello", "v1"));
    serves(&[&n], "/hello", "v1").await;

    // Wrong credentials: not ready, and the reason says so.
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = admin(&wrong, "/readyz").await;
        assert_eq!(ready.status, 503, "{}", ready.text());
        if ready.text().contains("authentication failed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            ready.text(),
            wrong.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&wrong.url("/hello")).await.status, 404);

    // etcd restarted (its tokens are gone): the node logs in again and
    // follows the changes.
    etcd.kill();
    metric_is(&n, "extplug_etcd_up", 0.0).await;
    etcd.restart();
    etcd.put("/apisix/routes/1", &say_route("/hello", "v2"));
    serves(&[&n], "/hello", "v2").await;
    metric_is(&n, "extplug_etcd_up", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_behind_the_revision_applied_is_read_again() {
    let mut old = Etcd::start();
    let n = node(&old);
    for i in 0..10 {
        old.put("/apisix/routes/old", &say_route("/old", &format!("v{i}")));
    }
    serves(&[&n], "/old", "v9").await;
    // A new cluster (or one restored from an older backup) where the old
    // one was: its revisions start again below the one the node applied.
    let port = old.port;
    old.kill();
    metric_is(&n, "extplug_etcd_up", 0.0).await;
    let new = Etcd::start_on(port);
    new.put("/apisix/routes/new", &say_route("/new", "new"));
    serves(&[&n], "/new", "new").await;
    not_found(&[&n], "/old").await;
    metric_is(&n, "extplug_etcd_up", 1.0).await;
    assert!(n.log().contains("restored or new cluster"), "{}", n.log());
    // And it follows the new cluster from there.
    new.put("/apisix/routes/new", &say_route("/new", "newer"));
    serves(&[&n], "/new", "newer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_guide_walkthrough_config_and_etcdctl_puts_work_as_written() {
    let etcd = Etcd::start();
    let up = Upstream::start().await;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The shipped node configuration, pointed at the test's etcd, ports and
    // runner build.
    let text = std::fs::read_to_string(repo.join("examples/fleet-node-1.json")).unwrap();
    let mut conf: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(conf["etcd"]["endpoints"], json!(["http://127.0.0.1:2379"]));
    conf["etcd"]["endpoints"] = json!([etcd.url()]);
    conf["listen"] = json!("127.0.0.1:0");
    conf["admin"]["listen"] = json!("127.0.0.1:0");
    conf["ext-plugin"]["cmd"] = json!(demo());
    let n = ProxyProc::start(&conf);

    // The fleet guide's `etcdctl put` lines, run as written (the upstream's
    // address aside).
    let guide = std::fs::read_to_string(repo.join("docs/fleet.md")).unwrap();
    let walk = &guide[guide.find("\n## Try it on one machine\n").unwrap()..];
    let walk = &walk[..walk.find("\n```\n").unwrap()];
    let mut puts = 0;
    let mut rest = walk;
    while let Some(at) = rest.find("etcdctl put ") {
        let line = &rest[at + "etcdctl put ".len()..];
        let (key, after) = line.split_once(" '").unwrap();
        let (value, after) = after.split_once('\'').unwrap();
        let value = value.replace("127.0.0.1:1980", &up.addr.to_string());
        etcd.put_text(key, &value);
        puts += 1;
        rest = after;
    }
    assert_eq!(puts, 2, "the upstream and the route:\n{walk}");
    let hello = n.url("/hello");
    until(&n, "/hello", "the fleet guide's route", |g| g.status == 401).await;
    let got = send("GET", &hello, &[("x-api-key", "k1")], "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "upstream says hi");
    assert_eq!(up.last().header("x-by"), Some("extplug"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_that_answers_nothing_is_noticed_and_followed_again() {
    let etcd = Etcd::start();
    let n = node(&etcd);
    etcd.put("/apisix/routes/1", &say_route("/hello", "v1"));
    serves(&[&n], "/hello", "v1").await;
    // Frozen: the connection stays open, nothing answers; the keep-alive
    // pings (5 s apart, `timeout_ms` to answer) notice it.
    etcd.freeze(true);
    let deadline = Instant::now() + 3 * WAIT;
    while metric(&n, "extplug_etcd_up").await != Some(0.0) {
        assert!(Instant::now() < deadline, "{}", n.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serves(&[&n], "/hello", "v1").await;
    assert_eq!(admin(&n, "/readyz").await.status, 200);
    etcd.freeze(false);
    etcd.put("/apisix/routes/1", &say_route("/hello", "v2"));
    serves(&[&n], "/hello", "v2").await;
}
