//! The proxy's client side: the accept loops (clear text, and TLS), the
//! connection limit, each connection's hyper settings and timeouts, the
//! ingress checks, and the graceful shutdown.
//!
//! ```text
//! accept (a slot free?) ──> connection task ──> [TLS handshake] ──> hyper http1 | http2 ──> ingress checks ──> Proxy::handle
//!                              │  handshake timeout; h2 by ALPN (TLS) or the preface (clear text)
//!                              │  header timeout, keep-alive timeout (client_io::Clock)
//!                              └─ end: 408 if a clear-text HTTP/1 header was cut short, FIN, lingering read
//! ```

use super::client_io::{ClientIo, Clock, Expiry, InFlight, Raw};
use crate::host::config::ClientLimits;
use crate::host::edge::ingress;
use crate::host::metrics;
use crate::host::proxy::tunnel::TunnelOpen;
use crate::host::proxy::{Body, BoxError, Proxy, ProxyCell};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so that the kernel does not reset the connection
/// over unread bytes and lose the last answer (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);

/// At most one "connection limit reached" warning in this time.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// What a client whose header was cut short by the timeout gets.
const TIMEOUT_ANSWER: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The TLS listener: its socket, rustls settings and handshake time limit.
pub struct TlsListener {
    /// The bound socket (`tls.listen`).
    pub listener: TcpListener,
    /// The rustls settings ([`super::tls::server_config`]).
    pub config: Arc<rustls::ServerConfig>,
    /// How long a client has to finish its handshake.
    pub handshake_timeout: Duration,
}

/// Serves `listener` with the proxy in `current` until `shutdown`, within
/// `limits`; see [`serve_all`].
pub async fn serve(
    current: Arc<ProxyCell>,
    listener: TcpListener,
    limits: ClientLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    serve_all(current, listener, None, limits, shutdown, grace).await
}

/// Serves `plain` (and `tls`, when given) with the proxy in `current` until
/// `shutdown`, within `limits`; each request takes the proxy that is
/// current when it starts and keeps it to its end (a reload swaps in
/// another for later requests); then stops accepting and lets the requests
/// in flight finish, for at most `grace`.
///
/// At most `limits.max_connections` connections are served at once, both
/// listeners together (a TLS connection counts from its accept, handshake
/// included): past it, no connection is accepted (new ones wait in the
/// listen backlog) until one closes.
pub async fn serve_all(
    current: Arc<ProxyCell>,
    plain: TcpListener,
    tls: Option<TlsListener>,
    limits: ClientLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let tracker = TaskTracker::new();
    let tls = tls.map(|t| {
        let handshake = Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(t.config),
            handshake_timeout: t.handshake_timeout,
        };
        (t.listener, handshake)
    });
    accept_loop(&current, plain, tls, limits, &tracker, &shutdown).await;
    info!("stopped accepting; finishing requests in flight");
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "requests still in flight after the grace period"
        );
    }
}

/// What a TLS listener's connections go through before HTTP.
#[derive(Clone)]
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

/// Accepts connections on `plain` and `tls` while a slot is free (one
/// limit for both: the slot is taken before either accepts), until
/// `shutdown`; each is served in a task of `tracker`.
async fn accept_loop(
    current: &Arc<ProxyCell>,
    plain: TcpListener,
    tls: Option<(TcpListener, Tls)>,
    limits: ClientLimits,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_warned: Option<tokio::time::Instant> = None;
    let tls_accept = || async {
        match &tls {
            Some((listener, handshake)) => (listener.accept().await, Some(handshake.clone())),
            // No TLS listener: never.
            None => std::future::pending().await,
        }
    };
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Once per saturated stretch, not once per freed slot.
                let now = tokio::time::Instant::now();
                if last_warned.is_none_or(|t| now.duration_since(t) >= LIMIT_WARNING_EVERY) {
                    last_warned = Some(now);
                    warn!(
                        max_client_connections = limits.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                }
            }
        };
        let (accepted, handshake) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = plain.accept() => (accepted, None),
            accepted = tls_accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause, not spin.
                warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = stream.local_addr().unwrap_or(peer);
        tracker.spawn(connection(
            current.clone(),
            stream,
            (peer, local),
            limits,
            handshake,
            shutdown.clone(),
            permit,
        ));
    }
}

/// How a connection ended.
enum End {
    /// hyper finished it (the client closed, or keep-alive ended).
    Done(Result<(), hyper::Error>),
    /// A timeout ran out.
    Expired(Expiry),
    /// Shutdown, while nothing was in progress.
    Shutdown,
    /// An HTTP/2 client cancelled too many of its streams before their
    /// answers ([`Cancels`]).
    Abusive,
}

/// Streams an HTTP/2 client may cancel (reset after the proxy took them up,
/// before their answer) on one connection. Past it, while cancelled streams
/// are also most of the connection's, the connection is closed: the
/// rapid-reset attack (CVE-2023-44487) with a round trip between a stream's
/// HEADERS and its RST_STREAM, which h2's bound on streams reset before they
/// are taken up (`max_pending_accept_reset_streams`) does not see, while
/// every such stream starts a plugin chain and an upstream request. A
/// browser cancels a stream now and then; it never cancels most of them.
const MAX_CANCELLED_STREAMS: u32 = 100;

/// One connection's count of the requests started and of those cancelled
/// before their answer; `abusive` is cancelled past the bound.
#[derive(Default)]
struct Cancels {
    started: std::sync::atomic::AtomicU32,
    cancelled: std::sync::atomic::AtomicU32,
    abusive: CancellationToken,
}

/// Held while a request is answered: dropped before `done` (the client reset
/// the stream, so hyper dropped the answer), it counts a cancel.
struct Answering {
    cancels: Arc<Cancels>,
    done: bool,
}

impl Drop for Answering {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.done {
            return;
        }
        let cancelled = self.cancels.cancelled.fetch_add(1, Relaxed) + 1;
        let started = self.cancels.started.load(Relaxed);
        if cancelled > MAX_CANCELLED_STREAMS && cancelled.saturating_mul(2) > started {
            self.cancels.abusive.cancel();
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a clear-text connection starts with HTTP/2's preface (prior
/// knowledge), with the bytes read to tell (to be read again by hyper);
/// `None`: the client sent nothing in time (or the connection failed), close
/// it. The bytes are read, not peeked: a peek returns at once while a
/// partial preface waits in the socket, so waiting for the rest would poll.
async fn sniff_h2c(
    stream: &TcpStream,
    limit: Duration,
    shutdown: &CancellationToken,
) -> Option<(bool, Bytes)> {
    let sniff = async {
        let mut buf = [0u8; PREFACE.len()];
        let mut n = 0;
        loop {
            stream.readable().await.ok()?;
            match stream.try_read(&mut buf[n..]) {
                // The end: hyper reads it (and closes).
                Ok(0) => return Some((false, Bytes::copy_from_slice(&buf[..n]))),
                Ok(got) => n += got,
                // Readiness cleared: the next `readable` waits for bytes.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
            if buf[..n] != PREFACE[..n] {
                // HTTP/1: hyper reads it.
                return Some((false, Bytes::copy_from_slice(&buf[..n])));
            }
            if n == PREFACE.len() {
                return Some((true, Bytes::copy_from_slice(&buf)));
            }
        }
    };
    tokio::select! {
        got = tokio::time::timeout(limit, sniff) => got.ok().flatten(),
        _ = shutdown.cancelled() => None,
    }
}

/// What a connection speaks.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// Over the TLS listener.
    tls: bool,
    /// HTTP/2 (ALPN `h2`, or the clear-text preface).
    h2: bool,
}

/// Serves one client connection, holding `permit` until it is closed: the
/// TLS handshake first on the TLS listener, then HTTP/1.1 or HTTP/2.
async fn connection(
    current: Arc<ProxyCell>,
    stream: TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    limits: ClientLimits,
    tls: Option<Tls>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let raw = Raw(stream.clone(), Bytes::new());
    let addrs = (peer, local);
    let tunnel = match tls {
        None => {
            let (h2, raw) = if limits.http2.h2c {
                match sniff_h2c(&stream, limits.header_timeout, &shutdown).await {
                    Some((h2, read)) => (h2, Raw(stream.clone(), read)),
                    None => {
                        linger(&stream).await;
                        return;
                    }
                }
            } else {
                (false, raw)
            };
            let kind = Kind { tls: false, h2 };
            serve_io(&current, raw, &stream, addrs, kind, limits, &shutdown).await
        }
        Some(tls) => {
            let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(raw));
            let io = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        metrics::tls_handshake("failed");
                        debug!(client = %peer, cause = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics::tls_handshake("timeout");
                        debug!(client = %peer, "TLS handshake not done in time");
                        return;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            metrics::tls_handshake("ok");
            let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2");
            let kind = Kind { tls: true, h2 };
            serve_io(&current, io, &stream, addrs, kind, limits, &shutdown).await
        }
    };
    if let Some(TunnelOpen(ended)) = tunnel {
        // Keep the tunnel's connection slot until it ends (or the proxy
        // stops), and never close its socket here.
        tokio::select! {
            () = ended.cancelled() => {}
            () = shutdown.cancelled() => {}
        }
        drop(permit);
        return;
    }
    linger(&stream).await;
    drop(permit);
}

/// Serves HTTP over `io` (the socket `stream`, or TLS over it) until the
/// connection ends: the client's limits and timeouts, the graceful
/// shutdown, the 408 of a clear-text HTTP/1 header cut short. `Some` when
/// an answer opened a WebSocket tunnel: the connection is then the
/// tunnel's, until it ends.
async fn serve_io<S>(
    current: &Arc<ProxyCell>,
    io: S,
    stream: &TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    kind: Kind,
    limits: ClientLimits,
    shutdown: &CancellationToken,
) -> Option<TunnelOpen>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::new(
        limits.header_timeout,
        limits.keepalive_timeout,
        limits.max_header_bytes,
    ));
    if kind.h2 {
        clock.http2();
    }
    // Set by an answer that opened a WebSocket tunnel: the socket is then
    // the tunnel's until it ends, not closed with the connection.
    let tunnel: Arc<std::sync::Mutex<Option<TunnelOpen>>> = Arc::default();
    let cancels = Arc::new(Cancels::default());
    let service = {
        let (clock, current) = (clock.clone(), current.clone());
        let (tunnel, cancels) = (tunnel.clone(), cancels.clone());
        hyper::service::service_fn(move |req| {
            // Called as soon as the header is read: the clock stops here.
            let (guard, conflict) = clock.request_started();
            // Loaded once: the request runs under this configuration to
            // its end, whatever reloads happen meanwhile.
            let proxy: Arc<Proxy> = current.load_full();
            let tunnel = tunnel.clone();
            cancels
                .started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answering = Answering {
                cancels: cancels.clone(),
                done: false,
            };
            async move {
                // The whole guard moves in (not only its field): it is the
                // answer's, dropped with it.
                let mut answering = answering;
                let conflict = conflict == Some(true) && !kind.h2;
                let mut resp = answer(&proxy, req, conflict, peer, local, kind.tls).await;
                answering.done = true;
                if let Some(open) = resp.extensions_mut().remove::<TunnelOpen>() {
                    *tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
                }
                let (head, inner) = resp.into_parts();
                Ok::<_, Infallible>(Response::from_parts(
                    head,
                    Tracked {
                        inner,
                        _guard: guard,
                    },
                ))
            }
        })
    };
    let io = TokioIo::new(ClientIo::new(io, clock.clone()));
    let end = if kind.h2 {
        let h2 = limits.http2;
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .initial_stream_window_size(h2.stream_window)
            .initial_connection_window_size(h2.connection_window)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(h2.max_local_error_reset_streams);
        let conn = builder.serve_connection(io, service);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            &clock,
            shutdown,
            &cancels.abusive,
        )
        .await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_header_size(limits.max_header_bytes)
            .max_headers(limits.max_headers)
            .keep_alive(!limits.keepalive_timeout.is_zero())
            // The clock does it: hyper's would also cut idle keep-alive connections.
            .header_read_timeout(None);
        let conn = builder.serve_connection(io, service).with_upgrades();
        drive(
            conn,
            |c| c.graceful_shutdown(),
            &clock,
            shutdown,
            &cancels.abusive,
        )
        .await
    };
    let open = tunnel.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let (End::Done(Ok(())), Some(open)) = (&end, open) {
        // Upgraded: the tunnel has the socket.
        return Some(open);
    }
    match end {
        End::Done(Ok(())) | End::Shutdown | End::Expired(Expiry::Header { got_bytes: false }) => {}
        End::Done(Err(e)) => {
            debug!(client = %peer, cause = %e, "client connection ended with an error")
        }
        End::Expired(Expiry::Idle) => debug!(client = %peer, "idle keep-alive connection closed"),
        End::Abusive => warn!(
            client = %peer,
            cancelled = cancels.cancelled.load(std::sync::atomic::Ordering::Relaxed),
            "HTTP/2 client cancelled most of its streams before their answers (rapid reset): connection closed"
        ),
        End::Expired(Expiry::Header { got_bytes: true }) => {
            debug!(client = %peer, "request header not received in time");
            // Best effort: the socket's buffer is empty, the client is
            // slow. Clear-text HTTP/1 only: TLS and HTTP/2 just close.
            if !kind.tls && !kind.h2 {
                let _ = stream.try_write(TIMEOUT_ANSWER);
            }
        }
    }
    None
}

/// Drives `conn` (HTTP/1.1 or HTTP/2) until it ends, a timeout of `clock`
/// runs out, or `shutdown` (finishing the requests in progress first).
async fn drive<C>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    clock: &Clock,
    shutdown: &CancellationToken,
    abusive: &CancellationToken,
) -> End
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    // One timer for the connection's life, reset only when it fires (see
    // `client_io`: the clock's timer is lazy).
    let check = tokio::time::sleep_until(clock.next_check(tokio::time::Instant::now()));
    tokio::pin!(check);
    loop {
        tokio::select! {
            result = conn.as_mut() => return End::Done(result),
            () = abusive.cancelled() => return End::Abusive,
            () = check.as_mut() => {
                if let Some(expiry) = clock.expired() {
                    return End::Expired(expiry);
                }
                let now = tokio::time::Instant::now();
                check.as_mut().reset(clock.next_check(now));
            }
            () = shutdown.cancelled(), if !draining => {
                if clock.quiet() {
                    return End::Shutdown;
                }
                // Finish the request in progress, then close.
                draining = true;
                graceful(conn.as_mut());
            }
        }
    }
}

/// The answer to one request: the ingress checks, then the proxy. `tls`:
/// it came over the TLS listener (the `scheme` variable and
/// `X-Forwarded-Proto` say `https`).
async fn answer(
    proxy: &Proxy,
    mut req: Request<Incoming>,
    framing_conflict: bool,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let version = req.version();
    let started = std::time::Instant::now();
    if tls {
        req.extensions_mut().insert(ingress::OverTls);
    }
    let checked = ingress::check_framing(framing_conflict)
        .and_then(|()| ingress::check_method(req.method()))
        .and_then(|()| ingress::check_transfer_encoding(req.headers()))
        .and_then(|()| ingress::http2_host(&mut req));
    let mut resp = match checked {
        Ok(()) => proxy.handle(req, peer, local).await,
        Err(rejection) => {
            debug!(client = %peer, method = %req.method(), uri = %req.uri(), status = rejection.status.as_u16(), reason = %rejection.message, "request refused");
            // Counted as the proxy counts its own answers (no route yet).
            crate::host::metrics::request("", rejection.status, started.elapsed().as_secs_f64());
            rejection.into_response::<BoxError>()
        }
    };
    // The answer's version is the client's, whatever the upstream spoke: an
    // HTTP/1.0 upstream must not turn an HTTP/1.1 client's connection into
    // one that closes after each answer.
    *resp.version_mut() = version;
    resp
}

/// Closes gracefully: FIN, then read and discard what the client still
/// sends until it closes too, for at most [`LINGER`].
async fn linger(stream: &TcpStream) {
    if super::client_io::shutdown_write(stream).is_err() {
        return;
    }
    let mut sink = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + LINGER;
    loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// A response body that keeps its request counted as in flight (the
/// connection's clock stopped) until hyper is done with it.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
