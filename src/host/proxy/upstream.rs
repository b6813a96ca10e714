//! Upstream selection and forwarding: round-robin over a route's nodes,
//! pooled connections per route, timeouts mapped to 502/504.

use super::body::Side;
use super::headers::{self, Origin};
use super::pipeline::Exchange;
use super::{error_response, Body};
use crate::host::config::Route;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// One route with its run-time state.
pub(crate) struct RouteRuntime {
    pub(crate) route: Arc<Route>,
    /// Position in the upstream's round-robin schedule.
    next: AtomicUsize,
    /// Pooled upstream connections (per route: timeouts are per upstream).
    client: Client<HttpConnector, Body>,
}

impl RouteRuntime {
    /// The run-time state of `route`.
    pub(crate) fn new(route: Arc<Route>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(route.upstream.connect_timeout));
        connector.set_nodelay(true);
        RouteRuntime {
            route,
            next: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
        }
    }

    /// The run-time state of `route`, keeping `old`'s pooled upstream
    /// connections when the connection settings are the same (a reload
    /// that leaves the route's upstream alone does not reconnect).
    pub(crate) fn reusing(route: Arc<Route>, old: &RouteRuntime) -> Self {
        if route.upstream.connect_timeout != old.route.upstream.connect_timeout {
            return Self::new(route);
        }
        RouteRuntime {
            route,
            next: AtomicUsize::new(0),
            // A clone shares the pool.
            client: old.client.clone(),
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
        let node = &upstream.nodes[upstream.schedule[slot]].0;
        let pq = ex.head.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let uri: Uri = match format!("http://{node}{pq}").parse() {
            Ok(uri) => uri,
            Err(e) => {
                return Err(error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("bad upstream URI: {e}"),
                ))
            }
        };
        let mut headers = ex.head.headers.clone();
        headers::filter_map(&mut headers, &ex.route.id, Origin::Traffic);
        if upstream.pass_host_node || !headers.contains_key(HOST) {
            if let Ok(v) = HeaderValue::from_str(node) {
                headers.insert(HOST, v);
            }
        }
        // X-Forwarded-For/-Proto/-Host and X-Real-IP, from the client's Host.
        crate::host::ingress::forwarding_headers(
            &mut headers,
            ex.peer.ip(),
            ex.head.headers.get(HOST),
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
        let result = tokio::time::timeout(upstream.read_timeout, self.client.request(req)).await;
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
