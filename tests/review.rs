//! An adversarial review of the request pipeline (issue 7): raw requests
//! against the real proxy, the real demo-runner and a recording upstream.
//! Each test is an attack that must fail: a request reaching `/admin/*`'s
//! upstream without key-auth, the upstream getting a path or header the
//! router or the plugins did not see, or a header a plugin set being lost.

mod common;

use common::conf::{config, demo, phase, route};
use common::http::{ProxyProc, Upstream};
use common::raw::{self, RawConn};
use serde_json::{json, Value};

const KEY: &str = "the-admin-key";

/// `/public/*` (no plugin), `/admin/*` (key-auth, then `extra` plugins),
/// and a catch-all `/*`, all to `up`.
fn gateway(up: &Upstream, extra: &[(&str, Value)]) -> ProxyProc {
    let mut admin = vec![("key-auth", json!({"keys": [KEY]}))];
    admin.extend(extra.iter().cloned());
    let routes = json!([
        route("public", "/public/*", up.addr, json!({})),
        route(
            "admin",
            "/admin/*",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&admin)})
        ),
        route("all", "/*", up.addr, json!({})),
    ]);
    ProxyProc::start(&config(demo(), json!({}), routes))
}

/// Sends raw `request` bytes on a fresh connection; the answer's status, or
/// `None` when the proxy closed without one.
async fn raw_status(proxy: &ProxyProc, request: &str) -> Option<u16> {
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request.as_bytes()).await;
    conn.response().await.map(|r| r.status)
}

/// The identity header an auth plugin sets for the upstream must arrive,
/// whatever the client lists in its own `Connection` header: the client's
/// hop-by-hop list is about the client's headers, not the proxy's.
#[tokio::test]
async fn a_client_connection_header_cannot_strip_a_header_a_plugin_set() {
    let up = Upstream::start().await;
    let set = ("rewrite", json!({"headers": {"x-consumer": "alice"}}));
    let proxy = gateway(&up, &[set]);
    let got = raw::get(
        proxy.addr,
        "/admin/x",
        &[
            ("x-api-key", KEY),
            ("connection", "x-consumer"),
            ("x-consumer", "mallory"),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let r = up.last();
    assert_eq!(
        r.headers_named("x-consumer"),
        ["alice"],
        "the plugin's header, and only it"
    );
}

/// RFC 9112 section 3.2: a request with more than one `Host` is answered
/// 400; forwarded, the upstream could pick another host than the plugins saw.
#[tokio::test]
async fn two_host_headers_are_refused() {
    let up = Upstream::start().await;
    let proxy = gateway(&up, &[]);
    for request in [
        "GET /public/x HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nconnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: a.example\r\nHOST: a.example\r\nconnection: close\r\n\r\n",
    ] {
        assert_eq!(raw_status(&proxy, request).await, Some(400), "{request:?}");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // One host still works.
    let one = "GET /public/x HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n\r\n";
    assert_eq!(raw_status(&proxy, one).await, Some(200));
    assert_eq!(up.last().headers_named("host"), ["a.example"]);
}
