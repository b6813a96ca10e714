//! TLS to upstreams (`"scheme": "https"`) with a real TLS node (tokio-rustls,
//! certificates made by rcgen at test time): no verification by default
//! (logged once), verification against `tls.ca`, a wrong CA refused with a
//! clear 502 and log, SNI from `upstream_host`, mTLS with `client_cert`
//! and `client_key`, connections pooled, bad PEM refused with the field
//! named.

use crate::support::conf::{config, demo};
use crate::support::http::{get, ProxyProc};
use crate::support::tls::{Ca, TlsNode};
use crate::upstreams::{metric, metric_is};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// A route `/*` to `node` over https, with `fields` merged into its
/// upstream.
fn tls_route(node: SocketAddr, fields: Value) -> Value {
    let mut upstream = json!({"scheme": "https", "nodes": {node.to_string(): 1}});
    for (k, v) in fields.as_object().unwrap() {
        upstream[k] = v.clone();
    }
    json!({"id": "r", "uri": "/*", "upstream": upstream})
}

fn proxy(route: Value) -> ProxyProc {
    let mut c = config(demo(), json!({}), json!([route]));
    c["ext-plugin"]["standby"] = json!(false);
    ProxyProc::start(&c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_verify_any_certificate_serves_logged_once_and_pooled() {
    let node = TlsNode::start(&Ca::new("unknown CA"), None).await;
    let p = proxy(tls_route(node.addr, json!({})));
    for _ in 0..5 {
        let got = get(&p.url("/x")).await;
        assert_eq!(got.status, 200, "{}; log:\n{}", got.text(), p.log());
        assert_eq!(got.text(), "secure hi");
        // An IP address is sent no SNI (RFC 6066).
        assert_eq!(got.header("x-sni"), Some("none"));
    }
    assert_eq!(
        node.handshakes.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
    assert_eq!(
        p.log()
            .matches("does not verify their certificates")
            .count(),
        1,
        "{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_node_against_the_ca_and_sni_comes_from_upstream_host() {
    let ca = Ca::new("test CA");
    let node = TlsNode::start(&ca, None).await;
    let p = proxy(tls_route(
        node.addr,
        json!({"tls": {"verify": true, "ca": ca.pem()},
               "pass_host": "rewrite", "upstream_host": "localhost"}),
    ));
    let got = get(&p.url("/x")).await;
    assert_eq!(got.status, 200, "{}; log:\n{}", got.text(), p.log());
    assert_eq!(got.header("x-sni"), Some("localhost"));
    assert!(!p.log().contains("does not verify"), "{}", p.log());
    // The node's IP is in its certificate too: verified without SNI.
    let p = proxy(tls_route(
        node.addr,
        json!({"tls": {"verify": true, "ca": ca.pem()}}),
    ));
    assert_eq!(get(&p.url("/x")).await.status, 200, "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_signed_by_another_ca_is_refused_with_a_502_and_a_log_line() {
    let node = TlsNode::start(&Ca::new("the node's CA"), None).await;
    let other = Ca::new("another CA");
    let p = proxy(tls_route(
        node.addr,
        json!({"tls": {"verify": true, "ca": other.pem()}}),
    ));
    let got = get(&p.url("/x")).await;
    assert_eq!(got.status, 502);
    assert!(
        got.text().contains("upstream TLS handshake failed"),
        "{}",
        got.text()
    );
    assert!(p.log().contains("invalid peer certificate"), "{}", p.log());
    assert_eq!(node.handshakes.load(Ordering::SeqCst), 0);
    // The system's roots do not know the test CA either.
    let p = proxy(tls_route(node.addr, json!({"tls": {"verify": true}})));
    assert_eq!(get(&p.url("/x")).await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_sends_the_client_certificate() {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let node = TlsNode::start(&ca, Some(&client_ca)).await;
    let without = proxy(tls_route(node.addr, json!({})));
    assert_eq!(
        get(&without.url("/x")).await.status,
        502,
        "no client certificate"
    );
    let (cert, key) = client_ca.issue(&["gateway.internal"]);
    let with = proxy(tls_route(
        node.addr,
        json!({"tls": {"client_cert": cert, "client_key": key}}),
    ));
    let got = get(&with.url("/x")).await;
    assert_eq!(got.status, 200, "{}; log:\n{}", got.text(), with.log());
    assert_eq!(got.header("x-client-cert"), Some("yes"));
}

#[test]
fn bad_tls_values_are_refused_with_the_field_named() {
    let ca = Ca::new("CA");
    let (cert, _) = ca.issue(&["a.example"]);
    let node = SocketAddr::from(([127, 0, 0, 1], 9));
    for (fields, field) in [
        (
            json!({"tls": {"verify": true, "ca": "not a pem"}}),
            "upstream.tls.ca",
        ),
        (json!({"tls": {"ca": ca.pem()}}), "upstream.tls.ca"),
        (
            json!({"tls": {"client_cert": cert}}),
            "upstream.tls.client_key",
        ),
        (
            json!({"tls": {"client_cert": cert, "client_key": "x"}}),
            "upstream.tls.client_key",
        ),
        (json!({"tls": {"client_cert_id": "1"}}), "client_cert_id"),
        (json!({"scheme": "grpcs"}), "upstream.scheme"),
    ] {
        let c = config(demo(), json!({}), json!([tls_route(node, fields)]));
        let out = crate::support::extplug_exits(&["check", "--offline"], &c, "warn");
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(field), "{field}: {}", out.stderr);
    }
    let mut plain = tls_route(node, json!({"tls": {"verify": true}}));
    plain["upstream"]["scheme"] = json!("http");
    let c = config(demo(), json!({}), json!([plain]));
    let out = crate::support::extplug_exits(&["check", "--offline"], &c, "warn");
    assert!(
        out.stderr.contains("`upstream.tls` needs"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_probes_speak_tls_and_verify_by_default() {
    let ca = Ca::new("probe CA");
    let node = TlsNode::start(&ca, None).await;
    let checks = |verify: Value| {
        json!({"active": {"type": "https", "https_verify_certificate": verify,
                          "unhealthy": {"tcp_failures": 1}}})
    };
    let start = |verify: Value| {
        let mut c = config(
            demo(),
            json!({}),
            json!([tls_route(node.addr, json!({"checks": checks(verify)}))]),
        );
        c["ext-plugin"]["standby"] = json!(false);
        c["admin"] = json!({"listen": "127.0.0.1:0"});
        ProxyProc::start(&c)
    };
    let series = format!(
        "extplug_upstream_node_healthy{{node=\"{}\",upstream=\"routes/r\"}}",
        node.addr
    );
    // APISIX's default, `https_verify_certificate: true`: the system's
    // roots do not know the test CA, so the probes fail and say so.
    let p = start(json!(true));
    metric_is(&p, &series, 0.0).await;
    p.wait_log("upstream node unhealthy", 1);
    drop(p);
    // Not verified: the probes complete their handshakes and succeed.
    let before = node.handshakes.load(Ordering::SeqCst);
    let p = start(json!(false));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while node.handshakes.load(Ordering::SeqCst) < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no TLS probe; log:\n{}",
            p.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&p, &series).await, Some(1.0), "{}", p.log());
    assert!(!p.log().contains("upstream node unhealthy"), "{}", p.log());
}
