//! The checks of the file's sections other than routes: runners, their
//! environment, the client limits, etcd; and that a route's phases name
//! runners that exist.

use super::error::ConfigError;
use super::model::{AdminConf, ClientLimits, EtcdConf, Phase, Route, RunnerConf, DEFAULT_RUNNER};
use super::raw::{RawAdmin, RawConfig, RawEtcd, RawRunner};
use crate::host::edge::ingress::{valid_host, MAX_PLUGIN_HEADERS};
use crate::wire::Protocol;
use std::collections::BTreeMap;
use std::time::Duration;

/// The variables the host sets for the runner; the configured `env` may not
/// name them (the configuration is refused). The third tells the runner
/// that its output is relayed into the host's log (see
/// [`crate::wire::LOG_RELAYED`]: one timestamp per line, the host's).
pub const RESERVED_ENV: [&str; 3] = [
    "APISIX_LISTEN_ADDRESS",
    "APISIX_CONF_EXPIRE_TIME",
    crate::wire::LOG_RELAYED,
];

/// The most `max_client_connections` can be (far past any file descriptor
/// limit; it keeps the connection semaphore in its range).
pub(super) const MAX_CLIENT_CONNECTIONS: usize = 10_000_000;

/// The bounds of `max_request_header_bytes`: hyper needs room for a request
/// line, and its read buffer (about 400 KiB) caps what it can hold.
pub(super) const HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=262_144;

/// The bounds of `max_request_headers`: at most what a plugin may send
/// ([`MAX_PLUGIN_HEADERS`]), so that a
/// request's header map, the client's fields and two rewrites', stays far
/// below what a map holds.
pub(super) const HEADER_COUNT_RANGE: std::ops::RangeInclusive<usize> = 1..=MAX_PLUGIN_HEADERS;

/// Checks the `etcd` section.
pub(super) fn etcd_conf(raw: RawEtcd) -> Result<EtcdConf, ConfigError> {
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
        // Set from `tls.keyring` by `Config::parse`.
        keyring: super::tls::Keyring::default(),
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

/// Checks one runner section (`ext-plugin`, or `runners.NAME`: `section`
/// names it in errors).
pub(super) fn runner_conf(section: &str, r: RawRunner) -> Result<RunnerConf, ConfigError> {
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
    let protocol = match r.protocol.as_deref() {
        None => Protocol::Capnp,
        Some(name) => Protocol::from_name(name).ok_or_else(|| {
            ConfigError(format!(
                "`{section}.protocol` {name:?} is not a wire this host speaks: \"capnp\" (extplug's, the default) or \"apisix\" (APISIX's)"
            ))
        })?,
    };
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
        max_waiting_calls: r.max_waiting_calls.unwrap_or(r.pool_size),
        restart_after_timeouts: r.restart_after_timeouts,
        standby: r.standby,
        protocol,
    })
}

/// A phase of `route` that names a runner `runners` lacks, with that name.
pub(super) fn unknown_runner<'r>(
    route: &'r Route,
    runners: &BTreeMap<String, RunnerConf>,
) -> Option<(Phase, &'r str)> {
    [Phase::PreReq, Phase::PostReq, Phase::PostResp]
        .into_iter()
        .filter_map(|p| route.phase(p).map(|c| (p, c.runner.as_str())))
        .find(|(_, name)| *name != DEFAULT_RUNNER && !runners.contains_key(*name))
}

/// "the runners are `default`, `a`" for an unknown runner's message.
pub(super) fn runner_names(runners: &BTreeMap<String, RunnerConf>) -> String {
    let names: Vec<String> = std::iter::once(DEFAULT_RUNNER)
        .chain(runners.keys().map(String::as_str))
        .map(|n| format!("`{n}`"))
        .collect();
    format!("the runners are {}", names.join(", "))
}

/// Checks the `admin` section; errors name the field.
pub(super) fn admin_conf(a: &RawAdmin) -> Result<AdminConf, ConfigError> {
    let listen = a.listen.parse().map_err(|_| {
        ConfigError(format!(
            "`admin.listen`: {:?} is not an address such as 127.0.0.1:9091",
            a.listen
        ))
    })?;
    for (i, host) in a.hosts.iter().enumerate() {
        let valid =
            http::HeaderValue::from_str(host).is_ok_and(|v| !host.is_empty() && valid_host(&v));
        if !valid {
            return Err(ConfigError(format!(
                "`admin.hosts[{i}]`: {host:?} is not a host name such as metrics.internal"
            )));
        }
    }
    if let Some(token) = &a.token {
        // Sent in a header: visible ASCII, and long enough not to be guessed.
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError(
                "`admin.token` must be 16 or more visible ASCII characters (no spaces)".into(),
            ));
        }
    }
    Ok(AdminConf {
        listen,
        hosts: a.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        token: a.token.clone(),
    })
}

/// Checks the client-side limits; errors name the field.
pub(super) fn client_limits(raw: &RawConfig) -> Result<ClientLimits, ConfigError> {
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
    if !HEADER_COUNT_RANGE.contains(&raw.max_request_headers) {
        return Err(ConfigError(format!(
            "`max_request_headers` {} must be between {} and {}",
            raw.max_request_headers,
            HEADER_COUNT_RANGE.start(),
            HEADER_COUNT_RANGE.end()
        )));
    }
    Ok(ClientLimits {
        header_timeout: Duration::from_millis(raw.client_header_timeout_ms),
        keepalive_timeout: Duration::from_millis(raw.keepalive_timeout_ms),
        max_connections: raw.max_client_connections,
        max_header_bytes: raw.max_request_header_bytes,
        max_headers: raw.max_request_headers,
        http2: super::tls::Http2Limits::default(),
    })
}

/// The runner's configured environment: names the host sets itself, and
/// names or values that cannot be in an environment, are refused.
pub(super) fn check_env(section: &str, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
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
