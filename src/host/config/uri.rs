//! The rules of a route's `uri`: the form requests are routed in.

/// Requests are routed by their normalized, decoded path
/// ([`crate::host::edge::path`]): a route URI in another form would never match,
/// and its requests would fall to a broader route, without this route's
/// plugins. Refuses percent escapes, `;`, a `*` before the end (a glob in
/// APISIX, which extplug does not match), and dot segments or repeated
/// slashes in whole segments (a prefix's last, partial segment may start
/// with a dot: `/.well-known*`).
pub(super) fn check_route_uri(uri: &str) -> Result<(), String> {
    let (text, star) = match uri.strip_suffix('*') {
        Some(prefix) => (prefix, "*"),
        None => (uri, ""),
    };
    if let Some(at) = text.find('*') {
        return Err(format!(
            "`uri` {uri:?} has a `*` at byte {at}: APISIX matches a `*` before the end as a glob (`/a/*/b`), extplug only a final `*`, as a prefix"
        ));
    }
    let b = text.as_bytes();
    let escape = (0..b.len()).find(|&i| {
        b[i] == b'%'
            && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    });
    if let Some(at) = escape {
        let hint = crate::host::edge::path::normalize(text)
            .map(|p| format!("; write {:?}", format!("{p}{star}")))
            .unwrap_or_default();
        return Err(format!(
            "`uri` {uri:?} has a percent escape at byte {at}, but routes match the decoded path{hint}"
        ));
    }
    if let Some(at) = text.find(';') {
        return Err(format!(
            "`uri` {uri:?} has a `;` at byte {at}: requests with `;` in the path are refused"
        ));
    }
    let whole = match text.rfind('/') {
        Some(i) if !star.is_empty() => &text[..=i],
        _ => text,
    };
    let normalized = crate::host::edge::path::normalize_decoded(whole)
        .map_err(|e| format!("`uri` {uri:?} is not a path a request can have: {e}"))?;
    if normalized.as_str() != whole {
        return Err(format!(
            "`uri` {uri:?} never matches: requests are routed by their normalized path; write {:?}",
            format!("{normalized}{}{star}", &text[whole.len()..])
        ));
    }
    Ok(())
}
