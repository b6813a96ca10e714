//! Shared helpers of the integration tests: the real `demo-runner` binary on a
//! socket in a temp dir, and a protocol client built on the crate's own codec.
#![allow(dead_code)]

use ::http::Method;
use extplug::wire::{
    ErrorResp, Frame, FrameCodec, Payload, PrepareConf, Prepared, ReqCall, ReqCallAnswer,
    RequestParts,
};
use futures::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Builds the example runner once per test binary (a no-op when it is up to
/// date) and returns its path.
pub fn demo_runner() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| example("demo-runner"))
}

/// A running `demo-runner`, killed when dropped.
pub struct RunnerProc {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl RunnerProc {
    /// Starts the runner with `APISIX_LISTEN_ADDRESS` on a fresh socket and
    /// `env`, and waits until the socket accepts connections.
    pub fn start(env: &[(&str, &str)]) -> RunnerProc {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("runner.sock");
        let mut cmd = Command::new(demo_runner());
        cmd.env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", socket.display()),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting demo-runner");
        let mut proc = RunnerProc { child, dir, socket };
        proc.wait_ready();
        proc
    }

    /// Polls the socket until it accepts a connection (the readiness signal).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("runner exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "runner did not listen in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the runner to exit (up to 20 s).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "runner did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await
    }
}

impl Drop for RunnerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the runner answered.
#[derive(Debug)]
pub enum Answer {
    Error(ErrorResp),
    Prepared(Prepared),
    Call(ReqCallAnswer),
    Other(Frame),
}

/// A protocol client over one connection.
pub struct Client {
    pub conn: Framed<UnixStream, FrameCodec>,
}

impl Client {
    pub async fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path)
            .await
            .expect("connecting to the runner");
        Client {
            conn: Framed::new(stream, FrameCodec::default()),
        }
    }

    /// Reads the next frame and decodes it by type; `None` when closed.
    pub async fn answer(&mut self) -> Option<Answer> {
        let frame = tokio::time::timeout(Duration::from_secs(20), self.conn.next())
            .await
            .expect("no answer within 20 s")?
            .ok()?;
        let payload = Payload::parse(&frame.payload).expect("runner sent a bad payload");
        Some(match frame.kind {
            0 => Answer::Error(payload.error().unwrap()),
            1 => Answer::Prepared(payload.prepared().unwrap()),
            2 => Answer::Call(payload.req_call_answer().unwrap()),
            _ => Answer::Other(frame.clone()),
        })
    }

    pub async fn raw(&mut self, kind: u8, payload: &[u8]) {
        self.conn.send((kind, payload)).await.unwrap();
    }

    pub async fn prepare_answer(&mut self, conf: &[(&str, &str)], key: Option<&str>) -> Answer {
        let req = PrepareConf {
            conf: conf.to_vec(),
            key,
        };
        self.conn.send(&req).await.unwrap();
        self.answer().await.expect("connection closed")
    }

    /// Prepares `conf`; panics on an error answer.
    pub async fn prepare(&mut self, conf: &[(&str, &str)]) -> u32 {
        match self.prepare_answer(conf, None).await {
            Answer::Prepared(p) => p.token,
            other => panic!("prepare failed: {other:?}"),
        }
    }

    pub async fn call_answer(&mut self, token: u32, parts: RequestParts<'_>) -> Answer {
        self.conn
            .send(&ReqCall {
                conf_token: token,
                parts,
            })
            .await
            .unwrap();
        self.answer().await.expect("connection closed")
    }

    /// Sends a call whose chain asks for something during the call, and
    /// returns the EXTRA_INFO request frame that comes back first.
    pub async fn call_until_extra_info(&mut self, token: u32, parts: RequestParts<'_>) -> Frame {
        self.conn
            .send(&ReqCall {
                conf_token: token,
                parts,
            })
            .await
            .unwrap();
        match self.answer().await {
            Some(Answer::Other(frame)) if frame.kind == 3 => frame,
            other => panic!("expected EXTRA_INFO, got {other:?}"),
        }
    }

    /// Calls with `parts`; panics unless the answer is a call answer.
    pub async fn call(&mut self, token: u32, parts: RequestParts<'_>) -> ReqCallAnswer {
        match self.call_answer(token, parts).await {
            Answer::Call(a) => a,
            other => panic!("call failed: {other:?}"),
        }
    }
}

/// `GET path` from 127.0.0.1, id 7, no args or headers.
pub fn get(path: &str) -> RequestParts<'_> {
    RequestParts {
        id: 7,
        src_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method: Method::GET,
        path,
        args: vec![],
        headers: vec![],
        extra_info: vec![],
    }
}

/// The values of the headers called `name` in a recorded header list, in order.
pub fn values_named<'a, 'n>(
    headers: &'a [(String, String)],
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `extplug demo` with this build's example runner, the proxy and the admin
/// listener on free ports, its stdout piped (the listening lines come first).
pub fn spawn_demo() -> Child {
    spawn_demo_with(&[])
}

/// `extplug demo` as [`spawn_demo`] starts it, with `extra` arguments.
pub fn spawn_demo_with(extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--runner",
        ])
        .arg(demo_runner())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting extplug demo")
}

pub mod conf;
pub mod etcd;
pub mod http;
pub mod raw;
pub mod tls;

/// Stops `child` as an operator would: SIGTERM, then SIGKILL if it is still
/// running after `grace`; always reaps it. (SIGKILL alone would leave the
/// proxy's runner directory behind.)
pub fn stop_gracefully(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while let Ok(None) = child.try_wait() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.wait();
}

/// Builds an example (once per test binary per name) and returns its path.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|n| n == name) {
        let mut cargo = Command::new(env!("CARGO"));
        // Without the variables cargo set for this test binary: build
        // scripts that watch them (ring's watches `OUT_DIR`,
        // `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR`) would see them change,
        // and rebuild here and again at the next `cargo test`.
        for (var, _) in std::env::vars_os() {
            let var = var.to_string_lossy().into_owned();
            let set_for_test = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| var.starts_with(p))
                || var == "OUT_DIR"
                || var == "CARGO_PRIMARY_PACKAGE"
                || var == "CARGO_TARGET_TMPDIR";
            if set_for_test {
                cargo.env_remove(var);
            }
        }
        let status = cargo
            .args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_owned());
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_extplug"));
    exe.parent().unwrap().join("examples").join(name)
}

/// What a run of `extplug` that is expected to exit gave.
#[derive(Debug)]
pub struct Exited {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// What was left in its `TMPDIR` (the runner's directory, if any).
    pub left_behind: Vec<String>,
}

/// Runs `extplug <args> --config FILE` with `config` in FILE, in a fresh
/// `TMPDIR` and the log filter `RUST_LOG`, and waits (up to 60 s) for it
/// to exit; panics if it does not (a proxy that accepted the configuration).
pub fn extplug_exits(args: &[&str], config: &serde_json::Value, filter: &str) -> Exited {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("TMPDIR", &tmp)
        .env("RUST_LOG", filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            stop_gracefully(&mut child, Duration::from_secs(2));
            panic!("extplug {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let left_behind = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    Exited {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        left_behind,
    }
}

/// The pinned versions the Python fixtures (`a6_client.py`, `a6_runner.py`)
/// were written against.
const PACKAGES: [&str; 2] = ["a6pluginprotos==0.2.1", "flatbuffers==25.12.19"];

/// The python of a virtual environment with APISIX's Python classes
/// (`a6pluginprotos`) and `flatbuffers`, created and filled once per
/// target directory. Without python3 (and its venv module) or the
/// packages, the test fails, saying so: CI installs them
/// (`scripts/ensure-python.sh`).
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apisix-venv");
        let python = venv.join("bin/python3");
        // Written last: a venv interrupted half-way is made again.
        let done = venv.join("extplug-packages");
        if std::fs::read_to_string(&done).ok().as_deref() == Some(&PACKAGES.join(" ")) {
            return python;
        }
        let _ = std::fs::remove_dir_all(&venv);
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("running python3 (the APISIX wire tests need python3 with venv and pip)");
        assert!(status.success(), "python3 -m venv failed: {status}");
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PACKAGES)
            .status()
            .expect("running pip");
        assert!(
            status.success(),
            "pip install {PACKAGES:?} failed: {status}"
        );
        std::fs::write(&done, PACKAGES.join(" ")).unwrap();
        python
    })
}
