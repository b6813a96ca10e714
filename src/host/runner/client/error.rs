//! Why a call to the runner failed ([`CallError`]), as the proxy branches
//! on it (503, degradation, or 500 for a refused chain) and as the metrics
//! count it.

use super::wire::Answer;
use crate::host::metrics::CallResult;
use crate::wire::{ErrorCode, FrameError, Protocol};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

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

/// How a call's exchange on one connection failed.
pub(super) enum Failure {
    /// The call failed.
    Call(CallError),
    /// The call's pooled connection was closed by the runner while it was
    /// idle: the write failed, so nothing of the call was taken, and it can
    /// go again on another connection. The call's place in the pool comes
    /// back with it.
    Unsent {
        /// Why the write failed.
        cause: std::io::Error,
        /// The call's place in the pool.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// The runner asked for a body that was not in yet while
    /// `max_waiting_calls` connections already waited for one: the
    /// connection was closed (the runner drops the call) and the body read
    /// without it; the call is to run again, its body now at hand.
    Abandoned,
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure::Call(e)
    }
}

/// A frame error during a call: the connection broke, or the runner
/// sent what is not a frame.
pub(super) fn broken(e: FrameError) -> CallError {
    match e {
        FrameError::Io(e) => CallError::Broken(e.to_string()),
        other => CallError::Malformed(other.to_string()),
    }
}

/// The runner's ERROR answer, as a call error. APISIX's wire carries a
/// code only: the message then names the code as APISIX's schema spells
/// it and says where the reason may be.
pub(super) fn refused(payload: &Answer<'_>, protocol: Protocol) -> CallError {
    match payload.error() {
        Ok(e) => CallError::Refused {
            code: e.code,
            message: match protocol {
                Protocol::Capnp => e.message,
                Protocol::Apisix => format!(
                    "error code {} (APISIX's wire carries no reason: the runner's log may say why)",
                    apisix_code(e.code)
                ),
            },
        },
        Err(e) => CallError::Malformed(e.to_string()),
    }
}

/// An error code as `A6.Err.Code` names it.
fn apisix_code(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "BAD_REQUEST",
        ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
        ErrorCode::ConfTokenNotFound => "CONF_TOKEN_NOT_FOUND",
    }
}
