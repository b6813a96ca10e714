//! Messages to Cap'n Proto, written straight into the frame's output buffer.

use super::types::{
    ErrorCode, ErrorResp, ExtraInfoAnswer, MessageType, PrepareConf, Prepared, ReqCall,
    ReqCallAnswer, RespCall, RespCallAnswer,
};
use crate::codec::{FrameCodec, FrameError};
use crate::ext_plugin_capnp as schema;
use crate::{InfoKey, RequestOutcome};
use bytes::{BufMut, BytesMut};
use capnp::message::{Builder, HeapAllocator};
use http::Method;
use std::net::IpAddr;
use tokio_util::codec::Encoder;

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
        dst.reserve(crate::codec::HEADER_LEN + words * 8);
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

/// One entry of a `Pair` (text value) or `PairData` (data value) list being
/// built.
trait PairSlot<V: ?Sized> {
    /// Sets the name, and the value unless it is `None` (left null).
    fn fill(self, name: &str, value: Option<&V>);
}

impl PairSlot<str> for schema::pair::Builder<'_> {
    fn fill(mut self, name: &str, value: Option<&str>) {
        self.set_name(name);
        if let Some(value) = value {
            self.set_value(value);
        }
    }
}

impl PairSlot<[u8]> for schema::pair_data::Builder<'_> {
    fn fill(mut self, name: &str, value: Option<&[u8]>) {
        self.set_name(name);
        if let Some(value) = value {
            self.set_value(value);
        }
    }
}

/// Writes a `Pair` or `PairData` list (initialized to the pairs' number);
/// a `None` value is left null.
fn write_pairs<'p, O, V>(
    mut list: capnp::struct_list::Builder<'_, O>,
    pairs: impl IntoIterator<Item = (&'p str, Option<&'p V>)>,
) where
    O: capnp::traits::OwnedStruct,
    V: ?Sized + 'p,
    for<'b> O::Builder<'b>: PairSlot<V>,
{
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        list.reborrow().get(i as u32).fill(name, value);
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
            write_pairs(
                root.init_extra_info(p.extra_info.len() as u32),
                p.extra_info.iter().copied(),
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
            write_pairs(
                root.init_extra_info(p.extra_info.len() as u32),
                p.extra_info.iter().copied(),
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
