//! `extplug bench`: the project's own benchmarks, measured side by side in
//! one run (alternating rounds, medians), so that machine noise hits both
//! sides alike. The end-to-end benchmark against nginx, with an external
//! load generator, is `scripts/bench-e2e.sh`.
//!
//! - `extplug bench runner` ([`runner`]): calls per second and p99 of the
//!   real runner against a bare socket server answering the same frames with
//!   pre-encoded answers (the floor), at several connection counts, header
//!   counts and body sizes; servers and load generator are separate processes.
//! - `extplug bench proxy`: requests per second through the proxy, on a
//!   route with a plugin chain and on one without (its load generator, a
//!   hyper client in this process, is heavier than wrk: for figures to
//!   compare with nginx, use the script).
//! - `extplug bench router` ([`router`]): the route matcher alone, ns per
//!   match at 10 and 10,000 routes (exact URI, prefix, host, no match).
//! - `extplug bench bare-server --socket PATH [--answer FILE]`: the floor.
//! - `extplug bench client ...` ([`client`]): the runner bench's load
//!   generator (hidden; the runner bench starts it for every round).

pub mod client;
pub mod frames;
pub mod router;
pub mod runner;

use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Settings of the proxy bench.
#[derive(Clone, Copy)]
pub struct Load {
    /// Concurrent clients.
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

/// Waits until `socket` accepts connections (20 s at most).
///
/// # Errors
/// It never did.
async fn wait_socket(socket: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).await.is_err() {
        if Instant::now() >= deadline {
            return Err(format!("{} never accepted a connection", socket.display()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
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
