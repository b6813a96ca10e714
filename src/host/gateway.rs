//! The running gateway: the current configuration as an immutable
//! [`Proxy`] in a swap cell, the runners by name, and hot reload.
//!
//! A reload builds the new proxy beside the old one and swaps it in whole:
//! each request loads the current proxy once and finishes under it, so a
//! request in flight never sees half of a configuration. Runners whose
//! settings did not change are kept with their client, so the chains that
//! did not change keep their tokens (the token key carries a hash of the
//! chain; a changed chain gets a new key and is prepared again).

use crate::host::config::tls::expiry_warnings;
use crate::host::config::{check_runners, Config, ConfigError, Route, RunnerConf, Ssl};
use crate::host::metrics;
use crate::host::proxy::{Proxy, ProxyCell};
use crate::host::runner::preflight::{preflight, ConfigRefused, Refusal};
use crate::host::runner::set::{RunnerHandle, Runners, StartError};
use crate::host::runner::supervisor::{Restarter, RunnerState};
use crate::host::server::tls::Certs;
use crate::host::source::{ErrorKind, RouteLeftOut, RouteSink};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

/// Where a reload reads the configuration from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file given with `--config`.
    pub path: PathBuf,
    /// `--listen`, which overrides the file's `listen` at every load.
    pub listen: Option<SocketAddr>,
}

/// The configuration being served and the runners it uses. Behind a lock
/// that also makes reloads one at a time.
struct Live {
    config: Config,
    runners: Runners,
}

/// The gateway: what serves requests now, and how to change it.
pub struct Gateway {
    current: Arc<ProxyCell>,
    live: tokio::sync::Mutex<Live>,
    /// Each runner's state, by name: a snapshot replaced at each reload,
    /// readable while a reload holds `live`.
    states: arc_swap::ArcSwap<Vec<(String, watch::Receiver<RunnerState>)>>,
    source: Option<ConfigSource>,
    shutdown: CancellationToken,
    /// Runners that a reload removed or replaced, stopping once the
    /// requests still using them have finished.
    retiring: TaskTracker,
    /// Why the routes are not loaded yet (etcd: until the first load);
    /// `None` once they are (a file's are from the start).
    pending: std::sync::Mutex<Option<String>>,
    /// The certificates the TLS listener serves: the file's `ssls`,
    /// replaced at each reload, and etcd's.
    certs: Arc<Certs>,
}

/// What an apply changes.
enum Change {
    /// The whole configuration (a file's): all or nothing.
    Config(Box<Config>),
    /// The routes only (etcd's): route by route.
    Routes(Vec<Route>),
}

/// What a reload does with a runner of the new configuration.
enum Plan {
    /// Same settings: keep it, its client and tokens.
    Keep,
    /// A new runner name: start it.
    Add,
    /// Only `cmd` or `env` changed: a new program or environment, the
    /// client's settings unchanged ([`upgrade_runner`]).
    Upgrade,
    /// Client settings changed (timeouts, pool): a new runner and client.
    Replace,
}

fn plan(old: Option<&RunnerConf>, new: &RunnerConf) -> Plan {
    match old {
        None => Plan::Add,
        Some(old) if old == new => Plan::Keep,
        Some(old) => {
            let same_client = RunnerConf {
                cmd: new.cmd.clone(),
                env: new.env.clone(),
                ..old.clone()
            } == *new;
            if same_client {
                Plan::Upgrade
            } else {
                Plan::Replace
            }
        }
    }
}

/// Starts the new program of runner `name` for a reload that changed its
/// `cmd` or `env`: the new runner is started and ready before anything
/// switches to it; the caller swaps the configuration, then the old runner
/// is stopped once its calls in flight have finished.
///
/// Not an in-place upgrade of the old runner's supervisor
/// ([`Restarter::upgrade_to`]): a reload is all or nothing, and an upgrade
/// cannot be undone when a later step refuses the configuration (a chain
/// the new program refuses), while a runner started beside the old one is
/// simply stopped again.
async fn upgrade_runner(
    name: &str,
    old: &RunnerHandle,
    conf: &RunnerConf,
    shutdown: &CancellationToken,
) -> Result<Option<RunnerHandle>, StartError> {
    info!(runner = name, old = ?old.conf.cmd, new = ?conf.cmd, "upgrading the runner: starting the new one");
    RunnerHandle::start(name, conf, shutdown).await
}

/// The settings a reload cannot change (they are used once, at start), and
/// why; `None` when `new` keeps them.
fn restart_only_change(old: &Config, new: &Config) -> Option<String> {
    const RESTART: &str = "restart extplug to change it; the previous configuration keeps serving";
    if old.listen != new.listen {
        return Some(format!(
            "`listen` changed from {} to {}: the listening socket is bound at start; {RESTART}",
            old.listen, new.listen
        ));
    }
    if old.client != new.client {
        return Some(format!(
            "the client connection limits (`client_header_timeout_ms`, `keepalive_timeout_ms`, `max_client_connections`, `max_request_header_bytes`, `max_request_headers`) changed: they apply to the listener from its start; {RESTART}"
        ));
    }
    if old.shutdown_grace != new.shutdown_grace {
        return Some(format!(
            "`shutdown_grace_ms` changed: it is read at start; {RESTART}"
        ));
    }
    if old.admin != new.admin {
        return Some(format!(
            "`admin` changed: the admin listener is bound at start; {RESTART}"
        ));
    }
    if old.etcd != new.etcd {
        return Some(format!(
            "`etcd` changed: the routes' source is chosen at start; {RESTART}"
        ));
    }
    let listener = |c: &Config| c.tls.as_ref().map(|t| (t.listen, t.handshake_timeout));
    if listener(old) != listener(new) || old.client.http2 != new.client.http2 {
        return Some(format!(
            "`tls.listen`, `tls.handshake_timeout_ms` or `http2` changed: the TLS listener and the connections' settings are made at start; {RESTART}"
        ));
    }
    None
}

impl Gateway {
    /// Starts the runners of `config`, has them prepare every chain, and
    /// makes the proxy for it. `source`, when given, is where [`reload`]
    /// reads the next configuration. `Ok(None)`: `shutdown` was cancelled
    /// meanwhile.
    ///
    /// [`reload`]: Gateway::reload
    ///
    /// # Errors
    /// As for [`Runners::start`].
    pub async fn start(
        config: Config,
        source: Option<ConfigSource>,
        shutdown: CancellationToken,
    ) -> Result<Option<Gateway>, StartError> {
        let Some(runners) = Runners::start(&config, &shutdown).await? else {
            return Ok(None);
        };
        let proxy = match Proxy::with_runners(&config, runners.clients(), None) {
            Ok(proxy) => proxy,
            Err(e) => {
                // The configuration's own check refuses unknown runners.
                runners.stop().await;
                return Err(StartError::RunnerStart(e));
            }
        };
        let pending = config.etcd.as_ref().map(|e| {
            format!(
                "the routes are not loaded from etcd ({}) yet",
                e.endpoints.join(", ")
            )
        });
        let certs = Arc::new(Certs::default());
        serve_certs(&certs, &config);
        Ok(Some(Gateway {
            certs,
            pending: std::sync::Mutex::new(pending),
            current: Arc::new(ProxyCell::new(Arc::new(proxy))),
            states: arc_swap::ArcSwap::from_pointee(runners.states()),
            live: tokio::sync::Mutex::new(Live { config, runners }),
            source,
            shutdown,
            retiring: TaskTracker::new(),
        }))
    }

    /// The certificates the TLS listener serves.
    pub fn certs(&self) -> Arc<Certs> {
        self.certs.clone()
    }

    /// Serves etcd's SSL objects from now on (beside the file's).
    pub fn apply_ssls(&self, ssls: Vec<Ssl>) {
        for warning in expiry_warnings(&ssls) {
            tracing::warn!("{warning}");
        }
        self.certs.set_etcd(ssls);
    }

    /// The cell holding the current proxy, which the server reads for each
    /// request.
    pub fn current(&self) -> Arc<ProxyCell> {
        self.current.clone()
    }

    /// A handle on each runner of the configuration being served, by name,
    /// to upgrade it in place (SIGUSR2, `POST /runners/restart`).
    pub async fn restarters(&self) -> Vec<(String, Restarter)> {
        let live = self.live.lock().await;
        live.runners
            .0
            .iter()
            .map(|(name, handle)| (name.clone(), handle.supervisor.restarter()))
            .collect()
    }

    /// Each runner's state, by name (for readiness checks): the runners of
    /// the configuration being served.
    pub fn runner_states(&self) -> Vec<(String, RunnerState)> {
        self.states
            .load()
            .iter()
            .map(|(name, rx)| (name.clone(), rx.borrow().clone()))
            .collect()
    }

    /// Whether every runner of the configuration being served is ready
    /// (for a readiness check): `Err` names the first that is not, and why.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(why) = self.pending.lock().map_or(None, |p| p.clone()) {
            return Err(why);
        }
        for (name, state) in self.runner_states() {
            match state {
                RunnerState::Ready { .. } => {}
                RunnerState::Starting { .. } => return Err(format!("runner `{name}` is starting")),
                RunnerState::Down { reason } => {
                    return Err(format!("runner `{name}` is down: {reason}"))
                }
                RunnerState::Stopped => return Err(format!("runner `{name}` is stopped")),
            }
        }
        Ok(())
    }

    /// Says why the routes are not loaded yet (`/readyz` answers 503 with
    /// it), while the first load from etcd is being retried.
    pub fn routes_pending(&self, why: String) {
        if let Ok(mut pending) = self.pending.lock() {
            if pending.is_some() {
                *pending = Some(why);
            }
        }
    }

    /// The routes are loaded: ready from now on (as far as the routes go;
    /// a later etcd outage keeps the last table serving, and ready).
    pub fn routes_loaded(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            *pending = None;
        }
    }

    /// Reads the configuration file again and applies it ([`Gateway::apply`]);
    /// SIGHUP and the admin listener's `POST /reload` call this. A refusal
    /// is logged (and returned) with the message `extplug check` gives for
    /// that file; the previous configuration keeps serving.
    ///
    /// # Errors
    /// There is no file (the gateway was started without one), the file
    /// is not a valid configuration, it changes a setting that needs a
    /// restart, or its runners do not start or refuse a chain.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let result = match &self.source {
            None => Err(ConfigError(
                "no configuration file to reload (this gateway was not started with --config)"
                    .into(),
            )),
            Some(source) => match Config::load(&source.path) {
                Err(e) => Err(e),
                Ok(mut config) => {
                    if let Some(listen) = source.listen {
                        config.listen = listen;
                    }
                    self.apply(config)
                        .await
                        .map_err(|e| ConfigError(format!("{}: {e}", source.path.display())))
                }
            },
        };
        metrics::config_reload(result.is_ok());
        match &result {
            Ok(()) => info!("configuration reloaded"),
            Err(e) => error!("configuration reload refused, the previous one keeps serving: {e}"),
        }
        result
    }

    /// Swaps in `config`: starts the runners it adds, starts the new
    /// program of those whose `cmd` or `env` changed, has every runner
    /// prepare its chains, then swaps the proxy atomically. Runners removed
    /// or replaced are stopped in the background once the requests using
    /// them have finished. On any error nothing changes (runners started
    /// for it are stopped again).
    ///
    /// # Errors
    /// A setting that needs a restart changed (`listen`, the client
    /// limits, `shutdown_grace_ms`), a runner does not start, or a runner
    /// refuses a chain; the message says which.
    ///
    /// With an etcd source, `config.routes` is ignored: the routes being
    /// served stay (etcd's watch changes them, [`Gateway::apply_routes`]).
    pub async fn apply(&self, config: Config) -> Result<(), ConfigError> {
        self.apply_with(Change::Config(Box::new(config)))
            .await
            .map(drop)
    }

    /// Swaps in `routes` (from etcd) with the rest of the configuration
    /// being served, route by route: a route whose chain the runner refuses,
    /// or which names a runner the configuration lacks, is left out (and
    /// returned, with why), the others serve. Like [`Gateway::apply`]
    /// otherwise (one swap; unchanged chains keep their tokens). A runner
    /// that cannot be asked (down, timing out) leaves the route in: it is
    /// no fault of the route's.
    ///
    /// # Errors
    /// The gateway is stopping, or the proxy cannot be built.
    pub async fn apply_routes(&self, routes: Vec<Route>) -> Result<Vec<RouteLeftOut>, ConfigError> {
        self.apply_with(Change::Routes(routes)).await
    }

    /// [`Gateway::apply`] or [`Gateway::apply_routes`].
    async fn apply_with(&self, change: Change) -> Result<Vec<RouteLeftOut>, ConfigError> {
        let mut live = self.live.lock().await;
        // The routes' new table goes with the configuration being served
        // as it is under the lock: a file reload meanwhile is not undone.
        let (mut config, lenient) = match change {
            Change::Config(config) => (*config, false),
            Change::Routes(routes) => {
                let mut config = live.config.clone();
                config.routes = routes;
                (config, true)
            }
        };
        if let Some(why) = restart_only_change(&live.config, &config) {
            return Err(ConfigError(why));
        }
        if !lenient && config.etcd.is_some() {
            config.routes = live.config.routes.clone();
        }
        let mut left_out = Vec::new();
        if lenient {
            config
                .routes
                .retain(|route| match check_runners(route, &config.runners) {
                    Ok(()) => true,
                    Err(reason) => {
                        left_out.push(RouteLeftOut {
                            route: route.id.clone(),
                            kind: ErrorKind::Route,
                            reason,
                        });
                        false
                    }
                });
        }
        // Runners started for this configuration: stopped again on failure.
        let mut started = Runners::default();
        let failed = |e: StartError| ConfigError(e.to_string());
        for (name, conf) in config.runner_confs() {
            let old = live.runners.0.get(name);
            let handle = match plan(old.map(|h| &h.conf), conf) {
                Plan::Keep => continue,
                Plan::Upgrade => match old {
                    Some(old) => upgrade_runner(name, old, conf, &self.shutdown).await,
                    None => RunnerHandle::start(name, conf, &self.shutdown).await,
                },
                Plan::Add | Plan::Replace => {
                    info!(runner = name, cmd = ?conf.cmd, "starting a runner for the new configuration");
                    RunnerHandle::start(name, conf, &self.shutdown).await
                }
            };
            match handle {
                Ok(Some(handle)) => {
                    started.0.insert(name.to_owned(), handle);
                }
                Ok(None) => {
                    started.stop().await;
                    return Err(ConfigError("the gateway is stopping".into()));
                }
                Err(e) => {
                    started.stop().await;
                    return Err(failed(e));
                }
            }
        }
        // The runners of the new configuration: kept ones, then new ones.
        let mut next: BTreeMap<String, RunnerHandle> = BTreeMap::new();
        let mut clients = started.clients();
        for (name, _) in config.runner_confs() {
            if let (false, Some(h)) = (started.0.contains_key(name), live.runners.0.get(name)) {
                clients.insert(name.to_owned(), h.client.clone());
            }
        }
        // Every chain of the new configuration, on its runner: unchanged
        // chains are in the kept clients' caches already.
        if lenient {
            let mut refused = std::collections::HashSet::new();
            for route in &config.routes {
                for (name, client) in &clients {
                    let checked = tokio::select! {
                        checked = preflight(std::iter::once(route), name, client) => checked,
                        _ = self.shutdown.cancelled() => {
                            started.stop().await;
                            return Err(ConfigError("the gateway is stopping".into()));
                        }
                    };
                    match checked {
                        Ok(()) => {}
                        Err(ConfigRefused {
                            phase,
                            why: Refusal::Chain(reason),
                            ..
                        }) => {
                            refused.insert(route.id.clone());
                            left_out.push(RouteLeftOut {
                                route: route.id.clone(),
                                kind: ErrorKind::Chain,
                                reason: format!(
                                    "{}: the runner refused the chain: {reason}",
                                    phase.name()
                                ),
                            });
                            break;
                        }
                        Err(ConfigRefused { phase, why, .. }) => {
                            tracing::warn!(route = %route.id, phase = phase.name(), cause = %why, "the chain could not be prepared now (served anyway; prepared at its first request)");
                        }
                    }
                }
            }
            config.routes.retain(|r| !refused.contains(&r.id));
        }
        // A file's configuration is all or nothing: the first refused
        // chain refuses it.
        for (name, client) in clients.iter().filter(|_| !lenient) {
            let checked = tokio::select! {
                checked = preflight(&config.routes, name, client) => checked,
                _ = self.shutdown.cancelled() => {
                    started.stop().await;
                    return Err(ConfigError("the gateway is stopping".into()));
                }
            };
            if let Err(refused) = checked {
                started.stop().await;
                return Err(failed(refused.into()));
            }
        }
        let proxy = {
            let old = self.current.load();
            match Proxy::with_runners(&config, clients, Some(&**old)) {
                Ok(proxy) => proxy,
                Err(e) => {
                    started.stop().await;
                    return Err(ConfigError(e));
                }
            }
        };
        // Sort the runners: kept, new, and retiring (removed or replaced).
        let mut retiring = Runners::default();
        for (name, handle) in std::mem::take(&mut live.runners.0) {
            let wanted = config.runner_confs().any(|(n, _)| n == name);
            if wanted && !started.0.contains_key(&name) {
                next.insert(name, handle);
            } else {
                retiring.0.insert(name, handle);
            }
        }
        next.append(&mut started.0);
        live.runners = Runners(next);
        let grace = config.shutdown_grace;
        if !lenient {
            // The file's certificates, with its routes: all or nothing (a
            // bad one refused the file before anything changed).
            serve_certs(&self.certs, &config);
        }
        live.config = config;
        // The swap: requests from now on use the new proxy.
        let old = self.current.swap(Arc::new(proxy));
        self.states.store(Arc::new(live.runners.states()));
        if retiring.0.is_empty() {
            drop(old);
        } else {
            let names: Vec<String> = retiring.0.keys().cloned().collect();
            self.retiring.spawn(async move {
                drained(old, grace).await;
                info!(runners = ?names, "stopping runners the configuration no longer uses");
                retiring.stop().await;
                info!(runners = ?names, "runners the configuration no longer uses are stopped");
            });
        }
        // Token-cache entries of chains no proxy holds any more (the old
        // proxy's, once no request in flight holds it; those still held are
        // pruned at a later change). Under the lock, so that a change being
        // prepared meanwhile does not lose the entries its preflight made.
        for handle in live.runners.0.values() {
            handle.client.prune_slots();
        }
        drop(live);
        Ok(left_out)
    }

    /// Stops every runner, those being retired included, and waits until
    /// they are gone. Call once the server has stopped.
    pub async fn stop(&self) {
        // The lock first: a reload still running finishes (it sees the
        // shutdown) before the runners it may retire are waited for.
        let mut live = self.live.lock().await;
        self.retiring.close();
        self.retiring.wait().await;
        std::mem::take(&mut live.runners).stop().await;
    }
}

/// Serves the file's certificates of `config` (logging those that expire
/// soon).
fn serve_certs(certs: &Certs, config: &Config) {
    for warning in expiry_warnings(&config.ssls) {
        tracing::warn!("{warning}");
    }
    let fallback = config.tls.as_ref().and_then(|t| t.fallback_sni.clone());
    certs.set_file(config.ssls.clone(), fallback);
}

/// Waits until no request holds `old` any more (requests in flight keep
/// the proxy they started with), for at most `grace`.
async fn drained(old: Arc<Proxy>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while Arc::strong_count(&old) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gateway is where etcd's tables go ([`crate::host::source::etcd::follow`]).
#[async_trait::async_trait]
impl RouteSink for Gateway {
    async fn apply_routes(&self, routes: Vec<Route>) -> Result<Vec<RouteLeftOut>, ConfigError> {
        Gateway::apply_routes(self, routes).await
    }

    fn routes_pending(&self, why: String) {
        Gateway::routes_pending(self, why)
    }

    fn routes_loaded(&self) {
        Gateway::routes_loaded(self)
    }

    fn apply_ssls(&self, ssls: Vec<Ssl>) {
        Gateway::apply_ssls(self, ssls)
    }
}
