//! # extplug
//!
//! Out-of-process plugins for API gateways, on the protocol of Apache APISIX's
//! external plugins with Cap'n Proto payloads (see `docs/PROTOCOL.md` and
//! `schema/ext_plugin.capnp`). This crate is the protocol, and (behind its
//! default `host` feature) the gateway side and the `extplug` binary;
//! plugins and their runner are written with the `runner-sdk` crate alone,
//! which depends on this crate without the `host` feature.
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
