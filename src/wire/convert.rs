//! What plugin code types for a status, a header name or a header value, and
//! how it becomes the checked HTTP value.
//!
//! Builders ([`crate::wire::Stop`], and the request and response views of
//! `runner-sdk`) take `impl IntoStatus`, `impl IntoHeaderName` and
//! `impl IntoHeaderValue`, so `Stop::new(403)`, `Stop::new(StatusCode::FORBIDDEN)`,
//! `.header("x-reason", "denied")` and `.header(http::header::RETRY_AFTER, 30)`
//! all compile. A value that is not valid HTTP is not a compile error and not
//! a panic: the builder keeps an [`InvalidValue`], and the runner fails the
//! call with it, naming the plugin.

use http::{HeaderName, HeaderValue, StatusCode};

/// A status, header name or header value that is not valid HTTP: what it was
/// for, the value as given, and why it was refused.
///
/// ```
/// use extplug::wire::IntoStatus;
/// let err = 1000.into_status().unwrap_err();
/// assert_eq!(err.to_string(), "invalid status 1000: a status is a number in 100..=999");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value}: {reason}")]
pub struct InvalidValue {
    what: &'static str,
    value: String,
    reason: String,
}

impl InvalidValue {
    /// An error for `value` (shown as given) used as a `what` (`"status"`,
    /// `"header name"`, ...), refused because of `reason`.
    pub fn new(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidValue {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// What the value was for: `"status"`, `"header name"`, `"header value"`
    /// or `"JSON body of type"` (for `Stop::json`, the value being the type's name).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The refused value, as given (strings quoted, as Rust's `{:?}` shows them).
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// A value usable as an HTTP status: `http::StatusCode` (or a reference to one)
/// and the integer types (`403`, whose type defaults to `i32`, `403u16`...).
///
/// ```
/// use extplug::wire::IntoStatus;
/// use http::StatusCode;
/// assert_eq!(403.into_status(), Ok(StatusCode::FORBIDDEN));
/// assert_eq!(StatusCode::OK.into_status(), Ok(StatusCode::OK));
/// assert!((-1).into_status().is_err());
/// ```
pub trait IntoStatus {
    /// The status.
    ///
    /// # Errors
    /// An [`InvalidValue`] for an integer outside 100..=999 (the range an
    /// HTTP status can have; the protocol further limits what a plugin may
    /// answer with to [`crate::wire::ALLOWED_STATUS`]).
    fn into_status(self) -> Result<StatusCode, InvalidValue>;
}

impl IntoStatus for StatusCode {
    fn into_status(self) -> Result<StatusCode, InvalidValue> {
        Ok(self)
    }
}

impl IntoStatus for &StatusCode {
    fn into_status(self) -> Result<StatusCode, InvalidValue> {
        Ok(*self)
    }
}

/// Implements [`IntoStatus`] for integer types.
macro_rules! int_status {
    ($($t:ty),*) => {$(
        impl IntoStatus for $t {
            fn into_status(self) -> Result<StatusCode, InvalidValue> {
                u16::try_from(self)
                    .ok()
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .ok_or_else(|| {
                        InvalidValue::new("status", self.to_string(), "a status is a number in 100..=999")
                    })
            }
        }
    )*};
}
int_status!(u16, u32, u64, usize, i16, i32, i64);

/// A value usable as a header name: a string (`&str`, `String`, `&String`)
/// or an `http::HeaderName`. Names are case-insensitive and kept in lower
/// case.
///
/// ```
/// use extplug::wire::IntoHeaderName;
/// assert_eq!("X-Reason".into_header_name().unwrap(), "x-reason");
/// assert_eq!(http::header::RETRY_AFTER.into_header_name().unwrap(), "retry-after");
/// let err = "x reason".into_header_name().unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid header name "x reason": not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"#);
/// ```
pub trait IntoHeaderName {
    /// The header name, in lower case.
    ///
    /// # Errors
    /// An [`InvalidValue`] for a name that is empty or has a character an
    /// HTTP header name cannot have (a space, a colon, a control character...).
    fn into_header_name(self) -> Result<String, InvalidValue>;
}

/// Checks a header name given as text and lower-cases it.
fn name_from_str(name: &str) -> Result<String, InvalidValue> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) => Ok(name.as_str().to_owned()),
        Err(_) => Err(InvalidValue::new(
            "header name",
            format!("{name:?}"),
            if name.is_empty() {
                "a header name cannot be empty"
            } else {
                "not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
            },
        )),
    }
}

impl<T: AsRef<str> + ?Sized> IntoHeaderName for &T {
    fn into_header_name(self) -> Result<String, InvalidValue> {
        name_from_str(self.as_ref())
    }
}

impl IntoHeaderName for String {
    fn into_header_name(self) -> Result<String, InvalidValue> {
        name_from_str(&self)
    }
}

impl IntoHeaderName for HeaderName {
    fn into_header_name(self) -> Result<String, InvalidValue> {
        // Already checked and lower case.
        Ok(self.as_str().to_owned())
    }
}

/// A value usable as a header value: a string (`&str`, `String`, `&String`),
/// an `http::HeaderValue`, or an integer (`30` for `retry-after`).
///
/// ```
/// use extplug::wire::IntoHeaderValue;
/// assert_eq!("no entry".into_header_value().unwrap(), "no entry");
/// assert_eq!(30.into_header_value().unwrap(), "30");
/// let err = "a\r\nb".into_header_value().unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid header value "a\r\nb": a header value cannot have control characters other than tab"#);
/// ```
pub trait IntoHeaderValue {
    /// The header value as text.
    ///
    /// # Errors
    /// An [`InvalidValue`] for a value with a control character (CR, LF,
    /// NUL...; a tab is allowed), or an `http::HeaderValue` that is not
    /// UTF-8.
    fn into_header_value(self) -> Result<String, InvalidValue>;
}

/// The one check of a header value that a plugin gives (in a stop, a
/// rewrite or a response-phase answer), on both sides of the wire: the
/// runner's SDK checks it when the plugin sets it, the host again when it
/// builds the HTTP message from the runner's answer.
///
/// RFC 9110 section 5.5: a field value is visible ASCII, space, tab and
/// obs-text (bytes 0x80-0xFF), so UTF-8 text such as `José` passes through
/// byte for byte, as nginx and APISIX pass it; CR, LF, NUL, DEL and the other
/// control characters (tab aside) are refused, since they would split or
/// end the header.
///
/// ```
/// use extplug::wire::checked_header_value;
/// assert_eq!(checked_header_value("José").unwrap().as_bytes(), "José".as_bytes());
/// assert!(checked_header_value("a\r\nb").is_err());
/// ```
///
/// # Errors
/// An [`InvalidValue`] (`"header value"`, the value quoted) for a value
/// with a control character other than tab.
pub fn checked_header_value(value: &str) -> Result<HeaderValue, InvalidValue> {
    // `from_bytes`, not `from_str`: since `http` 1.6, `from_str` accepts
    // visible ASCII only, refusing the obs-text bytes that UTF-8 text is
    // made of; `from_bytes` checks exactly RFC 9110's field-value.
    HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
        InvalidValue::new(
            "header value",
            format!("{value:?}"),
            "a header value cannot have control characters other than tab",
        )
    })
}

/// Checks a header value given as text.
fn value_from_str(value: &str) -> Result<String, InvalidValue> {
    checked_header_value(value).map(|_| value.to_owned())
}

impl IntoHeaderValue for &str {
    fn into_header_value(self) -> Result<String, InvalidValue> {
        value_from_str(self)
    }
}

impl IntoHeaderValue for &&str {
    fn into_header_value(self) -> Result<String, InvalidValue> {
        value_from_str(self)
    }
}

impl IntoHeaderValue for String {
    fn into_header_value(self) -> Result<String, InvalidValue> {
        value_from_str(&self)
    }
}

impl IntoHeaderValue for &String {
    fn into_header_value(self) -> Result<String, InvalidValue> {
        value_from_str(self)
    }
}

impl IntoHeaderValue for HeaderValue {
    fn into_header_value(self) -> Result<String, InvalidValue> {
        (&self).into_header_value()
    }
}

impl IntoHeaderValue for &HeaderValue {
    fn into_header_value(self) -> Result<String, InvalidValue> {
        // The protocol carries header values as text.
        String::from_utf8(self.as_bytes().to_vec())
            .map_err(|_| InvalidValue::new("header value", format!("{self:?}"), "not UTF-8"))
    }
}

/// Implements [`IntoHeaderValue`] for integer types (always valid).
macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl IntoHeaderValue for $t {
            fn into_header_value(self) -> Result<String, InvalidValue> {
                Ok(self.to_string())
            }
        }
    )*};
}
int_value!(u16, u32, u64, usize, i16, i32, i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_outside_100_to_999_are_refused_with_the_value() {
        for bad in [0, 99, 1000, -1, 70_000] {
            let err = bad.into_status().unwrap_err();
            assert_eq!(err.what(), "status");
            assert_eq!(err.value(), bad.to_string());
        }
        assert_eq!(100u16.into_status(), Ok(StatusCode::CONTINUE));
        assert_eq!(999u64.into_status().unwrap().as_u16(), 999);
    }

    #[test]
    fn names_are_lower_cased_and_checked() {
        assert_eq!(String::from("X-A").into_header_name().unwrap(), "x-a");
        assert_eq!((&String::from("X-A")).into_header_name().unwrap(), "x-a");
        assert_eq!((&"X-A").into_header_name().unwrap(), "x-a");
        for bad in ["", "a b", "a:b", "é"] {
            assert_eq!(bad.into_header_name().unwrap_err().what(), "header name");
        }
    }

    #[test]
    fn values_may_have_tabs_and_utf8_but_no_line_breaks() {
        assert_eq!("a\tb".into_header_value().unwrap(), "a\tb");
        assert_eq!("café".into_header_value().unwrap(), "café");
        for bad in ["a\nb", "a\rb", "a\0b"] {
            assert_eq!(bad.into_header_value().unwrap_err().what(), "header value");
        }
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(latin1.into_header_value().is_err());
    }

    /// RFC 9110 section 5.5: UTF-8 text passes byte for byte (whatever the
    /// `http` crate's `from_str` accepts); every control byte but tab, and
    /// DEL, is refused.
    #[test]
    fn utf8_values_are_kept_byte_for_byte_and_control_bytes_refused() {
        for good in [
            "José",
            r#"attachment; filename="résumé.pdf""#,
            "日本語 ok",
            "\u{a0}",
            "a\tb",
            " ",
            "",
        ] {
            let value = checked_header_value(good).unwrap();
            assert_eq!(value.as_bytes(), good.as_bytes(), "{good:?}");
            assert_eq!(good.into_header_value().unwrap(), good);
            assert_eq!(String::from(good).into_header_value().unwrap(), good);
        }
        for byte in (0u8..0x20).filter(|b| *b != b'\t').chain([0x7f]) {
            let bad = format!("a{}b", byte as char);
            let err = checked_header_value(&bad).unwrap_err();
            assert_eq!(err.what(), "header value");
            assert_eq!(err.value(), format!("{bad:?}"));
            assert!(bad.as_str().into_header_value().is_err());
        }
    }
}
