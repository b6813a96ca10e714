//! The runners of a configuration, by name: each with its own supervisor
//! and client (connection pool, token cache), so that one runner crashing
//! or hanging never touches the routes on another.

use super::client::ExtClient;
use super::preflight::{preflight, ConfigRefused};
use super::supervisor::{RunnerState, Supervisor};
use crate::host::config::{Config, RunnerConf, DEFAULT_RUNNER};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why the runners of a configuration did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A runner's private directory could not be created, or is not
    /// private (the message names the path and what is wrong).
    #[error("cannot prepare the runner's socket directory: {0}")]
    RunnerDir(std::io::Error),
    /// A runner did not start (missing or not executable program, exited
    /// before opening its socket, did not open it in time), or a route
    /// names a runner the configuration lacks.
    #[error("the runner did not start: {0}")]
    RunnerStart(String),
    /// A runner refused a route's chain at start (see [`preflight`]).
    #[error(transparent)]
    Refused(#[from] ConfigRefused),
}

impl StartError {
    /// Whether the configuration is at fault (a refused chain, a runner
    /// that cannot start), rather than the machine (a directory).
    pub fn is_config_error(&self) -> bool {
        matches!(self, StartError::RunnerStart(_) | StartError::Refused(_))
    }
}

/// One running runner: its configuration, supervisor and client.
pub struct RunnerHandle {
    /// What it was started with.
    pub conf: RunnerConf,
    /// Keeps the process running.
    pub supervisor: Supervisor,
    /// Calls it; shared by every proxy (configuration) that uses it, so
    /// its prepared tokens outlive a reload.
    pub client: Arc<ExtClient>,
}

impl RunnerHandle {
    /// Starts the runner `name` with `conf` and waits for its first start.
    /// `Ok(None)`: `shutdown` was cancelled meanwhile (the runner is stopped
    /// again).
    ///
    /// # Errors
    /// The socket directory cannot be created ([`StartError::RunnerDir`]) or
    /// the runner does not start ([`StartError::RunnerStart`]; the message
    /// names the runner unless it is the default one).
    pub async fn start(
        name: &str,
        conf: &RunnerConf,
        shutdown: &CancellationToken,
    ) -> Result<Option<RunnerHandle>, StartError> {
        let mut supervisor = Supervisor::start(conf.clone()).map_err(StartError::RunnerDir)?;
        let started = tokio::select! {
            started = supervisor.started() => Some(started),
            _ = shutdown.cancelled() => None,
        };
        match started {
            Some(Ok(())) => {}
            Some(Err(reason)) => {
                supervisor.stop().await;
                return Err(StartError::RunnerStart(named(name, reason)));
            }
            None => {
                supervisor.stop().await;
                return Ok(None);
            }
        }
        let client = Arc::new(
            ExtClient::new(conf, supervisor.state()).with_restarter(supervisor.restarter()),
        );
        Ok(Some(RunnerHandle {
            conf: conf.clone(),
            supervisor,
            client,
        }))
    }
}

/// `reason`, prefixed with the runner's name when it is not the default
/// runner (whose messages stay as they were with one runner).
fn named(name: &str, reason: String) -> String {
    if name == DEFAULT_RUNNER {
        reason
    } else {
        format!("runner `{name}`: {reason}")
    }
}

/// Every runner of a configuration, by name.
#[derive(Default)]
pub struct Runners(pub BTreeMap<String, RunnerHandle>);

impl Runners {
    /// Starts every runner of `config` and has each prepare the chains that
    /// run on it ([`preflight`]). Everything started is stopped again
    /// when one fails, or when `shutdown` is cancelled meanwhile (then
    /// `Ok(None)`).
    ///
    /// # Errors
    /// As for [`RunnerHandle::start`], or a runner refuses a chain
    /// ([`StartError::Refused`]).
    pub async fn start(
        config: &Config,
        shutdown: &CancellationToken,
    ) -> Result<Option<Runners>, StartError> {
        let mut runners = Runners::default();
        for (name, conf) in config.runner_confs() {
            match RunnerHandle::start(name, conf, shutdown).await {
                Ok(Some(handle)) => {
                    runners.0.insert(name.to_owned(), handle);
                }
                Ok(None) => {
                    runners.stop().await;
                    return Ok(None);
                }
                Err(e) => {
                    runners.stop().await;
                    return Err(e);
                }
            }
        }
        let checked = tokio::select! {
            checked = runners.preflight(config) => Some(checked),
            _ = shutdown.cancelled() => None,
        };
        match checked {
            Some(Ok(())) => Ok(Some(runners)),
            Some(Err(e)) => {
                runners.stop().await;
                Err(e)
            }
            None => {
                runners.stop().await;
                Ok(None)
            }
        }
    }

    /// Has each runner prepare the chains of `config` that run on it.
    ///
    /// # Errors
    /// The first chain refused ([`StartError::Refused`]).
    pub async fn preflight(&self, config: &Config) -> Result<(), StartError> {
        for (name, handle) in &self.0 {
            preflight(&config.routes, name, &handle.client).await?;
        }
        Ok(())
    }

    /// The clients by name, for [`crate::host::proxy::Proxy::with_runners`].
    pub fn clients(&self) -> HashMap<String, Arc<ExtClient>> {
        self.0
            .iter()
            .map(|(name, h)| (name.clone(), h.client.clone()))
            .collect()
    }

    /// Each runner's state, by name.
    pub fn states(&self) -> Vec<(String, watch::Receiver<RunnerState>)> {
        self.0
            .iter()
            .map(|(name, h)| (name.clone(), h.supervisor.state()))
            .collect()
    }

    /// Stops every runner (at once, not one after another) and waits until
    /// they are gone.
    pub async fn stop(self) {
        futures::future::join_all(self.0.into_values().map(|h| h.supervisor.stop())).await;
    }
}
