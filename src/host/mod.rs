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

pub mod admin;
pub mod client;
pub mod config;
pub mod demo;
pub mod ingress;
pub mod metrics;
pub mod path;
pub mod preflight;
pub mod proxy;
pub mod router;
pub mod runner_cmd;
pub mod runner_dir;
pub mod runner_log;
pub mod server;
pub mod supervisor;
pub mod vars;

use config::Config;
pub use preflight::{preflight, ConfigRefused};
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
    /// The admin listener's address (`admin.listen`) could not be bound.
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    AdminListen {
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
    /// The runner refused a route's chain at start (see [`preflight`]).
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

/// The runner, started and checked by [`start_runner`], and its client.
pub type Started = (supervisor::Supervisor, Arc<client::ExtClient>);

/// Starts the runner for `config` and checks the configuration with it:
/// waits for its first start, then prepares every chain ([`preflight`]).
/// The runner is stopped again when either fails, or when `shutdown` is
/// cancelled meanwhile (then `Ok(None)`: a signal during a slow start stops
/// at once).
///
/// # Errors
/// The runner's directory cannot be created ([`HostError::RunnerDir`]), the
/// runner does not start ([`HostError::RunnerStart`]), or it refuses a chain
/// ([`HostError::Refused`]).
pub async fn start_runner(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<Started>, HostError> {
    let mut supervisor =
        supervisor::Supervisor::start(config.runner.clone()).map_err(HostError::RunnerDir)?;
    let started = tokio::select! {
        started = supervisor.started() => Some(started),
        _ = shutdown.cancelled() => None,
    };
    match started {
        Some(Ok(())) => {}
        Some(Err(reason)) => {
            supervisor.stop().await;
            return Err(HostError::RunnerStart(reason));
        }
        None => {
            supervisor.stop().await;
            return Ok(None);
        }
    }
    let client = Arc::new(
        client::ExtClient::new(&config.runner, supervisor.state())
            .with_restarter(supervisor.restarter()),
    );
    let checked = tokio::select! {
        checked = preflight(config, &client) => Some(checked),
        _ = shutdown.cancelled() => None,
    };
    match checked {
        Some(Ok(())) => Ok(Some((supervisor, client))),
        Some(Err(refused)) => {
            supervisor.stop().await;
            Err(refused.into())
        }
        None => {
            supervisor.stop().await;
            Ok(None)
        }
    }
}

/// Where the host listens, once it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The proxy.
    pub proxy: SocketAddr,
    /// The admin listener, when configured.
    pub admin: Option<SocketAddr>,
}

/// `/readyz` of the host: "starting" until the runner is ready and the
/// routes are loaded (`runner` set), "stopping" once `shutdown` is
/// cancelled, else the runner's state.
fn readiness(
    runner: Arc<std::sync::OnceLock<tokio::sync::watch::Receiver<supervisor::RunnerState>>>,
    shutdown: CancellationToken,
) -> admin::Readiness {
    Arc::new(move || {
        if shutdown.is_cancelled() {
            return Err("the proxy is stopping".into());
        }
        let Some(state) = runner.get() else {
            return Err(
                "starting: the runner is not ready and the routes are not loaded yet".into(),
            );
        };
        let name = metrics::DEFAULT_RUNNER;
        match &*state.borrow() {
            supervisor::RunnerState::Ready { .. } => Ok(()),
            supervisor::RunnerState::Starting { .. } => Err(format!("runner {name}: starting")),
            supervisor::RunnerState::Down { reason } => {
                Err(format!("runner {name}: down: {reason}"))
            }
            supervisor::RunnerState::Stopped => Err(format!("runner {name}: stopped")),
        }
    })
}

/// Runs the proxy for `config` until `shutdown`: binds the proxy's and the
/// admin listener's addresses (the admin listener answers from then on),
/// starts the runner and has it prepare every chain ([`start_runner`]),
/// calls `on_listening` with the bound addresses, serves, then finishes
/// requests in flight, stops the runner, and returns.
///
/// # Errors
/// An address cannot be bound, the runner's directory cannot be created,
/// the runner does not start, or it refuses a route's chain: then
/// `on_listening` is never called.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(Listening),
) -> Result<(), HostError> {
    run_with(config, shutdown, admin::AdminHooks::default(), on_listening).await
}

/// [`run`], with the admin listener's actions (`POST /reload`, `POST
/// /runners/restart`) given by `hooks`; their `readiness` is replaced by the
/// host's own.
///
/// # Errors
/// As for [`run`].
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    mut hooks: admin::AdminHooks,
    on_listening: impl FnOnce(Listening),
) -> Result<(), HostError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HostError::Listen {
            addr: config.listen,
            source,
        })?;
    // Stopped last, after the runner: `/healthz` answers while we run.
    let admin_stop = CancellationToken::new();
    let _stop_admin = admin_stop.clone().drop_guard();
    let runner_state = Arc::new(std::sync::OnceLock::new());
    let admin_addr = match config.admin {
        None => None,
        Some(conf) => {
            let admin_listener =
                admin::bind(conf.listen)
                    .await
                    .map_err(|source| HostError::AdminListen {
                        addr: conf.listen,
                        source,
                    })?;
            let addr = admin_listener.local_addr().unwrap_or(conf.listen);
            hooks.readiness = readiness(runner_state.clone(), shutdown.clone());
            admin::spawn(admin_listener, hooks, admin_stop.clone());
            Some(addr)
        }
    };
    let Some((supervisor, client)) = start_runner(&config, &shutdown).await? else {
        info!("stopped while starting");
        return Ok(());
    };
    let _ = runner_state.set(supervisor.state());
    let proxy = Arc::new(proxy::Proxy::new(&config, client));
    let addr = listener.local_addr().unwrap_or(config.listen);
    info!(%addr, routes = config.routes.len(), "proxy listening");
    on_listening(Listening {
        proxy: addr,
        admin: admin_addr,
    });
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
