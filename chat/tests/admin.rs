//! `courier admin` against a running broker, and the refresh-token path.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, response::Result as R};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, PubAckReason};

/// Runs `courier -c <conf> admin ...` against `s`; its stdout.
async fn admin(s: &ChatServer, args: &[&str]) -> String {
    let conf = s.dir.join("courier.toml");
    std::fs::write(
        &conf,
        format!(
            "[chat.tokens]\nsecret_file = {:?}\n",
            s.dir.join("chat-secret").display().to_string()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("-c")
        .arg(&conf)
        .args(["admin", "--server", &s.addr().to_string()])
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
async fn an_administrator_lists_mints_disables_and_enables() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut phone = Phone::connect(&s, "alice", "phone").await;
    assert_eq!(admin(&s, &["users"]).await, "alice: phone (online)\n");

    let token = admin(&s, &["token", "bob", "laptop"]).await;
    let _bob = Phone::connect_with(s.addr(), "bob", "laptop", token.trim()).await;

    admin(&s, &["disable", "alice"]).await;
    assert_eq!(
        phone.until_closed().await,
        Some(DisconnectReasonCode::NotAuthorized)
    );
    let fresh = s.token("alice", "phone");
    assert_eq!(
        try_connect(s.addr(), "alice:phone", "", &fresh).await,
        ConnectReturnCode::NotAuthorized
    );
    assert!(admin(&s, &["users"])
        .await
        .contains("alice [disabled]: phone"));
    admin(&s, &["enable", "alice"]).await;
    let _phone = Phone::connect_with(s.addr(), "alice", "phone", &fresh).await;

    admin(&s, &["revoke", "bob", "laptop"]).await;
    assert!(admin(&s, &["users"])
        .await
        .contains("bob: laptop (revoked)"));
    // A device's token is not an administrator's.
    assert_eq!(
        try_connect(s.addr(), "$admin:x", "", &s.token("alice", "phone")).await,
        ConnectReturnCode::BadUserNamePassword
    );
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
