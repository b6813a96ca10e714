//! `extplug`: the gateway side of out-of-process plugins.
//!
//! - `extplug proxy --config FILE`: the HTTP reverse proxy with its runner.
//! - `extplug demo`: the proxy with the example runner on a built-in
//!   configuration and echo upstream.
//! - `extplug check --config FILE`: validate a configuration with a
//!   throwaway runner (every chain prepared), and exit; `--offline`: the
//!   file only.
//! - `extplug routes --config FILE`: list the routes the proxy would serve
//!   from the file or from etcd, and each object skipped with the reason.
//! - `extplug echo --listen ADDR`: the demo's echo upstream on its own, to
//!   try a configuration against.

mod bench;

use clap::{Parser, Subcommand};
use extplug::host;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

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
    log_format: Option<extplug::host::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP reverse proxy and its plugin runner.
    Proxy {
        /// The JSON configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Where to listen, overriding the file's `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
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

#[derive(clap::Args)]
struct BenchArgs {
    /// The runner program (default: `examples/demo-runner` next to this binary).
    #[arg(long)]
    runner: Option<PathBuf>,
    /// The chain, as NAME=JSON (repeatable; default: key-auth then rewrite).
    #[arg(long = "plugin", value_parser = parse_plugin)]
    plugins: Vec<(String, String)>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds per side (the medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(clap::Args)]
struct RunnerBenchArgs {
    /// The runner program (default: `examples/demo-runner` next to this binary).
    #[arg(long)]
    runner: Option<PathBuf>,
    /// The chain, as NAME=JSON (repeatable; default: `say` answering "ok").
    /// The body cases run `body-size` first, then this chain.
    #[arg(long = "plugin", value_parser = parse_plugin)]
    plugins: Vec<(String, String)>,
    /// The typical request (20 headers, about 2.1 KB) at each of these
    /// connection counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16, 64])]
    connections: Vec<usize>,
    /// Requests of each of these header counts (comma-separated; `none`: no
    /// such case), at `--growth-connections`.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_values_t = [10, 50, 100])]
    headers: Vec<usize>,
    /// The typical request with a body of each of these sizes in bytes
    /// (comma-separated; `none`: no such case), at `--growth-connections`.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_values_t = [1024, 65536, 1048576])]
    bodies: Vec<usize>,
    /// Connections of the header and body cases.
    #[arg(long, default_value_t = 16)]
    growth_connections: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds per side (the medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads of the load generator (a separate process).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn parse_plugin(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=JSON"))
}

/// A whole number; `none` gives 0, which the runner bench drops (no case).
fn parse_count(s: &str) -> Result<usize, String> {
    if s == "none" {
        return Ok(0);
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not a whole number (or `none`)"))
}

/// A positive number of seconds.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The runner against a bare socket server answering the same frames
    /// (the floor): connection counts, header counts, body sizes.
    Runner(RunnerBenchArgs),
    /// The proxy with a plugin chain against the proxy without.
    Proxy(BenchArgs),
    /// The bare socket server (the floor of `bench runner`).
    BareServer {
        /// Where to listen.
        #[arg(long)]
        socket: PathBuf,
        /// The whole frame to answer every frame with (default: a canned
        /// *continue* answer).
        #[arg(long)]
        answer: Option<PathBuf>,
    },
    /// The runner bench's load generator (started by `bench runner`).
    #[command(hide = true)]
    Client {
        /// The server's socket.
        #[arg(long)]
        socket: PathBuf,
        /// The file holding the whole frame to send.
        #[arg(long)]
        frame: PathBuf,
        /// Connections kept busy.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
        seconds: f64,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
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
            Err(_) => extplug::host::logging::LogFormat::Text,
        },
    };
    extplug::host::logging::init_logging_as(log_format);
    match cli.command {
        Command::Check { config, offline } => match host::config::Config::load(&config) {
            Ok(c) => check(&config, &c, offline),
            Err(e) => fail(&e.to_string()),
        },
        Command::Proxy { config, listen } => match host::config::Config::load(&config) {
            Ok(mut c) => {
                if let Some(listen) = listen {
                    c.listen = listen;
                }
                let source = host::gateway::ConfigSource {
                    path: config.clone(),
                    listen,
                };
                serve(c, Some(source), None)
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Routes { config, offline } => routes(&config, offline),
        Command::Echo { listen } => echo(listen),
        Command::Demo {
            listen,
            runner,
            admin,
        } => demo(&listen, &admin, runner),
        Command::Bench { what } => run_bench(what),
    }
}

fn run_bench(what: BenchCommand) -> ExitCode {
    // The load generator makes its own threads, one runtime each.
    if let BenchCommand::Client {
        socket,
        frame,
        connections,
        seconds,
        threads,
    } = what
    {
        let client = bench::client::Client {
            socket,
            frame,
            connections,
            seconds,
            threads,
        };
        return match bench::client::run(&client) {
            Ok(summary) => {
                println!("{}", summary.line());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    match what {
        BenchCommand::Client { .. } => unreachable!("handled above"),
        BenchCommand::BareServer { socket, answer } => {
            match runtime.block_on(bench::runner::bare_server(&socket, answer.as_deref())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("bare server: {e}")),
            }
        }
        BenchCommand::Runner(args) => {
            if !(args.seconds > 0.0 && args.seconds.is_finite()) {
                return fail(&format!(
                    "--seconds {}: not a positive number",
                    args.seconds
                ));
            }
            let chain = if args.plugins.is_empty() {
                vec![("say".to_owned(), r#"{"body":"ok"}"#.to_owned())]
            } else {
                args.plugins
            };
            let suite = bench::runner::Suite {
                runner: args.runner.unwrap_or_else(bench::default_runner),
                chain,
                connections: args.connections.into_iter().filter(|c| *c > 0).collect(),
                headers: args.headers.into_iter().filter(|h| *h > 0).collect(),
                bodies: args.bodies.into_iter().filter(|b| *b > 0).collect(),
                growth_connections: args.growth_connections.max(1),
                seconds: args.seconds,
                rounds: args.rounds.max(1),
                threads: args.threads.max(1),
            };
            match runtime.block_on(bench::runner::run(&suite)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("bench runner: {e}")),
            }
        }
        BenchCommand::Proxy(args) => {
            let chain = if args.plugins.is_empty() {
                vec![
                    (
                        "key-auth".to_owned(),
                        r#"{"keys":["bench-key"]}"#.to_owned(),
                    ),
                    (
                        "rewrite".to_owned(),
                        r#"{"headers":{"x-bench":"1"}}"#.to_owned(),
                    ),
                ]
            } else {
                args.plugins.clone()
            };
            let load = bench::Load {
                connections: args.connections.max(1),
                seconds: args.seconds,
                rounds: args.rounds.max(1),
            };
            let runner = args.runner.unwrap_or_else(bench::default_runner);
            runtime.block_on(bench::proxy(&runner, &chain, &load));
            ExitCode::SUCCESS
        }
    }
}

/// `extplug check` of a loaded configuration: with `offline`, nothing more;
/// else a throwaway runner prepares every chain, and is stopped again (its
/// socket directory removed).
fn check(path: &std::path::Path, config: &host::config::Config, offline: bool) -> ExitCode {
    let n = config.routes.len();
    let routes = if config.etcd.is_some() {
        // The routes are in etcd, not here: `extplug routes` checks them.
        "routes in the file; the routes come from etcd (`extplug routes` checks them)"
    } else if n == 1 {
        "route"
    } else {
        "routes"
    };
    if offline {
        println!("{}: valid: {n} {routes} (file only)", path.display());
        return ExitCode::SUCCESS;
    }
    let result = interruptible(|interrupted| async move {
        match host::runner::set::Runners::start(config, &interrupted).await? {
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

/// `extplug routes`: prints the listing ([`host::source::list`]).
fn routes(path: &std::path::Path, offline: bool) -> ExitCode {
    let result = interruptible(|interrupted| async move {
        host::source::list::check(path, offline, &interrupted).await
    });
    let result = match result {
        Ok(result) => result,
        Err(code) => return code,
    };
    match result {
        Ok((table, source)) => {
            print!("{}", host::source::list::render(&table, &source));
            if table.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// Runs `work` on a new runtime with a token that SIGTERM/SIGINT cancel, so
/// that a command interrupted by a signal stops cleanly (its throwaway
/// runners stopped, their directories removed). `Err`: the exit code of a
/// runtime that could not start (already reported).
fn interruptible<T, F>(work: impl FnOnce(CancellationToken) -> F) -> Result<T, ExitCode>
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

fn fail(message: &str) -> ExitCode {
    eprintln!("extplug: {message}");
    ExitCode::from(2)
}

/// Runs the proxy until SIGTERM/SIGINT. Prints `extplug listening on
/// http://ADDR` on stdout once it accepts connections (tests and scripts
/// wait for that line), `extplug admin listening on http://ADDR ...` when
/// the admin listener is configured, then `after_listening`'s text.
///
/// A configuration the runner refuses (or a runner that does not start) is
/// reported once, prefixed with the file's path when there is one, with exit
/// status 2. SIGHUP reloads the configuration from `source` (see README,
/// "Operations").
fn serve(
    config: host::config::Config,
    source: Option<host::gateway::ConfigSource>,
    after_listening: Option<Box<dyn FnOnce(host::Listening) -> String>>,
) -> ExitCode {
    let runtime = match proxy_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(extplug::host::stop_on_signal(shutdown.clone()));
        host::run_from(config, source.clone(), shutdown, |at| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "extplug listening on http://{}", at.proxy);
            if let Some(admin) = at.admin {
                let _ = writeln!(
                    out,
                    "extplug admin listening on http://{admin} (GET /metrics, /healthz, /readyz)"
                );
            }
            if let Some(after) = after_listening {
                let _ = write!(out, "{}", after(at));
            }
            let _ = out.flush();
        })
        .await
    });
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

/// Serves the echo upstream until SIGTERM/SIGINT. Prints `extplug echo
/// listening on http://ADDR` once it accepts connections.
fn echo(listen: std::net::SocketAddr) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    runtime.block_on(async {
        // Handlers first: a signal right after the listening line must stop
        // us cleanly, not by its default action.
        let stopped = extplug::host::stop_on_signal(CancellationToken::new());
        let addr = match host::demo::start_echo_on(listen).await {
            Ok(addr) => addr,
            Err(e) => return fail(&format!("cannot listen on {listen}: {e}")),
        };
        println!("extplug echo listening on http://{addr}");
        let _ = std::io::stdout().flush();
        stopped.await;
        ExitCode::SUCCESS
    })
}

fn demo(listen: &str, admin: &str, runner: Option<PathBuf>) -> ExitCode {
    let runner = match runner {
        Some(r) => r,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("examples").join("demo-runner"),
            Err(e) => return fail(&format!("cannot find this program's path: {e}")),
        },
    };
    if !runner.exists() {
        return fail(&format!(
            "the example runner {} is missing: build it with `cargo build --release --example demo-runner` (scripts/demo.sh does), or pass --runner",
            runner.display()
        ));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    let upstream = match runtime.block_on(host::demo::start_echo()) {
        Ok(addr) => addr,
        Err(e) => return fail(&format!("starting the echo upstream: {e}")),
    };
    let config = match host::demo::config(listen, admin, upstream, &runner.to_string_lossy()) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    // The echo server lives on `runtime`; the proxy gets its own.
    let _keep = runtime;
    serve(
        config,
        None,
        Some(Box::new(move |at| {
            format!(
                "echo upstream on http://{upstream}; runner {}\nTry:\n{}",
                runner.display(),
                host::demo::curl_lines(at.proxy, at.admin)
            )
        })),
    )
}
