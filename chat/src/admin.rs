//! The chat layer's part of the admin API (the core's admin listener
//! serves it, behind the admin key): users, devices, tokens and
//! conversations, and the chat metrics on `/metrics`. Every change is
//! durable before it is answered. docs/admin-api.yaml describes it.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use courier::admin::{counter, gauge, ApiError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::error::ChatError;
use crate::records::{self, conversation_log, inbox_log, Action, ConvKind, DirRecord, StoredEntry};
use crate::{inbox, topics, Chat};

/// Most conversations one page lists.
const MAX_PAGE: usize = 1000;
/// Longest lifetime of a minted token (a year).
const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

/// The routes, for [`courier::admin::Extension::routes`].
pub(crate) fn routes(chat: Arc<Chat>) -> Router {
    Router::new()
        .route("/v1/users", get(list_users))
        .route("/v1/users/{user}", get(get_user))
        .route("/v1/users/{user}/disable", post(disable))
        .route("/v1/users/{user}/enable", post(enable))
        .route("/v1/users/{user}/devices/{device}/revoke", post(revoke))
        .route("/v1/users/{user}/devices/{device}/kick", post(kick))
        .route(
            "/v1/users/{user}/devices/{device}/refresh-token",
            delete(revoke_refresh),
        )
        .route("/v1/tokens", post(mint))
        .route("/v1/conversations", get(list_conversations))
        .route(
            "/v1/conversations/{id}",
            get(get_conversation).delete(delete_conversation),
        )
        .with_state(chat)
}

fn api(e: ChatError) -> ApiError {
    let status = match &e {
        ChatError::BadRequest(_) | ChatError::TooLarge { .. } => StatusCode::BAD_REQUEST,
        ChatError::UnknownUser(_) | ChatError::UnknownConversation | ChatError::UnknownMessage => {
            StatusCode::NOT_FOUND
        }
        ChatError::NotAllowed(_) | ChatError::NotMember | ChatError::Blocked => {
            StatusCode::FORBIDDEN
        }
        ChatError::InviteInvalid(_) | ChatError::LimitReached(_) => StatusCode::CONFLICT,
        ChatError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ChatError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError(status, e.to_string())
}

/// Waits until every change made so far is on disk.
async fn durable(chat: &Chat) -> Result<(), ApiError> {
    let b = chat.broker().map_err(api)?;
    b.durable()
        .await
        .map_err(|e| api(ChatError::Unavailable(e.to_string())))
}

/// A device, as an operator sees it.
#[derive(Debug, Serialize)]
struct DeviceView {
    id: String,
    revoked: bool,
    online: bool,
    /// It holds a refresh token.
    refresh_token: bool,
    /// Inbox entries it has not acknowledged yet.
    backlog: u64,
}

/// A user, as an operator sees it.
#[derive(Debug, Serialize)]
struct UserView {
    id: String,
    disabled: bool,
    conversations: usize,
    devices: Vec<DeviceView>,
}

fn user_view(chat: &Chat, d: &Directory, id: &str) -> Result<UserView, ChatError> {
    let u = d
        .users
        .get(id)
        .ok_or_else(|| ChatError::UnknownUser(id.to_owned()))?;
    let broker = chat.broker()?;
    let logs = broker.logs();
    let last = logs.last(&inbox_log(id))?;
    let mut devices = Vec::new();
    for (dev, info) in &u.devices {
        let cursor = inbox::saved_cursor(logs, id, dev)?;
        devices.push(DeviceView {
            id: dev.clone(),
            revoked: info.revoked,
            online: broker.is_connected(&topics::client_id(id, dev)),
            refresh_token: info.refresh.is_some(),
            backlog: if info.revoked {
                0
            } else {
                last.saturating_sub(cursor)
            },
        });
    }
    Ok(UserView {
        id: id.to_owned(),
        disabled: u.disabled,
        conversations: u.conversations.len(),
        devices,
    })
}

async fn list_users(State(chat): State<Arc<Chat>>) -> Result<Json<Vec<UserView>>, ApiError> {
    // Cursors saved lately become readable with a commit.
    durable(&chat).await?;
    let d = chat.dir.lock();
    let mut ids: Vec<&String> = d.users.keys().collect();
    ids.sort();
    let users = ids
        .into_iter()
        .map(|id| user_view(&chat, &d, id))
        .collect::<Result<_, _>>()
        .map_err(api)?;
    Ok(Json(users))
}

async fn get_user(
    State(chat): State<Arc<Chat>>,
    Path(user): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    durable(&chat).await?;
    let d = chat.dir.lock();
    Ok(Json(user_view(&chat, &d, &user).map_err(api)?))
}

async fn disable(
    State(chat): State<Arc<Chat>>,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    chat.set_disabled(&user, true).map_err(api)?;
    durable(&chat).await?;
    Ok(Json(serde_json::json!({ "user": user, "disabled": true })))
}

async fn enable(
    State(chat): State<Arc<Chat>>,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    chat.set_disabled(&user, false).map_err(api)?;
    durable(&chat).await?;
    Ok(Json(serde_json::json!({ "user": user, "disabled": false })))
}

fn known_device(chat: &Chat, user: &str, device: &str) -> Result<(), ApiError> {
    if chat.dir.lock().device(user, device).is_none() {
        return Err(ApiError::not_found(format!(
            "no device {device:?} of {user:?}"
        )));
    }
    Ok(())
}

async fn revoke(
    State(chat): State<Arc<Chat>>,
    Path((user, device)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_device(&chat, &user, &device)?;
    chat.revoke(&user, &device, topics::ADMIN_USER)
        .map_err(api)?;
    durable(&chat).await?;
    Ok(Json(
        serde_json::json!({ "user": user, "device": device, "revoked": true }),
    ))
}

async fn kick(
    State(chat): State<Arc<Chat>>,
    Path((user, device)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_device(&chat, &user, &device)?;
    let broker = chat.broker().map_err(api)?;
    if !broker.disconnect(&topics::client_id(&user, &device)) {
        return Err(ApiError::not_found(format!(
            "{user:?}'s device {device:?} is not connected"
        )));
    }
    tracing::info!(
        user,
        device,
        "chat: device disconnected by an administrator"
    );
    Ok(Json(
        serde_json::json!({ "user": user, "device": device, "kicked": true }),
    ))
}

async fn revoke_refresh(
    State(chat): State<Arc<Chat>>,
    Path((user, device)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_device(&chat, &user, &device)?;
    let rec = DirRecord::RefreshRevoked {
        user: user.clone(),
        device: device.clone(),
    };
    {
        let mut d = chat.dir.lock();
        chat.dir_append(std::slice::from_ref(&rec)).map_err(api)?;
        d.apply(&rec);
    }
    durable(&chat).await?;
    // A connection made with the old refresh token goes too.
    if let Ok(b) = chat.broker() {
        b.disconnect(&topics::client_id(&user, &device));
    }
    tracing::info!(
        user,
        device,
        "chat: refresh token revoked by an administrator"
    );
    Ok(Json(
        serde_json::json!({ "user": user, "device": device, "refresh_token": false }),
    ))
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    user: String,
    device: String,
    /// Lifetime in seconds (default: `[chat.tokens] mint_ttl_secs`).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Minted {
    access_token: String,
    expires_at: u64,
}

async fn mint(
    State(chat): State<Arc<Chat>>,
    Json(m): Json<MintRequest>,
) -> Result<Json<Minted>, ApiError> {
    if !topics::valid_id(&m.user) || !topics::valid_id(&m.device) {
        return Err(ApiError::bad_request(
            "user and device ids are 1 to 64 of A-Z a-z 0-9 _ - .",
        ));
    }
    let now = courier::message::unix_now();
    let ttl = m.ttl_secs.unwrap_or(chat.config.tokens.mint_ttl_secs);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be 1 to {MAX_TTL_SECS}"
        )));
    }
    let access_token = chat
        .tokens
        .mint(&m.user, &m.device, now, ttl)
        .map_err(|e| {
            ApiError(
                StatusCode::CONFLICT,
                format!("the broker mints no tokens: {e}"),
            )
        })?;
    tracing::info!(
        user = m.user,
        device = m.device,
        ttl,
        "chat: access token minted by an administrator"
    );
    Ok(Json(Minted {
        access_token,
        expires_at: now + ttl,
    }))
}

/// A page of conversations: `?after=<id>&limit=<n>`, by id.
#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct ConversationView {
    id: String,
    kind: &'static str,
    name: String,
    member_count: usize,
    last_seq: u64,
    /// Unix ms of its last entry (0: none since the start).
    last_ms: u64,
    closed: bool,
}

#[derive(Debug, Serialize)]
struct ConversationPage {
    conversations: Vec<ConversationView>,
    /// Pass as `after` for the next page (absent: this was the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

fn kind_name(k: ConvKind) -> &'static str {
    match k {
        ConvKind::Direct => "direct",
        ConvKind::Group => "group",
    }
}

async fn list_conversations(
    State(chat): State<Arc<Chat>>,
    Query(p): Query<Page>,
) -> Result<Json<ConversationPage>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let d = chat.dir.lock();
    let mut ids: Vec<&String> = d
        .conversations
        .keys()
        .filter(|id| p.after.as_ref().is_none_or(|a| id.as_str() > a.as_str()))
        .collect();
    ids.sort();
    let more = ids.len() > limit;
    ids.truncate(limit);
    let conversations: Vec<ConversationView> = ids
        .iter()
        .map(|id| {
            let c = &d.conversations[id.as_str()];
            ConversationView {
                id: (*id).clone(),
                kind: kind_name(c.kind),
                name: c.name.clone(),
                member_count: c.members.len(),
                last_seq: c.last_seq,
                last_ms: c.last_ms,
                closed: c.closed,
            }
        })
        .collect();
    let next = more
        .then(|| conversations.last().map(|c| c.id.clone()))
        .flatten();
    Ok(Json(ConversationPage {
        conversations,
        next,
    }))
}

#[derive(Debug, Serialize)]
struct MemberView {
    user: String,
    role: &'static str,
    /// The entry that made it a member.
    since: u64,
    delivered: u64,
    read: u64,
}

#[derive(Debug, Serialize)]
struct ConversationDetail {
    #[serde(flatten)]
    summary: ConversationView,
    members: Vec<MemberView>,
}

async fn get_conversation(
    State(chat): State<Arc<Chat>>,
    Path(id): Path<String>,
) -> Result<Json<ConversationDetail>, ApiError> {
    let d = chat.dir.lock();
    let c = d
        .conversations
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no conversation {id:?}")))?;
    let members = c
        .members
        .iter()
        .map(|(u, m)| MemberView {
            user: u.clone(),
            role: match m.role {
                records::Role::Owner => "owner",
                records::Role::Admin => "admin",
                records::Role::Member => "member",
            },
            since: m.since,
            delivered: m.delivered,
            read: m.read,
        })
        .collect();
    Ok(Json(ConversationDetail {
        summary: ConversationView {
            id: id.clone(),
            kind: kind_name(c.kind),
            name: c.name.clone(),
            member_count: c.members.len(),
            last_seq: c.last_seq,
            last_ms: c.last_ms,
            closed: c.closed,
        },
        members,
    }))
}

async fn delete_conversation(
    State(chat): State<Arc<Chat>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Entries are erased once committed; one appended meanwhile is waited
    // for, a few times, then the caller is told to try again.
    for _ in 0..10 {
        durable(&chat).await?;
        if let Some((erased, woken)) = chat.delete_conversation(&id).map_err(api)? {
            durable(&chat).await?;
            if !woken.is_empty() {
                let _ = chat.events.send(crate::delivery::Event::InboxGrew(woken));
            }
            return Ok(Json(serde_json::json!({ "id": id, "erased": erased })));
        }
    }
    Err(ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the conversation is too busy to delete now; try again".into(),
    ))
}

impl Chat {
    /// Disables (or enables) `user`: a disabled user's devices are
    /// disconnected at once and refused until it is enabled again.
    pub(crate) fn set_disabled(&self, user: &str, disabled: bool) -> Result<(), ChatError> {
        let devices: Vec<String> = {
            let mut d = self.dir.lock();
            let Some(u) = d.users.get(user) else {
                return Err(ChatError::UnknownUser(user.to_owned()));
            };
            let devices = u.devices.keys().cloned().collect();
            let rec = DirRecord::UserDisabled {
                user: user.to_owned(),
                disabled,
            };
            self.dir_append(std::slice::from_ref(&rec))?;
            d.apply(&rec);
            devices
        };
        if disabled {
            let broker = self.broker()?;
            for dev in devices {
                broker.disconnect(&topics::client_id(user, &dev));
            }
        }
        tracing::info!(
            user,
            disabled,
            "chat: user disabled or enabled by an administrator"
        );
        Ok(())
    }

    /// Erases what was said in conversation `id` (messages, edits,
    /// reactions: every API leaves them out at once, the store's files
    /// lose them as docs/DURABILITY.md says); a group also loses all its
    /// members, in one last entry, and is closed. A direct conversation
    /// stays, empty, so its two users can go on. `None`: an entry is not
    /// committed yet (wait for a commit and call again). Otherwise the
    /// number of entries erased, and whose inboxes grew.
    pub(crate) fn delete_conversation(
        &self,
        id: &str,
    ) -> Result<Option<(u64, Vec<String>)>, ChatError> {
        let broker = self.broker()?;
        let logs = broker.logs();
        let log = conversation_log(id);
        let last = {
            let d = self.dir.lock();
            let c = d
                .conversations
                .get(id)
                .ok_or(ChatError::UnknownConversation)?;
            c.last_seq
        };
        if logs.last_committed(&log)? < last {
            return Ok(None);
        }
        // Committed entries change only by erasure: read without the
        // directory lock, so sends elsewhere go on meanwhile.
        let mut erased = Vec::new();
        let mut from = 1;
        while from <= last {
            let page = logs.read(&log, from, 512)?;
            let Some(end) = page.last().map(|r| r.seq) else {
                break;
            };
            for r in page.iter().filter(|r| r.seq <= last) {
                let Some(e) = records::decode::<StoredEntry>(&r.data) else {
                    continue;
                };
                use records::StoredKind as K;
                if matches!(
                    e.kind,
                    K::Content { .. } | K::Message(_) | K::Edit { .. } | K::Reaction { .. }
                ) {
                    // Reads leave it out from the next commit, which the
                    // caller waits for before answering.
                    logs.erase(&log, r.seq);
                    erased.push(r.seq);
                }
            }
            from = end + 1;
        }
        let mut d = self.dir.lock();
        let c = d
            .conversations
            .get(id)
            .ok_or(ChatError::UnknownConversation)?;
        let (kind, members) = (c.kind, c.members.keys().cloned().collect::<Vec<_>>());
        let told = members.clone();
        let mut woken = Vec::new();
        if kind == ConvKind::Group && !members.is_empty() {
            self.change(
                &mut d,
                id,
                (topics::ADMIN_USER, ""),
                Action::Removed,
                members.clone(),
                String::new(),
            )?;
            woken = members;
        }
        drop(d);
        let n = erased.len() as u64;
        if !erased.is_empty() {
            // Online devices drop what they hold of them.
            let _ = self.events.send(crate::delivery::Event::Expired {
                conversation: id.to_owned(),
                seqs: erased,
                to: Some(told),
            });
        }
        tracing::info!(
            conversation = id,
            erased = n,
            "chat: conversation deleted by an administrator"
        );
        Ok(Some((n, woken)))
    }
}

/// The chat layer's counters and gauges, read at each scrape.
#[derive(Debug)]
pub(crate) struct ChatMetrics(pub std::sync::Weak<Chat>);

impl Collector for ChatMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(chat) = self.0.upgrade() else {
            return Ok(());
        };
        for (name, help, value) in chat.metrics.described() {
            counter(&mut enc, &format!("courier_chat_{name}"), help, value)?;
        }
        chat.metrics.encode_labelled(&mut enc)?;
        if let Some(pm) = chat.push_metrics() {
            use prometheus_client::encoding::EncodeMetric;
            for (name, help, value) in pm.snapshot() {
                let name = format!("courier_push_{name}");
                if name == "courier_push_pending" {
                    gauge(&mut enc, &name, help, value as i64)?;
                } else {
                    counter(&mut enc, &name, help, value)?;
                }
            }
            let m = enc.encode_descriptor(
                "courier_push_send_seconds",
                "Time from a push's send to the provider's answer",
                None,
                pm.latency.metric_type(),
            )?;
            pm.latency.encode(m)?;
        }
        let (users, devices, conversations) = {
            let d = chat.dir.lock();
            let devices = d.users.values().map(|u| u.devices.len()).sum::<usize>();
            (d.users.len(), devices, d.conversations.len())
        };
        gauge(&mut enc, "courier_chat_users", "Users known", users as i64)?;
        gauge(
            &mut enc,
            "courier_chat_devices",
            "Devices known",
            devices as i64,
        )?;
        gauge(
            &mut enc,
            "courier_chat_conversations",
            "Conversations, direct and group",
            conversations as i64,
        )?;
        gauge(
            &mut enc,
            "courier_chat_online_users",
            "Users with at least one device connected",
            chat.presence.online_count() as i64,
        )?;
        gauge(
            &mut enc,
            "courier_chat_expiry_timers",
            "Disappearing messages waiting to expire",
            chat.timers.len() as i64,
        )
    }
}

#[cfg(test)]
mod tests {
    /// Every route is in docs/admin-api.yaml (with the core's).
    #[test]
    fn the_openapi_file_describes_every_route() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/admin-api.yaml"
        ))
        .unwrap();
        let code = include_str!("admin.rs");
        let core = include_str!("../../broker/src/admin.rs");
        let mut n = 0;
        for src in [code, core] {
            for line in src.lines() {
                // `.route("/path", ...)`, or the path alone on its line.
                let t = line.trim();
                let Some(rest) = t.strip_prefix(".route(\"").or_else(|| {
                    t.strip_prefix('"')
                        .filter(|r| r.starts_with("/v1/") || r.starts_with("/metrics"))
                }) else {
                    continue;
                };
                let path = rest.split('"').next().unwrap();
                assert!(
                    doc.contains(&format!("\n  {path}:\n")),
                    "{path} is not in docs/admin-api.yaml"
                );
                n += 1;
            }
        }
        assert!(n >= 14, "found only {n} routes");
    }
}
