//! Counters an operator reads to see what the broker refused, dropped or did.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident),* $(,)?) => {
        /// Broker-wide counters (monotonic, except `connections_current`).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])+ pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Name and value of every counter, for logs and `$SYS` topics.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }

        /// A counter's description (its doc comment), for `/metrics`.
        pub fn help(name: &str) -> &'static str {
            match name {
                $(stringify!($name) => concat!($($doc),+).trim(),)*
                _ => "",
            }
        }
    };
}

counters! {
    /// Connections currently open.
    connections_current,
    /// MQTT bytes read from clients.
    bytes_received,
    /// MQTT bytes written to clients.
    bytes_sent,
    /// Connections accepted since start.
    connections_total,
    /// CONNECTs refused (authentication, limits, bad CONNECT).
    connects_refused,
    /// PUBLISH packets received from clients.
    publish_received,
    /// PUBLISH packets sent to clients.
    publish_sent,
    /// Deliveries dropped because a session's queue was full.
    dropped_queue_full,
    /// Deliveries dropped because they exceed the client's maximum packet size.
    dropped_too_large,
    /// Deliveries dropped because the message expired.
    dropped_expired,
    /// QoS 0 deliveries skipped for offline sessions.
    dropped_offline_qos0,
    /// Publishes and subscriptions refused by authorization.
    acl_denied,
    /// Deliveries withheld from a broad subscription because the subscriber
    /// may not read that topic.
    acl_filtered,
    /// Connections closed for malformed or protocol-violating input.
    protocol_errors,
    /// Connections closed for keep-alive timeout.
    keepalive_timeouts,
    /// Detached sessions ended by their session expiry.
    sessions_expired,
    /// Store errors.
    store_errors,
    /// Offline sessions whose queued deliveries left memory for disk.
    queues_unloaded,
    /// Publishes handed to a namespace handler.
    namespace_publishes,
    /// Namespace publishes the handler refused.
    namespace_refused,
    /// Failed accepts (usually the open-file limit reached).
    accept_errors,
    /// Admin API requests refused for a missing or wrong key.
    admin_refused,
    /// Shreds of erased records from the store file.
    shreds,
    /// Time store access was paused by shreds, milliseconds.
    shred_pause_ms,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
