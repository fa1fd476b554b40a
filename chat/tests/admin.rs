//! The admin API (HTTP, behind the admin key) and `courier admin` against
//! a running broker; `/metrics` scraped and parsed by Prometheus' own
//! parser; and the refresh-token path.

mod common;

use std::net::SocketAddr;

use common::*;
use courier_chat::proto::{self, request::Op, response::Result as R};
use reqwest::{Method, StatusCode};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, PubAckReason};
use serde_json::{json, Value};

/// A chat server with its admin listener on a port of its own.
async fn start(dir: &std::path::Path) -> ChatServer {
    ChatServer::with(dir, |config, _| {
        config.admin.bind = Some("127.0.0.1:0".into());
    })
    .await
}

/// The admin API of `s`, with its key.
struct Admin {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Admin {
    fn of(s: &ChatServer) -> Admin {
        let addr: SocketAddr = s.running.server.admin_addr.expect("admin listener");
        let key = std::fs::read_to_string(s.dir.join("data/admin.key")).unwrap();
        Admin {
            base: format!("http://{addr}"),
            key: key.trim().to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// One call with `key` (None: no Authorization header).
    async fn call_with(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("admin API answers")
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(Some(&self.key), method, path, body).await
    }

    /// A call that must succeed; its answer.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        self.ok(Method::GET, path, None).await
    }

    /// `/metrics` as Prometheus' Python parser reads it: one
    /// `name{labels} value` line per sample (labels sorted, as JSON).
    async fn scrape(&self) -> Vec<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        let body = resp.text().await.unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &body).unwrap();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(PARSE)
            .arg(file.path())
            .output()
            .expect("python3 runs (.ci/run installs prometheus-client)");
        assert!(
            out.status.success(),
            "/metrics does not parse as the Prometheus text format: {}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in f.samples:
        print(s.name + json.dumps(s.labels, sort_keys=True, separators=(",", ":")), s.value)
"#;

/// The value of sample `name` (with labels as the parser prints them, `{}`
/// for none).
fn sample(samples: &[String], name: &str) -> f64 {
    samples
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"))
}

/// Runs `courier -c <conf> admin ...` against `s`; its stdout.
async fn cli(s: &ChatServer, args: &[&str]) -> String {
    let conf = s.dir.join("courier.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = {:?}\n[chat.tokens]\nsecret_file = {:?}\n",
            s.dir.join("data").display().to_string(),
            s.dir.join("chat-secret").display().to_string()
        ),
    )
    .unwrap();
    let admin = s.running.server.admin_addr.unwrap().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("-c")
        .arg(&conf)
        .args(["admin", "--server", &admin])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "courier admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn courier_admin_lists_mints_disables_and_enables() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let mut phone = Phone::connect(&s, "alice", "phone").await;
    assert_eq!(cli(&s, &["users"]).await, "alice: phone (online)\n");

    let token = cli(&s, &["token", "bob", "laptop"]).await;
    let _bob = Phone::connect_with(s.addr(), "bob", "laptop", token.trim()).await;

    cli(&s, &["disable", "alice"]).await;
    assert_eq!(
        phone.until_closed().await,
        Some(DisconnectReasonCode::NotAuthorized)
    );
    let fresh = s.token("alice", "phone");
    assert_eq!(
        try_connect(s.addr(), "alice:phone", "", &fresh).await,
        ConnectReturnCode::NotAuthorized
    );
    assert!(cli(&s, &["users"])
        .await
        .contains("alice [disabled]: phone"));
    cli(&s, &["enable", "alice"]).await;
    let _phone = Phone::connect_with(s.addr(), "alice", "phone", &fresh).await;

    cli(&s, &["revoke", "bob", "laptop"]).await;
    assert!(cli(&s, &["users"]).await.contains("bob: laptop (revoked)"));
    let status: Value = serde_json::from_str(&cli(&s, &["status"]).await).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    s.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_a_missing_or_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let a = Admin::of(&s);
    for path in ["/v1/users", "/metrics", "/v1/sessions", "/v1/nothing"] {
        let (status, v) = a.call_with(None, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {v}");
        let (status, _) = a
            .call_with(Some("not-the-key"), Method::GET, path, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // A refused call does nothing.
    let _alice = Phone::connect(&s, "alice", "phone").await;
    let (status, _) = a
        .call_with(Some("wrong"), Method::POST, "/v1/users/alice/disable", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.get("/v1/users/alice").await["disabled"], false);
    let (status, v) = a.call(Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        sample(&a.scrape().await, "courier_admin_refused_total{}"),
        9.0
    );
    s.stop().await;
}

#[tokio::test]
async fn every_admin_call_works() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let a = Admin::of(&s);

    // A token minted by the API logs a device in.
    let minted = a
        .ok(
            Method::POST,
            "/v1/tokens",
            Some(json!({"user": "carol", "device": "phone", "ttl_secs": 600})),
        )
        .await;
    let mut carol = Phone::connect_with(
        s.addr(),
        "carol",
        "phone",
        minted["access_token"].as_str().unwrap(),
    )
    .await;
    let (status, _) = a
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"user": "a:b", "device": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (_, direct) = alice
        .send_text(To::User("bob"), "1", "hello bob")
        .await
        .unwrap();
    let direct = direct.expect("the conversation's id");
    let group = alice.create_group("team", &["bob", "carol"]).await;
    alice
        .send_text(To::Conversation(&group), "2", "secret plan")
        .await
        .unwrap();
    // Bob has everything so far (and acknowledged it on arrival).
    bob.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Entry(e)) if is_message(e) && text(e) == "secret plan" => Some(()),
        _ => None,
    })
    .await;

    // Users, one user, its devices and their backlogs.
    let users = a.get("/v1/users").await;
    let ids: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob", "carol"]);
    bob.leave().await;
    alice
        .send_text(To::Conversation(&group), "3", "while bob is away")
        .await
        .unwrap();
    // Bob's acknowledgements reach his saved cursor a moment after he
    // sent them; his backlog settles at the one message he missed.
    let deadline = tokio::time::Instant::now() + WAIT;
    let b = loop {
        let b = a.get("/v1/users/bob").await;
        if b["devices"][0]["backlog"] == 1 || tokio::time::Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(b["conversations"], 2, "{b}");
    assert_eq!(b["devices"][0]["online"], false, "{b}");
    assert_eq!(b["devices"][0]["backlog"], 1, "{b}");
    let (status, _) = a.call(Method::GET, "/v1/users/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Sessions with their queue depths.
    let sessions = a.get("/v1/sessions").await;
    let find = |id: &str| {
        sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["client_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no session {id} in {sessions}"))
    };
    assert_eq!(find("alice:phone")["online"], true);
    // Carol has not read her socket: what was sent to her waits for her
    // acknowledgement. Bob's session ended with his connection.
    let c = find("carol:phone");
    assert!(
        c["inflight"].as_u64().unwrap() + c["queued"].as_u64().unwrap() >= 1,
        "{c}"
    );
    assert!(!sessions.to_string().contains("bob:phone"), "{sessions}");

    // Conversations, a page at a time, and one with its members.
    let p1 = a.get("/v1/conversations?limit=1").await;
    assert_eq!(p1["conversations"].as_array().unwrap().len(), 1, "{p1}");
    let after = p1["next"].as_str().expect("a next page").to_owned();
    let p2 = a
        .get(&format!("/v1/conversations?limit=1&after={after}"))
        .await;
    assert_eq!(p2["conversations"].as_array().unwrap().len(), 1, "{p2}");
    assert!(p2.get("next").is_none(), "{p2}");
    let mut listed = vec![
        p1["conversations"][0]["id"].as_str().unwrap().to_owned(),
        p2["conversations"][0]["id"].as_str().unwrap().to_owned(),
    ];
    listed.sort();
    let mut both = vec![direct.clone(), group.clone()];
    both.sort();
    assert_eq!(listed, both);
    let g = a.get(&format!("/v1/conversations/{group}")).await;
    assert_eq!(g["kind"], "group");
    assert_eq!(g["name"], "team");
    assert_eq!(g["members"].as_array().unwrap().len(), 3, "{g}");
    assert_eq!(g["members"][0]["user"], "alice");
    assert_eq!(g["members"][0]["role"], "owner");

    // Kick: the connection closes, and may come back.
    a.ok(Method::POST, "/v1/users/alice/devices/phone/kick", None)
        .await;
    assert!(alice.until_closed().await.is_some());
    let (status, _) = a
        .call(Method::POST, "/v1/users/alice/devices/phone/kick", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not connected any more");
    let mut alice = Phone::connect(&s, "alice", "phone").await;

    // A revoked refresh token no longer logs in; the device still does.
    let refresh = match carol
        .ok(Op::IssueRefreshToken(proto::IssueRefreshToken {}))
        .await
    {
        Some(R::Token(t)) => t.refresh_token,
        other => panic!("{other:?}"),
    };
    a.ok(
        Method::DELETE,
        "/v1/users/carol/devices/phone/refresh-token",
        None,
    )
    .await;
    carol.leave().await;
    assert_eq!(
        try_connect(s.addr(), "carol:phone", "", &refresh).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let c = a.get("/v1/users/carol").await;
    assert_eq!(c["devices"][0]["refresh_token"], false, "{c}");

    // Deleting the group: its members get one last entry removing them
    // all, nothing of what was said is readable, and it is closed.
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let deleted = a
        .ok(Method::DELETE, &format!("/v1/conversations/{group}"), None)
        .await;
    assert_eq!(deleted["erased"], 2, "{deleted}");
    let last = carol
        .next_matching(|d| match &d.kind {
            Some(proto::down::Kind::Entry(e)) => match &e.kind {
                Some(proto::entry::Kind::Membership(m))
                    if m.action == proto::membership::Action::Removed as i32 =>
                {
                    Some(e.clone())
                }
                _ => None,
            },
            _ => None,
        })
        .await;
    assert_eq!(last.sender, "$admin");
    let g = a.get(&format!("/v1/conversations/{group}")).await;
    assert_eq!(g["closed"], true, "{g}");
    assert_eq!(g["members"], json!([]));
    let refused = alice
        .send_text(To::Conversation(&group), "4", "anyone?")
        .await
        .unwrap_err();
    assert_eq!(refused.error.as_deref(), Some("NOT_MEMBER"));

    // Deleting the direct conversation erases its messages; the two can
    // go on talking in it.
    a.ok(Method::DELETE, &format!("/v1/conversations/{direct}"), None)
        .await;
    let history = alice.history(&direct).await;
    assert!(
        history
            .iter()
            .all(|e| !matches!(e.kind, Some(proto::entry::Kind::Content(_)))),
        "{history:?}"
    );
    alice
        .send_text(To::User("bob"), "5", "still here")
        .await
        .unwrap();
    let (status, _) = a
        .call(Method::DELETE, "/v1/conversations/nothing", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A shred takes what was erased out of the store file.
    let shred = a.ok(Method::POST, "/v1/store/shred", None).await;
    assert_eq!(shred["shredded"], true, "{shred}");
    let file = std::fs::read(dir.path().join("data/courier.redb")).unwrap();
    for said in ["secret plan", "while bob is away", "hello bob"] {
        assert!(
            !file.windows(said.len()).any(|w| w == said.as_bytes()),
            "{said:?} is still in the store file"
        );
    }
    let again = a.ok(Method::POST, "/v1/store/shred", None).await;
    assert_eq!(again["shredded"], false, "{again}");

    // The deletions and the refresh revocation outlive a restart.
    drop((alice, carol));
    s.stop().await;
    let s = start(dir.path()).await;
    let a = Admin::of(&s);
    let g = a.get(&format!("/v1/conversations/{group}")).await;
    assert_eq!(g["closed"], true, "{g}");
    let c = a.get("/v1/users/carol").await;
    assert_eq!(c["devices"][0]["refresh_token"], false, "{c}");
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let texts: Vec<Vec<u8>> = alice
        .history(&direct)
        .await
        .into_iter()
        .filter_map(|e| match e.kind {
            Some(proto::entry::Kind::Content(c)) => Some(c.body),
            _ => None,
        })
        .collect();
    assert_eq!(texts, [b"still here".to_vec()]);
    s.stop().await;
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |config, chat| {
        config.admin.bind = Some("127.0.0.1:0".into());
        chat.rate_limits.enabled = true;
        chat.rate_limits.send = courier_chat::ActionLimit {
            device: courier_chat::Rate {
                per_sec: 1,
                burst: 2,
            },
            user: courier_chat::Rate::UNLIMITED,
        };
    })
    .await;
    let a = Admin::of(&s);
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    alice.send_text(To::User("bob"), "1", "one").await.unwrap();
    alice.send_text(To::User("bob"), "2", "two").await.unwrap();
    bob.entries(2).await;
    let limited = alice
        .send_text(To::User("bob"), "3", "three")
        .await
        .unwrap_err();
    assert_eq!(limited.reason, PubAckReason::QuotaExceeded);
    let unknown = alice
        .request(Op::History(proto::History {
            conversation: "g-nothing".into(),
            before: 0,
            after: 0,
            limit: 10,
        }))
        .await;
    assert_ne!(unknown.0, PubAckReason::Success);

    let m = a.scrape().await;
    assert_eq!(sample(&m, "courier_chat_sends_total{}"), 2.0);
    assert_eq!(
        sample(&m, r#"courier_chat_rate_limit_hits_total{"action":"send"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"courier_chat_rate_limit_hits_total{"action":"typing"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(
            &m,
            r#"courier_chat_refusals_total{"reason":"limit_reached"}"#
        ),
        1.0
    );
    assert!(sample(&m, "courier_chat_refused_total{}") >= 2.0);
    assert_eq!(sample(&m, "courier_chat_users{}"), 2.0);
    assert_eq!(sample(&m, "courier_chat_conversations{}"), 1.0);
    assert_eq!(sample(&m, "courier_chat_online_users{}"), 2.0);
    assert_eq!(sample(&m, "courier_connections{}"), 2.0);
    assert!(sample(&m, "courier_publish_received_total{}") >= 4.0);
    assert!(sample(&m, "courier_chat_deliveries_total{}") >= 2.0);
    // The store's commit latency histogram saw the sends' commits.
    assert!(sample(&m, "courier_store_commit_seconds_count{}") >= 2.0);
    assert!(sample(&m, r#"courier_store_commit_seconds_bucket{"le":"+Inf"}"#) >= 2.0);
    s.stop().await;
}

#[tokio::test]
async fn a_device_refreshes_its_access_token_with_its_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut phone = Phone::connect(&s, "alice", "phone").await;
    let refresh = match phone
        .ok(Op::IssueRefreshToken(proto::IssueRefreshToken {}))
        .await
    {
        Some(R::Token(t)) => t.refresh_token,
        other => panic!("{other:?}"),
    };
    assert!(refresh.starts_with("rt1."));
    phone.leave().await;

    // The access token expired: the refresh token gets a new one, and does
    // nothing else.
    let mut r = Phone::connect_with(s.addr(), "alice", "phone", &refresh).await;
    let err = r.send_text(To::User("alice"), "1", "x").await.unwrap_err();
    assert_eq!(err.error.as_deref(), Some("NOT_ALLOWED"));
    let (code, resp) = r.request(Op::ListDevices(proto::ListDevices {})).await;
    assert_eq!(code, PubAckReason::NotAuthorized);
    assert_eq!(
        resp.error.unwrap().code,
        proto::ErrorCode::NotAllowed as i32
    );
    let access = match r
        .ok(Op::RefreshAccessToken(proto::RefreshAccessToken {}))
        .await
    {
        Some(R::Token(t)) => t.access_token,
        other => panic!("{other:?}"),
    };
    r.leave().await;
    let mut phone = Phone::connect_with(s.addr(), "alice", "phone", &access).await;
    assert!(phone
        .ok(Op::ListDevices(proto::ListDevices {}))
        .await
        .is_some());

    // Only the latest refresh token counts, and it survives a restart.
    let wrong = format!("{}{}", "rt1.", "00".repeat(32));
    assert_eq!(
        try_connect(s.addr(), "alice:phone", "", &wrong).await,
        ConnectReturnCode::BadUserNamePassword
    );
    drop(phone);
    s.stop().await;
    let s = ChatServer::start(dir.path()).await;
    assert_eq!(
        try_connect(s.addr(), "alice:phone", "", &refresh).await,
        ConnectReturnCode::Success
    );
    // Revoking the device revokes its refresh token.
    let mut laptop = Phone::connect(&s, "alice", "laptop").await;
    laptop
        .ok(Op::RevokeDevice(proto::RevokeDevice {
            device: "phone".into(),
        }))
        .await;
    assert_eq!(
        try_connect(s.addr(), "alice:phone", "", &refresh).await,
        ConnectReturnCode::NotAuthorized
    );
    s.stop().await;
}
