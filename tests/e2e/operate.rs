//! Operating the proxy as nginx is operated, with the real binary and the
//! demo runner: `extplug check` as quiet as `nginx -t` (one line, no
//! standby started).

use crate::support::conf::{config, demo, phase, route};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

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
