//! The example plugins of `demo-runner`. Each file is a complete plugin with
//! its own tests (through `runner_sdk::testing`).

pub mod body_rewrite;
pub mod body_size;
pub mod fault;
pub mod inject_vars;
pub mod key_auth;
pub mod limit_count;
pub mod response_headers;
pub mod rewrite;
pub mod say;

use runner_sdk::Registry;

/// Every example plugin.
pub fn all() -> Registry {
    Registry::new()
        .with(say::Say)
        .with(rewrite::RewritePlugin)
        .with(key_auth::KeyAuth)
        .with(limit_count::LimitCount)
        .with(inject_vars::InjectVars)
        .with(body_size::BodySize)
        .with(response_headers::ResponseHeaders)
        .with(body_rewrite::BodyRewrite)
        .with(fault::Fault)
}
