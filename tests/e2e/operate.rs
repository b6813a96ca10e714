//! Operating the proxy as nginx is operated, with the real binary and the
//! demo runner: `extplug check` as quiet as `nginx -t` (one line, no
//! standby started), and `extplug reload` / `extplug upgrade` asking a
//! running proxy through its admin listener (its token read from the
//! file) or by signal to the pid in `--pid-file`, with their exit codes.

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::ProxyProc;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "an-admin-token-of-some-length";

/// One route `r` whose pre-req chain is `plugin` (the demo's `say`, or a
/// name it does not have), without a standby runner (these tests count
/// runner starts in the log).
fn with_plugin(plugin: &str) -> Value {
    let up = SocketAddr::from(([127, 0, 0, 1], 9));
    let pre = json!({"ext-plugin-pre-req": phase(&[(plugin, json!({"body": "hi"}))])});
    let mut c = config(demo(), json!({}), json!([route("r", "/*", up, pre)]));
    c["ext-plugin"]["standby"] = json!(false);
    c
}

/// `extplug ARGS` without `RUST_LOG`: exit code, stdout, stderr.
fn extplug(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, config: &Value) -> String {
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    path.display().to_string()
}

#[test]
fn check_prints_the_verdict_only_and_starts_no_standby() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_plugin("say");
    // The default: a standby with the proxy, none with `check`.
    c["ext-plugin"]["standby"] = json!(true);
    let path = write(dir.path(), &c);
    let (code, out, err) = extplug(&["check", "--config", &path]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        format!("{path}: valid: 1 route; the runner prepared all 1 chains\n")
    );
    assert_eq!(err, "", "a valid configuration logs nothing");

    let (code, out, err) = extplug(&["check", "-v", "--config", &path]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(err.matches("runner ready").count(), 1, "{err}");
    assert!(!err.contains("standby"), "{err}");

    // A refusal is still the one line it was, exit 2.
    let path = write(dir.path(), &with_plugin("sayy"));
    let (code, out, err) = extplug(&["check", "--config", &path]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(r#"unknown plugin "sayy""#), "{err}");
}

#[test]
fn reload_and_upgrade_through_the_admin_listener() {
    let mut c = with_plugin("say");
    c["admin"] = json!({"listen": "127.0.0.1:0", "token": TOKEN});
    let proxy = ProxyProc::start(&c);
    proxy.wait_runner_ready(1);
    let admin = proxy.admin.unwrap().to_string();
    let file = proxy.dir.path().join("config.json").display().to_string();

    // Without the token: refused by the listener, not by the proxy.
    let (code, _, err) = extplug(&["reload", "--admin", &admin]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("401") && err.contains("admin.token"), "{err}");

    // The file's token (its `listen` is port 0: the address given).
    let (code, out, err) = extplug(&["reload", "--config", &file]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("port 0") && err.contains("--admin"), "{err}");
    let (code, out, err) = extplug(&["reload", "--admin", &admin, "--config", &file]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!out.is_empty() && err.is_empty(), "{out}{err}");
    proxy.wait_log("configuration reloaded", 1);

    // A configuration the runner refuses: 1, with the reason; the old one
    // keeps serving.
    let mut bad = with_plugin("sayy");
    bad["admin"] = c["admin"].clone();
    write(proxy.dir.path(), &bad);
    let (code, out, err) = extplug(&["reload", "--admin", &admin, "--config", &file]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("the proxy refused"), "{err}");
    assert!(err.contains(r#"unknown plugin "sayy""#), "{err}");

    // Upgrade: a new runner process serves.
    let before = proxy.active_runner();
    let (code, out, err) = extplug(&["upgrade", "--admin", &admin, "--config", &file]);
    assert_eq!(code, Some(0), "{out}{err}");
    proxy.wait_runner_ready(2);
    assert_ne!(proxy.active_runner(), before);

    // Nothing listening.
    let (code, _, err) = extplug(&["reload", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("nothing listens"), "{err}");
}

#[test]
fn reload_and_upgrade_by_pid_file() {
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("extplug.pid");
    let shown = pid_file.display().to_string();
    let mut proxy = ProxyProc::builder(&with_plugin("say"))
        .proxy_arg("--pid-file")
        .proxy_arg(&pid_file)
        .start();
    proxy.wait_runner_ready(1);
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), proxy.pid().to_string());

    let (code, out, err) = extplug(&["reload", "--pid-file", &shown]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("SIGHUP"), "{out}");
    proxy.wait_log("configuration reloaded", 1);
    let (code, out, err) = extplug(&["upgrade", "--pid-file", &shown]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("SIGUSR2"), "{out}");
    proxy.wait_runner_ready(2);

    // Stopped: the file goes with it.
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.wait_exit(Duration::from_secs(20)).success());
    assert!(!pid_file.exists());
    let (code, _, err) = extplug(&["reload", "--pid-file", &shown]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no pid file"), "{err}");

    // A stale file: a pid nobody has, or another program's (this test's).
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    for (pid, says) in [
        (gone.id(), "no process"),
        (std::process::id(), "is not `extplug proxy`"),
    ] {
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
        let (code, _, err) = extplug(&["reload", "--pid-file", &shown]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("stale pid file") && err.contains(says),
            "{err}"
        );
    }
}
