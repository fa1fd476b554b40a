//! The `courier` binary: the MQTT broker with its chat layer, and the
//! tools that go with it (password file, access tokens).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use courier::auth::{PasswordFile, DEFAULT_ITERATIONS};
use courier::config::{CliArgs, Config, ListenerKind};
use courier_chat::ChatConfig;

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
    /// Ask the running broker (as an administrator, with a token from the
    /// broker's own secret).
    Admin {
        /// The broker's MQTT address (default: the first TCP listener).
        #[arg(long)]
        server: Option<String>,
        #[command(subcommand)]
        op: AdminOp,
    },
}

#[derive(Subcommand)]
enum AdminOp {
    /// Users, their devices, and which are online.
    Users,
    /// An access token for a device, minted by the broker.
    Token {
        /// User id.
        user: String,
        /// Device id.
        device: String,
        /// Lifetime in seconds (default: the configured one).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Disable a user: its devices are disconnected and refused.
    Disable {
        /// User id.
        user: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// User id.
        user: String,
    },
    /// Revoke one of a user's devices.
    Revoke {
        /// User id.
        user: String,
        /// Device id.
        device: String,
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

/// Sends one administrator's request to the running broker; prints the
/// answer.
fn admin(
    config: &Config,
    chat: &ChatConfig,
    server: Option<String>,
    op: AdminOp,
) -> anyhow::Result<()> {
    use courier_chat::proto::{self, admin_request::Op};
    use prost::Message as _;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let addr = match server {
        Some(s) => s,
        None => config
            .listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Tcp)
            .map(|l| l.bind.replace("0.0.0.0", "127.0.0.1"))
            .context("no TCP listener configured; use --server")?,
    };
    let (host, port) = addr.rsplit_once(':').context("--server is host:port")?;
    let port: u16 = port.parse().context("--server port")?;
    let name = format!("cli-{}", std::process::id());
    let tokens = courier_chat::load_tokens(chat)?;
    let token = tokens.mint_admin(&name, courier::message::unix_now(), 60)?;
    let op = match op {
        AdminOp::Users => Op::ListUsers(proto::ListUsers {}),
        AdminOp::Token { user, device, ttl } => Op::MintToken(proto::MintToken {
            user,
            device,
            ttl_secs: ttl,
        }),
        AdminOp::Disable { user } => Op::SetUserDisabled(proto::SetUserDisabled {
            user,
            disabled: true,
        }),
        AdminOp::Enable { user } => Op::SetUserDisabled(proto::SetUserDisabled {
            user,
            disabled: false,
        }),
        AdminOp::Revoke { user, device } => {
            Op::RevokeUserDevice(proto::RevokeUserDevice { user, device })
        }
    };
    let payload = proto::AdminRequest { op: Some(op) }.encode_to_vec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut o = MqttOptions::new(
            format!("{}{name}", courier_chat::topics::ADMIN_CLIENT_PREFIX),
            host,
            port,
        );
        o.set_credentials("", token);
        let (client, mut el) = AsyncClient::new(o, 10);
        let props = PublishProperties {
            response_topic: Some(format!("$admin/{name}")),
            correlation_data: Some(bytes::Bytes::from_static(b"1")),
            ..Default::default()
        };
        client
            .publish_with_properties(
                courier_chat::topics::ADMIN,
                QoS::AtLeastOnce,
                false,
                payload,
                props,
            )
            .await?;
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(proto::Down {
                            kind: Some(proto::down::Kind::Response(r)),
                        }) = proto::Down::decode(p.payload)
                        {
                            return Ok(r);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                }
            }
        })
        .await
        .context("no answer from the broker")??;
        if let Some(e) = response.error {
            bail!("refused: {}", e.message);
        }
        match response.result {
            Some(proto::response::Result::Token(t)) => println!("{}", t.access_token),
            Some(proto::response::Result::Users(us)) => {
                for u in us.users {
                    let devices: Vec<String> = u
                        .devices
                        .iter()
                        .map(|d| {
                            let state = if d.revoked {
                                " (revoked)"
                            } else if d.online {
                                " (online)"
                            } else {
                                ""
                            };
                            format!("{}{state}", d.id)
                        })
                        .collect();
                    let disabled = if u.disabled { " [disabled]" } else { "" };
                    println!("{}{disabled}: {}", u.id, devices.join(", "));
                }
            }
            _ => println!("done"),
        }
        let _ = client.disconnect().await;
        Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (config, chat) = load(&cli.run)?;
    match cli.command {
        Some(Command::Admin { server, op }) => return admin(&config, &chat, server, op),
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
