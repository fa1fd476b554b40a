//! Courier's client SDK: what a chat app's device runs (docs/PROTOCOL.md is
//! the protocol underneath).
//!
//! - [`Client::connect`] starts a device's connection in the background:
//!   MQTT 5 to the broker, a fresh access token from the app's
//!   [`TokenProvider`] for each connection (and a reconnect before it
//!   expires), reconnects with exponential backoff and jitter.
//! - Sending is offline-first: [`Client::send`] writes the message to a
//!   local outbox on disk and returns its client message id at once; the
//!   outbox drains in order whenever connected, survives an app restart,
//!   and the broker stores a resend once. Each message's [`SendState`]
//!   (queued, sent, delivered, read, failed) is kept and reported.
//! - Receiving follows the delivery contract: an entry is acknowledged only
//!   once it is stored locally, and a repeat (same conversation and seq) is
//!   discarded; deletes and expiries remove what they name.
//! - One [`Event`] stream for everything that happens.
//!
//! Message bodies are opaque bytes: end-to-end encryption can wrap them
//! without a change to the wire.
//!
//! ```no_run
//! # async fn demo() -> Result<(), courier_sdk::SdkError> {
//! use courier_sdk::{Client, ClientConfig, To, Token};
//! let config = ClientConfig::new("127.0.0.1:1883", "alice", "phone", "alice-data", || async {
//!     // Ask the app's backend; here, a fixed token.
//!     Ok(Token { value: "eyJ...".into(), expires_at: None })
//! });
//! let mut client = Client::connect(config)?;
//! let id = client.send_text(To::User("bob".into()), "hi bob")?;
//! while let Some(event) = client.next_event().await {
//!     println!("{event:?}");
//! }
//! # let _ = id; Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod connection;
mod store;

pub use client::{Client, ClientConfig, To, Token, TokenProvider};

/// The chat protocol's messages, generated from the server's schema.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/courier.chat.v1.rs"));
}

/// Where a sent message stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SendState {
    /// In the outbox, not yet acknowledged by the server.
    Queued,
    /// Stored by the server with this sequence number.
    Sent {
        /// Its seq in the conversation.
        seq: u64,
    },
    /// A device of another member has it.
    Delivered {
        /// Its seq.
        seq: u64,
    },
    /// Another member read it.
    Read {
        /// Its seq.
        seq: u64,
    },
    /// The server refused it; [`Client::retry`] queues it again.
    Failed {
        /// The protocol's error code name (`NOT_MEMBER`, `BLOCKED`, ...).
        code: String,
        /// The server's reason.
        message: String,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected (again): the inbox is being synced from the server's
    /// cursor.
    Connected,
    /// The connection ended; the SDK reconnects by itself.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A new entry of a conversation (a message, an edit, a reaction, a
    /// delete, a membership or group change, a missed call), stored
    /// locally before it was acknowledged. Each arrives once.
    Entry(Box<proto::Entry>),
    /// Entries the server erased (expired, deleted by an administrator):
    /// removed from the local store.
    Removed {
        /// The conversation.
        conversation: String,
        /// Their seqs.
        seqs: Vec<u64>,
    },
    /// Another member's delivered and read positions in a conversation.
    Receipt(proto::Receipt),
    /// Someone's presence changed.
    Presence(proto::Presence),
    /// Someone types, or stopped.
    Typing(proto::Typing),
    /// Call signaling.
    Call(proto::CallSignal),
    /// The inbox's retention removed entries this device never got: take
    /// a snapshot (`ListConversations`) and page history.
    Gap {
        /// How many.
        lost: u64,
    },
    /// A sent message's state changed.
    SendState {
        /// Its client message id.
        client_msg_id: String,
        /// Its state now.
        state: SendState,
    },
    /// The server dropped this device's push token: register a new one.
    PushTokenDropped {
        /// The provider's reason.
        reason: String,
    },
}

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdkError {
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
    /// The server refused a request.
    #[error("{code}: {message}")]
    Server {
        /// The protocol's error code name.
        code: String,
        /// The server's reason.
        message: String,
    },
    /// No answer in time (the request may still happen).
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A value the protocol does not accept.
    #[error("invalid: {0}")]
    Invalid(String),
}
