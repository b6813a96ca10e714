//! The admin listener with real processes: the proxy, its runner (the
//! scripted bad-runner or the demo runner), a real upstream. `/healthz`,
//! `/readyz` while the runner is up and while it restarts, `/metrics` values
//! moving with traffic and faults, JSON logs, and the demo's admin URL.

use crate::support::conf::{bad, config, demo, phase, route};
use crate::support::http::{get, metric_value as value, metrics, send, ProxyProc, Upstream};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The admin listener on any free port. Without a standby runner: these
/// tests find the runner among the proxy's children and count its restarts
/// one process at a time (failover has its own tests, tests/load/failover.rs).
fn with_admin(mut c: Value) -> Value {
    c["admin"] = json!({ "listen": "127.0.0.1:0" });
    c["ext-plugin"]["standby"] = json!(false);
    c
}

fn admin_url(proxy: &ProxyProc, path: &str) -> String {
    format!("http://{}{path}", proxy.admin.expect("an admin listener"))
}

#[tokio::test]
async fn metrics_move_with_traffic_and_faults() {
    let up = Upstream::start().await;
    let (cmd, env) = bad("scripted");
    let pre_req = json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])});
    // POST /slow: the same timeout on a phase that allows degradation.
    let mut degrade = phase(&[("any", json!({}))]);
    degrade["allow_degradation"] = json!(true);
    let mut d = route(
        "d",
        "/slow",
        up.addr,
        json!({"ext-plugin-pre-req": degrade}),
    );
    d["methods"] = json!(["POST"]);
    let mut c = with_admin(config(
        cmd,
        env,
        json!([route("r", "/*", up.addr, pre_req), d]),
    ));
    // `/slow` answers after 5 s: a timeout. No restart after timeouts.
    c["ext-plugin"]["call_timeout_ms"] = json!(300);
    c["ext-plugin"]["restart_after_timeouts"] = json!(0);
    let proxy = ProxyProc::start(&c);

    assert_eq!(get(&admin_url(&proxy, "/healthz")).await.status, 200);
    let ready = get(&admin_url(&proxy, "/readyz")).await;
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));

    let before = metrics(&proxy).await;
    assert_eq!(
        value(
            &before,
            r#"extplug_runner_up{protocol="capnp",runner="default"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &before,
            r#"extplug_headers_dropped_total{reason="protected"}"#
        ),
        0.0
    );
    // Prepared at start (preflight), once per chain.
    assert_eq!(
        value(
            &before,
            r#"extplug_conf_prepared_total{protocol="capnp",runner="default"}"#
        ),
        2.0
    );
    // No series for what never happened: no etcd configured, no status a
    // route has not answered yet.
    let names: Vec<&String> = before.keys().collect();
    assert!(
        !names.iter().any(|n| n.starts_with("extplug_etcd_up")
            || n.starts_with("extplug_routes_skipped")
            || n.starts_with("extplug_requests_total")
            || n.starts_with("extplug_runner_calls_total")),
        "{names:?}"
    );
    // The process metrics a Prometheus user expects.
    assert!(value(&before, "process_resident_memory_bytes") > 1e6);
    assert!(value(&before, "process_open_fds") >= 3.0);
    assert!(value(&before, "process_max_fds") >= value(&before, "process_open_fds"));
    assert!(before.contains_key("process_cpu_seconds_total"));

    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/ok")).await.status, 200);
    }
    // Three protected response headers (content-type, server, location).
    assert_eq!(get(&proxy.url("/rewrite-all")).await.status, 200);
    let open = metrics(&proxy).await;
    assert_eq!(
        value(
            &open,
            r#"extplug_runner_connections{protocol="capnp",runner="default"}"#
        ),
        1.0
    );
    assert_eq!(get(&proxy.url("/slow")).await.status, 503);
    assert_eq!(send("POST", &proxy.url("/slow"), &[], "").await.status, 200);

    let m = metrics(&proxy).await;
    assert_eq!(
        value(&m, r#"extplug_requests_total{route="r",status="200"}"#),
        4.0
    );
    assert_eq!(
        value(&m, r#"extplug_requests_total{route="r",status="503"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"extplug_request_duration_seconds_count{route="r"}"#),
        5.0
    );
    let calls = |result: &str| {
        value(
            &m,
            &format!(
                r#"extplug_runner_calls_total{{phase="ext-plugin-pre-req",result="{result}",runner="default"}}"#
            ),
        )
    };
    assert_eq!(calls("ok"), 4.0);
    assert_eq!(calls("timeout"), 2.0);
    assert_eq!(
        value(
            &m,
            r#"extplug_degraded_total{phase="ext-plugin-pre-req",route="d"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&m, r#"extplug_requests_total{route="d",status="200"}"#),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_call_duration_seconds_count{phase="ext-plugin-pre-req",runner="default"}"#
        ),
        6.0
    );
    assert_eq!(
        value(&m, r#"extplug_headers_dropped_total{reason="protected"}"#),
        3.0
    );
    // One connection, reused by the sequential calls, then dropped by the
    // timed-out call (a late answer must not be read by the next call).
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_connections{protocol="capnp",runner="default"}"#
        ),
        0.0
    );

    // SIGKILL the runner: one restart, counted with its cause; up again.
    let runner = proxy.children();
    assert_eq!(runner.len(), 1, "{runner:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    proxy.wait_runner_ready(2);
    let m = metrics(&proxy).await;
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_restarts_total{cause="exited",protocol="capnp",runner="default"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_up{protocol="capnp",runner="default"}"#
        ),
        1.0
    );
    // The new runner prepares the chain again on the next request.
    assert_eq!(get(&proxy.url("/ok")).await.status, 200);
    let m = metrics(&proxy).await;
    assert_eq!(
        value(
            &m,
            r#"extplug_conf_prepared_total{protocol="capnp",runner="default"}"#
        ),
        3.0
    );
    assert_eq!(calls_of(&m, "ok"), 5.0);
}

fn calls_of(m: &HashMap<String, f64>, result: &str) -> f64 {
    value(
        m,
        &format!(
            r#"extplug_runner_calls_total{{phase="ext-plugin-pre-req",result="{result}",runner="default"}}"#
        ),
    )
}

#[tokio::test]
async fn admin_endpoints_answer_methods_and_unknown_paths_clearly() {
    let up = Upstream::start().await;
    let c = with_admin(config(
        demo(),
        json!({}),
        json!([route("r", "/*", up.addr, json!({}))]),
    ));
    let proxy = ProxyProc::start(&c);
    let wrong = send("POST", &admin_url(&proxy, "/metrics"), &[], "").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET"));
    let missing = get(&admin_url(&proxy, "/nothing")).await;
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("/nothing"), "{}", missing.text());
    // The configuration file again: reloaded, and counted.
    let reload = send("POST", &admin_url(&proxy, "/reload"), &[], "").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert!(
        reload.text().contains("configuration reloaded"),
        "{}",
        reload.text()
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        value(&m, r#"extplug_config_reloads_total{result="ok"}"#),
        1.0
    );
    // A request refused before routing has no route label.
    assert_eq!(get(&proxy.url("/a/%2e%2e/%2e%2e/x")).await.status, 400);
    // And one refused at the door (a method the protocol cannot carry).
    assert_eq!(send("CONNECT", &proxy.url("/x"), &[], "").await.status, 405);
    let m = metrics(&proxy).await;
    assert_eq!(
        value(&m, r#"extplug_requests_total{route="",status="400"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"extplug_requests_total{route="",status="405"}"#),
        1.0
    );
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_while_the_runner_restarts() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("started-once");
    // The first start is quick; every later one takes 2 s before the
    // runner itself starts (exec: the same pid).
    let script = format!(
        "if [ -e '{m}' ]; then sleep 2; fi; touch '{m}'; exec '{r}'",
        m = mark.display(),
        r = crate::support::demo_runner().display()
    );
    let cmd = vec!["/bin/sh".to_owned(), "-c".to_owned(), script];
    let c = with_admin(config(
        cmd,
        json!({}),
        json!([route("r", "/*", up.addr, json!({}))]),
    ));
    let proxy = ProxyProc::start(&c);
    assert_eq!(get(&admin_url(&proxy, "/readyz")).await.status, 200);
    let runner = proxy.children();
    assert_eq!(runner.len(), 1, "{runner:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Down, then starting for 2 s: not ready, and why.
    let deadline = Instant::now() + Duration::from_secs(10);
    let not_ready = loop {
        let got = get(&admin_url(&proxy, "/readyz")).await;
        if got.status == 503 {
            break got.text();
        }
        assert!(Instant::now() < deadline, "readyz stayed 200");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        not_ready.starts_with("not ready: runner `default` is "),
        "{not_ready}"
    );
    // Still alive meanwhile.
    assert_eq!(get(&admin_url(&proxy, "/healthz")).await.status, 200);
    proxy.wait_runner_ready(2);
    assert_eq!(get(&admin_url(&proxy, "/readyz")).await.status, 200);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_relayed_runner_lines() {
    let up = Upstream::start().await;
    // `say` with a content-length of its own: dropped (framing), counted.
    let say = json!({"ext-plugin-pre-req": phase(&[("say", json!({"body": "hi", "headers": {"content-length": "99"}}))])});
    let c = with_admin(config(
        demo(),
        json!({}),
        json!([route("say", "/say", up.addr, say)]),
    ));
    let proxy = ProxyProc::builder(&c)
        .arg("--log-format")
        .arg("json")
        .start();
    let got = get(&proxy.url("/say")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "hi"));
    assert_eq!(got.header("content-length"), Some("2"));
    let m = metrics(&proxy).await;
    assert_eq!(
        value(&m, r#"extplug_headers_dropped_total{reason="framing"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"extplug_requests_total{route="say",status="200"}"#),
        1.0
    );
    // The plugin header drop is logged (warn): wait for it, then read all.
    proxy.wait_log("plugin header dropped", 1);
    let log = proxy.log();
    let objects: Vec<Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("not a JSON object: {l:?}\nlog:\n{log}"))
        })
        .collect();
    let own = objects
        .iter()
        .find(|o| o["message"] == "proxy listening")
        .unwrap_or_else(|| panic!("no proxy line:\n{log}"));
    assert_eq!(own["level"], "INFO");
    assert!(own["timestamp"].is_string());
    let runner_pid = proxy.children()[0];
    let relayed: Vec<&Value> = objects
        .iter()
        .filter(|o| o["runner"] == "default")
        .collect();
    assert!(!relayed.is_empty(), "no relayed runner line:\n{log}");
    // The runner logged JSON itself: its own target, not the relay's.
    assert!(
        relayed.iter().any(|o| o["target"]
            .as_str()
            .is_some_and(|t| t != "extplug::runner_output")),
        "no runner object relayed as such:\n{log}"
    );
    for line in relayed {
        assert_eq!(line["pid"], runner_pid, "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
}

#[tokio::test]
async fn the_demo_prints_its_admin_url_and_serves_it() {
    let mut child = crate::support::spawn_demo();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    let mut second = String::new();
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    let admin: Option<SocketAddr> = second
        .strip_prefix("extplug admin listening on http://")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|a| a.parse().ok());
    let result = match admin {
        Some(admin) => {
            let health = get(&format!("http://{admin}/healthz")).await.status;
            let metrics = get(&format!("http://{admin}/metrics")).await.text();
            Ok((health, metrics))
        }
        None => Err(format!("no admin line: {first:?} {second:?}")),
    };
    crate::support::stop_gracefully(&mut child, crate::support::http::DROP_GRACE);
    let (health, metrics) = result.unwrap();
    assert_eq!(health, 200);
    assert!(
        metrics.contains("extplug_runner_up{protocol=\"capnp\",runner=\"default\"} 1"),
        "{metrics}"
    );
}

/// A reload that changes the runner's `env` (with a standby, as shipped)
/// replaces its processes: once the old ones are stopped, the runner is
/// still reported up (the old supervisor stopping must not set the gauge
/// of the runner's name to 0 under the new one), and ready.
#[tokio::test]
async fn runner_up_stays_1_after_a_reload_replaces_the_runner() {
    let up = Upstream::start().await;
    let pre_req =
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers": {"x-a": "1"}}))])});
    let mut c = with_admin(config(
        demo(),
        json!({"GEN": "1"}),
        json!([route("r", "/*", up.addr, pre_req)]),
    ));
    c["ext-plugin"]["standby"] = json!(true);
    let proxy = ProxyProc::start(&c);
    assert_eq!(
        value(
            &metrics(&proxy).await,
            r#"extplug_runner_up{protocol="capnp",runner="default"}"#
        ),
        1.0
    );

    c["ext-plugin"]["env"] = json!({"GEN": "2"});
    std::fs::write(
        proxy.dir.path().join("config.json"),
        serde_json::to_string_pretty(&c).unwrap(),
    )
    .unwrap();
    let reloaded = send("POST", &admin_url(&proxy, "/reload"), &[], &b""[..]).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    proxy.wait_log("runners the configuration no longer uses are stopped", 1);

    let m = metrics(&proxy).await;
    assert_eq!(
        value(
            &m,
            r#"extplug_runner_up{protocol="capnp",runner="default"}"#
        ),
        1.0,
        "{m:?}"
    );
    let ready = get(&admin_url(&proxy, "/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
}

/// With several runners, the supervisor's lines say which runner they are
/// about: an operator finds the active process of `auth` from the log
/// (its last "runner ready" line), and kills it.
#[tokio::test]
async fn runner_lifecycle_lines_name_their_runner() {
    let up = Upstream::start().await;
    let mut pre_req =
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers": {"x-a": "1"}}))])});
    pre_req["ext-plugin-pre-req"]["runner"] = json!("auth");
    let mut c = with_admin(config(
        demo(),
        json!({}),
        json!([route("r", "/*", up.addr, pre_req)]),
    ));
    c["runners"] = json!({"auth": {"cmd": demo(), "standby": false, "stop_grace_ms": 500}});
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(2);
    let log = proxy.log();
    let ready = |name: &str| {
        log.lines()
            .filter(|l| l.contains("runner ready") && l.contains(&format!("runner={name} ")))
            .count()
    };
    assert_eq!((ready("default"), ready("auth")), (1, 1), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("runner started") && l.contains("runner=auth ")),
        "{log}"
    );
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
}
