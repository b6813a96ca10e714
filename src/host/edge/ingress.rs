//! Checks every client request passes before anything else sees it, and the
//! forwarding headers the upstream gets. Pure functions: no I/O, no state.
//!
//! - [`check_method`]: a method the runner protocol cannot carry, and
//!   TRACE, are 405;
//! - [`check_transfer_encoding`]: a coding other than one final `chunked`
//!   is 501;
//! - [`framing_conflict`]: a request head with both `Content-Length` and
//!   `Transfer-Encoding` (a request-smuggling shape) is 400;
//! - [`forwarding_headers`]: `X-Forwarded-For` appended, `X-Real-IP`,
//!   `X-Forwarded-Proto` and `X-Forwarded-Host` set, as nginx and APISIX do.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use std::net::IpAddr;

/// The methods of PROTOCOL.md's `Method` enum, the only ones a runner can be
/// told about, but TRACE (refused on every route): the `Allow` header of a
/// 405.
pub const CARRIED_METHODS: &str =
    "GET, HEAD, POST, PUT, DELETE, MKCOL, COPY, MOVE, OPTIONS, PROPFIND, PROPPATCH, LOCK, UNLOCK, PATCH";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// In a request's extensions: it came over the TLS listener (the `scheme`
/// variable is `https`, and so is `X-Forwarded-Proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverTls;

/// HTTP/2's `:authority` as the request's `Host`, for everything after the
/// door (routes' hosts, plugins' `host`, the upstream): an HTTP/2 request's
/// target carries its authority (which wins over a `host` field, as an
/// HTTP/1.1 absolute-form target's does) and usually has no `host` field.
/// Requests of other versions are left as they are.
///
/// # Errors
/// 400 for an HTTP/2 request with neither `:authority` nor `host` (RFC
/// 9113 section 8.3.1: a client must send one), or whose authority is not
/// a header value.
pub fn http2_host<B>(req: &mut http::Request<B>) -> Result<(), Rejection> {
    if req.version() != http::Version::HTTP_2 {
        return Ok(());
    }
    let refuse = |message: &str| Rejection {
        status: StatusCode::BAD_REQUEST,
        message: message.to_owned(),
        close: false,
    };
    match req.uri().authority() {
        Some(authority) => {
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| refuse("the :authority is not a host"))?;
            req.headers_mut().insert(http::header::HOST, value);
            Ok(())
        }
        None if req.headers().contains_key(http::header::HOST) => Ok(()),
        None => Err(refuse("an HTTP/2 request without :authority or host")),
    }
}

/// A request refused at the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status to answer with.
    pub status: StatusCode,
    /// What was wrong, for the client (`error_msg`) and the log.
    pub message: String,
    /// Close the connection after the answer: the rest of the byte stream
    /// cannot be trusted to be framed as the client meant.
    pub close: bool,
}

impl Rejection {
    /// The answer: APISIX's JSON error shape, `Allow` on a 405,
    /// `Connection: close` when the connection must end.
    pub fn into_response<E>(self) -> Response<BoxBody<Bytes, E>> {
        let body = serde_json::json!({ "error_msg": self.message }).to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, HeaderValue::from_static(CARRIED_METHODS));
        }
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Whether `method` is made of upper-case letters, `_` and `-` only, as
/// nginx requires of a method.
pub fn method_is_upper_case(method: &str) -> bool {
    method
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
}

/// Refuses (400) a method that is not in upper case, and (405) one that
/// PROTOCOL.md's `Method` enum cannot carry:
/// the runner could not be told what the request is. `CONNECT` is one.
/// TRACE is 405 too, on every route, as nginx answers it: an upstream
/// that echoes the request would show the client the headers plugins
/// added (an identity, a secret), cross-site tracing.
///
/// # Errors
/// The [`Rejection`] to answer with, naming the method.
pub fn check_method(method: &Method) -> Result<(), Rejection> {
    if !method_is_upper_case(method.as_str()) {
        // nginx's answer: some upstream frameworks upper-case methods, so
        // `get` must not dodge a route limited to `GET`.
        return Err(Rejection {
            status: StatusCode::BAD_REQUEST,
            message: format!("method {:?} is not in upper case", method.as_str()),
            close: false,
        });
    }
    if method != Method::TRACE && crate::wire::message::method_to_schema(method).is_some() {
        return Ok(());
    }
    if method == Method::TRACE {
        return Err(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method TRACE is not allowed: it would echo the headers plugins add".into(),
            close: false,
        });
    }
    Err(Rejection {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "method {method} is not supported: the plugin protocol carries only {CARRIED_METHODS}"
        ),
        close: false,
    })
}

/// Refuses (501, connection closed) a request whose `Transfer-Encoding` is
/// not exactly `chunked`, as nginx does: hyper frames a body whose last
/// coding is `chunked` and hands on what the other codings made of it
/// (`gzip, chunked`), which the proxy would forward as plain bytes with
/// the coding forgotten. The connection closes: its body is not read.
///
/// # Errors
/// The [`Rejection`] to answer with, naming the codings.
pub fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Rejection> {
    let mut codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    let Some(first) = codings.next() else {
        return Ok(());
    };
    if first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none() {
        return Ok(());
    }
    let all: Vec<String> = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    Err(Rejection {
        status: StatusCode::NOT_IMPLEMENTED,
        message: format!(
            "Transfer-Encoding {:?} is not supported: only \"chunked\" is",
            all.join(", ")
        ),
        close: true,
    })
}

/// Refuses (400, connection closed) a request whose head, as the client
/// sent it, has both `Content-Length` and `Transfer-Encoding`.
///
/// `conflict` is [`framing_conflict`] over the raw head: hyper drops the
/// `Content-Length` of such a request before the proxy sees it.
///
/// # Errors
/// The [`Rejection`] to answer with.
pub fn check_framing(conflict: bool) -> Result<(), Rejection> {
    if !conflict {
        return Ok(());
    }
    Err(Rejection {
        status: StatusCode::BAD_REQUEST,
        message: "the request has both Content-Length and Transfer-Encoding".into(),
        close: true,
    })
}

/// Whether a raw request head (request line and header lines, as read from
/// the socket) has both a `Content-Length` and a `Transfer-Encoding` line.
/// Names compare case-insensitively; lines that are not `name: value` are
/// skipped (hyper judges those).
pub fn framing_conflict(head: &[u8]) -> bool {
    let (mut cl, mut te) = (false, false);
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        cl |= name.eq_ignore_ascii_case(b"content-length");
        te |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    cl && te
}

/// Sets the headers that tell the upstream who the client is, as nginx and
/// APISIX do: `X-Forwarded-For` gets `peer` appended to every value the
/// client sent (all lines joined, in order), `X-Real-IP` is `peer`,
/// `X-Forwarded-Proto` is `http` (`https` when `https`, the request came
/// over TLS), and `X-Forwarded-Host` is the client's
/// `host` (removed when the client sent none, so that a client cannot pose
/// as another host by sending only `X-Forwarded-Host`).
pub fn forwarding_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    host: Option<&HeaderValue>,
    https: bool,
) {
    let mut ip = Vec::with_capacity(39);
    ip_text(peer.to_canonical(), &mut ip);
    // The usual case, no X-Forwarded-For from the client: one value for
    // both headers, formatted once.
    let real_ip = HeaderValue::from_bytes(&ip).ok();
    let mut xff: Vec<u8> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            xff.extend_from_slice(value);
            xff.extend_from_slice(b", ");
        }
    }
    // The client's values were valid header values and the joiner is too.
    let forwarded_for = if xff.is_empty() {
        real_ip.clone()
    } else {
        xff.extend_from_slice(&ip);
        HeaderValue::from_bytes(&xff).ok()
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Some(v) = real_ip {
        headers.insert(X_REAL_IP, v);
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Appends `ip` as text (as its `Display` does: dotted quad, RFC 5952
/// for IPv6); IPv4 without the formatting machinery, which costs more than
/// the rest of the forwarding headers together.
fn ip_text(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec does not fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// The most entries a plugin's header list may have (a stop's, a rewrite's,
/// its response headers, a response phase's). A header map holds some
/// 24 000 entries at most and panics past that; a request's map holds the
/// client's headers (at most `max_request_headers`, 8192) and a rewrite's,
/// and the host adds a few: 8192 leaves room for all of them. A runner
/// that sends more is refused whole (500), never cut: a cut list could
/// lose the deletion of a header a plugin meant to remove.
pub const MAX_PLUGIN_HEADERS: usize = 8192;

/// Whether a `Host` value is a host: empty (RFC 9112 allows it), or a host
/// name (letters, digits, `-` and `_` in dot-separated labels, a trailing dot
/// allowed), an IPv4 address or a bracketed IPv6 address, then an optional
/// `:port` of digits up to 65535 (or empty, as RFC 9110 allows). Stricter than nginx's
/// `ngx_http_validate_host` on purpose: a path, user info, `..`, spaces, a
/// list (`a,b`) or a signed port would reach upstreams that build file paths
/// or links from it, and routes match host names of this form only
/// ([`super::hostname`]).
pub fn valid_host(value: &HeaderValue) -> bool {
    let Ok(host) = value.to_str() else {
        return false;
    };
    if host.is_empty() {
        return true;
    }
    let after_literal = host.rfind(']').map_or(0, |end| end + 1);
    let (name, port) = match host[after_literal..].find(':') {
        Some(at) => (
            &host[..after_literal + at],
            Some(&host[after_literal + at + 1..]),
        ),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| {
        // RFC 9110 allows an empty port (`h:`).
        p.is_empty()
            || (p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65535))
    });
    let name = name.strip_suffix('.').unwrap_or(name);
    port_ok
        && matches!(
            super::hostname::HostPattern::parse(name),
            Ok(super::hostname::HostPattern::Exact(_))
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_text_is_the_display_text() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "192.168.9.99",
            "255.255.255.255",
            "::1",
            "2001:db8::8:800:200c:417a",
        ]
        .into_iter()
        .map(|ip| ip.parse::<IpAddr>().unwrap())
        .chain((0..=255).map(|o| IpAddr::from([o, 0, o, 9])))
        {
            let mut out = Vec::new();
            ip_text(ip, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    use super::*;

    #[test]
    fn methods_outside_the_protocol_are_405_with_allow() {
        for m in ["GET", "PROPFIND", "PATCH"] {
            assert!(check_method(&Method::from_bytes(m.as_bytes()).unwrap()).is_ok());
        }
        for m in ["CONNECT", "PURGE", "BREW", "TRACE"] {
            let r = check_method(&Method::from_bytes(m.as_bytes()).unwrap()).unwrap_err();
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
            assert!(r.message.contains(m), "{}", r.message);
            let resp = r.into_response::<std::convert::Infallible>();
            assert_eq!(resp.headers()[ALLOW], CARRIED_METHODS);
        }
    }

    #[test]
    fn only_one_chunked_coding_is_accepted() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            check_transfer_encoding(&h)
        };
        for ok in [&[][..], &["chunked"], &["Chunked "], &["chunked,"]] {
            assert!(te(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, chunked"],
            &["identity"],
            &["chunked", "gzip"],
        ] {
            let r = te(bad).unwrap_err();
            assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{bad:?}");
            assert!(r.close && r.message.contains(bad[0]), "{}", r.message);
        }
    }

    #[test]
    fn an_http2_authority_is_the_host() {
        let mut req = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("https://a.example:8443/x")
            .header("host", "other")
            .body(())
            .unwrap();
        http2_host(&mut req).unwrap();
        assert_eq!(req.headers()[http::header::HOST], "a.example:8443");
        let mut bare = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("/x")
            .body(())
            .unwrap();
        assert_eq!(
            http2_host(&mut bare).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let mut h1 = http::Request::builder().uri("/x").body(()).unwrap();
        assert!(http2_host(&mut h1).is_ok(), "HTTP/1.1 is the pipeline's");
    }

    #[test]
    fn framing_conflict_needs_both_headers_in_any_case_and_order() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\nContent-LENGTH: 5\r\n\r\n";
        assert!(framing_conflict(both));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nx-content-length: 5\r\n\r\n"
        ));
        // The request line is not a header, whatever its target says.
        assert!(!framing_conflict(
            b"POST /content-length:1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        let r = check_framing(true).unwrap_err();
        assert!(r.close && r.status == StatusCode::BAD_REQUEST);
        let resp = r.into_response::<std::convert::Infallible>();
        assert_eq!(resp.headers()[CONNECTION], "close");
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        h.insert(X_REAL_IP, HeaderValue::from_static("9.9.9.9"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("example.com:8080");
        forwarding_headers(
            &mut h,
            "::ffff:10.0.0.1".parse().unwrap(),
            Some(&host),
            false,
        );
        let all: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"]);
        assert_eq!(h[X_REAL_IP], "10.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "example.com:8080");

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        forwarding_headers(&mut h, "::1".parse().unwrap(), None, true);
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }
}
