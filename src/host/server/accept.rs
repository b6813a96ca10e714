//! The proxy's client side: the accept loop, the connection limit, each
//! connection's hyper settings and timeouts, the ingress checks, and the
//! graceful shutdown.
//!
//! ```text
//! accept (a slot free?) ──> connection task ──> hyper http1 ──> ingress checks ──> Proxy::handle
//!                              │  header timeout, keep-alive timeout (client_io::Clock)
//!                              └─ end: 408 if a header was cut short, FIN, lingering read
//! ```

use super::client_io::{ClientIo, Clock, Expiry, InFlight};
use crate::host::config::ClientLimits;
use crate::host::edge::ingress;
use crate::host::proxy::tunnel::TunnelOpen;
use crate::host::proxy::{Body, BoxError, Proxy, ProxyCell};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
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

/// Serves `listener` with the proxy in `current` until `shutdown`, within
/// `limits`; each request takes the proxy that is current when it starts
/// and keeps it to its end (a reload swaps in another for later requests);
/// then
/// stops accepting and lets the requests in flight finish, for at most
/// `grace`.
///
/// At most `limits.max_connections` connections are served at once: past
/// it, no connection is accepted (new ones wait in the listen backlog) until
/// one closes.
pub async fn serve(
    current: Arc<ProxyCell>,
    listener: TcpListener,
    limits: ClientLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let local = listener.local_addr().ok();
    let mut last_warned: Option<tokio::time::Instant> = None;
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
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, not spin.
                    warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let local = stream.local_addr().ok().or(local).unwrap_or(peer);
        tracker.spawn(connection(
            current.clone(),
            stream,
            (peer, local),
            limits,
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    info!("stopped accepting; finishing requests in flight");
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "requests still in flight after the grace period"
        );
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
}

/// Serves one client connection, holding `permit` until it is closed.
async fn connection(
    current: Arc<ProxyCell>,
    stream: TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    limits: ClientLimits,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let clock = Arc::new(Clock::new(
        limits.header_timeout,
        limits.keepalive_timeout,
        limits.max_header_bytes,
    ));
    // Set by an answer that opened a WebSocket tunnel: the socket is then
    // the tunnel's until it ends, not closed with the connection.
    let tunnel: Arc<std::sync::Mutex<Option<TunnelOpen>>> = Arc::default();
    let service = {
        let clock = clock.clone();
        let tunnel = tunnel.clone();
        hyper::service::service_fn(move |req| {
            // Called as soon as the header is read: the clock stops here.
            let (guard, conflict) = clock.request_started();
            // Loaded once: the request runs under this configuration to
            // its end, whatever reloads happen meanwhile.
            let proxy: Arc<Proxy> = current.load_full();
            let tunnel = tunnel.clone();
            async move {
                let mut resp = answer(&proxy, req, conflict == Some(true), peer, local).await;
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
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(!limits.keepalive_timeout.is_zero())
        // The clock does it: hyper's would also cut idle keep-alive connections.
        .header_read_timeout(None);
    let mut conn = Box::pin(
        builder
            .serve_connection(
                TokioIo::new(ClientIo::new(stream.clone(), clock.clone())),
                service,
            )
            .with_upgrades(),
    );
    let mut draining = false;
    // One timer for the connection's life, reset only when it fires (see
    // `client_io`: the clock's timer is lazy).
    let check = tokio::time::sleep_until(clock.next_check(tokio::time::Instant::now()));
    tokio::pin!(check);
    let end = loop {
        tokio::select! {
            result = conn.as_mut() => break End::Done(result),
            () = check.as_mut() => {
                if let Some(expiry) = clock.expired() {
                    break End::Expired(expiry);
                }
                let now = tokio::time::Instant::now();
                check.as_mut().reset(clock.next_check(now));
            }
            () = shutdown.cancelled(), if !draining => {
                if clock.quiet() {
                    break End::Shutdown;
                }
                // Finish the request in progress, then close.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    drop(conn);
    let open = tunnel.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let (End::Done(Ok(())), Some(TunnelOpen(ended))) = (&end, open) {
        // Upgraded: the tunnel has the socket; keep its connection slot
        // until it ends (or the proxy stops), and never close it here.
        tokio::select! {
            () = ended.cancelled() => {}
            () = shutdown.cancelled() => {}
        }
        drop(permit);
        return;
    }
    match end {
        End::Done(Ok(())) | End::Shutdown | End::Expired(Expiry::Header { got_bytes: false }) => {}
        End::Done(Err(e)) => {
            debug!(client = %peer, cause = %e, "client connection ended with an error")
        }
        End::Expired(Expiry::Idle) => debug!(client = %peer, "idle keep-alive connection closed"),
        End::Expired(Expiry::Header { got_bytes: true }) => {
            debug!(client = %peer, "request header not received in time: 408");
            // Best effort: the socket's buffer is empty, the client is slow.
            let _ = stream.try_write(TIMEOUT_ANSWER);
        }
    }
    linger(&stream).await;
    drop(permit);
}

/// The answer to one request: the ingress checks, then the proxy.
async fn answer(
    proxy: &Proxy,
    req: Request<Incoming>,
    framing_conflict: bool,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Body> {
    let version = req.version();
    let started = std::time::Instant::now();
    let checked = ingress::check_framing(framing_conflict)
        .and_then(|()| ingress::check_method(req.method()))
        .and_then(|()| ingress::check_transfer_encoding(req.headers()));
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
