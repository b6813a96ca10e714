//! The runner alone: the real `demo-runner` binary, spoken to over its unix
//! socket with the crate's own codec.

#[path = "../support/mod.rs"]
mod support;

mod protocol;
