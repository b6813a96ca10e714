//! The runner process: started with its socket in a private directory
//! ([`super::runner_dir`]) and a cleared environment, watched until its socket
//! accepts connections (served by the runner itself, not by another process),
//! its output forwarded to our log, restarted whenever it exits, stopped with
//! SIGTERM then SIGKILL.
//!
//! The runner's state is published on a `watch` channel ([`RunnerState`]):
//! the client reads it before each call, so calls made while the runner is
//! down fail at once instead of hanging.

use super::config::RunnerConf;
use super::runner_dir::RunnerDir;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The first restarts after a crash wait 0, then 100 ms, doubling up to this.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A runner that lived this long was healthy: its next restart is immediate.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Where the runner is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerState {
    /// Started, its socket not yet accepting (calls wait, up to the start timeout).
    Starting {
        /// Counts starts; tokens from another generation are void.
        generation: u64,
    },
    /// Its socket accepts connections.
    Ready {
        /// The socket.
        socket: Arc<PathBuf>,
        /// Counts starts; tokens from another generation are void.
        generation: u64,
        /// The runner's pid: a connection whose peer is another process
        /// (see [`check_peer`]) is refused.
        pid: u32,
    },
    /// Exited or failed to start; a restart is coming (calls fail at once).
    Down {
        /// Why.
        reason: String,
    },
    /// Stopped for good (the host is shutting down).
    Stopped,
}

/// Runs and watches the runner process. [`Supervisor::stop`] ends it.
#[derive(Debug)]
pub struct Supervisor {
    state: watch::Receiver<RunnerState>,
    shutdown: CancellationToken,
    restart: Restarter,
    task: JoinHandle<()>,
}

/// Asks the supervisor to replace a runner that is alive but no longer
/// answers (a deadlocked plugin, a stopped process): it is killed with
/// SIGKILL and started again, as after a crash.
#[derive(Debug, Clone)]
pub struct Restarter(tokio::sync::mpsc::UnboundedSender<u64>);

impl Restarter {
    /// Replaces the runner of `generation`; does nothing if that runner is
    /// already gone (so a late request never kills its successor).
    pub fn restart(&self, generation: u64) {
        let _ = self.0.send(generation);
    }
}

impl Supervisor {
    /// Starts the runner described by `conf` and keeps it running.
    ///
    /// Directories left in the temp dir by hosts that were killed are
    /// removed first (see [`super::runner_dir`]).
    ///
    /// # Errors
    /// The private socket directory could not be created, or is not private
    /// (the message names the path and what is wrong).
    pub fn start(conf: RunnerConf) -> std::io::Result<Supervisor> {
        // 0700, removed when the supervisor's task ends.
        let dir = RunnerDir::create()?;
        let (tx, state) = watch::channel(RunnerState::Starting { generation: 1 });
        let shutdown = CancellationToken::new();
        let (restart, restarts) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(conf, dir, tx, restarts, shutdown.clone()));
        Ok(Supervisor {
            state,
            shutdown,
            restart: Restarter(restart),
            task,
        })
    }

    /// A handle to replace a runner that stopped answering.
    pub fn restarter(&self) -> Restarter {
        self.restart.clone()
    }

    /// A receiver of the runner's state.
    pub fn state(&self) -> watch::Receiver<RunnerState> {
        self.state.clone()
    }

    /// Stops the runner (SIGTERM, then SIGKILL after the stop grace) and
    /// waits until it is gone. Safe to call once the runner is already down.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

async fn supervise(
    conf: RunnerConf,
    dir: RunnerDir,
    tx: watch::Sender<RunnerState>,
    mut restarts: tokio::sync::mpsc::UnboundedReceiver<u64>,
    shutdown: CancellationToken,
) {
    let mut generation = 0u64;
    let mut backoff = Duration::ZERO;
    'supervise: loop {
        generation += 1;
        let socket = dir.path().join(format!("runner-{generation}.sock"));
        tx.send_replace(RunnerState::Starting { generation });
        let started = Instant::now();
        let reason = match spawn(&conf, &socket) {
            Err(e) => format!("cannot start {:?}: {e}", conf.cmd[0]),
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                info!(pid, generation, cmd = ?conf.cmd, "runner started");
                let ready = tokio::select! {
                    ready = wait_ready(&socket, conf.start_timeout, pid) => ready,
                    status = child.wait() => Err(format!("exited before opening its socket ({})", describe(status))),
                    _ = shutdown.cancelled() => {
                        stop_child(&mut child, conf.stop_grace).await;
                        break;
                    }
                };
                match ready {
                    Ok(()) => {
                        info!(pid, generation, socket = %socket.display(), "runner ready");
                        tx.send_replace(RunnerState::Ready {
                            socket: Arc::new(socket.clone()),
                            generation,
                            pid,
                        });
                        loop {
                            tokio::select! {
                                status = child.wait() => break format!("exited ({})", describe(status)),
                                Some(asked) = restarts.recv() => {
                                    if asked != generation {
                                        continue; // about a runner already replaced
                                    }
                                    warn!(pid, generation, "runner stopped answering: killing it");
                                    kill_group(&child, Signal::SIGKILL);
                                    let _ = child.wait().await;
                                    break "killed: it stopped answering calls".to_owned();
                                }
                                _ = shutdown.cancelled() => {
                                    stop_child(&mut child, conf.stop_grace).await;
                                    break 'supervise;
                                }
                            }
                        }
                    }
                    Err(reason) => {
                        kill_group(&child, Signal::SIGKILL);
                        let _ = child.wait().await;
                        reason
                    }
                }
            }
        };
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = Duration::ZERO;
        }
        error!(
            generation,
            restart_in_ms = backoff.as_millis() as u64,
            "runner down: {reason}"
        );
        tx.send_replace(RunnerState::Down { reason });
        let _ = std::fs::remove_file(&socket);
        let wait = backoff;
        backoff = if backoff.is_zero() {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(BACKOFF_CAP)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tx.send_replace(RunnerState::Stopped);
    drop(dir);
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// The variables the host sets for the runner; the configured `env` may not
/// name them (the configuration is refused).
pub const RESERVED_ENV: [&str; 2] = ["APISIX_LISTEN_ADDRESS", "APISIX_CONF_EXPIRE_TIME"];

/// Whether the host's variable `name` is passed on to the runner. Everything
/// else is not (as nginx clears its workers' environment): the host's secrets
/// stay the host's.
pub fn inherited(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "LANG" | "TZ" | "RUST_LOG" | "RUST_BACKTRACE"
    ) || name.starts_with("LC_")
}

/// Starts the runner in its own process group, with a parent-death signal,
/// a cleared environment (see [`inherited`]) plus the configured `env` and
/// the `APISIX_*` variables, its output forwarded to our log.
fn spawn(conf: &RunnerConf, socket: &Path) -> std::io::Result<Child> {
    let mut cmd = Command::new(&conf.cmd[0]);
    cmd.args(&conf.cmd[1..])
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherited)))
        .envs(&conf.env)
        // Last: the configured `env` cannot override them.
        .env(RESERVED_ENV[0], format!("unix:{}", socket.display()))
        .env(RESERVED_ENV[1], conf.conf_expire.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a terminal's Ctrl-C reaches only us (we then stop it
        // in order), and stopping it reaches the runner's own children too.
        .process_group(0)
        .kill_on_drop(true);
    set_parent_death_signal(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, pid, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, pid, "stderr"));
    }
    Ok(child)
}

/// The runner gets SIGKILL when the host dies, even by SIGKILL: it never
/// outlives the host. (The runner also watches its parent pid itself.)
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two async-signal-safe system calls (prctl, getppid); it allocates nothing
    // on the success path.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The host may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "the host exited while starting the runner",
                ));
            }
            Ok(())
        });
    }
}

/// Forwards a runner output stream to our log, line by line, tagged with its pid.
async fn forward(stream: impl AsyncRead + Unpin, pid: u32, name: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(target: "extplug::runner_output", pid, stream = name, "{line}");
    }
}

/// Polls the socket until it accepts a connection or `timeout` passes; the
/// process behind it must be the runner (`pid`).
async fn wait_ready(socket: &Path, timeout: Duration, pid: u32) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
            return check_peer(&stream, pid);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "did not open its socket within {} ms",
                timeout.as_millis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that the process serving `stream` is the runner we started
/// (`runner_pid`) or one of its own children that stayed in its process group
/// (a runner started through a wrapper script): the socket directory is
/// private, and this makes sure no other process answers in the runner's
/// place.
///
/// # Errors
/// The peer is another process, or its credentials cannot be read; the
/// message names both pids.
pub fn check_peer(stream: &tokio::net::UnixStream, runner_pid: u32) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the credentials of the runner's socket peer: {e}"))?;
    let Some(peer) = cred.pid() else {
        return Err("the runner's socket peer has no pid".into());
    };
    if u32::try_from(peer).ok() == Some(runner_pid) {
        return Ok(());
    }
    // The runner leads its own process group (`process_group(0)`); another
    // session's process cannot join it.
    let group = nix::unistd::getpgid(Some(Pid::from_raw(peer))).ok();
    if group.is_some_and(|g| u32::try_from(g.as_raw()).ok() == Some(runner_pid)) {
        return Ok(());
    }
    Err(format!(
        "the runner's socket is served by pid {peer}, not by the runner (pid {runner_pid}) or its process group"
    ))
}

fn kill_group(child: &Child, signal: Signal) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
async fn stop_child(child: &mut Child, grace: Duration) {
    let pid = child.id().unwrap_or(0);
    kill_group(child, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => info!(pid, status = %describe(status), "runner stopped"),
        Err(_) => {
            warn!(
                pid,
                grace_ms = grace.as_millis() as u64,
                "runner ignored SIGTERM: killing it"
            );
            kill_group(child, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}
