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

/// The names the demo's certificate is for: what a newcomer types after
/// `https://`.
pub const TLS_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The demo's TLS listener (`extplug demo --tls`): where it listens, and a
/// self-signed certificate made at start.
pub struct DemoTls {
    /// Where the TLS listener listens.
    pub listen: String,
    /// The certificate (PEM), for [`TLS_NAMES`].
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

impl DemoTls {
    /// A TLS listener on `listen` with a new self-signed certificate for
    /// [`TLS_NAMES`] (an ECDSA P-256 key, made with *ring*): made at every
    /// start so that no private key is ever committed or reused.
    ///
    /// # Errors
    /// rcgen cannot make the key or the certificate.
    pub fn self_signed(listen: &str) -> Result<DemoTls, rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(
            TLS_NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )?;
        let cert = params.self_signed(&key)?;
        Ok(DemoTls {
            listen: listen.to_owned(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The demo configuration for these addresses (the proxy's, the admin
/// listener's, the upstream's) and runner program, with a TLS listener
/// when `tls` is given: its certificate is an SSL object for `localhost`,
/// also served to clients that send no SNI (`curl https://127.0.0.1:...`).
///
/// # Errors
/// The filled-in configuration does not parse (a bad `listen`, `admin` or
/// TLS `listen`, say).
pub fn config(
    listen: &str,
    admin: &str,
    upstream: SocketAddr,
    runner: &str,
    tls: Option<&DemoTls>,
) -> Result<Config, ConfigError> {
    let mut text = DEMO_CONFIG
        .replace("@UPSTREAM@", &upstream.to_string())
        .replace(
            "@RUNNER@",
            &runner.replace('\\', "\\\\").replace('"', "\\\""),
        )
        .replace("@LISTEN@", &json_text(listen))
        .replace("@ADMIN@", &json_text(admin));
    if let Some(tls) = tls {
        // The embedded text is valid JSON (a unit test checks it), so this
        // only adds two members to its top-level object.
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(doc) = doc.as_object_mut() {
            doc.insert(
                "tls".into(),
                serde_json::json!({"listen": tls.listen, "fallback_sni": TLS_NAMES[0]}),
            );
            doc.insert(
                "ssls".into(),
                serde_json::json!([{
                    "id": "demo",
                    "snis": [TLS_NAMES[0]],
                    "cert": tls.cert,
                    "key": tls.key,
                }]),
            );
        }
        text = doc.to_string();
    }
    Config::parse(&text)
}

/// `text` escaped for a JSON string.
fn json_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The `curl` lines the demo prints, with what each should show (the
/// admin listener's and the TLS listener's too, when there are).
pub fn curl_lines(addr: SocketAddr, admin: Option<SocketAddr>, tls: Option<SocketAddr>) -> String {
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
    let tls = tls
        .map(|t| {
            format!(
                "# TLS and HTTP/2: the same routes over HTTPS (-k: the certificate is self-signed, made at start)\n\
                 curl --http2 -k -s 'https://{}:{}/rewrite/me?keep=1&drop=2'\n",
                TLS_NAMES[0],
                t.port()
            )
        })
        .unwrap_or_default();
    lines + &admin + &tls
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
            None,
        )
        .unwrap();
        assert!(c.routes.len() >= 5);
        assert_eq!(c.admin.unwrap().listen.port(), 9091);
        assert!(c.tls.is_none() && c.ssls.is_empty());
    }

    #[test]
    fn with_tls_the_certificate_is_served_for_localhost_and_without_sni() {
        let tls = super::DemoTls::self_signed("127.0.0.1:9443").unwrap();
        let c = super::config(
            "127.0.0.1:9080",
            "127.0.0.1:9091",
            "127.0.0.1:1".parse().unwrap(),
            "runner",
            Some(&tls),
        )
        .unwrap();
        let listener = c.tls.unwrap();
        assert_eq!(listener.listen.port(), 9443);
        assert_eq!(listener.fallback_sni.as_deref(), Some("localhost"));
        assert_eq!(c.ssls.len(), 1);
        assert!(c.routes.len() >= 5);
    }
}
