//! The ext-plugin client: a pool of runner connections (one call at a time on
//! each), a token cache per route phase, and calls with a deadline, EXTRA_INFO
//! answers and the `confTokenNotFound` retry.
//!
//! The pool is bounded: at most `pool_size` connections are open, one per
//! call in progress (idle ones are kept for the next calls). A call beyond
//! that waits, within its call timeout, for one of them to come back, rather
//! than opening (and closing) a connection of its own: the runner's number
//! of connections, and its accept work, stay flat however many clients the
//! proxy has. `pool_size` 0 turns pooling off (a new connection per call,
//! unbounded).
//!
//! A token is only ever sent to the runner generation that issued it: a
//! restarted runner numbers its chains anew, so an old token could name
//! another route's chain there. A call whose ticket is from another
//! generation than its connection prepares the chain again first.
//!
//! The call timeout is the runner's time only: while the host gathers an
//! EXTRA_INFO answer (reading a slow client's body, say) the clock stops, so
//! a slow client can neither time the call out nor get the runner replaced.

use crate::host::config::{PhaseConf, RunnerConf};
use crate::host::metrics::CallResult;
use crate::host::runner::supervisor::{Lease, Restarter, RunnerState};
use crate::wire::{
    Encode, ErrorCode, ExtraInfoAnswer, Frame, FrameCodec, FrameError, InfoKey, MessageType, Needs,
    Payload, PrepareConf, ReqCall, RequestOutcome, RequestParts, RespCall, ResponseOutcome,
    ResponseParts,
};
use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tracing::{debug, error, warn};

/// Why a call to the runner failed. Every one of them gives the client 503,
/// unless the route phase allows degradation; except [`CallError::ChainRefused`]:
/// a configuration error, 500 whatever the degradation setting.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The runner is not running (it exited and is being restarted, or the
    /// host is stopping): the call was not attempted.
    #[error("runner is down: {0}")]
    RunnerDown(String),
    /// The runner's socket refused the connection.
    #[error("cannot connect to the runner: {0}")]
    Connect(std::io::Error),
    /// No answer within the call timeout.
    #[error("runner call timed out after {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The runner answered with an ERROR frame.
    #[error("runner refused the call: {code}: {message}")]
    Refused {
        /// The ERROR code.
        code: ErrorCode,
        /// The runner's message.
        message: String,
    },
    /// The runner refused to prepare the route phase's chain (`badRequest`
    /// on PREPARE_CONF: an unknown plugin, a bad plugin configuration). The
    /// refusal is remembered for the runner's generation: until the runner
    /// is replaced, the chain is not prepared again and this comes back at
    /// once (it is logged once, when the runner refuses).
    #[error("the runner refused the chain: {0}")]
    ChainRefused(String),
    /// The runner's answer does not follow the protocol.
    #[error("malformed answer from the runner: {0}")]
    Malformed(String),
    /// The connection broke during the call.
    #[error("runner connection failed during the call: {0}")]
    Broken(String),
}

impl CallError {
    /// The `result` label of `extplug_runner_calls_total` for this failure.
    pub fn result(&self) -> CallResult {
        match self {
            CallError::RunnerDown(_) => CallResult::Down,
            CallError::Connect(_) => CallResult::Connect,
            CallError::TimedOut(_) => CallResult::Timeout,
            CallError::Refused { .. } | CallError::ChainRefused(_) => CallResult::Refused,
            CallError::Malformed(_) => CallResult::Malformed,
            CallError::Broken(_) => CallResult::Broken,
        }
    }
}

/// How [`ExtClient::exchange_on`] failed.
enum Failure {
    /// The call failed.
    Call(CallError),
    /// The call's pooled connection was closed by the runner while it was
    /// idle: the write failed, so nothing of the call was taken, and it can
    /// go again on another connection. The call's place in the pool comes
    /// back with it.
    Unsent {
        cause: std::io::Error,
        permit: Option<OwnedSemaphorePermit>,
    },
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure::Call(e)
    }
}

/// What the host knows about a prepared chain.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The conf token.
    pub token: u32,
    /// What the chain will read (sent with every call).
    pub needs: Arc<Needs>,
    generation: u64,
    expires: Instant,
}

impl Ticket {
    /// The runner generation that issued the token: the token means nothing
    /// to any other.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Answers the runner's EXTRA_INFO requests during a call.
#[async_trait]
pub trait InfoProvider: Send {
    /// The value for `key`, `None` when there is none (an unknown variable, a
    /// body that does not exist in this phase).
    async fn provide(&mut self, key: InfoKey<'_>) -> Option<bytes::Bytes>;
}

/// One route phase's cached token (or the runner's refusal of its chain,
/// with the runner generation that refused), and a lock that makes
/// concurrent requests share one PREPARE_CONF.
///
/// The ticket is read by every call and written once per PREPARE_CONF:
/// an `ArcSwapOption`, so that reading takes no lock that calls on other
/// threads contend for.
#[derive(Default)]
struct Slot {
    ticket: arc_swap::ArcSwapOption<Ticket>,
    refused: Mutex<Option<(u64, String)>>,
    preparing: tokio::sync::Mutex<()>,
}

/// A route phase's entry in a client's token cache, looked up once (when
/// the proxy is built, [`ExtClient::phase_slot`]) rather than by name on
/// every call. Entries are kept for the client's life, so a proxy rebuilt
/// by a reload finds the tokens its routes' phases already had.
#[derive(Clone)]
pub struct PhaseSlot(Arc<Slot>);

struct PooledConn {
    conn: Framed<UnixStream, FrameCodec>,
    generation: u64,
    /// Held while the connection is checked out: a runner replaced by an
    /// upgrade is stopped only once no call uses it.
    lease: Option<Lease>,
    /// The pool's place this call holds (none when pooling is off): given
    /// back when the connection is checked in or dropped.
    permit: Option<OwnedSemaphorePermit>,
    /// Whether it served a call before: the runner may have closed it since.
    reused: bool,
    /// Counted in `extplug_runner_connections` while it is open.
    _counted: crate::host::metrics::ConnectionCount,
}

/// What an idle pooled connection looks like when it is checked out.
#[derive(Debug, PartialEq, Eq)]
enum IdleState {
    /// Nothing arrived since its last answer: usable.
    Open,
    /// The runner closed its end (it died, or is stopping).
    Closed,
    /// Bytes arrived that no call asked for (a runner that answered a
    /// call twice): the next call would read them as its answer.
    Stray,
}

impl PooledConn {
    /// Whether the connection can carry a call: one the runner closed, or
    /// left stray bytes on, is dropped instead of being used for a call
    /// that would fail or read the wrong answer.
    ///
    /// Without a system call in the usual case: the connection's last read
    /// drained the socket, and the runtime marks it readable again only
    /// when the reactor saw bytes or an end of stream arrive since; only
    /// then is the socket read (without waiting) to tell which. An event the
    /// reactor has not seen yet is caught later: a write to a closed
    /// connection fails (and the call is sent again on a fresh one, see
    /// [`ExtClient::exchange_on`]), and a stale answer has the wrong call id.
    fn idle_state(&mut self) -> IdleState {
        if !self.conn.read_buffer().is_empty() {
            // Read together with the last answer.
            return IdleState::Stray;
        }
        let stream = self.conn.get_ref();
        // A no-op waker: nothing waits on an idle connection, and the next
        // read registers its own.
        let mut cx = Context::from_waker(Waker::noop());
        match stream.poll_read_ready(&mut cx) {
            Poll::Pending => IdleState::Open,
            Poll::Ready(Err(_)) => IdleState::Closed,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                match stream.try_read(&mut byte) {
                    // This also clears the readiness: nothing was there.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => IdleState::Open,
                    Ok(n) if n > 0 => IdleState::Stray,
                    Ok(_) | Err(_) => IdleState::Closed,
                }
            }
        }
    }
}

/// The client. Shared by all requests (`Arc`).
pub struct ExtClient {
    state: watch::Receiver<RunnerState>,
    call_timeout: Duration,
    start_timeout: Duration,
    token_lifetime: Duration,
    /// Idle connections, ready for a call.
    pool: Mutex<Vec<PooledConn>>,
    /// At most this many idle connections are kept.
    pool_size: usize,
    /// One permit per open connection (`pool_size` in all); `None` when
    /// pooling is off.
    permits: Option<Arc<Semaphore>>,
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    next_id: AtomicU32,
    /// Replaces a runner that stopped answering, when set.
    restarter: Option<Restarter>,
    restart_after: u32,
    /// Calls timed out in a row (any success resets it).
    timeouts: AtomicU32,
    /// The runner's metrics series.
    metrics: crate::host::metrics::RunnerHandles,
}

impl ExtClient {
    /// A client for the runner whose state `state` publishes.
    pub fn new(conf: &RunnerConf, state: watch::Receiver<RunnerState>) -> Self {
        ExtClient {
            state,
            call_timeout: conf.call_timeout,
            start_timeout: conf.start_timeout,
            token_lifetime: conf.conf_expire.mul_f64(0.9),
            pool: Mutex::new(Vec::with_capacity(conf.pool_size)),
            pool_size: conf.pool_size,
            permits: (conf.pool_size > 0).then(|| Arc::new(Semaphore::new(conf.pool_size))),
            slots: RwLock::default(),
            next_id: AtomicU32::new(1),
            restarter: None,
            restart_after: conf.restart_after_timeouts,
            timeouts: AtomicU32::new(0),
            metrics: crate::host::metrics::RunnerHandles::new(&conf.name),
        }
    }

    /// Names the runner in the client's metrics (`runner` label; default
    /// [`crate::host::config::DEFAULT_RUNNER`]).
    pub fn with_runner_name(mut self, name: &str) -> Self {
        self.metrics = crate::host::metrics::RunnerHandles::new(name);
        self
    }

    /// Lets the client have a stuck runner replaced: after
    /// `restart_after_timeouts` calls in a row time out, it asks `restarter`.
    pub fn with_restarter(mut self, restarter: Restarter) -> Self {
        self.restarter = Some(restarter);
        self
    }

    /// Counts a timed-out call on the runner of `generation`.
    fn timed_out(&self, generation: u64) {
        let n = self.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        if self.restart_after > 0 && n >= self.restart_after {
            if let Some(restarter) = &self.restarter {
                self.timeouts.store(0, Ordering::Relaxed);
                warn!(
                    generation,
                    timeouts = n,
                    "runner calls keep timing out: asking for a new runner"
                );
                restarter.restart(generation);
            }
        }
    }

    /// A fresh call id.
    pub fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The runner's socket, generation and pid, waiting while it starts (up
    /// to the start timeout) and failing at once while it is down.
    async fn ready(&self) -> Result<(Arc<PathBuf>, u64, u32), CallError> {
        // The usual case first, without cloning the receiver.
        if let RunnerState::Ready {
            socket,
            generation,
            pid,
        } = &*self.state.borrow()
        {
            return Ok((socket.clone(), *generation, *pid));
        }
        let mut state = self.state.clone();
        let deadline = Instant::now() + self.start_timeout;
        loop {
            match &*state.borrow_and_update() {
                RunnerState::Ready {
                    socket,
                    generation,
                    pid,
                } => return Ok((socket.clone(), *generation, *pid)),
                RunnerState::Down { reason } => return Err(CallError::RunnerDown(reason.clone())),
                RunnerState::Stopped => {
                    return Err(CallError::RunnerDown("the host is stopping".into()))
                }
                RunnerState::Starting { .. } => {}
            }
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CallError::RunnerDown("the supervisor is gone".into())),
                Err(_) => return Err(CallError::RunnerDown("still starting".into())),
            }
        }
    }

    /// A connection to the current runner for one call: pooled (and still
    /// open), or new (and then checked to be served by the runner process
    /// itself). While `pool_size` connections are in use, waits for one to
    /// come back, up to the call timeout.
    async fn checkout(&self) -> Result<PooledConn, CallError> {
        let permit = self.permit().await?;
        self.connection(permit).await
    }

    /// A place in the pool: at once while fewer than `pool_size` calls are
    /// in progress, else the first one given back (first come, first
    /// served), up to the call timeout. `None` when pooling is off.
    async fn permit(&self) -> Result<Option<OwnedSemaphorePermit>, CallError> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        match tokio::time::timeout(self.call_timeout, permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            // The semaphore is never closed.
            Ok(Err(_)) => Err(CallError::RunnerDown("the client is closed".into())),
            Err(_) => {
                debug!("every runner connection stayed busy for the call timeout");
                Err(CallError::TimedOut(self.call_timeout))
            }
        }
    }

    /// A connection for the call that holds `permit`: see
    /// [`ExtClient::checkout`].
    ///
    /// A runner that refuses the connection (it just died: its socket is
    /// still there) is most likely being replaced by its standby: the
    /// connection is tried once more on the next runner, if the state
    /// changes within the call timeout. Nothing was sent yet, so this
    /// retry cannot run a call twice.
    async fn connection(
        &self,
        mut permit: Option<OwnedSemaphorePermit>,
    ) -> Result<PooledConn, CallError> {
        let mut retried = false;
        loop {
            let (socket, generation, pid) = self.ready().await?;
            // Taken before the check below: after it, the supervisor waits
            // for this lease before it stops a runner it replaced.
            let lease = self.restarter.as_ref().map(|r| r.lease(generation));
            if lease.is_some() && !self.is_current(generation) {
                continue;
            }
            if let Some(mut conn) = self.idle(generation) {
                conn.lease = lease;
                conn.permit = permit;
                return Ok(conn);
            }
            let connected = tokio::time::timeout(self.call_timeout, UnixStream::connect(&*socket))
                .await
                .map_err(|_| CallError::TimedOut(self.call_timeout))?;
            let stream = match connected {
                Ok(stream) => stream,
                Err(e) if !retried && self.replaced(generation).await => {
                    debug!(
                        generation,
                        "runner refused a connection ({e}) and was replaced: trying the next one"
                    );
                    retried = true;
                    continue;
                }
                Err(e) => return Err(CallError::Connect(e)),
            };
            if let Err(why) = crate::host::runner::process::check_peer(&stream, pid) {
                error!(generation, socket = %socket.display(), "{why}: connection refused");
                return Err(CallError::Connect(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    why,
                )));
            }
            return Ok(PooledConn {
                conn: Framed::new(stream, FrameCodec::default()),
                generation,
                lease,
                permit: permit.take(),
                reused: false,
                _counted: self.metrics.connection(),
            });
        }
    }

    /// An idle connection to the runner of `generation` that is still open;
    /// the others are closed on the way.
    fn idle(&self, generation: u64) -> Option<PooledConn> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut conn) = pool.pop() {
            if conn.generation != generation {
                continue;
            }
            match conn.idle_state() {
                IdleState::Open => {
                    conn.reused = true;
                    return Some(conn);
                }
                IdleState::Closed => {}
                IdleState::Stray => warn!(
                    generation,
                    "the runner sent bytes no call asked for (a stale answer?): closing that connection"
                ),
            }
        }
        None
    }

    /// Whether the runner of `generation` is the one calls go to now.
    fn is_current(&self, generation: u64) -> bool {
        matches!(&*self.state.borrow(), RunnerState::Ready { generation: g, .. } if *g == generation)
    }

    /// Waits (up to the call timeout) until the runner of `generation` is
    /// no longer the current one; whether it was replaced.
    async fn replaced(&self, generation: u64) -> bool {
        let mut state = self.state.clone();
        let changed = async move {
            state
                .wait_for(
                    |s| !matches!(s, RunnerState::Ready { generation: g, .. } if *g == generation),
                )
                .await
                .is_ok()
        };
        tokio::time::timeout(self.call_timeout, changed)
            .await
            .unwrap_or(false)
    }

    /// Puts a connection whose call went well back in the pool, and gives
    /// its place back (after: a caller waiting for a place finds it idle).
    fn checkin(&self, mut conn: PooledConn) {
        conn.lease = None;
        let permit = conn.permit.take();
        // A connection to a runner replaced during the call (it served on
        // under its lease) is of no use any more: kept, it would lie under
        // the new runner's connections, never reached, its socket open.
        if self.permits.is_some() && self.is_current(conn.generation) {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() >= self.pool_size {
                pool.retain(|c| c.generation == conn.generation);
            }
            // A call that gave its place back while it gathered an
            // EXTRA_INFO answer comes back with one connection too many.
            if pool.len() < self.pool_size {
                pool.push(conn);
            }
        }
        drop(permit);
    }

    /// Sends `msg` on a connection to the current runner; see
    /// [`ExtClient::exchange_on`].
    async fn exchange<M: Encode>(
        &self,
        msg: &M,
        expect: MessageType,
    ) -> Result<(Frame, u64), CallError> {
        let mut held = None;
        let mut unsent = 0;
        loop {
            let pooled = self.checkout_holding(held.take()).await?;
            let generation = pooled.generation;
            match self.exchange_on(pooled, msg, expect, None).await {
                Ok((frame, pooled)) => {
                    self.checkin(pooled);
                    return Ok((frame, generation));
                }
                Err(Failure::Call(e)) => return Err(e),
                Err(Failure::Unsent { cause, permit }) => {
                    held = permit;
                    self.unsent(&mut unsent, generation, cause)?;
                }
            }
        }
    }

    /// [`ExtClient::checkout`], with the place in the pool `held` when the
    /// call has one already (its first connection was found closed).
    async fn checkout_holding(
        &self,
        held: Option<OwnedSemaphorePermit>,
    ) -> Result<PooledConn, CallError> {
        match held {
            Some(permit) => self.connection(Some(permit)).await,
            None => self.checkout().await,
        }
    }

    /// Counts a call sent on a pooled connection the runner had closed (see
    /// [`Failure::Unsent`]): the call goes again, on the next connection,
    /// unless that happened more often than the pool has connections (a
    /// runner that closes every connection it served on).
    fn unsent(
        &self,
        count: &mut usize,
        generation: u64,
        cause: std::io::Error,
    ) -> Result<(), CallError> {
        *count += 1;
        if *count > self.pool_size + 1 {
            return Err(CallError::Broken(format!(
                "the runner closed {count} pooled connections in a row ({cause})"
            )));
        }
        debug!(generation, %cause, "pooled runner connection was closed: sending on another");
        Ok(())
    }

    /// Sends `msg` on `pooled` and returns the final answer frame (type
    /// `expect` or ERROR) and the connection, answering EXTRA_INFO
    /// requests on the way. The caller puts the connection back in the pool
    /// once the answer checked out: one whose answer was malformed or for
    /// another call id is out of step, and is dropped.
    ///
    /// The call timeout bounds the time spent waiting for the runner (to
    /// take a frame, to answer one) only: the time `provider` takes is
    /// added to the deadline, as it is the client's time, not the runner's.
    async fn exchange_on<M: Encode>(
        &self,
        mut pooled: PooledConn,
        msg: &M,
        expect: MessageType,
        mut provider: Option<&mut dyn InfoProvider>,
    ) -> Result<(Frame, PooledConn), Failure> {
        let generation = pooled.generation;
        let limit = self.call_timeout;
        let timed_out = |_| {
            self.timed_out(generation);
            CallError::TimedOut(limit)
        };
        let mut deadline = Instant::now() + limit;
        let sent = tokio::time::timeout_at(deadline, pooled.conn.send(msg))
            .await
            .map_err(timed_out)?;
        match sent {
            Ok(()) => {}
            // A pooled connection the runner closed while it was idle (the
            // reactor had not told yet): a write to a closed socket fails,
            // so the runner took nothing, and the caller sends the call
            // again on another connection (to the runner's replacement,
            // when it died: the chain is prepared there first).
            Err(FrameError::Io(cause)) if pooled.reused => {
                return Err(Failure::Unsent {
                    cause,
                    permit: pooled.permit.take(),
                });
            }
            Err(e) => return Err(broken(e).into()),
        }
        let conn = &mut pooled.conn;
        let frame = loop {
            let frame = match tokio::time::timeout_at(deadline, conn.next())
                .await
                .map_err(timed_out)?
            {
                None => {
                    return Err(CallError::Broken("the runner closed the connection".into()).into())
                }
                Some(frame) => frame.map_err(broken)?,
            };
            if frame.kind == expect as u8 || frame.kind == MessageType::Error as u8 {
                break frame;
            }
            if frame.kind != MessageType::ExtraInfo as u8 {
                return Err(CallError::Malformed(format!(
                    "got a frame of type {} while waiting for type {}",
                    frame.kind, expect as u8
                ))
                .into());
            }
            let Some(provider) = provider.as_deref_mut() else {
                return Err(CallError::Malformed("EXTRA_INFO during PREPARE_CONF".into()).into());
            };
            let payload =
                Payload::parse(&frame.payload).map_err(|e| CallError::Malformed(e.to_string()))?;
            let key = payload
                .extra_info_req()
                .map_err(|e| CallError::Malformed(e.to_string()))?;
            debug!(?key, "EXTRA_INFO");
            let asked = Instant::now();
            let mut gathering = provider.provide(key);
            let value = match futures::poll!(&mut gathering) {
                Poll::Ready(value) => value,
                Poll::Pending => {
                    // The client's time (a slow body, say), unbounded by
                    // the call timeout: the call gives its place in the
                    // pool back, so that a few slow clients cannot hold
                    // every place while the calls of all other requests
                    // wait for one and time out. The connection stays
                    // this call's; it is one over `pool_size` until the
                    // call ends (see `checkin`).
                    drop(pooled.permit.take());
                    gathering.await
                }
            };
            // The clock stops while we gather the answer.
            deadline += asked.elapsed();
            tokio::time::timeout_at(deadline, conn.send(&ExtraInfoAnswer(value.as_deref())))
                .await
                .map_err(timed_out)?
                .map_err(broken)?;
        };
        // Read first: no shared write per call while all is well.
        if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
        Ok((frame, pooled))
    }

    fn slot(&self, key: &str) -> Arc<Slot> {
        if let Some(slot) = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return slot.clone();
        }
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// The cached ticket, if it is for the running runner and not too old.
    fn valid(&self, slot: &Slot) -> Option<Ticket> {
        let guard = slot.ticket.load();
        let ticket = guard.as_deref()?;
        let current = match &*self.state.borrow() {
            RunnerState::Ready { generation, .. } => *generation,
            _ => return None,
        };
        (ticket.generation == current && Instant::now() < ticket.expires).then(|| ticket.clone())
    }

    /// The current runner's refusal of the slot's chain, if it refused it.
    fn refusal(&self, slot: &Slot) -> Option<CallError> {
        let refused = slot.refused.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, message) = refused.as_ref()?;
        match &*self.state.borrow() {
            RunnerState::Ready { generation: g, .. } if g == generation => {
                Some(CallError::ChainRefused(message.clone()))
            }
            _ => None,
        }
    }

    /// The token for a route phase: cached, or prepared now (once for all
    /// the requests that need it at the same moment).
    ///
    /// # Errors
    /// The runner is down, or refused the chain ([`CallError::ChainRefused`],
    /// remembered for that runner), or the exchange failed.
    pub async fn ticket(&self, phase: &PhaseConf) -> Result<Ticket, CallError> {
        self.prepare(&self.slot(&phase.key), phase, true).await
    }

    /// `phase`'s entry in the token cache, for [`ExtClient::ticket_in`].
    pub fn phase_slot(&self, phase: &PhaseConf) -> PhaseSlot {
        PhaseSlot(self.slot(&phase.key))
    }

    /// [`ExtClient::ticket`] with the phase's cache entry resolved before
    /// (`slot` is [`ExtClient::phase_slot`] of `phase`): no lookup by name.
    ///
    /// # Errors
    /// As [`ExtClient::ticket`].
    pub async fn ticket_in(
        &self,
        slot: &PhaseSlot,
        phase: &PhaseConf,
    ) -> Result<Ticket, CallError> {
        self.prepare(&slot.0, phase, true).await
    }

    /// [`ExtClient::ticket`] for the start-up check: a refusal is not
    /// logged, as the caller reports it (once, as its error).
    pub(crate) async fn ticket_unlogged(&self, phase: &PhaseConf) -> Result<Ticket, CallError> {
        self.prepare(&self.slot(&phase.key), phase, false).await
    }

    async fn prepare(
        &self,
        slot: &Slot,
        phase: &PhaseConf,
        log_refusal: bool,
    ) -> Result<Ticket, CallError> {
        if let Some(ticket) = self.valid(slot) {
            return Ok(ticket);
        }
        if let Some(refused) = self.refusal(slot) {
            return Err(refused);
        }
        let _one_at_a_time = slot.preparing.lock().await;
        if let Some(ticket) = self.valid(slot) {
            return Ok(ticket);
        }
        if let Some(refused) = self.refusal(slot) {
            return Err(refused);
        }
        let req = PrepareConf {
            conf: phase
                .conf
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            key: Some(&phase.key),
        };
        let (frame, generation) = self.exchange(&req, MessageType::PrepareConf).await?;
        let payload =
            Payload::parse(&frame.payload).map_err(|e| CallError::Malformed(e.to_string()))?;
        if frame.kind == MessageType::Error as u8 {
            return Err(match refused(&payload) {
                CallError::Refused {
                    code: ErrorCode::BadRequest,
                    message,
                } => {
                    // Once per route phase and runner: every request after
                    // this one gets the remembered refusal, unlogged.
                    if log_refusal {
                        error!(route_phase = %phase.key, generation, "the runner refused the chain: {message}; answering 500 until the runner is replaced");
                    }
                    *slot.refused.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((generation, message.clone()));
                    CallError::ChainRefused(message)
                }
                other => other,
            });
        }
        let prepared = payload
            .prepared()
            .map_err(|e| CallError::Malformed(e.to_string()))?;
        let mut needs = prepared.needs;
        for var in &phase.extra_info {
            if !needs.vars.contains(var) {
                needs.vars.push(var.clone());
            }
        }
        let ticket = Ticket {
            token: prepared.token,
            needs: Arc::new(needs),
            generation,
            expires: Instant::now() + self.token_lifetime,
        };
        debug!(route_phase = %phase.key, token = ticket.token, generation, "chain prepared");
        self.metrics.conf_prepared();
        slot.ticket.store(Some(Arc::new(ticket.clone())));
        Ok(ticket)
    }

    /// Drops the token-cache entries that no route phase holds any more
    /// (only the cache refers to them): the chains of routes that a reload
    /// or an etcd change removed or changed. Without this the cache would
    /// grow with every distinct chain a long-lived host has ever served (a
    /// route that flaps in etcd makes a new chain key each time). Returns
    /// how many entries were dropped.
    pub fn prune_slots(&self) -> usize {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let before = slots.len();
        slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        before - slots.len()
    }

    /// Drops every cached token, as PROTOCOL.md asks on `confTokenNotFound`:
    /// a runner that lost one token (restarted behind our back, or expired
    /// it) has most likely lost them all. At worst a chain is prepared once
    /// more than needed.
    fn forget_all(&self) {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values() {
            slot.ticket.store(None);
        }
    }

    /// Runs a request phase: HTTP_REQ_CALL with `parts` under `ticket`'s
    /// token. The token goes only to the runner that issued it: if that
    /// runner was replaced since, the chain is prepared again on the new one
    /// first. On `confTokenNotFound` the cached tokens are dropped, the chain
    /// prepared again and the call retried: three attempts in all.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn call_request(
        &self,
        phase: &PhaseConf,
        ticket: &Ticket,
        parts: RequestParts<'_>,
        provider: &mut dyn InfoProvider,
    ) -> Result<RequestOutcome, CallError> {
        let call = ReqCall {
            conf_token: ticket.token,
            parts,
        };
        self.call(phase, call, ticket.generation, provider).await
    }

    /// Runs the response phase: HTTP_RESP_CALL, with the same retry as
    /// [`ExtClient::call_request`].
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn call_response(
        &self,
        phase: &PhaseConf,
        ticket: &Ticket,
        parts: ResponseParts<'_>,
        provider: &mut dyn InfoProvider,
    ) -> Result<ResponseOutcome, CallError> {
        let call = RespCall {
            conf_token: ticket.token,
            parts,
        };
        self.call(phase, call, ticket.generation, provider).await
    }

    /// One call, sent only to the runner generation that issued its token
    /// (`generation`), with the `confTokenNotFound` retry: three attempts in
    /// all, preparing again included.
    async fn call<C: Call>(
        &self,
        phase: &PhaseConf,
        mut call: C,
        mut generation: u64,
        provider: &mut dyn InfoProvider,
    ) -> Result<C::Outcome, CallError> {
        let mut attempt = 1;
        let mut held = None;
        let mut unsent = 0;
        loop {
            let pooled = self.checkout_holding(held.take()).await?;
            if pooled.generation != generation {
                // The runner was replaced since the ticket was issued (while
                // the request body was read, say): the new one may know this
                // token as another route's chain. Prepare on the new one.
                self.checkin(pooled);
                if attempt >= 3 {
                    return Err(CallError::RunnerDown(
                        "the runner was replaced during the call, again and again".into(),
                    ));
                }
                debug!(route_phase = %phase.key, token = *call.token(), from = generation, "ticket from a replaced runner: preparing again");
                let ticket = self.ticket(phase).await?;
                *call.token() = ticket.token;
                generation = ticket.generation;
                attempt += 1;
                continue;
            }
            let sent_to = pooled.generation;
            let (frame, pooled) = match self
                .exchange_on(pooled, &call, C::KIND, Some(&mut *provider))
                .await
            {
                Ok(answer) => answer,
                Err(Failure::Call(e)) => return Err(e),
                Err(Failure::Unsent { cause, permit }) => {
                    held = permit;
                    self.unsent(&mut unsent, sent_to, cause)?;
                    continue;
                }
            };
            // `pooled` goes back to the pool only with a well-formed answer
            // to this call: a runner that answered twice, say, has left a
            // stale frame that every later call on it would read instead.
            let payload =
                Payload::parse(&frame.payload).map_err(|e| CallError::Malformed(e.to_string()))?;
            if frame.kind == MessageType::Error as u8 {
                self.checkin(pooled);
                match refused(&payload) {
                    CallError::Refused {
                        code: ErrorCode::ConfTokenNotFound,
                        message,
                    } if attempt < 3 => {
                        let token = *call.token();
                        warn!(route_phase = %phase.key, token, attempt, %message, "token not found: preparing again");
                        self.forget_all();
                        let ticket = self.ticket(phase).await?;
                        *call.token() = ticket.token;
                        generation = ticket.generation;
                        attempt += 1;
                        continue;
                    }
                    other => return Err(other),
                }
            }
            let (id, outcome) =
                C::answer(&payload).map_err(|e| CallError::Malformed(e.to_string()))?;
            if id != call.id() {
                return Err(CallError::Malformed(format!(
                    "answer id {id} for call {}",
                    call.id()
                )));
            }
            self.checkin(pooled);
            return Ok(outcome);
        }
    }
}

/// What [`ExtClient::call`] needs of a call message.
trait Call: Encode {
    /// The frame type of the call and of its answer.
    const KIND: MessageType;
    /// What the answer decodes to.
    type Outcome;
    fn token(&mut self) -> &mut u32;
    fn id(&self) -> u32;
    fn answer(payload: &Payload<'_>) -> Result<(u32, Self::Outcome), crate::wire::DecodeError>;
}

impl Call for ReqCall<'_> {
    const KIND: MessageType = MessageType::HttpReqCall;
    type Outcome = RequestOutcome;
    fn token(&mut self) -> &mut u32 {
        &mut self.conf_token
    }
    fn id(&self) -> u32 {
        self.parts.id
    }
    fn answer(payload: &Payload<'_>) -> Result<(u32, RequestOutcome), crate::wire::DecodeError> {
        payload.req_call_answer().map(|a| (a.id, a.outcome))
    }
}

impl Call for RespCall<'_> {
    const KIND: MessageType = MessageType::HttpRespCall;
    type Outcome = ResponseOutcome;
    fn token(&mut self) -> &mut u32 {
        &mut self.conf_token
    }
    fn id(&self) -> u32 {
        self.parts.id
    }
    fn answer(payload: &Payload<'_>) -> Result<(u32, ResponseOutcome), crate::wire::DecodeError> {
        payload.resp_call_answer().map(|a| (a.id, a.outcome))
    }
}

fn broken(e: FrameError) -> CallError {
    match e {
        FrameError::Io(e) => CallError::Broken(e.to_string()),
        other => CallError::Malformed(other.to_string()),
    }
}

fn refused(payload: &Payload<'_>) -> CallError {
    match payload.error() {
        Ok(e) => CallError::Refused {
            code: e.code,
            message: e.message,
        },
        Err(e) => CallError::Malformed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(key: &str) -> PhaseConf {
        PhaseConf {
            conf: Vec::new(),
            allow_degradation: false,
            extra_info: Vec::new(),
            runner: crate::host::config::DEFAULT_RUNNER.to_owned(),
            key: key.to_owned(),
        }
    }

    /// A connection for `generation` on one end of a socket pair (the
    /// other end returned, to keep it open).
    fn pooled(client: &ExtClient, generation: u64) -> (PooledConn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let conn = PooledConn {
            conn: Framed::new(ours, FrameCodec::default()),
            generation,
            lease: None,
            permit: None,
            reused: false,
            _counted: client.metrics.connection(),
        };
        (conn, theirs)
    }

    fn ready(generation: u64) -> RunnerState {
        RunnerState::Ready {
            socket: Arc::new(PathBuf::from("/nonexistent")),
            generation,
            pid: 1,
        }
    }

    /// The idle pool holds at most `pool_size` connections, and none to a
    /// runner replaced since: a call that ends on the old runner after the
    /// switch drops its connection, and old ones still idle make room for
    /// the new runner's.
    #[tokio::test]
    async fn the_idle_pool_keeps_pool_size_connections_to_the_current_runner() {
        let mut conf = crate::host::config::Config::parse(
            r#"{"ext-plugin": {"cmd": ["runner"]}, "routes": []}"#,
        )
        .expect("a valid configuration")
        .runner;
        conf.pool_size = 2;
        let (tx, rx) = watch::channel(ready(1));
        let client = ExtClient::new(&conf, rx);
        let mut peers = Vec::new();
        let mut out = Vec::new();
        for _ in 0..3 {
            let (conn, peer) = pooled(&client, 1);
            out.push(conn);
            peers.push(peer);
        }
        let generations = |client: &ExtClient| -> Vec<u64> {
            client
                .pool
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.generation)
                .collect()
        };
        client.checkin(out.pop().unwrap());
        client.checkin(out.pop().unwrap());
        tx.send(ready(2)).unwrap();
        // The last call on the old runner ends after the switch.
        client.checkin(out.pop().unwrap());
        assert_eq!(generations(&client), [1, 1]);
        let (new, _peer) = pooled(&client, 2);
        client.checkin(new);
        assert_eq!(generations(&client), [2]);
        let (new, _peer2) = pooled(&client, 2);
        client.checkin(new);
        let (new, _peer3) = pooled(&client, 2);
        client.checkin(new);
        assert_eq!(generations(&client), [2, 2], "at most pool_size idle");
    }

    /// Pooled connections the runner closed, before the reactor saw it
    /// (they look open): the call's write fails on each, nothing was sent,
    /// so the call goes on the next one, and then on a new connection, and
    /// is answered. (Before, it was sent once more only, on the next
    /// pooled connection, closed too: the call failed.)
    #[tokio::test]
    async fn a_call_goes_past_every_closed_pooled_connection() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("runner.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        // The runner: answers one PREPARE_CONF per connection.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut conn = Framed::new(stream, FrameCodec::default());
                    if let Some(Ok(frame)) = conn.next().await {
                        assert_eq!(frame.kind, MessageType::PrepareConf as u8);
                        let answer = crate::wire::Prepared {
                            token: 9,
                            needs: Needs::default(),
                        };
                        conn.send(&answer).await.unwrap();
                    }
                });
            }
        });
        let mut conf = crate::host::config::Config::parse(
            r#"{"ext-plugin": {"cmd": ["runner"]}, "routes": []}"#,
        )
        .expect("a valid configuration")
        .runner;
        conf.pool_size = 4;
        let (_tx, rx) = watch::channel(RunnerState::Ready {
            socket: Arc::new(socket),
            generation: 1,
            pid: std::process::id(),
        });
        let client = ExtClient::new(&conf, rx);
        for _ in 0..3 {
            let (conn, peer) = pooled(&client, 1);
            drop(peer);
            client.checkin(conn);
        }
        // No await since: the runtime has not polled its reactor.
        let ticket = client.ticket(&phase("route-1")).await.unwrap();
        assert_eq!(ticket.token, 9);
        assert_eq!(client.pool.lock().unwrap().len(), 1, "the new connection");
    }

    #[test]
    fn pruning_keeps_the_slots_route_phases_hold_and_drops_the_others() {
        let conf = crate::host::config::Config::parse(
            r#"{"ext-plugin": {"cmd": ["runner"]}, "routes": []}"#,
        )
        .expect("a valid configuration")
        .runner;
        let (_tx, rx) = watch::channel(RunnerState::Stopped);
        let client = ExtClient::new(&conf, rx);
        let held = client.phase_slot(&phase("route-1"));
        drop(client.phase_slot(&phase("route-2")));
        drop(client.phase_slot(&phase("route-3")));
        assert_eq!(client.prune_slots(), 2);
        assert_eq!(client.prune_slots(), 0);
        // The held slot is the one the cache still has.
        assert!(Arc::ptr_eq(
            &client.phase_slot(&phase("route-1")).0,
            &held.0
        ));
        drop(held);
        assert_eq!(client.prune_slots(), 1);
    }
}
