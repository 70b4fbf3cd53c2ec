//! The WebSocket signalling protocol (pure): parsing and validating what a browser sends,
//! the messages the server sends, and the per-connection rate limit. `docs/signalling.md`
//! describes it for client authors; the handler lives in `http::ws`.

use crate::ids::RoomId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Largest accepted message.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Messages per second a connection may send (burst of the same size).
pub const MESSAGES_PER_SECOND: u32 = 50;
/// `join` must arrive this soon after connecting.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_NAME_CHARS: usize = 40;
pub const MAX_CHAT_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    BadField,
    TooLarge,
    RateLimited,
    JoinTimeout,
    NotJoined,
    AlreadyJoined,
    NoOffer,
    BadOffer,
    NoCodec,
    BadCandidate,
    RoomFull,
    Unavailable,
    /// No token, or one that does not verify.
    Unauthorized,
    /// A token that does not allow this.
    Forbidden,
    /// The client's address holds as many sessions as it may.
    TooMany,
    /// The server is shutting down (a restart): join again after `Retry-After`.
    ShuttingDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalError {
    pub code: ErrorCode,
    pub message: String,
}

impl SignalError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<SignalError> for ServerMessage {
    fn from(e: SignalError) -> Self {
        ServerMessage::Error {
            code: e.code,
            message: e.message,
        }
    }
}

/// One trickled ICE candidate, as `RTCIceCandidateInit` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Join {
        room: RoomId,
        name: String,
        /// An access token (required unless the server runs open).
        token: Option<String>,
    },
    Offer {
        sdp: String,
    },
    /// `None`: end of candidates.
    Candidate(Option<CandidateInit>),
    Mute {
        audio: Option<bool>,
        video: Option<bool>,
    },
    Chat {
        text: String,
    },
    Leave,
}

fn field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a Value, SignalError> {
    obj.get(name)
        .ok_or_else(|| SignalError::new(ErrorCode::BadField, format!("\"{name}\" is missing")))
}

fn string(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, SignalError> {
    field(obj, name)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            SignalError::new(ErrorCode::BadField, format!("\"{name}\" must be a string"))
        })
}

fn flag(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<bool>, SignalError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(SignalError::new(
            ErrorCode::BadField,
            format!("\"{name}\" must be true or false"),
        )),
    }
}

/// A display name: trimmed, 1–40 characters, no control characters.
pub fn check_name(name: &str) -> Result<String, SignalError> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(SignalError::new(
            ErrorCode::BadField,
            format!("\"name\" must be 1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Parses and validates one text message.
pub fn parse(text: &str) -> Result<ClientMessage, SignalError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(SignalError::new(
            ErrorCode::TooLarge,
            format!("messages are at most {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| SignalError::new(ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(SignalError::new(
            ErrorCode::BadJson,
            "a message is a JSON object",
        ));
    };
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| SignalError::new(ErrorCode::BadField, "\"type\" (a string) is missing"))?;
    match kind {
        "join" => {
            let room = RoomId::parse(&string(&obj, "room")?)
                .map_err(|e| SignalError::new(ErrorCode::BadField, e.to_string()))?;
            let name = check_name(&string(&obj, "name")?)?;
            let token = match obj.get("token") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => Some(t.clone()),
                Some(_) => {
                    return Err(SignalError::new(
                        ErrorCode::BadField,
                        "\"token\" must be a string",
                    ));
                }
            };
            Ok(ClientMessage::Join { room, name, token })
        }
        "offer" => {
            let sdp = string(&obj, "sdp")?;
            if sdp.trim().is_empty() {
                return Err(SignalError::new(ErrorCode::BadField, "\"sdp\" is empty"));
            }
            Ok(ClientMessage::Offer { sdp })
        }
        "candidate" => match field(&obj, "candidate")? {
            Value::Null => Ok(ClientMessage::Candidate(None)),
            v => {
                let c: CandidateInit = serde_json::from_value(v.clone()).map_err(|e| {
                    SignalError::new(ErrorCode::BadCandidate, format!("\"candidate\": {e}"))
                })?;
                if c.candidate.is_empty() {
                    // Browsers signal the end of candidates with an empty string too.
                    return Ok(ClientMessage::Candidate(None));
                }
                if c.candidate.len() > 1024 || c.candidate.contains(['\r', '\n']) {
                    return Err(SignalError::new(
                        ErrorCode::BadCandidate,
                        "malformed candidate",
                    ));
                }
                Ok(ClientMessage::Candidate(Some(c)))
            }
        },
        "mute" => {
            let audio = flag(&obj, "audio")?;
            let video = flag(&obj, "video")?;
            if audio.is_none() && video.is_none() {
                return Err(SignalError::new(
                    ErrorCode::BadField,
                    "\"mute\" needs \"audio\" and/or \"video\"",
                ));
            }
            Ok(ClientMessage::Mute { audio, video })
        }
        "chat" => {
            let text = string(&obj, "text")?;
            let n = text.trim().chars().count();
            if n == 0 || text.chars().count() > MAX_CHAT_CHARS {
                return Err(SignalError::new(
                    ErrorCode::BadField,
                    format!("\"text\" must be 1 to {MAX_CHAT_CHARS} characters"),
                ));
            }
            Ok(ClientMessage::Chat { text })
        }
        "leave" => Ok(ClientMessage::Leave),
        other => Err(SignalError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown message type {:?}: use join, offer, candidate, mute, chat or leave",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// A participant as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberInfo {
    pub id: String,
    pub name: String,
    pub audio_muted: bool,
    pub video_muted: bool,
    pub speaking: bool,
    pub publishes_audio: bool,
    pub publishes_video: bool,
}

/// One tile of the composite in fractions of its size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileInfo {
    pub id: String,
    pub name: String,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IceServerInfo {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// The server is shutting down: the call goes on for its drain time, then the room
    /// closes; join again after `retry_after_s`.
    ShuttingDown {
        retry_after_s: u32,
    },
    Welcome {
        id: String,
        room: String,
        participants: Vec<MemberInfo>,
        ice_servers: Vec<IceServerInfo>,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: Option<CandidateInit>,
    },
    ParticipantJoined {
        participant: MemberInfo,
    },
    ParticipantUpdated {
        participant: MemberInfo,
    },
    ParticipantLeft {
        id: String,
    },
    Speaking {
        id: String,
        speaking: bool,
    },
    Layout {
        width: u32,
        height: u32,
        /// `grid`, `speaker` or `custom`.
        mode: String,
        /// Pinned participants' ids.
        pinned: Vec<String>,
        tiles: Vec<TileInfo>,
    },
    Chat {
        id: String,
        name: String,
        text: String,
        time: String,
    },
    /// In a cluster: the room is served by another node; connect there (`url`, a WebSocket
    /// URL) and send `join` again. Answers a `join`; nothing else happened.
    Redirect {
        url: String,
    },
    /// Sections of the participant's offer its answer refused (sent when it joins).
    Refused {
        sections: Vec<crate::sdp::Refused>,
    },
    /// Recordings of the room running (sent on every change, and on joining when any runs).
    Recording {
        active: bool,
        count: usize,
    },
    /// Streams (HLS, RTMP) of the room running.
    Streaming {
        active: bool,
        kinds: Vec<String>,
    },
    /// Viewers watching (WHEP and receive-only sessions that are not hidden).
    Viewers {
        count: usize,
    },
    Left,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Token bucket: `MESSAGES_PER_SECOND` per second with a burst of the same size.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: MESSAGES_PER_SECOND as f64,
            last: now,
        }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        let rate = MESSAGES_PER_SECOND as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse(text).unwrap_err().code
    }

    #[test]
    fn messages_parse() {
        assert_eq!(
            parse(r#"{"type":"join","room":"r1","name":"  Ada "}"#),
            Ok(ClientMessage::Join {
                room: RoomId::parse("r1").unwrap(),
                name: "Ada".into(),
                token: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#)
                .unwrap(),
            ClientMessage::Candidate(Some(CandidateInit {
                candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            }))
        );
        assert_eq!(
            parse(r#"{"type":"candidate","candidate":null}"#),
            Ok(ClientMessage::Candidate(None))
        );
        assert_eq!(
            parse(r#"{"type":"mute","audio":true}"#),
            Ok(ClientMessage::Mute {
                audio: Some(true),
                video: None
            })
        );
        assert_eq!(parse(r#"{"type":"leave"}"#), Ok(ClientMessage::Leave));
    }

    #[test]
    fn bad_messages_get_their_codes() {
        assert_eq!(code("{nope"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"room":"x"}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"join","room":"../x","name":"a"}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"type":"join","room":"x","name":""}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"type":"join","room":"x","name":"a\u0007"}"#),
            ErrorCode::BadField
        );
        assert_eq!(code(r#"{"type":"offer","sdp":5}"#), ErrorCode::BadField);
        assert_eq!(
            code(r#"{"type":"candidate","candidate":{"x":1}}"#),
            ErrorCode::BadCandidate
        );
        assert_eq!(code(r#"{"type":"mute"}"#), ErrorCode::BadField);
        assert_eq!(
            code(r#"{"type":"mute","audio":"yes"}"#),
            ErrorCode::BadField
        );
        assert_eq!(code(r#"{"type":"chat","text":"   "}"#), ErrorCode::BadField);
        let big = format!(
            r#"{{"type":"chat","text":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(code(&big), ErrorCode::TooLarge);
    }

    #[test]
    fn server_messages_serialise_as_documented() {
        let m = ServerMessage::Speaking {
            id: "ab".into(),
            speaking: true,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"speaking","id":"ab","speaking":true}"#
        );
        let e: ServerMessage = SignalError::new(ErrorCode::NoOffer, "x").into();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"error","code":"no-offer","message":"x"}"#
        );
        assert!(
            serde_json::to_string(&ServerMessage::ParticipantLeft { id: "a".into() })
                .unwrap()
                .contains(r#""type":"participant-left""#)
        );
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(t0);
        let burst = (0..100).filter(|_| r.allow(t0)).count();
        assert_eq!(burst, MESSAGES_PER_SECOND as usize);
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(20)));
        let later = t0 + Duration::from_secs(10);
        let refill = (0..100).filter(|_| r.allow(later)).count();
        assert_eq!(refill, MESSAGES_PER_SECOND as usize);
    }
}
