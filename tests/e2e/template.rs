//! `examples/plugin-template`, as a plugin author uses it: its own
//! `cargo test` passes, and its built runner, started by the real `extplug
//! proxy` from the template's own gateway.json, answers 403 to a request with
//! the header and lets the others through to the upstream.
//!
//! The template is its own workspace, so it builds into its own target dir
//! (`<target>/plugin-template`, kept between runs): the first run compiles
//! its dependencies again.

use crate::support::http::{send, ProxyProc, Upstream};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The template's directory.
fn template_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugin-template")
}

/// Where the template builds: next to this workspace's own builds, in the
/// same target dir (wherever `CARGO_TARGET_DIR` put it).
fn template_target() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_extplug"));
    // <target>/<profile>/extplug
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("plugin-template")
}

/// Runs `cargo <args>` on the template and fails with cargo's output if it fails.
fn cargo(args: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .arg("--manifest-path")
        .arg(template_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(template_target())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} on the template failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_template_passes_its_tests_and_its_runner_denies_behind_the_proxy() {
    // `--locked`: the template builds with its committed lock file, the
    // versions this repository was tested with.
    cargo(&["test", "--quiet", "--locked"]);
    cargo(&["build", "--quiet", "--locked"]);
    let runner = template_target().join("debug/my-plugins");
    assert!(runner.is_file(), "no runner at {}", runner.display());

    // The template's own gateway.json, pointed at this test's build, port
    // and upstream; the plugin conf is kept as the author wrote it.
    let text = std::fs::read_to_string(template_dir().join("gateway.json")).unwrap();
    let mut config: Value = serde_json::from_str(&text).expect("gateway.json is JSON");
    let cmd = &mut config["ext-plugin"]["cmd"][0];
    assert_eq!(
        cmd.as_str().map(|c| Path::new(c).file_name()),
        Some(Some("my-plugins".as_ref())),
        "gateway.json runs the template's binary"
    );
    *cmd = json!(runner.display().to_string());
    config["listen"] = json!("127.0.0.1:0");
    // Shipped for production: the admin listener is on.
    assert!(config["admin"]["listen"].is_string(), "no admin listener");
    config["admin"]["listen"] = json!("127.0.0.1:0");
    let up = Upstream::start().await;
    let routes = config["routes"].as_array_mut().expect("routes");
    assert!(!routes.is_empty(), "gateway.json has no route");
    for route in routes {
        route["upstream"]["nodes"] = json!({ up.addr.to_string(): 1 });
    }
    let proxy = ProxyProc::start(&config);

    let denied = send("GET", &proxy.url("/x"), &[("x-block", "1")], "").await;
    assert_eq!(
        (
            denied.status,
            denied.header("x-denied-by"),
            denied.text().as_str()
        ),
        (403, Some("deny-header"), "denied\n"),
        "log:\n{}",
        proxy.log()
    );
    assert!(
        up.requests().is_empty(),
        "a denied request reached the upstream"
    );

    let passed = send("GET", &proxy.url("/x"), &[("x-other", "1")], "").await;
    assert_eq!(
        (passed.status, passed.text().as_str()),
        (200, "upstream says hi")
    );
    let seen = up.last();
    assert_eq!(
        (seen.target.as_str(), seen.header("x-other")),
        ("/x", Some("1"))
    );
}

/// A plugin author compiles the protocol and the SDK, never the gateway:
/// `runner-sdk` depends on `extplug` without its `host` feature, so the
/// template's whole dependency tree (build and dev dependencies included)
/// has no HTTP server, etcd client, metrics registry or argument parser.
#[test]
fn the_template_compiles_no_host_dependency() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--prefix", "none", "--format", "{p}"])
        .arg("--manifest-path")
        .arg(template_dir().join("Cargo.toml"))
        .output()
        .expect("running cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree on the template failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // `{p}` is "name version (source)": the name is the first word.
    let names: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        names.contains("runner-sdk") && names.contains("extplug"),
        "the tree is the template's: {names:?}"
    );
    let host_only = ["hyper", "etcd-client", "prometheus", "clap"];
    let found: Vec<&&str> = host_only.iter().filter(|n| names.contains(**n)).collect();
    assert!(
        found.is_empty(),
        "the plugin template compiles host dependencies {found:?}:\n{tree}"
    );
}

/// The plugin author's guide shows the template's code: every `rust`,
/// `toml` and `json` block of the "A plugin, step by step" section of
/// `docs/plugins.md` is, verbatim, part of the template's `src/main.rs`,
/// `Cargo.toml` or `gateway.json`, which the test above builds and runs. So
/// every block of the guide compiles.
#[test]
fn the_plugin_guide_shows_the_template_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/plugins.md")).unwrap();
    let start = guide
        .find("\n## A plugin, step by step\n")
        .expect("docs/plugins.md has an \"A plugin, step by step\" section");
    let section = &guide[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let read = |file: &str| std::fs::read_to_string(template_dir().join(file)).unwrap();
    let (main_rs, cargo_toml, gateway) = (
        read("src/main.rs"),
        read("Cargo.toml"),
        read("gateway.json"),
    );
    let mut checked = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_start() != "```")
            .collect();
        let block = block.join("\n");
        let (file, text) = match lang {
            "rust" => ("src/main.rs", &main_rs),
            "toml" => ("Cargo.toml", &cargo_toml),
            "json" => ("gateway.json", &gateway),
            _ => continue,
        };
        assert!(
            text.contains(&block),
            "a {lang} block of docs/plugins.md is not in the template's {file}:\n{block}"
        );
        checked.push(lang.to_owned());
    }
    assert!(
        checked.iter().filter(|l| *l == "rust").count() >= 2,
        "the guide shows the template's code: {checked:?}"
    );
}

/// `name version` of every package in a lock file.
fn locked_versions(lock: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(lock).unwrap();
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            out.push((n, v.trim_matches('"').to_owned()));
        }
    }
    out
}

/// The template's lock file holds the versions the workspace's lock holds
/// (it is the workspace's, pruned), so that a plugin author builds what
/// this repository tested: after `cargo update`, refresh it as the docs say.
#[test]
fn the_template_lock_has_the_workspace_versions() {
    let workspace = locked_versions(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"));
    let template = locked_versions(&template_dir().join("Cargo.lock"));
    assert!(template.len() > 10, "{template:?}");
    let stray: Vec<_> = template
        .iter()
        .filter(|(n, _)| n != "my-plugins")
        .filter(|p| !workspace.contains(p))
        .collect();
    assert!(
        stray.is_empty(),
        "the template's Cargo.lock has versions the workspace's does not: {stray:?}; \
         refresh it: cp Cargo.lock examples/plugin-template/ && \
         cargo tree --manifest-path examples/plugin-template/Cargo.toml"
    );
}
