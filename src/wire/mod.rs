//! The wire: frames (type byte, 24-bit big-endian length, payload) and the
//! typed messages they carry, converted to and from Cap'n Proto. Nothing
//! outside this module touches protocol bytes.

pub mod codec;
pub mod message;

/// The Rust code `capnpc` generates from `schema/ext_plugin.capnp`.
#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
pub mod ext_plugin_capnp {
    include!(concat!(env!("OUT_DIR"), "/ext_plugin_capnp.rs"));
}

pub use codec::{Frame, FrameCodec, FrameError, MAX_PAYLOAD};
pub use message::{
    DecodeError, Encode, ErrorCode, ErrorResp, ExtraInfoAnswer, MessageType, Payload, PrepareConf,
    Prepared, ReqCall, ReqCallAnswer, RespCall, RespCallAnswer,
};
