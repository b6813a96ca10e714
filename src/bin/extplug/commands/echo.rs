//! `extplug echo --listen ADDR`: the demo's echo upstream on its own.

use crate::runtime::fail;
use extplug::host;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Serves the echo upstream until SIGTERM/SIGINT. Prints `extplug echo
/// listening on http://ADDR` once it accepts connections.
pub fn run(listen: SocketAddr) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    runtime.block_on(async {
        // Handlers first: a signal right after the listening line must stop
        // us cleanly, not by its default action.
        let stopped = extplug::host::stop_on_signal(CancellationToken::new());
        let addr = match host::demo::start_echo_on(listen).await {
            Ok(addr) => addr,
            Err(e) => return fail(&format!("cannot listen on {listen}: {e}")),
        };
        println!("extplug echo listening on http://{addr}");
        let _ = std::io::stdout().flush();
        stopped.await;
        ExitCode::SUCCESS
    })
}
