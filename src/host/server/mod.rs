//! The proxy's listener: the accept loop and the client connections
//! ([`accept`]), and each connection's socket and clock (`client_io`).

pub mod accept;
mod client_io;

pub use accept::serve;
