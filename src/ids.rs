//! Newtype identifiers shared by every plane.

use std::fmt;

/// A room name from the URL: 1–64 characters of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("room names are 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
pub struct BadRoomId;

impl RoomId {
    pub fn parse(s: &str) -> Result<Self, BadRoomId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadRoomId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One WHIP or WHEP session: one peer connection, one participant or viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    pub fn random() -> Self {
        Self(rand::random::<u64>() | 1)
    }

    /// The public id in a WHIP/WHEP `Location` (`…/{room}/{id}{secret}`): its first 16 hex
    /// digits. The rest is the capability only the session's holder has.
    pub fn public_in_location(location: &str) -> Option<&str> {
        location.rsplit('/').next()?.get(..16)
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomId::parse("team-42_a").is_ok());
        for bad in ["", "../x", "a b", "é", &"x".repeat(65)] {
            assert_eq!(RoomId::parse(bad), Err(BadRoomId), "{bad:?}");
        }
    }

    #[test]
    fn session_ids_round_trip() {
        let id = SessionId::random();
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        assert_eq!(SessionId::parse("xyz"), None);
        assert_eq!(SessionId::parse("zzzzzzzzzzzzzzzz"), None);
    }
}
