//! The runner server: hosts `runner_sdk` plugins behind the protocol's unix
//! socket.
//!
//! A plugin author's `main` is usually one line:
//!
//! ```no_run
//! # use runner_sdk::{ConfError, Filter, Plugin};
//! # struct MyPlugin;
//! # impl Plugin for MyPlugin {
//! #     fn name(&self) -> &str { "mine" }
//! #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { unimplemented!() }
//! # }
//! fn main() -> std::process::ExitCode {
//!     runner_sdk::Runner::new().plugin(MyPlugin).run()
//! }
//! ```
//!
//! [`Runner::run`] reads the environment (see [`mod@env`]), listens, serves until
//! SIGTERM or SIGINT or the death of its parent, drains, and exits.
//!
//! Limits, each a builder method and a variable: EXTRA_INFO round trips per
//! call ([`Runner::max_extra_info`]), connections at once
//! ([`Runner::max_connections`]), who may connect ([`Runner::allow_uid`]).

pub mod cache;
mod conn;
pub mod env;
mod logging;
mod peer;
mod signal;
pub mod socket;

pub use env::{EnvError, RunnerEnv};
pub use logging::init_logging;
pub use signal::stop_on_signal;

use crate::{Plugin, Registry};
use cache::ConfCache;
use conn::Shared;
use peer::PeerCheck;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The environment is bad.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// The async runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A runner: its plugins and settings. Build it in `main`, then [`Runner::run`].
pub struct Runner {
    registry: Registry,
    socket_mode: u32,
    drain_grace: Duration,
    cache_capacity: usize,
    max_frame: usize,
    max_extra_info: u32,
    max_connections: usize,
    allowed_uids: Vec<u32>,
    worker_threads: Option<usize>,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl Runner {
    /// A runner with no plugins, socket mode 0600, a 10 s drain grace,
    /// room for 100,000 prepared chains, 64 EXTRA_INFO round trips per call,
    /// 1024 connections at once, and only its own uid allowed to connect.
    pub fn new() -> Self {
        Runner {
            registry: Registry::new(),
            socket_mode: 0o600,
            drain_grace: Duration::from_secs(10),
            cache_capacity: 100_000,
            max_frame: extplug::wire::MAX_PAYLOAD,
            max_extra_info: env::DEFAULT_MAX_EXTRA_INFO,
            max_connections: env::DEFAULT_MAX_CONNECTIONS,
            allowed_uids: Vec::new(),
            worker_threads: None,
        }
    }

    /// Adds a plugin (a later plugin of the same name replaces an earlier one).
    pub fn plugin(mut self, plugin: impl Plugin) -> Self {
        self.registry.add(Arc::new(plugin));
        self
    }

    /// Uses `registry`'s plugins, in addition to those added before.
    pub fn plugins(mut self, registry: Registry) -> Self {
        for name in registry.names() {
            if let Some(plugin) = registry.get(name) {
                self.registry.add(plugin.clone());
            }
        }
        self
    }

    /// The socket file's mode (default 0600; `EXTPLUG_SOCKET_MODE` overrides).
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = mode;
        self
    }

    /// How long calls in flight may run after SIGTERM/SIGINT (default 10 s).
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// The most prepared chains kept at once (default 100,000); past it the
    /// least recently used is dropped.
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The most EXTRA_INFO round trips one call may make (default 64;
    /// `EXTPLUG_MAX_EXTRA_INFO` overrides). Past it the call fails with
    /// `serviceUnavailable` naming the plugin and the cap: a plugin that
    /// asks for values in a loop cannot keep a connection busy forever.
    pub fn max_extra_info(mut self, max: u32) -> Self {
        self.max_extra_info = max;
        self
    }

    /// The most host connections served at once (default 1024, at least 1;
    /// `EXTPLUG_MAX_CONNECTIONS` overrides). At the cap the runner stops
    /// accepting (and logs it once) until a connection closes: new
    /// connections wait in the socket's backlog rather than being refused,
    /// so a host that opens a burst of connections is slowed, not failed.
    ///
    /// There is no read timeout: the host keeps idle connections open to
    /// reuse them, so an idle connection holds its slot until it closes.
    /// Only allowed uids (see [`Runner::allow_uid`]) ever hold a slot (a
    /// refused peer is closed at once), and they are trusted like the host:
    /// one of them could take every slot. Memory per connection follows the
    /// bytes received, up to the frame limit plus its decoded form.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Also lets user id `uid` connect (the runner's own uid always may;
    /// `EXTPLUG_ALLOWED_UIDS` adds more). A connection from any other uid,
    /// as the kernel reports it (`SO_PEERCRED`), is closed unanswered.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.allowed_uids.push(uid);
        self
    }

    /// The threads that serve connections in [`Runner::run`] (default: one
    /// per core). `1` runs everything on the calling thread (a
    /// current-thread runtime): no wake-ups between threads, about 1.5%
    /// fewer instructions per call and a lower p99 in the runner's own
    /// measurements, but at most one core for the calls. A connection's
    /// reads, chain and write run in one task either way, so a call never
    /// changes threads half-way. 0 counts as the default.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = (threads > 0).then_some(threads);
        self
    }

    /// Starts logging (with feature `logging`: to stderr, filter from
    /// `RUST_LOG`, default `info`; see [`init_logging`]),
    /// reads the environment, and serves until SIGTERM, SIGINT or the death
    /// of the parent process. Exit status 0 after a clean stop; 2 for a bad
    /// environment; 1 for any other failure to start.
    pub fn run(self) -> ExitCode {
        // Read first: the later, the likelier a parent that died early goes unseen.
        let parent = nix::unistd::getppid();
        init_logging();
        let env = match RunnerEnv::from_env() {
            Ok(env) => env,
            Err(e) => {
                // Printed once, not also logged: the host relays both
                // streams into its log, and a hand-run runner shows stderr.
                eprintln!("extplug runner: {e}");
                return ExitCode::from(2);
            }
        };
        let mut builder = match self.worker_threads {
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            threads => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                if let Some(threads) = threads {
                    builder.worker_threads(threads);
                }
                builder
            }
        };
        let runtime = match builder.enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("extplug runner: {}", RunnerError::Runtime(e));
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(async {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            tokio::spawn(stop_when_orphaned(parent, shutdown.clone()));
            self.serve(env, shutdown).await
        });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("extplug runner: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// Listens on `env`'s socket and serves until `shutdown` is cancelled,
    /// then stops accepting, lets calls in flight finish (up to the drain
    /// grace), and removes the socket.
    ///
    /// The socket is bound under a umask of at least 0177, then widened to
    /// its mode if needed (never through a path that may be a link). Each
    /// connection's peer uid is checked (the runner's own, or an allowed
    /// one: [`Runner::allow_uid`], `EXTPLUG_ALLOWED_UIDS`); others are closed
    /// unanswered and logged. At most `max_connections` are served at once;
    /// at the cap the runner stops accepting until one closes.
    ///
    /// # Errors
    /// The socket could not be set up.
    pub async fn serve(
        self,
        env: RunnerEnv,
        shutdown: CancellationToken,
    ) -> Result<(), RunnerError> {
        let mode = env.socket_mode.unwrap_or(self.socket_mode);
        let (listener, socket_file) = socket::bind(&env.socket_path, mode)?;
        let lifetime = env.conf_expire.mul_f64(1.2);
        let max_connections = env.max_connections.unwrap_or(self.max_connections);
        let mut allowed = self.allowed_uids;
        allowed.extend(&env.allowed_uids);
        let peers = PeerCheck::new(allowed);
        let shared = Arc::new(Shared {
            registry: self.registry,
            cache: ConfCache::new(lifetime, self.cache_capacity),
            max_frame: env.max_frame.unwrap_or(self.max_frame),
            max_extra_info: env.max_extra_info.unwrap_or(self.max_extra_info),
            protocol: env.protocol,
        });
        info!(
            socket = %env.socket_path.display(),
            mode = format!("{mode:o}"),
            conf_lifetime_s = lifetime.as_secs_f64(),
            max_connections,
            max_extra_info = shared.max_extra_info,
            protocol = shared.protocol.map_or("capnp and apisix", |p| p.name()),
            allowed_uids = ?peers.allowed,
            plugins = ?shared.registry.names(),
            "runner listening"
        );
        let sweeper = tokio::spawn(sweep(shared.clone(), lifetime));
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(max_connections));
        let mut last_cap_warning: Option<std::time::Instant> = None;
        loop {
            // A slot first, then accept: at the cap, connections wait in the
            // listen backlog instead of costing a task and buffers each.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    // At most one line per 10 s: a host that keeps the runner
                    // at its cap would otherwise log on every close.
                    if last_cap_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        warn!(
                            max_connections,
                            "connection limit reached: not accepting until one closes"
                        );
                        last_cap_warning = Some(std::time::Instant::now());
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break, // never closed; stop if it were
                        },
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if peers.admits(&stream) {
                            let (shared, shutdown) = (shared.clone(), shutdown.clone());
                            tracker.spawn(async move {
                                conn::serve(stream, shared, shutdown).await;
                                drop(slot);
                            });
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little
                        // rather than spin, and keep serving.
                        warn!(cause = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        tracker.close();
        info!(
            connections = tracker.len(),
            "stopping: draining calls in flight"
        );
        if tokio::time::timeout(self.drain_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                grace_s = self.drain_grace.as_secs_f64(),
                "calls still running after the grace period; exiting anyway"
            );
        }
        sweeper.abort();
        drop(socket_file);
        info!("runner stopped");
        Ok(())
    }
}

/// Drops expired chains now and then (lookups also check expiry, so this
/// only bounds memory).
async fn sweep(shared: Arc<Shared>, lifetime: Duration) {
    let period = (lifetime / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let dropped = shared.cache.sweep();
        if dropped > 0 {
            info!(dropped, "expired confs dropped");
        }
    }
}

/// Cancels `shutdown` when `parent`, the process that started the runner,
/// dies (the runner is then re-parented, and its parent pid changes).
async fn stop_when_orphaned(parent: nix::unistd::Pid, shutdown: CancellationToken) {
    if parent.as_raw() <= 1 {
        return; // started by init: nothing to watch
    }
    // The first tick is immediate: a parent that died while we started is seen at once.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if nix::unistd::getppid() != parent {
            warn!(
                parent = parent.as_raw(),
                "the parent process died: stopping"
            );
            shutdown.cancel();
            return;
        }
    }
}
