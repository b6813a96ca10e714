//! A real etcd for the tests (Debian's `etcd-server`): on free loopback
//! ports with a temp data dir, killed (and its data removed) when dropped;
//! `etcdctl` to write APISIX's keys as an operator would.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running etcd, killed when dropped (its data dir goes with it).
pub struct Etcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// The client port the proxies are given.
    pub port: u16,
    peer: u16,
    /// `user:password` given to `etcdctl` once authentication is on
    /// ([`Etcd::enable_auth`]).
    pub user: Option<String>,
}

impl Etcd {
    /// Starts etcd on a fresh data dir and free ports, and waits until it
    /// answers.
    pub fn start() -> Etcd {
        Self::start_on(free_port())
    }

    /// [`Etcd::start`] on this client port.
    pub fn start_on(port: u16) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port,
            peer: free_port(),
            user: None,
        };
        etcd.run_on(port);
        etcd
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Starts the etcd process on the data dir with this client port
    /// (another than [`Etcd::port`]: a member the proxies cannot reach),
    /// and waits until it answers there.
    pub fn run_on(&mut self, port: u16) {
        assert!(self.child.is_none(), "etcd is running already");
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let client = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new("etcd")
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (Debian's etcd-server; scripts/ensure-etcd.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = Command::new("etcdctl")
                .args([
                    "--endpoints",
                    &client,
                    "--command-timeout=1s",
                    "endpoint",
                    "health",
                ])
                .args(self.user.iter().flat_map(|u| ["--user", u.as_str()]))
                .env("ETCDCTL_API", "3")
                .output()
                .expect("running etcdctl");
            if health.status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "etcd exited ({status}) before answering; its log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer in 30 s: {}\n{}",
                String::from_utf8_lossy(&health.stderr),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts etcd on the same data dir and client port.
    pub fn restart(&mut self) {
        self.run_on(self.port);
    }

    /// SIGKILLs etcd and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs etcd (`true`) or SIGCONTs it (`false`): a member that
    /// keeps its connections open and answers nothing.
    pub fn freeze(&self, frozen: bool) {
        use nix::sys::signal::{kill, Signal};
        let child = self.child.as_ref().expect("etcd is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(pid, signal).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Runs `etcdctl ARGS` against the member listening on `port`;
    /// panics unless it succeeds; its stdout.
    pub fn ctl_on(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .args(["--endpoints", &format!("http://127.0.0.1:{port}")])
            .args(self.user.iter().flat_map(|u| ["--user", u.as_str()]))
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("running etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `etcdctl put KEY VALUE` (on the member at `port`); the revision.
    pub fn put_on(&self, port: u16, key: &str, value: &serde_json::Value) -> i64 {
        let out = self.ctl_on(port, &["put", "-w", "json", key, &value.to_string()]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_i64().expect("a revision")
    }

    /// `etcdctl put KEY VALUE`; the revision.
    pub fn put(&self, key: &str, value: &serde_json::Value) -> i64 {
        self.put_on(self.port, key, value)
    }

    /// `etcdctl put KEY TEXT` with a value that need not be JSON.
    pub fn put_text(&self, key: &str, text: &str) {
        self.ctl_on(self.port, &["put", key, text]);
    }

    /// Turns etcd's authentication on with the `root` user and
    /// `password`; `etcdctl` logs in as root from then on.
    pub fn enable_auth(&mut self, password: &str) {
        self.ctl_on(self.port, &["user", "add", &format!("root:{password}")]);
        self.ctl_on(self.port, &["auth", "enable"]);
        self.user = Some(format!("root:{password}"));
    }

    /// `etcdctl del KEY`.
    pub fn delete(&self, key: &str) {
        self.ctl_on(self.port, &["del", key]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A frozen etcd dies of SIGKILL too; thawed, it is reaped at once.
            self.freeze(false);
        }
        self.kill();
    }
}
