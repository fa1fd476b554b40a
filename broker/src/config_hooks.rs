//! The hooks the configuration describes: the password file decides
//! authentication, the ACL rules authorization.

use crate::acl::{Acl, Action};
use crate::auth::PasswordFile;
use crate::hooks::{AuthDecision, ClientInfo, Hooks, SubscribeDecision};

/// The hooks built from the configuration: password file and ACL rules.
pub struct ConfigHooks {
    allow_anonymous: bool,
    passwords: Option<PasswordFile>,
    acl: Acl,
}

impl ConfigHooks {
    /// Builds the hooks from their parts.
    pub fn new(allow_anonymous: bool, passwords: Option<PasswordFile>, acl: Acl) -> Self {
        ConfigHooks {
            allow_anonymous,
            passwords,
            acl,
        }
    }
}

impl Hooks for ConfigHooks {
    fn authenticate(
        &self,
        _client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> AuthDecision {
        match (username, &self.passwords) {
            (None, _) if self.allow_anonymous => AuthDecision::Allow,
            (None, _) => AuthDecision::NotAuthorized,
            // Without a password file a username is just a name.
            (Some(_), None) if self.allow_anonymous => AuthDecision::Allow,
            (Some(_), None) => AuthDecision::BadCredentials,
            (Some(u), Some(pf)) => {
                if pf.verify(u, password.unwrap_or_default()) {
                    AuthDecision::Allow
                } else {
                    AuthDecision::BadCredentials
                }
            }
        }
    }

    fn blocking_auth(&self) -> bool {
        // Only password verification (PBKDF2) is slow.
        self.passwords.is_some()
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> bool {
        self.acl.check(Action::Publish, client, topic)
    }

    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> SubscribeDecision {
        self.acl.subscribe(client, filter)
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool {
        self.acl.check(Action::Read, client, topic)
    }
}
