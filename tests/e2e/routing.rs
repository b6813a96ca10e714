//! Route matching as APISIX's default router does it, through the real
//! proxy with the example runner: `hosts` (exact, wildcard, the port in
//! `Host`, case, the absolute-form target), routes with hosts before
//! routes without whatever the priority, `priority`, `remote_addrs` (a
//! client bound to 127.0.0.2), `vars` (each operator family, nesting,
//! negation), and routes with hosts and vars from a real etcd. Each route
//! answers with the `say` plugin and its own id, so the answer tells which
//! route matched.

use crate::support::conf::{config, demo, phase};
use crate::support::etcd::Etcd;
use crate::support::http::ProxyProc;
use crate::support::raw::{get_on, RawConn, RawResponse};
use serde_json::{json, Value};
use std::net::SocketAddr;

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
}
