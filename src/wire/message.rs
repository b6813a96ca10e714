//! Typed protocol messages and their Cap'n Proto form.
//!
//! Decoding borrows: a [`Payload`] wraps the frame's bytes without copying
//! them, and the views it hands out (`&str`, `&[u8]`) point into the frame.
//! Encoding writes the Cap'n Proto message straight into the output buffer.

use super::codec::{FrameCodec, FrameError};
use super::ext_plugin_capnp as schema;
use bytes::{BufMut, BytesMut};
use capnp::message::{Builder, HeapAllocator, ReaderOptions};
use http::{Method, StatusCode};
use runner_sdk::{
    InfoKey, Needs, RequestOutcome, RequestParts, ResponseOutcome, ResponseParts, Rewrite, Stop,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tokio_util::codec::Encoder;

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

/// A payload that is not the message its frame type announces.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} payload: {reason}")]
pub struct DecodeError {
    /// The message expected (`HttpReqCallReq`...).
    pub what: &'static str,
    /// What was wrong.
    pub reason: String,
}

/// A message that can be sent as one frame.
pub trait Encode {
    /// The frame type to send it with.
    fn kind(&self) -> MessageType;
    /// Writes the message into a fresh Cap'n Proto builder.
    ///
    /// # Errors
    /// A Cap'n Proto error (only on resource exhaustion in practice).
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()>;
}

impl<T: Encode> Encoder<&T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let mut message = Builder::new(HeapAllocator::new().first_segment_words(128));
        item.build(&mut message)?;
        let words = capnp::serialize::compute_serialized_size_in_words(&message);
        dst.reserve(super::codec::HEADER_LEN + words * 8);
        let start = FrameCodec::begin(dst, item.kind() as u8);
        capnp::serialize::write_message((&mut *dst).writer(), &message)
            .map_err(FrameError::from)?;
        self.finish(dst, start)
    }
}

impl From<capnp::Error> for FrameError {
    fn from(e: capnp::Error) -> Self {
        FrameError::Io(std::io::Error::other(e))
    }
}

/// The Cap'n Proto reading limits for a payload of `len` bytes: a hostile
/// message (deep nesting, pointers aliasing one big list) cannot make us do
/// more work than a small multiple of its size.
pub fn reader_options(len: usize) -> ReaderOptions {
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some((len / 8) * 4 + 1024))
        .nesting_limit(16);
    options
}

/// One frame's payload, parsed as a Cap'n Proto message without copying.
pub struct Payload<'a> {
    message: capnp::message::Reader<capnp::serialize::BufferSegments<&'a [u8]>>,
}

/// Shorthand for the decode errors below.
fn bad(what: &'static str, reason: impl std::fmt::Display) -> DecodeError {
    DecodeError {
        what,
        reason: reason.to_string(),
    }
}

impl<'a> Payload<'a> {
    /// Parses `bytes` as exactly one Cap'n Proto message (segment table and
    /// segments, nothing after them).
    ///
    /// # Errors
    /// The bytes are not one well-formed message.
    pub fn parse(bytes: &'a [u8]) -> Result<Payload<'a>, DecodeError> {
        let mut rest = bytes;
        let message =
            capnp::serialize::read_message_from_flat_slice(&mut rest, reader_options(bytes.len()))
                .map_err(|e| bad("Cap'n Proto", e))?;
        if !rest.is_empty() {
            return Err(bad(
                "Cap'n Proto",
                format!("{} bytes after the message", rest.len()),
            ));
        }
        Ok(Payload { message })
    }

    /// Reads a PREPARE_CONF request.
    ///
    /// # Errors
    /// A conf entry without a name or value, text that is not UTF-8, or a
    /// malformed message.
    pub fn prepare_conf(&self) -> Result<PrepareConf<'_>, DecodeError> {
        const WHAT: &str = "PrepareConfReq";
        let inner = || -> capnp::Result<Result<PrepareConf<'_>, DecodeError>> {
            let root: schema::prepare_conf_req::Reader = self.message.get_root()?;
            let list = root.get_conf()?;
            let mut conf = Vec::with_capacity(list.len() as usize);
            for (i, pair) in list.iter().enumerate() {
                if !pair.has_name() {
                    return Ok(Err(bad(WHAT, format!("conf entry {i} has no name"))));
                }
                let name = pair.get_name()?.to_str()?;
                if !pair.has_value() {
                    return Ok(Err(bad(
                        WHAT,
                        format!("conf entry {i} (`{name}`) has no value"),
                    )));
                }
                conf.push((name, pair.get_value()?.to_str()?));
            }
            let key = if root.has_key() {
                Some(root.get_key()?.to_str()?)
            } else {
                None
            };
            Ok(Ok(PrepareConf { conf, key }))
        };
        inner().map_err(|e| bad(WHAT, e))?
    }

    /// Reads an HTTP_REQ_CALL request.
    ///
    /// # Errors
    /// A source IP that is not 4 or 16 bytes, a method outside the enum, a
    /// missing path or argument name, text that is not UTF-8, or a malformed
    /// message.
    pub fn req_call(&self) -> Result<ReqCall<'_>, DecodeError> {
        const WHAT: &str = "HttpReqCallReq";
        let inner = || -> capnp::Result<Result<ReqCall<'_>, DecodeError>> {
            let root: schema::http_req_call_req::Reader = self.message.get_root()?;
            let src_ip = match ip_from_bytes(root.get_src_ip()?) {
                Some(ip) => ip,
                None => {
                    let n = root.get_src_ip()?.len();
                    return Ok(Err(bad(
                        WHAT,
                        format!("srcIp has {n} bytes, expected 4 or 16"),
                    )));
                }
            };
            let method = match root.get_method() {
                Ok(m) => method_from_schema(m),
                Err(capnp::NotInSchema(n)) => {
                    return Ok(Err(bad(WHAT, format!("method {n} is not in the schema"))))
                }
            };
            if !root.has_path() {
                return Ok(Err(bad(WHAT, "path is missing")));
            }
            let path = root.get_path()?.to_str()?;
            let list = root.get_args()?;
            let mut args = Vec::with_capacity(list.len() as usize);
            for (i, pair) in list.iter().enumerate() {
                if !pair.has_name() {
                    return Ok(Err(bad(WHAT, format!("argument {i} has no name"))));
                }
                let value = if pair.has_value() {
                    Some(pair.get_value()?.to_str()?)
                } else {
                    None
                };
                args.push((pair.get_name()?.to_str()?, value));
            }
            let list = root.get_headers()?;
            let mut headers = Vec::with_capacity(list.len() as usize);
            for (i, pair) in list.iter().enumerate() {
                if !pair.has_name() {
                    return Ok(Err(bad(WHAT, format!("header {i} has no name"))));
                }
                headers.push((pair.get_name()?.to_str()?, pair.get_value()?.to_str()?));
            }
            let extra_info = read_extra_info(root.get_extra_info()?)?;
            Ok(Ok(ReqCall {
                conf_token: root.get_conf_token(),
                parts: RequestParts {
                    id: root.get_id(),
                    src_ip,
                    method,
                    path,
                    args,
                    headers,
                    extra_info,
                },
            }))
        };
        inner().map_err(|e| bad(WHAT, e))?
    }

    /// Reads an HTTP_RESP_CALL request.
    ///
    /// # Errors
    /// A status outside 100..=999, a header without a name, text that is not
    /// UTF-8, or a malformed message.
    pub fn resp_call(&self) -> Result<RespCall<'_>, DecodeError> {
        const WHAT: &str = "HttpRespCallReq";
        let inner = || -> capnp::Result<Result<RespCall<'_>, DecodeError>> {
            let root: schema::http_resp_call_req::Reader = self.message.get_root()?;
            let Ok(status) = StatusCode::from_u16(root.get_status()) else {
                return Ok(Err(bad(
                    WHAT,
                    format!("status {} is not an HTTP status", root.get_status()),
                )));
            };
            let list = root.get_headers()?;
            let mut headers = Vec::with_capacity(list.len() as usize);
            for (i, pair) in list.iter().enumerate() {
                if !pair.has_name() {
                    return Ok(Err(bad(WHAT, format!("header {i} has no name"))));
                }
                headers.push((pair.get_name()?.to_str()?, pair.get_value()?.to_str()?));
            }
            let extra_info = read_extra_info(root.get_extra_info()?)?;
            Ok(Ok(RespCall {
                conf_token: root.get_conf_token(),
                parts: ResponseParts {
                    id: root.get_id(),
                    status,
                    headers,
                    extra_info,
                },
            }))
        };
        inner().map_err(|e| bad(WHAT, e))?
    }

    /// Reads an EXTRA_INFO request (runner to host).
    ///
    /// # Errors
    /// A union member outside the schema, or a malformed message.
    pub fn extra_info_req(&self) -> Result<InfoKey<'_>, DecodeError> {
        const WHAT: &str = "ExtraInfoReq";
        let inner = || -> capnp::Result<InfoKey<'_>> {
            let root: schema::extra_info_req::Reader = self.message.get_root()?;
            Ok(match root.get_info().which()? {
                schema::extra_info_req::info::Var(name) => InfoKey::Var(name?.to_str()?),
                schema::extra_info_req::info::ReqBody(()) => InfoKey::RequestBody,
                schema::extra_info_req::info::RespBody(()) => InfoKey::ResponseBody,
            })
        };
        inner().map_err(|e| bad(WHAT, e))
    }

    /// Reads an EXTRA_INFO answer (host to runner).
    ///
    /// # Errors
    /// A malformed message.
    pub fn extra_info_resp(&self) -> Result<ExtraInfoAnswer<'_>, DecodeError> {
        let inner = || -> capnp::Result<ExtraInfoAnswer<'_>> {
            let root: schema::extra_info_resp::Reader = self.message.get_root()?;
            Ok(ExtraInfoAnswer(if root.has_result() {
                Some(root.get_result()?)
            } else {
                None
            }))
        };
        inner().map_err(|e| bad("ExtraInfoResp", e))
    }

    /// Reads an ERROR frame.
    ///
    /// # Errors
    /// A code outside the schema, or a malformed message.
    pub fn error(&self) -> Result<ErrorResp, DecodeError> {
        let inner = || -> capnp::Result<ErrorResp> {
            let root: schema::error_resp::Reader = self.message.get_root()?;
            let code = match root.get_code()? {
                schema::ErrorCode::BadRequest => ErrorCode::BadRequest,
                schema::ErrorCode::ServiceUnavailable => ErrorCode::ServiceUnavailable,
                schema::ErrorCode::ConfTokenNotFound => ErrorCode::ConfTokenNotFound,
            };
            let message = if root.has_message() {
                root.get_message()?.to_str()?.to_owned()
            } else {
                String::new()
            };
            Ok(ErrorResp { code, message })
        };
        inner().map_err(|e| bad("ErrorResp", e))
    }

    /// Reads the answer to PREPARE_CONF.
    ///
    /// # Errors
    /// A token of 0, or a malformed message.
    pub fn prepared(&self) -> Result<Prepared, DecodeError> {
        const WHAT: &str = "PrepareConfResp";
        let inner = || -> capnp::Result<Prepared> {
            let root: schema::prepare_conf_resp::Reader = self.message.get_root()?;
            let mut vars = Vec::new();
            for var in root.get_vars()?.iter() {
                vars.push(var?.to_str()?.to_owned());
            }
            Ok(Prepared {
                token: root.get_conf_token(),
                needs: Needs {
                    vars,
                    request_body: root.get_req_body(),
                    response_body: root.get_resp_body(),
                },
            })
        };
        let prepared = inner().map_err(|e| bad(WHAT, e))?;
        if prepared.token == 0 {
            return Err(bad(WHAT, "confToken is 0"));
        }
        Ok(prepared)
    }

    /// Reads the answer to HTTP_REQ_CALL. A stop status of 0 becomes 200.
    ///
    /// # Errors
    /// A stop status outside 200..=599 (other than 0), or a malformed message.
    pub fn req_call_answer(&self) -> Result<ReqCallAnswer, DecodeError> {
        use schema::http_req_call_resp::action;
        const WHAT: &str = "HttpReqCallResp";
        let inner = || -> capnp::Result<Result<ReqCallAnswer, DecodeError>> {
            let root: schema::http_req_call_resp::Reader = self.message.get_root()?;
            let outcome = match root.get_action().which()? {
                action::Continue(()) => RequestOutcome::Continue,
                action::Stop(stop) => {
                    let stop = stop?;
                    let status = match answer_status(stop.get_status()) {
                        Ok(status) => status.unwrap_or(StatusCode::OK),
                        Err(reason) => return Ok(Err(bad(WHAT, format!("stop {reason}")))),
                    };
                    let mut headers = Vec::new();
                    for pair in stop.get_headers()?.iter() {
                        headers.push((
                            pair.get_name()?.to_str()?.to_owned(),
                            pair.get_value()?.to_str()?.to_owned(),
                        ));
                    }
                    RequestOutcome::Stop(Stop {
                        status,
                        headers,
                        body: stop.get_body()?.to_vec(),
                    })
                }
                action::Rewrite(rw) => {
                    let rw = rw?;
                    RequestOutcome::Rewrite(Rewrite {
                        path: if rw.has_path() {
                            Some(rw.get_path()?.to_str()?.to_owned())
                        } else {
                            None
                        },
                        headers: read_changes(rw.get_headers()?)?,
                        args: read_changes(rw.get_args()?)?,
                        resp_headers: read_changes(rw.get_resp_headers()?)?
                            .into_iter()
                            .filter_map(|(n, v)| v.map(|v| (n, v)))
                            .collect(),
                        body: if rw.has_body() {
                            Some(rw.get_body()?.to_vec())
                        } else {
                            None
                        },
                    })
                }
            };
            Ok(Ok(ReqCallAnswer {
                id: root.get_id(),
                outcome,
            }))
        };
        inner().map_err(|e| bad(WHAT, e))?
    }

    /// Reads the answer to HTTP_RESP_CALL. A status of 0 keeps the upstream's.
    ///
    /// # Errors
    /// A status outside 200..=599 (other than 0), or a malformed message.
    pub fn resp_call_answer(&self) -> Result<RespCallAnswer, DecodeError> {
        const WHAT: &str = "HttpRespCallResp";
        let inner = || -> capnp::Result<Result<RespCallAnswer, DecodeError>> {
            let root: schema::http_resp_call_resp::Reader = self.message.get_root()?;
            let status = match answer_status(root.get_status()) {
                Ok(status) => status,
                Err(reason) => return Ok(Err(bad(WHAT, reason))),
            };
            let headers = if root.has_headers() {
                let mut list = Vec::new();
                for pair in root.get_headers()?.iter() {
                    list.push((
                        pair.get_name()?.to_str()?.to_owned(),
                        pair.get_value()?.to_str()?.to_owned(),
                    ));
                }
                Some(list)
            } else {
                None
            };
            let body = if root.has_body() {
                Some(root.get_body()?.to_vec())
            } else {
                None
            };
            Ok(Ok(RespCallAnswer {
                id: root.get_id(),
                outcome: ResponseOutcome {
                    status,
                    headers,
                    body,
                },
            }))
        };
        inner().map_err(|e| bad(WHAT, e))?
    }
}

/// A status in a runner's answer: 0 means "the default" (`None`); anything
/// else must be in [`runner_sdk::ALLOWED_STATUS`] (200..=599), so that the
/// host never acts on a 1xx or a 600+ answer.
fn answer_status(n: u16) -> Result<Option<StatusCode>, String> {
    if n == 0 {
        return Ok(None);
    }
    match StatusCode::from_u16(n) {
        Ok(status) if runner_sdk::ALLOWED_STATUS.contains(&n) => Ok(Some(status)),
        _ => Err(format!("status {n} is outside 200..=599")),
    }
}

/// Prefetched values: name and value (`None`: not available).
type ExtraInfo<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

/// Reads `extraInfo`.
fn read_extra_info(
    list: capnp::struct_list::Reader<'_, schema::pair_data::Owned>,
) -> capnp::Result<ExtraInfo<'_>> {
    let mut out = Vec::with_capacity(list.len() as usize);
    for pair in list.iter() {
        let value = if pair.has_value() {
            Some(pair.get_value()?)
        } else {
            None
        };
        out.push((pair.get_name()?.to_str()?, value));
    }
    Ok(out)
}

/// Reads a list of changes: value set = set, value null = delete.
fn read_changes(
    list: capnp::struct_list::Reader<'_, schema::pair::Owned>,
) -> capnp::Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::with_capacity(list.len() as usize);
    for pair in list.iter() {
        let value = if pair.has_value() {
            Some(pair.get_value()?.to_str()?.to_owned())
        } else {
            None
        };
        out.push((pair.get_name()?.to_str()?.to_owned(), value));
    }
    Ok(out)
}

/// The address in `srcIp`: 4 bytes for IPv4, 16 for IPv6.
fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

fn method_from_schema(m: schema::Method) -> Method {
    use schema::Method as M;
    match m {
        M::Get => Method::GET,
        M::Head => Method::HEAD,
        M::Post => Method::POST,
        M::Put => Method::PUT,
        M::Delete => Method::DELETE,
        M::Options => Method::OPTIONS,
        M::Patch => Method::PATCH,
        M::Trace => Method::TRACE,
        // WebDAV methods: extension methods for `http`, always valid tokens.
        M::Mkcol => Method::from_bytes(b"MKCOL").expect("valid method"),
        M::Copy => Method::from_bytes(b"COPY").expect("valid method"),
        M::Move => Method::from_bytes(b"MOVE").expect("valid method"),
        M::Propfind => Method::from_bytes(b"PROPFIND").expect("valid method"),
        M::Proppatch => Method::from_bytes(b"PROPPATCH").expect("valid method"),
        M::Lock => Method::from_bytes(b"LOCK").expect("valid method"),
        M::Unlock => Method::from_bytes(b"UNLOCK").expect("valid method"),
    }
}

/// The schema's method for an HTTP method, if it has one.
pub fn method_to_schema(m: &Method) -> Option<schema::Method> {
    use schema::Method as M;
    Some(match m.as_str() {
        "GET" => M::Get,
        "HEAD" => M::Head,
        "POST" => M::Post,
        "PUT" => M::Put,
        "DELETE" => M::Delete,
        "MKCOL" => M::Mkcol,
        "COPY" => M::Copy,
        "MOVE" => M::Move,
        "OPTIONS" => M::Options,
        "PROPFIND" => M::Propfind,
        "PROPPATCH" => M::Proppatch,
        "LOCK" => M::Lock,
        "UNLOCK" => M::Unlock,
        "PATCH" => M::Patch,
        "TRACE" => M::Trace,
        _ => return None,
    })
}

/// Writes pairs; a `None` value is left null.
fn write_pairs<'p>(
    mut list: capnp::struct_list::Builder<'_, schema::pair::Owned>,
    pairs: impl Iterator<Item = (&'p str, Option<&'p str>)>,
) {
    for (i, (name, value)) in pairs.enumerate() {
        let mut pair = list.reborrow().get(i as u32);
        pair.set_name(name);
        if let Some(value) = value {
            pair.set_value(value);
        }
    }
}

fn write_extra_info(
    mut list: capnp::struct_list::Builder<'_, schema::pair_data::Owned>,
    info: &[(&str, Option<&[u8]>)],
) {
    for (i, (name, value)) in info.iter().enumerate() {
        let mut pair = list.reborrow().get(i as u32);
        pair.set_name(*name);
        if let Some(value) = value {
            pair.set_value(value);
        }
    }
}

impl Encode for ErrorResp {
    fn kind(&self) -> MessageType {
        MessageType::Error
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let mut root = message.init_root::<schema::error_resp::Builder>();
        root.set_code(match self.code {
            ErrorCode::BadRequest => schema::ErrorCode::BadRequest,
            ErrorCode::ServiceUnavailable => schema::ErrorCode::ServiceUnavailable,
            ErrorCode::ConfTokenNotFound => schema::ErrorCode::ConfTokenNotFound,
        });
        root.set_message(self.message.as_str());
        Ok(())
    }
}

impl Encode for PrepareConf<'_> {
    fn kind(&self) -> MessageType {
        MessageType::PrepareConf
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let mut root = message.init_root::<schema::prepare_conf_req::Builder>();
        write_pairs(
            root.reborrow().init_conf(self.conf.len() as u32),
            self.conf.iter().map(|(n, v)| (*n, Some(*v))),
        );
        if let Some(key) = self.key {
            root.set_key(key);
        }
        Ok(())
    }
}

impl Encode for Prepared {
    fn kind(&self) -> MessageType {
        MessageType::PrepareConf
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let mut root = message.init_root::<schema::prepare_conf_resp::Builder>();
        root.set_conf_token(self.token);
        if !self.needs.vars.is_empty() {
            let mut vars = root.reborrow().init_vars(self.needs.vars.len() as u32);
            for (i, var) in self.needs.vars.iter().enumerate() {
                vars.set(i as u32, var.as_str());
            }
        }
        root.set_req_body(self.needs.request_body);
        root.set_resp_body(self.needs.response_body);
        Ok(())
    }
}

impl Encode for ReqCall<'_> {
    fn kind(&self) -> MessageType {
        MessageType::HttpReqCall
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let p = &self.parts;
        let mut root = message.init_root::<schema::http_req_call_req::Builder>();
        root.set_id(p.id);
        match p.src_ip {
            IpAddr::V4(ip) => root.set_src_ip(&ip.octets()),
            IpAddr::V6(ip) => root.set_src_ip(&ip.octets()),
        }
        let method = method_to_schema(&p.method).ok_or_else(|| {
            capnp::Error::failed(format!("method {} is not in the protocol", p.method))
        })?;
        root.set_method(method);
        root.set_path(p.path);
        write_pairs(
            root.reborrow().init_args(p.args.len() as u32),
            p.args.iter().copied(),
        );
        write_pairs(
            root.reborrow().init_headers(p.headers.len() as u32),
            p.headers.iter().map(|(n, v)| (*n, Some(*v))),
        );
        root.set_conf_token(self.conf_token);
        if !p.extra_info.is_empty() {
            write_extra_info(
                root.init_extra_info(p.extra_info.len() as u32),
                &p.extra_info,
            );
        }
        Ok(())
    }
}

impl Encode for ReqCallAnswer {
    fn kind(&self) -> MessageType {
        MessageType::HttpReqCall
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let mut root = message.init_root::<schema::http_req_call_resp::Builder>();
        root.set_id(self.id);
        let mut action = root.init_action();
        match &self.outcome {
            RequestOutcome::Continue => action.set_continue(()),
            RequestOutcome::Stop(stop) => {
                let mut out = action.init_stop();
                out.set_status(stop.status.as_u16());
                write_pairs(
                    out.reborrow().init_headers(stop.headers.len() as u32),
                    stop.headers
                        .iter()
                        .map(|(n, v)| (n.as_str(), Some(v.as_str()))),
                );
                out.set_body(&stop.body);
            }
            RequestOutcome::Rewrite(rw) => {
                let mut out = action.init_rewrite();
                if let Some(path) = &rw.path {
                    out.set_path(path.as_str());
                }
                if !rw.headers.is_empty() {
                    write_pairs(
                        out.reborrow().init_headers(rw.headers.len() as u32),
                        rw.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
                    );
                }
                if !rw.args.is_empty() {
                    write_pairs(
                        out.reborrow().init_args(rw.args.len() as u32),
                        rw.args.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
                    );
                }
                if !rw.resp_headers.is_empty() {
                    write_pairs(
                        out.reborrow()
                            .init_resp_headers(rw.resp_headers.len() as u32),
                        rw.resp_headers
                            .iter()
                            .map(|(n, v)| (n.as_str(), Some(v.as_str()))),
                    );
                }
                if let Some(body) = &rw.body {
                    out.set_body(body);
                }
            }
        }
        Ok(())
    }
}

impl Encode for RespCall<'_> {
    fn kind(&self) -> MessageType {
        MessageType::HttpRespCall
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let p = &self.parts;
        let mut root = message.init_root::<schema::http_resp_call_req::Builder>();
        root.set_id(p.id);
        root.set_status(p.status.as_u16());
        write_pairs(
            root.reborrow().init_headers(p.headers.len() as u32),
            p.headers.iter().map(|(n, v)| (*n, Some(*v))),
        );
        root.set_conf_token(self.conf_token);
        if !p.extra_info.is_empty() {
            write_extra_info(
                root.init_extra_info(p.extra_info.len() as u32),
                &p.extra_info,
            );
        }
        Ok(())
    }
}

impl Encode for RespCallAnswer {
    fn kind(&self) -> MessageType {
        MessageType::HttpRespCall
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let o = &self.outcome;
        let mut root = message.init_root::<schema::http_resp_call_resp::Builder>();
        root.set_id(self.id);
        root.set_status(o.status.map_or(0, |s| s.as_u16()));
        if let Some(headers) = &o.headers {
            write_pairs(
                root.reborrow().init_headers(headers.len() as u32),
                headers.iter().map(|(n, v)| (n.as_str(), Some(v.as_str()))),
            );
        }
        if let Some(body) = &o.body {
            root.set_body(body);
        }
        Ok(())
    }
}

impl Encode for InfoKey<'_> {
    fn kind(&self) -> MessageType {
        MessageType::ExtraInfo
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let root = message.init_root::<schema::extra_info_req::Builder>();
        let mut info = root.init_info();
        match self {
            InfoKey::Var(name) => info.set_var(*name),
            InfoKey::RequestBody => info.set_req_body(()),
            InfoKey::ResponseBody => info.set_resp_body(()),
        }
        Ok(())
    }
}

impl Encode for ExtraInfoAnswer<'_> {
    fn kind(&self) -> MessageType {
        MessageType::ExtraInfo
    }
    fn build(&self, message: &mut Builder<HeapAllocator>) -> capnp::Result<()> {
        let mut root = message.init_root::<schema::extra_info_resp::Builder>();
        if let Some(value) = self.0 {
            root.set_result(value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::FrameCodec;
    use tokio_util::codec::Decoder;

    /// Encodes `msg` as a frame and parses the frame's payload back.
    fn frame<T: Encode>(msg: &T) -> (u8, BytesMut) {
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(msg, &mut buf).unwrap();
        let f = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        (f.kind, f.payload)
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn prepare_conf_round_trip() {
        let req = PrepareConf {
            conf: vec![("say", r#"{"body":"hi"}"#), ("rewrite", "{}")],
            key: Some("route#1"),
        };
        let (kind, payload) = frame(&req);
        assert_eq!(kind, 1);
        assert_eq!(
            Payload::parse(&payload).unwrap().prepare_conf().unwrap(),
            req
        );
        let answer = Prepared {
            token: 7,
            needs: Needs {
                vars: vec![s("remote_addr")],
                request_body: true,
                response_body: false,
            },
        };
        let (_, payload) = frame(&answer);
        assert_eq!(
            Payload::parse(&payload).unwrap().prepared().unwrap(),
            answer
        );
    }

    #[test]
    fn request_call_round_trip_keeps_null_apart_from_empty() {
        let parts = RequestParts {
            id: 9,
            src_ip: "2001:db8::1".parse().unwrap(),
            method: Method::from_bytes(b"PROPFIND").unwrap(),
            path: "/a b",
            args: vec![
                ("a", Some("1")),
                ("a", Some("2")),
                ("flag", None),
                ("empty", Some("")),
            ],
            headers: vec![("x-h", "1"), ("x-h", "2")],
            extra_info: vec![
                ("remote_addr", Some(b"::1")),
                ("nope", None),
                ("$request_body", Some(b"")),
            ],
        };
        let (kind, payload) = frame(&ReqCall {
            conf_token: 3,
            parts: parts.clone(),
        });
        assert_eq!(kind, 2);
        let decoded = Payload::parse(&payload).unwrap();
        let call = decoded.req_call().unwrap();
        assert_eq!(call.conf_token, 3);
        assert_eq!(call.parts.id, 9);
        assert_eq!(call.parts.src_ip, parts.src_ip);
        assert_eq!(call.parts.method, parts.method);
        assert_eq!(call.parts.path, parts.path);
        assert_eq!(call.parts.args, parts.args);
        assert_eq!(call.parts.headers, parts.headers);
        assert_eq!(call.parts.extra_info, parts.extra_info);
    }

    #[test]
    fn answers_round_trip() {
        let outcomes = [
            RequestOutcome::Continue,
            RequestOutcome::Stop(
                Stop::new(StatusCode::FORBIDDEN)
                    .header("a", "1")
                    .header("a", "2")
                    .body("no"),
            ),
            RequestOutcome::Rewrite(Rewrite {
                path: Some(s("/p")),
                headers: vec![(s("x"), None), (s("y"), Some(s("1")))],
                args: vec![(s("q"), Some(s("")))],
                resp_headers: vec![(s("r"), s("v"))],
                body: Some(vec![]),
            }),
            RequestOutcome::Rewrite(Rewrite {
                headers: vec![(s("only"), Some(s("header")))],
                ..Rewrite::default()
            }),
        ];
        for outcome in outcomes {
            let answer = ReqCallAnswer { id: 5, outcome };
            let (_, payload) = frame(&answer);
            assert_eq!(
                Payload::parse(&payload).unwrap().req_call_answer().unwrap(),
                answer
            );
        }
        let answer = RespCallAnswer {
            id: 6,
            outcome: ResponseOutcome {
                status: Some(StatusCode::ACCEPTED),
                headers: Some(vec![(s("a"), s("b"))]),
                body: Some(b"x".to_vec()),
            },
        };
        let (kind, payload) = frame(&answer);
        assert_eq!(kind, 4);
        assert_eq!(
            Payload::parse(&payload)
                .unwrap()
                .resp_call_answer()
                .unwrap(),
            answer
        );
        let keep = RespCallAnswer {
            id: 6,
            outcome: ResponseOutcome::default(),
        };
        let (_, payload) = frame(&keep);
        assert_eq!(
            Payload::parse(&payload)
                .unwrap()
                .resp_call_answer()
                .unwrap(),
            keep
        );
    }

    #[test]
    fn extra_info_and_errors_round_trip() {
        for key in [
            InfoKey::Var("uri"),
            InfoKey::RequestBody,
            InfoKey::ResponseBody,
        ] {
            let (kind, payload) = frame(&key);
            assert_eq!(kind, 3);
            assert_eq!(
                Payload::parse(&payload).unwrap().extra_info_req().unwrap(),
                key
            );
        }
        for value in [None, Some(&b""[..]), Some(&b"v"[..])] {
            let (_, payload) = frame(&ExtraInfoAnswer(value));
            assert_eq!(
                Payload::parse(&payload)
                    .unwrap()
                    .extra_info_resp()
                    .unwrap()
                    .0,
                value
            );
        }
        let e = ErrorResp {
            code: ErrorCode::ConfTokenNotFound,
            message: s("gone"),
        };
        let (kind, payload) = frame(&e);
        assert_eq!(kind, 0);
        assert_eq!(Payload::parse(&payload).unwrap().error().unwrap(), e);
    }

    #[test]
    fn bad_payloads_are_decode_errors() {
        assert!(Payload::parse(b"").is_err());
        assert!(Payload::parse(b"not cap'n proto at all").is_err());
        let (_, mut payload) = frame(&ErrorResp {
            code: ErrorCode::BadRequest,
            message: s("x"),
        });
        payload.extend_from_slice(&[0; 8]);
        let err = Payload::parse(&payload).err().unwrap();
        assert!(
            err.to_string().contains("8 bytes after the message"),
            "{err}"
        );
        // A stop status that is not an HTTP status.
        let mut msg = Builder::new_default();
        {
            let mut root = msg.init_root::<schema::http_req_call_resp::Builder>();
            root.reborrow().init_action().init_stop().set_status(1000);
        }
        let mut bytes = Vec::new();
        capnp::serialize::write_message(&mut bytes, &msg).unwrap();
        let err = Payload::parse(&bytes)
            .unwrap()
            .req_call_answer()
            .unwrap_err();
        assert!(err.to_string().contains("stop status 1000"), "{err}");
        // Real HTTP statuses that a runner must not answer with: 1xx and 600+.
        for n in [100u16, 101, 199, 600, 999] {
            let mut msg = Builder::new_default();
            msg.init_root::<schema::http_req_call_resp::Builder>()
                .init_action()
                .init_stop()
                .set_status(n);
            let mut bytes = Vec::new();
            capnp::serialize::write_message(&mut bytes, &msg).unwrap();
            let err = Payload::parse(&bytes)
                .unwrap()
                .req_call_answer()
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("stop status {n} is outside 200..=599")),
                "{err}"
            );
            let mut msg = Builder::new_default();
            msg.init_root::<schema::http_resp_call_resp::Builder>()
                .set_status(n);
            let mut bytes = Vec::new();
            capnp::serialize::write_message(&mut bytes, &msg).unwrap();
            let err = Payload::parse(&bytes)
                .unwrap()
                .resp_call_answer()
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("status {n} is outside 200..=599")),
                "{err}"
            );
        }
        // The bounds themselves, and 0, are fine.
        for (n, want) in [(0u16, None), (200, Some(200)), (599, Some(599))] {
            let mut msg = Builder::new_default();
            msg.init_root::<schema::http_resp_call_resp::Builder>()
                .set_status(n);
            let mut bytes = Vec::new();
            capnp::serialize::write_message(&mut bytes, &msg).unwrap();
            let answer = Payload::parse(&bytes).unwrap().resp_call_answer().unwrap();
            assert_eq!(answer.outcome.status.map(|s| s.as_u16()), want);
        }
    }

    #[test]
    fn a_list_pointer_larger_than_the_payload_is_refused() {
        let mut msg = Builder::new_default();
        msg.init_root::<schema::prepare_conf_req::Builder>()
            .init_conf(0);
        let mut bytes = Vec::new();
        capnp::serialize::write_message(&mut bytes, &msg).unwrap();
        // Rewrite the `conf` pointer (segment table 8 bytes, root pointer,
        // then the struct's first pointer) into a list of 2^29 - 1 bits.
        let conf_ptr = 8 + 8 * 2;
        let word: u64 = 1 | (1u64 << 32) | (0x1fff_ffffu64 << 35);
        bytes[conf_ptr..conf_ptr + 8].copy_from_slice(&word.to_le_bytes());
        let result = Payload::parse(&bytes).and_then(|p| p.prepare_conf().map(|_| ()));
        assert!(
            result.is_err(),
            "a 64 MiB list in a {}-byte payload was accepted",
            bytes.len()
        );
    }

    #[test]
    fn the_traversal_limit_follows_the_payload_size() {
        let small = reader_options(64).traversal_limit_in_words;
        let big = reader_options(1 << 20).traversal_limit_in_words;
        assert_eq!(small, Some(64 / 8 * 4 + 1024));
        assert_eq!(big, Some((1 << 20) / 8 * 4 + 1024));
        assert_eq!(reader_options(0).nesting_limit, 16);
    }
}
