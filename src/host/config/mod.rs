//! The proxy's configuration: one JSON file, routes in the shape of APISIX
//! route objects. Parsing validates everything up front; every error names the
//! route and the field.
//!
//! - [`model`]: the plain data (read it first: what a route, a phase, a
//!   runner and an upstream are);
//! - `error`: why a configuration is refused ([`ConfigError`]);
//! - `raw`: the file's JSON shape and every default;
//! - `load`: [`Config::load`] and [`Config::parse`], section by section;
//! - `validate`: the runner, client, environment and etcd checks;
//! - [`apisix`]: APISIX's route, upstream and service objects made into
//!   routes (the file's and etcd's alike);
//! - `uri`: a route `uri`'s rules; `balance`: the weighted round robin;
//! - [`tls`]: the TLS listener, HTTP/2's limits, a checked SSL object;
//!   `ssl`: APISIX's SSL objects checked (PEM, key, keyring, expiry).

pub mod apisix;
mod balance;
pub mod error;
mod load;
pub mod model;
mod raw;
mod ssl;
#[cfg(test)]
mod tests;
pub mod tls;
mod uri;
mod validate;

pub use apisix::{check_apisix_service, check_apisix_upstream, parse_apisix_route, Objects};
pub use error::ConfigError;
pub use model::{
    AdminConf, ClientLimits, Config, EtcdConf, KeepalivePool, Phase, PhaseConf, Route, RunnerConf,
    Upstream, UriPattern, DEFAULT_RUNNER,
};
pub use ssl::{certified_key, parse_ssl};
pub use tls::{Http2Limits, Keyring, Ssl, TlsConf};
pub use validate::{check_runners, RESERVED_ENV};
