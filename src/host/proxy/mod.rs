//! The HTTP reverse proxy: route, run the request phases
//! (`ext-plugin-pre-req`, then `ext-plugin-post-req`), apply each outcome,
//! forward to the upstream, run `ext-plugin-post-resp`, answer the client.
//!
//! ```text
//! client ──> path ──> route ──> pre-req ──> post-req ──> upstream ──> post-resp ──> client
//!          normalize             │            │                          │
//!          (400 if unsafe)     stop?        stop?                 status/headers/body
//!                           (answer now) (answer now)                  changed?
//! ```
//!
//! One module per concern, one implementation of each:
//! - [`crate::host::path`]: the request path, normalized once at ingress;
//! - `pipeline`: the phases and how their outcomes apply;
//! - `body`: request and response bodies (stream, or buffer within a limit
//!   and an idle timeout; a failure is never forwarded as an empty body);
//! - [`headers`]: the one header filter (framing, hop-by-hop, plugin input);
//! - `query`: query arguments and the request target;
//! - `upstream`: node selection and forwarding.
//!
//! Bodies stream unless a plugin needs them (declared, or asked for during a
//! call) or replaces them; the proxy always sets the framing itself.

mod body;
pub mod headers;
mod pipeline;
mod query;
mod upstream;

use super::client::ExtClient;
use super::config::Config;
use super::router::Router;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use upstream::RouteRuntime;

/// Any error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// The proxy: routes, the ext-plugin client, upstream clients.
pub struct Proxy {
    router: Router,
    routes: Vec<RouteRuntime>,
    client: Arc<ExtClient>,
    max_request_body: usize,
    max_response_body: usize,
    /// The longest wait for the next bytes of a client's body (408 past it).
    client_body_timeout: Duration,
    ids: RequestIds,
    /// Each route's metrics series, by route index (as `routes`).
    route_metrics: Vec<crate::host::metrics::RouteHandles>,
}

/// Unique request ids: a random per-process prefix and a counter.
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        RequestIds {
            prefix: h.finish(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{:016x}{:016x}",
            self.prefix,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A JSON error answer in APISIX's shape.
fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error_msg": message }).to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A whole body.
fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Warns at start about a guarded prefix route `/p/*` whose bare `/p` goes
/// to another route: as in APISIX, `/p/*` does not cover `/p`, and an
/// operator may not know that `/p` reaches the upstream without the plugins.
fn warn_uncovered_prefixes(router: &Router) {
    use super::config::{Phase, UriPattern};
    for (index, route) in router.routes().iter().enumerate() {
        let guarded = [Phase::PreReq, Phase::PostReq]
            .into_iter()
            .any(|p| route.phase(p).is_some());
        if !guarded || !route.enabled {
            continue;
        }
        let method = route
            .methods
            .as_ref()
            .and_then(|m| m.first().cloned())
            .unwrap_or(http::Method::GET);
        for pattern in &route.uris {
            let UriPattern::Prefix(prefix) = pattern else {
                continue;
            };
            let Some(bare) = prefix.strip_suffix('/').filter(|b| !b.is_empty()) else {
                continue;
            };
            if let Some(other) = router.find(&method, bare).filter(|&o| o != index) {
                warn!(
                    route = %route.id,
                    uri = %format!("{prefix}*"),
                    path = bare,
                    goes_to = %router.routes()[other].id,
                    "this route's plugins do not guard the bare path: it goes to another route; add it to `uris` if it should be guarded"
                );
            }
        }
    }
}

impl Proxy {
    /// A proxy for `config`'s routes, calling the runner through `client`.
    pub fn new(config: &Config, client: Arc<ExtClient>) -> Self {
        let router = Router::new(config.routes.clone());
        warn_uncovered_prefixes(&router);
        let routes = router
            .routes()
            .iter()
            .map(|route| RouteRuntime::new(route.clone()))
            .collect();
        let route_metrics = router
            .routes()
            .iter()
            .map(|route| {
                use super::config::Phase;
                // Every phase runs on the one runner for now.
                let runner = |p| route.phase(p).map(|_| crate::host::metrics::DEFAULT_RUNNER);
                crate::host::metrics::RouteHandles::new(
                    &route.id,
                    [
                        runner(Phase::PreReq),
                        runner(Phase::PostReq),
                        runner(Phase::PostResp),
                    ],
                )
            })
            .collect();
        Proxy {
            router,
            routes,
            route_metrics,
            client,
            max_request_body: config.max_request_body,
            max_response_body: config.max_response_body,
            client_body_timeout: config.client_body_timeout,
            ids: RequestIds::new(),
        }
    }

    /// Serves `listener` until `shutdown`, then stops accepting and lets the
    /// requests in flight finish, for at most `grace`; with the default
    /// client limits (see [`crate::host::server::serve`] to choose them).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        crate::host::server::serve(self, listener, Default::default(), shutdown, grace).await;
    }

    /// Answers one client request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Response<Body> {
        // The access log is at debug level (`RUST_LOG=extplug::access=debug`):
        // off by default, it costs nothing on the hot path.
        if !tracing::enabled!(target: "extplug::access", tracing::Level::DEBUG) {
            return self.route(req, peer, local).await;
        }
        let started = std::time::Instant::now();
        let (method, target) = (req.method().clone(), req.uri().to_string());
        let resp = self.route(req, peer, local).await;
        debug!(
            target: "extplug::access",
            client = %peer,
            %method,
            %target,
            status = resp.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        resp
    }
}
