//! The host's safety against its runner being replaced, slow clients,
//! other processes and leftovers: real `extplug proxy` processes with real
//! runners, real sockets and a recording upstream.

use crate::support::conf::{bad, config, demo, phase, route, scripted};
use crate::support::http::{get, ProxyProc, Upstream};
use nix::sys::signal::Signal;
use serde_json::json;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request written by hand, so that its body can be sent slowly.
struct RawRequest(TcpStream);

impl RawRequest {
    /// Connects and sends the head of `POST path` with `content-length: len`.
    async fn post(proxy: &ProxyProc, path: &str, headers: &[(&str, &str)], len: usize) -> Self {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut head = format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {len}\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        RawRequest(stream)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
        self.0.flush().await.unwrap();
    }

    /// Reads the whole answer (the proxy closes: `connection: close`) and
    /// returns its status and text.
    async fn answer(mut self) -> (u16, String) {
        let mut bytes = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), self.0.read_to_end(&mut bytes))
            .await
            .expect("no answer within 20 s")
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
        (status, text)
    }
}

/// The environment of process `pid`.
fn environ(pid: i32) -> HashMap<String, String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    bytes
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The runner's socket directory, from its `APISIX_LISTEN_ADDRESS`.
fn runner_dir(proxy: &ProxyProc) -> PathBuf {
    let runner = proxy.active_runner();
    let addr = environ(runner)
        .remove("APISIX_LISTEN_ADDRESS")
        .expect("the runner has APISIX_LISTEN_ADDRESS");
    Path::new(addr.strip_prefix("unix:").unwrap())
        .parent()
        .unwrap()
        .to_owned()
}

/// The `extplug-*` entries of `dir`.
fn extplug_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("extplug-"))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// A token held while the body is read, then the runner is replaced: the
/// new runner numbers its chains anew, so the old token may name another
/// route's chain there. The request must get its own chain's answer (here
/// key-auth's 401) or 503, never the other route's (which would let it
/// through without a key).
#[tokio::test]
async fn a_token_from_a_replaced_runner_never_runs_another_routes_chain() {
    let up = Upstream::start().await;
    let routes = json!([
        route(
            "public",
            "/public",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[("body-size", json!({}))])})
        ),
        route(
            "admin",
            "/admin",
            up.addr,
            json!({"ext-plugin-pre-req": phase(&[
                ("key-auth", json!({"keys": ["secret"]})),
                ("body-size", json!({})),
            ])})
        ),
    ]);
    let proxy = ProxyProc::builder(&config(demo(), json!({}), routes))
        .log_filter("info,extplug::host::runner::client=debug")
        .start();
    proxy.wait_runner_ready(1);

    // The admin chain is prepared first (the first token of this runner),
    // then the proxy waits for the body.
    let mut slow = RawRequest::post(&proxy, "/admin", &[], 10).await;
    slow.send(b"hello").await;
    proxy.wait_log("chain prepared", 1);
    assert!(proxy.log().contains("admin#ext-plugin-pre-req"));

    // The runner is replaced while the body is in transit, and the new one
    // gives its first token to the public chain.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.active_runner()),
        Signal::SIGKILL,
    )
    .unwrap();
    proxy.wait_runner_ready(2);
    let got = get(&proxy.url("/public")).await;
    assert_eq!(got.status, 200, "{}", proxy.log());
    assert_eq!(up.last().header("x-body-size"), Some("0"));

    slow.send(b"world").await;
    let (status, text) = slow.answer().await;
    assert!(
        status == 401 || status == 503,
        "the admin request ran another chain: {status}\n{text}\n{}",
        proxy.log()
    );
    assert!(
        up.requests().iter().all(|r| r.target != "/admin"),
        "the admin request reached the upstream without a key"
    );
    // And with the key, the admin chain runs on the new runner.
    let got = crate::support::http::send(
        "POST",
        &proxy.url("/admin"),
        &[("x-api-key", "secret")],
        "abc",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().header("x-body-size"), Some("3"));
}

/// The runner asks for the body during the call, and the client sends it
/// over about a second, with a call timeout of 300 ms and a runner replaced
/// after one timeout: the time spent reading the body is the client's, not
/// the runner's. The call succeeds and the runner stays.
#[tokio::test]
async fn a_slow_client_body_is_not_runner_time() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| {
        c["ext-plugin"]["call_timeout_ms"] = json!(300);
        c["ext-plugin"]["restart_after_timeouts"] = json!(1);
    });
    proxy.wait_runner_ready(1);
    let mut req = RawRequest::post(&proxy, "/lazy-body", &[], 50).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        req.send(b"0123456789").await;
    }
    let (status, text) = req.answer().await;
    assert_eq!(status, 200, "{text}\n{}", proxy.log());
    assert_eq!(up.last().header("x-lazy-body-len"), Some("50"));
    let log = proxy.log();
    assert_eq!(log.matches("runner ready").count(), 1, "{log}");
    assert!(!log.contains("stopped answering"), "{log}");
    assert!(!log.contains("timed out"), "{log}");
}

/// The runner's environment is cleared but for a few variables, the
/// configured ones and the APISIX ones: the proxy's secrets stay its own.
#[tokio::test]
async fn the_runner_gets_a_cleared_environment() {
    let up = Upstream::start().await;
    let c = config(
        demo(),
        json!({"RUNNER_TEST_VAR": "from-config"}),
        json!([route("r", "/x", up.addr, json!({}))]),
    );
    let proxy = ProxyProc::builder(&c)
        .env("SECRET_TOKEN", "x")
        .env("TZ", "UTC")
        .env("LC_TIME", "C")
        .start();
    proxy.wait_runner_ready(1);
    let env = environ(proxy.active_runner());
    assert!(!env.contains_key("SECRET_TOKEN"), "{env:?}");
    assert_eq!(env.get("PATH"), std::env::var("PATH").ok().as_ref());
    assert_eq!(
        env.get("RUNNER_TEST_VAR").map(String::as_str),
        Some("from-config")
    );
    assert_eq!(env.get("TZ").map(String::as_str), Some("UTC"));
    assert_eq!(env.get("LC_TIME").map(String::as_str), Some("C"));
    assert_eq!(env.get("RUST_LOG").map(String::as_str), Some("info"));
    assert!(env["APISIX_LISTEN_ADDRESS"].starts_with("unix:"));
    assert_eq!(
        env.get("APISIX_CONF_EXPIRE_TIME").map(String::as_str),
        Some("3600")
    );
}

/// The configured `env` may not set the variables the host sets: refused by
/// `extplug check` and `extplug proxy`, naming the key.
#[test]
fn a_configured_env_may_not_override_the_apisix_variables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.json");
    let c = config(
        demo(),
        json!({"APISIX_LISTEN_ADDRESS": "unix:/tmp/elsewhere.sock"}),
        json!([]),
    );
    std::fs::write(&path, c.to_string()).unwrap();
    for command in ["check", "proxy"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("ext-plugin.env.APISIX_LISTEN_ADDRESS")
                && stderr.contains("the host sets"),
            "{command}: {stderr}"
        );
    }
}

/// The runner's socket directory is 0700 even under umask 000, named after
/// the proxy's pid, in the proxy's `TMPDIR`.
#[tokio::test]
async fn the_socket_directory_is_private_whatever_the_umask() {
    let up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let c = config(
        demo(),
        json!({}),
        json!([route("r", "/x", up.addr, json!({}))]),
    );
    let proxy = ProxyProc::builder(&c)
        .umask(0o000)
        .env("TMPDIR", tmp.path())
        .start();
    proxy.wait_runner_ready(1);
    let dir = runner_dir(&proxy);
    assert_eq!(dir.parent(), Some(tmp.path()));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("extplug-{}-", proxy.pid())),
        "{name}"
    );
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700, "{:o}", meta.mode());
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
}

/// Another process serving the runner's socket from the start: the runner
/// is never deemed ready, and the proxy refuses to start (exit 2).
#[tokio::test]
async fn a_socket_served_by_another_process_is_never_ready() {
    let up = Upstream::start().await;
    let (cmd, env) = bad("foreign-listener");
    let routes = json!([route(
        "r",
        "/x",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])})
    )]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config(cmd, env, routes).to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["proxy", "--config"])
        .arg(&path)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the runner did not start") && stderr.contains("not by the runner"),
        "{stderr}"
    );
    assert!(!stderr.contains("runner ready"), "{stderr}");
    assert!(out.stdout.is_empty(), "it never listened");
    assert!(up.requests().is_empty());
}

/// Another process takes the socket over after the runner was found ready:
/// the client's new connection to it is refused (a log line says why) and
/// the request gets 503, never that process's answer.
#[tokio::test]
async fn a_socket_taken_over_by_another_process_is_refused() {
    let up = Upstream::start().await;
    let (cmd, mut env) = bad("hijack-after-ready");
    // After the readiness check and the start-up PREPARE_CONF; no pool, so
    // that the request needs a new connection.
    env["BAD_RUNNER_HIJACK_AFTER"] = json!("2");
    let routes = json!([route(
        "r",
        "/x",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])})
    )]);
    let mut c = config(cmd, env, routes);
    c["ext-plugin"]["pool_size"] = json!(0);
    // One runner process: a standby prints its own "listening" line, which
    // the wait below would take for the foreign process's (then the request
    // reached the real runner: 200).
    c["ext-plugin"]["standby"] = json!(false);
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(1);
    // The runner's line, then the foreign process's.
    proxy.wait_log("listening on its socket", 2);
    let got = get(&proxy.url("/x")).await;
    assert_eq!(got.status, 503, "{}", proxy.log());
    assert!(
        up.requests().is_empty(),
        "the foreign process's answer was used"
    );
    let log = proxy.log();
    assert!(
        log.contains("not by the runner") && log.contains("connection refused"),
        "{log}"
    );
}

/// A proxy killed with SIGKILL leaves its runner's directory; the next
/// proxy started with the same `TMPDIR` removes it. A proxy stopped with
/// SIGTERM leaves nothing.
#[tokio::test]
async fn a_killed_proxys_directory_is_removed_by_the_next_one() {
    let up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let c = config(
        demo(),
        json!({}),
        json!([route("r", "/x", up.addr, json!({}))]),
    );
    let mut first = ProxyProc::builder(&c).env("TMPDIR", tmp.path()).start();
    first.wait_runner_ready(1);
    let stale = runner_dir(&first);
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    assert_eq!(
        extplug_dirs(tmp.path()),
        vec![stale.clone()],
        "SIGKILL leaves it"
    );

    let second = ProxyProc::builder(&c).env("TMPDIR", tmp.path()).start();
    second.wait_runner_ready(1);
    let own = runner_dir(&second);
    assert!(!stale.exists(), "{}", second.log());
    assert_eq!(extplug_dirs(tmp.path()), vec![own]);
    assert!(second
        .log()
        .contains("removed a runner directory left by a host that is gone"));

    drop(second);
    assert_eq!(
        extplug_dirs(tmp.path()),
        Vec::<PathBuf>::new(),
        "SIGTERM leaves nothing"
    );
}

/// A socket directory that cannot be made stops the proxy at start, with a
/// message that says where.
#[test]
fn a_socket_directory_that_cannot_be_made_stops_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let c = config(demo(), json!({}), json!([]));
    std::fs::write(&path, c.to_string()).unwrap();
    let missing = dir.path().join("no-such-dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["proxy", "--config"])
        .arg(&path)
        .env("TMPDIR", &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot prepare the runner's socket directory")
            && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
}

/// A runner's rewrite with a `Connection` header that lists 200 000 names,
/// 4 000 headers to set and 4 000 to delete: the proxy filters it with a
/// search per header, not a scan of every list (billions of comparisons, the
/// proxy's one thread taken for minutes, every client waiting). The listed
/// headers are dropped, the three others reach the upstream, and the next
/// request is served as usual.
#[tokio::test]
async fn a_rewrite_with_huge_header_lists_is_filtered_without_stalling_the_proxy() {
    let up = Upstream::start().await;
    let (cmd, env) = bad("scripted");
    let pre_req = json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])});
    let c = config(cmd, env, json!([route("r", "/*", up.addr, pre_req)]));
    let proxy = ProxyProc::builder(&c).env("EXTPLUG_THREADS", "1").start();
    proxy.wait_runner_ready(1);
    let got = get(&proxy.url("/many-headers")).await;
    assert_eq!(got.status, 200, "{}", proxy.log());
    let seen = up.last();
    for kept in ["x-h7", "x-h1234", "x-h3999"] {
        assert_eq!(seen.header(kept), Some("v"), "{kept}");
    }
    for dropped in ["x-h0", "x-h8", "x-h3998", "connection", "y-h0"] {
        assert_eq!(seen.header(dropped), None, "{dropped}");
    }
    assert_eq!(get(&proxy.url("/next")).await.status, 200);
}
