//! The connector of an upstream's connections, clear text or TLS
//! (hyper-rustls around hyper-util's `HttpConnector`): one place that
//! builds it, for requests and for `https` health probes.

use crate::host::config::{client_config_or_refusing, plain_client_config, UpstreamTls};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName;

/// `http` wrapped for `tls` (`None`: clear text, `http` URIs only). The
/// TLS server name is `sni_host`'s host when given (`upstream_host`, a
/// probe's `host`), else the URI's (the node's; none for an address).
pub(super) fn connector(
    tls: Option<&UpstreamTls>,
    sni_host: Option<&str>,
    mut http: HttpConnector,
) -> HttpsConnector<HttpConnector> {
    // `https` URIs go through it too, to the TLS layer around it.
    http.enforce_http(false);
    let Some(tls) = tls else {
        return HttpsConnectorBuilder::new()
            .with_tls_config(plain_client_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
    };
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(client_config_or_refusing(tls))
        .https_only();
    let sni = sni_host
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .and_then(|a| ServerName::try_from(a.host().trim_matches(['[', ']']).to_owned()).ok());
    match sni {
        Some(name) => builder
            .with_server_name_resolver(FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(http),
        None => builder.enable_http1().wrap_connector(http),
    }
}
