//! WebSocket on routes with `enable_websocket`: the client's
//! `Upgrade: websocket` goes to the upstream (after the request phases
//! ran, so a plugin may still refuse it), and when the upstream answers
//! `101 Switching Protocols` both connections are upgraded (hyper's
//! upgrades) and joined into a byte tunnel. On other routes `Upgrade` is a
//! hop-by-hop header, dropped as any other: the upstream sees a plain
//! request, as behind APISIX.
//!
//! A tunnel ends when either side closes, or after the upstream's `read`
//! timeout without a byte either way (nginx's `proxy_read_timeout` on an
//! upgraded connection).

use super::answer::{full, Body};
use super::headers::{self, Origin};
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Marks a request to be sent with its `Upgrade` (the value) and
/// `Connection: upgrade`: set on the request's extensions, read by the
/// upstream call after the header filter dropped both.
#[derive(Debug, Clone)]
pub(super) struct UpgradeAsked(pub(super) HeaderValue);

/// On a client's answer that opened a tunnel: cancelled when the tunnel
/// ends, so that the connection's owner keeps the client's socket (and its
/// connection slot) until then instead of closing it.
#[derive(Debug, Clone)]
pub struct TunnelOpen(pub CancellationToken);

/// The request's `Upgrade` value when it asks for a WebSocket: a GET with
/// `Upgrade: websocket` (any case) and `upgrade` among `Connection`'s
/// tokens. Read before the client's `Connection` header is applied (it
/// removes `Upgrade`).
pub(super) fn websocket_asked(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if method != Method::GET {
        return None;
    }
    let upgrade = headers.get(UPGRADE)?;
    let websocket = upgrade
        .to_str()
        .ok()?
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (websocket && connection_upgrade).then(|| upgrade.clone())
}

/// Puts `Connection: upgrade` and the client's `Upgrade` back on a request
/// going to the upstream, when the request asked for a tunnel.
pub(super) fn restore_upgrade(extensions: &http::Extensions, headers: &mut HeaderMap) {
    if let Some(UpgradeAsked(value)) = extensions.get::<UpgradeAsked>() {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, value.clone());
    }
}

/// The client's answer to an upstream's `101`: its headers filtered as any
/// answer's, with `Connection: upgrade` and the upstream's `Upgrade`; the
/// tunnel joins both sides once both are upgraded. `client` is the
/// client's pending upgrade (from its request's extensions).
pub(super) fn open(
    route: &str,
    client: Option<OnUpgrade>,
    mut upstream: Response<Incoming>,
    idle: Duration,
) -> Response<Body> {
    let Some(client) = client else {
        // The client's connection cannot be upgraded (not HTTP/1.1).
        return super::answer::error_response(
            StatusCode::BAD_GATEWAY,
            "the client's connection cannot be upgraded",
        );
    };
    let upstream_upgrade = hyper::upgrade::on(&mut upstream);
    let (mut head, _) = upstream.into_parts();
    let upgrade = head.headers.get(UPGRADE).cloned();
    headers::filter_map(&mut head.headers, route, Origin::Traffic);
    head.headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(v) = upgrade {
        head.headers.insert(UPGRADE, v);
    }
    let ended = CancellationToken::new();
    let done = ended.clone().drop_guard();
    let route = route.to_owned();
    tokio::spawn(async move {
        let _done = done;
        let (client, upstream) = match tokio::try_join!(client, upstream_upgrade) {
            Ok(both) => both,
            Err(e) => {
                debug!(route = %route, cause = %e, "websocket upgrade failed");
                return;
            }
        };
        let last = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut client = Watched::new(TokioIo::new(client), last.clone(), started);
        let mut upstream = Watched::new(TokioIo::new(upstream), last.clone(), started);
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                debug!(route = %route, result = ?result, "websocket tunnel closed");
            }
            () = idle_out(&last, started, idle) => {
                debug!(route = %route, "websocket tunnel idle past the upstream's read timeout: closed");
            }
        }
    });
    let mut resp = Response::from_parts(head, full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.extensions_mut().insert(TunnelOpen(ended));
    resp
}

/// Resolves once nothing moved through the tunnel for `idle`.
async fn idle_out(last: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let moved = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = started + moved + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// An end of the tunnel that records when bytes last moved (milliseconds
/// since `started`).
struct Watched<T> {
    io: T,
    last: Arc<AtomicU64>,
    started: Instant,
}

impl<T> Watched<T> {
    fn new(io: T, last: Arc<AtomicU64>, started: Instant) -> Self {
        Watched { io, last, started }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_with_upgrade_websocket_and_connection_upgrade_asks() {
        let asks = |method: Method, pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            websocket_asked(&method, &h).is_some()
        };
        let ws = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(asks(Method::GET, &ws));
        assert!(!asks(Method::POST, &ws));
        assert!(!asks(Method::GET, &ws[..1]), "no Connection: upgrade");
        assert!(!asks(
            Method::GET,
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        ));
        assert!(asks(
            Method::GET,
            &[
                ("upgrade", "websocket"),
                ("connection", "close"),
                ("connection", "upgrade")
            ]
        ));
    }
}
