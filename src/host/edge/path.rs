//! Request path normalization: the one place where a request's path is
//! decoded, checked and made canonical, before it is routed, shown to the
//! runner and forwarded upstream.
//!
//! A route's plugins protect a path only if every component of the chain
//! agrees on what the path is. The proxy therefore normalizes once, at
//! ingress, and uses the result everywhere: the router matches it, the
//! runner receives it (decoded), and the upstream receives it re-encoded
//! canonically (so the upstream cannot decode it into something else).
//! The steps, in order:
//!
//! 1. The path must start with `/` (origin form).
//! 2. Each `/`-separated segment is percent-decoded **once**: `%252e`
//!    becomes the text `%2e` (a normal segment name), never `.`.
//!    A `%` not followed by two hex digits is an error.
//! 3. Rejected with an error (the proxy answers 400), because no choice
//!    would be safe for every upstream:
//!    - an encoded slash `%2F` (nginx decodes it into a separator, some
//!      upstreams keep it as data: either way someone routes differently);
//!    - a backslash, raw or `%5C` (a separator for some upstreams);
//!    - a `;` in the path (path parameters: Tomcat-style upstreams strip
//!      `;...` after we routed, so `/public/..;/admin` or `/admin;x/secret`
//!      would reach a path the router never saw); an encoded `%3B` is data
//!      and is forwarded encoded;
//!    - NUL and other control characters, decoded or not;
//!    - decoded bytes that are not UTF-8 (overlong forms like `%c0%ae`
//!      included);
//!    - a `..` that would climb above the root.
//! 4. Empty segments (repeated slashes) are merged, and the dot segments
//!    `.` and `..` (raw, encoded, in any case: `%2e`, `.%2E`, ...) are
//!    removed as RFC 3986 section 5.2.4 says. A trailing slash, or a
//!    trailing dot segment, leaves a trailing slash.
//!
//! The canonical encoding escapes every byte except the unreserved
//! characters and `! $ & ' ( ) * + , = : @` (RFC 3986 `pchar` without `;`).

use std::fmt;

/// A request path after [`normalize`]: decoded, without dot segments or
/// repeated slashes, starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// The decoded path; no segment holds a `/`, so it splits unambiguously.
    decoded: String,
}

impl NormalizedPath {
    /// The decoded path: what routes match and what the runner receives.
    pub fn as_str(&self) -> &str {
        &self.decoded
    }

    /// Whether `raw` (a request's path as received) is this path's
    /// canonical encoding already ([`NormalizedPath::encoded`] would give
    /// it back): then the request's target can be forwarded as it came.
    pub fn is_encoded_as(&self, raw: &str) -> bool {
        // Equal decoded text means `raw` had no escapes; kept bytes only
        // means encoding changes nothing.
        self.decoded == raw && raw.bytes().all(|b| b == b'/' || keeps(b))
    }

    /// The path re-encoded canonically, for the upstream's request line.
    pub fn encoded(&self) -> String {
        let mut out = String::with_capacity(self.decoded.len() + 8);
        for (i, segment) in self.decoded.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            for &b in segment.as_bytes() {
                if keeps(b) {
                    out.push(b as char);
                } else {
                    out.push('%');
                    out.push(HEX[(b >> 4) as usize] as char);
                    out.push(HEX[(b & 0xf) as usize] as char);
                }
            }
        }
        out
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.decoded)
    }
}

/// Why a path was refused. Each says what was wrong and at which byte of
/// the raw path (0-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with `/`")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("bad percent escape at byte {at}")]
    BadEscape {
        /// Offset of the `%`.
        at: usize,
    },
    /// `%2F`: an encoded slash is refused (it would route differently here
    /// and upstream).
    #[error("encoded slash (%2F) at byte {at} is not allowed")]
    EncodedSlash {
        /// Offset of the `%`.
        at: usize,
    },
    /// A backslash, raw or `%5C`: a separator for some upstreams.
    #[error("backslash at byte {at} is not allowed")]
    Backslash {
        /// Offset of the backslash or its escape.
        at: usize,
    },
    /// A raw `;` (path parameters are stripped by some upstreams after
    /// routing).
    #[error("path parameter (`;`) at byte {at} is not allowed")]
    Semicolon {
        /// Offset of the `;`.
        at: usize,
    },
    /// NUL or another control character, raw or decoded.
    #[error("control character {byte:#04x} at byte {at}")]
    Control {
        /// The decoded byte.
        byte: u8,
        /// Offset of the character or its escape.
        at: usize,
    },
    /// A segment whose decoded bytes are not UTF-8 (overlong forms included).
    #[error("segment at byte {at} does not decode to UTF-8 text")]
    InvalidUtf8 {
        /// Offset of the segment.
        at: usize,
    },
    /// A `..` that climbs above the root.
    #[error("`..` at byte {at} climbs above the root")]
    AboveRoot {
        /// Offset of the segment.
        at: usize,
    },
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes the canonical encoding keeps as they are.
fn keeps(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a raw request path (the URI's path, without the query); see
/// the module's documentation for the rules. Pure and panic-free.
///
/// # Errors
/// A [`PathError`] naming what cannot be made safe and where.
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if is_normal(raw) {
        return Ok(NormalizedPath {
            decoded: raw.to_owned(),
        });
    }
    normalize_slow(raw)
}

/// Whether `raw` is normalized and canonically encoded already (most
/// request paths are): bytes the encoding keeps and `/` only (so no escape,
/// no `;`, no control), no empty segment but a last one (a trailing
/// slash), no dot segment. [`normalize`] then gives it back as it is, and
/// does not build it segment by segment.
fn is_normal(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last)
            || segment == "."
            || segment == ".."
            || !segment.bytes().all(keeps)
        {
            return false;
        }
    }
    true
}

/// [`normalize`] without its shortcut for paths that are normal already:
/// every path built segment by segment. The same result as [`normalize`]
/// for every input; public so that the fuzz target can compare the two.
///
/// # Errors
/// As [`normalize`].
#[doc(hidden)]
pub fn normalize_slow(raw: &str) -> Result<NormalizedPath, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash;
    let mut start = 1;
    loop {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |p| start + p);
        let segment = decode_segment(&bytes[start..end], start)?;
        let last = end == bytes.len();
        match segment.as_str() {
            "" => trailing_slash = last,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot { at: start });
                }
                trailing_slash = true;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
        if last {
            break;
        }
        start = end + 1;
    }
    Ok(assemble(segments, trailing_slash))
}

/// Normalizes a path that is already decoded text (a plugin's rewrite):
/// the same dot-segment, slash and character rules as [`normalize`],
/// without percent-decoding (a `%` is data).
///
/// # Errors
/// A [`PathError`] naming what cannot be made safe and where.
pub fn normalize_decoded(path: &str) -> Result<NormalizedPath, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    let mut offset = 0;
    let parts: Vec<&str> = path[1..].split('/').collect();
    let count = parts.len();
    for (i, segment) in parts.into_iter().enumerate() {
        offset += 1;
        if let Some((at, &b)) = segment
            .as_bytes()
            .iter()
            .enumerate()
            .find(|(_, &b)| b.is_ascii_control() || b == b'\\')
        {
            return Err(if b == b'\\' {
                PathError::Backslash { at: offset + at }
            } else {
                PathError::Control {
                    byte: b,
                    at: offset + at,
                }
            });
        }
        let last = i + 1 == count;
        match segment {
            "" => trailing_slash = last,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot { at: offset });
                }
                trailing_slash = true;
            }
            _ => {
                segments.push(segment.to_owned());
                trailing_slash = false;
            }
        }
        offset += segment.len();
    }
    Ok(assemble(segments, trailing_slash))
}

fn assemble(segments: Vec<String>, trailing_slash: bool) -> NormalizedPath {
    let mut decoded = String::new();
    for s in &segments {
        decoded.push('/');
        decoded.push_str(s);
    }
    if decoded.is_empty() || trailing_slash {
        decoded.push('/');
    }
    NormalizedPath { decoded }
}

/// Decodes one raw segment that starts at byte `base` of the path.
fn decode_segment(raw: &[u8], base: usize) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let at = base + i;
        let b = match raw[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape { at });
                };
                i += 3;
                let b = hi << 4 | lo;
                match b {
                    b'/' => return Err(PathError::EncodedSlash { at }),
                    b'\\' => return Err(PathError::Backslash { at }),
                    _ => {}
                }
                b
            }
            b';' => return Err(PathError::Semicolon { at }),
            b'\\' => return Err(PathError::Backslash { at }),
            b => {
                i += 1;
                b
            }
        };
        if b.is_ascii_control() {
            return Err(PathError::Control { byte: b, at });
        }
        out.push(b);
    }
    String::from_utf8(out).map_err(|_| PathError::InvalidUtf8 { at: base })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String) {
        let p = normalize(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        (p.as_str().to_owned(), p.encoded())
    }

    #[test]
    fn dot_segments_and_slashes_are_resolved() {
        for (raw, decoded) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/public/../admin/x", "/admin/x"),
            ("/public/%2e%2e/admin/x", "/admin/x"),
            ("/public/%2E%2E/admin/x", "/admin/x"),
            ("/public/.%2e/admin/x", "/admin/x"),
            ("/public/%2e./admin/x", "/admin/x"),
            ("/%2e/admin/x", "/admin/x"),
            ("/..", "NO"),
        ] {
            if decoded == "NO" {
                assert!(normalize(raw).is_err(), "{raw}");
            } else {
                assert_eq!(ok(raw).0, decoded, "{raw}");
            }
        }
    }

    #[test]
    fn decoding_happens_once_and_reencoding_is_canonical() {
        assert_eq!(
            ok("/a/%252e%252e/b"),
            ("/a/%2e%2e/b".into(), "/a/%252e%252e/b".into())
        );
        assert_eq!(
            ok("/caf%C3%A9/a%20b/%3b/~x"),
            ("/café/a b/;/~x".into(), "/caf%C3%A9/a%20b/%3B/~x".into())
        );
        assert_eq!(ok("/%41%7e").1, "/A~");
        assert_eq!(ok("/a?b").1, "/a%3Fb");
    }

    #[test]
    fn unsafe_paths_are_refused_with_the_place() {
        assert_eq!(normalize("x"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a/%2fb"), Err(PathError::EncodedSlash { at: 3 }));
        assert_eq!(normalize("/a/b\\c"), Err(PathError::Backslash { at: 4 }));
        assert_eq!(normalize("/%5c"), Err(PathError::Backslash { at: 1 }));
        assert_eq!(normalize("/a;b"), Err(PathError::Semicolon { at: 2 }));
        assert_eq!(
            normalize("/a%00"),
            Err(PathError::Control { byte: 0, at: 2 })
        );
        assert_eq!(
            normalize("/%c0%ae%c0%ae/x"),
            Err(PathError::InvalidUtf8 { at: 1 })
        );
        assert_eq!(normalize("/a/%"), Err(PathError::BadEscape { at: 3 }));
        assert_eq!(normalize("/a/%g0"), Err(PathError::BadEscape { at: 3 }));
        assert_eq!(normalize("/a/../.."), Err(PathError::AboveRoot { at: 6 }));
        assert!(normalize("/a/%2")
            .unwrap_err()
            .to_string()
            .contains("byte 3"));
    }

    #[test]
    fn decoded_paths_follow_the_same_rules() {
        let p = normalize_decoded("/a/../b c/%2e/./").unwrap();
        assert_eq!(p.as_str(), "/b c/%2e/");
        assert_eq!(p.encoded(), "/b%20c/%252e/");
        assert_eq!(
            normalize_decoded("/../x"),
            Err(PathError::AboveRoot { at: 1 })
        );
        assert!(normalize_decoded("rel").is_err());
        assert!(normalize_decoded("/a\0").is_err());
    }

    #[test]
    fn normalizing_is_idempotent_and_encoding_round_trips() {
        // A small deterministic generator over the characters that matter.
        const PARTS: [&str; 16] = [
            "/", "//", ".", "..", "%2e", "%2E", "a", "%25", "%20", "%3b", "é", "%c3%a9", "~",
            "%41", "+", "%2",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut raw = String::from("/");
            for _ in 0..(state % 9) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                raw.push_str(PARTS[(state % 16) as usize]);
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            assert_eq!(normalize(&raw), normalize_slow(&raw), "{raw}");
            let Ok(p) = normalize(&raw) else { continue };
            checked += 1;
            // Sufficient, not necessary: `/%25` is canonical too.
            assert!(!p.is_encoded_as(&raw) || p.encoded() == raw, "{raw}");
            let again = normalize(&p.encoded()).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(again, p, "{raw}");
            assert_eq!(normalize_decoded(p.as_str()).unwrap(), p, "{raw}");
            assert!(
                !p.as_str().split('/').any(|s| s == "." || s == ".."),
                "{raw}"
            );
            assert!(!p.as_str().contains("//"), "{raw}");
        }
        assert!(checked > 1000, "only {checked} inputs were valid");
    }

    #[test]
    fn paths_normal_already_take_the_short_way_with_the_same_result() {
        for raw in [
            "/",
            "/a",
            "/a/",
            "/a/b.c/~d",
            "/a:b@c!$&'()*+,=",
            "/.a/..b/...",
        ] {
            assert!(is_normal(raw), "{raw}");
            assert_eq!(normalize(raw).unwrap().as_str(), raw);
            assert_eq!(normalize_slow(raw).unwrap().as_str(), raw);
            assert!(normalize(raw).unwrap().is_encoded_as(raw));
        }
        for raw in [
            "", "a", "//", "/a//b", "/.", "/a/..", "/./a", "/a%20b", "/a;b", "/a b", "/a\\b", "/é",
        ] {
            assert!(!is_normal(raw), "{raw}");
        }
    }

    /// Pieces that matter to the rules (dot segments in every encoding,
    /// encoded separators, path parameters, controls, overlong and invalid
    /// UTF-8, escapes of unreserved characters, bad escapes) and plain ones.
    const PIECES: &[&str] = &[
        "/", "//", ".", "..", "...", "%2e", "%2E", ".%2e", "%2e.", "%2f", "%2F", "%5c", "%5C",
        "\\", ";", "%3b", "%3B", "%00", "\0", "\u{1}", "\u{7f}", "%7f", "%c0%ae", "%c0%af", "%ff",
        "%41", "%7e", "%2d", "~", "a", "Z", "0", "é", "%c3%a9", "%", "%2", "%g0", "?", "#", " ",
        "%20", "+", "@", ":", "!", "'", "*", ",", "=", "$", "&", "(", "[", "]", "{", "|", "^", "`",
        "\"", "<", "%25", "%252e", "\t", "\n", "\r", "\u{85}", "\u{feff}",
    ];

    fn raw_paths() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            4 => proptest::sample::select(PIECES).prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ];
        (
            proptest::sample::select(&["/", "/", "/", "", "a", "%2f", "."][..]),
            proptest::collection::vec(piece, 0..12),
        )
            .prop_map(|(lead, pieces)| format!("{lead}{}", pieces.concat()))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// The shortcut never changes the outcome: a path it takes as
        /// normal is one that full normalization gives back unchanged (same
        /// decoded text, same canonical encoding, forwarded as it came),
        /// and every other path goes the full way.
        #[test]
        fn the_shortcut_agrees_with_full_normalization(raw in raw_paths()) {
            let full = normalize_slow(&raw);
            proptest::prop_assert_eq!(normalize(&raw), full.clone(), "{:?}", raw);
            if is_normal(&raw) {
                let full = full.expect("a path taken as normal is valid");
                proptest::prop_assert_eq!(full.as_str(), raw.as_str());
                proptest::prop_assert_eq!(full.encoded(), raw.clone());
                proptest::prop_assert!(full.is_encoded_as(&raw));
            }
        }
    }

    #[test]
    fn no_input_panics() {
        for raw in [
            "/%", "/%a", "/%%", "/é/%", "/\u{80}", "//..//..", "/./.", "/%ff",
        ] {
            let _ = normalize(raw);
            let _ = normalize_decoded(raw);
        }
    }
}
