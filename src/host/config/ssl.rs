//! APISIX's SSL objects (`ssls`, the file's and etcd's alike) checked
//! into [`Ssl`]s: a certificate chain, its private key (plain PEM, or
//! encrypted with APISIX's data-encryption keyring) and the names it
//! serves; and the `tls` and `http2` sections.
//!
//! An SSL object is checked whole here, once: the PEM parses, the key
//! matches the certificate, the certificate has not expired. The listener
//! then only looks certificates up by name.

use super::apisix::{from_text, id_text};
use super::raw::{RawHttp2, RawId, RawTls};
use super::tls::{unix_now, utc, Http2Limits, Keyring, Ssl, TlsConf};
use crate::host::edge::hostname::HostPattern;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// APISIX's SSL object, as its Admin API and etcd hold it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsl {
    id: Option<RawId>,
    cert: String,
    key: String,
    #[serde(default)]
    snis: Option<Vec<String>>,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    status: Option<i64>,
    // Refused when set: extplug cannot honour them (see `parse_ssl`).
    #[serde(default)]
    certs: Option<Vec<String>>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    client: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    ssl_protocols: Option<Vec<String>>,
    // APISIX bookkeeping: accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    create_time: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    update_time: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    validity_start: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    validity_end: Option<serde::de::IgnoredAny>,
}

/// Checks the `tls` section.
pub(super) fn tls_conf(raw: RawTls) -> Result<TlsConf, String> {
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        format!(
            "`tls.listen`: {:?} is not an address such as 127.0.0.1:9443",
            raw.listen
        )
    })?;
    if raw.handshake_timeout_ms == 0 {
        return Err("`tls.handshake_timeout_ms` must be greater than 0".into());
    }
    let fallback_sni = match raw.fallback_sni {
        None => None,
        Some(name) => match HostPattern::parse(&name) {
            Ok(HostPattern::Exact(name)) => Some(name),
            _ => {
                return Err(format!(
                    "`tls.fallback_sni` {name:?} is not a host name (a name a certificate serves, without `*`)"
                ))
            }
        },
    };
    let keyring = match raw.keyring {
        None => Keyring::default(),
        Some(keys) => Keyring::parse(&keys)?,
    };
    Ok(TlsConf {
        listen,
        handshake_timeout: Duration::from_millis(raw.handshake_timeout_ms),
        fallback_sni,
        keyring,
    })
}

/// Checks the `http2` section; `max_header_list_size` is the client's
/// `max_request_header_bytes`, as for HTTP/1.1.
pub(super) fn http2_limits(raw: Option<RawHttp2>) -> Result<Http2Limits, String> {
    let raw = raw.unwrap_or_default();
    let mut limits = Http2Limits::default();
    if let Some(n) = raw.max_concurrent_streams {
        if n == 0 {
            return Err("`http2.max_concurrent_streams` must be at least 1".into());
        }
        limits.max_concurrent_streams = n;
    }
    // RFC 9113 section 6.5.2: a window is 2^31-1 at most.
    let window = |v: Option<u32>, field: &str, default: u32| -> Result<u32, String> {
        match v {
            None => Ok(default),
            Some(n) if (65_535..=(1 << 31) - 1).contains(&n) => Ok(n),
            Some(n) => Err(format!(
                "`http2.{field}` {n} must be between 65535 and 2147483647"
            )),
        }
    };
    limits.stream_window = window(
        raw.initial_stream_window_size,
        "initial_stream_window_size",
        limits.stream_window,
    )?;
    limits.connection_window = window(
        raw.initial_connection_window_size,
        "initial_connection_window_size",
        limits.connection_window,
    )?;
    if let Some(n) = raw.max_pending_accept_reset_streams {
        limits.max_pending_accept_reset_streams = n;
    }
    if let Some(n) = raw.max_local_error_reset_streams {
        limits.max_local_error_reset_streams = n;
    }
    if let Some(h2c) = raw.h2c {
        limits.h2c = h2c;
    }
    Ok(limits)
}

/// Parses and checks one SSL object (its JSON text), decrypting its key
/// with `keyring`; `Ok(None)` for an object that is not for the edge (a
/// `"type": "client"` one, for upstream mTLS) or is disabled (`status` 0).
///
/// # Errors
/// What is wrong, naming the field: not JSON, no name, a PEM that does not
/// parse, a key that does not match the certificate, an expired
/// certificate, or a field extplug cannot honour.
pub fn parse_ssl(text: &str, keyring: &Keyring) -> Result<Option<Ssl>, String> {
    let raw: RawSsl = from_text(text)?;
    let id = match raw.id {
        Some(id) => id_text(id, "id")?,
        None => return Err("missing field `id`".into()),
    };
    match raw.kind.as_deref() {
        None | Some("server") => {}
        Some("client") => return Ok(None),
        Some(other) => return Err(format!("`type` {other:?} must be \"server\" or \"client\"")),
    }
    match raw.status {
        None | Some(1) => {}
        Some(0) => return Ok(None),
        Some(n) => return Err(format!("`status` {n} must be 1 (enabled) or 0 (disabled)")),
    }
    if raw.certs.is_some_and(|c| !c.is_empty()) || raw.keys.is_some_and(|k| !k.is_empty()) {
        return Err("`certs`/`keys` (more certificates for the same names) are not supported by extplug: one `cert` and `key` per object".into());
    }
    if raw.client.is_some() {
        return Err("`client` (verifying client certificates) is not supported by extplug: serving without it would let in clients it should refuse".into());
    }
    if let Some(p) = raw.ssl_protocols.filter(|p| !p.is_empty()) {
        let both = p.iter().any(|v| v == "TLSv1.2") && p.iter().any(|v| v == "TLSv1.3");
        if !both {
            return Err(format!(
                "`ssl_protocols` {p:?}: extplug serves TLSv1.2 and TLSv1.3 on every name; a per-object choice is not supported"
            ));
        }
    }
    let names: Vec<String> = match (raw.snis, raw.sni) {
        (Some(snis), None) if !snis.is_empty() => snis,
        (None, Some(sni)) => vec![sni],
        (Some(_), None) => return Err("`snis` is empty".into()),
        (None, None) => return Err("missing field `snis` (or `sni`)".into()),
        (Some(_), Some(_)) => return Err("has both `sni` and `snis`; use one".into()),
    };
    let mut snis = Vec::with_capacity(names.len());
    for name in &names {
        snis.push(HostPattern::parse(name).map_err(|e| format!("`snis`: {e}"))?);
    }
    let key_pem = keyring.decrypt_key(&raw.key)?;
    let (key, not_after) = certified_key(&raw.cert, &key_pem)?;
    let now = unix_now();
    if not_after <= now {
        return Err(format!(
            "`cert` expired at {} (Unix time {not_after})",
            utc(not_after)
        ));
    }
    Ok(Some(Ssl {
        id,
        snis,
        key,
        not_after,
    }))
}

/// The chain in `cert` (PEM, the leaf first) with the key in `key` (PEM),
/// checked to belong together; and the leaf's expiry (Unix time).
///
/// # Errors
/// The PEM does not parse, the key is of a kind TLS cannot sign with, or it
/// is not the certificate's.
pub fn certified_key(cert: &str, key: &str) -> Result<(Arc<CertifiedKey>, i64), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`cert` is not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("`cert` holds no PEM certificate".into());
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("`cert`: the first certificate does not parse: {e}"))?;
    let not_after = parsed.validity().not_after.timestamp();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("`key` is not a PEM private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("`key` cannot sign for TLS: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err("`key` is not the key of `cert`'s first certificate".into()),
    }
    Ok((Arc::new(certified), not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `names` and its key, PEM; `days` of validity left.
    pub(crate) fn make_cert(names: &[&str], days: i64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// APISIX's encryption of a key: AES-128-CBC, key and IV `k`, PKCS#7,
    /// base64.
    fn encrypt(k: &[u8; 16], plain: &str) -> String {
        use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
        let sealed = cbc::Encryptor::<aes::Aes128>::new(k.into(), k.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plain.as_bytes());
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(sealed)
    }

    fn object(id: &str, snis: &[&str], cert: &str, key: &str) -> String {
        serde_json::json!({"id": id, "snis": snis, "cert": cert, "key": key}).to_string()
    }

    #[test]
    fn an_ssl_object_parses_with_its_names_and_expiry() {
        let (cert, key) = make_cert(&["a.example", "*.b.example"], 90);
        let ssl = parse_ssl(
            &object("s1", &["a.example", "*.B.example"], &cert, &key),
            &Keyring::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ssl.id, "s1");
        assert_eq!(ssl.snis[1], HostPattern::Wildcard(".b.example".into()));
        let left = ssl.not_after - unix_now();
        assert!((89 * 86400..=90 * 86400 + 60).contains(&left), "{left}");
        let one = serde_json::json!({"id": 7, "sni": "x.example", "cert": cert, "key": key, "labels": {"a": "b"}});
        assert_eq!(
            parse_ssl(&one.to_string(), &Keyring::default())
                .unwrap()
                .unwrap()
                .id,
            "7"
        );
    }

    #[test]
    fn bad_objects_are_refused_naming_the_field() {
        let (cert, key) = make_cert(&["a.example"], 90);
        let (_, other_key) = make_cert(&["a.example"], 90);
        let (old_cert, old_key) = make_cert(&["a.example"], -1);
        let ring = Keyring::default();
        let cases = [
            (
                object("s", &["a.example"], &cert, &other_key),
                "is not the key of",
            ),
            (
                object("s", &["a.example"], "nope", &key),
                "holds no PEM certificate",
            ),
            (
                object(
                    "s",
                    &["a.example"],
                    &cert,
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ),
                "`key`",
            ),
            (object("s", &["a.example"], &old_cert, &old_key), "expired"),
            (object("s", &["a..example"], &cert, &key), "`snis`"),
            (object("s", &[], &cert, &key), "`snis` is empty"),
            (
                object("s", &["a.example"], &cert, "bm90IGEga2V5IGF0IGFsbA=="),
                "none of the 2 keys",
            ),
            (
                r#"{"id":"s","cert":"","key":"","snis":["a"],"client":{"ca":"x"}}"#.to_owned(),
                "`client`",
            ),
            (
                r#"{"id":"s","cert":"","key":"","sni":"a","bogus":1}"#.to_owned(),
                "unknown field `bogus`",
            ),
        ];
        for (text, want) in cases {
            let err = parse_ssl(&text, &ring).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        let client = serde_json::json!({"id": "c", "type": "client", "cert": cert, "key": key});
        assert!(
            parse_ssl(&client.to_string(), &ring).unwrap().is_none(),
            "not for the edge"
        );
    }

    #[test]
    fn encrypted_keys_decrypt_with_the_keyring() {
        let (cert, key) = make_cert(&["a.example"], 90);
        // APISIX's default keyring's second key, then a configured one.
        let sealed = encrypt(b"edd1c9f0985e76a2", &key);
        let ssl = parse_ssl(
            &object("s", &["a.example"], &cert, &sealed),
            &Keyring::default(),
        );
        assert!(ssl.unwrap().is_some());
        let ring = Keyring::parse(&["0123456789abcdef".to_owned()]).unwrap();
        let sealed = encrypt(b"0123456789abcdef", &key);
        assert_eq!(ring.decrypt_key(&sealed).unwrap(), key);
        assert!(
            Keyring::default().decrypt_key(&sealed).is_err(),
            "another ring"
        );
        assert!(Keyring::parse(&["short".to_owned()]).is_err());
    }

    /// The same bytes as OpenSSL's `enc -aes-128-cbc` (what APISIX's
    /// `resty.aes` calls), when the `openssl` command is there.
    #[test]
    fn the_encryption_is_openssls() {
        let k = b"qeddd145sfvddff3";
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        let out = std::process::Command::new("openssl")
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
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"-----BEGIN x")?;
                child.wait_with_output()
            });
        let Ok(out) = out else {
            eprintln!("no openssl command: skipped");
            return;
        };
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            encrypt(k, "-----BEGIN x")
        );
    }

    #[test]
    fn tls_and_http2_sections_are_checked() {
        let raw = |j: &str| serde_json::from_str::<RawTls>(j).unwrap();
        let t = tls_conf(raw(
            r#"{"listen":"127.0.0.1:0","fallback_sni":"A.example"}"#,
        ))
        .unwrap();
        assert_eq!(t.fallback_sni.as_deref(), Some("a.example"));
        assert_eq!(t.handshake_timeout, Duration::from_secs(10));
        assert_eq!(t.keyring, Keyring::default());
        assert!(tls_conf(raw(r#"{"listen":"x"}"#)).is_err());
        assert!(tls_conf(raw(r#"{"listen":"127.0.0.1:0","fallback_sni":"*.a"}"#)).is_err());
        assert!(tls_conf(raw(r#"{"listen":"127.0.0.1:0","keyring":[]}"#)).is_err());
        let h = |j: &str| http2_limits(Some(serde_json::from_str(j).unwrap()));
        assert_eq!(h("{}").unwrap(), Http2Limits::default());
        assert!(h(r#"{"max_concurrent_streams":0}"#).is_err());
        assert!(h(r#"{"initial_stream_window_size":10}"#).is_err());
        assert!(!h(r#"{"h2c":false}"#).unwrap().h2c);
    }
}
