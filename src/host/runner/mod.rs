//! The runner side of the host: one runner's process and its supervision,
//! and the client that calls it.
//!
//! From the bottom up:
//! - [`program`]: the runner's program, checked before its first start;
//! - [`dir`]: the private socket directory, and the sweep of stale ones;
//! - [`output`]: the runner's output lines relayed into the host's log;
//! - [`process`]: one process's life (start, readiness, stop);
//! - [`supervisor`]: the policy: active and standby processes, restarts,
//!   upgrades, and the [`RunnerState`](supervisor::RunnerState) it publishes;
//! - [`client`]: the ext-plugin client (connection pool, tokens, calls);
//! - [`preflight`]: every chain prepared before it serves;
//! - [`set`]: the runners of a configuration by name, each with its
//!   supervisor and client.

pub mod client;
pub mod dir;
pub mod output;
pub mod preflight;
pub mod process;
pub mod program;
pub mod set;
pub mod supervisor;
