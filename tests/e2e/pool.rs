//! The host's runner connection pool: bounded (calls beyond `pool_size`
//! wait for a connection rather than opening their own), reused (no connect
//! per call), and safe when the runner closes a pooled connection.
//!
//! The scripted runner (`tests/fixtures/bad_runner.rs`) reports in `x-seen`
//! how many connections it accepted and how many were open at once.

use crate::support::conf::scripted;
use crate::support::http::{get, statuses_of, Upstream};
use serde_json::json;

/// The `accepted` and `open_max` counts the runner reported with each
/// request the upstream received (those it reported on).
fn connection_counts(up: &Upstream) -> Vec<(u64, u64)> {
    up.requests()
        .iter()
        .filter(|r| r.header("x-seen").is_some())
        .map(|r| {
            let seen = r.seen();
            (
                seen["accepted"].as_u64().expect("accepted"),
                seen["open_max"].as_u64().expect("open_max"),
            )
        })
        .collect()
}

/// Many more concurrent requests than the pool has connections, each call
/// taking 100 ms: all of them are answered (the extra callers waited for a
/// connection instead of failing), the runner never had more than
/// `pool_size` connections from the calls open at once, and it accepted no
/// connection per call.
#[tokio::test]
async fn calls_beyond_the_pool_wait_for_a_connection() {
    const POOL: u64 = 2;
    const CALLS: usize = 12;
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| {
        c["ext-plugin"]["pool_size"] = json!(POOL);
        c["ext-plugin"]["standby"] = json!(false);
    });
    proxy.wait_runner_ready(1);
    let url = proxy.url("/pause");
    let statuses = statuses_of((0..CALLS).map(|_| url.clone())).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}\n{}",
        proxy.log()
    );
    let counts = connection_counts(&up);
    assert_eq!(counts.len(), CALLS);
    // The supervisor's readiness check and the start-up check of the
    // chains open a connection or two of their own before any call.
    let (accepted, open_max) = counts.iter().copied().max().unwrap();
    assert!(
        open_max <= POOL + 1,
        "{open_max} connections open at once with pool_size {POOL}: {counts:?}"
    );
    assert!(
        accepted <= POOL + 2,
        "{accepted} connections for {CALLS} calls: {counts:?}"
    );
}

/// Sequential calls reuse one connection: the runner's count of accepted
/// connections does not grow with the calls.
#[tokio::test]
async fn calls_do_not_connect_each_time() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| {
        c["ext-plugin"]["standby"] = json!(false);
    });
    proxy.wait_runner_ready(1);
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/after")).await.status, 200);
    }
    let accepted: Vec<u64> = connection_counts(&up).iter().map(|c| c.0).collect();
    assert_eq!(accepted.len(), 10);
    assert!(
        accepted.iter().all(|a| *a == accepted[0]),
        "a connection per call: {accepted:?}"
    );
}

/// The runner closes the connection after answering: the next calls do not
/// fail on the closed pooled connection (it is detected, or the call is
/// sent again on a new one, since the runner took nothing), and go over a
/// new connection.
#[tokio::test]
async fn a_pooled_connection_the_runner_closed_is_not_used() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| {
        c["ext-plugin"]["pool_size"] = json!(1);
        c["ext-plugin"]["standby"] = json!(false);
    });
    proxy.wait_runner_ready(1);
    for round in 0..5 {
        let closed = get(&proxy.url("/close-after")).await;
        assert_eq!(closed.status, 200, "round {round}: {}", proxy.log());
        // At once, before the host may have noticed the close, and again.
        for _ in 0..2 {
            let next = get(&proxy.url("/after")).await;
            assert_eq!(next.status, 200, "round {round}: {}", proxy.log());
        }
    }
    let accepted: Vec<u64> = connection_counts(&up).iter().map(|c| c.0).collect();
    // Each close costs one new connection, and only one.
    assert!(
        accepted.windows(2).all(|w| w[1] <= w[0] + 1),
        "{accepted:?}"
    );
    assert!(accepted.last() > accepted.first(), "{accepted:?}");
}

/// A chain that asks for the body during the call (EXTRA_INFO) waits for the
/// client, for as long as the client sends bytes within the body timeout,
/// and that wait is the client's time, not the runner's: it must not hold
/// the pool's place meanwhile, or `pool_size` slow clients stop every other
/// request. With `pool_size` 1 and such a client stalled, another request is
/// answered (it would wait the call timeout for a place and get 503), and
/// the slow one still completes when its body arrives.
#[tokio::test]
async fn a_call_waiting_for_a_slow_client_gives_its_place_back() {
    use crate::support::conf::{bad, config, phase, route};
    use crate::support::http::ProxyProc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = Upstream::start().await;
    let (cmd, env) = bad("scripted");
    let pre_req = json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])});
    let mut c = config(cmd, env, json!([route("r", "/*", up.addr, pre_req)]));
    c["ext-plugin"]["pool_size"] = json!(1);
    c["ext-plugin"]["call_timeout_ms"] = json!(500);
    c["ext-plugin"]["standby"] = json!(false);
    let proxy = ProxyProc::builder(&c)
        .log_filter("info,extplug::host::runner::client=debug")
        .start();
    proxy.wait_runner_ready(1);
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(
        b"POST /lazy-body HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\nconnection: close\r\n\r\n01234",
    )
    .await
    .unwrap();
    // The runner asked for the body: the call now waits for the client.
    proxy.wait_log("EXTRA_INFO", 1);
    for _ in 0..3 {
        let got = get(&proxy.url("/other")).await;
        assert_eq!(got.status, 200, "{}", proxy.log());
    }
    slow.write_all(b"56789").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        slow.read_to_end(&mut answer),
    )
    .await
    .expect("no answer within 20 s")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        proxy.log()
    );
    assert_eq!(up.last().header("x-lazy-body-len"), Some("10"));
}
