//! A request-phase rewrite applied to the request whole, or not at all: a
//! plugin's answer is a security decision (it may remove `admin=1` from the
//! query), so one that cannot be applied entirely refuses the request.

use super::answer::{error_response, Body};
use super::exchange::Exchange;
use super::headers::{self, Origin};
use super::query::{rewrite_query, target, TargetError, MAX_TARGET};
use crate::host::config::Phase;
use crate::host::edge::path;
use crate::wire::Rewrite;
use bytes::Bytes;
use http::header::{HeaderName, HOST};
use http::{Response, StatusCode};
use tracing::{error, warn};

/// A plugin's answer the host cannot apply whole: the request is refused
/// (500 naming the route and the phase, as a refused chain is), never
/// forwarded with part of the answer applied: a plugin's decision is a
/// security decision (it may remove `admin=1` from the query).
pub(super) fn unapplicable(route: &str, phase: &str, why: &str) -> Response<Body> {
    error!(
        route,
        phase,
        cause = why,
        "the runner's answer cannot be applied: 500"
    );
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("route {route}: {phase}: the runner's answer cannot be applied: {why}"),
    )
}

/// Applies a request-phase rewrite to the request, whole or not at all.
/// `Err` is the answer instead: 414 when the client's own target made the
/// rewritten one too long for a URI, 500 for anything else the host cannot
/// apply (a path the router would refuse, an invalid `Host`, more headers
/// than a plugin may send).
pub(super) fn apply_rewrite(
    ex: &mut Exchange,
    rw: Rewrite,
    phase: Phase,
) -> Result<(), Response<Body>> {
    // The route's id, for logs, without copying it.
    let route_ref = ex.route.clone();
    let route = route_ref.id.as_str();
    let refuse = |why: String| unapplicable(route, phase.name(), &why);
    // Everything is checked before anything changes.
    let uri = if rw.path.is_some() || !rw.args.is_empty() {
        let new_path = match rw.path.as_deref().map(path::normalize_decoded) {
            None => ex.path.clone(),
            Some(Ok(p)) => p,
            Some(Err(e)) => return Err(refuse(format!("the rewritten path is refused: {e}"))),
        };
        let query = if rw.args.is_empty() {
            ex.head.uri.query().map(str::to_owned)
        } else {
            Some(rewrite_query(ex.head.uri.query(), &rw.args))
        };
        match target(&new_path, query.as_deref()) {
            Ok(uri) => Some((uri, new_path)),
            Err(e @ TargetError::TooLong(_)) => {
                // The rewrite's own part: its path (or `/`) and the
                // arguments it sets. If that fits, what the client sent
                // made the target too long: the client's fault, 414 (as
                // nginx answers a request line over its buffers).
                let own = rw.path.as_ref().map_or(1, |_| new_path.encoded().len())
                    + 1
                    + rewrite_query(None, &rw.args).len();
                if own <= MAX_TARGET {
                    warn!(route, cause = %e, "the client's target is too long for the runner's rewrite: 414");
                    return Err(error_response(
                        StatusCode::URI_TOO_LONG,
                        &format!("route {route}: the request target is too long for the route's rewrite: {e}"),
                    ));
                }
                return Err(refuse(format!("the rewritten target: {e}")));
            }
            Err(e) => return Err(refuse(format!("the rewritten target: {e}"))),
        }
    } else {
        None
    };
    let rewrites = headers::from_plugin(rw.headers, route, Origin::Plugin)
        .map_err(|e| refuse(format!("its headers: {e}")))?;
    let resp_headers = rw.resp_headers.into_iter().map(|(n, v)| (n, Some(v)));
    let resp_headers = headers::from_plugin(resp_headers, route, Origin::PluginRespHeaders)
        .map_err(|e| refuse(format!("its response headers: {e}")))?;
    // Both request phases' response headers together stay within one
    // plugin list's bound (the answer's map has room for them).
    let added = ex.resp_headers.len() + resp_headers.len();
    if added > headers::MAX_PLUGIN_HEADERS {
        return Err(refuse(format!(
            "response headers: {}",
            headers::TooManyHeaders(added)
        )));
    }
    // The Host the upstream would get, checked as a client's is (400 from
    // a client; from a plugin, 500): every value set (a later entry that
    // deletes does not undo an earlier set of the same list).
    let hosts = rewrites.iter().filter(|(n, _)| n == HOST);
    if let Some(value) = hosts
        .filter_map(|(_, v)| v.as_ref())
        .find(|v| !headers::valid_host(v))
    {
        return Err(refuse(format!("the Host {value:?} is not a host")));
    }
    if let Some((uri, new_path)) = uri {
        ex.head.uri = uri;
        ex.path = new_path;
    }
    // A rewrite sets a few headers: a list of the names replaced so far,
    // scanned. A runner may send thousands, though (a scan per header
    // would then take the proxy's thread for long): a set then.
    let mut few: Vec<HeaderName> = Vec::new();
    let mut many: std::collections::HashSet<HeaderName> = std::collections::HashSet::new();
    let is_many = rewrites.len() > 16;
    for (name, value) in rewrites {
        let first = if is_many {
            many.insert(name.clone())
        } else if few.contains(&name) {
            false
        } else {
            few.push(name.clone());
            true
        };
        if first {
            ex.head.headers.remove(&name);
        }
        if let Some(value) = value {
            headers::append(&mut ex.head.headers, name, value)
                .map_err(|e| refuse(format!("the request's headers: {e}")))?;
        }
    }
    // Two rewrites over the client's headers stay well within what a map
    // holds, with room for the forwarding headers.
    if ex.head.headers.len() > headers::MAX_MESSAGE_HEADERS {
        return Err(refuse(format!(
            "the request's headers: {}",
            headers::TooManyHeaders(ex.head.headers.len())
        )));
    }
    // One Host only (RFC 9112 section 3.2): a list that repeats it keeps
    // the last value, as a later "set" would.
    if ex.head.headers.get_all(HOST).iter().nth(1).is_some() {
        if let Some(last) = ex.head.headers.get_all(HOST).iter().next_back().cloned() {
            warn!(route = %route, "runner's rewrite set Host more than once; the last value is kept");
            ex.head.headers.insert(HOST, last);
        }
    }
    for (name, value) in resp_headers {
        if let Some(value) = value {
            ex.resp_headers.push((name, value));
        }
    }
    if let Some(body) = rw.body {
        ex.body.replace(Bytes::from(body));
    }
    Ok(())
}
