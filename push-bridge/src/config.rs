//! `[push]`: when to push, and the apps' credentials (docs/PUSH.md).

use std::path::PathBuf;

use serde::Deserialize;

/// Apple's production host.
pub const APNS_PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's sandbox host (development builds).
pub const APNS_SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// Firebase's host.
pub const FCM_BASE: &str = "https://fcm.googleapis.com";

/// The bridge's settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// How long an inbox entry may stay unacknowledged by a device before
    /// the device is pushed (ms).
    pub due_ms: u64,
    /// After a push for a conversation, further messages in it within this
    /// long update that notification once, at the window's end (ms).
    pub window_ms: u64,
    /// Tries per push before it is given up.
    pub max_tries: u32,
    /// The first retry's delay (ms); doubled each try, with jitter.
    pub retry_base_ms: u64,
    /// The longest delay between tries (ms).
    pub retry_max_ms: u64,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// APNs apps (one per bundle id).
    pub apns: Vec<ApnsApp>,
    /// FCM projects.
    pub fcm: Vec<FcmApp>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            due_ms: 3000,
            window_ms: 10_000,
            max_tries: 5,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            concurrency: 256,
            apns: Vec::new(),
            fcm: Vec::new(),
        }
    }
}

impl PushConfig {
    /// True if no app is configured: the bridge is off.
    pub fn is_off(&self) -> bool {
        self.apns.is_empty() && self.fcm.is_empty()
    }
}

/// One iOS app.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApnsApp {
    /// Its bundle id: the `apns-topic` (`<topic>.voip` for calls).
    pub topic: String,
    /// The Apple developer team id (the token's `iss`).
    pub team_id: String,
    /// The key's id (the token's `kid`).
    pub key_id: String,
    /// The `.p8` signing key (PKCS#8 PEM).
    pub key_file: PathBuf,
    /// Production host (default Apple's).
    #[serde(default = "production")]
    pub production_url: String,
    /// Sandbox host (default Apple's).
    #[serde(default = "sandbox")]
    pub sandbox_url: String,
    /// A CA (PEM) to trust besides the public roots (for a local fake).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// One Firebase project.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FcmApp {
    /// The project id.
    pub project: String,
    /// The service account's JSON key (its `client_email`, `private_key`
    /// and `token_uri` are used).
    pub service_account_file: PathBuf,
    /// The API host (default Google's).
    #[serde(default = "fcm_base")]
    pub base_url: String,
    /// A CA (PEM) to trust besides the public roots (for a local fake).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn production() -> String {
    APNS_PRODUCTION.into()
}

fn sandbox() -> String {
    APNS_SANDBOX.into()
}

fn fcm_base() -> String {
    FCM_BASE.into()
}
