//! End to end, one module per subject: the real `extplug` binary with real
//! runners (`demo-runner`, the misbehaving `bad-runner` of
//! `tests/fixtures/`), real upstreams, real etcd, the plugin template.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod admin_access;
mod apisix_runner;
mod demo;
mod etcd;
mod fail_closed;
mod failfast;
mod getting_started;
mod host_safety;
mod hostile_runner;
mod limits;
mod operate;
mod paths;
mod phases;
mod pool;
mod proxy;
mod reload;
mod routing;
mod runner_bounds;
mod security_pipeline;
mod template;
mod threads;
mod tls;
mod upstream_pool;
mod upstream_tls;
mod upstreams;
