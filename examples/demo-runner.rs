//! The example runner: every example plugin (`say`, `rewrite`, `key-auth`,
//! `limit-count`, `inject-vars`, `body-size`, `response-headers`,
//! `body-rewrite`, `fault`) behind the protocol socket named by `APISIX_LISTEN_ADDRESS`.
//!
//! Build: `cargo build --release --example demo-runner`, which gives
//! `target/release/examples/demo-runner`.

mod plugins;

fn main() -> std::process::ExitCode {
    runner_sdk::Runner::new().plugins(plugins::all()).run()
}
