//! The request path normalizer, fed arbitrary text: a path or an error,
//! never a panic; an accepted path is canonical (starts with `/`, no empty,
//! `.` or `..` segment, no NUL) and normalizing its encoded form gives it back;
//! the shortcut for paths that are normal already agrees with normalizing
//! segment by segment, on every input.
#![no_main]

use extplug::host::edge::path::{normalize, normalize_slow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let result = normalize(raw);
    assert_eq!(result, normalize_slow(raw), "{raw:?}");
    let Ok(path) = result else {
        return;
    };
    let decoded = path.as_str();
    assert!(decoded.starts_with('/'), "{raw:?} -> {decoded:?}");
    assert!(!decoded.contains('\0'), "{raw:?} -> {decoded:?}");
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(*s != "." && *s != "..", "{raw:?} -> {decoded:?}");
        // Only the last segment may be empty (a trailing slash).
        assert!(!s.is_empty() || i == segments.len() - 1, "{raw:?} -> {decoded:?}");
    }
    let encoded = path.encoded();
    assert_eq!(normalize(&encoded).as_ref(), Ok(&path), "{raw:?} -> {encoded:?}");
});
