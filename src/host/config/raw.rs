//! The configuration file's JSON shape, field by field, with every
//! default: what serde reads before anything is checked.

use super::model::ClientLimits;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

impl Default for ClientLimits {
    /// nginx's defaults: 60 s header, 75 s keep-alive, 10,000 connections,
    /// 32 KiB of header.
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_millis(default_client_header_timeout()),
            keepalive_timeout: Duration::from_millis(default_keepalive_timeout()),
            max_connections: default_max_client_connections(),
            max_header_bytes: default_max_request_header(),
            max_headers: default_max_request_headers(),
            http2: super::tls::Http2Limits::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig<'a> {
    #[serde(default = "default_listen")]
    pub(super) listen: String,
    #[serde(rename = "ext-plugin")]
    pub(super) ext_plugin: RawRunner,
    #[serde(default)]
    pub(super) runners: BTreeMap<String, RawRunner>,
    // Raw text, borrowed from the file: each route is parsed on its own,
    // and its position in the file gives its errors a line and column.
    // Absent when the routes come from etcd.
    #[serde(borrow, default)]
    pub(super) routes: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(default)]
    pub(super) etcd: Option<RawEtcd>,
    #[serde(default = "default_max_body")]
    pub(super) max_request_body_bytes: usize,
    #[serde(default = "default_max_body")]
    pub(super) max_response_body_bytes: usize,
    #[serde(default = "default_max_buffered_body")]
    pub(super) max_buffered_body_bytes: usize,
    #[serde(default = "default_shutdown_grace")]
    pub(super) shutdown_grace_ms: u64,
    #[serde(default = "default_client_body_timeout")]
    pub(super) client_body_timeout_ms: u64,
    #[serde(default = "default_client_header_timeout")]
    pub(super) client_header_timeout_ms: u64,
    #[serde(default = "default_keepalive_timeout")]
    pub(super) keepalive_timeout_ms: u64,
    #[serde(default = "default_max_client_connections")]
    pub(super) max_client_connections: usize,
    #[serde(default = "default_max_request_header")]
    pub(super) max_request_header_bytes: usize,
    #[serde(default = "default_max_request_headers")]
    pub(super) max_request_headers: usize,
    #[serde(default)]
    pub(super) admin: Option<RawAdmin>,
    // The TLS listener, HTTP/2's limits and the certificates (`tls.rs`).
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) http2: Option<RawHttp2>,
    #[serde(borrow, default)]
    pub(super) ssls: Option<Vec<&'a serde_json::value::RawValue>>,
}

/// The `tls` section (checked in `ssl.rs`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: String,
    #[serde(default = "default_handshake_timeout")]
    pub(super) handshake_timeout_ms: u64,
    #[serde(default)]
    pub(super) fallback_sni: Option<String>,
    #[serde(default)]
    pub(super) keyring: Option<Vec<String>>,
}

pub(super) fn default_handshake_timeout() -> u64 {
    10_000
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp2 {
    #[serde(default)]
    pub(super) max_concurrent_streams: Option<u32>,
    #[serde(default)]
    pub(super) initial_stream_window_size: Option<u32>,
    #[serde(default)]
    pub(super) initial_connection_window_size: Option<u32>,
    #[serde(default)]
    pub(super) max_pending_accept_reset_streams: Option<usize>,
    #[serde(default)]
    pub(super) max_local_error_reset_streams: Option<usize>,
    #[serde(default)]
    pub(super) h2c: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub(super) endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    pub(super) prefix: String,
    #[serde(default = "default_etcd_timeout")]
    pub(super) timeout_ms: u64,
    #[serde(default)]
    pub(super) user: Option<String>,
    #[serde(default)]
    pub(super) password: Option<String>,
}

pub(super) fn default_etcd_prefix() -> String {
    "/apisix".to_owned()
}

pub(super) fn default_etcd_timeout() -> u64 {
    3000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    #[serde(default)]
    pub(super) token: Option<String>,
}

pub(super) fn default_listen() -> String {
    "127.0.0.1:9080".to_owned()
}

pub(super) fn default_max_body() -> usize {
    8 * 1024 * 1024
}
pub(super) fn default_max_buffered_body() -> usize {
    128 * 1024 * 1024
}

pub(super) fn default_shutdown_grace() -> u64 {
    10_000
}

pub(super) fn default_client_body_timeout() -> u64 {
    60_000
}

pub(super) fn default_client_header_timeout() -> u64 {
    60_000
}

pub(super) fn default_keepalive_timeout() -> u64 {
    75_000
}

pub(super) fn default_max_client_connections() -> usize {
    10_000
}

pub(super) fn default_max_request_header() -> usize {
    32 * 1024
}
/// Past hyper's 100 (a browser behind a few proxies and tracing layers can
/// send more), within a small allocation: hyper takes 64 bytes per field
/// for each request head it parses.
pub(super) fn default_max_request_headers() -> usize {
    256
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunner {
    pub(super) cmd: Vec<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default = "default_expire")]
    pub(super) conf_expire_time: u64,
    #[serde(default = "default_call_timeout")]
    pub(super) call_timeout_ms: u64,
    #[serde(default = "default_start_timeout")]
    pub(super) start_timeout_ms: u64,
    #[serde(default = "default_stop_grace")]
    pub(super) stop_grace_ms: u64,
    #[serde(default = "default_pool")]
    pub(super) pool_size: usize,
    #[serde(default)]
    pub(super) max_waiting_calls: Option<usize>,
    #[serde(default = "default_restart_after")]
    pub(super) restart_after_timeouts: u32,
    #[serde(default = "default_standby")]
    pub(super) standby: bool,
    /// `capnp` (extplug's wire, the default) or `apisix` (APISIX's
    /// FlatBuffers wire); checked in `validate.rs`, which names the key.
    #[serde(default)]
    pub(super) protocol: Option<String>,
}

pub(super) fn default_expire() -> u64 {
    3600
}

pub(super) fn default_call_timeout() -> u64 {
    2000
}

pub(super) fn default_start_timeout() -> u64 {
    5000
}

pub(super) fn default_stop_grace() -> u64 {
    1000
}

pub(super) fn default_pool() -> usize {
    64
}

pub(super) fn default_restart_after() -> u32 {
    3
}

pub(super) fn default_standby() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawId {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) id: RawId,
    // APISIX bookkeeping: accepted so that a route copied from APISIX's Admin
    // API parses as it is; none of it changes what the route does.
    #[serde(rename = "name")]
    pub(super) _name: Option<IgnoredAny>,
    #[serde(rename = "desc")]
    pub(super) _desc: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    pub(super) _labels: Option<IgnoredAny>,
    #[serde(rename = "create_time")]
    pub(super) _create_time: Option<IgnoredAny>,
    #[serde(rename = "update_time")]
    pub(super) _update_time: Option<IgnoredAny>,
    /// 1 (default) enabled, 0 disabled, as in APISIX.
    pub(super) status: Option<u8>,
    /// Breaks ties between equally specific matches (higher first), as in APISIX.
    pub(super) priority: Option<i64>,
    pub(super) uri: Option<String>,
    pub(super) uris: Option<Vec<String>>,
    pub(super) methods: Option<Vec<String>>,
    /// One host name or `*.` wildcard (APISIX's `host`).
    pub(super) host: Option<String>,
    /// Host names or `*.` wildcards.
    pub(super) hosts: Option<Vec<String>>,
    /// One client address or CIDR.
    pub(super) remote_addr: Option<String>,
    /// Client addresses or CIDRs.
    pub(super) remote_addrs: Option<Vec<String>>,
    /// lua-resty-expr's expression, compiled in `apisix.rs`.
    pub(super) vars: Option<serde_json::Value>,
    pub(super) enable_websocket: Option<bool>,
    pub(super) upstream: Option<RawUpstream>,
    /// Overrides the upstream's `timeout` for this route, as in APISIX.
    pub(super) timeout: Option<RawTimeout>,
    /// An upstream object by id (`<prefix>/upstreams/<id>` in etcd).
    pub(super) upstream_id: Option<RawId>,
    /// A service object by id (`<prefix>/services/<id>` in etcd): its
    /// upstream and plugins, unless the route has its own.
    pub(super) service_id: Option<RawId>,
    #[serde(default)]
    pub(super) plugins: RawPlugins,
}

/// An APISIX service object: what the routes naming it share.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    #[serde(rename = "id")]
    pub(super) _id: Option<IgnoredAny>,
    #[serde(rename = "name")]
    pub(super) _name: Option<IgnoredAny>,
    #[serde(rename = "desc")]
    pub(super) _desc: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    pub(super) _labels: Option<IgnoredAny>,
    #[serde(rename = "create_time")]
    pub(super) _create_time: Option<IgnoredAny>,
    #[serde(rename = "update_time")]
    pub(super) _update_time: Option<IgnoredAny>,
    pub(super) upstream: Option<RawUpstream>,
    pub(super) upstream_id: Option<RawId>,
    /// The hosts of its routes that have none of their own.
    pub(super) hosts: Option<Vec<String>>,
    /// The `enable_websocket` of its routes that do not set it.
    pub(super) enable_websocket: Option<bool>,
    #[serde(default)]
    pub(super) plugins: RawPlugins,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugins {
    #[serde(rename = "ext-plugin-pre-req")]
    pub(super) pre_req: Option<RawPhase>,
    #[serde(rename = "ext-plugin-post-req")]
    pub(super) post_req: Option<RawPhase>,
    #[serde(rename = "ext-plugin-post-resp")]
    pub(super) post_resp: Option<RawPhase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPhase {
    pub(super) conf: Vec<RawConfItem>,
    #[serde(default)]
    pub(super) allow_degradation: bool,
    #[serde(default)]
    pub(super) extra_info: Vec<String>,
    /// The runner's name in `runners` (default: the `ext-plugin` runner).
    pub(super) runner: Option<String>,
    /// APISIX's per-plugin metadata; `disable: true` turns the phase off.
    #[serde(rename = "_meta")]
    pub(super) meta: Option<RawMeta>,
}

/// APISIX's `_meta`: `disable` is honoured, `priority` changes nothing
/// (each `ext-plugin-*` phase holds one plugin); the others (`filter`,
/// `error_response`, `pre_function`) are refused: ignored, the phase
/// would run on requests APISIX would not run it on, or answer otherwise.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeta {
    #[serde(default)]
    pub(super) disable: bool,
    #[serde(rename = "priority")]
    pub(super) _priority: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfItem {
    pub(super) name: String,
    #[serde(deserialize_with = "conf_value")]
    pub(super) value: String,
}

/// A plugin's configuration: APISIX's JSON text in a string
/// (`"{\"keys\":[\"k\"]}"`), or the same as a JSON object (`{"keys":
/// ["k"]}`), which the runner gets serialized, as the string form.
fn conf_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => Ok(text),
        object @ serde_json::Value::Object(_) => Ok(object.to_string()),
        other => Err(D::Error::custom(format!(
            "a plugin's `value` is its configuration as a JSON object ({{\"key\": 1}}) or as \
             JSON text in a string, APISIX's form (\"{{\\\"key\\\": 1}}\"), not {other}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    #[serde(rename = "type", default = "default_lb")]
    pub(super) kind: String,
    pub(super) nodes: RawNodes,
    #[serde(default)]
    pub(super) timeout: Option<RawTimeout>,
    #[serde(default)]
    pub(super) scheme: Option<String>,
    #[serde(default)]
    pub(super) pass_host: Option<String>,
    /// The `Host` of `pass_host: rewrite`.
    #[serde(default)]
    pub(super) upstream_host: Option<String>,
    /// `chash`'s source: `vars` (default), `header` or `cookie`.
    #[serde(default)]
    pub(super) hash_on: Option<String>,
    /// `chash`'s key: the variable, header or cookie name.
    #[serde(default)]
    pub(super) key: Option<String>,
    /// Tries on other nodes (APISIX's default: one per other node).
    #[serde(default)]
    pub(super) retries: Option<u32>,
    /// Seconds within which retries may start; 0: no limit.
    #[serde(default)]
    pub(super) retry_timeout: Option<f64>,
    #[serde(default)]
    pub(super) checks: Option<super::checks::RawChecks>,
    /// With `"scheme": "https"`: verification and mTLS.
    #[serde(default)]
    pub(super) tls: Option<super::upstream_tls::RawUpstreamTls>,
    // APISIX bookkeeping (connections to nodes are always pooled).
    #[serde(rename = "name")]
    pub(super) _name: Option<IgnoredAny>,
    #[serde(rename = "desc")]
    pub(super) _desc: Option<IgnoredAny>,
    #[serde(rename = "id")]
    pub(super) _id: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    pub(super) _labels: Option<IgnoredAny>,
    #[serde(rename = "create_time")]
    pub(super) _create_time: Option<IgnoredAny>,
    #[serde(rename = "update_time")]
    pub(super) _update_time: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) keepalive_pool: Option<RawKeepalivePool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeepalivePool {
    pub(super) size: Option<u64>,
    pub(super) idle_timeout: Option<f64>,
    pub(super) requests: Option<u64>,
}

pub(super) fn default_lb() -> String {
    "roundrobin".to_owned()
}

/// `nodes`, in either of APISIX's forms: `{"host:port": weight}` or
/// `[{"host", "port", "weight"}]`.
pub(super) enum RawNodes {
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
pub(super) struct RawNode {
    pub(super) host: String,
    /// APISIX's default for an `http` upstream: 80.
    #[serde(default = "http_port")]
    pub(super) port: u16,
    #[serde(default = "one")]
    pub(super) weight: u32,
    /// APISIX's failover order (higher first, the next only when all of
    /// a priority fail); APISIX stores `0` when none is given. extplug
    /// balances over every node: nodes of different priorities are
    /// refused rather than balanced (see `parse_upstream`).
    #[serde(default)]
    pub(super) priority: i64,
    // Bookkeeping for APISIX's own plugins; it changes nothing here.
    #[serde(rename = "metadata")]
    pub(super) _metadata: Option<IgnoredAny>,
}

pub(super) fn http_port() -> u16 {
    80
}

pub(super) fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeout {
    pub(super) connect: Option<f64>,
    pub(super) send: Option<f64>,
    pub(super) read: Option<f64>,
}

/// serde_json's message without its ` at line L column C` (we say where).
pub(super) fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}
