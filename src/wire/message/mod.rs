//! Typed protocol messages and their Cap'n Proto form.
//!
//! - `types.rs`: the messages as Rust types;
//! - `encode.rs`: [`Encode`], writing a message straight into the output buffer;
//! - `decode.rs`: [`Payload`], reading a frame's payload without copying it
//!   (the views it hands out, `&str` and `&[u8]`, point into the frame);
//! - `flat.rs`: the fast path for the pair lists of a one-segment message.
//!
//! `Pair` and `PairData` lists, which most messages carry, are written by
//! one generic writer and read by one generic reader (`write_pairs`,
//! `read_pairs`), so every list follows the same null rules.

pub(crate) mod decode;
mod encode;
mod flat;
mod types;

pub use decode::{reader_options, DecodeError, Payload};
pub use encode::{method_to_schema, Encode};
pub use types::{
    ErrorCode, ErrorResp, ExtraInfoAnswer, MessageType, PrepareConf, Prepared, ReqCall,
    ReqCallAnswer, RespCall, RespCallAnswer,
};

#[cfg(test)]
mod tests;
