//! Unit tests of an upstream's fields: balancers, `pass_host`, timeouts
//! (the route's over the upstream's), retries and health checks, each bad
//! value refused with its field named.

use super::error::ConfigError;
use super::model::*;
use std::time::Duration;

fn upstream(fields: &str) -> Result<Upstream, ConfigError> {
    route_with(fields, "").map(|r| r.upstream)
}

fn route_with(upstream_fields: &str, route_fields: &str) -> Result<Route, ConfigError> {
    let text = format!(
        r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[{{"id":"r","uri":"/a"{route_fields},
            "upstream":{{"nodes":{{"127.0.0.1:1":1,"127.0.0.1:2":1,"127.0.0.1:3":2}}{upstream_fields}}}}}]}}"#
    );
    Config::parse(&text).map(|mut c| c.routes.remove(0))
}

fn refused(fields: &str, needle: &str) {
    let err = upstream(fields).unwrap_err().0;
    assert!(err.contains(needle), "{fields}: {err}");
}

#[test]
fn the_defaults_are_apisix_s() {
    let u = upstream("").unwrap();
    assert_eq!(u.name, "routes/r");
    assert_eq!(u.balancer, Balancer::RoundRobin);
    assert_eq!(u.pass_host, PassHost::Pass);
    assert_eq!(u.retries, 2, "one retry per other node");
    assert_eq!(u.retry_timeout, None);
    assert!(u.checks.is_none());
    assert_eq!(u.read_timeout, Duration::from_secs(60));
}

#[test]
fn balancers_and_their_keys() {
    let u = upstream(r#","type":"chash","hash_on":"header","key":"X-User""#).unwrap();
    assert_eq!(u.balancer, Balancer::Chash(HashOn::Header("x-user".into())));
    let u = upstream(r#","type":"chash","key":"arg_user""#).unwrap();
    assert_eq!(u.balancer, Balancer::Chash(HashOn::Var("arg_user".into())));
    let u = upstream(r#","type":"chash","hash_on":"cookie","key":"sid""#).unwrap();
    assert_eq!(u.balancer, Balancer::Chash(HashOn::Cookie("sid".into())));
    assert_eq!(
        upstream(r#","type":"least_conn""#).unwrap().balancer,
        Balancer::LeastConn
    );
    assert_eq!(
        upstream(r#","type":"ewma""#).unwrap().balancer,
        Balancer::Ewma
    );
    refused(r#","type":"chash""#, "`upstream.key` is missing");
    refused(
        r#","type":"chash","key":"server_name""#,
        "`upstream.key` \"server_name\"",
    );
    refused(
        r#","type":"chash","hash_on":"consumer","key":"a""#,
        "`upstream.hash_on` \"consumer\" is not supported",
    );
    refused(
        r#","type":"chash","hash_on":"header","key":"a b""#,
        "`upstream.key` \"a b\"",
    );
    refused(r#","type":"random""#, "`upstream.type` \"random\"");
}

#[test]
fn pass_host_node_and_rewrite() {
    assert_eq!(
        upstream(r#","pass_host":"node""#).unwrap().pass_host,
        PassHost::Node
    );
    let u = upstream(r#","pass_host":"rewrite","upstream_host":"api.internal""#).unwrap();
    assert_eq!(u.pass_host, PassHost::Rewrite("api.internal".into()));
    refused(
        r#","pass_host":"rewrite""#,
        "needs `upstream.upstream_host`",
    );
    refused(
        r#","pass_host":"rewrite","upstream_host":"a b""#,
        "`upstream.upstream_host` \"a b\"",
    );
    refused(r#","pass_host":"other""#, "`upstream.pass_host` \"other\"");
}

#[test]
fn a_route_timeout_overrides_the_upstream_s() {
    let r = route_with(
        r#","timeout":{"connect":1,"send":2,"read":3}"#,
        r#","timeout":{"read":0.5}"#,
    )
    .unwrap();
    assert_eq!(r.upstream.connect_timeout, Duration::from_secs(1));
    assert_eq!(r.upstream.send_timeout, Duration::from_secs(2));
    assert_eq!(r.upstream.read_timeout, Duration::from_millis(500));
    let err = route_with("", r#","timeout":{"connect":0}"#).unwrap_err().0;
    assert!(
        err.contains("`timeout.connect` 0 must be a positive"),
        "{err}"
    );
}

#[test]
fn retries_and_retry_timeout() {
    let u = upstream(r#","retries":0,"retry_timeout":2.5"#).unwrap();
    assert_eq!(u.retries, 0);
    assert_eq!(u.retry_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(
        upstream(r#","retry_timeout":0"#).unwrap().retry_timeout,
        None
    );
    refused(r#","retries":-1"#, "retries");
    refused(r#","retry_timeout":-1"#, "`upstream.retry_timeout` -1");
}

#[test]
fn health_checks_as_apisix_s_schema() {
    let u = upstream(
        r#","checks":{"active":{"http_path":"/health","healthy":{"interval":2}},"passive":{}}"#,
    )
    .unwrap();
    let checks = u.checks.unwrap();
    let active = checks.active.unwrap();
    assert_eq!(active.http_path, "/health");
    assert_eq!(active.healthy_interval, Duration::from_secs(2));
    assert_eq!(active.unhealthy_interval, Duration::from_secs(1));
    assert_eq!(active.timeout, Duration::from_secs(1));
    assert_eq!(active.rules.healthy_statuses, vec![200, 302]);
    assert_eq!((active.rules.successes, active.rules.http_failures), (2, 5));
    assert_eq!((active.rules.tcp_failures, active.rules.timeouts), (2, 3));
    let passive = checks.passive.unwrap();
    assert_eq!(passive.rules.unhealthy_statuses, vec![429, 500, 503]);
    assert_eq!((passive.rules.successes, passive.rules.timeouts), (5, 7));
    refused(
        r#","checks":{"passive":{}}"#,
        "`upstream.checks` has no `active` check",
    );
    refused(
        r#","checks":{"active":{"healthy":{"successes":0}}}"#,
        "`upstream.checks.active.healthy.successes` 0 must be between 1 and 254",
    );
    refused(
        r#","checks":{"active":{"unhealthy":{"http_statuses":[100]}}}"#,
        "`upstream.checks.active.unhealthy.http_statuses[0]` 100",
    );
    let https = upstream(r#","checks":{"active":{"type":"https"}}"#).unwrap();
    let probe_tls = https.checks.unwrap().active.unwrap().tls.unwrap();
    assert!(
        probe_tls.verify,
        "https_verify_certificate is true by default"
    );
    refused(
        r#","checks":{"active":{"type":"udp"}}"#,
        "`upstream.checks.active.type` \"udp\"",
    );
    refused(
        r#","checks":{"active":{"http_path":"health"}}"#,
        "`upstream.checks.active.http_path`",
    );
    refused(
        r#","checks":{"active":{},"passive":{"unhealthy":{"interval":1}}}"#,
        "a passive check has no interval",
    );
    refused(r#","checks":{"active":{"intervall":1}}"#, "intervall");
}
