//! The proxy's listener: the accept loop and the client connections
//! ([`accept`]), each connection's socket and clock (`client_io`), and the
//! descriptors the connection limit must fit in ([`fd_limit`]), the TLS
//! listener's certificates and settings ([`tls`]).

pub mod accept;
mod client_io;
pub mod fd_limit;
pub mod tls;

pub use accept::{serve, serve_all, TlsListener};
