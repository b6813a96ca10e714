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
//! - [`expr`]: a route's `vars` (lua-resty-expr's expressions);
//! - `uri`: a route `uri`'s rules; `balance`: the balancers' settings and
//!   the weighted round robin; `checks`: an upstream's health checks;
//!   `upstream_tls`: `scheme: https` and `tls`, and rustls's configuration.
//! - [`tls`]: the TLS listener, HTTP/2's limits, a checked SSL object;
//!   `ssl`: APISIX's SSL objects checked (PEM, key, keyring, expiry).

pub mod apisix;
mod balance;
mod checks;
pub mod error;
pub mod expr;
mod load;
pub mod model;
mod raw;
mod ssl;
#[cfg(test)]
mod tests;
pub mod tls;
#[cfg(test)]
mod upstream_tests;
mod upstream_tls;
mod uri;
mod validate;
pub mod var_names;

pub use apisix::{check_apisix_service, check_apisix_upstream, parse_apisix_route, Objects};
pub use error::ConfigError;
pub use model::{
    ActiveCheck, AdminConf, Balancer, ClientLimits, Config, EtcdConf, HashOn, HealthChecks,
    HealthRules, KeepalivePool, PassHost, PassiveCheck, Phase, PhaseConf, Route, RunnerConf,
    Upstream, UpstreamTls, UriPattern, DEFAULT_RUNNER,
};
pub use ssl::{certified_key, parse_ssl};
pub use tls::{Http2Limits, Keyring, Ssl, TlsConf};
pub use upstream_tls::{client_config, client_config_or_refusing, plain_client_config};
pub use validate::{check_runners, RESERVED_ENV};
