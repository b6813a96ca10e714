//! What every request passes at the door, before routing: the checks of
//! the request head and the forwarding headers ([`ingress`]), and the
//! path's normalization ([`path`]). Pure functions: no I/O, no state.

pub mod ingress;
pub mod path;
