//! The `courier` binary: the MQTT broker with its chat layer, and the
//! tools that go with it (password file, access tokens).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use courier::auth::{PasswordFile, DEFAULT_ITERATIONS};
use courier::config::{CliArgs, Config};
use courier_chat::ChatConfig;

mod admin_client;

#[derive(Parser)]
#[command(
    name = "courier",
    version,
    about = "Courier: MQTT broker and chat backend"
)]
struct Cli {
    #[command(flatten)]
    run: CliArgs,
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
    /// Ask the running broker, through its admin API (`[admin] bind`,
    /// with the key in `[admin] key_file`).
    Admin {
        /// The admin API's address (default: `[admin] bind`).
        #[arg(long)]
        server: Option<String>,
        #[command(subcommand)]
        op: admin_client::AdminOp,
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

/// The broker's configuration and the chat layer's `[chat]` section.
fn load(args: &CliArgs) -> anyhow::Result<(Config, ChatConfig)> {
    let (config, chat) = args.load("chat").context("loading the configuration")?;
    let chat = match chat {
        Some(v) => v.try_into().context("loading [chat]")?,
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
    let (config, chat) = load(&cli.run)?;
    match cli.command {
        Some(Command::Admin { server, op }) => return admin_client::run(&config, server, op),
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
    courier::server::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut running = courier_chat::start(config, chat).await?;
        courier::server::serve_until_terminated(&mut running.server).await?;
        Ok(())
    })
}
