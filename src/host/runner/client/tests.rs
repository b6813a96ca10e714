//! The client's unit tests: the idle pool, closed pooled connections,
//! and the token cache's pruning.

use super::call::ExtClient;
use super::error::{CallError, Failure};
use super::pool::PooledConn;
use super::wire::HostCodec;
use crate::host::config::PhaseConf;
use crate::host::runner::supervisor::RunnerState;
use crate::wire::{FrameCodec, MessageType, Needs, Protocol};
use futures::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::codec::Framed;

fn phase(key: &str) -> PhaseConf {
    PhaseConf {
        conf: Vec::new(),
        allow_degradation: false,
        extra_info: Vec::new(),
        runner: crate::host::config::DEFAULT_RUNNER.to_owned(),
        key: key.to_owned(),
    }
}

/// A connection for `generation` on one end of a socket pair (the
/// other end returned, to keep it open).
fn pooled(client: &ExtClient, generation: u64) -> (PooledConn, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let conn = PooledConn {
        conn: Framed::new(ours, HostCodec::new(Protocol::Capnp)),
        generation,
        lease: None,
        permit: None,
        reused: false,
        _counted: client.metrics.connection(),
    };
    (conn, theirs)
}

fn ready(generation: u64) -> RunnerState {
    RunnerState::Ready {
        socket: Arc::new(PathBuf::from("/nonexistent")),
        generation,
        pid: 1,
    }
}

/// The idle pool holds at most `pool_size` connections, and none to a
/// runner replaced since: a call that ends on the old runner after the
/// switch drops its connection, and old ones still idle make room for
/// the new runner's.
#[tokio::test]
async fn the_idle_pool_keeps_pool_size_connections_to_the_current_runner() {
    let mut conf =
        crate::host::config::Config::parse(r#"{"ext-plugin": {"cmd": ["runner"]}, "routes": []}"#)
            .expect("a valid configuration")
            .runner;
    conf.pool_size = 2;
    let (tx, rx) = watch::channel(ready(1));
    let client = ExtClient::new(&conf, rx);
    let mut peers = Vec::new();
    let mut out = Vec::new();
    for _ in 0..3 {
        let (conn, peer) = pooled(&client, 1);
        out.push(conn);
        peers.push(peer);
    }
    let generations = |client: &ExtClient| -> Vec<u64> {
        client
            .pool
            .idle
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.generation)
            .collect()
    };
    client.checkin(out.pop().unwrap());
    client.checkin(out.pop().unwrap());
    tx.send(ready(2)).unwrap();
    // The last call on the old runner ends after the switch.
    client.checkin(out.pop().unwrap());
    assert_eq!(generations(&client), [1, 1]);
    let (new, _peer) = pooled(&client, 2);
    client.checkin(new);
    assert_eq!(generations(&client), [2]);
    let (new, _peer2) = pooled(&client, 2);
    client.checkin(new);
    let (new, _peer3) = pooled(&client, 2);
    client.checkin(new);
    assert_eq!(generations(&client), [2, 2], "at most pool_size idle");
}

/// Pooled connections the runner closed, before the reactor saw it
/// (they look open): the call's write fails on each, nothing was sent,
/// so the call goes on the next one, and then on a new connection, and
/// is answered. (Before, it was sent once more only, on the next
/// pooled connection, closed too: the call failed.)
#[tokio::test]
async fn a_call_goes_past_every_closed_pooled_connection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runner.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    // The runner: answers one PREPARE_CONF per connection.
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = Framed::new(stream, FrameCodec::default());
                if let Some(Ok(frame)) = conn.next().await {
                    assert_eq!(frame.kind, MessageType::PrepareConf as u8);
                    let answer = crate::wire::Prepared {
                        token: 9,
                        needs: Needs::default(),
                    };
                    conn.send(&answer).await.unwrap();
                }
            });
        }
    });
    let mut conf =
        crate::host::config::Config::parse(r#"{"ext-plugin": {"cmd": ["runner"]}, "routes": []}"#)
            .expect("a valid configuration")
            .runner;
    conf.pool_size = 4;
    let (_tx, rx) = watch::channel(RunnerState::Ready {
        socket: Arc::new(socket),
        generation: 1,
        pid: std::process::id(),
    });
    let client = ExtClient::new(&conf, rx);
    for _ in 0..3 {
        let (conn, peer) = pooled(&client, 1);
        drop(peer);
        client.checkin(conn);
    }
    // No await since: the runtime has not polled its reactor.
    let ticket = client.ticket(&phase("route-1")).await.unwrap();
    assert_eq!(ticket.token, 9);
    assert_eq!(
        client.pool.idle.lock().unwrap().len(),
        1,
        "the new connection"
    );
}

/// A runner that dies with our call unread in its socket (killed with
/// calls queued, or while its threads were still exiting): the socket
/// reports a reset, not an end of stream, so the call was never read
/// and goes again, on the next connection, and is answered. One that
/// read the call and closed is an end of stream: that call fails.
#[tokio::test]
async fn a_call_the_runner_never_read_goes_again_after_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runner.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    // The runner's first connection: waits for our call to arrive, then
    // closes without reading it (a reset for us). The others answer.
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((stream, _)) = listener.accept().await {
            if std::mem::take(&mut first) {
                tokio::spawn(async move {
                    stream.readable().await.unwrap();
                    drop(stream);
                });
                continue;
            }
            tokio::spawn(async move {
                let mut conn = Framed::new(stream, FrameCodec::default());
                if let Some(Ok(_)) = conn.next().await {
                    let answer = crate::wire::Prepared {
                        token: 7,
                        needs: Needs::default(),
                    };
                    conn.send(&answer).await.unwrap();
                }
            });
        }
    });
    let conf =
        crate::host::config::Config::parse(r#"{"ext-plugin": {"cmd": ["runner"]}, "routes": []}"#)
            .expect("a valid configuration")
            .runner;
    let (_tx, rx) = watch::channel(RunnerState::Ready {
        socket: Arc::new(socket),
        generation: 1,
        pid: std::process::id(),
    });
    let client = ExtClient::new(&conf, rx);
    let ticket = client.ticket(&phase("route-1")).await.unwrap();
    assert_eq!(ticket.token, 7);

    // Read, then closed: an end of stream, and the call fails.
    let (conn, peer) = pooled(&client, 1);
    let reader = tokio::spawn(async move {
        let mut peer = Framed::new(peer, FrameCodec::default());
        peer.next().await.unwrap().unwrap();
    });
    let prepare = crate::wire::PrepareConf {
        conf: vec![("say", "{}")],
        key: None,
    };
    let failed = client
        .exchange_on(conn, &prepare, MessageType::PrepareConf, None, false)
        .await;
    reader.await.unwrap();
    assert!(
        matches!(failed, Err(Failure::Call(CallError::Broken(_)))),
        "a call the runner read is not sent again"
    );
}

#[test]
fn pruning_keeps_the_slots_route_phases_hold_and_drops_the_others() {
    let conf =
        crate::host::config::Config::parse(r#"{"ext-plugin": {"cmd": ["runner"]}, "routes": []}"#)
            .expect("a valid configuration")
            .runner;
    let (_tx, rx) = watch::channel(RunnerState::Stopped);
    let client = ExtClient::new(&conf, rx);
    let held = client.phase_slot(&phase("route-1"));
    drop(client.phase_slot(&phase("route-2")));
    drop(client.phase_slot(&phase("route-3")));
    assert_eq!(client.prune_slots(), 2);
    assert_eq!(client.prune_slots(), 0);
    // The held slot is the one the cache still has.
    assert!(Arc::ptr_eq(
        &client.phase_slot(&phase("route-1")).0,
        &held.0
    ));
    drop(held);
    assert_eq!(client.prune_slots(), 1);
}

/// On APISIX's wire: a call answered CONF_TOKEN_NOT_FOUND is prepared
/// again and sent again, as APISIX does, and every connection that
/// carried an ERROR is closed rather than pooled (APISIX closes after any
/// error). The fake runner here speaks only APISIX's wire: each
/// connection counts, and the first call on any fails until the runner
/// has prepared twice.
#[tokio::test]
async fn on_apisix_wire_token_not_found_prepares_again_and_errors_close_the_connection() {
    use crate::wire::apisix::{self, ApisixEncode};
    use crate::wire::{ErrorCode, ErrorResp, Prepared, ReqCallAnswer, RequestOutcome};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runner.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let connections = Arc::new(AtomicU32::new(0));
    let prepared = Arc::new(AtomicU32::new(0));
    let (c, p) = (connections.clone(), prepared.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let p = p.clone();
            tokio::spawn(async move {
                let mut builder = apisix::Builder::new();
                let mut send = |msg: &dyn Fn(&mut apisix::Builder) -> (u8, Vec<u8>)| {
                    let (kind, payload) = msg(&mut builder);
                    let mut frame = vec![kind];
                    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
                    frame.extend_from_slice(&payload);
                    frame
                };
                loop {
                    let mut header = [0u8; 4];
                    if stream.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
                    let mut payload = vec![0; len];
                    stream.read_exact(&mut payload).await.unwrap();
                    let out = match header[0] {
                        1 => {
                            apisix::prepare_conf(&payload).expect("an APISIX prepare");
                            let token = p.fetch_add(1, Ordering::SeqCst) + 1;
                            send(&|b| {
                                (
                                    1,
                                    Prepared {
                                        token,
                                        needs: Needs::default(),
                                    }
                                    .write(b)
                                    .unwrap()
                                    .to_vec(),
                                )
                            })
                        }
                        2 => {
                            let call = apisix::req_call(&payload).expect("an APISIX call");
                            if call.conf_token < 2 {
                                send(&|b| {
                                    (
                                        0,
                                        ErrorResp {
                                            code: ErrorCode::ConfTokenNotFound,
                                            message: String::new(),
                                        }
                                        .write(b)
                                        .unwrap()
                                        .to_vec(),
                                    )
                                })
                            } else {
                                let id = call.parts.id;
                                send(&|b| {
                                    (
                                        2,
                                        ReqCallAnswer {
                                            id,
                                            outcome: RequestOutcome::Continue,
                                        }
                                        .write(b)
                                        .unwrap()
                                        .to_vec(),
                                    )
                                })
                            }
                        }
                        other => panic!("unexpected frame type {other}"),
                    };
                    stream.write_all(&out).await.unwrap();
                }
            });
        }
    });
    let mut conf = crate::host::config::Config::parse(
        r#"{"ext-plugin": {"cmd": ["runner"], "protocol": "apisix"}, "routes": []}"#,
    )
    .expect("a valid configuration")
    .runner;
    conf.pool_size = 4;
    let (_tx, rx) = watch::channel(RunnerState::Ready {
        socket: Arc::new(socket),
        generation: 1,
        pid: std::process::id(),
    });
    let client = ExtClient::new(&conf, rx);
    let phase = phase("route-1");
    let ticket = client.ticket(&phase).await.unwrap();
    assert_eq!(ticket.token, 1);
    assert!(ticket.needs.is_empty(), "APISIX's wire declares no needs");
    let parts = crate::wire::RequestParts {
        id: client.next_id(),
        src_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        method: http::Method::GET,
        path: "/",
        args: vec![],
        headers: vec![("host", "example.com")],
        extra_info: vec![],
    };
    struct NoInfo;
    #[async_trait::async_trait]
    impl super::InfoProvider for NoInfo {
        async fn provide(&mut self, _: crate::wire::InfoKey<'_>) -> Option<bytes::Bytes> {
            None
        }
    }
    let outcome = client
        .call_request(&phase, &ticket, parts, &mut NoInfo)
        .await
        .unwrap();
    assert_eq!(outcome, RequestOutcome::Continue);
    assert_eq!(prepared.load(Ordering::SeqCst), 2, "prepared again once");
    // The first prepare's connection, which the call then took and closed
    // after its ERROR, and a new one for the second prepare and the call
    // (pooled only, it would have carried all of it).
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(client.pool.idle.lock().unwrap().len(), 1);
}
