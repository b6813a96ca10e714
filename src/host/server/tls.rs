//! The TLS listener's certificates and its rustls settings.
//!
//! The certificates being served ([`Certs`]) are the file's `ssls` and
//! etcd's, by name in one [`HostTable`] (an exact name first, then the
//! longest wildcard: the same matcher as routes' hosts), swapped whole when
//! either changes. A handshake takes the table current when its ClientHello
//! arrives; a connection keeps the certificate it was served with.
//!
//! TLS 1.2 and 1.3 only (rustls has nothing older), HTTP/2 and HTTP/1.1 by
//! ALPN. *ring* is the crypto provider (see the README's dependency list).

use crate::host::config::Ssl;
use crate::host::edge::hostname::{request_host, HostTable};
use crate::host::metrics;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, Mutex};

/// ALPN's names for HTTP/2 and HTTP/1.1, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The certificates by name, as served now.
#[derive(Default)]
struct Table {
    names: HostTable<Arc<CertifiedKey>>,
    /// The name a ClientHello without SNI is served as.
    fallback: Option<String>,
}

/// The sources of the table: the file's ssls and etcd's.
#[derive(Default)]
struct Sources {
    file: Vec<Ssl>,
    etcd: Vec<Ssl>,
    fallback: Option<String>,
}

/// The certificates the TLS listener serves, by SNI; shared by the
/// listener (which reads) and the gateway and etcd source (which replace
/// them).
#[derive(Default)]
pub struct Certs {
    sources: Mutex<Sources>,
    table: ArcSwap<Table>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

impl Certs {
    /// Serves the file's `ssls` from now on (etcd's stay), with `fallback`
    /// (`tls.fallback_sni`) for a ClientHello without SNI.
    pub fn set_file(&self, ssls: Vec<Ssl>, fallback: Option<String>) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        s.file = ssls;
        s.fallback = fallback;
        self.publish(&s);
    }

    /// Serves etcd's `ssls` from now on (the file's stay).
    pub fn set_etcd(&self, ssls: Vec<Ssl>) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        s.etcd = ssls;
        self.publish(&s);
    }

    /// Makes the table of `s` and swaps it in: the file's names, then
    /// etcd's (which win for a name both have, as the live source); the
    /// expiry metrics follow.
    fn publish(&self, s: &Sources) {
        let mut table = Table {
            names: HostTable::new(),
            fallback: s.fallback.clone(),
        };
        for ssl in s.file.iter().chain(&s.etcd) {
            for name in &ssl.snis {
                table.names.insert(name, ssl.key.clone());
            }
        }
        metrics::ssl_certificates(
            s.file
                .iter()
                .chain(&s.etcd)
                .map(|ssl| (ssl.id.as_str(), ssl.not_after)),
        );
        self.table.store(Arc::new(table));
    }

    /// The certificate for a ClientHello's `sni` (none: the fallback name's,
    /// if any); `None` fails the handshake.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let name = match sni {
            Some(sni) => request_host(sni),
            None => table.fallback.clone()?,
        };
        table.names.get(&name).cloned()
    }
}

/// rustls's view of [`Certs`].
#[derive(Debug)]
struct Resolver(Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.0.resolve(hello.server_name());
        if key.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "TLS handshake refused: no certificate for the name");
        }
        key
    }
}

/// The listener's rustls settings: TLS 1.2 and 1.3, no client
/// certificates, the certificate chosen by SNI from `certs`, ALPN `h2`
/// and `http/1.1` (`h2` left out when `h2` is false).
pub fn server_config(certs: Arc<Certs>, h2: bool) -> Arc<rustls::ServerConfig> {
    // rustls 0.23.48 deprecates *ring*'s provider for its lack of
    // post-quantum key exchange (X25519MLKEM768, aws-lc-rs only): the
    // classical groups (X25519, P-256, P-384) are what it offers. Kept for
    // its build (a C compiler alone; see the README's dependency list).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // ring's provider supports both versions: this cannot fail.
        .expect("TLS 1.2 and 1.3 with ring")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certs)));
    config.alpn_protocols = ALPN
        .iter()
        .filter(|p| h2 || **p != b"h2")
        .map(|p| p.to_vec())
        .collect();
    Arc::new(config)
}
