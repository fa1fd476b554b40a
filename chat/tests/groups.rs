//! Group management over real sockets: roles and their rights, settings,
//! ownership passing on, invite links, join requests, public groups and
//! the member limit.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, response::Result as R};
use rumqttc::v5::mqttbytes::v5::PubAckReason;

/// A request that must be refused: its error code, checked against the
/// PUBACK's reason code.
async fn refused(p: &mut Phone, op: Op) -> proto::ErrorCode {
    let (reason, r) = p.request(op).await;
    assert_ne!(reason, PubAckReason::Success, "{r:?}");
    let code = r.error.expect("an error").code;
    proto::ErrorCode::try_from(code).unwrap()
}

fn set_role(conv: &str, user: &str, role: proto::Role) -> Op {
    Op::SetRole(proto::SetRole {
        conversation: conv.into(),
        user: user.into(),
        role: role as i32,
    })
}

fn remove(conv: &str, user: &str) -> Op {
    Op::RemoveMember(proto::RemoveMember {
        conversation: conv.into(),
        user: user.into(),
    })
}

fn update(conv: &str, settings: proto::GroupSettings) -> Op {
    Op::UpdateGroup(proto::UpdateGroup {
        conversation: conv.into(),
        settings: Some(settings),
    })
}

fn leave(conv: &str) -> Op {
    Op::Leave(proto::Leave {
        conversation: conv.into(),
    })
}

fn join_by(invite: &str) -> Op {
    Op::JoinGroup(proto::JoinGroup {
        invite: invite.into(),
        conversation: String::new(),
    })
}

async fn invite(p: &mut Phone, conv: &str, max_uses: u32) -> String {
    match p
        .ok(Op::CreateInvite(proto::CreateInvite {
            conversation: conv.into(),
            ttl_secs: 0,
            max_uses,
        }))
        .await
    {
        Some(R::Invite(i)) => i.token,
        other => panic!("{other:?}"),
    }
}

fn group_change(e: &proto::Entry) -> Option<&proto::group_change::Change> {
    match &e.kind {
        Some(proto::entry::Kind::Group(g)) => g.change.as_ref(),
        _ => None,
    }
}

fn membership(e: &proto::Entry) -> Option<(proto::membership::Action, &[String])> {
    match &e.kind {
        Some(proto::entry::Kind::Membership(m)) => Some((m.action(), &m.users)),
        _ => None,
    }
}

#[tokio::test]
async fn roles_are_enforced_and_ownership_passes_when_the_owner_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let mut dave = Phone::connect(&s, "dave", "phone").await;
    let g = alice.create_group("team", &["bob", "carol", "dave"]).await;
    assert_eq!(alice.conversation(&g).await.owner, "alice");
    assert_eq!(bob.conversation(&g).await.role, proto::Role::Member as i32);

    // A member removes nobody and promotes nobody.
    assert_eq!(
        refused(&mut bob, remove(&g, "carol")).await,
        proto::ErrorCode::NotAllowed
    );
    assert_eq!(
        refused(&mut bob, set_role(&g, "bob", proto::Role::Admin)).await,
        proto::ErrorCode::NotAllowed
    );
    // The owner makes bob and carol admins; an admin cannot remove an
    // admin, but removes a member, and renames the group.
    alice.ok(set_role(&g, "bob", proto::Role::Admin)).await;
    alice.ok(set_role(&g, "carol", proto::Role::Admin)).await;
    assert_eq!(
        refused(&mut bob, remove(&g, "carol")).await,
        proto::ErrorCode::NotAllowed
    );
    bob.ok(remove(&g, "dave")).await;
    bob.ok(update(
        &g,
        proto::GroupSettings {
            name: Some("the team".into()),
            announce_only: Some(true),
            ..Default::default()
        },
    ))
    .await;
    // Announce-only: dave is gone; erin joins as a member and may not post.
    let mut erin = Phone::connect(&s, "erin", "phone").await;
    bob.ok(Op::AddMember(proto::AddMember {
        conversation: g.clone(),
        user: "erin".into(),
    }))
    .await;
    let refused_post = erin
        .send_text(To::Conversation(&g), "1", "may I?")
        .await
        .unwrap_err();
    assert_eq!(refused_post.error.as_deref(), Some("NOT_ALLOWED"));
    carol
        .send_text(To::Conversation(&g), "1", "admins may")
        .await
        .unwrap();

    // Every change is in the log, in order, with who did it (carol's own
    // message is not sent back to her).
    let log = carol.entries(6).await;
    let who: Vec<&str> = log.iter().map(|e| e.sender.as_str()).collect();
    assert_eq!(who, ["alice", "alice", "alice", "bob", "bob", "bob"]);
    assert!(matches!(
        group_change(&log[1]),
        Some(proto::group_change::Change::Role(r)) if r.user == "bob" && r.role == proto::Role::Admin as i32
    ));
    assert!(matches!(
        membership(&log[3]),
        Some((proto::membership::Action::Removed, u)) if u == ["dave"]
    ));
    assert!(matches!(
        group_change(&log[4]),
        Some(proto::group_change::Change::Settings(st)) if st.name.as_deref() == Some("the team") && st.announce_only == Some(true) && st.description.is_none()
    ));
    // dave heard he was removed, and is out.
    let last = dave.entries(4).await;
    assert!(matches!(
        membership(&last[3]),
        Some((proto::membership::Action::Removed, _))
    ));
    assert_eq!(
        refused(&mut dave, leave(&g)).await,
        proto::ErrorCode::NotMember
    );

    // The owner leaves: the longest-standing admin (bob and carol joined
    // together; by user id, bob) owns it now, and the entry after the
    // departure says so.
    alice.ok(leave(&g)).await;
    let after = carol.entries(2).await;
    assert!(matches!(
        membership(&after[0]),
        Some((proto::membership::Action::Left, u)) if u == ["alice"]
    ));
    assert!(matches!(
        group_change(&after[1]),
        Some(proto::group_change::Change::Role(r)) if r.user == "bob" && r.role == proto::Role::Owner as i32
    ));
    let token = invite(&mut bob, &g, 0).await;

    // It survives a restart: roles, settings, invite links.
    drop((alice, bob, carol, dave, erin));
    s.stop().await;
    let s = ChatServer::start(dir.path()).await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let mut erin = Phone::connect(&s, "erin", "phone").await;
    let c = carol.conversation(&g).await;
    assert_eq!(c.owner, "bob");
    assert_eq!(c.admins, ["carol"]);
    assert_eq!(c.name, "the team");
    assert!(c.announce_only);
    assert_eq!(c.role, proto::Role::Admin as i32);

    // Ownership is handed on explicitly; the old owner is an admin.
    bob.ok(set_role(&g, "carol", proto::Role::Owner)).await;
    let c = bob.conversation(&g).await;
    assert_eq!(
        (c.owner.as_str(), c.role),
        ("carol", proto::Role::Admin as i32)
    );
    // The owner cannot be demoted, by an admin or anyone.
    assert_eq!(
        refused(&mut bob, set_role(&g, "carol", proto::Role::Admin)).await,
        proto::ErrorCode::NotAllowed
    );
    assert_eq!(
        refused(&mut bob, remove(&g, "carol")).await,
        proto::ErrorCode::NotAllowed
    );

    // The last to leave closes the group: its invite link leads nowhere.
    for p in [&mut bob, &mut carol, &mut erin] {
        p.ok(leave(&g)).await;
    }
    let mut frank = Phone::connect(&s, "frank", "phone").await;
    assert_eq!(
        refused(&mut frank, join_by(&token)).await,
        proto::ErrorCode::UnknownConversation
    );
    s.stop().await;
}

#[tokio::test]
async fn invite_links_work_until_revoked_or_used_up_and_join_requests_wait_for_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let mut dave = Phone::connect(&s, "dave", "phone").await;
    let g = alice.create_group("book club", &[]).await;

    // A one-use link lets bob in, and nobody after him.
    let once = invite(&mut alice, &g, 1).await;
    match bob.ok(join_by(&once)).await {
        Some(R::Conversation(c)) => assert_eq!(c.conversation.unwrap().id, g),
        other => panic!("{other:?}"),
    }
    // The members hear of it (the joining device has its own answer).
    let joined = alice.entry().await;
    assert!(matches!(
        membership(&joined),
        Some((proto::membership::Action::Joined, u)) if u == ["bob"]
    ));
    assert_eq!(
        refused(&mut carol, join_by(&once)).await,
        proto::ErrorCode::InviteInvalid
    );
    // A revoked link lets nobody in; a member may not make links.
    let revoked = invite(&mut alice, &g, 0).await;
    alice
        .ok(Op::RevokeInvite(proto::RevokeInvite {
            conversation: g.clone(),
            token: revoked.clone(),
        }))
        .await;
    assert_eq!(
        refused(&mut carol, join_by(&revoked)).await,
        proto::ErrorCode::InviteInvalid
    );
    assert_eq!(
        refused(&mut carol, join_by("inv_nonsense")).await,
        proto::ErrorCode::InviteInvalid
    );
    assert_eq!(
        refused(
            &mut bob,
            Op::CreateInvite(proto::CreateInvite {
                conversation: g.clone(),
                ttl_secs: 0,
                max_uses: 0,
            })
        )
        .await,
        proto::ErrorCode::NotAllowed
    );
    match alice
        .ok(Op::ListInvites(proto::ListInvites {
            conversation: g.clone(),
        }))
        .await
    {
        Some(R::Invites(l)) => {
            let mut seen: Vec<(String, u32, bool)> = l
                .invites
                .into_iter()
                .map(|i| (i.token, i.uses, i.revoked))
                .collect();
            seen.sort();
            let mut want = vec![(once.clone(), 1, false), (revoked.clone(), 0, true)];
            want.sort();
            assert_eq!(seen, want);
        }
        other => panic!("{other:?}"),
    }

    // With approval required, a link only asks; the admins see the
    // request in the log, and answer it.
    alice
        .ok(update(
            &g,
            proto::GroupSettings {
                approval_required: Some(true),
                ..Default::default()
            },
        ))
        .await;
    let open = invite(&mut alice, &g, 0).await;
    for p in [&mut carol, &mut dave] {
        assert!(matches!(
            p.ok(join_by(&open)).await,
            Some(R::JoinPending(j)) if j.conversation == g
        ));
    }
    match alice
        .ok(Op::ListJoinRequests(proto::ListJoinRequests {
            conversation: g.clone(),
        }))
        .await
    {
        Some(R::JoinRequests(j)) => assert_eq!(j.users, ["carol", "dave"]),
        other => panic!("{other:?}"),
    }
    // Members may not answer.
    assert_eq!(
        refused(
            &mut bob,
            Op::AnswerJoinRequest(proto::AnswerJoinRequest {
                conversation: g.clone(),
                user: "carol".into(),
                approve: true,
            })
        )
        .await,
        proto::ErrorCode::NotAllowed
    );
    for (who, approve) in [("carol", true), ("dave", false)] {
        alice
            .ok(Op::AnswerJoinRequest(proto::AnswerJoinRequest {
                conversation: g.clone(),
                user: who.into(),
                approve,
            }))
            .await;
    }
    let e = carol.entry().await;
    assert!(matches!(
        membership(&e),
        Some((proto::membership::Action::Joined, u)) if u == ["carol"]
    ));
    let e = dave.entry().await;
    assert!(matches!(
        group_change(&e),
        Some(proto::group_change::Change::JoinRejected(u)) if u == "dave"
    ));
    assert_eq!(
        refused(
            &mut dave,
            Op::History(proto::History {
                conversation: g.clone(),
                before: 100,
                after: 0,
                limit: 10,
            })
        )
        .await,
        proto::ErrorCode::NotMember
    );
    // bob saw it all in order: settings, two requests, carol in, dave not.
    let seen = bob.entries(5).await;
    assert!(matches!(
        group_change(&seen[0]),
        Some(proto::group_change::Change::Settings(_))
    ));
    assert!(matches!(
        group_change(&seen[1]),
        Some(proto::group_change::Change::JoinRequested(u)) if u == "carol"
    ));
    assert!(matches!(
        group_change(&seen[2]),
        Some(proto::group_change::Change::JoinRequested(u)) if u == "dave"
    ));
    assert!(membership(&seen[3]).is_some());
    assert!(matches!(
        group_change(&seen[4]),
        Some(proto::group_change::Change::JoinRejected(_))
    ));
    s.stop().await;
}

#[tokio::test]
async fn public_groups_are_found_by_name_and_joined_without_an_invite() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut ids = Vec::new();
    for (name, public) in [
        ("Rust Paris", true),
        ("Rust Berlin", true),
        ("Rusty secret", false),
    ] {
        let g = alice.create_group(name, &[]).await;
        alice
            .ok(update(
                &g,
                proto::GroupSettings {
                    public: Some(public),
                    description: Some(format!("about {name}")),
                    ..Default::default()
                },
            ))
            .await;
        ids.push(g);
    }
    let search = |offset, limit| {
        Op::SearchGroups(proto::SearchGroups {
            prefix: "rust".into(),
            offset,
            limit,
        })
    };
    match bob.ok(search(0, 0)).await {
        Some(R::Groups(f)) => {
            let names: Vec<&str> = f.groups.iter().map(|g| g.name.as_str()).collect();
            assert_eq!(names, ["Rust Berlin", "Rust Paris"]);
            assert!(!f.more);
            assert_eq!(f.groups[0].description, "about Rust Berlin");
        }
        other => panic!("{other:?}"),
    }
    match bob.ok(search(1, 1)).await {
        Some(R::Groups(f)) => {
            assert_eq!(f.groups.len(), 1);
            assert_eq!(f.groups[0].id, ids[0]);
            assert!(!f.more);
        }
        other => panic!("{other:?}"),
    }
    match bob.ok(search(0, 1)).await {
        Some(R::Groups(f)) => assert!(f.more),
        other => panic!("{other:?}"),
    }
    bob.ok(Op::JoinGroup(proto::JoinGroup {
        invite: String::new(),
        conversation: ids[1].clone(),
    }))
    .await;
    assert_eq!(bob.conversation(&ids[1]).await.members, ["alice", "bob"]);
    assert_eq!(
        refused(
            &mut bob,
            Op::JoinGroup(proto::JoinGroup {
                invite: String::new(),
                conversation: ids[2].clone(),
            })
        )
        .await,
        proto::ErrorCode::NotAllowed
    );
    s.stop().await;
}

#[tokio::test]
async fn the_member_limit_holds_on_every_path_that_adds_members() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |_, chat| chat.max_group_members = 3).await;
    let mut phones = Vec::new();
    for u in ["alice", "bob", "carol", "dave"] {
        phones.push(Phone::connect(&s, u, "phone").await);
    }
    let [alice, bob, carol, dave] = &mut phones[..] else {
        unreachable!()
    };
    let too_many = Op::CreateGroup(proto::CreateGroup {
        name: "big".into(),
        members: vec!["bob".into(), "carol".into(), "dave".into()],
    });
    assert_eq!(
        refused(alice, too_many).await,
        proto::ErrorCode::LimitReached
    );
    let g = alice.create_group("small", &["bob"]).await;
    // The group's own limit: at most the server's, not below its size.
    assert_eq!(
        refused(
            alice,
            update(
                &g,
                proto::GroupSettings {
                    max_members: Some(4),
                    ..Default::default()
                }
            )
        )
        .await,
        proto::ErrorCode::LimitReached
    );
    alice
        .ok(update(
            &g,
            proto::GroupSettings {
                max_members: Some(2),
                ..Default::default()
            },
        ))
        .await;
    let add = |u: &str| {
        Op::AddMember(proto::AddMember {
            conversation: g.clone(),
            user: u.into(),
        })
    };
    assert_eq!(
        refused(alice, add("carol")).await,
        proto::ErrorCode::LimitReached
    );
    let token = invite(alice, &g, 0).await;
    assert_eq!(
        refused(carol, join_by(&token)).await,
        proto::ErrorCode::LimitReached
    );
    // Back to the server's limit: one more fits, by any path.
    alice
        .ok(update(
            &g,
            proto::GroupSettings {
                max_members: Some(0),
                ..Default::default()
            },
        ))
        .await;
    carol.ok(join_by(&token)).await;
    assert_eq!(
        refused(dave, join_by(&token)).await,
        proto::ErrorCode::LimitReached
    );
    assert_eq!(
        refused(alice, add("dave")).await,
        proto::ErrorCode::LimitReached
    );
    let _ = bob;
    s.stop().await;
}
