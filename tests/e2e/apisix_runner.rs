//! `extplug proxy` hosting runners over APISIX's wire (`"protocol":
//! "apisix"`): a runner in Python that shares no code with extplug
//! (`tests/fixtures/a6_runner.py`, on APISIX's own generated classes), and
//! our own `demo-runner`, which speaks both wires. Real upstream, real HTTP:
//! each action, EXTRA_INFO, the response phase, the token-not-found retry,
//! a chain refused at start, a killed runner replaced.

use crate::support::conf::{demo, phase, route};
use crate::support::http::{get, metric_value as value, metrics, send, ProxyProc, Upstream};
use crate::support::{extplug_exits, python};
use serde_json::{json, Value};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The Python runner's argv: the venv's python and the script.
fn a6_runner() -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/a6_runner.py");
    vec![python().display().to_string(), script.display().to_string()]
}

/// A configuration whose `ext-plugin` runner is `cmd`, spoken to over
/// APISIX's wire, with an admin listener for the metrics.
fn apisix_config(cmd: Vec<String>, routes: Value) -> Value {
    json!({
        "listen": "127.0.0.1:0",
        "admin": { "listen": "127.0.0.1:0" },
        "ext-plugin": {
            "cmd": cmd, "protocol": "apisix",
            "call_timeout_ms": 5000, "start_timeout_ms": 20000, "stop_grace_ms": 500
        },
        "routes": routes,
    })
}

const PREPARED: &str = r#"extplug_conf_prepared_total{protocol="apisix",runner="default"}"#;
const UP: &str = r#"extplug_runner_up{protocol="apisix",runner="default"}"#;

/// A route's `ext-plugin-pre-req` with `(plugin, conf)` entries.
fn pre_req(entries: &[(&str, Value)]) -> Value {
    json!({ "ext-plugin-pre-req": phase(entries) })
}

/// The unix sockets under `dir`, recursively.
fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            out.extend(sockets_in(&path));
        } else if kind.is_socket() {
            out.push(path);
        }
    }
    out
}

/// The Python runner's plugins on five routes.
fn python_routes(up: std::net::SocketAddr) -> Value {
    json!([
        route(
            "stop",
            "/stop",
            up,
            pre_req(&[(
                "stop",
                json!({"status": 403, "body": "denied by python", "headers": {"x-why": "python"}})
            )])
        ),
        route(
            "stop0",
            "/stop0",
            up,
            pre_req(&[("stop", json!({"status": 0, "body": "zero"}))])
        ),
        route(
            "rewrite",
            "/rw",
            up,
            pre_req(&[(
                "rewrite",
                json!({"path": "/rewritten", "headers": {"x-added": "1", "x-gone": null},
                       "args": {"drop": null, "added": "v"}, "resp_headers": {"x-resp": "r"}})
            )])
        ),
        route(
            "nothing",
            "/nothing",
            up,
            pre_req(&[("rewrite", json!({}))])
        ),
        route(
            "inspect",
            "/inspect",
            up,
            pre_req(&[("inspect", json!({"vars": ["remote_addr", "arg_q"]}))])
        ),
        route(
            "resp",
            "/resp",
            up,
            json!({"ext-plugin-post-resp": phase(&[("resp", json!({"status": 202, "header": ["x-resp-phase", "yes"]}))])})
        ),
    ])
}

/// Each action of a runner written for APISIX, through `extplug proxy`: a
/// stop (status 0 being 200), a rewrite (path, headers set and deleted,
/// args, response headers), a chain that changes nothing, EXTRA_INFO for
/// vars and the request body during the call, and the response phase
/// (the body asked with EXTRA_INFO, the answer's header list replacing the
/// upstream's). The runner made its socket 0766: the host checks the peer,
/// not the mode.
#[tokio::test]
async fn a_python_apisix_runner_serves_every_action() {
    let up = Upstream::start().await;
    let proxy = ProxyProc::start(&apisix_config(a6_runner(), python_routes(up.addr)));

    let socks = sockets_in(proxy.dir.path());
    assert!(
        !socks.is_empty(),
        "no runner socket under the proxy's TMPDIR"
    );
    for s in &socks {
        let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o766, "{}: the Python runner sets 0766", s.display());
    }

    let got = get(&proxy.url("/stop")).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.text(), "denied by python");
    assert_eq!(got.header("x-why"), Some("python"));
    let got = get(&proxy.url("/stop0")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "zero"));
    assert!(
        up.requests().is_empty(),
        "a stop never reaches the upstream"
    );

    let got = send(
        "GET",
        &proxy.url("/rw?keep=1&drop=2"),
        &[("x-gone", "bye"), ("x-kept", "k")],
        "",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "upstream says hi");
    assert_eq!(got.header("x-resp"), Some("r"));
    let seen = up.last();
    assert_eq!(seen.target, "/rewritten?keep=1&added=v");
    assert_eq!(seen.header("x-added"), Some("1"));
    assert_eq!(seen.header("x-gone"), None);
    assert_eq!(seen.header("x-kept"), Some("k"));

    let got = send("GET", &proxy.url("/nothing?a=1"), &[("x-h", "1")], "").await;
    assert_eq!(got.status, 200);
    let seen = up.last();
    assert_eq!(seen.target, "/nothing?a=1");
    assert_eq!(seen.header("x-h"), Some("1"));

    let got = send("POST", &proxy.url("/inspect?q=7"), &[], "hello python").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = up.last();
    assert_eq!(seen.header("x-a6-var-remote_addr"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-a6-var-arg_q"), Some("7"));
    assert_eq!(seen.header("x-a6-body"), Some("hello python"));
    assert_eq!(&seen.body[..], b"hello python", "the body still goes on");

    let got = get(&proxy.url("/resp")).await;
    assert_eq!(got.status, 202);
    assert_eq!(got.text(), "UPSTREAM SAYS HI");
    assert_eq!(got.header("x-resp-phase"), Some("yes"));
    assert_eq!(got.header("x-a6-resp-len"), Some("16"));
    assert_eq!(got.header("x-upstream"), Some("yes"), "kept in the list");
    assert_eq!(got.header("x-powered-by"), None, "left out of the list");

    let m = metrics(&proxy).await;
    assert_eq!(value(&m, UP), 1.0);
    assert_eq!(value(&m, PREPARED), 6.0, "each chain once, at start");
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_calls_total{phase="ext-plugin-pre-req",result="ok",runner="default"}"#
        ),
        5.0
    );
}

/// A runner that lost its tokens (as after a restart) answers
/// CONF_TOKEN_NOT_FOUND: the host prepares the chain again and sends the
/// call again, three attempts in all as APISIX does; past them the client
/// gets 503, or the upstream's answer on a route that allows degradation.
#[tokio::test]
async fn token_not_found_prepares_again_and_retries_three_times() {
    let up = Upstream::start().await;
    let mut routes = python_routes(up.addr);
    let mut degraded = route(
        "degraded",
        "/degraded",
        up.addr,
        pre_req(&[("stop", json!({"status": 403}))]),
    );
    degraded["plugins"]["ext-plugin-pre-req"]["allow_degradation"] = json!(true);
    routes.as_array_mut().unwrap().push(degraded);
    let proxy = ProxyProc::start(&apisix_config(a6_runner(), routes));
    let before = value(&metrics(&proxy).await, PREPARED);

    // Forgotten once: one more prepare, and the call's answer.
    let got = send("GET", &proxy.url("/stop"), &[("x-forget", "1")], "").await;
    assert_eq!((got.status, got.text().as_str()), (403, "denied by python"));
    let after_one = value(&metrics(&proxy).await, PREPARED);
    assert_eq!(after_one, before + 1.0);
    proxy.wait_log("token not found: preparing again", 1);

    // Forgotten at every call: three attempts (two more prepares), 503.
    let got = send("GET", &proxy.url("/stop"), &[("x-forget-always", "1")], "").await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(value(&metrics(&proxy).await, PREPARED), after_one + 2.0);
    assert!(up.requests().is_empty());

    // The same on a phase that allows degradation: the upstream answers.
    let got = send(
        "GET",
        &proxy.url("/degraded"),
        &[("x-forget-always", "1")],
        "",
    )
    .await;
    assert_eq!((got.status, got.text().as_str()), (200, "upstream says hi"));

    // And the runner still serves.
    assert_eq!(get(&proxy.url("/stop")).await.status, 403);
}

/// A chain the APISIX runner refuses (an unknown plugin) is refused at
/// start, by `check` and by `proxy`, naming the route, the phase and the
/// error code: APISIX's wire carries no reason.
#[test]
fn an_unknown_plugin_is_refused_at_start_with_route_phase_and_code() {
    let routes = json!([route(
        "r7",
        "/x",
        "127.0.0.1:1".parse().unwrap(),
        json!({"ext-plugin-post-req": phase(&[("stop", json!({})), ("nope", json!({}))])})
    )]);
    let config = apisix_config(a6_runner(), routes);
    for args in [&["check"][..], &["proxy"][..]] {
        let out = extplug_exits(args, &config, "off");
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("route r7: ext-plugin-post-req: error code BAD_REQUEST"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("listening"), "{args:?}: {out:?}");
        assert!(out.left_behind.is_empty(), "{args:?}: {out:?}");
    }
}

/// The Python runner killed: its standby takes over (or a new one is
/// started), and the chains are prepared again on it, since a token
/// belongs to the runner process that issued it.
#[tokio::test]
async fn a_killed_python_runner_is_replaced_and_its_chains_prepared_again() {
    let up = Upstream::start().await;
    let proxy = ProxyProc::start(&apisix_config(a6_runner(), python_routes(up.addr)));
    assert_eq!(get(&proxy.url("/stop")).await.status, 403);
    let before = value(&metrics(&proxy).await, PREPARED);
    let first = proxy.active_runner();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    proxy.wait_runner_ready(2);
    assert_ne!(proxy.active_runner(), first);
    let got = get(&proxy.url("/stop")).await;
    assert_eq!((got.status, got.text().as_str()), (403, "denied by python"));
    let got = get(&proxy.url("/resp")).await;
    assert_eq!((got.status, got.text().as_str()), (202, "UPSTREAM SAYS HI"));
    let m = metrics(&proxy).await;
    assert!(value(&m, PREPARED) >= before + 2.0, "{m:?}");
    // `exited`, or `start_failed` when it died within 5 s of its start.
    let restarts: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("extplug_runner_restarts_total{")
                && k.contains(r#"protocol="apisix",runner="default""#)
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(restarts, 1.0, "{m:?}");
}

/// Our own runner, which speaks both wires, hosted over APISIX's: a stop,
/// a rewrite, vars and bodies it declared as needs (asked with EXTRA_INFO
/// on this wire) and the response phase.
#[tokio::test]
async fn the_demo_runner_serves_over_apisix_wire_too() {
    let up = Upstream::start().await;
    let routes = json!([
        route(
            "say",
            "/say",
            up.addr,
            pre_req(&[("say", json!({"body": "said", "status": 418}))])
        ),
        route(
            "both",
            "/both",
            up.addr,
            json!({
                "ext-plugin-pre-req": phase(&[
                    ("inject-vars", json!({"vars": ["remote_addr"]})),
                    ("body-size", json!({})),
                    ("rewrite", json!({"headers": {"x-demo": "1"}}))
                ]),
                "ext-plugin-post-resp": phase(&[
                    ("body-size", json!({})),
                    ("response-headers", json!({"set": {"x-r": "1"}, "status": 201}))
                ])
            })
        ),
    ]);
    let proxy = ProxyProc::start(&apisix_config(demo(), routes));
    let got = get(&proxy.url("/say")).await;
    assert_eq!((got.status, got.text().as_str()), (418, "said"));

    let got = send("POST", &proxy.url("/both"), &[], "12345").await;
    assert_eq!(got.status, 201, "{}", got.text());
    assert_eq!(got.text(), "upstream says hi");
    assert_eq!(got.header("x-r"), Some("1"));
    assert_eq!(got.header("x-body-size"), Some("16"));
    let seen = up.last();
    assert_eq!(seen.header("x-var-remote_addr"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-body-size"), Some("5"));
    assert_eq!(seen.header("x-demo"), Some("1"));
    let m = metrics(&proxy).await;
    assert_eq!(value(&m, UP), 1.0);
}

/// A reload that turns the default runner from our demo-runner on extplug's
/// wire into the Python runner on APISIX's starts a new runner and client:
/// the routes are served by the Python runner from then on, and the
/// runner series move to the new wire's label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_runner_s_protocol() {
    let up = Upstream::start().await;
    let mut before = apisix_config(
        demo(),
        json!([route(
            "stop",
            "/stop",
            up.addr,
            pre_req(&[("say", json!({"body": "capnp", "status": 418}))])
        )]),
    );
    before["ext-plugin"]["protocol"] = json!("capnp");
    let proxy = ProxyProc::start(&before);
    let got = get(&proxy.url("/stop")).await;
    assert_eq!((got.status, got.text().as_str()), (418, "capnp"));

    let after = apisix_config(a6_runner(), python_routes(up.addr));
    assert!(
        tokio::task::block_in_place(|| proxy.reload(&after)),
        "{}",
        proxy.log()
    );
    let got = get(&proxy.url("/stop")).await;
    assert_eq!((got.status, got.text().as_str()), (403, "denied by python"));
    assert_eq!(value(&metrics(&proxy).await, UP), 1.0);
    // The old runner is stopped once the calls using it are done.
    let capnp_up = r#"extplug_runner_up{protocol="capnp",runner="default"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while value(&metrics(&proxy).await, capnp_up) != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old runner is still up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A runner over APISIX's wire that stops answering: each call times out
/// (`503`), and after `restart_after_timeouts` of them in a row the runner
/// is killed and replaced, as on extplug's wire; the other routes are
/// served again by its replacement.
#[tokio::test]
async fn a_hung_apisix_runner_times_out_and_is_replaced() {
    let up = Upstream::start().await;
    let mut routes = python_routes(up.addr);
    routes.as_array_mut().unwrap().push(route(
        "hang",
        "/hang",
        up.addr,
        pre_req(&[("sleep", json!({"ms": 60000}))]),
    ));
    let mut c = apisix_config(a6_runner(), routes);
    c["ext-plugin"]["call_timeout_ms"] = json!(1000);
    c["ext-plugin"]["restart_after_timeouts"] = json!(2);
    let proxy = ProxyProc::start(&c);
    let first = proxy.active_runner();
    for _ in 0..2 {
        assert_eq!(get(&proxy.url("/hang")).await.status, 503);
    }
    proxy.wait_runner_ready(2);
    assert_ne!(proxy.active_runner(), first);
    let got = get(&proxy.url("/stop")).await;
    assert_eq!((got.status, got.text().as_str()), (403, "denied by python"));
    let m = metrics(&proxy).await;
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_restarts_total{cause="unresponsive",protocol="apisix",runner="default"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_calls_total{phase="ext-plugin-pre-req",result="timeout",runner="default"}"#
        ),
        2.0
    );
}

/// Many requests at once through a small pool: APISIX's runners expect one
/// call at a time per connection, and the Python runner would fail a call
/// whose EXTRA_INFO answer came interleaved with another call's frame.
/// Every request is answered with its own values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_never_share_a_connection() {
    let up = Upstream::start().await;
    let mut c = apisix_config(a6_runner(), python_routes(up.addr));
    c["ext-plugin"]["pool_size"] = json!(3);
    let proxy = ProxyProc::start(&c);
    // The environment APISIX gives its runners (the runner logs it).
    proxy.wait_log("APISIX_CONF_EXPIRE_TIME=3600", 1);
    let calls = (0..60).map(|i| {
        let url = proxy.url(&format!("/inspect?q={i}"));
        tokio::spawn(async move { (i, send("POST", &url, &[], format!("body {i}")).await) })
    });
    for call in futures::future::join_all(calls).await {
        let (i, got) = call.unwrap();
        assert_eq!(got.status, 200, "{i}: {}", got.text());
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 60);
    for r in &seen {
        let q = r
            .target
            .strip_prefix("/inspect?q=")
            .expect("an inspect call");
        assert_eq!(r.header("x-a6-var-arg_q"), Some(q));
        assert_eq!(r.header("x-a6-body"), Some(format!("body {q}").as_str()));
    }
    let m = metrics(&proxy).await;
    assert!(
        value(
            &m,
            r#"extplug_runner_connections{protocol="apisix",runner="default"}"#
        ) <= 3.0,
        "{m:?}"
    );
}
