//! A fixed-count load client for a runner, for per-call counts: run the
//! runner under `valgrind --tool=callgrind`, `valgrind --tool=dhat` or
//! `strace -c -f`, send an exact number of calls, and divide.
//!
//! ```text
//! runner-load SOCKET [CONNECTIONS] [CALLS_PER_CONNECTION] [HEADERS] [BODY_BYTES]
//! ```
//!
//! Prepares a `say` chain, then sends `HTTP_REQ_CALL`s (defaults: 16
//! connections, 1000 calls each, 20 headers, no body) of about 2.1 KB with
//! 20 headers and 2 args, each connection one call at a time; checks that
//! every answer is a stop, and prints calls/s and the p50/p99 latency.
//! `BODY_BYTES` > 0 sends a request body up front (`extraInfo`).
//!
//! Plain threads and blocking sockets: the client's own cost stays out of
//! the runner's process, which is what the counts measure.
//!
//! Per-call counts are the difference of two runs (startup cancels out):
//!
//! ```text
//! cargo build --release --example demo-runner --example runner-load
//! export APISIX_LISTEN_ADDRESS=unix:/tmp/r.sock RUST_LOG=warn
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/demo-runner &          # or --tool=dhat,
//! target/release/examples/runner-load /tmp/r.sock 16 300   # or strace -f -c
//! kill -TERM %1; wait; grep totals cg.out             # again with 900 calls
//! ```

use extplug::wire::{
    Encode, FrameCodec, MessageType, Payload, PrepareConf, ReqCall, RequestOutcome, RequestParts,
};
use http::Method;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use tokio_util::codec::Encoder;

fn frame<T: Encode>(msg: &T) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    FrameCodec::default().encode(msg, &mut buf).expect("encode");
    buf.to_vec()
}

/// Reads one frame: (type, payload).
fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    let mut payload = vec![0; len];
    r.read_exact(&mut payload)?;
    Ok((header[0], payload))
}

/// The request: 20 (or `headers`) browser-like headers of about 65 bytes,
/// two args; about 2.1 KB framed with 20 headers.
fn request_frame(token: u32, headers: usize, body: &[u8]) -> Vec<u8> {
    let names: Vec<String> = (0..headers).map(|i| format!("x-header-{i:02}")).collect();
    let value = "v".repeat(50);
    let mut list: Vec<(&str, &str)> = vec![("host", "api.example.com")];
    list.extend(names.iter().skip(1).map(|n| (n.as_str(), value.as_str())));
    let parts = RequestParts {
        id: 7,
        src_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        method: Method::GET,
        path: "/api/v1/users/42",
        args: vec![("page", Some("2")), ("sort", Some("name"))],
        headers: list,
        extra_info: if body.is_empty() {
            vec![]
        } else {
            vec![("$request_body", Some(body))]
        },
    };
    frame(&ReqCall {
        conf_token: token,
        parts,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket = args
        .first()
        .expect("usage: runner-load SOCKET [CONNS] [CALLS] [HEADERS] [BODY]");
    let arg = |i: usize, default: usize| -> usize {
        args.get(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (conns, calls, headers, body) = (arg(1, 16), arg(2, 1000), arg(3, 20), arg(4, 0));

    let mut first = UnixStream::connect(socket).expect("connect");
    first
        .write_all(&frame(&PrepareConf {
            conf: vec![("say", r#"{"body":"ok","headers":{"x-from":"runner"}}"#)],
            key: None,
        }))
        .expect("send PREPARE_CONF");
    let (kind, payload) = read_frame(&mut first).expect("PREPARE_CONF answer");
    let payload = Payload::parse(&payload).expect("payload");
    assert_eq!(
        kind,
        MessageType::PrepareConf as u8,
        "{:?}",
        payload.error()
    );
    let token = payload.prepared().expect("prepared").token;
    drop(first);

    let body = vec![b'b'; body];
    let request = request_frame(token, headers, &body);
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (socket, request) = (socket.clone(), request.clone());
            std::thread::spawn(move || {
                let stream = UnixStream::connect(socket).expect("connect");
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::with_capacity(64 * 1024, stream);
                let mut times = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let t = Instant::now();
                    writer.write_all(&request).expect("send");
                    let (kind, payload) = read_frame(&mut reader).expect("answer");
                    times.push(t.elapsed());
                    assert_eq!(kind, MessageType::HttpReqCall as u8, "not an answer");
                    let answer = Payload::parse(&payload)
                        .and_then(|p| p.req_call_answer())
                        .expect("an answer");
                    assert!(matches!(answer.outcome, RequestOutcome::Stop(_)));
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let elapsed = start.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{} calls over {conns} connections, request frame {} bytes: {:.0} calls/s, p50 {:?}, p99 {:?}",
        times.len(),
        request.len(),
        times.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
}
