//! What the proxy answers with: the body type of every response, and the
//! proxy's own error answers (APISIX's JSON shape).

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Any error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A JSON error answer in APISIX's shape.
pub(super) fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error_msg": message }).to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A whole body.
pub(super) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
