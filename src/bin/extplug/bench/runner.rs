//! `extplug bench runner`: the runner against its floor, a bare socket server
//! answering pre-encoded frames, side by side.
//!
//! Both servers are processes of their own, and so is the load generator
//! (`extplug bench client`, started for every round): nothing measured
//! shares a runtime with what measures it. For every case (a number of
//! connections, of headers, a body size) the same frame goes to both servers,
//! and the floor answers with the very bytes the runner answered it with;
//! rounds alternate (floor, runner, floor, ...) and the medians are reported,
//! with each server's CPU time and context switches per call (from `/proc`)
//! and the runner's peak resident memory.

use super::client::Summary;
use super::frames;
use super::{median, wait_socket};
use extplug::wire::{
    apisix, ErrorResp, FrameCodec, Payload, PrepareConf, Prepared, Protocol, ReqCallAnswer,
    RequestOutcome,
};
use futures::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Encoder, Framed};

/// The number of headers of the typical request (about 2.1 KB).
pub const TYPICAL_HEADERS: usize = 20;

/// What `extplug bench runner` measures.
pub struct Suite {
    /// The runner program.
    pub runner: PathBuf,
    /// The chain of every case (a body case puts `body-size` first, so that
    /// the chain needs the body).
    pub chain: Vec<(String, String)>,
    /// The typical request at each of these connection counts.
    pub connections: Vec<usize>,
    /// Requests of each of these header counts, at `growth_connections`.
    pub headers: Vec<usize>,
    /// The typical request with a body of each of these sizes (bytes), at
    /// `growth_connections`.
    pub bodies: Vec<usize>,
    /// Connections of the header and body cases.
    pub growth_connections: usize,
    /// Seconds per round.
    pub seconds: f64,
    /// Rounds per side.
    pub rounds: usize,
    /// Threads of the load generator.
    pub threads: usize,
    /// The wire the load speaks to the runner (the runner tells it from
    /// the first frame, as it does for APISIX). Over APISIX's wire nothing
    /// is sent up front, so the body cases, whose runner would ask the
    /// body with EXTRA_INFO (which the load generator does not answer),
    /// are left out.
    pub protocol: Protocol,
}

struct Case {
    label: String,
    headers: usize,
    body: Option<usize>,
    connections: usize,
}

/// One side's rounds.
#[derive(Default)]
struct Side {
    runs: Vec<Summary>,
    cpu_ticks: u64,
    switches: u64,
}

impl Side {
    fn calls(&self) -> u64 {
        self.runs.iter().map(|s| s.calls).sum()
    }

    /// CPU microseconds per call (`/proc` counts in 1/100 s).
    fn cpu_per_call_us(&self) -> f64 {
        match self.calls() {
            0 => 0.0,
            n => self.cpu_ticks as f64 * 10_000.0 / n as f64,
        }
    }

    /// Context switches per call.
    fn switches_per_call(&self) -> f64 {
        match self.calls() {
            0 => 0.0,
            n => self.switches as f64 / n as f64,
        }
    }

    /// One round: `pid`'s CPU time and context switches around `round`.
    async fn measure<F>(&mut self, pid: u32, round: F) -> Result<(), String>
    where
        F: std::future::Future<Output = Result<Summary, String>>,
    {
        let (ticks, switched) = (cpu_ticks(pid)?, switches(pid));
        self.runs.push(round.await?);
        self.cpu_ticks += cpu_ticks(pid)?.saturating_sub(ticks);
        self.switches += switches(pid).saturating_sub(switched);
        Ok(())
    }
}

/// Runs the suite and prints each round, then a markdown table.
///
/// # Errors
/// The runner or the floor does not start, the runner refuses the chain or
/// does not answer a call with a call answer, or the load generator fails:
/// the message says which.
pub async fn run(suite: &Suite) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let runner_sock = dir.path().join("runner.sock");
    let runner = tokio::process::Command::new(&suite.runner)
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", runner_sock.display()),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the runner {}: {e}", suite.runner.display()))?;
    let runner_pid = runner.id().ok_or("the runner exited at once")?;
    wait_socket(&runner_sock).await?;

    let protocol = suite.protocol;
    let bodies: &[usize] = match protocol {
        Protocol::Capnp => &suite.bodies,
        Protocol::Apisix => {
            if !suite.bodies.is_empty() {
                println!(
                    "runner bench: no body cases over APISIX's wire (the runner would ask \
                     the body with EXTRA_INFO, which the load generator does not answer)"
                );
            }
            &[]
        }
    };
    let base = prepare(&runner_sock, &suite.chain, protocol).await?;
    let mut body_chain = vec![("body-size".to_owned(), "{}".to_owned())];
    body_chain.extend(suite.chain.iter().cloned());
    let body_token = if bodies.is_empty() {
        0
    } else {
        prepare(&runner_sock, &body_chain, protocol).await?
    };

    let mut cases = Vec::new();
    for &c in &suite.connections {
        cases.push(Case {
            label: format!("{TYPICAL_HEADERS} headers, {}", plural(c, "connection")),
            headers: TYPICAL_HEADERS,
            body: None,
            connections: c.max(1),
        });
    }
    let growth = suite.growth_connections.max(1);
    for &h in &suite.headers {
        cases.push(Case {
            label: format!("{h} headers, {}", plural(growth, "connection")),
            headers: h,
            body: None,
            connections: growth,
        });
    }
    for &b in bodies {
        cases.push(Case {
            label: format!("{} body, {}", human_bytes(b), plural(growth, "connection")),
            headers: TYPICAL_HEADERS,
            body: Some(b),
            connections: growth,
        });
    }

    println!(
        "runner bench: {} against a bare socket server (the floor), over the {} wire, chain {:?} \
         (body cases: {:?}); {} rounds of {} s per side, alternating; load from a separate \
         process ({} threads)",
        suite.runner.display(),
        protocol,
        names(&suite.chain),
        names(&body_chain),
        suite.rounds,
        suite.seconds,
        suite.threads,
    );
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let token = if case.body.is_some() {
            body_token
        } else {
            base
        };
        let frame = frames::request(token, case.headers, case.body, protocol)?;
        let answer = answer_of(&runner_sock, &frame, protocol).await?;
        let frame_file = dir.path().join(format!("frame-{i}"));
        let answer_file = dir.path().join(format!("answer-{i}"));
        std::fs::write(&frame_file, &frame).map_err(|e| format!("writing the frame: {e}"))?;
        std::fs::write(&answer_file, &answer).map_err(|e| format!("writing the answer: {e}"))?;
        let floor_sock = dir.path().join(format!("floor-{i}.sock"));
        let floor = tokio::process::Command::new(exe()?)
            .args(["bench", "bare-server", "--socket"])
            .arg(&floor_sock)
            .arg("--answer")
            .arg(&answer_file)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting the floor: {e}"))?;
        let floor_pid = floor.id().ok_or("the floor exited at once")?;
        wait_socket(&floor_sock).await?;

        let load = |socket: PathBuf, seconds: f64| {
            let frame_file = frame_file.clone();
            let (connections, threads) = (case.connections, suite.threads);
            async move { client(&socket, &frame_file, connections, seconds, threads).await }
        };
        let warm_up = suite.seconds.min(0.5);
        load(floor_sock.clone(), warm_up).await?;
        load(runner_sock.clone(), warm_up).await?;
        let (mut f, mut r) = (Side::default(), Side::default());
        for round in 0..suite.rounds {
            f.measure(floor_pid, load(floor_sock.clone(), suite.seconds))
                .await?;
            r.measure(runner_pid, load(runner_sock.clone(), suite.seconds))
                .await?;
            let (a, b) = (f.runs[round], r.runs[round]);
            println!(
                "  {}, round {}: floor {:>8.0} calls/s p99 {:>7.1} µs   runner {:>8.0} calls/s p99 {:>7.1} µs   ratio {:.2}",
                case.label,
                round + 1,
                a.rate(),
                a.p99_us,
                b.rate(),
                b.p99_us,
                b.rate() / a.rate().max(f64::MIN_POSITIVE)
            );
        }
        drop(floor);
        rows.push(row(case, frame.len(), &f, &r));
    }
    println!();
    println!("| case | frame | floor calls/s | floor p99 | runner calls/s | runner p99 | ratio | p99 ratio | CPU per call, floor / runner | context switches per call, floor / runner |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    println!();
    println!(
        "runner resident memory (VmRSS / VmHWM): {}",
        memory(runner_pid)?
    );
    Ok(())
}

fn row(case: &Case, frame: usize, f: &Side, r: &Side) -> String {
    let ratio = |get: fn(&Summary) -> f64| {
        median(
            r.runs
                .iter()
                .zip(&f.runs)
                .map(|(b, a)| get(b) / get(a).max(f64::MIN_POSITIVE))
                .collect(),
        )
    };
    let med = |s: &Side, get: fn(&Summary) -> f64| median(s.runs.iter().map(get).collect());
    format!(
        "| {} | {} | {:.0} | {:.0} µs | {:.0} | {:.0} µs | {:.2} | {:.2} | {:.1} µs / {:.1} µs | {:.2} / {:.2} |",
        case.label,
        human_bytes(frame),
        med(f, Summary::rate),
        med(f, |s| s.p99_us),
        med(r, Summary::rate),
        med(r, |s| s.p99_us),
        ratio(Summary::rate),
        ratio(|s| s.p99_us),
        f.cpu_per_call_us(),
        r.cpu_per_call_us(),
        f.switches_per_call(),
        r.switches_per_call(),
    )
}

fn names(chain: &[(String, String)]) -> Vec<&str> {
    chain.iter().map(|(n, _)| n.as_str()).collect()
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `1 KiB`, `64 KiB`, `1 MiB`, `2103 B`.
pub fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("finding this program's path: {e}"))
}

/// Prepares `chain` on the runner over `protocol`; its token.
async fn prepare(
    socket: &Path,
    chain: &[(String, String)],
    protocol: Protocol,
) -> Result<u32, String> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to the runner: {e}"))?;
    let conf: Vec<(&str, &str)> = chain
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let req = PrepareConf { conf, key: None };
    let frame =
        frames::encode(&req, protocol).map_err(|e| format!("encoding PREPARE_CONF: {e}"))?;
    let mut payload = Vec::new();
    let kind = super::client::call(&mut stream, &frame, &mut payload)
        .await
        .map_err(|e| format!("PREPARE_CONF: {e}"))?;
    match kind {
        1 => Ok(prepared(&payload, protocol)?.token),
        _ => Err(format!(
            "the runner refused the chain {:?}: {}",
            names(chain),
            error_text(&payload, protocol)
        )),
    }
}

/// A PREPARE_CONF answer in `protocol`'s encoding.
fn prepared(payload: &[u8], protocol: Protocol) -> Result<Prepared, String> {
    match protocol {
        Protocol::Capnp => Payload::parse(payload).and_then(|p| p.prepared()),
        Protocol::Apisix => apisix::prepared(payload),
    }
    .map_err(|e| e.to_string())
}

/// What an ERROR frame in `protocol`'s encoding says (APISIX's: its code).
fn error_text(payload: &[u8], protocol: Protocol) -> String {
    let error = match protocol {
        Protocol::Capnp => Payload::parse(payload).and_then(|p| p.error()),
        Protocol::Apisix => apisix::error(payload),
    };
    match error {
        Ok(ErrorResp { code, message }) if message.is_empty() => code.to_string(),
        Ok(ErrorResp { message, .. }) => message,
        Err(e) => e.to_string(),
    }
}

/// Sends `frame` once on a new connection; the runner's whole answer frame,
/// which must be a call answer (not an error, not an EXTRA_INFO request).
async fn answer_of(socket: &Path, frame: &[u8], protocol: Protocol) -> Result<Vec<u8>, String> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to the runner: {e}"))?;
    let mut payload_bytes = Vec::new();
    let kind = super::client::call(&mut stream, frame, &mut payload_bytes)
        .await
        .map_err(|e| format!("the runner: {e}"))?;
    match kind {
        2 => {
            match protocol {
                Protocol::Capnp => Payload::parse(&payload_bytes).and_then(|p| p.req_call_answer()),
                Protocol::Apisix => apisix::req_call_answer(&payload_bytes),
            }
            .map_err(|e| format!("the runner's call answer: {e}"))?;
            // The whole frame, as the floor sends it back.
            let len = payload_bytes.len() as u32;
            let mut answer = Vec::with_capacity(4 + payload_bytes.len());
            answer.push(kind);
            answer.extend_from_slice(&len.to_be_bytes()[1..]);
            answer.extend_from_slice(&payload_bytes);
            Ok(answer)
        }
        0 => Err(format!(
            "the runner failed the call: {}",
            error_text(&payload_bytes, protocol)
        )),
        kind => Err(format!(
            "the runner answered the call with a frame of type {kind} (expected 2): \
             the frame does not carry what the chain needs"
        )),
    }
}

/// One round of `extplug bench client`, a process of its own.
async fn client(
    socket: &Path,
    frame: &Path,
    connections: usize,
    seconds: f64,
    threads: usize,
) -> Result<Summary, String> {
    let out = tokio::process::Command::new(exe()?)
        .args(["bench", "client", "--socket"])
        .arg(socket)
        .arg("--frame")
        .arg(frame)
        .args(["--connections", &connections.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(["--threads", &threads.to_string()])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("starting the load generator: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the load generator against {} failed ({}): {}",
            socket.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Summary::parse(stdout.lines().last().unwrap_or(""))
}

/// User plus system CPU time of a process, in 1/100 s (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    // After the command name (in parentheses, which may hold spaces): state
    // is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(format!("/proc/{pid}/stat has no CPU times: {stat:?}")),
    }
}

/// Context switches (voluntary and involuntary) of all of a process's
/// threads, from `/proc/PID/task/*/status`; 0 when unreadable.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// `VmRSS / VmHWM` of a process, in MiB.
fn memory(pid: u32) -> Result<String, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(format!(
        "{:.1} MiB / {:.1} MiB",
        kib("VmRSS:") / 1024.0,
        kib("VmHWM:") / 1024.0
    ))
}

/// Serves the floor: every frame read is answered with `answer` (a whole
/// frame, written as it is; by default a canned *continue*). Nothing is
/// decoded.
///
/// # Errors
/// The answer file cannot be read or is not a frame, or the socket cannot be
/// bound or accept.
pub async fn bare_server(socket: &Path, answer: Option<&Path>) -> std::io::Result<()> {
    let answer: std::sync::Arc<[u8]> = match answer {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
            })?;
            if bytes.len() < 4 {
                return Err(std::io::Error::other(format!(
                    "{} holds no frame",
                    path.display()
                )));
            }
            bytes.into()
        }
        None => {
            let mut buf = bytes::BytesMut::new();
            FrameCodec::default()
                .encode(
                    &ReqCallAnswer {
                        id: 1,
                        outcome: RequestOutcome::Continue,
                    },
                    &mut buf,
                )
                .map_err(std::io::Error::other)?;
            buf.to_vec().into()
        }
    };
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut conn = Framed::with_capacity(stream, FrameCodec::default(), 8192);
            while let Some(Ok(_frame)) = conn.next().await {
                // The frame as it is: the codec's raw-frame encoder adds the
                // header again from the payload.
                if conn.send((answer[0], &answer[4..])).await.is_err() {
                    return;
                }
            }
        });
    }
}
