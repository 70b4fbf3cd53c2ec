//! Access tokens (pure): LiveKit's format, so its server SDKs and `lk token create` mint tokens
//! Mixdown accepts unchanged. A token is a JWT signed HS256 with an API secret; `iss` names the
//! API key, `sub` the identity, `video` the grants. [`Auth::verify`] checks a token,
//! [`Grants::allow`] decides one action on one room, and [`Auth::capability`] makes the
//! unguessable session URLs WHIP and WHEP hand out.
//!
//! Decisions (written here because nobody answers questions):
//! - Only `alg: HS256` is accepted (no `none`, no RS/ES: no key confusion); `exp` is required,
//!   `nbf` optional, both with [`CLOCK_SKEW_S`] of slack.
//! - As in LiveKit, `canPublish`, `canSubscribe` and `canPublishData` default to true when
//!   absent; `roomJoin`, `hidden`, `roomRecord`, `roomAdmin`, `roomCreate`, `roomList` default
//!   to false.
//! - A grant that names a `room` holds for that room only. `roomJoin` needs a room; `roomAdmin`,
//!   `roomRecord` and `roomCreate` without one hold for every room (an operator's token).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Slack allowed on `nbf` and `exp` for clocks that disagree.
pub const CLOCK_SKEW_S: u64 = 10;
/// Shortest accepted API secret.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest token looked at (LiveKit's are a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// LiveKit's `video` grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VideoGrant {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub room: String,
    #[serde(skip_serializing_if = "is_false")]
    pub room_join: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    #[serde(skip_serializing_if = "is_false")]
    pub hidden: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_record: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_admin: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_create: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_list: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The claims Mixdown reads (others, such as `metadata` or `jti`, are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub exp: u64,
    #[serde(default)]
    pub video: VideoGrant,
}

/// Why a request is refused: [`Denied::Unauthenticated`] is a 401 (no or bad token),
/// [`Denied::Forbidden`] a 403 (a good token that does not allow this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
}

fn unauth(m: impl Into<String>) -> Denied {
    Denied::Unauthenticated(m.into())
}

/// What a request wants to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Enter the room (WHIP, WHEP, the WebSocket's `join`).
    Join,
    /// Send audio or video.
    Publish,
    /// Receive the mix (WHEP, a sendrecv WHIP, HLS).
    Subscribe,
    /// Chat.
    PublishData,
    /// Join without being announced or counted.
    Hidden,
    /// Start, stop, list recordings and streams.
    Record,
    /// Remove others, change the layout.
    Admin,
    /// See the room's participants and layout (its members and admins may).
    View,
    /// Open a room that is not running.
    Create,
    /// List rooms.
    List,
}

/// A verified token's identity and grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    pub identity: String,
    pub name: String,
    pub video: VideoGrant,
    /// Every room (open mode); tokens always name theirs.
    pub any_room: bool,
}

impl Grants {
    /// Everything, everywhere: what every request gets when Mixdown runs open.
    pub fn open() -> Self {
        Self {
            identity: String::new(),
            name: String::new(),
            video: VideoGrant {
                room_join: true,
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
                // Hidden is what a token asks for, not a permission: open viewers are counted.
                hidden: false,
                room_record: true,
                room_admin: true,
                room_create: true,
                room_list: true,
                ..VideoGrant::default()
            },
            any_room: true,
        }
    }

    /// Whether the grants name `room`, or (for operator grants) no room at all.
    fn room_ok(&self, room: &str, any_if_empty: bool) -> bool {
        self.any_room || self.video.room == room || (any_if_empty && self.video.room.is_empty())
    }

    /// Decides one action on one room; `Err` names the grant or room that is missing.
    pub fn allow(&self, room: &str, action: Action) -> Result<(), Denied> {
        let v = &self.video;
        let joined = v.room_join && self.room_ok(room, false);
        let forbid = |what: &str| {
            Err(Denied::Forbidden(format!(
                "the token does not allow {what} in room {room}"
            )))
        };
        let ok = match action {
            Action::Join => joined || (v.room_join && v.room.is_empty() && v.room_admin),
            Action::Publish => joined && v.can_publish.unwrap_or(true),
            Action::Subscribe => joined && v.can_subscribe.unwrap_or(true),
            Action::PublishData => joined && v.can_publish_data.unwrap_or(true),
            Action::Hidden => joined && v.hidden,
            Action::Record => v.room_record && self.room_ok(room, true),
            Action::Admin => v.room_admin && self.room_ok(room, true),
            Action::View => joined || ((v.room_admin || v.room_record) && self.room_ok(room, true)),
            Action::Create => v.room_create && self.room_ok(room, true),
            Action::List => v.room_list,
        };
        if ok {
            return Ok(());
        }
        match action {
            Action::Join if !v.room_join => forbid("joining (no roomJoin grant)"),
            Action::Join | Action::Publish | Action::Subscribe | Action::PublishData
                if !self.room_ok(room, false) =>
            {
                forbid(&format!(
                    "joining (it is for room {:?})",
                    if v.room.is_empty() { "<none>" } else { &v.room }
                ))
            }
            Action::Publish => forbid("publishing (canPublish is false)"),
            Action::Subscribe => forbid("subscribing (canSubscribe is false)"),
            Action::PublishData => forbid("chat (canPublishData is false)"),
            Action::Hidden => forbid("joining hidden (no hidden grant)"),
            Action::Record => forbid("recording or streaming (no roomRecord grant for it)"),
            Action::Admin => forbid("administration (no roomAdmin grant for it)"),
            Action::View => forbid("viewing the room (no roomJoin or roomAdmin grant for it)"),
            Action::Create => forbid("opening the room (no roomCreate grant)"),
            Action::List => Err(Denied::Forbidden(
                "the token does not allow listing rooms (no roomList grant)".into(),
            )),
            Action::Join => forbid("joining"),
        }
    }
}

/// The configured API keys and the process's session-capability key.
pub struct Auth {
    /// API key → secret.
    keys: BTreeMap<String, hmac::Key>,
    /// Signs session capabilities; random per process.
    capability_key: hmac::Key,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl Auth {
    /// `keys`: API key → secret (checked by the configuration: at least 32 bytes).
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mut capability = [0u8; 32];
        rand::fill(&mut capability);
        Self {
            keys: keys
                .into_iter()
                .map(|(k, s)| (k.clone(), hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())))
                .collect(),
            capability_key: hmac::Key::new(hmac::HMAC_SHA256, &capability),
        }
    }

    /// No keys: every request is allowed (the server refuses to start so unless it listens on
    /// loopback only or `auth.open` is set).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an `Authorization` header value (or a bare token) and returns its grants; when
    /// open, everything is allowed whatever was sent.
    pub fn grants(&self, token: Option<&str>, now_unix: u64) -> Result<Grants, Denied> {
        if self.is_open() {
            return Ok(Grants::open());
        }
        let token = token
            .ok_or_else(|| unauth("an access token is required: Authorization: Bearer <token>"))?;
        let c = self.verify(token, now_unix)?;
        Ok(Grants {
            identity: c.sub,
            name: c.name,
            video: c.video,
            any_room: false,
        })
    }

    /// Verifies a JWT: structure, `alg`, key, signature, then `nbf` and `exp`.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, Denied> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(unauth(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauth("the token is not a JWT (header.payload.signature)"));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| unauth(format!("the token's {what} is not base64url")))
        };
        let header: Header = serde_json::from_slice(&decode(h, "header")?)
            .map_err(|_| unauth("the token's header is not a JWT header"))?;
        if header.alg != "HS256" {
            return Err(unauth(format!(
                "token algorithm {:?} refused: only HS256 is accepted",
                header.alg.chars().take(20).collect::<String>()
            )));
        }
        if header.typ.as_deref().is_some_and(|t| t != "JWT") || header.crit.is_some() {
            return Err(unauth("the token's header is not a plain JWT header"));
        }
        let payload = decode(p, "payload")?;
        let signature = decode(s, "signature")?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| unauth(format!("the token's claims are not valid: {e}")))?;
        let key = self
            .keys
            .get(&claims.iss)
            .ok_or_else(|| unauth("the token's API key (iss) is unknown"))?;
        let signed = &token[..h.len() + 1 + p.len()];
        hmac::verify(key, signed.as_bytes(), &signature)
            .map_err(|_| unauth("the token's signature is not valid"))?;
        if claims.nbf.is_some_and(|nbf| now_unix + CLOCK_SKEW_S < nbf) {
            return Err(unauth("the token is not valid yet (nbf)"));
        }
        if claims.exp + CLOCK_SKEW_S < now_unix {
            return Err(unauth("the token has expired (exp)"));
        }
        Ok(claims)
    }

    /// The secret part of a session's URL: HMAC of room and session id under a per-process
    /// key, 32 hex digits. The session's public id alone does not give it.
    pub fn capability(&self, room: &str, session: &str) -> String {
        let tag = hmac::sign(&self.capability_key, format!("{room}/{session}").as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Splits a `Location` segment (`<public id><capability>`) and checks its capability in
    /// constant time; returns the public id.
    pub fn check_capability<'a>(&self, room: &str, segment: &'a str) -> Option<&'a str> {
        if segment.len() != 48 || !segment.is_ascii() {
            return None;
        }
        let (id, cap) = segment.split_at(16);
        let want = self.capability(room, id);
        let same = want
            .bytes()
            .zip(cap.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (same == 0).then_some(id)
    }
}

/// Signs `claims` with `secret` (for `mixdown token` and tests).
pub fn mint(claims: &Claims, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Serialising these plain structs cannot fail.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()).as_ref());
    format!("{signed}.{sig}")
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `6h`, `30m`, `90s`, `2d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 30m, 6h, 2d)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(unit)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} is not a usable duration"))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "APIkey1";
    const SECRET: &str = "0123456789abcdef0123456789abcdef-secret";
    const NOW: u64 = 1_800_000_000;

    fn auth() -> Auth {
        let keys = [(KEY.to_string(), SECRET.to_string())];
        Auth::new(keys.iter().map(|(k, s)| (k, s)))
    }

    fn claims(video: VideoGrant) -> Claims {
        Claims {
            iss: KEY.into(),
            sub: "ada".into(),
            name: "Ada".into(),
            nbf: Some(NOW - 5),
            exp: NOW + 3600,
            video,
        }
    }

    fn join(room: &str) -> VideoGrant {
        VideoGrant {
            room: room.into(),
            room_join: true,
            ..VideoGrant::default()
        }
    }

    fn err(r: Result<Claims, Denied>) -> String {
        match r {
            Err(Denied::Unauthenticated(m)) => m,
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn a_livekit_token_verifies_and_grants_its_room() {
        let a = auth();
        let t = mint(&claims(join("r1")), SECRET);
        let g = a.grants(Some(&t), NOW).unwrap();
        assert_eq!(g.identity, "ada");
        assert!(g.allow("r1", Action::Join).is_ok());
        assert!(
            g.allow("r1", Action::Publish).is_ok(),
            "canPublish defaults on"
        );
        assert!(g.allow("r1", Action::Subscribe).is_ok());
        assert!(g.allow("r1", Action::PublishData).is_ok());
        for action in [Action::Hidden, Action::Record, Action::Admin, Action::List] {
            assert!(
                matches!(g.allow("r1", action), Err(Denied::Forbidden(_))),
                "{action:?}"
            );
        }
        let other = g.allow("r2", Action::Join).unwrap_err().to_string();
        assert!(other.contains("room r2") && other.contains("r1"), "{other}");
    }

    #[test]
    fn livekit_sdk_token_layout_is_read() {
        // The claim layout LiveKit's server SDKs write (camelCase grants, extra claims).
        let json = serde_json::json!({
            "iss": KEY, "sub": "bob", "name": "Bob", "nbf": NOW - 1, "exp": NOW + 60,
            "jti": "bob", "metadata": "",
            "video": {"room": "r1", "roomJoin": true, "canPublish": false, "canSubscribe": true}
        });
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(json.to_string());
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
        let sig = hmac::sign(&key, format!("{header}.{payload}").as_bytes());
        let t = format!(
            "{header}.{payload}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        );
        let g = auth().grants(Some(&t), NOW).unwrap();
        assert_eq!(g.name, "Bob");
        assert!(g.allow("r1", Action::Subscribe).is_ok());
        let e = g.allow("r1", Action::Publish).unwrap_err().to_string();
        assert!(e.contains("canPublish"), "{e}");
    }

    #[test]
    fn bad_tokens_are_401_and_say_why() {
        let a = auth();
        let good = mint(&claims(join("r1")), SECRET);
        assert!(err(a.verify("nope", NOW)).contains("not a JWT"));
        // alg none, with or without a signature.
        let (_, rest) = good.split_once('.').unwrap();
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = rest.split('.').next().unwrap();
        assert!(err(a.verify(&format!("{none}.{payload}."), NOW)).contains("\"none\""));
        let hs512 = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512"}"#);
        assert!(err(a.verify(&format!("{hs512}.{payload}.AAAA"), NOW)).contains("HS256"));
        // Signed with the key id as secret, with another secret, or tampered with.
        let key_as_secret = mint(&claims(join("r1")), KEY);
        assert!(err(a.verify(&key_as_secret, NOW)).contains("signature"));
        let mut c = claims(join("r1"));
        c.video.room_admin = true;
        let parts: Vec<&str> = good.split('.').collect();
        let admin = mint(&c, SECRET);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            admin.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(err(a.verify(&forged, NOW)).contains("signature"));
        let mut unknown = claims(join("r1"));
        unknown.iss = "other".into();
        assert!(err(a.verify(&mint(&unknown, SECRET), NOW)).contains("unknown"));
        // Time.
        assert!(err(a.verify(&good, NOW + 3600 + CLOCK_SKEW_S + 1)).contains("expired"));
        assert!(a.verify(&good, NOW + 3600 + CLOCK_SKEW_S).is_ok(), "skew");
        let mut early = claims(join("r1"));
        early.nbf = Some(NOW + 60);
        assert!(err(a.verify(&mint(&early, SECRET), NOW)).contains("not valid yet"));
        // Missing.
        assert!(matches!(
            a.grants(None, NOW),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(err(a.verify("a.b.c.d", NOW)).contains("not a JWT"));
        assert!(err(a.verify(&"x".repeat(MAX_TOKEN_BYTES + 1), NOW)).contains("longer"));
    }

    #[test]
    fn operator_grants_without_a_room_hold_everywhere() {
        let g = Grants {
            identity: "ops".into(),
            name: String::new(),
            video: VideoGrant {
                room_record: true,
                room_admin: true,
                ..VideoGrant::default()
            },
            any_room: false,
        };
        assert!(g.allow("any", Action::Record).is_ok());
        assert!(g.allow("any", Action::Admin).is_ok());
        assert!(g.allow("any", Action::View).is_ok());
        assert!(g.allow("any", Action::Publish).is_err(), "no roomJoin");
        let scoped = Grants {
            video: VideoGrant {
                room: "r1".into(),
                room_record: true,
                ..VideoGrant::default()
            },
            ..g
        };
        assert!(scoped.allow("r1", Action::Record).is_ok());
        assert!(scoped.allow("r2", Action::Record).is_err());
    }

    #[test]
    fn open_mode_allows_anything_without_a_token() {
        let none: [(String, String); 0] = [];
        let a = Auth::new(none.iter().map(|(k, s)| (k, s)));
        assert!(a.is_open());
        let g = a.grants(None, NOW).unwrap();
        assert!(g.allow("x", Action::Admin).is_ok());
    }

    #[test]
    fn capabilities_are_not_ids() {
        let a = auth();
        let id = "0123456789abcdef";
        let seg = format!("{id}{}", a.capability("r1", id));
        assert_eq!(a.check_capability("r1", &seg), Some(id));
        assert_eq!(a.check_capability("r2", &seg), None, "bound to its room");
        assert_eq!(a.check_capability("r1", id), None, "the public id alone");
        let mut wrong = seg.clone().into_bytes();
        wrong[40] = if wrong[40] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            a.check_capability("r1", std::str::from_utf8(&wrong).unwrap()),
            None
        );
        assert_ne!(
            auth().capability("r1", id),
            a.capability("r1", id),
            "per process"
        );
    }

    #[test]
    fn bearer_and_durations() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(parse_duration("6h"), Ok(21_600));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("6w").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("h").is_err());
    }
}
