//! # runner-sdk: write plugins for an extplug runner
//!
//! A *plugin* is a named factory that turns its JSON configuration into a
//! [`Filter`], once per route configuration (one `PREPARE_CONF` of the
//! protocol). The filter then runs for every request of that route:
//! [`Filter::request`] before the upstream is called, [`Filter::response`] after
//! it answered. Both have no-op defaults; implement only what you need.
//!
//! What a filter does is *recorded*, never applied on the spot: reading a
//! header, a variable or the body is never a change; writing one is. When
//! every filter of a chain has run, the writes fold into one answer for the
//! gateway: stop (answer the client now), rewrite (change the request), or
//! continue (nothing changed). See [`RequestOutcome`] and [`ResponseOutcome`].
//!
//! ```
//! use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request};
//! use serde::Deserialize;
//!
//! /// Adds `x-hello: <name>` to every request.
//! struct Hello;
//!
//! #[derive(Deserialize)]
//! struct HelloConf { name: String }
//!
//! impl Plugin for Hello {
//!     fn name(&self) -> &str { "hello" }
//!     fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
//!         let conf: HelloConf = parse_conf(conf)?;
//!         Ok(Box::new(conf))
//!     }
//! }
//!
//! #[async_trait]
//! impl Filter for HelloConf {
//!     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
//!         req.set_header("x-hello", &self.name);
//!         Ok(())
//!     }
//! }
//! ```
//!
//! A runner is this crate alone: [`Runner`] hosts the plugins behind the
//! protocol's unix socket (`main` is one line, see [`runner`]), and
//! [`testing`] drives them in-process. The protocol itself (frames, Cap'n
//! Proto, the data types such as [`RequestOutcome`]) is the `extplug-wire`
//! crate, re-exported here where plugins see it.
//!
//! Features: `logging` (on by default) is the runner's default logging,
//! `tracing` to stderr filtered by `RUST_LOG` (see [`runner::init_logging`]).
//! Without it the runner installs no `tracing` subscriber, and the
//! `tracing-subscriber` crate is not built.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chain;
mod info;
mod request;
mod response;
pub mod runner;
pub mod testing;

pub use async_trait::async_trait;
pub use chain::{CallError, Chain, PrepareError, Registry};
/// The protocol's data types, defined by the wire crate that both the runner
/// and the host use, re-exported here so plugin code needs only this crate.
pub use extplug_wire::{
    InfoKey, IntoHeaderName, IntoHeaderValue, IntoStatus, InvalidValue, Needs, RequestOutcome,
    RequestParts, ResponseOutcome, ResponseParts, Rewrite, Stop, ALLOWED_STATUS,
};
/// The `http` crate this SDK uses (`runner_sdk::http::header::RETRY_AFTER`,
/// `runner_sdk::http::StatusCode`...), so plugin code needs no version of its own.
pub use http;
pub use http::{HeaderName, HeaderValue, Method, StatusCode};
pub use info::InfoSource;
pub use request::Request;
pub use response::Response;
pub use runner::Runner;

use serde::de::DeserializeOwned;

/// The error a filter returns from a phase. Anything that implements
/// `std::error::Error` converts into it with `?`, and so do `String` and `&str`.
///
/// A filter that returns an error fails only its own call: the runner answers
/// that call with `serviceUnavailable` and the error's text, and the gateway
/// answers the client 503 (or goes on, when the route allows degradation).
pub type PluginError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A plugin: a name and a way to turn a JSON configuration into a [`Filter`].
///
/// Registered once in the runner's `main`; shared by every connection, so it
/// must be `Send + Sync`. State that must be shared by all requests of all
/// routes (a connection pool, say) lives here and is handed to the filters it
/// creates.
pub trait Plugin: Send + Sync + 'static {
    /// The name routes use to call this plugin (`"name"` in a conf entry).
    fn name(&self) -> &str;

    /// Parses and checks one configuration (a JSON text), once per
    /// `PREPARE_CONF`, and returns the filter that will run for that route.
    ///
    /// # Errors
    /// A [`ConfError`] saying what is wrong with the configuration. The runner
    /// refuses the whole chain with `badRequest`, naming this plugin; nothing
    /// is cached. [`parse_conf`] gives such errors for serde types.
    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError>;
}

/// One configured plugin in a route's chain: what runs for each request.
///
/// Every method has a default, so a filter implements only the phases it
/// needs. The phases run in chain order; a filter that answers the client
/// ([`Request::stop`]) ends the request phase of the chain.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// What this filter will read, so that the gateway can send it with every
    /// call instead of being asked for it during the call (one round trip
    /// instead of several). Called once, when the chain is prepared.
    ///
    /// Default: nothing. Reading something not declared still works; it just
    /// costs a round trip to the gateway the first time in each call.
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// The request phase (`HTTP_REQ_CALL`): runs before the request goes to the
    /// upstream. Read the request and record changes on `req`, or answer the
    /// client with [`Request::stop`].
    ///
    /// Default: does nothing.
    ///
    /// # Errors
    /// Any error fails this call only (`serviceUnavailable`); a panic is
    /// caught and treated the same way.
    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        let _ = req;
        Ok(())
    }

    /// The response phase (`HTTP_RESP_CALL`): runs after the upstream answered,
    /// before the client gets the answer. Read the upstream's status, headers
    /// and body, and record changes on `resp`.
    ///
    /// Default: does nothing.
    ///
    /// # Errors
    /// As for [`Filter::request`].
    async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
        let _ = resp;
        Ok(())
    }
}

/// A configuration that a plugin refused, with the reason. The runner adds the
/// plugin's name when it reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfError(pub String);

impl ConfError {
    /// A configuration error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ConfError(message.into())
    }
}

/// Parses a JSON configuration text into a serde type.
///
/// # Errors
/// A [`ConfError`] with serde's reason and position, e.g. ``missing field
/// `body` at line 1 column 2`` or `expected value at line 1 column 1` for a
/// text that is not JSON.
pub fn parse_conf<T: DeserializeOwned>(conf: &str) -> Result<T, ConfError> {
    serde_json::from_str(conf).map_err(|e| ConfError(e.to_string()))
}
