//! Forwarding to an upstream: a node chosen by the upstream's balancer
//! (`balancer.rs`) among the healthy ones, retried on another node after a
//! failure that allows it, pooled connections per route (bounded by the
//! upstream's `keepalive_pool`), timeouts mapped to 502/504, and each
//! outcome reported to the passive health check.

use super::answer::{error_response, Body};
use super::balancer::{within, States, UpstreamState};
use super::body::Side;
use super::connector::connector;
use super::exchange::Exchange;
use super::headers::{self, Origin};
use super::health::Report;
use crate::host::config::{HashOn, PassHost, Route, Upstream};
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, HttpConnector, HttpInfo,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;
use tracing::warn;

/// The most header fields an upstream's answer may have (502 past it).
/// hyper's default, 100, refused an answer with 99 `Set-Cookie` and the
/// usual four others; nginx bounds only the header's bytes (4-8 KiB by
/// default), which holds fewer fields than this.
const MAX_UPSTREAM_HEADERS: usize = 1024;

/// One route with its run-time state.
pub(crate) struct RouteRuntime {
    pub(crate) route: Arc<Route>,
    /// The upstream's balancer and health state, shared with the other
    /// routes of the same upstream.
    state: Arc<UpstreamState>,
    /// Pooled upstream connections (per route: timeouts are per upstream),
    /// clear text or TLS (`scheme`).
    client: Client<HttpsConnector<HttpConnector>, Body>,
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
    /// `host:port`: the `Host` of a request without one.
    host: Option<HeaderValue>,
    /// `pass_host: node`'s `Host`: without the port when it is 80 or 443,
    /// as APISIX sends it.
    node_host: Option<HeaderValue>,
}

fn node_addrs(route: &Route) -> Vec<NodeAddr> {
    route
        .upstream
        .nodes
        .iter()
        .map(|(node, _)| {
            let authority = node.parse::<Authority>();
            let node_host = match &authority {
                Ok(a) if matches!(a.port_u16(), Some(80 | 443)) => {
                    HeaderValue::from_str(a.host()).ok()
                }
                _ => HeaderValue::from_str(node).ok(),
            };
            NodeAddr {
                authority: authority.map_err(|e| e.to_string()),
                host: HeaderValue::from_str(node).ok(),
                node_host,
            }
        })
        .collect()
}

/// The run-time state of each route of a configuration, in order: routes
/// of one upstream share its balancer and health state, and a route keeps
/// `previous`'s pooled connections (and its upstream's state) when a
/// reload leaves them as they were.
pub(crate) fn runtimes(
    routes: &[Arc<Route>],
    previous: Option<&[RouteRuntime]>,
) -> Vec<RouteRuntime> {
    let mut states = States::default();
    routes
        .iter()
        .map(|route| {
            let old_states = previous
                .unwrap_or_default()
                .iter()
                .map(|rt| rt.state.clone());
            let state = states.get(&route.upstream, old_states);
            warn_unverified(&route.upstream);
            let old = previous.and_then(|p| p.iter().find(|o| o.route.id == route.id));
            match old {
                Some(old) => RouteRuntime::reusing(route.clone(), state, old),
                None => RouteRuntime::new(route.clone(), state),
            }
        })
        .collect()
}

/// The largest request body read whole before it is sent, so that a retry
/// can send it again (larger ones stream, and are sent again only if the
/// node never read from them).
const RESEND_BUFFER: u64 = 64 * 1024;

/// Upstreams whose `verify: false` was logged (once per upstream).
static UNVERIFIED_LOGGED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

/// Logs, once per upstream, that its nodes' certificates are not checked.
fn warn_unverified(upstream: &Upstream) {
    if upstream.tls.as_ref().is_some_and(|t| !t.verify) {
        let mut logged = UNVERIFIED_LOGGED.lock().unwrap_or_else(|p| p.into_inner());
        if logged.insert(upstream.name.clone()) {
            warn!(upstream = %upstream.name, "TLS to this upstream's nodes does not verify their certificates (APISIX's default): set `\"tls\": {{\"verify\": true}}` to check them");
        }
    }
}

/// Whether a method may be sent twice (RFC 9110 section 9.2.2): only such
/// a request is retried once it reached a node.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A streamed request body handed to hyper, which can be taken back for
/// another node if hyper never read from it (the connection failed first).
#[derive(Clone)]
struct Resendable {
    body: Arc<Mutex<Option<Body>>>,
    /// Set at the first read: from then on part of it may be gone.
    read: Arc<AtomicBool>,
}

impl hyper::body::Body for Resendable {
    type Data = bytes::Bytes;
    type Error = super::answer::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.read.store(true, Ordering::Relaxed);
        let mut body = self.body.lock().unwrap_or_else(|p| p.into_inner());
        match body.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(hyper::body::Body::size_hint)
            .unwrap_or_default()
    }
}

impl RouteRuntime {
    /// The run-time state of `route`, with its upstream's `state`.
    fn new(route: Arc<Route>, state: Arc<UpstreamState>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(route.upstream.connect_timeout));
        http.set_nodelay(true);
        let sni = match &route.upstream.pass_host {
            PassHost::Rewrite(host) => Some(host.as_str()),
            _ => None,
        };
        let connector = connector(route.upstream.tls.as_ref(), sni, http);
        let pool = route.upstream.keepalive;
        // `size` counts per proxy thread, as APISIX's counts per worker;
        // hyper's pool is one per route, for all threads.
        let threads =
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers().max(1));
        RouteRuntime {
            nodes: node_addrs(&route),
            route,
            state,
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
    fn reusing(route: Arc<Route>, state: Arc<UpstreamState>, old: &RouteRuntime) -> Self {
        let (new, was) = (&route.upstream, &old.route.upstream);
        // What the connector holds: timeouts, pool, TLS and its SNI.
        if new.connect_timeout != was.connect_timeout
            || new.keepalive != was.keepalive
            || new.tls != was.tls
            || new.pass_host != was.pass_host
        {
            return Self::new(route, state);
        }
        RouteRuntime {
            nodes: node_addrs(&route),
            route,
            state,
            // A clone shares the pool.
            client: old.client.clone(),
            uses: old.uses.clone(),
        }
    }

    /// `chash`'s key for this request: the variable, header or cookie the
    /// upstream names, or the client's address when the request lacks it.
    fn hash_key(&self, ex: &Exchange) -> Vec<u8> {
        let crate::host::config::Balancer::Chash(on) = &self.route.upstream.balancer else {
            return Vec::new();
        };
        let ctx = ex.var_ctx();
        let value = match on {
            HashOn::Var(name) => super::vars::lookup(name, &ctx),
            HashOn::Header(name) => ex
                .head
                .headers
                .get(name.as_str())
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            HashOn::Cookie(name) => super::vars::lookup(&format!("cookie_{name}"), &ctx),
        };
        value
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| ex.peer.ip().to_string())
            .into_bytes()
    }

    /// The URI of the request to node `index`.
    fn node_uri(&self, index: usize, ex: &Exchange) -> Result<Uri, String> {
        let authority = self.nodes[index].authority.clone()?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.route.upstream.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(authority);
        parts.path_and_query = Some(
            ex.head
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).map_err(|e| e.to_string())
    }

    /// Sends the exchange's request to a node of the upstream, and to
    /// others after a failure that allows a retry (see docs/reliability.md).
    /// `Err` is the answer for the client: the request body failed
    /// (400/408/413), or the upstream did (502/504).
    pub(crate) async fn forward(
        &self,
        ex: &mut Exchange,
    ) -> Result<Response<Incoming>, Response<Body>> {
        let upstream = &self.route.upstream;
        let key = self.state.hashes().then(|| self.hash_key(ex));
        // A small body of a request that may go to another node is read
        // first, as nginx (and so APISIX) reads every body: then it can be
        // sent again after the node reset the connection.
        let small = ex
            .head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| (1..=RESEND_BUFFER).contains(&n) && n <= ex.body.limit() as u64);
        if small && upstream.retries > 0 && self.state.len() > 1 && idempotent(&ex.head.method) {
            if let Err(e) = ex.body.buffer().await {
                return Err(ex.body_failed(Side::Request, &e));
            }
        }
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
        // A WebSocket route's upgrade, past the filter that drops it.
        super::tunnel::restore_upgrade(&ex.head.extensions, &mut headers);
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
        if let PassHost::Rewrite(host) = &upstream.pass_host {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert(HOST, v);
            }
        }
        // The proxy sets the framing: a buffered body's length here; a
        // streamed body's framing is hyper's, from the client's (already
        // validated) length, or chunked.
        let (first_body, streamed) = match ex.body.send() {
            Ok((body, Some(len))) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                (body, None)
            }
            Ok((body, None)) => {
                let resendable = Resendable {
                    body: Arc::new(Mutex::new(Some(body))),
                    read: Arc::default(),
                };
                (resendable.clone().boxed(), Some(resendable))
            }
            Err(e) => return Err(ex.body_failed(Side::Request, &e)),
        };
        let mut body = Some(first_body);
        let mut tried = vec![false; self.state.len()];
        let mut retries_left = upstream.retries;
        let started = Instant::now();
        let mut answer = None;
        loop {
            let Some(index) = self.state.pick(key.as_deref(), &tried) else {
                return Err(answer.unwrap_or_else(|| {
                    error_response(StatusCode::BAD_GATEWAY, "upstream unreachable")
                }));
            };
            tried[index] = true;
            let node = &upstream.nodes[index].0;
            let uri = match self.node_uri(index, ex) {
                Ok(uri) => uri,
                Err(e) => {
                    return Err(error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!("bad upstream URI: {e}"),
                    ))
                }
            };
            let Some(this_body) = body.take() else {
                return Err(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream unreachable",
                ));
            };
            // A retry needs the headers again: a copy while one may come.
            let mut these = if retries_left > 0 {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            let addr = &self.nodes[index];
            let node_host = match upstream.pass_host {
                PassHost::Node => addr.node_host.as_ref(),
                _ if !these.contains_key(HOST) => addr.host.as_ref(),
                _ => None,
            };
            if let Some(v) = node_host {
                these.insert(HOST, v.clone());
            }
            let mut req = Request::new(this_body);
            *req.method_mut() = ex.head.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = these;
            let connection = capture_connection(&mut req);
            let in_flight = self.state.start(index);
            let result =
                tokio::time::timeout(upstream.read_timeout, self.client.request(req)).await;
            if let Ok(Ok(_)) = &result {
                in_flight.answered();
                self.count_use(&connection);
            }
            drop(in_flight);
            // The client's body failing while it streamed is the client's fault,
            // whatever the upstream made of the truncated request.
            if let Some(e) = ex.body.failure().cloned() {
                return Err(ex.body_failed(Side::Request, &e));
            }
            let e = match result {
                Ok(Ok(resp)) => {
                    self.state.passive_status(index, resp.status().as_u16());
                    return Ok(resp);
                }
                Err(_) => {
                    // No retry after a read timeout: the node may be
                    // working on it, and the client has waited already.
                    self.state.passive(index, Report::Timeout);
                    warn!(route = %ex.route.id, node = %node, "upstream timed out");
                    return Err(error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream timed out",
                    ));
                }
                Ok(Err(e)) => e,
            };
            let timed_out = is_timeout(&e);
            self.state.passive(
                index,
                if timed_out {
                    Report::Timeout
                } else {
                    Report::TcpFailure
                },
            );
            let failed = if timed_out {
                error_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            } else if is_tls(&e) {
                error_response(StatusCode::BAD_GATEWAY, "upstream TLS handshake failed")
            } else {
                error_response(StatusCode::BAD_GATEWAY, "upstream unreachable")
            };
            // The body again, if the node cannot have had any of it: a
            // buffered body is sent whole each time; a streamed one only
            // if hyper never read from it (it is still in its cell).
            body = match &streamed {
                None => ex.body.send().ok().map(|(b, _)| b),
                Some(s) if !s.read.load(Ordering::Relaxed) => Some(s.clone().boxed()),
                Some(_) => None,
            };
            // A connection that failed sent nothing; any other failure may
            // have reached the node: only an idempotent request goes again.
            let may_retry = retries_left > 0
                && body.is_some()
                && (e.is_connect() || idempotent(&ex.head.method))
                && within(started, upstream.retry_timeout)
                && tried.iter().any(|t| !t);
            if !may_retry {
                warn!(route = %ex.route.id, node = %node, cause = %error_chain(&e), "upstream failed");
                return Err(failed);
            }
            answer = Some(failed);
            warn!(route = %ex.route.id, node = %node, cause = %error_chain(&e), "upstream failed; retrying on another node");
            retries_left -= 1;
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

/// `e` and its causes: `source()`, and the error an `io::Error` wraps
/// (whose `source()` skips it: rustls's errors come wrapped so, twice).
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = vec![e];
    while let Some(e) = next.pop() {
        if out.len() > 32 {
            break;
        }
        out.push(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            next.push(inner);
        }
        if let Some(source) = e.source() {
            next.push(source);
        }
    }
    out
}

/// Whether a rustls error (a refused certificate, a failed handshake) is
/// in `e`'s chain.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).iter().any(|c| c.is::<rustls::Error>())
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).iter().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}
