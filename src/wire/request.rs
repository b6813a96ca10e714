//! The request phase's protocol data: the request a call carries and what a
//! chain decided for it (`HTTP_REQ_CALL` and its answer).

use crate::wire::convert::{IntoHeaderName, IntoHeaderValue, IntoStatus, InvalidValue};
use http::{Method, StatusCode};
use std::net::IpAddr;

/// The request as the gateway sent it, borrowed from the call's frame. Runners
/// build it; plugin code only sees it through `runner_sdk::Request`.
#[derive(Debug, Clone)]
pub struct RequestParts<'a> {
    /// The call's id, echoed in the answer.
    pub id: u32,
    /// The client's address.
    pub src_ip: IpAddr,
    /// The HTTP method.
    pub method: Method,
    /// The decoded path, without the query.
    pub path: &'a str,
    /// Query arguments, one entry per value; `None` for an argument without `=`.
    pub args: Vec<(&'a str, Option<&'a str>)>,
    /// Headers, one entry per value, names in lower case.
    pub headers: Vec<(&'a str, &'a str)>,
    /// Values the gateway sent up front (`extraInfo`); `None` = not available.
    pub extra_info: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// An answer to the client that ends the chain (see `runner_sdk::Request::stop`):
/// a status, headers and a body, sent to the client instead of the request
/// going to the upstream.
///
/// Build one with [`Stop::new`] and the [`Stop::header`] and [`Stop::body`]
/// builders; read it back through its fields (in a test, from
/// [`RequestOutcome::Stop`]).
///
/// ```
/// use extplug::wire::Stop;
/// use http::StatusCode;
///
/// let stop = Stop::new(403).header("X-Reason", "denied").body("no entry\n");
/// assert_eq!(stop.status, StatusCode::FORBIDDEN);
/// assert_eq!(stop.status, 403); // `StatusCode` compares with integers
/// assert_eq!(stop.headers, vec![("x-reason".to_string(), "denied".to_string())]);
/// assert_eq!(stop.body, b"no entry\n");
/// assert!(stop.invalid().is_none());
/// ```
///
/// A value that is not valid HTTP does not panic: the stop keeps the first
/// such mistake ([`Stop::invalid`]) and the runner fails the call with it,
/// naming the plugin (the client gets the gateway's 503).
///
/// ```
/// use extplug::wire::Stop;
///
/// let stop = Stop::new(1000).header("x reason", "denied");
/// assert_eq!(
///     stop.invalid().unwrap().to_string(),
///     "invalid status 1000: a status is a number in 100..=999"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The status sent to the client. The runner fails the call for a status
    /// outside [`crate::wire::ALLOWED_STATUS`] (200..=599). After an invalid
    /// status was given to [`Stop::new`], it is 500 (and the call fails).
    pub status: StatusCode,
    /// Response headers, in order: `(name, value)`, names in lower case when
    /// built with [`Stop::header`]; a name may repeat (each is sent). The
    /// gateway ignores the names it protects (`content-length`...).
    pub headers: Vec<(String, String)>,
    /// The response body (may be empty).
    pub body: Vec<u8>,
    /// The first value the builders refused; `None` for a valid stop.
    invalid: Option<InvalidValue>,
}

impl Stop {
    /// An answer with this status, no headers and an empty body. `status` is
    /// an integer (`403`) or a `http::StatusCode`.
    ///
    /// An integer outside 100..=999 is kept as a mistake ([`Stop::invalid`])
    /// that fails the call, not a panic.
    pub fn new(status: impl IntoStatus) -> Self {
        let (status, invalid) = match status.into_status() {
            Ok(status) => (status, None),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Some(e)),
        };
        Stop {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            invalid,
        }
    }

    /// Adds a header (names may repeat; each is sent). `name` is a string or
    /// an `http::HeaderName` (kept in lower case); `value` a string, an
    /// `http::HeaderValue` or an integer.
    ///
    /// An invalid name or value is left out and kept as a mistake
    /// ([`Stop::invalid`]) that fails the call.
    ///
    /// ```
    /// use extplug::wire::Stop;
    /// let stop = Stop::new(429).header(http::header::RETRY_AFTER, 30);
    /// assert_eq!(stop.headers, vec![("retry-after".to_string(), "30".to_string())]);
    /// ```
    pub fn header(mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) -> Self {
        match name
            .into_header_name()
            .and_then(|n| Ok((n, value.into_header_value()?)))
        {
            Ok(pair) => self.headers.push(pair),
            Err(e) => {
                self.invalid.get_or_insert(e);
            }
        }
        self
    }

    /// An answer with this status, `value` serialized as its JSON body, and
    /// `content-type: application/json`.
    ///
    /// ```
    /// use extplug::wire::Stop;
    ///
    /// let stop = Stop::json(403, &serde_json::json!({"error": "denied"}));
    /// assert_eq!(stop.status, 403);
    /// assert_eq!(
    ///     stop.headers,
    ///     vec![("content-type".to_string(), "application/json".to_string())]
    /// );
    /// assert_eq!(stop.body, br#"{"error":"denied"}"#);
    /// ```
    ///
    /// A value that cannot be serialized (a map whose keys are not strings,
    /// a `Serialize` impl that fails) is not a panic: the body stays empty
    /// and the failure is kept as a mistake ([`Stop::invalid`]) that fails
    /// the call, like an invalid header.
    ///
    /// ```
    /// use extplug::wire::Stop;
    /// use std::collections::BTreeMap;
    ///
    /// let stop = Stop::json(403, &BTreeMap::from([((1, 2), "pair keys")]));
    /// assert!(stop.body.is_empty());
    /// let mistake = stop.invalid().unwrap().to_string();
    /// // "invalid JSON body of type alloc::...::BTreeMap<(i32, i32), &str>: key must be a string"
    /// assert!(mistake.starts_with("invalid JSON body of type "), "{mistake}");
    /// assert!(mistake.contains("BTreeMap<(i32, i32), &str>"), "{mistake}");
    /// assert!(mistake.ends_with(": key must be a string"), "{mistake}");
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(status: impl IntoStatus, value: &T) -> Self {
        let stop = Stop::new(status).header("content-type", "application/json");
        match serde_json::to_vec(value) {
            Ok(body) => stop.body(body),
            Err(e) => {
                let mut stop = stop;
                stop.invalid.get_or_insert(InvalidValue::new(
                    "JSON body of type",
                    std::any::type_name::<T>(),
                    e.to_string(),
                ));
                stop
            }
        }
    }

    /// Sets the body (a `&str`, `String`, `&[u8]` or `Vec<u8>`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first status, header name or header value the builders refused;
    /// `None` when every value was valid. The runner fails the call with it.
    pub fn invalid(&self) -> Option<&InvalidValue> {
        self.invalid.as_ref()
    }
}

/// The net changes a chain made to a request, in the shape of the protocol's
/// `Rewrite`: what the gateway changes before the request goes on to the
/// upstream. Every field left empty (`None`, no entries) changes nothing.
///
/// Header and argument changes are *net*: a header set then deleted in the
/// same chain is one deletion; values set for a name replace all its old
/// values together.
///
/// ```
/// use extplug::wire::Rewrite;
///
/// // What a chain that ran `req.set_path("/v2")`, `req.set_header("X-A", "1")`,
/// // `req.add_header("x-a", "2")`, `req.remove_header("cookie")` and
/// // `req.set_resp_header("x-via", "extplug")` gives:
/// let s = |v: &str| v.to_string();
/// let rewrite = Rewrite {
///     path: Some(s("/v2")),
///     headers: vec![(s("x-a"), Some(s("1"))), (s("x-a"), Some(s("2"))), (s("cookie"), None)],
///     args: vec![],
///     resp_headers: vec![(s("x-via"), s("extplug"))],
///     body: None,
/// };
/// assert_eq!(rewrite.headers.iter().filter(|(n, _)| n == "x-a").count(), 2);
/// assert!(Rewrite::default().args.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The new path (decoded, without the query); `None` keeps the client's.
    pub path: Option<String>,
    /// Request header changes, names in lower case, in the order of their
    /// first change: `(name, Some(value))` sets (all the entries of one name
    /// together replace its old values), `(name, None)` deletes the header.
    pub headers: Vec<(String, Option<String>)>,
    /// Query argument changes, with the rules of `headers` (names as given,
    /// case-sensitive), applied to the client's query.
    pub args: Vec<(String, Option<String>)>,
    /// Headers added to the client's response, `(name, value)`, names in
    /// lower case; a name may repeat.
    pub resp_headers: Vec<(String, String)>,
    /// The new request body sent to the upstream; `None` keeps the client's.
    pub body: Option<Vec<u8>>,
}

/// What a chain decided for a request: the answer of an `HTTP_REQ_CALL`, and
/// what `runner_sdk::testing::TestRequest::run` returns for a test to check.
///
/// ```
/// use extplug::wire::{RequestOutcome, Rewrite, Stop};
///
/// fn describe(outcome: &RequestOutcome) -> String {
///     match outcome {
///         RequestOutcome::Continue => "unchanged".to_string(),
///         RequestOutcome::Stop(stop) => format!("answered {}", stop.status.as_u16()),
///         RequestOutcome::Rewrite(rw) => format!("rewritten to {:?}", rw.path),
///     }
/// }
/// assert_eq!(describe(&RequestOutcome::Stop(Stop::new(403))), "answered 403");
/// assert_eq!(describe(&RequestOutcome::Continue), "unchanged");
/// let rw = Rewrite { path: Some("/b".to_string()), ..Rewrite::default() };
/// assert_eq!(describe(&RequestOutcome::Rewrite(rw)), r#"rewritten to Some("/b")"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Nothing was written (filters that only read, or none ran): the request
    /// goes on to the upstream unchanged.
    Continue,
    /// A filter answered the client (`runner_sdk::Request::stop`): the
    /// upstream is not called, and earlier changes are dropped.
    Stop(Stop),
    /// The request goes on to the upstream with these changes.
    Rewrite(Rewrite),
}
