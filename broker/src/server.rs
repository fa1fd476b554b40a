//! A running broker: the [`Broker`] plus its listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::broker::{Broker, BrokerError};
use crate::commit::SyncFailed;
use crate::config::{Config, ConfigError, ListenerKind};
use crate::hooks::Hooks;
use crate::listener;
pub use crate::listener::ListenerError;
use crate::namespace::{Namespace, NamespaceError};
use crate::redb_store::RedbStore;
use crate::store::Store;

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker could not open its store.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A listener could not start.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// A namespace could not be claimed.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// The admin listener could not start.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

/// Chooses the parts of a [`Server`]; whatever is not given is built from
/// the configuration.
pub struct ServerBuilder {
    config: Config,
    hooks: Option<Arc<dyn Hooks>>,
    store: Option<Arc<dyn Store>>,
    namespaces: Vec<(String, Arc<dyn Namespace>)>,
}

impl ServerBuilder {
    /// Authentication and authorization (default: the configured password
    /// file and ACL).
    pub fn hooks(mut self, hooks: Arc<dyn Hooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The store (default: the embedded redb store in `data_dir`).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Hands the topics at and below `prefix` to `handler` (see
    /// [`Namespace`]), before any client can connect.
    pub fn namespace(mut self, prefix: &str, handler: Arc<dyn Namespace>) -> Self {
        self.namespaces.push((prefix.to_owned(), handler));
        self
    }

    /// Opens what was not given, restores the store and starts every
    /// configured listener.
    pub async fn start(self) -> Result<Server, ServerError> {
        self.config.validate()?;
        let hooks = match self.hooks {
            Some(h) => h,
            None => Broker::config_hooks(&self.config)?,
        };
        let store = match self.store {
            Some(s) => s,
            None => RedbStore::open_with(&self.config.data_dir, self.config.staging_limits())
                .map_err(BrokerError::from)?,
        };
        let broker = Broker::open_with(self.config, hooks, store)?;
        for (prefix, handler) in self.namespaces {
            broker.claim_namespace(&prefix, handler)?;
        }
        Server::serve(broker).await
    }
}

/// The broker with its listeners running.
pub struct Server {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Bound addresses, in configuration order.
    pub addrs: Vec<(ListenerKind, SocketAddr)>,
    /// The admin listener's address, if `[admin] bind` is set.
    pub admin_addr: Option<SocketAddr>,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the store and starts every configured listener.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let broker = Broker::open(config)?;
        Self::serve(broker).await
    }

    /// Starts with the embedder's hooks.
    pub async fn start_with_hooks(
        config: Config,
        hooks: Arc<dyn Hooks>,
    ) -> Result<Server, ServerError> {
        Self::builder(config).hooks(hooks).start().await
    }

    /// A server to start with parts of the embedder's choosing.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            hooks: None,
            store: None,
            namespaces: Vec::new(),
        }
    }

    /// Starts every configured listener for a broker the embedder opened
    /// (with [`Broker::open_with`]) and prepared (claimed namespaces,
    /// restored its own state) before any client can connect.
    pub async fn serve(broker: Arc<Broker>) -> Result<Server, ServerError> {
        Self::serve_with(broker, crate::admin::Extension::new()).await
    }

    /// As [`Server::serve`], with the embedder's routes and metrics on the
    /// admin listener.
    pub async fn serve_with(
        broker: Arc<Broker>,
        admin: crate::admin::Extension,
    ) -> Result<Server, ServerError> {
        let mut addrs = Vec::new();
        let mut accept_loops = Vec::new();
        for l in broker.config.listeners.clone() {
            let (addr, task) = listener::start(broker.clone(), &l).await?;
            addrs.push((l.kind, addr));
            accept_loops.push(task);
        }
        let mut admin_addr = None;
        if let Some((addr, task)) = crate::admin::start(&broker, admin).await? {
            admin_addr = Some(addr);
            accept_loops.push(task);
        }
        Ok(Server {
            broker,
            addrs,
            admin_addr,
            accept_loops,
        })
    }

    /// First bound address of a listener kind.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.addrs.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    /// Stops the listeners, closes every connection and flushes the store.
    /// Once the `Server` is dropped too, the store's files are released.
    pub async fn shutdown(&mut self) -> Result<(), SyncFailed> {
        let r = self.broker.shutdown().await;
        for task in self.accept_loops.drain(..) {
            let _ = task.await;
        }
        r
    }
}

/// What a binary does once its server is up: prints the "listening"
/// lines tools wait for, runs until SIGINT or SIGTERM, then shuts down and
/// flushes the store.
pub async fn serve_until_terminated(server: &mut Server) -> Result<(), SyncFailed> {
    for (kind, addr) in &server.addrs {
        println!("courier listening {kind:?} {addr}");
    }
    if let Some(addr) = server.admin_addr {
        println!("courier admin API on http://{addr}");
    }
    terminated().await;
    tracing::info!("shutting down");
    server.shutdown().await?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere): when a binary running
/// the broker should shut it down.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logs to stderr (stdout carries only the "listening" lines that tools
/// wait for), at the level `RUST_LOG` says (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
