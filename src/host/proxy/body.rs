//! Message bodies: one type, [`MessageBody`], for the client's request body
//! and the upstream's response body, with one failure model.
//!
//! A body streams through unless a plugin needs it whole; then it is read
//! once, within a size limit and an idle timeout (the longest wait for the
//! next bytes, like nginx's `client_body_timeout`). A failure is sticky: once
//! a body could not be read, it can never be forwarded (not even as an
//! empty body) and the pipeline answers with the failure's status
//! (400/408/413 for a request, 502 for a response). A body that fails while
//! it streams to the upstream records its failure in the same place, so the
//! pipeline can tell "the client stalled" from "the upstream failed".

use super::answer::{full, Body, BoxError};
use super::budget::{BodyBudget, Charge};
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// Over the size limit (declared or actual).
    #[error("body is over {0} bytes")]
    TooLarge(usize),
    /// No bytes arrived for the idle timeout.
    #[error("no body bytes for {0:?}")]
    TimedOut(Duration),
    /// The peer closed or sent a malformed body.
    #[error("body could not be read: {0}")]
    Read(String),
    /// The read was abandoned half-way (the ext-plugin call that asked for
    /// the body timed out): what was read is gone, so the body is lost.
    #[error("the body read was cut short when the ext-plugin call ended")]
    Interrupted,
    /// The bodies buffered at once would be over `max_buffered_body_bytes`.
    #[error("the proxy buffers {0} bytes of bodies at most, and has no room for this one now")]
    OverBudget(usize),
}

/// Where a body comes from; decides the status of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client's request body.
    Request,
    /// The upstream's response body.
    Response,
}

impl BodyError {
    /// The status the client gets for this failure on `side`.
    pub(crate) fn status(&self, side: Side) -> http::StatusCode {
        use http::StatusCode as S;
        match (side, self) {
            // Neither peer's fault: the runner's call ended first, or the
            // proxy has no room now.
            (_, BodyError::Interrupted | BodyError::OverBudget(_)) => S::SERVICE_UNAVAILABLE,
            (Side::Response, _) => S::BAD_GATEWAY,
            (Side::Request, BodyError::TooLarge(_)) => S::PAYLOAD_TOO_LARGE,
            (Side::Request, BodyError::TimedOut(_)) => S::REQUEST_TIMEOUT,
            (Side::Request, BodyError::Read(_)) => S::BAD_REQUEST,
        }
    }
}

enum State {
    /// Not read yet.
    Streaming(Incoming),
    /// Read whole (or replaced by a plugin).
    Buffered(Bytes),
    /// Handed to the upstream (or the client) as a stream.
    Sent,
}

/// A request or response body: streaming, or buffered for a plugin.
pub(crate) struct MessageBody {
    state: State,
    /// The declared `content-length`, checked against `limit` up front.
    declared: Option<u64>,
    limit: usize,
    idle: Duration,
    /// The first failure, also when it happens while streaming.
    failure: Arc<OnceLock<BodyError>>,
    /// The process's bound on buffered bytes, and what this body holds of
    /// it (until the body is dropped, with its request).
    budget: Arc<BodyBudget>,
    /// Shared with every copy of the buffer sent on: given back when the
    /// last of them is dropped (this body's, at the end of its exchange;
    /// a sent one, once the peer read it).
    charge: Option<Arc<Charge>>,
}

impl MessageBody {
    /// A body still to be read, with its message's headers (for the
    /// declared length), a size limit for buffering, an idle timeout, and
    /// the process's budget of buffered bytes.
    pub(crate) fn new(
        body: Incoming,
        headers: &HeaderMap,
        limit: usize,
        idle: Duration,
        budget: Arc<BodyBudget>,
    ) -> Self {
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        MessageBody {
            state: State::Streaming(body),
            declared,
            limit,
            idle,
            failure: Arc::new(OnceLock::new()),
            budget,
            charge: None,
        }
    }

    /// The most bytes [`MessageBody::buffer`] reads.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The first failure of this body, if any.
    pub(crate) fn failure(&self) -> Option<&BodyError> {
        self.failure.get()
    }

    fn fail(&self, e: BodyError) -> BodyError {
        let _ = self.failure.set(e);
        self.failure
            .get()
            .cloned()
            .unwrap_or(BodyError::Read(String::new()))
    }

    /// Reads the body whole (once; later calls return the same bytes).
    ///
    /// # Errors
    /// Over the limit, idle too long, or unreadable; the failure sticks.
    pub(crate) async fn buffer(&mut self) -> Result<Bytes, BodyError> {
        if let Some(e) = self.failure() {
            return Err(e.clone());
        }
        match std::mem::replace(&mut self.state, State::Sent) {
            State::Buffered(bytes) => {
                self.state = State::Buffered(bytes.clone());
                Ok(bytes)
            }
            State::Sent => Err(self.fail(BodyError::Read("the body was already sent".into()))),
            State::Streaming(body) => {
                if self.declared.is_some_and(|n| n > self.limit as u64) {
                    return Err(self.fail(BodyError::TooLarge(self.limit)));
                }
                let mut timed = IdleTimeout::new(body, self.idle, self.failure.clone());
                // Dropped before the read ends (the call asking for the body
                // timed out), the body is half-consumed: record that, or the
                // next use would blame the client ("already sent").
                let guard = InterruptGuard(Some(self.failure.clone()));
                let mut charge = Charge::new(self.budget.clone());
                let read = self.read_into(&mut timed, &mut charge).await;
                guard.disarm();
                match read {
                    Ok(buf) => {
                        let bytes = buf.freeze();
                        self.charge = Some(Arc::new(charge));
                        self.state = State::Buffered(bytes.clone());
                        Ok(bytes)
                    }
                    Err(e) => Err(self.fail(e)),
                }
            }
        }
    }

    /// Reads `body` whole into one buffer, each growth of the buffer
    /// charged to the budget first: what is counted is what is allocated
    /// (a declared length is allocated, and charged, at once: growing a
    /// buffer by doubling instead lets refused uploads allocate and free
    /// partial buffers, which the allocator keeps, and the process's RSS
    /// went past the documented bound).
    async fn read_into(
        &self,
        body: &mut IdleTimeout,
        charge: &mut Charge,
    ) -> Result<BytesMut, BodyError> {
        let over_budget = || BodyError::OverBudget(self.budget.max());
        let mut buf = BytesMut::new();
        if let Some(declared) = self.declared {
            // Within the limit: checked by the caller.
            let declared = declared as usize;
            if !charge.grow_to(declared) {
                return Err(over_budget());
            }
            buf = BytesMut::with_capacity(declared);
        }
        while let Some(frame) = body.frame().await {
            // `IdleTimeout` recorded the precise failure already.
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let need = buf.len() + data.len();
            if need > self.limit {
                return Err(BodyError::TooLarge(self.limit));
            }
            if need > buf.capacity() {
                // Doubling, within the limit: few copies, and at most
                // twice the body's length allocated.
                let grown = need.max(buf.capacity() * 2).min(self.limit);
                if !charge.grow_to(grown) {
                    return Err(over_budget());
                }
                // Exactly what was charged (`reserve` may take more).
                let mut bigger = BytesMut::with_capacity(grown);
                bigger.extend_from_slice(&buf);
                buf = bigger;
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf)
    }

    /// Replaces the body (a plugin's rewrite).
    pub(crate) fn replace(&mut self, bytes: Bytes) {
        self.state = State::Buffered(bytes);
    }

    /// The body if it was buffered.
    pub(crate) fn buffered(&self) -> Option<Bytes> {
        match &self.state {
            State::Buffered(b) => Some(b.clone()),
            _ => None,
        }
    }

    /// The body to send on, and its length when it is buffered (the proxy
    /// sets `content-length` from it). A buffered body stays available.
    ///
    /// # Errors
    /// The body failed before (or was already sent): it must not be sent
    /// as if it were complete.
    pub(crate) fn send(&mut self) -> Result<(Body, Option<usize>), BodyError> {
        if let Some(e) = self.failure() {
            return Err(e.clone());
        }
        match std::mem::replace(&mut self.state, State::Sent) {
            State::Buffered(bytes) => {
                self.state = State::Buffered(bytes.clone());
                let len = bytes.len();
                // The buffer stays counted until this body and what is
                // sent are both gone: the bytes live on here (for a later
                // phase) while the upstream answers, and in the sent body
                // while a slow client reads an answer.
                let charge = self.charge.clone();
                let body = full(bytes)
                    .map_frame(move |frame| {
                        let _held = &charge;
                        frame
                    })
                    .boxed();
                Ok((body, Some(len)))
            }
            State::Streaming(body) => Ok((
                IdleTimeout::new(body, self.idle, self.failure.clone()).boxed(),
                None,
            )),
            State::Sent => Err(self.fail(BodyError::Read("the body was already sent".into()))),
        }
    }
}

/// Records [`BodyError::Interrupted`] when dropped armed.
struct InterruptGuard(Option<Arc<OnceLock<BodyError>>>);

impl InterruptGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        if let Some(failure) = self.0.take() {
            let _ = failure.set(BodyError::Interrupted);
        }
    }
}

/// `idle` from now. A timeout too long for the clock (an operator's "never",
/// like `1e19` seconds) is about 30 years instead: `Instant + Duration`
/// panics on overflow, and a panic here would drop the connection.
fn deadline(idle: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(idle)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(now)
}

/// A body that fails when no frame arrives for `idle`, and records its
/// failure (timeout or read error) in the shared slot.
struct IdleTimeout {
    inner: Incoming,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The clock starts at the first poll, not when the body is handed on
    /// (connecting to the upstream is not the client's idle time).
    started: bool,
    failure: Arc<OnceLock<BodyError>>,
}

impl IdleTimeout {
    fn new(inner: Incoming, idle: Duration, failure: Arc<OnceLock<BodyError>>) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            started: false,
            failure,
        }
    }
}

impl hyper::body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.started {
            this.started = true;
            this.sleep.as_mut().reset(deadline(this.idle));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                let e = BodyError::Read(e.to_string());
                let _ = this.failure.set(e.clone());
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(other) => {
                this.sleep.as_mut().reset(deadline(this.idle));
                Poll::Ready(other.map(|r| r.map_err(BoxError::from)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let e = BodyError::TimedOut(this.idle);
                    let _ = this.failure.set(e.clone());
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
