//! Topic authorization from ordered allow/deny rules.

use crate::config::{AclAction, AclConfig, AclRule, Permission};
use crate::hooks::{ClientInfo, SubscribeDecision};
use crate::topic;

/// The action being authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// Receive a message on a topic name (through a subscription). Decided
    /// by the rules for subscribing.
    Read,
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

    /// The rules that apply to `action` for `client`, with their patterns
    /// expanded.
    fn rules_for<'a>(
        &'a self,
        action: Action,
        client: &'a ClientInfo,
    ) -> impl Iterator<Item = (Permission, String)> + 'a {
        self.rules.iter().filter_map(move |rule| {
            let applies = matches!(
                (rule.action, action),
                (AclAction::All, _)
                    | (AclAction::Publish, Action::Publish)
                    | (AclAction::Subscribe, Action::Read)
            );
            if !applies {
                return None;
            }
            if let Some(u) = &rule.username {
                if client.username.as_deref() != Some(u.as_str()) {
                    return None;
                }
            }
            Some((rule.permission, expand(&rule.topic, client)?))
        })
    }

    /// Decides publishing to, or reading from, the topic name `topic`: the
    /// first rule whose pattern matches it decides, else the default.
    pub fn check(&self, action: Action, client: &ClientInfo, topic: &str) -> bool {
        for (permission, pattern) in self.rules_for(action, client) {
            if topic::matches(&pattern, topic) {
                return permission == Permission::Allow;
            }
        }
        self.default == Permission::Allow
    }

    /// Decides a subscription to `filter` (shared-subscription prefix
    /// stripped by the caller). Refused only if no topic it matches could
    /// be read; granted outright if every one can; otherwise granted with
    /// each delivery checked ([`SubscribeDecision::Filter`]), so one narrow
    /// deny rule does not break every broad subscriber.
    pub fn subscribe(&self, client: &ClientInfo, filter: &str) -> SubscribeDecision {
        let (mut allow, mut deny) = (false, false);
        let mut mark = |p: Permission| match p {
            Permission::Allow => allow = true,
            Permission::Deny => deny = true,
        };
        let mut covered = false;
        for (permission, pattern) in self.rules_for(Action::Read, client) {
            if topic::covers(&pattern, filter) {
                // Decides every topic the earlier rules left.
                mark(permission);
                covered = true;
                break;
            }
            if topic::intersects(&pattern, filter) {
                mark(permission);
            }
        }
        if !covered {
            mark(self.default);
        }
        match (allow, deny) {
            (false, _) => SubscribeDecision::Deny,
            (true, false) => SubscribeDecision::Allow,
            (true, true) => SubscribeDecision::Filter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(u: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: "phone1".into(),
            username: u.map(Into::into),
            principal: None,
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
        use SubscribeDecision::*;
        let alice = client(Some("alice"));
        assert!(a.check(Action::Publish, &alice, "users/alice/inbox"));
        assert!(!a.check(Action::Publish, &alice, "users/bob/inbox"));
        assert_eq!(a.subscribe(&alice, "users/alice/+"), Allow);
        // Partly readable: granted, and each delivery is checked.
        assert_eq!(a.subscribe(&alice, "users/+/inbox"), Filter);
        assert_eq!(a.subscribe(&alice, "#"), Filter);
        assert!(a.check(Action::Read, &alice, "users/alice/inbox"));
        assert!(!a.check(Action::Read, &alice, "users/bob/inbox"));
        assert!(!a.check(Action::Read, &alice, "admin/x"));
        // Wholly inside denied space: refused.
        assert_eq!(a.subscribe(&alice, "admin/#"), Deny);
        assert_eq!(a.subscribe(&alice, "users/bob/#"), Deny);
        assert!(a.check(Action::Publish, &alice, "devices/phone1/status"));
        assert!(!a.check(Action::Publish, &client(None), "users/alice/x"));
        // A username with a wildcard does not widen the rule.
        assert_eq!(a.subscribe(&client(Some("#")), "users/#"), Deny);
    }

    #[test]
    fn one_narrow_deny_leaves_broad_subscribers_working() {
        use SubscribeDecision::*;
        let a = acl(r#"
            default = "allow"
            [[rules]]
            permission = "deny"
            action = "subscribe"
            topic = "a/b"
        "#);
        let c = client(None);
        assert_eq!(a.subscribe(&c, "+/+"), Filter);
        assert_eq!(a.subscribe(&c, "#"), Filter);
        assert_eq!(a.subscribe(&c, "a/c"), Allow);
        assert_eq!(a.subscribe(&c, "a/b"), Deny);
        assert!(!a.check(Action::Read, &c, "a/b"));
        assert!(a.check(Action::Read, &c, "a/c"));
    }
}
