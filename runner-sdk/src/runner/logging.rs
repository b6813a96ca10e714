//! The runner's default logging: `tracing` to stderr, which the host reads
//! and logs as the runner's output.

/// Starts `tracing` output to stderr, filtered by `RUST_LOG` (default
/// `info`). Does nothing if a subscriber is already installed. With
/// `EXTPLUG_LOG_RELAYED=1` (set by the host that started this runner: it
/// relays the lines into its own log, with its own timestamp), lines have no
/// timestamp and no colors. With `EXTPLUG_LOG_FORMAT=json`, each line is
/// one JSON object (`timestamp` unless relayed, `level`, `target`, the
/// event's fields, `message` among them): the host forwards it as an object
/// with the runner's pid and name added.
///
/// This is the default logging of feature `logging` (on by default). Built
/// without it, this does nothing and the runner installs no subscriber: its
/// `tracing` events go to whatever subscriber the plugin author's `main`
/// installs, or nowhere.
///
/// A stderr that cannot be written (a pipe whose reader died with the host)
/// must never stop the process: write errors are dropped, and
/// `log_internal_errors(false)` keeps tracing from reporting them with
/// `eprintln!`, which panics on such a stderr.
pub fn init_logging() {
    #[cfg(feature = "logging")]
    {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let relayed = std::env::var_os(extplug::wire::LOG_RELAYED).is_some_and(|v| v == "1");
        let json = std::env::var_os(extplug::wire::LOG_FORMAT_ENV).is_some_and(|v| v == "json");
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(!json && !relayed && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .log_internal_errors(false)
            .with_writer(std::io::stderr);
        // Four shapes, four types: the builder's type changes with each choice.
        let _ = match (json, relayed) {
            // Flat: the event's fields next to `level` and `target`, as the
            // host's own JSON lines are.
            (true, true) => builder.json().flatten_event(true).without_time().try_init(),
            (true, false) => builder.json().flatten_event(true).try_init(),
            (false, true) => builder.without_time().try_init(),
            (false, false) => builder.try_init(),
        };
    }
}
