//! Request variables, with nginx/APISIX names, for EXTRA_INFO and prefetch.
//!
//! | name | value |
//! |---|---|
//! | `remote_addr`, `remote_port` | the client's address and port |
//! | `server_addr`, `server_port` | the address and port the proxy accepted on |
//! | `scheme` | `http`, or `https` on the TLS listener |
//! | `server_protocol` | `HTTP/1.1`, ... |
//! | `request_method` | the method |
//! | `request_uri` | the original request target, path and query, as received |
//! | `uri` | the current path, decoded (after rewrites of earlier phases) |
//! | `args`, `query_string` | the current query, raw (no `?`); `None` when empty |
//! | `host` | the `Host` header (or the target's authority) without port or trailing dot, lower case; else the server address |
//! | `content_type`, `content_length` | those headers |
//! | `http_<name>` | header `<name>` (`_` for `-`, any case); several values joined by `, ` |
//! | `arg_<name>` | the first value of query argument `<name>`, raw as in the query |
//! | `cookie_<name>` | cookie `<name>` |
//! | `route_id` | the matched route's id |
//! | `request_id` | a unique id of this request (32 hex digits) |
//!
//! Any other name has no value: the runner gets a null result, never an error.
//! A route's `vars` may name only these (`config::var_names` lists them).

use std::net::SocketAddr;

/// What variables are computed from.
#[derive(Debug)]
pub struct VarCtx<'a> {
    /// The request as it is now.
    pub head: &'a http::request::Parts,
    /// The request target as received.
    pub original_uri: &'a http::Uri,
    /// The client.
    pub peer: SocketAddr,
    /// The proxy's side of the connection.
    pub local: SocketAddr,
    /// The route.
    pub route_id: &'a str,
    /// This request's id.
    pub request_id: RequestId,
}

/// A request's unique id: a per-process prefix and a counter. Its text, 32
/// hex digits, is made only when a plugin asks for it, not for every
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    /// Random, per process.
    pub prefix: u64,
    /// Counts the process's requests.
    pub counter: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.prefix, self.counter)
    }
}

/// The value of variable `name`, if it has one.
pub fn lookup(name: &str, ctx: &VarCtx<'_>) -> Option<String> {
    let head = ctx.head;
    let header = |n: &str| -> Option<String> {
        let values: Vec<&str> = head
            .headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    match name {
        "remote_addr" => Some(ctx.peer.ip().to_canonical().to_string()),
        "remote_port" => Some(ctx.peer.port().to_string()),
        "server_addr" => Some(ctx.local.ip().to_canonical().to_string()),
        "server_port" => Some(ctx.local.port().to_string()),
        "scheme" => Some(
            if head
                .extensions
                .get::<crate::host::edge::ingress::OverTls>()
                .is_some()
            {
                "https"
            } else {
                "http"
            }
            .to_owned(),
        ),
        "server_protocol" => Some(format!("{:?}", head.version)),
        "request_method" => Some(head.method.as_str().to_owned()),
        "request_uri" => Some(
            ctx.original_uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
        ),
        "uri" => Some(
            percent_encoding::percent_decode_str(head.uri.path())
                .decode_utf8_lossy()
                .into_owned(),
        ),
        "args" | "query_string" => head
            .uri
            .query()
            .filter(|q| !q.is_empty())
            .map(str::to_owned),
        "host" => Some(
            match head
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
            {
                Some(host) => crate::host::edge::hostname::request_host(host),
                None => ctx.local.ip().to_canonical().to_string(),
            },
        ),
        "content_type" => header("content-type"),
        "content_length" => header("content-length"),
        "route_id" => Some(ctx.route_id.to_owned()),
        "request_id" => Some(ctx.request_id.to_string()),
        _ => {
            if let Some(h) = name.strip_prefix("http_") {
                header(&h.replace('_', "-").to_ascii_lowercase())
            } else if let Some(arg) = name.strip_prefix("arg_") {
                head.uri.query().and_then(|q| {
                    q.split('&').find_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k == arg).then(|| v.to_owned())
                    })
                })
            } else if let Some(cookie) = name.strip_prefix("cookie_") {
                head.headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        (k == cookie).then(|| v.to_owned())
                    })
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> (http::request::Parts, http::Uri) {
        let original = req.uri().clone();
        (req.into_parts().0, original)
    }

    /// A request from `[::ffff:10.0.0.1]:5555` on route `r1`.
    fn ctx_of<'a>(head: &'a http::request::Parts, original: &'a http::Uri) -> VarCtx<'a> {
        VarCtx {
            head,
            original_uri: original,
            peer: "[::ffff:10.0.0.1]:5555".parse().unwrap(),
            local: "127.0.0.1:9080".parse().unwrap(),
            route_id: "r1",
            request_id: RequestId {
                prefix: 0xab,
                counter: 7,
            },
        }
    }

    #[test]
    fn variables() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/a%20b?x=1&y=%41&x=2&flag")
            .header("host", "Example.COM:8080")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .header("cookie", "a=1; sid=abc")
            .body(())
            .unwrap();
        let (head, original) = parts(req);
        let ctx = ctx_of(&head, &original);
        let v = |n: &str| lookup(n, &ctx);
        assert_eq!(v("remote_addr").as_deref(), Some("10.0.0.1"));
        assert_eq!(v("remote_port").as_deref(), Some("5555"));
        assert_eq!(v("server_port").as_deref(), Some("9080"));
        assert_eq!(v("request_method").as_deref(), Some("POST"));
        assert_eq!(
            v("request_uri").as_deref(),
            Some("/a%20b?x=1&y=%41&x=2&flag")
        );
        assert_eq!(v("uri").as_deref(), Some("/a b"));
        assert_eq!(v("args").as_deref(), Some("x=1&y=%41&x=2&flag"));
        assert_eq!(v("host").as_deref(), Some("example.com"));
        assert_eq!(v("http_x_multi").as_deref(), Some("1, 2"));
        assert_eq!(v("arg_x").as_deref(), Some("1"));
        assert_eq!(v("arg_y").as_deref(), Some("%41"));
        assert_eq!(v("arg_flag").as_deref(), Some(""));
        assert_eq!(v("arg_none"), None);
        assert_eq!(v("cookie_sid").as_deref(), Some("abc"));
        assert_eq!(v("route_id").as_deref(), Some("r1"));
        assert_eq!(
            v("request_id").as_deref(),
            Some("00000000000000ab0000000000000007")
        );
        assert_eq!(v("no_such_var"), None);
    }

    /// Configuration refuses a `vars` name that `config::var_names` does
    /// not list: every name it lists must have a value here.
    #[test]
    fn every_name_configuration_accepts_has_a_value() {
        let req = http::Request::builder()
            .uri("/p?a=1")
            .header("host", "h")
            .header("content-type", "text/plain")
            .header("content-length", "0")
            .header("x-n", "1")
            .header("cookie", "NAME=1")
            .body(())
            .unwrap();
        let (head, original) = parts(req);
        let ctx = ctx_of(&head, &original);
        use crate::host::config::var_names::{computed, NAMED, PREFIXES};
        for name in NAMED {
            assert!(lookup(name, &ctx).is_some(), "{name} has no value");
        }
        for (prefix, rest) in PREFIXES.iter().zip(["x_n", "a", "NAME"]) {
            let name = format!("{prefix}{rest}");
            assert!(computed(&name));
            assert!(lookup(&name, &ctx).is_some(), "{name} has no value");
        }
        assert!(!computed("no_such_var"));
    }
}
