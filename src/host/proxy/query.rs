//! The query string and the request target: argument parsing for the
//! runner, argument rewrites, and the origin-form target sent upstream.

use crate::host::edge::path::NormalizedPath;
use http::Uri;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use std::collections::HashSet;

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

/// One query component decoded (`+` is a space; invalid UTF-8 replaced).
fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Query arguments, one entry per value, decoded (`+` is a space);
/// `None` for an argument without `=`. Empty segments are skipped.
pub(crate) fn parse_query(query: Option<&str>) -> Vec<(String, Option<String>)> {
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
pub(crate) fn rewrite_query(query: Option<&str>, changes: &[(String, Option<String>)]) -> String {
    let names: HashSet<&str> = changes.iter().map(|(n, _)| n.as_str()).collect();
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

/// The longest request target a [`Uri`] holds (the `http` crate's bound).
pub(crate) const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Why a request target cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    /// Longer than [`MAX_TARGET`] bytes.
    #[error("the request target would be {0} bytes, over the {MAX_TARGET} a URI may have")]
    TooLong(usize),
    /// Not a URI.
    #[error("invalid request target: {0}")]
    Invalid(String),
}

/// The origin-form target for `path` (encoded canonically) and `query`
/// (as it is; an empty query is left out).
///
/// # Errors
/// Too long, or the query holds characters a URI cannot.
pub(crate) fn target(path: &NormalizedPath, query: Option<&str>) -> Result<Uri, TargetError> {
    let encoded = path.encoded();
    let pq = match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("{encoded}?{q}"),
        None => encoded,
    };
    if pq.len() > MAX_TARGET {
        return Err(TargetError::TooLong(pq.len()));
    }
    pq.parse::<Uri>()
        .map_err(|e| TargetError::Invalid(e.to_string()))
}

/// The origin-form target for `path` and `uri`'s query: `uri` itself when
/// it is that already (origin form, its path `path`'s canonical encoding,
/// no empty query), as for most requests; else [`target`].
///
/// # Errors
/// As [`target`].
pub(crate) fn target_of(path: &NormalizedPath, uri: &Uri) -> Result<Uri, TargetError> {
    if uri.scheme().is_none()
        && uri.authority().is_none()
        && uri.query() != Some("")
        && path.is_encoded_as(uri.path())
    {
        return Ok(uri.clone());
    }
    target(path, uri.query())
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

    #[test]
    fn a_target_canonical_already_is_kept_and_others_are_rebuilt() {
        for raw in [
            "/a/b?x=1",
            "/a/b",
            "/a/b?",
            "/a/./b?x",
            "/a%2Db",
            "/a%20b?y=%20",
            "http://h/a?q",
            "/",
        ] {
            let uri: Uri = raw.parse().unwrap();
            let p = crate::host::edge::path::normalize(uri.path()).unwrap();
            assert_eq!(
                target_of(&p, &uri).unwrap(),
                target(&p, uri.query()).unwrap(),
                "{raw}"
            );
        }
    }

    #[test]
    fn the_target_is_canonical() {
        let p = crate::host::edge::path::normalize("/a/../b%20c/").unwrap();
        assert_eq!(target(&p, Some("x=1")).unwrap().to_string(), "/b%20c/?x=1");
        assert_eq!(target(&p, Some("")).unwrap().to_string(), "/b%20c/");
    }

    #[test]
    fn a_target_over_the_uri_bound_is_too_long() {
        let p = crate::host::edge::path::normalize("/a").unwrap();
        let fits = "q".repeat(MAX_TARGET - "/a?".len());
        assert_eq!(
            target(&p, Some(&fits)).unwrap().to_string().len(),
            MAX_TARGET
        );
        let over = format!("{fits}q");
        assert_eq!(
            target(&p, Some(&over)),
            Err(TargetError::TooLong(MAX_TARGET + 1))
        );
        assert!(matches!(
            target(&p, Some("a b")),
            Err(TargetError::Invalid(_))
        ));
    }
}
