//! The hooks the configuration describes: the password file decides
//! authentication, the ACL rules authorization.

use crate::acl::{Acl, Action};
use crate::auth::PasswordFile;
use std::sync::Arc;

use crate::hooks::{
    self, AuthDecision, AuthRequest, ClientInfo, HookFuture, Hooks, SubscribeDecision,
};

/// The hooks built from the configuration: password file and ACL rules.
pub struct ConfigHooks {
    allow_anonymous: bool,
    passwords: Option<Arc<PasswordFile>>,
    acl: Acl,
    /// Who may read `$SYS`.
    sys_users: Vec<String>,
}

impl ConfigHooks {
    /// Builds the hooks from their parts.
    pub fn new(allow_anonymous: bool, passwords: Option<PasswordFile>, acl: Acl) -> Self {
        ConfigHooks {
            allow_anonymous,
            passwords: passwords.map(Arc::new),
            acl,
            sys_users: Vec::new(),
        }
    }

    /// Lets these usernames (and nobody else) read `$SYS`.
    pub fn with_sys_users(mut self, users: Vec<String>) -> Self {
        self.sys_users = users;
        self
    }

    fn sys_user(&self, client: &ClientInfo) -> bool {
        client
            .username
            .as_deref()
            .is_some_and(|u| self.sys_users.iter().any(|s| s == u))
    }
}

/// A filter or topic in the `$SYS` tree.
fn is_sys(t: &str) -> bool {
    t == "$SYS" || t.starts_with("$SYS/")
}

impl Hooks for ConfigHooks {
    fn authenticate<'a>(&'a self, req: AuthRequest<'a>) -> HookFuture<'a, AuthDecision> {
        let decision = match (req.username, &self.passwords) {
            (None, _) if self.allow_anonymous => AuthDecision::Allow,
            (None, _) => AuthDecision::NotAuthorized,
            // Without a password file a username is just a name.
            (Some(_), None) if self.allow_anonymous => AuthDecision::Allow,
            (Some(_), None) => AuthDecision::BadCredentials,
            (Some(u), Some(pf)) => {
                // PBKDF2 is slow by design: on a blocking thread.
                let (pf, user) = (pf.clone(), u.to_owned());
                let password = req.password.unwrap_or_default().to_vec();
                return Box::pin(async move {
                    let ok = tokio::task::spawn_blocking(move || pf.verify(&user, &password))
                        .await
                        .unwrap_or(false);
                    if ok {
                        AuthDecision::Allow
                    } else {
                        AuthDecision::BadCredentials
                    }
                });
            }
        };
        hooks::ready(decision)
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> bool {
        self.acl.check(Action::Publish, client, topic)
    }

    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> SubscribeDecision {
        if is_sys(filter) && !self.sys_user(client) {
            return SubscribeDecision::Deny;
        }
        self.acl.subscribe(client, filter)
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool {
        if is_sys(topic) && !self.sys_user(client) {
            return false;
        }
        self.acl.check(Action::Read, client, topic)
    }
}
