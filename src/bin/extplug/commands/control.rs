//! `extplug reload` and `extplug upgrade` (one file: the same request to
//! two endpoints): ask a running proxy, as `nginx -s reload` does, through
//! its admin listener (`POST /reload`, `POST /runners/restart`: the answer
//! says whether it worked) or by signal to the pid in its pid file
//! (SIGHUP, SIGUSR2: the outcome is in the proxy's log).
//!
//! Exit status 0: done (or the signal sent); 1: the proxy refused (a bad
//! configuration, a runner that did not start: the reason printed); 2: it
//! could not be asked (nothing listening, 401/403, a stale pid file).

use crate::runtime::fail;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Which proxy to ask, and how: exactly one of its admin listener
/// (`--admin`, `--config`, or both: the address given, the file's token)
/// or its pid file.
#[derive(clap::Args)]
#[group(required = true, multiple = true)]
pub struct Target {
    /// The proxy's admin listener (`admin.listen`), e.g. `127.0.0.1:9091`.
    #[arg(long, value_name = "ADDR", conflicts_with = "pid_file")]
    admin: Option<SocketAddr>,
    /// The proxy's configuration file: its `admin.listen` (unless
    /// `--admin`), and its `admin.token` when set.
    #[arg(long, short, value_name = "FILE", conflicts_with = "pid_file")]
    config: Option<PathBuf>,
    /// Signal the pid written by `extplug proxy --pid-file PATH` instead.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
}

/// What to ask for.
#[derive(Clone, Copy)]
pub enum Ask {
    /// Reload the configuration file.
    Reload,
    /// Upgrade the runners in place.
    Upgrade,
}

impl Ask {
    fn path(self) -> &'static str {
        match self {
            Ask::Reload => "/reload",
            Ask::Upgrade => "/runners/restart",
        }
    }

    fn signal(self) -> Signal {
        match self {
            Ask::Reload => Signal::SIGHUP,
            Ask::Upgrade => Signal::SIGUSR2,
        }
    }

    /// The status the admin listener answers a refusal with.
    fn refused(self) -> u16 {
        match self {
            Ask::Reload => 400,
            Ask::Upgrade => 500,
        }
    }
}

/// How long the proxy may take to answer: a reload or an upgrade starts
/// runners and has them prepare every chain.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Asks the proxy `target` names for `ask`; prints the outcome.
pub fn run(target: &Target, ask: Ask) -> ExitCode {
    if let Some(pid_file) = &target.pid_file {
        return by_signal(pid_file, ask);
    }
    let FileAdmin {
        addr: file_addr,
        token,
    } = match &target.config {
        Some(path) => match admin_of(path) {
            Ok(found) => found,
            Err(e) => return fail(&format!("{}: {e}", path.display())),
        },
        None => FileAdmin::default(),
    };
    let addr = match (target.admin, file_addr) {
        (Some(addr), _) => addr,
        (None, Some(Ok(addr))) => addr,
        (None, Some(Err(why))) => {
            let path = target.config.as_deref().unwrap_or(Path::new(""));
            return fail(&format!("{}: {why}; give --admin ADDR", path.display()));
        }
        (None, None) => {
            let path = target.config.as_deref().unwrap_or(Path::new(""));
            return fail(&format!(
                "{}: no admin listener (`admin.listen`): give --admin ADDR, or --pid-file PATH",
                path.display()
            ));
        }
    };
    by_admin(connect_to(addr), token.as_deref(), ask)
}

/// What a configuration file says of its admin listener.
#[derive(Default)]
struct FileAdmin {
    /// Its address (`Err`: why `admin.listen` cannot be used); `None`:
    /// no `admin`.
    addr: Option<Result<SocketAddr, String>>,
    /// `admin.token`.
    token: Option<String>,
}

/// The admin listener of the configuration file at `path`. Only the
/// `admin` object is read: a file the proxy would refuse elsewhere is
/// still worth a reload (to hear why).
fn admin_of(path: &Path) -> Result<FileAdmin, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("not JSON ({e}): its admin listener is unknown; give --admin ADDR"))?;
    let Some(admin) = value.get("admin").filter(|a| !a.is_null()) else {
        return Ok(FileAdmin::default());
    };
    let token = admin
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    let addr = match admin.get("listen").and_then(|l| l.as_str()) {
        None => Err("`admin.listen` is not an address".to_owned()),
        Some(listen) => match listen.parse::<SocketAddr>() {
            Err(e) => Err(format!("`admin.listen` {listen:?}: {e}")),
            Ok(a) if a.port() == 0 => Err(format!(
                "`admin.listen` {listen:?} is port 0 (the proxy printed the port it got)"
            )),
            Ok(a) => Ok(a),
        },
    };
    Ok(FileAdmin {
        addr: Some(addr),
        token,
    })
}

/// Where to connect for a listener bound to `addr`: the loopback address
/// for an unspecified one (`0.0.0.0`, `[::]`).
fn connect_to(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// `POST` `ask`'s endpoint on the admin listener at `addr`.
fn by_admin(addr: SocketAddr, token: Option<&str>, ask: Ask) -> ExitCode {
    let url = format!("http://{addr}{}", ask.path());
    let (status, body) = match post(addr, ask.path(), token) {
        Ok(answer) => answer,
        Err(e) => return fail(&format!("cannot ask the proxy at {url}: {e}")),
    };
    let body = body.trim();
    match status {
        200 => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        s if s == ask.refused() => {
            eprintln!("extplug: the proxy refused: {body}");
            ExitCode::FAILURE
        }
        401 => fail(&format!(
            "{url}: 401: {body} (give --config FILE with its `admin.token`)"
        )),
        403 => fail(&format!("{url}: 403: {body}")),
        s => fail(&format!("{url}: {s}: {body}")),
    }
}

/// One `POST path` to `addr` (HTTP/1.1, closed after): its status and body.
fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            std::io::Error::new(
                e.kind(),
                "nothing listens there (is the proxy running, with `admin.listen`?)",
            )
        } else {
            e
        }
    })?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let host = match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\nuser-agent: extplug/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        req.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut {
            std::io::Error::new(
                e.kind(),
                format!("no answer in {} s", ANSWER_TIMEOUT.as_secs()),
            )
        } else {
            e
        }
    })?;
    let answer = String::from_utf8_lossy(&answer);
    let bad = || std::io::Error::other("not an HTTP answer");
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

/// Sends `ask`'s signal to the pid in `pid_file`.
fn by_signal(pid_file: &Path, ask: Ask) -> ExitCode {
    let shown = pid_file.display();
    let text = match std::fs::read_to_string(pid_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(&format!(
                "{shown}: no pid file (is `extplug proxy --pid-file {shown}` running?)"
            ))
        }
        Err(e) => return fail(&format!("{shown}: cannot read it: {e}")),
    };
    let pid = match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => pid,
        _ => return fail(&format!("{shown}: not a pid: {:?}", text.trim())),
    };
    // A stale file's pid may belong to another program by now: a SIGHUP
    // would end it. Where /proc tells, the process must be `extplug proxy`.
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let extplug = args.first().is_some_and(|a| a.ends_with(b"extplug"));
        if !extplug || !args.contains(&&b"proxy"[..]) {
            return fail(&format!(
                "{shown}: stale pid file: process {pid} is not `extplug proxy`"
            ));
        }
    }
    let signal = ask.signal();
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) => {
            println!(
                "sent {} to extplug proxy (pid {pid}): its log says how it went",
                signal.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(nix::errno::Errno::ESRCH) => fail(&format!(
            "{shown}: stale pid file: no process {pid} (the proxy is not running)"
        )),
        Err(e) => fail(&format!("signalling pid {pid} (from {shown}): {e}")),
    }
}
