//! The runner's standby, failover, crash-loop backoff and upgrades, with the
//! real `extplug proxy`, real runner processes and real HTTP under load (a
//! bounded number of concurrent clients; failures are counted exactly).

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::{alive, get, ProxyProc, Upstream};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients of the load.
const CLIENTS: usize = 16;

/// Clients sending requests in a loop until stopped, counting answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    /// Every status other than 200, and the body of the last 200 of each
    /// client.
    tasks: Vec<tokio::task::JoinHandle<(Vec<u16>, Option<String>)>>,
}

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (url, stop, ok, failed) =
                    (url.clone(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut bad = Vec::new();
                    let mut last_env = None;
                    while !stop.load(Ordering::Relaxed) {
                        let got = get(&url).await;
                        if got.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                            last_env = Some(got.text());
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            bad.push(got.status);
                        }
                    }
                    (bad, last_env)
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests succeeded (the load is running).
    async fn wait_ok(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients; the count of 200s, every status that was not 200,
    /// and each client's last 200 body.
    async fn finish(self) -> (usize, Vec<u16>, Vec<Option<String>>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut bad = Vec::new();
        let mut envs = Vec::new();
        for t in self.tasks {
            let (b, env) = t.await.unwrap();
            bad.extend(b);
            envs.push(env);
        }
        (self.ok.load(Ordering::Relaxed), bad, envs)
    }
}

fn rewrite_routes(up: &Upstream) -> Value {
    json!([route(
        "r",
        "/*",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("rewrite", json!({"headers":{"x-via":"runner"}}))])})
    )])
}

/// Waits until `pid` is dead (gone or a zombie).
async fn wait_dead(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{pid} did not die");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_active_runner_under_load_costs_only_the_calls_in_flight() {
    let up = Upstream::start().await;
    let proxy = ProxyProc::start(&config(demo(), json!({}), rewrite_routes(&up)));
    proxy.wait_standby_ready(1);
    let load = Load::start(proxy.url("/k"));
    load.wait_ok(50).await;
    for kill in 0..5 {
        // The previous kill's replacement standby is ready.
        proxy.wait_standby_ready(kill + 1);
        let before = load.failed();
        let active = proxy.active_runner();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(active), Signal::SIGKILL).unwrap();
        wait_dead(active).await;
        // At once, without waiting for the proxy to notice: served by the
        // standby.
        let got = get(&proxy.url("/right-after")).await;
        assert_eq!(got.status, 200, "right after kill {kill}: {}", proxy.log());
        proxy.wait_runner_ready(kill + 2);
        load.wait_ok(50).await;
        let lost = load.failed() - before;
        assert!(
            lost <= CLIENTS,
            "kill {kill} cost {lost} requests, more than the {CLIENTS} calls that can be in flight; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, bad, _) = load.finish().await;
    assert!(bad.iter().all(|s| *s == 503), "{bad:?}");
    assert!(bad.len() <= 5 * CLIENTS, "{} failed of {ok}", bad.len());
    let log = proxy.log();
    assert_eq!(log.matches("its standby takes over").count(), 5, "{log}");
    assert_eq!(up.last().header("x-via"), Some("runner"));
    // Still an active runner and a standby, and nothing else.
    proxy.wait_standby_ready(6);
    assert_eq!(proxy.children().len(), 2, "{log}");
}

/// The runner's argv is this script: `RUNNER_TEST_VAR=<version>` for the
/// scripted bad-runner, which reports it in `x-seen`. Written to a temp file
/// and renamed, as a package manager replaces a binary.
fn write_wrapper(path: &Path, version: &str, body: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(
        &tmp,
        format!("#!/bin/sh\nRUNNER_TEST_VAR={version}\nexport RUNNER_TEST_VAR\n{body}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn scripted_exec() -> String {
    format!("exec {}", crate::support::example("bad-runner").display())
}

fn wrapped_proxy(up: &Upstream, script: &Path) -> ProxyProc {
    let pre_req = json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])});
    let mut c = config(
        vec![script.display().to_string()],
        json!({"BAD_RUNNER_MODE": "scripted"}),
        json!([route("r", "/*", up.addr, pre_req)]),
    );
    // A call that only waits longer on a loaded machine (a cold runner's
    // first PREPARE_CONF among 16 clients) is not what these tests are
    // about: a refused or broken connection still fails at once.
    c["ext-plugin"]["call_timeout_ms"] = json!(10_000);
    ProxyProc::start(&c)
}

fn environ_var(pid: i32, name: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    bytes.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{name}=")).map(str::to_owned)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_upgrades_under_load_fail_no_request_and_replace_every_process() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let script: PathBuf = dir.path().join("runner.sh");
    write_wrapper(&script, "v0", &scripted_exec());
    let proxy = wrapped_proxy(&up, &script);
    proxy.wait_standby_ready(1);
    let load = Load::start(proxy.url("/v"));
    load.wait_ok(50).await;
    for i in 1..=10 {
        write_wrapper(&script, &format!("v{i}"), &scripted_exec());
        proxy.signal(Signal::SIGUSR2);
        proxy.wait_log("runner upgraded", i);
        load.wait_ok(20).await;
    }
    let (ok, bad, envs) = load.finish().await;
    assert!(
        bad.is_empty(),
        "{} of {} failed: {bad:?}; the proxy's warnings and errors:\n{}",
        bad.len(),
        ok + bad.len(),
        proxy
            .log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(envs.len(), CLIENTS);
    // Every version served in turn, and the last one serves now.
    let versions: std::collections::BTreeSet<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.seen()["env"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(versions.len(), 11, "{versions:?}");
    assert_eq!(get(&proxy.url("/v")).await.status, 200);
    assert_eq!(up.last().seen()["env"], "v10");
    // The replaced runners are gone: an active one and a standby are left,
    // both the new program.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let children = proxy.children();
        let versions: Vec<_> = children
            .iter()
            .map(|pid| environ_var(*pid, "RUNNER_TEST_VAR"))
            .collect();
        if children.len() == 2 && versions.iter().all(|v| v.as_deref() == Some("v10")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runners {children:?} run {versions:?}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.log().matches("how=\"upgraded\"").count(), 10);
}

#[tokio::test]
async fn an_upgrade_whose_runner_does_not_start_keeps_the_old_one() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("runner.sh");
    write_wrapper(&script, "v0", &scripted_exec());
    let proxy = wrapped_proxy(&up, &script);
    proxy.wait_standby_ready(1);
    let runners = proxy.children();
    write_wrapper(
        &script,
        "broken",
        "echo 'no such plugin runner' >&2; exit 3",
    );
    proxy.signal(Signal::SIGUSR2);
    proxy.wait_log("upgrade failed, the old runner keeps serving", 1);
    let log = proxy.log();
    assert!(log.contains("no such plugin runner"), "{log}");
    assert_eq!(get(&proxy.url("/v")).await.status, 200);
    assert_eq!(up.last().seen()["env"], "v0");
    let mut now = proxy.children();
    now.sort();
    let mut before = runners;
    before.sort();
    assert_eq!(now, before, "the old runner and its standby stay");
}

/// The `restart_in_ms` of each "runner down" line of the log.
fn restart_delays(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("runner down"))
        .filter_map(|l| l.split("restart_in_ms=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_backed_off_and_a_runner_that_served_is_replaced_at_once() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("runner.sh");
    let flag = dir.path().join("crash");
    let body = format!(
        "if [ -e {} ]; then echo 'crashing at start' >&2; exit 3; fi\nexec {}",
        flag.display(),
        crate::support::demo_runner().display()
    );
    write_wrapper(&script, "v", &body);
    let proxy = ProxyProc::start(&config(
        vec![script.display().to_string()],
        json!({}),
        rewrite_routes(&up),
    ));
    proxy.wait_standby_ready(1);
    // A runner that served for 5 s is replaced at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let active = proxy.active_runner();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(active), Signal::SIGKILL).unwrap();
    proxy.wait_runner_ready(2);
    proxy.wait_standby_ready(2);
    assert_eq!(restart_delays(&proxy.log()), vec![0], "{}", proxy.log());

    // From now on every new process exits at once: the standby is lost
    // after the next kill, and its replacements are backed off.
    std::fs::write(&flag, "").unwrap();
    let active = proxy.active_runner();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(active), Signal::SIGKILL).unwrap();
    proxy.wait_runner_ready(3);
    proxy.wait_log("exited before opening its socket", 4);
    let delays = restart_delays(&proxy.log());
    // The kill, then the crashes: 0, 100, 200, 400 ms...
    let crashes = &delays[2..];
    assert!(crashes.len() >= 4, "{delays:?}");
    assert_eq!(&crashes[..4], &[0, 100, 200, 400], "{delays:?}");
    // The promoted standby serves meanwhile.
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
    // Fixed: a standby is ready again, after the backoff.
    std::fs::remove_file(&flag).unwrap();
    proxy.wait_standby_ready(3);
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
}

#[tokio::test]
async fn without_standby_there_is_one_runner_process() {
    let up = Upstream::start().await;
    let mut c = config(demo(), json!({}), rewrite_routes(&up));
    c["ext-plugin"]["standby"] = json!(false);
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(1);
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
    assert_eq!(proxy.children().len(), 1);
    let active = proxy.active_runner();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(active), Signal::SIGKILL).unwrap();
    proxy.wait_runner_ready(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&proxy.url("/x")).await.status != 200 {
        assert!(Instant::now() < deadline, "{}", proxy.log());
    }
    assert_eq!(proxy.children().len(), 1);
    assert!(!proxy.log().contains("standby"));
}

#[tokio::test]
async fn a_hung_runner_is_replaced_by_its_standby_at_once() {
    let up = Upstream::start().await;
    let mut c = config(demo(), json!({}), rewrite_routes(&up));
    c["ext-plugin"]["call_timeout_ms"] = json!(300);
    c["ext-plugin"]["restart_after_timeouts"] = json!(1);
    let proxy = ProxyProc::start(&c);
    proxy.wait_standby_ready(1);
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
    let active = proxy.active_runner();
    // Alive, but answers nothing: what a deadlocked plugin looks like.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(active), Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{active}/stat"))
        .unwrap_or_default()
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('T'))
    {
        assert!(Instant::now() < deadline, "{active} did not stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The call that times out is lost; the next one is served by the standby,
    // without waiting for a new process.
    assert_eq!(get(&proxy.url("/x")).await.status, 503);
    proxy.wait_runner_ready(2);
    assert_eq!(get(&proxy.url("/x")).await.status, 200, "{}", proxy.log());
    let log = proxy.log();
    assert!(
        log.contains("runner stopped answering: killing it"),
        "{log}"
    );
    assert!(log.contains("how=\"promoted\""), "{log}");
    wait_dead(active).await;
}

/// What a reload does when a runner's `env` changed: `upgrade_to` the new
/// configuration, through the library (the supervisor on its own).
#[tokio::test]
async fn upgrade_to_a_new_configuration_replaces_both_processes() {
    use extplug::host::config::Config;
    use extplug::host::runner::supervisor::{RunnerState, Supervisor};
    let up = Upstream::start().await;
    let (cmd, _) = crate::support::conf::bad("scripted");
    let conf = |version: &str| {
        let c = config(
            cmd.clone(),
            json!({"BAD_RUNNER_MODE": "scripted", "RUNNER_TEST_VAR": version}),
            rewrite_routes(&up),
        );
        Config::parse(&c.to_string()).unwrap().runner
    };
    // (Its socket directory goes in the system's temp dir, removed by `stop`.)
    let mut supervisor = Supervisor::start(conf("one")).unwrap();
    supervisor.started().await.unwrap();
    let pid_of = |s: &Supervisor| match &*s.state().borrow() {
        RunnerState::Ready { pid, .. } => *pid as i32,
        other => panic!("not ready: {other:?}"),
    };
    let first = pid_of(&supervisor);
    assert_eq!(
        environ_var(first, "RUNNER_TEST_VAR").as_deref(),
        Some("one")
    );
    supervisor
        .restarter()
        .upgrade_to(conf("two"))
        .await
        .expect("upgraded");
    let second = pid_of(&supervisor);
    assert_ne!(first, second);
    assert_eq!(
        environ_var(second, "RUNNER_TEST_VAR").as_deref(),
        Some("two")
    );
    wait_dead(first).await;
    // The standby is new too: every child of ours runs "two".
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = crate::support::http::children_of(std::process::id() as i32);
        let runners: Vec<_> = children
            .iter()
            .filter_map(|pid| environ_var(*pid, "RUNNER_TEST_VAR"))
            .collect();
        if runners.len() == 2 && runners.iter().all(|v| v == "two") {
            break;
        }
        assert!(Instant::now() < deadline, "{runners:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    supervisor.stop().await;
}
