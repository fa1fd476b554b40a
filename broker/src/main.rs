//! `courier-mqtt`: the MQTT broker alone, without the chat layer (the
//! `courier` binary of the courier-chat crate runs both). For deployments
//! that only need MQTT, and for the core's own process-level tests.

use anyhow::Context;
use clap::Parser;
use courier::config::CliArgs;
use courier::Server;

#[derive(Parser)]
#[command(
    name = "courier-mqtt",
    version,
    about = "Courier MQTT broker (no chat layer; a [chat] section of the configuration is ignored)"
)]
struct Cli {
    #[command(flatten)]
    run: CliArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    courier::server::init_logging();
    let (config, chat) = cli.run.load("chat").context("loading the configuration")?;
    if chat.is_some() {
        tracing::info!("courier-mqtt has no chat layer: [chat] ignored");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut server = Server::start(config).await?;
        courier::server::serve_until_terminated(&mut server).await?;
        Ok(())
    })
}
