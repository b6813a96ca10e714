//! Under load: failover and upgrades while clients keep calling, and the
//! benchmark commands (a smoke test: speed is never asserted).

#[path = "../support/mod.rs"]
mod support;

mod bench;
mod failover;
