//! `extplug proxy --config FILE [--listen ADDR]`: the proxy with its
//! runners, reloading from the file on SIGHUP.

use crate::runtime::{fail, serve};
use extplug::host;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

/// Loads the file at `config` and serves it until SIGTERM/SIGINT.
pub fn run(config: &Path, listen: Option<SocketAddr>) -> ExitCode {
    match host::config::Config::load(config) {
        Ok(mut c) => {
            if let Some(listen) = listen {
                c.listen = listen;
            }
            let source = host::gateway::ConfigSource {
                path: config.to_owned(),
                listen,
            };
            serve(c, Some(source), None)
        }
        Err(e) => fail(&e.to_string()),
    }
}
