//! The example runner: every example plugin (`say`, `rewrite`, `key-auth`,
//! `limit-count`, `inject-vars`, `body-size`, `response-headers`,
//! `body-rewrite`, `fault`) behind the protocol socket named by `APISIX_LISTEN_ADDRESS`.
//!
//! Build: `cargo build --release --example demo-runner`, which gives
//! `target/release/examples/demo-runner`.
//!
//! `DEMO_RUNNER_THREADS=N` sets the threads that serve calls
//! ([`runner_sdk::Runner::worker_threads`]; `1`: a current-thread runtime;
//! default one per core), to compare runtime layouts without rebuilding.

mod plugins;

use std::process::ExitCode;

/// The variable that sets [`runner_sdk::Runner::worker_threads`].
const THREADS: &str = "DEMO_RUNNER_THREADS";

fn main() -> ExitCode {
    let threads = match std::env::var(THREADS) {
        Err(_) => 0,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("demo-runner: {THREADS}={v:?} is not a whole number of threads");
                return ExitCode::from(2);
            }
        },
    };
    runner_sdk::Runner::new()
        .plugins(plugins::all())
        .worker_threads(threads)
        .run()
}
