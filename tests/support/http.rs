//! The host's test rig: a recording upstream HTTP server, the real `extplug
//! proxy` process, and an HTTP client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent on the wire.
    pub target: String,
    /// Values made text (bytes that are not UTF-8 shown as U+FFFD).
    pub headers: Vec<(String, String)>,
    /// The same headers with their values' exact bytes.
    pub raw_headers: Vec<(String, Bytes)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::values_named(&self.headers, name).next()
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        super::values_named(&self.headers, name).collect()
    }
    /// The exact bytes of the first value of header `name`.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.raw_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
    /// The scripted runner's report of what it received.
    pub fn seen(&self) -> serde_json::Value {
        serde_json::from_str(self.header("x-seen").expect("no x-seen header")).unwrap()
    }
}

/// An upstream that records every request. Answers by path:
/// `/chunked*`: a chunked body in three parts; `/slow*`: after 3 s;
/// anything else: 200, `x-upstream: yes`, `x-powered-by: test`, body
/// `upstream says hi`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| answer(req, record.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream got no request")
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    req: http::Request<Incoming>,
    record: Arc<Mutex<Vec<Recorded>>>,
) -> Result<http::Response<UpBody>, hyper::Error> {
    let (head, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let target = head
        .uri
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.to_string());
    record.lock().unwrap().push(Recorded {
        method: head.method.to_string(),
        target: target.clone(),
        headers: head
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        raw_headers: head
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
        body,
    });
    if target.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if target.starts_with("/chunked") {
        let chunks = ["chunk one, ", "chunk two, ", "chunk three"]
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c))));
        let body = StreamBody::new(futures::stream::iter(chunks));
        return Ok(http::Response::builder()
            .header("x-upstream", "yes")
            .body(BodyExt::boxed(body))
            .unwrap());
    }
    Ok(http::Response::builder()
        .header("x-upstream", "yes")
        .header("x-powered-by", "test")
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(Full::new(Bytes::from("upstream says hi"))))
        .unwrap())
}

/// A running `extplug proxy`, stopped when dropped: SIGTERM, so that it
/// removes its runner's directory, then SIGKILL if it is still there after
/// [`DROP_GRACE`].
pub struct ProxyProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Its stderr (the log), written to a file.
    pub log: PathBuf,
    /// The admin listener's address, when the configuration has `admin`.
    pub admin: Option<SocketAddr>,
    /// The TLS listener's address, when the configuration has `tls`.
    pub tls: Option<SocketAddr>,
}

/// How long a dropped [`ProxyProc`] has to stop after SIGTERM.
pub const DROP_GRACE: Duration = Duration::from_secs(5);

/// How to start a [`ProxyProc`]: `ProxyProc::builder(&config)...start()`.
pub struct ProxyBuilder<'a> {
    config: &'a serde_json::Value,
    filter: String,
    env: Vec<(String, String)>,
    umask: Option<u32>,
    nofile: Option<(u64, u64)>,
    args: Vec<String>,
    proxy_args: Vec<String>,
}

impl ProxyBuilder<'_> {
    /// The proxy's `RUST_LOG` (default `info`).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.filter = filter.to_owned();
        self
    }

    /// Sets a variable in the proxy's environment. `TMPDIR` (where the
    /// runner's directory goes) is by default a directory of this
    /// `ProxyProc`'s own, removed with it: whatever a proxy leaves (when
    /// SIGKILLed, say) goes with it, and no test sees another's.
    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((
            name.to_owned(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
        self
    }

    /// Adds an argument to `extplug` (before `proxy`: a global flag such as
    /// `--log-format json`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Adds an argument to `extplug proxy` (after `--config FILE`, such as
    /// `--pid-file PATH`).
    pub fn proxy_arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.proxy_args
            .push(arg.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Runs the proxy under this umask (through `sh -c 'umask ...; exec ...'`).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// Runs the proxy with these soft and hard file descriptor limits
    /// (through `sh -c 'ulimit -Sn ...; ulimit -Hn ...; exec ...'`).
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Starts `extplug proxy` and waits for its "listening" line.
    pub fn start(self) -> ProxyProc {
        ProxyProc::spawn(self)
    }
}

impl ProxyProc {
    /// Starts `extplug proxy` with `config` and waits for its "listening" line.
    pub fn start(config: &serde_json::Value) -> ProxyProc {
        Self::builder(config).start()
    }

    /// [`ProxyProc::start`] with this `RUST_LOG`.
    pub fn start_logging(config: &serde_json::Value, filter: &str) -> ProxyProc {
        Self::builder(config).log_filter(filter).start()
    }

    /// A proxy with more settings than [`ProxyProc::start`] takes.
    pub fn builder(config: &serde_json::Value) -> ProxyBuilder<'_> {
        ProxyBuilder {
            config,
            filter: "info".to_owned(),
            env: Vec::new(),
            umask: None,
            nofile: None,
            args: Vec::new(),
            proxy_args: Vec::new(),
        }
    }

    fn spawn(b: ProxyBuilder<'_>) -> ProxyProc {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(b.config).unwrap()).unwrap();
        let log = dir.path().join("proxy.log");
        let exe = env!("CARGO_BIN_EXE_extplug");
        let mut setup = String::new();
        if let Some(mask) = b.umask {
            setup.push_str(&format!("umask {mask:03o}; "));
        }
        if let Some((soft, hard)) = b.nofile {
            // Soft first: a hard limit below the current soft one is refused.
            setup.push_str(&format!("ulimit -Sn {soft} && ulimit -Hn {hard} && "));
        }
        let mut cmd = if setup.is_empty() {
            Command::new(exe)
        } else {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("{setup}exec \"$0\" \"$@\""))
                .arg(exe);
            sh
        };
        if !b.env.iter().any(|(k, _)| k == "TMPDIR") {
            cmd.env("TMPDIR", dir.path());
        }
        let mut child = cmd
            .args(&b.args)
            .args(["proxy", "--config"])
            .arg(&path)
            .args(&b.proxy_args)
            .env("RUST_LOG", &b.filter)
            .envs(b.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Printed right after the first line when `admin` is configured.
        let admin = b.config.get("admin").map(|_| {
            let mut admin = String::new();
            out.read_line(&mut admin).unwrap();
            admin
                .trim()
                .strip_prefix("extplug admin listening on http://")
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_else(|| panic!("no admin listening line; got {admin:?}"))
                .parse()
                .unwrap()
        });
        // Printed after the admin line when `tls` is configured.
        let tls = b.config.get("tls").map(|_| {
            let mut tls = String::new();
            out.read_line(&mut tls).unwrap();
            tls.trim()
                .strip_prefix("extplug TLS listening on https://")
                .unwrap_or_else(|| panic!("no TLS listening line; got {tls:?}"))
                .parse()
                .unwrap()
        });
        let addr = line
            .trim()
            .strip_prefix("extplug listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "no listening line; got {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .parse()
            .unwrap();
        ProxyProc {
            child,
            addr,
            dir,
            log,
            admin,
            tls,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The pids of the proxy's child processes (the runner).
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Waits until the log has `needle` at least `n` times (up to 20 s).
    pub fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not {n} times in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a runner became the active one `n` times (started,
    /// promoted from standby, upgraded): the log says "runner ready" `n`
    /// times.
    pub fn wait_runner_ready(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches("runner ready").count() < n {
            assert!(
                Instant::now() < deadline,
                "runner not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of the active runner (calls go to it): the one named by the
    /// last "runner ready" line of the log. (With a standby, the proxy has
    /// two runner children.)
    pub fn active_runner(&self) -> i32 {
        self.wait_runner_ready(1);
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("runner ready"))
            .expect("a runner ready line");
        line.split("pid=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"))
    }

    /// Waits until the log says "runner standby ready" `n` times.
    pub fn wait_standby_ready(&self, n: usize) {
        self.wait_log("runner standby ready", n);
    }

    /// The proxy's configuration file (what SIGHUP re-reads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    /// How many reloads the proxy has finished, accepted or refused.
    pub fn reloads(&self) -> (usize, usize) {
        let log = self.log();
        (
            log.matches("configuration reloaded").count(),
            log.matches("configuration reload refused").count(),
        )
    }

    /// Writes `text` as the configuration file, sends SIGHUP, and waits
    /// until the reload is done; true if it was accepted.
    pub fn reload_text(&self, text: &str) -> bool {
        let (ok, refused) = self.reloads();
        std::fs::write(self.config_path(), text).unwrap();
        self.signal(nix::sys::signal::Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.reloads();
            if now.0 > ok {
                return true;
            }
            if now.1 > refused {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "the reload did not finish; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`ProxyProc::reload_text`] with a configuration value.
    pub fn reload(&self, config: &serde_json::Value) -> bool {
        self.reload_text(&serde_json::to_string_pretty(config).unwrap())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        // A graceful stop: the proxy stops its runner and removes the
        // runner's directory, which SIGKILL would leave behind.
        super::stop_gracefully(&mut self.child, DROP_GRACE);
    }
}

/// Children of `pid`, from every thread's `children` file.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    !stat.is_empty() && state != Some("Z")
}

/// An answer as the client got it.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request (20 s limit) and reads the whole answer.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("no answer within 20 s")
        .expect("request failed");
    let (head, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: head.status.as_u16(),
        headers: head.headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    send("GET", url, &[], Bytes::new()).await
}

/// GETs every URL at once (one task each) and gives the statuses in order.
pub async fn statuses_of(urls: impl IntoIterator<Item = String>) -> Vec<u16> {
    let calls = urls
        .into_iter()
        .map(|url| tokio::spawn(async move { get(&url).await.status }));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// The samples of the proxy's admin `/metrics` (the configuration has
/// `admin`): `name{labels}` (labels as printed, sorted by name) to value.
pub async fn metrics(proxy: &ProxyProc) -> std::collections::HashMap<String, f64> {
    let admin = proxy.admin.expect("an admin listener");
    let got = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(
        got.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        got.headers
    );
    got.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// A sample's value in [`metrics`]; 0 when the series does not exist yet.
pub fn metric_value(m: &std::collections::HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}
