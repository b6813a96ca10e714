//! Cap'n Proto to messages, borrowing: a [`Payload`] wraps the frame's bytes
//! without copying them, and the views it hands out (`&str`, `&[u8]`) point
//! into the frame.
//!
//! Every `Pair`/`PairData` list goes through one reader, [`read_pairs`], so
//! that each list checks its entries the same way and names the bad one.

use super::types::{
    ErrorCode, ErrorResp, ExtraInfoAnswer, PrepareConf, Prepared, ReqCall, ReqCallAnswer, RespCall,
    RespCallAnswer,
};
use crate::wire::ext_plugin_capnp as schema;
use crate::wire::{
    InfoKey, Needs, RequestOutcome, RequestParts, ResponseOutcome, ResponseParts, Rewrite, Stop,
};
use capnp::message::ReaderOptions;
use http::{Method, StatusCode};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A payload that is not the message its frame type announces.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} payload: {reason}")]
pub struct DecodeError {
    /// The message expected (`HttpReqCallReq`...).
    pub what: &'static str,
    /// What was wrong.
    pub reason: String,
}

/// What was wrong while reading one message; [`decode`] adds the message's
/// name. Cap'n Proto and UTF-8 errors convert into it with `?`.
pub(crate) struct Reason(pub(crate) String);

impl From<capnp::Error> for Reason {
    fn from(e: capnp::Error) -> Self {
        Reason(e.to_string())
    }
}

impl From<std::str::Utf8Error> for Reason {
    fn from(e: std::str::Utf8Error) -> Self {
        Reason(capnp::Error::from(e).to_string())
    }
}

impl From<capnp::NotInSchema> for Reason {
    fn from(e: capnp::NotInSchema) -> Self {
        Reason(capnp::Error::from(e).to_string())
    }
}

impl From<String> for Reason {
    fn from(reason: String) -> Self {
        Reason(reason)
    }
}

impl From<&str> for Reason {
    fn from(reason: &str) -> Self {
        Reason(reason.to_owned())
    }
}

/// Runs a message's reader and names the message in its error.
pub(crate) fn decode<T>(
    what: &'static str,
    read: impl FnOnce() -> Result<T, Reason>,
) -> Result<T, DecodeError> {
    read().map_err(|Reason(reason)| DecodeError { what, reason })
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

/// One entry of a `Pair` (text value) or `PairData` (data value) list.
trait PairEntry<'a>: Copy {
    /// `&str` for `Pair`, `&[u8]` for `PairData`.
    type Value;
    fn has_name(self) -> bool;
    fn name(self) -> Result<&'a str, Reason>;
    /// `None` when the value was left null.
    fn value(self) -> Result<Option<Self::Value>, Reason>;
}

impl<'a> PairEntry<'a> for schema::pair::Reader<'a> {
    type Value = &'a str;
    fn has_name(self) -> bool {
        schema::pair::Reader::has_name(&self)
    }
    fn name(self) -> Result<&'a str, Reason> {
        Ok(self.get_name()?.to_str()?)
    }
    fn value(self) -> Result<Option<&'a str>, Reason> {
        if !self.has_value() {
            return Ok(None);
        }
        Ok(Some(self.get_value()?.to_str()?))
    }
}

impl<'a> PairEntry<'a> for schema::pair_data::Reader<'a> {
    type Value = &'a [u8];
    fn has_name(self) -> bool {
        schema::pair_data::Reader::has_name(&self)
    }
    fn name(self) -> Result<&'a str, Reason> {
        Ok(self.get_name()?.to_str()?)
    }
    fn value(self) -> Result<Option<&'a [u8]>, Reason> {
        if !self.has_value() {
            return Ok(None);
        }
        Ok(Some(self.get_value()?))
    }
}

/// A decoded pair list: names, and values (`None`: left null).
type Pairs<'a, V> = Vec<(&'a str, Option<V>)>;

/// Reads a `Pair` or `PairData` list: `(name, value)` per entry, in order,
/// the value `None` when left null.
///
/// Every entry must have a name: a nameless one is refused as `"{item} {i}
/// has no name"` (`item` says which list: "header", "argument"...).
fn read_pairs<'a, E: PairEntry<'a>>(
    entries: impl ExactSizeIterator<Item = E>,
    item: &str,
) -> Result<Pairs<'a, E::Value>, Reason> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.enumerate() {
        if !entry.has_name() {
            return Err(format!("{item} {i} has no name").into());
        }
        out.push((entry.name()?, entry.value()?));
    }
    Ok(out)
}

/// A list whose null values mean "empty" (headers: a header is always sent
/// with a value).
fn or_empty<'a>(pairs: Vec<(&'a str, Option<&'a str>)>) -> Vec<(&'a str, &'a str)> {
    pairs
        .into_iter()
        .map(|(n, v)| (n, v.unwrap_or("")))
        .collect()
}

/// An owned copy of a list whose null values mean "empty".
fn owned(pairs: Vec<(&str, Option<&str>)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.unwrap_or("").to_owned()))
        .collect()
}

/// An owned copy of a list of changes (value set = set, null = delete).
fn owned_changes(pairs: Vec<(&str, Option<&str>)>) -> Vec<(String, Option<String>)> {
    pairs
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
        .collect()
}

/// One frame's payload, parsed as a Cap'n Proto message without copying.
pub struct Payload<'a> {
    message: capnp::message::Reader<capnp::serialize::BufferSegments<&'a [u8]>>,
    /// The message's segment when it has only one (what the encoders here
    /// write): pair lists are then read from it directly (`flat.rs`).
    segment: Option<&'a [u8]>,
}

impl<'a> Payload<'a> {
    /// Parses `bytes` as exactly one Cap'n Proto message (segment table and
    /// segments, nothing after them).
    ///
    /// # Errors
    /// The bytes are not one well-formed message.
    pub fn parse(bytes: &'a [u8]) -> Result<Payload<'a>, DecodeError> {
        decode("Cap'n Proto", || {
            let mut rest = bytes;
            let message = capnp::serialize::read_message_from_flat_slice(
                &mut rest,
                reader_options(bytes.len()),
            )?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the message", rest.len()).into());
            }
            // The table of one segment: 0 (segments minus one), its words.
            let segment = match bytes.get(..8) {
                Some([0, 0, 0, 0, a, b, c, d]) => {
                    let words = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
                    bytes.get(8..8 + words * 8)
                }
                _ => None,
            };
            Ok(Payload { message, segment })
        })
    }

    /// The same payload read without the fast path for pair lists, so that
    /// tests can compare the two readers.
    #[cfg(test)]
    pub(super) fn without_fast_path(mut self) -> Self {
        self.segment = None;
        self
    }

    /// Reads a `Pair` list (text values), from the segment's bytes when
    /// it can (`flat.rs`), else entry by entry (same result).
    fn text_pairs<'r>(
        &'r self,
        list: capnp::struct_list::Reader<'r, schema::pair::Owned>,
        item: &str,
    ) -> Result<Pairs<'r, &'r str>, Reason> {
        match self
            .segment
            .and_then(|segment| super::flat::text_pairs(segment, list))
        {
            Some(pairs) => Ok(pairs),
            None => read_pairs(list.iter(), item),
        }
    }

    /// Reads a `PairData` list, as [`Payload::text_pairs`].
    fn data_pairs<'r>(
        &'r self,
        list: capnp::struct_list::Reader<'r, schema::pair_data::Owned>,
        item: &str,
    ) -> Result<Pairs<'r, &'r [u8]>, Reason> {
        match self
            .segment
            .and_then(|segment| super::flat::data_pairs(segment, list))
        {
            Some(pairs) => Ok(pairs),
            None => read_pairs(list.iter(), item),
        }
    }

    /// Reads a PREPARE_CONF request.
    ///
    /// # Errors
    /// A conf entry without a name or value, text that is not UTF-8, or a
    /// malformed message.
    pub fn prepare_conf(&self) -> Result<PrepareConf<'_>, DecodeError> {
        decode("PrepareConfReq", || {
            let root: schema::prepare_conf_req::Reader = self.message.get_root()?;
            let conf = read_pairs(root.get_conf()?.iter(), "conf entry")?
                .into_iter()
                .enumerate()
                .map(|(i, (name, value))| {
                    value
                        .map(|v| (name, v))
                        .ok_or_else(|| Reason(format!("conf entry {i} (`{name}`) has no value")))
                })
                .collect::<Result<_, _>>()?;
            let key = if root.has_key() {
                Some(root.get_key()?.to_str()?)
            } else {
                None
            };
            Ok(PrepareConf { conf, key })
        })
    }

    /// Reads an HTTP_REQ_CALL request.
    ///
    /// # Errors
    /// A source IP that is not 4 or 16 bytes, a method outside the enum, a
    /// missing path, an argument, header or extra-info entry without a name,
    /// text that is not UTF-8, or a malformed message.
    pub fn req_call(&self) -> Result<ReqCall<'_>, DecodeError> {
        decode("HttpReqCallReq", || {
            let root: schema::http_req_call_req::Reader = self.message.get_root()?;
            let src_ip = root.get_src_ip()?;
            let src_ip = ip_from_bytes(src_ip)
                .ok_or_else(|| format!("srcIp has {} bytes, expected 4 or 16", src_ip.len()))?;
            let method = match root.get_method() {
                Ok(m) => method_from_schema(m),
                Err(capnp::NotInSchema(n)) => {
                    return Err(format!("method {n} is not in the schema").into())
                }
            };
            if !root.has_path() {
                return Err("path is missing".into());
            }
            Ok(ReqCall {
                conf_token: root.get_conf_token(),
                parts: RequestParts {
                    id: root.get_id(),
                    src_ip,
                    method,
                    path: root.get_path()?.to_str()?,
                    args: self.text_pairs(root.get_args()?, "argument")?,
                    headers: or_empty(self.text_pairs(root.get_headers()?, "header")?),
                    extra_info: self.data_pairs(root.get_extra_info()?, "extraInfo entry")?,
                },
            })
        })
    }

    /// Reads an HTTP_RESP_CALL request.
    ///
    /// # Errors
    /// A status outside 100..=999, a header or extra-info entry without a
    /// name, text that is not UTF-8, or a malformed message.
    pub fn resp_call(&self) -> Result<RespCall<'_>, DecodeError> {
        decode("HttpRespCallReq", || {
            let root: schema::http_resp_call_req::Reader = self.message.get_root()?;
            let status = StatusCode::from_u16(root.get_status())
                .map_err(|_| format!("status {} is not an HTTP status", root.get_status()))?;
            Ok(RespCall {
                conf_token: root.get_conf_token(),
                parts: ResponseParts {
                    id: root.get_id(),
                    status,
                    headers: or_empty(self.text_pairs(root.get_headers()?, "header")?),
                    extra_info: self.data_pairs(root.get_extra_info()?, "extraInfo entry")?,
                },
            })
        })
    }

    /// Reads an EXTRA_INFO request (runner to host).
    ///
    /// # Errors
    /// A union member outside the schema, or a malformed message.
    pub fn extra_info_req(&self) -> Result<InfoKey<'_>, DecodeError> {
        decode("ExtraInfoReq", || {
            let root: schema::extra_info_req::Reader = self.message.get_root()?;
            Ok(match root.get_info().which()? {
                schema::extra_info_req::info::Var(name) => InfoKey::Var(name?.to_str()?),
                schema::extra_info_req::info::ReqBody(()) => InfoKey::RequestBody,
                schema::extra_info_req::info::RespBody(()) => InfoKey::ResponseBody,
            })
        })
    }

    /// Reads an EXTRA_INFO answer (host to runner).
    ///
    /// # Errors
    /// A malformed message.
    pub fn extra_info_resp(&self) -> Result<ExtraInfoAnswer<'_>, DecodeError> {
        decode("ExtraInfoResp", || {
            let root: schema::extra_info_resp::Reader = self.message.get_root()?;
            Ok(ExtraInfoAnswer(if root.has_result() {
                Some(root.get_result()?)
            } else {
                None
            }))
        })
    }

    /// Reads an ERROR frame.
    ///
    /// # Errors
    /// A code outside the schema, or a malformed message.
    pub fn error(&self) -> Result<ErrorResp, DecodeError> {
        decode("ErrorResp", || {
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
        })
    }

    /// Reads the answer to PREPARE_CONF.
    ///
    /// # Errors
    /// A token of 0, or a malformed message.
    pub fn prepared(&self) -> Result<Prepared, DecodeError> {
        decode("PrepareConfResp", || {
            let root: schema::prepare_conf_resp::Reader = self.message.get_root()?;
            let token = root.get_conf_token();
            if token == 0 {
                return Err("confToken is 0".into());
            }
            let mut vars = Vec::new();
            for var in root.get_vars()?.iter() {
                vars.push(var?.to_str()?.to_owned());
            }
            Ok(Prepared {
                token,
                needs: Needs {
                    vars,
                    request_body: root.get_req_body(),
                    response_body: root.get_resp_body(),
                },
            })
        })
    }

    /// Reads the answer to HTTP_REQ_CALL. A stop status of 0 becomes 200.
    ///
    /// # Errors
    /// A stop status outside 200..=599 (other than 0), an entry without a
    /// name in a header or argument list, or a malformed message.
    pub fn req_call_answer(&self) -> Result<ReqCallAnswer, DecodeError> {
        use schema::http_req_call_resp::action;
        decode("HttpReqCallResp", || {
            let root: schema::http_req_call_resp::Reader = self.message.get_root()?;
            let outcome = match root.get_action().which()? {
                action::Continue(()) => RequestOutcome::Continue,
                action::Stop(stop) => {
                    let stop = stop?;
                    let status = answer_status(stop.get_status())
                        .map_err(|reason| format!("stop {reason}"))?
                        .unwrap_or(StatusCode::OK);
                    // Built field by field: the names and values are taken
                    // as the runner sent them, not checked as a builder would.
                    let mut out = Stop::new(status);
                    out.headers = owned(read_pairs(stop.get_headers()?.iter(), "stop header")?);
                    out.body = stop.get_body()?.to_vec();
                    RequestOutcome::Stop(out)
                }
                action::Rewrite(rw) => {
                    let rw = rw?;
                    RequestOutcome::Rewrite(Rewrite {
                        path: if rw.has_path() {
                            Some(rw.get_path()?.to_str()?.to_owned())
                        } else {
                            None
                        },
                        headers: owned_changes(read_pairs(
                            rw.get_headers()?.iter(),
                            "rewrite header",
                        )?),
                        args: owned_changes(read_pairs(rw.get_args()?.iter(), "rewrite argument")?),
                        // A response header without a value adds nothing.
                        resp_headers: read_pairs(
                            rw.get_resp_headers()?.iter(),
                            "respHeaders entry",
                        )?
                        .into_iter()
                        .filter_map(|(n, v)| v.map(|v| (n.to_owned(), v.to_owned())))
                        .collect(),
                        body: if rw.has_body() {
                            Some(rw.get_body()?.to_vec())
                        } else {
                            None
                        },
                    })
                }
            };
            Ok(ReqCallAnswer {
                id: root.get_id(),
                outcome,
            })
        })
    }

    /// Reads the answer to HTTP_RESP_CALL. A status of 0 keeps the upstream's.
    ///
    /// # Errors
    /// A status outside 200..=599 (other than 0), a header without a name,
    /// or a malformed message.
    pub fn resp_call_answer(&self) -> Result<RespCallAnswer, DecodeError> {
        decode("HttpRespCallResp", || {
            let root: schema::http_resp_call_resp::Reader = self.message.get_root()?;
            let status = answer_status(root.get_status())?;
            let headers = if root.has_headers() {
                Some(owned(read_pairs(root.get_headers()?.iter(), "header")?))
            } else {
                None
            };
            let body = if root.has_body() {
                Some(root.get_body()?.to_vec())
            } else {
                None
            };
            Ok(RespCallAnswer {
                id: root.get_id(),
                outcome: ResponseOutcome {
                    status,
                    headers,
                    body,
                },
            })
        })
    }
}

/// A status in a runner's answer: 0 means "the default" (`None`); anything
/// else must be in [`crate::wire::ALLOWED_STATUS`] (200..=599), so that the
/// host never acts on a 1xx or a 600+ answer.
pub(crate) fn answer_status(n: u16) -> Result<Option<StatusCode>, String> {
    if n == 0 {
        return Ok(None);
    }
    match StatusCode::from_u16(n) {
        Ok(status) if crate::wire::ALLOWED_STATUS.contains(&n) => Ok(Some(status)),
        _ => Err(format!("status {n} is outside 200..=599")),
    }
}

/// The address in `srcIp`: 4 bytes for IPv4, 16 for IPv6.
pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
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

pub(crate) fn method_from_schema(m: schema::Method) -> Method {
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
