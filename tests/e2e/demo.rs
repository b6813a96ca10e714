//! `extplug demo`, as a new user runs it: every `curl` line it prints gives
//! the answer the README promises.

use crate::support::http::{get, send};
use std::io::BufRead;

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGTERM: the demo removes its runner's directory as it stops.
        crate::support::stop_gracefully(&mut self.0, crate::support::http::DROP_GRACE);
    }
}

#[tokio::test]
async fn the_demo_does_what_it_prints() {
    let mut child = crate::support::spawn_demo();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _demo = Demo(child);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let done = line.contains("/vars");
        lines.push(line);
        if done {
            break;
        }
    }
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
