//! File descriptors: the soft `RLIMIT_NOFILE` raised to the hard limit at
//! start (as Go's runtime and nginx's `worker_rlimit_nofile` do), and
//! `max_client_connections` clamped to what the descriptors allow, so that
//! connections past them wait in the listen backlog (as documented) rather
//! than fail in `accept` with "Too many open files".

use crate::host::config::{ClientLimits, Config};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tracing::warn;

/// Descriptors kept for everything but client and upstream connections:
/// the admin listener and its clients, etcd, log pipes, runner starts and
/// readiness checks, upstream connections idle in the pools.
const SPARE: u64 = 64;

/// Raises the soft descriptor limit to the hard one (runners get the old
/// one back: [`crate::host::runner::process::restore_nofile_in_runners`]); the soft limit in
/// effect afterwards (the old one if it could not be raised), `None` if
/// it cannot be read.
pub fn raise_nofile() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            crate::host::runner::process::restore_nofile_in_runners(soft);
            Some(hard)
        }
        Err(e) => {
            warn!(soft, hard, cause = %e, "cannot raise the file descriptor limit");
            Some(soft)
        }
    }
}

/// The client connections `nofile` descriptors allow: each takes two (the
/// client's and, while a request is forwarded, the upstream's), after
/// `open` already open, the runners' connections (`pool_size` +
/// `max_waiting_calls` each, and a readiness check) and 64 spare.
pub fn connections_allowed(nofile: u64, open: u64, config: &Config) -> usize {
    let runners: u64 = std::iter::once(&config.runner)
        .chain(config.runners.values())
        .map(|r| (r.pool_size + r.max_waiting_calls) as u64 + 2)
        .sum();
    let left = nofile.saturating_sub(open + runners + SPARE);
    usize::try_from(left / 2).unwrap_or(usize::MAX).max(1)
}

/// The descriptors this process has open now.
fn open_now() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Raises the limit; `config`'s client limits with `max_client_connections`
/// clamped to what the descriptors allow (with a warning naming both when
/// it is). The configuration itself keeps the value written, so that a
/// reload of the same file is no change.
pub fn fit(config: &Config) -> ClientLimits {
    let mut limits = config.client;
    let Some(nofile) = raise_nofile() else {
        return limits;
    };
    let allowed = connections_allowed(nofile, open_now(), config);
    if limits.max_connections > allowed {
        warn!(
            max_client_connections = limits.max_connections,
            clamped_to = allowed,
            nofile,
            "`max_client_connections` is more than the file descriptor limit allows (two per connection: client and upstream); clamped; raise the hard limit (`ulimit -Hn`, systemd's LimitNOFILE) to serve more"
        );
        limits.max_connections = allowed;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_connection_after_the_runners_and_the_spare() {
        let mut c =
            Config::parse(r#"{"ext-plugin":{"cmd":["r"],"pool_size":10},"routes":[]}"#).unwrap();
        // 10 + 10 (max_waiting_calls) + 2 for the runner, 64 spare, 6 open.
        assert_eq!(connections_allowed(1024, 6, &c), (1024 - 6 - 22 - 64) / 2);
        assert_eq!(connections_allowed(50, 6, &c), 1, "never 0");
        c.runners.insert("b".into(), c.runner.clone());
        assert_eq!(connections_allowed(1024, 6, &c), (1024 - 6 - 44 - 64) / 2);
    }
}
