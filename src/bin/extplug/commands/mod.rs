//! One file per subcommand: each has a `run` that returns the exit code.

pub mod bench;
pub mod check;
pub mod demo;
pub mod echo;
pub mod proxy;
pub mod routes;
