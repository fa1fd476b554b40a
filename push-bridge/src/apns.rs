//! Apple Push Notification service, token-based (docs/PUSH.md lists what
//! Apple requires): `POST {base}/3/device/{token}` over HTTP/2, an ES256
//! provider token in `authorization: bearer`, reused for 50 minutes (Apple
//! refuses one older than an hour, and one renewed more than every 20).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;

use crate::config::ApnsApp;
use crate::https::HttpsClient;
use crate::jwt::Es256;
use crate::{Notification, Outcome, PushError, Target};

/// Apple's limit on a payload (a VoIP push may have 5 KB; we keep to 4).
pub const MAX_PAYLOAD: usize = 4096;
/// Apple's limit on `apns-collapse-id`.
pub const MAX_COLLAPSE_ID: usize = 64;
/// How long a provider token is used.
const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);
/// How long a send may take before it counts as failed (and is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a chat push may wait in Apple's store for an offline phone.
const MESSAGE_TTL_SECS: u64 = 24 * 3600;

/// A client for one app (bundle id).
pub struct ApnsClient {
    topic: String,
    team_id: String,
    key_id: String,
    key: Es256,
    production: String,
    sandbox: String,
    client: HttpsClient,
    token: Mutex<Option<(String, Instant)>>,
}

/// The headers and body of one push, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// `apns-topic`.
    pub topic: String,
    /// `apns-push-type`.
    pub push_type: &'static str,
    /// `apns-priority`.
    pub priority: &'static str,
    /// `apns-expiration` (Unix seconds; 0: deliver now or never).
    pub expiration: u64,
    /// `apns-collapse-id`.
    pub collapse_id: Option<String>,
    /// The JSON payload.
    pub body: Vec<u8>,
}

/// A collapse id for `key`: itself if short enough, else a hash of it.
pub fn collapse_id(key: &str) -> String {
    if key.len() <= MAX_COLLAPSE_ID {
        return key.to_owned();
    }
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What is sent for `n` to an app whose bundle id is `topic`, at `now`
/// (Unix seconds). Generic, localizable text and opaque ids only.
pub fn prepare(topic: &str, n: &Notification, now: u64) -> Prepared {
    match n {
        Notification::Message {
            conversation,
            seq,
            badge,
            mention,
        } => {
            let loc_key = if *mention {
                "COURIER_MENTION"
            } else {
                "COURIER_NEW_MESSAGE"
            };
            let body = serde_json::json!({
                "aps": {
                    "alert": { "loc-key": loc_key },
                    "badge": badge,
                    "sound": "default",
                    "mutable-content": 1,
                    "thread-id": conversation,
                },
                "c": conversation,
                "s": seq,
            });
            Prepared {
                topic: topic.to_owned(),
                push_type: "alert",
                priority: "10",
                expiration: now + MESSAGE_TTL_SECS,
                collapse_id: Some(collapse_id(conversation)),
                body: body.to_string().into_bytes(),
            }
        }
        Notification::Call {
            call_id,
            conversation,
            video,
        } => Prepared {
            topic: format!("{topic}.voip"),
            push_type: "voip",
            priority: "10",
            // A ring is now or never.
            expiration: 0,
            collapse_id: None,
            body: serde_json::json!({ "call": call_id, "c": conversation, "video": video })
                .to_string()
                .into_bytes(),
        },
        Notification::CallEnded { call_id } => Prepared {
            topic: format!("{topic}.voip"),
            push_type: "voip",
            priority: "10",
            expiration: 0,
            collapse_id: None,
            body: serde_json::json!({ "call": call_id, "ended": true })
                .to_string()
                .into_bytes(),
        },
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ApnsClient {
    /// A client for `app` (reads its key).
    pub fn new(app: &ApnsApp) -> Result<ApnsClient, PushError> {
        let pem = std::fs::read_to_string(&app.key_file).map_err(|source| PushError::File {
            path: app.key_file.clone(),
            source,
        })?;
        Ok(ApnsClient {
            topic: app.topic.clone(),
            team_id: app.team_id.clone(),
            key_id: app.key_id.clone(),
            key: Es256::from_pem(&pem)?,
            production: app.production_url.trim_end_matches('/').to_owned(),
            sandbox: app.sandbox_url.trim_end_matches('/').to_owned(),
            client: crate::https::http2(app.ca_file.as_deref())?,
            token: Mutex::new(None),
        })
    }

    /// The app's bundle id.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The provider token: the cached one, or a new one once it is 50
    /// minutes old or Apple refused it (`refused`; a send that saw another
    /// token refused uses the one a concurrent send made since).
    fn provider_token(&self, refused: Option<&str>) -> Result<String, PushError> {
        let mut t = self.token.lock();
        if let Some((tok, at)) = &*t {
            if refused != Some(tok.as_str()) && at.elapsed() < TOKEN_LIFE {
                return Ok(tok.clone());
            }
        }
        let tok = self.key.sign(
            &serde_json::json!({ "alg": "ES256", "kid": self.key_id }),
            &serde_json::json!({ "iss": self.team_id, "iat": unix_now() }),
        )?;
        *t = Some((tok.clone(), Instant::now()));
        Ok(tok)
    }

    /// Sends `n` to `target` (an APNs target of this app).
    pub async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        let Target::Apns { token, sandbox, .. } = target else {
            return Outcome::Fatal {
                reason: "not an APNs target".into(),
            };
        };
        let p = prepare(&self.topic, n, unix_now());
        if p.body.len() > MAX_PAYLOAD {
            return Outcome::Fatal {
                reason: format!("payload of {} bytes is over {MAX_PAYLOAD}", p.body.len()),
            };
        }
        let base = if *sandbox {
            &self.sandbox
        } else {
            &self.production
        };
        let url = format!("{base}/3/device/{token}");
        let mut refused: Option<String> = None;
        // A second try only when Apple says the provider token expired.
        for _ in 0..2 {
            let jwt = match self.provider_token(refused.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    return Outcome::Fatal {
                        reason: e.to_string(),
                    }
                }
            };
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header("authorization", format!("bearer {jwt}"))
                .header("apns-topic", &p.topic)
                .header("apns-push-type", p.push_type)
                .header("apns-priority", p.priority)
                .header("apns-expiration", p.expiration.to_string());
            if let Some(c) = &p.collapse_id {
                req = req.header("apns-collapse-id", c);
            }
            let req = match req.body(Full::new(Bytes::from(p.body.clone()))) {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Fatal {
                        reason: e.to_string(),
                    }
                }
            };
            let resp = match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    return Outcome::Retryable {
                        reason: format!("connection: {e}"),
                        retry_after_ms: None,
                    }
                }
                Err(_) => {
                    return Outcome::Retryable {
                        reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
                        retry_after_ms: None,
                    }
                }
            };
            let status = resp.status();
            let retry_after = crate::retry_after(resp.headers());
            let body = match resp.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Outcome::Retryable {
                        reason: format!("reading the answer: {e}"),
                        retry_after_ms: None,
                    }
                }
            };
            let (reason, timestamp) = reason_of(&body);
            match outcome(status, &reason, timestamp, retry_after) {
                Some(o) => return o,
                None => refused = Some(jwt),
            }
        }
        Outcome::Retryable {
            reason: "provider token refused twice".into(),
            retry_after_ms: None,
        }
    }
}

/// `{"reason": ..., "timestamp": ...}` of an error answer.
fn reason_of(body: &[u8]) -> (String, Option<u64>) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    (
        v["reason"].as_str().unwrap_or("").to_owned(),
        v["timestamp"].as_u64(),
    )
}

/// Apple's answer as an outcome; `None`: the provider token expired, get a
/// new one and send again.
fn outcome(
    status: StatusCode,
    reason: &str,
    timestamp: Option<u64>,
    retry_after_ms: Option<u64>,
) -> Option<Outcome> {
    let o = match (status.as_u16(), reason) {
        (200, _) => Outcome::Delivered,
        (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
            Outcome::InvalidToken {
                reason: reason.to_owned(),
                since_ms: timestamp,
            }
        }
        (403, "ExpiredProviderToken") => return None,
        (429, _) => Outcome::RateLimited { retry_after_ms },
        (500 | 503, _) => Outcome::Retryable {
            reason: format!("{status} {reason}"),
            retry_after_ms,
        },
        _ => Outcome::Fatal {
            reason: format!("{status} {reason}"),
        },
    };
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_push_carries_ids_only_and_collapses_per_conversation() {
        let n = Notification::Message {
            conversation: "g0123".into(),
            seq: 7,
            badge: 3,
            mention: false,
        };
        let p = prepare("com.example.chat", &n, 1000);
        assert_eq!(p.push_type, "alert");
        assert_eq!(p.priority, "10");
        assert_eq!(p.collapse_id.as_deref(), Some("g0123"));
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["aps"]["mutable-content"], 1);
        assert_eq!(v["aps"]["badge"], 3);
        assert_eq!(v["c"], "g0123");
        assert_eq!(p.expiration, 1000 + MESSAGE_TTL_SECS);
        let call = prepare(
            "com.example.chat",
            &Notification::Call {
                call_id: "k1".into(),
                conversation: "d1".into(),
                video: true,
            },
            1000,
        );
        assert_eq!(call.topic, "com.example.chat.voip");
        assert_eq!((call.push_type, call.expiration), ("voip", 0));
        assert_eq!(collapse_id(&"x".repeat(100)).len(), 32);
    }

    #[test]
    fn answers_map_to_outcomes() {
        let ok = StatusCode::OK;
        assert_eq!(outcome(ok, "", None, None), Some(Outcome::Delivered));
        assert_eq!(
            outcome(StatusCode::GONE, "Unregistered", Some(5), None),
            Some(Outcome::InvalidToken {
                reason: "Unregistered".into(),
                since_ms: Some(5)
            })
        );
        assert!(matches!(
            outcome(StatusCode::BAD_REQUEST, "BadDeviceToken", None, None),
            Some(Outcome::InvalidToken { .. })
        ));
        assert!(matches!(
            outcome(StatusCode::BAD_REQUEST, "BadCollapseId", None, None),
            Some(Outcome::Fatal { .. })
        ));
        assert_eq!(
            outcome(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                None,
                Some(3000)
            ),
            Some(Outcome::RateLimited {
                retry_after_ms: Some(3000)
            })
        );
        assert_eq!(
            outcome(StatusCode::FORBIDDEN, "ExpiredProviderToken", None, None),
            None
        );
        assert!(matches!(
            outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                None,
                None
            ),
            Some(Outcome::Retryable { .. })
        ));
    }
}
