//! The host side: the runner's supervisor, the ext-plugin client, and the
//! HTTP reverse proxy that uses them (`extplug proxy`, `extplug demo`).
//!
//! Another Rust proxy can embed the parts: [`supervisor::Supervisor`] to run
//! the runner, [`client::ExtClient`] to call it with the protocol's request and
//! response data ([`crate::wire`]), and apply the outcomes itself:
//!
//! ```no_run
//! use extplug::host::client::{ExtClient, InfoProvider};
//! use extplug::host::config::Config;
//! use extplug::host::supervisor::Supervisor;
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
//! let supervisor = Supervisor::start(config.runner.clone())?;
//! let client = ExtClient::new(&config.runner, supervisor.state());
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

pub mod client;
pub mod config;
pub mod demo;
pub mod ingress;
pub mod path;
pub mod proxy;
pub mod router;
pub mod runner_dir;
pub mod server;
pub mod supervisor;
pub mod vars;

use config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Why the host could not run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The runner's private directory could not be created, or is not
    /// private (the message names the path and what is wrong).
    #[error("cannot prepare the runner's socket directory: {0}")]
    RunnerDir(std::io::Error),
}

/// Runs the proxy for `config` until `shutdown`: starts the runner, listens
/// (calling `on_listening` with the bound address), serves, then finishes
/// requests in flight, stops the runner, and returns.
///
/// # Errors
/// The address cannot be bound, or the runner's directory cannot be created.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), HostError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HostError::Listen {
            addr: config.listen,
            source,
        })?;
    let supervisor =
        supervisor::Supervisor::start(config.runner.clone()).map_err(HostError::RunnerDir)?;
    let client = Arc::new(
        client::ExtClient::new(&config.runner, supervisor.state())
            .with_restarter(supervisor.restarter()),
    );
    let proxy = Arc::new(proxy::Proxy::new(&config, client));
    let addr = listener.local_addr().unwrap_or(config.listen);
    info!(%addr, routes = config.routes.len(), "proxy listening");
    on_listening(addr);
    server::serve(
        proxy,
        listener,
        config.client,
        shutdown,
        config.shutdown_grace,
    )
    .await;
    supervisor.stop().await;
    info!("proxy stopped");
    Ok(())
}
