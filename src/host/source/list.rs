//! `extplug routes`: what a source would serve, and why each object left
//! out was skipped; what an operator runs when a route does not answer.

use super::table::{ErrorKind, FileRoutes, RouteSource, RouteTable, Skipped};
use crate::host::config::{check_runners, Config, ConfigError, Phase, Route};
use crate::host::runner::preflight::{preflight, Refusal};
use crate::host::runner::set::Runners;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Reads the routes of the configuration at `path` from its source (the
/// file, or etcd) and checks each: with the runners (started for it and
/// stopped again, each chain prepared) unless `offline`. The table, and
/// the source's description.
///
/// # Errors
/// The file is not valid, etcd cannot be read, or a runner does not start.
pub async fn check(
    path: &Path,
    offline: bool,
    shutdown: &CancellationToken,
) -> Result<(RouteTable, String), ConfigError> {
    let config = Config::load(path)?;
    let source = of(&config, path.to_owned());
    let mut table = source.load().await?;
    let key = |id: &str| match &config.etcd {
        Some(e) => format!("{}/routes/{}", e.prefix, id.escape_debug()),
        None => format!("route {id}"),
    };
    let mut kept = Vec::with_capacity(table.routes.len());
    for route in std::mem::take(&mut table.routes) {
        match check_runners(&route, &config.runners) {
            Ok(()) => kept.push(route),
            Err(reason) => table.skipped.push(Skipped {
                key: key(&route.id),
                kind: ErrorKind::Route,
                reason,
            }),
        }
    }
    table.routes = kept;
    if offline {
        return Ok((table, source.describe()));
    }
    // The runners start without routes: each route's chains are then
    // prepared on their own, so that one refused does not hide the others.
    let mut bare = config.clone();
    bare.routes.clear();
    let runners = match Runners::start(&bare, shutdown).await {
        Ok(Some(runners)) => runners,
        Ok(None) => return Err(ConfigError("interrupted".into())),
        Err(e) => return Err(ConfigError(format!("{}: {e}", path.display()))),
    };
    let clients = runners.clients();
    let mut kept = Vec::with_capacity(table.routes.len());
    'routes: for route in std::mem::take(&mut table.routes) {
        for (name, client) in &clients {
            if let Err(refused) = preflight(std::iter::once(&route), name, client).await {
                let phase = refused.phase.name();
                let reason = match refused.why {
                    Refusal::Chain(m) => format!("{phase}: the runner refused the chain: {m}"),
                    not_asked => format!("{phase}: {not_asked}"),
                };
                table.skipped.push(Skipped {
                    key: key(&route.id),
                    kind: ErrorKind::Chain,
                    reason,
                });
                continue 'routes;
            }
        }
        kept.push(route);
    }
    table.routes = kept;
    runners.stop().await;
    Ok((table, source.describe()))
}

/// The listing: one line per route served (id, URIs, methods, the other
/// matching fields it has: hosts, remote addresses, vars, priority,
/// websocket; upstream nodes, phases with their plugins), one per
/// certificate served (id, names, expiry), one per object skipped (key,
/// kind, reason), and a summary line.
pub fn render(table: &RouteTable, source: &str) -> String {
    let mut out = String::new();
    for r in &table.routes {
        let _ = writeln!(out, "{}", route_line(r));
    }
    for ssl in &table.ssls {
        let snis: Vec<String> = ssl.snis.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "served ssl {} snis={} expires={}",
            ssl.id.escape_debug(),
            snis.join(","),
            crate::host::config::tls::utc(ssl.not_after)
        );
    }
    let mut skipped = table.skipped.clone();
    skipped.sort();
    for s in &skipped {
        let _ = writeln!(out, "skipped {} ({}): {}", s.key, s.kind.name(), s.reason);
    }
    let _ = writeln!(
        out,
        "{} served, {} skipped, from {source}",
        table.routes.len(),
        table.skipped.len()
    );
    out
}

fn route_line(r: &Route) -> String {
    let uris: Vec<String> = r
        .uris
        .iter()
        .map(|u| match u {
            crate::host::config::UriPattern::Exact(p) => p.clone(),
            crate::host::config::UriPattern::Prefix(p) => format!("{p}*"),
        })
        .collect();
    let methods = match &r.methods {
        None => "*".to_owned(),
        Some(m) => m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
    };
    let nodes: Vec<String> = r
        .upstream
        .nodes
        .iter()
        .map(|(n, w)| format!("{n}={w}"))
        .collect();
    let phases: Vec<String> = [Phase::PreReq, Phase::PostReq, Phase::PostResp]
        .into_iter()
        .filter_map(|p| {
            r.phase(p).map(|c| {
                let names: Vec<&str> = c.conf.iter().map(|(n, _)| n.as_str()).collect();
                format!("{}[{}]@{}", p.name(), names.join(","), c.runner)
            })
        })
        .collect();
    // What else decides matching, only when the route has it.
    let mut matching = String::new();
    if !r.hosts.is_empty() {
        let hosts: Vec<String> = r.hosts.iter().map(ToString::to_string).collect();
        let _ = write!(matching, " hosts={}", hosts.join(","));
    }
    if !r.remote_addrs.is_empty() {
        let addrs: Vec<String> = r.remote_addrs.iter().map(ToString::to_string).collect();
        let _ = write!(matching, " remote_addrs={}", addrs.join(","));
    }
    if r.vars.is_some() {
        matching.push_str(" vars");
    }
    if r.priority != 0 {
        let _ = write!(matching, " priority={}", r.priority);
    }
    if r.enable_websocket {
        matching.push_str(" websocket");
    }
    format!(
        "served {} uris={} methods={methods}{matching} upstream={}{}{}",
        r.id.escape_debug(),
        uris.join(","),
        nodes.join(","),
        if phases.is_empty() { "" } else { " phases=" },
        phases.join(" "),
    ) + if r.enabled {
        ""
    } else {
        " (disabled: status 0)"
    }
}

/// The source `config` names: etcd when it has an `etcd` section, else
/// the file at `path`.
pub fn of(config: &Config, path: PathBuf) -> Box<dyn RouteSource> {
    match &config.etcd {
        Some(conf) => Box::new(super::etcd::EtcdRoutes { conf: conf.clone() }),
        None => Box::new(FileRoutes { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_line_names_the_matching_fields_it_has() {
        let c = Config::parse(
            r#"{"ext-plugin":{"cmd":["r"]},"routes":[
                {"id":"a","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}}},
                {"id":"b","uris":["/b","/c*"],"hosts":["*.Example.com","x.org"],"remote_addrs":["10.0.0.0/8"],
                 "vars":[["arg_a","==","1"]],"priority":-2,"enable_websocket":true,
                 "upstream":{"nodes":{"127.0.0.1:1":1}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            route_line(&c.routes[0]),
            "served a uris=/a methods=* upstream=127.0.0.1:1=1"
        );
        assert_eq!(
            route_line(&c.routes[1]),
            "served b uris=/b,/c* methods=* hosts=*.example.com,x.org remote_addrs=10.0.0.0/8 vars priority=-2 websocket upstream=127.0.0.1:1=1"
        );
    }
}
