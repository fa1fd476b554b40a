//! The `[chat]` section of courier.toml (docs/CONFIGURATION.md).

use std::path::PathBuf;

use serde::Deserialize;

/// The chat layer's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Serve the chat protocol (topics under `c/`).
    pub enabled: bool,
    /// Largest `Content` a message may carry, bytes.
    pub max_content_bytes: usize,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// Inbox entries sent to one device and not yet acknowledged.
    pub inbox_window: usize,
    /// How long a failed login from one address slows the next ones down,
    /// seconds (the delay doubles per failure, up to `max_login_delay_ms`).
    pub login_failure_memory_secs: u64,
    /// Longest delay before answering a login from an address that keeps
    /// failing, milliseconds.
    pub max_login_delay_ms: u64,
    /// How long inbox entries are kept, seconds (0: for ever). A device
    /// offline for longer gets a `Gap` and resynchronizes.
    pub inbox_retention_secs: u64,
    /// How long conversation entries are kept, seconds (0: for ever).
    pub history_retention_secs: u64,
    /// Most entries a conversation keeps (0: no limit).
    pub history_max_entries: u64,
    /// How often retention runs, seconds.
    pub trim_interval_secs: u64,
    /// How long after sending a message may be deleted for everyone,
    /// seconds.
    pub delete_window_secs: u64,
    /// Largest attachment a message may refer to, bytes.
    pub max_attachment_bytes: u64,
    /// How long a user whose last device left still shows online,
    /// milliseconds.
    pub presence_grace_ms: u64,
    /// At most one presence update per user per this long, milliseconds.
    pub presence_interval_ms: u64,
    /// At most one typing indicator per device and conversation per this
    /// long, milliseconds.
    pub typing_interval_ms: u64,
    /// How long a call rings before it is missed, milliseconds.
    pub ring_timeout_ms: u64,
    /// Rate limits per device and per user.
    pub rate_limits: crate::limits::RateLimitConfig,
    /// Access tokens.
    pub tokens: TokenConfig,
    /// `[chat.push]`: the push bridge (docs/PUSH.md).
    pub push: push_bridge::PushConfig,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            enabled: true,
            max_content_bytes: 64 * 1024,
            max_group_members: 1000,
            inbox_window: 64,
            login_failure_memory_secs: 600,
            max_login_delay_ms: 5000,
            inbox_retention_secs: 30 * 24 * 3600,
            history_retention_secs: 0,
            history_max_entries: 0,
            trim_interval_secs: 60,
            delete_window_secs: 2 * 24 * 3600,
            max_attachment_bytes: 100 << 20,
            presence_grace_ms: 5000,
            presence_interval_ms: 5000,
            typing_interval_ms: 1000,
            ring_timeout_ms: 45_000,
            rate_limits: crate::limits::RateLimitConfig::default(),
            tokens: TokenConfig::default(),
            push: push_bridge::PushConfig::default(),
        }
    }
}

/// How access tokens are checked and minted.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The broker's own HS256 secret (created on first start if missing),
    /// for `courier token`; empty: the broker mints nothing.
    pub secret_file: Option<PathBuf>,
    /// Key id under which the broker's own secret signs.
    pub secret_kid: String,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Seconds a token is still accepted past its `exp` (clock skew).
    pub leeway_secs: u64,
    /// Lifetime of the tokens `courier token` mints, seconds.
    pub mint_ttl_secs: u64,
    /// Keys of the app's own token issuer, by `kid`.
    pub keys: Vec<KeyConfig>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            secret_file: Some(PathBuf::from("chat-secret")),
            secret_kid: "courier".into(),
            audience: None,
            leeway_secs: 0,
            mint_ttl_secs: 3600,
            keys: Vec::new(),
        }
    }
}

/// One verification key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` header of tokens signed with it.
    pub kid: String,
    /// Its algorithm; a token claiming another is refused.
    pub alg: KeyAlgorithm,
    /// HS256: the shared secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// ES256 or EdDSA: the public key, PEM.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
}

/// Signature algorithms accepted for access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_chat_section_parses_and_shows_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/courier.toml");
        let (_, chat) = courier::config::Config::load_split(&path, "chat").unwrap();
        let c: ChatConfig = chat.unwrap().try_into().unwrap();
        let d = ChatConfig::default();
        assert_eq!(
            (
                c.max_content_bytes,
                c.max_group_members,
                c.inbox_window,
                c.inbox_retention_secs
            ),
            (
                d.max_content_bytes,
                d.max_group_members,
                d.inbox_window,
                d.inbox_retention_secs
            )
        );
        assert_eq!(c.rate_limits, d.rate_limits);
        assert_eq!(c.tokens.secret_file, d.tokens.secret_file);
        assert_eq!(c.tokens.mint_ttl_secs, d.tokens.mint_ttl_secs);
    }
}
