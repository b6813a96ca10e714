//! `EXTPLUG_THREADS`: the proxy's number of threads (1: a current-thread
//! runtime), and a clear error for a value that is not a number of threads.

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::{statuses_of, ProxyProc, Upstream};
use serde_json::json;
use std::process::{Command, Stdio};

/// A route without plugins and one with `rewrite`, on one upstream.
fn routes(up: &Upstream) -> serde_json::Value {
    json!([
        route(
            "rw",
            "/rw",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers": {"x-gw": "yes"}}))])})
        ),
        route("plain", "/plain", up.addr, json!({})),
    ])
}

/// One thread and three: the same answers, concurrent requests included.
#[tokio::test]
async fn the_proxy_serves_on_one_thread_or_several() {
    for threads in ["1", "3"] {
        let up = Upstream::start().await;
        let c = config(demo(), json!({}), routes(&up));
        let proxy = ProxyProc::builder(&c)
            .env("EXTPLUG_THREADS", threads)
            .start();
        proxy.wait_runner_ready(1);
        let urls = (0..8).map(|i| proxy.url(if i % 2 == 0 { "/rw" } else { "/plain" }));
        let statuses = statuses_of(urls).await;
        assert!(
            statuses.iter().all(|s| *s == 200),
            "threads {threads}: {statuses:?}\n{}",
            proxy.log()
        );
        let rewritten = up
            .requests()
            .iter()
            .filter(|r| r.header("x-gw") == Some("yes"))
            .count();
        assert_eq!(rewritten, 4, "threads {threads}");
    }
}

/// A value that is not a positive number stops the proxy before it starts,
/// naming the variable and the value.
#[test]
fn a_bad_thread_count_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let c = config(
        demo(),
        json!({}),
        json!([route("r", "/", "127.0.0.1:9".parse().unwrap(), json!({}))]),
    );
    std::fs::write(&path, c.to_string()).unwrap();
    for bad in ["0", "two", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_extplug"))
            .args(["proxy", "--config"])
            .arg(&path)
            .env("EXTPLUG_THREADS", bad)
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(
            stderr.contains(&format!("EXTPLUG_THREADS={bad:?}"))
                && stderr.contains("number of threads"),
            "{bad:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{bad:?}: it listened");
    }
}
