//! The admin listener refuses what a browser could be made to send it,
//! with the real proxy: a `Host` that does not name it (DNS rebinding),
//! a POST from another origin (a cross-site form), and, with
//! `admin.token`, a request without the token (but the probes).

use crate::support::conf::{config, demo, route};
use crate::support::http::ProxyProc;
use crate::support::raw::{RawConn, RawResponse};
use serde_json::json;
use std::net::SocketAddr;

const TOKEN: &str = "an-admin-token-of-some-length";

/// One request to `admin` with these header lines.
async fn ask(admin: SocketAddr, method: &str, path: &str, headers: &[String]) -> RawResponse {
    let mut conn = RawConn::connect(admin).await;
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: 0\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    conn.send(req.as_bytes()).await;
    conn.response().await.expect("an answer")
}

fn proxy(admin: serde_json::Value) -> ProxyProc {
    // No request reaches the upstream here.
    let up = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut c = config(demo(), json!({}), json!([route("r", "/*", up, json!({}))]));
    c["admin"] = admin;
    c["ext-plugin"]["standby"] = json!(false);
    ProxyProc::start(&c)
}

#[tokio::test]
async fn a_host_that_does_not_name_the_listener_and_cross_site_posts_are_403() {
    let proxy = proxy(json!({"listen": "127.0.0.1:0", "hosts": ["metrics.internal"]}));
    proxy.wait_runner_ready(1);
    let admin = proxy.admin.unwrap();
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "metrics.internal".into(),
    ] {
        let got = ask(admin, "GET", "/metrics", &[format!("host: {host}")]).await;
        assert_eq!(got.status, 200, "{host}: {}", got.text());
    }
    // DNS rebinding: the page's own name, resolved to 127.0.0.1.
    let got = ask(
        admin,
        "GET",
        "/metrics",
        &[format!("host: evil.example:{port}")],
    )
    .await;
    assert_eq!(got.status, 403);
    assert!(got.text().contains("evil.example"), "{}", got.text());
    let got = ask(admin, "GET", "/metrics", &[]).await;
    assert_eq!(got.status, 400, "HTTP/1.1 without Host");
    // A cross-site form POST: the browser sends the page's origin.
    let host = format!("host: 127.0.0.1:{port}");
    for path in ["/reload", "/runners/restart"] {
        let got = ask(
            admin,
            "POST",
            path,
            &[host.clone(), "origin: http://evil.example".into()],
        )
        .await;
        assert_eq!(got.status, 403, "{path}: {}", got.text());
    }
    assert!(
        !proxy.log().contains("admin: reload asked"),
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains("admin: runner restart asked"));
    // The same origin, or none (curl), is served.
    let same = format!("origin: http://127.0.0.1:{port}");
    let got = ask(admin, "POST", "/reload", &[host.clone(), same]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = ask(admin, "POST", "/reload", &[host]).await;
    assert_eq!(got.status, 200, "{}", got.text());
}

#[tokio::test]
async fn a_token_guards_every_endpoint_but_the_probes() {
    let proxy = proxy(json!({"listen": "127.0.0.1:0", "token": TOKEN}));
    proxy.wait_runner_ready(1);
    let admin = proxy.admin.unwrap();
    let host = format!("host: localhost:{}", admin.port());
    let bearer = format!("authorization: Bearer {TOKEN}");
    for path in ["/healthz", "/readyz"] {
        let got = ask(admin, "GET", path, std::slice::from_ref(&host)).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
    }
    for (method, path) in [("GET", "/metrics"), ("POST", "/reload")] {
        let got = ask(admin, method, path, std::slice::from_ref(&host)).await;
        assert_eq!(got.status, 401, "{path}");
        assert_eq!(got.header("www-authenticate"), Some("Bearer"));
        let wrong = ask(
            admin,
            method,
            path,
            &[host.clone(), "authorization: Bearer nope".into()],
        )
        .await;
        assert_eq!(wrong.status, 401, "{path}");
        let got = ask(admin, method, path, &[host.clone(), bearer.clone()]).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
    }
    assert!(!proxy.log().contains(TOKEN), "the token is never logged");
}

#[test]
fn a_short_token_or_a_bad_host_name_is_a_config_error() {
    for (admin, field) in [
        (
            json!({"listen": "127.0.0.1:0", "token": "short"}),
            "admin.token",
        ),
        (
            json!({"listen": "127.0.0.1:0", "hosts": ["a b"]}),
            "admin.hosts[0]",
        ),
    ] {
        let mut c = config(demo(), json!({}), json!([]));
        c["admin"] = admin;
        let out = crate::support::extplug_exits(&["check", "--offline"], &c, "warn");
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(field), "{}", out.stderr);
    }
}
