//! Adversarial review of the runner side and the host's runner handling:
//! a hostile runner's output, with real `extplug proxy` processes and real
//! runners.

use crate::support::conf::{config, route, scripted};
use crate::support::http::{get, ProxyProc, Upstream};
use serde_json::json;

/// The host's longest forwarded line (`supervisor::MAX_OUTPUT_LINE`).
const MAX_LINE: usize = 16 * 1024;

/// A runner whose stderr has a byte that is not UTF-8 and a 200,000-byte
/// line without a newline: the host keeps forwarding what follows (it used
/// to stop reading at the bad byte, which closed the pipe under the runner),
/// and logs the long line in pieces, never as one unbounded line.
#[tokio::test]
async fn runner_output_that_is_not_utf8_or_has_no_newline_keeps_being_forwarded() {
    let up = Upstream::start().await;
    let script = r#"printf 'bad \377 byte\n' >&2
head -c 200000 /dev/zero | tr '\0' a >&2
printf '\nafter-the-flood\n' >&2
exec "$0""#;
    let cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        crate::support::demo_runner().display().to_string(),
    ];
    let c = config(
        cmd,
        json!({}),
        json!([route("r", "/x", up.addr, json!({}))]),
    );
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(1);
    proxy.wait_log("after-the-flood", 1);
    // The demo runner's own start line, written after all that, arrives too.
    proxy.wait_log("runner listening", 1);
    let log = proxy.log();
    assert!(log.contains("bad \u{FFFD} byte"), "{log}");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2 * MAX_LINE, "a log line of {longest} bytes");
    let pieces = log
        .lines()
        .filter(|l| l.contains("aaaaaaaaaaaaaaaa"))
        .count();
    assert!(pieces >= 200_000 / MAX_LINE, "{pieces} pieces");
}

/// A runner that answers one call twice leaves a stale answer on the
/// connection. The host used to put the connection back in its pool after
/// the id mismatch it then saw, so every later call on it read the answer
/// of the call before (503 for good). It must drop that connection: at most
/// the one call that read the stale answer fails (none, when the stale
/// answer is seen on the idle connection first).
#[tokio::test]
async fn a_connection_whose_answer_is_for_another_call_is_not_reused() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |_| {});
    proxy.wait_runner_ready(1);
    assert_eq!(get(&proxy.url("/answer-twice")).await.status, 200);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&proxy.url("/after")).await.status);
    }
    assert!(
        statuses[1..].iter().all(|s| *s == 200),
        "{statuses:?}; log:\n{}",
        proxy.log()
    );
    // Either the stale answer is seen on the idle connection before any
    // call uses it, or the call that reads it sees the wrong id.
    let log = proxy.log();
    assert!(
        log.contains("stale answer") || log.contains("answer id"),
        "{log}"
    );
}

/// A runner removes its socket at exit, but only its own: when the path was
/// taken over meanwhile (another runner started by hand on the same path
/// after this one's socket was removed), the other's socket stays. It used
/// to be removed by path, leaving the other runner unreachable.
#[test]
fn a_stopping_runner_removes_its_own_socket_only() {
    let mut runner = crate::support::RunnerProc::start(&[]);
    let path = runner.socket.clone();
    std::fs::remove_file(&path).unwrap();
    let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(runner.wait_exit().success());
    assert!(
        std::os::unix::net::UnixStream::connect(&path).is_ok(),
        "the other listener's socket was removed"
    );
    // And its own socket is still removed in the usual case.
    let mut runner = crate::support::RunnerProc::start(&[]);
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(runner.wait_exit().success());
    assert!(!runner.socket.exists(), "its own socket was left behind");
}

/// The environment of process `pid`.
fn environ(pid: i32) -> std::collections::HashMap<String, String> {
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

/// Only the locale variables themselves pass the cleared environment, not
/// any name that starts with `LC_` (`LC_*` is also what ssh passes on from
/// the client, and a host secret may happen to be named so).
#[tokio::test]
async fn only_real_locale_variables_reach_the_runner() {
    let up = Upstream::start().await;
    let c = config(
        crate::support::conf::demo(),
        json!({}),
        json!([route("r", "/x", up.addr, json!({}))]),
    );
    let proxy = ProxyProc::builder(&c)
        .env("LC_SECRET_TOKEN", "x")
        .env("LC_", "x")
        .env("LC_ALL", "C")
        .env("LC_MESSAGES", "C")
        .start();
    proxy.wait_runner_ready(1);
    let env = environ(proxy.children()[0]);
    assert!(!env.contains_key("LC_SECRET_TOKEN"), "{env:?}");
    assert!(!env.contains_key("LC_"), "{env:?}");
    assert_eq!(env.get("LC_ALL").map(String::as_str), Some("C"));
    assert_eq!(env.get("LC_MESSAGES").map(String::as_str), Some("C"));
}

/// A runner that started a child of its own (in its process group) and
/// then died: the host restarts the runner and must not leave that child
/// running, unwatched, for ever (it used to: only a stop or a kill by the
/// host reached the group, not a runner that exited by itself).
#[tokio::test]
async fn a_dead_runners_own_children_do_not_outlive_it() {
    let up = Upstream::start().await;
    let cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "sleep 1000 & exec \"$0\"".to_owned(),
        crate::support::demo_runner().display().to_string(),
    ];
    let mut c = config(
        cmd,
        json!({}),
        json!([route("r", "/x", up.addr, json!({}))]),
    );
    // One runner process, so that the proxy's only child is the one killed.
    c["ext-plugin"]["standby"] = json!(false);
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(1);
    let runner = proxy.children()[0];
    let helper = crate::support::http::children_of(runner);
    assert_eq!(helper.len(), 1, "the runner's sleep: {helper:?}");
    let helper = helper[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    proxy.wait_runner_ready(2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while crate::support::http::alive(helper) {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead runner's child {helper} still runs; log:\n{}",
            proxy.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts the demo-runner on `dir/r.sock`, its stderr in `dir/../runner.log`
/// (`log`), and returns it once it listens.
fn runner_in(dir: &std::path::Path, log: &std::path::Path) -> crate::support::RunnerProc {
    let socket = dir.join("r.sock");
    let child = std::process::Command::new(crate::support::demo_runner())
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", socket.display()),
        )
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = crate::support::RunnerProc {
        child,
        dir: tempfile::tempdir().unwrap(),
        socket,
    };
    proc.wait_ready();
    proc
}

/// A runner run by hand with its socket in a directory that others may
/// write (and without the sticky bit) says so: another user could replace
/// the socket there. A private directory gets no such warning.
#[test]
fn a_socket_directory_others_can_write_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    let open = top.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let private = top.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (open_log, private_log) = (top.path().join("open.log"), top.path().join("private.log"));
    let mut a = runner_in(&open, &open_log);
    let mut b = runner_in(&private, &private_log);
    for r in [&mut a, &mut b] {
        r.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(r.wait_exit().success());
    }
    let open_text = std::fs::read_to_string(&open_log).unwrap();
    assert!(
        open_text.contains("writable by other users") && open_text.contains("open"),
        "{open_text}"
    );
    let private_text = std::fs::read_to_string(&private_log).unwrap();
    assert!(!private_text.contains("writable by"), "{private_text}");
}

/// A chain whose answer is larger than a frame may be (here 100 headers
/// that each copy a 200,000-byte path: 20 MB) fails that call with a clear
/// ERROR, and the connection stays usable. The runner used to close the
/// connection without a word (its send failed), which the host could only
/// report as "the runner closed the connection".
#[tokio::test]
async fn an_answer_over_the_frame_limit_is_a_clear_error_not_a_closed_connection() {
    let runner = crate::support::RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let confs: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"vars":["uri"],"header_prefix":"x-{i}-"}}"#))
        .collect();
    let chain: Vec<(&str, &str)> = confs.iter().map(|v| ("inject-vars", v.as_str())).collect();
    let token = c.prepare(&chain).await;
    let path = format!("/{}", "p".repeat(200_000));
    let mut parts = crate::support::get(&path);
    parts.extra_info = vec![("uri", Some(path.as_bytes()))];
    match c.call_answer(token, parts).await {
        crate::support::Answer::Error(e) => {
            assert_eq!(e.code, extplug::wire::ErrorCode::ServiceUnavailable);
            assert!(e.message.contains("frame limit"), "{}", e.message);
        }
        other => panic!("expected an ERROR, got {other:?}"),
    }
    // The same connection still serves calls.
    let small = c.prepare(&[("say", r#"{"body":"ok"}"#)]).await;
    match c.call_answer(small, crate::support::get("/x")).await {
        crate::support::Answer::Call(_) => {}
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// Big confs a hostile or careless configuration could send: a chain of
/// 100,000 entries, and one JSON value of nearly 16 MiB. Both are
/// prepared (each within the frame limit), the big one answers its call
/// whole, and the runner keeps serving other connections.
#[tokio::test]
async fn a_chain_of_100000_entries_and_a_16_mib_value_are_served() {
    let runner = crate::support::RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let long: Vec<(&str, &str)> = vec![("say", r#"{"body":"x"}"#); 100_000];
    let token = c.prepare(&long).await;
    let answer = c.call(token, crate::support::get("/x")).await;
    assert!(
        matches!(answer.outcome, extplug::wire::RequestOutcome::Stop(ref s) if s.body == b"x"),
        "{answer:?}"
    );
    let body = "b".repeat(16_777_215 - 200);
    let value = format!(r#"{{"body":"{body}"}}"#);
    let token = c.prepare(&[("say", &value)]).await;
    let answer = c.call(token, crate::support::get("/x")).await;
    match answer.outcome {
        extplug::wire::RequestOutcome::Stop(s) => assert_eq!(s.body.len(), body.len()),
        other => panic!("expected a stop, got {other:?}"),
    }
    let mut other = runner.client().await;
    other.prepare(&[("say", r#"{"body":"still here"}"#)]).await;
}
