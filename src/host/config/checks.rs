//! An upstream's `checks`: APISIX's health checker schema (field names,
//! bounds and defaults as `apisix/schema_def.lua` has them), read and
//! checked into [`HealthChecks`]. The JSON shapes are here rather than in
//! `raw.rs`: they are only the checks'.

use super::model::{ActiveCheck, HealthChecks, HealthRules, PassiveCheck, UpstreamTls};
use serde::Deserialize;
use std::time::Duration;

/// `checks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChecks {
    active: Option<RawActive>,
    passive: Option<RawPassive>,
}

/// `checks.active`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActive {
    #[serde(rename = "type")]
    kind: Option<String>,
    timeout: Option<f64>,
    concurrency: Option<u64>,
    host: Option<String>,
    port: Option<u16>,
    http_path: Option<String>,
    https_verify_certificate: Option<bool>,
    req_headers: Option<Vec<String>>,
    healthy: Option<RawActiveHealthy>,
    unhealthy: Option<RawUnhealthy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActiveHealthy {
    interval: Option<u64>,
    http_statuses: Option<Vec<u16>>,
    successes: Option<u32>,
}

/// `unhealthy` of either check (`interval` only matters to the active one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnhealthy {
    interval: Option<u64>,
    http_statuses: Option<Vec<u16>>,
    http_failures: Option<u32>,
    tcp_failures: Option<u32>,
    timeouts: Option<u32>,
}

/// `checks.passive`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassive {
    #[serde(rename = "type")]
    kind: Option<String>,
    healthy: Option<RawPassiveHealthy>,
    unhealthy: Option<RawUnhealthy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassiveHealthy {
    http_statuses: Option<Vec<u16>>,
    successes: Option<u32>,
}

/// APISIX's defaults for the active check's statuses.
const ACTIVE_HEALTHY: [u16; 2] = [200, 302];
const ACTIVE_UNHEALTHY: [u16; 8] = [429, 404, 500, 501, 502, 503, 504, 505];
/// APISIX's defaults for the passive check's statuses.
const PASSIVE_HEALTHY: [u16; 19] = [
    200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308,
];
const PASSIVE_UNHEALTHY: [u16; 3] = [429, 500, 503];

/// One check's defaults: statuses, and the counts of `successes`,
/// `http_failures`, `tcp_failures` and `timeouts`.
struct Defaults {
    healthy: &'static [u16],
    unhealthy: &'static [u16],
    counts: [u32; 4],
}

const ACTIVE_DEFAULTS: Defaults = Defaults {
    healthy: &ACTIVE_HEALTHY,
    unhealthy: &ACTIVE_UNHEALTHY,
    counts: [2, 5, 2, 3],
};

const PASSIVE_DEFAULTS: Defaults = Defaults {
    healthy: &PASSIVE_HEALTHY,
    unhealthy: &PASSIVE_UNHEALTHY,
    counts: [5, 5, 2, 7],
};

/// A check's thresholds: `healthy` (statuses and successes) and
/// `unhealthy`, with `defaults` for what they leave out.
fn rules(
    healthy: (Option<Vec<u16>>, Option<u32>),
    unhealthy: RawUnhealthy,
    defaults: &Defaults,
    field: &str,
) -> Result<HealthRules, String> {
    let [successes, http_failures, tcp_failures, timeouts] = defaults.counts;
    let at = |name: &str| format!("{field}.{name}");
    Ok(HealthRules {
        healthy_statuses: statuses(healthy.0, defaults.healthy, &at("healthy.http_statuses"))?,
        successes: count(healthy.1, successes, &at("healthy.successes"))?,
        unhealthy_statuses: statuses(
            unhealthy.http_statuses,
            defaults.unhealthy,
            &at("unhealthy.http_statuses"),
        )?,
        http_failures: count(
            unhealthy.http_failures,
            http_failures,
            &at("unhealthy.http_failures"),
        )?,
        tcp_failures: count(
            unhealthy.tcp_failures,
            tcp_failures,
            &at("unhealthy.tcp_failures"),
        )?,
        timeouts: count(unhealthy.timeouts, timeouts, &at("unhealthy.timeouts"))?,
    })
}

/// A count of 1 to 254 (APISIX's bounds), or `default`.
fn count(v: Option<u32>, default: u32, field: &str) -> Result<u32, String> {
    match v {
        None => Ok(default),
        Some(n) if (1..=254).contains(&n) => Ok(n),
        Some(n) => Err(format!("`{field}` {n} must be between 1 and 254")),
    }
}

/// A list of statuses from 200 to 599, none twice, or `default`.
fn statuses(v: Option<Vec<u16>>, default: &[u16], field: &str) -> Result<Vec<u16>, String> {
    let Some(list) = v else {
        return Ok(default.to_vec());
    };
    if list.is_empty() {
        return Err(format!("`{field}` is empty: list at least one status"));
    }
    for (i, s) in list.iter().enumerate() {
        if !(200..=599).contains(s) {
            return Err(format!("`{field}[{i}]` {s} must be between 200 and 599"));
        }
        if list[..i].contains(s) {
            return Err(format!("`{field}` lists {s} twice"));
        }
    }
    Ok(list)
}

/// Whole seconds, at least 1, or `default`.
fn interval(v: Option<u64>, field: &str) -> Result<Duration, String> {
    match v {
        None => Ok(Duration::from_secs(1)),
        Some(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n)),
        Some(n) => Err(format!("`{field}` {n} must be between 1 and 86400 seconds")),
    }
}

/// Checks `upstream.checks` (`field` is its name in errors).
pub(super) fn health_checks(raw: RawChecks, field: &str) -> Result<HealthChecks, String> {
    let active = match raw.active {
        None => None,
        Some(a) => Some(active(a, &format!("{field}.active"))?),
    };
    let passive = match raw.passive {
        None => None,
        Some(p) => Some(passive(p, &format!("{field}.passive"))?),
    };
    if active.is_none() {
        return Err(format!(
            "`{field}` has no `active` check: APISIX requires one (only probes bring a node that failed back into use), with or without `passive`"
        ));
    }
    Ok(HealthChecks { active, passive })
}

fn active(a: RawActive, field: &str) -> Result<ActiveCheck, String> {
    // `https`: the upstream's `tls` (its `ca`, its client certificate) is
    // added by `parse_upstream`, which has it.
    let (http, tls) = match a.kind.as_deref() {
        None | Some("http") => (true, None),
        Some("tcp") => (false, None),
        Some("https") => (
            true,
            Some(UpstreamTls {
                verify: a.https_verify_certificate.unwrap_or(true),
                ca: None,
                client_cert: None,
            }),
        ),
        Some(other) => {
            return Err(format!(
                "`{field}.type` {other:?} must be \"http\", \"https\" or \"tcp\""
            ))
        }
    };
    let timeout = match a.timeout {
        None => Duration::from_secs(1),
        Some(s) if s > 0.0 && s.is_finite() => Duration::try_from_secs_f64(s)
            .map_err(|_| format!("`{field}.timeout` {s} is too large"))?,
        Some(s) => {
            return Err(format!(
                "`{field}.timeout` {s} must be a positive number of seconds"
            ))
        }
    };
    let concurrency = match a.concurrency {
        None => 10,
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(n) => {
            return Err(format!(
                "`{field}.concurrency` {n} must be between 1 and 1000"
            ))
        }
    };
    let http_path = a.http_path.unwrap_or_else(|| "/".to_owned());
    if !http_path.starts_with('/') || http_path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!(
            "`{field}.http_path` {http_path:?} is not a path such as \"/health\""
        ));
    }
    if let Some(host) = &a.host {
        if host.is_empty() || http::HeaderValue::from_str(host).is_err() {
            return Err(format!("`{field}.host` {host:?} is not a host name"));
        }
    }
    if a.port == Some(0) {
        return Err(format!("`{field}.port` 0 must be between 1 and 65535"));
    }
    let mut req_headers = Vec::new();
    for (i, line) in a.req_headers.unwrap_or_default().iter().enumerate() {
        let parsed = line.split_once(':').and_then(|(n, v)| {
            let name = http::HeaderName::from_bytes(n.trim().as_bytes()).ok()?;
            let value = http::HeaderValue::from_str(v.trim()).ok()?;
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        });
        match parsed {
            Some(h) => req_headers.push(h),
            None => {
                return Err(format!(
                    "`{field}.req_headers[{i}]` {line:?} is not \"Name: value\""
                ))
            }
        }
    }
    let healthy = a.healthy.unwrap_or(RawActiveHealthy {
        interval: None,
        http_statuses: None,
        successes: None,
    });
    let unhealthy = a.unhealthy.unwrap_or(RawUnhealthy {
        interval: None,
        http_statuses: None,
        http_failures: None,
        tcp_failures: None,
        timeouts: None,
    });
    let unhealthy_interval = interval(unhealthy.interval, &format!("{field}.unhealthy.interval"))?;
    let rules = rules(
        (healthy.http_statuses, healthy.successes),
        unhealthy,
        &ACTIVE_DEFAULTS,
        field,
    )?;
    Ok(ActiveCheck {
        http,
        tls,
        timeout,
        concurrency,
        http_path,
        host: a.host,
        port: a.port,
        req_headers,
        healthy_interval: interval(healthy.interval, &format!("{field}.healthy.interval"))?,
        unhealthy_interval,
        rules,
    })
}

fn passive(p: RawPassive, field: &str) -> Result<PassiveCheck, String> {
    // `tcp`: only connection failures and timeouts count; any answer is a
    // success (lua-resty-healthcheck's meaning).
    let tcp = match p.kind.as_deref() {
        None | Some("http") | Some("https") => false,
        Some("tcp") => true,
        Some(other) => {
            return Err(format!(
                "`{field}.type` {other:?} must be \"http\", \"https\" or \"tcp\""
            ))
        }
    };
    let healthy = p.healthy.unwrap_or(RawPassiveHealthy {
        http_statuses: None,
        successes: None,
    });
    let unhealthy = p.unhealthy.unwrap_or(RawUnhealthy {
        interval: None,
        http_statuses: None,
        http_failures: None,
        tcp_failures: None,
        timeouts: None,
    });
    if unhealthy.interval.is_some() {
        return Err(format!(
            "`{field}.unhealthy.interval`: a passive check has no interval (it is the active check's)"
        ));
    }
    let mut rules = rules(
        (healthy.http_statuses, healthy.successes),
        unhealthy,
        &PASSIVE_DEFAULTS,
        field,
    )?;
    if tcp {
        rules.healthy_statuses = (200..=599).collect();
        rules.unhealthy_statuses.clear();
    }
    Ok(PassiveCheck { rules })
}
