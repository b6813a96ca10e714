//! `extplug bench`: the project's own benchmarks, measured side by side in
//! one run (alternating rounds, medians), so that machine noise hits both
//! sides alike.
//!
//! - `extplug bench runner`: calls per second of the real runner against a
//!   bare socket server that answers the same frames with a canned answer.
//! - `extplug bench proxy`: requests per second through the proxy, on a
//!   route with a plugin chain and on one without.
//! - `extplug bench bare-server --socket PATH`: the bare server itself (the
//!   runner bench starts it as a separate process, like the runner).

use bytes::Bytes;
use extplug::wire::{FrameCodec, PrepareConf, ReqCall, ReqCallAnswer};
use extplug::wire::{RequestOutcome, RequestParts};
use futures::{SinkExt, StreamExt};
use http::Method;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Encoder, Framed};

/// Settings shared by the benches.
#[derive(Clone, Copy)]
pub struct Load {
    /// Concurrent connections (runner) or clients (proxy).
    pub connections: usize,
    /// Seconds per round.
    pub seconds: f64,
    /// Rounds per side.
    pub rounds: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A typical request: a dozen headers, a few args.
fn sample_request(token: u32) -> Vec<u8> {
    let headers = vec![
        ("host", "api.example.com"),
        ("user-agent", "curl/8.0"),
        ("accept", "*/*"),
        ("x-api-key", "bench-key"),
        ("x-request-id", "4f1d2c3b4a5968778695a4b3c2d1e0f0"),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", "en-US,en;q=0.9"),
        ("cache-control", "no-cache"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
        ("x-forwarded-for", "10.1.2.3"),
        ("cookie", "session=abcdef0123456789"),
    ];
    let parts = RequestParts {
        id: 1,
        src_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        method: Method::GET,
        path: "/api/v1/users/42",
        args: vec![("page", Some("2")), ("sort", Some("name")), ("debug", None)],
        headers,
        extra_info: vec![],
    };
    encode(&ReqCall {
        conf_token: token,
        parts,
    })
}

fn encode<T: extplug::wire::Encode>(msg: &T) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    FrameCodec::default()
        .encode(msg, &mut buf)
        .expect("encoding");
    buf.to_vec()
}

/// Serves the bare baseline: every frame is answered with a canned
/// "continue" answer; nothing is decoded.
pub async fn bare_server(socket: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let answer = Bytes::from(encode(&ReqCallAnswer {
        id: 1,
        outcome: RequestOutcome::Continue,
    }));
    loop {
        let (stream, _) = listener.accept().await?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut conn = Framed::with_capacity(stream, FrameCodec::default(), 8192);
            while let Some(Ok(_frame)) = conn.next().await {
                if conn.send((2u8, &answer[4..])).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Runs `load.connections` copies of `client` for `seconds`: each loops
/// until the stop flag is set and returns how many exchanges it completed.
/// Returns exchanges per second.
async fn drive<F, Fut>(load: &Load, seconds: f64, client: F) -> f64
where
    F: Fn(Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..load.connections)
        .map(|_| tokio::spawn(client(stop.clone())))
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap_or(0);
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Warms both sides up, then alternates rounds of `a` and `b` and prints
/// each round, the medians and the median of the per-round ratios b/a.
async fn compare<A, FA, B, FB>(load: &Load, names: [&str; 2], unit: &str, a: A, b: B)
where
    A: Fn(f64) -> FA,
    FA: std::future::Future<Output = f64>,
    B: Fn(f64) -> FB,
    FB: std::future::Future<Output = f64>,
{
    a(0.5).await;
    b(0.5).await;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for round in 0..load.rounds {
        let x = a(load.seconds).await;
        let y = b(load.seconds).await;
        println!(
            "  round {}: {} {x:>9.0} {unit}   {} {y:>9.0} {unit}   ratio {:.2}",
            round + 1,
            names[0],
            names[1],
            y / x
        );
        xs.push(x);
        ys.push(y);
    }
    let ratios: Vec<f64> = ys.iter().zip(&xs).map(|(y, x)| y / x).collect();
    let (mx, my) = (median(xs), median(ys));
    println!(
        "median: {} {mx:.0} {unit}, {} {my:.0} {unit}; ratio {:.2} (median of per-round ratios {:.2})",
        names[0],
        names[1],
        my / mx,
        median(ratios)
    );
}

/// One round against a runner-like socket; calls per second.
async fn drive_runner(socket: &Path, frame: &[u8], load: &Load, seconds: f64) -> f64 {
    let mut streams = Vec::new();
    for _ in 0..load.connections {
        streams.push(std::sync::Mutex::new(Some(
            UnixStream::connect(socket).await.expect("connect"),
        )));
    }
    let streams = Arc::new(streams);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let frame: Arc<[u8]> = frame.into();
    drive(load, seconds, |stop| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let stream = streams[i].lock().unwrap().take();
        let frame = frame.clone();
        async move {
            let mut stream = stream.expect("one stream per client");
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&frame).await.expect("write");
                let mut header = [0u8; 4];
                stream.read_exact(&mut header).await.expect("read");
                let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
                stream.read_exact(&mut buf[..len]).await.expect("read");
                assert_eq!(
                    header[0], 2,
                    "the answer is not a call answer (type {})",
                    header[0]
                );
                n += 1;
            }
            n
        }
    })
    .await
}

async fn wait_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never accepted",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `extplug bench runner`.
pub async fn runner(runner: &Path, chain: &[(String, String)], load: &Load) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runner_sock = dir.path().join("runner.sock");
    let bare_sock = dir.path().join("bare.sock");
    let exe = std::env::current_exe().expect("current exe");
    let _runner = tokio::process::Command::new(runner)
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", runner_sock.display()),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("starting the runner");
    let _bare = tokio::process::Command::new(exe)
        .args(["bench", "bare-server", "--socket"])
        .arg(&bare_sock)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the bare server");
    wait_socket(&runner_sock).await;
    wait_socket(&bare_sock).await;
    let mut conn = Framed::new(
        UnixStream::connect(&runner_sock).await.expect("connect"),
        FrameCodec::default(),
    );
    let conf: Vec<(&str, &str)> = chain
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    conn.send(&PrepareConf { conf, key: None })
        .await
        .expect("prepare");
    let answer = conn.next().await.expect("answer").expect("answer");
    let payload = extplug::wire::Payload::parse(&answer.payload).expect("payload");
    let token = match answer.kind {
        1 => payload.prepared().expect("prepared").token,
        _ => panic!("the runner refused the chain: {:?}", payload.error()),
    };
    let frame = sample_request(token);
    println!(
        "runner bench: {} connections, {} s rounds, {} rounds each, request frame {} bytes, chain {:?}",
        load.connections,
        load.seconds,
        load.rounds,
        frame.len(),
        chain.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
    );
    compare(
        load,
        ["bare", "runner"],
        "calls/s",
        |secs| drive_runner(&bare_sock, &frame, load, secs),
        |secs| drive_runner(&runner_sock, &frame, load, secs),
    )
    .await;
}

/// `extplug bench proxy`.
pub async fn proxy(runner: &Path, chain: &[(String, String)], load: &Load) {
    let upstream = extplug::host::demo::start_echo()
        .await
        .expect("echo upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf: Vec<serde_json::Value> = chain
        .iter()
        .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
        .collect();
    let config = serde_json::json!({
        "listen": "127.0.0.1:0",
        "ext-plugin": { "cmd": [runner.display().to_string()] },
        "routes": [
            { "id": "plain", "uri": "/plain", "upstream": { "nodes": { upstream.to_string(): 1 } } },
            { "id": "plugin", "uri": "/plugin", "upstream": { "nodes": { upstream.to_string(): 1 } },
              "plugins": { "ext-plugin-pre-req": { "conf": conf } } }
        ]
    });
    let path = dir.path().join("bench.json");
    std::fs::write(&path, config.to_string()).expect("writing the config");
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["proxy", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the proxy");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line)
        .await
        .expect("listening line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("extplug listening on http://")
        .expect("listening line")
        .parse()
        .expect("address");
    // The echo upstream answers with JSON of the request: the plugin's
    // changes are visible, so check once that the chain ran.
    let check = http_get(addr, "/plugin").await;
    println!(
        "proxy bench: {} clients, {} s rounds, {} rounds each; /plugin answered {} bytes",
        load.connections, load.seconds, load.rounds, check
    );
    compare(
        load,
        ["no plugin", "with plugin"],
        "req/s",
        |secs| drive_proxy(addr, "/plain", load, secs),
        |secs| drive_proxy(addr, "/plugin", load, secs),
    )
    .await;
    // SIGTERM, so that the proxy removes its runner's directory (SIGKILL
    // would leave it behind); SIGKILL only if it does not stop in time.
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> usize {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: bench\r\nx-api-key: bench-key\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.expect("read");
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    out.len()
}

/// One round of keep-alive HTTP/1.1 clients; requests per second.
async fn drive_proxy(addr: SocketAddr, path: &str, load: &Load, seconds: f64) -> f64 {
    use http_body_util::{BodyExt, Empty};
    let mut senders = Vec::new();
    for _ in 0..load.connections {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("handshake");
        tokio::spawn(conn);
        senders.push(std::sync::Mutex::new(Some(sender)));
    }
    let senders = Arc::new(senders);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    drive(load, seconds, |stop| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let sender = senders[i].lock().unwrap().take();
        let path = path.to_owned();
        async move {
            let mut sender = sender.expect("one connection per client");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(path.as_str())
                    .header("host", "bench")
                    .header("x-api-key", "bench-key")
                    .body(Empty::new())
                    .expect("request");
                let resp = sender.send_request(req).await.expect("request");
                assert!(resp.status().is_success(), "{}", resp.status());
                resp.into_body().collect().await.expect("body");
                n += 1;
            }
            n
        }
    })
    .await
}

/// The default runner: `examples/demo-runner` next to this binary.
pub fn default_runner() -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name("examples").join("demo-runner"))
        .unwrap_or_else(|_| PathBuf::from("target/release/examples/demo-runner"))
}
