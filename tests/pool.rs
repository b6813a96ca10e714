//! The host's runner connection pool: bounded (calls beyond `pool_size`
//! wait for a connection rather than opening their own), reused (no connect
//! per call), and safe when the runner closes a pooled connection.
//!
//! The scripted runner (`tests/support/bad_runner.rs`) reports in `x-seen`
//! how many connections it accepted and how many were open at once.

mod common;

use common::conf::scripted;
use common::http::{get, Upstream};
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
    let calls = (0..CALLS).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { get(&url).await.status })
    });
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
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
