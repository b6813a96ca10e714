//! `extplug demo`: the proxy with the example runner on an embedded
//! configuration, in front of a built-in echo upstream, so that a fresh
//! checkout shows every example plugin with a few `curl` lines.

use crate::host::config::{Config, ConfigError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tracing::debug;

/// The demo's configuration; `@UPSTREAM@`, `@RUNNER@`, `@LISTEN@` and
/// `@ADMIN@` are filled in at start.
pub const DEMO_CONFIG: &str = include_str!("demo.json");

/// The demo configuration for these addresses (the proxy's, the admin
/// listener's, the upstream's) and runner program.
///
/// # Errors
/// The filled-in configuration does not parse (a bad `listen` or `admin`,
/// say).
pub fn config(
    listen: &str,
    admin: &str,
    upstream: SocketAddr,
    runner: &str,
) -> Result<Config, ConfigError> {
    let text = DEMO_CONFIG
        .replace("@UPSTREAM@", &upstream.to_string())
        .replace(
            "@RUNNER@",
            &runner.replace('\\', "\\\\").replace('"', "\\\""),
        )
        .replace("@LISTEN@", &json_text(listen))
        .replace("@ADMIN@", &json_text(admin));
    Config::parse(&text)
}

/// `text` escaped for a JSON string.
fn json_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The `curl` lines the demo prints, with what each should show (the
/// admin listener's too, when there is one).
pub fn curl_lines(addr: SocketAddr, admin: Option<SocketAddr>) -> String {
    let base = format!("http://{addr}");
    let admin = admin
        .map(|a| {
            format!(
                "# admin: metrics (Prometheus text), liveness, readiness\n\
                 curl -s http://{a}/metrics | grep ^extplug_requests_total\n\
                 curl -i http://{a}/readyz\n"
            )
        })
        .unwrap_or_default();
    let lines = format!(
        "\
# say: the runner answers by itself (201, x-demo header, body)
curl -i {base}/hello
# rewrite: path, headers and query changed before the echo upstream sees them
curl -s '{base}/rewrite/me?keep=1&drop=2' -H 'x-remove: gone'
# key-auth: 401 without the key, the echo upstream with it
curl -i {base}/private
curl -s {base}/private -H 'x-api-key: demo-key'
# limit-count: 2 requests per minute per address, then 429 with retry-after
for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}}\\n' {base}/limited; done
# inject-vars + body-size (request phase), response-headers (response phase: 203, x-demo-phase)
curl -i {base}/vars -d 'hello'
"
    );
    lines + &admin
}

/// Starts the echo upstream on a free port of 127.0.0.1: it answers every
/// request with a JSON object of what it received (method, path, query,
/// headers, body).
///
/// # Errors
/// `127.0.0.1:0` cannot be bound.
pub async fn start_echo() -> std::io::Result<SocketAddr> {
    start_echo_on("127.0.0.1:0".parse().expect("a valid address")).await
}

/// Starts the echo upstream on `addr` (`extplug echo --listen ADDR`), and
/// returns the address it listens on (the port filled in when it was 0).
///
/// # Errors
/// `addr` cannot be bound.
pub async fn start_echo_on(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(echo);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(cause = %e, "echo connection ended with an error");
                }
            });
        }
    });
    Ok(addr)
}

async fn echo(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let (head, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut headers = serde_json::Map::new();
    for (name, value) in &head.headers {
        let entry = headers
            .entry(name.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(String::from_utf8_lossy(value.as_bytes()).into());
        }
    }
    let echo = serde_json::json!({
        "method": head.method.as_str(),
        "path": head.uri.path(),
        "query": head.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut text = serde_json::to_string_pretty(&echo).unwrap_or_default();
    text.push('\n');
    Ok(http::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_configuration_is_valid() {
        let c = super::config(
            "127.0.0.1:9080",
            "127.0.0.1:9091",
            "127.0.0.1:1".parse().unwrap(),
            "runner",
        )
        .unwrap();
        assert!(c.routes.len() >= 5);
        assert_eq!(c.admin.unwrap().listen.port(), 9091);
    }
}
