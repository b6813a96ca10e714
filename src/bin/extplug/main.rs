//! `extplug`: the gateway side of out-of-process plugins.
//!
//! - `extplug proxy --config FILE`: the HTTP reverse proxy with its runner.
//! - `extplug demo`: the proxy with the example runner on a built-in
//!   configuration and echo upstream; `--tls` adds HTTPS and HTTP/2 with a
//!   self-signed certificate made at start.
//! - `extplug check --config FILE`: validate a configuration with a
//!   throwaway runner (every chain prepared), and exit; `--offline`: the
//!   file only.
//! - `extplug reload` / `extplug upgrade`: ask a running proxy to reload
//!   its configuration / upgrade its runners, through its admin listener
//!   (`--admin ADDR`, `--config FILE`) or by signal (`--pid-file PATH`).
//! - `extplug routes --config FILE`: list the routes the proxy would serve
//!   from the file or from etcd, and each object skipped with the reason.
//! - `extplug echo --listen ADDR`: the demo's echo upstream on its own, to
//!   try a configuration against.
//!
//! This file parses the arguments, starts the log and dispatches: each
//! subcommand is a file of `commands/` (cargo's habit), `runtime.rs` holds
//! what they share (the proxy's runtime, signals, exit codes), `bench/`
//! the benchmarks.

mod bench;
mod commands;
mod runtime;

use clap::{Parser, Subcommand};
use commands::bench::BenchCommand;
use commands::control::Target;
use extplug::host::logging::{init_logging_with, LogFormat};
use runtime::fail;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where `extplug demo --tls` listens for TLS without `--tls-listen`:
/// APISIX's HTTPS port.
const DEMO_TLS_LISTEN: &str = "127.0.0.1:9443";

#[derive(Parser)]
#[command(
    name = "extplug",
    version,
    about = "Out-of-process plugins for API gateways"
)]
struct Cli {
    /// The log lines on stderr: `text`, or `json` (one object per line;
    /// the runners started log JSON too, relayed with their pid and name).
    /// Default: `EXTPLUG_LOG_FORMAT`, else `text`.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP reverse proxy and its plugin runner.
    #[command(after_help = commands::proxy::SIGNALS)]
    Proxy {
        /// The JSON configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Where to listen, overriding the file's `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Write the proxy's pid to this file once it listens, and remove
        /// the file at exit (for `extplug reload --pid-file`).
        #[arg(long, value_name = "PATH")]
        pid_file: Option<PathBuf>,
    },
    /// Ask a running proxy to reload its configuration file (as SIGHUP).
    /// Exit status 0: reloaded (or, by signal, the signal sent); 1: the
    /// proxy refused the new configuration (the reason printed; it keeps
    /// serving the old one); 2: the proxy could not be asked.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Ask a running proxy to upgrade its runners in place (as SIGUSR2):
    /// new processes from the runner binaries now on disk, without
    /// downtime. Exit status 0: upgraded (or the signal sent); 1: the proxy
    /// could not upgrade (the reason printed); 2: it could not be asked.
    Upgrade {
        #[command(flatten)]
        target: Target,
    },
    /// Run an echo upstream: every request is answered with a JSON object of
    /// what it received (method, path, query, headers, body).
    Echo {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9081")]
        listen: std::net::SocketAddr,
    },
    /// Run the proxy with the example runner on a built-in configuration.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:9080")]
        listen: String,
        /// The runner program (default: `examples/demo-runner` next to this binary).
        #[arg(long)]
        runner: Option<PathBuf>,
        /// Where the admin listener (metrics, health) listens.
        #[arg(long, default_value = "127.0.0.1:9091")]
        admin: String,
        /// Also open a TLS listener (HTTP/1.1 and HTTP/2) with a
        /// self-signed certificate for localhost and 127.0.0.1, made at start.
        #[arg(long)]
        tls: bool,
        /// Where the TLS listener listens (implies --tls).
        #[arg(long, value_name = "ADDR")]
        tls_listen: Option<String>,
    },
    /// Check a configuration and exit (0: valid; 2: not, with the reason):
    /// the file, then, with a throwaway runner, that the runner starts and
    /// prepares every route's chains.
    Check {
        /// The JSON configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Check the file only; do not start the runner.
        #[arg(long)]
        offline: bool,
        /// Log what the check does (`info`); without it, only warnings and
        /// errors are logged, and a valid configuration prints one line.
        /// `RUST_LOG`, when set, chooses instead.
        #[arg(long, short)]
        verbose: bool,
    },
    /// List the routes the proxy would serve from its source (the file, or
    /// etcd with `"etcd"`), each chain prepared by a throwaway runner, and
    /// every object skipped with the reason. Exit status 0: every route is
    /// served; 1: some object is skipped; 2: the source cannot be read.
    Routes {
        /// The JSON configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Do not start the runners (chains are not prepared).
        #[arg(long)]
        offline: bool,
    },
    /// Benchmarks, measured side by side (see README, "Performance").
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match cli.log_format {
        Some(format) => format,
        // As the runners read it: a container sets it once for both.
        None => match std::env::var(extplug::LOG_FORMAT_ENV) {
            Ok(v) => match v.parse() {
                Ok(format) => format,
                Err(e) => return fail(&format!("{}: {e}", extplug::LOG_FORMAT_ENV)),
            },
            Err(_) => LogFormat::Text,
        },
    };
    // `check` is quiet as `nginx -t` is: the verdict, warnings, errors.
    let quiet = matches!(cli.command, Command::Check { verbose: false, .. });
    init_logging_with(log_format, if quiet { "warn" } else { "info" });
    match cli.command {
        Command::Check {
            config, offline, ..
        } => commands::check::run(&config, offline),
        Command::Proxy {
            config,
            listen,
            pid_file,
        } => commands::proxy::run(&config, listen, pid_file),
        Command::Reload { target } => {
            commands::control::run(&target, commands::control::Ask::Reload)
        }
        Command::Upgrade { target } => {
            commands::control::run(&target, commands::control::Ask::Upgrade)
        }
        Command::Routes { config, offline } => commands::routes::run(&config, offline),
        Command::Echo { listen } => commands::echo::run(listen),
        Command::Demo {
            listen,
            runner,
            admin,
            tls,
            tls_listen,
        } => {
            let tls_listen = tls_listen.or_else(|| tls.then(|| DEMO_TLS_LISTEN.to_owned()));
            commands::demo::run(&listen, &admin, tls_listen.as_deref(), runner)
        }
        Command::Bench { what } => commands::bench::run(what),
    }
}
