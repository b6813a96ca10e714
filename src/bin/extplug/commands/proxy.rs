//! `extplug proxy --config FILE [--listen ADDR] [--pid-file PATH]`: the
//! proxy with its runners, reloading from the file on SIGHUP.

use crate::runtime::{fail, serve};
use extplug::host;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The signals the proxy takes, for `extplug proxy --help` (the same table
/// is in docs/operations.md).
pub const SIGNALS: &str = "\
Signals (to the pid of `extplug proxy`, written by --pid-file):
  HUP   reload the configuration file; a refused one is logged and the old
        one keeps serving (as `extplug reload`, POST /reload)
  USR2  upgrade the runners in place: new processes from the binaries now
        on disk, without downtime (as `extplug upgrade`, POST /runners/restart)
  TERM  graceful stop: stop accepting, finish the requests in flight (up to
        `shutdown_grace_ms`), stop the runners, remove the pid file
  INT   stop (Ctrl-C): the same graceful stop as TERM";

/// Loads the file at `config` and serves it until SIGTERM/SIGINT, with
/// its pid in `pid_file` while it listens.
pub fn run(config: &Path, listen: Option<SocketAddr>, pid_file: Option<PathBuf>) -> ExitCode {
    match host::config::Config::load(config) {
        Ok(mut c) => {
            if let Some(listen) = listen {
                c.listen = listen;
            }
            let source = host::gateway::ConfigSource {
                path: config.to_owned(),
                listen,
            };
            serve(c, Some(source), pid_file.as_deref(), None)
        }
        Err(e) => fail(&e.to_string()),
    }
}
