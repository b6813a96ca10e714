//! The upstream's `keepalive_pool` with the real proxy and a real upstream
//! that counts its connections: `size` bounds the idle connections kept
//! (per node, per proxy thread), `idle_timeout` closes idle ones, and
//! `requests` closes a connection after that many requests.

use crate::support::conf::{config, demo, route};
use crate::support::http::{get, statuses_of, ProxyProc};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An upstream that counts its open connections and the requests each
/// connection (by the proxy's port) carried; `/wait` answers after 200 ms
/// so that concurrent requests need connections of their own.
struct Counting {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    per_conn: Arc<Mutex<HashMap<u16, usize>>>,
}

impl Counting {
    async fn start() -> Counting {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let per_conn: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
        let (o, p) = (open.clone(), per_conn.clone());
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (open, per_conn) = (o.clone(), p.clone());
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            *per_conn.lock().unwrap().entry(peer.port()).or_insert(0) += 1;
                            async move {
                                if req.uri().path() == "/wait" {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from("ok"),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Counting {
            addr,
            open,
            per_conn,
        }
    }

    /// Waits (up to 20 s) until at most `n` connections are open.
    async fn wait_open_at_most(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.open.load(Ordering::SeqCst) > n {
            assert!(
                Instant::now() < deadline,
                "{} upstream connections stay open, over {n}",
                self.open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn proxy(up: SocketAddr, pool: serde_json::Value) -> ProxyProc {
    let mut r = route("r", "/*", up, json!({}));
    r["upstream"]["keepalive_pool"] = pool;
    let mut c = config(demo(), json!({}), json!([r]));
    c["ext-plugin"]["standby"] = json!(false);
    ProxyProc::builder(&c).env("EXTPLUG_THREADS", "1").start()
}

#[tokio::test]
async fn idle_connections_past_size_are_closed() {
    let up = Counting::start().await;
    let proxy = proxy(up.addr, json!({"size": 2, "idle_timeout": 60}));
    let statuses = statuses_of((0..20).map(|_| proxy.url("/wait"))).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(
        up.per_conn.lock().unwrap().len() > 2,
        "the burst needed more connections"
    );
    // One proxy thread: 2 idle connections kept, the others closed.
    up.wait_open_at_most(2).await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let up = Counting::start().await;
    let proxy = proxy(up.addr, json!({"idle_timeout": 1}));
    let statuses = statuses_of((0..5).map(|_| proxy.url("/wait"))).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    up.wait_open_at_most(0).await;
}

#[tokio::test]
async fn a_connection_carries_at_most_requests_requests() {
    let up = Counting::start().await;
    let proxy = proxy(up.addr, json!({"requests": 3}));
    for _ in 0..9 {
        assert_eq!(get(&proxy.url("/x")).await.status, 200);
    }
    let per_conn = up.per_conn.lock().unwrap().clone();
    assert!(per_conn.len() >= 3, "{per_conn:?}");
    assert!(per_conn.values().all(|&n| n <= 3), "{per_conn:?}");
    assert_eq!(per_conn.values().sum::<usize>(), 9);
}

#[test]
fn keepalive_pool_values_are_checked() {
    for (pool, field) in [
        (json!({"size": 0}), "keepalive_pool.size"),
        (json!({"requests": 0}), "keepalive_pool.requests"),
        (json!({"idle_timeout": -1}), "keepalive_pool.idle_timeout"),
        (json!({"sizes": 1}), "sizes"),
    ] {
        let mut r = route("r", "/*", SocketAddr::from(([127, 0, 0, 1], 9)), json!({}));
        r["upstream"]["keepalive_pool"] = pool;
        let out = crate::support::extplug_exits(
            &["check", "--offline"],
            &config(demo(), json!({}), json!([r])),
            "warn",
        );
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(field), "{}", out.stderr);
    }
}
