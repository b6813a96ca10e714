//! Replays every input the fuzzers found (kept in `fuzz/regressions/TARGET/`)
//! through the same checks as the fuzz target, on the stable toolchain, in the
//! normal suite: a fixed finding stays fixed.

use bytes::BytesMut;
use extplug::host::config::Config;
use extplug::host::edge::path::normalize;
use extplug::wire::{FrameCodec, Payload, RequestOutcome, MAX_PAYLOAD};
use std::path::{Path, PathBuf};
use tokio_util::codec::Decoder;

/// The decoder reserves at most 64 KiB ahead of what arrived, and a growing
/// buffer at most doubles: capacity stays under twice the bytes received
/// plus twice that chunk, whatever length a frame header declares.
const SLACK: usize = 128 * 1024;

/// The inputs kept for `target`, with their names.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn frame_inputs() {
    for (name, data) in inputs("frame") {
        let Some((&knobs, stream)) = data.split_first() else {
            continue;
        };
        let max = if knobs & 0x80 == 0 {
            MAX_PAYLOAD
        } else {
            usize::from(knobs & 0x7f) * 64
        };
        let chunk = usize::from(knobs & 0x0f) + 1;
        let mut codec = FrameCodec::with_max_payload(max);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        'feed: for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => assert!(frame.payload.len() <= max, "{name:?}"),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            assert!(buf.capacity() <= 2 * fed + SLACK, "{name:?}");
        }
    }
}

#[test]
fn message_inputs() {
    for target in ["runner_messages", "host_messages"] {
        for (name, data) in inputs(target) {
            let Ok(p) = Payload::parse(&data) else {
                continue;
            };
            let _ = p.prepare_conf();
            let _ = p.req_call();
            let _ = p.resp_call();
            let _ = p.extra_info_resp();
            let _ = p.prepared();
            let _ = p.extra_info_req();
            let _ = p.error();
            if let Ok(answer) = p.req_call_answer() {
                if let RequestOutcome::Stop(stop) = answer.outcome {
                    assert!((200..=599).contains(&stop.status.as_u16()), "{name:?}");
                }
            }
            if let Ok(answer) = p.resp_call_answer() {
                if let Some(status) = answer.outcome.status {
                    assert!((200..=599).contains(&status.as_u16()), "{name:?}");
                }
            }
        }
    }
}

#[test]
fn config_inputs() {
    for (_, data) in inputs("config") {
        if let Ok(text) = std::str::from_utf8(&data) {
            if let Err(e) = Config::parse(text) {
                let _ = e.to_string();
            }
        }
    }
}

#[test]
fn path_inputs() {
    for (name, data) in inputs("path") {
        let Ok(raw) = std::str::from_utf8(&data) else {
            continue;
        };
        let Ok(path) = normalize(raw) else {
            continue;
        };
        let decoded = path.as_str();
        assert!(
            decoded.starts_with('/') && !decoded.contains('\0'),
            "{name:?}"
        );
        assert_eq!(normalize(&path.encoded()).as_ref(), Ok(&path), "{name:?}");
    }
}
