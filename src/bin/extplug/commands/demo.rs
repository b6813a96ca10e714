//! `extplug demo`: the proxy with the example runner on a built-in
//! configuration, in front of a built-in echo upstream.

use crate::runtime::{fail, serve};
use extplug::host;
use std::path::PathBuf;
use std::process::ExitCode;

/// Starts the echo upstream and serves the built-in configuration with the
/// example runner (`runner`, or `examples/demo-runner` next to this binary),
/// and a TLS listener on `tls_listen` with a certificate made now when it
/// is given.
pub fn run(
    listen: &str,
    admin: &str,
    tls_listen: Option<&str>,
    runner: Option<PathBuf>,
) -> ExitCode {
    let runner = match runner {
        Some(r) => r,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("examples").join("demo-runner"),
            Err(e) => return fail(&format!("cannot find this program's path: {e}")),
        },
    };
    if !runner.exists() {
        return fail(&format!(
            "the example runner {} is missing: build it with `cargo build --release --example demo-runner` (scripts/demo.sh does), or pass --runner",
            runner.display()
        ));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    let upstream = match runtime.block_on(host::demo::start_echo()) {
        Ok(addr) => addr,
        Err(e) => return fail(&format!("starting the echo upstream: {e}")),
    };
    let tls = match tls_listen.map(host::demo::DemoTls::self_signed).transpose() {
        Ok(tls) => tls,
        Err(e) => return fail(&format!("making the demo's self-signed certificate: {e}")),
    };
    let config = match host::demo::config(
        listen,
        admin,
        upstream,
        &runner.to_string_lossy(),
        tls.as_ref(),
    ) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    // The echo server lives on `runtime`; the proxy gets its own.
    let _keep = runtime;
    serve(
        config,
        None,
        None,
        Some(Box::new(move |at| {
            format!(
                "echo upstream on http://{upstream}; runner {}\nTry:\n{}",
                runner.display(),
                host::demo::curl_lines(at.proxy, at.admin, at.tls)
            )
        })),
    )
}
