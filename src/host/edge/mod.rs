//! What every request passes at the door, before routing: the checks of
//! the request head and the forwarding headers ([`ingress`]), the path's
//! normalization ([`path`]), host names as routes and certificates match
//! them ([`hostname`]), and who may use the admin listener
//! ([`admin_access`]). Pure functions: no I/O, no state.

pub mod admin_access;
pub mod hostname;
pub mod ingress;
pub mod path;
