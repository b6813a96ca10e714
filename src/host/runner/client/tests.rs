//! The client's unit tests: the idle pool, closed pooled connections,
//! and the token cache's pruning.

use super::call::ExtClient;
use super::pool::PooledConn;
use crate::host::config::PhaseConf;
use crate::host::runner::supervisor::RunnerState;
use crate::wire::{FrameCodec, MessageType, Needs};
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
        conn: Framed::new(ours, FrameCodec::default()),
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
