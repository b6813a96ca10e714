//! The model to FlatBuffers payloads, built in a reused [`planus::Builder`]
//! and copied once into the frame's output buffer.

use super::generated::a6;
use crate::wire::codec::{FrameCodec, FrameError, HEADER_LEN};
use crate::wire::{
    ErrorCode, ErrorResp, ExtraInfoAnswer, InfoKey, MessageType, PrepareConf, Prepared, ReqCall,
    ReqCallAnswer, RequestOutcome, RespCall, RespCallAnswer,
};
use bytes::BytesMut;
use http::Method;
use planus::{Builder, Offset};
use std::net::IpAddr;

/// A message that can be sent as one frame of APISIX's wire.
pub trait ApisixEncode {
    /// The frame type to send it with.
    fn kind(&self) -> MessageType;

    /// Writes the message into `builder` (cleared by the caller) and
    /// returns the finished payload.
    ///
    /// # Errors
    /// The message has something APISIX's schema cannot say (a request
    /// method outside `A6.Method`); the message names it.
    fn write<'b>(&self, builder: &'b mut Builder) -> Result<&'b [u8], String>;
}

impl FrameCodec {
    /// Encodes `item` as one frame of APISIX's wire at the end of `dst`,
    /// built in `builder` (cleared first; reuse one per connection, so that
    /// its buffer is allocated once).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload is over the limit (nothing
    /// of the frame is left in `dst`), or the message cannot be said on
    /// this wire.
    pub fn encode_apisix<T: ApisixEncode + ?Sized>(
        &self,
        item: &T,
        builder: &mut Builder,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        builder.clear();
        let payload = item
            .write(builder)
            .map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
        dst.reserve(HEADER_LEN + payload.len());
        let start = FrameCodec::begin(dst, item.kind() as u8);
        dst.extend_from_slice(payload);
        self.finish(dst, start)
    }
}

/// Writes a `[TextEntry]` list; `None` values are left out of their entry.
fn entries<'p>(
    b: &mut Builder,
    pairs: impl IntoIterator<Item = (&'p str, Option<&'p str>)>,
) -> Offset<[Offset<a6::TextEntry>]> {
    let offsets: Vec<Offset<a6::TextEntry>> = pairs
        .into_iter()
        .map(|(name, value)| a6::TextEntry::create(b, name, value))
        .collect();
    b.create_vector(&offsets[..])
}

/// The `A6.Method` of an HTTP method, if it has one (through the Cap'n
/// Proto schema's enum, whose values are the same, in the same order).
pub(super) fn method_to_a6(m: &Method) -> Option<a6::Method> {
    let m = crate::wire::message::method_to_schema(m)?;
    a6::Method::try_from(m as u8).ok()
}

impl ApisixEncode for ErrorResp {
    fn kind(&self) -> MessageType {
        MessageType::Error
    }
    /// The code only: APISIX's `Err.Resp` has no message.
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        let code = match self.code {
            ErrorCode::BadRequest => a6::err::Code::BadRequest,
            ErrorCode::ServiceUnavailable => a6::err::Code::ServiceUnavailable,
            ErrorCode::ConfTokenNotFound => a6::err::Code::ConfTokenNotFound,
        };
        let root = a6::err::Resp::create(b, code);
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for Prepared {
    fn kind(&self) -> MessageType {
        MessageType::PrepareConf
    }
    /// The token only: APISIX's `PrepareConf.Resp` has no needs.
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        let root = a6::prepare_conf::Resp::create(b, self.token);
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for ReqCallAnswer {
    fn kind(&self) -> MessageType {
        MessageType::HttpReqCall
    }
    /// *Continue* is an answer without an action, as APISIX reads it.
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        use a6::http_req_call::{Action, Resp, Rewrite, Stop};
        let root = match &self.outcome {
            RequestOutcome::Continue => Resp::create(b, self.id, ()),
            RequestOutcome::Stop(stop) => {
                let headers = entries(
                    b,
                    stop.headers
                        .iter()
                        .map(|(n, v)| (n.as_str(), Some(v.as_str()))),
                );
                let stop = Stop::create(b, stop.status.as_u16(), headers, &stop.body[..]);
                let action = Action::create_stop(b, stop);
                Resp::create(b, self.id, action)
            }
            RequestOutcome::Rewrite(rw) => {
                let path = rw.path.as_deref();
                let headers = (!rw.headers.is_empty()).then(|| {
                    entries(
                        b,
                        rw.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
                    )
                });
                let args = (!rw.args.is_empty())
                    .then(|| entries(b, rw.args.iter().map(|(n, v)| (n.as_str(), v.as_deref()))));
                let resp_headers = (!rw.resp_headers.is_empty()).then(|| {
                    entries(
                        b,
                        rw.resp_headers
                            .iter()
                            .map(|(n, v)| (n.as_str(), Some(v.as_str()))),
                    )
                });
                let body = rw.body.as_deref();
                let rewrite = Rewrite::create(b, path, headers, args, resp_headers, body);
                let action = Action::create_rewrite(b, rewrite);
                Resp::create(b, self.id, action)
            }
        };
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for RespCallAnswer {
    fn kind(&self) -> MessageType {
        MessageType::HttpRespCall
    }
    /// Status 0 keeps the upstream's; a header list replaces the
    /// upstream's headers when it is not empty (APISIX keeps them for an
    /// empty one); a body replaces the upstream's when it is not empty.
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        let o = &self.outcome;
        let headers = o
            .headers
            .as_ref()
            .map(|h| entries(b, h.iter().map(|(n, v)| (n.as_str(), Some(v.as_str())))));
        let root = a6::http_resp_call::Resp::create(
            b,
            self.id,
            o.status.map_or(0, |s| s.as_u16()),
            headers,
            o.body.as_deref(),
        );
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for InfoKey<'_> {
    fn kind(&self) -> MessageType {
        MessageType::ExtraInfo
    }
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        use a6::extra_info::{Info, Req, ReqBody, RespBody, Var};
        let info = match self {
            InfoKey::Var(name) => {
                let var = Var::create(b, *name);
                Info::create_var(b, var)
            }
            InfoKey::RequestBody => {
                let body = ReqBody::create(b);
                Info::create_req_body(b, body)
            }
            InfoKey::ResponseBody => {
                let body = RespBody::create(b);
                Info::create_resp_body(b, body)
            }
        };
        let root = Req::create(b, info);
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for ExtraInfoAnswer<'_> {
    fn kind(&self) -> MessageType {
        MessageType::ExtraInfo
    }
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        let root = a6::extra_info::Resp::create(b, self.0);
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for PrepareConf<'_> {
    fn kind(&self) -> MessageType {
        MessageType::PrepareConf
    }
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        let conf = entries(b, self.conf.iter().map(|(n, v)| (*n, Some(*v))));
        let root = a6::prepare_conf::Req::create(b, conf, self.key);
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for ReqCall<'_> {
    fn kind(&self) -> MessageType {
        MessageType::HttpReqCall
    }
    /// `extra_info` is not sent: APISIX's request call has no such field.
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        let p = &self.parts;
        let method = method_to_a6(&p.method)
            .ok_or_else(|| format!("method {} is not in A6.Method", p.method))?;
        let src_ip = match p.src_ip {
            IpAddr::V4(ip) => b.create_vector(&ip.octets()[..]),
            IpAddr::V6(ip) => b.create_vector(&ip.octets()[..]),
        };
        let args = entries(b, p.args.iter().copied());
        let headers = entries(b, p.headers.iter().map(|(n, v)| (*n, Some(*v))));
        let root = a6::http_req_call::Req::create(
            b,
            p.id,
            src_ip,
            method,
            p.path,
            args,
            headers,
            self.conf_token,
        );
        Ok(b.finish(root, None))
    }
}

impl ApisixEncode for RespCall<'_> {
    fn kind(&self) -> MessageType {
        MessageType::HttpRespCall
    }
    /// `extra_info` is not sent: APISIX's response call has no such field.
    fn write<'b>(&self, b: &'b mut Builder) -> Result<&'b [u8], String> {
        let p = &self.parts;
        let headers = entries(b, p.headers.iter().map(|(n, v)| (*n, Some(*v))));
        let root =
            a6::http_resp_call::Req::create(b, p.id, p.status.as_u16(), headers, self.conf_token);
        Ok(b.finish(root, None))
    }
}
