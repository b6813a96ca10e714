//! The one place where the client's two encodings differ: a connection's
//! codec ([`HostCodec`]: frames, and messages written in the runner's
//! wire) and an answer's payload read in it ([`Answer`]). The call loop
//! above sees the model types only (`crate::wire`), whichever wire the
//! runner speaks.
//!
//! extplug's own wire (Cap'n Proto) and APISIX's (FlatBuffers) share the
//! frames and the message types; PROTOCOL.md, section 7, lists what they
//! say differently, and [`crate::wire::apisix`] reads and writes the
//! latter's payloads.

use crate::wire::apisix::{self, ApisixEncode};
use crate::wire::{
    DecodeError, Encode, ErrorResp, Frame, FrameCodec, FrameError, InfoKey, Payload, Prepared,
    Protocol, ReqCallAnswer, RespCallAnswer,
};
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

/// A runner connection's codec: [`FrameCodec`]'s frames, with messages
/// encoded in the runner's wire.
pub(crate) struct HostCodec {
    frames: FrameCodec,
    protocol: Protocol,
    /// Where APISIX's messages are built, reused for the connection's
    /// life (planus's builder allocates at its first message: nothing on
    /// a Cap'n Proto connection).
    flat: apisix::Builder,
}

impl HostCodec {
    /// A codec for a runner that speaks `protocol`.
    pub(crate) fn new(protocol: Protocol) -> Self {
        HostCodec {
            frames: FrameCodec::default(),
            protocol,
            flat: apisix::Builder::new(),
        }
    }
}

impl Decoder for HostCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.frames.decode(src)
    }
}

impl<T: Encode + ApisixEncode> Encoder<&T> for HostCodec {
    type Error = FrameError;

    /// # Errors
    /// As [`FrameCodec`]'s; on APISIX's wire also a message its schema
    /// cannot say (a method outside `A6.Method`): nothing is written then.
    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        match self.protocol {
            Protocol::Capnp => self.frames.encode(item, dst),
            Protocol::Apisix => self.frames.encode_apisix(item, &mut self.flat, dst),
        }
    }
}

/// A frame's payload, read in the runner's wire. Cap'n Proto's message is
/// parsed once (its segment table checked) and then read field by field;
/// a FlatBuffers message is read whole by each accessor, which checks
/// every offset it follows.
pub(crate) enum Answer<'a> {
    /// extplug's wire.
    Capnp(Payload<'a>),
    /// APISIX's wire: the payload's bytes.
    Apisix(&'a [u8]),
}

impl<'a> Answer<'a> {
    /// `bytes`, in `protocol`.
    ///
    /// # Errors
    /// A Cap'n Proto payload that is not a message (APISIX's are checked
    /// by each accessor).
    pub(crate) fn parse(protocol: Protocol, bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match protocol {
            Protocol::Capnp => Answer::Capnp(Payload::parse(bytes)?),
            Protocol::Apisix => Answer::Apisix(bytes),
        })
    }

    /// An ERROR answer. APISIX's carries a code only: its message is empty.
    pub(crate) fn error(&self) -> Result<ErrorResp, DecodeError> {
        match self {
            Answer::Capnp(p) => p.error(),
            Answer::Apisix(b) => apisix::error(b),
        }
    }

    /// A PREPARE_CONF answer. APISIX's declares no needs.
    pub(crate) fn prepared(&self) -> Result<Prepared, DecodeError> {
        match self {
            Answer::Capnp(p) => p.prepared(),
            Answer::Apisix(b) => apisix::prepared(b),
        }
    }

    /// The runner's EXTRA_INFO request.
    pub(crate) fn extra_info_req(&self) -> Result<InfoKey<'_>, DecodeError> {
        match self {
            Answer::Capnp(p) => p.extra_info_req(),
            Answer::Apisix(b) => apisix::extra_info_req(b),
        }
    }

    /// An HTTP_REQ_CALL answer, read as APISIX reads it on its wire (no
    /// action, or a rewrite that changes nothing, continues; a stop's
    /// status 0 is 200).
    pub(crate) fn req_call_answer(&self) -> Result<ReqCallAnswer, DecodeError> {
        match self {
            Answer::Capnp(p) => p.req_call_answer(),
            Answer::Apisix(b) => apisix::req_call_answer(b),
        }
    }

    /// An HTTP_RESP_CALL answer, read as APISIX reads it on its wire (a
    /// non-empty header list replaces the upstream's, an empty one keeps
    /// them; an empty body keeps the upstream's).
    pub(crate) fn resp_call_answer(&self) -> Result<RespCallAnswer, DecodeError> {
        match self {
            Answer::Capnp(p) => p.resp_call_answer(),
            Answer::Apisix(b) => apisix::resp_call_answer(b),
        }
    }
}
