//! Firebase Cloud Messaging, HTTP v1 (docs/PUSH.md lists what Google
//! requires): `POST {base}/v1/projects/{project}/messages:send` with an
//! OAuth2 access token, got from the service account's `token_uri` with an
//! RS256 JWT-bearer assertion and cached until shortly before it expires.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Mutex;

use crate::config::FcmApp;
use crate::https::HttpsClient;
use crate::jwt::Rs256;
use crate::{Notification, Outcome, PushError, Target};

/// The OAuth scope for sending.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The assertion's grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Google's limit on a message's payload.
pub const MAX_PAYLOAD: usize = 4096;

/// A client for one project.
pub struct FcmClient {
    project: String,
    base: String,
    client_email: String,
    key_id: String,
    token_uri: String,
    key: Rs256,
    client: HttpsClient,
    token: Mutex<Option<(String, Instant)>>,
}

/// What is sent for `n` to `token`: the `message` of the request.
pub fn message(token: &str, n: &Notification) -> serde_json::Value {
    match n {
        Notification::Message {
            conversation,
            seq,
            badge,
            mention,
        } => serde_json::json!({
            "token": token,
            // Data only: the app builds the notification itself.
            "data": {
                "t": if *mention { "mention" } else { "message" },
                "c": conversation,
                "s": seq.to_string(),
                "badge": badge.to_string(),
            },
            "android": {
                "priority": "HIGH",
                "collapse_key": crate::apns::collapse_id(conversation),
                "ttl": "86400s",
            },
        }),
        Notification::Call {
            call_id,
            conversation,
            video,
        } => serde_json::json!({
            "token": token,
            "data": {
                "t": "call",
                "call": call_id,
                "c": conversation,
                "video": if *video { "1" } else { "0" },
            },
            "android": { "priority": "HIGH", "ttl": "0s" },
        }),
        Notification::CallEnded { call_id } => serde_json::json!({
            "token": token,
            "data": { "t": "call_ended", "call": call_id },
            "android": { "priority": "HIGH", "ttl": "0s" },
        }),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FcmClient {
    /// A client for `app` (reads its service account key).
    pub fn new(app: &FcmApp) -> Result<FcmClient, PushError> {
        let text = std::fs::read_to_string(&app.service_account_file).map_err(|source| {
            PushError::File {
                path: app.service_account_file.clone(),
                source,
            }
        })?;
        let sa: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            PushError::Config(format!("{}: {e}", app.service_account_file.display()))
        })?;
        let field = |k: &str| {
            sa[k].as_str().map(str::to_owned).ok_or_else(|| {
                PushError::Config(format!(
                    "{}: no {k:?} in the service account key",
                    app.service_account_file.display()
                ))
            })
        };
        Ok(FcmClient {
            project: app.project.clone(),
            base: app.base_url.trim_end_matches('/').to_owned(),
            client_email: field("client_email")?,
            key_id: field("private_key_id").unwrap_or_default(),
            token_uri: field("token_uri")?,
            key: Rs256::from_pem(&field("private_key")?)?,
            client: crate::https::http(app.ca_file.as_deref())?,
            token: Mutex::new(None),
        })
    }

    /// The project id.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// An access token: the cached one until a minute before it expires.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut t = self.token.lock().await;
        if let Some((tok, until)) = &*t {
            if Instant::now() < *until {
                return Ok(tok.clone());
            }
        }
        let now = unix_now();
        let assertion = self
            .key
            .sign(
                &serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": self.key_id }),
                &serde_json::json!({
                    "iss": self.client_email,
                    "scope": SCOPE,
                    "aud": self.token_uri,
                    "iat": now,
                    "exp": now + 3600,
                }),
            )
            .map_err(|e| Outcome::Fatal {
                reason: e.to_string(),
            })?;
        let form = format!("grant_type={}&assertion={assertion}", urlencode(GRANT_TYPE));
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Outcome::Fatal {
                reason: e.to_string(),
            })?;
        let (status, _, body) = self.call(req).await?;
        if status != StatusCode::OK {
            let reason = format!(
                "token endpoint: {status} {}",
                String::from_utf8_lossy(&body)
            );
            return Err(if status.is_server_error() {
                Outcome::Retryable {
                    reason,
                    retry_after_ms: None,
                }
            } else {
                Outcome::Fatal { reason }
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (Some(tok), Some(secs)) = (v["access_token"].as_str(), v["expires_in"].as_u64()) else {
            return Err(Outcome::Fatal {
                reason: "token endpoint: no access_token / expires_in".into(),
            });
        };
        let until = Instant::now() + Duration::from_secs(secs.saturating_sub(60));
        *t = Some((tok.to_owned(), until));
        Ok(tok.to_owned())
    }

    async fn call(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), Outcome> {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| Outcome::Retryable {
                reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
                retry_after_ms: None,
            })?
            .map_err(|e| Outcome::Retryable {
                reason: format!("connection: {e}"),
                retry_after_ms: None,
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Outcome::Retryable {
                reason: format!("reading the answer: {e}"),
                retry_after_ms: None,
            })?
            .to_bytes();
        Ok((status, headers, body))
    }

    /// Sends `n` to `target` (an FCM target of this project).
    pub async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        let Target::Fcm { token, .. } = target else {
            return Outcome::Fatal {
                reason: "not an FCM target".into(),
            };
        };
        let body = serde_json::json!({ "message": message(token, n) }).to_string();
        if body.len() > MAX_PAYLOAD {
            return Outcome::Fatal {
                reason: format!("message of {} bytes is over {MAX_PAYLOAD}", body.len()),
            };
        }
        let url = format!("{}/v1/projects/{}/messages:send", self.base, self.project);
        // A second try only if the access token was refused (expired).
        for _ in 0..2 {
            let access = match self.access_token().await {
                Ok(t) => t,
                Err(o) => return o,
            };
            let req = match Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header("authorization", format!("Bearer {access}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))
            {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Fatal {
                        reason: e.to_string(),
                    }
                }
            };
            let (status, headers, answer) = match self.call(req).await {
                Ok(x) => x,
                Err(o) => return o,
            };
            match outcome(status, &answer, crate::retry_after(&headers)) {
                Some(o) => return o,
                None => *self.token.lock().await = None,
            }
        }
        Outcome::Retryable {
            reason: "access token refused twice".into(),
            retry_after_ms: None,
        }
    }
}

/// Percent-encodes what a form value may not hold as is.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `errorCode` of an FCM error body (`details[].errorCode`), else its
/// `status`.
fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let details = v["error"]["details"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    details
        .iter()
        .find_map(|d| d["errorCode"].as_str())
        .or_else(|| v["error"]["status"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// Google's answer as an outcome; `None`: the access token was refused,
/// get a new one and send again.
fn outcome(status: StatusCode, body: &[u8], retry_after_ms: Option<u64>) -> Option<Outcome> {
    let code = error_code(body);
    let o = match (status.as_u16(), code.as_str()) {
        (200, _) => Outcome::Delivered,
        (_, "UNREGISTERED") | (_, "SENDER_ID_MISMATCH") => Outcome::InvalidToken {
            reason: code,
            since_ms: None,
        },
        (401, _) => return None,
        (429, _) => Outcome::RateLimited { retry_after_ms },
        (500 | 503, _) => Outcome::Retryable {
            reason: format!("{status} {code}"),
            retry_after_ms,
        },
        _ => Outcome::Fatal {
            reason: format!("{status} {code}"),
        },
    };
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: &str, code: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": 0, "status": status, "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        ]}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn answers_map_to_outcomes() {
        assert_eq!(
            outcome(StatusCode::OK, b"{}", None),
            Some(Outcome::Delivered)
        );
        assert!(matches!(
            outcome(
                StatusCode::NOT_FOUND,
                &err("NOT_FOUND", "UNREGISTERED"),
                None
            ),
            Some(Outcome::InvalidToken { .. })
        ));
        assert!(matches!(
            outcome(
                StatusCode::FORBIDDEN,
                &err("PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
                None
            ),
            Some(Outcome::InvalidToken { .. })
        ));
        assert!(matches!(
            outcome(
                StatusCode::BAD_REQUEST,
                &err("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
                None
            ),
            Some(Outcome::Fatal { .. })
        ));
        assert_eq!(
            outcome(
                StatusCode::TOO_MANY_REQUESTS,
                &err("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
                Some(7000)
            ),
            Some(Outcome::RateLimited {
                retry_after_ms: Some(7000)
            })
        );
        assert!(matches!(
            outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                &err("UNAVAILABLE", "UNAVAILABLE"),
                None
            ),
            Some(Outcome::Retryable { .. })
        ));
        assert_eq!(outcome(StatusCode::UNAUTHORIZED, b"{}", None), None);
    }

    #[test]
    fn a_message_is_data_only_and_collapses_per_conversation() {
        let m = message(
            "tok",
            &Notification::Message {
                conversation: "d1".into(),
                seq: 4,
                badge: 2,
                mention: true,
            },
        );
        assert!(m.get("notification").is_none());
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["android"]["collapse_key"], "d1");
        assert_eq!(m["data"]["s"], "4");
        assert_eq!(m["data"]["t"], "mention");
        assert_eq!(
            urlencode(GRANT_TYPE),
            "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
        );
    }
}
