//! `extplug check --config FILE [--offline]`: the file, then (unless
//! offline) a throwaway runner that prepares every chain, without a
//! standby; exit 0 or 2. Quiet as `nginx -t`: the verdict on stdout, and
//! only warnings and errors logged unless `--verbose` (see `main.rs`).

use crate::runtime::{fail, interruptible};
use extplug::host;
use std::path::Path;
use std::process::ExitCode;

/// Loads and checks the file at `path`.
pub fn run(path: &Path, offline: bool) -> ExitCode {
    match host::config::Config::load(path) {
        Ok(c) => check(path, &c, offline),
        Err(e) => fail(&e.to_string()),
    }
}

/// `extplug check` of a loaded configuration: with `offline`, nothing more;
/// else a throwaway runner (without a standby) prepares every chain, and is
/// stopped again (its socket directory removed).
fn check(path: &Path, config: &host::config::Config, offline: bool) -> ExitCode {
    // The certificates were checked with the file (they parse, the keys
    // match, none has expired); one that expires soon is worth a word.
    for warning in host::config::tls::expiry_warnings(&config.ssls) {
        eprintln!("extplug: warning: {warning}");
    }
    let n = config.routes.len();
    let routes = if config.etcd.is_some() {
        // The routes are in etcd, not here: `extplug routes` checks them.
        "routes in the file; the routes come from etcd (`extplug routes` checks them)"
    } else if n == 1 {
        "route"
    } else {
        "routes"
    };
    let routes = match config.ssls.len() {
        0 => routes.to_owned(),
        1 => format!("{routes}, 1 certificate"),
        k => format!("{routes}, {k} certificates"),
    };
    if offline {
        println!("{}: valid: {n} {routes} (file only)", path.display());
        return ExitCode::SUCCESS;
    }
    // One process per runner prepares the chains: no standby to start (and
    // stop) for nothing.
    let mut throwaway = config.clone();
    throwaway.runner.standby = false;
    for runner in throwaway.runners.values_mut() {
        runner.standby = false;
    }
    let result = interruptible(|interrupted| async move {
        match host::runner::set::Runners::start(&throwaway, &interrupted).await? {
            Some(runners) => {
                runners.stop().await;
                Ok::<bool, host::runner::set::StartError>(true)
            }
            None => Ok(false),
        }
    });
    let result = match result {
        Ok(result) => result,
        Err(code) => return code,
    };
    match result {
        Ok(false) => {
            eprintln!("extplug: check interrupted");
            ExitCode::FAILURE
        }
        Ok(true) => {
            let chains: usize = config
                .routes
                .iter()
                .map(|r| {
                    [
                        r.pre_req.is_some(),
                        r.post_req.is_some(),
                        r.post_resp.is_some(),
                    ]
                    .iter()
                    .filter(|p| **p)
                    .count()
                })
                .sum();
            println!(
                "{}: valid: {n} {routes}; the runner prepared all {chains} chains",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{}: {e}", path.display())),
    }
}
