//! The bounded pool of runner connections: at most `pool_size` open, one
//! per call in progress, the idle ones kept for the next calls; a call
//! beyond that waits for a place rather than opening a connection of its
//! own (see the module `client`).

use super::error::CallError;
use super::wire::HostCodec;
use crate::host::metrics::ConnectionCount;
use crate::host::runner::supervisor::Lease;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tracing::{debug, warn};

/// A connection to the runner: checked out for one call, or idle in the
/// pool.
pub(super) struct PooledConn {
    pub(super) conn: Framed<UnixStream, HostCodec>,
    pub(super) generation: u64,
    /// Held while the connection is checked out: a runner replaced by an
    /// upgrade is stopped only once no call uses it.
    pub(super) lease: Option<Lease>,
    /// The pool's place this call holds (none when pooling is off): given
    /// back when the connection is checked in or dropped.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// Whether it served a call before: the runner may have closed it since.
    pub(super) reused: bool,
    /// Counted in `extplug_runner_connections` while it is open.
    pub(super) _counted: ConnectionCount,
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
    /// `ExtClient::exchange_on`), and a stale answer has the wrong call id.
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

/// The idle connections, and the places of the pool.
pub(super) struct Pool {
    /// Idle connections, ready for a call.
    pub(super) idle: Mutex<Vec<PooledConn>>,
    /// At most this many connections are open, and kept idle.
    pub(super) size: usize,
    /// One permit per open connection (`size` in all); `None` when pooling
    /// is off (`pool_size` 0: a new connection per call).
    permits: Option<Arc<Semaphore>>,
}

impl Pool {
    /// A pool of `size` connections (0: no pooling).
    pub(super) fn new(size: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::with_capacity(size)),
            size,
            permits: (size > 0).then(|| Arc::new(Semaphore::new(size))),
        }
    }

    /// A place in the pool: at once while fewer than `pool_size` calls are
    /// in progress, else the first one given back (first come, first
    /// served), up to `call_timeout`. `None` when pooling is off.
    pub(super) async fn permit(
        &self,
        call_timeout: Duration,
    ) -> Result<Option<OwnedSemaphorePermit>, CallError> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        match tokio::time::timeout(call_timeout, permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            // The semaphore is never closed.
            Ok(Err(_)) => Err(CallError::RunnerDown("the client is closed".into())),
            Err(_) => {
                debug!("every runner connection stayed busy for the call timeout");
                Err(CallError::TimedOut(call_timeout))
            }
        }
    }

    /// An idle connection to the runner of `generation` that is still open;
    /// the others are closed on the way.
    pub(super) fn take(&self, generation: u64) -> Option<PooledConn> {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Puts a connection whose call went well back in the pool (`current`:
    /// its runner is still the one calls go to), and gives its place back
    /// (after: a caller waiting for a place finds it idle).
    pub(super) fn put_back(&self, mut conn: PooledConn, current: bool) {
        conn.lease = None;
        let permit = conn.permit.take();
        // A connection to a runner replaced during the call (it served on
        // under its lease) is of no use any more: kept, it would lie under
        // the new runner's connections, never reached, its socket open.
        if self.permits.is_some() && current {
            let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() >= self.size {
                pool.retain(|c| c.generation == conn.generation);
            }
            // A call that gave its place back while it gathered an
            // EXTRA_INFO answer comes back with one connection too many.
            if pool.len() < self.size {
                pool.push(conn);
            }
        }
        drop(permit);
    }
}
