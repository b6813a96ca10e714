//! Where the routes come from, and the validated route table they make.
//!
//! Two sources feed the same table ([`RouteTable`]): the configuration
//! file (`routes`, all or nothing: a bad route refuses the file), and an
//! etcd cluster holding APISIX's keys ([`super::etcd`]: route by route, a bad one
//! is skipped with its key and the reason while the others serve). The
//! proxy swaps a table in through the gateway's one apply path
//! ([`RouteSink`]) either way; `extplug routes` lists what a source would serve.

use crate::host::config::{Config, ConfigError, Route};
use std::path::PathBuf;

/// What was wrong with a skipped object: the `kind` label of
/// `extplug_config_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// A route object is not valid, or names an upstream, service or
    /// runner that does not exist (yet) or is not valid.
    Route,
    /// An upstream object is not valid.
    Upstream,
    /// A service object is not valid.
    Service,
    /// The runner refused a route's plugin chain.
    Chain,
    /// An SSL object is not valid.
    Ssl,
}

impl ErrorKind {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Route => "route",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Service => "service",
            ErrorKind::Chain => "chain",
            ErrorKind::Ssl => "ssl",
        }
    }
}

/// An object left out of the table, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skipped {
    /// Where it is: its etcd key (`/apisix/routes/1`).
    pub key: String,
    /// What it is and what was wrong.
    pub kind: ErrorKind,
    /// The reason, naming the field.
    pub reason: String,
}

/// The routes a source gives, checked: those to serve, and the objects
/// left out.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// The valid routes.
    pub routes: Vec<Route>,
    /// The objects skipped (never from a file: a file is all or nothing).
    pub skipped: Vec<Skipped>,
    /// The valid SSL objects (etcd's; a file's are in its configuration).
    pub ssls: Vec<crate::host::config::Ssl>,
}

/// A route a lenient apply ([`RouteSink::apply_routes`]) left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLeftOut {
    /// The route's id.
    pub route: String,
    /// [`ErrorKind::Chain`]: the runner refused a chain; [`ErrorKind::Route`]:
    /// it names a runner the configuration lacks.
    pub kind: ErrorKind,
    /// Why, with the phase.
    pub reason: String,
}

/// Where a live source (etcd) sends each new table: the gateway, which
/// implements it (so that a source knows no gateway type).
#[async_trait::async_trait]
pub trait RouteSink: Send + Sync {
    /// Swaps in `routes` with the rest of the configuration being served,
    /// route by route: a route whose chain the runner refuses, or which
    /// names a runner the configuration lacks, is left out (and returned,
    /// with why), the others serve.
    ///
    /// # Errors
    /// The gateway is stopping, or the proxy cannot be built.
    async fn apply_routes(&self, routes: Vec<Route>) -> Result<Vec<RouteLeftOut>, ConfigError>;

    /// Says why the routes are not loaded yet (`/readyz` answers 503 with
    /// it), while the first load is being retried.
    fn routes_pending(&self, why: String);

    /// The routes are loaded: ready from now on, as far as routes go.
    fn routes_loaded(&self);

    /// Serves `ssls` (etcd's SSL objects, checked) from now on, in place of
    /// those given before.
    fn apply_ssls(&self, ssls: Vec<crate::host::config::Ssl>);
}

/// A source of routes: the file, or etcd. Loading reads it once; etcd's
/// live following is `etcd::follow`.
#[async_trait::async_trait]
pub trait RouteSource: Send + Sync {
    /// What the source is, for messages (`config.json`, `etcd
    /// http://127.0.0.1:2379 /apisix`).
    fn describe(&self) -> String;

    /// Reads the source once and checks every route on its own (not yet
    /// with the runner: see [`RouteSink::apply_routes`]).
    ///
    /// # Errors
    /// The source cannot be read (the file is not valid, etcd cannot be
    /// reached); the message says which and why.
    async fn load(&self) -> Result<RouteTable, ConfigError>;
}

/// The routes of the configuration file (`routes`).
#[derive(Debug, Clone)]
pub struct FileRoutes {
    /// The file.
    pub path: PathBuf,
}

#[async_trait::async_trait]
impl RouteSource for FileRoutes {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn load(&self) -> Result<RouteTable, ConfigError> {
        let config = Config::load(&self.path)?;
        Ok(RouteTable {
            routes: config.routes,
            skipped: Vec::new(),
            ssls: config.ssls,
        })
    }
}
