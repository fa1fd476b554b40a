//! The `courier` binary: the MQTT broker with its chat layer, and the
//! tools that go with it (password file, access tokens).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use courier::auth::{PasswordFile, DEFAULT_ITERATIONS};
use courier::config::{Config, ListenerConfig, ListenerKind};
use courier_chat::ChatConfig;

#[derive(Parser)]
#[command(
    name = "courier",
    version,
    about = "Courier: MQTT broker and chat backend"
)]
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
    /// Add, change or delete a user in a password file (plain MQTT clients).
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
    /// Print an access token for a chat device, signed with the broker's
    /// own secret (`[chat.tokens] secret_file`, created if missing).
    Token {
        /// User id.
        user: String,
        /// Device id.
        device: String,
        /// Lifetime in seconds (default: `[chat.tokens] mint_ttl_secs`).
        #[arg(long)]
        ttl: Option<u64>,
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

fn load(path: Option<&Path>) -> anyhow::Result<(Config, ChatConfig)> {
    let Some(p) = path else {
        return Ok((Config::default(), ChatConfig::default()));
    };
    let (config, chat) =
        Config::load_split(p, "chat").with_context(|| format!("loading {}", p.display()))?;
    let chat = match chat {
        Some(v) => v
            .try_into()
            .with_context(|| format!("loading [chat] of {}", p.display()))?,
        None => ChatConfig::default(),
    };
    Ok((config, chat))
}

fn token(chat: &ChatConfig, user: &str, device: &str, ttl: Option<u64>) -> anyhow::Result<()> {
    if !courier_chat::topics::valid_id(user) || !courier_chat::topics::valid_id(device) {
        bail!("user and device ids are 1 to 64 of A-Z a-z 0-9 _ - .");
    }
    let tokens = courier_chat::load_tokens(chat)?;
    let ttl = ttl.unwrap_or(chat.tokens.mint_ttl_secs);
    let t = tokens.mint(user, device, courier::message::unix_now(), ttl)?;
    println!("{t}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mut config, chat) = load(cli.config.as_deref())?;
    match cli.command {
        Some(Command::Passwd {
            file,
            user,
            delete,
            stdin,
            iterations,
        }) => return passwd(file, user, delete, stdin, iterations),
        Some(Command::Token { user, device, ttl }) => return token(&chat, &user, &device, ttl),
        None => {}
    }
    tracing_subscriber::fmt()
        // Logs on stderr; stdout carries only the "listening" lines.
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
        let mut running = courier_chat::start(config, chat).await?;
        for (kind, addr) in &running.server.addrs {
            // A line tools and tests can wait for.
            println!("courier listening {kind:?} {addr}");
        }
        courier::server::terminated().await;
        tracing::info!("shutting down");
        running.server.shutdown().await?;
        tracing::info!("store flushed; bye");
        Ok(())
    })
}
