//! `extplug demo`, as a new user runs it: every `curl` line it prints gives
//! the answer the README promises.

use crate::support::http::{get, send};
use crate::support::tls;
use std::io::BufRead;

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGTERM: the demo removes its runner's directory as it stops.
        crate::support::stop_gracefully(&mut self.0, crate::support::http::DROP_GRACE);
    }
}

/// The demo's stdout lines up to the first that contains `last`.
fn lines_until(child: &mut std::process::Child, last: &str) -> Vec<String> {
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let done = line.contains(last);
        lines.push(line);
        if done {
            break;
        }
    }
    lines
}

#[tokio::test]
async fn the_demo_does_what_it_prints() {
    let mut child = crate::support::spawn_demo();
    let lines = lines_until(&mut child, "/vars");
    let _demo = Demo(child);
    let addr = lines[0]
        .trim()
        .strip_prefix("extplug listening on http://")
        .expect("listening line");
    let text = lines.concat();
    for path in ["/hello", "/rewrite/me", "/private", "/limited", "/vars"] {
        assert!(
            text.contains(&format!("http://{addr}{path}")),
            "no curl line for {path}:\n{text}"
        );
    }
    let url = |p: &str| format!("http://{addr}{p}");

    let got = get(&url("/hello")).await;
    assert_eq!(
        (got.status, got.header("x-demo"), got.text().as_str()),
        (201, Some("say"), "hello from the say plugin\n")
    );

    let got = send(
        "GET",
        &url("/rewrite/me?keep=1&drop=2"),
        &[("x-remove", "gone")],
        "",
    )
    .await;
    assert_eq!(got.header("x-demo-resp"), Some("rewritten"));
    let echo: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(echo["path"], "/rewritten");
    assert_eq!(echo["query"], "keep=1&added=yes");
    assert_eq!(echo["headers"]["x-demo"][0], "rewritten");
    assert!(echo["headers"].get("x-remove").is_none());

    let got = get(&url("/private")).await;
    assert_eq!(
        (got.status, got.text().as_str()),
        (401, r#"{"error":"missing or invalid key"}"#)
    );
    let got = send("GET", &url("/private"), &[("x-api-key", "demo-key")], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["path"],
        "/private"
    );

    let statuses = [
        get(&url("/limited")).await,
        get(&url("/limited")).await,
        get(&url("/limited")).await,
    ];
    assert_eq!(
        statuses.iter().map(|g| g.status).collect::<Vec<_>>(),
        vec![200, 200, 429]
    );
    assert!(statuses[2].header("retry-after").is_some());

    let got = send("POST", &url("/vars"), &[], "hello").await;
    assert_eq!(
        (got.status, got.header("x-demo-phase")),
        (203, Some("post-resp"))
    );
    let echo: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(echo["headers"]["x-var-remote_addr"][0], "127.0.0.1");
    assert_eq!(echo["headers"]["x-var-route_id"][0], "vars");
    assert_eq!(echo["headers"]["x-body-size"][0], "5");
    assert_eq!(echo["body"], "hello");
}

#[tokio::test]
async fn the_demo_with_tls_serves_http2_over_https_through_a_plugin() {
    let mut child = crate::support::spawn_demo_with(&["--tls-listen", "127.0.0.1:0"]);
    let lines = lines_until(&mut child, "https://localhost:");
    let _demo = Demo(child);
    let text = lines.concat();
    let addr: std::net::SocketAddr = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("extplug TLS listening on https://"))
        .unwrap_or_else(|| panic!("no TLS listening line:\n{text}"))
        .parse()
        .unwrap();
    let curl = format!(
        "curl --http2 -k -s 'https://localhost:{}/rewrite/me?keep=1&drop=2'",
        addr.port()
    );
    assert!(text.contains(&curl), "no `{curl}` line:\n{text}");

    // As curl does it: SNI `localhost`, ALPN h2 first.
    let stream = tls::connect(addr, Some("localhost"), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls::alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let by_name = tls::served(&stream);
    let mut h2 = tls::Sender::h2(stream).await;
    let got = h2
        .get(
            &format!("localhost:{}", addr.port()),
            "/rewrite/me?keep=1&drop=2",
        )
        .await
        .unwrap();
    assert_eq!(
        (
            got.status,
            got.version,
            got.headers.get("x-demo-resp").map(|v| v.to_str().unwrap())
        ),
        (200, http::Version::HTTP_2, Some("rewritten"))
    );
    let echo: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(echo["path"], "/rewritten");
    assert_eq!(echo["query"], "keep=1&added=yes");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");

    // `curl -k https://127.0.0.1:PORT` sends no SNI: the same certificate,
    // which names 127.0.0.1 too.
    let stream = tls::connect(addr, None, &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls::served(&stream), by_name);
    let (_, cert) = x509_parser::parse_x509_certificate(&by_name).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["DNSName(localhost)", "IPAddress(7f:00:00:01)"]);
    let got = tls::Sender::h1(stream)
        .await
        .get(&addr.to_string(), "/hello")
        .await
        .unwrap();
    assert_eq!((got.status, got.version), (201, http::Version::HTTP_11));
}
