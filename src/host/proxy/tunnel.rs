//! WebSocket on routes with `enable_websocket`: `Upgrade: websocket` (only
//! that, whatever else the client offered) goes to the upstream (after the request phases
//! ran, so a plugin may still refuse it), and when the upstream answers
//! `101 Switching Protocols` with `Upgrade: websocket` (another protocol
//! is answered 502) both connections are upgraded (hyper's
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

/// Marks a request to be sent with `Upgrade` (the value: `websocket`) and
/// `Connection: upgrade`: set on the request's extensions, read by the
/// upstream call after the header filter dropped both.
#[derive(Debug, Clone)]
pub(super) struct UpgradeAsked(pub(super) HeaderValue);

/// On a client's answer that opened a tunnel: cancelled when the tunnel
/// ends, so that the connection's owner keeps the client's socket (and its
/// connection slot) until then instead of closing it.
#[derive(Debug, Clone)]
pub struct TunnelOpen(pub CancellationToken);

/// `Upgrade: websocket`'s value when the request asks for a WebSocket: a
/// GET with `websocket` (any case) among `Upgrade`'s protocols and
/// `upgrade` among `Connection`'s tokens. Only `websocket` goes on: the
/// tunnel is for nothing else (not the client's `h2c` offered beside it).
/// Read before the client's `Connection` header is applied (it removes
/// `Upgrade`).
pub(super) fn websocket_asked(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if method != Method::GET {
        return None;
    }
    let upgrade = headers.get(UPGRADE)?;
    let websocket = is_websocket(upgrade);
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (websocket && connection_upgrade).then(|| HeaderValue::from_static("websocket"))
}

/// Whether `websocket` (any case) is among an `Upgrade`'s protocols.
fn is_websocket(upgrade: &HeaderValue) -> bool {
    upgrade.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
    })
}

/// Whether an upstream's `101` switched to WebSocket, what was asked: its
/// `Upgrade` is `websocket` (any case) and nothing else.
fn upstream_switched_to_websocket(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(UPGRADE).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    }
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
    if !upstream_switched_to_websocket(upstream.headers()) {
        // A tunnel of another protocol than the one the plugins and the
        // route allowed: refused.
        return super::answer::error_response(
            StatusCode::BAD_GATEWAY,
            "the upstream switched to a protocol other than websocket",
        );
    }
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

/// Resolves once nothing moved through the tunnel for `idle`; never when
/// that is past what an `Instant` can hold (a `timeout.read` of up to
/// 1.8e19 s is accepted).
async fn idle_out(last: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let moved = Duration::from_millis(last.load(Ordering::Relaxed));
        let Some(deadline) = started.checked_add(moved).and_then(|t| t.checked_add(idle)) else {
            return std::future::pending().await;
        };
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
        let mut offered = HeaderMap::new();
        offered.insert(UPGRADE, HeaderValue::from_static("websocket, h2c"));
        offered.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        assert_eq!(
            websocket_asked(&Method::GET, &offered).unwrap(),
            "websocket",
            "only websocket goes to the upstream"
        );
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

    #[test]
    fn only_an_upstream_upgrade_to_websocket_is_tunnelled() {
        let switched = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(UPGRADE, HeaderValue::from_str(v).unwrap());
            }
            upstream_switched_to_websocket(&h)
        };
        assert!(switched(&["websocket"]));
        assert!(switched(&["WebSocket "]));
        assert!(!switched(&[]));
        assert!(!switched(&["h2c"]));
        assert!(!switched(&["websocket, h2c"]));
        assert!(!switched(&["websocket", "h2c"]));
    }

    #[tokio::test]
    async fn a_huge_read_timeout_never_idles_out_and_does_not_panic() {
        let last = AtomicU64::new(5);
        let idle = idle_out(&last, Instant::now(), Duration::from_secs(u64::MAX));
        let waited = tokio::time::timeout(Duration::from_millis(20), idle).await;
        assert!(waited.is_err(), "idled out");
    }
}
