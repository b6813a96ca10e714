//! `extplug bench router`: the route matcher alone, nanoseconds per match,
//! at 10 and at 10,000 routes, for an exact URI, a prefix and a host (the
//! request always matches the route added last, and a request that
//! matches nothing is timed too): what matching costs, and that it stays
//! flat as routes are added. Ids are zero-padded, so that paths and hosts
//! have the same length at every route count.

use extplug::host::config::Config;
use extplug::host::proxy::router::{Matched, Router};
use http::Method;
use std::hint::black_box;
use std::time::Instant;

/// One case: the routes' shape and the request.
struct Case {
    name: &'static str,
    /// The route `i`'s matching fields (JSON members).
    route: fn(usize) -> String,
    /// The request's host and path for `n` routes.
    request: fn(usize) -> (String, String),
}

const CASES: [Case; 4] = [
    Case {
        name: "exact URI",
        route: |i| format!(r#""uri":"/svc{i:05}/items""#),
        request: |n| (String::new(), format!("/svc{:05}/items", n - 1)),
    },
    Case {
        name: "prefix",
        route: |i| format!(r#""uri":"/svc{i:05}/*""#),
        request: |n| (String::new(), format!("/svc{:05}/a/b/c", n - 1)),
    },
    Case {
        name: "host",
        route: |i| format!(r#""uri":"/*","host":"h{i:05}.example.com""#),
        request: |n| (format!("h{:05}.example.com", n - 1), "/a/b".to_owned()),
    },
    Case {
        name: "no match",
        route: |i| format!(r#""uri":"/svc{i}/*","hosts":["*.h{i}.example.com"]"#),
        request: |_| ("x.example.org".to_owned(), "/none/at/all".to_owned()),
    },
];

fn router(case: &Case, n: usize) -> Result<Router, String> {
    let routes: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"r{i}",{},"upstream":{{"nodes":{{"127.0.0.1:1":1}}}}}}"#,
                (case.route)(i)
            )
        })
        .collect();
    let config = Config::parse(&format!(
        r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[{}]}}"#,
        routes.join(",")
    ))
    .map_err(|e| e.0)?;
    Ok(Router::new(config.routes))
}

/// Nanoseconds per match, the median of `rounds` rounds of `iterations`.
fn time(router: &Router, req: &Matched<'_>, iterations: u64, rounds: usize) -> f64 {
    let mut per = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(router.find(black_box(req), &mut |_: &str| None::<&str>));
        }
        per.push(started.elapsed().as_nanos() as f64 / iterations as f64);
    }
    super::median(per)
}

/// Runs every case at each route count and prints a table.
///
/// # Errors
/// A case's routes do not make a configuration (a bug here).
pub fn run(counts: &[usize], iterations: u64, rounds: usize) -> Result<(), String> {
    println!("route matching, ns per match (median of {rounds} rounds of {iterations})");
    print!("{:<10}", "case");
    for n in counts {
        print!("{:>14}", format!("{n} routes"));
    }
    println!();
    for case in &CASES {
        print!("{:<10}", case.name);
        for &n in counts {
            let router = router(case, n.max(1))?;
            let (host, path) = (case.request)(n.max(1));
            let req = Matched {
                method: &Method::GET,
                path: &path,
                host: &host,
                client: std::net::Ipv4Addr::LOCALHOST.into(),
            };
            let found = router.find(&req, &mut |_: &str| None::<&str>);
            let want_match = case.name != "no match";
            if found.is_some() != want_match {
                return Err(format!(
                    "{}: {n} routes: the request did not match as meant",
                    case.name
                ));
            }
            print!("{:>14.1}", time(&router, &req, iterations, rounds));
        }
        println!();
    }
    Ok(())
}
