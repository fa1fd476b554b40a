//! `$SYS` statistics: published every interval to the configured users,
//! refused to everyone else, never matched by a plain `#`.

mod common;

use common::v4::*;
use common::TestBroker;

#[tokio::test]
async fn sys_topics_reach_only_the_configured_users() {
    let b = TestBroker::with(|c| {
        c.sys.interval_secs = 1;
        c.sys.users = vec!["ops".into()];
    })
    .await;
    // Someone who may not read them: refused, and `#` does not reach them.
    let mut o = opts("bob", b.port());
    o.set_credentials("bob", "");
    let (bob, mut bob_el) = client(o);
    connack(&mut bob_el).await;
    bob.subscribe("$SYS/#", QoS::AtMostOnce).await.unwrap();
    let s = suback(&mut bob_el).await;
    assert_eq!(s.return_codes, [rumqttc::SubscribeReasonCode::Failure]);
    bob.subscribe("#", QoS::AtMostOnce).await.unwrap();
    suback(&mut bob_el).await;

    let mut o = opts("ops-console", b.port());
    o.set_credentials("ops", "");
    let (ops, mut ops_el) = client(o);
    connack(&mut ops_el).await;
    ops.subscribe("$SYS/#", QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        suback(&mut ops_el).await.return_codes,
        [rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    let mut connected = None;
    let mut version = None;
    let mut uptimes = 0;
    // Two rounds of statistics.
    while uptimes < 2 || connected.is_none() || version.is_none() {
        let p = publish(&mut ops_el).await;
        let v = String::from_utf8_lossy(&p.payload).into_owned();
        match p.topic.as_str() {
            "$SYS/broker/clients/connected" => connected = Some(v),
            "$SYS/broker/version" => version = Some(v),
            "$SYS/broker/uptime" => uptimes += 1,
            _ => {}
        }
    }
    let n: u64 = connected.unwrap().parse().unwrap();
    assert!(n >= 2, "bob and the console are connected: {n}");
    assert!(version.unwrap().starts_with("courier "));
    // bob's `#` got none of those rounds: its first message is this one.
    ops.publish("plain/topic", QoS::AtMostOnce, false, "hi")
        .await
        .unwrap();
    tokio::spawn(async move { while ops_el.poll().await.is_ok() {} });
    let first = publish(&mut bob_el).await;
    assert_eq!(first.topic, "plain/topic");
}
