//! Where the routes come from: the configuration file or an etcd cluster
//! holding APISIX's objects, both made into one validated route table.
//!
//! - [`table`]: the table ([`RouteTable`], the objects [`Skipped`]), the
//!   [`RouteSource`] trait and the [`RouteSink`] a live source feeds;
//! - [`apisix`]: APISIX's objects (routes, upstreams, services) by key;
//! - [`etcd`]: the etcd source, read once or followed live;
//! - [`list`]: `extplug routes`, what a source would serve.

pub mod apisix;
pub mod etcd;
pub mod list;
pub mod table;

pub use table::{ErrorKind, RouteLeftOut, RouteSink, RouteSource, RouteTable, Skipped};
