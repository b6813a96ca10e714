//! One runner process: started with its socket in the supervisor's private
//! directory and a cleared environment, its output forwarded to our log,
//! watched until its socket accepts connections (served by the runner itself,
//! not by another process), then until it exits or the supervisor tells it
//! to go (`Ctl`). Each process has a task of its own (`launch`) that
//! reports to the supervisor (`Event`); the supervisor decides what the
//! process is for (active, standby, upgrade candidate) and when to replace it.

use crate::host::config::{RunnerConf, RESERVED_ENV};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

/// What a process's task reports to the supervisor.
#[derive(Debug)]
pub(super) enum Event {
    /// Its socket accepts connections, served by the process itself.
    Ready {
        /// The process's generation.
        generation: u64,
    },
    /// It is gone (reaped), for `reason`; its socket file is removed.
    Exited {
        /// The process's generation.
        generation: u64,
        /// Why: its exit status, or what the supervisor asked.
        reason: String,
    },
}

/// What the supervisor tells a process.
#[derive(Debug)]
pub(super) enum Ctl {
    /// SIGKILL at once (a runner that stopped answering), with the reason to
    /// report.
    Kill(String),
    /// SIGTERM, SIGKILL after the stop grace (the host is stopping, or a
    /// standby is no longer wanted).
    Stop,
    /// Replaced by an upgrade: wait until no connection to it is checked
    /// out by the client (at most `limit`), then stop it as [`Ctl::Stop`]
    /// does: SIGTERM makes the runner finish what it still has.
    Drain {
        /// Connections checked out, per generation.
        in_use: Arc<InUse>,
        /// The longest wait for them.
        limit: Duration,
    },
}

/// A started process: its pid and the sender of its orders.
pub(super) struct Launched {
    /// The process id.
    pub pid: u32,
    /// Orders to its task; dropping it stops the process (as [`Ctl::Stop`]).
    pub ctl: mpsc::UnboundedSender<Ctl>,
}

/// Starts a runner process for `conf` on `socket` and a task that watches
/// it and reports to `events`. With `check`, the program is checked first
/// (see [`check_program`]) so that the message says what is wrong with it.
///
/// # Errors
/// The program cannot be started; the message names it and why.
pub(super) fn launch(
    conf: &RunnerConf,
    socket: PathBuf,
    generation: u64,
    check: bool,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Launched, String> {
    let spawned = if check {
        check_program(conf).and_then(|()| spawn(conf, &socket))
    } else {
        spawn(conf, &socket)
    };
    let (child, tail) = spawned.map_err(|e| format!("cannot start {:?}: {e}", conf.cmd[0]))?;
    let pid = child.id().unwrap_or(0);
    info!(runner = %conf.name, pid, generation, cmd = ?conf.cmd, "runner started");
    let (ctl, orders) = mpsc::unbounded_channel();
    let life = Life {
        runner: conf.name.clone(),
        child,
        tail,
        pid,
        generation,
        socket,
        start_timeout: conf.start_timeout,
        stop_grace: conf.stop_grace,
        orders,
        events,
    };
    tokio::spawn(life.run());
    Ok(Launched { pid, ctl })
}

/// How a drain ended.
enum Drained {
    /// No connection checked out any more (`true`), or the limit passed.
    Done(bool),
    /// The process exited meanwhile, with this status.
    Exited(String),
    /// Another order came.
    Order(Option<Ctl>),
}

/// One process's task.
struct Life {
    /// The runner's name, for the log.
    runner: String,
    child: Child,
    tail: StderrTail,
    pid: u32,
    generation: u64,
    socket: PathBuf,
    start_timeout: Duration,
    stop_grace: Duration,
    orders: mpsc::UnboundedReceiver<Ctl>,
    events: mpsc::UnboundedSender<Event>,
}

impl Life {
    async fn run(mut self) {
        // Each wait ends in a value first: the orders are carried out once
        // the other waits (which borrow the child) are dropped.
        let ready = tokio::select! {
            ready = wait_ready(&self.socket, self.start_timeout, self.pid) => Ok(ready),
            status = self.child.wait() => Ok(Err(format!("exited before opening its socket ({})", describe(status)))),
            order = self.orders.recv() => Err(order),
        };
        let ready = match ready {
            Ok(Err(reason)) if reason.starts_with("exited before") => {
                Err(format!("{reason}{}", self.tail.last_lines().await))
            }
            Ok(ready) => ready,
            Err(order) => {
                let reason = self.obey(order).await;
                return self.exited(reason);
            }
        };
        if let Err(reason) = ready {
            kill_group(&self.child, Signal::SIGKILL);
            let _ = self.child.wait().await;
            return self.exited(reason);
        }
        let _ = self.events.send(Event::Ready {
            generation: self.generation,
        });
        let ended = tokio::select! {
            status = self.child.wait() => {
                // Its own children (same group) die with it: none runs on
                // unwatched. The group id stays taken while a member lives,
                // so this never reaches a stranger; an empty group is ESRCH.
                // (pid 0, unknown, would be our own group.)
                if self.pid > 1 {
                    let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                }
                Ok(format!("exited ({})", describe(status)))
            }
            order = self.orders.recv() => Err(order),
        };
        let reason = match ended {
            Ok(reason) => reason,
            Err(order) => self.obey(order).await,
        };
        self.exited(reason);
    }

    /// Carries out `order` (`None`: the supervisor is gone, stop); returns
    /// once the process is reaped, with the reason to report.
    async fn obey(&mut self, order: Option<Ctl>) -> String {
        match order {
            Some(Ctl::Kill(reason)) => {
                kill_group(&self.child, Signal::SIGKILL);
                let _ = self.child.wait().await;
                reason
            }
            None | Some(Ctl::Stop) => {
                stop_child(&self.runner, &mut self.child, self.stop_grace).await;
                "stopped".to_owned()
            }
            Some(Ctl::Drain { in_use, limit }) => {
                let generation = self.generation;
                let drained = tokio::select! {
                    drained = tokio::time::timeout(limit, in_use.drained(generation)) => Drained::Done(drained.is_ok()),
                    status = self.child.wait() => Drained::Exited(describe(status)),
                    order = self.orders.recv() => Drained::Order(order),
                };
                match drained {
                    Drained::Done(true) => {}
                    Drained::Done(false) => warn!(
                        runner = %self.runner,
                        pid = self.pid,
                        generation,
                        limit_ms = limit.as_millis() as u64,
                        "calls to the replaced runner still running: stopping it anyway"
                    ),
                    Drained::Exited(status) => return format!("exited while draining ({status})"),
                    // Killing wins over draining; stopping is what comes next anyway.
                    Drained::Order(Some(Ctl::Kill(reason))) => {
                        kill_group(&self.child, Signal::SIGKILL);
                        let _ = self.child.wait().await;
                        return reason;
                    }
                    Drained::Order(_) => {}
                }
                stop_child(&self.runner, &mut self.child, self.stop_grace).await;
                "replaced by a new runner".to_owned()
            }
        }
    }

    fn exited(self, reason: String) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = self.events.send(Event::Exited {
            generation: self.generation,
            reason,
        });
    }
}

pub(super) fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Checks the runner's program before its first start (see
/// [`crate::host::runner::program::resolve`]), with the runner's `PATH`.
pub(super) fn check_program(conf: &RunnerConf) -> std::io::Result<()> {
    let path_var = match conf.env.get("PATH") {
        Some(p) => Some(std::ffi::OsString::from(p)),
        None => std::env::var_os("PATH"),
    };
    crate::host::runner::program::resolve(&conf.cmd[0], path_var.as_deref())
        .map(|_| ())
        .map_err(std::io::Error::other)
}

/// The last lines a runner wrote on stderr, kept to explain a failed start.
#[derive(Clone, Default)]
pub(super) struct StderrTail {
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
    pub(super) async fn last_lines(&self) -> String {
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
pub(super) fn spawn(conf: &RunnerConf, socket: &Path) -> std::io::Result<(Child, StderrTail)> {
    let mut cmd = Command::new(&conf.cmd[0]);
    cmd.args(&conf.cmd[1..])
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherited)))
        // The runner logs as we do (its `env` may say otherwise).
        .env(crate::wire::LOG_FORMAT_ENV, log_format_name())
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
    let runner: Arc<str> = Arc::from(conf.name.as_str());
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, pid, runner.clone(), "stdout", None));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, pid, runner, "stderr", Some(tail.clone())));
    }
    Ok((child, tail))
}

/// The value of [`crate::wire::LOG_FORMAT_ENV`] for the host's log format.
fn log_format_name() -> &'static str {
    match crate::host::logging::log_format() {
        crate::host::logging::LogFormat::Json => "json",
        crate::host::logging::LogFormat::Text => "text",
    }
}

/// The soft descriptor limit the host started with, when it raised its own
/// (0: not raised). Runners get this one back, as Go's `os/exec` gives
/// children the limit its runtime raised: a runner's own code (or one
/// that uses `select`) expects the limit its operator set, not the host's.
static CHILD_NOFILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records `soft`, the descriptor limit before the host raised its own, as
/// the one runners start with.
pub fn restore_nofile_in_runners(soft: u64) {
    CHILD_NOFILE.store(soft, std::sync::atomic::Ordering::Relaxed);
}

/// The runner gets SIGKILL when the host dies, even by SIGKILL: it never
/// outlives the host (the runner also watches its parent pid itself), and
/// the descriptor limit the host had before raising its own.
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let parent = nix::unistd::getpid();
    let nofile = CHILD_NOFILE.load(std::sync::atomic::Ordering::Relaxed);
    let hard = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(_, hard)| hard);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid, setrlimit); it
    // allocates nothing on the success path.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nofile != 0 && nofile <= hard {
                setrlimit(Resource::RLIMIT_NOFILE, nofile, hard)?;
            }
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

/// Appends to `buf` the next line of `reader` (with its newline), or its
/// first `max` bytes when it is longer; false at the end of the stream.
async fn read_line_capped(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    use tokio::io::AsyncBufReadExt;
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

/// Forwards a runner output stream to our log, line by line, tagged with its
/// pid and runner name (see [`crate::host::runner::output`]).
async fn forward(
    stream: impl AsyncRead + Unpin,
    pid: u32,
    runner: Arc<str>,
    name: &'static str,
    tail: Option<StderrTail>,
) {
    let mut reader = BufReader::new(stream);
    let mut bytes = Vec::with_capacity(256);
    // Not `lines()`: one byte that is not UTF-8 would end it (and the runner
    // would die of SIGPIPE), and a line would have no length limit.
    while let Ok(true) = read_line_capped(&mut reader, &mut bytes, MAX_OUTPUT_LINE).await {
        let text = String::from_utf8_lossy(&bytes);
        let line = text
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(&text);
        crate::host::runner::output::forward_line(line, pid, &runner, name);
        if let Some(tail) = &tail {
            tail.push(line);
        }
        bytes.clear();
    }
    if let Some(tail) = &tail {
        tail.finish();
    }
}

/// Polls the socket until it accepts a connection or `timeout` passes; the
/// process behind it must be the runner (`pid`).
pub(super) async fn wait_ready(socket: &Path, timeout: Duration, pid: u32) -> Result<(), String> {
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

pub(super) fn kill_group(child: &Child, signal: Signal) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
pub(super) async fn stop_child(runner: &str, child: &mut Child, grace: Duration) {
    let pid = child.id().unwrap_or(0);
    kill_group(child, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => info!(runner, pid, status = %describe(status), "runner stopped"),
        Err(_) => {
            warn!(
                runner,
                pid,
                grace_ms = grace.as_millis() as u64,
                "runner ignored SIGTERM: killing it"
            );
            kill_group(child, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

/// Connections checked out by the client, per runner generation.
#[derive(Debug, Default)]
pub struct InUse {
    pub(super) counts: Mutex<HashMap<u64, usize>>,
    pub(super) released: Notify,
}

impl InUse {
    /// Waits until no connection to the runner of `generation` is in use.
    pub async fn drained(&self, generation: u64) {
        loop {
            // Registered before the check: a release in between still wakes us.
            let released = self.released.notified();
            let busy = self
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&generation)
                .copied()
                .unwrap_or(0);
            if busy == 0 {
                return;
            }
            released.await;
        }
    }
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
