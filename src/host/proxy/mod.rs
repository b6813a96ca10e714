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
pub mod budget;
pub mod headers;
mod pipeline;
mod query;
mod upstream;

use super::client::{CallError, ExtClient};
use super::config::{Config, Phase, DEFAULT_RUNNER};
use super::router::Router;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use std::collections::HashMap;
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
/// The current proxy, swapped whole by a reload. `ArcSwap` (the arc-swap
/// crate) because every request reads it and reloads are rare: a load is a
/// few atomic operations, no lock that a reload could hold up, and readers
/// never block the swap.
pub type ProxyCell = arc_swap::ArcSwap<Proxy>;

/// The body type of every response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// The proxy for one configuration: routes, the runners' clients, upstream
/// clients. Immutable: a reload builds a new one ([`Proxy::with_runners`]),
/// and each request keeps the one it started with.
pub struct Proxy {
    router: Router,
    routes: Vec<RouteRuntime>,
    max_request_body: usize,
    max_response_body: usize,
    /// The bytes all buffered bodies may hold at once, shared with the
    /// proxies reloads build after this one.
    budget: Arc<budget::BodyBudget>,
    /// The longest wait for the next bytes of a client's body (408 past it).
    client_body_timeout: Duration,
    ids: RequestIds,
    /// Each route's metrics series, by route index (as `routes`).
    route_metrics: Vec<crate::host::metrics::RouteHandles>,
    /// Each route's phases (pre-req, post-req, post-resp) with their
    /// runner's client and token cache entry, by route index: resolved
    /// here, once, not looked up by name on each call.
    phase_handles: Vec<[Option<PhaseHandle>; 3]>,
}

/// A route phase's runner client and token cache entry.
struct PhaseHandle {
    client: Arc<ExtClient>,
    slot: super::client::PhaseSlot,
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

    fn next(&self) -> crate::host::vars::RequestId {
        crate::host::vars::RequestId {
            prefix: self.prefix,
            counter: self.counter.fetch_add(1, Ordering::Relaxed),
        }
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
    /// A proxy for `config`'s routes, calling the default runner through
    /// `client` (a configuration with one runner).
    ///
    /// # Panics
    /// A route phase names another runner than the default one (use
    /// [`Proxy::with_runners`]).
    pub fn new(config: &Config, client: Arc<ExtClient>) -> Self {
        let clients = HashMap::from([(DEFAULT_RUNNER.to_owned(), client)]);
        Self::with_runners(config, clients, None)
            .unwrap_or_else(|e| panic!("Proxy::new with one runner: {e}"))
    }

    /// A proxy for `config`'s routes, calling each runner through its client
    /// in `clients` (by name). A route whose upstream connection settings
    /// are those it had in `previous` keeps its pooled upstream connections.
    ///
    /// # Errors
    /// A route phase names a runner that `clients` lacks (the message names
    /// the route, the phase and the runner).
    pub fn with_runners(
        config: &Config,
        clients: HashMap<String, Arc<ExtClient>>,
        previous: Option<&Proxy>,
    ) -> Result<Self, String> {
        for route in &config.routes {
            for phase in [Phase::PreReq, Phase::PostReq, Phase::PostResp] {
                if let Some(pc) = route.phase(phase) {
                    if !clients.contains_key(&pc.runner) {
                        return Err(format!(
                            "route `{}`: {}: no runner named {:?}",
                            route.id,
                            phase.name(),
                            pc.runner
                        ));
                    }
                }
            }
        }
        let router = Router::new(config.routes.clone());
        warn_uncovered_prefixes(&router);
        let routes = router
            .routes()
            .iter()
            .map(|route| {
                let old = previous.and_then(|p| p.routes.iter().find(|o| o.route.id == route.id));
                match old {
                    Some(old) => RouteRuntime::reusing(route.clone(), old),
                    None => RouteRuntime::new(route.clone()),
                }
            })
            .collect();
        let route_metrics = router
            .routes()
            .iter()
            .map(|route| {
                // Each phase's series carry the name of the runner it runs on.
                let runner = |p| route.phase(p).map(|pc| pc.runner.as_str());
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
        let phase_handles = router
            .routes()
            .iter()
            .map(|route| {
                [Phase::PreReq, Phase::PostReq, Phase::PostResp].map(|p| {
                    let pc = route.phase(p)?;
                    // Every phase's runner was checked above.
                    let client = clients.get(&pc.runner)?.clone();
                    let slot = client.phase_slot(pc);
                    Some(PhaseHandle { client, slot })
                })
            })
            .collect();
        Ok(Proxy {
            router,
            routes,
            route_metrics,
            phase_handles,
            max_request_body: config.max_request_body,
            max_response_body: config.max_response_body,
            budget: match previous {
                Some(p) => {
                    p.budget.set_max(config.max_buffered_body);
                    p.budget.clone()
                }
                None => budget::BodyBudget::new(config.max_buffered_body),
            },
            client_body_timeout: config.client_body_timeout,
            ids: RequestIds::new(),
        })
    }

    /// Route `route`'s `phase`: the client of the runner that runs its
    /// chain, and its token cache entry.
    fn phase_handle(&self, route: usize, phase: Phase) -> Result<&PhaseHandle, CallError> {
        let index = match phase {
            Phase::PreReq => 0,
            Phase::PostReq => 1,
            Phase::PostResp => 2,
        };
        // `with_runners` resolved every phase: this is for safety only.
        self.phase_handles
            .get(route)
            .and_then(|phases| phases[index].as_ref())
            .ok_or_else(|| CallError::RunnerDown(format!("route {route} has no {}", phase.name())))
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
        let current = Arc::new(ProxyCell::new(self));
        crate::host::server::serve(current, listener, Default::default(), shutdown, grace).await;
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
