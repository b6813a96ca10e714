//! Plugin registry and chains: a route phase's configured filters, in order,
//! and how they run for one call.

use crate::request::Request;
use crate::response::Response;
use crate::{Filter, Needs, Plugin, PluginError};
use futures::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// The plugins a runner offers, by name.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: HashMap<String, Arc<dyn Plugin>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `plugin` under its [`Plugin::name`], replacing one of the same name.
    pub fn with(mut self, plugin: impl Plugin) -> Self {
        self.add(Arc::new(plugin));
        self
    }

    /// Adds a shared plugin under its [`Plugin::name`], replacing one of the same name.
    pub fn add(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins.insert(plugin.name().to_owned(), plugin);
    }

    /// The plugin named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Why a chain could not be prepared. Nothing is cached in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// No plugin of that name is registered.
    #[error("unknown plugin `{name}` (this runner has: {available})")]
    UnknownPlugin {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        available: String,
    },
    /// The plugin refused its configuration.
    #[error("plugin `{plugin}`: invalid configuration: {reason}")]
    BadConf {
        /// The plugin's name.
        plugin: String,
        /// What was wrong.
        reason: String,
    },
}

/// Why a call failed. The runner answers it with `serviceUnavailable`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A filter returned an error.
    #[error("plugin `{plugin}` failed: {source}")]
    Failed {
        /// The plugin's name.
        plugin: String,
        /// Its error.
        source: PluginError,
    },
    /// A filter panicked.
    #[error("plugin `{plugin}` panicked: {message}")]
    Panicked {
        /// The plugin's name.
        plugin: String,
        /// The panic's message, when it had one.
        message: String,
    },
}

/// A route phase's configured filters, in order, with their combined needs.
pub struct Chain {
    filters: Vec<(String, Box<dyn Filter>)>,
    needs: Needs,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.filters.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Chain")
            .field("plugins", &names)
            .field("needs", &self.needs)
            .finish()
    }
}

impl Chain {
    /// Configures each `(plugin name, JSON configuration)` entry, in order.
    ///
    /// # Errors
    /// The first entry whose plugin is unknown or refuses its configuration.
    pub fn prepare<'c>(
        registry: &Registry,
        conf: impl IntoIterator<Item = (&'c str, &'c str)>,
    ) -> Result<Chain, PrepareError> {
        let mut filters = Vec::new();
        let mut needs = Needs::default();
        for (name, value) in conf {
            let plugin = registry
                .get(name)
                .ok_or_else(|| PrepareError::UnknownPlugin {
                    name: name.to_owned(),
                    available: registry.names().join(", "),
                })?;
            let filter = plugin.configure(value).map_err(|e| PrepareError::BadConf {
                plugin: name.to_owned(),
                reason: e.0,
            })?;
            needs.merge(filter.needs());
            filters.push((name.to_owned(), filter));
        }
        Ok(Chain { filters, needs })
    }

    /// What the chain's filters declared they will read.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// The plugin names, in order.
    pub fn plugin_names(&self) -> impl Iterator<Item = &str> {
        self.filters.iter().map(|(n, _)| n.as_str())
    }

    /// Runs the request phase of each filter in order, until one stops.
    /// The changes are in `req`; see [`Request::into_outcome`].
    ///
    /// # Errors
    /// The first filter that fails or panics; the filters after it do not run.
    pub async fn run_request(&self, req: &mut Request<'_>) -> Result<(), CallError> {
        for (name, filter) in &self.filters {
            let result = AssertUnwindSafe(filter.request(req)).catch_unwind().await;
            check(name, result)?;
            if req.is_stopped() {
                break;
            }
        }
        Ok(())
    }

    /// Runs the response phase of each filter in order.
    /// The changes are in `resp`; see [`Response::into_outcome`].
    ///
    /// # Errors
    /// The first filter that fails or panics; the filters after it do not run.
    pub async fn run_response(&self, resp: &mut Response<'_>) -> Result<(), CallError> {
        for (name, filter) in &self.filters {
            let result = AssertUnwindSafe(filter.response(resp)).catch_unwind().await;
            check(name, result)?;
        }
        Ok(())
    }
}

/// Turns one filter's result (or panic) into the chain's.
fn check(
    plugin: &str,
    result: std::thread::Result<Result<(), PluginError>>,
) -> Result<(), CallError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(CallError::Failed {
            plugin: plugin.to_owned(),
            source,
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            Err(CallError::Panicked {
                plugin: plugin.to_owned(),
                message,
            })
        }
    }
}
