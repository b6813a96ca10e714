//! TLS and HTTP/2 in tests: certificates made at test time (rcgen, with a
//! test CA), a rustls client that records the certificate it was served,
//! HTTP/1.1 and HTTP/2 requests over any stream, and a TLS node (an HTTPS
//! upstream).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `names`, valid from two days ago for
/// `days` more days, and its key: `(cert PEM, key PEM, cert DER)`.
pub fn cert(names: &[&str], days: i64) -> (String, String, Vec<u8>) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(2);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// A certificate authority made for one test.
pub struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names` and its key, as PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

/// A TLS node (an HTTPS upstream): answers 200 with `x-sni` (the name the
/// client sent, or `none`) and `x-client-cert` (`yes` when the client
/// showed one), and keeps what each request asked for.
pub struct TlsNode {
    pub addr: SocketAddr,
    /// TLS connections accepted (handshakes done).
    pub handshakes: Arc<AtomicUsize>,
    /// Handshakes that failed.
    pub failed: Arc<Mutex<Vec<String>>>,
    /// The requests served: target (path and query) and headers.
    pub seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl TlsNode {
    /// A node with `ca`'s certificate for localhost and 127.0.0.1; with
    /// `client_ca`, it requires a client certificate issued by it.
    pub async fn start(ca: &Ca, client_ca: Option<&Ca>) -> TlsNode {
        use rustls::pki_types::pem::PemObject;
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(client_ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(&client_ca.pem()) {
                    roots.add(c).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs(&cert), key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = TlsNode {
            addr: listener.local_addr().unwrap(),
            handshakes: Arc::default(),
            failed: Arc::default(),
            seen: Arc::default(),
        };
        let (handshakes, failed, seen) = (
            node.handshakes.clone(),
            node.failed.clone(),
            node.seen.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, handshakes, failed, seen) = (
                    acceptor.clone(),
                    handshakes.clone(),
                    failed.clone(),
                    seen.clone(),
                );
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            failed.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let (_, session) = tls.get_ref();
                    let sni = session.server_name().unwrap_or("none").to_owned();
                    let client_cert = if session.peer_certificates().is_some() {
                        "yes"
                    } else {
                        "no"
                    };
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        let target = req.uri().path_and_query().map_or("", |t| t.as_str());
                        seen.lock()
                            .unwrap()
                            .push((target.to_owned(), req.headers().clone()));
                        let sni = sni.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("x-sni", sni)
                                    .header("x-client-cert", client_cert)
                                    .body(Full::new(Bytes::from("secure hi")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        node
    }
}

/// An SSL object in APISIX's shape.
pub fn ssl(id: &str, snis: &[&str], cert: &str, key: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "snis": snis, "cert": cert, "key": key})
}

/// APISIX's encryption of an SSL key (AES-128-CBC, key and IV the keyring
/// key, PKCS#7, base64), done with the `openssl` command as APISIX's
/// `resty.aes` does it with OpenSSL.
pub fn apisix_encrypt(keyring_key: &str, plain: &str) -> String {
    use std::io::Write;
    let hex: String = keyring_key.bytes().map(|b| format!("{b:02x}")).collect();
    let mut child = std::process::Command::new("openssl")
        .args([
            "enc",
            "-aes-128-cbc",
            "-K",
            &hex,
            "-iv",
            &hex,
            "-base64",
            "-A",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the openssl command (Debian's openssl package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plain.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Accepts any certificate: the tests compare the certificate served with
/// the one expected instead.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        #[allow(deprecated)]
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client connection to `addr` with `sni` (`None`: no SNI, as for an
/// IP address) offering `alpn`.
pub async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_owned()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The certificate the server presented on `stream` (DER).
pub fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The ALPN protocol agreed on `stream`.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An answer: status, version, headers and body.
pub struct Answer {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A request sender for HTTP/1.1 or HTTP/2 over one connection.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// HTTP/1.1 over `io`.
    pub async fn h1<I>(io: I) -> Sender
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender::H1(send)
    }

    /// HTTP/2 over `io` (after ALPN `h2`, or with prior knowledge).
    pub async fn h2<I>(io: I) -> Sender
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        Sender::H2(send)
    }

    /// GET `path` for `host`: the `Host` header over HTTP/1.1, the
    /// `:authority` over HTTP/2.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Answer, hyper::Error> {
        let resp = match self {
            Sender::H1(send) => {
                let req = http::Request::get(path)
                    .header("host", host)
                    .body(Empty::new())
                    .unwrap();
                send.ready().await?;
                send.send_request(req).await?
            }
            Sender::H2(send) => {
                let req = http::Request::get(format!("https://{host}{path}"))
                    .body(Empty::new())
                    .unwrap();
                send.ready().await?;
                send.send_request(req).await?
            }
        };
        let (head, body) = resp.into_parts();
        Ok(Answer {
            status: head.status.as_u16(),
            version: head.version,
            headers: head.headers,
            body: body.collect().await?.to_bytes(),
        })
    }
}
