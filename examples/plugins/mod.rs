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
        .plugin(say::Say)
        .plugin(rewrite::RewritePlugin)
        .plugin(key_auth::KeyAuth)
        .plugin(limit_count::LimitCount)
        .plugin(inject_vars::InjectVars)
        .plugin(body_size::BodySize)
        .plugin(response_headers::ResponseHeaders)
        .plugin(body_rewrite::BodyRewrite)
        .plugin(fault::Fault)
}
