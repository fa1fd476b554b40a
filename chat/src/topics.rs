//! Names on the wire: the chat namespace's topics, and the client id a
//! device connects with.

/// The namespace the chat layer owns.
pub const PREFIX: &str = "c";
/// Where devices publish `Send`.
pub const SEND: &str = "c/s";
/// Where devices publish `Request`.
pub const REQUEST: &str = "c/r";
/// Where devices publish `Typing` (QoS 0).
pub const TYPING: &str = "c/t";
/// Where devices publish `CallSignal`.
pub const CALL: &str = "c/k";
/// Who an administrator's changes are from, in entries (not a valid
/// user id).
pub const ADMIN_USER: &str = "$admin";
/// Refresh tokens start with this (access tokens are JWTs, `eyJ...`).
pub const REFRESH_PREFIX: &str = "rt1.";

/// The one topic a device subscribes to; everything addressed to it
/// arrives there.
pub fn inbox(user: &str, device: &str) -> String {
    format!("c/in/{user}/{device}")
}

/// The client id of `user`'s `device`. Ids contain no `:`, so two users'
/// devices never share one.
pub fn client_id(user: &str, device: &str) -> String {
    format!("{user}:{device}")
}

/// A peek connection's client id ends with this: `<user>:<device>:peek`
/// fetches that device's inbox without taking over its session or moving
/// its cursor (an iOS notification service extension).
pub const PEEK_SUFFIX: &str = ":peek";

/// The client id of a peek connection for `user`'s `device`.
pub fn peek_client_id(user: &str, device: &str) -> String {
    format!("{user}:{device}{PEEK_SUFFIX}")
}

/// The user and device a peek connection's client id names.
pub fn parse_peek_client_id(id: &str) -> Option<(&str, &str)> {
    parse_client_id(id.strip_suffix(PEEK_SUFFIX)?)
}

/// The user and device a chat client id names, if it is one.
pub fn parse_client_id(id: &str) -> Option<(&str, &str)> {
    let (user, device) = id.split_once(':')?;
    (valid_id(user) && valid_id(device)).then_some((user, device))
}

/// A user or device id: 1 to 64 of `A-Z a-z 0-9 _ - .`.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_and_cannot_collide() {
        assert_eq!(
            parse_client_id(&client_id("alice", "phone")),
            Some(("alice", "phone"))
        );
        assert_eq!(parse_client_id("alice:ph:one"), None);
        assert_eq!(parse_client_id(&peek_client_id("alice", "phone")), None);
        assert_eq!(
            parse_peek_client_id(&peek_client_id("alice", "phone")),
            Some(("alice", "phone"))
        );
        assert_eq!(parse_peek_client_id("alice:phone"), None);
        assert_eq!(parse_client_id("alice"), None);
        assert_eq!(parse_client_id(":phone"), None);
        assert!(!valid_id("a/b") && !valid_id("a+") && !valid_id("#") && !valid_id(""));
        assert!(!valid_id(&"x".repeat(65)));
    }
}
