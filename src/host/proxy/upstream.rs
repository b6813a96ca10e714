//! Upstream selection and forwarding: round-robin over a route's nodes,
//! pooled connections per route (bounded by the upstream's
//! `keepalive_pool`), timeouts mapped to 502/504.

use super::answer::{error_response, Body};
use super::body::Side;
use super::exchange::Exchange;
use super::headers::{self, Origin};
use crate::host::config::Route;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, HttpConnector, HttpInfo,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tracing::warn;

/// The most header fields an upstream's answer may have (502 past it).
/// hyper's default, 100, refused an answer with 99 `Set-Cookie` and the
/// usual four others; nginx bounds only the header's bytes (4-8 KiB by
/// default), which holds fewer fields than this.
const MAX_UPSTREAM_HEADERS: usize = 1024;

/// One route with its run-time state.
pub(crate) struct RouteRuntime {
    pub(crate) route: Arc<Route>,
    /// Position in the upstream's round-robin schedule.
    next: AtomicUsize,
    /// Pooled upstream connections (per route: timeouts are per upstream).
    client: Client<HttpConnector, Body>,
    /// Requests carried so far by each pooled connection, by its local
    /// address (shared with the client, as its pool is).
    uses: Arc<Mutex<HashMap<SocketAddr, u32>>>,
    /// Each node's address as a URI authority and as a `Host` value, by
    /// node index (as the upstream's `nodes`): parsed once, not per request.
    nodes: Vec<NodeAddr>,
}

/// A node's address, parsed.
struct NodeAddr {
    /// `Err` says why the address is no URI authority (502 for requests
    /// sent to it).
    authority: Result<Authority, String>,
    host: Option<HeaderValue>,
}

fn node_addrs(route: &Route) -> Vec<NodeAddr> {
    route
        .upstream
        .nodes
        .iter()
        .map(|(node, _)| NodeAddr {
            authority: node.parse::<Authority>().map_err(|e| e.to_string()),
            host: HeaderValue::from_str(node).ok(),
        })
        .collect()
}

impl RouteRuntime {
    /// The run-time state of `route`.
    pub(crate) fn new(route: Arc<Route>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(route.upstream.connect_timeout));
        connector.set_nodelay(true);
        let pool = route.upstream.keepalive;
        // `size` counts per proxy thread, as APISIX's counts per worker;
        // hyper's pool is one per route, for all threads.
        let threads =
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers().max(1));
        RouteRuntime {
            nodes: node_addrs(&route),
            route,
            next: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(pool.size.saturating_mul(threads))
                .pool_idle_timeout(pool.idle_timeout)
                // Without a timer, idle connections are only found expired
                // when taken: they would stay open past the timeout.
                .pool_timer(TokioTimer::new())
                .http1_max_headers(MAX_UPSTREAM_HEADERS)
                .build(connector),
            uses: Arc::default(),
        }
    }

    /// The run-time state of `route`, keeping `old`'s pooled upstream
    /// connections when the connection settings are the same (a reload
    /// that leaves the route's upstream alone does not reconnect).
    pub(crate) fn reusing(route: Arc<Route>, old: &RouteRuntime) -> Self {
        if route.upstream.connect_timeout != old.route.upstream.connect_timeout
            || route.upstream.keepalive != old.route.upstream.keepalive
        {
            return Self::new(route);
        }
        RouteRuntime {
            nodes: node_addrs(&route),
            route,
            next: AtomicUsize::new(0),
            // A clone shares the pool.
            client: old.client.clone(),
            uses: old.uses.clone(),
        }
    }

    /// Sends the exchange's request to the next upstream node. `Err` is the
    /// answer for the client: the request body failed (400/408/413), or the
    /// upstream did (502/504).
    pub(crate) async fn forward(
        &self,
        ex: &mut Exchange,
    ) -> Result<Response<Incoming>, Response<Body>> {
        let upstream = &self.route.upstream;
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % upstream.schedule.len();
        let index = upstream.schedule[slot];
        let node = &upstream.nodes[index].0;
        let addr = &self.nodes[index];
        let uri = match &addr.authority {
            Ok(authority) => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(authority.clone());
                parts.path_and_query = Some(
                    ex.head
                        .uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/")),
                );
                Uri::from_parts(parts).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.clone()),
        };
        let uri = match uri {
            Ok(uri) => uri,
            Err(e) => {
                return Err(error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("bad upstream URI: {e}"),
                ))
            }
        };
        // The response phase reads the request's headers (its variables):
        // a copy then; else the request gives them up.
        let mut headers = if self.route.post_resp.is_some() {
            ex.head.headers.clone()
        } else {
            std::mem::take(&mut ex.head.headers)
        };
        // The client's Host (after the request phases), before the node's
        // may replace it.
        let client_host = headers.get(HOST).cloned();
        headers::filter_map(&mut headers, &ex.route.id, Origin::Traffic);
        if upstream.pass_host_node || !headers.contains_key(HOST) {
            if let Some(v) = &addr.host {
                headers.insert(HOST, v.clone());
            }
        }
        // X-Forwarded-For/-Proto/-Host and X-Real-IP, from the client's Host.
        crate::host::edge::ingress::forwarding_headers(
            &mut headers,
            ex.peer.ip(),
            client_host.as_ref(),
            ex.head
                .extensions
                .get::<crate::host::edge::ingress::OverTls>()
                .is_some(),
        );
        // The proxy sets the framing: a buffered body's length here; a
        // streamed body's framing is hyper's, from the client's (already
        // validated) length, or chunked.
        let body = match ex.body.send() {
            Ok((body, Some(len))) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                body
            }
            Ok((body, None)) => body,
            Err(e) => return Err(ex.body_failed(Side::Request, &e)),
        };
        let mut req = Request::new(body);
        *req.method_mut() = ex.head.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let connection = capture_connection(&mut req);
        let result = tokio::time::timeout(upstream.read_timeout, self.client.request(req)).await;
        if let Ok(Ok(_)) = &result {
            self.count_use(&connection);
        }
        // The client's body failing while it streamed is the client's fault,
        // whatever the upstream made of the truncated request.
        if let Some(e) = ex.body.failure().cloned() {
            return Err(ex.body_failed(Side::Request, &e));
        }
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Err(_) => {
                warn!(route = %ex.route.id, node = %node, "upstream timed out");
                Err(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream timed out",
                ))
            }
            Ok(Err(e)) => {
                let timed_out = is_timeout(&e);
                warn!(route = %ex.route.id, node = %node, cause = %error_chain(&e), "upstream failed");
                if timed_out {
                    Err(error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream timed out",
                    ))
                } else {
                    Err(error_response(
                        StatusCode::BAD_GATEWAY,
                        "upstream unreachable",
                    ))
                }
            }
        }
    }
}

/// Past this many connections counted, the counts start over: entries of
/// connections closed since go, and one still open may carry up to
/// `requests` more (the bound stays within twice `requests`).
const MAX_COUNTED: usize = 65_536;

impl RouteRuntime {
    /// Counts a request on the connection that carried it; at the
    /// upstream's `keepalive_pool.requests`, the connection is closed when
    /// the request ends (poisoned: the pool does not take it back).
    fn count_use(&self, connection: &CaptureConnection) {
        let meta = connection.connection_metadata();
        let Some(connected) = meta.as_ref() else {
            return;
        };
        let mut extras = http::Extensions::new();
        connected.get_extras(&mut extras);
        let Some(info) = extras.get::<HttpInfo>() else {
            return;
        };
        let key = info.local_addr();
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        if uses.len() >= MAX_COUNTED {
            uses.clear();
        }
        let n = uses.entry(key).or_insert(0);
        *n += 1;
        if *n >= self.route.upstream.keepalive.requests {
            uses.remove(&key);
            connected.poison();
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
}
