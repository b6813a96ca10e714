//! The runner process: started with its socket in a private directory
//! ([`super::runner_dir`]) and a cleared environment, watched until its socket
//! accepts connections (served by the runner itself, not by another process),
//! its output forwarded to our log, restarted whenever it exits, stopped with
//! SIGTERM then SIGKILL.
//!
//! The first start fails fast: a program that is missing or not executable,
//! or a runner that exits or does not open its socket in time, ends the
//! supervisor and is reported by [`Supervisor::started`] (the host refuses
//! to start). Only a runner that was ready once is restarted.
//!
//! The runner's state is published on a `watch` channel ([`RunnerState`]):
//! the client reads it before each call, so calls made while the runner is
//! down fail at once instead of hanging.

use super::config::RunnerConf;
use super::runner_dir::RunnerDir;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
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
    first_start: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
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
    /// Starts the runner described by `conf` and keeps it running. Whether
    /// the first start worked is told by [`Supervisor::started`]: if it did
    /// not, the supervisor has ended (no restart).
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
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(supervise(
            conf,
            dir,
            tx,
            restarts,
            first_tx,
            shutdown.clone(),
        ));
        Ok(Supervisor {
            state,
            shutdown,
            restart: Restarter(restart),
            task,
            first_start: Some(first_rx),
        })
    }

    /// Waits until the first runner opens its socket. Later calls return
    /// `Ok` at once.
    ///
    /// # Errors
    /// The first start failed: the program is missing or not executable
    /// (checked before spawning, like `execvp` would find it), it exited
    /// before opening its socket (with its exit status and its last lines
    /// on stderr), or it did not open it within the start timeout. The
    /// runner is not restarted then; the message says what went wrong.
    pub async fn started(&mut self) -> Result<(), String> {
        let Some(first) = self.first_start.take() else {
            return Ok(());
        };
        match first.await {
            Ok(result) => result,
            Err(_) => Err("the supervisor stopped before the runner started".to_owned()),
        }
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
    first_start: tokio::sync::oneshot::Sender<Result<(), String>>,
    shutdown: CancellationToken,
) {
    // Taken when the first runner is ready, or has failed (then we end).
    let mut first_start = Some(first_start);
    let mut generation = 0u64;
    let mut backoff = Duration::ZERO;
    'supervise: loop {
        generation += 1;
        let socket = dir.path().join(format!("runner-{generation}.sock"));
        tx.send_replace(RunnerState::Starting { generation });
        let started = Instant::now();
        let spawned = if first_start.is_some() {
            // Checked first so that the message says what is wrong with
            // the file (spawn's error is just ENOENT or EACCES).
            check_program(&conf).and_then(|()| spawn(&conf, &socket))
        } else {
            spawn(&conf, &socket)
        };
        let reason = match spawned {
            Err(e) => format!("cannot start {:?}: {e}", conf.cmd[0]),
            Ok((mut child, stderr_tail)) => {
                let pid = child.id().unwrap_or(0);
                info!(pid, generation, cmd = ?conf.cmd, "runner started");
                let ready = tokio::select! {
                    ready = wait_ready(&socket, conf.start_timeout, pid) => ready,
                    status = child.wait() => Err(format!(
                        "exited before opening its socket ({}){}",
                        describe(status),
                        stderr_tail.last_lines().await
                    )),
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
                        if let Some(first) = first_start.take() {
                            let _ = first.send(Ok(()));
                        }
                        loop {
                            tokio::select! {
                                status = child.wait() => {
                                    // Its own children (same group) die with it:
                                    // none runs on unwatched. The group id stays
                                    // taken while a member lives, so this never
                                    // reaches a stranger; an empty group is ESRCH.
                                    // (pid 0, unknown, would be our own group.)
                                    if pid > 1 {
                                        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                                    }
                                    break format!("exited ({})", describe(status));
                                }
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
        if let Some(first) = first_start.take() {
            // Not logged here: the host reports it once, as its start error.
            let _ = std::fs::remove_file(&socket);
            tx.send_replace(RunnerState::Down {
                reason: reason.clone(),
            });
            let _ = first.send(Err(reason));
            break;
        }
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
/// name them (the configuration is refused). The third tells the runner
/// that its output is relayed into the host's log (see
/// [`crate::LOG_RELAYED`]: one timestamp per line, the host's).
pub const RESERVED_ENV: [&str; 3] = [
    "APISIX_LISTEN_ADDRESS",
    "APISIX_CONF_EXPIRE_TIME",
    crate::LOG_RELAYED,
];

/// Whether the host's variable `name` is passed on to the runner. Everything
/// else is not (as nginx clears its workers' environment): the host's secrets
/// stay the host's.
///
/// The locale variables are named one by one, not matched as `LC_*`: any
/// other name that starts so (a secret, or what ssh passes on from its
/// client) stays the host's.
pub fn inherited(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "LANG" | "TZ" | "RUST_LOG" | "RUST_BACKTRACE"
    ) || LOCALE_VARS.contains(&name)
}

/// The locale variables of POSIX and glibc.
const LOCALE_VARS: [&str; 13] = [
    "LC_ALL",
    "LC_ADDRESS",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_IDENTIFICATION",
    "LC_MEASUREMENT",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NAME",
    "LC_NUMERIC",
    "LC_PAPER",
    "LC_TELEPHONE",
    "LC_TIME",
];

/// Checks the runner's program before its first start (see
/// [`super::runner_cmd::resolve`]), with the runner's `PATH`.
fn check_program(conf: &RunnerConf) -> std::io::Result<()> {
    let path_var = match conf.env.get("PATH") {
        Some(p) => Some(std::ffi::OsString::from(p)),
        None => std::env::var_os("PATH"),
    };
    super::runner_cmd::resolve(&conf.cmd[0], path_var.as_deref())
        .map(|_| ())
        .map_err(std::io::Error::other)
}

/// The last lines a runner wrote on stderr, kept to explain a failed start.
#[derive(Clone, Default)]
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    done: Arc<tokio::sync::Notify>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

/// How many stderr lines a failed start quotes.
const TAIL_LINES: usize = 5;

impl StderrTail {
    fn push(&self, line: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    fn finish(&self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::Release);
        self.done.notify_waiters();
    }

    /// `; its last lines on stderr: ...` once the stream ended (waiting a
    /// little for the pipe to drain), or nothing when it wrote nothing.
    async fn last_lines(&self) -> String {
        let done = self.done.notified();
        if !self.finished.load(std::sync::atomic::Ordering::Acquire) {
            let _ = tokio::time::timeout(Duration::from_millis(500), done).await;
        }
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            return String::new();
        }
        let quoted: Vec<&str> = lines.iter().map(String::as_str).collect();
        format!("; its last lines on stderr: {}", quoted.join(" | "))
    }
}

/// Starts the runner in its own process group, with a parent-death signal,
/// a cleared environment (see [`inherited`]) plus the configured `env` and
/// the `APISIX_*` variables, its output forwarded to our log (the last
/// stderr lines also kept, see [`StderrTail`]).
fn spawn(conf: &RunnerConf, socket: &Path) -> std::io::Result<(Child, StderrTail)> {
    let mut cmd = Command::new(&conf.cmd[0]);
    cmd.args(&conf.cmd[1..])
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherited)))
        .envs(&conf.env)
        // Last: the configured `env` cannot override them.
        .env(RESERVED_ENV[0], format!("unix:{}", socket.display()))
        .env(RESERVED_ENV[1], conf.conf_expire.as_secs().to_string())
        // Our log line has the timestamp: the runner leaves its own out.
        .env(RESERVED_ENV[2], "1")
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
    let tail = StderrTail::default();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, pid, "stdout", None));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, pid, "stderr", Some(tail.clone())));
    }
    Ok((child, tail))
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

/// The longest runner output line logged as one line; a longer one is
/// logged in pieces of this size. A runner that writes megabytes without a
/// newline costs the host this much memory, not megabytes.
pub const MAX_OUTPUT_LINE: usize = 16 * 1024;

/// Forwards a runner output stream to our log, line by line, tagged with its pid.
/// Bytes that are not UTF-8 are logged as U+FFFD: they never stop the
/// forwarding (the pipe would then be closed, and the runner's next write
/// would fail with EPIPE or kill it with SIGPIPE).
async fn forward(
    stream: impl AsyncRead + Unpin,
    pid: u32,
    name: &'static str,
    tail: Option<StderrTail>,
) {
    let mut reader = BufReader::new(stream);
    let mut bytes = Vec::with_capacity(256);
    while let Ok(true) = read_line_capped(&mut reader, &mut bytes, MAX_OUTPUT_LINE).await {
        let text = String::from_utf8_lossy(&bytes);
        let line = text
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(&text);
        info!(target: "extplug::runner_output", pid, stream = name, "{line}");
        if let Some(tail) = &tail {
            tail.push(line);
        }
        bytes.clear();
    }
    if let Some(tail) = &tail {
        tail.finish();
    }
}

/// Appends to `buf` the next line of `reader` (with its newline), or its
/// first `max` bytes when it is longer; false at the end of the stream.
async fn read_line_capped(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let window = &available[..available.len().min(max - buf.len())];
        let (take, done) = match window.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), buf.len() + window.len() >= max),
        };
        buf.extend_from_slice(&window[..take]);
        reader.consume(take);
        if done {
            return Ok(true);
        }
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
