//! The frame decoder, fed arbitrary bytes in arbitrary chunks: it never
//! panics, never yields a payload over its limit, and never holds much more
//! memory than the bytes that arrived, whatever length a header declares.
#![no_main]

use bytes::BytesMut;
use extplug::wire::FrameCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// The decoder reserves at most 64 KiB ahead of what arrived, and a growing
/// buffer at most doubles: capacity stays under twice the bytes received
/// plus twice that chunk, whatever length a frame header declares.
const SLACK: usize = 128 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit and the chunk size, the rest is the stream.
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let max = if knobs & 0x80 == 0 {
        extplug::wire::MAX_PAYLOAD
    } else {
        usize::from(knobs & 0x7f) * 64
    };
    let chunk = usize::from(knobs & 0x0f) + 1;
    let mut codec = FrameCodec::with_max_payload(max);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.payload.len() <= max),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            buf.capacity() <= 2 * fed + SLACK,
            "capacity {} after {} bytes",
            buf.capacity(),
            fed
        );
    }
    let _ = codec.decode_eof(&mut buf);
});
