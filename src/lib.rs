//! # extplug
//!
//! Out-of-process plugins for API gateways, on the protocol of Apache APISIX's
//! external plugins with Cap'n Proto payloads (see `docs/PROTOCOL.md` and
//! `schema/ext_plugin.capnp`). This crate is the protocol, and (behind its
//! default `host` feature) the gateway side and the `extplug` binary;
//! plugins and their runner are written with the `runner-sdk` crate alone,
//! which depends on this crate without the `host` feature.
//!
//! # Layout
//!
//! ```text
//! schema/                  the protocol's schemas (build.rs compiles ext_plugin.capnp)
//! src/wire/                the protocol, on both sides          (always built)
//!   codec.rs               the codec: type byte, 24-bit length, payload
//!   message/               typed messages to and from Cap'n Proto
//!   apisix/                the same messages in APISIX's FlatBuffers
//! src/host/                the gateway side, in layers           (feature `host`)
//!   edge/                  the checks at the door; the path, normalized once
//!   config/                the configuration (model.rs first)
//!   runner/                the runner, from the host:
//!     process.rs           one runner process's life
//!     supervisor.rs        the supervisor: active and standby, restarts, upgrades
//!     client/              the client: pool, tokens, the call loop
//!   source/                routes from the file or etcd
//!   proxy/                 the proxy: router.rs, pipeline.rs (the phases), upstream.rs
//!   server/, admin.rs      the listeners
//!   gateway.rs             the live configuration and reload
//!   app.rs                 start-up wiring and signals
//! src/bin/extplug/         the command, one file per subcommand (commands/)
//! runner-sdk/              plugins and the runner they run in (runner-sdk/src/runner/)
//! ```
//!
//! Each layer of `src/host` imports only from those below it
//! (`tests/pure/layers.rs` checks it); `docs/architecture.md` has the
//! table and the reasons.
//!
//! - [`wire`]: frames, typed messages and the protocol's data types, shared
//!   with `runner-sdk`.
//! - `host` (feature `host`): the runner's supervisor, the ext-plugin
//!   client, the HTTP proxy.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod wire;

#[cfg(feature = "host")]
pub mod host;

pub use wire::{LOG_FORMAT_ENV, LOG_RELAYED};
