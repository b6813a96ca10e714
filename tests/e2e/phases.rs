//! Variables, bodies, prefetch and the response phase, end to end: the real
//! proxy, the real runners, a recording upstream.

use crate::support::conf::{self, demo, phase, route};
use crate::support::http::{get, send, ProxyProc, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The shared configuration, with a longer call timeout: these calls carry bodies.
fn config(cmd: Vec<String>, env: Value, routes: Value) -> Value {
    let mut c = conf::config(cmd, env, routes);
    c["ext-plugin"]["call_timeout_ms"] = json!(5000);
    c
}

const ALL_VARS: [&str; 17] = [
    "remote_addr",
    "remote_port",
    "server_addr",
    "server_port",
    "scheme",
    "request_method",
    "request_uri",
    "uri",
    "args",
    "query_string",
    "host",
    "http_x_custom",
    "arg_a",
    "cookie_sid",
    "route_id",
    "request_id",
    "no_such_var",
];

async fn check_vars(prefetch: bool) {
    let up = Upstream::start().await;
    let conf = json!({ "vars": ALL_VARS, "prefetch": prefetch });
    let routes = json!([route(
        "vars",
        "/vars/*",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("inject-vars", conf)])})
    )]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let got = send(
        "GET",
        &proxy.url("/vars/p%20q?a=1&b=%2F"),
        &[
            ("host", "Example.com:8080"),
            ("x-custom", "v"),
            ("cookie", "x=1; sid=abc"),
        ],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    let r = up.last();
    let v = |name: &str| r.header(&format!("x-var-{name}")).map(str::to_owned);
    assert_eq!(v("remote_addr").as_deref(), Some("127.0.0.1"));
    assert!(v("remote_port").unwrap().parse::<u16>().unwrap() > 0);
    assert_eq!(v("server_addr").as_deref(), Some("127.0.0.1"));
    assert_eq!(v("server_port"), Some(proxy.addr.port().to_string()));
    assert_eq!(v("scheme").as_deref(), Some("http"));
    assert_eq!(v("request_method").as_deref(), Some("GET"));
    assert_eq!(v("request_uri").as_deref(), Some("/vars/p%20q?a=1&b=%2F"));
    assert_eq!(v("uri").as_deref(), Some("/vars/p q"));
    assert_eq!(v("args").as_deref(), Some("a=1&b=%2F"));
    assert_eq!(v("query_string").as_deref(), Some("a=1&b=%2F"));
    assert_eq!(v("host").as_deref(), Some("example.com"));
    assert_eq!(v("http_x_custom").as_deref(), Some("v"));
    assert_eq!(v("arg_a").as_deref(), Some("1"));
    assert_eq!(v("cookie_sid").as_deref(), Some("abc"));
    assert_eq!(v("route_id").as_deref(), Some("vars"));
    let id = v("request_id").unwrap();
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(
        v("no_such_var"),
        None,
        "an unknown var is null, not an error"
    );
}

#[tokio::test]
async fn every_variable_prefetched() {
    check_vars(true).await;
}

#[tokio::test]
async fn every_variable_fetched_lazily() {
    check_vars(false).await;
}

/// The proxy with the frame-counting relay in front of the real
/// `demo-runner`; returns the proxy and the temp dir holding the relay's
/// count file, `counts`.
fn relay(routes: Value) -> (ProxyProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let count_file = dir.path().join("counts");
    let env = json!({
        "BAD_RUNNER_MODE": "relay",
        "RELAY_TARGET": crate::support::demo_runner().display().to_string(),
        "RELAY_COUNT_FILE": count_file.display().to_string(),
    });
    let proxy = ProxyProc::start(&config(
        vec![crate::support::example("bad-runner").display().to_string()],
        env,
        routes,
    ));
    (proxy, dir)
}

/// Frame counts by type, as the relay wrote them.
fn counts(path: &std::path::Path) -> BTreeMap<u8, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn prefetch_makes_a_call_one_round_trip() {
    let up = Upstream::start().await;
    let vars = json!(["remote_addr", "uri", "route_id"]);
    let routes = json!([
        route(
            "pre",
            "/pre",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("inject-vars", json!({"vars": vars, "prefetch": true}))])})
        ),
        route(
            "lazy",
            "/lazy",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("inject-vars", json!({"vars": vars, "prefetch": false}))])})
        ),
    ]);
    let (proxy, dir) = relay(routes);
    let count_file = dir.path().join("counts");
    // Prepare both chains first, so that only calls are counted below.
    assert_eq!(get(&proxy.url("/pre")).await.status, 200);
    assert_eq!(get(&proxy.url("/lazy")).await.status, 200);
    let before = counts(&count_file);
    assert_eq!(get(&proxy.url("/pre")).await.status, 200);
    let after_pre = counts(&count_file);
    assert_eq!(get(&proxy.url("/lazy")).await.status, 200);
    let after_lazy = counts(&count_file);
    let delta = |a: &BTreeMap<u8, u64>, b: &BTreeMap<u8, u64>, k: u8| {
        b.get(&k).unwrap_or(&0) - a.get(&k).unwrap_or(&0)
    };
    // Declared: one HTTP_REQ_CALL and its answer, no EXTRA_INFO.
    assert_eq!(delta(&before, &after_pre, 2), 2);
    assert_eq!(delta(&before, &after_pre, 3), 0);
    // Not declared: the same call plus a request and an answer per variable.
    assert_eq!(delta(&after_pre, &after_lazy, 2), 2);
    assert_eq!(delta(&after_pre, &after_lazy, 3), 6);
    assert_eq!(up.last().header("x-var-route_id"), Some("lazy"));
}

#[tokio::test]
async fn request_bodies_of_every_kind_reach_the_plugin_and_the_upstream() {
    let up = Upstream::start().await;
    let routes = json!([
        route(
            "size",
            "/size",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("body-size", json!({}))])})
        ),
        route(
            "stream",
            "/stream",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers":{"x-a":"1"}}))])})
        ),
        route(
            "replace",
            "/replace",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("body-rewrite", json!({"request":"replaced!"}))])})
        ),
    ]);
    let mut c = config(demo(), json!({}), routes);
    c["max_request_body_bytes"] = json!(1000);
    let proxy = ProxyProc::start(&c);
    let cases: [(&str, &[u8]); 4] = [
        ("text/plain", b"plain text"),
        ("application/x-www-form-urlencoded", b"a=1&b=two+words"),
        ("application/json", br#"{"k":[1,2,3]}"#),
        ("text/plain", b""),
    ];
    for (ctype, body) in cases {
        let got = send(
            "POST",
            &proxy.url("/size"),
            &[("content-type", ctype)],
            body.to_vec(),
        )
        .await;
        assert_eq!(got.status, 200);
        let r = up.last();
        assert_eq!(
            r.header("x-body-size"),
            Some(body.len().to_string().as_str()),
            "{ctype}"
        );
        assert_eq!(&r.body[..], body, "the upstream gets the body untouched");
    }
    // Over the limit, for a plugin that needs the body: 413, never truncated.
    let n = up.requests().len();
    let got = send("POST", &proxy.url("/size"), &[], vec![b'x'; 1001]).await;
    assert_eq!(got.status, 413);
    assert_eq!(up.requests().len(), n, "nothing reached the upstream");
    // Exactly at the limit is fine.
    let got = send("POST", &proxy.url("/size"), &[], vec![b'x'; 1000]).await;
    assert_eq!(got.status, 200);
    // No plugin needs it: streamed whatever its size.
    let got = send("POST", &proxy.url("/stream"), &[], vec![b'y'; 5000]).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().body.len(), 5000);
    // Replaced: the new body with its own length.
    let got = send("POST", &proxy.url("/replace"), &[], "original").await;
    assert_eq!(got.status, 200);
    let r = up.last();
    assert_eq!(&r.body[..], b"replaced!");
    assert_eq!(r.header("content-length"), Some("9"));
}

#[tokio::test]
async fn the_response_phase_reads_and_changes_the_answer() {
    let up = Upstream::start().await;
    let post_resp = |entries: &[(&str, Value)]| json!({"ext-plugin-post-resp": phase(entries)});
    let routes = json!([
        route(
            "size",
            "/size/*",
            up.addr,
            post_resp(&[("body-size", json!({}))])
        ),
        route(
            "chunked",
            "/chunked/*",
            up.addr,
            post_resp(&[("body-size", json!({}))])
        ),
        route(
            "change",
            "/change",
            up.addr,
            post_resp(&[
                (
                    "response-headers",
                    json!({"set":{"x-new":"1"},"remove":["x-powered-by"],"status":203})
                ),
                ("body-rewrite", json!({"response":"replaced"})),
            ])
        ),
        route(
            "chunked-headers",
            "/chunked-headers",
            up.addr,
            post_resp(&[("response-headers", json!({"set":{"x-new":"1"}}))])
        ),
        route(
            "chunked-replaced",
            "/chunked-replaced",
            up.addr,
            post_resp(&[("body-rewrite", json!({"response":"short"}))])
        ),
        route(
            "keep",
            "/keep",
            up.addr,
            post_resp(&[("response-headers", json!({}))])
        ),
    ]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let got = get(&proxy.url("/size/a")).await;
    assert_eq!(
        (got.status, got.header("x-body-size"), got.text().as_str()),
        (200, Some("16"), "upstream says hi")
    );
    let got = get(&proxy.url("/chunked/a")).await;
    assert_eq!(got.header("x-body-size"), Some("33"));
    assert_eq!(got.text(), "chunk one, chunk two, chunk three");
    let got = get(&proxy.url("/change")).await;
    assert_eq!(got.status, 203);
    assert_eq!(got.header("x-new"), Some("1"));
    assert_eq!(got.header("x-powered-by"), None);
    assert_eq!(got.header("x-upstream"), Some("yes"));
    assert_eq!(got.text(), "replaced");
    assert_eq!(got.header("content-length"), Some("8"));
    // Headers changed, body still streamed from a chunked upstream.
    let got = get(&proxy.url("/chunked-headers")).await;
    assert_eq!(got.header("x-new"), Some("1"));
    assert_eq!(got.text(), "chunk one, chunk two, chunk three");
    // A chunked body replaced: sent with its own length.
    let got = get(&proxy.url("/chunked-replaced")).await;
    assert_eq!(
        (
            got.text().as_str(),
            got.header("content-length"),
            got.header("transfer-encoding")
        ),
        ("short", Some("5"), None)
    );
    // Nothing changed: the upstream's answer as it was.
    let got = get(&proxy.url("/keep")).await;
    assert_eq!(
        (got.status, got.header("x-powered-by"), got.text().as_str()),
        (200, Some("test"), "upstream says hi")
    );
}

#[tokio::test]
async fn all_three_phases_on_one_route() {
    let up = Upstream::start().await;
    let routes = json!([route(
        "all",
        "/all",
        up.addr,
        json!({
            "ext-plugin-pre-req": phase(&[("key-auth", json!({"keys":["k"]})), ("body-size", json!({}))]),
            "ext-plugin-post-req": phase(&[("inject-vars", json!({"vars":["http_x_body_size","route_id"]}))]),
            "ext-plugin-post-resp": phase(&[("response-headers", json!({"set":{"x-phase":"post-resp"}})), ("body-rewrite", json!({"response":"done"}))]),
        })
    )]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let got = send("POST", &proxy.url("/all"), &[], "12345").await;
    assert_eq!(got.status, 401, "key-auth stops before anything else");
    let got = send("POST", &proxy.url("/all"), &[("x-api-key", "k")], "12345").await;
    assert_eq!(
        (got.status, got.header("x-phase"), got.text().as_str()),
        (200, Some("post-resp"), "done")
    );
    let r = up.last();
    assert_eq!(r.header("x-body-size"), Some("5"));
    assert_eq!(r.header("x-var-http_x_body_size"), Some("5"));
    assert_eq!(r.header("x-var-route_id"), Some("all"));
    assert_eq!(&r.body[..], b"12345");
}

#[tokio::test]
async fn upstream_down_with_a_response_phase_is_502() {
    let dead: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = json!([route(
        "r",
        "/r",
        dead,
        json!({"ext-plugin-post-resp": phase(&[("body-size", json!({}))])})
    )]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    assert_eq!(get(&proxy.url("/r")).await.status, 502);
}

#[tokio::test]
async fn a_runner_that_closes_mid_extra_info_fails_only_that_call() {
    let up = Upstream::start().await;
    let proxy = conf::scripted(&up, |c| c["ext-plugin"]["call_timeout_ms"] = json!(5000));
    assert_eq!(get(&proxy.url("/close-mid-extra")).await.status, 503);
    assert!(
        proxy
            .log()
            .contains("runner connection failed during the call"),
        "{}",
        proxy.log()
    );
    let got = get(&proxy.url("/fine")).await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn a_body_asked_for_during_the_call_respects_the_limit() {
    let up = Upstream::start().await;
    let proxy = conf::scripted(&up, |c| {
        c["ext-plugin"]["call_timeout_ms"] = json!(5000);
        c["max_request_body_bytes"] = json!(100);
    });
    let got = send("POST", &proxy.url("/lazy-body"), &[], vec![b'a'; 100]).await;
    assert_eq!(got.status, 200);
    let r = up.last();
    assert_eq!(r.header("x-lazy-body-len"), Some("100"));
    assert_eq!(
        r.body.len(),
        100,
        "the body read for the runner still reaches the upstream"
    );
    let n = up.requests().len();
    let got = send("POST", &proxy.url("/lazy-body"), &[], vec![b'a'; 101]).await;
    assert_eq!(got.status, 413);
    assert_eq!(up.requests().len(), n);
    // No body in a GET: an empty one.
    let got = get(&proxy.url("/lazy-body")).await;
    assert_eq!(
        (got.status, up.last().header("x-lazy-body-len")),
        (200, Some("0"))
    );
}

#[tokio::test]
async fn concurrent_first_requests_share_one_prepare_conf() {
    let up = Upstream::start().await;
    let routes = json!([route(
        "r",
        "/r",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers":{"x-a":"1"}}))])})
    )]);
    let (proxy, dir) = relay(routes);
    let count_file = dir.path().join("counts");
    let url = proxy.url("/r");
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200, "{}", proxy.log());
    }
    let counts = counts(&count_file);
    assert_eq!(
        counts.get(&1),
        Some(&2),
        "one PREPARE_CONF and its answer: {counts:?}"
    );
    assert_eq!(
        counts.get(&2),
        Some(&40),
        "20 calls and their answers: {counts:?}"
    );
}

#[tokio::test]
async fn a_head_answer_read_by_the_response_phase_keeps_its_length() {
    let up = Upstream::start().await;
    let routes = json!([route(
        "r",
        "/h",
        up.addr,
        json!({"ext-plugin-post-resp": phase(&[("body-size", json!({}))])})
    )]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let got = send("HEAD", &proxy.url("/h"), &[], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("x-body-size"),
        Some("0"),
        "a HEAD answer has no body"
    );
    assert_eq!(
        got.header("content-length"),
        Some("16"),
        "the GET's length, as the upstream said"
    );
    assert!(got.body.is_empty());
}

/// Posts `Content-Length: 100` with only 10 bytes to `path`, then stalls
/// (`close` false) or closes its writing half (`close` true).
async fn partial_post(
    addr: SocketAddr,
    path: &str,
    close: bool,
) -> crate::support::raw::RawResponse {
    let mut conn = crate::support::raw::RawConn::connect(addr).await;
    let head = format!("POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n0123456789");
    conn.send(head.as_bytes()).await;
    if close {
        conn.shutdown_write().await;
    }
    conn.response().await.expect("closed without an answer")
}

#[tokio::test]
async fn a_body_that_stalls_or_stops_is_408_or_400_and_never_forwarded() {
    let up = Upstream::start().await;
    let degraded = |entries: &[(&str, Value)]| {
        let mut p = phase(entries);
        p["allow_degradation"] = json!(true);
        json!({ "ext-plugin-pre-req": p })
    };
    let routes = json!([
        // The body is prefetched for the call.
        route(
            "declared",
            "/declared",
            up.addr,
            degraded(&[("body-size", json!({}))])
        ),
        // The body streams to the upstream.
        route("stream", "/stream", up.addr, json!({})),
    ]);
    let mut c = config(demo(), json!({}), routes);
    c["client_body_timeout_ms"] = json!(300);
    let proxy = ProxyProc::start(&c);
    for path in ["/declared", "/stream"] {
        let got = partial_post(proxy.addr, path, false).await;
        assert_eq!(got.status, 408, "{path} stalled: {}", got.text());
        let got = partial_post(proxy.addr, path, true).await;
        assert_eq!(got.status, 400, "{path} closed: {}", got.text());
    }
    // A whole body still goes through both.
    for path in ["/declared", "/stream"] {
        let got = send("POST", &proxy.url(path), &[], "0123456789").await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(up.last().body, "0123456789");
    }
    let seen: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        seen,
        ["/declared", "/stream"],
        "no partial body was forwarded"
    );
}

#[tokio::test]
async fn a_body_read_lazily_that_stalls_is_408_even_with_degradation() {
    let up = Upstream::start().await;
    let proxy = conf::scripted(&up, |c| {
        c["client_body_timeout_ms"] = json!(300);
        c["routes"][0]["plugins"]["ext-plugin-pre-req"]["allow_degradation"] = json!(true);
    });
    let got = partial_post(proxy.addr, "/lazy-body", false).await;
    assert_eq!(got.status, 408, "{}", got.text());
    let got = partial_post(proxy.addr, "/lazy-body", true).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(
        up.requests().is_empty(),
        "the request never goes on without its body: {:?}",
        up.requests()
    );
    // The same call with the whole body works.
    let got = send("POST", &proxy.url("/lazy-body"), &[], "0123456789").await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().header("x-lazy-body-len"), Some("10"));
}

#[tokio::test]
async fn an_upstream_body_cut_short_is_502_when_a_plugin_needs_it() {
    // An upstream that promises 100 bytes, sends 5, and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
                .await;
        }
    });
    let post_resp = json!({"ext-plugin-post-resp": phase(&[("body-size", json!({}))])});
    let routes = json!([route("cut", "/cut", addr, post_resp)]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let got = get(&proxy.url("/cut")).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(
        got.text().contains("upstream body failed"),
        "{}",
        got.text()
    );
}

/// RFC 9110 section 5.5: header values that plugins set in a stop, a
/// rewrite (request and response headers) and a response-phase answer
/// reach the client and the upstream byte for byte when they are UTF-8.
#[tokio::test]
async fn utf8_header_values_from_plugins_arrive_byte_for_byte() {
    let up = Upstream::start().await;
    let disposition = r#"attachment; filename="résumé.pdf""#;
    let headers = json!({"x-user": "José", "content-disposition": disposition});
    let routes = json!([
        route(
            "stop",
            "/stop",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("say", json!({"body": "hi", "headers": headers}))])})
        ),
        route(
            "rewrite",
            "/rewrite",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers": headers, "resp_headers": headers}))])})
        ),
        route(
            "response",
            "/response",
            up.addr,
            json!({"ext-plugin-post-resp": phase(&[("response-headers", json!({"set": headers}))])})
        ),
    ]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let exact = |got: &crate::support::http::Got, name: &str| {
        got.headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    };
    for path in ["/stop", "/rewrite", "/response"] {
        let got = get(&proxy.url(path)).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        assert_eq!(exact(&got, "x-user"), "José".as_bytes(), "{path}");
        assert_eq!(
            exact(&got, "content-disposition"),
            disposition.as_bytes(),
            "{path}"
        );
    }
    let requests = up.requests();
    assert_eq!(requests.len(), 2, "the stop never reaches the upstream");
    let rewritten = requests.iter().find(|r| r.target == "/rewrite").unwrap();
    assert_eq!(rewritten.header_bytes("x-user"), Some("José".as_bytes()));
    assert_eq!(
        rewritten.header_bytes("content-disposition"),
        Some(disposition.as_bytes())
    );
}

/// A client's header value that is not UTF-8 (Latin-1 bytes) reaches the
/// upstream unchanged; the runner, whose protocol carries text, sees it
/// with each invalid byte replaced by U+FFFD.
#[tokio::test]
async fn a_latin1_client_header_reaches_the_upstream_unchanged() {
    let up = Upstream::start().await;
    let proxy = conf::scripted(&up, |_| {});
    let mut conn = crate::support::raw::RawConn::connect(proxy.addr).await;
    conn.send(b"GET /latin HTTP/1.1\r\nhost: t\r\nx-latin: caf\xe9\r\nconnection: close\r\n\r\n")
        .await;
    let got = conn.response().await.expect("no answer");
    assert_eq!(got.status, 200, "{}", got.text());
    let r = up.last();
    assert_eq!(r.header_bytes("x-latin"), Some(&b"caf\xe9"[..]));
    let seen = r.seen();
    let pairs = seen["headers"].as_array().unwrap();
    assert!(pairs.contains(&json!(["x-latin", "caf\u{fffd}"])), "{seen}");
}
