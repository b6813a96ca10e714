//! The client ([`ExtClient`]) and its call loop: a connection from the
//! pool, the call sent with a deadline, EXTRA_INFO answered on the way, the
//! answer checked, the `confTokenNotFound` retry, and the chain prepared
//! (PREPARE_CONF) when its token is missing or from another runner.

use super::error::{broken, refused, CallError, Failure};
use super::pool::{Pool, PooledConn};
use super::tokens::{PhaseSlot, Slot, Ticket, Tokens};
use super::wire::{Answer, HostCodec};
use crate::host::config::{PhaseConf, RunnerConf};
use crate::host::metrics::RunnerHandles;
use crate::host::runner::supervisor::{Restarter, RunnerState};
use crate::wire::apisix::ApisixEncode;
use crate::wire::{
    Encode, ErrorCode, ExtraInfoAnswer, Frame, FrameError, InfoKey, MessageType, Needs,
    PrepareConf, Protocol, ReqCall, RequestOutcome, RequestParts, RespCall, ResponseOutcome,
    ResponseParts,
};
use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tracing::{debug, error, warn};

/// Answers the runner's EXTRA_INFO requests during a call.
#[async_trait]
pub trait InfoProvider: Send {
    /// The value for `key`, `None` when there is none (an unknown variable, a
    /// body that does not exist in this phase).
    async fn provide(&mut self, key: InfoKey<'_>) -> Option<bytes::Bytes>;
}

/// The client. Shared by all requests (`Arc`).
pub struct ExtClient {
    state: watch::Receiver<RunnerState>,
    /// The runner's wire: how every message is encoded and every answer
    /// read, and, on APISIX's, what APISIX's own client does differently
    /// (a connection closed after any ERROR, no needs declared).
    protocol: Protocol,
    call_timeout: Duration,
    start_timeout: Duration,
    /// The connections to the runner.
    pub(super) pool: Pool,
    /// One place per connection held by a call waiting for a body
    /// (`max_waiting_calls` in all); `None`: no bound.
    waiting: Option<Arc<Semaphore>>,
    /// The runner's tokens, by route phase.
    tokens: Tokens,
    next_id: AtomicU32,
    /// Replaces a runner that stopped answering, when set.
    restarter: Option<Restarter>,
    restart_after: u32,
    /// Calls timed out in a row (any success resets it).
    timeouts: AtomicU32,
    /// Calls the runner answered so far: whether it served others while a
    /// call waited.
    answered: AtomicU64,
    /// The runner's metrics series.
    pub(super) metrics: RunnerHandles,
}

impl ExtClient {
    /// A client for the runner whose state `state` publishes.
    pub fn new(conf: &RunnerConf, state: watch::Receiver<RunnerState>) -> Self {
        ExtClient {
            state,
            protocol: conf.protocol,
            call_timeout: conf.call_timeout,
            start_timeout: conf.start_timeout,
            pool: Pool::new(conf.pool_size),
            waiting: (conf.max_waiting_calls > 0)
                .then(|| Arc::new(Semaphore::new(conf.max_waiting_calls))),
            tokens: Tokens::new(conf.conf_expire.mul_f64(0.9)),
            next_id: AtomicU32::new(1),
            restarter: None,
            restart_after: conf.restart_after_timeouts,
            timeouts: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            metrics: RunnerHandles::new(&conf.name, conf.protocol.name()),
        }
    }

    /// Names the runner in the client's metrics (`runner` label; default
    /// [`crate::host::config::DEFAULT_RUNNER`]).
    pub fn with_runner_name(mut self, name: &str) -> Self {
        self.metrics = RunnerHandles::new(name, self.protocol.name());
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
        let permit = self.pool.permit(self.call_timeout).await?;
        self.connection(permit).await
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
            if let Some(mut conn) = self.pool.take(generation) {
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
                conn: Framed::new(stream, HostCodec::new(self.protocol)),
                generation,
                lease,
                permit: permit.take(),
                reused: false,
                _counted: self.metrics.connection(),
            });
        }
    }

    /// The generation of the runner calls go to now, when one is ready.
    fn current(&self) -> Option<u64> {
        match &*self.state.borrow() {
            RunnerState::Ready { generation, .. } => Some(*generation),
            _ => None,
        }
    }

    /// Puts a connection whose call went well back in the pool (see
    /// `Pool::put_back`): kept only while its runner is the current one.
    pub(super) fn checkin(&self, conn: PooledConn) {
        let current = self.is_current(conn.generation);
        self.pool.put_back(conn, current);
    }

    /// [`ExtClient::checkin`] after `answer`, unless the connection is
    /// done: on APISIX's wire a connection is closed after any ERROR, as
    /// APISIX's own client does (its runners may close it too, and expect
    /// a new one).
    fn checkin_after(&self, conn: PooledConn, answer: &Frame) {
        if self.protocol == Protocol::Apisix && answer.kind == MessageType::Error as u8 {
            debug!(
                generation = conn.generation,
                "ERROR on APISIX's wire: closing that connection"
            );
            return;
        }
        self.checkin(conn);
    }

    /// Drops the token-cache entries that no route phase holds any more
    /// (only the cache refers to them): the chains of routes that a reload
    /// or an etcd change removed or changed. Without this the cache would
    /// grow with every distinct chain a long-lived host has ever served (a
    /// route that flaps in etcd makes a new chain key each time). Returns
    /// how many entries were dropped.
    pub fn prune_slots(&self) -> usize {
        self.tokens.prune()
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

    /// Sends `msg` on a connection to the current runner; see
    /// [`ExtClient::exchange_on`].
    async fn exchange<M: Encode + ApisixEncode>(
        &self,
        msg: &M,
        expect: MessageType,
    ) -> Result<(Frame, u64), CallError> {
        let mut held = None;
        let mut unsent = 0;
        loop {
            let pooled = self.checkout_holding(held.take()).await?;
            let generation = pooled.generation;
            match self.exchange_on(pooled, msg, expect, None, false).await {
                Ok((frame, pooled)) => {
                    self.checkin_after(pooled, &frame);
                    return Ok((frame, generation));
                }
                Err(Failure::Call(e)) => return Err(e),
                Err(Failure::Unsent { cause, permit }) => {
                    held = permit;
                    self.unsent(&mut unsent, generation, cause)?;
                }
                // Without a provider nothing is gathered.
                Err(Failure::Abandoned) => {}
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
        if *count > self.pool.size + 1 {
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
    pub(super) async fn exchange_on<M: Encode + ApisixEncode>(
        &self,
        mut pooled: PooledConn,
        msg: &M,
        expect: MessageType,
        mut provider: Option<&mut dyn InfoProvider>,
        may_abandon: bool,
    ) -> Result<(Frame, PooledConn), Failure> {
        let generation = pooled.generation;
        let limit = self.call_timeout;
        let timed_out = |_| {
            self.timed_out(generation);
            CallError::TimedOut(limit)
        };
        // The first answer's wait on a new connection: a runner that never
        // read the call (it has not accepted the connection: its backlog
        // is full, its connection cap reached) while it answered other
        // calls meanwhile is overloaded, not stuck. (A runner that answers
        // nothing, SIGSTOPped or deadlocked, reads nothing either: it is
        // counted.)
        let first_wait_on_new = !pooled.reused;
        let answered_before = self.answered.load(Ordering::Relaxed);
        let answer_timed_out = |stream: &UnixStream, first: bool| {
            let serving = self.answered.load(Ordering::Relaxed) != answered_before;
            if first && first_wait_on_new && serving && unread_bytes(stream).is_some_and(|n| n > 0)
            {
                warn!(
                    generation,
                    "the runner never read the call while it answered others (its backlog is full): timed out, not counted toward `restart_after_timeouts`"
                );
            } else {
                self.timed_out(generation);
            }
            CallError::TimedOut(limit)
        };
        let mut deadline = Instant::now() + limit;
        // A call too large for the socket's buffer waits for the runner to
        // read it: a runner that never accepted the connection is as above.
        let sent = tokio::time::timeout_at(deadline, pooled.conn.send(msg))
            .await
            .map_err(|_| answer_timed_out(pooled.conn.get_ref(), true))?;
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
        let mut first = true;
        let frame = loop {
            let next = tokio::time::timeout_at(deadline, conn.next()).await;
            let next = next.map_err(|_| answer_timed_out(conn.get_ref(), first))?;
            let before_any_answer = std::mem::replace(&mut first, false);
            let frame = match next {
                None => {
                    return Err(CallError::Broken("the runner closed the connection".into()).into())
                }
                // A reset before any answer: on a unix socket the runner's
                // end was closed with bytes of ours still unread (Linux
                // reports a reset, not an end of stream, only then), so it
                // never read the whole call and cannot have run it: the
                // call goes again, as on a pooled connection found closed.
                // A runner killed with calls queued on its connections, or
                // while its threads were still exiting, costs no request.
                Some(Err(FrameError::Io(cause)))
                    if before_any_answer && cause.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Err(Failure::Unsent {
                        cause,
                        permit: pooled.permit.take(),
                    });
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
            let payload = Answer::parse(self.protocol, &frame.payload)
                .map_err(|e| CallError::Malformed(e.to_string()))?;
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
                    // this call's, on a place among `max_waiting_calls`:
                    // the host holds at most `pool_size` +
                    // `max_waiting_calls` runner connections.
                    let place = self.waiting.as_ref().map(|w| w.clone().try_acquire_owned());
                    if may_abandon && matches!(place, Some(Err(_))) {
                        // Every waiting place taken: no runner connection
                        // for this slow client. The runner sees the
                        // connection close and drops the call; the body is
                        // read (within the client's body timeout) and the
                        // call runs again with it at hand.
                        debug!(generation, "every waiting place is taken: the body is read without a runner connection, then the call runs again");
                        drop(pooled);
                        let _ = gathering.await;
                        return Err(Failure::Abandoned);
                    }
                    drop(pooled.permit.take());
                    let value = gathering.await;
                    drop(place);
                    value
                }
            };
            // The clock stops while we gather the answer.
            deadline += asked.elapsed();
            tokio::time::timeout_at(deadline, conn.send(&ExtraInfoAnswer(value.as_deref())))
                .await
                .map_err(timed_out)?
                .map_err(broken)?;
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        // Read first: no shared write per call while all is well.
        if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
        Ok((frame, pooled))
    }

    /// The token for a route phase: cached, or prepared now (once for all
    /// the requests that need it at the same moment).
    ///
    /// # Errors
    /// The runner is down, or refused the chain ([`CallError::ChainRefused`],
    /// remembered for that runner), or the exchange failed.
    pub async fn ticket(&self, phase: &PhaseConf) -> Result<Ticket, CallError> {
        self.prepare(&self.tokens.slot(&phase.key), phase, true)
            .await
    }

    /// `phase`'s entry in the token cache, for [`ExtClient::ticket_in`].
    pub fn phase_slot(&self, phase: &PhaseConf) -> PhaseSlot {
        PhaseSlot(self.tokens.slot(&phase.key))
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
        self.prepare(&self.tokens.slot(&phase.key), phase, false)
            .await
    }

    async fn prepare(
        &self,
        slot: &Slot,
        phase: &PhaseConf,
        log_refusal: bool,
    ) -> Result<Ticket, CallError> {
        if let Some(ticket) = Tokens::valid(slot, self.current()) {
            return Ok(ticket);
        }
        if let Some(refused) = Tokens::refusal(slot, self.current()) {
            return Err(refused);
        }
        let _one_at_a_time = slot.preparing.lock().await;
        if let Some(ticket) = Tokens::valid(slot, self.current()) {
            return Ok(ticket);
        }
        if let Some(refused) = Tokens::refusal(slot, self.current()) {
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
        let payload = Answer::parse(self.protocol, &frame.payload)
            .map_err(|e| CallError::Malformed(e.to_string()))?;
        if frame.kind == MessageType::Error as u8 {
            return Err(match refused(&payload, self.protocol) {
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
        let needs = self.needs(prepared.needs, phase);
        let ticket = Ticket {
            token: prepared.token,
            needs: Arc::new(needs),
            generation,
            expires: Instant::now() + self.tokens.lifetime,
        };
        debug!(route_phase = %phase.key, token = ticket.token, generation, "chain prepared");
        self.metrics.conf_prepared();
        slot.ticket.store(Some(Arc::new(ticket.clone())));
        Ok(ticket)
    }

    /// What the host sends with each call of a chain: what the runner
    /// declared, and the route phase's `extra_info` variables. APISIX's
    /// wire has no place for either (its runners ask with EXTRA_INFO
    /// during the call), so nothing is gathered up front for them.
    fn needs(&self, declared: Needs, phase: &PhaseConf) -> Needs {
        if self.protocol == Protocol::Apisix {
            return Needs::default();
        }
        let mut needs = declared;
        for var in &phase.extra_info {
            if !needs.vars.contains(var) {
                needs.vars.push(var.clone());
            }
        }
        needs
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
        // A call gives up its connection to wait for a body at most once:
        // run again, it finds the body read.
        let mut may_abandon = true;
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
                .exchange_on(pooled, &call, C::KIND, Some(&mut *provider), may_abandon)
                .await
            {
                Ok(answer) => answer,
                Err(Failure::Call(e)) => return Err(e),
                Err(Failure::Unsent { cause, permit }) => {
                    held = permit;
                    self.unsent(&mut unsent, sent_to, cause)?;
                    continue;
                }
                Err(Failure::Abandoned) => {
                    may_abandon = false;
                    continue;
                }
            };
            // `pooled` goes back to the pool only with a well-formed answer
            // to this call: a runner that answered twice, say, has left a
            // stale frame that every later call on it would read instead.
            let payload = Answer::parse(self.protocol, &frame.payload)
                .map_err(|e| CallError::Malformed(e.to_string()))?;
            if frame.kind == MessageType::Error as u8 {
                self.checkin_after(pooled, &frame);
                match refused(&payload, self.protocol) {
                    CallError::Refused {
                        code: ErrorCode::ConfTokenNotFound,
                        message,
                    } if attempt < 3 => {
                        let token = *call.token();
                        warn!(route_phase = %phase.key, token, attempt, %message, "token not found: preparing again");
                        self.tokens.forget_all();
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

/// The bytes written on `stream` that the runner has not read yet
/// (`SIOCOUTQ`); `None` if the kernel cannot tell.
#[allow(unsafe_code)]
fn unread_bytes(stream: &UnixStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut n: nix::libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which
    // is valid for the call; the descriptor is the stream's, open.
    let r = unsafe { nix::libc::ioctl(stream.as_raw_fd(), nix::libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| usize::try_from(n).unwrap_or(0))
}

/// What [`ExtClient::call`] needs of a call message.
trait Call: Encode + ApisixEncode {
    /// The frame type of the call and of its answer.
    const KIND: MessageType;
    /// What the answer decodes to.
    type Outcome;
    fn token(&mut self) -> &mut u32;
    fn id(&self) -> u32;
    fn answer(payload: &Answer<'_>) -> Result<(u32, Self::Outcome), crate::wire::DecodeError>;
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
    fn answer(payload: &Answer<'_>) -> Result<(u32, RequestOutcome), crate::wire::DecodeError> {
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
    fn answer(payload: &Answer<'_>) -> Result<(u32, ResponseOutcome), crate::wire::DecodeError> {
        payload.resp_call_answer().map(|a| (a.id, a.outcome))
    }
}
