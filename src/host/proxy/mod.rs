//! The HTTP reverse proxy: route, run the request phases
//! (`ext-plugin-pre-req`, then `ext-plugin-post-req`), apply each outcome,
//! forward to the upstream, run `ext-plugin-post-resp`, answer the client.
//!
//! ```text
//! client ──> path ──> route ──> pre-req ──> post-req ──> upstream ──> post-resp ──> client
//!          normalize             │            │                          │
//!          (400 if unsafe)     stop?        stop?                 status/headers/body
//!                           (answer now) (answer now)                  changed?
//! ```
//!
//! One module per concern, one implementation of each:
//! - [`crate::host::edge::path`]: the request path, normalized once at ingress;
//! - [`snapshot`]: one configuration's immutable tables ([`Proxy`]): the
//!   router, each route's runtime, metrics series and runner clients;
//! - [`answer`]: the response body type and the proxy's own error answers;
//! - [`router`]: which route a request takes; [`vars`]: the variables a
//!   plugin may ask for;
//! - `exchange`: one request's state; `pipeline`: the phases, and how
//!   their outcomes apply; `rewrite`: a rewrite applied whole or refused;
//! - `body`: request and response bodies (stream, or buffer within a limit
//!   and an idle timeout; a failure is never forwarded as an empty body);
//! - [`headers`]: the one header filter (framing, hop-by-hop, plugin input);
//! - `query`: query arguments and the request target;
//! - `upstream`: forwarding and retries; `balancer`: an upstream's node
//!   choice and health state, shared by its routes; `ring`: `chash`'s
//!   ring; `health`: a node's health counts; `connector`: clear text or
//!   TLS to the nodes; [`tunnel`]: WebSocket upgrades joined into a tunnel
//!   (`enable_websocket`).
//!
//! Bodies stream unless a plugin needs them (declared, or asked for during a
//! call) or replaces them; the proxy always sets the framing itself.

pub mod answer;
mod balancer;
mod body;
pub mod budget;
mod connector;
mod exchange;
pub mod headers;
mod health;
mod pipeline;
mod query;
mod rewrite;
mod ring;
pub mod router;
pub mod snapshot;
pub mod tunnel;
mod upstream;
pub mod vars;

pub use answer::{Body, BoxError};
pub use snapshot::{Proxy, ProxyCell};
