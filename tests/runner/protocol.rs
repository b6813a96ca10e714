//! The real `demo-runner` binary, spoken to over its unix socket: every case
//! of PROTOCOL.md sections 1-4.

use crate::support::{get, Answer, Client, RunnerProc};
use extplug::wire::ErrorCode;
use futures::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use runner_sdk::{RequestOutcome, Rewrite, StatusCode, Stop};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const SAY: &str = r#"{"body":"hi","status":201,"headers":{"x-a":"1"}}"#;

fn s(v: &str) -> String {
    v.to_string()
}

/// One call with `token` (a `say` chain): the runner still answers it.
async fn assert_stops(c: &mut Client, token: u32) {
    let outcome = c.call(token, get("/")).await.outcome;
    assert!(matches!(outcome, RequestOutcome::Stop(_)), "{outcome:?}");
}

fn expect_error(answer: Answer, code: ErrorCode) -> String {
    match answer {
        Answer::Error(e) if e.code == code => e.message,
        other => panic!("expected ERROR {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn tokens_are_distinct_and_keys_idempotent() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let a = c.prepare(&[("say", SAY)]).await;
    let b = c.prepare(&[("say", SAY)]).await;
    assert!(a != 0 && b != 0 && a != b);
    // A second runner process starts its tokens elsewhere (random start):
    // a token from one is almost never valid in the other.
    let other = RunnerProc::start(&[]);
    let mut o = other.client().await;
    let first = o.prepare(&[("say", SAY)]).await;
    assert!(first != 0 && first != a, "both processes started at {a}");
    expect_error(
        o.call_answer(b, get("/")).await,
        ErrorCode::ConfTokenNotFound,
    );
    let Answer::Prepared(k1) = c.prepare_answer(&[("say", SAY)], Some("route-1#3")).await else {
        panic!()
    };
    // Same key from another connection: same token.
    let mut c2 = runner.client().await;
    let Answer::Prepared(k2) = c2.prepare_answer(&[("say", SAY)], Some("route-1#3")).await else {
        panic!()
    };
    assert_eq!(k1.token, k2.token);
    let Answer::Prepared(k3) = c2.prepare_answer(&[("say", SAY)], Some("route-1#4")).await else {
        panic!()
    };
    assert_ne!(k1.token, k3.token);
}

#[tokio::test]
async fn stop_answers_with_status_headers_body() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let token = c.prepare(&[("say", SAY)]).await;
    let answer = c.call(token, get("/x")).await;
    assert_eq!(answer.id, 7, "the id is echoed");
    assert_eq!(
        answer.outcome,
        RequestOutcome::Stop(Stop::new(StatusCode::CREATED).header("x-a", "1").body("hi"))
    );
}

#[tokio::test]
async fn chain_order_stop_ends_the_chain_and_continue() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let auth = r#"{"keys":["k"]}"#;
    let token = c
        .prepare(&[
            ("key-auth", auth),
            ("say", SAY),
            ("rewrite", r#"{"path":"/never"}"#),
        ])
        .await;
    // Without the key, key-auth stops first.
    let RequestOutcome::Stop(stop) = c.call(token, get("/")).await.outcome else {
        panic!()
    };
    assert_eq!(stop.status, StatusCode::UNAUTHORIZED);
    // With it, say stops, and the rewrite after it never runs.
    let mut req = get("/");
    req.headers = vec![("x-api-key", "k")];
    let RequestOutcome::Stop(stop) = c.call(token, req).await.outcome else {
        panic!()
    };
    assert_eq!(stop.status, StatusCode::CREATED);
    // key-auth alone with the key: reads only, so continue.
    let token = c.prepare(&[("key-auth", auth)]).await;
    let mut req = get("/");
    req.headers = vec![("x-api-key", "k")];
    assert_eq!(c.call(token, req).await.outcome, RequestOutcome::Continue);
}

#[tokio::test]
async fn rewrites_merge_and_the_later_one_wins() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let first = r#"{"path":"/a","headers":{"x-h":"1","x-gone":null},"args":{"a":"1"},"resp_headers":{"x-r":"1"}}"#;
    let second = r#"{"path":"/b","headers":{"x-h":"2"},"args":{"b":null}}"#;
    let token = c.prepare(&[("rewrite", first), ("rewrite", second)]).await;
    let answer = c.call(token, get("/orig")).await;
    assert_eq!(
        answer.outcome,
        RequestOutcome::Rewrite(Rewrite {
            path: Some(s("/b")),
            headers: vec![(s("x-gone"), None), (s("x-h"), Some(s("2")))],
            args: vec![(s("a"), Some(s("1"))), (s("b"), None)],
            resp_headers: vec![(s("x-r"), s("1"))],
            body: None,
        })
    );
}

#[tokio::test]
async fn unknown_token_unknown_plugin_and_bad_conf() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    // Tokens start at a random value: the one prepared is the only one known.
    let known = c.prepare(&[("say", SAY)]).await;
    let unknown = known.wrapping_add(424242).max(1);
    let msg = expect_error(
        c.call_answer(unknown, get("/")).await,
        ErrorCode::ConfTokenNotFound,
    );
    assert!(msg.contains(&unknown.to_string()), "{msg}");
    let msg = expect_error(
        c.prepare_answer(&[("say", SAY), ("nope", "{}")], None)
            .await,
        ErrorCode::BadRequest,
    );
    assert!(
        msg.contains(r#"conf[1]: unknown plugin "nope" (this runner has: "#),
        "{msg}"
    );
    let msg = expect_error(
        c.prepare_answer(&[("say", r#"{"status":200}"#)], None)
            .await,
        ErrorCode::BadRequest,
    );
    assert!(
        msg.contains(r#"conf[0]: plugin "say": "#) && msg.contains("body"),
        "{msg}"
    );
    let msg = expect_error(
        c.prepare_answer(&[("key-auth", "not json")], None).await,
        ErrorCode::BadRequest,
    );
    assert!(msg.contains(r#"conf[0]: plugin "key-auth": "#), "{msg}");
    // The connection still serves.
    let token = c.prepare(&[("say", SAY)]).await;
    assert_stops(&mut c, token).await;
}

#[tokio::test]
async fn bad_type_and_bad_payload_keep_the_connection() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    c.raw(9, b"").await;
    let msg = expect_error(c.answer().await.unwrap(), ErrorCode::BadRequest);
    assert!(msg.contains("unknown message type 9"), "{msg}");
    c.raw(3, b"").await;
    expect_error(c.answer().await.unwrap(), ErrorCode::BadRequest);
    c.raw(2, b"this is not cap'n proto").await;
    let msg = expect_error(c.answer().await.unwrap(), ErrorCode::BadRequest);
    assert!(msg.contains("malformed"), "{msg}");
    // A call whose source IP has 5 bytes.
    let token = c.prepare(&[("say", SAY)]).await;
    let mut bad = Vec::new();
    {
        use extplug::wire::ext_plugin_capnp::http_req_call_req;
        let mut msg = capnp::message::Builder::new_default();
        let mut root = msg.init_root::<http_req_call_req::Builder>();
        root.set_src_ip(&[1, 2, 3, 4, 5]);
        root.set_path("/");
        root.set_conf_token(token);
        capnp::serialize::write_message(&mut bad, &msg).unwrap();
    }
    c.raw(2, &bad).await;
    let msg = expect_error(c.answer().await.unwrap(), ErrorCode::BadRequest);
    assert!(msg.contains("srcIp has 5 bytes"), "{msg}");
    assert_stops(&mut c, token).await;
}

#[tokio::test]
async fn a_failing_or_panicking_plugin_fails_only_its_call() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let err = c.prepare(&[("fault", r#"{"mode":"error"}"#)]).await;
    let panic = c.prepare(&[("fault", r#"{"mode":"panic"}"#)]).await;
    let say = c.prepare(&[("say", SAY)]).await;
    let msg = expect_error(
        c.call_answer(err, get("/")).await,
        ErrorCode::ServiceUnavailable,
    );
    assert!(
        msg.contains("plugin `fault` failed: failing on purpose"),
        "{msg}"
    );
    let msg = expect_error(
        c.call_answer(panic, get("/")).await,
        ErrorCode::ServiceUnavailable,
    );
    assert!(msg.contains("panicked: panicking on purpose"), "{msg}");
    assert_stops(&mut c, say).await;
}

#[tokio::test]
async fn a_panic_while_preparing_is_bad_request_naming_the_plugin() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    for (mode, during) in [("configure-panic", "configure"), ("needs-panic", "needs")] {
        let conf = format!(r#"{{"mode":"{mode}"}}"#);
        let msg = expect_error(
            c.prepare_answer(&[("say", SAY), ("fault", &conf)], None)
                .await,
            ErrorCode::BadRequest,
        );
        assert!(
            msg.contains(&format!("conf[1]: plugin \"fault\" panicked in {during}")),
            "{msg}"
        );
    }
    // The same connection still serves.
    let token = c.prepare(&[("say", SAY)]).await;
    assert_stops(&mut c, token).await;
}

#[tokio::test]
async fn a_status_outside_200_to_599_is_never_sent() {
    use extplug::wire::{Payload, RespCall};
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    for status in [101u16, 600, 999] {
        let conf = format!(r#"{{"mode":"stop-status","status":{status}}}"#);
        let token = c.prepare(&[("fault", &conf)]).await;
        let msg = expect_error(
            c.call_answer(token, get("/")).await,
            ErrorCode::ServiceUnavailable,
        );
        assert!(
            msg.contains(&format!("plugin `fault` set stop status {status}")),
            "{msg}"
        );
        let conf = format!(r#"{{"mode":"response-status","status":{status}}}"#);
        let token = c.prepare(&[("fault", &conf)]).await;
        c.conn
            .send(&RespCall {
                conf_token: token,
                parts: runner_sdk::ResponseParts {
                    id: 3,
                    status: StatusCode::OK,
                    headers: vec![],
                    extra_info: vec![],
                },
            })
            .await
            .unwrap();
        let msg = expect_error(c.answer().await.unwrap(), ErrorCode::ServiceUnavailable);
        assert!(
            msg.contains(&format!("plugin `fault` set response status {status}")),
            "{msg}"
        );
    }
    // In range, the same plugin's answer goes through.
    let token = c
        .prepare(&[("fault", r#"{"mode":"response-status","status":599}"#)])
        .await;
    c.conn
        .send(&RespCall {
            conf_token: token,
            parts: runner_sdk::ResponseParts {
                id: 4,
                status: StatusCode::OK,
                headers: vec![],
                extra_info: vec![],
            },
        })
        .await
        .unwrap();
    let Some(Answer::Other(frame)) = c.answer().await else {
        panic!("expected a response-phase answer")
    };
    let answer = Payload::parse(&frame.payload)
        .unwrap()
        .resp_call_answer()
        .unwrap();
    assert_eq!(
        answer.outcome.status,
        Some(StatusCode::from_u16(599).unwrap())
    );
}

#[tokio::test]
async fn oversize_frame_closes_only_that_connection() {
    let runner = RunnerProc::start(&[("EXTPLUG_MAX_FRAME", "1024")]);
    let mut other = runner.client().await;
    let token = other.prepare(&[("say", SAY)]).await;
    let mut c = runner.client().await;
    c.raw(2, &vec![0u8; 2048]).await;
    let msg = expect_error(c.answer().await.unwrap(), ErrorCode::BadRequest);
    assert!(msg.contains("2048") && msg.contains("1024"), "{msg}");
    assert!(c.answer().await.is_none(), "the connection is closed");
    assert_stops(&mut other, token).await;
    let mut fresh = runner.client().await;
    assert_stops(&mut fresh, token).await;
}

#[tokio::test]
async fn truncated_frame_at_eof_is_answered_then_closed() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    // A header that promises 100 bytes, 10 of them, then end of stream.
    let mut bytes = vec![2u8, 0, 0, 100];
    bytes.extend_from_slice(&[0; 10]);
    let stream = c.conn.get_mut();
    tokio::io::AsyncWriteExt::write_all(stream, &bytes)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(stream).await.unwrap();
    let msg = expect_error(c.answer().await.unwrap(), ErrorCode::BadRequest);
    assert!(msg.contains("14 of 104 bytes"), "{msg}");
    assert!(c.answer().await.is_none());
    let mut fresh = runner.client().await;
    fresh.prepare(&[("say", SAY)]).await;
}

#[tokio::test]
async fn many_calls_on_one_connection() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let token = c
        .prepare(&[("rewrite", r#"{"headers":{"x-n":"1"}}"#)])
        .await;
    for id in 0..2000u32 {
        let mut req = get("/");
        req.id = id;
        let answer = c.call(token, req).await;
        assert_eq!(answer.id, id);
        assert!(matches!(answer.outcome, RequestOutcome::Rewrite(_)));
    }
}

#[tokio::test]
async fn two_hundred_connections_at_once() {
    let runner = RunnerProc::start(&[]);
    let mut first = runner.client().await;
    let token = first.prepare(&[("say", SAY)]).await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(runner.client().await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                for n in 0..10u32 {
                    let mut req = get("/");
                    req.id = i as u32 * 100 + n;
                    let answer = c.call(token, req).await;
                    assert_eq!(answer.id, i as u32 * 100 + n);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn sigterm_drains_the_call_in_flight_and_removes_the_socket() {
    let mut runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let token = c.prepare(&[("body-size", "{}")]).await;
    // No body sent up front: the plugin asks for it, and the call waits on us.
    let frame = c.call_until_extra_info(token, get("/")).await;
    let payload = extplug::wire::Payload::parse(&frame.payload).unwrap();
    assert_eq!(
        payload.extra_info_req().unwrap(),
        runner_sdk::InfoKey::RequestBody
    );
    runner.signal(Signal::SIGTERM);
    // The runner stops accepting...
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&runner.socket).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...but the call in flight finishes.
    c.conn
        .send(&extplug::wire::ExtraInfoAnswer(Some(b"12345")))
        .await
        .unwrap();
    let Some(Answer::Call(answer)) = c.answer().await else {
        panic!("no answer")
    };
    let RequestOutcome::Rewrite(rw) = answer.outcome else {
        panic!()
    };
    assert_eq!(rw.headers, vec![(s("x-body-size"), Some(s("5")))]);
    let status = runner.wait_exit();
    assert!(status.success(), "{status}");
    assert!(!runner.socket.exists(), "socket removed");
}

#[tokio::test]
async fn sigint_stops_too() {
    let mut runner = RunnerProc::start(&[]);
    runner.signal(Signal::SIGINT);
    assert!(runner.wait_exit().success());
    assert!(!runner.socket.exists());
}

#[tokio::test]
async fn a_host_that_closes_mid_extra_info_hurts_nobody_else() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let token = c
        .prepare(&[("inject-vars", r#"{"vars":["a"],"prefetch":false}"#)])
        .await;
    c.call_until_extra_info(token, get("/")).await;
    drop(c);
    let mut other = runner.client().await;
    other.call_until_extra_info(token, get("/")).await;
    other
        .conn
        .send(&extplug::wire::ExtraInfoAnswer(Some(b"v")))
        .await
        .unwrap();
    let Some(Answer::Call(answer)) = other.answer().await else {
        panic!()
    };
    let RequestOutcome::Rewrite(rw) = answer.outcome else {
        panic!()
    };
    assert_eq!(rw.headers, vec![(s("x-var-a"), Some(s("v")))]);
}

#[tokio::test]
async fn prefetched_values_need_no_extra_info() {
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let Answer::Prepared(p) = c
        .prepare_answer(
            &[
                ("inject-vars", r#"{"vars":["remote_addr","x"]}"#),
                ("body-size", "{}"),
            ],
            None,
        )
        .await
    else {
        panic!()
    };
    assert_eq!(p.needs.vars, vec![s("remote_addr"), s("x")]);
    assert!(
        p.needs.request_body && p.needs.response_body,
        "body-size reads both bodies"
    );
    let mut req = get("/");
    req.extra_info = vec![
        ("remote_addr", Some(b"10.0.0.9")),
        ("x", None),
        ("$request_body", Some(b"abc")),
    ];
    // The next frame is the final answer: no EXTRA_INFO in between.
    let answer = c.call(p.token, req).await;
    let RequestOutcome::Rewrite(rw) = answer.outcome else {
        panic!()
    };
    assert_eq!(
        rw.headers,
        vec![
            (s("x-var-remote_addr"), Some(s("10.0.0.9"))),
            (s("x-body-size"), Some(s("3")))
        ]
    );
}

#[tokio::test]
async fn confs_expire_after_1_2_times_the_expire_time() {
    let runner = RunnerProc::start(&[("APISIX_CONF_EXPIRE_TIME", "1")]);
    let mut c = runner.client().await;
    let token = c.prepare(&[("say", SAY)]).await;
    let prepared = Instant::now();
    assert_stops(&mut c, token).await;
    let used = Instant::now();
    let deadline = used + Duration::from_secs(10);
    loop {
        let answer = c.call_answer(token, get("/")).await;
        if let Answer::Error(e) = &answer {
            assert_eq!(e.code, ErrorCode::ConfTokenNotFound);
            break;
        }
        // Every successful call is a use: wait without calling for a while.
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(prepared.elapsed() >= Duration::from_millis(1200));
}

#[test]
fn the_socket_is_0600_and_a_stale_socket_is_replaced() {
    let runner = RunnerProc::start(&[]);
    let mode = std::fs::metadata(&runner.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A stale socket: bound once, nobody listening any more.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let child = std::process::Command::new(crate::support::demo_runner())
        .env("APISIX_LISTEN_ADDRESS", format!("unix:{}", stale.display()))
        .env("EXTPLUG_SOCKET_MODE", "0660")
        .spawn()
        .unwrap();
    let mut proc = RunnerProc {
        child,
        dir,
        socket: stale.clone(),
    };
    proc.wait_ready();
    let mode = std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "EXTPLUG_SOCKET_MODE applies");
    // A live socket is not taken over: a second runner on it fails.
    let out = std::process::Command::new(crate::support::demo_runner())
        .env("APISIX_LISTEN_ADDRESS", format!("unix:{}", stale.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

/// Starts the demo-runner on `dir/r.sock` with `env`, its stderr in
/// `dir/runner.log`.
fn runner_logging_to_file(dir: tempfile::TempDir, env: &[(&str, &str)]) -> RunnerProc {
    let socket = dir.path().join("r.sock");
    let log = std::fs::File::create(dir.path().join("runner.log")).unwrap();
    let mut cmd = std::process::Command::new(crate::support::demo_runner());
    cmd.env(
        "APISIX_LISTEN_ADDRESS",
        format!("unix:{}", socket.display()),
    )
    .env("RUST_LOG", "warn")
    .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let mut proc = RunnerProc { child, dir, socket };
    proc.wait_ready();
    proc
}

/// Runs the bad-runner's `connect` mode (one PREPARE_CONF) as uid/gid 65534
/// against `runner`, from a copy of the binary in the runner's temp dir (so
/// that the build directory need not be readable by that user).
fn connect_as_nobody(runner: &RunnerProc) -> String {
    use std::os::unix::process::CommandExt;
    let client = runner.dir.path().join("connect-client");
    if !client.exists() {
        std::fs::copy(crate::support::example("bad-runner"), &client).unwrap();
        std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new(&client)
        .uid(65534)
        .gid(65534)
        .env("BAD_RUNNER_MODE", "connect")
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", runner.socket.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn connections_from_another_uid_are_closed_unless_allowed() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root to connect as another uid (65534)");
        return;
    }
    // The socket open to all (mode 0666, directory traversable): only the
    // peer check stands between uid 65534 and the runner.
    let open_dir = || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    };
    let runner = runner_logging_to_file(open_dir(), &[("EXTPLUG_SOCKET_MODE", "0666")]);
    let mode = std::fs::metadata(&runner.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);
    let said = connect_as_nobody(&runner);
    assert_eq!(said.trim(), "closed", "uid 65534 was served");
    let log = std::fs::read_to_string(runner.dir.path().join("runner.log")).unwrap();
    assert!(
        log.contains("uid=65534") && log.contains("not allowed"),
        "{log}"
    );
    // The runner's own uid is still served.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = runner.client().await;
        c.prepare(&[("say", SAY)]).await;
    });
    // Listed in EXTPLUG_ALLOWED_UIDS: served.
    let runner = runner_logging_to_file(
        open_dir(),
        &[
            ("EXTPLUG_SOCKET_MODE", "0666"),
            ("EXTPLUG_ALLOWED_UIDS", "12345,65534"),
        ],
    );
    let said = connect_as_nobody(&runner);
    assert_eq!(said.trim(), "answered type 1");
}

#[tokio::test]
async fn extra_info_round_trips_per_call_are_capped() {
    let runner = RunnerProc::start(&[("EXTPLUG_MAX_EXTRA_INFO", "2")]);
    let mut c = runner.client().await;
    let token = c
        .prepare(&[("inject-vars", r#"{"vars":["a","b","c"],"prefetch":false}"#)])
        .await;
    for round in 0..3 {
        // Two round trips are answered, the third is refused.
        c.call_until_extra_info(token, get("/")).await;
        c.conn
            .send(&extplug::wire::ExtraInfoAnswer(Some(b"v")))
            .await
            .unwrap();
        match c.answer().await {
            Some(Answer::Other(frame)) if frame.kind == 3 => {}
            other => panic!("expected a second EXTRA_INFO, got {other:?}"),
        }
        c.conn
            .send(&extplug::wire::ExtraInfoAnswer(Some(b"v")))
            .await
            .unwrap();
        let msg = expect_error(c.answer().await.unwrap(), ErrorCode::ServiceUnavailable);
        assert!(
            msg.contains("plugin `inject-vars`")
                && msg.contains("more than 2 EXTRA_INFO round trips")
                && msg.contains("EXTPLUG_MAX_EXTRA_INFO"),
            "round {round}: {msg}"
        );
    }
    // Within the cap, the call is answered.
    let token = c
        .prepare(&[("inject-vars", r#"{"vars":["a","b"],"prefetch":false}"#)])
        .await;
    c.call_until_extra_info(token, get("/")).await;
    for _ in 0..2 {
        c.conn
            .send(&extplug::wire::ExtraInfoAnswer(Some(b"v")))
            .await
            .unwrap();
        if let Some(Answer::Call(answer)) = c.answer().await {
            assert!(matches!(answer.outcome, RequestOutcome::Rewrite(_)));
            return;
        }
    }
    panic!("no answer after two round trips");
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_wait() {
    let runner = RunnerProc::start(&[("EXTPLUG_MAX_CONNECTIONS", "2")]);
    let mut a = runner.client().await;
    let mut b = runner.client().await;
    a.prepare(&[("say", SAY)]).await;
    b.prepare(&[("say", SAY)]).await;
    // A third connection waits in the backlog: connected, but not served.
    let mut c = runner.client().await;
    c.conn
        .send(&extplug::wire::PrepareConf {
            conf: vec![("say", SAY)],
            key: None,
        })
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), c.conn.next()).await;
    assert!(early.is_err(), "served over the cap: {early:?}");
    // One closes: the waiting one is served.
    drop(a);
    assert!(matches!(c.answer().await, Some(Answer::Prepared(_))));
    b.prepare(&[("say", SAY)]).await;
}

fn run_with_env(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(crate::support::demo_runner());
    cmd.env_remove("APISIX_LISTEN_ADDRESS")
        .env_remove("APISIX_CONF_EXPIRE_TIME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn bad_environment_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("s.sock").display());
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[],
            "APISIX_LISTEN_ADDRESS is not set: a runner is normally started by `extplug proxy`",
        ),
        (
            &[("APISIX_LISTEN_ADDRESS", "tcp:127.0.0.1:9")],
            "APISIX_LISTEN_ADDRESS=\"tcp:127.0.0.1:9\"",
        ),
        (
            &[
                ("APISIX_LISTEN_ADDRESS", &sock),
                ("APISIX_CONF_EXPIRE_TIME", "0"),
            ],
            "APISIX_CONF_EXPIRE_TIME=\"0\"",
        ),
        (
            &[
                ("APISIX_LISTEN_ADDRESS", &sock),
                ("APISIX_CONF_EXPIRE_TIME", "soon"),
            ],
            "positive whole number",
        ),
        (
            &[
                ("APISIX_LISTEN_ADDRESS", &sock),
                ("EXTPLUG_ALLOWED_UIDS", "1000,bob"),
            ],
            "EXTPLUG_ALLOWED_UIDS=\"1000,bob\": \"bob\" is not a user id",
        ),
        (
            &[
                ("APISIX_LISTEN_ADDRESS", &sock),
                ("EXTPLUG_MAX_CONNECTIONS", "0"),
            ],
            "EXTPLUG_MAX_CONNECTIONS=\"0\"",
        ),
        (
            &[
                ("APISIX_LISTEN_ADDRESS", &sock),
                ("EXTPLUG_MAX_EXTRA_INFO", "lots"),
            ],
            "EXTPLUG_MAX_EXTRA_INFO=\"lots\"",
        ),
        (
            &[
                ("APISIX_LISTEN_ADDRESS", &sock),
                ("EXTPLUG_RUNNER_PROTOCOL", "flatbuffers"),
            ],
            "EXTPLUG_RUNNER_PROTOCOL=\"flatbuffers\" is not `apisix` or `capnp`",
        ),
    ];
    for (env, expected) in cases {
        let out = run_with_env(env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
}

#[test]
fn a_regular_file_at_the_socket_path_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.txt");
    std::fs::write(&path, "keep me").unwrap();
    let out = run_with_env(&[("APISIX_LISTEN_ADDRESS", &format!("unix:{}", path.display()))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

/// A shell that starts the runner (its output sent where `redirect` says)
/// and waits for it. Returns the shell, the runner's pid, and the temp dir
/// holding the socket `r.sock`.
fn runner_under_shell(redirect: &str) -> (std::process::Child, i32, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("r.sock");
    let parent = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(r#""$0" {redirect} & wait"#))
        .arg(crate::support::demo_runner())
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", socket.display()),
        )
        .env("RUST_LOG", "debug")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "runner did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The runner is the demo-runner process whose environment names this socket.
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                String::from_utf8_lossy(&env).contains(&socket.display().to_string())
            }) && std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "demo-runner")
        })
        .expect("the runner's pid");
    (parent, pid, dir)
}

/// Waits until `pid` has stopped running (gone, or a zombie nobody reaped).
fn wait_stopped(pid: i32, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            Instant::now() < deadline,
            "runner {pid} still running after {why}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_runner_exits_when_its_parent_dies() {
    let (mut parent, pid, dir) = runner_under_shell("");
    parent.kill().unwrap();
    parent.wait().unwrap();
    wait_stopped(pid, "its parent died");
    assert!(
        !dir.path().join("r.sock").exists(),
        "it stopped cleanly and removed its socket"
    );
}

#[test]
fn a_broken_stderr_never_keeps_the_runner_from_stopping() {
    // The host that read the runner's log is gone: every log line fails.
    let (mut parent, pid, _dir) = runner_under_shell("2>&1 | true");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_stopped(pid, "SIGTERM");
    let _ = parent.kill();
    let _ = parent.wait();
    let (mut parent, pid, _dir) = runner_under_shell("2>&1 | true");
    parent.kill().unwrap();
    parent.wait().unwrap();
    wait_stopped(pid, "its parent died");
}

/// A small deterministic generator (xorshift), so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn random_frames_on_many_connections_never_hurt_the_runner() {
    // Pinned to Cap'n Proto: noise as a first frame would otherwise make a
    // connection speak APISIX's wire (tests/runner/apisix_wire.rs has that case).
    let runner = RunnerProc::start(&[
        ("EXTPLUG_MAX_FRAME", "4096"),
        ("EXTPLUG_RUNNER_PROTOCOL", "capnp"),
    ]);
    let mut good = runner.client().await;
    let token = good.prepare(&[("say", SAY)]).await;
    // Valid messages of one type sent as another, and plain noise.
    let mut valid = Vec::new();
    for msg in [
        {
            let mut b = bytes::BytesMut::new();
            tokio_util::codec::Encoder::encode(
                &mut extplug::wire::FrameCodec::default(),
                &extplug::wire::PrepareConf {
                    conf: vec![("say", SAY)],
                    key: Some("k"),
                },
                &mut b,
            )
            .unwrap();
            b[4..].to_vec()
        },
        {
            let mut b = bytes::BytesMut::new();
            tokio_util::codec::Encoder::encode(
                &mut extplug::wire::FrameCodec::default(),
                &extplug::wire::ReqCall {
                    conf_token: token,
                    parts: get("/"),
                },
                &mut b,
            )
            .unwrap();
            b[4..].to_vec()
        },
    ] {
        valid.push(msg);
    }
    let mut tasks = Vec::new();
    for seed in 1..=40u64 {
        let socket = runner.socket.clone();
        let valid = valid.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut c = Client::connect(&socket).await;
            for _ in 0..20 {
                let kind = rng.below(6) as u8;
                let payload: Vec<u8> = match rng.below(3) {
                    0 => valid[rng.below(2) as usize].clone(),
                    1 => {
                        // A valid message with some bytes flipped.
                        let mut p = valid[rng.below(2) as usize].clone();
                        for _ in 0..3 {
                            let i = rng.below(p.len() as u64) as usize;
                            p[i] ^= rng.next() as u8;
                        }
                        p
                    }
                    _ => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
                };
                c.raw(kind, &payload).await;
                // Every frame gets exactly one answer (a call may ask for
                // EXTRA_INFO first only for plugins that read; `say` does not).
                match c.answer().await {
                    Some(_) => {}
                    None => return, // a framing error closed this connection
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Oversize and truncated frames too.
    let mut c = runner.client().await;
    c.raw(2, &vec![0u8; 5000]).await;
    assert!(matches!(c.answer().await, Some(Answer::Error(_))));
    // Still serving, same process.
    assert_stops(&mut good, token).await;
    let mut fresh = runner.client().await;
    assert_stops(&mut fresh, token).await;
}

#[tokio::test]
async fn a_current_thread_runner_serves_megabyte_bodies_fetched_or_prefetched() {
    let runner = RunnerProc::start(&[("DEMO_RUNNER_THREADS", "1")]);
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", runner.pid()))
            .unwrap()
            .count()
    };
    let mut c = runner.client().await;
    let token = c.prepare(&[("body-size", "{}")]).await;
    let body: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let size_of = |answer: extplug::wire::ReqCallAnswer| match answer.outcome {
        RequestOutcome::Rewrite(rw) => rw.headers,
        other => panic!("{other:?}"),
    };
    // Fetched during the call (EXTRA_INFO), then sent up front, then a small
    // call: the connection's buffers grow for the large frames and the
    // calls after them still get their own answers.
    c.call_until_extra_info(token, get("/")).await;
    c.conn
        .send(&extplug::wire::ExtraInfoAnswer(Some(&body)))
        .await
        .unwrap();
    let Some(Answer::Call(answer)) = c.answer().await else {
        panic!("no answer after the body")
    };
    assert_eq!(
        size_of(answer),
        vec![(s("x-body-size"), Some(s("1048576")))]
    );
    let mut req = get("/");
    req.extra_info = vec![("$request_body", Some(&body[..]))];
    let answer = c.call(token, req).await;
    assert_eq!(
        size_of(answer),
        vec![(s("x-body-size"), Some(s("1048576")))]
    );
    let mut req = get("/");
    req.extra_info = vec![("$request_body", Some(b"abc"))];
    let answer = c.call(token, req).await;
    assert_eq!(size_of(answer), vec![(s("x-body-size"), Some(s("3")))]);
    // Other connections are served meanwhile by the same thread.
    let mut others = Vec::new();
    for _ in 0..8 {
        others.push(runner.client().await);
    }
    for other in &mut others {
        let mut req = get("/");
        req.extra_info = vec![("$request_body", Some(b"x"))];
        let answer = other.call(token, req).await;
        assert_eq!(size_of(answer), vec![(s("x-body-size"), Some(s("1")))]);
    }
    assert_eq!(
        threads(),
        1,
        "a current-thread runner runs on its main thread only"
    );
}

/// The runner reads into a buffer of its own (no codec framing it): a frame
/// that arrives split at any byte, one byte per write, or several frames in
/// one write are each answered once, in order, with their own id.
#[tokio::test]
async fn frames_split_anywhere_or_sent_together_are_each_answered_in_order() {
    use tokio::io::AsyncWriteExt;
    let runner = RunnerProc::start(&[]);
    let mut c = runner.client().await;
    let token = c
        .prepare(&[("rewrite", r#"{"headers":{"x-n":"1"}}"#)])
        .await;
    let frame = |id: u32| {
        let mut parts = get("/split");
        parts.id = id;
        parts.headers = vec![("x-a", "1"), ("x-b", "two")];
        let mut b = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(
            &mut extplug::wire::FrameCodec::default(),
            &extplug::wire::ReqCall {
                conf_token: token,
                parts,
            },
            &mut b,
        )
        .unwrap();
        b.to_vec()
    };
    async fn expect_id(c: &mut Client, id: u32) {
        match c.answer().await {
            Some(Answer::Call(a)) => {
                assert_eq!(a.id, id);
                assert!(matches!(a.outcome, RequestOutcome::Rewrite(_)));
            }
            other => panic!("call {id}: {other:?}"),
        }
    }
    // One byte per write.
    for b in frame(1) {
        let stream = c.conn.get_mut();
        stream.write_all(&[b]).await.unwrap();
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    expect_id(&mut c, 1).await;
    // Split in two at every byte.
    let len = frame(0).len();
    for at in 1..len {
        let id = 100 + at as u32;
        let bytes = frame(id);
        let stream = c.conn.get_mut();
        stream.write_all(&bytes[..at]).await.unwrap();
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
        stream.write_all(&bytes[at..]).await.unwrap();
        expect_id(&mut c, id).await;
    }
    // Eight frames in one write, then eight more with the last one split.
    let together: Vec<u8> = (10..18).flat_map(frame).collect();
    c.conn.get_mut().write_all(&together).await.unwrap();
    for id in 10..18 {
        expect_id(&mut c, id).await;
    }
    let together: Vec<u8> = (20..28).flat_map(frame).collect();
    let cut = together.len() - 7;
    c.conn.get_mut().write_all(&together[..cut]).await.unwrap();
    for id in 20..27 {
        expect_id(&mut c, id).await;
    }
    c.conn.get_mut().write_all(&together[cut..]).await.unwrap();
    expect_id(&mut c, 27).await;
}
