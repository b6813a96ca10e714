//! What a runner can ask the gateway for during a call (`EXTRA_INFO`).

/// What a filter can ask the gateway for during a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoKey<'k> {
    /// A variable by name (`remote_addr`, `http_host`, `arg_page`...).
    Var(&'k str),
    /// The request body.
    RequestBody,
    /// The upstream's response body (response phase only).
    ResponseBody,
}

impl InfoKey<'_> {
    /// The name under which the gateway sends this value in `extraInfo`:
    /// the variable's name, `$request_body` or `$response_body`.
    pub fn prefetch_name(&self) -> &str {
        match self {
            InfoKey::Var(name) => name,
            InfoKey::RequestBody => "$request_body",
            InfoKey::ResponseBody => "$response_body",
        }
    }
}
