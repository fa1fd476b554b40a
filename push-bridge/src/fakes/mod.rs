//! Local fakes of APNs and FCM for tests and for trying the bridge: real
//! HTTPS servers (HTTP/2 for APNs) with a throwaway CA that only the
//! client under test trusts, checking requests against what Apple and
//! Google document (docs/PUSH.md), answering scripted errors per device
//! token, and recording what they accepted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use parking_lot::Mutex;
use tokio::sync::Notify;

pub mod apns;
pub mod fcm;

/// A scripted answer for one device token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The HTTP status.
    pub status: u16,
    /// The provider's reason (APNs `reason`, FCM `errorCode`).
    pub reason: String,
    /// A `Retry-After` header, seconds.
    pub retry_after: Option<u64>,
    /// APNs 410's `timestamp` (Unix ms).
    pub timestamp: Option<u64>,
    /// Answer so this many times, then accept (None: always).
    pub times: Option<u32>,
}

impl Script {
    /// `status` with `reason`, always.
    pub fn error(status: u16, reason: &str) -> Script {
        Script {
            status,
            reason: reason.into(),
            retry_after: None,
            timestamp: None,
            times: None,
        }
    }

    /// Only the first `n` times.
    pub fn times(mut self, n: u32) -> Script {
        self.times = Some(n);
        self
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Script {
        self.retry_after = Some(secs);
        self
    }

    /// With APNs 410's timestamp.
    pub fn timestamp(mut self, ms: u64) -> Script {
        self.timestamp = Some(ms);
        self
    }
}

/// What a fake accepted or refused, in order.
#[derive(Debug, Clone)]
pub struct Received {
    /// The device token.
    pub token: String,
    /// Lower-case header names and values.
    pub headers: HashMap<String, String>,
    /// The JSON body.
    pub body: serde_json::Value,
    /// The status it was answered with.
    pub status: u16,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// The record of a fake, shared with its server.
#[derive(Default)]
pub(crate) struct Log {
    pub received: Mutex<Vec<Received>>,
    pub scripts: Mutex<HashMap<String, Script>>,
    pub changed: Notify,
}

impl Log {
    /// The scripted answer for `token`, if any is left.
    pub fn scripted(&self, token: &str) -> Option<Script> {
        let mut s = self.scripts.lock();
        let script = s.get_mut(token)?;
        match &mut script.times {
            Some(0) => None,
            Some(n) => {
                *n -= 1;
                Some(script.clone())
            }
            None => Some(script.clone()),
        }
    }

    pub fn record(&self, r: Received) {
        self.received.lock().push(r);
        self.changed.notify_waiters();
    }

    /// Waits (up to `within`) until `pick` finds what it wants in the log.
    pub async fn wait_for<T>(
        &self,
        within: std::time::Duration,
        mut pick: impl FnMut(&[Received]) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = pick(&self.received.lock()) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pick(&self.received.lock());
            }
        }
    }
}

/// A throwaway CA and a server certificate for `localhost` and
/// `127.0.0.1`, signed by it.
pub struct TestCa {
    /// The CA certificate (PEM): what the client under test trusts.
    pub ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    /// A new one.
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        TestCa {
            ca_pem: ca.pem(),
            cert: cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// Writes the CA certificate to `dir/name`; its path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.ca_pem).expect("write the CA");
        p
    }

    fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .expect("server certificate");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

type Handler = Arc<
    dyn Fn(
            Request<Bytes>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// Serves `handler` over TLS on `addr` (port 0: any): HTTP/2 only when
/// `h2_only` (ALPN `h2`), else HTTP/1.1 or HTTP/2. Counts connections.
pub(crate) async fn serve(
    ca: &TestCa,
    addr: SocketAddr,
    h2_only: bool,
    handler: Handler,
    connections: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<SocketAddr> {
    let alpn: &[&[u8]] = if h2_only {
        &[b"h2"]
    } else {
        &[b"h2", b"http/1.1"]
    };
    let acceptor = ca.acceptor(alpn);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = hyper_util::rt::TokioIo::new(tls);
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(handler(Request::from_parts(parts, body)).await)
                    }
                });
                if h2_only {
                    if !negotiated_h2 {
                        return; // APNs speaks HTTP/2 only.
                    }
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                } else {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                }
            });
        }
    });
    Ok(local)
}

pub(crate) fn json(
    status: u16,
    headers: &[(&str, String)],
    body: serde_json::Value,
) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
