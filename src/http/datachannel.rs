//! The `mixdown` data channel of a WHIP or WHEP session: the room's messages for clients
//! without the WebSocket (see `docs/signalling.md`). One task per session turns the room's
//! events into channel messages and the client's `chat`, `mute` and `layout` requests into
//! room commands, with the WebSocket's validation, limits and error codes.

use super::AppState;
use super::layout::{MAX_LAYOUT_BYTES, parse_layout};
use super::ws::{denied, room_error};
use crate::auth::{Action, Grants};
use crate::ids::{RoomId, SessionId};
use crate::rtc::{DataIn, DataPipe};
use crate::signal::{
    ClientMessage, ErrorCode, MAX_MESSAGE_BYTES, RateLimiter, ServerMessage, SignalError, parse,
};
use std::time::Instant;
use tokio::sync::mpsc;

/// Room events queued for one channel, as for a WebSocket.
pub const OUTBOX: usize = 256;
/// Messages from the client waiting for the handler; more are dropped (the rate limit
/// answers a flood long before this fills).
const INBOX: usize = 64;

/// The room's side of a session's data channel: `events` for [`crate::room::JoinOptions`],
/// `pipe` for the transport, and what [`serve`] needs.
pub struct DataChannel {
    pub events: mpsc::Sender<ServerMessage>,
    pub pipe: DataPipe,
    pub ends: Ends,
}

/// The handler's ends of a data channel.
pub struct Ends {
    events: mpsc::Receiver<ServerMessage>,
    outbound: mpsc::Sender<String>,
    inbound: mpsc::Receiver<DataIn>,
}

impl DataChannel {
    pub fn new() -> Self {
        let (events, events_rx) = mpsc::channel(OUTBOX);
        let (outbound, outbound_rx) = mpsc::channel(OUTBOX);
        let (inbound_tx, inbound) = mpsc::channel(INBOX);
        Self {
            events,
            pipe: DataPipe {
                outbound: outbound_rx,
                inbound: inbound_tx,
            },
            ends: Ends {
                events: events_rx,
                outbound,
                inbound,
            },
        }
    }
}

/// Serves one session's channel until the session ends (the room drops its event sender, or
/// the transport its inbound one).
pub async fn serve(state: AppState, room: RoomId, id: SessionId, grants: Grants, mut ends: Ends) {
    let mut limiter = RateLimiter::new(Instant::now());
    let send = |out: &mpsc::Sender<String>, msg: &ServerMessage| {
        if let Ok(text) = serde_json::to_string(msg) {
            // Full only if the transport is stuck; a room event is then missed, as on a
            // WebSocket whose client does not read.
            let _ = out.try_send(text);
        }
    };
    loop {
        tokio::select! {
            event = ends.events.recv() => match event {
                Some(msg) => send(&ends.outbound, &msg),
                None => break,
            },
            input = ends.inbound.recv() => {
                let text = match input {
                    None => break,
                    Some(DataIn::Open) | Some(DataIn::Closed) => continue,
                    Some(DataIn::Binary(_)) => {
                        let e = SignalError::new(ErrorCode::BadJson, "send JSON as text messages");
                        send(&ends.outbound, &e.into());
                        continue;
                    }
                    Some(DataIn::Text(t)) => t,
                };
                if !limiter.allow(Instant::now()) {
                    let e = SignalError::new(ErrorCode::RateLimited, "too many messages; slow down");
                    send(&ends.outbound, &e.into());
                    continue;
                }
                if let Err(e) = handle(&state, &room, id, &grants, &text).await {
                    tracing::debug!(%room, session = %id, code = ?e.code, "data channel: {}", e.message);
                    send(&ends.outbound, &e.into());
                }
            }
        }
    }
}

/// One client message: `chat`, `mute` or `layout`; anything else gets an error naming what
/// the channel takes.
async fn handle(
    state: &AppState,
    room: &RoomId,
    id: SessionId,
    grants: &Grants,
    text: &str,
) -> Result<(), SignalError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(SignalError::new(
            ErrorCode::TooLarge,
            format!("messages are at most {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    if let Some(body) = layout_request(text) {
        grants
            .allow(room.as_str(), Action::Admin)
            .map_err(|d| denied(state, d))?;
        if body.len() > MAX_LAYOUT_BYTES {
            return Err(SignalError::new(
                ErrorCode::TooLarge,
                format!("a layout request is at most {MAX_LAYOUT_BYTES} bytes"),
            ));
        }
        let request =
            parse_layout(body.as_bytes()).map_err(|e| SignalError::new(ErrorCode::BadField, e))?;
        let handle = state
            .rooms
            .get(room)
            .ok_or_else(|| SignalError::new(ErrorCode::NotJoined, format!("no room {room}")))?;
        return handle
            .set_layout(request.mode, request.pin)
            .await
            .map(|_| ())
            .map_err(room_error);
    }
    match parse(text)? {
        ClientMessage::Chat { text } => super::ws::chat(state, room, id, grants, text).await,
        ClientMessage::Mute { audio, video } => {
            super::ws::mute(state, room, id, audio, video).await
        }
        ClientMessage::Join { .. }
        | ClientMessage::Offer { .. }
        | ClientMessage::Candidate(_)
        | ClientMessage::Leave => Err(SignalError::new(
            ErrorCode::UnknownType,
            "the data channel takes chat, mute and layout (signalling is WHIP/WHEP's or the WebSocket's)",
        )),
    }
}

/// The body of a `{"type": "layout", …}` message: the object without its `type`, as
/// `PUT /api/rooms/{room}/layout` takes it. `None` for other messages (and for text that is
/// not a JSON object, which [`parse`] then refuses with the usual error).
fn layout_request(text: &str) -> Option<String> {
    let serde_json::Value::Object(mut obj) = serde_json::from_str(text).ok()? else {
        return None;
    };
    if obj.get("type").and_then(|t| t.as_str()) != Some("layout") {
        return None;
    }
    obj.remove("type");
    serde_json::to_string(&obj).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_message_is_the_rest_api_body() {
        let body = layout_request(r#"{"type":"layout","mode":"speaker","pin":["ab"]}"#).unwrap();
        let r = parse_layout(body.as_bytes()).unwrap();
        assert_eq!(r.pin, Some(vec!["ab".to_owned()]));
        assert!(layout_request(r#"{"type":"chat","text":"hi"}"#).is_none());
        assert!(layout_request("not json").is_none());
        let e = parse_layout(
            layout_request(r#"{"type":"layout","mode":"mosaic"}"#)
                .unwrap()
                .as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("mosaic"), "{e}");
    }
}
