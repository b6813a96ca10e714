//! The host's log: the format of its lines on stderr (text or JSON), chosen
//! once at start-up, and read by the runner supervisor to relay its runners'
//! lines in the same format.

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
pub fn init_logging_as(format: LogFormat) {
    init_logging_with(format, "info");
}

/// [`init_logging_as`] with this filter when `RUST_LOG` is not set
/// (`extplug check` logs `warn` and above unless `--verbose`).
///
/// A stderr that cannot be written (a pipe whose reader died) must never
/// stop the process: write errors are dropped, and
/// `log_internal_errors(false)` keeps tracing from reporting them with
/// `eprintln!`, which panics on such a stderr.
pub fn init_logging_with(format: LogFormat, default_filter: &str) {
    let _ = LOG_FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
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
