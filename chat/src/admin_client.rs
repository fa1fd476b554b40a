//! `courier admin ...`: the common admin API calls from the command line
//! (part of the `courier` binary, not of the library). It reads the key
//! from `[admin] key_file` and talks plain HTTP to `[admin] bind`.

use anyhow::{bail, Context};
use clap::Subcommand;
use courier::config::Config;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum AdminOp {
    /// Users, their devices, and which are online.
    Users,
    /// One user, with each device's backlog, as JSON.
    User {
        /// User id.
        user: String,
    },
    /// An access token for a device, minted by the broker.
    Token {
        /// User id.
        user: String,
        /// Device id.
        device: String,
        /// Lifetime in seconds (default: the configured one).
        #[arg(long)]
        ttl: Option<u64>,
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
    /// Revoke one of a user's devices (its tokens stop working).
    Revoke {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// Close a device's connection (it may connect again).
    Kick {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// Revoke a device's refresh token.
    RevokeRefresh {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// Conversations, a page at a time, as JSON.
    Conversations {
        /// List those after this id.
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One conversation with its members, as JSON.
    Conversation {
        /// Conversation id.
        id: String,
    },
    /// Erase a conversation's messages (and close it, if a group).
    DeleteConversation {
        /// Conversation id.
        id: String,
    },
    /// MQTT sessions with their queue depths, as JSON.
    Sessions,
    /// Version, uptime, connections.
    Status,
}

/// Runs one call and prints its answer.
pub fn run(config: &Config, server: Option<String>, op: AdminOp) -> anyhow::Result<()> {
    let addr = server
        .or_else(|| config.admin.bind.clone())
        .context("no [admin] bind configured; pass --server")?;
    let base = if addr.starts_with("http://") {
        addr
    } else {
        format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"))
    };
    let path = config.admin_key_file();
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the admin key {}", path.display()))?;
    let (method, url, body) = match &op {
        AdminOp::Users => (Method::GET, "/v1/users".to_owned(), None),
        AdminOp::User { user } => (Method::GET, format!("/v1/users/{user}"), None),
        AdminOp::Token { user, device, ttl } => (
            Method::POST,
            "/v1/tokens".to_owned(),
            Some(json!({ "user": user, "device": device, "ttl_secs": ttl })),
        ),
        AdminOp::Disable { user } => (Method::POST, format!("/v1/users/{user}/disable"), None),
        AdminOp::Enable { user } => (Method::POST, format!("/v1/users/{user}/enable"), None),
        AdminOp::Revoke { user, device } => (
            Method::POST,
            format!("/v1/users/{user}/devices/{device}/revoke"),
            None,
        ),
        AdminOp::Kick { user, device } => (
            Method::POST,
            format!("/v1/users/{user}/devices/{device}/kick"),
            None,
        ),
        AdminOp::RevokeRefresh { user, device } => (
            Method::DELETE,
            format!("/v1/users/{user}/devices/{device}/refresh-token"),
            None,
        ),
        AdminOp::Conversations { after, limit } => {
            let mut u = format!("/v1/conversations?limit={limit}");
            if let Some(a) = after {
                u.push_str(&format!("&after={a}"));
            }
            (Method::GET, u, None)
        }
        AdminOp::Conversation { id } => (Method::GET, format!("/v1/conversations/{id}"), None),
        AdminOp::DeleteConversation { id } => {
            (Method::DELETE, format!("/v1/conversations/{id}"), None)
        }
        AdminOp::Sessions => (Method::GET, "/v1/sessions".to_owned(), None),
        AdminOp::Status => (Method::GET, "/v1/status".to_owned(), None),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: Value = rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{base}{url}"))
            .bearer_auth(key.trim())
            .timeout(std::time::Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("no answer from the admin API at {base}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.context("the answer is not JSON")?;
        if !status.is_success() {
            let why = v.get("error").and_then(Value::as_str).unwrap_or("?");
            bail!("refused ({status}): {why}");
        }
        Ok(v)
    })?;
    match op {
        AdminOp::Users => print_users(&answer),
        AdminOp::Token { .. } => println!("{}", answer["access_token"].as_str().unwrap_or("")),
        _ => println!("{}", serde_json::to_string_pretty(&answer)?),
    }
    Ok(())
}

/// One line per user: `alice [disabled]: phone (online), tablet (revoked)`.
fn print_users(users: &Value) {
    for u in users.as_array().into_iter().flatten() {
        let devices: Vec<String> = u["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let state = if d["revoked"].as_bool() == Some(true) {
                    " (revoked)"
                } else if d["online"].as_bool() == Some(true) {
                    " (online)"
                } else {
                    ""
                };
                format!("{}{state}", d["id"].as_str().unwrap_or("?"))
            })
            .collect();
        let disabled = if u["disabled"].as_bool() == Some(true) {
            " [disabled]"
        } else {
            ""
        };
        println!(
            "{}{disabled}: {}",
            u["id"].as_str().unwrap_or("?"),
            devices.join(", ")
        );
    }
}
