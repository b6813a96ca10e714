//! The runner's connections under hostile load, with real processes (the
//! proxy, the scripted misbehaving runner, an upstream): slow clients whose
//! body a plugin asks for mid-call hold at most `max_waiting_calls` runner
//! connections, cost no runner restart and no failed request elsewhere;
//! a runner that never read a call (its backlog full) is overloaded, not
//! stuck, and is not replaced for it.

use crate::support::conf::{bad, config, phase, route};
use crate::support::http::{get, ProxyProc, Upstream};
use crate::support::raw::RawConn;
use serde_json::json;

/// The proxy's `extplug_runner_connections` gauge, from its admin listener.
async fn runner_connections(proxy: &ProxyProc) -> f64 {
    let admin = proxy.admin.expect("an admin listener");
    let text = get(&format!("http://{admin}/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with("extplug_runner_connections{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no runner connections gauge in:\n{text}"))
}

/// 24 clients send half of a 100-byte body to a route whose plugin asks
/// for the body during the call (EXTRA_INFO), with `pool_size` 2 and
/// `max_waiting_calls` 2: two calls wait with their runner connection,
/// the others wait for their body without one. Meanwhile the proxy holds
/// at most 4 runner connections and serves other requests; once the
/// bodies are in, every slow client gets its answer with its whole body
/// seen by the runner, and no runner was replaced.
#[tokio::test]
async fn slow_lazy_bodies_hold_at_most_max_waiting_calls_connections() {
    const SLOW: usize = 24;
    let up = Upstream::start().await;
    let (cmd, env) = bad("scripted");
    let pre_req = json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])});
    let mut c = config(cmd, env, json!([route("r", "/*", up.addr, pre_req)]));
    c["ext-plugin"]["pool_size"] = json!(2);
    c["ext-plugin"]["max_waiting_calls"] = json!(2);
    c["ext-plugin"]["standby"] = json!(false);
    c["admin"] = json!({"listen": "127.0.0.1:0"});
    let proxy = ProxyProc::builder(&c)
        .log_filter("info,extplug::host::runner::client=debug")
        .start();
    proxy.wait_runner_ready(1);
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(b"POST /lazy-body HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 100\r\n\r\n")
            .await;
        conn.send(&[b'a'; 50]).await;
        slow.push(conn);
    }
    // Readiness: every call past the two waiting places gave its
    // connection up (the log says so once per call).
    proxy.wait_log("every waiting place is taken", SLOW - 2);
    let held = runner_connections(&proxy).await;
    // Two waiting calls and at most the two idle pooled connections.
    assert!(held <= 4.0, "{held} runner connections:\n{}", proxy.log());
    for i in 0..20 {
        let got = get(&proxy.url(&format!("/other/{i}"))).await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    for conn in &mut slow {
        conn.send(&[b'b'; 50]).await;
    }
    for conn in &mut slow {
        let got = conn.response().await.expect("an answer");
        assert_eq!(got.status, 200, "{}", got.text());
    }
    let lens: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.target == "/lazy-body")
        .map(|r| (r.header("x-lazy-body-len").map(str::to_owned), r.body.len()))
        .collect();
    assert_eq!(lens.len(), SLOW);
    assert!(
        lens.iter().all(|l| *l == (Some("100".to_owned()), 100)),
        "{lens:?}"
    );
    let log = proxy.log();
    assert!(!log.contains("asking for a new runner"), "{log}");
    assert_eq!(log.matches("runner ready").count(), 1, "{log}");
}

/// A runner that accepts one connection at a time (an SDK's connection
/// cap reached) with `pool_size` 3 and `restart_after_timeouts` 1: the
/// calls on connections it never accepted time out (503), but the runner
/// read none of them, so it is not replaced; the next call is served.
#[tokio::test]
async fn calls_a_full_backlog_never_read_do_not_restart_the_runner() {
    let up = Upstream::start().await;
    let (cmd, mut env) = bad("scripted");
    env["BAD_RUNNER_MAX_CONNECTIONS"] = json!("1");
    let pre_req = json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])});
    let mut c = config(cmd, env, json!([route("r", "/*", up.addr, pre_req)]));
    c["ext-plugin"]["pool_size"] = json!(3);
    c["ext-plugin"]["restart_after_timeouts"] = json!(1);
    c["ext-plugin"]["call_timeout_ms"] = json!(1000);
    c["ext-plugin"]["standby"] = json!(false);
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(1);
    // The readiness check's connection is closed: the one place is free.
    assert_eq!(get(&proxy.url("/warm")).await.status, 200);
    // Three at once: the pooled connection serves one; the two new ones
    // wait in the runner's backlog until their call times out.
    let statuses =
        crate::support::http::statuses_of((0..3).map(|i| proxy.url(&format!("/pause?{i}")))).await;
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 503, 503], "{statuses:?}:\n{}", proxy.log());
    proxy.wait_log("the runner never read the call", 2);
    let log = proxy.log();
    assert!(!log.contains("asking for a new runner"), "{log}");
    assert_eq!(get(&proxy.url("/after")).await.status, 200);
    assert_eq!(proxy.log().matches("runner ready").count(), 1);
}
