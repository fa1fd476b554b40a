//! The HTTPS clients: hyper over rustls (ring), trusting the public roots
//! and, if given, one more CA (a local fake's).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::PushError;

/// A pooled client.
pub(crate) type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, PushError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| PushError::File {
            path: path.to_owned(),
            source,
        })?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| PushError::Config(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| PushError::Config(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PushError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// APNs: HTTP/2 only, one long-lived connection kept alive by pings.
pub(crate) fn http2(ca_file: Option<&std::path::Path>) -> Result<HttpsClient, PushError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls(ca_file)?)
        .https_only()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_only(true)
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_timeout(Duration::from_secs(20))
        .http2_keep_alive_while_idle(true)
        .pool_idle_timeout(Duration::from_secs(3600))
        .build(connector))
}

/// FCM and its token endpoint: HTTP/2 or HTTP/1.1, as the server offers.
pub(crate) fn http(ca_file: Option<&std::path::Path>) -> Result<HttpsClient, PushError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls(ca_file)?)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}
