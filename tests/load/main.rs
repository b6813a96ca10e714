//! Under load: failover and upgrades while clients keep calling, the
//! proxy's memory under many slow uploads, many idle clients under a low
//! descriptor limit, and the benchmark commands (a smoke test: speed is
//! never asserted).

#[path = "../support/mod.rs"]
mod support;

mod bench;
mod body_memory;
mod descriptors;
mod failover;
