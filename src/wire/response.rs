//! The response phase's protocol data: the upstream's answer a call carries
//! and what a chain decided for it (`HTTP_RESP_CALL` and its answer).

use http::StatusCode;

/// The upstream's answer as the gateway sent it, borrowed from the call's
/// frame. Runners build it; plugin code only sees it through `runner_sdk::Response`.
#[derive(Debug, Clone)]
pub struct ResponseParts<'a> {
    /// The call's id, echoed in the answer.
    pub id: u32,
    /// The upstream's status.
    pub status: StatusCode,
    /// The upstream's headers, one entry per value.
    pub headers: Vec<(&'a str, &'a str)>,
    /// Values the gateway sent up front (`extraInfo`); `None` = not available.
    pub extra_info: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// What a chain decided for a response: the answer of an `HTTP_RESP_CALL`,
/// and what `runner_sdk::testing::TestResponse::run` returns for a test to
/// check. All `None` (the [`Default`]): the upstream's answer goes to the
/// client unchanged.
///
/// ```
/// use extplug::wire::ResponseOutcome;
/// use http::StatusCode;
///
/// // What a chain that ran `resp.set_status(502)` and
/// // `resp.set_header("x-a", "1")` on an upstream answer with the single
/// // header `server: up` gives:
/// let s = |v: &str| v.to_string();
/// let outcome = ResponseOutcome {
///     status: Some(StatusCode::BAD_GATEWAY),
///     headers: Some(vec![(s("server"), s("up")), (s("x-a"), s("1"))]),
///     body: None,
/// };
/// assert_eq!(outcome.status, Some(StatusCode::BAD_GATEWAY));
/// assert_eq!(ResponseOutcome::default().status, None); // unchanged
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseOutcome {
    /// The status sent to the client instead of the upstream's; `None` keeps
    /// the upstream's.
    pub status: Option<StatusCode>,
    /// The complete new header list, `(name, value)` in order, names in lower
    /// case when a filter set them: it *replaces* the upstream's headers (the
    /// ones no filter touched are in it too). `None`: no filter changed a
    /// header, the upstream's go as they are.
    pub headers: Option<Vec<(String, String)>>,
    /// The body sent to the client instead of the upstream's (the gateway
    /// fixes the framing headers); `None` keeps the upstream's.
    pub body: Option<Vec<u8>>,
}
