//! The request phase's protocol data: the request a call carries and what a
//! chain decided for it (`HTTP_REQ_CALL` and its answer).

use crate::convert::{IntoHeaderName, IntoHeaderValue, IntoStatus, InvalidValue};
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
/// use extplug_wire::Stop;
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
/// use extplug_wire::Stop;
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
    /// outside [`crate::ALLOWED_STATUS`] (200..=599). After an invalid
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
    /// an integer (`403`) or a [`StatusCode`].
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
    /// use extplug_wire::Stop;
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
/// `Rewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The new path; `None` keeps it.
    pub path: Option<String>,
    /// Header changes: `Some(value)` sets (all entries of one name together
    /// replace its old values), `None` deletes. Names in lower case.
    pub headers: Vec<(String, Option<String>)>,
    /// Argument changes, same rules as `headers`, applied to the original query.
    pub args: Vec<(String, Option<String>)>,
    /// Headers added to the client's response.
    pub resp_headers: Vec<(String, String)>,
    /// The new request body; `None` keeps it.
    pub body: Option<Vec<u8>>,
}

/// What a chain decided for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Nothing was written: the request goes on unchanged.
    Continue,
    /// A filter answered the client.
    Stop(Stop),
    /// The request goes on with these changes.
    Rewrite(Rewrite),
}
