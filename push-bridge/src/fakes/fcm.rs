//! A fake FCM: Google's OAuth token endpoint (the RS256 JWT-bearer grant,
//! checked against the service account's key, audience and scope) and
//! `POST /v1/projects/{project}/messages:send` (the access token, one
//! target, string data values, the size limit, Android fields), answering
//! in Google's error format (docs/PUSH.md).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use parking_lot::Mutex;
use ring::signature::{KeyPair, RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

use super::{json, serve, unix_ms, Log, Received, Script, TestCa};
use crate::config::FcmApp;

/// A test-only RSA key (never a real service account's).
const TEST_KEY: &str = include_str!("test-rsa-key.pem");

/// A running fake, for one project.
pub struct FakeFcm {
    /// `https://localhost:PORT`.
    pub url: String,
    /// What the bridge's config needs.
    pub app: FcmApp,
    log: Arc<Log>,
    state: Arc<State>,
}

struct State {
    project: String,
    client_email: String,
    token_uri: String,
    public_key: Vec<u8>,
    issued: Mutex<HashSet<String>>,
    token_requests: AtomicU64,
    log: Arc<Log>,
}

impl FakeFcm {
    /// Starts on 127.0.0.1:`port` (0: any) for `project`; writes the CA and
    /// a service account key whose `token_uri` points here to `dir`.
    pub async fn start(dir: &Path, project: &str, port: u16) -> std::io::Result<FakeFcm> {
        let ca = TestCa::new();
        let ca_file = ca.write_ca(dir, "fcm-ca.pem");
        let der = crate::jwt::pem_der(TEST_KEY).map_err(std::io::Error::other)?;
        let pair =
            RsaKeyPair::from_pkcs8(&der).map_err(|e| std::io::Error::other(e.to_string()))?;
        // Bind first: the token URI names the port.
        let probe = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let port = probe.local_addr()?.port();
        drop(probe);
        let url = format!("https://localhost:{port}");
        let log = Arc::new(Log::default());
        let state = Arc::new(State {
            project: project.to_owned(),
            client_email: format!("courier-test@{project}.iam.gserviceaccount.com"),
            token_uri: format!("{url}/token"),
            public_key: pair.public_key().as_ref().to_vec(),
            issued: Mutex::new(HashSet::new()),
            token_requests: AtomicU64::new(0),
            log: log.clone(),
        });
        let sa = serde_json::json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": "test-key-1",
            "private_key": TEST_KEY,
            "client_email": state.client_email,
            "token_uri": state.token_uri,
        });
        let service_account_file = dir.join("fcm-service-account.json");
        std::fs::write(&service_account_file, sa.to_string())?;
        let s = state.clone();
        let handler: super::Handler = Arc::new(move |req| {
            let s = s.clone();
            Box::pin(async move { s.handle(req) })
        });
        serve(
            &ca,
            SocketAddr::from(([127, 0, 0, 1], port)),
            false,
            handler,
            Arc::new(AtomicU64::new(0)),
        )
        .await?;
        Ok(FakeFcm {
            app: FcmApp {
                project: project.to_owned(),
                service_account_file,
                base_url: url.clone(),
                ca_file: Some(ca_file),
            },
            url,
            log,
            state,
        })
    }

    /// Answers sends to `token` with `script`.
    pub fn script(&self, token: &str, script: Script) {
        self.log.scripts.lock().insert(token.to_owned(), script);
    }

    /// Every send received so far (token requests are not in it).
    pub fn received(&self) -> Vec<Received> {
        self.log.received.lock().clone()
    }

    /// Waits until `pick` finds what it wants.
    pub async fn wait_for<T>(
        &self,
        within: std::time::Duration,
        pick: impl FnMut(&[Received]) -> Option<T>,
    ) -> Option<T> {
        self.log.wait_for(within, pick).await
    }

    /// Access tokens asked for so far.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    /// Where the CA is.
    pub fn ca_file(&self) -> PathBuf {
        self.app.ca_file.clone().unwrap_or_default()
    }
}

fn google_error(
    status: u16,
    code: &str,
    message: &str,
    headers: &[(&str, String)],
) -> Response<Full<Bytes>> {
    let canonical = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    json(
        status,
        headers,
        serde_json::json!({ "error": {
            "code": status,
            "message": message,
            "status": canonical,
            "details": [{
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": code,
            }],
        }}),
    )
}

impl State {
    fn handle(&self, req: Request<Bytes>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        if req.method() != hyper::Method::POST {
            return google_error(405, "UNSPECIFIED_ERROR", "POST only", &[]);
        }
        if path == "/token" {
            return self.token(&req);
        }
        let send = format!("/v1/projects/{}/messages:send", self.project);
        if path.starts_with("/v1/projects/") && path.ends_with("/messages:send") && path != send {
            return google_error(
                403,
                "SENDER_ID_MISMATCH",
                "not this project's credentials",
                &[],
            );
        }
        if path != send {
            return google_error(404, "UNSPECIFIED_ERROR", "no such method", &[]);
        }
        self.send(&req)
    }

    /// The OAuth 2.0 token endpoint (RFC 7523 JWT-bearer grant).
    fn token(&self, req: &Request<Bytes>) -> Response<Full<Bytes>> {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let bad = |why: &str| {
            json(
                400,
                &[],
                serde_json::json!({ "error": "invalid_grant", "error_description": why }),
            )
        };
        let form: HashMap<String, String> = String::from_utf8_lossy(req.body())
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), decode(v)))
            .collect();
        if form.get("grant_type").map(String::as_str) != Some(crate::fcm::GRANT_TYPE) {
            return json(
                400,
                &[],
                serde_json::json!({ "error": "unsupported_grant_type" }),
            );
        }
        let Some((header, claims, signed, sig)) =
            form.get("assertion").and_then(|a| crate::jwt::parse(a))
        else {
            return bad("not a JWT");
        };
        if header["alg"] != "RS256" {
            return bad("alg must be RS256");
        }
        if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key)
            .verify(signed.as_bytes(), &sig)
            .is_err()
        {
            return bad("Invalid JWT Signature.");
        }
        if claims["iss"] != self.client_email.as_str() {
            return bad("iss is not the service account");
        }
        if claims["aud"] != self.token_uri.as_str() {
            return bad("aud must be the token_uri");
        }
        let scopes = claims["scope"].as_str().unwrap_or("");
        if !scopes.split(' ').any(|s| s == crate::fcm::SCOPE) {
            return bad("scope lacks firebase.messaging");
        }
        let now = unix_ms() / 1000;
        let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
            return bad("iat and exp are required");
        };
        if exp <= iat || exp - iat > 3600 || iat > now + 60 || exp < now {
            return bad("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
        }
        let token = format!("ya29.fake-{}-{}", now, self.issued.lock().len());
        self.issued.lock().insert(token.clone());
        json(
            200,
            &[],
            serde_json::json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }),
        )
    }

    fn send(&self, req: &Request<Bytes>) -> Response<Full<Bytes>> {
        let headers: HashMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
        let token = body["message"]["token"].as_str().unwrap_or("").to_owned();
        let (status, response) = match self.check(req, &headers, &body) {
            Err((status, code, msg)) => (status, google_error(status, &code, &msg, &[])),
            Ok(()) => match self.log.scripted(&token) {
                Some(s) => {
                    let h: Vec<(&str, String)> = s
                        .retry_after
                        .map(|r| ("retry-after", r.to_string()))
                        .into_iter()
                        .collect();
                    (s.status, google_error(s.status, &s.reason, "scripted", &h))
                }
                None => (
                    200,
                    json(
                        200,
                        &[],
                        serde_json::json!({ "name": format!("projects/{}/messages/{}", self.project, unix_ms()) }),
                    ),
                ),
            },
        };
        self.log.record(Received {
            token,
            headers,
            body,
            status,
            at_ms: unix_ms(),
        });
        response
    }

    fn check(
        &self,
        req: &Request<Bytes>,
        h: &HashMap<String, String>,
        body: &serde_json::Value,
    ) -> Result<(), (u16, String, String)> {
        let e = |s: u16, c: &str, m: &str| Err((s, c.to_owned(), m.to_owned()));
        let access = h
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "));
        if !access.is_some_and(|a| self.issued.lock().contains(a)) {
            return e(
                401,
                "UNSPECIFIED_ERROR",
                "Request had invalid authentication credentials.",
            );
        }
        if req.body().len() > 4096 + 64 {
            return e(400, "INVALID_ARGUMENT", "Message is too big");
        }
        let m = &body["message"];
        if !m.is_object() {
            return e(400, "INVALID_ARGUMENT", "no message");
        }
        let targets = ["token", "topic", "condition"]
            .iter()
            .filter(|k| m.get(**k).is_some())
            .count();
        if targets != 1 {
            return e(
                400,
                "INVALID_ARGUMENT",
                "exactly one of token, topic, condition",
            );
        }
        if let Some(data) = m.get("data") {
            let Some(obj) = data.as_object() else {
                return e(400, "INVALID_ARGUMENT", "data must be a map");
            };
            if obj.values().any(|v| !v.is_string()) {
                return e(400, "INVALID_ARGUMENT", "data values must be strings");
            }
            let reserved = ["from", "notification", "message_type"];
            if obj.keys().any(|k| {
                reserved.contains(&k.as_str()) || k.starts_with("google") || k.starts_with("gcm")
            }) {
                return e(400, "INVALID_ARGUMENT", "reserved data key");
            }
        }
        if let Some(a) = m.get("android") {
            if let Some(p) = a.get("priority") {
                if p != "HIGH" && p != "NORMAL" {
                    return e(
                        400,
                        "INVALID_ARGUMENT",
                        "android.priority is HIGH or NORMAL",
                    );
                }
            }
            if let Some(ttl) = a.get("ttl") {
                let ok = ttl
                    .as_str()
                    .and_then(|t| t.strip_suffix('s'))
                    .is_some_and(|n| {
                        !n.is_empty()
                            && n.parse::<f64>()
                                .is_ok_and(|x| (0.0..=2_419_200.0).contains(&x))
                    });
                if !ok {
                    return e(
                        400,
                        "INVALID_ARGUMENT",
                        "android.ttl is a duration like \"3.5s\", at most 28 days",
                    );
                }
            }
        }
        Ok(())
    }
}

/// Form-value percent decoding (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
