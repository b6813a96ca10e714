//! A runner's output lines, relayed into the host's log with the runner's
//! pid and name.
//!
//! In the text format each line is an event of target
//! `extplug::runner_output` whose message is the line. In the JSON format
//! (`extplug --log-format json`; runners started then log JSON too, see
//! [`crate::wire::LOG_FORMAT_ENV`]) a line that is a JSON object is re-emitted as
//! that object, its own fields kept (`level`, `target`, `message`, ...),
//! with the host's `timestamp` and `pid`, `runner` and `stream` added (keys
//! in alphabetical order): one flat object per line, like the host's own. Other lines (a panic
//! message, a plain `println!`) become ordinary JSON events with the line
//! as `message`.

use std::io::Write;
use tracing::info;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// The target of relayed lines (`RUST_LOG=extplug::runner_output=off`
/// silences them).
pub const TARGET: &str = "extplug::runner_output";

/// Relays one line of `runner`'s (process `pid`) `stream` (`stdout` or
/// `stderr`) into the host's log.
pub fn forward_line(line: &str, pid: u32, runner: &str, stream: &'static str) {
    if crate::host::logging::log_format() == crate::host::logging::LogFormat::Json {
        if let Some(object) = relayed_object(line, pid, runner, stream) {
            if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
                // One write of a whole line: lines of the host's own
                // events (also one write each) do not interleave with it.
                let _ = std::io::stderr().lock().write_all(object.as_bytes());
            }
            return;
        }
    }
    info!(target: TARGET, pid, runner, stream, "{line}");
}

/// The JSON line to write for a runner's JSON `line` (newline included), or
/// `None` when `line` is not a JSON object.
fn relayed_object(line: &str, pid: u32, runner: &str, stream: &str) -> Option<String> {
    let serde_json::Value::Object(fields) = serde_json::from_str(line).ok()? else {
        return None;
    };
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
    Some(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_runner_object_keeps_its_fields_and_gains_pid_and_runner() {
        let line = r#"{"level":"INFO","target":"demo_runner","message":"hi","conn":3}"#;
        let out = super::relayed_object(line, 42, "default", "stderr").unwrap();
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
    fn other_lines_are_not_objects() {
        assert!(super::relayed_object("thread 'main' panicked", 1, "r", "stderr").is_none());
        assert!(super::relayed_object("[1, 2]", 1, "r", "stdout").is_none());
    }
}
