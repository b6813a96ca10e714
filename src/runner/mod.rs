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
//!     extplug::Runner::new().plugin(MyPlugin).run()
//! }
//! ```
//!
//! [`Runner::run`] reads the environment (see [`mod@env`]), listens, serves until
//! SIGTERM or SIGINT or the death of its parent, drains, and exits.

pub mod cache;
mod conn;
pub mod env;
pub mod socket;

pub use env::{EnvError, RunnerEnv};

use cache::ConfCache;
use conn::Shared;
use runner_sdk::{Plugin, Registry};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

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
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl Runner {
    /// A runner with no plugins, socket mode 0600, a 10 s drain grace and
    /// room for 100,000 prepared chains.
    pub fn new() -> Self {
        Runner {
            registry: Registry::new(),
            socket_mode: 0o600,
            drain_grace: Duration::from_secs(10),
            cache_capacity: 100_000,
            max_frame: crate::wire::MAX_PAYLOAD,
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

    /// Starts logging (to stderr, filter from `RUST_LOG`, default `info`),
    /// reads the environment, and serves until SIGTERM, SIGINT or the death
    /// of the parent process. Exit status 0 after a clean stop; 2 for a bad
    /// environment; 1 for any other failure to start.
    pub fn run(self) -> ExitCode {
        // Read first: the later, the likelier a parent that died early goes unseen.
        let parent = nix::unistd::getppid();
        crate::init_logging();
        let env = match RunnerEnv::from_env() {
            Ok(env) => env,
            Err(e) => {
                error!("{e}");
                eprintln!("extplug runner: {e}");
                return ExitCode::from(2);
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("extplug runner: {}", RunnerError::Runtime(e));
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(async {
            let shutdown = CancellationToken::new();
            tokio::spawn(crate::stop_on_signal(shutdown.clone()));
            tokio::spawn(stop_when_orphaned(parent, shutdown.clone()));
            self.serve(env, shutdown).await
        });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                eprintln!("extplug runner: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// Listens on `env`'s socket and serves until `shutdown` is cancelled,
    /// then stops accepting, lets calls in flight finish (up to the drain
    /// grace), and removes the socket.
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
        let shared = Arc::new(Shared {
            registry: self.registry,
            cache: ConfCache::new(lifetime, self.cache_capacity),
            max_frame: env.max_frame.unwrap_or(self.max_frame),
        });
        info!(
            socket = %env.socket_path.display(),
            mode = format!("{mode:o}"),
            conf_lifetime_s = lifetime.as_secs_f64(),
            plugins = ?shared.registry.names(),
            "runner listening"
        );
        let sweeper = tokio::spawn(sweep(shared.clone(), lifetime));
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tracker.spawn(conn::serve(stream, shared.clone(), shutdown.clone()));
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
