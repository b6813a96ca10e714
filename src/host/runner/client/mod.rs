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
//!
//! - [`call`]: [`ExtClient`] and the call loop;
//! - `pool`: the bounded pool of connections;
//! - [`tokens`]: the token cache ([`Ticket`], [`PhaseSlot`]);
//! - `error`: why a call failed ([`CallError`]);
//! - `wire`: the runner's encoding, extplug's Cap'n Proto or APISIX's
//!   FlatBuffers (`"protocol"`): the connection's codec and the reading of
//!   answers, the only code that differs between the two.

pub mod call;
pub mod error;
mod pool;
#[cfg(test)]
mod tests;
pub mod tokens;
mod wire;

pub use call::{ExtClient, InfoProvider};
pub use error::CallError;
pub use tokens::{PhaseSlot, Ticket};
