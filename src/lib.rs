//! # extplug
//!
//! Out-of-process plugins for API gateways, on the protocol of Apache APISIX's
//! external plugins with Cap'n Proto payloads (see `docs/PROTOCOL.md` and
//! `wire/schema/ext_plugin.capnp`). This crate is the gateway side and the
//! `extplug` binary; plugins and their runner are written with the
//! `runner-sdk` crate alone.
//!
//! - [`wire`]: frames, typed messages and the protocol's data types (the
//!   `extplug-wire` crate, shared with `runner-sdk`).
//! - [`host`]: the runner's supervisor, the ext-plugin client, the HTTP proxy.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod host;

/// The wire protocol (the `extplug-wire` crate), re-exported so that
/// `extplug::wire::...` paths work.
pub use extplug_wire as wire;

pub use extplug_wire::LOG_RELAYED;

pub use extplug_wire::LOG_FORMAT_ENV;

/// The shape of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people: `TIMESTAMP LEVEL target: message key=value ...`.
    #[default]
    Text,
    /// For log shippers: one JSON object per line, the event's fields at
    /// the top level next to `timestamp`, `level` and `target`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    /// `text` or `json`.
    ///
    /// # Errors
    /// Any other word, named in the message.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{other:?} is not a log format: use `text` or `json`"
            )),
        }
    }
}

/// The format chosen by [`init_logging_as`] (text until it is called).
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The log format of this process: the host relays its runners' lines in
/// it, and asks its runners for it.
pub fn log_format() -> LogFormat {
    LOG_FORMAT.get().copied().unwrap_or_default()
}

/// [`init_logging_as`] in the text format.
pub fn init_logging() {
    init_logging_as(LogFormat::Text);
}

/// Starts `tracing` output to stderr in `format`, filtered by `RUST_LOG`
/// (default `info`). Does nothing if a subscriber is already installed.
///
/// A stderr that cannot be written (a pipe whose reader died) must never
/// stop the process: write errors are dropped, and
/// `log_internal_errors(false)` keeps tracing from reporting them with
/// `eprintln!`, which panics on such a stderr.
pub fn init_logging_as(format: LogFormat) {
    let _ = LOG_FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
    };
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT (the host's and the
/// proxy's way to start a graceful stop). The runner has its own,
/// `runner_sdk::runner::stop_on_signal`: the host does not depend on the SDK.
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
