//! TLS to an upstream's nodes (`"scheme": "https"` and `tls`): the fields
//! checked, and the rustls client configuration they make, built at load
//! (so that a bad PEM refuses the upstream with the field named) and again
//! by the proxy for its connections.
//!
//! The roots for `verify: true` without `ca` are the system's
//! (rustls-native-certs: the operating system's store, `SSL_CERT_FILE`
//! and `SSL_CERT_DIR` honoured), read once per process: an operator
//! trusts what the machine trusts, as with nginx's bundle, and a CA
//! change comes with the system's updates rather than with a new build
//! (webpki-roots would compile Mozilla's list in).

use super::model::UpstreamTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use std::sync::{Arc, LazyLock};

/// `upstream.tls`, APISIX's fields (`client_cert`, `client_key`, `verify`)
/// and extplug's `ca`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    client_cert: Option<String>,
    client_key: Option<String>,
    /// APISIX's reference to an SSL object holding the client pair.
    client_cert_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    verify: bool,
    ca: Option<String>,
}

/// Checks `scheme` and `tls`: `Some` for `https`.
pub(super) fn upstream_tls(
    scheme: Option<&str>,
    raw: Option<RawUpstreamTls>,
) -> Result<Option<UpstreamTls>, String> {
    match scheme {
        None | Some("http") => {
            if raw.is_some() {
                return Err("`upstream.tls` needs `\"scheme\": \"https\"`".into());
            }
            return Ok(None);
        }
        Some("https") => {}
        Some(other) => {
            return Err(format!(
                "`upstream.scheme` {other:?} is not supported; \"http\" or \"https\""
            ))
        }
    }
    let Some(raw) = raw else {
        return Ok(Some(UpstreamTls::default()));
    };
    if raw.client_cert_id.is_some() {
        return Err(
            "`upstream.tls.client_cert_id` is not supported by extplug; give `client_cert` and `client_key`"
                .into(),
        );
    }
    if raw.ca.is_some() && !raw.verify {
        return Err(
            "`upstream.tls.ca` is used only with `\"verify\": true`: set it, or remove `ca`".into(),
        );
    }
    let client_cert = match (raw.client_cert, raw.client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => {
            return Err(
                "`upstream.tls.client_cert` and `upstream.tls.client_key` go together: set both or neither"
                    .into(),
            )
        }
    };
    let tls = UpstreamTls {
        verify: raw.verify,
        ca: raw.ca,
        client_cert,
    };
    client_config(&tls)?;
    Ok(Some(tls))
}

/// The process's rustls provider: `ring`, named here rather than taken
/// from rustls's process default, which depends on the features the whole
/// build enabled. rustls marks `ring`'s provider deprecated because it
/// lacks post-quantum key exchange; aws-lc-rs has it, at the cost of a C
/// library built with the proxy. Connections to upstreams stay classic
/// (X25519, P-256) for now.
fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

/// The system's root certificates, read once.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: LazyLock<RootCertStore> = LazyLock::new(|| {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    });
    &ROOTS
}

/// The rustls client configuration for `tls`.
///
/// # Errors
/// A PEM holds no certificate or key, or rustls refuses them; the message
/// names the field.
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| format!("`upstream.tls`: {e}"))?;
    let builder = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let roots = match &tls.ca {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(pem, "upstream.tls.ca")? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("`upstream.tls.ca`: {e}"))?;
                }
                roots
            }
            None => {
                let roots = system_roots().clone();
                if roots.is_empty() {
                    return Err("`upstream.tls.verify`: the system has no root certificates (install ca-certificates, or give `upstream.tls.ca`)".into());
                }
                roots
            }
        };
        builder.with_root_certificates(roots)
    };
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = certificates(cert, "upstream.tls.client_cert")?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("`upstream.tls.client_key` holds no private key: {e}"))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                format!("`upstream.tls.client_cert`/`client_key` do not go together: {e}")
            })
        }
    }
}

/// [`client_config`], or, if it fails (it was checked at load: only the
/// system's roots may have gone since), one that verifies against no root
/// at all: every handshake fails (502, logged) rather than go unverified.
pub fn client_config_or_refusing(tls: &UpstreamTls) -> ClientConfig {
    client_config(tls).unwrap_or_else(|e| {
        tracing::error!(cause = %e, "upstream TLS configuration failed: every connection will be refused");
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| plain_client_config())
    })
}

/// The configuration of a clear-text upstream's connector, which never
/// does TLS (its URIs are `http`).
pub fn plain_client_config() -> ClientConfig {
    static PLAIN: LazyLock<ClientConfig> = LazyLock::new(|| {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    });
    PLAIN.clone()
}

/// The certificates of a PEM text (`field` names it in errors).
fn certificates(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{field}` is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("`{field}` holds no certificate"));
    }
    Ok(certs)
}

/// `verify: false` (APISIX's default): any certificate is taken; the
/// handshake's signatures are still checked, so the session is with the
/// holder of the certificate's key, whoever that is.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
