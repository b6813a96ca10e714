//! The real `extplug proxy` with a real runner (`demo-runner`, or the
//! misbehaving `bad-runner`) in front of a recording upstream in the test.

use crate::support::conf::{bad, config, demo, phase, route, scripted};
use crate::support::http::{alive, get, send, ProxyProc, Upstream};
use nix::sys::signal::Signal;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test]
async fn stop_rewrite_and_continue_with_the_demo_runner() {
    let up = Upstream::start().await;
    let routes = json!([
        route(
            "say",
            "/say",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("say", json!({"body":"stopped","status":418,"headers":{"x-a":"1"}}))])})
        ),
        route(
            "say200",
            "/say200",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("say", json!({"body":"ok"}))])})
        ),
        route(
            "auth",
            "/auth/*",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("key-auth", json!({"keys":["k"]})), ("rewrite", json!({"path":"/rewritten","headers":{"x-h":"v","x-gone":null},"args":{"n":"1"}}))])})
        ),
    ]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let got = get(&proxy.url("/say")).await;
    assert_eq!(
        (got.status, got.header("x-a"), got.text().as_str()),
        (418, Some("1"), "stopped")
    );
    let got = get(&proxy.url("/say200")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert!(
        up.requests().is_empty(),
        "a stop never reaches the upstream"
    );
    let got = get(&proxy.url("/auth/x")).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.text(), r#"{"error":"missing or invalid key"}"#);
    let got = send(
        "GET",
        &proxy.url("/auth/x?keep=1"),
        &[("x-api-key", "k"), ("x-gone", "bye")],
        "",
    )
    .await;
    assert_eq!((got.status, got.text().as_str()), (200, "upstream says hi"));
    let r = up.last();
    assert_eq!(r.target, "/rewritten?keep=1&n=1");
    assert_eq!(r.header("x-h"), Some("v"));
    assert_eq!(r.header("x-gone"), None);
    assert_eq!(r.header("x-api-key"), Some("k"));
    // The runner's own log lines come through the proxy's, tagged with its pid.
    let runner = proxy.active_runner();
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("extplug::runner_output")
            && l.contains(&format!("pid={runner}"))
            && l.contains("runner listening")),
        "{log}"
    );
    let got = get(&proxy.url("/nowhere")).await;
    assert_eq!(
        (got.status, got.text().as_str()),
        (404, r#"{"error_msg":"404 Route Not Found"}"#)
    );
}

#[tokio::test]
async fn stop_status_0_is_200_and_repeated_headers_are_kept() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |_| {});
    let got = get(&proxy.url("/status0")).await;
    assert_eq!(got.status, 200);
    let dup: Vec<_> = got
        .headers
        .get_all("x-dup")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(dup, vec!["a", "b"]);
    assert_eq!(got.text(), "zero");
}

#[tokio::test]
async fn every_part_of_a_rewrite_is_applied() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |_| {});
    let got = send(
        "POST",
        &proxy.url("/rewrite-all?keep=1&a=0&gone=x&keep=2&flag"),
        &[("x-del", "1"), ("x-change", "old"), ("x-keep", "k")],
        "old body",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-resp"), Some("yes"));
    assert_eq!(
        got.header("content-type"),
        Some("text/plain"),
        "protected: the upstream's stays"
    );
    assert_ne!(got.header("server"), Some("evil"));
    assert_eq!(got.header("location"), None);
    let r = up.last();
    assert_eq!(r.target, "/new%20path?keep=1&keep=2&flag&a=1&a=2");
    assert_eq!(r.header("x-del"), None);
    assert_eq!(r.header("x-change"), Some("changed"));
    assert_eq!(r.headers_named("x-add"), vec!["1", "2"]);
    assert_eq!(r.header("x-keep"), Some("k"));
    assert_eq!(r.header("host"), Some("rewritten.example"));
    assert_eq!(&r.body[..], b"new body");
    assert_eq!(r.header("content-length"), Some("8"));
}

#[tokio::test]
async fn what_the_runner_receives() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |_| {});
    let got = send(
        "PUT",
        &proxy.url("/hello%20there?xx=y&xx=z&&y=&&z"),
        &[("X-Multi", "1"), ("x-multi", "2")],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = up.last().seen();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/hello there");
    assert_eq!(
        seen["args"],
        json!([["xx", "y"], ["xx", "z"], ["y", ""], ["z", null]])
    );
    let headers = seen["headers"].as_array().unwrap();
    let multi: Vec<_> = headers
        .iter()
        .filter(|h| h[0] == "x-multi")
        .map(|h| h[1].clone())
        .collect();
    assert_eq!(multi, vec![json!("1"), json!("2")]);
    assert_eq!(seen["src_ip"], "127.0.0.1");
    assert_eq!(seen["src_ip_len"], 4);
    // The scripted runner declares `remote_addr`: it arrives with the call.
    assert_eq!(seen["extra_info"]["remote_addr"], "127.0.0.1");
    // Its environment: the configured variable and the expire time.
    assert_eq!(seen["env"], "from-config");
    assert_eq!(seen["expire"], "3600");
}

#[tokio::test]
async fn an_ipv6_client() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| c["listen"] = json!("[::1]:0"));
    let got = get(&proxy.url("/v6")).await;
    assert_eq!(got.status, 200);
    let seen = up.last().seen();
    assert_eq!(seen["src_ip"], "::1");
    assert_eq!(seen["src_ip_len"], 16);
}

#[tokio::test]
async fn both_request_phases_run_in_order() {
    let up = Upstream::start().await;
    let routes = json!([route(
        "r",
        "/both",
        up.addr,
        json!({
            "ext-plugin-pre-req": phase(&[("rewrite", json!({"headers":{"x-pre":"1"}}))]),
            "ext-plugin-post-req": phase(&[("inject-vars", json!({"vars":["http_x_pre"]}))]),
        })
    )]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    assert_eq!(get(&proxy.url("/both")).await.status, 200);
    let r = up.last();
    assert_eq!(r.header("x-pre"), Some("1"));
    assert_eq!(
        r.header("x-var-http_x_pre"),
        Some("1"),
        "post-req saw pre-req's change"
    );
}

#[test]
fn confs_refused_by_the_runner_refuse_the_start() {
    let routes = json!([route(
        "r",
        "/x",
        "127.0.0.1:1".parse().unwrap(),
        json!({"ext-plugin-pre-req": phase(&[("no-such-plugin", json!({}))])})
    )]);
    let out = crate::support::extplug_exits(&["proxy"], &config(demo(), json!({}), routes), "info");
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains(
            r#"config.json: route r: ext-plugin-pre-req: conf[0]: unknown plugin "no-such-plugin""#
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("listening"), "{}", out.stdout);
}

/// A call that times out: 503 on a strict route, on to the upstream on a
/// route that allows degradation.
#[tokio::test]
async fn degradation_on_and_off_when_the_runner_call_fails() {
    let up = Upstream::start().await;
    let strict = scripted(&up, |c| c["ext-plugin"]["call_timeout_ms"] = json!(300));
    let lenient = scripted(&up, |c| {
        c["ext-plugin"]["call_timeout_ms"] = json!(300);
        c["routes"][0]["plugins"]["ext-plugin-pre-req"]["allow_degradation"] = json!(true);
    });
    let started = Instant::now();
    let got = get(&strict.url("/slow")).await;
    assert_eq!(got.status, 503);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(up.requests().is_empty());
    let got = get(&lenient.url("/slow")).await;
    assert_eq!(got.status, 200, "degraded: on to the upstream");
    assert!(up.last().header("x-seen").is_none(), "unchanged");
    assert!(lenient.log().contains("degraded: going on unchanged"));
}

/// Kills the runner with `signal` while four clients send requests: every
/// request gets an answer, and the service comes back with a new runner.
async fn kill_the_runner_mid_traffic(signal: Signal) {
    let up = Upstream::start().await;
    let routes = json!([route(
        "r",
        "/k",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers":{"x-via":"runner"}}))])})
    )]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    proxy.wait_runner_ready(1);
    assert_eq!(get(&proxy.url("/k")).await.status, 200);
    let runner = proxy.active_runner();
    let url = proxy.url("/k");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..60 {
                    statuses.push(get(&url).await.status);
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner), signal).unwrap();
    for c in clients {
        for status in c.await.unwrap() {
            assert!(status == 200 || status == 503, "{status}");
        }
    }
    proxy.wait_runner_ready(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(&url).await;
        if got.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not resume: {}",
            proxy.log()
        );
    }
    assert_eq!(
        up.last().header("x-via"),
        Some("runner"),
        "the new runner's chain ran (re-prepared)"
    );
    let new_runner = proxy.active_runner();
    assert_ne!(new_runner, runner);
    assert!(
        proxy.log().matches("conf prepared").count() >= 2,
        "tokens were prepared again"
    );
}

#[tokio::test]
async fn the_runner_killed_mid_traffic_every_request_is_answered_and_service_resumes() {
    kill_the_runner_mid_traffic(Signal::SIGKILL).await;
}

#[tokio::test]
async fn the_runner_stopped_with_sigterm_mid_traffic_is_restarted() {
    kill_the_runner_mid_traffic(Signal::SIGTERM).await;
}

#[tokio::test]
async fn the_runner_crashing_mid_traffic_is_restarted() {
    // SIGABRT, what `abort()` and failed assertions in C code raise. (Not
    // SIGSEGV: the Rust runtime catches a SIGSEGV sent by `kill`, for its
    // stack-overflow check, and the process goes on.)
    kill_the_runner_mid_traffic(Signal::SIGABRT).await;
}

#[tokio::test]
async fn conf_token_not_found_is_recovered_by_one_retry() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |_| {});
    let got = get(&proxy.url("/tnf-once")).await;
    assert_eq!(got.status, 200);
    let seen = up.last().seen();
    assert_eq!(
        seen["prepares"], 2,
        "prepared, refused, prepared again, retried"
    );
    assert!(proxy.log().contains("token not found: preparing again"));
    // A runner that never finds its tokens: three attempts, then 503.
    let got = get(&proxy.url("/tnf-always")).await;
    assert_eq!(got.status, 503);
}

#[tokio::test]
async fn a_runner_that_ignores_sigterm_does_not_block_the_host() {
    let up = Upstream::start().await;
    let (cmd, env) = bad("ignore-sigterm");
    let mut proxy = ProxyProc::start(&config(
        cmd,
        env,
        json!([route(
            "r",
            "/x",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("say", json!({"body":"x"}))])})
        )]),
    ));
    proxy.wait_runner_ready(1);
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
    let runner = proxy.active_runner();
    proxy.signal(Signal::SIGTERM);
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(proxy.log().contains("runner ignored SIGTERM: killing it"));
    assert!(!alive(runner));
}

#[tokio::test]
async fn the_host_killed_with_sigkill_leaves_no_runner() {
    let up = Upstream::start().await;
    let (cmd, env) = bad("ignore-sigterm");
    let mut proxy = ProxyProc::start(&config(
        cmd,
        env,
        json!([route("r", "/x", up.addr, json!({}))]),
    ));
    proxy.wait_runner_ready(1);
    proxy.wait_standby_ready(1);
    let runners = proxy.children();
    assert_eq!(runners.len(), 2, "the active runner and its standby");
    assert!(runners.iter().all(|r| alive(*r)));
    proxy.signal(Signal::SIGKILL);
    proxy.wait_exit(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    for runner in runners {
        while alive(runner) {
            assert!(
                Instant::now() < deadline,
                "runner {runner} outlived the host"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_stops_the_runner() {
    let up = Upstream::start().await;
    let routes = json!([route(
        "r",
        "/*",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers":{"x-a":"1"}}))])})
    )]);
    let mut proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    proxy.wait_runner_ready(1);
    let runner = proxy.active_runner();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.requests().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal(Signal::SIGTERM);
    let got = in_flight.await.unwrap();
    assert_eq!((got.status, got.text().as_str()), (200, "upstream says hi"));
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    assert!(!alive(runner));
    assert!(proxy.log().contains("runner stopped"));
}

#[tokio::test]
async fn upstream_down_is_502_and_upstream_timeout_is_504() {
    let up = Upstream::start().await;
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut slow = route("slow", "/slow", up.addr, json!({}));
    slow["upstream"]["timeout"] = json!({"read": 0.5});
    let routes = json!([route("dead", "/dead", dead, json!({})), slow]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    assert_eq!(get(&proxy.url("/dead")).await.status, 502);
    assert_eq!(get(&proxy.url("/slow")).await.status, 504);
}

#[tokio::test]
async fn weighted_round_robin_over_nodes() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let routes = json!([{ "id": "r", "uri": "/rr", "upstream": { "nodes": { a.addr.to_string(): 2, b.addr.to_string(): 1 } } }]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    for _ in 0..6 {
        assert_eq!(get(&proxy.url("/rr")).await.status, 200);
    }
    assert_eq!((a.requests().len(), b.requests().len()), (4, 2));
}

#[test]
fn config_errors_are_reported_with_route_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"ext-plugin":{"cmd":["x"]},"routes":[{"id":"r1","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},
            "plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say"}]}}}]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["proxy", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("route `r1`")
            && stderr.contains("conf[0]")
            && stderr.contains("missing field `value`"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["check", "--config", "/no/such/file.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.json"));
}

#[tokio::test]
async fn a_call_that_outlives_its_timeout_gives_503_and_the_next_call_works() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| c["ext-plugin"]["call_timeout_ms"] = json!(300));
    let started = std::time::Instant::now();
    assert_eq!(get(&proxy.url("/slow")).await.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(proxy.log().contains("runner call timed out after 300 ms"));
    let got = get(&proxy.url("/after")).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().seen()["path"], "/after");
}

#[tokio::test]
async fn conf_token_not_found_drops_every_cached_token() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| {
        let other = route(
            "r2",
            "/r2/*",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])}),
        );
        c["routes"].as_array_mut().unwrap().push(other);
    });
    // Both chains were prepared at start; the first request reuses r2's.
    assert_eq!(get(&proxy.url("/r2/first")).await.status, 200);
    assert_eq!(up.last().seen()["prepares"], 2);
    // Route r: prepared, refused, prepared again.
    assert_eq!(get(&proxy.url("/tnf-once")).await.status, 200);
    assert_eq!(up.last().seen()["prepares"], 3);
    // Route r2's token went with it: prepared again too.
    assert_eq!(get(&proxy.url("/r2/second")).await.status, 200);
    assert_eq!(up.last().seen()["prepares"], 4);
}

#[test]
fn a_runner_program_that_does_not_exist_refuses_the_start_with_a_clear_message() {
    let routes = json!([route(
        "r",
        "/x",
        "127.0.0.1:1".parse().unwrap(),
        json!({"ext-plugin-pre-req": phase(&[("say", json!({"body":"x"}))])})
    )]);
    let c = config(vec!["/no/such/runner".into()], json!({}), routes);
    let out = crate::support::extplug_exits(&["proxy"], &c, "info");
    assert_eq!(out.code, Some(2), "{out:?}");
    // Said once (not also logged), and not retried.
    let message = r#"the runner did not start: cannot start "/no/such/runner": no such file"#;
    assert_eq!(out.stderr.matches(message).count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("runner down"), "{}", out.stderr);
}

#[tokio::test]
async fn a_frozen_runner_is_replaced_after_calls_keep_timing_out() {
    let up = Upstream::start().await;
    let routes = json!([route(
        "r",
        "/f",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers":{"x-via":"runner"}}))])})
    )]);
    let mut c = config(demo(), json!({}), routes);
    c["ext-plugin"]["call_timeout_ms"] = json!(300);
    c["ext-plugin"]["restart_after_timeouts"] = json!(2);
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(1);
    assert_eq!(get(&proxy.url("/f")).await.status, 200);
    let runner = proxy.active_runner();
    // Alive, but answers nothing: what a deadlocked plugin looks like.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner), Signal::SIGSTOP).unwrap();
    // A group stop takes effect when the thread that takes the signal runs:
    // on a busy machine the other threads may answer a call before that.
    wait_stopped(runner);
    for _ in 0..2 {
        let status = get(&proxy.url("/f")).await.status;
        assert_eq!(status, 503, "log:\n{}", proxy.log());
    }
    proxy.wait_runner_ready(2);
    assert!(proxy.log().contains("runner stopped answering: killing it"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&proxy.url("/f")).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "service did not resume: {}",
            proxy.log()
        );
    }
    assert_eq!(up.last().header("x-via"), Some("runner"));
    assert!(!alive(runner), "the frozen runner was killed");
}

#[tokio::test]
async fn the_access_log_is_there_at_debug_level() {
    let up = Upstream::start().await;
    let routes = json!([route("r", "/a", up.addr, json!({}))]);
    let proxy = ProxyProc::start_logging(
        &config(demo(), json!({}), routes),
        "info,extplug::access=debug",
    );
    assert_eq!(get(&proxy.url("/a?q=1")).await.status, 200);
    assert_eq!(get(&proxy.url("/none")).await.status, 404);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = proxy.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("extplug::access"))
            .collect();
        if lines.len() == 2 {
            assert!(
                lines[0].contains("method=GET target=/a?q=1 status=200"),
                "{}",
                lines[0]
            );
            assert!(lines[1].contains("target=/none status=404"), "{}", lines[1]);
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plugin_framing_headers_cannot_break_a_keep_alive_connection() {
    let up = Upstream::start().await;
    let say = json!({"body": "hello", "headers": {
        "content-length": "100",
        "transfer-encoding": "chunked",
        "connection": "x-hop",
        "x-hop": "1",
        "x-kept": "yes"
    }});
    let routes = json!([
        route(
            "say",
            "/say",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("say", say)])})
        ),
        route("up", "/up", up.addr, json!({})),
    ]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let mut conn = crate::support::raw::RawConn::connect(proxy.addr).await;
    // Two requests on one connection: the second is answered only if the
    // first answer's framing was the proxy's, not the plugin's.
    conn.send(b"GET /say HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let first = conn.response().await.expect("no first answer");
    assert_eq!((first.status, first.text().as_str()), (200, "hello"));
    assert_eq!(first.headers_named("content-length"), ["5"]);
    assert!(first.header("transfer-encoding").is_none());
    assert!(first.header("x-hop").is_none(), "named in connection");
    assert_eq!(first.header("x-kept"), Some("yes"));
    conn.send(b"GET /up HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let second = conn.response().await.expect("no second answer");
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, "upstream says hi")
    );
    assert_eq!(up.requests().len(), 1);
    assert!(
        proxy.log().contains("plugin header dropped"),
        "drops are logged:\n{}",
        proxy.log()
    );
}

/// Waits until every thread of `pid` is stopped (state `T` in
/// `/proc/PID/task/*/stat`).
fn wait_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .collect();
        let stopped = tasks.iter().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        });
        if stopped {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} did not stop");
        std::thread::sleep(Duration::from_millis(2));
    }
}
