//! The names of the request variables extplug computes (their values are
//! `proxy::vars::lookup`'s), kept here so that configuration can refuse
//! a name that would never have a value: a route's `vars` reading such a
//! name would treat it as missing and match more than APISIX does.

/// The variables with a fixed name.
pub const NAMED: [&str; 16] = [
    "remote_addr",
    "remote_port",
    "server_addr",
    "server_port",
    "scheme",
    "server_protocol",
    "request_method",
    "request_uri",
    "uri",
    "args",
    "query_string",
    "host",
    "content_type",
    "content_length",
    "route_id",
    "request_id",
];

/// The families of variables: a prefix and a header, argument or cookie
/// name after it.
pub const PREFIXES: [&str; 3] = ["http_", "arg_", "cookie_"];

/// Whether extplug computes variable `name` (a fixed name, or a prefix
/// followed by a non-empty name).
pub fn computed(name: &str) -> bool {
    NAMED.contains(&name)
        || PREFIXES
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
}

/// The names, for an error message: `remote_addr, ..., http_NAME, ...`.
pub fn listed() -> String {
    NAMED
        .iter()
        .map(|n| (*n).to_owned())
        .chain(PREFIXES.iter().map(|p| format!("{p}NAME")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_names_and_prefixed_families() {
        assert!(computed("uri"));
        assert!(computed("arg_user"));
        assert!(computed("http_x_a"));
        assert!(computed("cookie_sid"));
        assert!(!computed("arg_"));
        assert!(!computed("post_arg_user"));
        assert!(!computed("server_name"));
        assert!(listed().contains("cookie_NAME"));
    }
}
