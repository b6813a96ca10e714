//! Misbehaving and instrumented runners for the host's integration tests
//! (go-plugin's trick: real processes, no mocks). `BAD_RUNNER_MODE` picks one:
//!
//! - `never-listen`: starts and never opens its socket.
//! - `ignore-sigterm`: the example plugins, but SIGTERM is logged and ignored.
//! - `scripted`: a hand-written protocol server whose answers depend on the
//!   request path (see [`scripted_answer`]); it reports what it received in
//!   request header `x-seen` (JSON), so the upstream records it. With
//!   `BAD_RUNNER_REFUSE_AFTER=N`, PREPARE_CONF is answered `badRequest`
//!   after the first N (a runner upgraded under a running host). `x-seen`
//!   also counts the connections: `accepted` so far, `open_max` at once.
//!   `/pause` is answered after 100 ms; `BAD_RUNNER_MAX_CONNECTIONS=N`
//!   accepts no connection while N are open; `/close-after` closes the
//!   connection once answered. Attacker's answers, each a runner no SDK
//!   would let a plugin build: `/set-path` rewrites the path to the
//!   query's `to` (a plugin building a path from client data);
//!   `/set-host` sets `Host` to the query's `to` (and, with `then=delete`,
//!   lists `host` again to delete); `/stop-headers` stops
//!   and `/rewrite-headers` rewrites with the query's `n` headers; a
//!   response-phase call (HTTP_RESP_CALL) answers with the number of
//!   headers in the upstream's `x-answer-headers`, or changes nothing.
//! - `foreign-listener`: never listens itself; starts another process, in a
//!   process group of its own, that serves the socket in `scripted` mode (a
//!   process that is not the runner answering in its place).
//! - `hijack-after-ready`: `scripted`, but after its first connection (the
//!   host's readiness check; `BAD_RUNNER_HIJACK_AFTER=N`: its Nth)
//!   host's readiness check) starts such a foreign process, which replaces
//!   the socket with its own.
//! - `relay`: starts the real `demo-runner` (`RELAY_TARGET`) on a socket of
//!   its own and relays every frame both ways, counting frames by type in
//!   `RELAY_COUNT_FILE` (`type:count` lines), to count round trips.
//! - `connect`: not a runner but a client: connects to the socket named by
//!   `APISIX_LISTEN_ADDRESS`, sends one PREPARE_CONF (a `say` chain) and
//!   prints on stdout `answered type N` or `closed` (the runner closed the
//!   connection unanswered). Run as another uid to test the runner's peer check.

#[path = "../../examples/plugins/mod.rs"]
mod plugins;

use extplug::wire::{
    ErrorCode, ErrorResp, Frame, FrameCodec, MessageType, Payload, Prepared, ReqCallAnswer,
};
use futures::{SinkExt, StreamExt};
use runner_sdk::{RequestOutcome, Rewrite, StatusCode, Stop};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

fn socket_path() -> PathBuf {
    let addr = std::env::var("APISIX_LISTEN_ADDRESS").expect("APISIX_LISTEN_ADDRESS");
    PathBuf::from(addr.strip_prefix("unix:").expect("unix: address"))
}

#[tokio::main]
async fn main() {
    runner_sdk::runner::init_logging();
    match std::env::var("BAD_RUNNER_MODE")
        .unwrap_or_default()
        .as_str()
    {
        "never-listen" => {
            eprintln!("bad-runner: never listening");
            std::future::pending::<()>().await;
        }
        "ignore-sigterm" => ignore_sigterm().await,
        "scripted" => scripted(false).await,
        "hijack-after-ready" => scripted(true).await,
        "foreign-listener" => {
            // Blocks the main thread: this mode has nothing else to do.
            let status = spawn_foreign().wait();
            eprintln!("bad-runner: the foreign listener exited: {status:?}");
        }
        "relay" => relay().await,
        "connect" => connect().await,
        other => panic!("unknown BAD_RUNNER_MODE {other:?}"),
    }
}

async fn ignore_sigterm() {
    let env = runner_sdk::runner::RunnerEnv::from_env().expect("runner env");
    tokio::spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        loop {
            term.recv().await;
            eprintln!("bad-runner: SIGTERM received and ignored");
        }
    });
    // Never cancelled: only SIGKILL stops this one.
    let never = CancellationToken::new();
    runner_sdk::Runner::new()
        .plugins(plugins::all())
        .serve(env, never)
        .await
        .unwrap();
}

/// State shared by the scripted runner's connections.
#[derive(Default)]
struct Script {
    next_token: AtomicU32,
    prepares: AtomicU32,
    failed_once: AtomicBool,
    /// PREPARE_CONFs accepted before every later one is refused.
    refuse_after: Option<u32>,
    /// Connections accepted so far, open now, and open at most at once
    /// (reported in `x-seen`: the host's pool at work).
    accepted: AtomicU32,
    open: AtomicU32,
    open_max: AtomicU32,
}

/// Starts a copy of this program in `scripted` mode, in a process group of
/// its own (so it is not part of the runner's group), killed when we die.
/// Called on the main thread: the parent-death signal follows the thread
/// that forked, and the main thread lives as long as we do.
#[allow(unsafe_code)]
fn spawn_foreign() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.env("BAD_RUNNER_MODE", "scripted").process_group(0);
    // SAFETY: one async-signal-safe system call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The scripted server; with `hijack`, a foreign process takes the socket
/// over after the first connection.
async fn scripted(hijack: bool) {
    let path = socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    eprintln!(
        "bad-runner: pid {} listening on its socket",
        std::process::id()
    );
    let script = Arc::new(Script {
        refuse_after: std::env::var("BAD_RUNNER_REFUSE_AFTER")
            .ok()
            .map(|n| n.parse().expect("BAD_RUNNER_REFUSE_AFTER is a number")),
        ..Script::default()
    });
    let mut foreign = None;
    let hijack_after: u32 = std::env::var("BAD_RUNNER_HIJACK_AFTER")
        .map(|n| n.parse().expect("BAD_RUNNER_HIJACK_AFTER is a number"))
        .unwrap_or(1);
    // `BAD_RUNNER_MAX_CONNECTIONS=N`: no connection is accepted while N
    // are open (an SDK's connection cap): the others wait in the backlog.
    let cap: Option<u32> = std::env::var("BAD_RUNNER_MAX_CONNECTIONS")
        .ok()
        .map(|n| n.parse().expect("BAD_RUNNER_MAX_CONNECTIONS is a number"));
    let mut accepted = 0u32;
    loop {
        while cap.is_some_and(|cap| script.open.load(Ordering::SeqCst) >= cap) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (stream, _) = listener.accept().await.unwrap();
        accepted += 1;
        if hijack && foreign.is_none() && accepted >= hijack_after {
            foreign = Some(spawn_foreign());
        }
        let script = script.clone();
        script.accepted.fetch_add(1, Ordering::SeqCst);
        let open = script.open.fetch_add(1, Ordering::SeqCst) + 1;
        script.open_max.fetch_max(open, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut conn = Framed::new(stream, FrameCodec::default());
            while let Some(Ok(frame)) = conn.next().await {
                if !scripted_answer(&mut conn, &script, frame).await {
                    break;
                }
            }
            script.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Answers one frame; `false` closes the connection.
async fn scripted_answer(
    conn: &mut Framed<UnixStream, FrameCodec>,
    script: &Script,
    frame: Frame,
) -> bool {
    let payload = Payload::parse(&frame.payload).unwrap();
    if frame.kind == MessageType::HttpRespCall as u8 {
        let call = payload.resp_call().unwrap();
        let n: Option<usize> = call
            .parts
            .headers
            .iter()
            .find(|(name, _)| *name == "x-answer-headers")
            .and_then(|(_, v)| v.parse().ok());
        let outcome = extplug::wire::ResponseOutcome {
            headers: n.map(numbered_headers),
            ..Default::default()
        };
        let answer = extplug::wire::RespCallAnswer {
            id: call.parts.id,
            outcome,
        };
        conn.send(&answer).await.unwrap();
        return true;
    }
    if frame.kind == MessageType::PrepareConf as u8 {
        let n = script.prepares.fetch_add(1, Ordering::SeqCst) + 1;
        if script.refuse_after.is_some_and(|max| n > max) {
            let e = ErrorResp {
                code: ErrorCode::BadRequest,
                message: format!("conf[0]: unknown plugin \"any\" (refused: prepare {n})"),
            };
            conn.send(&e).await.unwrap();
            return true;
        }
        let token = script.next_token.fetch_add(1, Ordering::SeqCst) + 1;
        let mut needs = runner_sdk::Needs::default();
        needs.vars.push("remote_addr".into());
        conn.send(&Prepared { token, needs }).await.unwrap();
        return true;
    }
    let call = payload.req_call().unwrap();
    let p = &call.parts;
    let id = p.id;
    if p.path == "/pause" {
        // A call that takes a while, so that calls overlap; answered as
        // any other path.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The query's value of `name`, decoded.
    let arg = |name: &str| {
        p.args
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
            .unwrap_or_default()
            .to_owned()
    };
    let outcome = match p.path {
        "/set-path" => RequestOutcome::Rewrite(Rewrite {
            path: Some(arg("to")),
            headers: vec![("x-rewritten".into(), Some("yes".into()))],
            ..Rewrite::default()
        }),
        // With `then=delete`, a second `host` entry that deletes (which
        // does not undo the first: a list removes a name once, first).
        "/set-host" => {
            let mut headers = vec![
                ("host".into(), Some(arg("to"))),
                ("x-rewritten".into(), Some("yes".into())),
            ];
            if arg("then") == "delete" {
                headers.push(("host".into(), None));
            }
            RequestOutcome::Rewrite(Rewrite {
                headers,
                ..Rewrite::default()
            })
        }
        "/stop-headers" => {
            let mut stop = Stop::new(StatusCode::OK);
            stop.headers = numbered_headers(arg("n").parse().unwrap());
            RequestOutcome::Stop(stop)
        }
        "/rewrite-headers" => RequestOutcome::Rewrite(Rewrite {
            headers: numbered_headers(arg("n").parse().unwrap())
                .into_iter()
                .map(|(n, v)| (n, Some(v)))
                .collect(),
            ..Rewrite::default()
        }),
        "/status0" => {
            let mut stop = Stop::new(StatusCode::OK);
            stop.headers = vec![("x-dup".into(), "a".into()), ("x-dup".into(), "b".into())];
            stop.body = b"zero".to_vec();
            // Status 0 on the wire: the host must answer 200.
            let mut msg = capnp::message::Builder::new_default();
            {
                use extplug::wire::ext_plugin_capnp::http_req_call_resp;
                let mut root = msg.init_root::<http_req_call_resp::Builder>();
                root.set_id(id);
                let mut s = root.init_action().init_stop();
                s.set_status(0);
                let mut h = s.reborrow().init_headers(2);
                for (i, (n, v)) in stop.headers.iter().enumerate() {
                    h.reborrow().get(i as u32).set_name(n.as_str());
                    h.reborrow().get(i as u32).set_value(v.as_str());
                }
                s.set_body(&stop.body);
            }
            let mut bytes = Vec::new();
            capnp::serialize::write_message(&mut bytes, &msg).unwrap();
            conn.send((2u8, &bytes[..])).await.unwrap();
            return true;
        }
        "/tnf-once" if !script.failed_once.swap(true, Ordering::SeqCst) => {
            let e = ErrorResp {
                code: ErrorCode::ConfTokenNotFound,
                message: format!("token {} forgotten on purpose", call.conf_token),
            };
            conn.send(&e).await.unwrap();
            return true;
        }
        "/tnf-always" => {
            let e = ErrorResp {
                code: ErrorCode::ConfTokenNotFound,
                message: "never found".into(),
            };
            conn.send(&e).await.unwrap();
            return true;
        }
        "/lazy-body" => {
            // Ask for the body during the call, then report what came back.
            conn.send(&runner_sdk::InfoKey::RequestBody).await.unwrap();
            let Some(Ok(answer)) = conn.next().await else {
                return false;
            };
            assert_eq!(answer.kind, MessageType::ExtraInfo as u8);
            let payload = Payload::parse(&answer.payload).unwrap();
            let len = match payload.extra_info_resp().unwrap().0 {
                Some(body) => body.len().to_string(),
                None => "null".to_owned(),
            };
            RequestOutcome::Rewrite(Rewrite {
                headers: vec![("x-lazy-body-len".into(), Some(len))],
                ..Rewrite::default()
            })
        }
        "/close-mid-extra" => {
            conn.send(&runner_sdk::InfoKey::Var("uri")).await.unwrap();
            return false;
        }
        // Two values for Host (a runner may send a header list with
        // repeats): the upstream must still get one Host.
        "/dup-host" => RequestOutcome::Rewrite(Rewrite {
            headers: vec![
                ("host".into(), Some("a.example".into())),
                ("host".into(), Some("b.example".into())),
            ],
            ..Rewrite::default()
        }),
        // Answers twice (the same id): the second answer is a stale frame
        // the host must not read as the answer to a later call.
        "/answer-twice" => {
            let first = ReqCallAnswer {
                id,
                outcome: RequestOutcome::Continue,
            };
            conn.send(&first).await.unwrap();
            RequestOutcome::Continue
        }
        // Answers, then closes the connection: the host's pooled
        // connection is closed under it.
        "/close-after" => {
            let answer = ReqCallAnswer {
                id,
                outcome: RequestOutcome::Continue,
            };
            conn.send(&answer).await.unwrap();
            return false;
        }
        // A rewrite no SDK would build: a `Connection` header that lists
        // 200 000 names (`x-h0`.. `x-h199999` but `x-h7`, `x-h1234` and
        // `x-h3999`), 4 000 headers to set (`x-h0`.. `x-h3999`: three
        // are not listed) and 4 000 to delete (`y-h0`..): 8 001 in all,
        // within the 8 192 a plugin may send.
        "/many-headers" => {
            let listed: Vec<String> = (0..200_000)
                .filter(|i| ![7, 1_234, 3_999].contains(i))
                .map(|i| format!("x-h{i}"))
                .collect();
            let mut headers = vec![("connection".to_owned(), Some(listed.join(",")))];
            headers.extend((0..4_000).map(|i| (format!("x-h{i}"), Some("v".to_owned()))));
            headers.extend((0..4_000).map(|i| (format!("y-h{i}"), None)));
            RequestOutcome::Rewrite(Rewrite {
                headers,
                ..Rewrite::default()
            })
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            RequestOutcome::Continue
        }
        // Headers no SDK would let a plugin set (the SDK refuses them):
        // what a runner in another language might send. The host filters.
        "/smuggle-framing" => RequestOutcome::Rewrite(Rewrite {
            headers: [
                ("Transfer-Encoding", "chunked"),
                ("CONTENT-LENGTH", "0"),
                ("Content-length", "1"),
                ("connection", "x-api-key"),
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("x-kept", "yes"),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), Some(v.to_owned())))
            .collect(),
            ..Rewrite::default()
        }),
        "/smuggle-headers" => RequestOutcome::Rewrite(Rewrite {
            headers: [
                ("x-a", "v\r\nx-injected: 1"),
                ("x-b", "v\nx-injected: 2"),
                ("x-c", "v\rx-injected: 3"),
                ("Transfer-Encoding", "chunked"),
                ("CONTENT-LENGTH", "0"),
                ("Content-length", "1"),
                ("connection", "x-api-key"),
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("x-d\r\nx-injected", "4"),
                ("x-kept", "yes"),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), Some(v.to_owned())))
            .collect(),
            ..Rewrite::default()
        }),
        "/rewrite-all" => RequestOutcome::Rewrite(Rewrite {
            path: Some("/new path".into()),
            headers: vec![
                ("x-del".into(), None),
                ("x-change".into(), Some("changed".into())),
                ("x-add".into(), Some("1".into())),
                ("x-add".into(), Some("2".into())),
                ("host".into(), Some("rewritten.example".into())),
            ],
            args: vec![
                ("a".into(), Some("1".into())),
                ("a".into(), Some("2".into())),
                ("gone".into(), None),
            ],
            resp_headers: vec![
                ("x-resp".into(), "yes".into()),
                ("content-type".into(), "text/evil".into()),
                ("server".into(), "evil".into()),
                ("location".into(), "/evil".into()),
            ],
            body: Some(b"new body".to_vec()),
        }),
        _ => {
            let seen = serde_json::json!({
                "id": p.id,
                "src_ip": p.src_ip.to_string(),
                "src_ip_len": match p.src_ip { std::net::IpAddr::V4(_) => 4, std::net::IpAddr::V6(_) => 16 },
                "method": p.method.as_str(),
                "path": p.path,
                "args": p.args,
                "headers": p.headers,
                "extra_info": p.extra_info.iter().map(|(n, v)| (n.to_string(), v.map(|v| String::from_utf8_lossy(v).into_owned()))).collect::<BTreeMap<_, _>>(),
                "prepares": script.prepares.load(Ordering::SeqCst),
                "accepted": script.accepted.load(Ordering::SeqCst),
                "open_max": script.open_max.load(Ordering::SeqCst),
                "env": std::env::var("RUNNER_TEST_VAR").ok(),
                "expire": std::env::var("APISIX_CONF_EXPIRE_TIME").ok(),
            });
            RequestOutcome::Rewrite(Rewrite {
                headers: vec![("x-seen".into(), Some(seen.to_string()))],
                ..Rewrite::default()
            })
        }
    };
    conn.send(&ReqCallAnswer { id, outcome }).await.unwrap();
    true
}

/// `n` headers `x-h0: v` .. `x-h{n-1}: v`.
fn numbered_headers(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect()
}

/// Frame counts by type, both directions together; the lock serializes
/// the writes of the count file.
#[derive(Default)]
struct Counts([AtomicU64; 5], std::sync::Mutex<()>);

impl Counts {
    fn add(&self, kind: u8, file: &std::path::Path) {
        let _writing = self.1.lock().unwrap();
        if let Some(c) = self.0.get(kind as usize) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        let text: String = self
            .0
            .iter()
            .enumerate()
            .map(|(k, c)| format!("{k}:{}\n", c.load(Ordering::SeqCst)))
            .collect();
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, file).unwrap();
    }
}

async fn relay() {
    let outer = socket_path();
    let inner = outer.with_extension("inner");
    let count_file = PathBuf::from(std::env::var("RELAY_COUNT_FILE").expect("RELAY_COUNT_FILE"));
    let target = std::env::var("RELAY_TARGET").expect("RELAY_TARGET");
    let _child = tokio::process::Command::new(target)
        .env("APISIX_LISTEN_ADDRESS", format!("unix:{}", inner.display()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    while UnixStream::connect(&inner).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_file(&outer);
    let listener = UnixListener::bind(&outer).unwrap();
    let counts = Arc::new(Counts::default());
    loop {
        let (host, _) = listener.accept().await.unwrap();
        let runner = UnixStream::connect(&inner).await.unwrap();
        let (counts, file) = (counts.clone(), count_file.clone());
        tokio::spawn(async move {
            let (host_r, host_w) = host.into_split();
            let (run_r, run_w) = runner.into_split();
            let pipe = |r,
                        mut w: tokio::net::unix::OwnedWriteHalf,
                        counts: Arc<Counts>,
                        file: PathBuf| async move {
                let mut frames = tokio_util::codec::FramedRead::new(r, FrameCodec::default());
                while let Some(Ok(frame)) = frames.next().await {
                    counts.add(frame.kind, &file);
                    let len = frame.payload.len() as u32;
                    let header = ((u32::from(frame.kind) << 24) | len).to_be_bytes();
                    let mut bytes = header.to_vec();
                    bytes.extend_from_slice(&frame.payload);
                    if tokio::io::AsyncWriteExt::write_all(&mut w, &bytes)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            };
            let up = pipe(host_r, run_w, counts.clone(), file.clone());
            let down = pipe(run_r, host_w, counts, file);
            tokio::select! { _ = up => {}, _ = down => {} }
        });
    }
}

/// The `connect` mode: one PREPARE_CONF as a client; says what came back.
async fn connect() {
    let path = socket_path();
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) => {
            println!("connect failed: {e}");
            std::process::exit(1);
        }
    };
    let mut conn = Framed::new(stream, FrameCodec::default());
    let prepare = extplug::wire::PrepareConf {
        conf: vec![("say", r#"{"body":"hi"}"#)],
        key: None,
    };
    // A runner that closes at once may make this send fail: that is "closed" too.
    let sent = conn.send(&prepare).await;
    let answer = tokio::time::timeout(Duration::from_secs(20), conn.next()).await;
    match (sent, answer) {
        (_, Err(_)) => println!("no answer within 20 s"),
        (Ok(()), Ok(Some(Ok(frame)))) => println!("answered type {}", frame.kind),
        _ => println!("closed"),
    }
}
