//! The frame codec: 1-byte type, 24-bit big-endian payload length, payload.
//! The only place that knows the 4-byte header.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The largest payload a frame can carry: 2^24 - 1 bytes.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// The most the decoder reserves ahead of the bytes it has, while a frame
/// is incomplete. The buffer grows with what actually arrives, so a peer
/// that declares 16 MiB and sends 10 bytes costs a few KiB, not 16 MiB.
pub const RESERVE_CHUNK: usize = 64 * 1024;

/// One frame as read from the socket: its type byte and its payload, not yet
/// decoded (so that an unknown type or a bad payload can be answered without
/// closing the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The type byte.
    pub kind: u8,
    /// The payload: one Cap'n Proto message, if the peer follows the protocol.
    pub payload: BytesMut,
}

/// A framing violation, or the socket failed. After any of these the stream
/// is out of step: answer if possible, then close that connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared (or, when sending, the actual) payload length is over the limit.
    #[error("frame payload of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The length declared or attempted.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame: {have} of {need} bytes received")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needs (header included).
        need: usize,
    },
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into [`Frame`]s and writes frame headers.
///
/// Encoding goes through [`FrameCodec::begin`] / [`FrameCodec::finish`] so that
/// a Cap'n Proto message is serialized straight into the output buffer, with
/// no intermediate copy.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_payload: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            max_payload: MAX_PAYLOAD,
        }
    }
}

impl FrameCodec {
    /// A codec that refuses payloads over `max_payload` bytes (at most
    /// [`MAX_PAYLOAD`]; larger values are lowered to it).
    pub fn with_max_payload(max_payload: usize) -> Self {
        FrameCodec {
            max_payload: max_payload.min(MAX_PAYLOAD),
        }
    }

    /// The payload limit in force.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Starts a frame of type `kind` at the end of `dst`: writes the header
    /// with a zero length and returns where the frame starts.
    pub fn begin(dst: &mut BytesMut, kind: u8) -> usize {
        let start = dst.len();
        dst.put_u32(u32::from(kind) << 24);
        start
    }

    /// Ends the frame started at `start`: patches its length.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload is over the limit; the
    /// frame is removed from `dst` (nothing truncated is ever sent).
    pub fn finish(&self, dst: &mut BytesMut, start: usize) -> Result<(), FrameError> {
        let len = dst.len() - start - HEADER_LEN;
        if len > self.max_payload {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        let kind = dst[start];
        let header = (u32::from(kind) << 24) | len as u32;
        dst[start..start + HEADER_LEN].copy_from_slice(&header.to_be_bytes());
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = src[0];
        let len = usize::from(src[1]) << 16 | usize::from(src[2]) << 8 | usize::from(src[3]);
        // Check the declared length before reserving anything for it.
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if src.len() < HEADER_LEN + len {
            // Room for the next chunk only: memory follows the bytes received,
            // never the length declared (see RESERVE_CHUNK).
            src.reserve((HEADER_LEN + len - src.len()).min(RESERVE_CHUNK));
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len);
        Ok(Some(Frame { kind, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let need = if src.len() < HEADER_LEN {
                    HEADER_LEN
                } else {
                    HEADER_LEN
                        + (usize::from(src[1]) << 16
                            | usize::from(src[2]) << 8
                            | usize::from(src[3]))
                };
                let have = src.len();
                src.clear();
                Err(FrameError::Truncated { have, need })
            }
        }
    }
}

/// Raw frames (type byte and payload bytes), for tests and tools that speak
/// the framing without Cap'n Proto.
impl Encoder<(u8, &[u8])> for FrameCodec {
    type Error = FrameError;

    fn encode(
        &mut self,
        (kind, payload): (u8, &[u8]),
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        if payload.len() > self.max_payload {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        dst.reserve(HEADER_LEN + payload.len());
        let start = Self::begin(dst, kind);
        dst.extend_from_slice(payload);
        self.finish(dst, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        FrameCodec::default()
            .encode((kind, payload), &mut dst)
            .unwrap();
        dst.to_vec()
    }

    #[test]
    fn header_is_type_then_big_endian_length() {
        let bytes = frame_bytes(2, &[9; 0x010203]);
        assert_eq!(&bytes[..4], &[2, 0x01, 0x02, 0x03]);
        assert_eq!(bytes.len(), 4 + 0x010203);
    }

    #[test]
    fn frame_split_at_every_byte_boundary() {
        let mut stream = frame_bytes(2, b"hello world");
        stream.extend_from_slice(&[7, 0, 0]); // the start of the next frame
        for cut in 0..=stream.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&stream[..cut]);
            let first = codec.decode(&mut buf).unwrap();
            let frame = match first {
                Some(frame) => frame,
                None => {
                    assert!(cut < 15, "no frame after {cut} bytes");
                    buf.extend_from_slice(&stream[cut..]);
                    codec.decode(&mut buf).unwrap().expect("a whole frame")
                }
            };
            assert_eq!(frame.kind, 2);
            assert_eq!(&frame.payload[..], b"hello world");
            // The bytes after the frame stay unread.
            if cut >= 15 {
                assert_eq!(&buf[..], &stream[15..cut]);
            } else {
                assert_eq!(&buf[..], &[7, 0, 0]);
            }
        }
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut stream = frame_bytes(1, b"a");
        stream.extend(frame_bytes(2, b""));
        stream.extend(frame_bytes(3, b"ccc"));
        let mut buf = BytesMut::from(&stream[..]);
        let mut codec = FrameCodec::default();
        let got: Vec<(u8, Vec<u8>)> = std::iter::from_fn(|| codec.decode(&mut buf).unwrap())
            .map(|f| (f.kind, f.payload.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![(1, b"a".to_vec()), (2, vec![]), (3, b"ccc".to_vec())]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn declared_length_over_the_limit_is_refused_before_allocating() {
        let mut codec = FrameCodec::with_max_payload(1024);
        let mut buf = BytesMut::from(&[2u8, 0xff, 0xff, 0xff][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 0xff_ffff,
                max: 1024
            }
        ));
        assert!(buf.capacity() < 1024, "reserved {} bytes", buf.capacity());
    }

    #[test]
    fn a_large_declared_length_reserves_only_what_arrives() {
        let mut codec = FrameCodec::default();
        // Declares the largest payload, then sends 10 bytes of it.
        let mut buf = BytesMut::from(&[2u8, 0xff, 0xff, 0xff][..]);
        buf.extend_from_slice(&[0; 10]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 2 * RESERVE_CHUNK,
            "reserved {} bytes for 14 received",
            buf.capacity()
        );
        // As bytes arrive, the buffer grows with them and the frame completes.
        let mut sent = 10;
        while sent < MAX_PAYLOAD {
            let n = (MAX_PAYLOAD - sent).min(1 << 20);
            buf.extend_from_slice(&vec![1; n]);
            sent += n;
            let frame = codec.decode(&mut buf).unwrap();
            assert!(
                buf.capacity() <= 2 * (HEADER_LEN + sent) + RESERVE_CHUNK,
                "capacity {} after {sent} bytes",
                buf.capacity()
            );
            if sent == MAX_PAYLOAD {
                assert_eq!(frame.expect("the whole frame").payload.len(), MAX_PAYLOAD);
            } else {
                assert!(frame.is_none());
            }
        }
    }

    #[test]
    fn the_largest_payload_is_accepted_and_one_more_byte_refused() {
        let mut dst = BytesMut::new();
        let mut codec = FrameCodec::default();
        let big = vec![0u8; MAX_PAYLOAD];
        codec.encode((2, &big[..]), &mut dst).unwrap();
        assert_eq!(&dst[..4], &[2, 0xff, 0xff, 0xff]);
        let mut dst = BytesMut::new();
        let bigger = vec![0u8; MAX_PAYLOAD + 1];
        let err = codec.encode((2, &bigger[..]), &mut dst).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == MAX_PAYLOAD + 1));
        assert!(dst.is_empty(), "nothing of a refused frame is left to send");
    }

    #[test]
    fn finish_refuses_an_oversize_payload_and_removes_it() {
        let codec = FrameCodec::with_max_payload(3);
        let mut dst = BytesMut::from(&b"keep"[..]);
        let start = FrameCodec::begin(&mut dst, 1);
        dst.extend_from_slice(b"1234");
        assert!(codec.finish(&mut dst, start).is_err());
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn unknown_type_is_still_a_frame() {
        let mut buf = BytesMut::from(&frame_bytes(200, b"x")[..]);
        let frame = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.kind, 200);
    }

    #[test]
    fn truncated_at_eof_is_an_error_and_clean_eof_is_not() {
        let mut codec = FrameCodec::default();
        let whole = frame_bytes(2, b"hello");
        for cut in 1..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let err = codec.decode_eof(&mut buf).unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { have, .. } if have == cut),
                "{err}"
            );
        }
        let mut empty = BytesMut::new();
        assert!(codec.decode_eof(&mut empty).unwrap().is_none());
    }
}
