//! A running broker: the [`Broker`] plus its listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::broker::{Broker, BrokerError};
use crate::commit::SyncFailed;
use crate::config::{Config, ConfigError, ListenerKind};
use crate::hooks::Hooks;
use crate::listener::{self, ListenerError};

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
}

/// The broker with its listeners running.
pub struct Server {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Bound addresses, in configuration order.
    pub addrs: Vec<(ListenerKind, SocketAddr)>,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the store and starts every configured listener.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let broker = Broker::open(config)?;
        Self::with_broker(broker).await
    }

    /// Starts with the embedder's hooks.
    pub async fn start_with_hooks(
        config: Config,
        hooks: Arc<dyn Hooks>,
    ) -> Result<Server, ServerError> {
        config.validate()?;
        let broker = Broker::open_with_hooks(config, hooks)?;
        Self::with_broker(broker).await
    }

    async fn with_broker(broker: Arc<Broker>) -> Result<Server, ServerError> {
        let mut addrs = Vec::new();
        let mut accept_loops = Vec::new();
        for l in broker.config.listeners.clone() {
            let (addr, task) = listener::start(broker.clone(), &l).await?;
            addrs.push((l.kind, addr));
            accept_loops.push(task);
        }
        Ok(Server {
            broker,
            addrs,
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
