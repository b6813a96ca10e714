//! A runner's output lines, relayed into the host's log with the runner's
//! pid and name, at the runner's own level.
//!
//! In the text format each line is an event of target
//! `extplug::runner_output` whose message is the line, less the level the
//! runner wrote (its own target stays in the message). The event's level
//! is the runner's: read from the line's first two words (`WARN target:
//! ...`, as `tracing` and most loggers write it; `2026-... ERROR ...`), or
//! ERROR for a panic message (`thread '...' (id) panicked at`), WARN for other
//! lines on stderr and INFO on stdout. So `RUST_LOG=warn` on the proxy
//! keeps the runner's warnings, errors and panics. In the JSON format
//! (`extplug --log-format json`; runners started then log JSON too, see
//! [`crate::wire::LOG_FORMAT_ENV`]) a line that is a JSON object is re-emitted as
//! that object, its own fields kept (`level`, `target`, `message`, ...),
//! with the host's `timestamp` and `pid`, `runner` and `stream` added (keys
//! in alphabetical order): one flat object per line, like the host's own. Other lines (a panic
//! message, a plain `println!`) become ordinary JSON events with the line
//! as `message`.

use std::io::Write;
use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// The target of relayed lines (`RUST_LOG=extplug::runner_output=off`
/// silences them).
pub const TARGET: &str = "extplug::runner_output";

/// Relays one line of `runner`'s (process `pid`) `stream` (`stdout` or
/// `stderr`) into the host's log.
pub fn forward_line(line: &str, pid: u32, runner: &str, stream: &'static str) {
    if crate::host::logging::log_format() == crate::host::logging::LogFormat::Json {
        if let Some((object, level)) = relayed_object(line, pid, runner, stream) {
            if enabled(level) {
                // One write of a whole line: lines of the host's own
                // events (also one write each) do not interleave with it.
                let _ = std::io::stderr().lock().write_all(object.as_bytes());
            }
            return;
        }
    }
    let (level, message) = text_level(line, stream);
    // `tracing` takes a level known at compile time: one call per level.
    match level {
        Level::ERROR => tracing::error!(target: TARGET, pid, runner, stream, "{message}"),
        Level::WARN => tracing::warn!(target: TARGET, pid, runner, stream, "{message}"),
        Level::INFO => tracing::info!(target: TARGET, pid, runner, stream, "{message}"),
        Level::DEBUG => tracing::debug!(target: TARGET, pid, runner, stream, "{message}"),
        Level::TRACE => tracing::trace!(target: TARGET, pid, runner, stream, "{message}"),
    }
}

/// Whether the host's filter lets relayed lines of `level` through.
fn enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(target: TARGET, Level::ERROR),
        Level::WARN => tracing::enabled!(target: TARGET, Level::WARN),
        Level::INFO => tracing::enabled!(target: TARGET, Level::INFO),
        Level::DEBUG => tracing::enabled!(target: TARGET, Level::DEBUG),
        Level::TRACE => tracing::enabled!(target: TARGET, Level::TRACE),
    }
}

/// A level as loggers write it (`WARN`, `warn`, `WARNING`...).
fn parse_level(word: &str) -> Option<Level> {
    match word.to_ascii_uppercase().as_str() {
        "ERROR" | "ERR" | "FATAL" | "CRITICAL" | "PANIC" => Some(Level::ERROR),
        "WARN" | "WARNING" => Some(Level::WARN),
        "INFO" | "NOTICE" => Some(Level::INFO),
        "DEBUG" => Some(Level::DEBUG),
        "TRACE" => Some(Level::TRACE),
        _ => None,
    }
}

/// The level of a text `line` from `stream`, and the line without the
/// level word when the line named one (see the module's doc).
fn text_level<'a>(line: &'a str, stream: &str) -> (Level, &'a str) {
    let mut rest = line.trim_start();
    // The level is the first word, or the second after a timestamp.
    for _ in 0..2 {
        let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Some(level) = parse_level(word) {
            return (level, after.trim_start());
        }
        rest = after.trim_start();
    }
    let level = if line.starts_with("thread '") && line.contains(" panicked at ") {
        Level::ERROR
    } else if stream == "stderr" {
        Level::WARN
    } else {
        Level::INFO
    };
    (level, line)
}

/// The JSON line to write for a runner's JSON `line` (newline included) and
/// its level (its `level` field; INFO without one), or `None` when `line`
/// is not a JSON object.
fn relayed_object(line: &str, pid: u32, runner: &str, stream: &str) -> Option<(String, Level)> {
    let serde_json::Value::Object(fields) = serde_json::from_str(line).ok()? else {
        return None;
    };
    let level = fields
        .get("level")
        .and_then(|l| l.as_str())
        .and_then(parse_level)
        .unwrap_or(Level::INFO);
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    let mut object = serde_json::Map::new();
    object.insert("timestamp".into(), timestamp.into());
    // The runner's own fields, except a timestamp of its own (ours is the
    // one the log ships with) and the names we add.
    for (key, value) in fields {
        if !matches!(key.as_str(), "timestamp" | "pid" | "runner" | "stream") {
            object.insert(key, value);
        }
    }
    object.insert("pid".into(), pid.into());
    object.insert("runner".into(), runner.into());
    object.insert("stream".into(), stream.into());
    let mut text = serde_json::Value::Object(object).to_string();
    text.push('\n');
    Some((text, level))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_runner_object_keeps_its_fields_and_gains_pid_and_runner() {
        let line = r#"{"level":"INFO","target":"demo_runner","message":"hi","conn":3}"#;
        let (out, level) = super::relayed_object(line, 42, "default", "stderr").unwrap();
        assert_eq!(level, tracing::Level::INFO);
        assert!(out.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["message"], "hi");
        assert_eq!(v["conn"], 3);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["runner"], "default");
        assert_eq!(v["stream"], "stderr");
        assert!(v["timestamp"].as_str().is_some_and(|t| !t.is_empty()));
    }

    #[test]
    fn a_runner_object_keeps_its_level() {
        let line = r#"{"level":"WARN","target":"t","message":"careful"}"#;
        let (_, level) = super::relayed_object(line, 1, "r", "stderr").unwrap();
        assert_eq!(level, tracing::Level::WARN);
    }

    #[test]
    fn text_lines_keep_their_level() {
        use super::text_level;
        use tracing::Level;
        let relayed = " WARN runner_sdk::runner::conn: slow call id=3";
        assert_eq!(
            text_level(relayed, "stderr"),
            (Level::WARN, "runner_sdk::runner::conn: slow call id=3")
        );
        let stamped = "2026-12-07T09:00:00.1Z ERROR demo: failed";
        assert_eq!(
            text_level(stamped, "stderr"),
            (Level::ERROR, "demo: failed")
        );
        assert_eq!(text_level("DEBUG x", "stdout"), (Level::DEBUG, "x"));
        let panic = "thread 'main' panicked at src/main.rs:3:5:";
        assert_eq!(text_level(panic, "stderr"), (Level::ERROR, panic));
        // Since Rust 1.89 the thread's id follows its name.
        let panic = "thread 'tokio-rt-worker' (24470) panicked at src/a.rs:1:1:";
        assert_eq!(text_level(panic, "stderr"), (Level::ERROR, panic));
        assert_eq!(text_level("plain", "stderr"), (Level::WARN, "plain"));
        assert_eq!(text_level("plain", "stdout"), (Level::INFO, "plain"));
        // A level word past the second is text.
        assert_eq!(
            text_level("a b ERROR c", "stdout"),
            (Level::INFO, "a b ERROR c")
        );
    }

    #[test]
    fn other_lines_are_not_objects() {
        assert!(super::relayed_object("thread 'main' panicked", 1, "r", "stderr").is_none());
        assert!(super::relayed_object("[1, 2]", 1, "r", "stdout").is_none());
    }
}
