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
//! // One runner (`ext-plugin`); `host::runners` runs several.
//! let mut supervisor = Supervisor::start(config.runner.clone())?;
//! supervisor.started().await?; // the first start fails fast
//! let client = ExtClient::new(&config.runner, supervisor.state());
//! extplug::host::preflight(&config, &client).await?; // every chain, once
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
pub mod gateway;
pub mod ingress;
pub mod path;
pub mod preflight;
pub mod proxy;
pub mod router;
pub mod runner_cmd;
pub mod runner_dir;
pub mod runner_proc;
pub mod runners;
pub mod server;
pub mod supervisor;
pub mod vars;

use config::Config;
pub use preflight::{preflight, preflight_on, ConfigRefused};
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
    /// The runner did not start the first time (missing or not executable
    /// program, exited before opening its socket, did not open it in time).
    #[error("the runner did not start: {0}")]
    RunnerStart(String),
    /// The runner refused a route's chain at start (see [`preflight()`]).
    #[error(transparent)]
    Refused(#[from] ConfigRefused),
}

impl HostError {
    /// Whether the configuration is at fault (a refused chain, a runner that
    /// cannot start): `extplug` exits with 2 then, as for a bad file.
    pub fn is_config_error(&self) -> bool {
        matches!(self, HostError::RunnerStart(_) | HostError::Refused(_))
    }
}

/// Starts every runner of `config` and checks the configuration with them:
/// waits for their first start, then has each prepare its chains
/// ([`preflight_on`]). The runners are stopped again when either fails, or
/// when `shutdown` is cancelled meanwhile (then `Ok(None)`: a signal during
/// a slow start stops at once).
///
/// # Errors
/// A runner's directory cannot be created ([`HostError::RunnerDir`]), a
/// runner does not start ([`HostError::RunnerStart`]), or one refuses a
/// chain ([`HostError::Refused`]).
pub async fn start_runner(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<runners::Runners>, HostError> {
    runners::Runners::start(config, shutdown).await
}

/// Runs the proxy for `config` until `shutdown`, without reloads from a
/// file; see [`run_from`].
///
/// # Errors
/// As for [`run_from`].
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), HostError> {
    run_from(config, None, shutdown, on_listening).await
}

/// Runs the proxy for `config` until `shutdown`: starts the runners and has
/// them prepare every chain ([`gateway::Gateway::start`]), listens (calling
/// `on_listening` with the bound address), serves, then finishes requests
/// in flight, stops the runners, and returns. SIGHUP reloads the
/// configuration from `source` ([`gateway::Gateway::reload`]).
///
/// # Errors
/// The address cannot be bound, a runner's directory cannot be created,
/// a runner does not start, or one refuses a route's chain: then
/// `on_listening` is never called.
pub async fn run_from(
    config: Config,
    source: Option<gateway::ConfigSource>,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), HostError> {
    // First: SIGHUP's default action ends the process, and an operator may
    // send one while the runners start.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    // The same for SIGUSR2 (runner upgrades).
    let upgrades = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HostError::Listen {
            addr: config.listen,
            source,
        })?;
    let (limits, grace, listen, routes) = (
        config.client,
        config.shutdown_grace,
        config.listen,
        config.routes.len(),
    );
    let Some(gateway) = gateway::Gateway::start(config, source, shutdown.clone()).await? else {
        info!("stopped while starting");
        return Ok(());
    };
    let gateway = Arc::new(gateway);
    match hangups {
        Ok(mut hangups) => {
            let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        got = hangups.recv() => if got.is_none() { break },
                    }
                    info!(signal = "SIGHUP", "reloading the configuration");
                    // Logged by `reload` either way.
                    let _ = gateway.reload().await;
                }
            });
        }
        Err(e) => {
            tracing::warn!(cause = %e, "cannot install the SIGHUP handler: no reload on SIGHUP")
        }
    }
    match upgrades {
        Ok(signal) => {
            tokio::spawn(upgrade_on_signal(signal, gateway.clone(), shutdown.clone()));
        }
        Err(e) => tracing::error!("cannot install the SIGUSR2 handler (runner upgrades): {e}"),
    }
    let addr = listener.local_addr().unwrap_or(listen);
    info!(%addr, routes, "proxy listening");
    on_listening(addr);
    server::serve(gateway.current(), listener, limits, shutdown, grace).await;
    gateway.stop().await;
    info!("proxy stopped");
    Ok(())
}

/// Upgrades every runner on every SIGUSR2 (see
/// [`supervisor::Restarter::upgrade`]), until `shutdown`.
async fn upgrade_on_signal(
    mut signal: tokio::signal::unix::Signal,
    gateway: Arc<gateway::Gateway>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            got = signal.recv() => if got.is_none() { return },
            _ = shutdown.cancelled() => return,
        }
        info!(signal = "SIGUSR2", "upgrading the runners");
        // Not awaited here: the supervisors queue upgrades themselves, and
        // a signal must never wait for the previous one.
        for (name, runner) in gateway.restarters().await {
            tokio::spawn(async move {
                if let Err(e) = runner.upgrade().await {
                    tracing::error!(runner = %name, "runner upgrade failed: {e}");
                }
            });
        }
    }
}
