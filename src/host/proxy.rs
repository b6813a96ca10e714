//! The HTTP reverse proxy: route, run the request phases
//! (`ext-plugin-pre-req`, then `ext-plugin-post-req`), apply each outcome,
//! forward to the upstream, run `ext-plugin-post-resp`, answer the client.
//!
//! ```text
//! client ──> route ──> pre-req ──> post-req ──> upstream ──> post-resp ──> client
//!                        │            │                          │
//!                      stop?        stop?                 status/headers/body
//!                   (answer now) (answer now)                  changed?
//! ```
//!
//! Bodies stream unless a plugin needs them (declared, or asked for during a
//! call) or replaces them; a buffered body gets a correct `content-length`.

use super::client::{CallError, ExtClient, InfoProvider};
use super::config::{Config, Phase, PhaseConf, Route};
use super::router::Router;
use super::vars::{self, VarCtx};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use runner_sdk::{async_trait, InfoKey, RequestOutcome, RequestParts, ResponseParts, Rewrite};
use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// Any error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Response headers a plugin's rewrite may not add (PROTOCOL.md section 3).
const PROTECTED_RESP_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "content-type",
    "location",
    "server",
    "www-authenticate",
];

/// Hop-by-hop headers: never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Characters escaped when a decoded path goes back into a URI.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'%');

/// Characters escaped in a query argument's name or value.
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'&')
    .add(b'=')
    .add(b'+')
    .add(b'%');

/// One route with its run-time state.
struct RouteRuntime {
    route: Arc<Route>,
    /// Position in the upstream's round-robin schedule.
    next: AtomicUsize,
    /// Pooled upstream connections (per route: timeouts are per upstream).
    upstream: Client<HttpConnector, Body>,
}

/// The proxy: routes, the ext-plugin client, upstream clients.
pub struct Proxy {
    router: Router,
    routes: Vec<RouteRuntime>,
    client: Arc<ExtClient>,
    max_request_body: usize,
    max_response_body: usize,
    ids: RequestIds,
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

/// A request body: still streaming from the client, or read whole.
enum ReqBody {
    Streaming(Incoming),
    Buffered(Bytes),
    Taken,
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Read(String),
}

impl ReqBody {
    /// Reads the body whole (once), refusing more than `limit` bytes.
    async fn buffer(&mut self, headers: &HeaderMap, limit: usize) -> Result<Bytes, BodyError> {
        match std::mem::replace(self, ReqBody::Taken) {
            ReqBody::Buffered(bytes) => {
                *self = ReqBody::Buffered(bytes.clone());
                Ok(bytes)
            }
            ReqBody::Taken => Ok(Bytes::new()),
            ReqBody::Streaming(body) => {
                let declared = headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > limit as u64) {
                    return Err(BodyError::TooLarge);
                }
                match Limited::new(body, limit).collect().await {
                    Ok(collected) => {
                        let bytes = collected.to_bytes();
                        *self = ReqBody::Buffered(bytes.clone());
                        Ok(bytes)
                    }
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        Err(BodyError::TooLarge)
                    }
                    Err(e) => Err(BodyError::Read(e.to_string())),
                }
            }
        }
    }
}

/// Everything about one request as it goes through the phases.
struct Exchange {
    route: Arc<Route>,
    head: http::request::Parts,
    original_uri: Uri,
    body: ReqBody,
    peer: SocketAddr,
    local: SocketAddr,
    request_id: String,
    /// Response headers added by request-phase rewrites.
    resp_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Exchange {
    fn var_ctx(&self) -> VarCtx<'_> {
        VarCtx {
            head: &self.head,
            original_uri: &self.original_uri,
            peer: self.peer,
            local: self.local,
            route_id: &self.route.id,
            request_id: &self.request_id,
        }
    }
}

/// How a phase failed.
enum PhaseError {
    /// The client's body is over the limit: 413, whatever the route allows.
    TooLarge,
    /// The client's body could not be read: 400.
    BadBody(String),
    /// The runner call failed: 503 or degradation.
    Call(CallError),
}

impl From<CallError> for PhaseError {
    fn from(e: CallError) -> Self {
        PhaseError::Call(e)
    }
}

impl From<BodyError> for PhaseError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => PhaseError::TooLarge,
            BodyError::Read(e) => PhaseError::BadBody(e),
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

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The decoded path (invalid UTF-8 replaced).
fn decode_path(path: &str) -> Cow<'_, str> {
    percent_decode_str(path).decode_utf8_lossy()
}

/// Query arguments, one entry per value, decoded (`+` is a space);
/// `None` for an argument without `=`. Empty segments are skipped.
fn parse_query(query: Option<&str>) -> Vec<(String, Option<String>)> {
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) => (decode(k), Some(decode(v))),
            None => (decode(seg), None),
        })
        .collect()
}

/// Applies argument changes to the original query: named arguments lose all
/// their values, set values are appended; other arguments are kept as sent.
fn rewrite_query(query: Option<&str>, changes: &[(String, Option<String>)]) -> String {
    let names: HashSet<&str> = changes.iter().map(|(n, _)| n.as_str()).collect();
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut out: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|seg| !seg.is_empty())
        .filter(|seg| {
            let name = seg.split_once('=').map_or(*seg, |(k, _)| k);
            !names.contains(decode(name).as_str())
        })
        .map(str::to_owned)
        .collect();
    for (name, value) in changes {
        if let Some(value) = value {
            out.push(format!(
                "{}={}",
                utf8_percent_encode(name, QUERY),
                utf8_percent_encode(value, QUERY)
            ));
        }
    }
    out.join("&")
}

impl Proxy {
    /// A proxy for `config`'s routes, calling the runner through `client`.
    pub fn new(config: &Config, client: Arc<ExtClient>) -> Self {
        let router = Router::new(config.routes.clone());
        let routes = router
            .routes()
            .iter()
            .map(|route| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(route.upstream.connect_timeout));
                connector.set_nodelay(true);
                RouteRuntime {
                    route: route.clone(),
                    next: AtomicUsize::new(0),
                    upstream: Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(60))
                        .build(connector),
                }
            })
            .collect();
        Proxy {
            router,
            routes,
            client,
            max_request_body: config.max_request_body,
            max_response_body: config.max_response_body,
            ids: RequestIds::new(),
        }
    }

    /// Serves `listener` until `shutdown`, then stops accepting and lets the
    /// requests in flight finish, for at most `grace`; with the default
    /// client limits (see [`super::server::serve`] to choose them).
    // [h-server] the accept loop moved to server.rs.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        super::server::serve(self, listener, Default::default(), shutdown, grace).await;
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

    /// Routes and answers one request.
    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Response<Body> {
        let path = decode_path(req.uri().path()).into_owned();
        let Some(index) = self.router.find(req.method(), &path) else {
            return error_response(StatusCode::NOT_FOUND, "404 Route Not Found");
        };
        let rt = &self.routes[index];
        let (head, body) = req.into_parts();
        let mut ex = Exchange {
            route: rt.route.clone(),
            original_uri: head.uri.clone(),
            head,
            body: ReqBody::Streaming(body),
            peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            local,
            request_id: self.ids.next(),
            resp_headers: Vec::new(),
        };
        for phase in [Phase::PreReq, Phase::PostReq] {
            let Some(pc) = rt.route.phase(phase) else {
                continue;
            };
            if let Some(answer) = self.request_phase(phase, pc, &mut ex).await {
                return answer;
            }
        }
        let upstream = match self.forward(rt, &mut ex).await {
            Ok(resp) => resp,
            Err(answer) => return answer,
        };
        let (mut head, body) = upstream.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let mut body = RespBody::Streaming(body);
        if let Some(pc) = rt.route.phase(Phase::PostResp) {
            if let Err(answer) = self.response_phase(pc, &mut ex, &mut head, &mut body).await {
                return answer;
            }
        }
        for (name, value) in ex.resp_headers {
            head.headers.append(name, value);
        }
        let body = match body {
            RespBody::Streaming(b) => b.map_err(BoxError::from).boxed(),
            RespBody::Buffered(bytes) => {
                // A HEAD answer, a 1xx, 204 or 304 has no body: its framing
                // headers describe something else and stay as they are.
                let bodiless = ex.head.method == http::Method::HEAD
                    || head.status.is_informational()
                    || head.status == StatusCode::NO_CONTENT
                    || head.status == StatusCode::NOT_MODIFIED;
                if !bodiless {
                    head.headers.remove(TRANSFER_ENCODING);
                    head.headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                }
                full(bytes)
            }
        };
        Response::from_parts(head, body)
    }

    /// Runs one request phase and applies its outcome. `Some` is the answer
    /// to send now (a stop, or an error).
    async fn request_phase(
        &self,
        phase: Phase,
        pc: &PhaseConf,
        ex: &mut Exchange,
    ) -> Option<Response<Body>> {
        match self.call_request_phase(pc, ex).await {
            Ok(RequestOutcome::Continue) => None,
            Ok(RequestOutcome::Stop(stop)) => {
                let mut resp = Response::new(full(Bytes::from(stop.body)));
                *resp.status_mut() = stop.status;
                for (name, value) in stop.headers {
                    match (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        (Ok(n), Ok(v)) => {
                            resp.headers_mut().append(n, v);
                        }
                        _ => {
                            warn!(route = %ex.route.id, header = %name, "runner sent an invalid stop header; skipped")
                        }
                    }
                }
                Some(resp)
            }
            Ok(RequestOutcome::Rewrite(rw)) => {
                apply_rewrite(ex, rw);
                None
            }
            Err(PhaseError::TooLarge) => Some(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is over {} bytes", self.max_request_body),
            )),
            Err(PhaseError::BadBody(e)) => Some(error_response(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            )),
            Err(PhaseError::Call(e)) => self.call_failed(phase, pc, ex, e),
        }
    }

    /// Logs a failed call; the 503 answer, or `None` when degradation is allowed.
    fn call_failed(
        &self,
        phase: Phase,
        pc: &PhaseConf,
        ex: &Exchange,
        e: CallError,
    ) -> Option<Response<Body>> {
        if pc.allow_degradation {
            warn!(route = %ex.route.id, phase = phase.name(), cause = %e, "ext-plugin call failed; degraded: going on unchanged");
            None
        } else {
            error!(route = %ex.route.id, phase = phase.name(), cause = %e, "ext-plugin call failed: 503");
            Some(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ext-plugin runner unavailable",
            ))
        }
    }

    async fn call_request_phase(
        &self,
        pc: &PhaseConf,
        ex: &mut Exchange,
    ) -> Result<RequestOutcome, PhaseError> {
        let ticket = self.client.ticket(pc).await?;
        let body = if ticket.needs.request_body {
            Some(
                ex.body
                    .buffer(&ex.head.headers, self.max_request_body)
                    .await?,
            )
        } else {
            None
        };
        let path = decode_path(ex.head.uri.path()).into_owned();
        let args = parse_query(ex.head.uri.query());
        let headers: Vec<(&str, Cow<'_, str>)> = ex
            .head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes())))
            .collect();
        // Field by field, so that the body stays mutable for the provider.
        let ctx = VarCtx {
            head: &ex.head,
            original_uri: &ex.original_uri,
            peer: ex.peer,
            local: ex.local,
            route_id: &ex.route.id,
            request_id: &ex.request_id,
        };
        let values: Vec<(&str, Option<String>)> = ticket
            .needs
            .vars
            .iter()
            .map(|n| (n.as_str(), vars::lookup(n, &ctx)))
            .collect();
        let mut extra_info: Vec<(&str, Option<&[u8]>)> = values
            .iter()
            .map(|(n, v)| (*n, v.as_deref().map(str::as_bytes)))
            .collect();
        if let Some(body) = &body {
            extra_info.push(("$request_body", Some(body)));
        }
        let parts = RequestParts {
            id: self.client.next_id(),
            src_ip: ex.peer.ip(),
            method: ex.head.method.clone(),
            path: &path,
            args: args
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_deref()))
                .collect(),
            headers: headers.iter().map(|(n, v)| (*n, v.as_ref())).collect(),
            extra_info,
        };
        let mut too_large = false;
        let mut provider = RequestInfo {
            ctx,
            body: &mut ex.body,
            limit: self.max_request_body,
            too_large: &mut too_large,
        };
        let outcome = self
            .client
            .call_request(pc, &ticket, parts, &mut provider)
            .await;
        if too_large {
            return Err(PhaseError::TooLarge);
        }
        Ok(outcome?)
    }

    /// Sends the request to the next upstream node.
    async fn forward(
        &self,
        rt: &RouteRuntime,
        ex: &mut Exchange,
    ) -> Result<Response<Incoming>, Response<Body>> {
        let upstream = &rt.route.upstream;
        let slot = rt.next.fetch_add(1, Ordering::Relaxed) % upstream.schedule.len();
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
        strip_hop_by_hop(&mut headers);
        if upstream.pass_host_node || !headers.contains_key(HOST) {
            if let Ok(v) = HeaderValue::from_str(node) {
                headers.insert(HOST, v);
            }
        }
        // [h-server] X-Forwarded-For/-Proto/-Host, X-Real-IP: ingress.rs.
        super::ingress::forwarding_headers(&mut headers, ex.peer.ip(), ex.head.headers.get(HOST));
        let body = match std::mem::replace(&mut ex.body, ReqBody::Taken) {
            ReqBody::Streaming(b) => b.map_err(BoxError::from).boxed(),
            ReqBody::Buffered(bytes) => {
                headers.remove(TRANSFER_ENCODING);
                headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                // Kept for the response phase's `$request_body`.
                ex.body = ReqBody::Buffered(bytes.clone());
                full(bytes)
            }
            ReqBody::Taken => Empty::new().map_err(|never| match never {}).boxed(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = ex.head.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        match tokio::time::timeout(upstream.read_timeout, rt.upstream.request(req)).await {
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

    /// Runs the response phase over the upstream's answer.
    async fn response_phase(
        &self,
        pc: &PhaseConf,
        ex: &mut Exchange,
        head: &mut http::response::Parts,
        body: &mut RespBody,
    ) -> Result<(), Response<Body>> {
        let result = self.call_response_phase(pc, ex, head, body).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(PhaseError::TooLarge) => {
                error!(route = %ex.route.id, "upstream body over max_response_body_bytes");
                return Err(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream body too large for the response phase",
                ));
            }
            Err(PhaseError::BadBody(e)) => {
                error!(route = %ex.route.id, cause = %e, "reading the upstream body failed");
                return Err(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream body failed",
                ));
            }
            Err(PhaseError::Call(e)) => {
                return match self.call_failed(Phase::PostResp, pc, ex, e) {
                    Some(answer) => Err(answer),
                    None => Ok(()),
                }
            }
        };
        if let Some(status) = outcome.status {
            head.status = status;
        }
        if let Some(headers) = outcome.headers {
            let mut map = HeaderMap::with_capacity(headers.len());
            for (name, value) in headers {
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    (Ok(n), Ok(v)) => {
                        map.append(n, v);
                    }
                    _ => {
                        warn!(route = %ex.route.id, header = %name, "runner sent an invalid response header; skipped")
                    }
                }
            }
            strip_hop_by_hop(&mut map);
            // The framing of a body we still stream stays the upstream's.
            if let RespBody::Streaming(_) = body {
                map.remove(CONTENT_LENGTH);
                map.remove(TRANSFER_ENCODING);
                for name in [CONTENT_LENGTH, TRANSFER_ENCODING] {
                    for v in head.headers.get_all(&name) {
                        map.append(name.clone(), v.clone());
                    }
                }
            }
            head.headers = map;
        }
        if let Some(new_body) = outcome.body {
            *body = RespBody::Buffered(Bytes::from(new_body));
        }
        Ok(())
    }

    async fn call_response_phase(
        &self,
        pc: &PhaseConf,
        ex: &mut Exchange,
        head: &http::response::Parts,
        body: &mut RespBody,
    ) -> Result<runner_sdk::ResponseOutcome, PhaseError> {
        let ticket = self.client.ticket(pc).await?;
        let resp_body = if ticket.needs.response_body {
            Some(body.buffer(self.max_response_body).await?)
        } else {
            None
        };
        let req_body = match &ex.body {
            ReqBody::Buffered(b) => Some(b.clone()),
            _ => None,
        };
        let headers: Vec<(&str, Cow<'_, str>)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes())))
            .collect();
        let ctx = ex.var_ctx();
        let values: Vec<(&str, Option<Bytes>)> = ticket
            .needs
            .vars
            .iter()
            .map(|n| (n.as_str(), vars::lookup(n, &ctx).map(Bytes::from)))
            .collect();
        let mut extra_info: Vec<(&str, Option<&[u8]>)> =
            values.iter().map(|(n, v)| (*n, v.as_deref())).collect();
        if let Some(b) = &resp_body {
            extra_info.push(("$response_body", Some(b)));
        }
        let parts = ResponseParts {
            id: self.client.next_id(),
            status: head.status,
            headers: headers.iter().map(|(n, v)| (*n, v.as_ref())).collect(),
            extra_info,
        };
        let mut too_large = false;
        let mut provider = ResponseInfo {
            ctx,
            req_body,
            body,
            limit: self.max_response_body,
            too_large: &mut too_large,
        };
        let outcome = self
            .client
            .call_response(pc, &ticket, parts, &mut provider)
            .await;
        if too_large {
            return Err(PhaseError::TooLarge);
        }
        Ok(outcome?)
    }
}

/// An upstream body: streaming, or read whole for a plugin.
enum RespBody {
    Streaming(Incoming),
    Buffered(Bytes),
}

impl RespBody {
    async fn buffer(&mut self, limit: usize) -> Result<Bytes, BodyError> {
        let body = match std::mem::replace(self, RespBody::Buffered(Bytes::new())) {
            RespBody::Buffered(bytes) => {
                *self = RespBody::Buffered(bytes.clone());
                return Ok(bytes);
            }
            RespBody::Streaming(body) => body,
        };
        match Limited::new(body, limit).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                *self = RespBody::Buffered(bytes.clone());
                Ok(bytes)
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
            Err(e) => Err(BodyError::Read(e.to_string())),
        }
    }
}

/// Applies a request-phase rewrite to the request.
fn apply_rewrite(ex: &mut Exchange, rw: Rewrite) {
    if rw.path.is_some() || !rw.args.is_empty() {
        let path = match &rw.path {
            Some(p) => utf8_percent_encode(p, PATH).to_string(),
            None => ex.head.uri.path().to_owned(),
        };
        let query = if rw.args.is_empty() {
            ex.head.uri.query().map(str::to_owned)
        } else {
            Some(rewrite_query(ex.head.uri.query(), &rw.args)).filter(|q| !q.is_empty())
        };
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        match pq.parse::<Uri>() {
            Ok(uri) => ex.head.uri = uri,
            Err(e) => {
                warn!(route = %ex.route.id, cause = %e, uri = %pq, "runner's rewrite gives an invalid URI; path and args kept")
            }
        }
    }
    let mut replaced = HashSet::new();
    for (name, value) in rw.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            warn!(route = %ex.route.id, header = %name, "runner sent an invalid header name; skipped");
            continue;
        };
        if replaced.insert(name.clone()) {
            ex.head.headers.remove(&name);
        }
        if let Some(value) = value {
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    ex.head.headers.append(name, v);
                }
                Err(_) => {
                    warn!(route = %ex.route.id, header = %name, "runner sent an invalid header value; skipped")
                }
            }
        }
    }
    for (name, value) in rw.resp_headers {
        let lower = name.to_ascii_lowercase();
        if PROTECTED_RESP_HEADERS.contains(&lower.as_str()) {
            debug!(route = %ex.route.id, header = %lower, "protected response header ignored");
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            ex.resp_headers.push((n, v));
        }
    }
    if let Some(body) = rw.body {
        ex.body = ReqBody::Buffered(Bytes::from(body));
    }
}

/// Removes hop-by-hop headers, and those the `connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
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

/// EXTRA_INFO during a request phase: variables, and the request body (read
/// now if it was not yet, within the limit).
struct RequestInfo<'a> {
    ctx: VarCtx<'a>,
    body: &'a mut ReqBody,
    limit: usize,
    too_large: &'a mut bool,
}

#[async_trait]
impl InfoProvider for RequestInfo<'_> {
    async fn provide(&mut self, key: InfoKey<'_>) -> Option<Bytes> {
        match key {
            InfoKey::Var(name) => vars::lookup(name, &self.ctx).map(Bytes::from),
            InfoKey::RequestBody => {
                match self.body.buffer(&self.ctx.head.headers, self.limit).await {
                    Ok(bytes) => Some(bytes),
                    Err(BodyError::TooLarge) => {
                        // Never a truncated body: the call goes on without it, and
                        // the client gets 413 when it ends.
                        *self.too_large = true;
                        None
                    }
                    Err(BodyError::Read(_)) => None,
                }
            }
            InfoKey::ResponseBody => None,
        }
    }
}

/// EXTRA_INFO during the response phase: variables, the request body if it
/// was read, and the upstream body (read now if it was not yet).
struct ResponseInfo<'a> {
    ctx: VarCtx<'a>,
    req_body: Option<Bytes>,
    body: &'a mut RespBody,
    limit: usize,
    too_large: &'a mut bool,
}

#[async_trait]
impl InfoProvider for ResponseInfo<'_> {
    async fn provide(&mut self, key: InfoKey<'_>) -> Option<Bytes> {
        match key {
            InfoKey::Var(name) => vars::lookup(name, &self.ctx).map(Bytes::from),
            InfoKey::RequestBody => self.req_body.clone(),
            InfoKey::ResponseBody => match self.body.buffer(self.limit).await {
                Ok(bytes) => Some(bytes),
                Err(BodyError::TooLarge) => {
                    *self.too_large = true;
                    None
                }
                Err(BodyError::Read(_)) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_keeps_repeats_and_tells_no_value_from_empty() {
        let args = parse_query(Some("xx=y&xx=z&&y=&&z&a%20b=c+d"));
        let expect: Vec<(String, Option<String>)> = vec![
            ("xx".into(), Some("y".into())),
            ("xx".into(), Some("z".into())),
            ("y".into(), Some("".into())),
            ("z".into(), None),
            ("a b".into(), Some("c d".into())),
        ];
        assert_eq!(args, expect);
    }

    #[test]
    fn query_rewrite_keeps_the_rest_of_the_original() {
        let q = rewrite_query(
            Some("a=1&b=2&a=3&keep=%2F&flag"),
            &[
                ("a".into(), Some("x y".into())),
                ("a".into(), Some("z".into())),
                ("b".into(), None),
                ("new".into(), Some("&".into())),
            ],
        );
        assert_eq!(q, "keep=%2F&flag&a=x%20y&a=z&new=%26");
    }
}
