//! Round trips through encode and decode, and hostile payloads.

use super::*;
use crate::wire::codec::FrameCodec;
use crate::wire::ext_plugin_capnp as schema;
use crate::wire::{InfoKey, Needs, RequestOutcome, RequestParts, ResponseOutcome, Rewrite, Stop};
use bytes::BytesMut;
use capnp::message::Builder;
use http::{Method, StatusCode};
use tokio_util::codec::{Decoder, Encoder};

/// Encodes `msg` as a frame and parses the frame's payload back.
fn frame<T: Encode>(msg: &T) -> (u8, BytesMut) {
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(msg, &mut buf).unwrap();
    let f = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    (f.kind, f.payload)
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn prepare_conf_round_trip() {
    let req = PrepareConf {
        conf: vec![("say", r#"{"body":"hi"}"#), ("rewrite", "{}")],
        key: Some("route#1"),
    };
    let (kind, payload) = frame(&req);
    assert_eq!(kind, 1);
    assert_eq!(
        Payload::parse(&payload).unwrap().prepare_conf().unwrap(),
        req
    );
    let answer = Prepared {
        token: 7,
        needs: Needs {
            vars: vec![s("remote_addr")],
            request_body: true,
            response_body: false,
        },
    };
    let (_, payload) = frame(&answer);
    assert_eq!(
        Payload::parse(&payload).unwrap().prepared().unwrap(),
        answer
    );
}

#[test]
fn request_call_round_trip_keeps_null_apart_from_empty() {
    let parts = RequestParts {
        id: 9,
        src_ip: "2001:db8::1".parse().unwrap(),
        method: Method::from_bytes(b"PROPFIND").unwrap(),
        path: "/a b",
        args: vec![
            ("a", Some("1")),
            ("a", Some("2")),
            ("flag", None),
            ("empty", Some("")),
        ],
        headers: vec![("x-h", "1"), ("x-h", "2")],
        extra_info: vec![
            ("remote_addr", Some(b"::1")),
            ("nope", None),
            ("$request_body", Some(b"")),
        ],
    };
    let (kind, payload) = frame(&ReqCall {
        conf_token: 3,
        parts: parts.clone(),
    });
    assert_eq!(kind, 2);
    let decoded = Payload::parse(&payload).unwrap();
    let call = decoded.req_call().unwrap();
    assert_eq!(call.conf_token, 3);
    assert_eq!(call.parts.id, 9);
    assert_eq!(call.parts.src_ip, parts.src_ip);
    assert_eq!(call.parts.method, parts.method);
    assert_eq!(call.parts.path, parts.path);
    assert_eq!(call.parts.args, parts.args);
    assert_eq!(call.parts.headers, parts.headers);
    assert_eq!(call.parts.extra_info, parts.extra_info);
}

#[test]
fn answers_round_trip() {
    let outcomes = [
        RequestOutcome::Continue,
        RequestOutcome::Stop(
            Stop::new(StatusCode::FORBIDDEN)
                .header("a", "1")
                .header("a", "2")
                .body("no"),
        ),
        RequestOutcome::Rewrite(Rewrite {
            path: Some(s("/p")),
            headers: vec![(s("x"), None), (s("y"), Some(s("1")))],
            args: vec![(s("q"), Some(s("")))],
            resp_headers: vec![(s("r"), s("v"))],
            body: Some(vec![]),
        }),
        RequestOutcome::Rewrite(Rewrite {
            headers: vec![(s("only"), Some(s("header")))],
            ..Rewrite::default()
        }),
    ];
    for outcome in outcomes {
        let answer = ReqCallAnswer { id: 5, outcome };
        let (_, payload) = frame(&answer);
        assert_eq!(
            Payload::parse(&payload).unwrap().req_call_answer().unwrap(),
            answer
        );
    }
    let answer = RespCallAnswer {
        id: 6,
        outcome: ResponseOutcome {
            status: Some(StatusCode::ACCEPTED),
            headers: Some(vec![(s("a"), s("b"))]),
            body: Some(b"x".to_vec()),
        },
    };
    let (kind, payload) = frame(&answer);
    assert_eq!(kind, 4);
    assert_eq!(
        Payload::parse(&payload)
            .unwrap()
            .resp_call_answer()
            .unwrap(),
        answer
    );
    let keep = RespCallAnswer {
        id: 6,
        outcome: ResponseOutcome::default(),
    };
    let (_, payload) = frame(&keep);
    assert_eq!(
        Payload::parse(&payload)
            .unwrap()
            .resp_call_answer()
            .unwrap(),
        keep
    );
}

#[test]
fn extra_info_and_errors_round_trip() {
    for key in [
        InfoKey::Var("uri"),
        InfoKey::RequestBody,
        InfoKey::ResponseBody,
    ] {
        let (kind, payload) = frame(&key);
        assert_eq!(kind, 3);
        assert_eq!(
            Payload::parse(&payload).unwrap().extra_info_req().unwrap(),
            key
        );
    }
    for value in [None, Some(&b""[..]), Some(&b"v"[..])] {
        let (_, payload) = frame(&ExtraInfoAnswer(value));
        assert_eq!(
            Payload::parse(&payload)
                .unwrap()
                .extra_info_resp()
                .unwrap()
                .0,
            value
        );
    }
    let e = ErrorResp {
        code: ErrorCode::ConfTokenNotFound,
        message: s("gone"),
    };
    let (kind, payload) = frame(&e);
    assert_eq!(kind, 0);
    assert_eq!(Payload::parse(&payload).unwrap().error().unwrap(), e);
}

#[test]
fn bad_payloads_are_decode_errors() {
    assert!(Payload::parse(b"").is_err());
    assert!(Payload::parse(b"not cap'n proto at all").is_err());
    let (_, mut payload) = frame(&ErrorResp {
        code: ErrorCode::BadRequest,
        message: s("x"),
    });
    payload.extend_from_slice(&[0; 8]);
    let err = Payload::parse(&payload).err().unwrap();
    assert!(
        err.to_string().contains("8 bytes after the message"),
        "{err}"
    );
    // A stop status that is not an HTTP status.
    let mut msg = Builder::new_default();
    {
        let mut root = msg.init_root::<schema::http_req_call_resp::Builder>();
        root.reborrow().init_action().init_stop().set_status(1000);
    }
    let mut bytes = Vec::new();
    capnp::serialize::write_message(&mut bytes, &msg).unwrap();
    let err = Payload::parse(&bytes)
        .unwrap()
        .req_call_answer()
        .unwrap_err();
    assert!(err.to_string().contains("stop status 1000"), "{err}");
    // Real HTTP statuses that a runner must not answer with: 1xx and 600+.
    for n in [100u16, 101, 199, 600, 999] {
        let mut msg = Builder::new_default();
        msg.init_root::<schema::http_req_call_resp::Builder>()
            .init_action()
            .init_stop()
            .set_status(n);
        let mut bytes = Vec::new();
        capnp::serialize::write_message(&mut bytes, &msg).unwrap();
        let err = Payload::parse(&bytes)
            .unwrap()
            .req_call_answer()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("stop status {n} is outside 200..=599")),
            "{err}"
        );
        let mut msg = Builder::new_default();
        msg.init_root::<schema::http_resp_call_resp::Builder>()
            .set_status(n);
        let mut bytes = Vec::new();
        capnp::serialize::write_message(&mut bytes, &msg).unwrap();
        let err = Payload::parse(&bytes)
            .unwrap()
            .resp_call_answer()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("status {n} is outside 200..=599")),
            "{err}"
        );
    }
    // The bounds themselves, and 0, are fine.
    for (n, want) in [(0u16, None), (200, Some(200)), (599, Some(599))] {
        let mut msg = Builder::new_default();
        msg.init_root::<schema::http_resp_call_resp::Builder>()
            .set_status(n);
        let mut bytes = Vec::new();
        capnp::serialize::write_message(&mut bytes, &msg).unwrap();
        let answer = Payload::parse(&bytes).unwrap().resp_call_answer().unwrap();
        assert_eq!(answer.outcome.status.map(|s| s.as_u16()), want);
    }
}

#[test]
fn a_list_pointer_larger_than_the_payload_is_refused() {
    let mut msg = Builder::new_default();
    msg.init_root::<schema::prepare_conf_req::Builder>()
        .init_conf(0);
    let mut bytes = Vec::new();
    capnp::serialize::write_message(&mut bytes, &msg).unwrap();
    // Rewrite the `conf` pointer (segment table 8 bytes, root pointer,
    // then the struct's first pointer) into a list of 2^29 - 1 bits.
    let conf_ptr = 8 + 8 * 2;
    let word: u64 = 1 | (1u64 << 32) | (0x1fff_ffffu64 << 35);
    bytes[conf_ptr..conf_ptr + 8].copy_from_slice(&word.to_le_bytes());
    let result = Payload::parse(&bytes).and_then(|p| p.prepare_conf().map(|_| ()));
    assert!(
        result.is_err(),
        "a 64 MiB list in a {}-byte payload was accepted",
        bytes.len()
    );
}

#[test]
fn the_traversal_limit_follows_the_payload_size() {
    let small = reader_options(64).traversal_limit_in_words;
    let big = reader_options(1 << 20).traversal_limit_in_words;
    assert_eq!(small, Some(64 / 8 * 4 + 1024));
    assert_eq!(big, Some((1 << 20) / 8 * 4 + 1024));
    assert_eq!(reader_options(0).nesting_limit, 16);
}

/// Serializes a message built by `build`.
fn bytes_of(build: impl FnOnce(&mut Builder<capnp::message::HeapAllocator>)) -> Vec<u8> {
    let mut msg = Builder::new_default();
    build(&mut msg);
    let mut bytes = Vec::new();
    capnp::serialize::write_message(&mut bytes, &msg).unwrap();
    bytes
}

#[test]
fn every_pair_list_refuses_a_nameless_entry_and_names_it() {
    // A request whose second header, first argument or first extraInfo
    // entry has no name.
    let call = |list: &str| {
        bytes_of(|msg| {
            let mut root = msg.init_root::<schema::http_req_call_req::Builder>();
            root.set_src_ip(&[127, 0, 0, 1]);
            root.set_path("/");
            match list {
                "header" => {
                    let mut h = root.init_headers(2);
                    h.reborrow().get(0).set_name("a");
                    h.reborrow().get(1).set_value("no name");
                }
                "argument" => {
                    root.init_args(1).get(0).set_value("v");
                }
                _ => {
                    root.init_extra_info(1).get(0).set_value(b"v");
                }
            }
        })
    };
    for (list, expected) in [
        ("header", "header 1 has no name"),
        ("argument", "argument 0 has no name"),
        ("extra", "extraInfo entry 0 has no name"),
    ] {
        let bytes = call(list);
        let err = Payload::parse(&bytes).unwrap().req_call().unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(err.what, "HttpReqCallReq");
    }
    // A conf entry needs a name and a value.
    let bytes = bytes_of(|msg| {
        let mut conf = msg
            .init_root::<schema::prepare_conf_req::Builder>()
            .init_conf(2);
        conf.reborrow().get(0).set_name("say");
        conf.reborrow().get(0).set_value("{}");
        conf.reborrow().get(1).set_name("rewrite");
    });
    let err = Payload::parse(&bytes).unwrap().prepare_conf().unwrap_err();
    assert!(
        err.to_string()
            .contains("conf entry 1 (`rewrite`) has no value"),
        "{err}"
    );
    // In an answer, too: a stop header and a response header.
    let bytes = bytes_of(|msg| {
        let mut stop = msg
            .init_root::<schema::http_req_call_resp::Builder>()
            .init_action()
            .init_stop();
        stop.set_status(403);
        stop.init_headers(1).get(0).set_value("x");
    });
    let err = Payload::parse(&bytes)
        .unwrap()
        .req_call_answer()
        .unwrap_err();
    assert!(
        err.to_string().contains("stop header 0 has no name"),
        "{err}"
    );
    let bytes = bytes_of(|msg| {
        msg.init_root::<schema::http_resp_call_resp::Builder>()
            .init_headers(1)
            .get(0)
            .set_value("x");
    });
    let err = Payload::parse(&bytes)
        .unwrap()
        .resp_call_answer()
        .unwrap_err();
    assert!(err.to_string().contains("header 0 has no name"), "{err}");
}

/// Reads a request both ways (pair lists from the segment's bytes, and
/// entry by entry through capnp) and checks that they agree, errors
/// included; returns the fast path's result as text.
fn both_readers(bytes: &[u8]) -> String {
    let fast = Payload::parse(bytes).unwrap();
    let slow = Payload::parse(bytes).unwrap().without_fast_path();
    let fast = format!("{:?}", fast.req_call().map(|c| (c.conf_token, c.parts)));
    let slow = format!("{:?}", slow.req_call().map(|c| (c.conf_token, c.parts)));
    assert_eq!(fast, slow, "the two readers disagree");
    fast
}

#[test]
fn the_fast_pair_reader_agrees_with_capnp() {
    let long = "v".repeat(300);
    let parts = RequestParts {
        id: 3,
        src_ip: "10.0.0.1".parse().unwrap(),
        method: Method::GET,
        path: "/p",
        args: vec![
            ("a", Some("1")),
            ("flag", None),
            ("", Some("")),
            ("é", Some("ü")),
        ],
        headers: vec![("host", "x"), ("empty", ""), ("x-long", &long)],
        extra_info: vec![
            ("$request_body", Some(&[0u8, 255, 1][..])),
            ("none", None),
            ("e", Some(&[][..])),
        ],
    };
    let call = ReqCall {
        conf_token: 5,
        parts,
    };
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(&call, &mut buf).unwrap();
    assert_eq!(&buf[4..8], &[0; 4], "the encoder wrote one segment");
    let text = both_readers(&buf[4..]);
    assert!(text.contains(r#"("é", Some("ü"))"#), "{text}");

    // Several segments (a tiny first segment): the generic reader only.
    let mut msg = Builder::new(capnp::message::HeapAllocator::new().first_segment_words(1));
    call.build(&mut msg).unwrap();
    let mut bytes = Vec::new();
    capnp::serialize::write_message(&mut bytes, &msg).unwrap();
    assert_ne!(&bytes[..4], &[0; 4]);
    assert_eq!(both_readers(&bytes), text);
}

#[test]
fn the_fast_pair_reader_leaves_bad_entries_to_capnp() {
    // A nameless header, a header value that is not UTF-8, a text without
    // its NUL, a far pointer, a pointer out of the segment: the fast path
    // gives up on each, and both readers give the same error.
    let call = bytes_of(|msg| {
        let mut root = msg.init_root::<schema::http_req_call_req::Builder>();
        root.set_src_ip(&[127, 0, 0, 1]);
        root.set_path("/");
        let mut h = root.init_headers(2);
        h.reborrow().get(0).set_name("a");
        h.reborrow().get(0).set_value("bbbbbbb");
        h.reborrow().get(1).set_name("c");
        h.reborrow().get(1).set_value("d");
    });
    assert!(both_readers(&call).starts_with("Ok"));
    let find = |needle: &[u8]| {
        call.windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    let value_at = find(b"bbbbbbb\0");
    // The header list's first entry: its name pointer.
    let entry = {
        let message = capnp::serialize::read_message_from_flat_slice(
            &mut &call[..],
            capnp::message::ReaderOptions::new(),
        )
        .unwrap();
        let root: schema::http_req_call_req::Reader = message.get_root().unwrap();
        let entries = capnp::raw::get_list_bytes(root.get_headers().unwrap());
        entries.as_ptr() as usize - call.as_ptr() as usize
    };
    assert!(both_readers(&call).contains(r#"("a", "bbbbbbb")"#));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut bad = call.clone();
    bad[value_at] = 0xff;
    cases.push(("not UTF-8", bad));
    let mut bad = call.clone();
    bad[value_at + 7] = b'b';
    cases.push(("no NUL", bad));
    let mut bad = call.clone();
    bad[entry..entry + 8].fill(0);
    cases.push(("no name", bad));
    let mut bad = call.clone();
    bad[entry] = (bad[entry] & !3) | 2;
    cases.push(("far pointer", bad));
    let mut bad = call.clone();
    bad[entry + 3] = 0x7f; // a large positive offset
    cases.push(("out of the segment", bad));
    for (what, bytes) in cases {
        let text = both_readers(&bytes);
        assert!(text.starts_with("Err"), "{what}: {text}");
    }
}

/// The fast pair reader against capnp's on damaged messages: a valid call
/// with headers, arguments and extra info, with a few bytes changed at
/// random (pointers, lengths, texts, NULs alike). Whatever the damage, the
/// two readers give the same result (the same pairs, or the same error),
/// and neither panics or reads out of bounds.
#[test]
fn the_fast_pair_reader_agrees_with_capnp_on_damaged_messages() {
    let long = "v".repeat(40);
    let call = ReqCall {
        conf_token: 5,
        parts: RequestParts {
            id: 3,
            src_ip: "10.0.0.1".parse().unwrap(),
            method: Method::GET,
            path: "/p",
            args: vec![("a", Some("1")), ("flag", None), ("é", Some("ü"))],
            headers: vec![("host", "x"), ("empty", ""), ("x-long", &long), ("k", "v")],
            extra_info: vec![("$request_body", Some(&[0u8, 255, 1][..])), ("none", None)],
        },
    };
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(&call, &mut buf).unwrap();
    let valid = buf[4..].to_vec();
    assert!(both_readers(&valid).starts_with("Ok"));
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut parsed, mut fast_ok) = (0, 0);
    for _ in 0..50_000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + next() % 4 {
            // Past the segment table: damage to it is the parser's.
            let at = 8 + (next() as usize) % (bytes.len() - 8);
            bytes[at] = match next() % 4 {
                0 => 0,
                1 => 0xff,
                2 => bytes[at] ^ (1 << (next() % 8)),
                _ => next() as u8,
            };
        }
        let Ok(fast) = Payload::parse(&bytes) else {
            continue;
        };
        parsed += 1;
        let slow = Payload::parse(&bytes).unwrap().without_fast_path();
        let fast = format!("{:?}", fast.req_call().map(|c| (c.conf_token, c.parts)));
        let slow = format!("{:?}", slow.req_call().map(|c| (c.conf_token, c.parts)));
        assert_eq!(fast, slow, "the two readers disagree on {bytes:?}");
        fast_ok += usize::from(fast.starts_with("Ok"));
    }
    assert!(
        parsed > 40_000 && fast_ok > 1_000,
        "{parsed} parsed, {fast_ok} read"
    );
}

/// A message whose size hint falls short of what it holds.
struct Underestimated(ErrorResp);

impl Encode for Underestimated {
    fn kind(&self) -> MessageType {
        self.0.kind()
    }
    fn build<A: capnp::message::Allocator>(&self, message: &mut Builder<A>) -> capnp::Result<()> {
        self.0.build(message)
    }
}

/// The frame of `msg` built the plain way: on the heap, in one segment,
/// then copied out.
fn heap_frame<T: Encode>(msg: &T) -> BytesMut {
    let one_segment = capnp::message::HeapAllocator::new().first_segment_words(1 << 20);
    let mut buf = BytesMut::from(&b"before"[..]);
    FrameCodec::default()
        .encode_with(msg, one_segment, &mut buf)
        .unwrap();
    buf
}

#[test]
fn a_message_built_in_the_output_buffer_is_the_same_frame() {
    let body = vec![7u8; 64 * 1024];
    let call = ReqCall {
        conf_token: 3,
        parts: RequestParts {
            id: 9,
            src_ip: "10.0.0.1".parse().unwrap(),
            method: Method::POST,
            path: "/upload",
            args: vec![("a", Some("1"))],
            headers: vec![("host", "example.com"), ("content-type", "text/plain")],
            extra_info: vec![("request_body", Some(&body[..]))],
        },
    };
    // After other bytes, as in a connection's output buffer.
    let mut buf = BytesMut::from(&b"before"[..]);
    FrameCodec::default().encode(&call, &mut buf).unwrap();
    assert_eq!(buf, heap_frame(&call));
    // One segment (the hint held it): the reader follows no far pointer.
    assert_eq!(&buf[10..14], &0u32.to_le_bytes());

    // Past its hint, the message takes heap segments and is copied in.
    let big = Underestimated(ErrorResp {
        code: ErrorCode::BadRequest,
        message: "x".repeat(10_000),
    });
    let mut buf = BytesMut::from(&b"before"[..]);
    FrameCodec::default().encode(&big, &mut buf).unwrap();
    assert_eq!(&buf[..6], b"before");
    assert_ne!(&buf[10..14], &0u32.to_le_bytes(), "more than one segment");
    let mut frames = buf.split_off(6);
    let f = FrameCodec::default().decode(&mut frames).unwrap().unwrap();
    assert_eq!(Payload::parse(&f.payload).unwrap().error().unwrap(), big.0);
}
