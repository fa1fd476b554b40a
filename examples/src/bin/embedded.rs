//! The broker inside another Rust program, through the library API, with
//! its own authenticator: devices log in with their serial number as the
//! username and a per-device key (here: derived from a shared secret, as a
//! factory might provision them), and may publish only under their own
//! `devices/<serial>/` topics.
//!
//! `cargo run -p courier-examples --bin embedded`, then for example
//! `mosquitto_pub -p 1884 -u sn-42 -P "$(cargo run -q -p courier-examples --bin embedded -- key sn-42)" -t devices/sn-42/temp -m 21.5`

use std::sync::Arc;

use courier::config::{Config, ListenerConfig, ListenerKind};
use courier::hooks::{AuthDecision, AuthRequest, ClientInfo, HookFuture, Hooks, SubscribeDecision};
use courier::Server;

const FACTORY_SECRET: &[u8] = b"example factory secret";

/// A device's key: HMAC-SHA256(secret, serial), hex.
fn device_key(serial: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, FACTORY_SECRET);
    ring::hmac::sign(&k, serial.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex(s: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(s).ok()?;
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The embedder's rules.
struct Devices;

impl Hooks for Devices {
    fn authenticate<'a>(&'a self, req: AuthRequest<'a>) -> HookFuture<'a, AuthDecision> {
        Box::pin(async move {
            let (Some(serial), Some(password)) = (req.username, req.password) else {
                return AuthDecision::BadCredentials;
            };
            let Some(tag) = hex(password) else {
                return AuthDecision::BadCredentials;
            };
            // ring's verify compares in constant time.
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, FACTORY_SECRET);
            match ring::hmac::verify(&k, serial.as_bytes(), &tag) {
                Ok(()) => AuthDecision::Allow,
                Err(_) => AuthDecision::BadCredentials,
            }
        })
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> bool {
        let serial = client.username.as_deref().unwrap_or("");
        topic.starts_with(&format!("devices/{serial}/"))
    }

    fn authorize_subscribe(&self, _client: &ClientInfo, filter: &str) -> SubscribeDecision {
        if filter.starts_with("devices/") {
            SubscribeDecision::Allow
        } else {
            SubscribeDecision::Deny
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("key") {
        println!("{}", device_key(&args.next().unwrap_or_default()));
        return Ok(());
    }
    let mut config = Config {
        data_dir: std::env::temp_dir().join("courier-embedded-example"),
        ..Config::default()
    };
    config.listeners = vec![ListenerConfig {
        kind: ListenerKind::Tcp,
        bind: "127.0.0.1:1884".into(),
        cert: None,
        key: None,
    }];
    let mut server = Server::builder(config)
        .hooks(Arc::new(Devices))
        .start()
        .await?;
    println!(
        "embedded broker on {:?}; device sn-42's key: {}",
        server.addrs,
        device_key("sn-42")
    );
    courier::server::terminated().await;
    server.shutdown().await?;
    Ok(())
}
