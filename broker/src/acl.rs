//! Topic authorization from ordered allow/deny rules.

use crate::config::{AclAction, AclConfig, AclRule, Permission};
use crate::hooks::ClientInfo;
use crate::topic;

/// The action being authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
}

/// Compiled ACL: the first matching rule decides.
#[derive(Debug, Clone)]
pub struct Acl {
    default: Permission,
    rules: Vec<AclRule>,
}

/// Substitutes `%u` and `%c`. A value with `/`, `+` or `#` in it would widen
/// the pattern, so such a value makes the rule not apply.
fn expand(pattern: &str, client: &ClientInfo) -> Option<String> {
    let safe = |v: &str| !v.contains(['/', '+', '#']);
    let mut out = pattern.to_owned();
    if out.contains("%u") {
        let u = client.username.as_deref()?;
        if !safe(u) {
            return None;
        }
        out = out.replace("%u", u);
    }
    if out.contains("%c") {
        if !safe(&client.client_id) {
            return None;
        }
        out = out.replace("%c", &client.client_id);
    }
    Some(out)
}

impl Acl {
    /// Builds the ACL from configuration.
    pub fn new(cfg: &AclConfig) -> Acl {
        Acl {
            default: cfg.default,
            rules: cfg.rules.clone(),
        }
    }

    /// Decides `action` on `topic` (a name for publish, a filter for
    /// subscribe; shared-subscription prefixes are stripped by the caller).
    pub fn check(&self, action: Action, client: &ClientInfo, topic: &str) -> bool {
        for rule in &self.rules {
            let applies = matches!(
                (rule.action, action),
                (AclAction::All, _)
                    | (AclAction::Publish, Action::Publish)
                    | (AclAction::Subscribe, Action::Subscribe)
            );
            if !applies {
                continue;
            }
            if let Some(u) = &rule.username {
                if client.username.as_deref() != Some(u.as_str()) {
                    continue;
                }
            }
            let Some(pattern) = expand(&rule.topic, client) else {
                continue;
            };
            let hit = match (action, rule.permission) {
                (Action::Publish, _) => topic::matches(&pattern, topic),
                // Allow only what the rule fully covers; deny anything it touches.
                (Action::Subscribe, Permission::Allow) => topic::covers(&pattern, topic),
                (Action::Subscribe, Permission::Deny) => topic::intersects(&pattern, topic),
            };
            if hit {
                return rule.permission == Permission::Allow;
            }
        }
        self.default == Permission::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(u: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: "phone1".into(),
            username: u.map(Into::into),
        }
    }

    fn acl(rules: &str) -> Acl {
        let cfg: AclConfig = toml::from_str(rules).unwrap();
        Acl::new(&cfg)
    }

    #[test]
    fn per_user_topics() {
        let a = acl(r#"
            default = "deny"
            [[rules]]
            permission = "deny"
            action = "all"
            topic = "admin/#"
            [[rules]]
            permission = "allow"
            action = "all"
            topic = "users/%u/#"
            [[rules]]
            permission = "allow"
            action = "publish"
            topic = "devices/%c/status"
        "#);
        let alice = client(Some("alice"));
        assert!(a.check(Action::Publish, &alice, "users/alice/inbox"));
        assert!(!a.check(Action::Publish, &alice, "users/bob/inbox"));
        assert!(a.check(Action::Subscribe, &alice, "users/alice/+"));
        assert!(!a.check(Action::Subscribe, &alice, "users/+/inbox"));
        assert!(!a.check(Action::Subscribe, &alice, "#"));
        assert!(a.check(Action::Publish, &alice, "devices/phone1/status"));
        assert!(!a.check(Action::Publish, &client(None), "users/alice/x"));
        // A username with a wildcard does not widen the rule.
        assert!(!a.check(Action::Subscribe, &client(Some("#")), "users/#"));
    }
}
