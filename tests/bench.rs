//! The benchmark commands still run and report (a smoke test: speed itself is
//! never asserted in tests, only measured with `extplug bench`).

mod common;

use std::process::Command;

fn bench(what: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args([
            "bench",
            what,
            "--seconds",
            "0.2",
            "--rounds",
            "1",
            "--connections",
            "2",
            "--runner",
        ])
        .arg(common::demo_runner())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn bench_runner_reports_both_sides_and_a_ratio() {
    let out = bench("runner");
    assert!(
        out.contains("round 1: bare") && out.contains("median: bare") && out.contains("ratio"),
        "{out}"
    );
}

#[test]
fn bench_proxy_reports_both_sides_and_a_ratio() {
    let out = bench("proxy");
    assert!(
        out.contains("round 1: no plugin")
            && out.contains("median: no plugin")
            && out.contains("ratio"),
        "{out}"
    );
}
