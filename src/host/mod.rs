//! The host side: the runner's supervisor, the ext-plugin client, and the
//! HTTP reverse proxy that uses them (`extplug proxy`, `extplug demo`).
//!
//! In layers, each importing only from the layers below it (never from
//! its parent; `tests/pure/layers.rs` checks it), from the bottom:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 0 | [`crate::wire`] | the protocol |
//! | 1 | [`logging`], [`metrics`], [`edge`] | the log format; the metrics sink (label values only, no domain type); the checks at the door and path normalization |
//! | 2 | [`config`] | the configuration: plain data, parsed and validated |
//! | 3 | [`runner`] | the runner's process, supervisor and client |
//! | 4 | [`source`] | where the routes come from (file, etcd) |
//! | 5 | [`proxy`] | one configuration's proxy: router, phases, upstream |
//! | 6 | [`server`], [`admin`] | the proxy's listener; the admin listener |
//! | 7 | [`gateway`] | the live configuration, reload, apply |
//! | 8 | [`app`], [`error`], [`demo`] | start-up wiring and signals; [`HostError`]; the demo |
//!
//! Another Rust proxy can embed the parts: [`runner::supervisor::Supervisor`] to run
//! the runner, [`runner::client::ExtClient`] to call it with the protocol's request and
//! response data ([`crate::wire`]), and apply the outcomes itself:
//!
//! ```no_run
//! use extplug::host::runner::client::{ExtClient, InfoProvider};
//! use extplug::host::config::{Config, DEFAULT_RUNNER};
//! use extplug::host::runner::supervisor::Supervisor;
//! use async_trait::async_trait;
//! use extplug::wire::{InfoKey, RequestOutcome, RequestParts};
//! use http::Method;
//!
//! /// Answers the runner's questions during a call (variables, bodies).
//! struct NoInfo;
//!
//! #[async_trait]
//! impl InfoProvider for NoInfo {
//!     async fn provide(&mut self, _key: InfoKey<'_>) -> Option<bytes::Bytes> {
//!         None
//!     }
//! }
//!
//! # async fn embed(config: Config) -> Result<(), Box<dyn std::error::Error>> {
//! // One runner (`ext-plugin`); `host::runner::set` runs several.
//! let mut supervisor = Supervisor::start(config.runner.clone())?;
//! supervisor.started().await?; // the first start fails fast
//! let client = ExtClient::new(&config.runner, supervisor.state());
//! // Every chain, once: the tokens stay in the client's cache.
//! extplug::host::preflight(&config.routes, DEFAULT_RUNNER, &client).await?;
//! let phase = config.routes[0].pre_req.as_ref().expect("a pre-req phase");
//! let ticket = client.ticket(phase).await?; // PREPARE_CONF, cached
//! let parts = RequestParts {
//!     id: client.next_id(),
//!     src_ip: "127.0.0.1".parse()?,
//!     method: Method::GET,
//!     path: "/hello",
//!     args: vec![],
//!     headers: vec![("host", "example.com")],
//!     extra_info: vec![], // what `ticket.needs` lists, to save round trips
//! };
//! match client.call_request(phase, &ticket, parts, &mut NoInfo).await? {
//!     RequestOutcome::Stop(stop) => { /* answer the client with it */ }
//!     RequestOutcome::Rewrite(rw) => { /* apply it, then proxy */ }
//!     RequestOutcome::Continue => { /* proxy unchanged */ }
//! }
//! supervisor.stop().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod edge;
pub mod error;
pub mod gateway;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod runner;
pub mod server;
pub mod source;

pub use app::{run, run_from, stop_on_signal, Listening};
pub use error::HostError;
pub use runner::preflight::{preflight, ConfigRefused};
