//! The memory of buffered request bodies under slow uploads, measured from
//! `/proc` on the real proxy: clients each send 8 MiB - 1 bytes to a route
//! whose plugin reads the body (`body-size`), holding the last byte. The
//! bodies buffered at once are bounded by `max_buffered_body_bytes` (128 MiB
//! by default): the uploads past it get 503 at once, and the proxy's RSS
//! stays under 200 MB however many there are. Once their last byte comes,
//! the buffered uploads are served whole.

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::{ProxyProc, Upstream};
use bytes::Bytes;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: usize = 8 * 1024 * 1024 - 1;

/// The documented bound on the proxy's RSS with the default budget.
const RSS_BOUND: u64 = 200 * 1024 * 1024;

/// `VmRSS` of `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// The unread bytes (`rx_queue`) of every established socket on `port`
/// (`/proc/net/tcp`): the proxy's side of its client connections.
fn unread_on(port: u16) -> Vec<u64> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            // 01: ESTABLISHED.
            (local_port == port && f[3] == "01").then(|| {
                let rx = f[4].rsplit(':').next().unwrap();
                u64::from_str_radix(rx, 16).unwrap()
            })
        })
        .collect()
}

/// How one upload went: refused at once (its status), or buffering (its
/// connection, to send the last byte on).
enum Upload {
    Refused(u16),
    Holding(TcpStream),
}

/// Sends the head and all but the last byte of the body; the answer, if
/// one comes before (a refusal), else the connection.
async fn upload(addr: SocketAddr, body: Bytes) -> Upload {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: {BODY}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    let (mut reader, mut writer) = conn.split();
    let refused = tokio::select! {
        // A refused upload's body is never read: its writes stop when the
        // proxy closes the connection.
        _ = writer.write_all(&body[..BODY - 1]) => None,
        read = reader.read_exact(&mut answer) => Some(read),
    };
    match refused {
        Some(Ok(_)) => Upload::Refused(
            std::str::from_utf8(&answer[9..12])
                .unwrap()
                .parse()
                .unwrap(),
        ),
        Some(Err(e)) => panic!("closed without an answer: {e}"),
        None => Upload::Holding(conn),
    }
}

async fn slow_uploads_keep_rss_bounded(n: usize) {
    let up = Upstream::start().await;
    let plugins = json!({"ext-plugin-pre-req": phase(&[("body-size", json!({}))])});
    let mut c = config(
        demo(),
        json!({}),
        json!([route("r", "/*", up.addr, plugins)]),
    );
    c["ext-plugin"]["standby"] = json!(false);
    let proxy = ProxyProc::start(&c);
    let body = Bytes::from(vec![b'x'; BODY]);
    let before = rss(proxy.pid());
    let uploads = (0..n).map(|_| tokio::spawn(upload(proxy.addr, body.clone())));
    let mut holding = Vec::new();
    let mut refused = 0;
    for u in futures::future::join_all(uploads).await {
        match u.unwrap() {
            Upload::Refused(status) => {
                assert_eq!(status, 503);
                refused += 1;
            }
            Upload::Holding(conn) => holding.push(conn),
        }
    }
    // Readiness: the proxy has read everything the holding clients sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while unread_on(proxy.addr.port()).iter().any(|&rx| rx > 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy stopped reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A refused upload whose body fit in the socket buffers was answered
    // after its writes ended: its 503 is there to read by now (the proxy
    // closes after it, so its socket is no longer in `unread_on`).
    let mut buffering = Vec::new();
    for conn in holding {
        let mut answer = [0u8; 12];
        match conn.try_read(&mut answer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => buffering.push(conn),
            Ok(12) if &answer[9..12] == b"503" => refused += 1,
            other => panic!("{other:?}: {:?}", String::from_utf8_lossy(&answer)),
        }
    }
    let mut holding = buffering;
    let held = rss(proxy.pid());
    eprintln!(
        "{n} slow uploads of {BODY} bytes: {} buffering, {refused} refused (503); proxy RSS {} MiB before, {} MiB with them",
        holding.len(),
        before / 1024 / 1024,
        held / 1024 / 1024
    );
    // 128 MiB hold 16 bodies of 8 MiB - 1.
    assert_eq!(holding.len(), 16.min(n), "{refused} refused");
    assert!(held < RSS_BOUND, "RSS {held} bytes");
    for conn in &mut holding {
        conn.write_all(b"x").await.unwrap();
    }
    for conn in &mut holding {
        let mut answer = [0u8; 12];
        conn.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer[9..12], b"200");
    }
    let sizes: Vec<_> = up
        .requests()
        .iter()
        .map(|r| r.header("x-body-size").map(str::to_owned))
        .collect();
    assert_eq!(sizes.len(), holding.len());
    assert!(
        sizes.iter().all(|s| s.as_deref() == Some("8388607")),
        "{sizes:?}"
    );
}

#[tokio::test]
async fn sixty_slow_uploads_keep_the_proxy_under_200_mb() {
    slow_uploads_keep_rss_bounded(60).await;
}

#[tokio::test]
async fn two_hundred_slow_uploads_keep_the_proxy_under_200_mb() {
    slow_uploads_keep_rss_bounded(200).await;
}

/// A body sent on to a slow upstream stays counted while the proxy holds
/// it (the exchange keeps it for a later phase): with room for two 4 MiB
/// bodies, two held by an upstream that answers after 3 s leave no room for
/// a third (503), which gets its 200 once they are answered. The budget
/// released a body when it was sent, so the proxy could hold any number.
#[tokio::test]
async fn a_body_sent_to_a_slow_upstream_stays_counted() {
    let up = Upstream::start().await;
    let size = json!({"ext-plugin-pre-req": phase(&[("body-size", json!({}))])});
    let mut c = config(demo(), json!({}), json!([route("r", "/*", up.addr, size)]));
    c["max_request_body_bytes"] = json!(4 * 1024 * 1024);
    c["max_response_body_bytes"] = json!(4 * 1024 * 1024);
    c["max_buffered_body_bytes"] = json!(8 * 1024 * 1024);
    let proxy = ProxyProc::start(&c);
    let body = Bytes::from(vec![b'x'; 4 * 1024 * 1024]);
    let post = |path: &'static str| {
        let (url, body) = (proxy.url(path), body.clone());
        tokio::spawn(async move {
            crate::support::http::send("POST", &url, &[], body)
                .await
                .status
        })
    };
    let held = [post("/slow-1"), post("/slow-2")];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while up.requests().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both bodies are with the upstream, which answers in 3 s.
    assert_eq!(post("/fast").await.unwrap(), 503, "{}", proxy.log());
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(post("/fast").await.unwrap(), 200, "{}", proxy.log());
}
