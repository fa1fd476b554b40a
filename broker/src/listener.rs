//! Listening sockets: plain TCP, TLS (rustls), WebSocket and secure
//! WebSocket (subprotocol `mqtt`), each feeding [`crate::connection::serve`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::broker::Broker;
use crate::config::{ListenerConfig, ListenerKind};
use crate::connection::{serve, Stream, Transport};
use crate::metrics::Metrics;

/// A listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Binding the address failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Certificate or key could not be loaded.
    #[error("TLS setup for {addr}: {reason}")]
    Tls {
        /// The listener address.
        addr: String,
        /// What failed.
        reason: String,
    },
}

/// A [`Transport`] over a WebSocket: each binary message carries bytes of
/// the MQTT stream (packets may span messages).
pub struct WsTransport<S>(WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<S> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        loop {
            match self.0.next().await {
                Some(Ok(WsMessage::Binary(b))) => {
                    if b.is_empty() {
                        continue;
                    }
                    buf.extend_from_slice(&b);
                    return Ok(b.len());
                }
                Some(Ok(WsMessage::Close(_))) | None => return Ok(0),
                Some(Ok(WsMessage::Text(_))) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "text frame on MQTT WebSocket",
                    ))
                }
                Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0
            .send(WsMessage::Binary(bytes::Bytes::copy_from_slice(data)))
            .await
            .map_err(std::io::Error::other)
    }

    async fn close(&mut self) {
        // RFC 6455 closing handshake: send Close, then read until the
        // peer's Close (or EOF), so a client still writing sees a clean end
        // rather than a reset.
        let _ = self.0.close(None).await;
        let drain = async { while let Some(Ok(_)) = self.0.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

fn tls_acceptor(cfg: &ListenerConfig) -> Result<TlsAcceptor, ListenerError> {
    let err = |reason: String| ListenerError::Tls {
        addr: cfg.bind.clone(),
        reason,
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| err(format!("{}: {e}", p.display())));
    let cert_path = cfg.cert.as_deref().ok_or_else(|| err("no cert".into()))?;
    let key_path = cfg.key.as_deref().ok_or_else(|| err("no key".into()))?;
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("certificate: {e}")))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| err(format!("key: {e}")))?
        .ok_or_else(|| err("no private key in key file".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts the WebSocket upgrade, agreeing to the `mqtt` subprotocol.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
) -> Result<WebSocketStream<S>, tokio_tungstenite::tungstenite::Error> {
    // The error type is fixed by tungstenite's callback signature.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let wants_mqtt = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "mqtt");
        if wants_mqtt {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    tokio_tungstenite::accept_hdr_async(io, callback).await
}

/// Binds `cfg` and spawns its accept loop, which ends at shutdown. Returns
/// the bound address and the loop's task.
pub async fn start(
    broker: Arc<Broker>,
    cfg: &ListenerConfig,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ListenerError> {
    let tls = match cfg.kind {
        ListenerKind::Tls | ListenerKind::Wss => Some(tls_acceptor(cfg)?),
        _ => None,
    };
    let listener = TcpListener::bind(&cfg.bind)
        .await
        .map_err(|source| ListenerError::Bind {
            addr: cfg.bind.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ListenerError::Bind {
            addr: cfg.bind.clone(),
            source,
        })?;
    let kind = cfg.kind;
    tracing::info!(%addr, ?kind, "listening");
    let mut shutdown = broker.shutdown_signal();
    let task = tokio::spawn(async move {
        // Failed accepts since the last warning, and when that was.
        let (mut failed, mut warned) = (0u64, None::<tokio::time::Instant>);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            match accepted {
                Ok((sock, peer)) => {
                    let b = broker.clone();
                    let _ = sock.set_nodelay(true);
                    // Plain TCP gets a task sized for TCP alone; the TLS and
                    // WebSocket set-up futures are much larger.
                    if kind == ListenerKind::Tcp {
                        tokio::spawn(serve(b, sock, peer));
                    } else {
                        tokio::spawn(handle(b, sock, peer, kind, tls.clone()));
                    }
                }
                Err(e) => {
                    // Usually out of file descriptors: back off, don't spin;
                    // the waiting clients stay in the kernel's backlog. One
                    // warning per 10 s, not one per attempt.
                    Metrics::inc(&broker.metrics.accept_errors);
                    failed += 1;
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, failed, %addr, "accept failed; retrying every 50 ms");
                        (failed, warned) = (0, Some(tokio::time::Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((addr, task))
}

async fn handle(
    broker: Arc<Broker>,
    sock: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
) {
    let limit = Duration::from_secs(broker.config.limits.connect_timeout_secs);
    match (kind, tls) {
        (ListenerKind::Tcp, _) => serve(broker, sock, peer).await,
        (ListenerKind::Ws, _) => match tokio::time::timeout(limit, upgrade(sock)).await {
            Ok(Ok(ws)) => serve(broker, WsTransport(ws), peer).await,
            Ok(Err(e)) => tracing::info!(%peer, error = %e, "WebSocket upgrade failed"),
            Err(_) => tracing::info!(%peer, "WebSocket upgrade timed out"),
        },
        (ListenerKind::Tls, Some(acc)) => match tokio::time::timeout(limit, acc.accept(sock)).await
        {
            Ok(Ok(s)) => serve(broker, Stream(s), peer).await,
            Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
        },
        (ListenerKind::Wss, Some(acc)) => {
            let up = async {
                let s = acc.accept(sock).await.map_err(|e| e.to_string())?;
                upgrade(s).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(limit, up).await {
                Ok(Ok(ws)) => serve(broker, WsTransport(ws), peer).await,
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "secure WebSocket setup failed"),
                Err(_) => tracing::info!(%peer, "secure WebSocket setup timed out"),
            }
        }
        _ => tracing::error!("TLS listener without acceptor"),
    }
}
