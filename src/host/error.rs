//! Why the host could not run ([`HostError`]).

use crate::host::runner::set::StartError;
use std::net::SocketAddr;

/// Why the host could not run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The admin listener's address (`admin.listen`) could not be bound.
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    AdminListen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The runners did not start, or refused a chain.
    #[error(transparent)]
    Runners(#[from] StartError),
}

impl HostError {
    /// Whether the configuration is at fault (a refused chain, a runner that
    /// cannot start): `extplug` exits with 2 then, as for a bad file.
    pub fn is_config_error(&self) -> bool {
        matches!(self, HostError::Runners(e) if e.is_config_error())
    }
}
