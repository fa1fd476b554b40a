//! Who a connection is. A chat device connects with client id
//! `<user>:<device>`, an access token as its password, and an empty
//! username or its user id; the token must name that user and device.
//! Other clients (no `:` in their client id) are plain MQTT clients and go
//! to the configured password file and ACL.
//!
//! A chat device may subscribe only to its own inbox topic and publish only
//! into the chat namespace (which its handler checks). Failed logins from
//! one address are answered more slowly each time, and counted.
//!
//! Three more kinds of login: a device whose access token expired logs in
//! with its refresh token (`rt1....`) for a connection that may only ask
//! for a new access token; a known device's access token also opens a
//! peek connection (`<user>:<device>:peek`) that may only fetch the
//! device's inbox. (Administrators use the admin HTTP API, not MQTT.)

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::hooks::{
    AuthDecision, AuthRequest, ClientInfo, HookFuture, Hooks, Principal, SubscribeDecision,
};

use crate::records::{inbox_log, DirRecord};
use crate::{topics, Chat};

/// Recent failed logins from one address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failures {
    count: u32,
    last: Instant,
}

/// The broker's hooks with the chat layer's identity in front.
pub struct ChatHooks {
    chat: Arc<Chat>,
    inner: Arc<dyn Hooks>,
}

impl ChatHooks {
    /// Chat devices are checked here; everyone else by `inner`.
    pub fn new(chat: Arc<Chat>, inner: Arc<dyn Hooks>) -> ChatHooks {
        ChatHooks { chat, inner }
    }
}

/// The chat device a connected client is (or peeks for), if it is one.
pub(crate) fn device_of(client: &ClientInfo) -> Option<(&str, &str)> {
    let p = client.principal.as_deref()?;
    let device = p.device.as_deref()?;
    let id = &client.client_id;
    let named = if scope_of(client) == Scope::Peek {
        topics::parse_peek_client_id(id)
    } else {
        topics::parse_client_id(id)
    };
    named.filter(|(u, d)| *u == p.user && *d == device)
}

/// What a connection may do, from its principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A device with an access token: everything the protocol offers.
    Device,
    /// A device logged in with its refresh token: a new access token only.
    Refresh,
    /// A peek connection for a device: fetching its inbox only.
    Peek,
}

const SCOPE: &str = "scope";
const REFRESH: &str = "refresh";
const PEEK: &str = "peek";

/// The scope of a chat device's connection.
pub(crate) fn scope_of(client: &ClientInfo) -> Scope {
    let scope = client
        .principal
        .as_deref()
        .and_then(|p| p.claims.iter().find(|(n, _)| n == SCOPE));
    match scope.map(|(_, v)| v.as_str()) {
        Some(REFRESH) => Scope::Refresh,
        Some(PEEK) => Scope::Peek,
        _ => Scope::Device,
    }
}

impl Hooks for ChatHooks {
    fn authenticate<'a>(&'a self, req: AuthRequest<'a>) -> HookFuture<'a, AuthDecision> {
        if !req.client_id.contains(':') {
            return self.inner.authenticate(req);
        }
        Box::pin(async move {
            let decision = self.chat.login(&req);
            match decision {
                Ok(p) => {
                    self.chat.failures.lock().remove(&req.peer.ip());
                    self.chat.metrics.inc(&self.chat.metrics.logins, 1);
                    AuthDecision::AllowAs(Arc::new(p))
                }
                Err((why, decision)) => {
                    self.chat.metrics.inc(&self.chat.metrics.logins_refused, 1);
                    let delay = self.chat.failed(req.peer.ip(), Instant::now());
                    tracing::warn!(client_id = req.client_id, peer = %req.peer, delay_ms = delay.as_millis() as u64, "chat login refused: {why}");
                    tokio::time::sleep(delay).await;
                    decision
                }
            }
        })
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> bool {
        if device_of(client).is_some() {
            // Outside the chat namespace (its handler decides inside).
            self.chat.metrics.inc(&self.chat.metrics.acl_refused, 1);
            tracing::info!(client_id = %client.client_id, topic, "chat device may not publish outside c/");
            return false;
        }
        self.inner.authorize_publish(client, topic)
    }

    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> SubscribeDecision {
        if device_of(client).is_some() {
            self.chat.metrics.inc(&self.chat.metrics.acl_refused, 1);
            tracing::info!(client_id = %client.client_id, filter, "chat device may subscribe only to its inbox");
            return SubscribeDecision::Deny;
        }
        self.inner.authorize_subscribe(client, filter)
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool {
        device_of(client).is_none() && self.inner.authorize_read(client, topic)
    }
}

type Refusal = (String, AuthDecision);

/// How long a connection made with a refresh token lasts: long enough to
/// ask for an access token.
const REFRESH_CONNECTION_SECS: u64 = 60;

impl Chat {
    /// Checks a chat device's CONNECT; registers a
    /// new user or device.
    fn login(&self, req: &AuthRequest<'_>) -> Result<Principal, Refusal> {
        let bad = |why: String| (why, AuthDecision::BadCredentials);
        let now = courier::message::unix_now();
        let password = req
            .password
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or_else(|| bad("no access token".into()))?;
        let peek = topics::parse_peek_client_id(req.client_id);
        let (user, device) = peek
            .or_else(|| topics::parse_client_id(req.client_id))
            .ok_or_else(|| {
                (
                    "client id is not <user>:<device>".to_owned(),
                    AuthDecision::NotAuthorized,
                )
            })?;
        if req.username.is_some_and(|u| !u.is_empty() && u != user) {
            return Err(bad(format!("username is not {user:?}")));
        }
        if password.starts_with(topics::REFRESH_PREFIX) {
            if peek.is_some() {
                return Err(bad("a peek connection needs an access token".into()));
            }
            return self.refresh_login(user, device, password, now);
        }
        let claims = self
            .tokens
            .verify(password, now)
            .map_err(|e| bad(e.to_string()))?;
        if claims.sub != user || claims.dev != device {
            return Err(bad(format!(
                "token is for {}:{}, not this client id",
                claims.sub, claims.dev
            )));
        }
        let expires_at = Some(claims.exp.saturating_add(self.config.tokens.leeway_secs));
        if peek.is_some() {
            self.known_device(user, device)?;
            return Ok(Principal {
                user: user.to_owned(),
                device: Some(device.to_owned()),
                expires_at,
                claims: vec![(SCOPE.into(), PEEK.into())],
            });
        }
        self.register(user, device)?;
        Ok(Principal {
            user: user.to_owned(),
            device: Some(device.to_owned()),
            expires_at,
            claims: claims
                .aud
                .map(|a| ("aud".to_owned(), a))
                .into_iter()
                .collect(),
        })
    }

    /// A peek connection is for a device that exists, is not revoked, and
    /// whose user is not disabled (it registers nothing).
    fn known_device(&self, user: &str, device: &str) -> Result<(), Refusal> {
        let d = self.dir.lock();
        let u = d.users.get(user);
        if u.is_some_and(|u| u.disabled) {
            return Err(("user is disabled".into(), AuthDecision::NotAuthorized));
        }
        match u.and_then(|u| u.devices.get(device)) {
            Some(dev) if dev.revoked => {
                Err(("device is revoked".into(), AuthDecision::NotAuthorized))
            }
            Some(_) => Ok(()),
            None => Err((
                "peek connection for an unknown device".into(),
                AuthDecision::NotAuthorized,
            )),
        }
    }

    /// A login with a refresh token: it must be the one the device was
    /// last given; the connection may only ask for an access token.
    fn refresh_login(
        &self,
        user: &str,
        device: &str,
        token: &str,
        now: u64,
    ) -> Result<Principal, Refusal> {
        let d = self.dir.lock();
        let u = d.users.get(user);
        if u.is_some_and(|u| u.disabled) {
            return Err(("user is disabled".into(), AuthDecision::NotAuthorized));
        }
        let dev = u.and_then(|u| u.devices.get(device));
        if dev.is_some_and(|d| d.revoked) {
            return Err(("device is revoked".into(), AuthDecision::NotAuthorized));
        }
        let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let matches = dev
            .and_then(|d| d.refresh.as_deref())
            // Hashes of random tokens: comparing them leaks nothing useful.
            .is_some_and(|h| h == hash.as_ref());
        if !matches {
            return Err(("unknown refresh token".into(), AuthDecision::BadCredentials));
        }
        Ok(Principal {
            user: user.to_owned(),
            device: Some(device.to_owned()),
            expires_at: Some(now + REFRESH_CONNECTION_SECS),
            claims: vec![(SCOPE.into(), REFRESH.into())],
        })
    }

    /// Makes the user and device known, refusing a revoked device. A new
    /// device's inbox cursor starts at the inbox's end: it begins with the
    /// snapshot (docs/PROTOCOL.md), not the user's whole backlog.
    fn register(&self, user: &str, device: &str) -> Result<(), Refusal> {
        let mut d = self.dir.lock();
        if d.users.get(user).is_some_and(|u| u.disabled) {
            return Err(("user is disabled".into(), AuthDecision::NotAuthorized));
        }
        match d.device(user, device) {
            Some(dev) if dev.revoked => {
                return Err(("device is revoked".into(), AuthDecision::NotAuthorized));
            }
            Some(_) => return Ok(()),
            None => {}
        }
        let broker = self
            .broker()
            .map_err(|e| (e.to_string(), AuthDecision::NotAuthorized))?;
        let logs = broker.logs();
        let mut recs = Vec::new();
        if !d.users.contains_key(user) {
            recs.push(DirRecord::User {
                user: user.to_owned(),
            });
        }
        recs.push(DirRecord::Device {
            user: user.to_owned(),
            device: device.to_owned(),
        });
        let unavailable = |e: String| (format!("store: {e}"), AuthDecision::NotAuthorized);
        self.dir_append(&recs)
            .map_err(|e| unavailable(e.to_string()))?;
        let inbox = inbox_log(user);
        let last = logs.last(&inbox).map_err(|e| unavailable(e.to_string()))?;
        if last > 0 {
            logs.set_cursor(&inbox, device, last);
        }
        for r in &recs {
            d.apply(r);
        }
        tracing::info!(user, device, "chat: new device");
        Ok(())
    }

    /// Counts a failure from `ip`; how long to wait before answering it.
    fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let memory = Duration::from_secs(self.config.login_failure_memory_secs);
        let mut f = self.failures.lock();
        // Bounded: forget quiet addresses once the table grows.
        if f.len() > 100_000 {
            f.retain(|_, v| now.duration_since(v.last) < memory);
        }
        let e = f.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(e.last) >= memory {
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        e.last = now;
        let ms = 50u64.saturating_mul(1 << e.count.min(16).saturating_sub(1));
        Duration::from_millis(ms.min(self.config.max_login_delay_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChatConfig;

    #[test]
    fn failures_from_one_address_wait_longer_each_time_then_are_forgotten() {
        let chat = Chat::for_tests(ChatConfig::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let waits: Vec<u64> = (0..9)
            .map(|i| chat.failed(a, t0 + Duration::from_secs(i)).as_millis() as u64)
            .collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // Another address starts afresh; so does this one after a quiet spell.
        assert_eq!(chat.failed(b, t0).as_millis(), 50);
        assert_eq!(
            chat.failed(a, t0 + Duration::from_secs(9 + 600))
                .as_millis(),
            50
        );
    }
}
