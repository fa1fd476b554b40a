//! The application message: what a PUBLISH carries from one client to others.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A published message as the broker routes and stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload, shared without copying between every session it goes to.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Unix time (seconds) after which it is not delivered (5.0 message expiry).
    pub expires_at: Option<u64>,
    /// 5.0 properties passed through to subscribers; `None` for most traffic.
    pub props: Option<Box<MessageProps>>,
}

/// MQTT 5.0 properties that travel with a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProps {
    /// Payload format indicator (1 = UTF-8).
    pub payload_format: Option<u8>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic (request/response).
    pub response_topic: Option<String>,
    /// Correlation data (request/response).
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl Message {
    /// Bytes this message counts against a session's queue limit.
    pub fn cost(&self) -> u64 {
        (self.payload.len() + self.topic.len()) as u64
    }

    /// True once the message's expiry has passed.
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (what named-log records are stamped
/// with).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
