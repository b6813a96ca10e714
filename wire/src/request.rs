//! The request phase's protocol data: the request a call carries and what a
//! chain decided for it (`HTTP_REQ_CALL` and its answer).

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

/// An answer to the client that ends the chain (see `runner_sdk::Request::stop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The status sent to the client.
    pub status: StatusCode,
    /// Response headers, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Stop {
    /// An answer with this status, no headers and an empty body.
    pub fn new(status: StatusCode) -> Self {
        Stop {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (names may repeat; each is sent).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
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
