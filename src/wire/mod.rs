//! The protocol of extplug, on both sides.
//!
//! Frames (type byte, 24-bit big-endian length, payload) and the typed
//! messages they carry, converted to and from Cap'n Proto
//! (`schema/ext_plugin.capnp`, extplug's own wire) and FlatBuffers
//! (`schema/ext-plugin.fbs`, Apache APISIX's wire: [`apisix`]; one model,
//! two encodings, told apart by [`Protocol::detect`]), plus the plain data
//! those messages carry:
//! the request and response of a call ([`RequestParts`], [`ResponseParts`]),
//! what a chain decided ([`RequestOutcome`], [`ResponseOutcome`]), what it
//! will read ([`Needs`]) and what it may ask for ([`InfoKey`]).
//!
//! Both the runner (`runner-sdk`, which depends on this crate without its
//! default `host` feature) and the host ([`crate::host`]) use this module,
//! so neither side depends on the other. Nothing else touches protocol
//! bytes. It has no runtime and no logging: the codec is a `tokio-util`
//! codec that any `Framed` stream can use.

pub mod apisix;
pub mod codec;
mod convert;
mod info;
pub mod message;
mod needs;
mod protocol;
mod request;
mod response;

/// The Rust code `capnpc` generates from `schema/ext_plugin.capnp`.
#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
pub mod ext_plugin_capnp {
    include!(concat!(env!("OUT_DIR"), "/ext_plugin_capnp.rs"));
}

pub use codec::{Frame, FrameCodec, FrameError, MAX_PAYLOAD};
pub use convert::{
    checked_header_value, IntoHeaderName, IntoHeaderValue, IntoStatus, InvalidValue,
};
pub use info::InfoKey;
pub use message::{
    DecodeError, Encode, ErrorCode, ErrorResp, ExtraInfoAnswer, MessageType, Payload, PrepareConf,
    Prepared, ReqCall, ReqCallAnswer, RespCall, RespCallAnswer,
};
pub use needs::Needs;
pub use protocol::Protocol;
pub use request::{RequestOutcome, RequestParts, Rewrite, Stop};
pub use response::{ResponseOutcome, ResponseParts};

/// Set (to `1`) by the host in the environment of a runner it starts: the
/// runner's output is relayed into the host's log, which adds its own
/// timestamp, so the runner's default logging leaves out its timestamp and
/// colors (one timestamp per relayed line).
pub const LOG_RELAYED: &str = "EXTPLUG_LOG_RELAYED";

/// The log format of a runner's default logging: `json` gives one JSON
/// object per line (`text`, or unset, the human format). The host sets it
/// to `json` for the runners it starts when its own log is JSON
/// (`extplug --log-format json`), unless the runner's `env` sets it.
pub const LOG_FORMAT_ENV: &str = "EXTPLUG_LOG_FORMAT";

/// The statuses a plugin may answer with (stop, or a response-phase status).
/// The decoder refuses any other in an answer, so that a runner cannot make
/// the gateway send a 1xx or an out-of-range status.
pub const ALLOWED_STATUS: std::ops::RangeInclusive<u16> = 200..=599;
