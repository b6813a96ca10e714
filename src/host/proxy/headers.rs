//! The one header filter. Everything that leaves the proxy (the request to
//! the upstream, the answer to the client) and every header list a plugin
//! supplies (stop headers, rewrite headers, rewrite response headers,
//! response-phase headers) goes through `filter_map` or `from_plugin`.
//!
//! The proxy owns message framing: `content-length` and `transfer-encoding`
//! are always dropped here and set by the proxy from the body it actually
//! sends, so that no plugin (or upstream) can desynchronize a keep-alive
//! connection. Hop-by-hop headers and the names listed in `Connection`
//! never cross the proxy. Invalid names or values from a plugin are dropped
//! by the same code path.
//!
//! Drops of plugin-supplied headers are logged at `warn` with the route and
//! the name, and counted per reason ([`dropped`]); drops from ordinary
//! traffic (a client's `connection: keep-alive`) are routine, logged at
//! `debug` and not counted.

pub use crate::host::edge::ingress::{valid_host, MAX_PLUGIN_HEADERS};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{debug, warn};

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the common
/// non-standard `keep-alive` and `proxy-connection`).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Framing headers: the proxy sets them itself.
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// Response headers a plugin's rewrite may not add (PROTOCOL.md section 3),
/// beyond the framing and hop-by-hop ones.
const PROTECTED_RESP_HEADERS: [&str; 6] = [
    "connection",
    "content-encoding",
    "content-type",
    "location",
    "server",
    "www-authenticate",
];

/// Why a header was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `content-length` or `transfer-encoding`: the proxy sets framing.
    Framing,
    /// A hop-by-hop header.
    HopByHop,
    /// A name listed in the `Connection` header.
    ConnectionListed,
    /// Not a valid header name.
    InvalidName,
    /// Not a valid header value.
    InvalidValue,
    /// A response header a request-phase rewrite may not add.
    Protected,
}

impl DropReason {
    const ALL: [DropReason; 6] = [
        DropReason::Framing,
        DropReason::HopByHop,
        DropReason::ConnectionListed,
        DropReason::InvalidName,
        DropReason::InvalidValue,
        DropReason::Protected,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Framing => "framing",
            DropReason::HopByHop => "hop_by_hop",
            DropReason::ConnectionListed => "connection_listed",
            DropReason::InvalidName => "invalid_name",
            DropReason::InvalidValue => "invalid_value",
            DropReason::Protected => "protected",
        }
    }
}

/// Plugin-supplied headers dropped since start, per reason.
static DROPPED: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// How many plugin-supplied headers were dropped since the process
/// started, per reason (for metrics).
pub fn dropped() -> Vec<(DropReason, u64)> {
    DropReason::ALL
        .iter()
        .map(|&r| (r, DROPPED[r as usize].load(Ordering::Relaxed)))
        .collect()
}

/// Where a header list comes from, for logs and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A plugin's stop, rewrite or response-phase answer.
    Plugin,
    /// A plugin's rewrite `respHeaders`: also refuses protected names.
    PluginRespHeaders,
    /// The client's request or the upstream's answer.
    Traffic,
}

fn dropped_one(route: &str, origin: Origin, name: &str, reason: DropReason) {
    if origin == Origin::Traffic {
        debug!(
            route,
            header = name,
            reason = reason.name(),
            "header dropped"
        );
    } else {
        DROPPED[reason as usize].fetch_add(1, Ordering::Relaxed);
        crate::host::metrics::header_dropped(reason.name());
        warn!(
            route,
            header = name,
            reason = reason.name(),
            "plugin header dropped"
        );
    }
}

/// Names listed in the `Connection` values, sorted and without repeats (a
/// list: there are few, most often none, and a search costs less than
/// hashing every header's name; searched by halves, not scanned, as a
/// hostile peer or runner may list hundreds of thousands of names, and a
/// scan per header name would then take minutes).
fn connection_listed<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut listed: Vec<String> = values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if listed.len() > 1 {
        listed.sort_unstable();
        listed.dedup();
    }
    listed
}

/// The verdict on one (valid) name; `listed` is [`connection_listed`]'s.
fn verdict(name: &str, listed: &[String], origin: Origin) -> Option<DropReason> {
    if FRAMING.contains(&name) {
        Some(DropReason::Framing)
    } else if HOP_BY_HOP.contains(&name) {
        Some(DropReason::HopByHop)
    } else if !listed.is_empty() && listed.binary_search_by(|l| l.as_str().cmp(name)).is_ok() {
        Some(DropReason::ConnectionListed)
    } else if origin == Origin::PluginRespHeaders && PROTECTED_RESP_HEADERS.contains(&name) {
        Some(DropReason::Protected)
    } else {
        None
    }
}

/// Filters a header map in place (what goes to the upstream or back to the
/// client).
pub(crate) fn filter_map(headers: &mut HeaderMap, route: &str, origin: Origin) {
    let listed = connection_listed(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let drop: Vec<(HeaderName, DropReason)> = headers
        .keys()
        .filter_map(|n| verdict(n.as_str(), &listed, origin).map(|r| (n.clone(), r)))
        .collect();
    for (name, reason) in drop {
        dropped_one(route, origin, name.as_str(), reason);
        headers.remove(&name);
    }
}

/// Cleans the client's request headers on receipt, before any phase:
///
/// - names with `_` are dropped (nginx's default, so APISIX's): CGI, WSGI
///   and Rack upstreams read `x_user` and `x-user` as the same
///   `HTTP_X_USER`, so the client could override a header a plugin set;
/// - the client's `Connection` header is applied (RFC 9110 section 7.6.1):
///   the fields it names are removed, then the header itself. Left in
///   place, its list would also remove a header a plugin sets later (an
///   identity header for the upstream, say). The framing headers stay:
///   hyper has framed the body from them, and the proxy drops them when it
///   forwards.
pub(crate) fn from_client(headers: &mut HeaderMap, route: &str) {
    let underscored: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in underscored {
        debug!(
            route,
            header = name.as_str(),
            "client header with `_` dropped"
        );
        headers.remove(&name);
    }
    let listed = connection_listed(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    for name in listed {
        if FRAMING.contains(&name.as_str()) {
            continue;
        }
        let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if headers.remove(&parsed).is_some() {
            dropped_one(route, Origin::Traffic, &name, DropReason::ConnectionListed);
        }
    }
    headers.remove(http::header::CONNECTION);
}

/// The most headers a request leaves the request phases with: the client's
/// and two rewrites' (each within [`MAX_PLUGIN_HEADERS`]), with room left
/// below a map's capacity for what the host adds.
pub const MAX_MESSAGE_HEADERS: usize = 2 * MAX_PLUGIN_HEADERS;

/// A plugin's header list longer than [`MAX_PLUGIN_HEADERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} headers, over the bound ({MAX_PLUGIN_HEADERS} from a plugin, {MAX_MESSAGE_HEADERS} in a request)")]
pub(crate) struct TooManyHeaders(pub(crate) usize);

/// A plugin's header list the host cannot apply whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PluginHeaderError {
    /// More entries than [`MAX_PLUGIN_HEADERS`].
    #[error(transparent)]
    TooMany(#[from] TooManyHeaders),
    /// A name that is not an HTTP token, or a value with a control byte
    /// (CR, LF, NUL...). Refused rather than dropped: a rewrite's set is
    /// "remove, then add", so dropping it would leave the client's own
    /// header of that name in place (a forged `x-user` kept).
    #[error("header {name:?}: {why}")]
    Invalid {
        /// The name, as sent (its first 64 characters).
        name: String,
        why: &'static str,
    },
}

/// Parses and filters a plugin's header list (values `None` pass through:
/// they mean "delete" in a rewrite). Names are lower-cased. The framing,
/// hop-by-hop and `Connection`-listed names (and, for response headers, the
/// protected ones) are the host's: they are dropped, with a warning.
///
/// # Errors
/// The list has more than [`MAX_PLUGIN_HEADERS`] entries (nothing is
/// parsed then), or an invalid name or value: the caller refuses the whole
/// answer (500), never applies a part of it.
pub(crate) fn from_plugin<V: AsRef<str>>(
    pairs: impl IntoIterator<Item = (String, Option<V>)>,
    route: &str,
    origin: Origin,
) -> Result<Vec<(HeaderName, Option<HeaderValue>)>, PluginHeaderError> {
    let pairs: Vec<(String, Option<V>)> = pairs.into_iter().collect();
    if pairs.len() > MAX_PLUGIN_HEADERS {
        return Err(TooManyHeaders(pairs.len()).into());
    }
    let listed = connection_listed(
        pairs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .filter_map(|(_, v)| v.as_ref().map(|v| v.as_ref().as_bytes())),
    );
    let mut out = Vec::with_capacity(pairs.len());
    let invalid = |name: &str, why| PluginHeaderError::Invalid {
        name: name.chars().take(64).collect(),
        why,
    };
    for (name, value) in &pairs {
        let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
            dropped_one(route, origin, name, DropReason::InvalidName);
            return Err(invalid(name, "not a header name (an HTTP token)"));
        };
        if let Some(reason) = verdict(parsed.as_str(), &listed, origin) {
            dropped_one(route, origin, parsed.as_str(), reason);
            continue;
        }
        let value = match value {
            None => None,
            Some(v) => match crate::wire::checked_header_value(v.as_ref()) {
                Ok(v) => Some(v),
                Err(_) => {
                    dropped_one(route, origin, parsed.as_str(), DropReason::InvalidValue);
                    return Err(invalid(
                        parsed.as_str(),
                        "its value has a control character (CR, LF, NUL...)",
                    ));
                }
            },
        };
        out.push((parsed, value));
    }
    Ok(out)
}

/// [`from_plugin`] for a list where every value is set (stop and
/// response-phase headers): an append-ready map.
///
/// # Errors
/// As [`from_plugin`].
pub(crate) fn map_from_plugin(
    pairs: impl IntoIterator<Item = (String, String)>,
    route: &str,
    origin: Origin,
) -> Result<HeaderMap, PluginHeaderError> {
    let parsed = from_plugin(pairs.into_iter().map(|(n, v)| (n, Some(v))), route, origin)?;
    let mut map = HeaderMap::with_capacity(parsed.len());
    for (name, value) in parsed {
        if let Some(value) = value {
            // At most MAX_PLUGIN_HEADERS entries: far below what a map holds.
            append(&mut map, name, value)?;
        }
    }
    Ok(map)
}

/// Appends a header to `map`, which is full when it holds some 24 000
/// entries (`append` panics past that). The bounds on what clients,
/// upstreams and plugins may send keep maps far below that; this is the
/// last guard, an error rather than a panic.
///
/// # Errors
/// The map is full (the error gives its length).
pub(crate) fn append(
    map: &mut HeaderMap,
    name: HeaderName,
    value: HeaderValue,
) -> Result<(), TooManyHeaders> {
    map.try_append(name, value)
        .map(|_| ())
        .map_err(|_| TooManyHeaders(map.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_headers_than_a_plugin_may_send_are_refused_whole() {
        let pairs = |n| (0..n).map(|i| (format!("x-h{i}"), "v".to_owned()));
        let map = map_from_plugin(pairs(MAX_PLUGIN_HEADERS), "r", Origin::Plugin).unwrap();
        assert_eq!(map.len(), MAX_PLUGIN_HEADERS);
        for n in [MAX_PLUGIN_HEADERS + 1, 40_000] {
            let e = map_from_plugin(pairs(n), "r", Origin::Plugin).unwrap_err();
            assert_eq!(e, PluginHeaderError::TooMany(TooManyHeaders(n)));
        }
    }

    #[test]
    fn a_full_map_is_an_error_not_a_panic() {
        let mut map = HeaderMap::new();
        let full = (0..40_000).find_map(|i| {
            let name = HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap();
            append(&mut map, name, HeaderValue::from_static("v")).err()
        });
        assert!(full.is_some_and(|TooManyHeaders(n)| n > 20_000 && n < 40_000));
    }

    #[test]
    fn framing_hop_by_hop_listed_are_dropped_and_invalid_refused() {
        let before = dropped();
        let pairs = vec![
            ("Content-Length".to_owned(), "100".to_owned()),
            ("transfer-encoding".to_owned(), "chunked".to_owned()),
            ("connection".to_owned(), "x-secret, close".to_owned()),
            ("x-secret".to_owned(), "1".to_owned()),
            ("upgrade".to_owned(), "h2c".to_owned()),
            ("X-Kept".to_owned(), "yes".to_owned()),
            ("x-kept".to_owned(), "again".to_owned()),
        ];
        let with = |extra: (&str, &str)| {
            let mut p = pairs.clone();
            p.push((extra.0.to_owned(), extra.1.to_owned()));
            map_from_plugin(p, "r", Origin::Plugin)
        };
        let bad_name = with(("bad name", "v")).unwrap_err();
        assert_eq!(
            bad_name.to_string(),
            r#"header "bad name": not a header name (an HTTP token)"#
        );
        let bad_value = with(("x-bad-value", "a\nb")).unwrap_err();
        assert!(bad_value.to_string().contains("x-bad-value"), "{bad_value}");
        let map = map_from_plugin(pairs, "r", Origin::Plugin).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.get_all("x-kept").iter().collect::<Vec<_>>(),
            ["yes", "again"]
        );
        let after = dropped();
        let grew = |r: DropReason| {
            after.iter().find(|(x, _)| *x == r).unwrap().1
                - before.iter().find(|(x, _)| *x == r).unwrap().1
        };
        // Other tests may run at the same time: at least these.
        assert!(grew(DropReason::Framing) >= 2);
        assert!(grew(DropReason::HopByHop) >= 2);
        assert!(grew(DropReason::ConnectionListed) >= 1);
        assert!(grew(DropReason::InvalidName) >= 1);
        assert!(grew(DropReason::InvalidValue) >= 1);
    }

    /// RFC 9110 section 5.5: UTF-8 values from a plugin reach the message
    /// byte for byte; CR, LF, NUL and the other control bytes refuse the list.
    #[test]
    fn utf8_values_pass_byte_for_byte_and_line_breaks_are_refused() {
        let disposition = r#"attachment; filename="résumé.pdf""#;
        let pairs = vec![
            ("x-user".to_owned(), "José".to_owned()),
            ("content-disposition".to_owned(), disposition.to_owned()),
        ];
        for bad in ["a\r\nb", "a\0b"] {
            let mut p = pairs.clone();
            p.push(("x-bad".to_owned(), bad.to_owned()));
            assert!(map_from_plugin(p, "r", Origin::Plugin).is_err(), "{bad:?}");
        }
        let map = map_from_plugin(pairs, "r", Origin::Plugin).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["x-user"].as_bytes(), "José".as_bytes());
        assert_eq!(
            map["content-disposition"].as_bytes(),
            disposition.as_bytes()
        );
    }

    #[test]
    fn protected_response_headers_only_for_resp_headers() {
        let pairs = || vec![("content-type".to_owned(), "text/evil".to_owned())];
        let map = |origin| map_from_plugin(pairs(), "r", origin).unwrap();
        assert!(map(Origin::PluginRespHeaders).is_empty());
        assert_eq!(map(Origin::Plugin).len(), 1);
    }

    #[test]
    fn hosts_are_authorities_without_user_info_dots_or_bad_ports() {
        for ok in [
            "",
            "a.example",
            "a.example:8080",
            "h:",
            "[::1]:80",
            "[::1]",
            "1.2.3.4:65535",
            "Example.COM.:443",
            "a_b.example",
        ] {
            assert!(valid_host(&HeaderValue::from_static(ok)), "{ok:?}");
        }
        for bad in [
            "a b", "a/b", "user@h", "h:99999", "h:65536", "a..b", "[::1]:x", "h:-1", "a,b",
            "h:+80", "[name]", "*.a", "a:1:2", "[::1]x", "[::1", ".", "a.:80:",
        ] {
            assert!(!valid_host(&HeaderValue::from_static(bad)), "{bad:?}");
        }
    }

    #[test]
    fn a_map_loses_framing_and_connection_names() {
        let mut map = HeaderMap::new();
        map.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
        map.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        map.insert("x-hop", HeaderValue::from_static("1"));
        map.insert("content-length", HeaderValue::from_static("3"));
        map.insert("x-end", HeaderValue::from_static("1"));
        filter_map(&mut map, "r", Origin::Traffic);
        assert_eq!(
            map.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-end"]
        );
    }
}
