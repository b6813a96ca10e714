//! # extplug
//!
//! Out-of-process plugins for API gateways, on the protocol of Apache APISIX's
//! external plugins with Cap'n Proto payloads (see `docs/PROTOCOL.md` and
//! `schema/ext_plugin.capnp`).
//!
//! - [`wire`]: frames and typed messages; the only module that touches bytes.
//! - [`runner`]: the runner server that hosts `runner_sdk` plugins.
//! - `host` (feature `host`, on by default): the gateway side.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "host")]
pub mod host;
pub mod runner;
pub mod wire;

pub use runner::Runner;
pub use runner_sdk;

/// Set (to `1`) by the host in its runner's environment: the runner's
/// output is relayed into the host's log, which adds its own timestamp, so
/// [`init_logging`] then leaves out the runner's timestamp and colors (one
/// timestamp per relayed line).
pub const LOG_RELAYED: &str = "EXTPLUG_LOG_RELAYED";

/// Starts `tracing` output to stderr, filtered by `RUST_LOG` (default
/// `info`). Does nothing if a subscriber is already installed. With
/// [`LOG_RELAYED`] set to `1` (a runner started by the host), lines have no
/// timestamp and no colors: the host's log adds its own.
///
/// A stderr that cannot be written (a pipe whose reader died with the host)
/// must never stop the process: write errors are dropped, and
/// `log_internal_errors(false)` keeps tracing from reporting them with
/// `eprintln!`, which panics on such a stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let relayed = std::env::var_os(LOG_RELAYED).is_some_and(|v| v == "1");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!relayed && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = if relayed {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT (the runner's and the
/// proxy's way to start a graceful stop).
///
/// The handlers are installed when this is called, not when the returned
/// future is first polled: a signal that arrives while the process is still
/// starting (before the spawned task runs) stops it gracefully instead of
/// killing it. Must be called within a tokio runtime.
pub fn stop_on_signal(
    shutdown: tokio_util::sync::CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = streams else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // Logging cannot fail or panic (see `init_logging`), so say why first.
        tracing::info!(signal = name, "stopping");
        shutdown.cancel();
    }
}
