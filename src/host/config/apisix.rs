//! APISIX's objects made into routes: a route object (the file's routes
//! and etcd's alike), its upstream, and the upstreams and services etcd
//! holds by id.

use super::balance::{balancer, smooth_schedule};
use super::checks::health_checks;
use super::expr::{parse_ip_or_cidr, VarsExpr};
use super::model::{
    KeepalivePool, PassHost, Phase, PhaseConf, Route, Upstream, UriPattern, DEFAULT_RUNNER,
};
use super::raw::{
    without_position, RawId, RawKeepalivePool, RawNodes, RawPhase, RawPlugins, RawRoute,
    RawService, RawTimeout, RawUpstream,
};
use super::uri::check_route_uri;
use crate::host::edge::hostname::HostPattern;
use crate::host::edge::ingress::valid_host;
use http::Method;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

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
    if let Some(hosts) = &service.hosts {
        host_patterns(hosts, "hosts")?;
    }
    if let Some(u) = service.upstream {
        parse_upstream(u)?;
    }
    Ok(())
}

/// `hosts` (or `host`, as `field`) as patterns; an empty list is refused,
/// as APISIX's schema does.
fn host_patterns(hosts: &[String], field: &str) -> Result<Vec<HostPattern>, String> {
    if hosts.is_empty() {
        return Err(format!(
            "`{field}` is empty: leave it out to answer any host"
        ));
    }
    hosts
        .iter()
        .map(|h| HostPattern::parse(h).map_err(|e| format!("`{field}`: {e}")))
        .collect()
}

/// The route's hosts: its own `host` or `hosts`, else its service's.
fn route_hosts(
    host: Option<String>,
    hosts: Option<Vec<String>>,
    service: Option<&(String, RawService)>,
) -> Result<Vec<HostPattern>, String> {
    match (host, hosts) {
        (Some(_), Some(_)) => Err("has both `host` and `hosts`; use one".into()),
        (Some(host), None) => host_patterns(&[host], "host"),
        (None, Some(hosts)) => host_patterns(&hosts, "hosts"),
        (None, None) => match service {
            Some((sid, s)) => match &s.hosts {
                Some(hosts) => {
                    host_patterns(hosts, "hosts").map_err(|e| format!("the service {sid:?}: {e}"))
                }
                None => Ok(Vec::new()),
            },
            None => Ok(Vec::new()),
        },
    }
}

/// `remote_addr` or `remote_addrs` as networks (an address is a /32 or
/// /128).
fn route_remote_addrs(
    one: Option<String>,
    many: Option<Vec<String>>,
) -> Result<Vec<ipnet::IpNet>, String> {
    let (texts, field) = match (one, many) {
        (Some(_), Some(_)) => {
            return Err("has both `remote_addr` and `remote_addrs`; use one".into())
        }
        (Some(one), None) => (vec![one], "remote_addr"),
        (None, Some(many)) if many.is_empty() => {
            return Err("`remote_addrs` is empty: leave it out to answer any client".into())
        }
        (None, Some(many)) => (many, "remote_addrs"),
        (None, None) => return Ok(Vec::new()),
    };
    texts
        .iter()
        .map(|t| parse_ip_or_cidr(t).map_err(|e| format!("`{field}`: {e}")))
        .collect()
}

/// Deserializes `text`, the error saying at which field.
pub(super) fn from_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
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

pub(super) fn parse_upstream_text(text: &str) -> Result<Upstream, String> {
    parse_upstream(from_text::<RawUpstream>(text)?)
}

pub(super) fn id_text(id: RawId, field: &str) -> Result<String, String> {
    match id {
        RawId::Text(s) if !s.is_empty() => Ok(s),
        RawId::Text(_) => Err(format!("`{field}` is empty")),
        RawId::Number(n) => Ok(n.to_string()),
    }
}

/// The upstream object `id` names (`field`: `upstream_id`, or the service's).
pub(super) fn upstream_by_id(
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
        Some(text) => match parse_upstream_text(text) {
            Ok(mut upstream) => {
                upstream.name = format!("upstreams/{id}");
                Ok(upstream)
            }
            Err(e) => Err(format!(
                "`{field}` {id:?}: the upstream at `{key}` is not valid: {e}"
            )),
        },
    }
}

/// Parses one route's text. The error's `(line, column)` in that text is
/// given when serde found it; a rule broken after parsing has none.
pub(super) fn parse_route(
    text: &str,
    objects: Option<&Objects<'_>>,
) -> Result<Route, (String, Option<(usize, usize)>)> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawRoute = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = Some((inner.line(), inner.column()));
        let message = unsupported_or(&path, without_position(&inner));
        if path == "." {
            (message, at)
        } else {
            (format!("at `{path}`: {message}"), at)
        }
    })?;
    route_from_raw(raw, objects).map_err(|e| (e, None))
}

pub(super) fn route_from_raw(
    raw: RawRoute,
    objects: Option<&Objects<'_>>,
) -> Result<Route, String> {
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
    let mut upstream = match (raw.upstream, raw.upstream_id) {
        (Some(_), Some(_)) => return Err("has both `upstream` and `upstream_id`; use one".into()),
        (Some(u), None) => named(parse_upstream(u)?, format!("routes/{id}")),
        (None, Some(uid)) => upstream_by_id(uid, "upstream_id", objects)?,
        (None, None) => match service.as_mut() {
            None => {
                return Err("missing field `upstream` (or `upstream_id`, or `service_id`)".into())
            }
            Some((sid, s)) => match (s.upstream.take(), s.upstream_id.take()) {
                (Some(u), None) => named(
                    parse_upstream(u).map_err(|e| format!("the service {sid:?}: {e}"))?,
                    format!("services/{sid}"),
                ),
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
    // The route's `timeout` wins over its upstream's, as in APISIX; what it
    // leaves out stays the upstream's.
    if let Some(t) = &raw.timeout {
        let base = Timeouts {
            connect: upstream.connect_timeout,
            send: upstream.send_timeout,
            read: upstream.read_timeout,
        };
        let t = timeouts(Some(t), "timeout", base)?;
        upstream.connect_timeout = t.connect;
        upstream.send_timeout = t.send;
        upstream.read_timeout = t.read;
    }
    let hosts = route_hosts(raw.host, raw.hosts, service.as_ref())?;
    let enable_websocket = raw
        .enable_websocket
        .or_else(|| service.as_ref().and_then(|(_, s)| s.enable_websocket))
        .unwrap_or(false);
    let remote_addrs = route_remote_addrs(raw.remote_addr, raw.remote_addrs)?;
    let vars = raw.vars.as_ref().map(VarsExpr::compile).transpose()?;
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
        hosts,
        remote_addrs,
        vars,
        enable_websocket,
        upstream,
    })
}

pub(super) fn parse_upstream(raw: RawUpstream) -> Result<Upstream, String> {
    let balancer = balancer(&raw.kind, raw.hash_on.as_deref(), raw.key.as_deref())?;
    if let Some(scheme) = &raw.scheme {
        if scheme != "http" {
            return Err(format!(
                "`upstream.scheme` {scheme:?} is not supported; only \"http\""
            ));
        }
    }
    let pass_host = match (raw.pass_host.as_deref(), raw.upstream_host) {
        (None | Some("pass"), _) => PassHost::Pass,
        (Some("node"), _) => PassHost::Node,
        (Some("rewrite"), Some(host)) => {
            let valid = !host.is_empty()
                && http::HeaderValue::from_str(&host).is_ok_and(|v| valid_host(&v));
            if !valid {
                return Err(format!(
                    "`upstream.upstream_host` {host:?} is not a host such as api.internal or api.internal:8080"
                ));
            }
            PassHost::Rewrite(host)
        }
        (Some("rewrite"), None) => {
            return Err(
                "`upstream.pass_host` \"rewrite\" needs `upstream.upstream_host`, the Host to send"
                    .into(),
            )
        }
        (Some(other), _) => {
            return Err(format!(
                "`upstream.pass_host` {other:?} must be \"pass\", \"node\" or \"rewrite\""
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
    let timeouts = timeouts(
        raw.timeout.as_ref(),
        "upstream.timeout",
        Timeouts::default(),
    )?;
    let retry_timeout = match raw.retry_timeout {
        None => None,
        Some(0.0) => None,
        Some(s) if s > 0.0 && s.is_finite() => {
            Some(Duration::try_from_secs_f64(s).map_err(|_| {
                format!("`upstream.retry_timeout` {s} is too large a number of seconds")
            })?)
        }
        Some(s) => {
            return Err(format!(
                "`upstream.retry_timeout` {s} must be a number of seconds, 0 (no limit) or more"
            ))
        }
    };
    let checks = match raw.checks {
        None => None,
        Some(c) => Some(health_checks(c, "upstream.checks")?),
    };
    let keepalive = keepalive_pool(raw.keepalive_pool.as_ref())?;
    Ok(Upstream {
        name: String::new(),
        retries: raw.retries.map_or(nodes.len() - 1, |r| r as usize),
        nodes,
        schedule,
        balancer,
        connect_timeout: timeouts.connect,
        send_timeout: timeouts.send,
        read_timeout: timeouts.read,
        pass_host,
        retry_timeout,
        checks,
        keepalive,
    })
}

/// `upstream` named `name` (see [`Upstream::name`]).
fn named(mut upstream: Upstream, name: String) -> Upstream {
    upstream.name = name;
    upstream
}

/// An upstream's (or a route's) `timeout`, in seconds.
#[derive(Clone, Copy)]
pub(super) struct Timeouts {
    connect: Duration,
    send: Duration,
    read: Duration,
}

impl Default for Timeouts {
    /// APISIX's (nginx's) 60 seconds each.
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Timeouts {
            connect: minute,
            send: minute,
            read: minute,
        }
    }
}

/// Checks a `timeout` object (`field` names it); a value it lacks is
/// `base`'s.
pub(super) fn timeouts(
    raw: Option<&RawTimeout>,
    field: &str,
    base: Timeouts,
) -> Result<Timeouts, String> {
    let Some(t) = raw else {
        return Ok(base);
    };
    let secs = |v: Option<f64>, name: &str, base: Duration| -> Result<Duration, String> {
        match v {
            None => Ok(base),
            // `try_`: a number too large for a `Duration` is an error, not a panic.
            Some(s) if s > 0.0 && s.is_finite() => Duration::try_from_secs_f64(s)
                .map_err(|_| format!("`{field}.{name}` {s} is too large a number of seconds")),
            Some(s) => Err(format!(
                "`{field}.{name}` {s} must be a positive number of seconds"
            )),
        }
    };
    Ok(Timeouts {
        connect: secs(t.connect, "connect", base.connect)?,
        send: secs(t.send, "send", base.send)?,
        read: secs(t.read, "read", base.read)?,
    })
}

/// APISIX's route fields that extplug cannot honour yet: refused (by
/// `deny_unknown_fields`, as any unknown field) rather than served broader
/// than written (a route without its `filter_func` would answer requests
/// APISIX's would not), and
/// named as such, not as a typo ([`unsupported_or`]).
pub(super) const UNSUPPORTED_ROUTE_FIELDS: [&str; 4] =
    ["filter_func", "script", "script_id", "plugin_config_id"];

/// serde's `message` for a route's field at `path`, or, for a field of
/// [`UNSUPPORTED_ROUTE_FIELDS`], that extplug does not support it.
pub(super) fn unsupported_or(path: &str, message: String) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match unknown {
        Some(name) if name == path && UNSUPPORTED_ROUTE_FIELDS.contains(&name) => {
            "not supported by extplug (an APISIX field extplug cannot honour yet; see \
             docs/configuration.md, \"What is refused\")"
                .to_owned()
        }
        _ => message,
    }
}

/// Checks `keepalive_pool` as APISIX's schema does (`size` and `requests`
/// at least 1, `idle_timeout` at least 0 seconds).
pub(super) fn keepalive_pool(raw: Option<&RawKeepalivePool>) -> Result<KeepalivePool, String> {
    let mut pool = KeepalivePool::default();
    let Some(raw) = raw else {
        return Ok(pool);
    };
    if let Some(size) = raw.size {
        pool.size = usize::try_from(size)
            .ok()
            .filter(|&s| (1..=100_000).contains(&s))
            .ok_or_else(|| {
                format!("`upstream.keepalive_pool.size` {size} must be between 1 and 100000")
            })?;
    }
    if let Some(secs) = raw.idle_timeout {
        pool.idle_timeout = Some(secs)
            .filter(|s| *s >= 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| {
                format!("`upstream.keepalive_pool.idle_timeout` {secs} must be a number of seconds, 0 or more")
            })?;
    }
    if let Some(requests) = raw.requests {
        pool.requests = u32::try_from(requests)
            .ok()
            .filter(|&r| r >= 1)
            .ok_or_else(|| {
                format!(
                    "`upstream.keepalive_pool.requests` {requests} must be between 1 and {}",
                    u32::MAX
                )
            })?;
    }
    Ok(pool)
}
