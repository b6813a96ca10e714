//! The upstream's balancing: its `type` (with `hash_on` and `key`) checked,
//! and nginx's smooth weighted round robin, computed once per upstream.

use super::model::{Balancer, HashOn};

/// The variables `chash` may hash with `hash_on: vars`: APISIX's list
/// (`upstream_hash_vars_schema`) less `server_name` and `hostname`, which
/// extplug has no value for, plus `arg_*`.
const HASH_VARS: [&str; 7] = [
    "uri",
    "server_addr",
    "request_uri",
    "remote_port",
    "remote_addr",
    "query_string",
    "host",
];

/// Checks an upstream's `type`, `hash_on` and `key`.
pub(super) fn balancer(
    kind: &str,
    hash_on: Option<&str>,
    key: Option<&str>,
) -> Result<Balancer, String> {
    let balancer = match kind {
        "roundrobin" => Balancer::RoundRobin,
        "least_conn" => Balancer::LeastConn,
        "ewma" => Balancer::Ewma,
        "chash" => {
            let Some(key) = key.filter(|k| !k.is_empty()) else {
                return Err(
                    "`upstream.key` is missing: `chash` hashes the variable, header or cookie it names"
                        .into(),
                );
            };
            let name_ok = |k: &str| {
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            let on = match hash_on.unwrap_or("vars") {
                "vars" => {
                    let known = HASH_VARS.contains(&key)
                        || key.strip_prefix("arg_").is_some_and(|a| !a.is_empty() && name_ok(a));
                    if !known {
                        return Err(format!(
                            "`upstream.key` {key:?} is not a variable `chash` can hash: one of {}, or arg_NAME",
                            HASH_VARS.join(", ")
                        ));
                    }
                    HashOn::Var(key.to_owned())
                }
                "header" | "cookie" if !name_ok(key) => {
                    return Err(format!(
                        "`upstream.key` {key:?} is not a header or cookie name (letters, digits, `-` and `_`)"
                    ))
                }
                "header" => HashOn::Header(key.to_ascii_lowercase()),
                "cookie" => HashOn::Cookie(key.to_owned()),
                "consumer" | "vars_combinations" => {
                    return Err(format!(
                        "`upstream.hash_on` {:?} is not supported by extplug; use \"vars\", \"header\" or \"cookie\"",
                        hash_on.unwrap_or_default()
                    ))
                }
                other => {
                    return Err(format!(
                        "`upstream.hash_on` {other:?} must be \"vars\", \"header\" or \"cookie\""
                    ))
                }
            };
            Balancer::Chash(on)
        }
        other => {
            return Err(format!(
                "`upstream.type` {other:?} must be \"roundrobin\", \"chash\", \"least_conn\" or \"ewma\""
            ))
        }
    };
    // `hash_on` and `key` on another type mean nothing, in APISIX too
    // (which stores `hash_on: vars` on every upstream): accepted.
    Ok(balancer)
}

/// nginx's smooth weighted round robin, unrolled into one cycle.
pub(super) fn smooth_schedule(weights: &[u32]) -> Result<Vec<usize>, String> {
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
