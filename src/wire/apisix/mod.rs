//! Apache APISIX's wire: the same frames and message types as extplug's
//! own, with FlatBuffers payloads (`schema/ext-plugin.fbs`, the schema of
//! `api7/ext-plugin-proto`), read into and written from the same model
//! types as the Cap'n Proto codec ([`crate::wire::PrepareConf`], [`crate::wire::ReqCall`],
//! [`crate::wire::RequestOutcome`]...). Nothing above this module knows which
//! encoding a connection speaks, beyond choosing one.
//!
//! - `decode.rs`: payload to model. Every read is checked (planus verifies
//!   each offset, length, UTF-8 text, enum value and union tag as it reads),
//!   and a message is read whole before anything acts on it, so a malformed
//!   one is a [`DecodeError`](crate::wire::DecodeError) and never a panic.
//! - `encode.rs`: model to payload, through a reused [`planus::Builder`]
//!   ([`FrameCodec::encode_apisix`](crate::wire::FrameCodec::encode_apisix)).
//!
//! What the two wires say differently (a prepare answer without needs, an
//! error without a message, the response call without extra info...) is
//! listed in PROTOCOL.md, section 7, and noted where it is handled here.

mod decode;
mod encode;

pub use decode::{
    error, extra_info_req, extra_info_resp, prepare_conf, prepared, req_call, req_call_answer,
    resp_call, resp_call_answer,
};
pub use encode::ApisixEncode;
/// The FlatBuffers builder [`FrameCodec::encode_apisix`](crate::wire::FrameCodec::encode_apisix)
/// writes into (planus's), so that users need not depend on planus.
pub use planus::Builder;

/// The Rust code planus generates from `schema/ext-plugin.fbs`
/// (`scripts/gen-apisix.sh`; committed, so that building needs no schema
/// compiler). Its `unsafe` blocks are planus's table writer.
#[allow(
    missing_docs,
    unsafe_code,
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    unreachable_pub
)]
pub mod generated {
    include!("generated.rs");
}

#[cfg(test)]
mod tests;
