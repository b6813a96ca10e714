//! What a plugin answers is applied whole or not at all, and is checked as
//! what a client sends is: the real proxy, the demo runner or the scripted
//! misbehaving runner, a real upstream. A rewrite the host cannot apply is
//! 500 naming the route (414 when the client's own target made it too long)
//! and never reaches the upstream; header lists past the bound are refused
//! without a panic; TRACE, an HTTP/1.1 request without `Host` and a coding
//! other than `chunked` are refused at the door.

use crate::support::conf::{bad, config, demo, phase, route};
use crate::support::http::{get, ProxyProc, Upstream};
use crate::support::raw::RawConn;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// `GET target` with `host: test` on a fresh connection.
async fn raw_get(addr: SocketAddr, target: &str) -> crate::support::raw::RawResponse {
    crate::support::raw::get(addr, target, &[]).await
}

/// The error message of a JSON error answer.
fn error_msg(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        panic!("not JSON: {}", String::from_utf8_lossy(body));
    });
    v["error_msg"].as_str().unwrap().to_owned()
}

/// The scripted runner on route `r` (`/*`) in `phase_name`.
fn scripted_proxy(up: SocketAddr, phase_name: &str) -> ProxyProc {
    let (cmd, env) = bad("scripted");
    let plugins = json!({ phase_name: phase(&[("any", json!({}))]) });
    ProxyProc::start(&config(cmd, env, json!([route("r", "/*", up, plugins)])))
}

/// The issue's repro: `rewrite` removes `admin` and adds `user=alice`; a
/// client target 65,532 bytes long leaves no room for the rewritten one.
/// The upstream must never get `admin=1` without `user=alice`.
#[tokio::test]
async fn a_rewrite_the_client_made_too_long_is_414_and_never_half_applied() {
    let up = Upstream::start().await;
    let conf = json!({"args": {"user": "alice", "admin": null}, "headers": {"x-a": "1"}});
    let plugins = json!({"ext-plugin-pre-req": phase(&[("rewrite", conf)])});
    let mut c = config(
        demo(),
        json!({}),
        json!([route("api", "/api/*", up.addr, plugins)]),
    );
    c["max_request_header_bytes"] = json!(131_072);
    let proxy = ProxyProc::start(&c);
    let target = |len: usize| {
        let head = "/api/x?admin=1&p=";
        format!("{head}{}", "a".repeat(len - head.len()))
    };
    // The rewritten target is 3 bytes longer: 65,533 fits, 65,535 does not.
    let fits = raw_get(proxy.addr, &target(65_530)).await;
    assert_eq!(fits.status, 200, "{}", fits.text());
    let seen = up.last();
    assert!(
        seen.target.ends_with("&user=alice") && !seen.target.contains("admin="),
        "{}",
        &seen.target[..40]
    );
    assert_eq!(seen.header("x-a"), Some("1"));
    let before = up.requests().len();
    for len in [65_532, 65_534] {
        let got = raw_get(proxy.addr, &target(len)).await;
        assert_eq!(got.status, 414, "{len}: {}", got.text());
        assert!(error_msg(&got.body).contains("route api"), "{}", got.text());
    }
    assert_eq!(up.requests().len(), before, "nothing reached the upstream");
}

/// A rewrite whose own arguments cannot fit in a URI is the plugin's
/// fault: 500 naming the route, nothing forwarded.
#[tokio::test]
async fn a_rewrite_too_long_by_itself_is_500() {
    let up = Upstream::start().await;
    let conf = json!({"args": {"big": "b".repeat(70_000)}});
    let plugins = json!({"ext-plugin-pre-req": phase(&[("rewrite", conf)])});
    let proxy = ProxyProc::start(&config(
        demo(),
        json!({}),
        json!([route("api", "/*", up.addr, plugins)]),
    ));
    let got = get(&proxy.url("/x?admin=1")).await;
    assert_eq!(got.status, 500, "{}", got.text());
    let msg = error_msg(&got.body);
    assert!(
        msg.contains("route api") && msg.contains("ext-plugin-pre-req"),
        "{msg}"
    );
    assert!(up.requests().is_empty());
}

/// A plugin that builds a path from client data: what the router would
/// refuse from a client (a backslash, a control byte, no leading `/`, `..`
/// above the root) refuses the rewrite whole: 500, not the original path
/// forwarded with the rewrite's headers.
#[tokio::test]
async fn a_rewritten_path_the_router_would_refuse_is_500() {
    let up = Upstream::start().await;
    let proxy = scripted_proxy(up.addr, "ext-plugin-pre-req");
    proxy.wait_runner_ready(1);
    for to in [
        "%2Fa%5Cb",
        "%2Fa%01b",
        "relative",
        "%2F..%2Fetc",
        "%2Fa%2F..%2F..%2Fb",
    ] {
        let got = get(&proxy.url(&format!("/set-path?to={to}"))).await;
        assert_eq!(got.status, 500, "{to}: {}", got.text());
        let msg = error_msg(&got.body);
        assert!(
            msg.contains("route r") && msg.contains("path"),
            "{to}: {msg}"
        );
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    let got = get(&proxy.url("/set-path?to=%2Fnew%20place%2F.%2Fx")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = up.last();
    assert_eq!(seen.target, "/new%20place/x?to=%2Fnew%20place%2F.%2Fx");
    assert_eq!(seen.header("x-rewritten"), Some("yes"));
}

/// A `Host` a client could not send is refused from a plugin too.
#[tokio::test]
async fn a_rewritten_host_that_is_not_a_host_is_500() {
    let up = Upstream::start().await;
    let proxy = scripted_proxy(up.addr, "ext-plugin-pre-req");
    proxy.wait_runner_ready(1);
    for to in ["a%20b", "a%2Fb", "user%40h", "h%3A99999", "a..b"] {
        // The same value from a client is 400.
        let host = to
            .replace("%20", " ")
            .replace("%2F", "/")
            .replace("%40", "@")
            .replace("%3A", ":");
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(
            format!("GET /x HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(
            conn.response().await.unwrap().status,
            400,
            "client Host {host:?}"
        );
        for then in ["", "&then=delete"] {
            let got = get(&proxy.url(&format!("/set-host?to={to}{then}"))).await;
            assert_eq!(got.status, 500, "{to}{then}: {}", got.text());
            assert!(error_msg(&got.body).contains("Host"), "{}", got.text());
        }
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    let got = get(&proxy.url("/set-host?to=good.example%3A8080")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.last().header("host"), Some("good.example:8080"));
}

/// An upstream that answers `/cookies` with 99 `Set-Cookie` beside `Date`,
/// `Server`, `Content-Type` and `Content-Length`, and anything else with
/// `x-answer-headers` set to the path's last segment (the number of
/// headers the scripted runner's response phase then answers with).
async fn header_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let mut resp = http::Response::builder()
                        .header("server", "test")
                        .header("content-type", "text/plain");
                    if path == "/cookies" {
                        for i in 0..99 {
                            resp = resp.header("set-cookie", format!("c{i}=v"));
                        }
                    } else {
                        let n = path.rsplit('/').next().unwrap_or("0").to_owned();
                        resp = resp.header("x-answer-headers", n);
                    }
                    Ok::<_, std::convert::Infallible>(
                        resp.body(Full::new(Bytes::from("hi"))).unwrap(),
                    )
                },
            );
            tokio::spawn(async move {
                // Past hyper's 100 fields: the proxy forwards what it accepts.
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(1000)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Header lists past what a plugin may send (8,192) are refused whole, in
/// every place a plugin sends one (stop, rewrite, response phase): 500
/// naming the route, no panic, and the proxy serves on. Within the bound
/// they are applied.
#[tokio::test]
async fn plugin_header_lists_past_the_bound_are_500_without_a_panic() {
    let up = Upstream::start().await;
    let proxy = scripted_proxy(up.addr, "ext-plugin-pre-req");
    proxy.wait_runner_ready(1);
    for path in [
        "/stop-headers?n=25000",
        "/rewrite-headers?n=30000",
        "/stop-headers?n=8193",
    ] {
        let got = get(&proxy.url(path)).await;
        assert_eq!(got.status, 500, "{path}: {}", got.text());
        let msg = error_msg(&got.body);
        assert!(msg.contains("route r") && msg.contains("headers"), "{msg}");
    }
    assert!(up.requests().is_empty());
    // Read raw: an HTTP client library refuses that many fields.
    let got = raw_get(proxy.addr, "/stop-headers?n=8192").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-h8191"), Some("v"));
    // (The test upstream reads at most 100 fields.)
    let got = get(&proxy.url("/rewrite-headers?n=50")).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().header("x-h49"), Some("v"));

    let answers = header_upstream().await;
    let resp = scripted_proxy(answers, "ext-plugin-post-resp");
    resp.wait_runner_ready(1);
    let got = get(&resp.url("/n/30000")).await;
    assert_eq!(got.status, 500, "{}", got.text());
    assert!(error_msg(&got.body).contains("ext-plugin-post-resp"));
    let got = raw_get(resp.addr, "/n/8000").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-h7999"), Some("v"));
    for p in [&proxy, &resp] {
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
}

/// hyper counts header fields (100 by default): a 500-byte request with
/// 101 fields and an upstream answer with 99 `Set-Cookie` and four more
/// are served; past `max_request_headers` a request is 431.
#[tokio::test]
async fn more_than_a_hundred_header_fields_are_served() {
    let answers = header_upstream().await;
    let mut c = config(
        demo(),
        json!({}),
        json!([route("r", "/*", answers, json!({}))]),
    );
    c["max_request_headers"] = json!(300);
    let proxy = ProxyProc::start(&c);
    let fields = |n: usize| (0..n).map(|i| format!("h{i}: v\r\n")).collect::<String>();
    // `host` and `connection` are two of them.
    for (n, status) in [(99, 200), (298, 200), (299, 431)] {
        let mut conn = RawConn::connect(proxy.addr).await;
        let req = format!(
            "GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n{}\r\n",
            fields(n)
        );
        conn.send(req.as_bytes()).await;
        assert_eq!(conn.response().await.unwrap().status, status, "{n} fields");
    }
    let got = raw_get(proxy.addr, "/cookies").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.headers_named("set-cookie").len(), 99);
}

/// At the door, on every route, before any runner call: TRACE is 405 (it
/// would echo what plugins add), an HTTP/1.1 request without `Host` is 400
/// (RFC 9112 section 3.2; HTTP/1.0 needs none), and a `Transfer-Encoding`
/// other than one final `chunked` is 501 (nginx's answers).
#[tokio::test]
async fn trace_no_host_and_unknown_codings_are_refused_at_the_door() {
    let up = Upstream::start().await;
    let plugins =
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers": {"x-secret": "s"}}))])});
    let proxy = ProxyProc::start(&config(
        demo(),
        json!({}),
        json!([route("r", "/*", up.addr, plugins)]),
    ));
    let cases: [(&str, u16); 6] = [
        ("TRACE /x HTTP/1.1\r\nhost: t\r\n\r\n", 405),
        ("GET /x HTTP/1.1\r\n\r\n", 400),
        ("GET http://t/x HTTP/1.1\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        ("POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 501),
        ("GET /x HTTP/1.0\r\n\r\n", 200),
    ];
    for (req, status) in cases {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(req.as_bytes()).await;
        let got = conn.response().await.expect("an answer");
        assert_eq!(got.status, status, "{req:?}: {}", got.text());
        if status == 405 {
            let allow = got.header("allow").unwrap();
            assert!(allow.contains("GET") && !allow.contains("TRACE"), "{allow}");
        }
    }
    // Only the HTTP/1.0 request reached the upstream.
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    // A chunked body alone is fine.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"POST /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        .await;
    assert_eq!(conn.response().await.unwrap().status, 200);
    assert_eq!(up.last().body, "hi");
}
