//! The configuration as plain data: what a route, a phase, a runner and an
//! upstream are. Read this first; the JSON shape and its defaults are in
//! `raw.rs`, the checks in `validate.rs`, `apisix.rs` and `uri.rs`, and
//! `load.rs` puts them together ([`Config::load`]).

use super::expr::VarsExpr;
use crate::host::edge::hostname::HostPattern;
use http::Method;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Duration;

/// The name of the runner of the `ext-plugin` section, which a route phase
/// without `runner` uses.
pub const DEFAULT_RUNNER: &str = "default";

/// The three phases a route can run plugins in, named as in APISIX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `ext-plugin-pre-req`: before the upstream, first.
    PreReq,
    /// `ext-plugin-post-req`: before the upstream, after `ext-plugin-pre-req`.
    PostReq,
    /// `ext-plugin-post-resp`: after the upstream answered.
    PostResp,
}

impl Phase {
    /// The phase's plugin name in a route's `plugins`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::PreReq => "ext-plugin-pre-req",
            Phase::PostReq => "ext-plugin-post-req",
            Phase::PostResp => "ext-plugin-post-resp",
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// How to run and talk to the default runner (`ext-plugin`, named
    /// [`DEFAULT_RUNNER`]).
    pub runner: RunnerConf,
    /// The other runners (`runners`), by name; never [`DEFAULT_RUNNER`].
    pub runners: BTreeMap<String, RunnerConf>,
    /// The routes, in file order.
    pub routes: Vec<Route>,
    /// The largest request body read for a plugin (413 past it).
    pub max_request_body: usize,
    /// The largest upstream body buffered for a plugin (502 past it).
    pub max_response_body: usize,
    /// The bytes all bodies buffered for plugins may hold at once
    /// (`max_buffered_body_bytes`); past it a body is refused with 503.
    pub max_buffered_body: usize,
    /// How long requests in flight may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// The longest wait for the next bytes of a client's request body, like
    /// nginx's `client_body_timeout`: past it the client gets 408.
    pub client_body_timeout: Duration,
    /// Limits on client connections (timeouts, counts, header size).
    pub client: ClientLimits,
    /// The admin listener (metrics, health, reload); off when `None`.
    pub admin: Option<AdminConf>,
    /// Where the routes come from when not from this file: an etcd cluster
    /// holding APISIX's keys (`"etcd": {...}`); `routes` is empty then, and
    /// filled by [`crate::host::source::etcd`].
    pub etcd: Option<EtcdConf>,
    /// The TLS listener (`tls`); off when `None`.
    pub tls: Option<super::tls::TlsConf>,
    /// The file's SSL objects (`ssls`), checked, in file order.
    pub ssls: Vec<super::tls::Ssl>,
}

/// The `etcd` section: the cluster and the key prefix the routes, upstreams
/// and services are read from, as APISIX's `deployment.etcd` names them.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConf {
    /// `http://host:port` of each member.
    pub endpoints: Vec<String>,
    /// The key prefix (APISIX's `/apisix`), without a trailing `/`.
    pub prefix: String,
    /// The time limit of one request to etcd (connecting included).
    pub timeout: Duration,
    /// `(user, password)` for etcd's authentication, when set.
    pub auth: Option<(String, String)>,
    /// The keys etcd's SSL objects' encrypted keys are decrypted with
    /// (`tls.keyring`, else APISIX's default).
    pub keyring: super::tls::Keyring,
}

impl std::fmt::Debug for EtcdConf {
    /// Without the password: the configuration may be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConf")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// The admin listener's settings (`"admin": {"listen": ADDR, "hosts": [...],
/// "token": "..."}`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConf {
    /// Where it listens (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// Host names a request may name in `Host` besides the address it came
    /// to and `localhost` (with or without the port): the names the
    /// listener is reached by (a load balancer's, a Kubernetes service's).
    pub hosts: Vec<String>,
    /// When set, every endpoint but `/healthz` and `/readyz` wants
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConf {
    /// Without the token: the configuration may be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConf")
            .field("listen", &self.listen)
            .field("hosts", &self.hosts)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Limits on the proxy's client side, with nginx-like defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// How long a client has to send a request's whole header, from the
    /// connection's start or the first byte of a later request (nginx's
    /// `client_header_timeout`).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection is kept open (nginx's
    /// `keepalive_timeout`); zero turns keep-alive off.
    pub keepalive_timeout: Duration,
    /// Client connections served at once; past it, new connections wait in
    /// the listen backlog until one closes.
    pub max_connections: usize,
    /// The largest request header (request line included); past it: 431.
    pub max_header_bytes: usize,
    /// The most header fields a request may have; past it: 431. hyper
    /// counts fields (its default is 100); nginx only counts bytes.
    pub max_headers: usize,
    /// HTTP/2's limits (`http2`); its header list size is `max_header_bytes`.
    pub http2: super::tls::Http2Limits,
}

/// The `ext-plugin` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConf {
    /// The runner's name: `default` for `ext-plugin`, the key for one of
    /// `runners` (log lines and metrics labels carry it).
    pub name: String,
    /// The runner's argv (a relative program path is resolved against the
    /// proxy's working directory).
    pub cmd: Vec<String>,
    /// Extra environment for the runner. The runner's environment is
    /// otherwise cleared, except for `PATH`, `HOME`, `LANG`, `LC_*`, `TZ`,
    /// `RUST_LOG` and `RUST_BACKTRACE`; the `APISIX_*` variables the host
    /// sets cannot be named here.
    pub env: BTreeMap<String, String>,
    /// `APISIX_CONF_EXPIRE_TIME` for the runner; the proxy keeps tokens 0.9 x this.
    pub conf_expire: Duration,
    /// Time limit of the runner's part of one call (waiting for its
    /// answers, EXTRA_INFO requests included); the time the host takes to
    /// gather an EXTRA_INFO answer (reading the client's body) does not count.
    pub call_timeout: Duration,
    /// How long the runner has to open its socket.
    pub start_timeout: Duration,
    /// How long the runner has to exit after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// Connections to the runner, at most (one per call in progress; calls
    /// beyond wait for one); 0: a new connection per call, no limit.
    pub pool_size: usize,
    /// Connections to the runner held, at most, by calls waiting for a
    /// client's (or upstream's) body the runner asked for during the call
    /// (`max_waiting_calls`, default `pool_size`); with `pool_size`, the
    /// host never holds more than their sum. 0: no bound.
    pub max_waiting_calls: usize,
    /// Calls timing out in a row before the runner is deemed stuck and
    /// replaced; 0 never replaces it.
    pub restart_after_timeouts: u32,
    /// Keep a second runner process ready to take over when the active one
    /// dies (`"standby"`, default true).
    pub standby: bool,
    /// The wire the host speaks to the runner (`"protocol"`): extplug's
    /// Cap'n Proto (`"capnp"`, the default) or APISIX's FlatBuffers
    /// (`"apisix"`, for runners written for APISIX).
    pub protocol: crate::wire::Protocol,
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's `id`.
    pub id: String,
    /// URI patterns: exact, or a prefix when it ends in `*`.
    pub uris: Vec<UriPattern>,
    /// Allowed methods; `None` allows all.
    pub methods: Option<Vec<Method>>,
    /// `status: 0` in APISIX: the route is kept but matches nothing.
    pub enabled: bool,
    /// Ties between equally specific matches go to the higher priority.
    pub priority: i64,
    /// `host`/`hosts` (or its service's `hosts`): the names the route
    /// answers; empty answers any host. A route with hosts is tried before
    /// every route without.
    pub hosts: Vec<HostPattern>,
    /// `remote_addr`/`remote_addrs`: the client addresses (IPv4, IPv6,
    /// CIDRs) the route answers; empty answers any.
    pub remote_addrs: Vec<ipnet::IpNet>,
    /// `vars`: lua-resty-expr's expression over the request's variables,
    /// compiled; `None` answers any request.
    pub vars: Option<VarsExpr>,
    /// `enable_websocket` (the route's, else its service's): an
    /// `Upgrade: websocket` request is proxied as a tunnel; otherwise
    /// `Upgrade` is dropped as any hop-by-hop header.
    pub enable_websocket: bool,
    /// Where requests go.
    pub upstream: Upstream,
    /// `ext-plugin-pre-req`.
    pub pre_req: Option<PhaseConf>,
    /// `ext-plugin-post-req`.
    pub post_req: Option<PhaseConf>,
    /// `ext-plugin-post-resp`.
    pub post_resp: Option<PhaseConf>,
}

impl Route {
    /// The configuration of `phase`, if the route has that phase.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseConf> {
        match phase {
            Phase::PreReq => self.pre_req.as_ref(),
            Phase::PostReq => self.post_req.as_ref(),
            Phase::PostResp => self.post_resp.as_ref(),
        }
    }
}

/// A URI pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriPattern {
    /// Matches this path only.
    Exact(String),
    /// Matches every path that starts with this.
    Prefix(String),
}

/// A route phase: the runner's chain and what to do when the runner fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseConf {
    /// `(plugin name, JSON configuration)` in order.
    pub conf: Vec<(String, String)>,
    /// On a runner failure, go on unchanged instead of answering 503.
    pub allow_degradation: bool,
    /// Variables to send with every call, beyond what the plugins declare.
    pub extra_info: Vec<String>,
    /// The runner that runs the chain (`runner`; [`DEFAULT_RUNNER`] when
    /// absent), a name of [`Config::runner_confs`].
    pub runner: String,
    /// The configuration version sent as PREPARE_CONF's `key`: route, phase
    /// and a hash of the chain, so that a changed chain gets a new token.
    pub key: String,
}

/// An upstream: weighted nodes, how one is chosen, timeouts, retries and
/// health checks.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Which object it is, for logs and metrics: `upstreams/<id>` (an
    /// upstream object), `services/<id>` or `routes/<id>` (one held
    /// inline). Routes naming one upstream object share its health state.
    pub name: String,
    /// `(host:port, weight)`, weight > 0.
    pub nodes: Vec<(String, u32)>,
    /// The round-robin schedule: indexes into `nodes`, each node appearing
    /// weight/gcd times, spread out (nginx's smooth weighted round robin).
    pub schedule: Vec<usize>,
    /// How a node is chosen (`type`).
    pub balancer: Balancer,
    /// Connection time limit.
    pub connect_timeout: Duration,
    /// `timeout.send`: checked, and bounded by `read_timeout` (see
    /// docs/configuration.md): hyper writes the request while the answer
    /// is awaited.
    pub send_timeout: Duration,
    /// Time limit for the upstream's response headers (the request's
    /// sending included), and for each wait for more of its body.
    pub read_timeout: Duration,
    /// What `Host` the upstream gets (`pass_host`, `upstream_host`).
    pub pass_host: PassHost,
    /// Tries on other nodes after the first fails (`retries`; APISIX's
    /// default, one per other node, when absent).
    pub retries: usize,
    /// The time within which retries may start (`retry_timeout`, seconds;
    /// `None`: no limit, APISIX's 0).
    pub retry_timeout: Option<Duration>,
    /// `checks`: passive and active health checks.
    pub checks: Option<HealthChecks>,
    /// `"scheme": "https"`: TLS to the nodes, with these settings.
    pub tls: Option<UpstreamTls>,
    /// The idle connections kept to each node (`keepalive_pool`).
    pub keepalive: KeepalivePool,
}

/// TLS to an upstream's nodes (`"scheme": "https"`, `tls`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `tls.verify`: check the node's certificate (against `ca`, or the
    /// system's roots); APISIX's default is not to.
    pub verify: bool,
    /// `tls.ca`: the PEM roots to check against instead of the system's.
    pub ca: Option<String>,
    /// `tls.client_cert` and `tls.client_key` (PEM): mTLS to the nodes.
    pub client_cert: Option<(String, String)>,
}

impl std::fmt::Debug for UpstreamTls {
    /// Without the key: the configuration may be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|_| "<PEM>"))
            .field("client_cert", &self.client_cert.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// An upstream's `type`: how a request's node is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancer {
    /// `roundrobin`: nginx's smooth weighted round robin.
    RoundRobin,
    /// `chash`: a consistent-hash ring over the nodes, keyed by a request
    /// value (a missing value hashes the client's address, as APISIX).
    Chash(HashOn),
    /// `least_conn`: the node with the fewest requests in flight for its
    /// weight.
    LeastConn,
    /// `ewma`: the lower latency score (moving average times requests in
    /// flight) of two nodes picked at random.
    Ewma,
}

/// What `chash` hashes (`hash_on` with `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// `vars`: a variable (`uri`, `host`, `arg_name`, `remote_addr`, ...).
    Var(String),
    /// `header`: a request header (its name in lower case).
    Header(String),
    /// `cookie`: a cookie's value.
    Cookie(String),
}

/// An upstream's `pass_host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassHost {
    /// `pass`: the client's `Host`.
    Pass,
    /// `node`: the chosen node's host, with `:port` unless 80 or 443.
    Node,
    /// `rewrite`: `upstream_host`.
    Rewrite(String),
}

/// An upstream's `checks`, APISIX's field names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthChecks {
    /// `checks.active`: probes on a timer.
    pub active: Option<ActiveCheck>,
    /// `checks.passive`: what real answers say.
    pub passive: Option<PassiveCheck>,
}

/// `checks.active`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCheck {
    /// `type`: `http` and `https` probe with a GET, `tcp` only connects.
    pub http: bool,
    /// `type: https`: TLS for the probes (`https_verify_certificate`, and
    /// the upstream's `tls.ca` and client certificate).
    pub tls: Option<UpstreamTls>,
    /// `timeout`: one probe's limit (connect and answer).
    pub timeout: Duration,
    /// `concurrency`: probes at once.
    pub concurrency: usize,
    /// `http_path`.
    pub http_path: String,
    /// `host`: the probes' `Host` (default: the node's address).
    pub host: Option<String>,
    /// `port`: probe this port instead of the node's.
    pub port: Option<u16>,
    /// `req_headers`: `Name: value` lines added to each probe.
    pub req_headers: Vec<(String, String)>,
    /// `healthy.interval`: seconds between probes of a healthy node.
    pub healthy_interval: Duration,
    /// `unhealthy.interval`: seconds between probes of an unhealthy node.
    pub unhealthy_interval: Duration,
    /// The thresholds (`healthy.*`, `unhealthy.*`).
    pub rules: HealthRules,
}

/// `checks.passive`.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveCheck {
    /// The thresholds (`healthy.*`, `unhealthy.*`).
    pub rules: HealthRules,
}

/// When a node turns healthy or unhealthy: statuses and counts in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRules {
    /// `healthy.http_statuses`: answers that count as successes.
    pub healthy_statuses: Vec<u16>,
    /// `healthy.successes`: successes in a row that make a node healthy.
    pub successes: u32,
    /// `unhealthy.http_statuses`: answers that count as HTTP failures.
    pub unhealthy_statuses: Vec<u16>,
    /// `unhealthy.http_failures`.
    pub http_failures: u32,
    /// `unhealthy.tcp_failures`: connections refused or reset.
    pub tcp_failures: u32,
    /// `unhealthy.timeouts`.
    pub timeouts: u32,
}

/// An upstream's `keepalive_pool`, with APISIX's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepalivePool {
    /// Idle connections kept per node per proxy thread (APISIX counts per
    /// worker process); past it a connection is closed when its request
    /// ends.
    pub size: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Requests a connection carries before it is closed (nginx's
    /// `keepalive_requests`: memory some servers free only with the
    /// connection).
    pub requests: u32,
}

impl Default for KeepalivePool {
    /// APISIX's: 320 connections, 60 s, 1000 requests.
    fn default() -> Self {
        KeepalivePool {
            size: 320,
            idle_timeout: Duration::from_secs(60),
            requests: 1000,
        }
    }
}

impl Config {
    /// Every runner by name: [`DEFAULT_RUNNER`] (the `ext-plugin` section)
    /// first, then `runners` in name order.
    pub fn runner_confs(&self) -> impl Iterator<Item = (&str, &RunnerConf)> {
        std::iter::once((DEFAULT_RUNNER, &self.runner))
            .chain(self.runners.iter().map(|(n, c)| (n.as_str(), c)))
    }
}
