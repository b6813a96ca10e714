//! `extplug bench ...`: the benchmarks' arguments and dispatch (the
//! benchmarks themselves are in `bench/`).

use crate::bench;
use crate::runtime::fail;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchArgs {
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
pub struct RunnerBenchArgs {
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
    /// The wire spoken to the runner: `capnp` (extplug's) or `apisix`
    /// (APISIX's FlatBuffers; no body cases, since its runner asks the
    /// body with EXTRA_INFO).
    #[arg(long, default_value = "capnp", value_parser = parse_protocol)]
    protocol: extplug::wire::Protocol,
}

fn parse_protocol(s: &str) -> Result<extplug::wire::Protocol, String> {
    extplug::wire::Protocol::from_name(s).ok_or_else(|| format!("{s:?} is not `capnp` or `apisix`"))
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
pub enum BenchCommand {
    /// The runner against a bare socket server answering the same frames
    /// (the floor): connection counts, header counts, body sizes.
    Runner(RunnerBenchArgs),
    /// The proxy with a plugin chain against the proxy without.
    Proxy(BenchArgs),
    /// The route matcher alone: ns per match at each route count (exact
    /// URI, prefix, host, no match).
    Router {
        /// Route counts (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [10, 10_000])]
        routes: Vec<usize>,
        /// Matches per round.
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
        /// Rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
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

/// Runs the benchmark `what`.
pub fn run(what: BenchCommand) -> ExitCode {
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
    if let BenchCommand::Router {
        routes,
        iterations,
        rounds,
    } = what
    {
        return match bench::router::run(&routes, iterations.max(1), rounds.max(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("bench router: {e}")),
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    match what {
        BenchCommand::Client { .. } | BenchCommand::Router { .. } => {
            unreachable!("handled above")
        }
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
                protocol: args.protocol,
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
