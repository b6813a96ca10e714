//! The runner bench's requests: whole `HTTP_REQ_CALL` frames (header and
//! payload) of a chosen number of headers and body size, as a gateway sends
//! them.

use extplug::wire::{apisix, Encode, FrameCodec, FrameError, Protocol, ReqCall, RequestParts};
use http::Method;
use std::net::{IpAddr, Ipv4Addr};
use tokio_util::codec::Encoder;

/// The headers of the typical request (with the path and the two
/// args below, a frame of about 2.1 KB).
const TYPICAL: [(&str, &str); 20] = [
    ("host", "api.example.com"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-GB,en-US;q=0.9,en;q=0.8,fr;q=0.7"),
    ("cache-control", "no-cache"),
    ("connection", "keep-alive"),
    ("content-type", "application/json; charset=utf-8"),
    ("cookie", "session=8b1f5c0e2d7a4e6f9a3b1c5d7e9f0a2b4c6d8e0f; theme=dark; lang=en; consent=analytics%3Dno%26ads%3Dno; cart=3f2a9c71; ab=variant-b; _csrf=Zm9vYmFyYmF6cXV4cXV1eA; tz=Europe%2FLondon; seen_banner=1"),
    ("x-api-key", "bench-key-5d41402abc4b2a76b9719d911017c592"),
    ("x-request-id", "4f1d2c3b-4a59-6877-8695-a4b3c2d1e0f0"),
    ("x-forwarded-for", "203.0.113.195, 198.51.100.17, 10.1.2.3"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "api.example.com"),
    ("x-real-ip", "203.0.113.195"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    ("authorization", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkJlbmNoIFVzZXIiLCJpYXQiOjE3MDAwMDAwMDAsInNjb3BlIjoicmVhZCB3cml0ZSBhZG1pbiJ9.4pcPyMD09olPSyXnrXCjTwXyr4BsezdI1AVTmud2fU4"),
    ("referer", "https://www.example.com/account/settings/notifications?tab=email&filter=unread"),
    ("sec-ch-ua", "\"Chromium\";v=\"126\", \"Google Chrome\";v=\"126\", \"Not-A.Brand\";v=\"99\""),
];

/// The headers of a request with `n` of them: the typical ones first, then
/// made-up ones of about the typical ones' average size (so that the cost
/// per header stays comparable as `n` grows).
pub fn headers(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| match TYPICAL.get(i) {
            Some((name, value)) => ((*name).to_owned(), (*value).to_owned()),
            None => (
                format!("x-bench-header-{i:03}"),
                format!("{i:03}-{}", "abcdefghij".repeat(8)),
            ),
        })
        .collect()
}

/// One whole frame: an `HTTP_REQ_CALL` with `token`, `n_headers` headers,
/// two args, and, when `body` is set, a POST whose body of that many bytes is
/// sent up front in `extraInfo` (as `$request_body`: how the host sends it
/// when the chain declared it needs the body), in `protocol`'s encoding
/// (APISIX's wire sends nothing up front: no body there).
///
/// # Errors
/// The frame is over the protocol's payload limit (16 MiB).
pub fn request(
    token: u32,
    n_headers: usize,
    body: Option<usize>,
    protocol: Protocol,
) -> Result<Vec<u8>, String> {
    let headers = headers(n_headers);
    let body_bytes = body.map(|len| vec![b'x'; len]);
    let extra_info = match &body_bytes {
        Some(b) => vec![("$request_body", Some(b.as_slice()))],
        None => vec![],
    };
    let call = ReqCall {
        conf_token: token,
        parts: RequestParts {
            id: 1,
            src_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 195)),
            method: if body.is_some() {
                Method::POST
            } else {
                Method::GET
            },
            path: "/api/v1/users/42/orders",
            args: vec![("page", Some("2")), ("sort", Some("created_at"))],
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            extra_info,
        },
    };
    encode(&call, protocol)
        .map_err(|e| format!("encoding a request of {n_headers} headers and body {body:?}: {e}"))
}

/// One whole frame of `message` in `protocol`'s encoding.
///
/// # Errors
/// The message is over the payload limit, or APISIX's schema cannot say it.
pub fn encode<T: Encode + apisix::ApisixEncode>(
    message: &T,
    protocol: Protocol,
) -> Result<Vec<u8>, FrameError> {
    let mut buf = bytes::BytesMut::new();
    match protocol {
        Protocol::Capnp => FrameCodec::default().encode(message, &mut buf),
        Protocol::Apisix => {
            FrameCodec::default().encode_apisix(message, &mut apisix::Builder::new(), &mut buf)
        }
    }?;
    Ok(buf.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typical_request_is_about_2_kb() {
        for protocol in [Protocol::Capnp, Protocol::Apisix] {
            let frame = request(1, 20, None, protocol).unwrap();
            assert!((1900..2400).contains(&frame.len()), "{}", frame.len());
            assert_eq!(frame[0], 2, "an HTTP_REQ_CALL");
            assert_eq!(Protocol::detect(&frame[4..]), protocol);
        }
    }

    #[test]
    fn headers_grow_the_frame_and_bodies_are_carried() {
        let small = request(1, 10, None, Protocol::Capnp).unwrap().len();
        let large = request(1, 100, None, Protocol::Capnp).unwrap().len();
        assert!(large > small + 80 * 90, "{small} -> {large}");
        let with_body = request(1, 20, Some(65536), Protocol::Capnp).unwrap().len();
        assert!(with_body > 65536 + 1900, "{with_body}");
        let names: Vec<_> = headers(100).into_iter().map(|(n, _)| n).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 100, "every header name differs");
    }
}
