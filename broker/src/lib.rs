//! Courier: a durable MQTT 3.1.1 and 5.0 broker for mobile messaging.
//!
//! Start with [`Server::start`], or [`Server::builder`] to bring your own
//! [`Hooks`] (asynchronous authentication naming a [`hooks::Principal`],
//! authorization), [`store::Store`], and [`namespace::Namespace`] handlers
//! that own a topic prefix. In-process code reaches a running broker
//! through [`Broker::deliver`] and [`Broker::publish_tracked`] (with a
//! [`tracker::Tracker`] told how each delivery ended), [`Broker::link`]
//! (a session without a socket), [`Broker::logs`] (named durable logs) and
//! [`Broker::feed`] (lossless lifecycle). The path of a message: a listener
//! accepts a socket, a connection frames it and drives the client's
//! session; a PUBLISH goes to its namespace's handler or to
//! [`Broker::publish`], which finds who is subscribed, queues a delivery
//! in each session (writing it to the store if the session is persistent)
//! and wakes their connections; the publisher's acknowledgement waits for
//! the [`commit`] (group fsync). See docs/ARCHITECTURE.md.

#![warn(missing_docs)]

// The embedder's API.
pub mod admin;
pub mod auth;
pub mod broker;
pub mod commit;
pub mod config;
pub mod feed;
pub mod hooks;
pub mod link;
pub mod logs;
pub mod message;
pub mod metrics;
pub mod namespace;
pub mod redb_store;
pub mod server;
pub mod store;
pub mod topic;
pub mod tracker;

// Internals. Public only for the fuzz targets, the micro-benchmarks and
// the session model test; not part of the API.
#[doc(hidden)]
pub mod codec;
#[doc(hidden)]
pub mod connection;
#[doc(hidden)]
pub mod router;
#[doc(hidden)]
pub mod session;

mod acks;
mod acl;
mod config_hooks;
mod data_dir;
mod keepalive;
mod listener;
mod shred;
mod staging;
mod sys;
mod timers;

pub use broker::Broker;
pub use config::Config;
pub use hooks::{ClientInfo, Event, Hooks};
pub use message::Message;
pub use server::Server;
