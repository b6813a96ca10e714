//! The real `demo-runner` speaking APISIX's wire: to a client in Python
//! built on APISIX's own generated classes (`tests/fixtures/a6_client.py`, no
//! code shared with extplug), and, from Rust, with the protocol pinned.
//!
//! The Python packages (`a6pluginprotos`, APISIX's FlatBuffers classes for
//! its Python runner, and `flatbuffers`) are installed with pip into a
//! virtual environment under the target directory the first time
//! ([`crate::support::python`]).

use crate::support::{get, python, Answer, RunnerProc};
use extplug::wire::apisix::{self, ApisixEncode};
use extplug::wire::{ErrorCode, FrameCodec, PrepareConf, Protocol};
use runner_sdk::RequestOutcome;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Both wires on one runner at once: a Cap'n Proto connection stays open
/// (and is used again) around the Python client's APISIX connections, which
/// also call a token it prepared.
#[tokio::test]
async fn a_python_apisix_client_gets_what_apisix_expects() {
    let python = python();
    let mut runner = RunnerProc::start(&[]);
    let mut capnp = runner.client().await;
    let token = capnp.prepare(&[("say", r#"{"body":"capnp"}"#)]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/a6_client.py");
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .arg(&runner.socket)
        .arg(token.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    // The Cap'n Proto connection was served throughout, and still is.
    let outcome = capnp.call(token, get("/")).await.outcome;
    assert!(matches!(outcome, RequestOutcome::Stop(_)), "{outcome:?}");
    assert!(
        runner.child.try_wait().unwrap().is_none(),
        "the runner died"
    );
}

/// One frame of APISIX's wire.
fn apisix_frame<T: ApisixEncode>(message: &T) -> Vec<u8> {
    let mut dst = bytes::BytesMut::new();
    FrameCodec::default()
        .encode_apisix(message, &mut apisix::Builder::new(), &mut dst)
        .unwrap();
    dst.to_vec()
}

/// Reads one frame: its type and payload; `None` at a clean close.
async fn read_frame(stream: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.unwrap();
    Some((header[0], payload))
}

/// A `say` chain, prepared over APISIX's wire on a new connection: its token.
async fn apisix_prepare(socket: &Path) -> u32 {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream.write_all(&apisix_frame(&say())).await.unwrap();
    let (kind, payload) = read_frame(&mut stream).await.unwrap();
    assert_eq!(kind, 1, "{:?}", apisix::error(&payload));
    let token = apisix::prepared(&payload).unwrap().token;
    assert_ne!(token, 0);
    token
}

fn say() -> PrepareConf<'static> {
    PrepareConf {
        conf: vec![("say", r#"{"body":"x"}"#)],
        key: None,
    }
}

#[tokio::test]
async fn pinned_to_apisix_the_runner_refuses_capnp_and_closes() {
    let runner = RunnerProc::start(&[("EXTPLUG_RUNNER_PROTOCOL", "apisix")]);
    // A Cap'n Proto prepare: APISIX's BAD_REQUEST, then the close.
    let mut capnp = runner.client().await;
    capnp
        .conn
        .get_mut()
        .write_all(&{
            let mut dst = bytes::BytesMut::new();
            tokio_util::codec::Encoder::encode(&mut FrameCodec::default(), &say(), &mut dst)
                .unwrap();
            dst
        })
        .await
        .unwrap();
    let (kind, payload) = read_frame(capnp.conn.get_mut()).await.expect("an answer");
    assert_eq!(kind, 0);
    assert_eq!(apisix::error(&payload).unwrap().code, ErrorCode::BadRequest);
    assert!(
        read_frame(capnp.conn.get_mut()).await.is_none(),
        "not closed"
    );
    // APISIX's wire is served.
    apisix_prepare(&runner.socket).await;
}

#[tokio::test]
async fn pinned_to_capnp_the_runner_answers_apisix_frames_in_capnp() {
    let runner = RunnerProc::start(&[("EXTPLUG_RUNNER_PROTOCOL", "capnp")]);
    let mut c = runner.client().await;
    let prepare = say();
    assert_eq!(
        Protocol::detect(&apisix_frame(&prepare)[4..]),
        Protocol::Apisix
    );
    c.conn
        .get_mut()
        .write_all(&apisix_frame(&prepare))
        .await
        .unwrap();
    match c.answer().await {
        Some(Answer::Error(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        other => panic!("expected a Cap'n Proto ERROR, got {other:?}"),
    }
    // Kept, as extplug's wire keeps a connection after a bad payload.
    c.prepare(&[("say", r#"{"body":"x"}"#)]).await;
}

/// Empty counts as unset: both wires are served.
#[tokio::test]
async fn an_empty_protocol_variable_serves_both() {
    let runner = RunnerProc::start(&[("EXTPLUG_RUNNER_PROTOCOL", "")]);
    runner
        .client()
        .await
        .prepare(&[("say", r#"{"body":"x"}"#)])
        .await;
    apisix_prepare(&runner.socket).await;
}

/// Noise, valid messages of both wires and corrupted ones, as first and
/// later frames on many connections of a runner that speaks both: each
/// connection gets answers or is closed, and the runner, a Cap'n Proto
/// connection opened before, and new connections of both wires are served.
#[tokio::test]
async fn random_frames_of_both_wires_never_hurt_the_runner() {
    let runner = RunnerProc::start(&[("EXTPLUG_MAX_FRAME", "4096")]);
    let mut good = runner.client().await;
    let token = good.prepare(&[("say", r#"{"body":"x"}"#)]).await;
    let capnp_prepare = {
        let mut b = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut FrameCodec::default(), &say(), &mut b).unwrap();
        b[4..].to_vec()
    };
    let valid = vec![
        capnp_prepare,
        apisix_frame(&say())[4..].to_vec(),
        apisix_frame(&extplug::wire::ReqCall {
            conf_token: token,
            parts: get("/"),
        })[4..]
            .to_vec(),
    ];
    let mut tasks = Vec::new();
    for seed in 1..=40u64 {
        let (socket, valid) = (runner.socket.clone(), valid.clone());
        tasks.push(tokio::spawn(async move {
            // xorshift: the same frames on every run.
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut stream = UnixStream::connect(&socket).await.unwrap();
            for _ in 0..20 {
                let kind = (next() % 6) as u8;
                let mut payload = match next() % 3 {
                    0 | 1 => valid[(next() % 3) as usize].clone(),
                    _ => (0..next() % 200).map(|_| next() as u8).collect(),
                };
                if next() % 2 == 0 && !payload.is_empty() {
                    for _ in 0..3 {
                        let i = (next() % payload.len() as u64) as usize;
                        payload[i] ^= next() as u8;
                    }
                }
                let len = (payload.len() as u32).to_be_bytes();
                let mut frame = vec![kind, len[1], len[2], len[3]];
                frame.extend_from_slice(&payload);
                if stream.write_all(&frame).await.is_err() {
                    return; // closed after a malformed message
                }
                if read_frame(&mut stream).await.is_none() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut runner = runner;
    assert!(
        runner.child.try_wait().unwrap().is_none(),
        "the runner died"
    );
    let outcome = good.call(token, get("/")).await.outcome;
    assert!(matches!(outcome, RequestOutcome::Stop(_)), "{outcome:?}");
    apisix_prepare(&runner.socket).await;
    runner
        .client()
        .await
        .prepare(&[("say", r#"{"body":"x"}"#)])
        .await;
}
