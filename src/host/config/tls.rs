//! The TLS listener's settings (`tls`), HTTP/2's limits (`http2`), and an
//! APISIX SSL object once checked ([`Ssl`]): what the listener needs, as
//! plain data. The checks are in `ssl.rs`.

use crate::host::edge::hostname::HostPattern;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// APISIX's default `apisix.data_encryption.keyring` (its
/// `config-default.yaml`): what a cluster that never set its own encrypts
/// SSL keys with.
pub const APISIX_DEFAULT_KEYRING: [&str; 2] = ["qeddd145sfvddff3", "edd1c9f0985e76a2"];

/// How far ahead of a certificate's expiry it is reported (`extplug check`
/// and the proxy's log warn).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The keys an encrypted SSL `key` may be encrypted with, tried in order:
/// APISIX's `data_encryption.keyring` (16 characters each: the AES-128 key
/// and the CBC IV both).
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring(pub Vec<[u8; 16]>);

impl Default for Keyring {
    /// [`APISIX_DEFAULT_KEYRING`].
    fn default() -> Self {
        Keyring(
            APISIX_DEFAULT_KEYRING
                .iter()
                .map(|k| {
                    let mut key = [0u8; 16];
                    key.copy_from_slice(k.as_bytes());
                    key
                })
                .collect(),
        )
    }
}

impl std::fmt::Debug for Keyring {
    /// Without the keys: the configuration may be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.0.len())
    }
}

impl Keyring {
    /// The keyring from `tls.keyring`'s strings.
    ///
    /// # Errors
    /// A key is not 16 bytes long (APISIX's rule), or the list is empty.
    pub fn parse(keys: &[String]) -> Result<Keyring, String> {
        if keys.is_empty() {
            return Err("`tls.keyring` is empty: leave it out for APISIX's default keyring".into());
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let key: [u8; 16] = k.as_bytes().try_into().map_err(|_| {
                format!(
                    "`tls.keyring[{i}]` is {} bytes long: APISIX's keys are 16 characters",
                    k.len()
                )
            })?;
            ring.push(key);
        }
        Ok(Keyring(ring))
    }

    /// The PEM private key in `key`: `key` itself when it is PEM (starts
    /// with `---`, as APISIX tells them), else base64 of AES-128-CBC (key
    /// and IV the keyring's key, PKCS#7 padding: APISIX's `aes_decrypt_pkey`)
    /// with the first key of the ring whose plaintext is a PEM private key.
    ///
    /// # Errors
    /// Not PEM, not base64, or no key of the ring decrypts it.
    pub fn decrypt_key(&self, key: &str) -> Result<String, String> {
        use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
        if key.starts_with("---") {
            return Ok(key.to_owned());
        }
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| {
                "`key` is neither a PEM private key nor base64 (APISIX's encrypted form)".to_owned()
            })?;
        for k in &self.0 {
            let decryptor = cbc::Decryptor::<aes::Aes128>::new(k.into(), k.into());
            let Ok(plain) = decryptor.decrypt_padded_vec_mut::<Pkcs7>(&sealed) else {
                continue;
            };
            // A wrong key can end in valid padding by chance: only a PEM
            // key counts.
            if let Ok(text) = String::from_utf8(plain) {
                if PrivateKeyDer::from_pem_slice(text.as_bytes()).is_ok() {
                    return Ok(text);
                }
            }
        }
        Err(format!(
            "`key` is encrypted (not PEM) and none of the {} keys of the keyring (`tls.keyring`, APISIX's `data_encryption.keyring`; APISIX's default when not set) decrypts it",
            self.0.len()
        ))
    }
}

/// The `tls` section: the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConf {
    /// Where the TLS listener listens.
    pub listen: SocketAddr,
    /// How long a client has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// The name whose certificate a ClientHello without SNI gets (APISIX's
    /// `apisix.ssl.fallback_sni`); without it, such a handshake fails.
    pub fallback_sni: Option<String>,
    /// The keys SSL objects' encrypted `key`s are decrypted with.
    pub keyring: Keyring,
}

/// Limits of HTTP/2 connections from clients (`http2`), over TLS (ALPN
/// `h2`) and in clear text (prior knowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Streams a client may have open at once on one connection (nginx's
    /// `http2_max_concurrent_streams`, 128).
    pub max_concurrent_streams: u32,
    /// The flow-control window of each stream: request body bytes a client
    /// may send ahead on one stream.
    pub stream_window: u32,
    /// The flow-control window of the connection: request body bytes a
    /// client may send ahead on all its streams together.
    pub connection_window: u32,
    /// Streams a client may reset before the proxy took them up, past
    /// which the connection is closed (`GOAWAY`): the bound on the rapid
    /// reset attack (CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the proxy may reset for a client's protocol errors, past
    /// which the connection is closed.
    pub max_local_error_reset_streams: usize,
    /// Whether the clear-text listener serves HTTP/2 with prior knowledge
    /// (h2c).
    pub h2c: bool,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 128,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            h2c: true,
        }
    }
}

/// One SSL object, checked: served to the names in `snis`.
#[derive(Debug, Clone)]
pub struct Ssl {
    /// The object's `id`.
    pub id: String,
    /// The names it serves (`snis`, or `sni`).
    pub snis: Vec<HostPattern>,
    /// The chain and the key, ready for the handshake.
    pub key: Arc<CertifiedKey>,
    /// When the leaf certificate expires (Unix time, seconds).
    pub not_after: i64,
}

/// A warning for each certificate of `ssls` that expires within
/// [`EXPIRY_WARNING`]: `ssl ID: the certificate expires at ...`.
pub fn expiry_warnings(ssls: &[Ssl]) -> Vec<String> {
    let soon = unix_now() + EXPIRY_WARNING.as_secs() as i64;
    ssls.iter()
        .filter(|s| s.not_after <= soon)
        .map(|s| {
            format!(
                "ssl {}: the certificate expires at {} (within 30 days)",
                s.id,
                utc(s.not_after)
            )
        })
        .collect()
}

/// The time now, Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A Unix time as RFC 3339 UTC, for messages.
pub fn utc(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .ok()
        .and_then(|t| t.to_rfc2822().ok())
        .unwrap_or_else(|| unix.to_string())
}
