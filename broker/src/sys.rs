//! `$SYS/broker/...`: the broker's statistics, published every
//! `[sys] interval_secs` (not retained, not stored) to those allowed to
//! read them (`[sys] users`). The names Mosquitto uses for the common
//! ones, and every counter of [`crate::metrics::Metrics`] under
//! `$SYS/broker/courier/`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::Message;
use crate::Broker;

/// Publishes until the broker is gone.
pub(crate) fn spawn(broker: Weak<Broker>) {
    let started = Instant::now();
    tokio::spawn(async move {
        let every = match broker.upgrade() {
            Some(b) => Duration::from_secs(b.config.sys.interval_secs.max(1)),
            None => return,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(b) = broker.upgrade() else { return };
            if b.closing() {
                return;
            }
            publish_all(&b, started.elapsed().as_secs());
        }
    });
}

fn publish_all(b: &Arc<Broker>, uptime: u64) {
    let m: std::collections::HashMap<&str, u64> = b.metrics.snapshot().into_iter().collect();
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    let mut out: Vec<(String, String)> = vec![
        (
            "$SYS/broker/version".into(),
            format!("courier {}", env!("CARGO_PKG_VERSION")),
        ),
        ("$SYS/broker/uptime".into(), format!("{uptime} seconds")),
        (
            "$SYS/broker/clients/connected".into(),
            get("connections_current").to_string(),
        ),
        (
            "$SYS/broker/messages/received".into(),
            get("publish_received").to_string(),
        ),
        (
            "$SYS/broker/messages/sent".into(),
            get("publish_sent").to_string(),
        ),
        (
            "$SYS/broker/bytes/received".into(),
            get("bytes_received").to_string(),
        ),
        (
            "$SYS/broker/bytes/sent".into(),
            get("bytes_sent").to_string(),
        ),
    ];
    for (name, v) in &m {
        out.push((format!("$SYS/broker/courier/{name}"), v.to_string()));
    }
    for (topic, value) in out {
        let msg = Message {
            topic,
            payload: Bytes::from(value),
            qos: 0,
            retain: false,
            expires_at: None,
            props: None,
        };
        if let Err(e) = b.publish(None, msg) {
            tracing::warn!(error = %e, "$SYS publish failed");
            return;
        }
    }
}
