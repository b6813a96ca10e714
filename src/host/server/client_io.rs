//! One client connection's socket as hyper sees it, and the connection's
//! clock: what it is doing (reading a header, serving, idle) and since when.
//!
//! The timeouts live here rather than in hyper because hyper 1's
//! `header_read_timeout` also runs while a keep-alive connection is idle
//! waiting for its next request: one timer cannot be nginx's
//! `client_header_timeout` and `keepalive_timeout` at once.
//!
//! The raw head of each request is scanned here too: hyper drops the
//! `Content-Length` of a request that also has `Transfer-Encoding`, so only
//! the bytes tell that it had both. A head is scanned from the bytes read
//! while no request is being served; a pipelined request whose head arrived
//! while an earlier one was served has no verdict, and hyper then frames it
//! by `Transfer-Encoding` alone and closes the connection after it.
//!
//! The socket is shared (`Arc<TcpStream>`) with the connection's task, so that
//! the task can still answer 408 and close gracefully after hyper is gone.
//!
//! The clock's timer is lazy: a phase change only records the time, and
//! wakes nothing. The connection's task sleeps until [`Clock::next_check`],
//! which is never later than any deadline the connection can reach before
//! it (the current phase's, or one that starts after it), and there checks
//! [`Clock::expired`] and sleeps again. A request therefore costs no timer
//! re-armed and no wake-up of the task; a busy connection's timer fires
//! once per timeout at most.

use crate::host::edge::ingress;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What the connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request header, since `since`.
    Header { since: Instant, got_bytes: bool },
    /// Between requests of a keep-alive connection, since `since`.
    Idle { since: Instant },
    /// At least one request is being served.
    Busy,
}

/// Why the connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// The header did not arrive in time; `got_bytes` if part of it did.
    Header { got_bytes: bool },
    /// The keep-alive connection stayed idle too long.
    Idle,
}

struct State {
    phase: Phase,
    in_flight: usize,
    /// Whether the bytes read now are the start of a request head.
    scanning: bool,
    /// The head read so far, while `scanning`.
    head: Vec<u8>,
    /// [`ingress::framing_conflict`] of the last head read whole.
    verdict: Option<bool>,
    /// The connection speaks HTTP/2: no HTTP/1 heads to scan.
    http2: bool,
}

/// A connection's clock, shared by its socket, its service and its task.
pub(super) struct Clock {
    state: Mutex<State>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    max_head: usize,
}

impl Clock {
    /// A clock for a connection accepted now.
    pub(super) fn new(
        header_timeout: Duration,
        keepalive_timeout: Duration,
        max_head: usize,
    ) -> Self {
        Clock {
            state: Mutex::new(State {
                phase: Phase::Header {
                    since: Instant::now(),
                    got_bytes: false,
                },
                in_flight: 0,
                scanning: true,
                head: Vec::new(),
                verdict: None,
                http2: false,
            }),
            header_timeout,
            keepalive_timeout,
            max_head,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the current phase runs out; `None` while serving.
    #[cfg(test)]
    fn deadline(&self) -> Option<Instant> {
        self.phase_deadline(self.lock().phase)
    }

    fn phase_deadline(&self, phase: Phase) -> Option<Instant> {
        match phase {
            Phase::Header { since, .. } => Some(since + self.header_timeout),
            Phase::Idle { since } => Some(since + self.keepalive_timeout),
            Phase::Busy => None,
        }
    }

    /// When to look at the clock next, from `now`: the current phase's
    /// deadline, but no later than the shortest timeout from now, since a
    /// phase that begins after `now` (a header after an idle spell, an
    /// idle spell after a request) runs out at that soonest.
    pub(super) fn next_check(&self, now: Instant) -> Instant {
        // A zero keep-alive timeout turns keep-alive off (hyper closes the
        // connection after its answer): not a step, or the timer would spin.
        let step = match self.keepalive_timeout {
            k if k.is_zero() => self.header_timeout,
            k => k.min(self.header_timeout),
        };
        let soonest = now + step;
        self.phase_deadline(self.lock().phase)
            .map_or(soonest, |d| d.min(soonest))
    }

    /// Why the connection's time is up, if it is.
    pub(super) fn expired(&self) -> Option<Expiry> {
        let now = Instant::now();
        match self.lock().phase {
            Phase::Header { since, got_bytes } if now >= since + self.header_timeout => {
                Some(Expiry::Header { got_bytes })
            }
            Phase::Idle { since } if now >= since + self.keepalive_timeout => Some(Expiry::Idle),
            _ => None,
        }
    }

    /// True when closing now loses nothing: no request served, none begun.
    pub(super) fn quiet(&self) -> bool {
        matches!(
            self.lock().phase,
            Phase::Idle { .. }
                | Phase::Header {
                    got_bytes: false,
                    ..
                }
        )
    }

    /// Bytes came from the client.
    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut s = self.lock();
        match &mut s.phase {
            Phase::Busy => return,
            Phase::Idle { .. } => {
                // The first byte of the next request: its header's clock starts.
                s.phase = Phase::Header {
                    since: Instant::now(),
                    got_bytes: true,
                };
            }
            Phase::Header { got_bytes, .. } => *got_bytes = true,
        }
        if s.scanning {
            scan(&mut s, bytes, self.max_head);
        }
    }

    /// The connection speaks HTTP/2 (ALPN `h2`, or the clear-text preface):
    /// its bytes are frames, never scanned as HTTP/1 heads.
    pub(super) fn http2(&self) {
        let mut s = self.lock();
        s.http2 = true;
        s.scanning = false;
        s.head = Vec::new();
    }

    /// A request's header was read and its service called: the clock stops
    /// until the returned guard (kept with the response body) is dropped.
    /// Also returns the [`ingress::framing_conflict`] verdict of its raw
    /// head, when the head was seen whole.
    pub(super) fn request_started(self: &Arc<Self>) -> (InFlight, Option<bool>) {
        let mut s = self.lock();
        s.in_flight += 1;
        s.phase = Phase::Busy;
        s.scanning = false;
        s.head = Vec::new();
        let verdict = s.verdict.take();
        drop(s);
        (InFlight(self.clone()), verdict)
    }
}

/// Looks for the end of a request head in what was read so far; once found,
/// records whether it frames its body twice.
fn scan(s: &mut State, bytes: &[u8], max_head: usize) {
    if s.head.is_empty() {
        // The usual case, a whole head in one read: scanned where it is,
        // not copied.
        if let Some((lead, end)) = head_end(bytes, 0) {
            s.verdict = Some(ingress::framing_conflict(&bytes[lead..end]));
            s.scanning = false;
            return;
        }
    }
    let from = s.head.len().saturating_sub(3);
    s.head.extend_from_slice(bytes);
    if let Some((lead, end)) = head_end(&s.head, from) {
        s.verdict = Some(ingress::framing_conflict(&s.head[lead..end]));
        s.scanning = false;
        s.head = Vec::new();
    } else if s.head.len() > max_head {
        // hyper answers 431 to this one.
        s.scanning = false;
        s.head = Vec::new();
    }
}

/// Where the request head in `head` starts (after the empty lines before
/// it) and ends (the empty line after it), looking for the end from byte
/// `from` on (what was scanned before cannot hold it).
fn head_end(head: &[u8], from: usize) -> Option<(usize, usize)> {
    // Empty lines before a request are skipped, as hyper does.
    let lead = head
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(head.len());
    let from = from.max(lead);
    // The head ends at an empty line: `\n` then `\n` or `\r\n` (hyper
    // accepts bare line feeds).
    let end = (from..head.len()).find(|&i| {
        head[i] == b'\n'
            && (head.get(i + 1) == Some(&b'\n')
                || head.get(i + 1..i + 3) == Some(b"\r\n".as_slice()))
    })?;
    Some((lead, end))
}

/// A request being served; dropping it restarts the connection's clock.
pub(super) struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.phase = Phase::Idle {
                since: Instant::now(),
            };
            s.scanning = !s.http2;
            s.head = Vec::new();
            s.verdict = None;
        }
    }
}

/// The client socket as an `AsyncRead`/`AsyncWrite`, shared (`Arc`) with the
/// connection's task, which answers 408 and lingers with it after hyper
/// (and TLS) are done; with the bytes already read from it to tell HTTP/2's
/// preface from HTTP/1 (given to the reader first).
pub(super) struct Raw(pub(super) Arc<TcpStream>, pub(super) bytes::Bytes);

/// A client connection's byte stream (the socket, or TLS over it) telling
/// the clock what it reads: the bytes hyper reads, decrypted.
pub(super) struct ClientIo<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S> ClientIo<S> {
    pub(super) fn new(inner: S, clock: Arc<Clock>) -> Self {
        ClientIo { inner, clock }
    }
}

/// Sends FIN: no more bytes from this side. A socket that is already
/// disconnected is not an error.
pub(super) fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    use nix::sys::socket::{shutdown, Shutdown};
    match shutdown(stream.as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl AsyncRead for Raw {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.1.is_empty() {
            let this = self.get_mut();
            let n = this.1.len().min(buf.remaining());
            buf.put_slice(&this.1.split_to(n));
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // Straight into the reader's buffer (hyper's, or rustls's),
            // through its `BufMut` side: the runtime then reads into the
            // free space as it is, without zeroing it first (8 KiB and more
            // per read, for the few hundred bytes a request head takes),
            // and the connection keeps no buffer of its own (which stayed
            // as large as the largest read, on every idle keep-alive
            // connection).
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Raw {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.clock.on_read(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TLS holds records until flushed.
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Arc<Clock> {
        Arc::new(Clock::new(
            Duration::from_secs(60),
            Duration::from_secs(75),
            1024,
        ))
    }

    #[tokio::test]
    async fn a_head_read_in_pieces_gets_its_verdict() {
        let c = clock();
        c.on_read(b"\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Enc");
        c.on_read(b"oding: chunked\r\n");
        c.on_read(b"\r\n0\r\n\r\n");
        let (guard, verdict) = c.request_started();
        assert_eq!(verdict, Some(true));
        assert_eq!(c.deadline(), None, "no clock while serving");
        // Body bytes read while serving are not a head.
        c.on_read(b"GET / HTTP/1.1\r\n\r\n");
        drop(guard);
        assert!(c.quiet());
        c.on_read(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(!c.quiet(), "a request began");
        assert_eq!(c.request_started().1, Some(false));
    }

    /// The lazy timer never sleeps past a deadline: not the current
    /// phase's, nor that of a phase which begins before it fires.
    #[tokio::test(start_paused = true)]
    async fn the_next_check_comes_before_any_deadline() {
        let secs = Duration::from_secs;
        let c = Arc::new(Clock::new(secs(60), secs(5), 1024));
        let t0 = Instant::now();
        assert_eq!(
            c.next_check(t0),
            t0 + secs(5),
            "a header, checked by the shorter step"
        );
        let (guard, _) = c.request_started();
        assert_eq!(c.next_check(t0), t0 + secs(5), "serving: the step");
        tokio::time::advance(secs(3)).await;
        drop(guard);
        let idle = Instant::now();
        assert_eq!(c.next_check(idle), idle + secs(5), "idle: its deadline");
        tokio::time::advance(secs(1)).await;
        c.on_read(b"GET");
        let header = c.deadline().expect("a header's clock runs");
        assert!(c.next_check(idle) <= header);
        // Keep-alive off: the step is the header timeout, never zero.
        let off = Clock::new(secs(60), Duration::ZERO, 1024);
        let now = Instant::now();
        assert_eq!(off.next_check(now), now + secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn header_and_idle_clocks() {
        let c = clock();
        assert!(c.quiet());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(c.expired(), Some(Expiry::Header { got_bytes: false }));
        let (guard, _) = c.request_started();
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(c.expired(), None);
        drop(guard);
        tokio::time::advance(Duration::from_secs(74)).await;
        assert_eq!(c.expired(), None);
        c.on_read(b"GET");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            c.expired(),
            None,
            "the header clock starts at its first byte"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.expired(), Some(Expiry::Header { got_bytes: true }));
    }
}
