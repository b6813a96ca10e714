//! The TLS listener and HTTP/2, with real clients: certificates made at
//! test time, chosen by SNI (exact, wildcard, unknown refused, fallback),
//! TLS 1.1 refused (a hand-made ClientHello), ALPN `h2` and `http/1.1`,
//! h2c with prior knowledge, a plugin chain over HTTP/2 (`scheme` and
//! `host` as plugins see them), 100 streams on one connection, the
//! handshake timeout, certificates replaced by a reload while a connection
//! stays open (and a bad PEM refused), the rapid-reset bound, and the
//! issue's end-to-end case: HTTP/2 with SNI through a rewrite chain to an
//! HTTPS upstream.

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::{get, send, ProxyProc, Upstream};
use crate::support::tls::{self, alpn, cert, connect, served, ssl, Ca, Sender, TlsNode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy with the TLS listener, one route to `up` with `inject-vars`
/// (the upstream sees `x-var-scheme`, `x-var-host`, `x-var-server_protocol`),
/// the admin listener, and `ssls`; `tweak` may change the configuration.
fn proxy(up: &Upstream, ssls: Value, tweak: impl FnOnce(&mut Value)) -> ProxyProc {
    let vars = json!({"vars": ["scheme", "host", "server_protocol"]});
    let plugins = json!({"ext-plugin-pre-req": phase(&[("inject-vars", vars)])});
    let mut c = config(
        demo(),
        json!({}),
        json!([route("r", "/*", up.addr, plugins)]),
    );
    c["tls"] = json!({"listen": "127.0.0.1:0"});
    c["admin"] = json!({"listen": "127.0.0.1:0"});
    c["ssls"] = ssls;
    tweak(&mut c);
    ProxyProc::start(&c)
}

/// [`proxy`] serving one certificate, for `a.example`: the proxy and the
/// certificate (PEM, key PEM, DER).
fn a_example(
    up: &Upstream,
    tweak: impl FnOnce(&mut Value),
) -> (ProxyProc, (String, String, Vec<u8>)) {
    let made = cert(&["a.example"], 90);
    let p = proxy(
        up,
        json!([ssl("a", &["a.example"], &made.0, &made.1)]),
        tweak,
    );
    (p, made)
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_exact_then_wildcard() {
    let up = Upstream::start().await;
    let (a_cert, a_key, a_der) = cert(&["a.example"], 90);
    let (w_cert, w_key, w_der) = cert(&["*.b.example"], 90);
    let (x_cert, x_key, x_der) = cert(&["x.b.example"], 90);
    let p = proxy(
        &up,
        json!([
            ssl("a", &["a.example"], &a_cert, &a_key),
            ssl("w", &["*.b.example"], &w_cert, &w_key),
            ssl("x", &["x.b.example"], &x_cert, &x_key),
        ]),
        |_| {},
    );
    let at = p.tls.unwrap();
    for (sni, want) in [
        ("a.example", &a_der),
        ("A.Example", &a_der),
        ("y.b.example", &w_der),
        ("z.y.b.example", &w_der),
        ("x.b.example", &x_der),
    ] {
        let s = connect(at, Some(sni), &[b"http/1.1"]).await.unwrap();
        assert_eq!(&served(&s), want, "SNI {sni}");
    }
    for refused in [Some("b.example"), Some("other.example"), None] {
        let got = connect(at, refused, &[b"http/1.1"]).await;
        assert!(got.is_err(), "SNI {refused:?} must fail the handshake");
    }
    // The handshakes counted by result.
    let metrics = get(&format!("http://{}/metrics", p.admin.unwrap()))
        .await
        .text();
    assert!(
        metrics.contains("extplug_tls_handshakes_total{result=\"ok\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("extplug_tls_handshakes_total{result=\"failed\"} 3"),
        "{metrics}"
    );
    let expiry = metrics
        .lines()
        .find(|l| l.starts_with("extplug_ssl_certificate_expiry_seconds{id=\"a\"}"))
        .unwrap_or_else(|| panic!("no expiry series: {metrics}"));
    let when: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((when - now - 90.0 * 86400.0).abs() < 3600.0, "{expiry}");
}

#[tokio::test]
async fn no_sni_gets_the_fallback_name_when_configured() {
    let up = Upstream::start().await;
    let (a_cert, a_key, a_der) = cert(&["a.example"], 90);
    let p = proxy(
        &up,
        json!([ssl("a", &["a.example"], &a_cert, &a_key)]),
        |c| {
            c["tls"]["fallback_sni"] = json!("a.example");
        },
    );
    let s = connect(p.tls.unwrap(), None, &[b"http/1.1"]).await.unwrap();
    assert_eq!(served(&s), a_der);
    let mut h1 = Sender::h1(s).await;
    let got = h1.get("a.example", "/fallback").await.unwrap();
    assert_eq!(got.status, 200);
}

/// A ClientHello offering `version` only (no `supported_versions`
/// extension: TLS 1.2 and older), for `a.example`, with ECDHE-ECDSA
/// suites and the extensions they need.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut ext = Vec::new();
    let name = b"a.example";
    // server_name
    ext.extend_from_slice(&[0, 0]);
    let len = name.len() as u16;
    ext.extend_from_slice(&(len + 5).to_be_bytes());
    ext.extend_from_slice(&(len + 3).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&len.to_be_bytes());
    ext.extend_from_slice(name);
    // supported_groups: x25519, secp256r1
    ext.extend_from_slice(&[0, 10, 0, 6, 0, 4, 0, 0x1d, 0, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0, 11, 0, 2, 1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    ext.extend_from_slice(&[0, 13, 0, 6, 0, 4, 4, 3, 8, 4]);
    // extended_master_secret
    ext.extend_from_slice(&[0, 23, 0, 0]);
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // no session id
                  // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ..._CBC_SHA (TLS 1.1's kind)
    body.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x09]);
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// The first record the server answers `hello` with: `(content type, first
/// bytes)`, or `None` when it closed without one.
async fn first_record(at: std::net::SocketAddr, hello: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut buf = vec![0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("the server neither answered nor closed");
    read.ok().map(|_| (buf[0], buf[5..].to_vec()))
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_and_1_3_are_served() {
    let up = Upstream::start().await;
    let (p, (_, _, a_der)) = a_example(&up, |_| {});
    let at = p.tls.unwrap();
    // The same hello as TLS 1.2 gets a ServerHello: the hello is well made.
    let (kind, start) = first_record(at, &client_hello([3, 3])).await.unwrap();
    assert_eq!(
        (kind, start[0]),
        (0x16, 2),
        "a handshake record, ServerHello"
    );
    // As TLS 1.1: an alert, protocol_version (70), or a plain close.
    match first_record(at, &client_hello([3, 2])).await {
        None => {}
        Some((kind, alert)) => assert_eq!((kind, alert[1]), (0x15, 70), "{alert:?}"),
    }
    // A client that allows 1.2 only, and one that allows 1.3 only.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                let der = rustls::pki_types::CertificateDer::from(a_der.clone());
                roots.add(der).unwrap();
                roots
            })
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
        let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(s.get_ref().1.protocol_version(), Some(version.version));
    }
}

#[tokio::test]
async fn alpn_chooses_http2_or_http1_and_plugins_see_the_same_request() {
    let up = Upstream::start().await;
    let (p, _) = a_example(&up, |_| {});
    let at = p.tls.unwrap();

    let s = connect(at, Some("a.example"), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn(&s).as_deref(), Some(&b"h2"[..]));
    let mut h2 = Sender::h2(s).await;
    let got = h2.get("a.example:443", "/two?q=1").await.unwrap();
    assert_eq!((got.status, got.version), (200, http::Version::HTTP_2));
    assert_eq!(got.body, "upstream says hi");
    let seen = up.last();
    assert_eq!(seen.target, "/two?q=1");
    assert_eq!(
        seen.header("host"),
        Some("a.example:443"),
        ":authority as host"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-var-scheme"), Some("https"));
    assert_eq!(seen.header("x-var-host"), Some("a.example"));
    assert_eq!(seen.header("x-var-server_protocol"), Some("HTTP/2.0"));

    let s = connect(at, Some("a.example"), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn(&s).as_deref(), Some(&b"http/1.1"[..]));
    let mut h1 = Sender::h1(s).await;
    for _ in 0..2 {
        let got = h1.get("a.example:443", "/one").await.unwrap();
        assert_eq!((got.status, got.version), (200, http::Version::HTTP_11));
    }
    let seen = up.last();
    assert_eq!(seen.header("host"), Some("a.example:443"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-var-scheme"), Some("https"));
    assert_eq!(seen.header("x-var-host"), Some("a.example"));

    // No ALPN at all: HTTP/1.1.
    let s = connect(at, Some("a.example"), &[]).await.unwrap();
    assert_eq!(alpn(&s), None);
    let got = Sender::h1(s).await.get("a.example", "/none").await.unwrap();
    assert_eq!(got.status, 200);

    // The clear-text listener says http.
    let got = get(&p.url("/plain")).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().header("x-var-scheme"), Some("http"));
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn h2c_with_prior_knowledge_and_a_hundred_streams_on_one_connection() {
    let up = Upstream::start().await;
    let p = proxy(&up, json!([]), |_| {});
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut h2 = Sender::h2(tcp).await;
    let got = h2.get("c.example", "/h2c").await.unwrap();
    assert_eq!((got.status, got.version), (200, http::Version::HTTP_2));
    let seen = up.last();
    assert_eq!(seen.header("host"), Some("c.example"));
    assert_eq!(seen.header("x-var-scheme"), Some("http"));
    let Sender::H2(sender) = h2 else {
        unreachable!()
    };
    let before = up.requests().len();
    let answers = futures::future::join_all((0..100).map(|i| {
        let mut send = sender.clone();
        async move {
            let req = http::Request::get(format!("http://c.example/many/{i}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            send.ready().await.unwrap();
            send.send_request(req).await.unwrap().status().as_u16()
        }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(up.requests().len() - before, 100);

    // HTTP/1.1 on the same listener as before.
    assert_eq!(get(&p.url("/h1")).await.status, 200);
    // A request line that starts like the preface is still HTTP/1.
    let got = send("PRI", &p.url("/x"), &[], "").await;
    assert_eq!(got.status, 405);
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_timeout() {
    let up = Upstream::start().await;
    let (a_cert, a_key, _) = cert(&["a.example"], 90);
    let p = proxy(
        &up,
        json!([ssl("a", &["a.example"], &a_cert, &a_key)]),
        |c| {
            c["tls"]["handshake_timeout_ms"] = json!(300);
        },
    );
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(p.tls.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("not closed within 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A handshake in time still works.
    assert!(connect(p.tls.unwrap(), Some("a.example"), &[])
        .await
        .is_ok());
    let metrics = get(&format!("http://{}/metrics", p.admin.unwrap()))
        .await
        .text();
    assert!(
        metrics.contains("extplug_tls_handshakes_total{result=\"timeout\"} 1"),
        "{metrics}"
    );
}

/// Rewrites the proxy's configuration file with `ssls` and reloads it
/// through the admin listener: the status and body of `POST /reload`.
async fn reload_with(p: &ProxyProc, ssls: Value) -> (u16, String) {
    let path = p.dir.path().join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["ssls"] = ssls;
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    let got = send(
        "POST",
        &format!("http://{}/reload", p.admin.unwrap()),
        &[],
        "",
    )
    .await;
    (got.status, got.text())
}

#[tokio::test]
async fn a_reload_replaces_the_certificates_and_open_connections_keep_theirs() {
    let up = Upstream::start().await;
    let (p, (_, _, old_der)) = a_example(&up, |_| {});
    let at = p.tls.unwrap();
    let open = connect(at, Some("a.example"), &[b"h2"]).await.unwrap();
    assert_eq!(served(&open), old_der);
    let mut open = Sender::h2(open).await;
    assert_eq!(open.get("a.example", "/before").await.unwrap().status, 200);

    let (new_cert, new_key, new_der) = cert(&["a.example", "n.example"], 90);
    let (status, body) = reload_with(
        &p,
        json!([ssl("a", &["a.example", "n.example"], &new_cert, &new_key)]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let s = connect(at, Some("n.example"), &[]).await.unwrap();
    assert_eq!(
        served(&s),
        new_der,
        "the new certificate, for its new name too"
    );
    assert_eq!(
        served(&connect(at, Some("a.example"), &[]).await.unwrap()),
        new_der
    );
    // The connection opened before goes on.
    assert_eq!(open.get("a.example", "/after").await.unwrap().status, 200);

    // A bad PEM refuses the reload, naming the object; the certificates
    // being served stay.
    let (status, body) = reload_with(
        &p,
        json!([
            ssl("a", &["a.example"], &new_cert, &new_key),
            ssl(
                "broken",
                &["b.example"],
                "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
                &new_key
            ),
        ]),
    )
    .await;
    assert_ne!(status, 200);
    assert!(body.contains("ssl `broken` (ssls[1])"), "{body}");
    assert_eq!(
        served(&connect(at, Some("n.example"), &[]).await.unwrap()),
        new_der,
        "the previous certificates keep serving"
    );
    assert!(connect(at, Some("b.example"), &[]).await.is_err());
    // A key that is not the certificate's is refused too.
    let (_, other_key, _) = cert(&["a.example"], 90);
    let (status, body) =
        reload_with(&p, json!([ssl("a", &["a.example"], &new_cert, &other_key)])).await;
    assert_ne!(status, 200);
    assert!(body.contains("is not the key of"), "{body}");
}

#[tokio::test]
async fn an_encrypted_key_in_the_file_is_decrypted_with_the_keyring() {
    let up = Upstream::start().await;
    let (a_cert, a_key, a_der) = cert(&["a.example"], 90);
    let sealed = tls::apisix_encrypt("qeddd145sfvddff3", &a_key);
    assert!(!sealed.starts_with("---"));
    // APISIX's default keyring.
    let p = proxy(
        &up,
        json!([ssl("a", &["a.example"], &a_cert, &sealed)]),
        |_| {},
    );
    let s = connect(p.tls.unwrap(), Some("a.example"), &[])
        .await
        .unwrap();
    assert_eq!(served(&s), a_der);
    drop(p);
    // A keyring of one's own.
    let sealed = tls::apisix_encrypt("my-own-16-bytes!", &a_key);
    let p = proxy(
        &up,
        json!([ssl("a", &["a.example"], &a_cert, &sealed)]),
        |c| {
            c["tls"]["keyring"] = json!(["my-own-16-bytes!"]);
        },
    );
    let s = connect(p.tls.unwrap(), Some("a.example"), &[])
        .await
        .unwrap();
    assert_eq!(served(&s), a_der);
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_others_are_still_served() {
    let up = Upstream::start().await;
    let p = proxy(&up, json!([]), |_| {});
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let before = up.requests().len();
    let mut sent = 0;
    let mut client = client;
    let started = Instant::now();
    // Open a stream and reset it at once, in a loop (bounded): HEADERS
    // sent (the yield lets the connection task write them), then RST_STREAM.
    for i in 0..5000 {
        let ready = tokio::time::timeout(Duration::from_secs(5), client.ready()).await;
        let Ok(Ok(ready)) = ready else { break };
        client = ready;
        let req = http::Request::get(format!("http://r.example/reset/{i}"))
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = client.send_request(req, true) else {
            break;
        };
        tokio::task::yield_now().await;
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    // The proxy ended the connection (GOAWAY) well before the loop did.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection was not closed");
    let reached = up.requests().len() - before;
    assert!(sent < 5000, "the proxy never cut the client off: {ended:?}");
    eprintln!(
        "rapid reset: {sent} streams opened and reset in {:?}; {reached} reached the upstream; connection end: {ended:?}",
        started.elapsed()
    );
    assert!(
        reached * 10 <= sent.max(10),
        "{reached} of {sent} reached the upstream"
    );
    // The proxy serves others as before.
    assert_eq!(get(&p.url("/after")).await.status, 200);
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let got = Sender::h2(tcp)
        .await
        .get("r.example", "/after2")
        .await
        .unwrap();
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn streams_reset_after_they_were_taken_up_are_bounded_too() {
    // The rapid reset with a round trip between HEADERS and RST_STREAM: each
    // stream was taken up (its upstream request started, on a slow path)
    // before its reset, which h2's own bound does not count.
    let up = Upstream::start().await;
    let p = proxy(&up, json!([]), |_| {});
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client;
    let mut sent = 0;
    for i in 0..2000 {
        let ready = tokio::time::timeout(Duration::from_secs(5), client.ready()).await;
        let Ok(Ok(ready)) = ready else { break };
        client = ready;
        let req = http::Request::get(format!("http://r.example/slow/{i}"))
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = client.send_request(req, true) else {
            break;
        };
        tokio::time::sleep(Duration::from_millis(3)).await;
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection was not closed");
    eprintln!("{sent} streams taken up and reset; connection end: {ended:?}");
    assert!(
        sent <= 400,
        "the proxy let {sent} streams be taken up and reset on one connection"
    );
    p.wait_log("rapid reset", 1);
    // A client that cancels now and then, and the others, are served.
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let got = Sender::h2(tcp)
        .await
        .get("r.example", "/after")
        .await
        .unwrap();
    assert_eq!(got.status, 200);
}

/// Polls the TLS listener at `at` with `sni` until `ok` takes the outcome
/// (the certificate served, or `None` when the handshake failed); panics
/// with `what` and `node`'s log after 10 s.
async fn until_served(
    node: &ProxyProc,
    sni: &str,
    what: &str,
    ok: impl Fn(Option<Vec<u8>>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = connect(node.tls.unwrap(), Some(sni), &[]).await.ok();
        if ok(got.as_ref().map(served)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; log:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ssl_objects_from_etcd_are_served_live() {
    use crate::support::etcd::Etcd;
    let etcd = Etcd::start();
    let node = ProxyProc::start(&json!({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "tls": {"listen": "127.0.0.1:0"},
        "ext-plugin": {"cmd": demo(), "standby": false, "stop_grace_ms": 500},
        "etcd": {"endpoints": [etcd.url()], "prefix": "/apisix", "timeout_ms": 2000},
    }));
    assert!(connect(node.tls.unwrap(), Some("e.example"), &[])
        .await
        .is_err());
    // As APISIX 3.x stores it: the key encrypted with its default keyring.
    let (e_cert, e_key, e_der) = cert(&["e.example"], 90);
    let mut object = ssl(
        "1",
        &["e.example"],
        &e_cert,
        &tls::apisix_encrypt("edd1c9f0985e76a2", &e_key),
    );
    object["create_time"] = json!(1700000000);
    etcd.put("/apisix/ssls/1", &object);
    until_served(&node, "e.example", "the ssl from etcd is not served", |c| {
        c.as_ref() == Some(&e_der)
    })
    .await;
    // A bad object is skipped with its key, counted; the good one serves on.
    etcd.put(
        "/apisix/ssls/2",
        &ssl(
            "2",
            &["f.example"],
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
            &e_key,
        ),
    );
    let admin = node.admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(&format!("http://{admin}/metrics")).await.text();
        if m.contains("extplug_config_errors_total{kind=\"ssl\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "ssl error not counted: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.log().contains("/apisix/ssls/2"), "{}", node.log());
    // `extplug routes` lists what the node serves, and why not.
    let listing = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
        .args(["routes", "--offline", "--config"])
        .arg(node.dir.path().join("config.json"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("served ssl 1 snis=e.example expires="),
        "{listing}"
    );
    assert!(
        listing.contains("skipped /apisix/ssls/2 (ssl): `cert`"),
        "{listing}"
    );
    assert_eq!(
        served(
            &connect(node.tls.unwrap(), Some("e.example"), &[])
                .await
                .unwrap()
        ),
        e_der
    );
    // Deleted: no longer served.
    etcd.delete("/apisix/ssls/1");
    until_served(&node, "e.example", "the deleted ssl is still served", |c| {
        c.is_none()
    })
    .await;
}

#[test]
fn extplug_check_validates_certificates_and_warns_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let check = |ssls: Value| {
        let mut c = config(demo(), json!({}), json!([]));
        c["tls"] = json!({"listen": "127.0.0.1:0"});
        c["ssls"] = ssls;
        std::fs::write(&path, c.to_string()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_extplug"))
            .args(["check", "--offline", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (soon_cert, soon_key, _) = cert(&["a.example"], 10);
    let (code, out, err) = check(json!([ssl("a", &["a.example"], &soon_cert, &soon_key)]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 certificate"), "{out}");
    assert!(
        err.contains("warning: ssl a: the certificate expires at")
            && err.contains("within 30 days"),
        "{err}"
    );
    let (old_cert, old_key, _) = cert(&["a.example"], -1);
    let (code, _, err) = check(json!([ssl("a", &["a.example"], &old_cert, &old_key)]));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("ssl `a` (ssls[0]): `cert` expired at"),
        "{err}"
    );
    let (good_cert, _, _) = cert(&["a.example"], 90);
    let (code, _, err) = check(json!([ssl("a", &["a.example"], &good_cert, &soon_key)]));
    assert_eq!(code, Some(2));
    assert!(err.contains("`key` is not the key of"), "{err}");
    let (ok_cert, ok_key, _) = cert(&["a.example"], 90);
    let (code, out, err) = check(json!([ssl("a", &["a.example"], &ok_cert, &ok_key)]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[tokio::test]
async fn the_client_limits_apply_over_tls_and_http2() {
    let up = Upstream::start().await;
    let (p, _) = a_example(&up, |c| {
        c["client_header_timeout_ms"] = json!(400);
        c["max_request_header_bytes"] = json!(4096);
        c["max_client_connections"] = json!(2);
    });
    let at = p.tls.unwrap();
    // A header cut short over TLS: closed at the header timeout.
    let mut s = connect(at, Some("a.example"), &[b"http/1.1"])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a.example\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("not closed at the header timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(s);
    // A header list over the limit over HTTP/2: refused, the connection
    // still usable.
    let s = connect(at, Some("a.example"), &[b"h2"]).await.unwrap();
    let Sender::H2(mut h2) = Sender::h2(s).await else {
        unreachable!()
    };
    let big = http::Request::get("https://a.example/big")
        .header("x-big", "b".repeat(8000))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let before = up.requests().len();
    match h2.send_request(big).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => eprintln!("the big header list was refused by a stream error: {e}"),
    }
    assert_eq!(up.requests().len(), before, "it never reached the upstream");
    drop(h2);
    // The connection cap counts both listeners: two TLS connections open,
    // a clear-text one waits until one closes.
    // (Each asks at once: a connection without a request past the header
    // timeout is closed.)
    let mut one = Sender::h2(connect(at, Some("a.example"), &[b"h2"]).await.unwrap()).await;
    assert_eq!(one.get("a.example", "/1").await.unwrap().status, 200);
    let mut two = Sender::h1(
        connect(at, Some("a.example"), &[b"http/1.1"])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(two.get("a.example", "/2").await.unwrap().status, 200);
    let mut waiting = tokio::spawn(get_owned(p.url("/waits")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if waiting.is_finished() {
        panic!(
            "served past max_client_connections: {:?}; log:\n{}",
            waiting.await,
            p.log()
        );
    }
    drop(two);
    let got = tokio::time::timeout(Duration::from_secs(10), &mut waiting)
        .await
        .expect("not served once a connection closed")
        .unwrap();
    assert_eq!(got, 200);
    assert_eq!(one.get("a.example", "/3").await.unwrap().status, 200);
}

async fn get_owned(url: String) -> u16 {
    get(&url).await.status
}

#[tokio::test]
async fn bodies_stream_both_ways_over_http2() {
    let up = Upstream::start().await;
    let (p, _) = a_example(&up, |_| {});
    let s = connect(p.tls.unwrap(), Some("a.example"), &[b"h2"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // 1 MiB up: more than the stream window (256 KiB), so flow control
    // has to let it through piece by piece.
    let body = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    let req = http::Request::post("https://a.example/upload")
        .body(http_body_util::Full::new(body.clone()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().body, body);
    // A streamed (chunked) answer comes back as HTTP/2 data frames.
    let req = http::Request::get("https://a.example/chunked")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    use http_body_util::BodyExt;
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, "chunk one, chunk two, chunk three");
}

/// The issue's "done when": an HTTP/2 request over TLS with SNI `a.example`
/// (to 127.0.0.1) gets `a.example`'s certificate, not `b.example`'s, and
/// goes through the `rewrite` plugin to an HTTPS upstream, which sees the
/// rewrite; `curl --http2` does the same, verifying the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_sni_goes_through_a_rewrite_chain_to_an_https_upstream() {
    let node = TlsNode::start(&Ca::new("upstream CA"), None).await;
    let (a_cert, a_key, a_der) = cert(&["a.example"], 90);
    let (b_cert, b_key, b_der) = cert(&["b.example"], 90);
    let rewrite =
        json!({"path": "/rewritten", "headers": {"x-demo": "rewritten"}, "args": {"added": "yes"}});
    let plugins = json!({"ext-plugin-pre-req": phase(&[("rewrite", rewrite)])});
    let upstream = json!({"scheme": "https", "nodes": {node.addr.to_string(): 1}});
    let mut c = config(
        demo(),
        json!({}),
        json!([{"id": "r", "uri": "/*", "plugins": plugins, "upstream": upstream}]),
    );
    c["tls"] = json!({"listen": "127.0.0.1:0"});
    c["ssls"] = json!([
        ssl("a", &["a.example"], &a_cert, &a_key),
        ssl("b", &["b.example"], &b_cert, &b_key),
    ]);
    let p = ProxyProc::start(&c);
    let at = p.tls.unwrap();
    let authority = format!("a.example:{}", at.port());

    let s = connect(at, Some("b.example"), &[b"h2"]).await.unwrap();
    assert_eq!(served(&s), b_der);
    let s = connect(at, Some("a.example"), &[b"h2"]).await.unwrap();
    assert_eq!(
        served(&s),
        a_der,
        "a.example's certificate, not b.example's"
    );
    assert_eq!(alpn(&s).as_deref(), Some(&b"h2"[..]));
    let got = Sender::h2(s)
        .await
        .get(&authority, "/shop?keep=1")
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.version, &got.body[..]),
        (200, http::Version::HTTP_2, &b"secure hi"[..]),
        "the HTTPS upstream's answer"
    );
    let (target, headers) = node.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(target, "/rewritten?keep=1&added=yes");
    assert_eq!(headers["x-demo"], "rewritten");
    assert_eq!(headers["host"], authority.as_str());
    assert_eq!(headers["x-forwarded-proto"], "https");
    let seen = node.seen.lock().unwrap().len();

    // curl, trusting a.example's certificate alone: verification passes
    // only if that is the one served.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("a.pem");
    std::fs::write(&ca, &a_cert).unwrap();
    let out = tokio::process::Command::new("curl")
        .args([
            "--http2",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{authority}:127.0.0.1"))
        .arg(format!("https://{authority}/curl"))
        .output()
        .await
        .expect("the curl command (Debian's curl package)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "secure hi\n2 200");
    let seen_now = node.seen.lock().unwrap();
    assert_eq!(seen_now.len(), seen + 1);
    assert_eq!(seen_now.last().unwrap().0, "/rewritten?added=yes");
}

/// The proxy's CPU time so far (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
}

#[tokio::test]
async fn a_preface_in_pieces_is_waited_for_without_polling() {
    let up = Upstream::start().await;
    let p = proxy(&up, json!([]), |_| {});
    // HTTP/1 whose first byte could start the preface: the byte read to
    // tell is given back to the request.
    let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(b"OST /split HTTP/1.1\r\nhost: c.example\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.last();
    assert_eq!(
        (seen.target.as_str(), &seen.body[..]),
        ("/split", &b"hi"[..])
    );
    // Clients stalled inside the preface cost nothing while they wait (a
    // peek in a loop would poll each of them every few milliseconds).
    let mut stalled = Vec::new();
    for _ in 0..500 {
        let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_time(p.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(p.pid()) - before;
    assert!(
        spent < Duration::from_millis(200),
        "500 stalled prefaces cost the proxy {spent:?} of CPU in 2 s"
    );
    // And the listener still serves.
    assert_eq!(get(&p.url("/after")).await.status, 200);
}
