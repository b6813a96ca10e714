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

/// What a chain decided for a response. All `None`: the upstream's answer goes
/// to the client unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseOutcome {
    /// The new status; `None` keeps the upstream's.
    pub status: Option<StatusCode>,
    /// The complete new header list (it replaces the upstream's); `None` keeps them.
    pub headers: Option<Vec<(String, String)>>,
    /// The new body; `None` keeps the upstream's.
    pub body: Option<Vec<u8>>,
}
