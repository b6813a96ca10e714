//! The benchmark commands still run and report (a smoke test: speed itself is
//! never asserted in tests, only measured with `extplug bench` and
//! `scripts/bench-e2e.sh`).

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_extplug"))
        .arg("bench")
        .args(args)
        .arg("--runner")
        .arg(crate::support::demo_runner())
        .output()
        .unwrap()
}

fn success(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The cells of the table row whose first cell is `case`.
fn row<'a>(out: &'a str, case: &str) -> Vec<&'a str> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("| {case} |")))
        .unwrap_or_else(|| panic!("no row for {case:?} in\n{out}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

fn number(cell: &str) -> f64 {
    cell.trim_end_matches("µs")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not a number"))
}

#[test]
fn bench_runner_compares_every_case_with_the_floor() {
    let out = success(bench(&[
        "runner",
        "--seconds",
        "0.2",
        "--rounds",
        "1",
        "--connections",
        "1,2",
        "--headers",
        "10",
        "--bodies",
        "1024",
        "--growth-connections",
        "2",
        "--threads",
        "1",
    ]));
    assert!(
        out.contains("| case | frame | floor calls/s | floor p99 | runner calls/s | runner p99 | ratio | p99 ratio |"),
        "{out}"
    );
    for case in [
        "20 headers, 1 connection",
        "20 headers, 2 connections",
        "10 headers, 2 connections",
        "1 KiB body, 2 connections",
    ] {
        let cells = row(&out, case);
        let (floor, runner, ratio) = (number(cells[2]), number(cells[4]), number(cells[6]));
        assert!(
            floor > 0.0 && runner > 0.0,
            "{case}: no calls answered\n{out}"
        );
        // One round: the ratio is that round's runner / floor.
        assert!(
            (ratio - runner / floor).abs() < 0.01,
            "{case}: ratio {ratio} is not {runner} / {floor}\n{out}"
        );
        assert!(
            number(cells[3]) > 0.0 && number(cells[5]) > 0.0,
            "{case}: p99\n{out}"
        );
    }
    // The frames grow with the headers and carry the body.
    let size = |case: &str| row(&out, case)[1].to_owned();
    assert_ne!(
        size("10 headers, 2 connections"),
        size("20 headers, 2 connections")
    );
    assert!(
        out.contains("runner resident memory (VmRSS / VmHWM): "),
        "{out}"
    );
}

/// Over APISIX's wire: the connection and header cases, no body case (the
/// runner would ask the body with EXTRA_INFO).
#[test]
fn bench_runner_speaks_apisix_wire_too() {
    let out = success(bench(&[
        "runner",
        "--protocol",
        "apisix",
        "--seconds",
        "0.2",
        "--rounds",
        "1",
        "--connections",
        "2",
        "--headers",
        "10",
        "--growth-connections",
        "2",
        "--threads",
        "1",
    ]));
    assert!(out.contains("over the apisix wire"), "{out}");
    assert!(out.contains("no body cases over APISIX's wire"), "{out}");
    for case in ["20 headers, 2 connections", "10 headers, 2 connections"] {
        let cells = row(&out, case);
        assert!(
            number(cells[2]) > 0.0 && number(cells[4]) > 0.0,
            "{case}\n{out}"
        );
    }
    assert!(!out.contains("body, 2 connections |"), "{out}");
}

/// Over either wire (APISIX's error has only its code).
#[test]
fn bench_runner_names_a_chain_the_runner_refuses() {
    for (protocol, reason) in [("capnp", "no-such-plugin"), ("apisix", "badRequest")] {
        let out = bench(&[
            "runner",
            "--protocol",
            protocol,
            "--seconds",
            "0.2",
            "--rounds",
            "1",
            "--plugin",
            "no-such-plugin={}",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("refused the chain")
                && stderr.contains("no-such-plugin")
                && stderr.contains(reason),
            "{protocol}: {stderr}"
        );
    }
}

#[test]
fn bench_proxy_reports_both_sides_and_a_ratio() {
    let out = success(bench(&[
        "proxy",
        "--seconds",
        "0.2",
        "--rounds",
        "1",
        "--connections",
        "2",
    ]));
    assert!(
        out.contains("round 1: no plugin")
            && out.contains("median: no plugin")
            && out.contains("ratio"),
        "{out}"
    );
}

/// `scripts/bench-e2e.sh` needs wrk, nginx and minutes, so it does not run
/// here; it must at least parse, and refuse a bad setting before it starts
/// anything (no build, no install: the settings are checked first).
#[test]
fn the_end_to_end_script_parses_and_checks_its_settings() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-e2e.sh");
    let parse = Command::new("bash").args(["-n", script]).output().unwrap();
    assert!(
        parse.status.success(),
        "{}",
        String::from_utf8_lossy(&parse.stderr)
    );
    let bad = Command::new("bash")
        .arg(script)
        .env("ROUNDS", "three")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ROUNDS=three is not a positive whole number"),
        "{stderr}"
    );
}
