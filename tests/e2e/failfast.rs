//! Fail fast, fail informatively: `extplug check` and `extplug proxy` start
//! the runner and have it prepare every chain before anything is served; a
//! chain refused later answers 500 naming the route; one timestamp per
//! relayed runner line; route errors with their line and column.

use crate::support::conf::{bad, config, demo, phase, route, scripted};
use crate::support::extplug_exits;
use crate::support::http::{get, Upstream};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;

/// One route `r1` whose pre-req chain is `say` then `entry`.
fn with_second_entry(cmd: Vec<String>, entry: (&str, Value)) -> Value {
    let routes = json!([route(
        "r1",
        "/x",
        "127.0.0.1:1".parse().unwrap(),
        json!({"ext-plugin-pre-req": phase(&[("say", json!({"body": "x"})), entry])})
    )]);
    config(cmd, json!({}), routes)
}

/// `check` and `proxy` both refuse `config` with exit 2 and a message that
/// has every one of `expected`, once, on stderr; the proxy never listens;
/// `check --offline` accepts it; nothing is left in the temp dir.
fn refused_everywhere(config: &Value, expected: &[&str]) {
    for args in [&["check"][..], &["proxy"][..]] {
        // The log off: what is left on stderr is the refusal itself.
        let out = extplug_exits(args, config, "off");
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        for e in expected {
            assert_eq!(
                out.stderr.matches(e).count(),
                1,
                "{args:?}: {e:?} not once in:\n{}",
                out.stderr
            );
        }
        assert!(
            !out.stdout.contains("listening"),
            "{args:?}: {}",
            out.stdout
        );
        assert!(out.left_behind.is_empty(), "{args:?}: {out:?}");
    }
    let out = extplug_exits(&["check", "--offline"], config, "off");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("valid: 1 route"), "{out:?}");
}

#[test]
fn a_misspelled_plugin_is_refused_with_the_runner_s_list() {
    let c = with_second_entry(demo(), ("sayy", json!({})));
    refused_everywhere(
        &c,
        &[r#"route r1: ext-plugin-pre-req: conf[1]: unknown plugin "sayy" (this runner has: "#],
    );
    let out = extplug_exits(&["check"], &c, "off");
    assert!(out.stderr.contains("rewrite, say)"), "{}", out.stderr);
}

#[test]
fn a_bad_plugin_configuration_is_refused_with_serde_s_reason() {
    let c = with_second_entry(demo(), ("say", json!({"bdy": "x"})));
    refused_everywhere(
        &c,
        &["route r1: ext-plugin-pre-req: conf[1]: plugin \"say\": unknown field `bdy`, expected one of"],
    );
}

#[test]
fn a_missing_runner_program_is_refused() {
    let c = with_second_entry(vec!["/nonexistent/my-runner".into()], ("say", json!({})));
    refused_everywhere(
        &c,
        &[r#"the runner did not start: cannot start "/nonexistent/my-runner": no such file"#],
    );
}

#[test]
fn a_runner_file_that_is_not_executable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my-runner");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = with_second_entry(vec![file.display().to_string()], ("say", json!({})));
    refused_everywhere(&c, &["not executable (mode 0644)"]);
}

#[test]
fn a_runner_that_exits_at_start_is_refused_with_its_status_and_last_words() {
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        "echo 'missing licence key' >&2; exit 3".into(),
    ];
    let c = with_second_entry(cmd, ("say", json!({})));
    refused_everywhere(
        &c,
        &["exited before opening its socket (exit status: 3); its last lines on stderr: missing licence key"],
    );
}

#[test]
fn a_runner_that_never_opens_its_socket_is_refused() {
    let (cmd, env) = bad("never-listen");
    let routes = json!([route(
        "r1",
        "/x",
        "127.0.0.1:1".parse().unwrap(),
        json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])})
    )]);
    let mut c = config(cmd, env, routes);
    c["ext-plugin"]["start_timeout_ms"] = json!(300);
    let out = extplug_exits(&["proxy"], &c, "off");
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("the runner did not start: did not open its socket within 300 ms"),
        "{out:?}"
    );
}

#[test]
fn check_accepts_a_good_configuration_and_leaves_nothing_behind() {
    let c = with_second_entry(demo(), ("say", json!({"body": "y"})));
    let out = extplug_exits(&["check"], &c, "off");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("valid: 1 route; the runner prepared all 1 chains"),
        "{out:?}"
    );
    assert!(out.left_behind.is_empty(), "{out:?}");
}

/// The runner accepts the chain at start, then (an upgrade, say) refuses
/// it: 500 naming the route, whatever the degradation setting, logged once
/// for many requests.
#[tokio::test]
async fn a_chain_refused_at_run_time_is_500_naming_the_route_and_logged_once() {
    let up = Upstream::start().await;
    let proxy = scripted(&up, |c| {
        c["ext-plugin"]["env"]["BAD_RUNNER_REFUSE_AFTER"] = json!("1");
        c["routes"][0]["plugins"]["ext-plugin-pre-req"]["allow_degradation"] = json!(true);
    });
    // The start-up PREPARE_CONF's token serves.
    assert_eq!(get(&proxy.url("/first")).await.status, 200);
    // The token is forgotten: prepared again, and now refused.
    for path in ["/tnf-once", "/again", "/and-again", "/more"] {
        let got = get(&proxy.url(path)).await;
        assert_eq!(got.status, 500, "{path}: {}", got.text());
        let body: Value = serde_json::from_str(&got.text()).unwrap();
        assert_eq!(
            body["error_msg"],
            "route r: ext-plugin-pre-req refused by the runner: conf[0]: unknown plugin \"any\" (refused: prepare 2)",
        );
    }
    assert_eq!(up.requests().len(), 1, "no degradation on a refused chain");
    let log = proxy.log();
    assert_eq!(
        log.matches("the runner refused the chain").count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn a_relayed_runner_line_has_one_timestamp() {
    let up = Upstream::start().await;
    let routes = json!([route(
        "r",
        "/x",
        up.addr,
        json!({"ext-plugin-pre-req": phase(&[("say", json!({"body": "x"}))])})
    )]);
    let proxy = crate::support::http::ProxyProc::start(&config(demo(), json!({}), routes));
    proxy.wait_runner_ready(1);
    proxy.wait_log("runner listening", 1);
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("runner listening"))
        .unwrap();
    assert!(line.contains("extplug::runner_output"), "{line}");
    // An RFC 3339 timestamp has a `T` between date and time, then `Z`.
    let stamps = line
        .split_whitespace()
        .filter(|w| w.len() >= 20 && w.as_bytes()[4] == b'-' && w.contains('T'))
        .count();
    assert_eq!(stamps, 1, "{line}");
    assert!(!line.contains('\u{1b}'), "no colors: {line:?}");
}

#[test]
fn a_route_error_has_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let text = r#"{
  "ext-plugin": { "cmd": ["x"] },
  "routes": [
    { "id": "1", "uri": "/a", "upstream": { "nodes": { "127.0.0.1:1": 1 } } },
    {
      "id": "2",
      "uri": "/b",
      "upstream": { "nodes": { "127.0.0.1:1": 1 } },
      "plugins": {
        "ext-plugin-pre-req": {
          "conf": [ { "name": "say", "valu": "{}" } ]
        }
      }
    }
  ]
}"#;
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        "{}:11:43: route `2` (routes[1]): at `plugins.ext-plugin-pre-req.conf[0].valu`: unknown field `valu`",
        path.display()
    );
    assert!(stderr.contains(&want), "{stderr}\nwanted: {want}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_runner_environment_error_is_printed_once() {
    let out = std::process::Command::new(crate::support::demo_runner())
        .env_clear()
        .env("APISIX_LISTEN_ADDRESS", "unix:/tmp/never-used.sock")
        .env("APISIX_CONF_EXPIRE_TIME", "soon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr
            .matches(r#"APISIX_CONF_EXPIRE_TIME="soon" is not a positive whole number"#)
            .count(),
        1,
        "{stderr}"
    );
}

/// SIGTERM while the runner is still starting stops the proxy then, not
/// after the start timeout, and leaves no runner or directory behind.
#[test]
fn a_signal_during_the_start_stops_the_proxy_cleanly() {
    let (cmd, env) = bad("never-listen");
    let routes = json!([route(
        "r1",
        "/x",
        "127.0.0.1:1".parse().unwrap(),
        json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])})
    )]);
    let mut c = config(cmd, env, routes);
    c["ext-plugin"]["start_timeout_ms"] = json!(120_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, c.to_string()).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let log = dir.path().join("log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["proxy", "--config"])
        .arg(&path)
        .env("TMPDIR", &tmp)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The runner's own line: it runs, and will never listen.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("bad-runner: never listening")
    {
        assert!(std::time::Instant::now() < deadline, "no runner");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let runner = crate::support::http::children_of(child.id() as i32);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty(), "it never listened");
    assert!(stderr.contains("stopped while starting"), "{stderr}");
    assert!(
        runner.iter().all(|p| !crate::support::http::alive(*p)),
        "{runner:?}"
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "{stderr}");
}

/// With `RUST_LOG=warn` on the proxy, the runner's warnings and panic
/// messages still reach the proxy's log, at their own level; its INFO lines
/// do not.
#[tokio::test]
async fn relayed_runner_lines_keep_their_level() {
    let up = Upstream::start().await;
    let fault =
        |mode: &str| json!({"ext-plugin-pre-req": phase(&[("fault", json!({"mode": mode}))])});
    let routes = json!([
        route("error", "/error", up.addr, fault("error")),
        route("panic", "/panic", up.addr, fault("panic")),
    ]);
    let proxy =
        crate::support::http::ProxyProc::start_logging(&config(demo(), json!({}), routes), "warn");
    assert_eq!(get(&proxy.url("/error")).await.status, 503);
    assert_eq!(get(&proxy.url("/panic")).await.status, 503);
    proxy.wait_log("panicking on purpose", 1);
    let log = proxy.log();
    let relayed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("extplug::runner_output"))
        .collect();
    let panicked = relayed
        .iter()
        .find(|l| l.contains("panicked at"))
        .unwrap_or_else(|| panic!("no panic line:\n{log}"));
    assert!(panicked.contains("ERROR"), "{panicked}");
    assert!(
        relayed
            .iter()
            .any(|l| l.contains(" WARN ") && l.contains("runner_sdk")),
        "no runner warning at WARN:\n{log}"
    );
    assert!(
        !relayed.iter().any(|l| l.contains(" INFO ")),
        "an INFO line passed a warn filter:\n{log}"
    );
}
