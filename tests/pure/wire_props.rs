//! Property tests of the wire: every message round-trips through a frame
//! exactly (null kept apart from empty), and arbitrary bytes fed to the frame
//! decoder and to every message parser never panic and never make the decoder
//! hold much more memory than the bytes that arrived.
//!
//! The fuzz targets in `fuzz/` explore the same surfaces with coverage
//! guidance for minutes; these run in the normal suite on every change.

use bytes::BytesMut;
use extplug::wire::{
    ErrorCode, ErrorResp, ExtraInfoAnswer, FrameCodec, InfoKey, Needs, Payload, PrepareConf,
    Prepared, ReqCall, ReqCallAnswer, RequestOutcome, RequestParts, RespCall, RespCallAnswer,
    ResponseOutcome, ResponseParts, Rewrite, Stop, MAX_PAYLOAD,
};
use http::{Method, StatusCode};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use std::net::IpAddr;
use tokio_util::codec::{Decoder, Encoder};

/// The decoder reserves at most 64 KiB ahead of what arrived, and a growing
/// buffer at most doubles: capacity stays under twice the bytes received
/// plus twice that chunk, whatever length a frame header declares.
const SLACK: usize = 128 * 1024;

/// Encodes `msg` as one frame, decodes the frame, and returns its type and
/// payload; the buffer must hold exactly that frame.
fn frame<T: extplug::wire::Encode>(msg: &T) -> (u8, BytesMut) {
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(msg, &mut buf).unwrap();
    let f = FrameCodec::default()
        .decode(&mut buf)
        .unwrap()
        .expect("a whole frame");
    assert!(buf.is_empty(), "bytes left after the frame");
    (f.kind, f.payload)
}

/// The payloads of `msg` in both encodings: Cap'n Proto, then APISIX's
/// FlatBuffers (seeds of the fuzz targets of each).
fn both<T: extplug::wire::Encode + extplug::wire::apisix::ApisixEncode>(msg: &T) -> [Vec<u8>; 2] {
    let mut flat = BytesMut::new();
    FrameCodec::default()
        .encode_apisix(msg, &mut extplug::wire::apisix::Builder::new(), &mut flat)
        .unwrap();
    [frame(msg).1.to_vec(), flat[4..].to_vec()]
}

/// Seeds by encoding: the Cap'n Proto ones, then the FlatBuffers ones.
fn split(pairs: Vec<[Vec<u8>; 2]>) -> [Vec<Vec<u8>>; 2] {
    let (capnp, flat) = pairs.into_iter().map(|[a, b]| (a, b)).unzip();
    [capnp, flat]
}

/// Any text, control characters and NUL included.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{0,12}".prop_map(String::from),
        any::<String>(),
        Just(String::new()),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "MKCOL",
        "COPY",
        "MOVE",
        "OPTIONS",
        "PROPFIND",
        "PROPPATCH",
        "LOCK",
        "UNLOCK",
        "PATCH",
        "TRACE",
    ])
    .prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// A status a runner may send: 200..=599 (0 has its own meaning).
fn status() -> impl Strategy<Value = StatusCode> {
    (200u16..=599).prop_map(|s| StatusCode::from_u16(s).unwrap())
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..6)
}

fn opt_pairs() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
    vec((text(), option::of(text())), 0..6)
}

fn data_pairs() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
    vec((text(), option::of(bytes())), 0..6)
}

fn outcome() -> impl Strategy<Value = RequestOutcome> {
    prop_oneof![
        Just(RequestOutcome::Continue),
        (status(), pairs(), bytes()).prop_map(|(status, headers, body)| {
            // Fields set directly: any text, as the decoder takes it.
            let mut stop = Stop::new(status);
            stop.headers = headers;
            stop.body = body;
            RequestOutcome::Stop(stop)
        }),
        (
            option::of(text()),
            opt_pairs(),
            opt_pairs(),
            pairs(),
            option::of(bytes())
        )
            .prop_map(|(path, headers, args, resp_headers, body)| {
                RequestOutcome::Rewrite(Rewrite {
                    path,
                    headers,
                    args,
                    resp_headers,
                    body,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn prepare_conf_round_trips(conf in vec((text(), text()), 0..6), key in option::of(text())) {
        let req = PrepareConf {
            conf: conf.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            key: key.as_deref(),
        };
        let (kind, payload) = frame(&req);
        prop_assert_eq!(kind, 1);
        let parsed = Payload::parse(&payload).unwrap();
        prop_assert_eq!(parsed.prepare_conf().unwrap(), req);
    }

    #[test]
    fn prepared_round_trips(token in 1u32.., vars in vec(text(), 0..6), req_body: bool, resp_body: bool) {
        let answer = Prepared {
            token,
            needs: Needs { vars, request_body: req_body, response_body: resp_body },
        };
        let (kind, payload) = frame(&answer);
        prop_assert_eq!(kind, 1);
        prop_assert_eq!(Payload::parse(&payload).unwrap().prepared().unwrap(), answer);
    }

    #[test]
    fn request_call_round_trips(
        id: u32,
        token: u32,
        src_ip in ip(),
        method in method(),
        path in text(),
        args in opt_pairs(),
        headers in pairs(),
        extra in data_pairs(),
    ) {
        let parts = RequestParts {
            id,
            src_ip,
            method,
            path: &path,
            args: args.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect(),
            headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            extra_info: extra.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect(),
        };
        let (kind, payload) = frame(&ReqCall { conf_token: token, parts: parts.clone() });
        prop_assert_eq!(kind, 2);
        let parsed = Payload::parse(&payload).unwrap();
        let call = parsed.req_call().unwrap();
        prop_assert_eq!(call.conf_token, token);
        prop_assert_eq!(call.parts.id, parts.id);
        prop_assert_eq!(call.parts.src_ip, parts.src_ip);
        prop_assert_eq!(&call.parts.method, &parts.method);
        prop_assert_eq!(call.parts.path, parts.path);
        prop_assert_eq!(&call.parts.args, &parts.args);
        prop_assert_eq!(&call.parts.headers, &parts.headers);
        prop_assert_eq!(&call.parts.extra_info, &parts.extra_info);
    }

    #[test]
    fn request_answer_round_trips(id: u32, outcome in outcome()) {
        let answer = ReqCallAnswer { id, outcome };
        let (kind, payload) = frame(&answer);
        prop_assert_eq!(kind, 2);
        let decoded = Payload::parse(&payload).unwrap().req_call_answer().unwrap();
        // A rewrite that changes nothing may come back as `Continue`: the
        // same instruction to the host.
        let expected = match answer.outcome {
            RequestOutcome::Rewrite(rw) if rw == Rewrite::default() => {
                prop_assert!(decoded.outcome == RequestOutcome::Rewrite(Rewrite::default())
                    || decoded.outcome == RequestOutcome::Continue);
                return Ok(());
            }
            other => other,
        };
        prop_assert_eq!(decoded.id, id);
        prop_assert_eq!(decoded.outcome, expected);
    }

    #[test]
    fn response_call_round_trips(
        id: u32,
        token: u32,
        status in status(),
        headers in pairs(),
        extra in data_pairs(),
    ) {
        let parts = ResponseParts {
            id,
            status,
            headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            extra_info: extra.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect(),
        };
        let (kind, payload) = frame(&RespCall { conf_token: token, parts: parts.clone() });
        prop_assert_eq!(kind, 4);
        let parsed = Payload::parse(&payload).unwrap();
        let call = parsed.resp_call().unwrap();
        prop_assert_eq!(call.conf_token, token);
        prop_assert_eq!(call.parts.id, id);
        prop_assert_eq!(call.parts.status, status);
        prop_assert_eq!(&call.parts.headers, &parts.headers);
        prop_assert_eq!(&call.parts.extra_info, &parts.extra_info);
    }

    #[test]
    fn response_answer_round_trips(
        id: u32,
        status in option::of(status()),
        headers in option::of(pairs()),
        body in option::of(bytes()),
    ) {
        let answer = RespCallAnswer { id, outcome: ResponseOutcome { status, headers, body } };
        let (kind, payload) = frame(&answer);
        prop_assert_eq!(kind, 4);
        prop_assert_eq!(Payload::parse(&payload).unwrap().resp_call_answer().unwrap(), answer);
    }

    #[test]
    fn extra_info_round_trips(which in 0u8..3, name in text(), value in option::of(bytes())) {
        let key = match which {
            0 => InfoKey::Var(&name),
            1 => InfoKey::RequestBody,
            _ => InfoKey::ResponseBody,
        };
        let (kind, payload) = frame(&key);
        prop_assert_eq!(kind, 3);
        let parsed = Payload::parse(&payload).unwrap();
        prop_assert_eq!(parsed.extra_info_req().unwrap(), key);
        let answer = ExtraInfoAnswer(value.as_deref());
        let (kind, payload) = frame(&answer);
        prop_assert_eq!(kind, 3);
        let parsed = Payload::parse(&payload).unwrap();
        prop_assert_eq!(parsed.extra_info_resp().unwrap(), answer);
    }

    #[test]
    fn error_round_trips(code in 0u8..3, message in text()) {
        let code = match code {
            0 => ErrorCode::BadRequest,
            1 => ErrorCode::ServiceUnavailable,
            _ => ErrorCode::ConfTokenNotFound,
        };
        let err = ErrorResp { code, message };
        let (kind, payload) = frame(&err);
        prop_assert_eq!(kind, 0);
        prop_assert_eq!(Payload::parse(&payload).unwrap().error().unwrap(), err);
    }

    /// Arbitrary bytes, in arbitrary chunks, through the frame decoder: no
    /// panic, and the buffer never holds much more than what arrived, whatever
    /// length a header declares.
    #[test]
    fn decoder_takes_any_bytes_and_reserves_only_what_arrives(
        chunks in vec(vec(any::<u8>(), 0..256), 0..16),
        max in prop_oneof![Just(MAX_PAYLOAD), 0usize..4096],
    ) {
        let mut codec = FrameCodec::with_max_payload(max);
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        'feed: for chunk in &chunks {
            buf.extend_from_slice(chunk);
            fed += chunk.len();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => prop_assert!(frame.payload.len() <= max),
                    Ok(None) => break,
                    Err(_) => break 'feed, // a framing error ends the connection
                }
                // Whatever the declared length, memory follows the bytes.
                prop_assert!(
                    buf.capacity() <= 2 * fed + SLACK,
                    "holding {} bytes of capacity after {} bytes arrived", buf.capacity(), fed
                );
            }
            prop_assert!(
                buf.capacity() <= 2 * fed + SLACK,
                "holding {} bytes of capacity after {} bytes arrived", buf.capacity(), fed
            );
        }
        let _ = codec.decode_eof(&mut buf);
    }

    /// Arbitrary bytes into every message parser of both sides: errors, never
    /// panics.
    #[test]
    fn parsers_take_any_bytes(payload in vec(any::<u8>(), 0..512)) {
        if let Ok(p) = Payload::parse(&payload) {
            let _ = p.prepare_conf();
            let _ = p.prepared();
            let _ = p.req_call();
            let _ = p.req_call_answer();
            let _ = p.resp_call();
            let _ = p.resp_call_answer();
            let _ = p.extra_info_req();
            let _ = p.extra_info_resp();
            let _ = p.error();
        }
    }
}

/// Valid Cap'n Proto structure with arbitrary field contents: parsers see
/// well-formed messages whose fields are hostile (statuses out of range,
/// unknown enum values, pointers of the wrong kind).
#[test]
fn parsers_take_well_formed_messages_of_the_wrong_type() {
    let mut samples: Vec<BytesMut> = Vec::new();
    samples.push(
        frame(&ErrorResp {
            code: ErrorCode::BadRequest,
            message: "x".into(),
        })
        .1,
    );
    samples.push(
        frame(&PrepareConf {
            conf: vec![("a", "b")],
            key: Some("k"),
        })
        .1,
    );
    samples.push(frame(&ExtraInfoAnswer(Some(b"v"))).1);
    samples.push(frame(&InfoKey::Var("v")).1);
    for payload in &samples {
        let p = Payload::parse(payload).unwrap();
        let _ = p.prepare_conf();
        let _ = p.prepared();
        let _ = p.req_call();
        let _ = p.req_call_answer();
        let _ = p.resp_call();
        let _ = p.resp_call_answer();
        let _ = p.extra_info_req();
        let _ = p.extra_info_resp();
        let _ = p.error();
    }
}

/// Writes a seed corpus for the fuzz targets (`scripts/fuzz.sh` runs this
/// with `EXTPLUG_FUZZ_SEEDS` set): one well-formed payload or frame per
/// message kind, so that the fuzzers start from valid structure.
#[test]
#[ignore = "writes files: run by scripts/fuzz.sh"]
fn write_fuzz_seeds() {
    let Some(root) = std::env::var_os("EXTPLUG_FUZZ_SEEDS") else {
        return;
    };
    let root = std::path::PathBuf::from(root);
    let parts = RequestParts {
        id: 1,
        src_ip: "127.0.0.1".parse().unwrap(),
        method: Method::POST,
        path: "/a/b",
        args: vec![("a", Some("1")), ("flag", None)],
        headers: vec![("host", "example.com"), ("x-key", "secret")],
        extra_info: vec![("remote_addr", Some(b"127.0.0.1")), ("$request_body", None)],
    };
    let resp_parts = ResponseParts {
        id: 2,
        status: StatusCode::OK,
        headers: vec![("content-type", "text/plain")],
        extra_info: vec![("$response_body", Some(b"hello"))],
    };
    let runner: Vec<[Vec<u8>; 2]> = vec![
        both(&PrepareConf {
            conf: vec![("say", r#"{"body":"hi"}"#), ("key-auth", r#"{"key":"k"}"#)],
            key: Some("route#1"),
        }),
        both(&ReqCall {
            conf_token: 7,
            parts,
        }),
        both(&RespCall {
            conf_token: 7,
            parts: resp_parts,
        }),
        both(&ExtraInfoAnswer(Some(b"value"))),
        both(&ExtraInfoAnswer(None)),
    ];
    let host: Vec<[Vec<u8>; 2]> = vec![
        both(&Prepared {
            token: 9,
            needs: Needs {
                vars: vec!["remote_addr".into()],
                request_body: true,
                response_body: false,
            },
        }),
        both(&ReqCallAnswer {
            id: 1,
            outcome: RequestOutcome::Stop(
                Stop::new(StatusCode::FORBIDDEN).header("x", "y").body("no"),
            ),
        }),
        both(&ReqCallAnswer {
            id: 1,
            outcome: RequestOutcome::Rewrite(Rewrite {
                path: Some("/p".into()),
                headers: vec![("x".into(), None), ("y".into(), Some("1".into()))],
                args: vec![("q".into(), Some("".into()))],
                resp_headers: vec![("r".into(), "v".into())],
                body: Some(b"body".to_vec()),
            }),
        }),
        both(&ReqCallAnswer {
            id: 1,
            outcome: RequestOutcome::Continue,
        }),
        both(&RespCallAnswer {
            id: 2,
            outcome: ResponseOutcome {
                status: Some(StatusCode::CREATED),
                headers: Some(vec![("a".into(), "b".into())]),
                body: Some(b"x".to_vec()),
            },
        }),
        both(&InfoKey::Var("remote_addr")),
        both(&InfoKey::RequestBody),
        both(&ErrorResp {
            code: ErrorCode::ConfTokenNotFound,
            message: "gone".into(),
        }),
    ];
    let mut frames = Vec::new();
    let mut codec = FrameCodec::default();
    for kind in [1u8, 2, 3] {
        let mut buf = BytesMut::new();
        codec.encode((kind, &b"payload"[..]), &mut buf).unwrap();
        let mut f = vec![0u8];
        f.extend_from_slice(&buf);
        frames.push(f);
    }
    let write = |dir: &str, items: Vec<Vec<u8>>| {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, item) in items.into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), item).unwrap();
        }
    };
    let [runner, apisix_runner]: [Vec<Vec<u8>>; 2] = split(runner);
    let [host, apisix_host]: [Vec<Vec<u8>>; 2] = split(host);
    write("runner_messages", runner);
    write("host_messages", host);
    write("apisix_runner_messages", apisix_runner);
    write("apisix_host_messages", apisix_host);
    write("frame", frames);
}
