//! Reading a configuration file: the JSON shape ([`super::raw`]) checked
//! section by section, each route with its line and column.

use super::apisix::parse_route;
use super::error::ConfigError;
use super::model::{Config, DEFAULT_RUNNER};
use super::raw::{without_position, RawConfig};
use super::ssl::parse_ssl;
use super::tls::{Keyring, Ssl};
use super::validate::{admin_conf, check_runners, client_limits, etcd_conf, runner_conf};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

impl Config {
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
        let largest = raw.max_request_body_bytes.max(raw.max_response_body_bytes);
        if raw.max_buffered_body_bytes < largest {
            return Err(ConfigError(format!(
                "`max_buffered_body_bytes` {} is less than one body may be (`max_request_body_bytes` or `max_response_body_bytes`, {largest}): no such body could ever be read",
                raw.max_buffered_body_bytes
            )));
        }
        let admin = match &raw.admin {
            None => None,
            Some(a) => Some(admin_conf(a)?),
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
        let mut etcd = match raw.etcd {
            None => None,
            Some(e) => Some(etcd_conf(e)?),
        };
        let mut client = client;
        client.http2 = super::ssl::http2_limits(raw.http2).map_err(ConfigError)?;
        let tls = match raw.tls {
            None => None,
            Some(t) => Some(super::ssl::tls_conf(t).map_err(ConfigError)?),
        };
        let keyring = tls.as_ref().map(|t| t.keyring.clone()).unwrap_or_default();
        if let Some(e) = etcd.as_mut() {
            e.keyring = keyring.clone();
        }
        let ssls = file_ssls(text, raw.ssls.unwrap_or_default(), &keyring)?;
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
        // Ids seen so far: one set, not a scan of the routes per route.
        let mut ids = std::collections::HashSet::with_capacity(raw_routes.len());
        for (i, raw_route) in raw_routes.into_iter().enumerate() {
            let route_text = raw_route.get();
            // The route's text is a slice of `text`: its offset is its
            // place, made a line and column only for an error (counting
            // lines for every route made a 10,000-route file take seconds).
            let offset = (route_text.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
            let place = || line_column(text, offset);
            let id = match serde_json::from_str::<RouteId>(route_text).map(|r| r.id) {
                Ok(Some(serde_json::Value::String(s))) => format!("`{s}`"),
                Ok(Some(serde_json::Value::Number(n))) => format!("`{n}`"),
                _ => "without id".to_owned(),
            };
            let route = parse_route(route_text, None).map_err(|(e, at)| {
                let (line, column) = place();
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
                let (line, column) = place();
                return Err(ConfigError(format!(
                    "{line}:{column}: route {id} (routes[{i}]): {e}"
                )));
            }
            if !ids.insert(route.id.clone()) {
                let (line, column) = place();
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
            max_buffered_body: raw.max_buffered_body_bytes,
            shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
            client_body_timeout: Duration::from_millis(raw.client_body_timeout_ms),
            client,
            admin,
            etcd,
            tls,
            ssls,
        })
    }
}

/// The file's `ssls`, each checked ([`parse_ssl`]); all or nothing: the
/// first bad one refuses the file, with its place, id and reason. `text`
/// is the whole file, which each object's text is a slice of.
fn file_ssls(
    text: &str,
    raw: Vec<&serde_json::value::RawValue>,
    keyring: &Keyring,
) -> Result<Vec<Ssl>, ConfigError> {
    let mut ssls: Vec<Ssl> = Vec::with_capacity(raw.len());
    for (i, object) in raw.into_iter().enumerate() {
        let object = object.get();
        let offset = (object.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
        let (line, column) = line_column(text, offset);
        let id = match serde_json::from_str::<RouteId>(object).map(|r| r.id) {
            Ok(Some(serde_json::Value::String(s))) => format!("`{s}`"),
            Ok(Some(serde_json::Value::Number(n))) => format!("`{n}`"),
            _ => "without id".to_owned(),
        };
        let fail = |e: String| ConfigError(format!("{line}:{column}: ssl {id} (ssls[{i}]): {e}"));
        let Some(ssl) = parse_ssl(object, keyring).map_err(fail)? else {
            continue;
        };
        if ssls.iter().any(|s| s.id == ssl.id) {
            return Err(fail("the id is used twice".into()));
        }
        ssls.push(ssl);
    }
    Ok(ssls)
}

/// A route's `id` alone, to name the route in its errors.
#[derive(Deserialize)]
pub(super) struct RouteId {
    pub(super) id: Option<serde_json::Value>,
}

/// The 1-based line and column (in bytes, as serde_json counts) of `offset`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    (line, offset - start + 1)
}
