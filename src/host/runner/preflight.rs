//! The start-up check (fail fast): every chain of every route is prepared
//! on the runner before the proxy takes traffic, so that a misspelled plugin
//! or a bad plugin configuration refuses the configuration with the
//! runner's message instead of answering every request with an error.

use super::client::{CallError, ExtClient};
use crate::host::config::{Phase, Route};

/// A route phase whose chain was not prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route}: {}: {why}", .phase.name())]
pub struct ConfigRefused {
    /// The route's id.
    pub route: String,
    /// The phase.
    pub phase: Phase,
    /// Whether the runner refused the chain, or could not be asked: a
    /// source that checks route by route leaves the first out and serves
    /// the second (the chain is prepared at its first request).
    pub why: Refusal,
}

/// Why a chain was not prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The runner refused the chain (`badRequest` on PREPARE_CONF): its
    /// message, which names the `conf[i]` entry and the plugin.
    #[error("{0}")]
    Chain(String),
    /// The runner could not be asked (down, timed out, answered out of
    /// protocol): why.
    #[error("the chain could not be prepared: {0}")]
    NotAsked(String),
}

/// Prepares, with PREPARE_CONF, the chain of every phase of `routes`
/// (disabled routes too) that runs on the runner named `runner`, whose
/// client is `client`, under the keys the proxy uses: the tokens stay in
/// `client`'s cache, so the proxy's first requests reuse them. Start-up,
/// `extplug check`, reloads and etcd's route-by-route checks all use it
/// (etcd one route at a time).
///
/// # Errors
/// The first route phase whose chain the runner refuses
/// ([`Refusal::Chain`]), or that cannot be prepared at all
/// ([`Refusal::NotAsked`]).
pub async fn preflight<'a>(
    routes: impl IntoIterator<Item = &'a Route>,
    runner: &str,
    client: &ExtClient,
) -> Result<(), ConfigRefused> {
    for route in routes {
        for phase in [Phase::PreReq, Phase::PostReq, Phase::PostResp] {
            let Some(conf) = route.phase(phase).filter(|c| c.runner == runner) else {
                continue;
            };
            if let Err(e) = client.ticket_unlogged(conf).await {
                let why = match e {
                    CallError::ChainRefused(message) => Refusal::Chain(message),
                    other => Refusal::NotAsked(other.to_string()),
                };
                return Err(ConfigRefused {
                    route: route.id.clone(),
                    phase,
                    why,
                });
            }
        }
    }
    Ok(())
}
