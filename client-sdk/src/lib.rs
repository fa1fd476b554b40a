//! Courier client SDK.
//!
//! Placeholder: the SDK (conversations, receipts, history sync, end-to-end
//! encryption over rumqttc) is built with the messaging layer. Until then,
//! use any MQTT client as described in docs/PROTOCOL.md.
