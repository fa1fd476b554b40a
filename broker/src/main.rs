//! `courier-mqtt`: the MQTT broker alone, without the chat layer (the
//! `courier` binary of the courier-chat crate runs both). For deployments
//! that only need MQTT, and for the core's own process-level tests.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use courier::config::Config;
use courier::Server;

#[derive(Parser)]
#[command(
    name = "courier-mqtt",
    version,
    about = "Courier MQTT broker (no chat layer)"
)]
struct Cli {
    /// Configuration file (TOML); a `[chat]` section in it is ignored.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Plain TCP listener address; repeatable; replaces configured listeners.
    #[arg(long)]
    listen: Vec<String>,
    /// Data directory; overrides the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    courier::server::init_logging();
    let mut config = match &cli.config {
        Some(p) => {
            let (c, chat) = Config::load_split(p, "chat")
                .with_context(|| format!("loading {}", p.display()))?;
            if chat.is_some() {
                tracing::info!("courier-mqtt has no chat layer: [chat] ignored");
            }
            c
        }
        None => Config::default(),
    };
    config.override_from_cli(&cli.listen, cli.data_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut server = Server::start(config).await?;
        for (kind, addr) in &server.addrs {
            // A line tools and tests can wait for.
            println!("courier listening {kind:?} {addr}");
        }
        courier::server::terminated().await;
        tracing::info!("shutting down");
        server.shutdown().await?;
        tracing::info!("store flushed; bye");
        Ok(())
    })
}
