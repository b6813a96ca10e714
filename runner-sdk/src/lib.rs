//! # runner-sdk: write plugins for an extplug runner
//!
//! A runner is a small program of your own: plugins, and a `main` that serves
//! them to the gateway. The quickest start is to copy
//! `examples/plugin-template` of the extplug repository (a `cargo new`-ready
//! crate with the plugin below, its test, and a `gateway.json`).
//!
//! ## A plugin
//!
//! `deny-header` answers 403 to every request that has a given header. The
//! [`Plugin`] turns a route's JSON configuration into a [`Filter`]; the filter
//! runs for each request of that route.
//!
//! ```
//! use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request, Stop};
//! use serde::Deserialize;
//!
//! /// `deny-header`: answers 403 when the request has a given header.
//! struct DenyHeader;
//!
//! /// `{"header": "x-block"}`: one route's configuration, and its filter.
//! #[derive(Deserialize)]
//! struct DenyHeaderConf {
//!     header: String,
//! }
//!
//! impl Plugin for DenyHeader {
//!     fn name(&self) -> &str {
//!         "deny-header"
//!     }
//!     // Once per route configuration; an error names the plugin.
//!     fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
//!         let conf: DenyHeaderConf = parse_conf(conf)?;
//!         Ok(Box::new(conf))
//!     }
//! }
//!
//! #[async_trait]
//! impl Filter for DenyHeaderConf {
//!     // Every request of the route; `response` keeps its no-op default.
//!     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
//!         if req.header(&self.header).is_some() {
//!             req.stop(Stop::new(403).header("x-denied-by", "deny-header").body("denied\n"));
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Statuses are plain integers or [`StatusCode`]s, header names and values
//! plain strings or `runner_sdk::http` types ([`IntoStatus`], [`IntoHeaderName`],
//! [`IntoHeaderValue`]). A value that is not valid HTTP (`Stop::new(1000)`,
//! a header name with a space) is neither a compile error nor a panic: the
//! call fails, and the runner's answer names the plugin and the value:
//! ``plugin `deny-header` failed: invalid status 1000: ...``.
//!
//! ## Its test
//!
//! [`testing`] runs a chain in-process, prepared exactly as the runner
//! prepares it, and gives what the chain decided: a [`RequestOutcome`]
//! (continue, [`Stop`] or [`Rewrite`]) or a [`ResponseOutcome`]. In a crate
//! this is a `#[tokio::test] async fn` in `#[cfg(test)] mod tests`, with the
//! template's dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! # Runs the async unit tests (`#[tokio::test]`).
//! tokio = { version = "1", features = ["macros", "rt"] }
//! ```
//!
//! The same verb registers plugins here and in `main`:
//! [`Registry::plugin`] and [`Runner::plugin`].
//!
//! ```
//! # use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request, Stop};
//! # struct DenyHeader;
//! # #[derive(serde::Deserialize)]
//! # struct DenyHeaderConf { header: String }
//! # impl Plugin for DenyHeader {
//! #     fn name(&self) -> &str { "deny-header" }
//! #     fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
//! #         let conf: DenyHeaderConf = parse_conf(conf)?;
//! #         Ok(Box::new(conf))
//! #     }
//! # }
//! # #[async_trait]
//! # impl Filter for DenyHeaderConf {
//! #     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
//! #         if req.header(&self.header).is_some() {
//! #             req.stop(Stop::new(403).header("x-denied-by", "deny-header").body("denied\n"));
//! #         }
//! #         Ok(())
//! #     }
//! # }
//! use runner_sdk::testing::TestRequest;
//! use runner_sdk::{Registry, RequestOutcome};
//!
//! # futures::executor::block_on(async {
//! let plugins = Registry::new().plugin(DenyHeader);
//! let conf = [("deny-header", r#"{"header": "x-block"}"#)];
//!
//! let outcome = TestRequest::get("/").header("X-Block", "yes").run(&plugins, &conf).await.unwrap();
//! let RequestOutcome::Stop(stop) = outcome else { panic!("not stopped: {outcome:?}") };
//! assert_eq!(stop.status, 403);
//! assert_eq!(stop.headers, vec![("x-denied-by".to_string(), "deny-header".to_string())]);
//! assert_eq!(stop.body, b"denied\n");
//!
//! let outcome = TestRequest::get("/").run(&plugins, &conf).await.unwrap();
//! assert_eq!(outcome, RequestOutcome::Continue);
//! # });
//! ```
//!
//! ## Its `main`
//!
//! [`Runner`] serves the plugins on the unix socket the gateway names in
//! `APISIX_LISTEN_ADDRESS`, until SIGTERM (see [`runner`]). Build the binary
//! and point the gateway's `ext-plugin.cmd` at it.
//!
//! ```no_run
//! # use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request, Stop};
//! # struct DenyHeader;
//! # #[derive(serde::Deserialize)]
//! # struct DenyHeaderConf { header: String }
//! # impl Plugin for DenyHeader {
//! #     fn name(&self) -> &str { "deny-header" }
//! #     fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
//! #         let conf: DenyHeaderConf = parse_conf(conf)?;
//! #         Ok(Box::new(conf))
//! #     }
//! # }
//! # #[async_trait]
//! # impl Filter for DenyHeaderConf {
//! #     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
//! #         if req.header(&self.header).is_some() {
//! #             req.stop(Stop::new(403).header("x-denied-by", "deny-header").body("denied\n"));
//! #         }
//! #         Ok(())
//! #     }
//! # }
//! fn main() -> std::process::ExitCode {
//!     runner_sdk::Runner::new().plugin(DenyHeader).run()
//! }
//! ```
//!
//! ## How a chain answers
//!
//! What a filter does is *recorded*, never applied on the spot: reading a
//! header, a variable or the body is never a change; writing one is. When
//! every filter of a chain has run, the writes fold into one answer for the
//! gateway: stop (answer the client now), rewrite (change the request), or
//! continue (nothing changed). See [`RequestOutcome`] and [`ResponseOutcome`].
//! [`Filter::request`] runs before the upstream is called, [`Filter::response`]
//! after it answered; both have no-op defaults.
//!
//! ## Next steps
//!
//! - Answer JSON: [`Stop::json`] serializes a value and sets
//!   `content-type: application/json`.
//! - Log: `tracing` is re-exported (`runner_sdk::tracing::info!(...)`);
//!   the lines go where the runner's go.
//! - Carry a value from the request phase to the response phase of the same
//!   request: [`context::RequestContext`], keyed by the gateway's request id.
//!
//! The protocol itself (frames, Cap'n Proto, the data types such as
//! [`RequestOutcome`]) is `extplug::wire`, the `extplug` crate without its
//! `host` feature, re-exported here where plugins see it, so a plugin
//! depends on this crate alone and compiles no part of the gateway.
//!
//! Features: `logging` (on by default) is the runner's default logging,
//! `tracing` to stderr filtered by `RUST_LOG` (see [`runner::init_logging`]).
//! Without it the runner installs no `tracing` subscriber, and the
//! `tracing-subscriber` crate is not built.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chain;
pub mod context;
mod info;
mod request;
mod response;
pub mod runner;
pub mod testing;

pub use async_trait::async_trait;
pub use chain::{CallError, Chain, PrepareError, Registry};
// The protocol's data types, defined by `extplug::wire` (which both the
// runner and the host use), re-exported so plugin code needs only this
// crate. No doc comment here: rustdoc would put it at the top of each
// type's page, in place of the type's own first line.
pub use extplug::wire::{
    InfoKey, IntoHeaderName, IntoHeaderValue, IntoStatus, InvalidValue, Needs, RequestOutcome,
    RequestParts, ResponseOutcome, ResponseParts, Rewrite, Stop, ALLOWED_STATUS,
};
/// The `http` crate this SDK uses (`runner_sdk::http::header::RETRY_AFTER`,
/// `runner_sdk::http::StatusCode`...), so plugin code needs no version of its own.
///
/// ```
/// use runner_sdk::http::{header, StatusCode};
/// use runner_sdk::Stop;
///
/// let stop = Stop::new(StatusCode::TOO_MANY_REQUESTS).header(header::RETRY_AFTER, 30);
/// assert_eq!(stop, Stop::new(429).header("Retry-After", "30"));
/// ```
pub use http;
pub use http::{HeaderName, HeaderValue, Method, StatusCode};
pub use info::InfoSource;
pub use request::Request;
pub use response::Response;
pub use runner::Runner;
/// The `tracing` crate the runner logs with (`runner_sdk::tracing::info!`...),
/// so plugin code needs no version of its own. What a filter logs goes where
/// the runner's own lines go: with the default `logging` feature, stderr,
/// filtered by `RUST_LOG` (see [`runner::init_logging`]), which the gateway
/// relays into its own log.
///
/// ```
/// use runner_sdk::{async_trait, tracing, Filter, PluginError, Request};
///
/// struct Audit;
///
/// #[async_trait]
/// impl Filter for Audit {
///     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
///         tracing::info!(method = %req.method(), path = req.path(), "audited");
///         Ok(())
///     }
/// }
/// ```
pub use tracing;

use serde::de::DeserializeOwned;

/// A header name (checked, lower-cased) and value (checked) for a view's
/// setters; `None` when either is invalid, the first such mistake kept in
/// `refused` so that the call fails with it when the filter returns.
pub(crate) fn checked_header(
    refused: &mut Option<InvalidValue>,
    name: impl IntoHeaderName,
    value: impl IntoHeaderValue,
) -> Option<(String, String)> {
    let checked = name
        .into_header_name()
        .and_then(|name| Ok((name, value.into_header_value()?)));
    match checked {
        Ok(pair) => Some(pair),
        Err(e) => {
            refused.get_or_insert(e);
            None
        }
    }
}

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
///
/// A filter that tags each request for the upstream, and each answer for
/// the client, and declares the variable it reads:
///
/// ```
/// use runner_sdk::testing::{TestRequest, TestResponse};
/// use runner_sdk::{async_trait, Filter, Needs, PluginError, Request, Response, Rewrite};
/// # use runner_sdk::{ConfError, Plugin, Registry, RequestOutcome};
///
/// struct Tag;
///
/// #[async_trait]
/// impl Filter for Tag {
///     fn needs(&self) -> Needs {
///         Needs {
///             vars: vec!["remote_addr".to_string()],
///             ..Needs::default()
///         }
///     }
///
///     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
///         let client = req.var_str("remote_addr").await?.unwrap_or_default();
///         req.set_header("x-client", client);
///         Ok(())
///     }
///
///     async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
///         resp.set_header("x-tagged", "1");
///         Ok(())
///     }
/// }
/// # struct TagPlugin;
/// # impl Plugin for TagPlugin {
/// #     fn name(&self) -> &str { "tag" }
/// #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { Ok(Box::new(Tag)) }
/// # }
///
/// # futures::executor::block_on(async {
/// # let plugins = Registry::new().plugin(TagPlugin);
/// # let conf = [("tag", "{}")];
/// let outcome = TestRequest::get("/").var("remote_addr", "10.0.0.7").run(&plugins, &conf).await.unwrap();
/// let RequestOutcome::Rewrite(Rewrite { headers, .. }) = outcome else { panic!("{outcome:?}") };
/// assert_eq!(headers, vec![("x-client".to_string(), Some("10.0.0.7".to_string()))]);
/// let outcome = TestResponse::new(200).run(&plugins, &conf).await.unwrap();
/// assert!(outcome.headers.unwrap().contains(&("x-tagged".to_string(), "1".to_string())));
/// # });
/// ```
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
    /// A configuration error with this message; say what is wrong and where
    /// (the runner adds the plugin's name and the entry's position).
    ///
    /// ```
    /// use runner_sdk::ConfError;
    /// let count = 0;
    /// let err = ConfError::new(format!("`count` must be above 0, got {count}"));
    /// assert_eq!(err.to_string(), "`count` must be above 0, got 0");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        ConfError(message.into())
    }
}

/// Parses a JSON configuration text into a serde type.
///
/// ```
/// use runner_sdk::parse_conf;
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Conf { header: String }
///
/// let conf: Conf = parse_conf(r#"{"header": "x-block"}"#).unwrap();
/// assert_eq!(conf.header, "x-block");
/// let err = parse_conf::<Conf>("{}").unwrap_err();
/// assert_eq!(err.to_string(), "missing field `header` at line 1 column 2");
/// ```
///
/// # Errors
/// A [`ConfError`] with serde's reason and position, e.g. ``missing field
/// `body` at line 1 column 2`` or `expected value at line 1 column 1` for a
/// text that is not JSON.
pub fn parse_conf<T: DeserializeOwned>(conf: &str) -> Result<T, ConfError> {
    serde_json::from_str(conf).map_err(|e| ConfError(e.to_string()))
}
