//! `extplug bench client`: the runner bench's load generator, run as a
//! process of its own (as an external client would be), so that the server
//! it measures never shares a runtime or a scheduler queue with it.
//!
//! It keeps `connections` unix-socket connections busy for `seconds`, each
//! sending the same pre-encoded frame and reading the whole answer before the
//! next one, spread over `threads` threads (each a single-threaded runtime,
//! like `wrk -t`). It prints one line: `calls N seconds S p50_us X p99_us Y
//! max_us Z`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// What to drive.
pub struct Client {
    /// The server's socket.
    pub socket: PathBuf,
    /// The file holding the whole frame to send (header and payload).
    pub frame: PathBuf,
    /// Connections kept busy.
    pub connections: usize,
    /// Seconds of load.
    pub seconds: f64,
    /// Threads (at most one per connection).
    pub threads: usize,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Calls answered before the time was up.
    pub calls: u64,
    /// Seconds of load.
    pub seconds: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Largest latency, microseconds.
    pub max_us: f64,
}

impl Summary {
    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    /// The line the client prints.
    pub fn line(&self) -> String {
        format!(
            "calls {} seconds {:.3} p50_us {:.1} p99_us {:.1} max_us {:.1}",
            self.calls, self.seconds, self.p50_us, self.p99_us, self.max_us
        )
    }

    /// Reads [`Summary::line`]'s text back.
    ///
    /// # Errors
    /// The text is not such a line (it names what is missing).
    pub fn parse(line: &str) -> Result<Summary, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| -> Result<f64, String> {
            let at = words
                .iter()
                .position(|w| *w == name)
                .ok_or_else(|| format!("no `{name}` in the client's line {line:?}"))?;
            words
                .get(at + 1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("`{name}` is not a number in the client's line {line:?}"))
        };
        Ok(Summary {
            calls: field("calls")? as u64,
            seconds: field("seconds")?,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
            max_us: field("max_us")?,
        })
    }
}

/// Runs the load and returns what it measured.
///
/// # Errors
/// The frame file cannot be read or is not a frame, a connection fails, or
/// the server answers something other than a call answer (type 2): the
/// message says which, with the server's socket.
pub fn run(client: &Client) -> Result<Summary, String> {
    let frame = std::fs::read(&client.frame)
        .map_err(|e| format!("reading the frame {}: {e}", client.frame.display()))?;
    if frame.len() < 4 {
        return Err(format!("{} holds no frame", client.frame.display()));
    }
    let connections = client.connections.max(1);
    let threads = client.threads.clamp(1, connections);
    let duration = Duration::from_secs_f64(client.seconds);
    // Every thread connects first; the clock starts when all are connected.
    let ready = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let frame: std::sync::Arc<[u8]> = frame.into();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let n = connections / threads + usize::from(t < connections % threads);
            let (socket, frame, ready) = (client.socket.clone(), frame.clone(), ready.clone());
            std::thread::spawn(move || thread(&socket, &frame, n, duration, &ready))
        })
        .collect();
    ready.wait();
    let mut latencies = Vec::new();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a client thread panicked".to_owned()),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    latencies.sort_unstable();
    let pick = |q: f64| -> f64 {
        match latencies.len() {
            0 => 0.0,
            n => latencies[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0,
        }
    };
    Ok(Summary {
        calls: latencies.len() as u64,
        seconds: client.seconds,
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        max_us: pick(1.0),
    })
}

/// One thread: `n` connections on a single-threaded runtime; the latency of
/// every call answered in time, in nanoseconds.
fn thread(
    socket: &Path,
    frame: &std::sync::Arc<[u8]>,
    n: usize,
    duration: Duration,
    ready: &std::sync::Barrier,
) -> Result<Vec<u64>, String> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ready.wait();
            return Err(format!("starting a client runtime: {e}"));
        }
    };
    runtime.block_on(async {
        let mut streams = Vec::with_capacity(n);
        let mut failure = None;
        for _ in 0..n {
            match UnixStream::connect(socket).await {
                Ok(s) => streams.push(s),
                Err(e) => {
                    failure = Some(format!("connecting to {}: {e}", socket.display()));
                    break;
                }
            }
        }
        ready.wait();
        if let Some(e) = failure {
            return Err(e);
        }
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|s| tokio::spawn(connection(s, frame.clone(), deadline)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            let mut l = t
                .await
                .map_err(|e| format!("a client task failed: {e}"))??;
            all.append(&mut l);
        }
        Ok(all)
    })
}

/// Sends `frame` on `stream` and reads the answer frame: its type is
/// returned, its payload left in `buf` (resized to it).
///
/// # Errors
/// The write or the read failed; the message says which.
pub async fn call(stream: &mut UnixStream, frame: &[u8], buf: &mut Vec<u8>) -> Result<u8, String> {
    stream
        .write_all(frame)
        .await
        .map_err(|e| format!("sending a call: {e}"))?;
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("reading an answer: {e}"))?;
    let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
    buf.resize(len, 0);
    stream
        .read_exact(buf)
        .await
        .map_err(|e| format!("reading an answer of {len} bytes: {e}"))?;
    Ok(header[0])
}

/// One connection: send, read the whole answer, again, until `deadline`.
async fn connection(
    mut stream: UnixStream,
    frame: std::sync::Arc<[u8]>,
    deadline: Instant,
) -> Result<Vec<u64>, String> {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let start = Instant::now();
        if start >= deadline {
            return Ok(latencies);
        }
        let kind = call(&mut stream, &frame, &mut buf).await?;
        if kind != 2 {
            return Err(format!(
                "the server answered a frame of type {kind} (expected 2, a call answer): {}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            ));
        }
        let end = Instant::now();
        if end <= deadline {
            latencies.push((end - start).as_nanos() as u64);
        }
    }
}
