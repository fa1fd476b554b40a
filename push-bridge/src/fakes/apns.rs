//! A fake APNs: HTTP/2 over TLS, `POST /3/device/{token}`, checking the
//! provider token (ES256 signature by the app's key, `kid`, `iss`, not
//! older than an hour), the headers, the collapse id and the payload as
//! Apple documents them (docs/PUSH.md), answering in Apple's error format.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

use super::{json, serve, unix_ms, Log, Received, Script, TestCa};
use crate::config::ApnsApp;

/// The push types Apple knows.
const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
];

/// A running fake, for one app.
pub struct FakeApns {
    /// `https://localhost:PORT`.
    pub url: String,
    /// The app it accepts pushes for.
    pub app: ApnsApp,
    log: Arc<Log>,
    connections: Arc<AtomicU64>,
}

struct Checker {
    topic: String,
    team_id: String,
    key_id: String,
    public_key: Vec<u8>,
    log: Arc<Log>,
}

impl FakeApns {
    /// Starts on 127.0.0.1:`port` (0: any) for bundle id `topic`, with a
    /// new signing key whose `.p8` and the CA are written to `dir`. The
    /// returned `app` is what the bridge's config needs (both hosts point
    /// here).
    pub async fn start(dir: &Path, topic: &str, port: u16) -> std::io::Result<FakeApns> {
        let ca = TestCa::new();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(std::io::Error::other)?;
        let key_file = dir.join("apns-key.p8");
        std::fs::write(&key_file, key.serialize_pem())?;
        let ca_file = ca.write_ca(dir, "apns-ca.pem");
        let log = Arc::new(Log::default());
        let checker = Arc::new(Checker {
            topic: topic.to_owned(),
            team_id: "TEAM123456".into(),
            key_id: "KEY1234567".into(),
            public_key: key.public_key_raw().to_vec(),
            log: log.clone(),
        });
        let connections = Arc::new(AtomicU64::new(0));
        let handler: super::Handler = Arc::new(move |req| {
            let c = checker.clone();
            Box::pin(async move { c.handle(req) })
        });
        let addr = serve(
            &ca,
            SocketAddr::from(([127, 0, 0, 1], port)),
            true,
            handler,
            connections.clone(),
        )
        .await?;
        let url = format!("https://localhost:{}", addr.port());
        Ok(FakeApns {
            app: ApnsApp {
                topic: topic.to_owned(),
                team_id: "TEAM123456".into(),
                key_id: "KEY1234567".into(),
                key_file,
                production_url: url.clone(),
                sandbox_url: url.clone(),
                ca_file: Some(ca_file),
            },
            url,
            log,
            connections,
        })
    }

    /// Answers pushes to `token` with `script`.
    pub fn script(&self, token: &str, script: Script) {
        self.log.scripts.lock().insert(token.to_owned(), script);
    }

    /// Everything received so far.
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

    /// TLS connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Where the CA is.
    pub fn ca_file(&self) -> PathBuf {
        self.app.ca_file.clone().unwrap_or_default()
    }
}

fn err(reason: &str, status: u16) -> (u16, String) {
    (status, reason.to_owned())
}

impl Checker {
    fn handle(&self, req: Request<Bytes>) -> Response<Full<Bytes>> {
        let headers: HashMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let token = req
            .uri()
            .path()
            .strip_prefix("/3/device/")
            .unwrap_or("")
            .to_owned();
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
        let (status, reason, extra) = match self.check(&req, &headers, &token) {
            Err((status, reason)) => (status, reason, None),
            Ok(()) => match self.log.scripted(&token) {
                Some(s) => (s.status, s.reason.clone(), Some(s)),
                None => (200, String::new(), None),
            },
        };
        self.log.record(Received {
            token,
            headers,
            body,
            status,
            at_ms: unix_ms(),
        });
        if status == 200 {
            return json(
                200,
                &[("apns-id", format!("{:032x}", unix_ms()))],
                serde_json::json!({}),
            );
        }
        let mut out_headers = Vec::new();
        let mut body = serde_json::json!({ "reason": reason });
        if let Some(s) = extra {
            if let Some(r) = s.retry_after {
                out_headers.push(("retry-after", r.to_string()));
            }
            if let Some(t) = s.timestamp {
                body["timestamp"] = t.into();
            }
        }
        json(status, &out_headers, body)
    }

    fn check(
        &self,
        req: &Request<Bytes>,
        h: &HashMap<String, String>,
        token: &str,
    ) -> Result<(), (u16, String)> {
        if req.method() != hyper::Method::POST {
            return Err(err("MethodNotAllowed", 405));
        }
        if !req.uri().path().starts_with("/3/device/") {
            return Err(err("BadPath", 404));
        }
        if token.is_empty()
            || !token.len().is_multiple_of(2)
            || !token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(err("BadDeviceToken", 400));
        }
        // The provider token.
        let Some(jwt) = h
            .get("authorization")
            .and_then(|a| a.strip_prefix("bearer "))
        else {
            return Err(err("MissingProviderToken", 403));
        };
        let Some((header, claims, signed, sig)) = crate::jwt::parse(jwt) else {
            return Err(err("InvalidProviderToken", 403));
        };
        if header["alg"] != "ES256" || header["kid"] != self.key_id.as_str() {
            return Err(err("InvalidProviderToken", 403));
        }
        if claims["iss"] != self.team_id.as_str() {
            return Err(err("InvalidProviderToken", 403));
        }
        if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(signed.as_bytes(), &sig)
            .is_err()
        {
            return Err(err("InvalidProviderToken", 403));
        }
        let now = unix_ms() / 1000;
        match claims["iat"].as_u64() {
            Some(iat) if iat > now + 60 => return Err(err("InvalidProviderToken", 403)),
            Some(iat) if now.saturating_sub(iat) > 3600 => {
                return Err(err("ExpiredProviderToken", 403))
            }
            Some(_) => {}
            None => return Err(err("InvalidProviderToken", 403)),
        }
        // The headers.
        let push_type = h
            .get("apns-push-type")
            .map(String::as_str)
            .unwrap_or("alert");
        if !PUSH_TYPES.contains(&push_type) {
            return Err(err("InvalidPushType", 400));
        }
        let Some(topic) = h.get("apns-topic") else {
            return Err(err("MissingTopic", 400));
        };
        let want = if push_type == "voip" {
            format!("{}.voip", self.topic)
        } else {
            self.topic.clone()
        };
        if *topic != want {
            return Err(err("DeviceTokenNotForTopic", 400));
        }
        let priority = h.get("apns-priority").map(String::as_str).unwrap_or("10");
        if !matches!(priority, "10" | "5" | "1") || (push_type == "background" && priority == "10")
        {
            return Err(err("BadPriority", 400));
        }
        if h.get("apns-expiration")
            .is_some_and(|e| e.parse::<u64>().is_err())
        {
            return Err(err("BadExpirationDate", 400));
        }
        if h.get("apns-collapse-id").is_some_and(|c| c.len() > 64) {
            return Err(err("BadCollapseId", 400));
        }
        // The payload.
        let body = req.body();
        if body.is_empty() {
            return Err(err("PayloadEmpty", 400));
        }
        if body.len() > 4096 {
            return Err(err("PayloadTooLarge", 413));
        }
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| err("BadPayload", 400))?;
        if push_type == "alert" && !v["aps"].is_object() {
            return Err(err("BadPayload", 400));
        }
        Ok(())
    }
}
