//! One host connection: read a frame, answer it with one frame, repeat. Calls
//! on a connection are sequential; connections run in parallel.
//!
//! Every error becomes an ERROR frame here, and only a framing violation or a
//! broken socket ends the connection: the process never exits because of what
//! one connection sent.
//!
//! A connection speaks one wire, extplug's Cap'n Proto or APISIX's
//! FlatBuffers: the one `EXTPLUG_RUNNER_PROTOCOL` pins, else the one its
//! first frame's payload is in ([`Protocol::detect`]). Only the decoding of
//! a request and the encoding of an answer differ; the loop, the cache and
//! the chains are the same. On APISIX's wire, whose ERROR carries no
//! message, a malformed message also closes the connection (APISIX itself
//! closes after any error), and the reason is logged instead.

use super::cache::{ConfCache, Entry};
use crate::{
    async_trait, CallError, Chain, InfoKey, InfoSource, PluginError, Registry, Request,
    RequestParts, Response, ResponseParts,
};
use bytes::{Bytes, BytesMut};
use capnp::message::ScratchSpaceHeapAllocator;
use extplug::wire::apisix::{self, ApisixEncode};
use extplug::wire::codec::{HEADER_LEN, RESERVE_CHUNK};
use extplug::wire::{
    DecodeError, Encode, ErrorCode, ErrorResp, Frame, FrameCodec, FrameError, MessageType, Payload,
    PrepareConf, Prepared, Protocol, ReqCallAnswer, RespCallAnswer,
};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub registry: Registry,
    pub cache: ConfCache,
    pub max_frame: usize,
    /// The most EXTRA_INFO round trips per call.
    pub max_extra_info: u32,
    /// The one wire spoken (`EXTPLUG_RUNNER_PROTOCOL`); `None`: each
    /// connection's first frame decides.
    pub protocol: Option<Protocol>,
}

/// Whether the connection can take another frame after an answer.
enum Flow {
    Next,
    Close,
}

/// Bytes of read buffer a connection starts with: most calls fit.
const READ_BUFFER: usize = 8 * 1024;

/// Bytes of Cap'n Proto scratch space per connection: the first segment of
/// every answer, so that an answer this size or smaller allocates nothing.
const SCRATCH: usize = 8 * 1024;

/// A buffer grown past this by a large frame is given back once empty, so
/// that one large body does not keep its memory for the connection's life.
const KEEP_BUFFER: usize = 256 * 1024;

/// One host connection: its socket and the buffers every call reuses.
///
/// Reads go into one buffer with room for a usual frame, so that a call
/// costs one read; a frame is split off it without copying (the payload
/// shares the buffer, and its bytes are what the plugins see). An answer is
/// built in the connection's scratch space, encoded into the output buffer
/// and sent with one write.
struct Conn<'s> {
    stream: UnixStream,
    codec: FrameCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    scratch: ScratchSpaceHeapAllocator<'s>,
    /// The wire of this connection, once known.
    protocol: Option<Protocol>,
    /// Where APISIX's answers are built: reused, like `scratch` (it
    /// allocates on the first APISIX answer only).
    flat: apisix::Builder,
}

impl Conn<'_> {
    /// The next frame; `None` when the host closed the connection between
    /// frames.
    async fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        loop {
            // A larger frame: grow by what has arrived (at least the codec's
            // chunk), so that its bytes are moved a few times, not once per
            // chunk (the codec's own reserve, next, then has room), and
            // memory still follows the bytes received, never the length
            // declared.
            if let [_, a, b, c, ..] = self.rbuf[..] {
                let need =
                    HEADER_LEN + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
                let missing = need.saturating_sub(self.rbuf.len());
                // (A length over the limit is the decoder's to refuse.)
                if need <= HEADER_LEN + self.codec.max_payload()
                    && missing > self.rbuf.capacity() - self.rbuf.len()
                {
                    // A new buffer with only the frame's bytes: growing the
                    // old one in place would also move the dead bytes of
                    // the frames before it.
                    let more = missing.min(self.rbuf.len().max(RESERVE_CHUNK));
                    let mut grown = BytesMut::with_capacity(self.rbuf.len() + more);
                    grown.extend_from_slice(&self.rbuf);
                    self.rbuf = grown;
                }
            }
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
                self.rbuf = BytesMut::with_capacity(READ_BUFFER);
            }
            // Room for a whole usual frame, so that it comes in one read (the
            // decoder reserves more for a larger frame it has the header of).
            // The frames split off earlier are gone by now, so this reuses
            // the same memory rather than allocating.
            if self.rbuf.capacity() - self.rbuf.len() < READ_BUFFER / 2 {
                self.rbuf.reserve(READ_BUFFER);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => return self.codec.decode_eof(&mut self.rbuf).transpose(),
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Sends `message` as one frame, with one write.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when it is over the frame limit (nothing of
    /// it was sent: the stream is still in step), or the socket failed.
    async fn send<T: Encode + ApisixEncode + ?Sized>(
        &mut self,
        message: &T,
    ) -> Result<(), FrameError> {
        self.wbuf.clear();
        match self.protocol {
            Some(Protocol::Apisix) => {
                self.codec
                    .encode_apisix(message, &mut self.flat, &mut self.wbuf)?
            }
            _ => self
                .codec
                .encode_with(message, &mut self.scratch, &mut self.wbuf)?,
        }
        self.stream.write_all(&self.wbuf).await?;
        if self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }
}

/// Serves one connection until the host closes it, the stream breaks, or the
/// runner shuts down (checked only between frames, so a call in flight
/// always gets its answer).
pub(crate) async fn serve(stream: UnixStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut scratch = vec![0u8; SCRATCH];
    let mut conn = Conn {
        stream,
        codec: FrameCodec::with_max_payload(shared.max_frame),
        rbuf: BytesMut::with_capacity(READ_BUFFER),
        wbuf: BytesMut::with_capacity(READ_BUFFER),
        scratch: ScratchSpaceHeapAllocator::new(&mut scratch),
        protocol: shared.protocol,
        flat: apisix::Builder::new(),
    };
    // Tokens this connection used: found again without the shared lock.
    let mut tokens: HashMap<u32, Arc<Entry>> = HashMap::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = conn.next() => next,
        };
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(FrameError::Io(e))) => {
                debug!(cause = %e, "connection failed");
                break;
            }
            Some(Err(e)) => {
                // Out of step with the stream: say why if we can, then close.
                warn!(cause = %e, "framing error, closing the connection");
                let _ = send_error(&mut conn, ErrorCode::BadRequest, e.to_string()).await;
                break;
            }
        };
        if conn.protocol.is_none() {
            let protocol = Protocol::detect(&frame.payload);
            debug!(%protocol, "connection speaks {protocol}");
            conn.protocol = Some(protocol);
        }
        match handle(&mut conn, &shared, &mut tokens, frame).await {
            Ok(Flow::Next) => {}
            Ok(Flow::Close) => break,
            Err(e) => {
                debug!(cause = %e, "could not answer, closing the connection");
                break;
            }
        }
    }
}

async fn send_error(
    conn: &mut Conn<'_>,
    code: ErrorCode,
    message: String,
) -> Result<(), FrameError> {
    conn.send(&ErrorResp { code, message }).await
}

/// Answers one frame.
async fn handle(
    conn: &mut Conn<'_>,
    shared: &Shared,
    tokens: &mut HashMap<u32, Arc<Entry>>,
    frame: Frame,
) -> Result<Flow, FrameError> {
    let kind = match MessageType::from_u8(frame.kind) {
        Some(
            kind
            @ (MessageType::PrepareConf | MessageType::HttpReqCall | MessageType::HttpRespCall),
        ) => kind,
        Some(other) => {
            let message = format!(
                "message type {} ({other:?}) is not a request a host may send here",
                frame.kind
            );
            return malformed(conn, message).await;
        }
        None => {
            let message = format!("unknown message type {}", frame.kind);
            return malformed(conn, message).await;
        }
    };
    let bytes = &frame.payload[..];
    // The Cap'n Proto message, when that is the wire: what is decoded from
    // it borrows it.
    let capnp = match conn.protocol {
        Some(Protocol::Apisix) => None,
        _ => match Payload::parse(bytes) {
            Ok(payload) => Some(payload),
            Err(e) => return malformed(conn, e.to_string()).await,
        },
    };
    match kind {
        MessageType::PrepareConf => {
            let req = match &capnp {
                Some(payload) => payload.prepare_conf(),
                None => apisix::prepare_conf(bytes),
            };
            match req {
                Ok(req) => prepare(conn, shared, req).await,
                Err(e) => bad_message(conn, e).await,
            }
        }
        MessageType::HttpReqCall => {
            let req = match &capnp {
                Some(payload) => payload.req_call(),
                None => apisix::req_call(bytes),
            };
            match req {
                Ok(c) => call(conn, shared, tokens, c.conf_token, c.parts).await,
                Err(e) => bad_message(conn, e).await,
            }
        }
        _ => {
            let req = match &capnp {
                Some(payload) => payload.resp_call(),
                None => apisix::resp_call(bytes),
            };
            match req {
                Ok(c) => call(conn, shared, tokens, c.conf_token, c.parts).await,
                Err(e) => bad_message(conn, e).await,
            }
        }
    }
}

/// A message that does not decode: [`malformed`].
async fn bad_message(conn: &mut Conn<'_>, e: DecodeError) -> Result<Flow, FrameError> {
    malformed(conn, e.to_string()).await
}

/// Answers a frame that is not a well-formed request with ERROR
/// `badRequest`. On extplug's wire the connection is kept (the message
/// says why); on APISIX's, whose ERROR has no message, the reason is
/// logged and the connection closed.
async fn malformed(conn: &mut Conn<'_>, message: String) -> Result<Flow, FrameError> {
    warn!(protocol = ?conn.protocol, cause = %message, "malformed message");
    send_error(conn, ErrorCode::BadRequest, message).await?;
    Ok(match conn.protocol {
        Some(Protocol::Apisix) => Flow::Close,
        _ => Flow::Next,
    })
}

async fn prepare(
    conn: &mut Conn<'_>,
    shared: &Shared,
    req: PrepareConf<'_>,
) -> Result<Flow, FrameError> {
    if let Some(entry) = req.key.and_then(|key| shared.cache.get_by_key(key)) {
        let answer = Prepared {
            token: entry.token,
            needs: entry.chain.needs().clone(),
        };
        conn.send(&answer).await?;
        return Ok(Flow::Next);
    }
    let chain = match Chain::prepare(&shared.registry, req.conf.iter().copied()) {
        Ok(chain) => chain,
        Err(e) => {
            // extplug's host reports the refusal (once per route phase):
            // debug. APISIX's wire cannot carry the reason: warn, so that
            // it is in APISIX's log (which relays the runner's output).
            if conn.protocol == Some(Protocol::Apisix) {
                warn!(cause = %e, "conf refused");
            } else {
                debug!(cause = %e, "conf refused");
            }
            send_error(conn, ErrorCode::BadRequest, e.to_string()).await?;
            return Ok(Flow::Next);
        }
    };
    let entry = match shared.cache.insert(chain, req.key) {
        Ok(entry) => entry,
        Err(e) => {
            send_error(conn, ErrorCode::ServiceUnavailable, e.to_string()).await?;
            return Ok(Flow::Next);
        }
    };
    info!(token = entry.token, key = req.key.unwrap_or(""), chain = ?entry.chain, "conf prepared");
    let answer = Prepared {
        token: entry.token,
        needs: entry.chain.needs().clone(),
    };
    conn.send(&answer).await?;
    Ok(Flow::Next)
}

/// The live entry for `token`: from the connection's own map when it can be,
/// else from the shared cache (then kept in the map).
fn lookup<'t>(
    cache: &ConfCache,
    tokens: &'t mut HashMap<u32, Arc<Entry>>,
    token: u32,
) -> Option<&'t Entry> {
    let live = tokens.get(&token).is_some_and(|e| cache.touch(e));
    if !live {
        tokens.remove(&token);
        let entry = cache.get(token)?;
        if tokens.len() >= 256 {
            // A host that cycles through many routes: start over rather than grow.
            tokens.clear();
        }
        tokens.insert(token, entry);
    }
    tokens.get(&token).map(|e| &**e)
}

/// What a call carries, runnable against a chain: the request phase's
/// request or the response phase's response. (A plain `impl Future`, not
/// `async_trait`: no boxed future per call.)
trait CallParts: Send {
    /// The answer frame.
    type Answer: Encode + ApisixEncode + Send + Sync;
    /// The call's id, echoed in the answer.
    fn id(&self) -> u32;
    /// Runs the chain's phase over the view and folds the changes.
    fn run(
        self,
        chain: &Chain,
        source: &mut ConnSource<'_, '_>,
    ) -> impl std::future::Future<Output = Result<Self::Answer, CallError>> + Send;
}

impl CallParts for RequestParts<'_> {
    type Answer = ReqCallAnswer;
    fn id(&self) -> u32 {
        self.id
    }
    async fn run(
        self,
        chain: &Chain,
        source: &mut ConnSource<'_, '_>,
    ) -> Result<ReqCallAnswer, CallError> {
        let id = self.id;
        let mut req = Request::new(self, source);
        chain.run_request(&mut req).await?;
        Ok(ReqCallAnswer {
            id,
            outcome: req.into_outcome(),
        })
    }
}

impl CallParts for ResponseParts<'_> {
    type Answer = RespCallAnswer;
    fn id(&self) -> u32 {
        self.id
    }
    async fn run(
        self,
        chain: &Chain,
        source: &mut ConnSource<'_, '_>,
    ) -> Result<RespCallAnswer, CallError> {
        let id = self.id;
        let mut resp = Response::new(self, source);
        chain.run_response(&mut resp).await?;
        Ok(RespCallAnswer {
            id,
            outcome: resp.into_outcome(),
        })
    }
}

/// Runs a call under `token` and sends its one answer: the outcome, or
/// ERROR `confTokenNotFound` / `serviceUnavailable`.
async fn call<P: CallParts>(
    conn: &mut Conn<'_>,
    shared: &Shared,
    tokens: &mut HashMap<u32, Arc<Entry>>,
    token: u32,
    parts: P,
) -> Result<Flow, FrameError> {
    let Some(entry) = lookup(&shared.cache, tokens, token) else {
        let message = format!("conf token {token} not found: never prepared, or expired");
        send_error(conn, ErrorCode::ConfTokenNotFound, message).await?;
        return Ok(Flow::Next);
    };
    let id = parts.id();
    let mut source = ConnSource {
        conn,
        broken: false,
        exchanges: 0,
        max_exchanges: shared.max_extra_info,
    };
    let result = parts.run(&entry.chain, &mut source).await;
    let broken = source.broken;
    match result {
        Ok(answer) => match conn.send(&answer).await {
            // Nothing of it was written (the codec drops a frame it refuses):
            // the stream is in step, so say why instead of closing.
            Err(FrameError::TooLarge { len, max }) => {
                let message = format!(
                    "the answer to call {id} is {len} bytes, over the frame limit of {max} bytes"
                );
                warn!(id, token, "{message}");
                send_error(conn, ErrorCode::ServiceUnavailable, message).await?
            }
            sent => sent?,
        },
        Err(e) => {
            warn!(id, token, cause = %e, "call failed");
            send_error(conn, ErrorCode::ServiceUnavailable, e.to_string()).await?
        }
    }
    Ok(if broken { Flow::Close } else { Flow::Next })
}

/// Lazy reads during a call: an EXTRA_INFO round trip on the call's own
/// connection.
struct ConnSource<'c, 's> {
    conn: &'c mut Conn<'s>,
    /// Set when an exchange failed: the stream is out of step, so the
    /// connection closes after the call's answer.
    broken: bool,
    /// EXTRA_INFO round trips made in this call.
    exchanges: u32,
    /// The cap on them (`EXTPLUG_MAX_EXTRA_INFO`).
    max_exchanges: u32,
}

#[async_trait]
impl InfoSource for ConnSource<'_, '_> {
    async fn fetch(&mut self, key: InfoKey<'_>) -> Result<Option<Bytes>, PluginError> {
        if self.broken {
            return Err("the connection to the host failed earlier in this call".into());
        }
        if self.exchanges >= self.max_exchanges {
            // The stream is still in step: only this call fails.
            return Err(format!(
                "more than {} EXTRA_INFO round trips in one call (the runner's cap, {})",
                self.max_exchanges,
                super::env::MAX_EXTRA_INFO
            )
            .into());
        }
        self.exchanges += 1;
        let result = exchange(self.conn, key).await;
        self.broken = result.is_err();
        result
    }
}

async fn exchange(conn: &mut Conn<'_>, key: InfoKey<'_>) -> Result<Option<Bytes>, PluginError> {
    conn.send(&key).await?;
    let frame = match conn.next().await {
        None => return Err("the host closed the connection during EXTRA_INFO".into()),
        Some(frame) => frame?,
    };
    if frame.kind != MessageType::ExtraInfo as u8 {
        return Err(format!(
            "expected an EXTRA_INFO answer (type 3) from the host, got type {}",
            frame.kind
        )
        .into());
    }
    // The value is a slice of the frame, which the call keeps: no copy.
    let frame = frame.payload.freeze();
    let value = match conn.protocol {
        Some(Protocol::Apisix) => apisix::extra_info_resp(&frame)?.0,
        _ => {
            let payload = Payload::parse(&frame)?;
            return Ok(payload
                .extra_info_resp()?
                .0
                .map(|value| slice_of(&frame, value)));
        }
    };
    Ok(value.map(|value| slice_of(&frame, value)))
}

/// `value` as a slice of `frame` when it lies in it (the decoder borrows
/// the frame's bytes), else a copy.
fn slice_of(frame: &Bytes, value: &[u8]) -> Bytes {
    let at = (value.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    match at.checked_add(value.len()) {
        Some(end) if end <= frame.len() => frame.slice(at..end),
        _ => Bytes::copy_from_slice(value),
    }
}
