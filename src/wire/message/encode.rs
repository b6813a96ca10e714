//! Messages to Cap'n Proto, written straight into the frame's output buffer.

use super::types::{
    ErrorCode, ErrorResp, ExtraInfoAnswer, MessageType, PrepareConf, Prepared, ReqCall,
    ReqCallAnswer, RespCall, RespCallAnswer,
};
use crate::wire::codec::{FrameCodec, FrameError};
use crate::wire::ext_plugin_capnp as schema;
use crate::wire::{InfoKey, RequestOutcome};
use bytes::{BufMut, BytesMut};
use capnp::message::{Allocator, Builder, HeapAllocator};
use http::Method;
use std::net::IpAddr;
use std::ptr::NonNull;
use tokio_util::codec::Encoder;

/// A message that can be sent as one frame.
pub trait Encode {
    /// The frame type to send it with.
    fn kind(&self) -> MessageType;
    /// Writes the message into a fresh Cap'n Proto builder (whose segments
    /// come from any allocator: the heap, or a connection's reused scratch
    /// space).
    ///
    /// # Errors
    /// A Cap'n Proto error (only on resource exhaustion in practice).
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()>;

    /// The words the message takes, or a slight over-estimate. [`FrameCodec`](crate::wire::FrameCodec)'s
    /// encoder makes its first segment this large, so that the message is
    /// one segment: the reader then follows no far pointers (and reads it
    /// without allocating). The default, 128 words, suits small messages.
    fn size_hint_words(&self) -> usize {
        128
    }
}

/// Words of a text of `len` bytes (with its NUL, padded to a word).
fn text_words(len: usize) -> usize {
    (len + 8) / 8
}

/// Words of a data blob of `len` bytes (padded to a word).
fn data_words(len: usize) -> usize {
    len.div_ceil(8)
}

/// Words of a `Pair`/`PairData` list: its tag, two pointers per entry, and
/// each name and value.
/// `pairs` gives each entry's name and value lengths (`None`: no value).
fn pairs_words(pairs: impl IntoIterator<Item = (usize, Option<usize>)>) -> usize {
    pairs.into_iter().fold(1, |words, (name, value)| {
        words + 2 + text_words(name) + value.map_or(0, text_words)
    })
}

/// Words of a message's fixed parts: the root pointer, root struct and
/// list pointers of any message here, with room to spare.
const FIXED_WORDS: usize = 16;

/// The first segment of a message built by [`FrameCodec`]'s encoder: its
/// size hint, at least 128 words and at most the largest frame.
fn first_segment_words(hint: usize) -> u32 {
    hint.clamp(128, crate::wire::MAX_PAYLOAD / 8 + 1) as u32
}

impl FrameCodec {
    /// Encodes `item` as one frame at the end of `dst`, building the Cap'n
    /// Proto message in segments from `alloc`. With a reused
    /// `capnp::message::ScratchSpaceHeapAllocator` (passed as `&mut`), a
    /// message that fits its scratch space costs no allocation: the only
    /// copy is the one into `dst`, the connection's output buffer.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload is over the limit (nothing
    /// of the frame is left in `dst`), or a Cap'n Proto error.
    pub fn encode_with<T: Encode + ?Sized, A: Allocator>(
        &self,
        item: &T,
        alloc: A,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let mut message = Builder::new(alloc);
        item.build(&mut message)?;
        let words = capnp::serialize::compute_serialized_size_in_words(&message);
        dst.reserve(crate::wire::codec::HEADER_LEN + words * 8);
        let start = FrameCodec::begin(dst, item.kind() as u8);
        if let Err(e) = capnp::serialize::write_message((&mut *dst).writer(), &message) {
            dst.truncate(start);
            return Err(e.into());
        }
        self.finish(dst, start)
    }
}

/// Bytes of a one-segment message's segment table: the segment count less
/// one, then the segment's size in words (4 bytes each, little-endian).
const ONE_SEGMENT_TABLE: usize = 8;

/// A message's segments for [`FrameCodec`]'s encoder: the first is a zeroed
/// stretch of the frame's output buffer, right where a one-segment message
/// is sent from (after the frame header and the segment table), so that
/// what the message holds (a request body, say) is copied once, into the
/// buffer the socket is written from; a message that outgrows it takes its
/// further segments from the heap.
struct InBuffer {
    /// The output buffer's stretch, until the builder asks for it.
    first: Option<(NonNull<u8>, u32)>,
    /// Where that stretch starts (never freed: the buffer owns it).
    first_at: NonNull<u8>,
    heap: HeapAllocator,
}

// SAFETY: the first segment is zeroed memory of `words` words, exclusively
// the builder's while it lives (the encoder touches the buffer again only
// after dropping it), and handed out once; the others are the heap
// allocator's, and freed by it.
#[allow(unsafe_code)]
unsafe impl Allocator for InBuffer {
    fn allocate_segment(&mut self, minimum_size: u32) -> (NonNull<u8>, u32) {
        match self.first.take() {
            Some((at, words)) if words >= minimum_size => (at, words),
            _ => self.heap.allocate_segment(minimum_size),
        }
    }

    unsafe fn deallocate_segment(&mut self, ptr: NonNull<u8>, word_size: u32, words_used: u32) {
        if ptr != self.first_at {
            // SAFETY: a segment the heap allocator gave, as the caller
            // promises for every segment.
            unsafe { self.heap.deallocate_segment(ptr, word_size, words_used) }
        }
    }
}

impl FrameCodec {
    /// Encodes `item` as one frame at the end of `dst`, the message built in
    /// `dst` itself (see [`InBuffer`]): one copy of each of its fields, and
    /// no allocation, when its first segment (its size hint) holds it, as
    /// it does for every message here; else it is written out apart and
    /// appended.
    fn encode_in_place<T: Encode + ?Sized>(
        &self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let words = first_segment_words(item.size_hint_words());
        let start = dst.len();
        let segment_at = start + crate::wire::codec::HEADER_LEN + ONE_SEGMENT_TABLE;
        // Zeroed, as a Cap'n Proto segment must be.
        dst.resize(segment_at + words as usize * 8, 0);
        let at = NonNull::from(&mut dst[segment_at..]).cast::<u8>();
        let mut message = Builder::new(InBuffer {
            first: Some((at, words)),
            first_at: at,
            heap: HeapAllocator::new(),
        });
        if let Err(e) = item.build(&mut message) {
            drop(message);
            dst.truncate(start);
            return Err(e.into());
        }
        let segments = message.get_segments_for_output();
        let in_place = match &segments[..] {
            [only] if only.as_ptr() == at.as_ptr().cast_const() => Some(only.len()),
            _ => None,
        };
        let Some(used) = in_place else {
            // Past the hint: the message, written apart, then copied in.
            let mut out = Vec::new();
            let written = capnp::serialize::write_message(&mut out, &message);
            drop(message);
            dst.truncate(start);
            written?;
            let start = FrameCodec::begin(dst, item.kind() as u8);
            dst.extend_from_slice(&out);
            return self.finish(dst, start);
        };
        drop(message);
        dst.truncate(segment_at + used);
        let kind = (item.kind() as u32) << 24;
        dst[start..start + 4].copy_from_slice(&kind.to_be_bytes());
        dst[start + 4..start + 8].copy_from_slice(&0u32.to_le_bytes());
        dst[start + 8..segment_at].copy_from_slice(&((used / 8) as u32).to_le_bytes());
        self.finish(dst, start)
    }
}

impl<T: Encode> Encoder<&T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_in_place(item, dst)
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
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn size_hint_words(&self) -> usize {
        FIXED_WORDS
            + pairs_words(self.conf.iter().map(|(n, v)| (n.len(), Some(v.len()))))
            + self.key.map_or(0, |k| text_words(k.len()))
    }
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn size_hint_words(&self) -> usize {
        let p = &self.parts;
        FIXED_WORDS
            + 2 // the source address
            + text_words(p.path.len())
            + pairs_words(p.args.iter().map(|(n, v)| (n.len(), v.as_ref().map(|v| v.len()))))
            + pairs_words(p.headers.iter().map(|(n, v)| (n.len(), Some(v.len()))))
            + pairs_words(p.extra_info.iter().map(|(n, v)| (n.len(), v.as_ref().map(|v| v.len()))))
    }
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn size_hint_words(&self) -> usize {
        FIXED_WORDS
            + match &self.outcome {
                RequestOutcome::Continue => 0,
                RequestOutcome::Stop(stop) => {
                    pairs_words(stop.headers.iter().map(|(n, v)| (n.len(), Some(v.len()))))
                        + data_words(stop.body.len())
                }
                RequestOutcome::Rewrite(rw) => {
                    rw.path.as_ref().map_or(0, |p| text_words(p.len()))
                        + pairs_words(
                            rw.headers
                                .iter()
                                .map(|(n, v)| (n.len(), v.as_ref().map(|v| v.len()))),
                        )
                        + pairs_words(
                            rw.args
                                .iter()
                                .map(|(n, v)| (n.len(), v.as_ref().map(|v| v.len()))),
                        )
                        + pairs_words(
                            rw.resp_headers
                                .iter()
                                .map(|(n, v)| (n.len(), Some(v.len()))),
                        )
                        + rw.body.as_ref().map_or(0, |b| data_words(b.len()))
                }
            }
    }
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn size_hint_words(&self) -> usize {
        let p = &self.parts;
        FIXED_WORDS
            + pairs_words(p.headers.iter().map(|(n, v)| (n.len(), Some(v.len()))))
            + pairs_words(
                p.extra_info
                    .iter()
                    .map(|(n, v)| (n.len(), v.as_ref().map(|v| v.len()))),
            )
    }
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn size_hint_words(&self) -> usize {
        let o = &self.outcome;
        FIXED_WORDS
            + o.headers.as_ref().map_or(0, |h| {
                pairs_words(h.iter().map(|(n, v)| (n.len(), Some(v.len()))))
            })
            + o.body.as_ref().map_or(0, |b| data_words(b.len()))
    }
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
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
    fn size_hint_words(&self) -> usize {
        FIXED_WORDS + self.0.map_or(0, |v| data_words(v.len()))
    }
    fn build<A: Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
        let mut root = message.init_root::<schema::extra_info_resp::Builder>();
        if let Some(value) = self.0 {
            root.set_result(value);
        }
        Ok(())
    }
}
