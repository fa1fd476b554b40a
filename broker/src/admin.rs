//! The admin listener: an HTTP API for operators on its own socket
//! (`[admin] bind`, loopback in the shipped configuration). Every request
//! must carry the admin key (`[admin] key_file`) as a bearer token; one
//! without it gets 401. The core serves `/metrics` (Prometheus text),
//! `/v1/status` and `/v1/sessions`; an application adds its own routes and
//! metrics through [`Extension`]. docs/admin-api.yaml describes it all.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::broker::Broker;
use crate::metrics::Metrics;

/// The admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The key file could not be read or created.
    #[error("admin key file {path}: {source}")]
    Key {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The address could not be bound.
    #[error("admin listener {bind}: {source}")]
    Bind {
        /// The configured address.
        bind: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What an application adds to the admin listener: routes (each behind
/// the same key) and collectors for `/metrics`.
#[derive(Default)]
pub struct Extension {
    routes: Router,
    collectors: Vec<Box<dyn Collector>>,
}

impl Extension {
    /// Nothing added.
    pub fn new() -> Extension {
        Extension::default()
    }

    /// Adds routes (their paths must not clash with the core's).
    pub fn routes(mut self, routes: Router) -> Extension {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Adds metrics, encoded at each scrape.
    pub fn collector(mut self, c: Box<dyn Collector>) -> Extension {
        self.collectors.push(c);
        self
    }
}

/// An API error: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// 404 with a message.
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, what.into())
    }

    /// 400 with a message.
    pub fn bad_request(what: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, what.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Starts the admin listener if `[admin] bind` is set: its address and
/// task, which ends when the broker shuts down.
pub(crate) async fn start(
    broker: &Arc<Broker>,
    ext: Extension,
) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, AdminError> {
    let Some(bind) = broker.config.admin.bind.clone() else {
        return Ok(None);
    };
    let path = broker.config.admin_key_file();
    let key = crate::auth::load_or_create_secret(&path)
        .map_err(|source| AdminError::Key { path, source })?;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|source| AdminError::Bind {
            bind: bind.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AdminError::Bind {
        bind: bind.clone(),
        source,
    })?;

    let mut registry = Registry::default();
    registry.register_collector(Box::new(CoreMetrics {
        broker: Arc::downgrade(broker),
        started: Instant::now(),
    }));
    registry.register(
        "courier_store_commit_seconds",
        "Time each store commit took, applying its batch and the fsync",
        broker.commit_latency(),
    );
    for c in ext.collectors {
        registry.register_collector(c);
    }
    let core = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{client_id}/kick", post(kick))
        .route("/v1/store/shred", post(shred))
        .with_state(Core {
            broker: Arc::downgrade(broker),
            registry: Arc::new(registry),
            started: Instant::now(),
        });
    let key = Arc::new(ring::digest::digest(&ring::digest::SHA256, &key));
    let app = core
        .merge(ext.routes)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(
            (key, Arc::downgrade(broker)),
            authorize,
        ));
    let mut stop = broker.shutdown_signal();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    tracing::info!(%addr, "admin listener up");
    Ok(Some((addr, task)))
}

type KeyState = (Arc<ring::digest::Digest>, Weak<Broker>);

/// Lets a request through only with `Authorization: Bearer <admin key>`.
async fn authorize(State((key, broker)): State<KeyState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| ring::digest::digest(&ring::digest::SHA256, k.trim().as_bytes()));
    // Comparing digests: the time taken says nothing about the key.
    if given.is_some_and(|g| g.as_ref() == key.as_ref().as_ref()) {
        return next.run(req).await;
    }
    if let Some(b) = broker.upgrade() {
        Metrics::inc(&b.metrics.admin_refused);
    }
    tracing::warn!(path = %req.uri().path(), "admin request without a valid key refused");
    let mut r = ApiError(
        StatusCode::UNAUTHORIZED,
        "a valid admin key is required (Authorization: Bearer <key>)".into(),
    )
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

#[derive(Clone)]
struct Core {
    broker: Weak<Broker>,
    registry: Arc<Registry>,
    started: Instant,
}

impl Core {
    fn broker(&self) -> Result<Arc<Broker>, ApiError> {
        self.broker.upgrade().ok_or(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is shutting down".into(),
        ))
    }
}

async fn metrics(State(c): State<Core>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, &c.registry) {
        return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

async fn status(State(c): State<Core>) -> Result<Json<serde_json::Value>, ApiError> {
    let b = c.broker()?;
    Ok(Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": c.started.elapsed().as_secs(),
        "connections": b.metrics.connections_current.load(Ordering::Relaxed),
        "sessions": b.session_count(),
    })))
}

async fn sessions(
    State(c): State<Core>,
) -> Result<Json<Vec<crate::broker::SessionInfo>>, ApiError> {
    Ok(Json(c.broker()?.sessions_info()))
}

async fn kick(
    State(c): State<Core>,
    Path(client_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !c.broker()?.disconnect(&client_id) {
        return Err(ApiError::not_found(format!(
            "no connection for client id {client_id:?}"
        )));
    }
    tracing::info!(client_id, "connection closed by an administrator");
    Ok(Json(serde_json::json!({ "kicked": client_id })))
}

async fn shred(State(c): State<Core>) -> Result<Json<serde_json::Value>, ApiError> {
    let b = c.broker()?;
    match b.shred().await {
        Ok(Some(s)) => Ok(Json(serde_json::json!({
            "shredded": true,
            "took_ms": s.took.as_millis() as u64,
            "bytes_before": s.bytes_before,
            "bytes_after": s.bytes_after,
        }))),
        Ok(None) => Ok(Json(serde_json::json!({ "shredded": false }))),
        Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// The broker's counters and gauges, read at each scrape.
#[derive(Debug)]
struct CoreMetrics {
    broker: Weak<Broker>,
    started: Instant,
}

impl Collector for CoreMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(b) = self.broker.upgrade() else {
            return Ok(());
        };
        for (name, value) in b.metrics.snapshot() {
            if name == "connections_current" {
                continue;
            }
            // The encoder adds `_total` to counters.
            let help = crate::metrics::help(name);
            let name = format!("courier_{}", name.strip_suffix("_total").unwrap_or(name));
            counter(&mut enc, &name, help, value)?;
        }
        let sessions = b.sessions_info();
        let online = sessions.iter().filter(|s| s.online).count();
        let queued: usize = sessions.iter().map(|s| s.queued).sum();
        let inflight: usize = sessions.iter().map(|s| s.inflight).sum();
        let current = b.metrics.connections_current.load(Ordering::Relaxed);
        gauge(
            &mut enc,
            "courier_connections",
            "Connections open now",
            current as i64,
        )?;
        gauge(
            &mut enc,
            "courier_sessions",
            "Sessions, online and offline",
            sessions.len() as i64,
        )?;
        gauge(
            &mut enc,
            "courier_sessions_online",
            "Sessions with a connection attached",
            online as i64,
        )?;
        gauge(
            &mut enc,
            "courier_queued_deliveries",
            "Deliveries waiting in every session's queue",
            queued as i64,
        )?;
        gauge(
            &mut enc,
            "courier_inflight_deliveries",
            "Deliveries sent and not yet acknowledged",
            inflight as i64,
        )?;
        counter(
            &mut enc,
            "courier_store_syncs",
            "Store commits (each one fsync)",
            b.syncs(),
        )?;
        gauge(
            &mut enc,
            "courier_uptime_seconds",
            "Seconds since the admin listener started",
            self.started.elapsed().as_secs() as i64,
        )
    }
}

/// Encodes one counter.
pub fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// Encodes one gauge.
pub fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}
