//! Courier push bridge.
//!
//! Placeholder: wakes offline devices through APNs and FCM. It will consume
//! the broker's events (`courier::Event::Disconnected` and
//! `courier::Event::QueuedOffline`); see `examples/src/bin/events.rs` for how
//! to subscribe to them.
