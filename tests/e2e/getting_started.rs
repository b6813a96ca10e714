//! The road from the demo to a user's own gateway, as the README walks it:
//! `extplug echo` as an upstream, `examples/gateway.json` behind
//! `extplug proxy --listen`, what `extplug check` says, and `scripts/demo.sh`
//! when cargo's target directory is elsewhere.

use crate::support::http::{get, send};
use crate::support::stop_gracefully;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        stop_gracefully(&mut self.0, Duration::from_secs(5));
    }
}

/// Reads stdout lines until one starts with `prefix`; returns the rest.
fn wait_line(child: &mut Child, prefix: &str) -> String {
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(
            out.read_line(&mut line).unwrap(),
            0,
            "no line starting with {prefix:?}; got:\n{seen}"
        );
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            let rest = rest.to_owned();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in out.lines() {});
            return rest;
        }
        seen.push_str(&line);
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `extplug echo` on a free port; its address.
fn start_echo() -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["echo", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = wait_line(&mut child, "extplug echo listening on http://");
    (Proc(child), addr)
}

#[tokio::test]
async fn examples_gateway_json_starts_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, echo) = start_echo();
    // The file as shipped, with the two things a test cannot have fixed:
    // the upstream's port and where this build put the example runner.
    let shipped = std::fs::read_to_string(repo().join("examples/gateway.json")).unwrap();
    assert!(
        shipped.contains("127.0.0.1:9081")
            && shipped.contains("target/release/examples/demo-runner")
            && shipped.contains(r#""admin": { "listen": "127.0.0.1:9090" }"#)
    );
    let text = shipped
        .replace("127.0.0.1:9081", &echo)
        .replace(
            "target/release/examples/demo-runner",
            &crate::support::demo_runner().to_string_lossy(),
        )
        .replace("127.0.0.1:9090", "127.0.0.1:0");
    let config = dir.path().join("gateway.json");
    std::fs::write(&config, text).unwrap();
    // `--listen` overrides the file's 127.0.0.1:9080.
    let mut child = Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("TMPDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = wait_line(&mut child, "extplug listening on http://");
    let _proxy = Proc(child);
    let log = || std::fs::read_to_string(dir.path().join("proxy.log")).unwrap();
    assert_ne!(addr, "127.0.0.1:9080", "--listen was ignored");
    let url = |p: &str| format!("http://{addr}{p}");

    let got = get(&url("/hello")).await;
    assert_eq!(
        (got.status, got.header("x-plugin"), got.text().as_str()),
        (200, Some("say"), "hello from extplug\n")
    );
    assert_eq!(get(&url("/api/orders")).await.status, 401);
    // The bare `/api` is guarded too: no bypass in the file users copy.
    assert_eq!(get(&url("/api")).await.status, 401);
    assert!(!log().contains("do not guard the bare path"), "{}", log());
    let got = send(
        "GET",
        &url("/api/orders"),
        &[("x-api-key", "change-me")],
        "",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let echoed: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(echoed["path"], "/api/orders");
    assert_eq!(echoed["headers"]["x-gateway"][0], "extplug");
    let got = get(&url("/anything/else")).await;
    assert_eq!(got.status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(echoed["path"], "/anything/else");
}

#[test]
fn check_counts_routes_in_words() {
    let check = |path: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_extplug"))
            .args(["check", "--offline", "--config"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shipped = repo().join("examples/gateway.json");
    assert!(
        check(&shipped).contains("valid: 3 routes"),
        "{}",
        check(&shipped)
    );
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.json");
    std::fs::write(
        &one,
        r#"{"ext-plugin":{"cmd":["r"]},"routes":[{"id":1,"uri":"/x","upstream":{"nodes":{"127.0.0.1:1":1}}}]}"#,
    )
    .unwrap();
    assert!(check(&one).contains("valid: 1 route "), "{}", check(&one));
}

/// `scripts/demo.sh` runs the binaries cargo built, wherever cargo's target
/// directory is: here a link to this build's, so nothing is rebuilt, under a
/// path the script could only know by asking cargo.
#[tokio::test]
async fn demo_sh_follows_cargo_target_dir() {
    let target: PathBuf = Path::new(env!("CARGO_BIN_EXE_extplug"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let log = dir.path().join("demo.log");
    let mut child = Command::new(repo().join("scripts/demo.sh"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("CARGO_TARGET_DIR", &link)
        .env("TMPDIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_line(&mut child, "extplug listening on http://")
    }))
    .unwrap_or_else(|_| {
        panic!(
            "demo.sh did not start; its stderr:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    // The script execs the binary: the same process, started by that path.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap()).into_owned();
    let _demo = Proc(child);
    assert_eq!(
        Path::new(&argv0),
        link.join("release/extplug"),
        "demo.sh did not run the binary in CARGO_TARGET_DIR"
    );
    assert_eq!(get(&format!("http://{addr}/hello")).await.status, 201);
}
