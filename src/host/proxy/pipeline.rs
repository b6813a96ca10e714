//! The request pipeline: normalize the path, route, run the request phases
//! and apply their outcomes, forward, run the response phase, and set the
//! answer's framing.
//!
//! A body failure decides the answer wherever it happened (prefetch for a
//! call, a lazy EXTRA_INFO read, streaming to the upstream): 400/408/413 for
//! the client's body, 502 for the upstream's, with or without degradation.

use super::answer::{error_response, full, Body};
use super::body::{BodyError, MessageBody, Side};
use super::exchange::Exchange;
use super::headers::{self, Origin};
use super::query::{parse_query, target_of};
use super::rewrite::{apply_rewrite, unapplicable};
use super::router::Matched;
use super::snapshot::Proxy;
use super::tunnel;
use crate::host::config::{Phase, PhaseConf};
use crate::host::edge::hostname::request_host;
use crate::host::edge::path;
use crate::host::metrics;
use crate::host::proxy::vars::{self, VarCtx};
use crate::host::runner::client::{CallError, InfoProvider};
use crate::wire::{InfoKey, RequestOutcome, RequestParts, ResponseParts};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use tracing::{debug, error, warn};

/// How a phase failed.
enum PhaseError {
    /// A body could not be read (its failure is also recorded in the body).
    Body(BodyError),
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
        PhaseError::Body(e)
    }
}

/// A HEAD answer, a 1xx, 204 or 304 has no body.
fn bodiless(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// What nginx refuses before routing; `Err` says why (the answer is 400):
/// - a method not in upper case (A-Z, `_`, `-`): methods are case-sensitive,
///   but some upstream frameworks upper-case them, so `get` would dodge a
///   `GET`-only route and still act as GET there;
/// - an HTTP/1.1 request without `Host` (RFC 9112 section 3.2 requires 400;
///   nginx's answer too, with or without an absolute-form target): it
///   would reach the upstream with the node's address as its host;
/// - more than one `Host` (RFC 9112 section 3.2): the upstream might pick
///   another host than the one plugins saw;
/// - a `Host`, or an absolute-form target's authority, that is not a host
///   ([`headers::valid_host`]; user info in a target is refused too).
fn check_head(req: &Request<Incoming>) -> Result<(), String> {
    let method = req.method().as_str();
    if !crate::host::edge::ingress::method_is_upper_case(method) {
        return Err(format!("method {method:?} is not in upper case"));
    }
    let hosts = req.headers().get_all(HOST);
    if req.version() == http::Version::HTTP_11 && hosts.iter().next().is_none() {
        return Err("an HTTP/1.1 request without a Host header".into());
    }
    if hosts.iter().nth(1).is_some() {
        return Err("more than one Host header".into());
    }
    if hosts.iter().any(|h| !headers::valid_host(h)) {
        return Err("the Host header is not a host".into());
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| HeaderValue::from_str(a.as_str()));
    if authority.is_some_and(|a| !a.is_ok_and(|a| headers::valid_host(&a))) {
        return Err("the request target's authority is not a host".into());
    }
    Ok(())
}

impl Proxy {
    /// Normalizes, routes and answers one request; counts it in the
    /// metrics under its route's id.
    pub(super) async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        // `None` until routed: a 400 or 404 has no route.
        let mut routed = None;
        let resp = self.route_and_answer(req, peer, local, &mut routed).await;
        let secs = started.elapsed().as_secs_f64();
        match routed.and_then(|index| self.route_metrics.get(index)) {
            Some(handles) => handles.request(resp.status(), secs),
            None => metrics::request("", resp.status(), secs),
        }
        resp
    }

    async fn route_and_answer(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
        routed: &mut Option<usize>,
    ) -> Response<Body> {
        if let Err(why) = check_head(&req) {
            debug!(client = %peer, target = %req.uri(), "{why}: 400");
            return error_response(StatusCode::BAD_REQUEST, &why);
        }
        let path = match path::normalize(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                debug!(client = %peer, target = %req.uri(), cause = %e, "bad request path: 400");
                return error_response(StatusCode::BAD_REQUEST, &format!("bad request path: {e}"));
            }
        };
        // The client's address, decided once: what `remote_addrs` match,
        // what `remote_addr` gives plugins, what the upstream is told.
        let client = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let (mut head, body) = req.into_parts();
        let original_uri = head.uri.clone();
        head.uri = match target_of(&path, &original_uri) {
            Ok(uri) => uri,
            Err(e) => {
                return error_response(StatusCode::BAD_REQUEST, &format!("bad request target: {e}"))
            }
        };
        // RFC 9112 section 3.2.2: an absolute-form target's authority is
        // the host, whatever `Host` says (one Host for routing, plugins and
        // upstream); over HTTP/2, `:authority` is the target's authority.
        if let Some(authority) = original_uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                head.headers.insert(HOST, v);
            }
        }
        let host = head
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(request_host)
            .unwrap_or_default();
        let request_id = self.ids.next();
        let found = {
            let ctx = VarCtx {
                head: &head,
                original_uri: &original_uri,
                peer: client,
                local,
                route_id: "",
                request_id,
            };
            let matched = Matched {
                method: &head.method,
                path: path.as_str(),
                host: &host,
                client: client.ip(),
            };
            self.router
                .find(&matched, &mut |name: &str| vars::lookup(name, &ctx))
        };
        let Some(index) = found else {
            return error_response(StatusCode::NOT_FOUND, "404 Route Not Found");
        };
        let rt = &self.routes[index];
        *routed = Some(index);
        let body = MessageBody::new(
            body,
            &head.headers,
            self.max_request_body,
            self.client_body_timeout,
            self.budget.clone(),
        );
        // Before the client's `Connection` is applied: it removes `Upgrade`.
        let websocket = if rt.route.enable_websocket {
            tunnel::websocket_asked(&head.method, &head.headers)
        } else {
            None
        };
        headers::from_client(&mut head.headers, &rt.route.id);
        if let Some(upgrade) = websocket {
            head.extensions.insert(tunnel::UpgradeAsked(upgrade));
        }
        let mut ex = Exchange {
            route: rt.route.clone(),
            original_uri,
            head,
            path,
            body,
            peer: client,
            local,
            request_id,
            resp_headers: Vec::new(),
        };
        for phase in [Phase::PreReq, Phase::PostReq] {
            let Some(pc) = rt.route.phase(phase) else {
                continue;
            };
            if let Some(answer) = self.request_phase(phase, pc, &mut ex, index).await {
                return answer;
            }
        }
        let upstream = match rt.forward(&mut ex).await {
            Ok(resp) => resp,
            Err(answer) => return answer,
        };
        if upstream.status() == StatusCode::SWITCHING_PROTOCOLS
            && ex.head.extensions.get::<tunnel::UpgradeAsked>().is_some()
        {
            // A tunnel has no response phase: its body is the connection.
            let client = ex.head.extensions.remove::<hyper::upgrade::OnUpgrade>();
            let idle = rt.route.upstream.read_timeout;
            return tunnel::open(&ex.route.id, client, upstream, idle);
        }
        let (mut head, body) = upstream.into_parts();
        let mut body = MessageBody::new(
            body,
            &head.headers,
            self.max_response_body,
            rt.route.upstream.read_timeout,
            self.budget.clone(),
        );
        // The upstream's length of a bodiless answer (HEAD, 304) describes
        // the resource: it goes back to the client as it was.
        let upstream_length = head.headers.get(CONTENT_LENGTH).cloned();
        if let Some(pc) = rt.route.phase(Phase::PostResp) {
            if let Err(answer) = self
                .response_phase(pc, &mut ex, &mut head, &mut body, index)
                .await
            {
                return answer;
            }
        }
        headers::filter_map(&mut head.headers, &ex.route.id, Origin::Traffic);
        for (name, value) in std::mem::take(&mut ex.resp_headers) {
            if let Err(e) = headers::append(&mut head.headers, name, value) {
                let phases = "ext-plugin-pre-req, ext-plugin-post-req";
                return unapplicable(
                    &ex.route.id,
                    phases,
                    &format!("their response headers: {e}"),
                );
            }
        }
        let (body, len) = match body.send() {
            Ok(sent) => sent,
            Err(e) => return ex.body_failed(Side::Response, &e),
        };
        if bodiless(&ex.head.method, head.status) {
            // Never on a 1xx or 204 (RFC 9110 section 8.6): a plugin may have
            // turned the upstream's 200 into a 204, and a lenient client
            // would read the next answer on the connection as its body.
            let may_have_length =
                head.status != StatusCode::NO_CONTENT && !head.status.is_informational();
            if let Some(v) = upstream_length.filter(|_| may_have_length) {
                head.headers.insert(CONTENT_LENGTH, v);
            }
        } else if let Some(len) = len {
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        Response::from_parts(head, body)
    }

    /// Runs one request phase and applies its outcome. `Some` is the answer
    /// to send now (a stop, or an error).
    async fn request_phase(
        &self,
        phase: Phase,
        pc: &PhaseConf,
        ex: &mut Exchange,
        route: usize,
    ) -> Option<Response<Body>> {
        let started = std::time::Instant::now();
        let result = self.call_request_phase(route, phase, pc, ex).await;
        self.record_call(route, phase, &result, started);
        // A body that failed during the call (a lazy read answered "not
        // available" to the runner) decides the answer, whatever the call
        // gave: the request must not go on without its body.
        if let Some(e) = ex.body.failure().cloned() {
            return Some(ex.body_failed(Side::Request, &e));
        }
        match result {
            Ok(RequestOutcome::Continue) => None,
            Ok(RequestOutcome::Stop(stop)) => {
                let route = ex.route.id.as_str();
                let map = match headers::map_from_plugin(stop.headers, route, Origin::Plugin) {
                    Ok(map) => map,
                    Err(e) => {
                        return Some(unapplicable(
                            route,
                            phase.name(),
                            &format!("its headers: {e}"),
                        ))
                    }
                };
                let len = stop.body.len();
                let mut resp = Response::new(full(Bytes::from(stop.body)));
                *resp.status_mut() = stop.status;
                *resp.headers_mut() = map;
                if !bodiless(&ex.head.method, stop.status) {
                    resp.headers_mut()
                        .insert(CONTENT_LENGTH, HeaderValue::from(len));
                }
                Some(resp)
            }
            Ok(RequestOutcome::Rewrite(rw)) => apply_rewrite(ex, rw, phase).err(),
            Err(PhaseError::Body(e)) => Some(ex.body_failed(Side::Request, &e)),
            Err(PhaseError::Call(e)) => self.call_failed(phase, pc, ex, e),
        }
    }

    /// Logs a failed call; the 503 answer, or `None` when degradation is
    /// allowed. A chain the runner refuses is a configuration error, not an
    /// unavailable runner: 500 naming the route, degradation or not (as in
    /// APISIX; going on without the plugins could skip an authentication),
    /// and not logged here (the client logs the refusal once per runner).
    fn call_failed(
        &self,
        phase: Phase,
        pc: &PhaseConf,
        ex: &Exchange,
        e: CallError,
    ) -> Option<Response<Body>> {
        if let CallError::ChainRefused(message) = &e {
            debug!(route = %ex.route.id, phase = phase.name(), cause = %message, "chain refused by the runner: 500");
            return Some(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "route {}: {} refused by the runner: {message}",
                    ex.route.id,
                    phase.name()
                ),
            ));
        }
        if pc.allow_degradation {
            metrics::degraded(&ex.route.id, phase.name());
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

    /// Counts a phase's runner call in the metrics: its result class and
    /// its time (token, body and EXTRA_INFO included). A body failure is the
    /// client's or the upstream's, not a runner call's: not counted.
    fn record_call<T>(
        &self,
        route: usize,
        phase: Phase,
        result: &Result<T, PhaseError>,
        started: std::time::Instant,
    ) {
        let class = match result {
            Ok(_) => metrics::CallResult::Ok,
            Err(PhaseError::Call(e)) => e.result(),
            Err(PhaseError::Body(_)) => return,
        };
        let index = match phase {
            Phase::PreReq => 0,
            Phase::PostReq => 1,
            Phase::PostResp => 2,
        };
        if let Some(handles) = self.route_metrics.get(route) {
            handles.runner_call(index, class, started.elapsed().as_secs_f64());
        }
    }

    async fn call_request_phase(
        &self,
        route: usize,
        phase: Phase,
        pc: &PhaseConf,
        ex: &mut Exchange,
    ) -> Result<RequestOutcome, PhaseError> {
        let handle = self.phase_handle(route, phase)?;
        let client = &*handle.client;
        let ticket = client.ticket_in(&handle.slot, pc).await?;
        let body = if ticket.needs.request_body {
            Some(ex.body.buffer().await?)
        } else {
            None
        };
        let args = parse_query(ex.head.uri.query());
        let lossy = lossy_values(&ex.head.headers);
        // Field by field, so that the body stays mutable for the provider.
        let ctx = VarCtx {
            head: &ex.head,
            original_uri: &ex.original_uri,
            peer: ex.peer,
            local: ex.local,
            route_id: &ex.route.id,
            request_id: ex.request_id,
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
            id: client.next_id(),
            src_ip: ex.peer.ip(),
            method: ex.head.method.clone(),
            path: ex.path.as_str(),
            args: args
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_deref()))
                .collect(),
            headers: header_pairs(&ex.head.headers, &lossy),
            extra_info,
        };
        let mut provider = RequestInfo {
            ctx,
            body: &mut ex.body,
        };
        Ok(client
            .call_request(pc, &ticket, parts, &mut provider)
            .await?)
    }

    /// Runs the response phase over the upstream's answer. `Err` is the
    /// answer to send instead (502 for a lost upstream body, 503).
    async fn response_phase(
        &self,
        pc: &PhaseConf,
        ex: &mut Exchange,
        head: &mut http::response::Parts,
        body: &mut MessageBody,
        route: usize,
    ) -> Result<(), Response<Body>> {
        let started = std::time::Instant::now();
        let result = self.call_response_phase(route, pc, ex, head, body).await;
        self.record_call(route, Phase::PostResp, &result, started);
        if let Some(e) = body.failure().cloned() {
            return Err(ex.body_failed(Side::Response, &e));
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(PhaseError::Body(e)) => return Err(ex.body_failed(Side::Response, &e)),
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
            head.headers = headers::map_from_plugin(headers, &ex.route.id, Origin::Plugin)
                .map_err(|e| {
                    unapplicable(
                        &ex.route.id,
                        Phase::PostResp.name(),
                        &format!("its headers: {e}"),
                    )
                })?;
        }
        if let Some(new_body) = outcome.body {
            body.replace(Bytes::from(new_body));
        }
        Ok(())
    }

    async fn call_response_phase(
        &self,
        route: usize,
        pc: &PhaseConf,
        ex: &mut Exchange,
        head: &http::response::Parts,
        body: &mut MessageBody,
    ) -> Result<crate::wire::ResponseOutcome, PhaseError> {
        let handle = self.phase_handle(route, Phase::PostResp)?;
        let client = &*handle.client;
        let ticket = client.ticket_in(&handle.slot, pc).await?;
        let resp_body = if ticket.needs.response_body {
            Some(body.buffer().await?)
        } else {
            None
        };
        let lossy = lossy_values(&head.headers);
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
            id: client.next_id(),
            status: head.status,
            headers: header_pairs(&head.headers, &lossy),
            extra_info,
        };
        let mut provider = ResponseInfo {
            ctx,
            req_body: ex.body.buffered(),
            body,
        };
        Ok(client
            .call_response(pc, &ticket, parts, &mut provider)
            .await?)
    }
}

/// The header values that are not UTF-8 text, made text (invalid bytes
/// replaced), in order: [`header_pairs`] takes them. Almost always none,
/// and then nothing is allocated.
fn lossy_values(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .iter()
        .filter(|(_, v)| std::str::from_utf8(v.as_bytes()).is_err())
        .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// A header map as the runner gets it: name and text pairs, borrowed from
/// the map, and from `lossy` (its [`lossy_values`]) for values that are not
/// UTF-8.
fn header_pairs<'a>(headers: &'a http::HeaderMap, lossy: &'a [String]) -> Vec<(&'a str, &'a str)> {
    let mut lossy = lossy.iter();
    headers
        .iter()
        .map(|(n, v)| {
            let text = match std::str::from_utf8(v.as_bytes()) {
                Ok(text) => text,
                Err(_) => lossy.next().map_or("", String::as_str),
            };
            (n.as_str(), text)
        })
        .collect()
}

/// EXTRA_INFO during a request phase: variables, and the request body (read
/// now if it was not yet). A body that cannot be read is "not available" to
/// the runner, and its failure decides the answer after the call.
struct RequestInfo<'a> {
    ctx: VarCtx<'a>,
    body: &'a mut MessageBody,
}

#[async_trait]
impl InfoProvider for RequestInfo<'_> {
    async fn provide(&mut self, key: InfoKey<'_>) -> Option<Bytes> {
        match key {
            InfoKey::Var(name) => vars::lookup(name, &self.ctx).map(Bytes::from),
            InfoKey::RequestBody => self.body.buffer().await.ok(),
            InfoKey::ResponseBody => None,
        }
    }
}

/// EXTRA_INFO during the response phase: variables, the request body if it
/// was read, and the upstream body (read now if it was not yet).
struct ResponseInfo<'a> {
    ctx: VarCtx<'a>,
    req_body: Option<Bytes>,
    body: &'a mut MessageBody,
}

#[async_trait]
impl InfoProvider for ResponseInfo<'_> {
    async fn provide(&mut self, key: InfoKey<'_>) -> Option<Bytes> {
        match key {
            InfoKey::Var(name) => vars::lookup(name, &self.ctx).map(Bytes::from),
            InfoKey::RequestBody => self.req_body.clone(),
            InfoKey::ResponseBody => self.body.buffer().await.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_are_the_values_as_text_in_order() {
        let mut map = http::HeaderMap::new();
        map.append("a", HeaderValue::from_static("1"));
        map.append("b", HeaderValue::from_bytes(b"x\xffy").unwrap());
        map.append("a", HeaderValue::from_static("2"));
        map.append("c", HeaderValue::from_bytes(b"\xfe").unwrap());
        let lossy = lossy_values(&map);
        let expect: Vec<(&str, String)> = map
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let got: Vec<(&str, String)> = header_pairs(&map, &lossy)
            .into_iter()
            .map(|(n, v)| (n, v.to_owned()))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(lossy.len(), 2);
        assert!(lossy_values(&http::HeaderMap::new()).is_empty());
    }
}
