//! Hot reload and several runners, with the real `extplug proxy`, the real
//! example runner and a real upstream: SIGHUP re-reads `--config`; a bad
//! file, a chain the runner refuses or a changed `listen` is refused and the
//! old configuration keeps serving; reloads under load fail no request; a
//! route phase picks its runner by name, and a runner killed does not touch
//! the routes of another.

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::{children_of, get, ProxyProc, Upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `say` phase answering `body`.
fn say(body: &str) -> Value {
    json!({"ext-plugin-pre-req": phase(&[("say", json!({"body": body}))])})
}

/// The default runner's configuration with these routes. Without a
/// standby: these tests count runner processes to see what a reload kept,
/// started and stopped (failover has its own tests, tests/load/failover.rs).
fn with_routes(routes: Value) -> Value {
    let mut c = config(demo(), json!({}), routes);
    c["ext-plugin"]["standby"] = json!(false);
    c
}

/// The runner processes of the proxy whose environment has `name=value`.
fn runners_with(p: &ProxyProc, name: &str, value: &str) -> Vec<i32> {
    let needle = format!("{name}={value}");
    children_of(p.pid())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|kv| kv == needle.as_bytes())
        })
        .collect()
}

/// Counts of a load run: answers by outcome.
#[derive(Debug, Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// `tasks` keep-alive clients GETting `url` in a loop until `stop`; each
/// answer that is not 200 with a body `accept` takes is a failure.
fn load(
    url: String,
    tasks: usize,
    stop: Arc<AtomicBool>,
    accept: fn(&str) -> bool,
) -> (Arc<Counts>, Vec<tokio::task::JoinHandle<()>>) {
    let counts = Arc::new(Counts::default());
    let handles = (0..tasks)
        .map(|_| {
            let (url, stop, counts) = (url.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                let client: Client<_, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                while !stop.load(Ordering::Relaxed) {
                    let req = http::Request::get(&url).body(Empty::new()).unwrap();
                    let good = match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                            status == 200
                                && body.is_ok_and(|b| accept(&String::from_utf8_lossy(&b)))
                        }
                        Err(_) => false,
                    };
                    let counter = if good { &counts.ok } else { &counts.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (counts, handles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_or_a_refused_chain_is_refused_and_the_old_configuration_serves() {
    let up = Upstream::start().await;
    let good = with_routes(json!([route("a", "/a", up.addr, say("one"))]));
    let p = ProxyProc::start(&good);
    assert_eq!(get(&p.url("/a")).await.text(), "one");

    // Not JSON: refused with `extplug check`'s message.
    let check_message = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
            .args(["check", "--offline", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let message = stderr.trim().strip_prefix("extplug: ").unwrap().to_owned();
        // The same file name, so that the messages compare.
        message.replace(&path.display().to_string(), "CONFIG")
    };
    let bad = r#"{"ext-plugin": {"cmd": ["x"]}, "routes": [ {"id": "a"} ]}"#;
    assert!(!p.reload_text(bad), "a bad file is refused");
    let expected = check_message(bad);
    let log = p
        .log()
        .replace(&p.config_path().display().to_string(), "CONFIG");
    assert!(
        expected.contains("missing field `upstream`") && log.contains(&expected),
        "the log has check's message {expected:?}:\n{log}"
    );
    assert_eq!(get(&p.url("/a")).await.text(), "one", "the old one serves");

    // A chain the runner refuses: the runner's message, the old one serves.
    let refused = with_routes(json!([route(
        "a",
        "/a",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("no-such-plugin", json!({}))])})
    )]));
    assert!(!p.reload(&refused));
    let log = p.log();
    assert!(
        log.contains("route a: ext-plugin-pre-req:") && log.contains("no-such-plugin"),
        "{log}"
    );
    assert_eq!(get(&p.url("/a")).await.text(), "one");

    // A good file after the bad ones is taken.
    let two = with_routes(json!([route("a", "/a", up.addr, say("two"))]));
    assert!(p.reload(&two), "{}", p.log());
    assert_eq!(get(&p.url("/a")).await.text(), "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_chains_adds_and_removes_routes_and_keeps_the_runner() {
    let up = Upstream::start().await;
    let first = with_routes(json!([
        route("a", "/a", up.addr, say("one")),
        route("b", "/b", up.addr, say("bee")),
        route("k", "/k", up.addr, say("kept")),
        route("up", "/up", up.addr, json!({})),
    ]));
    let p = ProxyProc::start(&first);
    p.wait_runner_ready(1);
    let runner = children_of(p.pid());
    assert_eq!(runner.len(), 1, "one runner");
    assert_eq!(get(&p.url("/a")).await.text(), "one");
    assert_eq!(get(&p.url("/b")).await.text(), "bee");
    assert_eq!(get(&p.url("/up")).await.status, 200);
    let before = up.requests().len();

    assert_eq!(get(&p.url("/k")).await.text(), "kept");
    let second = with_routes(json!([
        route("a", "/a", up.addr, say("two")),
        route("c", "/c", up.addr, say("sea")),
        route("k", "/k", up.addr, say("kept")),
        route("up", "/up", up.addr, json!({})),
    ]));
    assert!(p.reload(&second), "{}", p.log());
    assert_eq!(get(&p.url("/k")).await.text(), "kept");
    // The runner logs each PREPARE_CONF with its key (route#phase#hash).
    let prepared = |route: &str| {
        p.log()
            .lines()
            .filter(|l| l.contains("conf prepared") && l.contains(&format!("key=\"{route}#")))
            .count()
    };
    assert_eq!(prepared("k"), 1, "an unchanged chain keeps its token");
    assert_eq!(prepared("a"), 2, "a changed chain is prepared again");
    assert_eq!(get(&p.url("/a")).await.text(), "two", "a changed chain");
    assert_eq!(get(&p.url("/b")).await.status, 404, "a removed route");
    assert_eq!(get(&p.url("/c")).await.text(), "sea", "an added route");
    assert_eq!(get(&p.url("/up")).await.status, 200, "an unchanged route");
    assert_eq!(up.requests().len(), before + 1);
    assert_eq!(
        children_of(p.pid()),
        runner,
        "the runner's settings did not change: it is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_listen_or_client_limits_is_refused() {
    let up = Upstream::start().await;
    let c = with_routes(json!([route("a", "/a", up.addr, say("one"))]));
    let p = ProxyProc::start(&c);
    let mut moved = with_routes(json!([route("a", "/a", up.addr, say("two"))]));
    moved["listen"] = json!("127.0.0.1:1");
    assert!(!p.reload(&moved));
    assert!(
        p.log()
            .contains("`listen` changed from 127.0.0.1:0 to 127.0.0.1:1")
            && p.log().contains("restart extplug"),
        "{}",
        p.log()
    );
    let mut limits = with_routes(json!([route("a", "/a", up.addr, say("two"))]));
    limits["max_client_connections"] = json!(3);
    assert!(!p.reload(&limits));
    assert!(p.log().contains("client connection limits"), "{}", p.log());
    assert_eq!(get(&p.url("/a")).await.text(), "one", "the old one serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let up = Upstream::start().await;
    let one = with_routes(json!([route("a", "/a", up.addr, say("one"))]));
    let two = with_routes(json!([route("a", "/a", up.addr, say("two"))]));
    let p = ProxyProc::start(&one);
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, tasks) = load(p.url("/a"), 8, stop.clone(), |b| b == "one" || b == "two");
    let p = Arc::new(p);
    let reloader = {
        let (p, one, two) = (p.clone(), one.clone(), two.clone());
        tokio::task::spawn_blocking(move || {
            for i in 0..20 {
                let c = if i % 2 == 0 { &two } else { &one };
                assert!(p.reload(c), "reload {i} refused:\n{}", p.log());
            }
        })
    };
    reloader.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    eprintln!("20 reloads under load: {ok} good answers, {failed} failed");
    assert!(ok > 0, "the load ran");
    assert_eq!(failed, 0, "{ok} good answers, {failed} failed");
    // The last reload (the 20th) put back `one`.
    assert_eq!(get(&p.url("/a")).await.text(), "one");
    let reloaded = p.reloads().0;
    assert_eq!(reloaded, 20);
}

/// Two runners: `default` and `other` (both the example runner; `WHICH`
/// tells their processes apart).
fn two_runners(up: SocketAddr, other_env: Value) -> Value {
    let mut c = with_routes(json!([
        route("a", "/a", up, say("on default")),
        route("b", "/b", up, {
            let mut s = say("on other");
            s["ext-plugin-pre-req"]["runner"] = json!("other");
            s
        }),
    ]));
    c["ext-plugin"]["env"] = json!({"WHICH": "default"});
    c["runners"] =
        json!({"other": {"cmd": demo(), "env": other_env, "stop_grace_ms": 500, "standby": false}});
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_does_not_touch_the_routes_on_another() {
    let up = Upstream::start().await;
    let p = ProxyProc::start(&two_runners(up.addr, json!({"WHICH": "other"})));
    p.wait_runner_ready(2);
    assert_eq!(get(&p.url("/a")).await.text(), "on default");
    assert_eq!(get(&p.url("/b")).await.text(), "on other");
    let other = runners_with(&p, "WHICH", "other");
    assert_eq!(other.len(), 1, "{:?}", children_of(p.pid()));

    let stop = Arc::new(AtomicBool::new(false));
    let (counts, tasks) = load(p.url("/a"), 8, stop.clone(), |b| b == "on default");
    // Let the load run, then kill the other runner.
    while counts.ok.load(Ordering::Relaxed) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(other[0]), Signal::SIGKILL).unwrap();
    // Until the other runner serves again (a new process).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(&p.url("/b")).await;
        let new = runners_with(&p, "WHICH", "other");
        if got.status == 200 && !new.is_empty() && new != other {
            assert_eq!(got.text(), "on other");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other runner did not recover:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed, 0,
        "routes on the default runner: {ok} ok, {failed} failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_upgrades_a_changed_runner_adds_and_removes_runners() {
    let up = Upstream::start().await;
    let p = ProxyProc::start(&two_runners(up.addr, json!({"WHICH": "other"})));
    p.wait_runner_ready(2);
    let default = runners_with(&p, "WHICH", "default");
    let other = runners_with(&p, "WHICH", "other");
    assert_eq!((default.len(), other.len()), (1, 1));

    // `other`'s environment changes: a new process; `default` is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, tasks) = load(p.url("/b"), 4, stop.clone(), |b| b == "on other");
    let upgraded = two_runners(up.addr, json!({"WHICH": "other-2"}));
    // Blocking (it waits for the log): off the runtime's workers.
    assert!(tokio::task::block_in_place(|| p.reload(&upgraded)));
    // The old process is stopped once its calls in flight are done.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !runners_with(&p, "WHICH", "other").is_empty() {
        assert!(Instant::now() < deadline, "the old runner still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "no call failed during the upgrade ({} ok)",
        counts.ok.load(Ordering::Relaxed)
    );
    assert_eq!(runners_with(&p, "WHICH", "other-2").len(), 1);
    assert_eq!(runners_with(&p, "WHICH", "default"), default, "kept");
    assert_eq!(get(&p.url("/b")).await.text(), "on other");

    // `other` removed (with its route): its process stops.
    let one = {
        let mut c = with_routes(json!([route("a", "/a", up.addr, say("on default"))]));
        c["ext-plugin"]["env"] = json!({"WHICH": "default"});
        c
    };
    assert!(p.reload(&one), "{}", p.log());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !runners_with(&p, "WHICH", "other-2").is_empty() {
        assert!(Instant::now() < deadline, "the removed runner still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&p.url("/b")).await.status, 404);
    assert_eq!(get(&p.url("/a")).await.text(), "on default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_runner_name_is_refused_at_start_and_at_reload() {
    let up = Upstream::start().await;
    let mut c = two_runners(up.addr, json!({}));
    c["routes"][1]["plugins"]["ext-plugin-pre-req"]["runner"] = json!("nope");
    let out = crate::support::extplug_exits(&["proxy"], &c, "info");
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("route `b`")
            && out
                .stderr
                .contains("`plugins.ext-plugin-pre-req.runner` \"nope\" is not a runner"),
        "{}",
        out.stderr
    );
    let p = ProxyProc::start(&two_runners(up.addr, json!({})));
    assert!(!p.reload(&c));
    assert!(p.log().contains("\"nope\" is not a runner"), "{}", p.log());
    assert_eq!(get(&p.url("/b")).await.text(), "on other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_under_the_configuration_it_started_with() {
    let up = Upstream::start().await;
    // `/slow` waits 3 s at the upstream, then its response phase runs on
    // runner `other`, which a reload replaces meanwhile.
    let slow = |generation: &str| {
        let mut c = with_routes(json!([route(
            "s",
            "/slow",
            up.addr,
            json!({"ext-plugin-post-resp": {
                "runner": "other",
                "conf": [{"name": "response-headers",
                          "value": json!({"set": {"x-gen": generation}}).to_string()}]}})
        )]));
        c["runners"] =
            json!({"other": {"cmd": demo(), "env": {"GEN": generation}, "standby": false}});
        c
    };
    let p = ProxyProc::start(&slow("1"));
    let url = p.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // Until the upstream has it: the request has its configuration.
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.requests().is_empty() {
        assert!(Instant::now() < deadline, "the upstream got no request");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let next = slow("2");
    assert!(tokio::task::block_in_place(|| p.reload(&next)));
    let old = in_flight.await.unwrap();
    assert_eq!(old.status, 200, "{}", p.log());
    assert_eq!(
        old.header("x-gen"),
        Some("1"),
        "the old configuration and runner"
    );
    let new = get(&p.url("/slow")).await;
    assert_eq!(new.header("x-gen"), Some("2"), "the new configuration");
    // The old runner was stopped once the request was done.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !runners_with(&p, "GEN", "1").is_empty() {
        assert!(Instant::now() < deadline, "the old runner still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
