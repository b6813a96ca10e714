//! The protocol's messages as Rust types: what the encoder writes and the
//! decoder reads. No Cap'n Proto here.

use crate::wire::{Needs, RequestOutcome, RequestParts, ResponseOutcome, ResponseParts};

/// The frame types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Type 0: an error answer (runner to host).
    Error = 0,
    /// Type 1: prepare a chain / its answer.
    PrepareConf = 1,
    /// Type 2: a request-phase call / its answer.
    HttpReqCall = 2,
    /// Type 3: a request for extra information (runner to host) / its answer.
    ExtraInfo = 3,
    /// Type 4: a response-phase call / its answer.
    HttpRespCall = 4,
}

impl MessageType {
    /// The type for a frame's type byte, if the protocol has one.
    pub fn from_u8(kind: u8) -> Option<MessageType> {
        Some(match kind {
            0 => MessageType::Error,
            1 => MessageType::PrepareConf,
            2 => MessageType::HttpReqCall,
            3 => MessageType::ExtraInfo,
            4 => MessageType::HttpRespCall,
            _ => return None,
        })
    }
}

/// The error codes of an ERROR frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame or message was malformed, or a conf was refused.
    BadRequest,
    /// The call failed in the runner (a plugin failed or panicked).
    ServiceUnavailable,
    /// The call's conf token is not (or no longer) cached.
    ConfTokenNotFound,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::BadRequest => "badRequest",
            ErrorCode::ServiceUnavailable => "serviceUnavailable",
            ErrorCode::ConfTokenNotFound => "confTokenNotFound",
        })
    }
}

/// An ERROR frame (type 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResp {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable reason.
    pub message: String,
}

/// A PREPARE_CONF request (type 1): a route phase's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareConf<'a> {
    /// `(plugin name, JSON configuration)`, in chain order.
    pub conf: Vec<(&'a str, &'a str)>,
    /// The route configuration's version, if the host sends one.
    pub key: Option<&'a str>,
}

/// The answer to PREPARE_CONF (type 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The token for the prepared chain (never 0).
    pub token: u32,
    /// What the chain will read: the host sends it with every call.
    pub needs: Needs,
}

/// An HTTP_REQ_CALL request (type 2).
#[derive(Debug, Clone)]
pub struct ReqCall<'a> {
    /// The token of the chain to run.
    pub conf_token: u32,
    /// The request.
    pub parts: RequestParts<'a>,
}

/// The answer to HTTP_REQ_CALL (type 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqCallAnswer {
    /// The call's id, echoed.
    pub id: u32,
    /// Stop, rewrite or continue.
    pub outcome: RequestOutcome,
}

/// An HTTP_RESP_CALL request (type 4).
#[derive(Debug, Clone)]
pub struct RespCall<'a> {
    /// The token of the chain to run.
    pub conf_token: u32,
    /// The upstream's answer.
    pub parts: ResponseParts<'a>,
}

/// The answer to HTTP_RESP_CALL (type 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespCallAnswer {
    /// The call's id, echoed.
    pub id: u32,
    /// The changes; all `None` keeps the upstream's answer.
    pub outcome: ResponseOutcome,
}

/// The answer to an EXTRA_INFO request (type 3): the value, `None` when the
/// host has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraInfoAnswer<'a>(pub Option<&'a [u8]>);
