//! The proxy's client side with the real `extplug proxy`: header and
//! keep-alive timeouts, the connection limit, header size, request framing,
//! methods, forwarding headers, and the client's HTTP version. Raw TCP
//! clients, so that each byte on the wire is the test's choice.

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::{send, ProxyProc, Upstream};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound of every wait for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

/// The proxy on one catch-all route to `up` with `plugins`, and `limits`
/// merged into the configuration's top level.
fn proxy(up: SocketAddr, plugins: Value, limits: Value) -> ProxyProc {
    let mut c = config(demo(), json!({}), json!([route("r", "/*", up, plugins)]));
    for (k, v) in limits.as_object().unwrap() {
        c[k] = v.clone();
    }
    ProxyProc::start(&c)
}

/// A pre-req phase whose runner answers every request 418 `from the runner`:
/// an answer that is not 418 was given before any runner call.
fn runner_says_418() -> Value {
    json!({"ext-plugin-pre-req": phase(&[("say", json!({"body":"from the runner","status":418}))])})
}

/// An answer as read off the wire.
#[derive(Debug)]
struct RawResp {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client on one raw TCP connection.
struct Raw {
    conn: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            conn: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.conn.get_mut().write_all(bytes).await.unwrap();
    }

    /// `GET path` over HTTP/1.1 on this connection, and its answer.
    async fn get(&mut self, path: &str) -> RawResp {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
            .await;
        self.response().await.expect("connection closed, no answer")
    }

    /// The next answer (within [`PATIENCE`]); `None` if the connection
    /// closed first.
    async fn response(&mut self) -> Option<RawResp> {
        tokio::time::timeout(PATIENCE, self.read_response())
            .await
            .expect("no answer in time")
    }

    async fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.conn.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    async fn read_response(&mut self) -> Option<RawResp> {
        let status_line = self.read_line().await?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_owned();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!("not a status line: {status_line:?}");
            });
        let mut headers = Vec::new();
        loop {
            let line = self.read_line().await.expect("closed mid-header");
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("a header line");
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut resp = RawResp {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.conn.read_exact(&mut body).await.unwrap();
            resp.body = body;
        } else if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.read_line().await.expect("closed mid-body");
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                if size == 0 {
                    while !self.read_line().await.unwrap_or_default().is_empty() {}
                    break;
                }
                let mut chunk = vec![0; size + 2];
                self.conn.read_exact(&mut chunk).await.unwrap();
                resp.body.extend_from_slice(&chunk[..size]);
            }
        } else if resp.status != 204 && resp.status != 304 {
            self.conn.read_to_end(&mut resp.body).await.unwrap();
        }
        Some(resp)
    }

    /// Reads until the proxy closes the connection (within [`PATIENCE`]);
    /// returns what came before.
    async fn until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            let mut buf = [0u8; 4096];
            loop {
                match self.conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the proxy did not close the connection");
        rest
    }
}

#[tokio::test]
async fn a_header_sent_too_slowly_is_cut_off_with_408() {
    let up = Upstream::start().await;
    let proxy = proxy(up.addr, json!({}), json!({"client_header_timeout_ms": 300}));
    let mut slow = Raw::connect(proxy.addr).await;
    slow.send(b"GET /slowloris HTTP/1.1\r\nhost: test\r\nx-a: 1\r\n")
        .await;
    let got = String::from_utf8_lossy(&slow.until_closed().await).into_owned();
    assert!(got.starts_with("HTTP/1.1 408"), "got {got:?}");
    // A connection that never sends anything is closed without an answer.
    let mut silent = Raw::connect(proxy.addr).await;
    assert_eq!(silent.until_closed().await, b"");
    assert!(up.requests().is_empty());
    // A client in time is served.
    let mut fine = Raw::connect(proxy.addr).await;
    assert_eq!(fine.get("/fine").await.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_own_timeout() {
    let up = Upstream::start().await;
    let proxy = proxy(
        up.addr,
        json!({}),
        json!({"client_header_timeout_ms": 60000, "keepalive_timeout_ms": 300}),
    );
    let mut c = Raw::connect(proxy.addr).await;
    let first = c.get("/one").await;
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"upstream says hi"[..])
    );
    assert_eq!(c.until_closed().await, b"", "closed while idle, silently");

    // The header timeout does not cut an idle keep-alive connection short.
    let proxy = self::proxy(
        up.addr,
        json!({}),
        json!({"client_header_timeout_ms": 300, "keepalive_timeout_ms": 60000}),
    );
    let mut c = Raw::connect(proxy.addr).await;
    assert_eq!(c.get("/one").await.status, 200);
    // Idle for longer than the header timeout, on purpose.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(c.get("/two").await.status, 200);
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn past_the_connection_limit_new_connections_wait_until_one_closes() {
    let up = Upstream::start().await;
    let proxy = proxy(up.addr, json!({}), json!({"max_client_connections": 2}));
    let mut a = Raw::connect(proxy.addr).await;
    let mut b = Raw::connect(proxy.addr).await;
    // Both are served, so both hold a slot.
    assert_eq!(a.get("/a").await.status, 200);
    assert_eq!(b.get("/b").await.status, 200);
    let mut c = Raw::connect(proxy.addr).await;
    c.send(b"GET /c HTTP/1.1\r\nhost: test\r\n\r\n").await;
    let early = tokio::time::timeout(Duration::from_millis(500), c.read_response()).await;
    assert!(early.is_err(), "a third connection got {early:?}");
    // The connections being served are not affected.
    assert_eq!(b.get("/b2").await.status, 200);
    drop(a);
    let late = c.response().await.expect("served once a slot freed");
    assert_eq!(late.status, 200);
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/a", "/b", "/b2", "/c"]);
    assert!(proxy.log().contains("connection limit reached"));
}

/// Sends `GET /` with one `x-big` header of `size` bytes; the answer.
async fn big_header(addr: SocketAddr, size: usize) -> RawResp {
    let mut c = Raw::connect(addr).await;
    let req = format!(
        "GET /big HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n",
        "a".repeat(size)
    );
    // The proxy may answer before it read everything; it reads the rest.
    let _ = c.conn.get_mut().write_all(req.as_bytes()).await;
    c.response().await.expect("no answer")
}

#[tokio::test]
async fn a_header_over_the_limit_is_431() {
    let up = Upstream::start().await;
    let default = proxy(up.addr, json!({}), json!({}));
    assert_eq!(big_header(default.addr, 64 * 1024).await.status, 431);
    assert_eq!(big_header(default.addr, 16 * 1024).await.status, 200);
    let small = proxy(
        up.addr,
        json!({}),
        json!({"max_request_header_bytes": 4096}),
    );
    assert_eq!(big_header(small.addr, 8 * 1024).await.status, 431);
    assert_eq!(big_header(small.addr, 2 * 1024).await.status, 200);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_before_the_runner() {
    let up = Upstream::start().await;
    let proxy = proxy(up.addr, runner_says_418(), json!({}));
    for head in [
        "content-length: 5\r\ntransfer-encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        let mut c = Raw::connect(proxy.addr).await;
        // A normal request first: the check holds on a kept-alive connection.
        let first = c.get("/first").await;
        assert_eq!(first.status, 418, "the runner answers normal requests");
        c.send(
            format!("POST /both HTTP/1.1\r\nhost: test\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let got = c.response().await.expect("an answer");
        assert_eq!(
            got.status,
            400,
            "{head}: {:?}",
            String::from_utf8_lossy(&got.body)
        );
        assert!(String::from_utf8_lossy(&got.body).contains("Content-Length and Transfer-Encoding"));
        assert_eq!(c.until_closed().await, b"", "and the connection closed");
    }
    // Either alone is fine.
    let mut c = Raw::connect(proxy.addr).await;
    c.send(b"POST /te HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 418);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn methods_the_protocol_cannot_carry_are_405_before_the_runner() {
    let up = Upstream::start().await;
    let proxy = proxy(up.addr, runner_says_418(), json!({}));
    for req in [
        "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
        "PURGE /cache HTTP/1.1\r\nhost: test\r\n\r\n",
    ] {
        let mut c = Raw::connect(proxy.addr).await;
        c.send(req.as_bytes()).await;
        let got = c.response().await.expect("an answer");
        assert_eq!(got.status, 405, "{req}");
        let allow = got.header("allow").expect("405 names what is allowed");
        assert!(
            allow.contains("PROPFIND") && !allow.contains("CONNECT"),
            "{allow}"
        );
        let method = req.split(' ').next().unwrap();
        assert!(String::from_utf8_lossy(&got.body).contains(method));
    }
    // WebDAV methods are in the protocol: the runner answers.
    let mut c = Raw::connect(proxy.addr).await;
    c.send(b"PROPFIND /dav HTTP/1.1\r\nhost: test\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 418);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn forwarding_headers_tell_the_upstream_who_asked() {
    let up = Upstream::start().await;
    let proxy = proxy(up.addr, json!({}), json!({}));
    let got = send(
        "GET",
        &proxy.url("/fwd"),
        &[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    let r = up.last();
    assert_eq!(
        r.headers_named("x-forwarded-for"),
        ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]
    );
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    let host = proxy.addr.to_string();
    assert_eq!(r.header("x-forwarded-host"), Some(host.as_str()));
    let got = send("GET", &proxy.url("/fwd2"), &[], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.1"));
}

/// An upstream that answers every request `HTTP/1.0 200`, its body ended by
/// closing the connection (as simple HTTP/1.0 servers do).
async fn http10_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                // The request head, up to its empty line.
                while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = stream
                    .get_mut()
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold upstream")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http_1_0_upstream_does_not_change_the_client_s_version() {
    let up = http10_upstream().await;
    let proxy = proxy(up, json!({}), json!({}));
    let mut c = Raw::connect(proxy.addr).await;
    for path in ["/one", "/two"] {
        let got = c.get(path).await;
        assert_eq!(
            (got.version.as_str(), got.status, got.body.as_slice()),
            ("HTTP/1.1", 200, &b"old upstream"[..]),
            "{path}: {got:?}"
        );
        assert_ne!(got.header("connection"), Some("close"), "{got:?}");
    }
    // An HTTP/1.0 client gets HTTP/1.0.
    let mut old = Raw::connect(proxy.addr).await;
    old.send(b"GET /old HTTP/1.0\r\n\r\n").await;
    let got = old.response().await.unwrap();
    assert_eq!((got.version.as_str(), got.status), ("HTTP/1.0", 200));
}
