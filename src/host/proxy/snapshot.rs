//! One configuration's proxy ([`Proxy`]): the router, each route's runtime
//! (upstream clients), metrics series and runner clients, resolved once
//! when the configuration is applied and immutable after; a reload builds
//! a new one and swaps it into the [`ProxyCell`].

use super::answer::Body;
use super::budget::BodyBudget;
use super::router::{Matched, Router};
use super::upstream::{runtimes, RouteRuntime};
use super::vars::RequestId;
use crate::host::config::{Config, Phase, UriPattern};
use crate::host::edge::hostname::HostPattern;
use crate::host::metrics::RouteHandles;
use crate::host::runner::client::{CallError, ExtClient, PhaseSlot};
use http::{Request, Response};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// The current proxy, swapped whole by a reload. `ArcSwap` (the arc-swap
/// crate) because every request reads it and reloads are rare: a load is a
/// few atomic operations, no lock that a reload could hold up, and readers
/// never block the swap.
pub type ProxyCell = arc_swap::ArcSwap<Proxy>;

/// The proxy for one configuration: routes, the runners' clients, upstream
/// clients. Immutable: a reload builds a new one ([`Proxy::with_runners`]),
/// and each request keeps the one it started with.
pub struct Proxy {
    pub(super) router: Router,
    pub(super) routes: Vec<RouteRuntime>,
    pub(super) max_request_body: usize,
    pub(super) max_response_body: usize,
    /// The bytes all buffered bodies may hold at once, shared with the
    /// proxies reloads build after this one.
    pub(super) budget: Arc<BodyBudget>,
    /// The longest wait for the next bytes of a client's body (408 past it).
    pub(super) client_body_timeout: Duration,
    pub(super) ids: RequestIds,
    /// Each route's metrics series, by route index (as `routes`).
    pub(super) route_metrics: Vec<RouteHandles>,
    /// Each route's phases (pre-req, post-req, post-resp) with their
    /// runner's client and token cache entry, by route index: resolved
    /// here, once, not looked up by name on each call.
    pub(super) phase_handles: Vec<[Option<PhaseHandle>; 3]>,
}

/// A route phase's runner client and token cache entry.
pub(super) struct PhaseHandle {
    pub(super) client: Arc<ExtClient>,
    pub(super) slot: PhaseSlot,
}

/// Unique request ids: a random per-process prefix and a counter.
pub(super) struct RequestIds {
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

    pub(super) fn next(&self) -> RequestId {
        RequestId {
            prefix: self.prefix,
            counter: self.counter.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Warns at start about a guarded prefix route `/p/*` whose bare `/p` goes
/// to another route: as in APISIX, `/p/*` does not cover `/p`, and an
/// operator may not know that `/p` reaches the upstream without the plugins.
fn warn_uncovered_prefixes(router: &Router) {
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
            // As a request for this route's first host (a wildcard's with
            // one more label), from no particular client, with no variables.
            let host = match route.hosts.first() {
                Some(HostPattern::Exact(name)) => name.clone(),
                Some(HostPattern::Wildcard(suffix)) => format!("a{suffix}"),
                None => String::new(),
            };
            let req = Matched {
                method: &method,
                path: bare,
                host: &host,
                client: std::net::Ipv4Addr::UNSPECIFIED.into(),
            };
            let found = router.find(&req, &mut |_: &str| None::<&str>);
            if let Some(other) = found.filter(|&o| o != index) {
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
        let routes = runtimes(router.routes(), previous.map(|p| p.routes.as_slice()));
        let route_metrics = router
            .routes()
            .iter()
            .map(|route| {
                // Each phase's series carry the name of the runner it runs on.
                let runner = |p| route.phase(p).map(|pc| pc.runner.as_str());
                RouteHandles::new(
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
                None => BodyBudget::new(config.max_buffered_body),
            },
            client_body_timeout: config.client_body_timeout,
            ids: RequestIds::new(),
        })
    }

    /// Route `route`'s `phase`: the client of the runner that runs its
    /// chain, and its token cache entry.
    pub(super) fn phase_handle(
        &self,
        route: usize,
        phase: Phase,
    ) -> Result<&PhaseHandle, CallError> {
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
