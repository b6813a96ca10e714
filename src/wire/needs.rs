//! What a chain will read, reported to the gateway in the answer to
//! `PREPARE_CONF` so that it sends those values with every call.

/// What a filter declares it will read (see `runner_sdk::Filter::needs`). For a chain,
/// the union of its filters' needs is reported to the gateway in the answer to
/// `PREPARE_CONF`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Variable names, as for `runner_sdk::Request::var` (`remote_addr`, `http_x_foo`...).
    pub vars: Vec<String>,
    /// The request body (`runner_sdk::Request::body`).
    pub request_body: bool,
    /// The upstream's response body (`runner_sdk::Response::body`).
    pub response_body: bool,
}

impl Needs {
    /// Adds `other` to `self`, keeping each variable name once, in first-seen order.
    pub fn merge(&mut self, other: Needs) {
        for var in other.vars {
            if !self.vars.contains(&var) {
                self.vars.push(var);
            }
        }
        self.request_body |= other.request_body;
        self.response_body |= other.response_body;
    }

    /// True when nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty() && !self.request_body && !self.response_body
    }
}
