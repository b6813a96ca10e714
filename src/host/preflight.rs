//! The start-up check (fail fast): every chain of every route is prepared
//! on the runner before the proxy takes traffic, so that a misspelled plugin
//! or a bad plugin configuration refuses the configuration with the
//! runner's message instead of answering every request with an error.

use super::client::{CallError, ExtClient};
use super::config::{Config, Phase, Route, DEFAULT_RUNNER};

/// A route phase whose chain the runner would not prepare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route}: {}: {reason}", .phase.name())]
pub struct ConfigRefused {
    /// The route's id.
    pub route: String,
    /// The phase.
    pub phase: Phase,
    /// The runner's message (it names the `conf[i]` entry and the plugin),
    /// or why the runner could not be asked.
    pub reason: String,
}

/// Prepares the chain of every phase of every route (disabled routes too)
/// that runs on the default runner ([`DEFAULT_RUNNER`]) with PREPARE_CONF,
/// under the keys the proxy uses: the tokens stay in `client`'s cache, so
/// the proxy's first requests reuse them. Meant for start-up, `extplug
/// check`, and any later reload of a configuration.
///
/// # Errors
/// The first route phase whose chain the runner refuses (`badRequest`: the
/// runner's message), or that cannot be prepared at all (the runner is down,
/// timed out, answered out of protocol).
pub async fn preflight(config: &Config, client: &ExtClient) -> Result<(), ConfigRefused> {
    preflight_on(config, DEFAULT_RUNNER, client).await
}

/// [`preflight`] for the chains that run on the runner named `runner`,
/// whose client is `client`.
///
/// # Errors
/// As for [`preflight`].
pub async fn preflight_on(
    config: &Config,
    runner: &str,
    client: &ExtClient,
) -> Result<(), ConfigRefused> {
    for route in &config.routes {
        if let Err((phase, e)) = preflight_route(route, runner, client).await {
            let reason = match e {
                CallError::ChainRefused(message) => message,
                other => format!("the chain could not be prepared: {other}"),
            };
            return Err(ConfigRefused {
                route: route.id.clone(),
                phase,
                reason,
            });
        }
    }
    Ok(())
}

/// Prepares the chains of `route`'s phases that run on the runner named
/// `runner` (the tokens stay in `client`'s cache), for a source that
/// checks its routes one by one (etcd: a refused route is skipped, the
/// others serve).
///
/// # Errors
/// The first phase whose chain could not be prepared, with the call's
/// error: [`CallError::ChainRefused`] when the runner refused it.
pub async fn preflight_route(
    route: &Route,
    runner: &str,
    client: &ExtClient,
) -> Result<(), (Phase, CallError)> {
    for phase in [Phase::PreReq, Phase::PostReq, Phase::PostResp] {
        let Some(conf) = route.phase(phase).filter(|c| c.runner == runner) else {
            continue;
        };
        client.ticket_unlogged(conf).await.map_err(|e| (phase, e))?;
    }
    Ok(())
}
