//! The proxy's configuration: one JSON file, routes in the shape of APISIX
//! route objects. Parsing validates everything up front; every error names the
//! route and the field.

use http::Method;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The name of the runner of the `ext-plugin` section, which a route phase
/// without `runner` uses.
pub const DEFAULT_RUNNER: &str = "default";

/// The variables the host sets for the runner; the configured `env` may not
/// name them (the configuration is refused). The third tells the runner
/// that its output is relayed into the host's log (see
/// [`crate::wire::LOG_RELAYED`]: one timestamp per line, the host's).
pub const RESERVED_ENV: [&str; 3] = [
    "APISIX_LISTEN_ADDRESS",
    "APISIX_CONF_EXPIRE_TIME",
    crate::wire::LOG_RELAYED,
];

/// A configuration that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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

/// The admin listener's settings (`"admin": {"listen": ADDR}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminConf {
    /// Where it listens (port 0: any free port, printed at start).
    pub listen: SocketAddr,
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
}

impl Default for ClientLimits {
    /// nginx's defaults: 60 s header, 75 s keep-alive, 10,000 connections,
    /// 32 KiB of header.
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_millis(default_client_header_timeout()),
            keepalive_timeout: Duration::from_millis(default_keepalive_timeout()),
            max_connections: default_max_client_connections(),
            max_header_bytes: default_max_request_header(),
        }
    }
}

/// The most `max_client_connections` can be (far past any file descriptor
/// limit; it keeps the connection semaphore in its range).
const MAX_CLIENT_CONNECTIONS: usize = 10_000_000;

/// The bounds of `max_request_header_bytes`: hyper needs room for a request
/// line, and its read buffer (about 400 KiB) caps what it can hold.
const HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=262_144;

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
    /// Calls timing out in a row before the runner is deemed stuck and
    /// replaced; 0 never replaces it.
    pub restart_after_timeouts: u32,
    /// Keep a second runner process ready to take over when the active one
    /// dies (`"standby"`, default true).
    pub standby: bool,
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

/// An upstream: weighted nodes and timeouts.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `(host:port, weight)`, weight > 0.
    pub nodes: Vec<(String, u32)>,
    /// The round-robin schedule: indexes into `nodes`, each node appearing
    /// weight/gcd times, spread out (nginx's smooth weighted round robin).
    pub schedule: Vec<usize>,
    /// Connection time limit.
    pub connect_timeout: Duration,
    /// Time limit for the upstream's response headers.
    pub read_timeout: Duration,
    /// Send the node's address as `Host` instead of the client's.
    pub pass_host_node: bool,
}

// ---- the file's shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig<'a> {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(rename = "ext-plugin")]
    ext_plugin: RawRunner,
    #[serde(default)]
    runners: BTreeMap<String, RawRunner>,
    // Raw text, borrowed from the file: each route is parsed on its own,
    // and its position in the file gives its errors a line and column.
    // Absent when the routes come from etcd.
    #[serde(borrow, default)]
    routes: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(default)]
    etcd: Option<RawEtcd>,
    #[serde(default = "default_max_body")]
    max_request_body_bytes: usize,
    #[serde(default = "default_max_body")]
    max_response_body_bytes: usize,
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace_ms: u64,
    #[serde(default = "default_client_body_timeout")]
    client_body_timeout_ms: u64,
    #[serde(default = "default_client_header_timeout")]
    client_header_timeout_ms: u64,
    #[serde(default = "default_keepalive_timeout")]
    keepalive_timeout_ms: u64,
    #[serde(default = "default_max_client_connections")]
    max_client_connections: usize,
    #[serde(default = "default_max_request_header")]
    max_request_header_bytes: usize,
    #[serde(default)]
    admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    prefix: String,
    #[serde(default = "default_etcd_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

fn default_etcd_prefix() -> String {
    "/apisix".to_owned()
}
fn default_etcd_timeout() -> u64 {
    3000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:9080".to_owned()
}
fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_shutdown_grace() -> u64 {
    10_000
}
fn default_client_body_timeout() -> u64 {
    60_000
}
fn default_client_header_timeout() -> u64 {
    60_000
}
fn default_keepalive_timeout() -> u64 {
    75_000
}
fn default_max_client_connections() -> usize {
    10_000
}
fn default_max_request_header() -> usize {
    32 * 1024
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default = "default_expire")]
    conf_expire_time: u64,
    #[serde(default = "default_call_timeout")]
    call_timeout_ms: u64,
    #[serde(default = "default_start_timeout")]
    start_timeout_ms: u64,
    #[serde(default = "default_stop_grace")]
    stop_grace_ms: u64,
    #[serde(default = "default_pool")]
    pool_size: usize,
    #[serde(default = "default_restart_after")]
    restart_after_timeouts: u32,
    #[serde(default = "default_standby")]
    standby: bool,
}

fn default_expire() -> u64 {
    3600
}
fn default_call_timeout() -> u64 {
    2000
}
fn default_start_timeout() -> u64 {
    5000
}
fn default_stop_grace() -> u64 {
    1000
}
fn default_pool() -> usize {
    64
}
fn default_restart_after() -> u32 {
    3
}
fn default_standby() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawId {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    id: RawId,
    // APISIX bookkeeping: accepted so that a route copied from APISIX's Admin
    // API parses as it is; none of it changes what the route does.
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    #[serde(rename = "desc")]
    _desc: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    /// 1 (default) enabled, 0 disabled, as in APISIX.
    status: Option<u8>,
    /// Breaks ties between equally specific matches (higher first), as in APISIX.
    priority: Option<i64>,
    uri: Option<String>,
    uris: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    upstream: Option<RawUpstream>,
    /// An upstream object by id (`<prefix>/upstreams/<id>` in etcd).
    upstream_id: Option<RawId>,
    /// A service object by id (`<prefix>/services/<id>` in etcd): its
    /// upstream and plugins, unless the route has its own.
    service_id: Option<RawId>,
    #[serde(default)]
    plugins: RawPlugins,
}

/// An APISIX service object: what the routes naming it share.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    #[serde(rename = "desc")]
    _desc: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    upstream: Option<RawUpstream>,
    upstream_id: Option<RawId>,
    #[serde(default)]
    plugins: RawPlugins,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    #[serde(rename = "ext-plugin-pre-req")]
    pre_req: Option<RawPhase>,
    #[serde(rename = "ext-plugin-post-req")]
    post_req: Option<RawPhase>,
    #[serde(rename = "ext-plugin-post-resp")]
    post_resp: Option<RawPhase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    conf: Vec<RawConfItem>,
    #[serde(default)]
    allow_degradation: bool,
    #[serde(default)]
    extra_info: Vec<String>,
    /// The runner's name in `runners` (default: the `ext-plugin` runner).
    runner: Option<String>,
    /// APISIX's per-plugin metadata; `disable: true` turns the phase off.
    #[serde(rename = "_meta")]
    meta: Option<RawMeta>,
}

/// APISIX's `_meta`: `disable` is honoured, `priority` changes nothing
/// (each `ext-plugin-*` phase holds one plugin); the others (`filter`,
/// `error_response`, `pre_function`) are refused: ignored, the phase
/// would run on requests APISIX would not run it on, or answer otherwise.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    #[serde(default)]
    disable: bool,
    #[serde(rename = "priority")]
    _priority: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfItem {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(rename = "type", default = "default_lb")]
    kind: String,
    nodes: RawNodes,
    #[serde(default)]
    timeout: Option<RawTimeout>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    pass_host: Option<String>,
    // APISIX bookkeeping and settings without effect here (`hash_on` only
    // matters to `chash`; connections to nodes are always pooled).
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    #[serde(rename = "desc")]
    _desc: Option<IgnoredAny>,
    #[serde(rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    #[serde(rename = "hash_on")]
    _hash_on: Option<IgnoredAny>,
    #[serde(rename = "keepalive_pool")]
    _keepalive_pool: Option<IgnoredAny>,
}

fn default_lb() -> String {
    "roundrobin".to_owned()
}

/// `nodes`, in either of APISIX's forms: `{"host:port": weight}` or
/// `[{"host", "port", "weight"}]`.
enum RawNodes {
    Map(BTreeMap<String, u32>),
    List(Vec<RawNode>),
}

impl<'de> Deserialize<'de> for RawNodes {
    /// By the JSON's shape, so that an error names the node and the field
    /// (an untagged enum would only say that no form matched).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Object(map) => {
                let mut nodes = BTreeMap::new();
                for (addr, weight) in map {
                    let weight = serde_json::from_value(weight).map_err(|e| {
                        D::Error::custom(format!(
                            "the weight of {addr:?} is not a whole number from 0: {e}"
                        ))
                    })?;
                    nodes.insert(addr, weight);
                }
                Ok(RawNodes::Map(nodes))
            }
            serde_json::Value::Array(list) => {
                let mut nodes = Vec::with_capacity(list.len());
                for (i, node) in list.into_iter().enumerate() {
                    let node = serde_json::from_value(node)
                        .map_err(|e| D::Error::custom(format!("[{i}]: {e}")))?;
                    nodes.push(node);
                }
                Ok(RawNodes::List(nodes))
            }
            other => Err(D::Error::custom(format!(
                "{other} is neither {{\"host:port\": weight}} nor [{{\"host\", \"port\", \"weight\"}}]"
            ))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    host: String,
    /// APISIX's default for an `http` upstream: 80.
    #[serde(default = "http_port")]
    port: u16,
    #[serde(default = "one")]
    weight: u32,
    /// APISIX's failover order (higher first, the next only when all of
    /// a priority fail); APISIX stores `0` when none is given. extplug
    /// balances over every node: nodes of different priorities are
    /// refused rather than balanced (see `parse_upstream`).
    #[serde(default)]
    priority: i64,
    // Bookkeeping for APISIX's own plugins; it changes nothing here.
    #[serde(rename = "metadata")]
    _metadata: Option<IgnoredAny>,
}

fn http_port() -> u16 {
    80
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeout {
    connect: Option<f64>,
    send: Option<f64>,
    read: Option<f64>,
}

impl Config {
    /// Every runner by name: [`DEFAULT_RUNNER`] (the `ext-plugin` section)
    /// first, then `runners` in name order.
    pub fn runner_confs(&self) -> impl Iterator<Item = (&str, &RunnerConf)> {
        std::iter::once((DEFAULT_RUNNER, &self.runner))
            .chain(self.runners.iter().map(|(n, c)| (n.as_str(), c)))
    }

    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, is not JSON, or breaks a rule; the message
    /// names the file, the route and the field.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| {
            // `file:line:col: ...` when the message starts with a position.
            let sep = if e.0.starts_with(|c: char| c.is_ascii_digit()) {
                ":"
            } else {
                ": "
            };
            ConfigError(format!("{}{sep}{}", path.display(), e.0))
        })
    }

    /// Parses and checks a configuration text.
    ///
    /// # Errors
    /// As for [`Config::load`]; a message starts with `line:column: ` when
    /// the error has a place in the text (a route's own checks point at
    /// the route's start).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = (inner.line(), inner.column());
            ConfigError(format!(
                "{line}:{column}: at `{path}`: {}",
                without_position(&inner)
            ))
        })?;
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            ConfigError(format!(
                "`listen`: {:?} is not an address such as 127.0.0.1:9080",
                raw.listen
            ))
        })?;
        if raw.client_body_timeout_ms == 0 {
            return Err(ConfigError(
                "`client_body_timeout_ms` must be greater than 0".into(),
            ));
        }
        let client = client_limits(&raw)?;
        let admin = match &raw.admin {
            None => None,
            Some(a) => Some(AdminConf {
                listen: a.listen.parse().map_err(|_| {
                    ConfigError(format!(
                        "`admin.listen`: {:?} is not an address such as 127.0.0.1:9091",
                        a.listen
                    ))
                })?,
            }),
        };
        let runner = runner_conf("ext-plugin", raw.ext_plugin)?;
        let mut runners = BTreeMap::new();
        for (name, r) in raw.runners {
            if name == DEFAULT_RUNNER || name.is_empty() {
                return Err(ConfigError(format!(
                    "`runners`: {name:?} cannot name a runner (`{DEFAULT_RUNNER}` is the `ext-plugin` runner)"
                )));
            }
            let conf = runner_conf(&format!("runners.{name}"), r)?;
            runners.insert(name, conf);
        }
        let etcd = match raw.etcd {
            None => None,
            Some(e) => Some(etcd_conf(e)?),
        };
        let raw_routes = match (raw.routes, &etcd) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "`routes`: the routes come from etcd (`etcd` is set); remove `routes` from the file, or `etcd` to serve the file's routes".into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError(
                    "missing field `routes` (or `etcd`, to read the routes from etcd)".into(),
                ))
            }
            (Some(routes), None) => routes,
            (None, Some(_)) => Vec::new(),
        };
        let mut routes = Vec::with_capacity(raw_routes.len());
        for (i, raw_route) in raw_routes.into_iter().enumerate() {
            let route_text = raw_route.get();
            // The route's text is a slice of `text`: its offset is its place.
            let offset = (route_text.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
            let (line, column) = line_column(text, offset);
            let id = match serde_json::from_str::<RouteId>(route_text).map(|r| r.id) {
                Ok(Some(serde_json::Value::String(s))) => format!("`{s}`"),
                Ok(Some(serde_json::Value::Number(n))) => format!("`{n}`"),
                _ => "without id".to_owned(),
            };
            let route = parse_route(route_text, None).map_err(|(e, at)| {
                // serde's place is within the route's text.
                let (l, c) = match at {
                    Some((1, c)) => (line, column + c.saturating_sub(1)),
                    Some((l, c)) if l > 1 => (line + l - 1, c),
                    // No place (serde_json gives line 0 then): the route's start.
                    _ => (line, column),
                };
                ConfigError(format!("{l}:{c}: route {id} (routes[{i}]): {e}"))
            })?;
            if let Err(e) = check_runners(&route, &runners) {
                return Err(ConfigError(format!(
                    "{line}:{column}: route {id} (routes[{i}]): {e}"
                )));
            }
            if routes.iter().any(|r: &Route| r.id == route.id) {
                return Err(ConfigError(format!(
                    "{line}:{column}: route {id} (routes[{i}]): the id is used twice"
                )));
            }
            routes.push(route);
        }
        Ok(Config {
            listen,
            runner,
            runners,
            routes,
            max_request_body: raw.max_request_body_bytes,
            max_response_body: raw.max_response_body_bytes,
            shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
            client_body_timeout: Duration::from_millis(raw.client_body_timeout_ms),
            client,
            admin,
            etcd,
        })
    }
}

/// Checks the `etcd` section.
fn etcd_conf(raw: RawEtcd) -> Result<EtcdConf, ConfigError> {
    if raw.endpoints.is_empty() {
        return Err(ConfigError(
            "`etcd.endpoints` is empty: list at least one, such as \"http://127.0.0.1:2379\""
                .into(),
        ));
    }
    for (i, e) in raw.endpoints.iter().enumerate() {
        let ok = e
            .strip_prefix("http://")
            .and_then(|rest| {
                rest.trim_end_matches('/')
                    .parse::<http::uri::Authority>()
                    .ok()
            })
            .is_some_and(|a| a.port_u16().is_some());
        if !ok {
            return Err(ConfigError(format!(
                "`etcd.endpoints[{i}]` {e:?} is not http://host:port (TLS to etcd is not supported)"
            )));
        }
    }
    let prefix = raw.prefix.trim_end_matches('/').to_owned();
    if !prefix.starts_with('/') {
        return Err(ConfigError(format!(
            "`etcd.prefix` {:?} must start with `/`, such as \"/apisix\"",
            raw.prefix
        )));
    }
    if raw.timeout_ms == 0 {
        return Err(ConfigError(
            "`etcd.timeout_ms` must be greater than 0".into(),
        ));
    }
    let auth = match (raw.user, raw.password) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((u, p)),
        _ => {
            return Err(ConfigError(
                "`etcd.user` and `etcd.password` go together: set both or neither".into(),
            ))
        }
    };
    Ok(EtcdConf {
        endpoints: raw.endpoints,
        prefix,
        timeout: Duration::from_millis(raw.timeout_ms),
        auth,
    })
}

/// A route's phases all name runners of the configuration; the message
/// names the phase and lists the runners.
pub fn check_runners(route: &Route, runners: &BTreeMap<String, RunnerConf>) -> Result<(), String> {
    match unknown_runner(route, runners) {
        None => Ok(()),
        Some((phase, name)) => Err(format!(
            "`plugins.{}.runner` {name:?} is not a runner: {}",
            phase.name(),
            runner_names(runners)
        )),
    }
}

/// The APISIX objects (from etcd) a route may name by id: upstreams and
/// services, by id, as their JSON text; and the key prefix, to name the
/// key of a missing or bad one in errors.
#[derive(Debug, Clone, Copy)]
pub struct Objects<'a> {
    /// The key prefix (`/apisix`).
    pub prefix: &'a str,
    /// `<prefix>/upstreams/<id>` by id.
    pub upstreams: &'a BTreeMap<String, String>,
    /// `<prefix>/services/<id>` by id.
    pub services: &'a BTreeMap<String, String>,
}

/// Parses and checks one APISIX route object (its JSON text, as etcd holds
/// it), resolving its `upstream_id` and `service_id` in `objects`.
///
/// # Errors
/// The route is not valid, or names an upstream or service that does not
/// exist or is not valid; the message names the field (and the key).
pub fn parse_apisix_route(text: &str, objects: &Objects<'_>) -> Result<Route, String> {
    parse_route(text, Some(objects)).map_err(|(e, _)| e)
}

/// Checks one APISIX upstream object (`<prefix>/upstreams/<id>`).
///
/// # Errors
/// It is not valid; the message names the field.
pub fn check_apisix_upstream(text: &str) -> Result<(), String> {
    parse_upstream_text(text).map(drop)
}

/// Checks one APISIX service object (`<prefix>/services/<id>`) on its own
/// (its `upstream_id` is resolved with each route).
///
/// # Errors
/// It is not valid; the message names the field.
pub fn check_apisix_service(text: &str) -> Result<(), String> {
    let service: RawService = from_text(text)?;
    if service.upstream.is_some() && service.upstream_id.is_some() {
        return Err("has both `upstream` and `upstream_id`; use one".into());
    }
    if let Some(u) = service.upstream {
        parse_upstream(u)?;
    }
    Ok(())
}

/// Deserializes `text`, the error saying at which field.
fn from_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            without_position(&inner)
        } else {
            format!("at `{path}`: {}", without_position(&inner))
        }
    })
}

fn parse_upstream_text(text: &str) -> Result<Upstream, String> {
    parse_upstream(from_text::<RawUpstream>(text)?)
}

fn id_text(id: RawId, field: &str) -> Result<String, String> {
    match id {
        RawId::Text(s) if !s.is_empty() => Ok(s),
        RawId::Text(_) => Err(format!("`{field}` is empty")),
        RawId::Number(n) => Ok(n.to_string()),
    }
}

/// The upstream object `id` names (`field`: `upstream_id`, or the service's).
fn upstream_by_id(
    id: RawId,
    field: &str,
    objects: Option<&Objects<'_>>,
) -> Result<Upstream, String> {
    let id = id_text(id, field)?;
    let Some(objects) = objects else {
        return Err(format!(
            "`{field}` {id:?}: upstreams by id come from etcd; a route in the configuration file holds its `upstream`"
        ));
    };
    let key = format!("{}/upstreams/{id}", objects.prefix);
    match objects.upstreams.get(&id) {
        None => Err(format!(
            "`{field}` {id:?}: there is no upstream at `{key}` (the route is served once there is)"
        )),
        Some(text) => parse_upstream_text(text)
            .map_err(|e| format!("`{field}` {id:?}: the upstream at `{key}` is not valid: {e}")),
    }
}

/// Checks one runner section (`ext-plugin`, or `runners.NAME`: `section`
/// names it in errors).
fn runner_conf(section: &str, r: RawRunner) -> Result<RunnerConf, ConfigError> {
    if r.cmd.is_empty() || r.cmd[0].is_empty() {
        return Err(ConfigError(format!(
            "`{section}.cmd` must name the runner program"
        )));
    }
    for (name, value) in [
        ("conf_expire_time", r.conf_expire_time),
        ("call_timeout_ms", r.call_timeout_ms),
        ("start_timeout_ms", r.start_timeout_ms),
    ] {
        if value == 0 {
            return Err(ConfigError(format!(
                "`{section}.{name}` must be greater than 0"
            )));
        }
    }
    check_env(section, &r.env)?;
    // The host and the runner add it (and 1.2 times it) to the clock,
    // which panics on overflow: "never" must be a number that fits.
    if r.conf_expire_time > u64::from(u32::MAX) {
        return Err(ConfigError(format!(
            "`{section}.conf_expire_time` {} is too large (at most {} seconds)",
            r.conf_expire_time,
            u32::MAX
        )));
    }
    Ok(RunnerConf {
        name: section
            .strip_prefix("runners.")
            .unwrap_or(DEFAULT_RUNNER)
            .to_owned(),
        cmd: r.cmd,
        env: r.env,
        conf_expire: Duration::from_secs(r.conf_expire_time),
        call_timeout: Duration::from_millis(r.call_timeout_ms),
        start_timeout: Duration::from_millis(r.start_timeout_ms),
        stop_grace: Duration::from_millis(r.stop_grace_ms),
        pool_size: r.pool_size,
        restart_after_timeouts: r.restart_after_timeouts,
        standby: r.standby,
    })
}

/// A phase of `route` that names a runner `runners` lacks, with that name.
fn unknown_runner<'r>(
    route: &'r Route,
    runners: &BTreeMap<String, RunnerConf>,
) -> Option<(Phase, &'r str)> {
    [Phase::PreReq, Phase::PostReq, Phase::PostResp]
        .into_iter()
        .filter_map(|p| route.phase(p).map(|c| (p, c.runner.as_str())))
        .find(|(_, name)| *name != DEFAULT_RUNNER && !runners.contains_key(*name))
}

/// "the runners are `default`, `a`" for an unknown runner's message.
fn runner_names(runners: &BTreeMap<String, RunnerConf>) -> String {
    let names: Vec<String> = std::iter::once(DEFAULT_RUNNER)
        .chain(runners.keys().map(String::as_str))
        .map(|n| format!("`{n}`"))
        .collect();
    format!("the runners are {}", names.join(", "))
}

/// Checks the client-side limits; errors name the field.
fn client_limits(raw: &RawConfig) -> Result<ClientLimits, ConfigError> {
    if raw.client_header_timeout_ms == 0 {
        return Err(ConfigError(
            "`client_header_timeout_ms` must be greater than 0".into(),
        ));
    }
    if !(1..=MAX_CLIENT_CONNECTIONS).contains(&raw.max_client_connections) {
        return Err(ConfigError(format!(
            "`max_client_connections` {} must be between 1 and {MAX_CLIENT_CONNECTIONS}",
            raw.max_client_connections
        )));
    }
    if !HEADER_BYTES_RANGE.contains(&raw.max_request_header_bytes) {
        return Err(ConfigError(format!(
            "`max_request_header_bytes` {} must be between {} and {}",
            raw.max_request_header_bytes,
            HEADER_BYTES_RANGE.start(),
            HEADER_BYTES_RANGE.end()
        )));
    }
    Ok(ClientLimits {
        header_timeout: Duration::from_millis(raw.client_header_timeout_ms),
        keepalive_timeout: Duration::from_millis(raw.keepalive_timeout_ms),
        max_connections: raw.max_client_connections,
        max_header_bytes: raw.max_request_header_bytes,
    })
}

/// The runner's configured environment: names the host sets itself, and
/// names or values that cannot be in an environment, are refused.
fn check_env(section: &str, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in env {
        let field = format!("`{section}.env.{name}`");
        if RESERVED_ENV.contains(&name.as_str()) {
            return Err(ConfigError(format!(
                "{field}: the host sets {name} for the runner itself; remove it from `env`"
            )));
        }
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(ConfigError(format!(
                "`{section}.env`: {name:?} is not a variable name (empty, or has `=` or NUL)"
            )));
        }
        if value.contains('\0') {
            return Err(ConfigError(format!("{field}: the value has a NUL byte")));
        }
    }
    Ok(())
}

/// A route's `id` alone, to name the route in its errors.
#[derive(Deserialize)]
struct RouteId {
    id: Option<serde_json::Value>,
}

/// The 1-based line and column (in bytes, as serde_json counts) of `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    (line, offset - start + 1)
}

/// serde_json's message without its ` at line L column C` (we say where).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// Parses one route's text. The error's `(line, column)` in that text is
/// given when serde found it; a rule broken after parsing has none.
fn parse_route(
    text: &str,
    objects: Option<&Objects<'_>>,
) -> Result<Route, (String, Option<(usize, usize)>)> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawRoute = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = Some((inner.line(), inner.column()));
        let message = without_position(&inner);
        if path == "." {
            (message, at)
        } else {
            (format!("at `{path}`: {message}"), at)
        }
    })?;
    route_from_raw(raw, objects).map_err(|e| (e, None))
}

fn route_from_raw(raw: RawRoute, objects: Option<&Objects<'_>>) -> Result<Route, String> {
    let id = id_text(raw.id, "id")?;
    let service = match raw.service_id {
        None => None,
        Some(sid) => {
            let sid = id_text(sid, "service_id")?;
            let Some(objects) = objects else {
                return Err(format!(
                    "`service_id` {sid:?}: services come from etcd; a route in the configuration file holds its `upstream` and `plugins`"
                ));
            };
            let key = format!("{}/services/{sid}", objects.prefix);
            let Some(text) = objects.services.get(&sid) else {
                return Err(format!(
                    "`service_id` {sid:?}: there is no service at `{key}` (the route is served once there is)"
                ));
            };
            let service: RawService = from_text(text).map_err(|e| {
                format!("`service_id` {sid:?}: the service at `{key}` is not valid: {e}")
            })?;
            Some((sid, service))
        }
    };
    // APISIX's merge: the route's own upstream and plugins win over the
    // service's; a service's plugin applies when the route lacks it.
    let mut service = service;
    let upstream = match (raw.upstream, raw.upstream_id) {
        (Some(_), Some(_)) => return Err("has both `upstream` and `upstream_id`; use one".into()),
        (Some(u), None) => parse_upstream(u)?,
        (None, Some(uid)) => upstream_by_id(uid, "upstream_id", objects)?,
        (None, None) => match service.as_mut() {
            None => {
                return Err("missing field `upstream` (or `upstream_id`, or `service_id`)".into())
            }
            Some((sid, s)) => match (s.upstream.take(), s.upstream_id.take()) {
                (Some(u), None) => {
                    parse_upstream(u).map_err(|e| format!("the service {sid:?}: {e}"))?
                }
                (None, Some(uid)) => upstream_by_id(uid, "upstream_id", objects)
                    .map_err(|e| format!("the service {sid:?}: {e}"))?,
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "the service {sid:?} has both `upstream` and `upstream_id`; use one"
                    ))
                }
                (None, None) => {
                    return Err(format!(
                        "has no `upstream` or `upstream_id`, and neither has its service {sid:?}"
                    ))
                }
            },
        },
    };
    let (svc_pre, svc_post, svc_resp) = match service {
        Some((_, s)) => (s.plugins.pre_req, s.plugins.post_req, s.plugins.post_resp),
        None => (None, None, None),
    };
    let plugins = RawPlugins {
        pre_req: raw.plugins.pre_req.or(svc_pre),
        post_req: raw.plugins.post_req.or(svc_post),
        post_resp: raw.plugins.post_resp.or(svc_resp),
    };
    let texts = match (raw.uri, raw.uris) {
        (Some(uri), None) => vec![uri],
        (None, Some(uris)) if !uris.is_empty() => uris,
        (None, Some(_)) => return Err("`uris` is empty".into()),
        (None, None) => return Err("missing field `uri` (or `uris`)".into()),
        (Some(_), Some(_)) => return Err("has both `uri` and `uris`; use one".into()),
    };
    let mut uris = Vec::with_capacity(texts.len());
    for uri in texts {
        if !uri.starts_with('/') {
            return Err(format!("`uri` {uri:?} must start with `/`"));
        }
        check_route_uri(&uri)?;
        uris.push(match uri.strip_suffix('*') {
            Some(prefix) => UriPattern::Prefix(prefix.to_owned()),
            None => UriPattern::Exact(uri),
        });
    }
    let methods = match raw.methods {
        None => None,
        Some(list) => {
            let mut methods = Vec::with_capacity(list.len());
            for m in list {
                let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("`methods`: {m:?} is not an HTTP method"))?;
                methods.push(method);
            }
            Some(methods)
        }
    };
    let phase = |p: Option<RawPhase>, phase: Phase| -> Result<Option<PhaseConf>, String> {
        let Some(p) = p else { return Ok(None) };
        if p.meta.as_ref().is_some_and(|m| m.disable) {
            return Ok(None);
        }
        let field = format!("plugins.{}", phase.name());
        if p.conf.is_empty() {
            return Err(format!("`{field}.conf` is empty: list at least one plugin"));
        }
        let mut conf = Vec::with_capacity(p.conf.len());
        for (i, item) in p.conf.into_iter().enumerate() {
            if item.name.is_empty() {
                return Err(format!("`{field}.conf[{i}].name` is empty"));
            }
            conf.push((item.name, item.value));
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        conf.hash(&mut hasher);
        let key = format!("{id}#{}#{:016x}", phase.name(), hasher.finish());
        Ok(Some(PhaseConf {
            conf,
            allow_degradation: p.allow_degradation,
            extra_info: p.extra_info,
            runner: p.runner.unwrap_or_else(|| DEFAULT_RUNNER.to_owned()),
            key,
        }))
    };
    let enabled = match raw.status {
        None | Some(1) => true,
        Some(0) => false,
        Some(n) => return Err(format!("`status` {n} must be 1 (enabled) or 0 (disabled)")),
    };
    Ok(Route {
        enabled,
        priority: raw.priority.unwrap_or(0),
        pre_req: phase(plugins.pre_req, Phase::PreReq)?,
        post_req: phase(plugins.post_req, Phase::PostReq)?,
        post_resp: phase(plugins.post_resp, Phase::PostResp)?,
        id,
        uris,
        methods,
        upstream,
    })
}

fn parse_upstream(raw: RawUpstream) -> Result<Upstream, String> {
    if raw.kind != "roundrobin" {
        return Err(format!(
            "`upstream.type` {:?} is not supported; extplug balances with \"roundrobin\"",
            raw.kind
        ));
    }
    if let Some(scheme) = &raw.scheme {
        if scheme != "http" {
            return Err(format!(
                "`upstream.scheme` {scheme:?} is not supported; only \"http\""
            ));
        }
    }
    let pass_host_node = match raw.pass_host.as_deref() {
        None | Some("pass") => false,
        Some("node") => true,
        Some(other) => {
            return Err(format!(
                "`upstream.pass_host` {other:?} must be \"pass\" or \"node\""
            ))
        }
    };
    let nodes: Vec<(String, u32)> = match raw.nodes {
        RawNodes::Map(map) => map.into_iter().collect(),
        RawNodes::List(list) => {
            if let Some(n) = list.iter().find(|n| n.priority != list[0].priority) {
                return Err(format!(
                    "`upstream.nodes`: the nodes have different `priority` values ({} and {}): extplug balances over every node and does not fail over by priority; give them the same one",
                    list[0].priority, n.priority
                ));
            }
            list.into_iter()
                .map(|n| {
                    let host = if n.host.contains(':') && !n.host.starts_with('[') {
                        format!("[{}]", n.host)
                    } else {
                        n.host
                    };
                    (format!("{host}:{}", n.port), n.weight)
                })
                .collect()
        }
    };
    for (addr, _) in &nodes {
        let ok = addr
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.port_u16().is_some());
        if !ok {
            return Err(format!("`upstream.nodes`: {addr:?} is not host:port"));
        }
    }
    let nodes: Vec<(String, u32)> = nodes.into_iter().filter(|(_, w)| *w > 0).collect();
    if nodes.is_empty() {
        return Err("`upstream.nodes` has no node with a weight above 0".into());
    }
    let schedule = smooth_schedule(&nodes.iter().map(|(_, w)| *w).collect::<Vec<_>>())?;
    let secs = |v: Option<f64>, name: &str| -> Result<Duration, String> {
        match v {
            None => Ok(Duration::from_secs(60)),
            // `try_`: a number too large for a `Duration` is an error, not a panic.
            Some(s) if s > 0.0 && s.is_finite() => Duration::try_from_secs_f64(s).map_err(|_| {
                format!("`upstream.timeout.{name}` {s} is too large a number of seconds")
            }),
            Some(s) => Err(format!(
                "`upstream.timeout.{name}` {s} must be a positive number of seconds"
            )),
        }
    };
    let (connect, send, read) = match &raw.timeout {
        Some(t) => (t.connect, t.send, t.read),
        None => (None, None, None),
    };
    secs(send, "send")?;
    Ok(Upstream {
        nodes,
        schedule,
        connect_timeout: secs(connect, "connect")?,
        read_timeout: secs(read, "read")?,
        pass_host_node,
    })
}

/// Requests are routed by their normalized, decoded path
/// ([`crate::host::edge::path`]): a route URI in another form would never match,
/// and its requests would fall to a broader route, without this route's
/// plugins. Refuses percent escapes, `;`, and dot segments or repeated
/// slashes in whole segments (a prefix's last, partial segment may start
/// with a dot: `/.well-known*`).
fn check_route_uri(uri: &str) -> Result<(), String> {
    let (text, star) = match uri.strip_suffix('*') {
        Some(prefix) => (prefix, "*"),
        None => (uri, ""),
    };
    let b = text.as_bytes();
    let escape = (0..b.len()).find(|&i| {
        b[i] == b'%'
            && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    });
    if let Some(at) = escape {
        let hint = crate::host::edge::path::normalize(text)
            .map(|p| format!("; write {:?}", format!("{p}{star}")))
            .unwrap_or_default();
        return Err(format!(
            "`uri` {uri:?} has a percent escape at byte {at}, but routes match the decoded path{hint}"
        ));
    }
    if let Some(at) = text.find(';') {
        return Err(format!(
            "`uri` {uri:?} has a `;` at byte {at}: requests with `;` in the path are refused"
        ));
    }
    let whole = match text.rfind('/') {
        Some(i) if !star.is_empty() => &text[..=i],
        _ => text,
    };
    let normalized = crate::host::edge::path::normalize_decoded(whole)
        .map_err(|e| format!("`uri` {uri:?} is not a path a request can have: {e}"))?;
    if normalized.as_str() != whole {
        return Err(format!(
            "`uri` {uri:?} never matches: requests are routed by their normalized path; write {:?}",
            format!("{normalized}{}{star}", &text[whole.len()..])
        ));
    }
    Ok(())
}

/// nginx's smooth weighted round robin, unrolled into one cycle.
fn smooth_schedule(weights: &[u32]) -> Result<Vec<usize>, String> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = weights.iter().fold(0u64, |g, w| gcd(g, u64::from(*w)));
    let weights: Vec<i64> = weights.iter().map(|w| (u64::from(*w) / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total > 100_000 {
        return Err("`upstream.nodes` weights are too fine-grained (their sum over their common divisor is above 100000)".into());
    }
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        schedule.push(best);
    }
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!(
            r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[{routes}]}}"#
        ))
    }

    const OK_ROUTE: &str = r#"{"id":"1","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},
        "plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say","value":"{}"}]}}}"#;

    #[test]
    fn the_issue_example_parses() {
        let c = Config::parse(r#"{
          "listen": "127.0.0.1:9080",
          "ext-plugin": { "cmd": ["target/release/examples/demo-runner"], "env": {"K": "v"},
                          "conf_expire_time": 3600, "call_timeout_ms": 2000, "start_timeout_ms": 5000,
                          "stop_grace_ms": 1000 },
          "routes": [
            { "id": "1", "uri": "/hello", "methods": ["GET"],
              "upstream": { "type": "roundrobin", "nodes": { "127.0.0.1:1980": 1 } },
              "plugins": {
                "ext-plugin-pre-req":  { "conf": [ {"name": "say", "value": "{\"body\":\"hi\"}"} ],
                                         "allow_degradation": false },
                "ext-plugin-post-req": { "conf": [ {"name": "rewrite", "value": "{}"} ] } } } ]
        }"#).unwrap();
        assert_eq!(c.routes[0].id, "1");
        assert_eq!(c.routes[0].methods, Some(vec![Method::GET]));
        assert_eq!(c.runner.env.get("K").map(String::as_str), Some("v"));
        assert!(c.routes[0].pre_req.is_some() && c.routes[0].post_req.is_some());
        assert_ne!(
            c.routes[0].pre_req.as_ref().unwrap().key,
            c.routes[0].post_req.as_ref().unwrap().key
        );
    }

    #[test]
    fn errors_name_the_route_and_the_field() {
        let cases = [
            (
                r#"{"id":"r1","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugin":{}}"#,
                ["route `r1`", "unknown field `plugin`"],
            ),
            (
                r#"{"id":"r2","uri":"/a"}"#,
                ["route `r2`", "missing field `upstream`"],
            ),
            (
                r#"{"id":"r3","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"ext-plugin-pre-req":{"conf":[]}}}"#,
                ["route `r3`", "plugins.ext-plugin-pre-req.conf` is empty"],
            ),
            (
                r#"{"id":"r4","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say"}]}}}"#,
                ["route `r4`", "missing field `value`"],
            ),
            (
                r#"{"id":"r5","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"ext-plugin-post-req":{"conf":[{"value":"{}"}]}}}"#,
                ["route `r5`", "missing field `name`"],
            ),
            (
                r#"{"id":"r6","uri":"/a","upstream":{"nodes":{"nohost":1}}}"#,
                ["route `r6`", "is not host:port"],
            ),
            (
                r#"{"id":"r7","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
                ["route `r7`", "missing field `uri`"],
            ),
            (
                r#"{"id":"r8","uri":"/a","upstream":{"type":"chash","nodes":{"127.0.0.1:1":1}}}"#,
                ["route `r8`", "chash"],
            ),
            (
                r#"{"id":"r9","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"limit-req":{}}}"#,
                ["route `r9`", "unknown field `limit-req`"],
            ),
        ];
        for (route, expected) in cases {
            let err = config(route).unwrap_err().0;
            for e in expected {
                assert!(err.contains(e), "{route}\n  gave: {err}\n  missing: {e}");
            }
        }
        let err = config(&format!("{OK_ROUTE},{OK_ROUTE}")).unwrap_err().0;
        assert!(err.contains("used twice"), "{err}");
        let err = Config::parse(r#"{"ext-plugin":{"cmd":[]},"routes":[]}"#)
            .unwrap_err()
            .0;
        assert!(err.contains("ext-plugin.cmd"), "{err}");
        let err = Config::parse(r#"{"ext-plugin":{"cmd":["r"],"call_timeout":1},"routes":[]}"#)
            .unwrap_err()
            .0;
        assert!(
            err.contains("ext-plugin") && err.contains("unknown field `call_timeout`"),
            "{err}"
        );
    }

    #[test]
    fn route_errors_have_the_line_and_column_in_the_file() {
        let text = "{\"ext-plugin\":{\"cmd\":[\"r\"]},\"routes\":[\n  {\"id\":\"a\",\"uri\":\"/a\",\"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}},\n  {\"id\":\"b\",\"uri\":\"/b\",\"methods\":[\"GET\"], \"bad\":1,\n   \"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}},\n  {\"id\":\"c\",\"uri\":\"b\",\"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}}]}";
        let err = Config::parse(text).unwrap_err().0;
        assert_eq!(err, "3:47: route `b` (routes[1]): at `bad`: unknown field `bad`, expected one of `id`, `name`, `desc`, `labels`, `create_time`, `update_time`, `status`, `priority`, `uri`, `uris`, `methods`, `upstream`, `upstream_id`, `service_id`, `plugins`");
        // A rule checked after parsing points at the route's start.
        let text = text.replace(", \"bad\":1", "");
        let err = Config::parse(&text).unwrap_err().0;
        assert!(
            err.starts_with("5:3: route `c` (routes[2]): `uri` \"b\" must start with"),
            "{err}"
        );
        // Outside the routes too.
        let err = Config::parse("{\n \"listen\": 5}").unwrap_err().0;
        assert!(err.starts_with("2:12: at `listen`: invalid type"), "{err}");
    }

    #[test]
    fn upstream_nodes_as_apisix_stores_them_and_errors_name_the_node() {
        // The list form as APISIX's Admin API stores it: `priority: 0`
        // filled in, `metadata`, a node without `port` (80).
        let up = r#"{"type":"roundrobin","scheme":"http","pass_host":"pass","hash_on":"vars",
            "nodes":[{"host":"127.0.0.1","port":1980,"weight":1,"priority":0},
                     {"host":"10.0.0.2","weight":2,"priority":0,"metadata":{"zone":"a"}}]}"#;
        let c = config(&format!(r#"{{"id":"1","uri":"/a","upstream":{up}}}"#)).unwrap();
        assert_eq!(
            c.routes[0].upstream.nodes,
            [
                ("127.0.0.1:1980".to_string(), 1),
                ("10.0.0.2:80".to_string(), 2)
            ]
        );
        for (nodes, want) in [
            (
                r#"[{"host":"a","port":1,"priority":1},{"host":"b","port":1}]"#,
                "different `priority` values (1 and 0)",
            ),
            (
                r#"[{"host":"a","port":1},{"host":"b","port":"x"}]"#,
                "at `upstream.nodes`: [1]: invalid type: string \"x\"",
            ),
            (
                r#"[{"host":"a","port":1,"wieght":1}]"#,
                "at `upstream.nodes`: [0]: unknown field `wieght`",
            ),
            (
                r#"{"a:1":-1}"#,
                "at `upstream.nodes`: the weight of \"a:1\" is not a whole number",
            ),
            (r#""a:1""#, "at `upstream.nodes`: \"a:1\" is neither"),
        ] {
            let route = format!(r#"{{"id":"1","uri":"/a","upstream":{{"nodes":{nodes}}}}}"#);
            let err = config(&route).unwrap_err().0;
            assert!(
                err.contains(want),
                "{nodes}\n  gave: {err}\n  missing: {want}"
            );
        }
    }

    #[test]
    fn a_phase_meta_we_cannot_honour_is_refused() {
        let route = |meta: &str| {
            format!(
                r#"{{"id":"1","uri":"/a","upstream":{{"nodes":{{"127.0.0.1:1":1}}}},
                   "plugins":{{"ext-plugin-pre-req":{{"conf":[{{"name":"say","value":"{{}}"}}],"_meta":{meta}}}}}}}"#
            )
        };
        assert!(config(&route(r#"{"disable":false,"priority":5}"#)).is_ok());
        for field in ["filter", "error_response", "pre_function"] {
            let err = config(&route(&format!(r#"{{"{field}":[["arg_x","==","1"]]}}"#)))
                .unwrap_err()
                .0;
            assert!(
                err.contains(&format!(
                    "at `plugins.ext-plugin-pre-req._meta.{field}`: unknown field `{field}`"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn a_route_as_apisix_admin_api_returns_it_parses() {
        let c = config(
            r#"{"id":"1","uri":"/hello","name":"hello","desc":"d","methods":["GET"],"status":1,
                "priority":3,"create_time":1700000000,"update_time":1700000001,"labels":{"env":"prod"},
                "upstream":{"type":"roundrobin","scheme":"http","pass_host":"pass","hash_on":"vars",
                  "nodes":{"127.0.0.1:1980":1},"keepalive_pool":{"size":320,"idle_timeout":60,"requests":1000},
                  "timeout":{"connect":6,"send":6,"read":6}},
                "plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say","value":"{\"body\":\"hi\"}"}],
                  "allow_degradation":false,"_meta":{"disable":false}},
                  "ext-plugin-post-req":{"conf":[{"name":"say","value":"{}"}],"_meta":{"disable":true}}}}"#,
        )
        .unwrap();
        let r = &c.routes[0];
        assert!(r.enabled && r.priority == 3);
        assert!(r.pre_req.is_some(), "enabled phase kept");
        assert!(r.post_req.is_none(), "`_meta.disable` turns a phase off");
        assert_eq!(r.upstream.read_timeout, Duration::from_secs(6));
        let off =
            config(r#"{"id":"2","uri":"/a","status":0,"upstream":{"nodes":{"127.0.0.1:1":1}}}"#)
                .unwrap();
        assert!(!off.routes[0].enabled);
        let err = config(
            r#"{"id":"3","uri":"/a","hosts":["a.com"],"upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
        )
        .unwrap_err();
        assert!(
            err.0.contains("unknown field `hosts`"),
            "a condition we cannot honour is refused: {err}"
        );
    }

    #[test]
    fn runner_env_may_not_set_what_the_host_sets() {
        for name in ["APISIX_LISTEN_ADDRESS", "APISIX_CONF_EXPIRE_TIME"] {
            let err = Config::parse(&format!(
                r#"{{"ext-plugin":{{"cmd":["r"],"env":{{"{name}":"x"}}}},"routes":[]}}"#
            ))
            .unwrap_err()
            .0;
            assert!(
                err.contains(&format!("ext-plugin.env.{name}")) && err.contains("sets"),
                "{err}"
            );
        }
        let err = Config::parse(r#"{"ext-plugin":{"cmd":["r"],"env":{"A=B":"x"}},"routes":[]}"#)
            .unwrap_err()
            .0;
        assert!(err.contains("\"A=B\" is not a variable name"), "{err}");
        let ok =
            Config::parse(r#"{"ext-plugin":{"cmd":["r"],"env":{"APISIX_OTHER":"x"}},"routes":[]}"#);
        assert!(ok.is_ok());
    }

    #[test]
    fn uris_prefixes_and_numeric_ids() {
        let c = config(r#"{"id":7,"uris":["/a/*","/b"],"upstream":{"nodes":[{"host":"127.0.0.1","port":1,"weight":2}]}}"#).unwrap();
        assert_eq!(c.routes[0].id, "7");
        assert_eq!(
            c.routes[0].uris,
            vec![
                UriPattern::Prefix("/a/".into()),
                UriPattern::Exact("/b".into())
            ]
        );
        assert_eq!(
            c.routes[0].upstream.nodes,
            vec![("127.0.0.1:1".to_string(), 2)]
        );
    }

    #[test]
    fn client_limits_default_like_nginx_and_errors_name_the_field() {
        let c = config(OK_ROUTE).unwrap();
        assert_eq!(c.client, ClientLimits::default());
        assert_eq!(c.client.header_timeout, Duration::from_secs(60));
        assert_eq!(c.client.keepalive_timeout, Duration::from_secs(75));
        let c = Config::parse(
            r#"{"ext-plugin":{"cmd":["r"]},"routes":[],"client_header_timeout_ms":300,
                "keepalive_timeout_ms":0,"max_client_connections":2,"max_request_header_bytes":4096}"#,
        )
        .unwrap();
        assert_eq!(
            c.client,
            ClientLimits {
                header_timeout: Duration::from_millis(300),
                keepalive_timeout: Duration::ZERO,
                max_connections: 2,
                max_header_bytes: 4096,
            }
        );
        for (field, value) in [
            ("client_header_timeout_ms", "0"),
            ("max_client_connections", "0"),
            ("max_client_connections", "100000000000"),
            ("max_request_header_bytes", "100"),
            ("max_request_header_bytes", "10000000"),
            ("keepalive_timeout_ms", "-1"),
        ] {
            let err = Config::parse(&format!(
                r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[],"{field}":{value}}}"#
            ))
            .unwrap_err()
            .0;
            assert!(err.contains(field), "{field}={value}: {err}");
        }
    }

    #[test]
    fn several_runners_and_a_phase_picks_one_by_name() {
        let phase = |runner: &str| {
            format!(
                r#"{{"id":"r1","uri":"/a","upstream":{{"nodes":{{"127.0.0.1:1":1}}}},
                "plugins":{{"ext-plugin-post-req":{{"runner":{runner},"conf":[{{"name":"say","value":"{{}}"}}]}}}}}}"#
            )
        };
        let text = |runner: &str| {
            format!(
                r#"{{"ext-plugin":{{"cmd":["r"]}},"runners":{{"auth":{{"cmd":["a"],"env":{{"K":"v"}}}}}},"routes":[{}]}}"#,
                phase(runner)
            )
        };
        let c = Config::parse(&text(r#""auth""#)).unwrap();
        assert_eq!(c.routes[0].post_req.as_ref().unwrap().runner, "auth");
        let names: Vec<&str> = c.runner_confs().map(|(n, _)| n).collect();
        assert_eq!(names, ["default", "auth"]);
        assert_eq!(c.runners["auth"].cmd, ["a"]);
        let c = Config::parse(&text(r#""default""#)).unwrap();
        assert_eq!(
            c.routes[0].post_req.as_ref().unwrap().runner,
            DEFAULT_RUNNER
        );
        let err = Config::parse(&text(r#""nope""#)).unwrap_err().0;
        assert!(
            err.contains("route `r1`")
                && err.contains("`plugins.ext-plugin-post-req.runner` \"nope\" is not a runner")
                && err.contains("`default`, `auth`"),
            "{err}"
        );
        let err =
            Config::parse(r#"{"ext-plugin":{"cmd":["r"]},"runners":{"x":{"cmd":[]}},"routes":[]}"#)
                .unwrap_err()
                .0;
        assert!(err.contains("`runners.x.cmd`"), "{err}");
        let err = Config::parse(
            r#"{"ext-plugin":{"cmd":["r"]},"runners":{"default":{"cmd":["d"]}},"routes":[]}"#,
        )
        .unwrap_err()
        .0;
        assert!(err.contains("\"default\" cannot name a runner"), "{err}");
    }

    #[test]
    fn the_etcd_section_replaces_routes_and_errors_name_the_field() {
        let base = r#""ext-plugin":{"cmd":["r"]}"#;
        let c = Config::parse(&format!(
            r#"{{{base},"etcd":{{"endpoints":["http://127.0.0.1:2379"],"prefix":"/apisix/","timeout_ms":3000,"user":"u","password":"p"}}}}"#
        ))
        .unwrap();
        let e = c.etcd.as_ref().unwrap();
        assert_eq!(e.prefix, "/apisix", "the trailing `/` is dropped");
        assert_eq!(e.timeout, Duration::from_secs(3));
        assert!(c.routes.is_empty());
        assert!(!format!("{e:?}").contains("\"p\""), "no password in logs");
        let c = Config::parse(&format!(
            r#"{{{base},"etcd":{{"endpoints":["http://127.0.0.1:2379"]}}}}"#
        ))
        .unwrap();
        assert_eq!(c.etcd.unwrap().prefix, "/apisix");
        for (etcd, expected) in [
            (r#"{"endpoints":[]}"#, "`etcd.endpoints` is empty"),
            (r#"{"endpoints":["127.0.0.1:2379"]}"#, "`etcd.endpoints[0]`"),
            (r#"{"endpoints":["https://e:2379"]}"#, "TLS"),
            (
                r#"{"endpoints":["http://e:1"],"prefix":"apisix"}"#,
                "`etcd.prefix`",
            ),
            (
                r#"{"endpoints":["http://e:1"],"timeout_ms":0}"#,
                "`etcd.timeout_ms`",
            ),
            (
                r#"{"endpoints":["http://e:1"],"user":"u"}"#,
                "`etcd.password`",
            ),
        ] {
            let err = Config::parse(&format!(r#"{{{base},"etcd":{etcd}}}"#))
                .unwrap_err()
                .0;
            assert!(err.contains(expected), "{etcd}: {err}");
        }
        let err = Config::parse(&format!(
            r#"{{{base},"routes":[],"etcd":{{"endpoints":["http://e:1"]}}}}"#
        ))
        .unwrap_err()
        .0;
        assert!(err.contains("remove `routes`"), "{err}");
        let err = Config::parse(&format!("{{{base}}}")).unwrap_err().0;
        assert!(err.contains("missing field `routes`"), "{err}");
    }

    #[test]
    fn a_file_route_holds_its_upstream_and_plugins() {
        for (route, expected) in [
            (
                r#"{"id":"1","uri":"/a","upstream_id":"u"}"#,
                "upstreams by id come from etcd",
            ),
            (
                r#"{"id":"1","uri":"/a","service_id":"s"}"#,
                "services come from etcd",
            ),
            (
                r#"{"id":"1","uri":"/a","upstream_id":"u","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
                "both `upstream` and `upstream_id`",
            ),
        ] {
            let err = config(route).unwrap_err().0;
            assert!(err.contains("route `1`") && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn smooth_weighted_round_robin() {
        assert_eq!(
            smooth_schedule(&[5, 1, 1]).unwrap(),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(smooth_schedule(&[2, 2]).unwrap(), vec![0, 1]);
    }

    #[test]
    fn the_client_body_timeout_defaults_to_60_s_and_must_be_positive() {
        let base = r#""ext-plugin":{"cmd":["r"]},"routes":[]"#;
        let c = Config::parse(&format!("{{{base}}}")).unwrap();
        assert_eq!(c.client_body_timeout, Duration::from_secs(60));
        let c = Config::parse(&format!(r#"{{{base},"client_body_timeout_ms":250}}"#)).unwrap();
        assert_eq!(c.client_body_timeout, Duration::from_millis(250));
        let err = Config::parse(&format!(r#"{{{base},"client_body_timeout_ms":0}}"#)).unwrap_err();
        assert!(
            err.to_string().contains("`client_body_timeout_ms`"),
            "{err}"
        );
    }
}
