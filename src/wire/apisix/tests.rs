//! Round trips of every message through APISIX's encoding, the schema
//! check, and hostile payloads.

use super::*;
use crate::wire::{
    ErrorCode, ErrorResp, ExtraInfoAnswer, FrameCodec, InfoKey, PrepareConf, Prepared, Protocol,
    ReqCall, ReqCallAnswer, RequestOutcome, RequestParts, RespCall, RespCallAnswer,
    ResponseOutcome, ResponseParts, Rewrite, Stop,
};
use bytes::BytesMut;
use http::{Method, StatusCode};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The payload of `item`'s frame, and checks the frame's type byte.
fn payload<T: ApisixEncode>(item: &T) -> Vec<u8> {
    let mut dst = BytesMut::new();
    let mut b = planus::Builder::new();
    FrameCodec::default()
        .encode_apisix(item, &mut b, &mut dst)
        .unwrap();
    assert_eq!(dst[0], item.kind() as u8);
    let len = u32::from_be_bytes([0, dst[1], dst[2], dst[3]]) as usize;
    assert_eq!(len, dst.len() - 4);
    // Every message written here is told apart from Cap'n Proto.
    assert_eq!(Protocol::detect(&dst[4..]), Protocol::Apisix);
    dst[4..].to_vec()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn the_generated_code_is_that_of_the_schema() {
    let schema = include_bytes!("../../../schema/ext-plugin.fbs");
    assert_eq!(
        fnv1a64(schema),
        generated::SCHEMA_FNV1A64,
        "schema/ext-plugin.fbs changed: run scripts/gen-apisix.sh"
    );
}

fn request() -> RequestParts<'static> {
    RequestParts {
        id: 7,
        src_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        method: Method::from_bytes(b"PROPFIND").unwrap(),
        path: "/a/ü",
        args: vec![("flag", None), ("a", Some("")), ("a", Some("2"))],
        headers: vec![("host", "x"), ("x-e", "")],
        extra_info: vec![],
    }
}

#[test]
fn requests_and_responses_round_trip() {
    let call = ReqCall {
        conf_token: 9,
        parts: request(),
    };
    let bytes = payload(&call);
    assert_eq!(Protocol::detect(&bytes), Protocol::Apisix);
    let back = req_call(&bytes).unwrap();
    assert_eq!(back.conf_token, 9);
    let (p, q) = (&back.parts, &call.parts);
    assert_eq!(
        (p.id, p.src_ip, &p.method, p.path),
        (q.id, q.src_ip, &q.method, q.path)
    );
    assert_eq!(p.args, q.args, "?flag has no value, ?a= an empty one");
    assert_eq!(p.headers, q.headers);

    let resp = RespCall {
        conf_token: 3,
        parts: ResponseParts {
            id: 8,
            status: StatusCode::NOT_FOUND,
            headers: vec![("set-cookie", "a"), ("set-cookie", "b")],
            extra_info: vec![],
        },
    };
    let bytes = payload(&resp);
    let back = resp_call(&bytes).unwrap();
    assert_eq!(back.conf_token, 3);
    assert_eq!(
        (back.parts.id, back.parts.status),
        (8, StatusCode::NOT_FOUND)
    );
    assert_eq!(back.parts.headers, resp.parts.headers);

    let conf = PrepareConf {
        conf: vec![("say", r#"{"body":"ok"}"#), ("b", "{}")],
        key: Some("route#1"),
    };
    assert_eq!(prepare_conf(&payload(&conf)).unwrap(), conf);
    let conf = PrepareConf {
        conf: vec![],
        key: None,
    };
    assert_eq!(prepare_conf(&payload(&conf)).unwrap(), conf);
}

#[test]
fn answers_round_trip_as_apisix_reads_them() {
    let stop = Stop::new(403)
        .header("x-a", "1")
        .header("x-a", "2")
        .body("no");
    for outcome in [
        RequestOutcome::Continue,
        RequestOutcome::Stop(stop),
        RequestOutcome::Rewrite(Rewrite {
            path: Some("/b".into()),
            headers: vec![("x".into(), Some("1".into())), ("cookie".into(), None)],
            args: vec![
                ("a".into(), Some("1".into())),
                ("a".into(), Some("2".into())),
                ("f".into(), None),
            ],
            resp_headers: vec![("x-via".into(), "extplug".into())],
            body: Some(b"new".to_vec()),
        }),
    ] {
        let answer = ReqCallAnswer { id: 5, outcome };
        assert_eq!(req_call_answer(&payload(&answer)).unwrap(), answer);
    }
    // An empty rewrite is *continue*, as APISIX reads it.
    let empty = ReqCallAnswer {
        id: 5,
        outcome: RequestOutcome::Rewrite(Rewrite::default()),
    };
    assert_eq!(
        req_call_answer(&payload(&empty)).unwrap().outcome,
        RequestOutcome::Continue
    );
    // A stop with status 0 is 200: written by hand, as APISIX's other
    // runners may send it.
    let mut b = planus::Builder::new();
    let stop = generated::a6::http_req_call::Stop::create(&mut b, 0u16, (), ());
    let action = generated::a6::http_req_call::Action::create_stop(&mut b, stop);
    let root = generated::a6::http_req_call::Resp::create(&mut b, 1u32, action);
    let bytes = b.finish(root, None).to_vec();
    match req_call_answer(&bytes).unwrap().outcome {
        RequestOutcome::Stop(stop) => assert_eq!(stop.status, StatusCode::OK),
        other => panic!("{other:?}"),
    }

    let resp = RespCallAnswer {
        id: 2,
        outcome: ResponseOutcome {
            status: Some(StatusCode::BAD_GATEWAY),
            headers: Some(vec![("a".into(), "1".into())]),
            body: Some(b"x".to_vec()),
        },
    };
    assert_eq!(resp_call_answer(&payload(&resp)).unwrap(), resp);
    let keep = RespCallAnswer {
        id: 2,
        outcome: ResponseOutcome::default(),
    };
    assert_eq!(resp_call_answer(&payload(&keep)).unwrap(), keep);

    let prepared_answer = Prepared {
        token: 42,
        needs: crate::wire::Needs {
            vars: vec!["remote_addr".into()],
            request_body: true,
            response_body: false,
        },
    };
    let back = prepared(&payload(&prepared_answer)).unwrap();
    assert_eq!(back.token, 42);
    assert!(
        back.needs.is_empty(),
        "APISIX's answer carries the token only"
    );

    let err = ErrorResp {
        code: ErrorCode::ConfTokenNotFound,
        message: "dropped on this wire".into(),
    };
    let back = error(&payload(&err)).unwrap();
    assert_eq!(
        (back.code, back.message.as_str()),
        (ErrorCode::ConfTokenNotFound, "")
    );
}

#[test]
fn extra_info_round_trips() {
    for key in [
        InfoKey::Var("remote_addr"),
        InfoKey::RequestBody,
        InfoKey::ResponseBody,
    ] {
        assert_eq!(extra_info_req(&payload(&key)).unwrap(), key);
    }
    for answer in [
        ExtraInfoAnswer(None),
        ExtraInfoAnswer(Some(b"")),
        ExtraInfoAnswer(Some(b"v")),
    ] {
        assert_eq!(extra_info_resp(&payload(&answer)).unwrap(), answer);
    }
}

#[test]
fn what_the_schema_cannot_say_is_refused_or_named() {
    let mut call = ReqCall {
        conf_token: 1,
        parts: request(),
    };
    call.parts.method = Method::CONNECT;
    let mut b = planus::Builder::new();
    let err = FrameCodec::default()
        .encode_apisix(&call, &mut b, &mut BytesMut::new())
        .unwrap_err();
    assert!(err.to_string().contains("CONNECT"), "{err}");
    // A source address of 5 bytes, and a request without a path.
    let mut b = planus::Builder::new();
    let ip = b.create_vector(&[1u8, 2, 3, 4, 5][..]);
    let root = generated::a6::http_req_call::Req::create(
        &mut b,
        1u32,
        ip,
        generated::a6::Method::Get,
        "/",
        (),
        (),
        1u32,
    );
    let err = req_call(b.finish(root, None)).unwrap_err();
    assert!(err.to_string().contains("src_ip has 5 bytes"), "{err}");
    let mut b = planus::Builder::new();
    let ip = b.create_vector(&Ipv4Addr::LOCALHOST.octets()[..]);
    let root = generated::a6::http_req_call::Req::create(
        &mut b,
        1u32,
        ip,
        generated::a6::Method::Get,
        (),
        (),
        (),
        1u32,
    );
    let err = req_call(b.finish(root, None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed A6.HTTPReqCall.Req payload: path is missing"
    );
}

/// Every prefix and every single-byte change of valid messages: an error
/// or a message, never a panic.
#[test]
fn truncated_and_corrupted_payloads_never_panic() {
    let call = payload(&ReqCall {
        conf_token: 1,
        parts: request(),
    });
    let answer = payload(&ReqCallAnswer {
        id: 1,
        outcome: RequestOutcome::Stop(Stop::new(200).header("a", "b").body("c")),
    });
    for bytes in [&call, &answer] {
        for cut in 0..bytes.len() {
            let short = &bytes[..cut];
            let _ = (req_call(short), req_call_answer(short), prepare_conf(short));
        }
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= flip;
                let _ = (req_call(&bad), req_call_answer(&bad), resp_call(&bad));
                let _ = (extra_info_req(&bad), extra_info_resp(&bad), error(&bad));
            }
        }
    }
    assert!(req_call(&[]).is_err());
    assert!(req_call(&[0; 3]).is_err());
}

/// The 15 methods of `A6.Method` (GET = 0 to TRACE = 14), each both ways.
#[test]
fn every_method_maps_both_ways() {
    let names: Vec<String> = (0u8..15)
        .map(|n| {
            let m = generated::a6::Method::try_from(n).unwrap();
            let http = decode::method_from_a6(m);
            assert_eq!(encode::method_to_a6(&http), Some(m));
            http.to_string()
        })
        .collect();
    assert_eq!(names[0], "GET");
    assert_eq!(names[14], "TRACE");
    assert!(generated::a6::Method::try_from(15u8).is_err());
}

/// `A6.TextEntry`s, `None` for an entry without a value.
fn text_entries(pairs: &[(&str, Option<&str>)]) -> Option<Vec<generated::a6::TextEntry>> {
    Some(
        pairs
            .iter()
            .map(|(n, v)| generated::a6::TextEntry {
                name: Some((*n).to_owned()),
                value: v.map(str::to_owned),
            })
            .collect(),
    )
}

/// An `A6.HTTPReqCall.Resp` with `action`, as another runner may write it.
fn req_answer_bytes(action: generated::a6::http_req_call::Action) -> Vec<u8> {
    let resp = generated::a6::http_req_call::Resp {
        id: 1,
        action: Some(action),
    };
    planus::Builder::new().finish(&resp, None).to_vec()
}

#[test]
fn an_entry_without_a_value_deletes_and_an_empty_body_keeps_as_apisix_does() {
    use generated::a6::http_req_call::{Action, Rewrite as A6Rewrite, Stop as A6Stop};
    // A stop: `set_header(name, nil)` deletes what the earlier entries set.
    let stop = A6Stop {
        status: 403,
        headers: text_entries(&[("x-a", Some("1")), ("X-A", None), ("x-b", Some("2"))]),
        body: None,
    };
    match req_call_answer(&req_answer_bytes(Action::Stop(Box::new(stop))))
        .unwrap()
        .outcome
    {
        RequestOutcome::Stop(stop) => {
            assert_eq!(stop.headers, vec![("x-b".to_owned(), "2".to_owned())]);
        }
        other => panic!("{other:?}"),
    }
    // A rewrite's empty body keeps the client's: alone, it is *continue*.
    let rewrite = |body: Vec<u8>| A6Rewrite {
        path: None,
        headers: None,
        args: None,
        resp_headers: None,
        body: Some(body),
    };
    let outcome = |body| {
        req_call_answer(&req_answer_bytes(Action::Rewrite(Box::new(rewrite(body)))))
            .unwrap()
            .outcome
    };
    assert_eq!(outcome(Vec::new()), RequestOutcome::Continue);
    match outcome(b"x".to_vec()) {
        RequestOutcome::Rewrite(rw) => assert_eq!(rw.body.as_deref(), Some(&b"x"[..])),
        other => panic!("{other:?}"),
    }
    // A response answer: the deletion drops the name from the list.
    let resp = generated::a6::http_resp_call::Resp {
        id: 2,
        status: 0,
        headers: text_entries(&[("a", Some("1")), ("b", Some("2")), ("a", None)]),
        body: None,
    };
    let bytes = planus::Builder::new().finish(&resp, None).to_vec();
    assert_eq!(
        resp_call_answer(&bytes).unwrap().outcome.headers,
        Some(vec![("b".to_owned(), "2".to_owned())])
    );
}
