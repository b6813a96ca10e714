//! File descriptors with the real proxy under a low limit (soft 256, hard
//! 1024, as `ulimit` sets them): the proxy raises its soft limit to the
//! hard one, clamps `max_client_connections` to what the descriptors allow
//! (with a warning), and 1,100 idle clients leave it serving new ones:
//! past the clamp they wait in the listen backlog, no `accept` fails. The
//! runner starts with the limit the proxy was given, not the raised one.

use crate::support::conf::{config, demo, route};
use crate::support::http::{get, ProxyProc, Upstream};
use serde_json::json;
use tokio::net::TcpStream;

/// The soft and hard "Max open files" of `pid`, from `/proc`.
fn nofile(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// The descriptors `pid` has open, from `/proc`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn idle_clients_past_the_descriptors_wait_and_new_ones_are_served() {
    // This test's own 1,100 connections need descriptors too.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 2_400,
        "the test needs a hard limit of 2400 descriptors, has {hard}"
    );
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let up = Upstream::start().await;
    let mut c = config(
        demo(),
        json!({}),
        json!([route("r", "/*", up.addr, json!({}))]),
    );
    // Idle clients are cut after 2 s: a client waiting in the backlog is
    // then accepted.
    c["client_header_timeout_ms"] = json!(2000);
    c["ext-plugin"]["standby"] = json!(false);
    let proxy = ProxyProc::builder(&c).nofile(256, 1024).start();
    assert_eq!(nofile(proxy.pid()), (1024, 1024), "soft raised to hard");
    proxy.wait_runner_ready(1);
    assert_eq!(
        nofile(proxy.active_runner()),
        (256, 1024),
        "the runner gets the limit the proxy started with"
    );
    proxy.wait_log("clamped", 1);
    let log = proxy.log();
    let clamped: usize = log
        .split("clamped_to=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clamped_to in:\n{log}"));
    assert!(clamped > 300 && clamped < 512, "{clamped}");
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let peak = open_fds(proxy.pid());
    // A new client is served (after idle ones are cut), with no accept failure.
    let got = get(&proxy.url("/new")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let peak = peak.max(open_fds(proxy.pid()));
    eprintln!("clamped to {clamped}; peak descriptors {peak} of 1024");
    assert!(peak < 1024, "{peak}");
    assert!(
        !proxy.log().contains("Too many open files"),
        "{}",
        proxy.log()
    );
    drop(idle);
}
