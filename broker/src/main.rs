//! The `courier` binary: runs the broker, or manages its password file.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use courier::auth::{PasswordFile, DEFAULT_ITERATIONS};
use courier::config::{Config, ListenerConfig, ListenerKind};
use courier::Server;

#[derive(Parser)]
#[command(name = "courier", version, about = "Courier MQTT broker")]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Plain TCP listener address; repeatable; replaces configured listeners.
    #[arg(long)]
    listen: Vec<String>,
    /// Data directory; overrides the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Add, change or delete a user in a password file.
    Passwd {
        /// Password file (created if missing).
        file: PathBuf,
        /// User name.
        user: String,
        /// Remove the user instead.
        #[arg(long)]
        delete: bool,
        /// Read the password from standard input's first line (for scripts).
        #[arg(long)]
        stdin: bool,
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

fn passwd(
    file: PathBuf,
    user: String,
    delete: bool,
    stdin: bool,
    iterations: u32,
) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') {
        bail!("user name must be non-empty and contain no ':'");
    }
    let mut pf = PasswordFile::load(&file)?;
    if delete {
        if !pf.remove(&user) {
            bail!("no user {user:?} in {}", file.display());
        }
    } else {
        let password = if stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        } else {
            let a = rpassword::prompt_password("Password: ")?;
            let b = rpassword::prompt_password("Again: ")?;
            if a != b {
                bail!("passwords differ");
            }
            a
        };
        if password.is_empty() {
            bail!("empty password");
        }
        pf.set(&user, password.as_bytes(), iterations)?;
    }
    pf.save(&file)?;
    println!("{} now has {} user(s)", file.display(), pf.len());
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Passwd {
        file,
        user,
        delete,
        stdin,
        iterations,
    }) = cli.command
    {
        return passwd(file, user, delete, stdin, iterations);
    }
    tracing_subscriber::fmt()
        // Logs on stderr; stdout carries only the "listening" lines.
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut config = match &cli.config {
        Some(p) => Config::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        config.listeners = cli
            .listen
            .iter()
            .map(|a| ListenerConfig {
                kind: ListenerKind::Tcp,
                bind: a.clone(),
                cert: None,
                key: None,
            })
            .collect();
    }
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut server = Server::start(config).await?;
        for (kind, addr) in &server.addrs {
            // A line tools and tests can wait for.
            println!("courier listening {kind:?} {addr}");
        }
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await?;
        tracing::info!("store flushed; bye");
        Ok(())
    })
}
