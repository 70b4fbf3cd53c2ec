//! Short-lived TURN credentials in coturn's REST-API scheme (`use-auth-secret`), so that no
//! static TURN password leaves the server: the username is `<expiry>:<identity>` (Unix seconds,
//! then who it is for), the password the base64 HMAC-SHA1 of the username under the secret
//! shared with the TURN server. The TURN server checks the HMAC and refuses the username
//! after its expiry. Pure.

use base64::Engine as _;

/// One caller's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub credential: String,
    /// Unix seconds after which the TURN server refuses them.
    pub expires: u64,
}

/// The longest identity part of a username: it is for the TURN server's logs, and a username
/// travels in a header.
const MAX_IDENTITY: usize = 64;

/// Credentials for `identity`, valid from `now_unix` for `ttl_s` seconds. Characters other
/// than letters, digits, `.`, `_` and `-` in the identity become `_` (a `:` would move the
/// expiry's separator; a quote would break the `Link` header).
pub fn credentials(secret: &str, identity: &str, now_unix: u64, ttl_s: u32) -> TurnCredentials {
    let expires = now_unix.saturating_add(ttl_s as u64);
    let identity: String = identity
        .chars()
        .take(MAX_IDENTITY)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let username = if identity.is_empty() {
        expires.to_string()
    } else {
        format!("{expires}:{identity}")
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    TurnCredentials {
        credential: base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
        username,
        expires,
    }
}

/// The ICE servers a caller is given: the configured ones as they are, and the TURN server
/// of `[rtc.turn]` (when it has URLs and a secret) with credentials made for `identity`.
pub fn ice_servers(
    rtc: &crate::config::RtcConfig,
    identity: &str,
    now_unix: u64,
) -> Vec<crate::signal::IceServerInfo> {
    use crate::signal::IceServerInfo;
    let mut out: Vec<IceServerInfo> = rtc
        .ice_servers
        .iter()
        .map(|s| IceServerInfo {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect();
    let t = &rtc.turn;
    if !t.urls.is_empty() && !t.secret.is_empty() {
        let c = credentials(&t.secret, identity, now_unix, t.ttl_s);
        out.push(IceServerInfo {
            urls: t.urls.clone(),
            username: c.username,
            credential: c.credential,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HMAC against values computed apart from this code, with Python's `hmac` and
    /// `base64` modules:
    /// `base64.b64encode(hmac.new(b"north", b"1700003600:alice", "sha1").digest())`.
    #[test]
    fn the_password_is_the_base64_hmac_sha1_of_the_username() {
        let c = credentials("north", "alice", 1_700_000_000, 3600);
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.expires, 1_700_003_600);
        assert_eq!(c.credential, "wjwSXO2ch1B6VaLTLMy2Avn5O9o=");
    }

    #[test]
    fn identities_cannot_break_the_username_or_the_header() {
        let c = credentials("s", "a:b\"c d", 10, 5);
        assert_eq!(c.username, "15:a_b_c_d");
        let long = "x".repeat(500);
        assert_eq!(
            credentials("s", &long, 0, 1).username.len(),
            2 + MAX_IDENTITY
        );
        assert_eq!(credentials("s", "", 0, 7).username, "7");
        // Another secret, another password.
        assert_ne!(
            credentials("s", "a", 0, 1).credential,
            credentials("t", "a", 0, 1).credential
        );
    }
}
