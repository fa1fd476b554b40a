//! Broker configuration, read from TOML (`config/courier.toml` documents
//! every option). Every field has a default, so an empty file is valid.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole broker configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Network listeners; any number of each kind.
    pub listeners: Vec<ListenerConfig>,
    /// When a PUBACK/PUBREC may be sent for a message that must survive.
    pub durability: Durability,
    /// In `periodic` mode, how often the store commits with fdatasync (the
    /// loss window, for a process crash and a power loss alike).
    pub flush_interval_ms: u64,
    /// In `fsync` mode, how long a commit that follows straight on another
    /// waits to gather more writes (microseconds; 0 = never waits). Only
    /// under continuous load: a commit after an idle moment starts at once.
    pub commit_delay_us: u64,
    /// How long a commit that the store refuses as unavailable (a
    /// retryable error: a networked backend's timeout) is tried again
    /// before the acknowledgements waiting on it fail (seconds). The
    /// embedded store never refuses that way.
    pub commit_retry_secs: u64,
    /// Named-log appends the embedded store holds staged (in memory and in
    /// one table) before a commit moves half of them into their logs.
    pub staging_records: usize,
    /// Bytes of staged appends that also start a move.
    pub staging_bytes: usize,
    /// How often erased records are shredded from the store file, if any
    /// were erased meanwhile (seconds; 0: never). Bounds how long an
    /// erased record's bytes can stay on disk.
    pub shred_interval_secs: u64,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Authentication.
    pub auth: AuthConfig,
    /// Authorization rules.
    pub acl: AclConfig,
    /// The `$SYS` statistics topics.
    pub sys: SysConfig,
    /// The admin HTTP API and Prometheus metrics.
    pub admin: AdminConfig,
}

/// `[admin]`: the operators' HTTP listener (the admin API and `/metrics`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on (`127.0.0.1:9883`); unset: no admin listener.
    /// Anyone who can reach it and holds the key administers the broker,
    /// so keep it on loopback or a private network.
    pub bind: Option<String>,
    /// The bearer key every request must carry (created with a random key
    /// on first start if missing; default `<data_dir>/admin.key`).
    pub key_file: Option<PathBuf>,
}

impl Config {
    /// Where the admin key is.
    pub fn admin_key_file(&self) -> PathBuf {
        self.admin
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.key"))
    }
}

/// `[sys]`: the broker's statistics on `$SYS/broker/...`, as Mosquitto
/// publishes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SysConfig {
    /// How often they are published, seconds (0: never).
    pub interval_secs: u64,
    /// The usernames that may subscribe to `$SYS` (nobody else may).
    pub users: Vec<String>,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig {
            interval_secs: 10,
            users: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            listeners: vec![ListenerConfig {
                kind: ListenerKind::Tcp,
                bind: "0.0.0.0:1883".into(),
                cert: None,
                key: None,
            }],
            durability: Durability::Fsync,
            flush_interval_ms: 100,
            commit_delay_us: 500,
            commit_retry_secs: 30,
            staging_records: 8192,
            staging_bytes: 8 << 20,
            shred_interval_secs: 3600,
            limits: Limits::default(),
            auth: AuthConfig::default(),
            acl: AclConfig::default(),
            sys: SysConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

/// Durability mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge only after the store has been fsynced (group commit).
    Fsync,
    /// Acknowledge at once; flush every `flush_interval_ms`. A crash may lose
    /// what was acknowledged in the last interval.
    Periodic,
}

/// One listening socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Transport.
    pub kind: ListenerKind,
    /// Address to bind, `host:port`.
    pub bind: String,
    /// PEM certificate chain, for `tls` and `wss`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key, for `tls` and `wss`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// Listener transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket (subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

/// Protocol and resource limits. Exceeding one is never silent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted or sent, in bytes (fixed header included).
    pub max_packet_size: u32,
    /// Messages queued per session (offline or waiting for in-flight room).
    pub max_queued_messages: usize,
    /// Payload bytes queued per session.
    pub max_queued_bytes: u64,
    /// Unacknowledged QoS 1/2 messages per direction per connection
    /// (the receive maximum the broker announces and the cap it applies).
    pub max_inflight: u16,
    /// Concurrent client connections.
    pub max_connections: usize,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Upper bound on session expiry, seconds; 0 means no bound.
    pub max_session_expiry_secs: u32,
    /// Upper bound on keep-alive, seconds; a larger client value is lowered
    /// (5.0: announced as server keep alive). 0 means no bound.
    pub max_keep_alive_secs: u16,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Topic aliases a 5.0 client may use towards the broker.
    pub topic_alias_max: u16,
    /// Topic aliases the broker uses towards a 5.0 client at most (fewer
    /// if the client allows fewer); past that the least recently used one
    /// is reassigned. Bounds each connection's alias table.
    pub topic_alias_out_max: u16,
    /// Subscriptions per session.
    pub max_subscriptions: usize,
    /// Unsent messages an online subscriber may have waiting before
    /// publishers to it are slowed (they stop reading for up to 100 ms until
    /// the backlog halves). Keeps queues short instead of growing to
    /// `max_queued_messages`. 0 disables.
    pub throttle_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1024 * 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_inflight: 100,
            max_connections: 100_000,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_session_expiry_secs: 0,
            max_keep_alive_secs: 0,
            connect_timeout_secs: 10,
            topic_alias_max: 64,
            topic_alias_out_max: 64,
            max_subscriptions: 1000,
            throttle_backlog: 64,
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept clients that send no username.
    pub allow_anonymous: bool,
    /// Password file written by `courier passwd`.
    pub password_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            password_file: None,
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Permit the action.
    Allow,
    /// Refuse the action.
    Deny,
}

/// What an ACL rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    /// PUBLISH (and will messages).
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    All,
}

/// Authorization: rules are tried in order, the first match decides;
/// `default` decides when none matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AclConfig {
    /// Decision when no rule matches.
    pub default: Permission,
    /// Ordered rules.
    pub rules: Vec<AclRule>,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            default: Permission::Allow,
            rules: Vec::new(),
        }
    }
}

/// One ACL rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or all.
    pub action: AclAction,
    /// Topic filter; `%u` is replaced by the username, `%c` by the client id.
    pub topic: String,
    /// Apply only to this username.
    #[serde(default)]
    pub username: Option<String>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a configuration file in which the top-level table `section`
    /// belongs to another layer (the chat layer's `[chat]`): returns that
    /// table, unread, beside the validated broker configuration.
    pub fn load_split(
        path: &Path,
        section: &str,
    ) -> Result<(Config, Option<toml::Value>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let parse = |source: toml::de::Error| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(parse)?;
        let other = table.remove(section);
        let cfg: Config = toml::Value::Table(table).try_into().map_err(parse)?;
        cfg.validate()?;
        Ok((cfg, other))
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_packet_size < 64 {
            return Err(ConfigError::Invalid("limits.max_packet_size < 64".into()));
        }
        if l.max_inflight == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_inflight must be > 0".into(),
            ));
        }
        if l.max_topic_levels == 0 || l.max_topic_length == 0 {
            return Err(ConfigError::Invalid("topic limits must be > 0".into()));
        }
        for lst in &self.listeners {
            let tls = matches!(lst.kind, ListenerKind::Tls | ListenerKind::Wss);
            if tls && (lst.cert.is_none() || lst.key.is_none()) {
                return Err(ConfigError::Invalid(format!(
                    "listener {} needs cert and key",
                    lst.bind
                )));
            }
        }
        if let Some(b) = &self.admin.bind {
            if b.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "admin.bind {b:?} is not an address like 127.0.0.1:9883"
                )));
            }
        }
        if self.durability == Durability::Periodic && self.flush_interval_ms == 0 {
            return Err(ConfigError::Invalid("flush_interval_ms must be > 0".into()));
        }
        if self.commit_delay_us > 100_000 {
            return Err(ConfigError::Invalid(
                "commit_delay_us must be at most 100000 (0.1 s)".into(),
            ));
        }
        if !(64..=1 << 24).contains(&self.staging_records) {
            return Err(ConfigError::Invalid(
                "staging_records must be between 64 and 16777216".into(),
            ));
        }
        if !(1 << 16..=1 << 30).contains(&self.staging_bytes) {
            return Err(ConfigError::Invalid(
                "staging_bytes must be between 65536 and 1073741824".into(),
            ));
        }
        Ok(())
    }

    /// The embedded store's staging limits.
    pub fn staging_limits(&self) -> crate::redb_store::StagingLimits {
        crate::redb_store::StagingLimits {
            records: self.staging_records,
            bytes: self.staging_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/courier.toml");
        let (cfg, chat) = Config::load_split(&path, "chat").expect("config/courier.toml is valid");
        assert!(
            chat.is_some(),
            "the chat layer's section is there, for courier-chat"
        );
        assert_eq!(cfg.durability, Durability::Fsync);
        assert_eq!(cfg.commit_delay_us, Config::default().commit_delay_us);
    }

    #[test]
    fn commit_delay_is_bounded() {
        let cfg: Config = toml::from_str("commit_delay_us = 200000").unwrap();
        assert!(cfg.validate().is_err());
        let cfg: Config = toml::from_str("staging_records = 10").unwrap();
        assert!(cfg.validate().is_err(), "staging_records below 64");
        let cfg: Config = toml::from_str("staging_bytes = 1024").unwrap();
        assert!(cfg.validate().is_err(), "staging_bytes below 64 KiB");
        let cfg: Config = toml::from_str("commit_delay_us = 0").unwrap();
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn empty_is_default() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.limits.max_inflight, 100);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}

/// What a binary running the broker takes from its command line (both the
/// `courier` and the `courier-mqtt` binaries flatten it into theirs).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CliArgs {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Plain TCP listener address; repeatable; replaces configured listeners.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Data directory; overrides the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl CliArgs {
    /// The configuration file's (or the defaults) with the command line's
    /// overrides, and the file's table `section`, unread (see
    /// [`Config::load_split`]).
    pub fn load(&self, section: &str) -> Result<(Config, Option<toml::Value>), ConfigError> {
        let (mut config, other) = match &self.config {
            Some(p) => Config::load_split(p, section)?,
            None => (Config::default(), None),
        };
        if !self.listen.is_empty() {
            config.listeners = self
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
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        Ok((config, other))
    }
}
