//! Courier: a durable MQTT 3.1.1 and 5.0 broker for mobile messaging.
//!
//! Start with [`Server::start`]. The path of a message: [`listener`] accepts
//! a socket, [`connection`] frames it with [`codec`] and drives the
//! client's [`session`]; a PUBLISH goes to [`Broker::publish`], which asks the
//! [`router`] who is subscribed, queues a delivery in each session (writing
//! it to the [`store`] if the session is persistent) and wakes their
//! connections; the publisher's acknowledgement waits for the [`commit`]
//! (group fsync). See docs/ARCHITECTURE.md.

#![warn(missing_docs)]

pub mod acl;
pub mod auth;
pub mod broker;
pub mod codec;
pub mod commit;
pub mod config;
pub mod config_hooks;
pub mod connection;
mod data_dir;
pub mod feed;
pub mod hooks;
pub mod keepalive;
pub mod listener;
pub mod logs;
pub mod message;
pub mod metrics;
pub mod redb_store;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
mod timers;
pub mod topic;

pub use broker::Broker;
pub use config::Config;
pub use hooks::{ClientInfo, Event, Hooks};
pub use message::Message;
pub use server::Server;
