//! Who may use the admin listener. It answers on a local address, but a
//! browser on the same machine is a way in: a page on any site can POST to
//! `http://127.0.0.1:9091/reload` (a "simple" cross-site request, sent
//! without asking), and DNS rebinding (a site's name made to resolve to
//! 127.0.0.1) lets its scripts read `/metrics`. So, as Docker, Jupyter and
//! the Kubernetes API do:
//!
//! - `Host` must name the listener: the address the request came to,
//!   `localhost` (with the port, or without), or a configured name
//!   (`admin.hosts`); a rebound name is refused (403). HTTP/1.1 without
//!   `Host` is 400; HTTP/1.0 (no browser sends it) needs none;
//! - a POST with an `Origin` must come from that same origin (403): a
//!   browser always sends `Origin` on a cross-site POST, `curl` none;
//! - with `admin.token`, every endpoint but `/healthz` and `/readyz` (for
//!   probes) wants `Authorization: Bearer <token>` (401).

use http::{header, Method, Request, StatusCode, Version};
use std::net::SocketAddr;

/// The admin listener's access rules.
#[derive(Clone, Default)]
pub struct AdminAccess {
    /// Names allowed in `Host` besides the listener's address and
    /// `localhost`, lower case.
    names: Vec<String>,
    token: Option<String>,
}

impl std::fmt::Debug for AdminAccess {
    /// Without the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess")
            .field("names", &self.names)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A request the admin listener refuses: its status and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 401 or 403.
    pub status: StatusCode,
    /// Why, for the answer and the log.
    pub message: String,
}

fn refuse(status: StatusCode, message: String) -> Result<(), Refusal> {
    Err(Refusal { status, message })
}

impl AdminAccess {
    /// Rules with these extra host names (`admin.hosts`) and token.
    pub fn new(names: &[String], token: Option<String>) -> Self {
        AdminAccess {
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            token,
        }
    }

    /// Whether `host` (lower case) names the listener reached at `local`.
    fn names_us(&self, host: &str, local: SocketAddr) -> bool {
        let port = local.port();
        let (name, given_port) = match host.rsplit_once(':') {
            // An IPv6 literal's colons are inside its brackets.
            Some((name, p)) if !p.contains(']') => (name, Some(p)),
            _ => (host, None),
        };
        if given_port.is_some_and(|p| p.parse() != Ok(port)) {
            return false;
        }
        let ip = local.ip();
        let literal = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        name == "localhost"
            || name == literal(ip)
            || name == literal(ip.to_canonical())
            || self.names.iter().any(|n| n == name)
    }

    /// Checks one request that came to `local`.
    ///
    /// # Errors
    /// The [`Refusal`] to answer with.
    pub fn check<B>(&self, req: &Request<B>, local: SocketAddr) -> Result<(), Refusal> {
        let host = match req.headers().get(header::HOST).map(|h| h.to_str()) {
            None if req.version() == Version::HTTP_10 => None,
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "an HTTP/1.1 request without a Host header".into(),
                )
            }
            Some(Err(_)) => return refuse(StatusCode::FORBIDDEN, "the Host is not text".into()),
            Some(Ok(h)) => Some(h.to_ascii_lowercase()),
        };
        if let Some(host) = &host {
            if !self.names_us(host, local) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!("Host {host:?} does not name this listener (add it to `admin.hosts`)"),
                );
            }
        }
        if req.method() == Method::POST {
            if let Some(origin) = req.headers().get(header::ORIGIN) {
                let same = host.as_ref().is_some_and(|h| {
                    origin
                        .as_bytes()
                        .eq_ignore_ascii_case(format!("http://{h}").as_bytes())
                });
                if !same {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        format!(
                            "a POST from another origin ({:?})",
                            String::from_utf8_lossy(origin.as_bytes())
                        ),
                    );
                }
            }
        }
        let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
        if let (Some(token), false) = (&self.token, probe) {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes()));
            if !given.is_some_and(|g| same_secret(g, token.as_bytes())) {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "this endpoint wants `Authorization: Bearer <admin.token>`".into(),
                );
            }
        }
        Ok(())
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110 section 11.1), and one or more spaces may
/// follow it.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii_start())
}

/// Compares a secret in a time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_must_name_the_listener() {
        let local: SocketAddr = "127.0.0.1:9091".parse().unwrap();
        let a = AdminAccess::new(&["Metrics.internal".into()], None);
        for ok in [
            "127.0.0.1:9091",
            "localhost:9091",
            "LOCALHOST",
            "metrics.internal",
            "metrics.internal:9091",
        ] {
            assert!(
                a.check(&req("GET", "/metrics", &[("host", ok)]), local)
                    .is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "evil.example:9091",
            "127.0.0.1:80",
            "localhost:1",
            "127.0.0.2:9091",
            "metrics.internal:1",
        ] {
            let r = a
                .check(&req("GET", "/metrics", &[("host", bad)]), local)
                .unwrap_err();
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{bad}");
        }
        let v6: SocketAddr = "[::1]:9091".parse().unwrap();
        assert!(a
            .check(&req("GET", "/", &[("host", "[::1]:9091")]), v6)
            .is_ok());
        let no_host = req("GET", "/metrics", &[]);
        assert_eq!(
            a.check(&no_host, local).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        let local: SocketAddr = "127.0.0.1:9091".parse().unwrap();
        let a = AdminAccess::default();
        let host = ("host", "127.0.0.1:9091");
        assert!(a.check(&req("POST", "/reload", &[host]), local).is_ok());
        let same = ("origin", "http://127.0.0.1:9091");
        assert!(a
            .check(&req("POST", "/reload", &[host, same]), local)
            .is_ok());
        for origin in ["http://evil.example", "null", "http://127.0.0.1:9092"] {
            let r = a.check(&req("POST", "/reload", &[host, ("origin", origin)]), local);
            assert_eq!(r.unwrap_err().status, StatusCode::FORBIDDEN, "{origin}");
        }
    }

    #[test]
    fn a_token_guards_all_but_the_probes() {
        let local: SocketAddr = "127.0.0.1:9091".parse().unwrap();
        let a = AdminAccess::new(&[], Some("s3cret-s3cret-s3cret".into()));
        let host = ("host", "localhost:9091");
        let good = ("authorization", "Bearer s3cret-s3cret-s3cret");
        for path in ["/healthz", "/readyz"] {
            assert!(a.check(&req("GET", path, &[host]), local).is_ok());
        }
        assert!(a
            .check(&req("GET", "/metrics", &[host, good]), local)
            .is_ok());
        for scheme in ["bearer", "BEARER", "Bearer  "] {
            let v = format!("{scheme} s3cret-s3cret-s3cret");
            let h = [host, ("authorization", v.as_str())];
            assert!(a.check(&req("GET", "/metrics", &h), local).is_ok(), "{v}");
        }
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearers3cret-s3cret-s3cret"),
            Some("Basic s3cret-s3cret-s3cret"),
            Some("s3cret-s3cret-s3cret"),
            Some("Bearer s3cret-s3cret-s3cre"),
        ] {
            let mut h = vec![host];
            h.extend(auth.map(|v| ("authorization", v)));
            let r = a.check(&req("GET", "/metrics", &h), local).unwrap_err();
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        }
    }
}
