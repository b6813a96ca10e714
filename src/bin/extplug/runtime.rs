//! What the subcommands share: a runtime that a signal interrupts cleanly,
//! the proxy's runtime (`EXTPLUG_THREADS`), serving until a signal, and the
//! exit status of a failure.

use extplug::host;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Runs `work` on a new runtime with a token that SIGTERM/SIGINT cancel, so
/// that a command interrupted by a signal stops cleanly (its throwaway
/// runners stopped, their directories removed). `Err`: the exit code of a
/// runtime that could not start (already reported).
pub fn interruptible<T, F>(work: impl FnOnce(CancellationToken) -> F) -> Result<T, ExitCode>
where
    F: std::future::Future<Output = T>,
{
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| fail(&format!("starting the runtime: {e}")))?;
    Ok(runtime.block_on(async {
        let interrupted = CancellationToken::new();
        tokio::spawn(extplug::host::stop_on_signal(interrupted.clone()));
        work(interrupted).await
    }))
}

/// Reports `message` on stderr and gives exit status 2 (a usage or
/// configuration error).
pub fn fail(message: &str) -> ExitCode {
    eprintln!("extplug: {message}");
    ExitCode::from(2)
}

/// Runs the proxy until SIGTERM/SIGINT. Prints `extplug listening on
/// http://ADDR` on stdout once it accepts connections (tests and scripts
/// wait for that line), `extplug admin listening on http://ADDR ...` when
/// the admin listener is configured, `extplug TLS listening on
/// https://ADDR` when the TLS listener is, then `after_listening`'s text.
///
/// A configuration the runner refuses (or a runner that does not start) is
/// reported once, prefixed with the file's path when there is one, with exit
/// status 2. SIGHUP reloads the configuration from `source` (see README,
/// "Operations").
///
/// With `pid_file`, the proxy's pid is written there once it listens (its
/// signal handlers installed: a SIGHUP sent on reading the file reloads,
/// never kills), and the file is removed at exit if it still holds that
/// pid. A pid file that cannot be written stops the proxy (exit status 2).
pub fn serve(
    config: host::config::Config,
    source: Option<host::gateway::ConfigSource>,
    pid_file: Option<&Path>,
    after_listening: Option<Box<dyn FnOnce(host::Listening) -> String>>,
) -> ExitCode {
    let runtime = match proxy_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let mut pid_failed = None;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(extplug::host::stop_on_signal(shutdown.clone()));
        let stop = shutdown.clone();
        host::run_from(config, source.clone(), shutdown, |at| {
            if let Some(path) = pid_file {
                if let Err(e) = write_pid(path) {
                    pid_failed = Some(format!("writing the pid file {}: {e}", path.display()));
                    stop.cancel();
                    return;
                }
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "extplug listening on http://{}", at.proxy);
            if let Some(admin) = at.admin {
                let _ = writeln!(
                    out,
                    "extplug admin listening on http://{admin} (GET /metrics, /healthz, /readyz)"
                );
            }
            if let Some(tls) = at.tls {
                let _ = writeln!(out, "extplug TLS listening on https://{tls}");
            }
            if let Some(after) = after_listening {
                let _ = write!(out, "{}", after(at));
            }
            let _ = out.flush();
        })
        .await
    });
    if let Some(path) = pid_file {
        remove_pid(path);
    }
    if let Some(why) = pid_failed {
        return fail(&why);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config_error() => match &source {
            Some(source) => fail(&format!("{}: {e}", source.path.display())),
            None => fail(&e.to_string()),
        },
        Err(e) => {
            eprintln!("extplug: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes this process's pid to `path`, whole (a file written beside it,
/// then renamed: a reader never sees it half written).
fn write_pid(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes the pid file at `path` if it holds this process's pid (not a
/// newer proxy's that replaced it).
fn remove_pid(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|s| s.trim().parse::<u32>().ok() == Some(std::process::id()));
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// The environment variable that sets the proxy's number of threads.
const THREADS_ENV: &str = "EXTPLUG_THREADS";

/// The proxy's runtime: `EXTPLUG_THREADS` worker threads; by default half
/// the machine's cores, at least one, since the runner, a process of its
/// own on the same machine, needs the others. With one thread it is a
/// current-thread runtime: no wake-ups across threads, no work stealing.
/// On 2 cores shared by the proxy, its runner, the upstream and the load
/// generator, that gave a shorter tail and more requests per second than
/// two worker threads (see README, "Running the proxy").
///
/// # Errors
/// `EXTPLUG_THREADS` is not a positive number, or the runtime cannot start.
fn proxy_runtime() -> Result<tokio::runtime::Runtime, String> {
    let threads = match std::env::var(THREADS_ENV) {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("{THREADS_ENV}={v:?}: expected a number of threads, 1 or more")
            })?,
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}
