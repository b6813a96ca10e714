//! The runner's supervisor: it keeps a runner process *active* (the one calls
//! go to) and, with `standby` (the default), a second one ready to take over,
//! each on its own socket in a private directory ([`crate::host::runner::dir`]).
//! One process's life (start, readiness, output, stop) is
//! [`crate::host::runner::process`]'s; the policy is here:
//!
//! - **Failover.** When the active runner dies, or stops answering (see
//!   [`Restarter::restart`]), the standby becomes the active one at once
//!   and a new standby is started. Only the calls in flight on the dead
//!   process are lost; tokens are per process, so the client prepares its
//!   chains again on the new one (each process has its own generation).
//! - **Backoff for crash loops only.** A process that dies before it is
//!   ready, or within [`CRASH_WINDOW`] of its start without having served
//!   as the active runner for [`SERVED_FOR`], counts as a crash: the next
//!   start waits 0, then 100 ms, doubling up to [`BACKOFF_CAP`]. A runner that
//!   served is replaced at once, and the backoff starts over.
//! - **Upgrade** ([`Restarter::upgrade`], on SIGUSR2 or the admin
//!   listener's `POST /runners/restart`, or [`Restarter::upgrade_to`] when a
//!   reload changed the runner's `cmd` or `env`): a new process is started
//!   and, once ready, made the active one; the old one gets no new calls,
//!   finishes the ones it has (the supervisor waits until the client has no
//!   connection to it checked out, see [`Lease`]), then is stopped with
//!   SIGTERM; the standby is replaced by a new one too.
//!
//! The first start fails fast: a program that is missing or not executable,
//! or a runner that exits or does not open its socket in time, ends the
//! supervisor and is reported by [`Supervisor::started`] (the host refuses
//! to start).
//!
//! The active runner's state is published on a `watch` channel
//! ([`RunnerState`]): the client reads it before each call, so calls made
//! while no runner is up fail at once instead of hanging.

use crate::host::config::RunnerConf;
use crate::host::metrics;
use crate::host::runner::dir::RunnerDir;
use crate::host::runner::process::{launch, Ctl, Event, InUse};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Crash-loop restarts wait 0, then 100 ms, doubling up to this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A process that dies within this time of its start (without having
/// served for [`SERVED_FOR`]) is in a crash loop.
pub const CRASH_WINDOW: Duration = Duration::from_secs(5);
/// A process that was the active runner this long served: its death is
/// not a crash loop, whenever it happens (an operator's kill, say).
pub const SERVED_FOR: Duration = Duration::from_secs(1);
/// The longest wait for the calls of a runner replaced by an upgrade.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

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
        /// (see [`check_peer`](super::process::check_peer)) is refused.
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

/// Runs and watches the runner's processes. [`Supervisor::stop`] ends it.
#[derive(Debug)]
pub struct Supervisor {
    state: watch::Receiver<RunnerState>,
    shutdown: CancellationToken,
    handle: Restarter,
    task: JoinHandle<()>,
    first_start: Option<oneshot::Receiver<Result<(), String>>>,
}

/// A handle on the supervisor for the client and the operator's triggers
/// (cheap to clone, `Send + Sync`): replace a runner that stopped answering
/// ([`Restarter::restart`]), upgrade ([`Restarter::upgrade`]), and tell which
/// runner connections are in use ([`Restarter::lease`]).
#[derive(Debug, Clone)]
pub struct Restarter {
    requests: mpsc::UnboundedSender<Request>,
    in_use: Arc<InUse>,
}

/// What the handle asks the supervisor.
#[derive(Debug)]
enum Request {
    Restart(u64),
    Upgrade {
        conf: Option<Box<RunnerConf>>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl Restarter {
    /// Replaces the runner of `generation`, alive but no longer answering
    /// (a deadlocked plugin, a stopped process): the standby takes over at
    /// once, and the old process is killed with SIGKILL. Does nothing if
    /// that runner is no longer the active one (so a late request never
    /// kills its successor).
    pub fn restart(&self, generation: u64) {
        let _ = self.requests.send(Request::Restart(generation));
    }

    /// Replaces every process of the runner with a new one started from
    /// the same configuration (the program file was replaced at the same
    /// path): start, wait until ready, switch new calls to it, let the old
    /// one finish its calls, stop it; then the standby. Upgrades asked while
    /// one runs are done one after the other.
    ///
    /// # Errors
    /// The new runner did not start (the message says why; the old one
    /// keeps serving), its standby did not start (the new runner serves),
    /// or the supervisor has stopped.
    pub async fn upgrade(&self) -> Result<(), String> {
        self.ask_upgrade(None).await
    }

    /// [`Restarter::upgrade`] to a new configuration of the runner (a reload
    /// changed its `cmd`, `env` or limits): the new processes, and every
    /// later restart, use `conf`. If the new runner does not start, the old
    /// configuration stays.
    ///
    /// # Errors
    /// As [`Restarter::upgrade`].
    pub async fn upgrade_to(&self, conf: RunnerConf) -> Result<(), String> {
        self.ask_upgrade(Some(Box::new(conf))).await
    }

    async fn ask_upgrade(&self, conf: Option<Box<RunnerConf>>) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.requests
            .send(Request::Upgrade { conf, done })
            .map_err(|_| "the runner's supervisor has stopped".to_owned())?;
        result
            .await
            .unwrap_or_else(|_| Err("the runner's supervisor has stopped".to_owned()))
    }

    /// Marks a connection to the runner of `generation` as in use until the
    /// lease is dropped: a runner replaced by an upgrade is stopped only
    /// once it has no connection in use. (Take the lease, then check that
    /// `generation` is still the active one: a lease taken after the switch
    /// does not hold the old runner.)
    pub fn lease(&self, generation: u64) -> Lease {
        let mut counts = self.in_use.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(generation).or_default() += 1;
        Lease {
            in_use: self.in_use.clone(),
            generation,
        }
    }
}

/// A connection to one runner generation in use (see [`Restarter::lease`]).
#[derive(Debug)]
pub struct Lease {
    in_use: Arc<InUse>,
    generation: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut counts = self.in_use.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.generation) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.generation);
                drop(counts);
                self.in_use.released.notify_waiters();
            }
        }
    }
}

impl Supervisor {
    /// Starts the runner described by `conf` and keeps it running (and its
    /// standby, if `conf.standby`). Whether the first start worked is told
    /// by [`Supervisor::started`]: if it did not, the supervisor has ended
    /// (no restart).
    ///
    /// Directories left in the temp dir by hosts that were killed are
    /// removed first (see [`crate::host::runner::dir`]).
    ///
    /// # Errors
    /// The private socket directory could not be created, or is not private
    /// (the message names the path and what is wrong).
    pub fn start(conf: RunnerConf) -> std::io::Result<Supervisor> {
        // 0700, removed when the supervisor's task ends.
        let dir = RunnerDir::create()?;
        let (tx, state) = watch::channel(RunnerState::Starting { generation: 1 });
        let shutdown = CancellationToken::new();
        let (requests, asked) = mpsc::unbounded_channel();
        let (first_tx, first_rx) = oneshot::channel();
        let in_use = Arc::new(InUse::default());
        let (events_tx, events) = mpsc::unbounded_channel();
        let work = Work {
            conf,
            dir,
            tx,
            events_tx,
            procs: BTreeMap::new(),
            last_generation: 0,
            backoff: Duration::ZERO,
            start_at: Instant::now(),
            in_use: in_use.clone(),
            first_start: Some(first_tx),
            upgrades: VecDeque::new(),
            upgrading: None,
            ended: false,
            metrics_id: metrics::supervisor_id(),
        };
        let task = tokio::spawn(work.supervise(asked, events, shutdown.clone()));
        Ok(Supervisor {
            state,
            shutdown,
            handle: Restarter { requests, in_use },
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

    /// A handle to replace a runner that stopped answering, to upgrade the
    /// runner, and to lease connections (see [`Restarter`]).
    pub fn restarter(&self) -> Restarter {
        self.handle.clone()
    }

    /// Upgrades the runner: see [`Restarter::upgrade`].
    ///
    /// # Errors
    /// As [`Restarter::upgrade`].
    pub async fn upgrade(&self) -> Result<(), String> {
        self.handle.upgrade().await
    }

    /// A receiver of the active runner's state.
    pub fn state(&self) -> watch::Receiver<RunnerState> {
        self.state.clone()
    }

    /// Stops every runner process (SIGTERM, then SIGKILL after the stop
    /// grace) and waits until they are gone. Safe to call once the runner
    /// is already down.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// What a runner process is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Started to be the active runner or the standby, whichever is missing
    /// when it is ready.
    Spare,
    /// Calls go to it.
    Active,
    /// Ready, takes over when the active one dies.
    Standby,
    /// Started by an upgrade; becomes the active one when ready.
    Candidate,
    /// No longer wanted (replaced, killed, stopping): its exit changes nothing.
    Retiring,
}

/// A runner process, as the supervisor sees it.
struct Proc {
    pid: u32,
    socket: Arc<PathBuf>,
    started: Instant,
    /// Since when it is the active runner.
    active_since: Option<Instant>,
    role: Role,
    ctl: mpsc::UnboundedSender<Ctl>,
}

/// Where an upgrade's result goes.
type Done = oneshot::Sender<Result<(), String>>;

/// An upgrade under way.
struct Upgrade {
    /// The configuration of the new processes.
    conf: RunnerConf,
    done: oneshot::Sender<Result<(), String>>,
    step: Step,
}

enum Step {
    /// The new active runner is starting.
    Candidate,
    /// It serves; its standby (generations from this one on) is starting.
    Standby(u64),
}

/// The supervisor's task and everything it owns.
struct Work {
    conf: RunnerConf,
    dir: RunnerDir,
    tx: watch::Sender<RunnerState>,
    events_tx: mpsc::UnboundedSender<Event>,
    procs: BTreeMap<u64, Proc>,
    last_generation: u64,
    /// The next crash-loop delay.
    backoff: Duration,
    /// No spare is started before this.
    start_at: Instant,
    in_use: Arc<InUse>,
    /// Taken when the first runner is ready, or has failed (then we end).
    first_start: Option<oneshot::Sender<Result<(), String>>>,
    upgrades: VecDeque<(Option<Box<RunnerConf>>, Done)>,
    upgrading: Option<Upgrade>,
    /// The first start failed: the supervisor ends.
    ended: bool,
    /// This supervisor's say in `extplug_runner_up` (a reload may run two
    /// of one name for a while).
    metrics_id: u64,
}

impl Work {
    async fn supervise(
        mut self,
        mut asked: mpsc::UnboundedReceiver<Request>,
        mut events: mpsc::UnboundedReceiver<Event>,
        shutdown: CancellationToken,
    ) {
        while !self.ended {
            self.next_upgrade();
            if self.spare_due() && Instant::now() >= self.start_at {
                self.start_spare();
                continue;
            }
            let wake = self.spare_due().then_some(self.start_at);
            tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                Some(request) = asked.recv() => self.on_request(request),
                _ = sleep_until(wake) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.stop_all(&mut events).await;
        metrics::runner_up(
            &self.conf.name,
            self.conf.protocol.name(),
            self.metrics_id,
            false,
        );
        self.tx.send_replace(RunnerState::Stopped);
    }

    /// Processes that serve or will: the active one, the standby, spares.
    fn live(&self) -> usize {
        self.procs
            .values()
            .filter(|p| matches!(p.role, Role::Spare | Role::Active | Role::Standby))
            .count()
    }

    fn with_role(&self, role: Role) -> Option<u64> {
        self.procs
            .iter()
            .find(|(_, p)| p.role == role)
            .map(|(g, _)| *g)
    }

    /// Whether a process is missing (the first, the active one or the
    /// standby). Only one process at a time is started before the first
    /// one is ready.
    fn spare_due(&self) -> bool {
        let wanted = if self.first_start.is_some() || !self.conf.standby {
            1
        } else {
            2
        };
        self.live() < wanted
    }

    fn start_spare(&mut self) {
        self.last_generation += 1;
        let generation = self.last_generation;
        let socket = self.dir.path().join(format!("runner-{generation}.sock"));
        let first = self.first_start.is_some();
        match launch(
            &self.conf,
            socket.clone(),
            generation,
            first,
            self.events_tx.clone(),
        ) {
            Ok(launched) => {
                self.procs.insert(
                    generation,
                    Proc {
                        pid: launched.pid,
                        socket: Arc::new(socket),
                        started: Instant::now(),
                        active_since: None,
                        role: Role::Spare,
                        ctl: launched.ctl,
                    },
                );
                if self.with_role(Role::Active).is_none() {
                    // Calls wait for it (up to the start timeout).
                    self.tx.send_replace(RunnerState::Starting { generation });
                }
            }
            Err(reason) if first => self.first_failed(reason),
            Err(reason) => {
                let delay = self.crashed(true);
                error!(
                    runner = %self.conf.name, generation,
                    restart_in_ms = delay.as_millis() as u64,
                    "runner down: {reason}"
                );
                if self.with_role(Role::Active).is_none() {
                    self.tx.send_replace(RunnerState::Down { reason });
                }
            }
        }
    }

    /// The first start failed: report it (not logged here: the host reports
    /// it once, as its start error) and end.
    fn first_failed(&mut self, reason: String) {
        metrics::runner_up(
            &self.conf.name,
            self.conf.protocol.name(),
            self.metrics_id,
            false,
        );
        self.tx.send_replace(RunnerState::Down {
            reason: reason.clone(),
        });
        if let Some(first) = self.first_start.take() {
            let _ = first.send(Err(reason));
        }
        self.ended = true;
    }

    /// Notes a death of a serving (or starting) process; returns the delay
    /// before its replacement starts.
    fn crashed(&mut self, crash: bool) -> Duration {
        let now = Instant::now();
        if !crash {
            self.backoff = Duration::ZERO;
            self.start_at = now;
            return Duration::ZERO;
        }
        let delay = self.backoff;
        self.backoff = if delay.is_zero() {
            Duration::from_millis(100)
        } else {
            (delay * 2).min(BACKOFF_CAP)
        };
        self.start_at = self.start_at.max(now + delay);
        delay
    }

    /// Makes `generation` the active runner: calls go to it from now on.
    fn activate(&mut self, generation: u64, how: &'static str) {
        let Some(p) = self.procs.get_mut(&generation) else {
            return;
        };
        p.role = Role::Active;
        p.active_since = Some(Instant::now());
        // Before the log line: a reader who waits for the line sees the gauge.
        metrics::runner_up(
            &self.conf.name,
            self.conf.protocol.name(),
            self.metrics_id,
            true,
        );
        info!(runner = %self.conf.name, pid = p.pid, generation, how, socket = %p.socket.display(), "runner ready");
        self.tx.send_replace(RunnerState::Ready {
            socket: p.socket.clone(),
            generation,
            pid: p.pid,
        });
        if let Some(first) = self.first_start.take() {
            let _ = first.send(Ok(()));
        }
    }

    fn retire(&mut self, generation: u64, order: Ctl) {
        if let Some(p) = self.procs.get_mut(&generation) {
            p.role = Role::Retiring;
            let _ = p.ctl.send(order);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Ready { generation } => self.on_ready(generation),
            Event::Exited { generation, reason } => self.on_exit(generation, reason),
        }
    }

    fn on_ready(&mut self, generation: u64) {
        let Some(role) = self.procs.get(&generation).map(|p| p.role) else {
            return;
        };
        match role {
            Role::Spare if self.with_role(Role::Active).is_none() => {
                let how = if self.first_start.is_some() {
                    "started"
                } else {
                    "restarted"
                };
                self.activate(generation, how);
            }
            Role::Spare if self.conf.standby && self.with_role(Role::Standby).is_none() => {
                let p = self.procs.get_mut(&generation).expect("checked above");
                p.role = Role::Standby;
                info!(runner = %self.conf.name, pid = p.pid, generation, "runner standby ready");
                if let Some(Upgrade {
                    step: Step::Standby(from),
                    ..
                }) = &self.upgrading
                {
                    if generation >= *from {
                        self.finish_upgrade(Ok(()));
                    }
                }
            }
            Role::Spare => self.retire(generation, Ctl::Stop),
            Role::Candidate => self.switch(generation),
            Role::Active | Role::Standby | Role::Retiring => {}
        }
    }

    fn on_exit(&mut self, generation: u64, reason: String) {
        let Some(p) = self.procs.remove(&generation) else {
            return;
        };
        if self.first_start.is_some() {
            return self.first_failed(reason);
        }
        let pid = p.pid;
        match p.role {
            Role::Retiring => {
                info!(runner = %self.conf.name, pid, generation, "replaced runner gone: {reason}")
            }
            Role::Candidate => {
                let message = format!("the new runner did not start: {reason}");
                error!(
                    runner = %self.conf.name, pid,
                    generation, "upgrade failed, the old runner keeps serving: {message}"
                );
                self.finish_upgrade(Err(message));
            }
            Role::Active | Role::Standby | Role::Spare => {
                // A process that never got ready, or died young without
                // having served, is in a crash loop.
                let served = p.active_since.is_some_and(|t| t.elapsed() >= SERVED_FOR);
                let crash =
                    p.role == Role::Spare || (p.started.elapsed() < CRASH_WINDOW && !served);
                let delay = self.crashed(crash);
                let restart_in_ms = delay.as_millis() as u64;
                metrics::runner_restart(
                    &self.conf.name,
                    self.conf.protocol.name(),
                    if crash { "start_failed" } else { "exited" },
                );
                if p.role != Role::Active {
                    let role = if p.role == Role::Standby {
                        "standby"
                    } else {
                        "starting"
                    };
                    error!(
                        runner = %self.conf.name, pid,
                        generation, role, restart_in_ms, "runner down: {reason}"
                    );
                    if let Some(Upgrade {
                        step: Step::Standby(from),
                        ..
                    }) = &self.upgrading
                    {
                        if generation >= *from {
                            let message = format!(
                                "the new runner serves, but its standby did not start: {reason}"
                            );
                            self.finish_upgrade(Err(message));
                        }
                    }
                    return;
                }
                match self.with_role(Role::Standby) {
                    Some(standby) => {
                        error!(
                            runner = %self.conf.name, pid,
                            generation,
                            restart_in_ms,
                            "runner down: {reason}; its standby takes over"
                        );
                        self.activate(standby, "promoted");
                    }
                    None => {
                        metrics::runner_up(
                            &self.conf.name,
                            self.conf.protocol.name(),
                            self.metrics_id,
                            false,
                        );
                        error!(runner = %self.conf.name, pid, generation, restart_in_ms, "runner down: {reason}");
                        let state = match self.with_role(Role::Spare) {
                            Some(spare) => RunnerState::Starting { generation: spare },
                            None => RunnerState::Down { reason },
                        };
                        self.tx.send_replace(state);
                    }
                }
            }
        }
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Restart(generation) => {
                if self.with_role(Role::Active) != Some(generation) {
                    return; // about a runner already replaced
                }
                let reason = "killed: it stopped answering calls".to_owned();
                if let Some(p) = self.procs.get(&generation) {
                    warn!(
                        runner = %self.conf.name, pid = p.pid,
                        generation, "runner stopped answering: killing it"
                    );
                }
                self.retire(generation, Ctl::Kill(reason.clone()));
                metrics::runner_restart(&self.conf.name, self.conf.protocol.name(), "unresponsive");
                match self.with_role(Role::Standby) {
                    Some(standby) => self.activate(standby, "promoted"),
                    None => {
                        metrics::runner_up(
                            &self.conf.name,
                            self.conf.protocol.name(),
                            self.metrics_id,
                            false,
                        );
                        self.tx.send_replace(RunnerState::Down { reason });
                    }
                }
            }
            Request::Upgrade { conf, done } => self.upgrades.push_back((conf, done)),
        }
    }

    /// Starts the next upgrade asked, if none is under way.
    fn next_upgrade(&mut self) {
        if self.upgrading.is_some() || self.first_start.is_some() {
            return;
        }
        let Some((conf, done)) = self.upgrades.pop_front() else {
            return;
        };
        let conf = conf.map_or_else(|| self.conf.clone(), |c| *c);
        self.last_generation += 1;
        let generation = self.last_generation;
        let socket = self.dir.path().join(format!("runner-{generation}.sock"));
        match launch(
            &conf,
            socket.clone(),
            generation,
            true,
            self.events_tx.clone(),
        ) {
            Ok(launched) => {
                info!(
                    runner = %self.conf.name, pid = launched.pid,
                    generation, "upgrade: new runner starting"
                );
                self.procs.insert(
                    generation,
                    Proc {
                        pid: launched.pid,
                        socket: Arc::new(socket),
                        started: Instant::now(),
                        active_since: None,
                        role: Role::Candidate,
                        ctl: launched.ctl,
                    },
                );
                self.upgrading = Some(Upgrade {
                    conf,
                    done,
                    step: Step::Candidate,
                });
            }
            Err(reason) => {
                error!(
                    runner = %self.conf.name, generation,
                    "upgrade failed, the old runner keeps serving: {reason}"
                );
                let _ = done.send(Err(reason));
            }
        }
    }

    /// The upgrade's new runner is ready: new calls go to it; the old
    /// active one drains and stops, the other processes stop, and a new
    /// standby starts (from the new configuration).
    fn switch(&mut self, generation: u64) {
        let Some(upgrade) = self.upgrading.as_mut() else {
            return self.retire(generation, Ctl::Stop);
        };
        self.conf = upgrade.conf.clone();
        upgrade.step = Step::Standby(self.last_generation + 1);
        let old: Vec<(u64, Role)> = self
            .procs
            .iter()
            .filter(|(g, p)| **g != generation && p.role != Role::Retiring)
            .map(|(g, p)| (*g, p.role))
            .collect();
        for (g, role) in old {
            let order = if role == Role::Active {
                Ctl::Drain {
                    in_use: self.in_use.clone(),
                    limit: DRAIN_LIMIT,
                }
            } else {
                Ctl::Stop
            };
            self.retire(g, order);
        }
        metrics::runner_restart(&self.conf.name, self.conf.protocol.name(), "upgrade");
        self.activate(generation, "upgraded");
        // A new program: whatever the old one did says nothing about it.
        self.backoff = Duration::ZERO;
        self.start_at = Instant::now();
        if !self.conf.standby {
            self.finish_upgrade(Ok(()));
        }
    }

    fn finish_upgrade(&mut self, result: Result<(), String>) {
        if let Some(upgrade) = self.upgrading.take() {
            if result.is_ok() {
                info!(runner = %self.conf.name, "runner upgraded: every process runs the new program");
            }
            let _ = upgrade.done.send(result);
        }
    }

    /// Stops every process and waits until each has exited.
    async fn stop_all(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        for p in self.procs.values_mut() {
            p.role = Role::Retiring;
            let _ = p.ctl.send(Ctl::Stop);
        }
        while !self.procs.is_empty() {
            match events.recv().await {
                Some(Event::Exited { generation, .. }) => {
                    self.procs.remove(&generation);
                }
                Some(Event::Ready { .. }) => {}
                None => break,
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> Restarter {
        let (requests, _) = mpsc::unbounded_channel();
        Restarter {
            requests,
            in_use: Arc::new(InUse::default()),
        }
    }

    #[tokio::test]
    async fn a_generation_is_drained_once_its_last_lease_is_dropped() {
        let handle = handle();
        let first = handle.lease(1);
        let second = handle.lease(1);
        let other = handle.lease(2);
        let in_use = handle.in_use.clone();
        let drained = tokio::spawn(async move { in_use.drained(1).await });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!drained.is_finished(), "one lease of generation 1 is left");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("drained after the last lease")
            .unwrap();
        // Another generation's leases do not hold it, and an unknown
        // generation is drained at once.
        handle.in_use.drained(3).await;
        drop(other);
        handle.in_use.drained(2).await;
    }
}
