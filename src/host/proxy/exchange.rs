//! One request's state as it goes through the phases ([`Exchange`]):
//! shared by the pipeline, which runs the phases, and the upstream call.

use super::answer::{error_response, Body};
use super::body::{BodyError, MessageBody, Side};
use super::vars::{RequestId, VarCtx};
use crate::host::config::Route;
use crate::host::edge::path::NormalizedPath;
use http::header::{HeaderName, HeaderValue};
use http::{Response, Uri};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{error, warn};

/// Everything about one request as it goes through the phases.
pub(super) struct Exchange {
    pub(super) route: Arc<Route>,
    /// The request as it is now; its URI is the canonical origin-form
    /// target of `path` (what the upstream gets).
    pub(super) head: http::request::Parts,
    /// The request target as received (`request_uri`).
    pub(super) original_uri: Uri,
    /// The normalized path, decoded: what was routed and what the runner sees.
    pub(super) path: NormalizedPath,
    pub(super) body: MessageBody,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) request_id: RequestId,
    /// Response headers added by request-phase rewrites (filtered).
    pub(super) resp_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Exchange {
    pub(super) fn var_ctx(&self) -> VarCtx<'_> {
        VarCtx {
            head: &self.head,
            original_uri: &self.original_uri,
            peer: self.peer,
            local: self.local,
            route_id: &self.route.id,
            request_id: self.request_id,
        }
    }

    /// Logs a body failure and gives the client's answer for it.
    pub(super) fn body_failed(&self, side: Side, e: &BodyError) -> Response<Body> {
        let status = e.status(side);
        let message = match side {
            Side::Request => {
                warn!(route = %self.route.id, cause = %e, status = status.as_u16(), "request body failed");
                format!("cannot read the request body: {e}")
            }
            Side::Response => {
                error!(route = %self.route.id, cause = %e, status = status.as_u16(), "upstream body failed");
                format!("upstream body failed: {e}")
            }
        };
        error_response(status, &message)
    }
}
