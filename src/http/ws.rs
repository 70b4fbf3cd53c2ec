//! `GET /ws`: the browser app's signalling (see `docs/signalling.md`). One task per
//! connection reads messages, validates them (`crate::signal`), and turns them into room
//! commands; a writer task sends the replies and the room's events. A bad message gets an
//! `error` back and the connection goes on.

use super::AppState;
use super::access::ClientAddr;
use crate::auth::{Action, Denied, Grants, now_unix};
use crate::ids::{RoomId, SessionId};
use crate::limits::Slot;
use crate::room::{JoinOptions, Role, RoomError};
use crate::rtc::RtcError;
use crate::sdp::{OfferError, parse_offer, take_candidates};
use crate::signal::{
    ClientMessage, ErrorCode, JOIN_TIMEOUT, MAX_MESSAGE_BYTES, MAX_NAME_CHARS, RateLimiter,
    ServerMessage, SignalError, parse,
};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc;

/// Messages queued for one client (replies and room events); a client that does not read
/// misses room events beyond this.
const OUTBOX: usize = 256;
/// Frames beyond this close the connection outright (the 64 KiB message limit is enforced
/// with an error reply below it).
const MAX_FRAME_BYTES: usize = 1024 * 1024;

pub(super) async fn upgrade(
    State(state): State<AppState>,
    addr: ClientAddr,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Response {
    // `?placed=1`: another cluster node sent the client here; the room is claimed here.
    let placed = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "placed=1"));
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| serve(state, addr, socket, placed))
}

/// Where a connection is: not joined, joined (name and id chosen), or in the room (offer
/// answered, a peer connection exists).
struct Joined {
    room: RoomId,
    id: SessionId,
    name: String,
    in_room: bool,
    grants: Grants,
}

struct Connection {
    state: AppState,
    addr: ClientAddr,
    out: mpsc::Sender<ServerMessage>,
    joined: Option<Joined>,
    /// This connection's share of its address's sessions (taken at `join`).
    slot: Option<Arc<Slot>>,
    /// Sent here by another cluster node's placement.
    placed: bool,
}

async fn serve(state: AppState, addr: ClientAddr, socket: WebSocket, placed: bool) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outbox) = mpsc::channel::<ServerMessage>(OUTBOX);
    let (pings, mut ping_rx) = mpsc::channel::<()>(1);
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                msg = outbox.recv() => match msg {
                    None => break,
                    Some(msg) => match serde_json::to_string(&msg) {
                        Ok(text) => Message::Text(text.into()),
                        Err(_) => continue,
                    },
                },
                Some(()) = ping_rx.recv() => Message::Ping(Default::default()),
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let idle = Duration::from_secs(state.rooms.config().limits.ws_idle_timeout_s.into());
    let mut conn = Connection {
        state,
        addr,
        out,
        joined: None,
        slot: None,
        placed,
    };
    let mut limiter = RateLimiter::new(Instant::now());
    let join_deadline = tokio::time::sleep(JOIN_TIMEOUT);
    tokio::pin!(join_deadline);
    // A silent client is pinged every third of the idle timeout; one that answers nothing
    // (not even a pong) for the whole timeout is gone.
    let mut ping = tokio::time::interval(idle / 3);
    ping.tick().await;
    let mut heard = Instant::now();
    let mut draining = conn.state.rooms.draining();
    loop {
        tokio::select! {
            Ok(()) = draining.changed() => {
                if *draining.borrow_and_update() {
                    let retry_after_s = conn.state.rooms.retry_after_s();
                    conn.send(ServerMessage::ShuttingDown { retry_after_s }).await;
                }
            }
            _ = &mut join_deadline, if conn.joined.is_none() => {
                conn.error(SignalError::new(ErrorCode::JoinTimeout, format!(
                    "send \"join\" within {} s of connecting", JOIN_TIMEOUT.as_secs()
                ))).await;
                break;
            }
            _ = ping.tick() => {
                if heard.elapsed() >= idle {
                    tracing::debug!("signalling: closing a connection silent for {idle:?}");
                    break;
                }
                let _ = pings.try_send(());
            }
            msg = stream.next() => {
                heard = Instant::now();
                let text = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        conn.error(SignalError::new(ErrorCode::BadJson, "send JSON as text messages")).await;
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong: answered by the library
                };
                if !limiter.allow(Instant::now()) {
                    conn.error(SignalError::new(ErrorCode::RateLimited, "too many messages; slow down")).await;
                    continue;
                }
                if text.len() > MAX_MESSAGE_BYTES {
                    conn.error(SignalError::new(ErrorCode::TooLarge, format!(
                        "messages are at most {MAX_MESSAGE_BYTES} bytes"
                    ))).await;
                    continue;
                }
                match parse(text.as_str()) {
                    Ok(m) => {
                        if let Err(e) = conn.handle(m).await {
                            conn.error(e).await;
                        }
                    }
                    Err(e) => conn.error(e).await,
                }
            }
        }
    }
    conn.leave_room().await;
    drop(conn);
    let _ = writer.await;
}

pub(super) fn room_error(e: RoomError) -> SignalError {
    let code = match &e {
        RoomError::Full { .. } | RoomError::TooManyViewers { .. } | RoomError::TooManyRooms(_) => {
            ErrorCode::RoomFull
        }
        RoomError::Rtc(RtcError::Offer(_)) => ErrorCode::BadOffer,
        RoomError::Rtc(RtcError::Candidate(_)) => ErrorCode::BadCandidate,
        RoomError::NothingToDo => ErrorCode::BadOffer,
        RoomError::UnknownSession { .. } => ErrorCode::NotJoined,
        RoomError::Draining(_) => ErrorCode::ShuttingDown,
        _ => ErrorCode::Unavailable,
    };
    if code == ErrorCode::Unavailable {
        tracing::warn!("signalling: {e}");
    }
    SignalError::new(code, e.to_string())
}

/// A participant's `chat` (its token must allow `canPublishData`), from the WebSocket or the
/// data channel.
pub(super) async fn chat(
    state: &AppState,
    room: &RoomId,
    id: SessionId,
    grants: &Grants,
    text: String,
) -> Result<(), SignalError> {
    grants
        .allow(room.as_str(), Action::PublishData)
        .map_err(|d| denied(state, d))?;
    state.rooms.chat(room, id, text).await.map_err(room_error)
}

/// A participant's `mute`, from the WebSocket or the data channel.
pub(super) async fn mute(
    state: &AppState,
    room: &RoomId,
    id: SessionId,
    audio: Option<bool>,
    video: Option<bool>,
) -> Result<(), SignalError> {
    state
        .rooms
        .mute(room, id, audio, video)
        .await
        .map_err(room_error)
}

pub(super) fn denied(state: &AppState, d: Denied) -> SignalError {
    super::access::count_refusal(state, &d);
    let code = match d {
        Denied::Unauthenticated(_) => ErrorCode::Unauthorized,
        Denied::Forbidden(_) => ErrorCode::Forbidden,
    };
    SignalError::new(code, d.to_string())
}

fn offer_error(e: OfferError) -> SignalError {
    match e {
        OfferError::NoSupportedCodec => SignalError::new(ErrorCode::NoCodec, e.to_string()),
        _ => SignalError::new(ErrorCode::BadOffer, e.to_string()),
    }
}

impl Connection {
    async fn send(&self, msg: ServerMessage) {
        let _ = self.out.send(msg).await;
    }

    async fn error(&self, e: SignalError) {
        tracing::debug!(code = ?e.code, "signalling error: {}", e.message);
        self.send(e.into()).await;
    }

    fn take_slot(&self) -> Result<Option<Arc<Slot>>, SignalError> {
        match self.addr.0 {
            None => Ok(None),
            Some(ip) => self.state.rooms.address_slot(ip).map(Some).ok_or_else(|| {
                SignalError::new(
                    ErrorCode::TooMany,
                    format!("{ip} already has as many sessions open as it may"),
                )
            }),
        }
    }

    fn joined(&self) -> Result<&Joined, SignalError> {
        self.joined
            .as_ref()
            .ok_or_else(|| SignalError::new(ErrorCode::NotJoined, "send \"join\" first"))
    }

    fn in_room(&self) -> Result<&Joined, SignalError> {
        let j = self.joined()?;
        if !j.in_room {
            return Err(SignalError::new(ErrorCode::NoOffer, "send \"offer\" first"));
        }
        Ok(j)
    }

    async fn handle(&mut self, msg: ClientMessage) -> Result<(), SignalError> {
        match msg {
            ClientMessage::Join { room, name, token } => {
                if self.joined.is_some() {
                    return Err(SignalError::new(
                        ErrorCode::AlreadyJoined,
                        "already joined; send \"leave\" first",
                    ));
                }
                let grants = self
                    .state
                    .auth
                    .grants(token.as_deref(), now_unix())
                    .and_then(|g| g.allow(room.as_str(), Action::Join).map(|()| g))
                    .map_err(|d| denied(&self.state, d))?;
                // With a cluster, a room another node serves (or is placed on) is joined there.
                if let Some(cluster) = &self.state.cluster {
                    let local = self.state.rooms.get(&room).is_some();
                    if let crate::cluster::Placement::Remote { url, .. } =
                        cluster.place(room.as_str(), self.placed, local).await
                    {
                        let url = format!("{}?placed=1", crate::cluster::ws_url(&url));
                        self.send(ServerMessage::Redirect { url }).await;
                        return Ok(());
                    }
                }
                if self.slot.is_none() {
                    self.slot = self.take_slot()?;
                }
                // A token's name is who the participant is; the one typed in is for tokenless
                // (open) servers.
                let name = [&grants.name, &grants.identity]
                    .into_iter()
                    .find(|n| !n.is_empty())
                    .map_or(name, |n| n.chars().take(MAX_NAME_CHARS).collect());
                let id = SessionId::random();
                let participants = self.state.rooms.members(&room).await;
                let identity = if grants.identity.is_empty() {
                    id.to_string()
                } else {
                    grants.identity.clone()
                };
                let ice_servers = crate::turn::ice_servers(
                    &self.state.rooms.config().rtc,
                    &identity,
                    crate::auth::now_unix(),
                );
                self.send(ServerMessage::Welcome {
                    id: id.to_string(),
                    room: room.to_string(),
                    participants,
                    ice_servers,
                })
                .await;
                self.joined = Some(Joined {
                    room,
                    id,
                    name,
                    in_room: false,
                    grants,
                });
                Ok(())
            }
            ClientMessage::Offer { sdp } => {
                let arrived = std::time::Instant::now();
                let j = self.joined()?;
                let summary = parse_offer(&sdp).map_err(offer_error)?;
                let room = j.room.as_str();
                let check = |a| j.grants.allow(room, a).map_err(|d| denied(&self.state, d));
                if summary.publishes_audio() || summary.publishes_video() {
                    check(Action::Publish)?;
                }
                if summary.receives_audio() || summary.receives_video() {
                    check(Action::Subscribe)?;
                }
                let (room, id) = (j.room.clone(), j.id);
                let answer = if j.in_room {
                    self.state
                        .rooms
                        .renegotiate(&room, id, sdp, summary)
                        .await
                        .map_err(room_error)?
                } else {
                    let options = JoinOptions {
                        id,
                        name: j.name.clone(),
                        events: Some(self.out.clone()),
                        data: None,
                        max_tier: 0,
                        hidden: false,
                        slot: self.slot.clone(),
                    };
                    let a = self
                        .state
                        .rooms
                        .join(&room, Role::Whip, sdp, summary, options, true)
                        .await
                        .map_err(room_error)?;
                    if let Some(j) = self.joined.as_mut() {
                        j.in_room = true;
                    }
                    crate::metrics::METRICS
                        .join_seconds
                        .observe(arrived.elapsed().as_secs_f64());
                    a.sdp
                };
                // Trickle: the answer goes first, then its candidates one by one.
                let (sdp, candidates) = take_candidates(&answer);
                self.send(ServerMessage::Answer { sdp }).await;
                for c in candidates {
                    self.send(ServerMessage::Candidate { candidate: Some(c) })
                        .await;
                }
                self.send(ServerMessage::Candidate { candidate: None })
                    .await;
                Ok(())
            }
            ClientMessage::Candidate(c) => {
                let j = self.in_room()?;
                let Some(c) = c else { return Ok(()) };
                self.state
                    .rooms
                    .add_candidate(&j.room, j.id, c)
                    .await
                    .map_err(room_error)
            }
            ClientMessage::Mute { audio, video } => {
                let j = self.in_room()?;
                mute(&self.state, &j.room, j.id, audio, video).await
            }
            ClientMessage::Chat { text } => {
                let j = self.in_room()?;
                chat(&self.state, &j.room, j.id, &j.grants, text).await
            }
            ClientMessage::Leave => {
                self.joined()?;
                self.leave_room().await;
                self.joined = None;
                self.send(ServerMessage::Left).await;
                Ok(())
            }
        }
    }

    async fn leave_room(&mut self) {
        if let Some(j) = self.joined.as_mut()
            && j.in_room
        {
            j.in_room = false;
            let _ = self.state.rooms.leave(&j.room, j.id).await;
        }
    }
}
