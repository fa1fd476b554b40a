//! Embeds the broker and prints its events: what a push bridge listens to.
//!
//! `cargo run -p courier-examples --bin events` then connect clients to
//! 127.0.0.1:1883 and watch connects, drops and offline queueing.

use courier::config::Config;
use courier::{Event, Server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config {
        data_dir: std::env::temp_dir().join("courier-events-example"),
        ..Config::default()
    };
    let mut server = Server::start(config).await?;
    println!("listening on {:?}", server.addrs);
    let mut events = server.broker.events();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(Event::Connected { client, session_present }) => {
                    println!("connected    {} (user {:?}, resumed {session_present})", client.client_id, client.username)
                }
                Ok(Event::Disconnected { client, cause, .. }) => {
                    println!("disconnected {} ({cause:?})", client.client_id)
                }
                Ok(Event::QueuedOffline { client_id, topic, queued }) => {
                    println!("queued       {client_id}: {topic} ({queued} waiting) -> would push")
                }
                Err(e) => println!("missed events: {e}"),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.shutdown().await?;
    Ok(())
}
