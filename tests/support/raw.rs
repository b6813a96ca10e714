//! Raw HTTP/1.1 over a TcpStream, for what an HTTP client library would
//! normalize or refuse to send: unnormalized paths, partial bodies, several
//! requests on one connection.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// An answer read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::values_named(&self.headers, name).next()
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        super::values_named(&self.headers, name).collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection.
pub struct RawConn {
    stream: BufReader<TcpStream>,
}

const LIMIT: Duration = Duration::from_secs(20);

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connecting");
        RawConn {
            stream: BufReader::new(stream),
        }
    }

    /// A connection from the local address `from` (`127.0.0.2:0`: a
    /// client the proxy sees at another address than 127.0.0.1).
    pub async fn connect_from(from: SocketAddr, addr: SocketAddr) -> RawConn {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind(from).expect("binding the client's address");
        let stream = socket.connect(addr).await.expect("connecting");
        RawConn {
            stream: BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Closes the writing half (the client is gone, mid-body if it was).
    pub async fn shutdown_write(&mut self) {
        self.stream.get_mut().shutdown().await.unwrap();
    }

    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(LIMIT, self.stream.read_line(&mut line))
            .await
            .expect("no answer within 20 s")
            .ok()?;
        (n > 0).then(|| line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Reads one answer (to a request that is not HEAD); `None` if the
    /// connection closed before a status line.
    pub async fn response(&mut self) -> Option<RawResponse> {
        let status_line = self.line().await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await.expect("closed inside the header");
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("bad header line");
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if resp.header("transfer-encoding").is_some() {
            loop {
                let size = self.line().await.expect("closed inside a chunk");
                let size = usize::from_str_radix(size.trim(), 16).expect("bad chunk size");
                let mut chunk = vec![0; size + 2];
                self.read_exact(&mut chunk).await;
                resp.body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().expect("bad content-length")];
            self.read_exact(&mut body).await;
            resp.body = body;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            tokio::time::timeout(LIMIT, self.stream.read_to_end(&mut resp.body))
                .await
                .expect("no end within 20 s")
                .unwrap();
        }
        Some(resp)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) {
        tokio::time::timeout(LIMIT, self.stream.read_exact(buf))
            .await
            .expect("no body within 20 s")
            .expect("closed inside the body");
    }
}

/// Sends `GET target` with `headers` on a fresh connection and reads the answer.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    get_on(RawConn::connect(addr).await, target, "test", headers).await
}

/// Sends `GET target` with `Host: host` and `headers` on `conn`, the last
/// request on it, and reads the answer.
pub async fn get_on(
    mut conn: RawConn,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut req = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.send(req.as_bytes()).await;
    conn.response().await.expect("closed without an answer")
}
