//! The runner alone: the real `demo-runner` binary, spoken to over its unix
//! socket with the crate's own codec (`protocol.rs`), and in APISIX's
//! FlatBuffers wire by a client built on APISIX's own classes
//! (`apisix_wire.rs`, `tests/fixtures/a6_client.py`).

#[path = "../support/mod.rs"]
mod support;

mod apisix_wire;
mod protocol;
