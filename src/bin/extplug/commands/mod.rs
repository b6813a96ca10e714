//! One file per subcommand (`control`: both `reload` and `upgrade`, the
//! same request to two endpoints): each has a `run` that returns the exit
//! code.

pub mod bench;
pub mod check;
pub mod control;
pub mod demo;
pub mod echo;
pub mod proxy;
pub mod routes;
