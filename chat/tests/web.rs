//! The web client (`web/`) in headless Chromium: two browser pages chat
//! with each other and with a Rust SDK client, over the broker's WebSocket
//! listener. Needs `npm ci` in web/ and Debian's chromium (.ci/run
//! installs both); fails, never skips, without them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use courier::config::{ListenerConfig, ListenerKind};
use courier_sdk::{Client, ClientConfig, Event, SendState, To, Token};

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// Serves web/index.html and web/dist/ on a port of its own.
async fn serve_page() -> std::net::SocketAddr {
    use axum::extract::Path as UrlPath;
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    async fn file(UrlPath(path): UrlPath<String>) -> axum::response::Response {
        let allowed = path == "index.html" || path == "dist/app.js" || path == "dist/app.js.map";
        if !allowed {
            return StatusCode::NOT_FOUND.into_response();
        }
        let kind = if path.ends_with(".html") {
            "text/html"
        } else {
            "text/javascript"
        };
        match tokio::fs::read(web_dir().join(&path)).await {
            Ok(b) => ([(header::CONTENT_TYPE, kind)], b).into_response(),
            Err(_) => StatusCode::NOT_FOUND.into_response(),
        }
    }
    let app = axum::Router::new().route("/{*path}", axum::routing::get(file));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

#[tokio::test]
async fn two_browser_pages_chat_with_each_other_and_with_a_rust_sdk_client() {
    // The page and the module, built from the server's schema.
    let build = tokio::process::Command::new("node")
        .arg("build.mjs")
        .current_dir(web_dir())
        .output()
        .await
        .expect("node runs");
    assert!(
        build.status.success(),
        "building web/ failed (run `npm ci` in web/; .ci/run does): {}",
        String::from_utf8_lossy(&build.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |c, _| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Ws,
            bind: "127.0.0.1:0".into(),
            cert: None,
            key: None,
        })
    })
    .await;
    let ws = s.running.server.addr(ListenerKind::Ws).unwrap();
    let page = serve_page().await;

    // alice exists (she logged in once); carol, a Rust SDK client, writes
    // to her before her page opens.
    drop(Phone::connect(&s, "alice", "web").await);
    let tokens = Arc::new(tokens_at(&dir.path().join("chat-secret")));
    let t = tokens.clone();
    let config = ClientConfig::new(
        &s.addr().to_string(),
        "carol",
        "laptop",
        dir.path().join("carol"),
        move || {
            let t = t.clone();
            async move {
                let now = courier::message::unix_now();
                Ok(Token {
                    value: t
                        .mint("carol", "laptop", now, 3600)
                        .map_err(|e| e.to_string())?,
                    expires_at: Some(now + 3600),
                })
            }
        },
    );
    let mut carol = Client::connect(config).unwrap();
    let id = carol
        .send_text(To::User("alice".into()), "hello alice from rust")
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::SendState {
                client_msg_id,
                state: SendState::Sent { .. },
            }) = carol.next_event().await
            {
                if client_msg_id == id {
                    return;
                }
            }
        }
    })
    .await
    .expect("carol's message stored");

    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg("tests/chat.mjs")
            .arg(format!("http://{page}"))
            .arg(format!("ws://{ws}/mqtt"))
            .arg(s.token("alice", "web"))
            .arg(s.token("bob", "web"))
            .current_dir(web_dir())
            .output(),
    )
    .await
    .expect("the browser test ends")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("WEB OK"),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // carol got alice's answer from the browser.
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::Entry(e)) = carol.next_event().await {
                if let Some(courier_sdk::proto::entry::Kind::Content(c)) = &e.kind {
                    return (
                        e.sender.clone(),
                        String::from_utf8_lossy(&c.body).into_owned(),
                    );
                }
            }
        }
    })
    .await
    .expect("alice's message reaches carol");
    assert_eq!(got, ("alice".into(), "hello rust from the browser".into()));
    carol.close().await;
    s.stop().await;
}
