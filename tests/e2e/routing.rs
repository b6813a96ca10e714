//! Route matching as APISIX's default router does it, through the real
//! proxy with the example runner: `hosts` (exact, wildcard, the port in
//! `Host`, case, the absolute-form target), routes with hosts before
//! routes without whatever the priority, `priority`, `remote_addrs` (a
//! client bound to 127.0.0.2), `vars` (each operator family, nesting,
//! negation), routes with hosts and vars from a real etcd, and WebSocket
//! (`enable_websocket`) through to an echoing upstream. Each route
//! answers with the `say` plugin and its own id, so the answer tells which
//! route matched.

use crate::support::conf::{config, demo, phase};
use crate::support::etcd::Etcd;
use crate::support::http::ProxyProc;
use crate::support::raw::{get_on, RawConn, RawResponse};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A route answered by `say` with its id; `fields` adds the route's
/// matching fields (`hosts`, `vars`, ...).
fn said(id: &str, uri: &str, fields: Value) -> Value {
    let mut r = json!({
        "id": id,
        "uri": uri,
        "upstream": {"nodes": {"127.0.0.1:1": 1}},
        "plugins": {"ext-plugin-pre-req": phase(&[("say", json!({"body": id}))])},
    });
    for (k, v) in fields.as_object().cloned().unwrap_or_default() {
        r[k] = v;
    }
    r
}

/// `GET target` with `Host: host` (and `headers`), from `from` when given.
async fn ask(
    proxy: &ProxyProc,
    from: Option<&str>,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let conn = match from {
        Some(ip) => {
            let from: SocketAddr = format!("{ip}:0").parse().unwrap();
            RawConn::connect_from(from, proxy.addr).await
        }
        None => RawConn::connect(proxy.addr).await,
    };
    get_on(conn, target, host, headers).await
}

/// Which route answered (its id), or the status when none did.
async fn route_of(proxy: &ProxyProc, target: &str, host: &str, headers: &[(&str, &str)]) -> String {
    answered(ask(proxy, None, target, host, headers).await)
}

fn answered(got: RawResponse) -> String {
    match got.status {
        200 => got.text(),
        other => other.to_string(),
    }
}

fn start(routes: Value) -> ProxyProc {
    ProxyProc::start(&config(demo(), json!({}), routes))
}

#[tokio::test]
async fn hosts_exact_wildcard_port_case_and_before_every_hostless_route() {
    let proxy = start(json!([
        said("any", "/*", json!({"priority": 100})),
        said("any-x", "/x", json!({"priority": 100})),
        said("exact", "/*", json!({"host": "api.example.com"})),
        said("wild", "/*", json!({"hosts": ["*.example.com"]})),
        said(
            "deep-get",
            "/d/*",
            json!({"hosts": ["*.b.example.com"], "methods": ["POST"]})
        ),
        said("low", "/p/*", json!({"priority": -1})),
        said("high", "/p/*", json!({"priority": 7})),
        said("tie", "/p/*", json!({"priority": 7})),
    ]));
    for (target, host, want) in [
        ("/x", "api.example.com", "exact"),
        ("/x", "API.Example.COM:9080", "exact"),
        ("/x", "api.example.com.", "exact"),
        ("/x", "a.example.com", "wild"),
        ("/x", "a.b.c.example.com:1", "wild"),
        ("/d/1", "z.b.example.com", "wild"),
        ("/x", "example.com", "any-x"),
        ("/y", "example.com", "any"),
        ("/x", "other.org", "any-x"),
        ("/p/1", "other.org", "high"),
        ("http://api.example.com/x", "other.org", "exact"),
    ] {
        assert_eq!(
            route_of(&proxy, target, host, &[]).await,
            want,
            "{host} {target}"
        );
    }
}

#[tokio::test]
async fn remote_addrs_by_the_clients_address() {
    let proxy = start(json!([
        said(
            "two",
            "/r",
            json!({"remote_addrs": ["127.0.0.2", "10.0.0.0/8"]})
        ),
        said(
            "net",
            "/r",
            json!({"remote_addr": "127.0.0.0/24", "priority": -1})
        ),
        said(
            "ipmatch",
            "/v",
            json!({"vars": [["remote_addr", "ipmatch", ["127.0.0.3"]]]})
        ),
        said("rest", "/*", json!({})),
    ]));
    let from = |ip: &'static str, target: &'static str| {
        let proxy = &proxy;
        async move { answered(ask(proxy, Some(ip), target, "h", &[]).await) }
    };
    assert_eq!(from("127.0.0.2", "/r").await, "two");
    assert_eq!(from("127.0.0.1", "/r").await, "net");
    assert_eq!(from("127.0.1.1", "/r").await, "rest");
    assert_eq!(from("127.0.0.3", "/v").await, "ipmatch");
    assert_eq!(from("127.0.0.2", "/v").await, "rest");
}

#[tokio::test]
async fn vars_with_each_operator_family_and_nesting() {
    let proxy = start(json!([
        said(
            "eq-re",
            "/v",
            json!({"vars": [["arg_name", "==", "json"], ["http_x_a", "~~", "^a.*"]]})
        ),
        said(
            "num",
            "/v",
            json!({"vars": [["arg_age", ">", 18], ["arg_age", "!", ">=", 65]], "priority": -1})
        ),
        said(
            "or",
            "/v",
            json!({"vars": ["OR", ["cookie_team", "in", ["red", "blue"]], ["http_x_b", "~*", "^yes$"]], "priority": -2})
        ),
        said(
            "ne-missing",
            "/v",
            json!({"vars": [["arg_skip", "~=", "1"], ["request_method", "==", "GET"], ["uri", "==", "/v"]], "priority": -3})
        ),
        said("rest", "/*", json!({})),
    ]));
    for (target, headers, want) in [
        ("/v?name=json", &[("x-a", "abc")][..], "eq-re"),
        ("/v?name=json", &[("x-a", "Abc")][..], "ne-missing"),
        ("/v?age=30", &[][..], "num"),
        ("/v?age=70", &[][..], "ne-missing"),
        ("/v?age=abc", &[][..], "ne-missing"),
        ("/v?skip=1&age=1", &[("cookie", "a=1; team=blue")][..], "or"),
        ("/v?skip=1", &[("x-b", "YES")][..], "or"),
        ("/v?skip=1", &[("x-b", "yes!")][..], "rest"),
        ("/v?skip=0", &[][..], "ne-missing"),
    ] {
        assert_eq!(
            route_of(&proxy, target, "h", headers).await,
            want,
            "{target} {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_with_hosts_and_vars_from_etcd_are_served() {
    let etcd = Etcd::start();
    let node = crate::etcd::node(&etcd);
    let route = |id: &str, fields: Value| {
        let mut r = said(id, "/e", fields);
        r.as_object_mut().unwrap().remove("id");
        r
    };
    etcd.put(
        "/apisix/routes/h",
        &route("h", json!({"hosts": ["*.example.com"]})),
    );
    // A variable extplug does not compute: skipped, not read as missing
    // (where `~=` would hold and the route take every request to /e).
    etcd.put(
        "/apisix/routes/post",
        &route(
            "post",
            json!({"vars": [["post_arg_user", "~=", "root"]], "priority": 10}),
        ),
    );
    etcd.put(
        "/apisix/routes/v",
        &route("v", json!({"vars": [["arg_k", "==", "1"]]})),
    );
    etcd.put(
        "/apisix/routes/plain",
        &route("plain", json!({"priority": -1})),
    );
    etcd.put(
        "/apisix/routes/bad",
        &route("bad", json!({"vars": [["arg_k", "~~", "a(?=b)"]]})),
    );
    crate::etcd::until(&node, "/e?k=1", "the vars route from etcd", |g| {
        g.text() == "v"
    })
    .await;
    assert_eq!(route_of(&node, "/e", "a.example.com", &[]).await, "h");
    assert_eq!(
        route_of(&node, "/e?k=1", "a.example.com", &[]).await,
        "h",
        "hosts first"
    );
    assert_eq!(route_of(&node, "/e", "other", &[]).await, "plain");
    node.wait_log("`vars[0]`: the regex", 1);
    node.wait_log("\"post_arg_user\" is not a variable extplug computes", 1);
}

/// What the WebSocket upstream saw of each request: its `Upgrade` header
/// and the `x-h` a plugin adds.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// An upstream that accepts `Upgrade: websocket` with `101` and echoes
/// every byte of the upgraded connection; a request without `Upgrade` gets
/// `426`.
async fn echo_upstream() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                let upgrade = header("upgrade");
                record
                    .lock()
                    .unwrap()
                    .push((upgrade.clone(), header("x-h")));
                let mut resp = http::Response::new(Empty::<Bytes>::new());
                if upgrade.is_some() {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(on.await.unwrap());
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                    let h = resp.headers_mut();
                    h.insert("upgrade", "websocket".parse().unwrap());
                    h.insert("connection", "Upgrade".parse().unwrap());
                    h.insert(
                        "sec-websocket-accept",
                        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
                    );
                } else {
                    *resp.status_mut() = http::StatusCode::UPGRADE_REQUIRED;
                }
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    (addr, seen)
}

/// Asks `path` for a WebSocket; the status, and the upgraded connection
/// on a `101`.
async fn websocket(
    proxy: &ProxyProc,
    path: &str,
    key: Option<&str>,
) -> (u16, Option<TokioIo<hyper::upgrade::Upgraded>>) {
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let mut req = http::Request::get(path)
        .header("host", "ws.example.com")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13");
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        send.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("an answer within 20 s")
    .unwrap();
    let status = resp.status().as_u16();
    if status != 101 {
        return (status, None);
    }
    assert_eq!(resp.headers().get("upgrade").unwrap(), "websocket");
    let upgraded = hyper::upgrade::on(resp)
        .await
        .expect("the client side upgraded");
    (status, Some(TokioIo::new(upgraded)))
}

/// A tunnel through `path`, checked by one echo of `bytes`.
async fn tunnel(proxy: &ProxyProc, path: &str, bytes: &[u8]) -> TokioIo<hyper::upgrade::Upgraded> {
    let (status, io) = websocket(proxy, path, None).await;
    assert_eq!(status, 101);
    let mut io = io.unwrap();
    echoes(&mut io, bytes).await;
    io
}

/// Sends `bytes` through the tunnel and reads them back.
async fn echoes(io: &mut TokioIo<hyper::upgrade::Upgraded>, bytes: &[u8]) {
    io.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(std::time::Duration::from_secs(20), io.read_exact(&mut back))
        .await
        .expect("the echo within 20 s")
        .unwrap();
    assert_eq!(back, bytes);
}

#[tokio::test]
async fn websocket_tunnels_after_the_request_phases_and_only_when_enabled() {
    let (up, seen) = echo_upstream().await;
    let route = |id: &str, uri: &str, websocket: bool| {
        json!({
            "id": id, "uri": uri, "enable_websocket": websocket,
            "upstream": {"nodes": {up.to_string(): 1}},
            "plugins": {"ext-plugin-pre-req": phase(&[
                ("key-auth", json!({"keys": ["k"]})),
                ("rewrite", json!({"headers": {"x-h": "v"}})),
            ])},
        })
    };
    let proxy = start(json!([
        route("ws", "/ws", true),
        route("off", "/off", false)
    ]));
    let (status, io) = websocket(&proxy, "/ws", Some("k")).await;
    assert_eq!(status, 101);
    let mut io = io.unwrap();
    // A masked text frame, "hello", as a browser sends it; the tunnel
    // carries bytes, whatever they are.
    let frame = [
        0x81,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    for _ in 0..3 {
        echoes(&mut io, &frame).await;
    }
    drop(io);
    assert_eq!(
        seen.lock().unwrap().clone(),
        [(Some("websocket".to_owned()), Some("v".to_owned()))],
        "the upstream got the upgrade after the pre-request phase"
    );
    let (status, _) = websocket(&proxy, "/ws", None).await;
    assert_eq!(status, 401, "a plugin refuses before any upgrade");
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (status, _) = websocket(&proxy, "/off", Some("k")).await;
    assert_eq!(status, 426, "enable_websocket off: Upgrade is dropped");
    assert_eq!(seen.lock().unwrap()[1], (None, Some("v".to_owned())));
    // The proxy still serves after the tunnel closed.
    assert_eq!(
        route_of(&proxy, "/ws", "h", &[("x-api-key", "k")]).await,
        "426"
    );
}

#[tokio::test]
async fn a_websocket_tunnel_idle_past_the_read_timeout_is_closed() {
    let (up, _seen) = echo_upstream().await;
    let proxy = start(json!([{
        "id": "ws", "uri": "/ws", "enable_websocket": true,
        "upstream": {"nodes": {up.to_string(): 1}, "timeout": {"read": 0.5}},
    }]));
    let mut io = tunnel(&proxy, "/ws", b"ping").await;
    // Nothing more either way: the proxy closes the tunnel (EOF or reset).
    let mut rest = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), io.read(&mut rest))
        .await
        .expect("the idle tunnel closed within 20 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_websocket_tunnel_keeps_its_client_connection_slot_until_it_ends() {
    let (up, _seen) = echo_upstream().await;
    let mut c = config(
        demo(),
        json!({}),
        json!([{
            "id": "ws", "uri": "/*", "enable_websocket": true,
            "upstream": {"nodes": {up.to_string(): 1}},
        }]),
    );
    c["max_client_connections"] = json!(1);
    let proxy = ProxyProc::start(&c);
    let io = tunnel(&proxy, "/ws", b"x").await;
    // The one slot is the tunnel's: another client waits in the backlog.
    let addr = proxy.addr;
    let mut other =
        tokio::spawn(async move { answered(crate::support::raw::get(addr, "/plain", &[]).await) });
    let waited = tokio::time::timeout(std::time::Duration::from_millis(500), &mut other).await;
    assert!(
        waited.is_err(),
        "answered while the tunnel held the only slot: {waited:?}"
    );
    drop(io);
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), other)
        .await
        .expect("served once the tunnel ended")
        .unwrap();
    assert_eq!(got, "426", "the upstream's answer to a plain request");
}
